"""A real hub with LLMSpawner on the emulated cluster: a refused start leaves no trace, and a
start with no options (no body, or from JupyterHub 6 ``{}`` or ``"user_options": null``:
JupyterHub's "load from db") runs the last accepted profile, the default profile before any;
empty options (JupyterHub 6: ``{"user_options": {}}``, 5: ``{}``) are the default profile.

JupyterHub stores a start's options before ``apply_user_options`` runs (``User.spawn``), so
before issue 12 a refused ``{"profile": "nope"}`` stayed stored and every later start without
options (the admin panel's Start button) failed on it. Checked through the REST API and the
hub's database; the "server" is ``sleep``, so each start ends by itself once the pod runs
(the hub finds no HTTP server within ``http_timeout`` and stops it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys

import httpx
import jupyterhub
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.config import new_client_from_config

from devcluster.testing import fast_cluster, wait_for
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner_dev.parts import base_environment, hub_command
from llmspawner_dev.processes import ChildProcess, free_port

ADMIN_TOKEN = "test-admin-service-token-options-0123"
#: JupyterHub 6 reads a server request's body as {"user_options": ..., "display_name": ...}.
JUPYTERHUB_6 = int(jupyterhub.__version__.split(".")[0]) >= 6

HUB_CONFIG = """
c = get_config()  # noqa
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "llm"
c.JupyterHub.services = [{{"name": "tester", "api_token": {admin!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "tester", "scopes": ["admin:users", "admin:servers"], "services": ["tester"]}},
]
c.LLMPlatform.profiles_dir = {profiles!r}
c.LLMPlatform.namespace = "default"
c.KubeSpawner.image = "python"
c.KubeSpawner.cmd = ["sleep", "600"]
c.KubeSpawner.args = []
c.KubeSpawner.http_timeout = 1
c.KubeSpawner.start_timeout = 60
c.KubeSpawner.delete_grace_period = 0
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}  # 202 at once: each start ends later
"""


@pytest.fixture(scope="module")
async def hub(tmp_path_factory):
    work = tmp_path_factory.mktemp("options-hub")
    config = work / "jupyterhub_config.py"
    config.write_text(HUB_CONFIG.format(admin=ADMIN_TOKEN, profiles=str(REPO_PROFILES)))
    async with fast_cluster(work / "cluster") as cluster:
        api = await new_client_from_config(config_file=str(cluster.kubeconfig_path))
        core = client.CoreV1Api(api)
        await core.create_namespaced_persistent_volume_claim(
            "default",
            {"metadata": {"name": "llm-storage"}, "spec": {"resources": {"requests": {}}}},
        )
        port, hub_port, proxy_port = free_port(), free_port(), free_port()
        env = base_environment(
            os.environ,
            marker=("LLMSPAWNER_TEST_OPTIONS_HUB", str(os.getpid())),
            extra={"KUBECONFIG": str(cluster.kubeconfig_path)},
        )
        argv = hub_command(
            config_file=config,
            workdir=work,
            host="127.0.0.1",
            port=port,
            hub_port=hub_port,
            proxy_api_port=proxy_port,
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
                http.core, http.db, http.child = core, work / "jupyterhub.sqlite", child
                yield http
        except BaseException:
            print(child.log_tail(80), file=sys.stderr)
            raise
        finally:
            child.stop(10)
            await api.close()


def stored_options(db, user: str):
    """The options the hub's database holds for ``user``'s default server."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT spawners.user_options FROM spawners JOIN users ON spawners.user_id = users.id "
            "WHERE users.name = ? AND spawners.name = ''",
            (user,),
        ).fetchone()
    return None if row is None or row[0] is None else json.loads(row[0])


async def start(http, user: str, body=None) -> httpx.Response:
    if body is None:
        return await http.post(f"/users/{user}/server")
    return await http.post(f"/users/{user}/server", json=body)


async def started_profile(http, user: str) -> str:
    """The profile label of ``user``'s pod once it exists; then waits until the hub has
    stopped the server again (it never answers HTTP)."""

    async def pod_profile():
        pods = await http.core.list_namespaced_pod(
            "default", label_selector=f"llmspawner.io/user={user}"
        )
        return pods.items[0].metadata.labels["llmspawner.io/profile"] if pods.items else None

    profile = await wait_for(pod_profile, 30, f"{user}'s pod", 0.2)

    async def stopped():
        model = (await http.get(f"/users/{user}")).json()
        pods = await http.core.list_namespaced_pod(
            "default", label_selector=f"llmspawner.io/user={user}"
        )
        return not model["servers"] and not model.get("pending") and not pods.items

    await wait_for(stopped, 60, f"{user}'s server stopped", 0.3)
    return profile


async def test_a_refused_start_leaves_no_trace(hub):
    r = await hub.post("/users/carol")
    assert r.status_code == 201, r.text

    # Refused before anything is stored or created.
    r = await start(hub, "carol", {"profile": "nope"})
    assert r.status_code == 400
    assert "Unknown profile 'nope'; valid profiles: cpu, small, medium, large" in r.text
    assert stored_options(hub.db, "carol") in (None, {})
    assert not (await hub.core.list_namespaced_pod("default")).items

    # No options, nothing accepted before: the default profile.
    r = await start(hub, "carol")
    assert r.status_code in (201, 202), r.text
    assert await started_profile(hub, "carol") == "cpu"

    # Accepted: stored, and what the next start without options runs.
    r = await start(hub, "carol", {"profile": "small"})
    assert r.status_code in (201, 202), r.text
    assert await started_profile(hub, "carol") == "small"
    assert stored_options(hub.db, "carol") == {"profile": "small"}

    for refused, status, message in (
        ({"profile": "large", "gpus": 8}, 400, "Unknown option 'gpus'; the only option is"),
        ({"profile": 3}, 400, "Option 'profile' must be a string"),
        ({"profile": "nope"}, 400, "Unknown profile 'nope'"),
    ):
        r = await start(hub, "carol", refused)
        assert r.status_code == status, (refused, r.text)
        assert message in r.text
        assert stored_options(hub.db, "carol") == {"profile": "small"}, refused

    # No body (and, from JupyterHub 6, the empty body {}): the last accepted profile.
    for body in (None, {}) if JUPYTERHUB_6 else (None,):
        r = await start(hub, "carol", body)
        assert r.status_code in (201, 202), r.text
        assert await started_profile(hub, "carol") == "small"

    # Empty options given explicitly: the default profile, stored as the new last one.
    # (JupyterHub 6 takes them as {"user_options": {}}, JupyterHub 5 as the body itself.)
    r = await start(hub, "carol", {"user_options": {}} if JUPYTERHUB_6 else {})
    assert r.status_code in (201, 202), r.text
    assert await started_profile(hub, "carol") == "cpu"
    assert stored_options(hub.db, "carol") == {}
