"""A restarted proxy gets its routes back within a minute (issue 17, "Proxy routes are never
repaired").

The dev stack runs configurable-http-proxy beside the hub, as z2jh's proxy pod
(``ConfigurableHTTPProxy.should_start = False``), and the hub's activity poll, which would
also re-check the routes, is off (``last_activity_interval = 0``). After the proxy restarts
with an empty routing table, a running server and ``/services/llm-queue/`` do not answer
until the route repair service (:mod:`llmspawner.routes`, default interval 30 s) has the hub
add their routes again.
"""

from __future__ import annotations

import time

import pytest

from llmspawner.routes import DEFAULT_INTERVAL
from llmspawner_dev.login import HubSession

from .polling import wait_until

pytestmark = pytest.mark.e2e

#: Seconds from the restart until both answer again: one interval of the route repair, the
#: time of its check, and slack for a busy 2-core machine.
BOUND = 60.0

USER = "grace"
SERVER_API = f"/user/{USER}/api/status"
QUEUE_API = "/services/llm-queue/api/jobs"


def statuses(session: HubSession) -> dict[str, int]:
    """The status of one request to the user's server and one to the queue, redirects not
    followed: a request that the proxy sends to the hub by mistake gets the hub's redirect
    (302) at once. Following it would take the hub's redirect-loop back-off (2 + 4 + 8 s
    before its 500 "Redirect loop detected"), long enough for a repair to land meanwhile."""
    return {
        path: session.get(path, follow_redirects=False).status_code
        for path in (SERVER_API, QUEUE_API)
    }


def test_proxy_restarted_routes_back_within_a_minute(stack, timeouts):
    assert DEFAULT_INTERVAL + 15 <= BOUND
    session = HubSession.login(stack.hub_url, USER)
    try:
        session.start_server("cpu")
        session.wait_ready(timeouts.server)
        wait_until(
            lambda: statuses(session) == {SERVER_API: 200, QUEUE_API: 200},
            timeouts.stack,
            "the user's server and the queue answer through the proxy",
        )
        assert f"/user/{USER}" in stack.proxy_routes()

        stack.restart_proxy()
        restarted = time.monotonic()
        # The new proxy knows no route: everything goes to its default target, the hub.
        assert f"/user/{USER}" not in stack.proxy_routes()
        before = statuses(session)
        # The repair runs on its own clock: only while the routes are still missing after the
        # requests must they have failed (a repair landing between restart and requests is
        # rare, not wrong).
        if not {f"/user/{USER}", "/services/llm-queue"} & stack.proxy_routes().keys():
            assert before[SERVER_API] != 200 and before[QUEUE_API] != 200, before

        last: dict = {}

        def answer_again() -> bool:
            last.update(statuses(session))
            return last == {SERVER_API: 200, QUEUE_API: 200}

        try:
            wait_until(answer_again, BOUND, "both answer 200 again", 1.0)
        except AssertionError as e:
            raise AssertionError(f"{e}; last statuses: {last}; before: {before}") from None
        took = time.monotonic() - restarted
        assert took <= BOUND
        routes = stack.proxy_routes()
        assert {f"/user/{USER}", "/services/llm-queue"} <= routes.keys(), sorted(routes)
        # The service says what it repaired, in the hub's log (managed services log there).
        hub_log = (stack.logs_dir / "hub.log").read_text(errors="replace")
        assert "proxy routes repaired: added" in hub_log
        print(f"routes back {took:.1f} s after the proxy restart; before: {before}")
    finally:
        session.stop_and_close()
