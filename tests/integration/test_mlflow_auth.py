"""MLflow behind the hub's login: a real ``jupyterhub`` and a real ``mlflow server`` with its
auth app and ``llmspawner.mlflow_auth``.

The hub (dummy login, local-process "servers") has MLflow as its service ``mlflow``
(:func:`llmspawner.mlflow_hub.configure_mlflow`); MLflow checks every hub token with the hub.
Checked here, each refusal with its status and that nothing changed: everyone reads
everything; only the owner writes (runs, metrics, tags, renames, deletes, artifacts,
registered models and versions); admins (hub admin, or the MLflow admin group) manage all; no
token, a forged token and a token without the MLflow scope get 401; a user's server token
(``MLFLOW_TRACKING_TOKEN`` in the server) works with MLflow's own client, unchanged
(``mlflow.search_runs(experiment_names=...)``, metrics, artifacts).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from devcluster.testing import wait_for
from llmspawner import tracking
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.mlflow_auth import DEFAULT_ADMIN_USERNAME
from llmspawner.mlflow_hub import ACCESS_SCOPE
from llmspawner_dev import parts
from llmspawner_dev.processes import ChildProcess, free_port, wait_http

TESTER_TOKEN = "test-mlflow-tester-token-0123456789"
SERVICE_TOKEN = "test-mlflow-service-token-0123456789"
ADMIN_PASSWORD = "test-mlflow-admin-password-0123"
PREFIX = parts.MLFLOW_PREFIX

# The "single-user server": records its API token and its MLFLOW_TRACKING_TOKEN.
FAKE_SERVER = """
import http.server, json, os, sys, urllib.parse
json.dump({k: os.environ.get(k) for k in ("JUPYTERHUB_API_TOKEN", "MLFLOW_TRACKING_TOKEN")},
          open(sys.argv[1] + ".tmp", "w"))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
port = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port
http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""

HUB_CONFIG = """
import sys
from llmspawner.mlflow_hub import configure_mlflow

c = get_config()  # noqa
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{"root"}}
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = [sys.executable, {server!r}, {token_file!r}]
c.Spawner.args = []
c.JupyterHub.services = [{{"name": "tester", "api_token": {tester!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "tester", "scopes": ["admin:users", "admin:servers", "tokens", "admin:groups", "read:services"],
      "services": ["tester"]}},
]
c.LLMPlatform.profiles_dir = {profiles!r}
configure_mlflow(c)
# The local-process spawner of this test reads Spawner.environment, LLMSpawner's is copied.
c.Spawner.environment = dict(c.LLMSpawner.environment)
"""


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    """``SimpleNamespace``-like: ``.hub`` (httpx client on the hub's public URL),
    ``.mlflow`` (MLflow's tracking URI, with the prefix), ``.work``, ``.admin_headers``."""
    work = tmp_path_factory.mktemp("mlflow-auth")
    server = work / "fake_server.py"
    server.write_text(FAKE_SERVER)
    config = work / "jupyterhub_config.py"
    config.write_text(
        HUB_CONFIG.format(
            server=str(server),
            token_file=str(work / "server-env.json"),
            tester=TESTER_TOKEN,
            profiles=str(REPO_PROFILES),
        )
    )
    port, hub_port, proxy_port, mlflow_port = (free_port() for _ in range(4))
    mlflow_url = f"http://127.0.0.1:{mlflow_port}{PREFIX}"
    auth_ini = work / "mlflow-auth.ini"
    auth_ini.write_text(parts.mlflow_auth_config(work))
    mlflow_env = {
        **os.environ,
        **parts.mlflow_environment(),
        **parts.mlflow_auth_environment(
            config_path=auth_ini,
            hub_api_url=f"http://127.0.0.1:{hub_port}/hub/api",
            service_token=SERVICE_TOKEN,
            admin_password=ADMIN_PASSWORD,
            secret_key="test-secret-key",
            admin_groups=("mlflow-admins",),
            ttl=5.0,
        ),
    }
    mlflow = ChildProcess(
        "mlflow",
        parts.mlflow_command(
            workdir=work, host="127.0.0.1", port=mlflow_port, auth=True, static_prefix=PREFIX
        ),
        log_path=work / "mlflow.log",
        env=mlflow_env,
    ).start()
    hub_env = parts.base_environment(
        os.environ,
        marker=("LLMSPAWNER_TEST_MLFLOW_HUB", str(os.getpid())),
        extra={
            "LLMSPAWNER_MLFLOW_TRACKING_URI": mlflow_url,
            "LLMSPAWNER_MLFLOW_SERVICE_TOKEN": SERVICE_TOKEN,
        },
    )
    argv = parts.hub_command(
        config_file=config,
        workdir=work,
        host="127.0.0.1",
        port=port,
        hub_port=hub_port,
        proxy_api_port=proxy_port,
    )
    hub = ChildProcess("hub", argv, log_path=work / "hub.log", env=hub_env, cwd=work).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{mlflow_url}/health", timeout=120, process=mlflow)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:

            async def mlflow_behind_proxy():
                hub.check_running()
                r = await http.get(f"{PREFIX}/api/2.0/mlflow/experiments/search")
                return r.status_code == 401  # MLflow answers (not the proxy's 503)

            await wait_for(
                mlflow_behind_proxy,
                90,
                "MLflow behind the hub's proxy",
                0.3,
                ignore=(httpx.HTTPError,),
            )
            http.work = work
            http.mlflow = mlflow_url
            http.admin_headers = tracking.admin_headers(
                {
                    "MLFLOW_TRACKING_USERNAME": DEFAULT_ADMIN_USERNAME,
                    "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
                }
            )
            yield http
    except BaseException:
        print(hub.log_tail(60), mlflow.log_tail(60), sep="\n", file=sys.stderr)
        raise
    finally:
        hub.stop(10)
        mlflow.stop(10)


def as_tester(http, method, path, **kwargs):
    headers = {"Authorization": f"token {TESTER_TOKEN}"}
    return http.request(method, f"/hub/api{path}", headers=headers, **kwargs)


async def user_token(http, name, scopes=(ACCESS_SCOPE,)):
    r = await as_tester(http, "POST", f"/users/{name}", json={})
    assert r.status_code in (201, 409), r.text
    r = await as_tester(http, "POST", f"/users/{name}/tokens", json={"scopes": list(scopes)})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


async def mlflow_api(http, method, path, token=None, *, headers=None, version="2.0", **kwargs):
    """A call of MLflow's REST API straight to MLflow (as pods do), with ``token``."""
    h = dict(headers or {})
    if token is not None:
        h.update(bearer(token))
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(
            method, f"{http.mlflow}/api/{version}/mlflow/{path}", headers=h, **kwargs
        )


async def alice_server_env(http) -> dict:
    """Start alice's server; return its ``JUPYTERHUB_API_TOKEN`` and ``MLFLOW_TRACKING_TOKEN``."""
    r = await as_tester(http, "POST", "/users/alice", json={})
    assert r.status_code in (201, 409), r.text
    r = await as_tester(http, "POST", "/users/alice/server")
    assert r.status_code in (201, 202, 400), r.text  # 400: already running
    env_file: Path = http.work / "server-env.json"

    async def written():
        await asyncio.sleep(0)
        try:
            return json.loads(env_file.read_text())  # noqa: ASYNC240 - a tiny local file
        except FileNotFoundError:
            return None

    return await wait_for(written, 30, "alice's server", 0.2)


@pytest.fixture(scope="module")
async def world(stack):
    """alice's experiment (made by the hub's way: admin credential, alice owner) with one run
    logged by her server's token, a registered model with one version; tokens of bob, an
    MLflow-group admin (carol) and the hub admin (root)."""
    env = await alice_server_env(stack)
    alice = env["MLFLOW_TRACKING_TOKEN"]
    assert alice and alice == env["JUPYTERHUB_API_TOKEN"]
    experiment_id = await tracking.ensure_experiment(
        stack.mlflow, "alice-experiments", owner="alice", headers=stack.admin_headers
    )
    r = await mlflow_api(stack, "POST", "runs/create", alice, json={"experiment_id": experiment_id})
    assert r.status_code == 200, r.text
    run_id = r.json()["run"]["info"]["run_id"]
    for path, body in [
        ("runs/log-metric", {"key": "loss", "value": 0.5, "timestamp": 1, "step": 0}),
        ("runs/log-parameter", {"key": "lr", "value": "0.001"}),
        ("runs/set-tag", {"key": "owner-note", "value": "mine"}),
    ]:
        r = await mlflow_api(stack, "POST", path, alice, json={"run_id": run_id, **body})
        assert r.status_code == 200, (path, r.text)
    r = await mlflow_api(
        stack, "POST", "registered-models/create", alice, json={"name": "alice-model"}
    )
    assert r.status_code == 200, r.text
    r = await mlflow_api(
        stack,
        "POST",
        "model-versions/create",
        alice,
        json={"name": "alice-model", "source": f"runs:/{run_id}/model", "run_id": run_id},
    )
    assert r.status_code == 200, r.text
    bob = await user_token(stack, "bob")
    await user_token(stack, "carol")  # carol exists before she joins the group
    r = await as_tester(stack, "POST", "/groups/mlflow-admins", json={"users": ["carol"]})
    assert r.status_code == 201, r.text
    carol = await user_token(stack, "carol")
    root = await user_token(stack, "root")
    return {
        "alice": alice,
        "bob": bob,
        "carol": carol,
        "root": root,
        "experiment_id": experiment_id,
        "run_id": run_id,
    }


async def snapshot(stack, world) -> dict:
    """What bob's refused calls must not change: alice's experiment, run and model (read as
    the hub admin)."""
    admin = bearer(world["root"])
    experiment = (
        await mlflow_api(
            stack,
            "GET",
            "experiments/get",
            headers=admin,
            params={"experiment_id": world["experiment_id"]},
        )
    ).json()["experiment"]
    run = await mlflow_api(
        stack, "GET", "runs/get", headers=admin, params={"run_id": world["run_id"]}
    )
    model = await mlflow_api(
        stack, "GET", "registered-models/get", headers=admin, params={"name": "alice-model"}
    )
    versions = await mlflow_api(
        stack,
        "GET",
        "model-versions/search",
        headers=admin,
        params={"filter": "name='alice-model'"},
    )
    runs = await mlflow_api(
        stack,
        "POST",
        "runs/search",
        headers=admin,
        json={"experiment_ids": [world["experiment_id"]], "run_view_type": "ALL"},
    )
    artifacts = await mlflow_api(
        stack, "GET", "artifacts/list", headers=admin, params={"run_id": world["run_id"]}
    )
    for r in (run, model, versions, runs, artifacts):
        assert r.status_code == 200, r.text
    experiment.pop("last_update_time", None)
    run_data = run.json()["run"]
    return {
        "experiment": experiment,
        "run": run_data,
        "runs": sorted(r["info"]["run_id"] for r in runs.json().get("runs", [])),
        "model": {
            k: v
            for k, v in model.json()["registered_model"].items()
            if k not in ("last_updated_timestamp", "latest_versions")
        },
        "versions": [
            {k: v for k, v in mv.items() if k != "last_updated_timestamp"}
            for mv in versions.json().get("model_versions", [])
        ],
        "artifacts": artifacts.json().get("files", []),
    }


async def test_everyone_reads_alices_runs_and_metrics(stack, world):
    bob = world["bob"]
    r = await mlflow_api(stack, "GET", "runs/get", bob, params={"run_id": world["run_id"]})
    assert r.status_code == 200, r.text
    assert r.json()["run"]["data"]["metrics"][0]["key"] == "loss"
    r = await mlflow_api(
        stack,
        "GET",
        "metrics/get-history",
        bob,
        params={"run_id": world["run_id"], "metric_key": "loss"},
    )
    assert (r.status_code, [m["value"] for m in r.json()["metrics"]]) == (200, [0.5])
    r = await mlflow_api(
        stack, "POST", "runs/search", bob, json={"experiment_ids": [world["experiment_id"]]}
    )
    assert [x["info"]["run_id"] for x in r.json()["runs"]] == [world["run_id"]]
    r = await mlflow_api(stack, "GET", "registered-models/get", bob, params={"name": "alice-model"})
    assert r.status_code == 200, r.text


BOBS_WRITES = [
    ("POST", "runs/create", lambda w: {"experiment_id": w["experiment_id"]}),
    (
        "POST",
        "runs/log-metric",
        lambda w: {"run_id": w["run_id"], "key": "loss", "value": 9.0, "timestamp": 2, "step": 1},
    ),
    (
        "POST",
        "runs/log-batch",
        lambda w: {"run_id": w["run_id"], "params": [{"key": "evil", "value": "1"}]},
    ),
    ("POST", "runs/set-tag", lambda w: {"run_id": w["run_id"], "key": "owner-note", "value": "x"}),
    ("POST", "runs/delete-tag", lambda w: {"run_id": w["run_id"], "key": "owner-note"}),
    ("POST", "runs/update", lambda w: {"run_id": w["run_id"], "run_name": "bobs-now"}),
    ("POST", "runs/delete", lambda w: {"run_id": w["run_id"]}),
    (
        "POST",
        "experiments/update",
        lambda w: {"experiment_id": w["experiment_id"], "new_name": "taken-by-bob"},
    ),
    (
        "POST",
        "experiments/set-experiment-tag",
        lambda w: {"experiment_id": w["experiment_id"], "key": "k", "value": "v"},
    ),
    ("POST", "experiments/delete", lambda w: {"experiment_id": w["experiment_id"]}),
    (
        "POST",
        "registered-models/rename",
        lambda w: {"name": "alice-model", "new_name": "bobs-model"},
    ),
    (
        "POST",
        "registered-models/set-tag",
        lambda w: {"name": "alice-model", "key": "k", "value": "v"},
    ),
    (
        "POST",
        "model-versions/create",
        lambda w: {"name": "alice-model", "source": f"runs:/{w['run_id']}/other"},
    ),
    (
        "PATCH",
        "model-versions/update",
        lambda w: {"name": "alice-model", "version": "1", "description": "bob was here"},
    ),
    (
        "POST",
        "model-versions/set-tag",
        lambda w: {"name": "alice-model", "version": "1", "key": "k", "value": "v"},
    ),
    ("DELETE", "model-versions/delete", lambda w: {"name": "alice-model", "version": "1"}),
    ("DELETE", "registered-models/delete", lambda w: {"name": "alice-model"}),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), BOBS_WRITES, ids=[p for _, p, _ in BOBS_WRITES]
)
async def test_bobs_writes_to_alices_objects_are_refused_and_change_nothing(
    stack, world, method, path, body
):
    before = await snapshot(stack, world)
    r = await mlflow_api(stack, method, path, world["bob"], json=body(world))
    assert (r.status_code, r.text) == (403, "Permission denied")
    assert await snapshot(stack, world) == before


async def test_bobs_artifact_upload_to_alices_run_is_refused(stack, world):
    before = await snapshot(stack, world)
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.put(
            f"{stack.mlflow}/api/2.0/mlflow-artifacts/artifacts/"
            f"{world['experiment_id']}/{world['run_id']}/artifacts/evil.txt",
            content=b"bob",
            headers=bearer(world["bob"]),
        )
    assert r.status_code == 403, r.text
    assert await snapshot(stack, world) == before


async def test_alices_server_token_works_with_mlflows_own_client_unchanged(stack, world):
    """What a notebook or LLaMA-Factory's ``report_to: mlflow`` does in alice's pod: only
    ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_TOKEN`` and ``MLFLOW_EXPERIMENT_NAME`` set."""
    script = textwrap.dedent(
        """
        import json, os, pathlib, sys, mlflow
        with mlflow.start_run(run_name="notebook") as run:
            mlflow.log_metric("loss", 0.25, step=1)
            path = pathlib.Path(sys.argv[1]) / "adapter_config.json"
            path.write_text("{}")
            mlflow.log_artifact(str(path))
        runs = mlflow.search_runs(
            experiment_names=["alice-experiments"], order_by=["metrics.loss ASC"]
        )
        client = mlflow.MlflowClient()
        files = [f.path for f in client.list_artifacts(run.info.run_id)]
        print(json.dumps({"first": runs.iloc[0]["run_id"], "id": run.info.run_id,
                          "n": len(runs), "files": files}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "JUPYTERHUB_"))}
    env.update(
        MLFLOW_TRACKING_URI=stack.mlflow,
        MLFLOW_TRACKING_TOKEN=world["alice"],
        MLFLOW_EXPERIMENT_NAME="alice-experiments",
    )
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, str(stack.work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["first"] == result["id"]  # loss 0.25 sorts before 0.5
    assert result["n"] == 2
    assert result["files"] == ["adapter_config.json"]
    # bob's token cannot do the same into alice's experiment.
    env["MLFLOW_TRACKING_TOKEN"] = world["bob"]
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import mlflow; mlflow.start_run()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode != 0
    assert "403" in out.stderr or "PERMISSION_DENIED" in out.stderr, out.stderr[-2000:]


async def test_bob_creates_his_own_experiment_but_not_another_users(stack, world):
    bob = world["bob"]
    r = await mlflow_api(stack, "POST", "experiments/create", bob, json={"name": "bob-scratch"})
    assert r.status_code == 200, r.text
    r = await mlflow_api(
        stack, "POST", "runs/create", bob, json={"experiment_id": r.json()["experiment_id"]}
    )
    assert r.status_code == 200, r.text
    # Another user's experiment name is reserved, even before that user's first server.
    r = await mlflow_api(
        stack, "POST", "experiments/create", bob, json={"name": "dave-experiments"}
    )
    assert r.status_code == 403
    assert r.json()["message"] == (
        "the experiment name 'dave-experiments' is reserved for the user 'dave'"
    )
    r = await mlflow_api(
        stack, "GET", "experiments/get-by-name", bob, params={"experiment_name": "dave-experiments"}
    )
    assert r.status_code == 404


async def test_ensuring_an_experiment_again_keeps_its_owner(stack, world):
    """A second spawn ensures the experiment again; an experiment the user made themselves
    (MLflow gave its creator MANAGE) or one the user holds a lesser grant on is ensured too:
    no 400 'Permission ... already exists', and the owner ends with MANAGE."""
    alice_id = world["experiment_id"]
    again = await tracking.ensure_experiment(
        stack.mlflow, "alice-experiments", owner="alice", headers=stack.admin_headers
    )
    assert again == alice_id

    async def permission(user, experiment_id):
        r = await mlflow_api(
            stack,
            "GET",
            "users/permissions/get",
            headers=stack.admin_headers,
            version="3.0",
            params={"username": user, "resource_type": "experiment", "resource_id": experiment_id},
        )
        assert r.status_code == 200, r.text
        return r.json()["permission"]

    assert await permission("alice", alice_id) == "MANAGE"
    r = await mlflow_api(
        stack, "POST", "experiments/create", world["bob"], json={"name": "bob-own-first"}
    )
    assert r.status_code == 200, r.text
    bob_id = r.json()["experiment_id"]
    assert (
        await tracking.ensure_experiment(
            stack.mlflow, "bob-own-first", owner="bob", headers=stack.admin_headers
        )
        == bob_id
    )
    assert await permission("bob", bob_id) == "MANAGE"
    # A lesser direct grant of the owner (READ) is raised to MANAGE, not refused.
    r = await mlflow_api(
        stack, "POST", "experiments/create", headers=stack.admin_headers, json={"name": "bob-read"}
    )
    assert r.status_code == 200, r.text
    read_id = r.json()["experiment_id"]
    r = await mlflow_api(
        stack,
        "POST",
        "users/permissions/grant",
        headers=stack.admin_headers,
        version="3.0",
        json={
            "username": "bob",
            "resource_type": "experiment",
            "resource_id": read_id,
            "permission": "READ",
        },
    )
    assert r.status_code == 200, r.text
    assert (
        await tracking.ensure_experiment(
            stack.mlflow, "bob-read", owner="bob", headers=stack.admin_headers
        )
        == read_id
    )
    assert await permission("bob", read_id) == "MANAGE"
    r = await mlflow_api(
        stack, "POST", "runs/create", world["bob"], json={"experiment_id": read_id}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("admin", ["carol", "root"])
async def test_an_admin_may_delete_any_run(stack, world, admin):
    r = await mlflow_api(
        stack, "POST", "runs/create", world["alice"], json={"experiment_id": world["experiment_id"]}
    )
    run_id = r.json()["run"]["info"]["run_id"]
    r = await mlflow_api(stack, "POST", "runs/delete", world[admin], json={"run_id": run_id})
    assert r.status_code == 200, r.text
    r = await mlflow_api(stack, "GET", "runs/get", world["bob"], params={"run_id": run_id})
    assert r.json()["run"]["info"]["lifecycle_stage"] == "deleted"


async def test_no_forged_or_narrow_token_gets_401(stack, world):
    narrow = await user_token(stack, "bob", ["read:users:name!user=bob"])
    for headers in (
        {},
        bearer("forged-0123456789abcdef"),
        bearer(narrow),
        {"Authorization": "Basic Ym9iOnBhc3N3b3JkMTIzNDU2Nzg="},  # bob:password12345678
        {"Authorization": "Digest whatever"},
    ):
        r = await mlflow_api(
            stack,
            "POST",
            "runs/create",
            headers=headers,
            json={"experiment_id": world["experiment_id"]},
        )
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error_code"] == "UNAUTHENTICATED"
        assert "Basic" not in r.headers.get("WWW-Authenticate", "")
    r = await mlflow_api(stack, "GET", "experiments/search", headers={}, params={"max_results": 1})
    assert r.status_code == 401
    runs = await mlflow_api(
        stack,
        "POST",
        "runs/search",
        headers=stack.admin_headers,
        json={"experiment_ids": [world["experiment_id"]]},
    )
    assert all(x["info"].get("user_id") != "bob" for x in runs.json()["runs"])


async def test_a_page_without_login_goes_to_the_hubs_oauth(stack):
    r = await stack.get(f"{PREFIX}/", headers={"Accept": "text/html"})
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/hub/api/oauth2/authorize?client_id=service-mlflow")


async def test_the_hub_lists_mlflow_as_a_service(stack):
    r = await as_tester(stack, "GET", "/services/mlflow")
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["display"]) == ("mlflow", True)


async def test_a_user_removed_from_the_hub_loses_mlflow_within_the_ttl(stack, world):
    """The hub's answer is cached for LLMSPAWNER_MLFLOW_AUTH_TTL (5 s here), not longer."""
    erin = await user_token(stack, "erin")
    body = {"experiment_ids": [world["experiment_id"]]}
    r = await mlflow_api(stack, "POST", "runs/search", erin, json=body)
    assert r.status_code == 200, r.text
    r = await as_tester(stack, "DELETE", "/users/erin")
    assert r.status_code == 204, r.text

    async def refused():
        r = await mlflow_api(stack, "POST", "runs/search", erin, json=body)
        return r.status_code == 401

    await wait_for(refused, 15, "erin's token refused", 0.5)
