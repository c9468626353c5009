"""``HubSession.create_token`` against a stand-in hub that checks the ``_xsrf`` cookie as
JupyterHub 5.4 does: the cookie set at login can be stale, the first page view replaces it."""

import httpx
import pytest

from llmspawner_dev.login import HubSession, LoginError

HUB = "http://hub.test"


def _hub(requests: list[str]):
    """JupyterHub's token API: the X-XSRFToken header must equal the session's _xsrf cookie,
    which only a page view after login sets (``fresh``); the login left ``stale``."""

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(f"{request.method} {request.url.path}")
        if (request.method, request.url.path) == ("GET", "/hub/token"):
            return httpx.Response(
                200,
                text="<html>token page</html>",
                headers={"Set-Cookie": "_xsrf=fresh; Path=/hub/"},
            )
        if (request.method, request.url.path) == ("POST", "/hub/api/users/alice/tokens"):
            cookie = request.headers.get("cookie", "")
            if request.headers.get("X-XSRFToken") == "fresh" and "_xsrf=fresh" in cookie:
                return httpx.Response(201, json={"token": "t0k"})
            return httpx.Response(403, json={"message": "XSRF cookie does not match POST argument"})
        return httpx.Response(404)

    return handle


def _session(requests: list[str]) -> HubSession:
    session = HubSession(HUB, "alice")
    session.client = httpx.Client(transport=httpx.MockTransport(_hub(requests)))
    session.client.cookies.set("_xsrf", "stale", domain="hub.test", path="/hub/")
    return session


def test_create_token_opens_a_page_first_for_the_current_xsrf_cookie():
    requests = []
    with _session(requests) as session:
        assert session.create_token() == "t0k" == session.token
    assert requests == ["GET /hub/token", "POST /hub/api/users/alice/tokens"]


def test_create_token_names_the_refusal():
    requests = []
    with _session(requests) as session:
        session.username = "bob"
        with pytest.raises(LoginError, match=r"POST /hub/api/users/bob/tokens answered 404"):
            session.create_token()
