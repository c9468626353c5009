"""No server pod outlives its hub server (issue 13 §2), with API faults injected on purpose.

A real hub (DevSpawner, the dev stack's LLMSpawner) on the emulated cluster, whose Kubernetes
API it reaches through :class:`devcluster.faults.FaultProxy`; the orphan reconciler runs as
the hub-managed service ``pod-reconciler`` (grace 2 s, a pass every second), reaching the
cluster directly. The "server" is a tiny HTTP server on its pod's address, so the hub sees it
come up. Asserted: after a 503 on the pod's DELETE the pod is gone and the hub agrees; a
create whose reply is lost adopts its own pod; a start that keeps failing on the API tells the
user so in one sentence and leaves no pod within the grace period; an orphan pod is deleted,
a ready server's pod never; a killed hub leaves none of its managed services running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.config import new_client_from_config

from devcluster.faults import FaultProxy
from devcluster.testing import fast_cluster, pid_alive, wait_for
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner_dev.parts import base_environment, hub_command
from llmspawner_dev.processes import ChildProcess, free_port

ADMIN_TOKEN = "test-admin-service-token-orphans-0123"
PODS = r"/namespaces/default/pods$"

#: The user's server: answers HTTP on the address the hub gives it (its pod's, DevSpawner).
SERVER = (
    "import os, http.server as h, urllib.parse as u; "
    "p = u.urlsplit(os.environ['JUPYTERHUB_SERVICE_URL']); "
    "h.ThreadingHTTPServer((p.hostname, p.port), h.SimpleHTTPRequestHandler).serve_forever()"
)

HUB_CONFIG = """
import os
c = get_config()  # noqa
from llmspawner.reconciler import reconciler_service, service_environment
import llmspawner.hubapi
llmspawner.hubapi.install()  # as llmspawner.hubconfig.configure does
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "llmspawner_dev.spawner.DevSpawner"
reconciler, reconciler_role = reconciler_service(
    interval=1,
    grace=2,
    environment=service_environment(
        {{"KUBECONFIG": {direct_kubeconfig!r}}}, {{"LLMSPAWNER_NAMESPACE": "default"}}
    ),
)
c.JupyterHub.services = [{{"name": "tester", "api_token": {admin!r}}}, reconciler]
c.JupyterHub.load_roles = [
    {{"name": "tester", "scopes": ["admin:users", "admin:servers"], "services": ["tester"]}},
    reconciler_role,
]
c.LLMPlatform.profiles_dir = {profiles!r}
c.LLMPlatform.namespace = "default"
c.LLMPlatform.llamaboard_eager_start = False
c.KubeSpawner.image = "python"
c.KubeSpawner.cmd = [{python!r}, "-c", {server!r}]
c.KubeSpawner.args = []
c.KubeSpawner.start_timeout = 60
c.KubeSpawner.http_timeout = 30
c.KubeSpawner.delete_grace_period = 0
c.KubeSpawner.k8s_api_request_timeout = 3
c.KubeSpawner.k8s_api_request_retry_timeout = 4
c.LLMSpawner.stop_retry_timeout = 3
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0, "slow_stop_timeout": 0}}
"""


def proxied_kubeconfig(direct: Path, path: Path, url: str) -> Path:
    """The cluster's kubeconfig (its credentials kept) with the server changed to ``url``."""
    config = yaml.safe_load(direct.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = url
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
async def hub(tmp_path_factory):
    work = tmp_path_factory.mktemp("orphans-hub")
    async with fast_cluster(work / "cluster") as cluster:
        proxy = FaultProxy(cluster.url).start()
        kubeconfig = proxied_kubeconfig(
            cluster.kubeconfig_path, work / "proxied-kubeconfig", proxy.url
        )
        config = work / "jupyterhub_config.py"
        config.write_text(
            HUB_CONFIG.format(
                admin=ADMIN_TOKEN,
                profiles=str(REPO_PROFILES),
                direct_kubeconfig=str(cluster.kubeconfig_path),
                python=sys.executable,
                server=SERVER,
            )
        )
        api = await new_client_from_config(config_file=str(cluster.kubeconfig_path))
        core = client.CoreV1Api(api)
        await core.create_namespaced_persistent_volume_claim(
            "default",
            {"metadata": {"name": "llm-storage"}, "spec": {"resources": {"requests": {}}}},
        )
        port = free_port()
        env = base_environment(
            os.environ,
            marker=("LLMSPAWNER_TEST_ORPHANS_HUB", str(os.getpid())),
            extra={"KUBECONFIG": str(kubeconfig)},
        )
        argv = hub_command(
            config_file=config,
            workdir=work,
            host="127.0.0.1",
            port=port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
        )
        child = ChildProcess("hub", argv, log_path=work / "hub.log", env=env, cwd=work)
        child.start()
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}/hub/api",
                headers={"Authorization": f"token {ADMIN_TOKEN}"},
                timeout=30,
            ) as http:

                async def up():
                    child.check_running()
                    return (await http.get("/")).status_code == 200

                await wait_for(up, 60, "the hub's API", 0.2, ignore=(httpx.HTTPError,))
                http.core, http.proxy, http.child = core, proxy, child
                yield http
        except BaseException:
            print(child.log_tail(120), file=sys.stderr)
            raise
        finally:
            proxy.clear()
            child.stop(10)
            proxy.stop()
            await api.close()


async def user_pods(hub, user: str) -> list:
    pods = await hub.core.list_namespaced_pod(
        "default", label_selector=f"hub.jupyter.org/username={user}"
    )
    return pods.items


async def server_of(hub, user: str) -> dict | None:
    r = await hub.get(f"/users/{user}")
    r.raise_for_status()
    return r.json()["servers"].get("")


async def start_ready(hub, user: str) -> None:
    r = await hub.post(f"/users/{user}/server")
    assert r.status_code in (201, 202), r.text

    async def ready():
        server = await server_of(hub, user)
        return server and server["ready"]

    await wait_for(ready, 60, f"{user}'s server ready", 0.2)


async def stopped_and_gone(hub, user: str) -> None:
    """Wait until the hub has no server for ``user`` and no pod of theirs exists; never may
    the hub report no server while a pod that is not being deleted exists."""

    async def gone():
        server = await server_of(hub, user)
        pods = await user_pods(hub, user)
        if server is None:
            alive = [p.metadata.name for p in pods if not p.metadata.deletion_timestamp]
            assert not alive, f"the hub forgot {user}'s server while pod {alive} runs"
        return server is None and not pods

    await wait_for(gone, 60, f"{user}'s server stopped and its pod gone", 0.2)


async def test_a_503_on_the_pod_delete_is_retried_and_the_pod_goes(hub):
    await hub.post("/users/alice")
    await start_ready(hub, "alice")
    rule = hub.proxy.fail(method="DELETE", path_regex=r"/pods/jupyter-alice$", status=503, times=1)
    before = hub.proxy.hits("DELETE", r"/pods/jupyter-alice$")
    r = await hub.delete("/users/alice/server")
    assert r.status_code in (202, 204), r.text
    await stopped_and_gone(hub, "alice")
    assert rule.hits == 1
    assert hub.proxy.hits("DELETE", r"/pods/jupyter-alice$") - before >= 2  # retried


async def test_a_create_whose_reply_is_lost_adopts_its_own_pod(hub):
    await hub.post("/users/bob")
    rule = hub.proxy.drop(method="POST", path_regex=PODS, times=1, after_upstream=True)
    await start_ready(hub, "bob")
    assert rule.hits == 1
    pods = await user_pods(hub, "bob")
    assert [p.metadata.name for p in pods] == ["jupyter-bob"]
    assert pods[0].metadata.annotations["llmspawner.io/spawn-id"]
    await hub.delete("/users/bob/server")
    await stopped_and_gone(hub, "bob")


async def progress_events(hub, user: str) -> list[dict]:
    events = []
    async with hub.stream("GET", f"/users/{user}/server/progress", timeout=60) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events


async def test_a_start_failing_on_the_api_says_so_and_leaves_no_pod(hub):
    await hub.post("/users/carol")
    # The first create reaches the API server but its reply is lost; every later create, and
    # every delete of the pod, gets 503: neither the spawner nor the hub can remove the pod.
    hub.proxy.drop(method="POST", path_regex=PODS, times=1, after_upstream=True)
    hub.proxy.fail(method="POST", path_regex=PODS, status=503, times=None)
    hub.proxy.fail(method="DELETE", path_regex=r"/pods/jupyter-carol$", status=503, times=None)
    try:
        r = await hub.post("/users/carol/server")
        assert r.status_code == 202, r.text
        events = await progress_events(hub, "carol")
    finally:
        hub.proxy.clear()
    assert events[-1]["failed"] is True
    assert events[-1]["message"] == (
        "Spawn failed: Your server could not be started because the cluster's API kept "
        "failing for 4 seconds (503 Service Unavailable); a pod left behind is deleted "
        "automatically, and it is safe to try again."
    )
    assert await server_of(hub, "carol") is None
    # The reconciler deletes the pod the failed start left (grace 2 s, a pass per second).

    async def no_pod():
        return not await user_pods(hub, "carol")

    await wait_for(no_pod, 30, "carol's orphan pod deleted", 0.2)
    log = hub.child.log_tail(400)
    # The stop that could not delete the pod is logged (JupyterHub itself says nothing).
    assert (
        "Stopping carol failed: pod default/jupyter-carol not deleted (503 Service Unavailable)"
        in log
    )
    assert "Deleted orphan pod jupyter-carol (user carol, default server) in default" in log
    # Trying again is safe: the next start works.
    await start_ready(hub, "carol")
    await hub.delete("/users/carol/server")
    await stopped_and_gone(hub, "carol")


async def test_the_reconciler_deletes_an_orphan_and_never_a_ready_servers_pod(hub):
    await hub.post("/users/erin")
    await start_ready(hub, "erin")
    (erin_pod,) = await user_pods(hub, "erin")
    # dave is a hub user with no server, and a pod of his server that the hub has forgotten
    # (kubespawner's labels and annotations); a pod of a user the hub does not know (a rename)
    # is left alone (tests/unit/test_reconciler.py).
    await hub.post("/users/dave")
    await hub.core.create_namespaced_pod(
        "default",
        {
            "metadata": {
                "name": "jupyter-dave",
                "labels": {
                    "component": "singleuser-server",
                    "hub.jupyter.org/username": "dave",
                },
                "annotations": {"hub.jupyter.org/username": "dave"},
            },
            "spec": {"containers": [{"name": "c", "image": "python", "command": ["sleep", "60"]}]},
        },
    )

    async def dave_gone():
        return not await user_pods(hub, "dave")

    await wait_for(dave_gone, 30, "dave's orphan pod deleted", 0.2)
    (still,) = await user_pods(hub, "erin")
    assert still.metadata.uid == erin_pod.metadata.uid and not still.metadata.deletion_timestamp
    assert (await server_of(hub, "erin"))["ready"]
    await hub.delete("/users/erin/server")
    await stopped_and_gone(hub, "erin")


#: A pod holding one ½ GPU slice (no hub annotations: not a server pod to the reconciler).
HALF_GPU = {
    "containers": [
        {
            "name": "main",
            "image": "python",
            "command": ["sleep", "600"],
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
        }
    ],
    "nodeSelector": {"nvidia.com/gpu.replicas": "2"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


async def test_the_reconciler_never_touches_a_pending_servers_pod(hub):
    held = ("held-1", "held-2")  # every ½ GPU slice in use: frank's pod waits, Pending
    for name in held:
        await hub.core.create_namespaced_pod(
            "default", {"metadata": {"name": name}, "spec": HALF_GPU}
        )
    await hub.post("/users/frank")
    try:
        r = await hub.post("/users/frank/server", json={"profile": "medium"})
        assert r.status_code == 202, r.text

        async def waiting_pod():
            pods = await user_pods(hub, "frank")
            return pods[0] if pods else None

        first = await wait_for(waiting_pod, 30, "frank's pod", 0.2)
        # Longer than the grace period (2 s) plus two passes (1 s each).
        await asyncio.sleep(5)
        (still,) = await user_pods(hub, "frank")
        assert still.metadata.uid == first.metadata.uid and not still.metadata.deletion_timestamp
        assert (await server_of(hub, "frank"))["pending"] == "spawn"
    finally:
        await hub.delete("/users/frank/server")
        for name in held:
            await hub.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    await stopped_and_gone(hub, "frank")


async def test_rapid_starts_and_stops_never_answer_a_bare_500(hub):
    await hub.post("/users/zed")
    answers = []

    async def request(i: int) -> None:
        await asyncio.sleep(i * 0.05)
        method = hub.post if i % 2 == 0 else hub.delete
        r = await method("/users/zed/server")
        answers.append((r.status_code, r.json()["message"] if r.status_code >= 400 else ""))

    await asyncio.gather(*(request(i) for i in range(50)))
    assert all(status < 500 for status, _ in answers), answers
    refused = [message for status, message in answers if status == 409]
    assert refused, "the race happened (JupyterHub raised 'pending' after its await)"
    for message in refused:
        assert message.startswith("zed's server "), message
        assert "another request that came at the same time, so this " in message, message
        assert "was not carried out; it is safe to try again" in message, message
    # Whatever the order, no pod outlives the server once it is stopped.

    async def settled():
        server = await server_of(hub, "zed")
        return server is None or not server["pending"]

    await wait_for(settled, 60, "zed's server settled", 0.2)
    if await server_of(hub, "zed"):
        r = await hub.delete("/users/zed/server")
        assert r.status_code in (202, 204), r.text
    await stopped_and_gone(hub, "zed")


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.update(int(p) for p in text)
    return out


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()




async def test_a_killed_hub_leaves_no_managed_service_running(hub):
    """Last in this module: it kills the hub. Its managed service (the reconciler, started in
    a session of its own as JupyterHub does) ends with it (llmspawner.lifeline)."""
    hub_pid = hub.child.pid
    children = _children(hub_pid)
    services = {pid for pid in children if "llmspawner.reconciler" in _cmdline(pid)}
    assert services, "the hub runs the reconciler"
    os.kill(hub_pid, signal.SIGKILL)
    try:

        def ended():
            return not any(pid_alive(pid) for pid in services)

        await wait_for(ended, 15, "the reconciler ends with its hub", 0.1)
    finally:
        # configurable-http-proxy, which the hub started in a session of its own, is not a
        # managed service: end it here (a process of this test's own hub).
        for pid in children - services:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
