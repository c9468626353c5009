"""A real hub logging in against a real OIDC provider (``oidc-provider-mock``): a user removed
from the allowed group in the IdP loses access at the next auth refresh, and an IdP outage
during a refresh keeps existing sessions working (issue 12 §4).

The hub runs this repository's login configuration (:func:`llmspawner.hubconfig.configure_auth`
with ``JUPYTERHUB_CRYPT_KEY``, so :class:`llmspawner.auth.LLMOAuthenticator` with auth state)
and a 1-second ``auth_refresh_age``. Access is checked where every hub service checks it:
``GET /hub/api/user`` with the user's token (what ``HubAuth.user_for_token`` does for the
queue and MLflow's auth), a server start, and the hub's pages with the login cookie.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time

import httpx
import pytest

from devcluster.testing import wait_until
from llmspawner_dev.login import HubSession
from llmspawner_dev.parts import base_environment, hub_command, oidc_command
from llmspawner_dev.processes import ChildProcess, free_port

# The "single-user server": answers HTTP so that the hub sees it up.
FAKE_SERVER = """
import http.server, os, urllib.parse
port = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port
http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""

HUB_CONFIG = """
import sys
from llmspawner.hubconfig import configure_auth

c = get_config()  # noqa
configure_auth(c)
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = [sys.executable, {server!r}]
c.Spawner.args = []
"""

USERS = [
    {"sub": "dora", "preferred_username": "dora", "groups": ["users"]},
    {"sub": "erin", "preferred_username": "erin", "groups": ["users"]},
]


class Stack:
    """The hub and the provider, with a way to stop and restart the provider."""

    def __init__(self, work):
        self.work = work
        self.oidc_port, self.port = free_port(), free_port()
        self.issuer = f"http://127.0.0.1:{self.oidc_port}"
        self.hub_url = f"http://127.0.0.1:{self.port}"
        self.oidc: ChildProcess | None = None

    def start_oidc(self) -> None:
        argv = oidc_command(host="127.0.0.1", port=self.oidc_port, users=USERS)
        self.oidc = ChildProcess("oidc", argv, log_path=self.work / "oidc.log")
        self.oidc.start()
        wait_until(
            lambda: httpx.get(f"{self.issuer}/.well-known/openid-configuration").status_code == 200,
            30,
            "the OIDC provider",
            ignore=(httpx.HTTPError,),
        )

    def set_groups(self, sub: str, groups: list[str]) -> None:
        """Change a user's groups at the provider (``PUT /users/<sub>``)."""
        claims = {**next(u for u in USERS if u["sub"] == sub), "groups": groups}
        claims.pop("sub")
        r = httpx.put(f"{self.issuer}/users/{sub}", json=claims)
        assert r.status_code == 204, r.text


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("auth-refresh-hub")
    server = work / "fake_server.py"
    server.write_text(FAKE_SERVER)
    config = work / "jupyterhub_config.py"
    config.write_text(HUB_CONFIG.format(server=str(server)))
    s = Stack(work)
    s.start_oidc()
    client_id, client_secret = "hub", secrets.token_hex(16)
    env = base_environment(
        {k: v for k, v in os.environ.items() if not k.startswith(("LLMSPAWNER_", "OAUTH"))},
        marker=("LLMSPAWNER_TEST_AUTH_REFRESH", str(os.getpid())),
        extra={
            "LLMSPAWNER_OIDC_ISSUER": s.issuer,
            "OAUTH_CLIENT_ID": client_id,
            "OAUTH_CLIENT_SECRET": client_secret,
            "OAUTH_CALLBACK_URL": f"{s.hub_url}/hub/oauth_callback",
            "LLMSPAWNER_ALLOWED_GROUPS": "users",
            "LLMSPAWNER_AUTH_REFRESH_AGE": "1",
            "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
        },
    )
    # The provider accepts any client whose id and secret it was told at registration;
    # oidc-provider-mock accepts every client by default (no registration needed).
    argv = hub_command(
        config_file=config,
        workdir=work,
        host="127.0.0.1",
        port=s.port,
        hub_port=free_port(),
        proxy_api_port=free_port(),
    )
    hub = ChildProcess("hub", argv, log_path=work / "hub.log", env=env, cwd=work)
    hub.start()
    s.hub = hub
    try:
        wait_until(
            lambda: httpx.get(f"{s.hub_url}/hub/api/").status_code == 200,
            60,
            "the hub",
            ignore=(httpx.HTTPError,),
        )
        yield s
    except BaseException:
        print(hub.log_tail(80), file=sys.stderr)
        raise
    finally:
        hub.stop(10)
        if s.oidc is not None:
            s.oidc.stop(5)


def whoami(session: HubSession) -> int:
    """Status of ``GET /hub/api/user`` with the session's token (how services check it)."""
    return session.get("/hub/api/user").status_code


def service_sees(stack, session: HubSession) -> str | None:
    """The user a hub service (the queue, MLflow's auth) finds for the session's token:
    JupyterHub's own ``HubAuth.user_for_token``, uncached."""
    from jupyterhub.services.auth import HubAuth

    auth = HubAuth(api_url=f"{stack.hub_url}/hub/api", api_token="unused-by-user-for-token")
    model = auth.user_for_token(session.token, use_cache=False)
    return None if model is None else model["name"]


def after_refresh_age() -> None:
    time.sleep(1.5)  # auth_refresh_age is 1 s


def test_removed_from_the_allowed_group_loses_access(stack):
    with HubSession.login(stack.hub_url, "dora") as dora:
        assert whoami(dora) == 200
        assert service_sees(stack, dora) == "dora"
        stack.set_groups("dora", ["alumni"])
        after_refresh_age()
        # Her token: refused; a hub service (the queue, MLflow) finds no user for it.
        r = dora.get("/hub/api/user")
        assert r.status_code == 403, r.text
        after_refresh_age()
        assert service_sees(stack, dora) is None
        # No new server.
        r = dora.client.post(
            f"{stack.hub_url}/hub/api/users/dora/server",
            headers={"Authorization": f"token {dora.token}"},
        )
        assert r.status_code == 403, r.text
        # Her login cookie: sent to log in again, and the provider's groups refuse her.
        r = dora.client.get(f"{stack.hub_url}/hub/home")
        assert r.status_code == 302 and "/hub/login" in r.headers["location"], r.headers
        assert (
            "dora is no longer allowed by the identity provider (groups: alumni)"
            in stack.hub.log_tail(200)
        )
        # Back in the group: access again, nothing else to do.
        stack.set_groups("dora", ["users"])
        after_refresh_age()
        assert whoami(dora) == 200
        assert service_sees(stack, dora) == "dora"


def test_an_idp_outage_keeps_sessions_working(stack):
    with HubSession.login(stack.hub_url, "erin") as erin:
        assert whoami(erin) == 200
        stack.oidc.stop(5)
        try:
            after_refresh_age()
            for _ in range(3):  # several refreshes during the outage, none an error
                assert whoami(erin) == 200
                assert service_sees(stack, erin) == "erin"
                r = erin.client.get(f"{stack.hub_url}/hub/home")
                assert r.status_code == 200, r.status_code
                after_refresh_age()
            log = stack.hub.log_tail(300)
            assert "Identity provider unavailable while refreshing erin's login" in log
            assert "Traceback" not in log.split("erin")[-1]
        finally:
            stack.start_oidc()
    # The restarted mock provider has forgotten every token it issued (a real one keeps
    # them), so erin logs in again; the hub takes her as before.
    with HubSession.login(stack.hub_url, "erin") as again:
        assert json.loads(again.get("/hub/api/user").text)["name"] == "erin"
