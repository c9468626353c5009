"""Proxy route repair: a small hub service that has the hub check the proxy's routes.

Why: the hub re-checks the proxy's routing table (``Proxy.check_routes``) only inside its
activity poll (``JupyterHub.last_activity_interval``), which llmspawner switches off
(:func:`llmspawner.hubconfig.configure_culler`: the proxy counts LlamaBoard's background
polling as activity). When the hub starts configurable-http-proxy itself, its
``check_running`` restarts a dead proxy and restores the routes; under zero-to-jupyterhub the
proxy runs in its own pod with its routes in memory only, so after that pod restarts every
server and ``/services/llm-queue/`` answer 500 ("Redirect loop detected", the proxy's default
target is the hub) until something adds the routes again. See JupyterHub's ``app.py``
(``if self.last_activity_interval: PeriodicCallback(self.update_last_activity, ...)``, whose
last step is ``check_routes``) and ``proxy.py`` (``check_running``, ``restore_routes``):
https://github.com/jupyterhub/jupyterhub/blob/main/jupyterhub/app.py

What: every ``interval`` seconds this service calls ``POST /hub/api/proxy``, whose handler
runs ``self.proxy.check_routes(self.users, self.services)``: missing routes of ready servers
and services are added, wrong targets updated, stale routes deleted, exactly as the hub's own
periodic check does, without reading or recording any activity
(https://github.com/jupyterhub/jupyterhub/blob/main/jupyterhub/apihandlers/proxy.py). Its
token has only the ``proxy`` scope. To log what was repaired it reads the routing table
(``GET /hub/api/proxy``, paginated, the same scope) before and after, and logs the routes
that were added, removed or re-targeted; an unchanged table is logged at debug level only.

The hub's configuration adds the service (:func:`configure_route_repair`, called by
:func:`llmspawner.hubconfig.configure`); ``LLMSPAWNER_ROUTE_REPAIR_INTERVAL`` sets the
interval in seconds (default 30; ``0``: no service).

Run by the hub as ``python -m llmspawner.routes --interval=30 [--url=<hub API>]`` with
``JUPYTERHUB_API_TOKEN`` (and ``JUPYTERHUB_API_URL``) in its environment, as JupyterHub gives
every managed service. A failed check (hub or proxy down, 5xx) is logged and tried again at
the next interval; the process never stops on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

log = logging.getLogger("llmspawner.routes")

#: The hub service's name (and its role's).
SERVICE_NAME = "route-repair"
#: The only scope it needs: read the routing table and have the hub sync it (``/hub/api/proxy``;
#: https://jupyterhub.readthedocs.io/en/stable/rbac/scopes.html#available-scopes).
SCOPES = ("proxy",)
#: Seconds between two checks by default: a restarted proxy serves again within this time.
DEFAULT_INTERVAL = 30
#: Variable of the hub's environment that sets the interval (``0``: no service).
INTERVAL_ENV = "LLMSPAWNER_ROUTE_REPAIR_INTERVAL"
#: Seconds one hub API request may take. The hub retries a proxy it cannot reach for up to
#: 30 s (``ConfigurableHTTPProxy.api_request``) before ``POST /hub/api/proxy`` fails.
REQUEST_TIMEOUT = 60.0
#: JupyterHub's media type for paginated list responses (``jupyterhub/apihandlers/base.py``).
PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"


class RouteRepairError(RuntimeError):
    """A hub API call of the route check failed (the message names the call and status)."""


@dataclass(frozen=True)
class RouteChanges:
    """What one check changed in the proxy's routing table (routespecs, sorted).

    Attributes:
        added: routes that were missing and were added, e.g. ``("/user/alice/",)``.
        removed: stale routes that were deleted.
        retargeted: routes whose target changed.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    retargeted: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.retargeted)

    def describe(self) -> str:
        """One line, e.g. ``added 2 (/user/alice/, /services/llm-queue/)``; ``no change``."""
        parts = [
            f"{what} {len(specs)} ({', '.join(specs)})"
            for what, specs in (
                ("added", self.added),
                ("removed", self.removed),
                ("re-targeted", self.retargeted),
            )
            if specs
        ]
        return "; ".join(parts) or "no change"


def route_changes(before: Mapping[str, Mapping], after: Mapping[str, Mapping]) -> RouteChanges:
    """Compare two routing tables (``GET /hub/api/proxy``: routespec -> ``{"target", ...}``).

    Pure. A route whose ``target`` differs counts as re-targeted.

    Returns:
        A new :class:`RouteChanges`.
    """
    return RouteChanges(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        retargeted=tuple(
            sorted(
                spec
                for spec in before.keys() & after.keys()
                if (before[spec] or {}).get("target") != (after[spec] or {}).get("target")
            )
        ),
    )


#: ``async (method, url, headers) -> (status, body text)``: one HTTP request; raises
#: ``OSError`` (or tornado's errors) when there is no response.
Fetch = Callable[[str, str, Mapping[str, str]], Awaitable[tuple[int, str]]]


def tornado_fetch(request_timeout: float = REQUEST_TIMEOUT) -> Fetch:
    """A :data:`Fetch` on tornado's shared ``AsyncHTTPClient`` (JupyterHub's own client)."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    async def fetch(method: str, url: str, headers: Mapping[str, str]) -> tuple[int, str]:
        request = HTTPRequest(
            url,
            method=method,
            headers=dict(headers),
            body=b"" if method == "POST" else None,
            connect_timeout=min(10.0, request_timeout),
            request_timeout=request_timeout,
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code == 599:  # tornado's code for "no response" (refused, timeout)
            raise OSError(f"no response: {response.error}")
        return response.code, (response.body or b"").decode("utf-8", "replace")

    return fetch


class RouteRepair:
    """The route check against one hub (``api_url``), with a token holding the ``proxy`` scope.

    Args:
        api_url: the hub's API, e.g. ``http://localhost:8081/hub/api``.
        token: the service's API token (never logged).
        fetch: the HTTP call (:func:`tornado_fetch` when omitted); tests inject their own.
        page_limit: routes asked for per page of ``GET /proxy`` (the hub may cap it).

    The constructor does no I/O.
    """

    def __init__(
        self, api_url: str, token: str, *, fetch: Fetch | None = None, page_limit: int = 200
    ):
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._fetch = fetch
        self.page_limit = page_limit

    async def _call(self, method: str, path: str, query: Mapping | None = None) -> str:
        if self._fetch is None:
            self._fetch = tornado_fetch()
        url = f"{self.api_url}{path}" + (f"?{urlencode(query)}" if query else "")
        headers = {"Authorization": f"token {self._token}", "Accept": PAGINATION_MEDIA_TYPE}
        try:
            status, body = await self._fetch(method, url, headers)
        except OSError as e:
            raise RouteRepairError(f"{method} {url}: {e}") from None
        if status >= 300:
            raise RouteRepairError(f"{method} {url}: HTTP {status} {body[:200]}")
        return body

    async def routes(self) -> dict[str, dict]:
        """The proxy's routing table through the hub: routespec -> route (all pages).

        Raises:
            RouteRepairError: a request failed or answered with a status >= 300, or the body
                is not the hub's paginated model.
        """
        routes: dict[str, dict] = {}
        offset = 0
        while True:
            body = await self._call("GET", "/proxy", {"offset": offset, "limit": self.page_limit})
            try:
                page = json.loads(body)
                items, pagination = page["items"], page["_pagination"]
                routes.update(items)
                following = pagination.get("next")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise RouteRepairError(f"GET {self.api_url}/proxy: unexpected body ({e})") from None
            if not following or not items:
                return routes
            offset = int(following["offset"])

    async def repair(self) -> RouteChanges:
        """Have the hub check the routes (``POST /proxy``); return what changed.

        Raises:
            RouteRepairError: as :meth:`routes`, or the ``POST`` failed (e.g. 500 when the hub
                cannot reach the proxy for 30 s).
        """
        before = await self.routes()
        await self._call("POST", "/proxy")
        return route_changes(before, await self.routes())

    async def check(self) -> RouteChanges | None:
        """:meth:`repair`, logging the outcome instead of raising; ``None`` when it failed."""
        try:
            changes = await self.repair()
        except RouteRepairError as e:
            log.warning("route check failed, trying again at the next interval: %s", e)
            return None
        if changes:
            log.warning("proxy routes repaired: %s", changes.describe())
        else:
            log.debug("proxy routes checked: no change")
        return changes

    async def run(self, interval: float, *, stop: asyncio.Event | None = None) -> None:
        """:meth:`check` every ``interval`` seconds until ``stop`` is set (forever without)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.check()
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass


def route_repair_service(*, interval: int, api_url: str | None = None) -> tuple[dict, dict]:
    """The ``c.JupyterHub.services`` entry and the role of the route repair (pure).

    Args:
        interval: seconds between two checks (``--interval``), >= 1.
        api_url: the hub's API as the service reaches it (``--url``); default the hub's
            ``$JUPYTERHUB_API_URL``. Under z2jh, ``http://localhost:8081/hub/api``, as for the
            culler (:func:`llmspawner.culling.culler_service`).

    Returns:
        ``(service, role)``; the role holds only :data:`SCOPES`.

    Raises:
        ValueError: for an interval that is not a whole number >= 1.
    """
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(
            f"route repair interval must be a whole number of seconds >= 1, not {interval!r}"
        )
    command = [sys.executable, "-m", "llmspawner.routes", f"--interval={interval}"]
    if api_url:
        command.append(f"--url={api_url}")
    service = {"name": SERVICE_NAME, "command": command}
    role = {
        "name": SERVICE_NAME,
        "description": "Have the hub re-check the proxy's routes (llmspawner: route repair)",
        "scopes": list(SCOPES),
        "services": [SERVICE_NAME],
    }
    return service, role


def configure_route_repair(c, env: Mapping[str, str] = os.environ) -> None:
    """Add the route repair service to the hub's config ``c`` (see the module docstring).

    ``LLMSPAWNER_ROUTE_REPAIR_INTERVAL`` (seconds, default :data:`DEFAULT_INTERVAL`; ``0``:
    no service), ``LLMSPAWNER_HUB_API_URL`` (the service's ``--url``). Skipped when a service
    of that name is configured already.

    Raises:
        llmspawner.hubconfig.ConfigError: naming the variable, for a bad interval.
    """
    from .hubconfig import ConfigError, add_service  # hubconfig imports this module
    from .settings import SettingError, parse_int

    try:
        interval = parse_int(
            env.get(INTERVAL_ENV),
            name=INTERVAL_ENV,
            default=DEFAULT_INTERVAL,
            minimum=0,
            unit="seconds",
        )
    except SettingError as e:
        raise ConfigError(f"llmspawner: {e}") from None
    if not interval:
        return
    existing = c.JupyterHub.services if "services" in c.JupyterHub else []
    if any(s.get("name") == SERVICE_NAME for s in existing):
        return
    service, role = route_repair_service(
        interval=interval, api_url=env.get("LLMSPAWNER_HUB_API_URL") or None
    )
    add_service(c, service, [role])


def main(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    """The service's process: ``python -m llmspawner.routes --interval=N [--url=URL]``.

    Returns:
        2 for bad arguments or no token; otherwise it runs until stopped (SIGTERM).
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m llmspawner.routes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between checks"
    )
    parser.add_argument(
        "--url", default=env.get("JUPYTERHUB_API_URL", ""), help="the hub's API URL"
    )
    args = parser.parse_args(argv)
    from .lifeline import hold_to_parent

    hold_to_parent(env=env)  # no second copy next to a restarted hub (llmspawner.lifeline)
    token = env.get("JUPYTERHUB_API_TOKEN", "")
    if args.interval <= 0 or not args.url or not token:
        print(
            "llmspawner.routes: needs --interval > 0, --url (or JUPYTERHUB_API_URL) and "
            "JUPYTERHUB_API_TOKEN (the hub sets both for its managed services)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s"
    )
    log.info("checking the proxy's routes through %s every %g s", args.url, args.interval)
    asyncio.run(RouteRepair(args.url, token).run(args.interval))
    return 0  # pragma: no cover - run() returns only when stopped


if __name__ == "__main__":  # pragma: no cover - the hub runs it as a process
    sys.exit(main())
