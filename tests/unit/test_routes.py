"""The proxy route repair service (llmspawner.routes): its hub config entry and its checks.

The checks run against a stand-in of the hub's ``/hub/api/proxy`` (an injected fetch
function that keeps a routing table); the real hub and proxy are in
``tests/e2e/test_proxy_restart.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from traitlets.config import Config

from llmspawner import hubconfig, routes

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-route-token"


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({}, {}, routes.RouteChanges()),
        (
            {"/": {"target": "http://hub:8081"}},
            {
                "/": {"target": "http://hub:8081"},
                "/user/alice/": {"target": "http://10.0.0.5:8888"},
                "/services/llm-queue/": {"target": "http://hub:10101"},
            },
            routes.RouteChanges(added=("/services/llm-queue/", "/user/alice/")),
        ),
        (
            {"/user/gone/": {"target": "http://10.0.0.9:8888"}, "/": {"target": "http://a"}},
            {"/": {"target": "http://b"}},
            routes.RouteChanges(removed=("/user/gone/",), retargeted=("/",)),
        ),
    ],
)
def test_route_changes(before, after, expected):
    assert routes.route_changes(before, after) == expected
    assert bool(expected) == (before != after)


def test_changes_are_described_in_one_line():
    changes = routes.RouteChanges(added=("/user/alice/", "/services/llm-queue/"), removed=("/x/",))
    assert changes.describe() == "added 2 (/user/alice/, /services/llm-queue/); removed 1 (/x/)"
    assert routes.RouteChanges().describe() == "no change"


def test_service_and_role():
    service, role = routes.route_repair_service(
        interval=30, api_url="http://localhost:8081/hub/api"
    )
    assert service == {
        "name": "route-repair",
        "command": [
            sys.executable,
            "-m",
            "llmspawner.routes",
            "--interval=30",
            "--url=http://localhost:8081/hub/api",
        ],
    }
    # Only the proxy scope: read the routing table and have the hub sync it.
    assert role["scopes"] == ["proxy"]
    assert role["services"] == ["route-repair"]
    service, _ = routes.route_repair_service(interval=5)
    assert not any(a.startswith("--url") for a in service["command"])


@pytest.mark.parametrize("interval", [0, -1, 1.5, True, "30"])
def test_service_refuses_a_bad_interval(interval):
    with pytest.raises(ValueError, match="route repair interval must be a whole number"):
        routes.route_repair_service(interval=interval)


def config_with_profiles() -> Config:
    c = Config()
    c.LLMPlatform.profiles_dir = str(ROOT / "profiles")
    return c


def test_the_hub_config_adds_it_with_activity_polling_off():
    c = config_with_profiles()
    hubconfig.configure(c, {"LLMSPAWNER_HUB_API_URL": "http://localhost:8081/hub/api"})
    assert c.JupyterHub.last_activity_interval == 0
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["route-repair"]["command"][-2:] == [
        "--interval=30",
        "--url=http://localhost:8081/hub/api",
    ]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["route-repair"]["scopes"] == ["proxy"]


def test_standalone_config_file_adds_it(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith(("LLMSPAWNER_", "OAUTH"))]:
        monkeypatch.delenv(key)
    from traitlets.config.loader import PyFileConfigLoader

    c = PyFileConfigLoader("jupyterhub_config.py", path=str(ROOT)).load_config()
    assert "route-repair" in {s["name"] for s in c.JupyterHub.services}


def test_interval_from_the_environment_and_off():
    c = config_with_profiles()
    routes.configure_route_repair(c, {routes.INTERVAL_ENV: "7"})
    assert c.JupyterHub.services[0]["command"][-1] == "--interval=7"
    c = config_with_profiles()
    routes.configure_route_repair(c, {routes.INTERVAL_ENV: "0"})
    assert "services" not in c.JupyterHub


def test_a_configured_service_of_that_name_is_kept():
    c = config_with_profiles()
    c.JupyterHub.services = [{"name": "route-repair", "command": ["mine"]}]
    routes.configure_route_repair(c, {})
    assert c.JupyterHub.services == [{"name": "route-repair", "command": ["mine"]}]


@pytest.mark.parametrize("value", ["soon", "-5", "1.5"])
def test_a_bad_interval_stops_the_hub_naming_the_variable(value):
    with pytest.raises(hubconfig.ConfigError) as e:
        routes.configure_route_repair(config_with_profiles(), {routes.INTERVAL_ENV: value})
    assert str(e.value) == (
        f"llmspawner: LLMSPAWNER_ROUTE_REPAIR_INTERVAL must be a whole number of seconds >= 0, "
        f"not {value!r}"
    )


class FakeHub:
    """``/hub/api/proxy`` of a hub whose proxy lost its routes: ``POST`` puts ``wanted`` back.

    Pages are ``limit`` routes long, as the hub's paginated model; ``status`` answers every
    call instead when set; ``calls`` records ``(method, path, query)``.
    """

    def __init__(self, table: dict, wanted: dict):
        self.table = dict(table)
        self.wanted = dict(wanted)
        self.status: int | None = None
        self.calls: list[tuple[str, str, dict]] = []
        self.headers: list[dict] = []

    async def fetch(self, method, url, headers):
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.calls.append((method, parts.path, query))
        self.headers.append(dict(headers))
        if self.status is not None:
            return self.status, json.dumps({"status": self.status, "message": "proxy unreachable"})
        assert parts.path == "/hub/api/proxy"
        if method == "POST":
            self.table = dict(self.wanted)
            return 200, ""
        offset, limit = int(query["offset"]), int(query["limit"])
        keys = sorted(self.table)
        page = {k: self.table[k] for k in keys[offset : offset + limit]}
        following = None
        if offset + limit < len(keys):
            following = {"offset": offset + limit, "limit": limit, "url": "..."}
        body = {
            "items": page,
            "_pagination": {
                "offset": offset,
                "limit": limit,
                "total": len(keys),
                "next": following,
            },
        }
        return 200, json.dumps(body)


WANTED = {
    "/": {"target": "http://hub:8081", "data": {"hub": True}},
    "/user/alice/": {"target": "http://10.0.0.5:8888", "data": {"user": "alice"}},
    "/user/bob/": {"target": "http://10.0.0.6:8888", "data": {"user": "bob"}},
    "/services/llm-queue/": {"target": "http://hub:10101", "data": {"service": "llm-queue"}},
}


async def test_repair_reads_all_pages_around_the_post(caplog):
    hub = FakeHub({"/": WANTED["/"]}, WANTED)
    repair = routes.RouteRepair("http://hub:8081/hub/api/", TOKEN, fetch=hub.fetch, page_limit=2)
    with caplog.at_level(logging.WARNING, logger="llmspawner.routes"):
        changes = await repair.check()
    assert changes == routes.RouteChanges(
        added=("/services/llm-queue/", "/user/alice/", "/user/bob/")
    )
    methods = [(m, q.get("offset")) for m, _, q in hub.calls]
    # before (one page), the sync, after (two pages of 2 routes)
    assert methods == [("GET", "0"), ("POST", None), ("GET", "0"), ("GET", "2")]
    assert all(h["Authorization"] == f"token {TOKEN}" for h in hub.headers)
    assert all(h["Accept"] == routes.PAGINATION_MEDIA_TYPE for h in hub.headers)
    assert caplog.messages == [
        "proxy routes repaired: added 3 (/services/llm-queue/, /user/alice/, /user/bob/)"
    ]
    # A table that is right already: nothing logged above debug.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmspawner.routes"):
        assert await repair.check() == routes.RouteChanges()
    assert caplog.messages == []


async def test_a_failed_check_is_logged_without_the_token(caplog):
    hub = FakeHub({}, WANTED)
    hub.status = 500
    repair = routes.RouteRepair("http://hub:8081/hub/api", TOKEN, fetch=hub.fetch)
    with pytest.raises(routes.RouteRepairError, match="HTTP 500"):
        await repair.repair()
    with caplog.at_level(logging.WARNING, logger="llmspawner.routes"):
        assert await repair.check() is None
    (message,) = caplog.messages
    assert message.startswith("route check failed, trying again at the next interval: GET ")
    assert TOKEN not in message


async def test_no_response_and_a_bad_body_are_errors():
    async def refused(method, url, headers):
        raise ConnectionRefusedError("connection refused")

    repair = routes.RouteRepair("http://hub:8081/hub/api", TOKEN, fetch=refused)
    with pytest.raises(routes.RouteRepairError, match="connection refused"):
        await repair.routes()

    async def not_paginated(method, url, headers):
        return 200, json.dumps({"/": {"target": "x"}})

    repair = routes.RouteRepair("http://hub:8081/hub/api", TOKEN, fetch=not_paginated)
    with pytest.raises(routes.RouteRepairError, match="unexpected body"):
        await repair.routes()


async def test_run_checks_every_interval_until_stopped():
    hub = FakeHub(WANTED, WANTED)
    repair = routes.RouteRepair("http://hub/hub/api", TOKEN, fetch=hub.fetch)
    stop = asyncio.Event()
    task = asyncio.create_task(repair.run(0.05, stop=stop))
    await asyncio.sleep(0.22)
    stop.set()
    await asyncio.wait_for(task, 1)
    posts = sum(1 for m, _, _ in hub.calls if m == "POST")
    assert 3 <= posts <= 6


async def test_run_keeps_going_after_failures():
    hub = FakeHub({}, WANTED)
    hub.status = 503
    repair = routes.RouteRepair("http://hub/hub/api", TOKEN, fetch=hub.fetch)
    stop = asyncio.Event()
    task = asyncio.create_task(repair.run(0.02, stop=stop))
    await asyncio.sleep(0.1)
    hub.status = None  # the hub answers again: the next check repairs
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert hub.table == WANTED


def test_main_needs_a_token_and_a_url(capsys):
    assert routes.main(["--interval=5"], env={"JUPYTERHUB_API_URL": "http://hub/hub/api"}) == 2
    assert "JUPYTERHUB_API_TOKEN" in capsys.readouterr().err
    assert (
        routes.main(["--interval=0"], env={"JUPYTERHUB_API_TOKEN": "t", "JUPYTERHUB_API_URL": "u"})
        == 2
    )


def test_helm_values_run_it_in_the_hub_pod_against_localhost():
    """Under z2jh the service reaches the hub's API on localhost, as the culler does."""
    import yaml

    values = yaml.safe_load((ROOT / "helm-values.yaml").read_text())
    env = {k: v for k, v in values["hub"]["extraEnv"].items() if isinstance(v, str)}
    assert env[routes.INTERVAL_ENV] == "30"
    c = config_with_profiles()
    routes.configure_route_repair(c, env)
    (service,) = c.JupyterHub.services
    assert service["command"][-2:] == ["--interval=30", "--url=http://localhost:8081/hub/api"]
    # The chart's hub polls no activity: the route check must come from this service.
    assert values["hub"]["config"]["JupyterHub"]["last_activity_interval"] == 0
