"""A user's session with the hub, without a browser: OIDC login, API token, their server.

:meth:`HubSession.login` walks the real login path with a cookie jar: the hub's
``/hub/oauth_login`` redirects to the OIDC provider's authorize page, the page's form is
submitted with the user's ``sub`` (as clicking the provider's button does), the provider
redirects to the hub's ``/hub/oauth_callback``, and the hub sets its login cookies. The session
then opens the hub's token page, as a browser would, and asks the hub for an API token
(``POST /hub/api/users/<name>/tokens``, authenticated by the login cookie and the ``_xsrf``
token of that page), which every later call uses.

Usage::

    with HubSession.login(stack.hub_url, "alice") as alice:
        alice.start_server("medium")
        alice.wait_ready(timeout=600)
        page = alice.get("/user/alice/llamaboard/")
        alice.stop_server()
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from urllib.parse import quote, urljoin, urlsplit

import httpx

from devcluster.testing import WaitTimeout, wait_until


class LoginError(RuntimeError):
    """The login path did not end logged in; the message names the step and the status."""


class SpawnError(RuntimeError):
    """The user's server failed to start or to stop; the message has the hub's reason."""


def _same_origin(a: str, b: str) -> bool:
    sa, sb = urlsplit(a), urlsplit(b)
    return (sa.scheme, sa.netloc) == (sb.scheme, sb.netloc)


class HubSession:
    """An HTTP client logged in to the hub as one user, with an API token.

    Args:
        hub_url: the hub's public URL (no trailing ``/``), e.g. ``http://127.0.0.1:8000``.
        username: the user's name at the hub (also the ``sub`` typed on the OIDC page).
        timeout: per-request timeout in seconds.

    Use :meth:`login` to build a logged-in session. Close it (or use ``with``) when done.
    """

    def __init__(self, hub_url: str, username: str, *, timeout: float = 30.0):
        self.hub_url = hub_url.rstrip("/")
        self.username = username
        self.token: str | None = None
        self.client = httpx.Client(timeout=timeout, follow_redirects=False)

    # -- login -----------------------------------------------------------------------------

    @classmethod
    def login(
        cls,
        hub_url: str,
        username: str,
        *,
        timeout: float = 30.0,
        token_expires_in: int = 3600,
    ) -> HubSession:
        """Log ``username`` in through the hub's OIDC login and get an API token.

        Args:
            token_expires_in: lifetime of the API token, seconds.

        Raises:
            LoginError: a step of the login returned something unexpected.
        """
        session = cls(hub_url, username, timeout=timeout)
        try:
            session.oidc_login()
            session.create_token(expires_in=token_expires_in)
        except BaseException:
            session.close()
            raise
        return session

    def _follow(self, response: httpx.Response, *, stop_at: str | None = None) -> httpx.Response:
        """Follow redirects by hand until a non-redirect, or a URL whose path is ``stop_at``."""
        for _ in range(20):
            if not response.is_redirect:
                return response
            url = urljoin(str(response.url), response.headers["location"])
            if stop_at is not None and urlsplit(url).path == stop_at:
                return response
            response = self.client.get(url)
        raise LoginError(f"too many redirects, last at {response.url}")

    def oidc_callback(self) -> httpx.Response:
        """Go through ``/hub/oauth_login`` and the provider's authorize form; return the hub's
        answer to the provider's redirect back (``/hub/oauth_callback``), not followed.

        Raises:
            LoginError: naming the step before the callback that failed.
        """
        hub = self.hub_url
        response = self.client.get(f"{hub}/hub/oauth_login")
        if not response.is_redirect:
            raise LoginError(
                f"GET /hub/oauth_login answered {response.status_code}, not a redirect "
                "to the OIDC provider"
            )
        # The hub -> provider's authorize page (GET shows its form).
        page = self._follow(response)
        if page.status_code != 200 or 'name="sub"' not in page.text:
            raise LoginError(
                f"the OIDC authorize page {page.url} answered {page.status_code} "
                f"without a login form: {page.text[:300]!r}"
            )
        authorize_url = str(page.url)
        # Submitting the form posts to the same URL (with its query) and redirects back.
        response = self.client.post(authorize_url, data={"sub": self.username})
        if not response.is_redirect:
            raise LoginError(
                f"POST to the OIDC authorize page answered {response.status_code}: "
                f"{response.text[:300]!r}"
            )
        callback = urljoin(authorize_url, response.headers["location"])
        if not _same_origin(callback, hub) or "/hub/oauth_callback" not in callback:
            raise LoginError(f"the OIDC provider redirected to {callback}, not the hub's callback")
        return self.client.get(callback)

    def oidc_login(self) -> None:
        """Log in through ``/hub/oauth_login`` and the provider's authorize form.

        Raises:
            LoginError: naming the step that failed.
        """
        response = self.oidc_callback()
        if not response.is_redirect:
            raise LoginError(
                f"the hub's oauth_callback answered {response.status_code}: {response.text[:500]!r}"
            )
        if self._xsrf() is None:
            raise LoginError("the hub's oauth_callback did not set the _xsrf cookie")

    def _xsrf(self) -> str | None:
        for cookie in self.client.cookies.jar:
            if cookie.name == "_xsrf" and cookie.path.startswith("/hub"):
                return cookie.value
        return None

    def create_token(self, *, expires_in: int = 3600, note: str = "llmspawner dev") -> str:
        """Ask the hub for an API token of this user (cookie-authenticated); return it.

        Raises:
            LoginError: the hub refused (e.g. not logged in).
        """
        # A page first, as in a browser: on it the hub sets the _xsrf cookie of the logged-in
        # session. JupyterHub 5.4 sets a stale one at login when the session cookie is new
        # (the login does not see its own new session id; 6.1 does); the first page replaces it.
        self.client.get(f"{self.hub_url}/hub/token")
        xsrf = self._xsrf()
        response = self.client.post(
            f"{self.hub_url}/hub/api/users/{quote(self.username)}/tokens",
            json={"note": note, "expires_in": expires_in},
            headers={"X-XSRFToken": xsrf or "", "Referer": f"{self.hub_url}/hub/token"},
        )
        if response.status_code != 201:
            raise LoginError(
                f"POST /hub/api/users/{self.username}/tokens answered "
                f"{response.status_code}: {response.text[:300]!r}"
            )
        self.token = response.json()["token"]
        return self.token

    # -- plain requests -------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Make a request to ``<hub_url><path>`` with the user's token (no redirects followed)."""
        headers = {**self._auth(), **kwargs.pop("headers", {})}
        return self.client.request(method, f"{self.hub_url}{path}", headers=headers, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        """``GET <hub_url><path>`` with the user's token, e.g. ``/user/alice/llamaboard/``."""
        return self.request("GET", path, **kwargs)

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Call the hub's REST API: ``<hub_url>/hub/api<path>`` with the user's token."""
        return self.request(method, f"/hub/api{path}", **kwargs)

    # -- the user's server ----------------------------------------------------------------

    @property
    def _user_path(self) -> str:
        return f"/users/{quote(self.username)}"

    def user_model(self) -> dict:
        """Return the hub's model of this user (``GET /hub/api/users/<name>``).

        Raises:
            httpx.HTTPStatusError: the hub refused.
        """
        response = self.api("GET", self._user_path)
        response.raise_for_status()
        return response.json()

    def server_model(self, server_name: str = "") -> dict | None:
        """Return the server's model from the user model (``None``: no such server)."""
        return (self.user_model().get("servers") or {}).get(server_name)

    def start_server(self, profile: str | None = None, *, user_options: dict | None = None) -> int:
        """Ask the hub to start the user's default server with ``{"profile": profile}``.

        Args:
            profile: a profile slug, e.g. ``"medium"``; ``None`` sends no profile.
            user_options: extra user options merged into the request body.

        Returns:
            The hub's status: 201 (started) or 202 (spawn pending).

        Raises:
            SpawnError: the hub refused (status and body in the message).
        """
        body = dict(user_options or {})
        if profile is not None:
            body["profile"] = profile
        response = self.api("POST", f"{self._user_path}/server", json=body)
        if response.status_code not in (201, 202):
            raise SpawnError(
                f"POST /hub/api{self._user_path}/server answered {response.status_code}: "
                f"{response.text[:500]}"
            )
        return response.status_code

    def progress_events(self, *, timeout: float = 30.0) -> list[dict]:
        """Read the spawn progress event stream until it ends or ``timeout`` seconds pass."""
        events = []
        deadline = time.monotonic() + timeout
        try:
            with self.client.stream(
                "GET",
                f"{self.hub_url}/hub/api{self._user_path}/server/progress",
                headers=self._auth(),
                timeout=httpx.Timeout(timeout),
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        events.append(json.loads(line[5:]))
                    if time.monotonic() > deadline:
                        break
        except httpx.TransportError:
            pass
        return events

    def wait_ready(
        self,
        timeout: float = 600.0,
        *,
        interval: float = 1.0,
        on_poll: Callable[[dict], None] | None = None,
    ) -> dict:
        """Wait until the default server is ready; return its server model.

        Args:
            on_poll: called with the server model at each poll while it is pending (e.g. to
                keep the pod's latest log, which is gone once the hub gives up).

        Raises:
            SpawnError: the spawn failed (the server vanished), with the hub's last progress
                message when there is one.
            TimeoutError: not ready after ``timeout`` seconds.
        """

        last: dict = {}

        def ready() -> dict | None:
            server = self.server_model()
            last["pending"] = server and server.get("pending")
            if server is None:
                raise SpawnError(f"the server of {self.username} is gone: the spawn failed")
            if server.get("ready"):
                return server
            if server.get("pending") is None:
                raise SpawnError(f"the server of {self.username} is neither ready nor pending")
            if on_poll is not None:
                on_poll(server)
            return None

        try:
            return wait_until(ready, timeout, f"the server of {self.username} is ready", interval)
        except WaitTimeout as e:
            raise WaitTimeout(f"{e} (pending: {last.get('pending')})") from None

    def stop_server(self, timeout: float = 120.0, *, interval: float = 0.5) -> None:
        """Stop the default server and wait until the hub has no server for the user.

        Raises:
            SpawnError: the hub refused the stop.
            TimeoutError: still there after ``timeout`` seconds.
        """
        response = self.api("DELETE", f"{self._user_path}/server")
        if response.status_code not in (202, 204, 400):
            raise SpawnError(
                f"DELETE /hub/api{self._user_path}/server answered {response.status_code}: "
                f"{response.text[:500]}"
            )
        wait_until(
            lambda: self.server_model() is None,
            timeout,
            f"the server of {self.username} is gone",
            interval,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections (the token stays valid until it expires)."""
        self.client.close()

    def stop_and_close(self) -> None:
        """Stop the user's server if one exists (e.g. left by a test that failed halfway),
        then close the connections, even when stopping fails.

        Raises:
            SpawnError, TimeoutError: as :meth:`stop_server`.
        """
        try:
            if self.server_model() is not None:
                self.stop_server()
        finally:
            self.close()

    def __enter__(self) -> HubSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
