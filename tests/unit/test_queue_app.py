"""The queue's REST API: who may do what, and the errors, over real HTTP.

The service runs in-process with JupyterHub's real ``HubOAuth`` against a stand-in hub API
(``GET /hub/api/user`` answers the token owner's model and the token's scopes, as the hub
does), the real operations (:class:`QueueOperations`) on SQLite and a fake Kubernetes backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import pytest
from jupyterhub.services.auth import HubOAuth
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.web import create_signed_value
from traitlets.config import Config

from devcluster.testing import wait_for
from llmspawner.queue import db as queue_db
from llmspawner.queue import limits
from llmspawner.queue.app import make_app, page_routes
from llmspawner.queue.backend import KubeError
from llmspawner.queue.context import QueueContext
from llmspawner.queue.operations import QueueOperations
from llmspawner.queue.states import ACCESS_SCOPE as ACCESS
from llmspawner.queue.states import ADMIN_SCOPE, SERVICE_NAME
from llmspawner.settings import LLMPlatform

PREFIX = f"/services/{SERVICE_NAME}/"
COOKIE_SECRET = b"x" * 32
CLIENT_ID = "service-llm-queue"

CONFIG = (
    "stage: sft\ndo_train: true\nmodel_name_or_path: /storage/models/tiny\n"
    "dataset: demo\ntemplate: default\nfinetuning_type: lora\noutput_dir: out/run\n"
)


def _model(name, scopes, *, admin=False, groups=(), kind="user"):
    return {"kind": kind, "name": name, "admin": admin, "groups": list(groups), "scopes": scopes}


#: token -> what the hub answers for it.
TOKENS = {
    "alice-token": _model("alice", [ACCESS], groups=["users"]),
    "bob-token": _model("bob", [ACCESS], groups=["users"]),
    "carol-no-scope": _model("carol", ["read:users:name!user=carol"]),
    "hub-admin-token": _model("root", [ACCESS], admin=True),
    "queue-admin-token": _model("dana", [ACCESS, ADMIN_SCOPE]),
    "service-token": _model("culler", [ACCESS], kind="service"),
    "gpu-group-token": _model("erin", [ACCESS], groups=["gpu"]),
}


class FakeHubUser(web.RequestHandler):
    def get(self):
        header = self.request.headers.get("Authorization", "")
        model = TOKENS.get(header.partition(" ")[2])
        if model is None:
            raise web.HTTPError(403)
        self.write(model)


class FakeBackend:
    """The backend's interface, in memory: pods and logs per job id."""

    namespace = "default"

    def __init__(self):
        self.pods: dict[int, dict] = {}
        self.logs: dict[str, bytes] = {}
        self.deleted: list[str] = []

    async def latest_pod(self, job_id):
        return self.pods.get(job_id)

    async def stream_log(self, name, *, follow=False, tail_lines=None):
        if name not in self.logs:
            raise KubeError(400, "BadRequest", "container train is waiting to start")
        for line in self.logs[name].splitlines(keepends=True):
            yield line

    async def delete_job(self, name, *, config_map=None):
        self.deleted.append(name)
        return True


def _free_port() -> int:
    """A port outside the ephemeral range, reserved while this process lives (the dev
    stack's picker: no other socket can take it before the server binds it)."""
    from llmspawner_dev.processes import free_port

    return free_port()


@pytest.fixture
def profiles(tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "cpu.yaml").write_text("slug: cpu\ndisplay_name: CPU\ndefault: true\n")
    (folder / "medium.yaml").write_text("slug: medium\ndisplay_name: Half\ngpu: {fraction: 1/2}\n")
    (folder / "big.yaml").write_text(
        "slug: big\ndisplay_name: Big\ngpu: {count: 1}\nallowed_groups: [gpu]\n"
    )
    return LLMPlatform(
        config=Config(
            {
                "LLMPlatform": {
                    "profiles_dir": str(folder),
                    "image": "trainer",
                    "mlflow_tracking_uri": "http://mlflow:5000",
                }
            }
        ),
        env={},
    )


@pytest.fixture
async def service(tmp_path, profiles):
    hub_port, port = _free_port(), _free_port()
    hub = HTTPServer(web.Application([("/hub/api/user", FakeHubUser)]))
    hub.listen(hub_port, "127.0.0.1")
    backend = FakeBackend()
    ops = QueueOperations(
        QueueContext(queue_db.connect(f"sqlite:///{tmp_path / 'q.sqlite'}"), backend, profiles)
    )
    hub_auth = HubOAuth(
        api_url=f"http://127.0.0.1:{hub_port}/hub/api",
        api_token="service-secret-token",
        oauth_client_id=CLIENT_ID,
        base_url=PREFIX,
        cache_max_age=0,
    )
    app = make_app(
        ops=ops,
        hub_auth=hub_auth,
        prefix=PREFIX,
        access_scopes={ACCESS},
        cookie_secret=COOKIE_SECRET,
        extra_routes=page_routes(PREFIX),
        hub_prefix="/hub/",
    )
    server = HTTPServer(app)
    server.listen(port, "127.0.0.1")
    await limits.worker_ready()  # the config checks' process (started by make_app)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}{PREFIX}", timeout=30) as http:
        http.ops, http.backend = ops, backend
        yield http
    server.stop()
    hub.stop()


def auth(token):
    return {"Authorization": f"token {token}"}


async def submit(http, token="alice-token", **body):
    body = {"config": CONFIG, "profile": "cpu", **body}
    return await http.post("api/jobs", json=body, headers=auth(token))


async def test_no_credentials_is_401_and_a_token_without_the_scope_is_403(service):
    r = await service.get("api/jobs")
    assert r.status_code == 401
    assert r.json()["error"].startswith("log in to the hub")
    r = await service.get("api/jobs", headers=auth("carol-no-scope"))
    assert r.status_code == 403
    assert r.json() == {
        "error": f"this token may not use the queue: it needs the scope {ACCESS}",
        "field": None,
    }
    r = await service.get("api/jobs", headers=auth("made-up"))
    assert r.status_code == 401


async def test_make_app_refuses_empty_access_scopes():
    with pytest.raises(ValueError, match="access_scopes must not be empty"):
        make_app(ops=None, hub_auth=None, prefix=PREFIX, access_scopes=set(), cookie_secret=b"")


async def test_submit_returns_the_queued_job(service):
    r = await submit(service, priority="high", profile="medium")
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["Location"] == f"{PREFIX}api/jobs/{job['id']}"
    assert {k: job[k] for k in ("user", "profile", "priority", "state", "k8s_job")} == {
        "user": "alice",
        "profile": "medium",
        "priority": "high",
        "state": "queued",
        "k8s_job": None,
    }
    assert job["mlflow_experiment"] == "alice-experiments"
    assert job["submitted_at"].endswith("Z")
    shown = (await service.get(f"api/jobs/{job['id']}", headers=auth("alice-token"))).json()
    assert shown["config"]["run_name"] == f"llm-job-alice-{job['id']}"
    assert shown["config"]["report_to"] == "mlflow"
    assert shown["config"]["output_dir"] == "/storage/users/alice/out/run"
    # the 201's view (made from the stored values, not an ORM row) is the stored job's view
    # (but for what a pass in between may have set: its place and reason in the line)
    moving = ("config", "attempts", "position", "reason")
    assert {k: v for k, v in shown.items() if k not in moving} == {
        k: v for k, v in job.items() if k not in moving
    }


async def test_identity_comes_from_the_token_not_the_body(service):
    r = await service.post(
        "api/jobs",
        json={"config": CONFIG, "profile": "cpu", "user": "bob"},
        headers=auth("alice-token"),
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": "unknown field; allowed: config, profile, priority",
        "field": "user",
    }


@pytest.mark.parametrize(
    ("body", "status", "field", "error"),
    [
        ({"profile": "nope"}, 400, "profile", "unknown profile 'nope'; allowed: cpu, medium"),
        ({"profile": "big"}, 400, "profile", "unknown profile 'big'; allowed: cpu, medium"),
        ({"profile": None}, 400, "profile", "a profile is required; allowed: cpu, medium, big"),
        (
            {"priority": "urgent"},
            400,
            "priority",
            "unknown priority 'urgent'; allowed: high, normal, low",
        ),
        ({"config": 5}, 400, "config", "must be YAML/JSON text or an object"),
        # The body and its config are checked in one worker call; the fields' errors still
        # come first, as when the config was checked only after them.
        (
            {"config": "stage: magic\n", "profile": "nope"},
            400,
            "profile",
            "unknown profile 'nope'; allowed: cpu, medium",
        ),
        (
            {"config": "a: *b\n", "priority": "urgent"},
            400,
            "priority",
            "unknown priority 'urgent'; allowed: high, normal, low",
        ),
    ],
)
async def test_bad_submissions_name_the_field(service, body, status, field, error):
    r = await submit(service, **body)
    assert (r.status_code, r.json()) == (status, {"error": error, "field": field})
    assert (await service.get("api/jobs", headers=auth("alice-token"))).json() == {"jobs": []}


async def test_a_profile_of_the_users_group(service):
    assert (await submit(service, token="gpu-group-token", profile="big")).status_code == 201


async def test_invalid_config_lists_every_problem_and_stores_nothing(service):
    bad = "stage: magic\nmodel_name_or_path: /etc/passwd\noutput_dir: ../bob\nfoo: 1\n"
    r = await submit(service, config=bad)
    assert r.status_code == 400
    data = r.json()
    fields = {p["field"] for p in data["problems"]}
    assert {"stage", "model_name_or_path", "output_dir", "foo"} <= fields
    assert data["field"].startswith("config.")
    assert data["error"] == (
        f"the training config has {len(data['problems'])} problems (listed in 'problems')"
    )
    assert (await service.get("api/jobs", headers=auth("alice-token"))).json() == {"jobs": []}


async def test_body_must_be_a_json_object(service):
    r = await service.post("api/jobs", content=b"stage: sft", headers=auth("alice-token"))
    assert r.status_code == 400
    assert r.json()["field"] == "body"
    r = await service.post("api/jobs", json=[1], headers=auth("alice-token"))
    assert r.json() == {"error": "the body must be a JSON object", "field": "body"}


async def test_services_cannot_submit(service):
    r = await submit(service, token="service-token")
    assert r.status_code == 403


async def test_users_see_only_their_jobs_and_admins_see_all(service):
    a = (await submit(service)).json()
    b = (await submit(service, token="bob-token")).json()
    mine = (await service.get("api/jobs", headers=auth("alice-token"))).json()["jobs"]
    assert [j["id"] for j in mine] == [a["id"]]
    r = await service.get("api/jobs?user=alice", headers=auth("bob-token"))
    assert r.status_code == 403
    assert r.json()["field"] == "user"
    for token in ("hub-admin-token", "queue-admin-token"):
        everyone = (await service.get("api/jobs", headers=auth(token))).json()["jobs"]
        assert [j["id"] for j in everyone] == [b["id"], a["id"]]
        only = (await service.get("api/jobs?user=bob", headers=auth(token))).json()["jobs"]
        assert [j["id"] for j in only] == [b["id"]]
    r = await service.get("api/jobs?state=done", headers=auth("hub-admin-token"))
    assert r.status_code == 400
    assert r.json()["field"] == "state"


async def test_another_users_job_is_404_like_a_missing_one(service):
    a = (await submit(service)).json()
    missing = await service.get("api/jobs/999", headers=auth("bob-token"))
    for method, path in (
        ("GET", f"api/jobs/{a['id']}"),
        ("GET", f"api/jobs/{a['id']}/logs"),
        ("DELETE", f"api/jobs/{a['id']}"),
    ):
        r = await service.request(method, path, headers=auth("bob-token"))
        assert r.status_code == 404, (method, path)
        assert r.json() == {"error": f"no job {a['id']}", "field": "id"}
    assert missing.json() == {"error": "no job 999", "field": "id"}
    assert (
        await service.get(f"api/jobs/{a['id']}", headers=auth("alice-token"))
    ).status_code == 200


async def test_cancel_a_queued_job_then_again(service):
    a = (await submit(service)).json()
    r = await service.delete(f"api/jobs/{a['id']}", headers=auth("alice-token"))
    assert (r.status_code, r.json()["state"], r.json()["reason"]) == (
        200,
        "cancelled",
        "cancelled by alice",
    )
    assert r.json()["finished_at"]
    r = await service.delete(f"api/jobs/{a['id']}", headers=auth("alice-token"))
    assert r.status_code == 409
    assert r.json() == {"error": f"job {a['id']} has already cancelled", "field": "id"}
    assert service.backend.deleted == []  # a queued job has no Job to delete


async def test_admin_cancels_another_users_job(service):
    a = (await submit(service)).json()
    r = await service.delete(f"api/jobs/{a['id']}", headers=auth("queue-admin-token"))
    assert r.json()["reason"] == "cancelled by dana"


async def test_logs(service):
    a = (await submit(service)).json()
    r = await service.get(f"api/jobs/{a['id']}/logs", headers=auth("alice-token"))
    assert r.status_code == 409
    assert r.json()["error"] == f"job {a['id']} has no log: it has not started yet (state: queued)"
    pod = {"metadata": {"name": "llm-job-alice-1-abcde"}}
    service.backend.pods[a["id"]] = pod
    r = await service.get(f"api/jobs/{a['id']}/logs", headers=auth("alice-token"))
    assert r.status_code == 409
    assert "waiting to start" in r.json()["error"]
    service.backend.logs["llm-job-alice-1-abcde"] = b"step 1\nstep 2\n"
    r = await service.get(f"api/jobs/{a['id']}/logs?follow=1", headers=auth("alice-token"))
    assert (r.status_code, r.text) == (200, "step 1\nstep 2\n")
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_limits_are_set_by_admins_only(service):
    r = await service.put("api/users/bob/limit", json={"max_running": 3}, headers=auth("bob-token"))
    assert r.status_code == 403
    r = await service.put(
        "api/users/bob/limit", json={"max_running": -1}, headers=auth("hub-admin-token")
    )
    assert r.json() == {"error": "must be a whole number >= 0, not -1", "field": "max_running"}
    r = await service.put(
        "api/users/bob/limit", json={"max_running": 3}, headers=auth("hub-admin-token")
    )
    assert r.json() == {"user": "bob", "max_running": 3}
    r = await service.get("api/users/bob/limit", headers=auth("bob-token"))
    assert r.json() == {"user": "bob", "max_running": 3}
    r = await service.get("api/users/bob/limit", headers=auth("alice-token"))
    assert r.status_code == 403


async def test_profiles_the_caller_may_use(service):
    r = await service.get("api/profiles", headers=auth("alice-token"))
    assert [p["slug"] for p in r.json()["profiles"]] == ["cpu", "medium"]


async def test_cookie_login_needs_the_xsrf_token_to_change_anything(service):
    cookie = create_signed_value(COOKIE_SECRET, CLIENT_ID, "alice-token").decode()
    service.cookies.set(CLIENT_ID, cookie)
    try:
        r = await service.get("api/jobs", headers={"Sec-Fetch-Mode": "navigate"})
        assert r.status_code == 200
        # HubOAuth ignores the cookie of a request that needs, and lacks, the XSRF token.
        r = await service.post("api/jobs", json={"config": CONFIG, "profile": "cpu"})
        assert r.status_code == 401
        r = await service.get("api/jobs", headers={"Sec-Fetch-Mode": "cors"})
        assert r.status_code == 401
        assert (await service.get("api/jobs")).json() == {"jobs": []}
    finally:
        service.cookies.clear()


async def test_no_token_in_logs_or_answers(service, caplog):
    caplog.set_level(logging.DEBUG)
    answers = []
    for token in TOKENS:
        for r in (
            await submit(service, token=token),
            await service.get("api/jobs", headers=auth(token)),
            await service.get("api/jobs/1", headers=auth(token)),
        ):
            answers.append(r.text)
    text = caplog.text + "".join(answers) + json.dumps(answers)
    for token in [*TOKENS, "service-secret-token"]:
        assert token not in text


# -- pages ---------------------------------------------------------------------------------


async def test_pages_send_the_browser_through_the_hub_login(service):
    r = await service.get("")
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/hub/api/oauth2/authorize?")
    assert f"client_id={CLIENT_ID}" in r.headers["Location"]


async def test_jobs_page_lists_jobs_and_offers_the_allowed_profiles(service):
    a = (await submit(service)).json()
    r = await service.get("", headers=auth("alice-token"))
    assert r.status_code == 200
    assert 'href="/hub/static/css/style.min.css"' in r.text
    assert f'id="job-{a["id"]}"' in r.text
    assert '<option value="medium"' in r.text and '<option value="big"' not in r.text
    assert "<th>User</th>" not in r.text  # only admins see the user column
    r = await service.get("?user=alice&state=queued", headers=auth("hub-admin-token"))
    assert "<th>User</th>" in r.text and f'id="job-{a["id"]}"' in r.text
    r = await service.get("?state=failed", headers=auth("hub-admin-token"))
    assert f'id="job-{a["id"]}"' not in r.text


async def test_submit_form_errors_keep_the_text_and_list_problems(service):
    r = await service.post(
        "",
        data={"config": "stage: magic\n", "profile": "cpu", "priority": "normal"},
        headers=auth("alice-token"),
    )
    assert r.status_code == 400
    assert "Not submitted" in r.text and "<code>stage</code>" in r.text
    assert "stage: magic" in r.text


async def test_browser_flow_with_cookie_and_xsrf(service):
    cookie = create_signed_value(COOKIE_SECRET, CLIENT_ID, "alice-token").decode()
    service.cookies.set(CLIENT_ID, cookie)
    try:
        page = await service.get("", headers={"Sec-Fetch-Mode": "navigate"})
        xsrf = page.text.split('name="_xsrf" value="', 1)[1].split('"', 1)[0]
        r = await service.post(
            "",
            files={"config_file": ("train.yaml", CONFIG.encode())},
            data={"profile": "cpu", "priority": "low", "_xsrf": xsrf},
        )
        assert r.status_code == 302, r.text
        job_url = r.headers["Location"]
        job_id = int(job_url.rsplit("/", 1)[1])
        page = await service.get(f"jobs/{job_id}", headers={"Sec-Fetch-Mode": "navigate"})
        assert page.status_code == 200
        assert 'id="state">queued<' in page.text and "(no log yet)" in page.text
        assert f"run_name: llm-job-alice-{job_id}" in page.text
        r = await service.post(f"jobs/{job_id}/cancel", data={"_xsrf": xsrf})
        assert r.status_code == 302
        # Without the XSRF token, the cookie does not count.
        r = await service.post(f"jobs/{job_id}/cancel", data={})
        assert r.status_code == 403
    finally:
        service.cookies.clear()
    job = (await service.get(f"api/jobs/{job_id}", headers=auth("alice-token"))).json()
    assert (job["state"], job["priority"]) == ("cancelled", "low")


async def test_job_page_of_another_user_is_404(service):
    a = (await submit(service)).json()
    r = await service.get(f"jobs/{a['id']}", headers=auth("bob-token"))
    assert r.status_code == 404
    assert f"no job {a['id']}" in r.text


# -- profiles through the one cache ------------------------------------------------------------


async def test_a_profile_file_added_changed_broken_is_seen_within_seconds(
    service, profiles, caplog
):
    """The queue reads profiles through the platform's cache on every request: an added file
    is accepted within seconds (no restart), a broken edit keeps the last valid set."""
    folder = profiles.profiles_dir
    r = await submit(service, profile="tiny")
    assert r.json() == {
        "error": "unknown profile 'tiny'; allowed: cpu, medium",
        "field": "profile",
    }
    (tmp := Path(folder) / "tiny.yaml").write_text(
        "slug: tiny\ndisplay_name: Tiny\ngpu: {fraction: 1/4}\n"
    )

    async def accepted():
        return (await submit(service, profile="tiny")).status_code == 201

    await wait_for(accepted, 15, "the added profile is accepted", 0.2)
    names = await service.get("api/profiles", headers=auth("alice-token"))
    assert {p["slug"] for p in names.json()["profiles"]} == {"cpu", "medium", "tiny"}

    caplog.set_level(logging.ERROR)
    tmp.write_text("slug: tiny\ngpu: {fraction: 1/3}\n")  # 3 is not a replica count

    async def logged():
        await submit(service, profile="tiny")
        return "keeping the last valid ones" in caplog.text

    await wait_for(logged, 15, "the broken edit is noticed", 0.2)
    r = await submit(service, profile="tiny")
    assert r.status_code == 201, r.text  # the last valid set is still in use
    assert r.json()["profile_name"] == "Tiny"

    tmp.unlink()

    async def refused():
        return (await submit(service, profile="tiny")).status_code == 400

    await wait_for(refused, 15, "the removed profile is refused", 0.2)


# -- bad input: limits (llmspawner.queue.limits) -----------------------------------------------


async def no_jobs(http):
    r = await http.get("api/jobs", headers=auth("hub-admin-token"))
    return r.json() == {"jobs": []}


def chunks(size, piece=64 * 1024):
    async def gen():
        for start in range(0, size, piece):
            yield b"x" * min(piece, size - start)

    return gen()


@pytest.mark.parametrize(
    ("size", "chunked", "token"),
    [
        (limits.MAX_BODY_BYTES + 1, False, "alice-token"),
        (2 * 1024 * 1024, False, "alice-token"),
        (8 * 1024 * 1024, False, "alice-token"),
        (2 * 1024 * 1024, True, "alice-token"),
        (2 * 1024 * 1024, False, None),  # no token: the size is refused first, not a reset
    ],
    ids=["just-above", "2MiB", "8MiB", "chunked", "no-token"],
)
async def test_every_oversize_body_gets_a_json_413(service, size, chunked, token):
    headers = {"Content-Type": "application/json", **(auth(token) if token else {})}
    content = chunks(size) if chunked else b"x" * size
    r = await service.post("api/jobs", content=content, headers=headers)
    assert r.status_code == 413
    assert r.json() == {
        "error": f"the request body has {size} bytes; the limit (max_body_bytes) is "
        "1 MiB (1048576 bytes)",
        "field": "body",
        "limit": "max_body_bytes",
    }
    assert await no_jobs(service)
    # the connection stays usable: the body was read to its end
    assert (await service.get("api/profiles", headers=auth("alice-token"))).status_code == 200


async def test_a_body_at_the_limit_is_read(service):
    body = json.dumps({"config": CONFIG, "profile": "cpu"}).encode()
    body += b" " * (limits.MAX_BODY_BYTES - len(body))
    r = await service.post("api/jobs", content=body, headers=auth("alice-token"))
    assert r.status_code == 201, r.text


async def test_oversize_bodies_of_the_other_routes(service):
    big = b"x" * (limits.MAX_BODY_BYTES + 10)
    for method, path, token in (
        ("PUT", "api/users/bob/limit", "hub-admin-token"),
        ("DELETE", "api/jobs/1", "alice-token"),
        ("GET", "api/jobs", "alice-token"),
        ("POST", "api/nowhere", "alice-token"),
        ("GET", "oauth_callback", None),
    ):
        r = await service.request(method, path, content=big, headers=auth(token) if token else {})
        assert (r.status_code, r.json()["limit"]) == (413, "max_body_bytes"), (method, path)
    r = await service.get("api/users/bob/limit", headers=auth("hub-admin-token"))
    assert r.json()["max_running"] == 1  # the refused PUT changed nothing


def nested_yaml(depth):
    return CONFIG + "".join(" " * i + f"k{i}:\n" for i in range(depth - 1)) + " " * depth + "x: 1\n"


BILLION_LAUGHS = (
    CONFIG
    + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + (
        "".join(
            f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n"
            for a, b in zip("abcdefgh", "bcdefghi", strict=True)
        )
    )
)


@pytest.mark.parametrize(
    ("config", "status", "field", "limit"),
    [
        (CONFIG + "x: " + "a" * limits.MAX_CONFIG_BYTES + "\n", 413, "config", "max_config_bytes"),
        ({"x": "a" * limits.MAX_CONFIG_BYTES}, 413, "config", "max_config_bytes"),
        (nested_yaml(300), 400, "config", "max_config_depth"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, 400, "config", "max_config_depth"),
        (BILLION_LAUGHS, 400, "config", "yaml_aliases"),
        (
            CONFIG + "seed: " + ":".join(["1"] + ["2"] * 20000) + "\n",
            400,
            "config",
            "max_number_chars",
        ),
    ],
    ids=["yaml-size", "object-size", "yaml-depth", "json-depth", "aliases", "number"],
)
async def test_a_config_over_a_limit_is_a_4xx_naming_it(service, config, status, field, limit):
    r = await submit(service, config=config)
    assert r.status_code == status
    data = r.json()
    assert (data["field"], data["limit"]) == (field, limit)
    assert f"({limit})" in data["error"]
    assert await no_jobs(service)


async def test_a_deep_json_body_is_a_400_naming_the_limit(service):
    body = '{"profile": "cpu", "config": ' + '{"a": ' * 3000 + "1" + "}" * 3001
    r = await service.post("api/jobs", content=body.encode(), headers=auth("alice-token"))
    assert r.status_code == 400
    assert (r.json()["field"], r.json()["limit"]) == ("body", "max_config_depth")
    assert await no_jobs(service)


async def test_the_submit_form_refuses_over_the_limits(service):
    r = await service.post(
        "",
        data={"config": nested_yaml(300), "profile": "cpu", "priority": "normal"},
        headers=auth("alice-token"),
    )
    assert r.status_code == 400
    assert "(max_config_depth)" in r.text and "k250:" not in r.text
    r = await service.post(
        "",
        files={"config_file": ("train.yaml", b"x: 1\n" * 300_000)},
        data={"profile": "cpu"},
        headers=auth("alice-token"),
    )
    assert r.status_code == 413
    assert "(max_body_bytes)" in r.text
    assert await no_jobs(service)


async def test_unknown_paths_are_a_json_404(service):
    r = await service.get("api/nothing/here", headers=auth("alice-token"))
    assert (r.status_code, r.json()) == (404, {"error": "no such page or API path", "field": None})


# The slowest config to check within the limits (benchmarks/queue_bad_input.py): a flow list
# of one-digit numbers, about half a second of PyYAML.
WORST = (
    CONFIG + "deepspeed: {x: [" + ",".join(["1"] * ((limits.MAX_CONFIG_BYTES - 300) // 2)) + "]}\n"
)


async def test_checking_a_config_never_holds_up_other_requests(service):
    """The check runs in the worker process: while the slowest config within the limits is
    checked, other requests are answered at once."""
    assert len(WORST.encode()) <= limits.MAX_CONFIG_BYTES
    assert (await submit(service, config=WORST)).status_code == 201  # the worker is warm
    pending = [asyncio.ensure_future(submit(service, config=WORST)) for _ in range(2)]
    await asyncio.sleep(0.1)
    slowest, answered, began = 0.0, 0, time.perf_counter()
    while not all(p.done() for p in pending):
        started = time.perf_counter()
        r = await service.get("api/jobs", headers=auth("bob-token"))
        assert r.status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
        answered += 1
        await asyncio.sleep(0.01)
    checking = time.perf_counter() - began
    assert [p.result().status_code for p in pending] == [201, 201]
    # Relative, not timed: the checks of the two configs took ``checking`` seconds; no other
    # request waited for a large part of it. A check on a thread holding the GIL (the old
    # code) held each request for most of one check (~0.4 s of ~1 s).
    assert answered >= 4, (answered, checking)
    assert slowest < checking / 4, (slowest, checking)


async def test_interrupted_attempts_are_shown_and_their_saved_logs_served(service):
    from llmspawner.queue.models import Job, JobPod

    job = (await submit(service)).json()
    with service.ops.ctx.sessions() as db:
        db.add(
            JobPod(
                job_id=job["id"],
                pod="llm-job-alice-1-x7k2p",
                k8s_job="llm-job-alice-1",
                reason="EvictionByEvictionAPI",
                counted=1,
                log="step 1\nstep 2\n",
            )
        )
        row = db.get(Job, job["id"])
        row.interruptions = 1
        row.interruption = "interrupted: EvictionByEvictionAPI, requeued (1 of 3)"
        db.commit()
    shown = (await service.get(f"api/jobs/{job['id']}", headers=auth("alice-token"))).json()
    assert shown["interruptions"] == 1
    assert shown["reason"].startswith("interrupted: EvictionByEvictionAPI, requeued (1 of 3)")
    [attempt] = shown["attempts"]
    assert (attempt["attempt"], attempt["reason"], attempt["log_saved"]) == (
        1,
        "EvictionByEvictionAPI",
        True,
    )
    r = await service.get(
        f"api/jobs/{job['id']}/logs?attempt=1&tail=1", headers=auth("alice-token")
    )
    assert r.status_code == 200
    assert r.text.endswith("step 2\n") and "step 1" not in r.text
    assert "saved log of pod llm-job-alice-1-x7k2p" in r.text
    for bad, status in (("2", 404), ("x", 400)):
        r = await service.get(
            f"api/jobs/{job['id']}/logs?attempt={bad}", headers=auth("alice-token")
        )
        assert (r.status_code, r.json()["field"]) == (status, "attempt")
    page = await service.get(f"jobs/{job['id']}", headers=auth("alice-token"))
    assert 'id="attempt-list"' in page.text and "EvictionByEvictionAPI" in page.text
    assert f"api/jobs/{job['id']}/logs?attempt=1" in page.text
    # another user's job's attempts are not revealed
    r = await service.get(f"api/jobs/{job['id']}/logs?attempt=1", headers=auth("bob-token"))
    assert r.status_code == 404
