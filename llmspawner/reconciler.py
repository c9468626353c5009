"""Orphan reconciler: a small hub service that deletes user-server pods the hub has forgotten.

Why: a server pod whose hub server is gone holds its GPU slice forever, and nothing sees it
(the culler works from the hub's list, the spawn form counts the slice as used). It happens
when a stop's pod DELETE keeps failing past ``LLMSpawner.stop_retry_timeout`` (JupyterHub's
``User.stop`` forgets the server in a ``finally`` whatever ``Spawner.stop`` raised:
https://github.com/jupyterhub/jupyterhub/blob/5.5.4/jupyterhub/user.py), when a failed start
could not remove the pod its create made, or when the hub's database was restored or reset.

What: every ``interval`` seconds it lists the namespace's user-server pods of this hub (label
``component=singleuser-server``, kubespawner's ``component_label``, and the hub's release
label where z2jh sets one, :func:`pod_selector`; the hub user and server
from kubespawner's ``hub.jupyter.org/username``/``servername`` annotations), then asks the hub
which servers are active (``GET /hub/api/users?state=active``, paginated: each user's
``servers`` holds exactly the servers that are ready or pending, stop included). A pod whose
server is not among them is a candidate; it is deleted only once it has been a candidate for
``grace`` seconds in a row *and* is older than ``grace``, after one more look at that user
(``GET /hub/api/users/<name>``), with a precondition on the pod's uid (never a newer pod of
the same name). Each deletion is logged at warning level with the pod, user and server. A pod
whose user the hub does not know (404: renamed while the server ran — the pod keeps the old
name in its annotation —, deleted, or hidden from this token) is never deleted, only logged
once; a user model without ``servers`` (a missing ``read:servers``) fails the pass. The
pods list is read before the hub's list, so a pod that a start has just created always
belongs to a server the hub already reports as pending; pods of ready or pending servers are
never touched. When the hub or the cluster cannot be asked, the pass changes nothing.

Least privilege:

- hub scopes: ``list:users`` (the names in the user list) and ``read:servers`` (each
  user's active servers and their state) — nothing that starts, stops or reads tokens
  (https://jupyterhub.readthedocs.io/en/stable/rbac/scopes.html#available-scopes);
- Kubernetes RBAC, in the user pods' namespace: ``pods``: ``list`` and ``delete``
  (:data:`RBAC_RULES`), nothing cluster-wide. As a managed service it runs in the hub's pod,
  so with the hub's ServiceAccount token (z2jh's hub Role has ``get, watch, list, create,
  delete`` on pods, a superset: no new Role is needed), reached through the in-cluster
  ``KUBERNETES_SERVICE_*`` or ``KUBECONFIG`` passed into its environment. A Kubernetes
  ServiceAccount belongs to a pod, not to a process, so a narrower identity would need the
  reconciler in a pod of its own; its Role would then be exactly :data:`RBAC_RULES`.

Run by the hub as ``python -m llmspawner.reconciler --interval=60 --grace=120 [--url=...]``
with ``JUPYTERHUB_API_TOKEN`` and ``LLMSPAWNER_PLATFORM`` (the namespace) in its environment;
:func:`configure_reconciler` adds it (``LLMSPAWNER_RECONCILE_INTERVAL``: seconds, default 60,
``0``: no service; ``LLMSPAWNER_RECONCILE_GRACE``: seconds, default 120).
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from . import apierrors
from .routes import PAGINATION_MEDIA_TYPE, Fetch, tornado_fetch

log = logging.getLogger("llmspawner.reconciler")

#: The hub service's name (and its role's).
SERVICE_NAME = "pod-reconciler"
#: The hub scopes it needs (see the module docstring), and nothing else.
SCOPES = ("list:users", "read:servers")
#: The Kubernetes permissions it needs in the namespace: ``(resource, verbs)``.
RBAC_RULES = (("pods", ("list", "delete")),)
#: Selector of user-server pods: kubespawner's ``component`` label (its ``component_label``).
LABEL_SELECTOR = "component=singleuser-server"
#: The hub's common labels that name *its* release: z2jh 4.x sets both from ``Release.Name``
#: on every pod it spawns (``c.KubeSpawner.common_labels``,
#: https://github.com/jupyterhub/zero-to-jupyterhub-k8s/blob/4.3.3/jupyterhub/files/hub/jupyterhub_config.py),
#: so that two hubs in one namespace each see only their own server pods.
RELEASE_LABELS = ("release", "app.kubernetes.io/instance")
#: kubespawner's annotations with the hub's user name and (named servers only) server name.
USER_ANNOTATION = "hub.jupyter.org/username"
SERVER_ANNOTATION = "hub.jupyter.org/servername"
DEFAULT_INTERVAL = 60
DEFAULT_GRACE = 120
INTERVAL_ENV = "LLMSPAWNER_RECONCILE_INTERVAL"
GRACE_ENV = "LLMSPAWNER_RECONCILE_GRACE"
#: Seconds one hub or Kubernetes request may take.
REQUEST_TIMEOUT = 30.0


class ReconcileError(RuntimeError):
    """The hub or the cluster could not be asked (the message names the call and status)."""


@dataclass(frozen=True)
class ServerPod:
    """A user-server pod as the reconciler sees it.

    Attributes:
        name, uid: the pod's.
        user, server: the hub user and server name (``""``: the default server).
        created: its ``creationTimestamp``, seconds since the epoch.
        deleting: it has a ``deletionTimestamp`` already (being deleted: left alone).
    """

    name: str
    uid: str
    user: str
    server: str
    created: float
    deleting: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.server)

    def describe(self) -> str:
        server = f"server {self.server!r}" if self.server else "default server"
        return f"pod {self.name} (user {self.user}, {server})"


def _timestamp(value: str | None) -> float:
    """RFC 3339 ``2026-12-01T19:30:00Z`` → seconds since the epoch (``0`` when absent)."""
    if not value:
        return 0.0
    return float(calendar.timegm(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")))


def server_pod(pod: Mapping) -> ServerPod | None:
    """A pod's JSON (``GET .../pods``) as a :class:`ServerPod`; ``None`` without kubespawner's
    user annotation (not a hub server's pod). Pure."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    user = annotations.get(USER_ANNOTATION)
    if not user or not meta.get("name"):
        return None
    return ServerPod(
        name=meta["name"],
        uid=meta.get("uid") or "",
        user=user,
        server=annotations.get(SERVER_ANNOTATION) or "",
        created=_timestamp(meta.get("creationTimestamp")),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def active_servers(users: Iterable[Mapping]) -> set[tuple[str, str]]:
    """``(user, server)`` of every server in the hub's user models (``GET /users``: each
    ``servers`` holds the ready and pending servers only). Pure.

    Raises:
        ReconcileError: a model without ``servers`` (the token lacks ``read:servers``, or the
            hub's model changed): read as "no servers", every pod would look orphaned.
    """
    out: set[tuple[str, str]] = set()
    for u in users:
        servers = u.get("servers")
        if not isinstance(servers, Mapping):
            raise ReconcileError(
                f"the hub's model of user {u.get('name')!r} has no servers (is the "
                "read:servers scope missing from the pod-reconciler role?)"
            )
        out.update((u["name"], name) for name in servers)
    return out


def plan(
    pods: Iterable[ServerPod],
    active: set[tuple[str, str]],
    candidates: Mapping[str, float],
    *,
    now: float,
    grace: float,
) -> tuple[list[ServerPod], dict[str, float]]:
    """Which pods to delete now (pure).

    Args:
        pods: the user-server pods, listed *before* ``active`` was read.
        active: the hub's ready and pending servers (:func:`active_servers`).
        candidates: pod uid → when it was first seen without a server (the last pass's).
        now: seconds since the epoch.
        grace: seconds a pod must have been a candidate, and old, before it is deleted.

    Returns:
        ``(to_delete, candidates)``: the pods to delete, and the new candidates map (pods of
        active servers, pods being deleted and pods that are gone drop out of it).
    """
    out: dict[str, float] = {}
    delete = []
    for pod in pods:
        if pod.key in active or pod.deleting:
            continue
        since = candidates.get(pod.uid, now)
        out[pod.uid] = since
        if now - since >= grace and now - pod.created >= grace:
            delete.append(pod)
    return delete, out


#: ``async () -> CoreV1Api``.
CoreFactory = Callable[[], Awaitable]


async def default_core():
    """A ``CoreV1Api`` from the in-cluster config, else ``KUBECONFIG`` (``~/.kube/config``)."""
    from kubernetes_asyncio import client, config

    try:
        config.load_incluster_config()
        return client.CoreV1Api(client.ApiClient())
    except config.ConfigException:
        return client.CoreV1Api(await config.new_client_from_config())


class Reconciler:
    """The reconciler against one hub and one namespace.

    Args:
        api_url: the hub's API, e.g. ``http://localhost:8081/hub/api``.
        token: the service's hub token (never logged).
        namespace: the user pods' namespace.
        grace: see :func:`plan`, seconds.
        core: ``async () -> CoreV1Api``; :func:`default_core` when omitted.
        fetch: the hub HTTP call (:func:`llmspawner.routes.tornado_fetch` when omitted).
        clock: seconds since the epoch (injectable).
        page_limit: users asked for per page.
        selector: the label selector of this hub's server pods (:func:`pod_selector`).

    The constructor does no I/O.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        namespace: str,
        *,
        grace: float = DEFAULT_GRACE,
        core: CoreFactory | None = None,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.time,
        page_limit: int = 200,
        selector: str = LABEL_SELECTOR,
    ):
        self.api_url = api_url.rstrip("/")
        self.selector = selector
        self._token = token
        self.namespace = namespace
        self.grace = grace
        self._core_factory = core or default_core
        self._core = None
        self._fetch = fetch
        self._clock = clock
        self.page_limit = page_limit
        self.candidates: dict[str, float] = {}
        #: uids of pods whose user the hub does not know (logged once, never deleted)
        self.unknown_users: set[str] = set()

    async def core(self):
        if self._core is None:
            self._core = await self._core_factory()
        return self._core

    async def _hub(self, path: str, query: Mapping | None = None) -> dict:
        if self._fetch is None:
            self._fetch = tornado_fetch(REQUEST_TIMEOUT)
        url = f"{self.api_url}{path}" + (f"?{urlencode(query)}" if query else "")
        headers = {"Authorization": f"token {self._token}", "Accept": PAGINATION_MEDIA_TYPE}
        try:
            status, body = await self._fetch("GET", url, headers)
        except OSError as e:
            raise ReconcileError(f"GET {url}: {e}") from None
        if status == 404:
            return {}
        if status >= 300:
            raise ReconcileError(f"GET {url}: HTTP {status} {body[:200]}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise ReconcileError(f"GET {url}: not JSON ({e})") from None

    async def hub_active(self) -> set[tuple[str, str]]:
        """The hub's ready and pending servers, all pages.

        Raises:
            ReconcileError: a request failed or answered with a status >= 300.
        """
        users: list[dict] = []
        offset = 0
        while True:
            page = await self._hub(
                "/users", {"state": "active", "offset": offset, "limit": self.page_limit}
            )
            try:
                items, following = page["items"], page["_pagination"].get("next")
            except (KeyError, TypeError, AttributeError) as e:
                raise ReconcileError(f"GET {self.api_url}/users: unexpected body ({e})") from None
            users.extend(items)
            if not following or not items:
                return active_servers(users)
            offset = int(following["offset"])

    async def user_active(self, user: str) -> set[tuple[str, str]] | None:
        """One user's ready and pending servers, asked now (``GET /users/<name>``);
        ``None`` when the hub has no such user (404: renamed, deleted, or hidden from this
        token), whose pods are never deleted (a rename keeps the running pod's old name)."""
        model = await self._hub(f"/users/{quote(user, safe='')}")
        return active_servers([model]) if model else None

    async def server_pods(self) -> list[ServerPod]:
        """The namespace's user-server pods.

        Raises:
            ReconcileError: the list failed.
        """
        try:
            core = await self.core()
            resp = await core.list_namespaced_pod(
                self.namespace,
                label_selector=self.selector,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            body = json.loads(await resp.read())
        except Exception as e:
            raise ReconcileError(
                f"list pods in {self.namespace}: {apierrors.describe(e)}"
            ) from None
        return [p for p in map(server_pod, body.get("items") or []) if p is not None]

    async def delete(self, pod: ServerPod) -> bool:
        """Delete ``pod`` (only that uid); ``True`` when it is gone or going."""
        from kubernetes_asyncio.client import V1DeleteOptions, V1Preconditions

        try:
            core = await self.core()
            await core.delete_namespaced_pod(
                pod.name,
                self.namespace,
                body=V1DeleteOptions(preconditions=V1Preconditions(uid=pod.uid)),
                _request_timeout=REQUEST_TIMEOUT,
            )
        except Exception as e:
            if apierrors.status_of(e) in (404, 409):  # gone, or another pod of that name now
                return True
            log.error(
                "Deleting orphan %s in %s failed (%s); trying again at the next pass",
                pod.describe(),
                self.namespace,
                apierrors.describe(e),
            )
            return False
        return True

    async def reconcile(self) -> list[ServerPod]:
        """One pass; returns the pods it deleted.

        Raises:
            ReconcileError: the pods or the hub's servers could not be listed (nothing done).
        """
        pods = await self.server_pods()  # first: see the module docstring
        active = await self.hub_active()
        due, self.candidates = plan(
            pods, active, self.candidates, now=self._clock(), grace=self.grace
        )
        deleted = []
        for pod in due:
            servers = await self.user_active(pod.user)
            if servers is None:
                if pod.uid not in self.unknown_users:
                    self.unknown_users.add(pod.uid)
                    log.warning(
                        "Left %s in %s alone: the hub has no user %r (renamed or deleted?); "
                        "if it is not in use: kubectl delete pod -n %s %s",
                        pod.describe(),
                        self.namespace,
                        pod.user,
                        self.namespace,
                        pod.name,
                    )
                continue
            if pod.key in servers:
                self.candidates.pop(pod.uid, None)
                continue
            if await self.delete(pod):
                now = self._clock()
                since = self.candidates.pop(pod.uid, now)
                log.warning(
                    "Deleted orphan %s in %s: no ready or pending hub server for it for %.0f s "
                    "(pod age %.0f s)",
                    pod.describe(),
                    self.namespace,
                    now - since,
                    now - pod.created,
                )
                deleted.append(pod)
        return deleted

    async def run(self, interval: float, *, stop: asyncio.Event | None = None) -> None:
        """:meth:`reconcile` every ``interval`` seconds until ``stop`` is set (forever)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.reconcile()
            except ReconcileError as e:
                log.warning("reconcile pass skipped, trying again in %g s: %s", interval, e)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass


#: Variables of the hub's environment the service needs: the cluster's credentials.
_PASS_PREFIXES = ("KUBERNETES_SERVICE_",)
_PASS_NAMES = ("KUBECONFIG",)


def pod_selector(common_labels: Mapping[str, str] | None = None) -> str:
    """The label selector of this hub's server pods (pure).

    Args:
        common_labels: the spawner's ``common_labels`` (z2jh sets ``release`` and
            ``app.kubernetes.io/instance`` to the Helm release's name); ``None``/empty: no
            release label is known (the dev stack: one hub per emulated cluster).

    Returns:
        :data:`LABEL_SELECTOR` plus ``,release=<name>`` (and the instance label) when the
        hub's pods carry them, e.g. ``component=singleuser-server,release=jhub,
        app.kubernetes.io/instance=jhub`` — without it, a second hub's pods in the same
        namespace would be this hub's "orphans".
    """
    parts = [LABEL_SELECTOR]
    for key in RELEASE_LABELS:
        value = (common_labels or {}).get(key)
        if value:
            parts.append(f"{key}={value}")
    return ",".join(parts)


def reconciler_service(
    *,
    interval: int,
    grace: int,
    environment: Mapping[str, str] | None = None,
    api_url: str | None = None,
    selector: str = LABEL_SELECTOR,
) -> tuple[dict, dict]:
    """The ``c.JupyterHub.services`` entry and the role of the reconciler (pure).

    Args:
        interval: seconds between passes (``--interval``), >= 1.
        grace: seconds a pod without a server is left alone (``--grace``), >= 0.
        environment: the service's variables (the platform settings, the cluster's
            credentials; :func:`service_environment`).
        api_url: the hub's API as the service reaches it (``--url``); under z2jh
            ``http://localhost:8081/hub/api``, as for the culler.
        selector: the server pods' label selector (``--selector``, :func:`pod_selector`).

    Returns:
        ``(service, role)``; the role holds only :data:`SCOPES`.

    Raises:
        ValueError: naming the argument, for an interval < 1 or a grace < 0.
    """
    for name, value, minimum in (("interval", interval, 1), ("grace", grace, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"pod reconciler {name} must be a whole number of seconds >= {minimum}, "
                f"not {value!r}"
            )
    command = [
        sys.executable,
        "-m",
        "llmspawner.reconciler",
        f"--interval={interval}",
        f"--grace={grace}",
    ]
    if api_url:
        command.append(f"--url={api_url}")
    if selector != LABEL_SELECTOR:
        command.append(f"--selector={selector}")
    service = {"name": SERVICE_NAME, "command": command}
    if environment:
        service["environment"] = dict(environment)
    role = {
        "name": SERVICE_NAME,
        "description": "Delete server pods the hub has no server for (llmspawner: orphan pods)",
        "scopes": list(SCOPES),
        "services": [SERVICE_NAME],
    }
    return service, role


def service_environment(env: Mapping[str, str], platform_env: Mapping[str, str]) -> dict:
    """The service's environment: ``platform_env`` (``LLMPlatform.to_env()``) and the cluster's
    credentials from the hub's ``env`` (``KUBECONFIG``, ``KUBERNETES_SERVICE_*``): a managed
    service gets only ``Spawner.env_keep`` of the hub's variables."""
    out = {k: v for k, v in env.items() if k in _PASS_NAMES or k.startswith(_PASS_PREFIXES)}
    out.update(platform_env)
    return out


def configure_reconciler(c, env: Mapping[str, str] = os.environ) -> None:
    """Add the reconciler service to the hub's config ``c`` (see the module docstring).

    ``LLMSPAWNER_RECONCILE_INTERVAL`` (seconds, default :data:`DEFAULT_INTERVAL`; ``0``: no
    service), ``LLMSPAWNER_RECONCILE_GRACE`` (seconds, default :data:`DEFAULT_GRACE`),
    ``LLMSPAWNER_HUB_API_URL`` (its ``--url``); the pods' selector from
    ``c.KubeSpawner.common_labels`` (:func:`pod_selector`: the release, under z2jh, whose
    config sets them before ``hub.extraConfig`` runs). Skipped when a service of that name is
    configured already. The platform settings (the namespace) come from ``c.LLMPlatform`` as
    :func:`llmspawner.hubconfig.resolve_settings` resolves them.

    Raises:
        llmspawner.hubconfig.ConfigError: naming the variable, for a bad value.
    """
    from .hubconfig import ConfigError, add_service, resolve_settings
    from .settings import SettingError, parse_int

    try:
        interval, grace = (
            parse_int(env.get(name), name=name, default=default, minimum=0, unit="seconds")
            for name, default in ((INTERVAL_ENV, DEFAULT_INTERVAL), (GRACE_ENV, DEFAULT_GRACE))
        )
    except SettingError as e:
        raise ConfigError(f"llmspawner: {e}") from None
    if not interval:
        return
    existing = c.JupyterHub.services if "services" in c.JupyterHub else []
    if any(s.get("name") == SERVICE_NAME for s in existing):
        return
    settings = resolve_settings(c, env)
    common = c.KubeSpawner.common_labels if "common_labels" in c.KubeSpawner else None
    service, role = reconciler_service(
        interval=interval,
        grace=grace,
        environment=service_environment(env, settings.to_env()),
        api_url=env.get("LLMSPAWNER_HUB_API_URL") or None,
        selector=pod_selector(common),
    )
    add_service(c, service, [role])


def main(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    """The service's process: ``python -m llmspawner.reconciler --interval=N --grace=G``.

    Returns:
        2 for bad arguments, no token or no namespace; otherwise runs until stopped.
    """
    import argparse

    from .lifeline import hold_to_parent
    from .settings import LLMPlatform

    hold_to_parent(env=env)  # no second copy next to a restarted hub (llmspawner.lifeline)
    parser = argparse.ArgumentParser(
        prog="python -m llmspawner.reconciler", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE)
    parser.add_argument("--url", default=env.get("JUPYTERHUB_API_URL", ""))
    parser.add_argument("--selector", default=LABEL_SELECTOR)
    args = parser.parse_args(argv)
    token = env.get("JUPYTERHUB_API_TOKEN", "")
    namespace = LLMPlatform.from_env(env).namespace
    if args.interval <= 0 or args.grace < 0 or not args.url or not token or not namespace:
        print(
            "llmspawner.reconciler: needs --interval > 0, --grace >= 0, --url (or "
            "JUPYTERHUB_API_URL), JUPYTERHUB_API_TOKEN and the namespace (LLMSPAWNER_PLATFORM)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s"
    )
    log.info(
        "deleting server pods in %s without a hub server for %g s (pass every %g s, hub %s)",
        namespace,
        args.grace,
        args.interval,
        args.url,
    )
    reconciler = Reconciler(args.url, token, namespace, grace=args.grace, selector=args.selector)
    try:
        asyncio.run(reconciler.run(args.interval))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
