"""``llm-queue`` as a real hub's managed service: the roles and scopes of ``hubservice`` work.

A real ``jupyterhub`` (dummy login, local-process spawner) with :func:`configure_queue` starts
``python -m llmspawner.queue`` against the emulated cluster and proxies it. Checked through
the proxy: a user's *server* token can use the queue (the ``server`` role), any token of a
user that holds ``access:services!service=llm-queue`` can, one without it cannot; another
user's job is 404; a hub admin sees every job; an ordinary user logs in to the pages by browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from devcluster.testing import fast_cluster, wait_for
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.queue import limits
from llmspawner.queue.states import ACCESS_SCOPE
from llmspawner_dev.parts import base_environment, hub_command
from llmspawner_dev.processes import ChildProcess, free_port

ADMIN_TOKEN = "test-admin-service-token-0123456789"

# The "single-user server": records its API token, answers HTTP so the hub sees it up.
FAKE_SERVER = """
import http.server, os, sys, urllib.parse
open(sys.argv[1], "w").write(os.environ["JUPYTERHUB_API_TOKEN"])
port = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port
http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""

HUB_CONFIG = """
import sys
from llmspawner.queue.hubservice import configure_queue

c = get_config()  # noqa
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{"root"}}
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = [sys.executable, {server!r}, {token_file!r}]
c.Spawner.args = []
c.JupyterHub.services = [{{"name": "tester", "api_token": {admin!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "tester", "scopes": ["admin:users", "admin:servers", "tokens"],
      "services": ["tester"]}},
]
c.LLMPlatform.profiles_dir = {profiles!r}
configure_queue(c)
"""


@pytest.fixture(scope="module")
async def hub(tmp_path_factory):
    work = tmp_path_factory.mktemp("queue-hub")
    server = work / "fake_server.py"
    server.write_text(FAKE_SERVER)
    config = work / "jupyterhub_config.py"
    config.write_text(
        HUB_CONFIG.format(
            server=str(server),
            token_file=str(work / "server-token"),
            admin=ADMIN_TOKEN,
            profiles=str(REPO_PROFILES),
        )
    )
    async with fast_cluster(work / "cluster") as cluster:
        port, hub_port, proxy_port = free_port(), free_port(), free_port()
        env = base_environment(
            os.environ,
            marker=("LLMSPAWNER_TEST_QUEUE_HUB", str(os.getpid())),
            extra={"KUBECONFIG": str(cluster.kubeconfig_path), "LLMSPAWNER_NAMESPACE": "default"},
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
        url = f"http://127.0.0.1:{port}"
        try:
            # 30 s, not 10: the first submit after the service starts (probably waiting for its
            # config-check worker process to start) took over 10 s on a loaded 2-core
            # machine (CI run of 4940c95: httpx.ReadTimeout)
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:

                async def queue_up():
                    child.check_running()
                    r = await http.get("/services/llm-queue/api/jobs")
                    return r.status_code == 401  # the service answers (not the proxy's 503)

                # 180 s: "starting" lasts until the config checks' worker has imported
                # kubespawner; at load 10 (five test runs on 2 cores) that took over 60 s.
                await wait_for(
                    queue_up,
                    180,
                    "the queue behind the hub's proxy",
                    0.2,
                    ignore=(httpx.HTTPError,),
                )
                http.work = work
                yield http
        except BaseException:
            print(child.log_tail(60), file=sys.stderr)
            raise
        finally:
            child.stop(20)
            _assert_proxy_stopped(work)


def _assert_proxy_stopped(work: Path) -> None:
    """The hub stopped its proxy itself: a hub killed because a service would not stop (the
    queue once waited for a worker still importing) leaves configurable-http-proxy running,
    with its pid file."""
    pid_file = work / "jupyterhub-proxy.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().strip() or 0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    os.kill(pid, 15)
    raise AssertionError(f"the hub left its proxy (pid {pid}) running: {pid_file}")


def admin_api(http, method, path, **kwargs):
    headers = {"Authorization": f"token {ADMIN_TOKEN}"}
    return http.request(method, f"/hub/api{path}", headers=headers, **kwargs)


async def user_token(http, name, scopes):
    r = await admin_api(http, "POST", f"/users/{name}/tokens", json={"scopes": scopes})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def q(token):
    return {"Authorization": f"token {token}"}


CONFIG = (
    "stage: sft\ndo_train: true\nmodel_name_or_path: /storage/models/tiny\n"
    "dataset: demo\ntemplate: default\nfinetuning_type: lora\noutput_dir: out/a\n"
)


async def test_server_token_and_user_tokens(hub):
    for name in ("alice", "bob", "root"):
        r = await admin_api(hub, "POST", f"/users/{name}")
        assert r.status_code in (201, 409), r.text
    # alice's server: its $JUPYTERHUB_API_TOKEN is what the CLI uses in her pod.
    r = await admin_api(hub, "POST", "/users/alice/server")
    assert r.status_code in (201, 202), r.text
    token_file: Path = hub.work / "server-token"

    async def written():
        await asyncio.sleep(0)
        try:
            return token_file.read_bytes().decode()  # noqa: ASYNC240 - a tiny local file
        except FileNotFoundError:
            return None

    server_token = await wait_for(written, 30, "alice's server", 0.2, ignore=(httpx.HTTPError,))
    whoami = (await hub.get("/hub/api/user", headers=q(server_token))).json()
    assert ACCESS_SCOPE in whoami["scopes"]

    r = await hub.post(
        "/services/llm-queue/api/jobs",
        json={"config": CONFIG, "profile": "cpu"},
        headers=q(server_token),
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["user"] == "alice"

    # Every user holds the access scope (JupyterHub 6: extra_user_scopes; 5.x: the user
    # role), so may put it in a token.
    bob = await user_token(hub, "bob", [ACCESS_SCOPE])
    r = await hub.get(f"/services/llm-queue/api/jobs/{job['id']}", headers=q(bob))
    assert (r.status_code, r.json()) == (404, {"error": f"no job {job['id']}", "field": "id"})
    assert (await hub.get("/services/llm-queue/api/jobs", headers=q(bob))).json() == {"jobs": []}

    # A valid token without the scope is refused, not let in.
    narrow = await user_token(hub, "bob", ["read:users:name!user=bob"])
    r = await hub.get("/services/llm-queue/api/jobs", headers=q(narrow))
    assert r.status_code == 403

    root = await user_token(hub, "root", [ACCESS_SCOPE])
    jobs = (await hub.get("/services/llm-queue/api/jobs", headers=q(root))).json()["jobs"]
    assert [j["id"] for j in jobs] == [job["id"]]
    assert json.dumps(jobs).count(server_token) == 0
    await admin_api(hub, "DELETE", "/users/alice/server")


async def test_an_ordinary_user_logs_in_to_the_queue_pages(hub):
    """A browser: the hub's login, then the service's OAuth login, with no admin involved.

    The authorization needs ``access:services!service=llm-queue`` on the user (JupyterHub 6:
    extra_user_scopes; 5.x: the ``user`` role); without it the hub answers 403.
    """
    base = str(hub.base_url)
    async with httpx.AsyncClient(base_url=base, timeout=10, follow_redirects=True) as browser:
        await browser.get("/hub/login")
        form = {"username": "carol", "password": "any", "_xsrf": browser.cookies["_xsrf"]}
        r = await browser.post("/hub/login?next=/services/llm-queue/", data=form)
        assert r.status_code == 200, r.text
        assert str(r.url) == f"{base}/services/llm-queue/"
        assert "/hub/api/oauth2/authorize" in str(r.history[-2].url)
        r = await browser.get("/services/llm-queue/api/jobs")
        assert (r.status_code, r.json()) == (200, {"jobs": []})
    carol = (await admin_api(hub, "GET", "/users/carol")).json()
    assert (carol["admin"], carol["roles"]) == (False, ["user"])


async def test_oversize_bodies_and_configs_through_the_proxy(hub):
    """Through configurable-http-proxy, as users reach it: every oversize body gets the
    service's JSON 413 (not an empty 400, not the proxy's "server appears to be down" 503),
    a config over a limit a 4xx naming it, and nothing is stored."""
    r = await admin_api(hub, "POST", "/users/dave")
    assert r.status_code in (201, 409), r.text
    dave = await user_token(hub, "dave", [ACCESS_SCOPE])
    headers = {**q(dave), "Content-Type": "application/json"}
    for size in (limits.MAX_BODY_BYTES + 1, 2 * 1024 * 1024, 16 * 1024 * 1024):
        r = await hub.post("/services/llm-queue/api/jobs", content=b"x" * size, headers=headers)
        assert r.status_code == 413, (size, r.text[:200])
        assert (r.json()["field"], r.json()["limit"]) == ("body", "max_body_bytes")
    r = await hub.post("/services/llm-queue/api/jobs", content=b"x" * (4 * 1024 * 1024), headers={})
    assert (r.status_code, r.json()["limit"]) == (413, "max_body_bytes")

    deep = CONFIG + "".join(" " * i + f"k{i}:\n" for i in range(299)) + " " * 299 + "x: 1\n"
    big = CONFIG + "x: " + "a" * limits.MAX_CONFIG_BYTES + "\n"
    for config, status, limit in ((deep, 400, "max_config_depth"), (big, 413, "max_config_bytes")):
        r = await hub.post(
            "/services/llm-queue/api/jobs",
            json={"config": config, "profile": "cpu"},
            headers=q(dave),
        )
        assert (r.status_code, r.json()["limit"], r.json()["field"]) == (status, limit, "config")
    r = await hub.get("/services/llm-queue/api/jobs", headers=q(dave))
    assert r.json() == {"jobs": []}
