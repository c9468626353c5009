"""The ``llm-queue`` service's entry in the hub's configuration, and the roles it needs.

:func:`queue_service` returns the ``c.JupyterHub.services`` entry (a managed service: the hub
starts ``python -m llmspawner.queue``, restarts it when it exits, and proxies
``/services/llm-queue/`` to it) and the roles; :func:`configure_queue` applies both to a
hub config, merging with what is there (z2jh's or the operator's roles are never replaced).

Who may use the queue (JupyterHub 6 scopes, https://jupyterhub.readthedocs.io/en/stable/rbac/scopes.html):

- every user: ``access:services!service=llm-queue`` is added to the ``user`` role through
  ``c.JupyterHub.extra_user_scopes`` (the browser login to the service needs it); that
  setting is new in JupyterHub 6.0, so on 5.x (z2jh 4.x's hub image) the ``user`` role is
  defined in ``load_roles`` instead, with its default scope ``self`` kept;
- every user's server: the ``server`` role (the scopes of ``$JUPYTERHUB_API_TOKEN`` in the
  user's pod) gets the same scope next to its defaults, so ``llmspawner queue ...`` works in
  the pod with no set-up. A server token only gets scopes its owner holds, so this gives a
  pod nothing its user could not do;
- queue admins: hub admins, and whoever holds the custom scope ``custom:llm-queue:admin``
  (role ``llm-queue-admin``, given to the groups in ``LLMSPAWNER_QUEUE_ADMIN_GROUPS``). The
  service's OAuth client may ask for that scope, so an admin's browser login carries it;
- the service itself: role ``llm-queue-service``. It identifies callers with *their* tokens
  (``GET /hub/api/user``). With MLflow on (``LLMPlatform.mlflow_tracking_uri``) it holds
  ``tokens``, to mint for each Job a token of the job's user that carries only
  ``access:services!service=mlflow`` and expires after the job's ``max_runtime`` and a day
  (:class:`llmspawner.mlflow_hub.JobTokens`): the Job's pod gets it from a per-job Secret as
  ``MLFLOW_TRACKING_TOKEN``, so no credential shared between users is ever in a pod. Without
  MLflow it holds no scope at all.

Environment (all optional):

==================================  ============================================================
``LLMSPAWNER_QUEUE``                ``0``: no queue service
``LLMSPAWNER_QUEUE_SERVICE_URL``    where the service listens, as the proxy reaches it
                                    (default ``http://127.0.0.1:<free port>``; under z2jh e.g.
                                    ``http://hub:10101``)
``LLMSPAWNER_QUEUE_BIND_URL``       where the service binds, when the service URL names
                                    something else (z2jh: ``http://0.0.0.0:10101``)
``LLMSPAWNER_QUEUE_CLIENT_URL``     the service's URL as the users' pods reach it, given to them
                                    as ``LLMSPAWNER_QUEUE_URL`` for the CLI
                                    (``LLMPlatform.queue_url``; default: the service URL +
                                    ``/services/llm-queue/``)
``LLMSPAWNER_QUEUE_ADMIN_GROUPS``   comma-separated hub groups whose members are queue admins
``LLMSPAWNER_QUEUE_*``              the service's own settings, passed to it (see
                                    :mod:`llmspawner.queue.service`), with
                                    ``LLMSPAWNER_HUB_API_URL``, ``KUBECONFIG``,
                                    ``KUBERNETES_SERVICE_*`` and ``MLFLOW_TRACKING_*``
==================================  ============================================================

The platform settings (profiles, namespace, image, PVC, MLflow, GPU advertising) reach the
service as one variable, ``LLMSPAWNER_PLATFORM``
(:meth:`llmspawner.settings.LLMPlatform.to_env`), resolved from the hub's config by
:func:`llmspawner.settings.resolve_hub_settings`; the service reads them with
:meth:`~llmspawner.settings.LLMPlatform.from_env`.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping

from ..settings import LLMPlatform, env_name, parse_bool, parse_csv, resolve_hub_settings
from .states import ACCESS_SCOPE, ADMIN_SCOPE, SERVICE_NAME

__all__ = [
    "ACCESS_SCOPE",
    "ADMIN_SCOPE",
    "CUSTOM_SCOPES",
    "SERVICE_NAME",
    "configure_queue",
    "merge_roles",
    "queue_service",
    "service_environment",
]

#: ``c.JupyterHub.custom_scopes`` entries the service defines.
CUSTOM_SCOPES = {
    ADMIN_SCOPE: {
        "description": "See and cancel every user's jobs in the llm-queue service, and set "
        "per-user limits of running jobs.",
    }
}
#: JupyterHub 6's default ``server`` role scopes (``jupyterhub.roles.get_default_roles``):
#: a role defined in config replaces a default role's scopes, so they are repeated.
DEFAULT_SERVER_SCOPES = ("users:activity!user", "access:servers!server")
#: JupyterHub's default ``user`` role scopes (the same in 5.x and 6.x).
DEFAULT_USER_SCOPES = ("self",)


def _hub_has_extra_user_scopes() -> bool:
    """Whether the installed JupyterHub has ``JupyterHub.extra_user_scopes`` (6.0+)."""
    import jupyterhub

    return jupyterhub.version_info >= (6,)


#: Variables of the hub's environment that the service needs besides the platform settings:
#: its own ``LLMSPAWNER_QUEUE_*``, the hub's API URL, the cluster's credentials, MLflow's.
_PASS_PREFIXES = ("LLMSPAWNER_QUEUE_", "KUBERNETES_SERVICE_", "MLFLOW_TRACKING_")
_PASS_NAMES = ("KUBECONFIG", "LLMSPAWNER_HUB_API_URL")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def service_environment(env: Mapping[str, str], settings: LLMPlatform) -> dict[str, str]:
    """Return the service's environment: the platform settings (``LLMSPAWNER_PLATFORM``,
    :meth:`~llmspawner.settings.LLMPlatform.to_env`) and the passed-through variables of
    ``env`` (the service's own ``LLMSPAWNER_QUEUE_*``, ``LLMSPAWNER_HUB_API_URL``,
    ``KUBECONFIG``, ``KUBERNETES_SERVICE_*``, ``MLFLOW_TRACKING_*``).

    A managed service gets only a few of the hub's variables (``Spawner.env_keep``), so
    ``KUBECONFIG`` and the in-cluster ``KUBERNETES_SERVICE_HOST``/``_PORT`` must be passed.
    The variables of single platform settings (``LLMSPAWNER_NAMESPACE``, ...) are not: the
    serialised settings hold their resolved values.
    """
    platform_vars = {env_name(n) for n in LLMPlatform.class_trait_names(config=True)}
    out = {
        k: v
        for k, v in env.items()
        if (k in _PASS_NAMES or k.startswith(_PASS_PREFIXES)) and k not in platform_vars
    }
    out.update(settings.to_env())
    return out


def service_url(env: Mapping[str, str]) -> str:
    """Where the service listens as the proxy reaches it: ``LLMSPAWNER_QUEUE_SERVICE_URL``
    (no trailing slash), else ``http://127.0.0.1:<a free port>``."""
    url = (env.get("LLMSPAWNER_QUEUE_SERVICE_URL") or "").rstrip("/")
    return url or f"http://127.0.0.1:{_free_port()}"


def queue_service(
    env: Mapping[str, str] = os.environ,
    settings: LLMPlatform | None = None,
    *,
    url: str | None = None,
) -> tuple[dict, list[dict]]:
    """Return the ``c.JupyterHub.services`` entry of ``llm-queue`` and the roles it needs.

    Args:
        env: the hub's environment (see the module docstring).
        settings: the resolved platform settings, handed to the service as
            ``LLMSPAWNER_PLATFORM``; default ``LLMPlatform.from_env(env)``.
        url: where the service listens; default :func:`service_url`.

    Returns:
        ``(service, roles)``: ``service`` for ``c.JupyterHub.services``; ``roles`` to merge
        into ``c.JupyterHub.load_roles`` with :func:`merge_roles` (the ``server`` role
        among them must be merged, not appended).
    """
    if settings is None:
        settings = LLMPlatform.from_env(env)
    url = url or service_url(env)
    service = {
        "name": SERVICE_NAME,
        "url": url,
        "command": [sys.executable, "-m", "llmspawner.queue"],
        "environment": service_environment(env, settings),
        "display": True,
        "info": {"description": "Batch training queue: LLaMA-Factory configs as Kubernetes Jobs"},
        # An internal service of this hub: no "authorize access" page after the hub's login.
        "oauth_no_confirm": True,
        # A queue admin's browser login carries the admin scope (only if they hold it).
        "oauth_client_allowed_scopes": [ADMIN_SCOPE],
    }
    roles = [
        {
            "name": "llm-queue-service",
            "description": "The llm-queue service: identifies callers by their own tokens; "
            "with MLflow, mints each Job's MLflow-only token of its user",
            # POST /hub/api/users/<name>/tokens for any user (the scopes of a new token are
            # checked against its owner's, and the queue asks only for MLflow access).
            "scopes": ["tokens"] if settings.mlflow_tracking_uri else [],
            "services": [SERVICE_NAME],
        },
        {
            "name": "server",
            "description": "Post activity only; use the llm-queue service",
            "scopes": [*DEFAULT_SERVER_SCOPES, ACCESS_SCOPE],
        },
    ]
    admin_groups = sorted(parse_csv(env.get("LLMSPAWNER_QUEUE_ADMIN_GROUPS")))
    if admin_groups:
        roles.append(
            {
                "name": "llm-queue-admin",
                "description": "See and cancel every job of llm-queue, set per-user limits",
                "scopes": [ADMIN_SCOPE, ACCESS_SCOPE],
                "groups": admin_groups,
            }
        )
    return service, roles


def merge_roles(existing: list[dict], new: list[dict]) -> list[dict]:
    """Return ``existing`` + ``new`` where a role of the same name is merged, not duplicated.

    Merged: the union of ``scopes``, ``users``, ``groups`` and ``services`` (in order, no
    duplicates); the other keys of ``existing`` win. JupyterHub refuses a role defined twice
    ("Role ... multiply defined"), and replacing one would drop someone else's scopes.
    Pure: the inputs are not changed.
    """
    out = [dict(r) for r in existing]
    index = {r["name"]: i for i, r in enumerate(out)}
    for role in new:
        if role["name"] not in index:
            index[role["name"]] = len(out)
            out.append(dict(role))
            continue
        merged = out[index[role["name"]]]
        for key in ("scopes", "users", "groups", "services"):
            if key in role or key in merged:
                values = [*merged.get(key, []), *role.get(key, [])]
                merged[key] = list(dict.fromkeys(values))
        for key, value in role.items():
            merged.setdefault(key, value)
    return out


def configure_queue(
    c, env: Mapping[str, str] = os.environ, *, extra_user_scopes: bool | None = None
) -> None:
    """Add the ``llm-queue`` service to a hub config ``c``; call it after the spawner's.

    Appends the service, merges its roles into ``load_roles``, declares
    ``custom:llm-queue:admin``, adds ``access:services!service=llm-queue`` to
    ``extra_user_scopes`` (``extra_user_scopes=False``, or JupyterHub < 6 when ``None``: to
    a ``user`` role in ``load_roles``), sets the queue's URL for the users' pods
    (``c.LLMPlatform.queue_url``, unless set; see the module docstring) and gives it to them
    as ``LLMSPAWNER_QUEUE_URL`` in the spawner's ``environment`` (unless set there).
    The platform settings are resolved from ``c`` first
    (:func:`llmspawner.settings.resolve_hub_settings`: ``c.LLMPlatform``, the environment,
    then the spawner's ``c.LLMSpawner``/``c.KubeSpawner`` namespace and image, where z2jh puts
    them) and handed to the service as ``LLMSPAWNER_PLATFORM``.
    Does nothing when ``LLMSPAWNER_QUEUE=0`` or a service named ``llm-queue`` exists already.

    Raises:
        llmspawner.settings.SettingError: a setting (or ``LLMSPAWNER_QUEUE``) is invalid; the
            message names it.
    """
    if not parse_bool(env.get("LLMSPAWNER_QUEUE"), name="LLMSPAWNER_QUEUE", default=True):
        return
    hub = c.JupyterHub
    services = list(hub.get("services", []))
    if any(s.get("name") == SERVICE_NAME for s in services):
        return
    settings = resolve_hub_settings(c, env)
    url = service_url(env)
    if not settings.queue_url:
        base_url = "/" + str(hub.get("base_url", "/")).strip("/")
        c.LLMPlatform.queue_url = f"{url}{base_url.rstrip('/')}/services/{SERVICE_NAME}/"
        settings = resolve_hub_settings(c, env)
    service, roles = queue_service(env, settings, url=url)
    hub.services = [*services, service]
    hub.load_roles = merge_roles(list(hub.get("load_roles", [])), roles)
    hub.custom_scopes = {**hub.get("custom_scopes", {}), **CUSTOM_SCOPES}
    if extra_user_scopes is None:
        extra_user_scopes = _hub_has_extra_user_scopes()
    if extra_user_scopes:
        hub.extra_user_scopes = {*hub.get("extra_user_scopes", set()), ACCESS_SCOPE}
    else:
        user_role = {"name": "user", "scopes": [*DEFAULT_USER_SCOPES, ACCESS_SCOPE]}
        hub.load_roles = merge_roles(hub.load_roles, [user_role])
    # LLMSpawner's section replaces KubeSpawner's (z2jh's singleuser.extraEnv) for the same
    # trait, so both are merged here.
    environment = {**c.KubeSpawner.get("environment", {}), **c.LLMSpawner.get("environment", {})}
    environment.setdefault("LLMSPAWNER_QUEUE_URL", settings.queue_url)
    c.LLMSpawner.environment = environment
