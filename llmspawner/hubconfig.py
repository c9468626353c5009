"""Hub configuration: the platform settings, the login, the idle culler and the batch queue.

``jupyterhub_config.py`` at the repository root calls :func:`configure`. Under
zero-to-jupyterhub the chart's own config runs first; then these functions only fill in what
is not configured yet (the chart's values win), so loading them there never breaks it.

The platform settings (:class:`llmspawner.settings.LLMPlatform`, ``c.LLMPlatform``: profiles
folder, namespace, image, shared PVC, MLflow, GPU advertising, queue URL) are resolved once by
:func:`resolve_settings` and written back into ``c.LLMPlatform``; the spawner reads exactly
them, and the culler and the queue service get them through
:meth:`~llmspawner.settings.LLMPlatform.to_env` (``LLMSPAWNER_PLATFORM``). Where each comes
from, first match wins: ``c.LLMPlatform.<setting>``, its ``LLMSPAWNER_*`` variable, the
spawner's own ``c.LLMSpawner``/``c.KubeSpawner`` value (namespace, image, uid, gid, fs_gid),
the default.

Environment variables (all optional):

========================================  ======================================================
``LLMSPAWNER_PROFILES_DIR``               folder of GPU profile files (``LLMPlatform.profiles_dir``;
                                          default: the repository's ``profiles/``)
``LLMSPAWNER_MLFLOW_TRACKING_URI``        MLflow URL (``LLMPlatform.mlflow_tracking_uri``)
``LLMSPAWNER_NAMESPACE``                  Kubernetes namespace of user pods and Jobs
``LLMSPAWNER_SINGLEUSER_IMAGE``           image of user pods and Jobs
``LLMSPAWNER_STORAGE_CLAIM``              shared PVC name (default ``llm-storage``)
``LLMSPAWNER_<SETTING>``                  any other setting of ``LLMPlatform`` (``_UID``,
                                          ``_GPU_REPLICA_COUNTS``, ``_MIG_STRATEGY``, ...;
                                          :func:`llmspawner.settings.env_name`)
``LLMSPAWNER_OIDC_ISSUER``                OIDC issuer; endpoints read from its discovery document
``OAUTH2_AUTHORIZE_URL`` etc.             or the endpoints directly (GenericOAuthenticator's names:
                                          ``OAUTH2_TOKEN_URL``, ``OAUTH2_USERDATA_URL``)
``OAUTH_CLIENT_ID``, ``_SECRET``          OAuth client id and secret
``OAUTH_CALLBACK_URL``                    ``https://<hub>/hub/oauth_callback``
``LLMSPAWNER_OIDC_USERNAME_CLAIM``        claim holding the username (``preferred_username``)
``LLMSPAWNER_OIDC_GROUPS_CLAIM``          claim holding the user's groups (default ``groups``)
``LLMSPAWNER_ALLOWED_GROUPS``             comma-separated groups allowed to log in
``LLMSPAWNER_ADMIN_GROUPS``               comma-separated groups whose members are hub admins
``LLMSPAWNER_ALLOW_ALL``                  ``1``: every user the provider authenticates may log in
``LLMSPAWNER_AUTH_REFRESH_AGE``           seconds between re-checks of a user's login with the
                                          provider (default 300; needs ``JUPYTERHUB_CRYPT_KEY``)
``LLMSPAWNER_CULL_*``                     the idle culler, see :func:`configure_culler`
``LLMSPAWNER_HUB_API_URL``                the hub's API as services in the hub's pod reach it
                                          (z2jh: ``http://localhost:8081/hub/api``)
``LLMSPAWNER_QUEUE*``                     the batch queue, see ``llmspawner.queue.hubservice``
``LLMSPAWNER_ROUTE_REPAIR_INTERVAL``      seconds between proxy route checks (default 30; ``0``:
                                          off), see :mod:`llmspawner.routes`
``LLMSPAWNER_RECONCILE_INTERVAL``         seconds between orphan-pod passes (default 60; ``0``:
                                          off), see :mod:`llmspawner.reconciler`
``LLMSPAWNER_RECONCILE_GRACE``            seconds a server pod without a hub server is left alone
                                          (default 120)
========================================  ======================================================
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Mapping

from . import culling, reconciler, routes
from . import profiles as profiles_mod
from .queue.hubservice import configure_queue
from .settings import (
    REPO_PROFILES,
    LLMPlatform,
    SettingError,
    parse_bool,
    parse_csv,
    parse_int,
    resolve_hub_settings,
)

__all__ = [
    "REPO_PROFILES",
    "ConfigError",
    "add_service",
    "check_profiles",
    "configure",
    "configure_auth",
    "configure_culler",
    "configure_spawner",
    "resolve_settings",
]


log = logging.getLogger(__name__)


class ConfigError(SystemExit):
    """The hub's configuration is wrong; the hub refuses to start with this message."""


def _set_default(section, key: str, value) -> None:
    """Set ``section.key`` unless something (e.g. z2jh's config) has set it already."""
    if key not in section:
        section[key] = value


def resolve_settings(c, env: Mapping[str, str] = os.environ) -> LLMPlatform:
    """Resolve the platform settings into ``c.LLMPlatform`` and the spawner
    (:func:`llmspawner.settings.resolve_hub_settings`, which gives the order of the sources);
    a bad setting stops the hub.

    Returns:
        The resolved settings, also written into ``c.LLMPlatform``.

    Raises:
        ConfigError: with the :class:`~llmspawner.settings.SettingError` message, which
            names the setting.
    """
    try:
        return resolve_hub_settings(c, env)
    except SettingError as e:
        raise ConfigError(f"llmspawner: {e}") from None


def configure_spawner(c, env: Mapping[str, str] = os.environ) -> LLMPlatform:
    """Use :class:`~llmspawner.spawner.LLMSpawner`, resolve the platform settings
    (:func:`resolve_settings`) and validate the profiles.

    Validates the profile files now, so that the hub refuses to start on a broken profile.
    Drops an empty ``profile_list`` (z2jh's ``singleuser.profileList: []`` default), which
    would hide the profiles.

    Returns:
        The resolved settings.

    Raises:
        ConfigError: naming the profile file, the field and the allowed values; naming a bad
            setting; or when a kubespawner ``profile_list`` is configured (profiles are
            files here).
    """
    _set_default(c.JupyterHub, "spawner_class", "llm")
    # z2jh sets c.KubeSpawner.profile_list from singleuser.profileList, [] by default; that
    # would replace LLMSpawner's own list (built from the profile files) with nothing.
    for section in (c.KubeSpawner, c.LLMSpawner):
        if "profile_list" in section:
            if section.profile_list:
                raise ConfigError(
                    "llmspawner: GPU profiles are files in LLMPlatform.profiles_dir; remove "
                    "singleuser.profileList (KubeSpawner.profile_list)"
                )
            del section["profile_list"]
    settings = resolve_settings(c, env)
    check_profiles(settings)
    return settings


def check_profiles(settings: LLMPlatform) -> list[profiles_mod.Profile]:
    """Load and validate the profiles folder of ``settings`` now (no cache).

    Returns:
        The profiles.

    Raises:
        ConfigError: with the :class:`~llmspawner.profiles.ProfileError` message (file,
            field, allowed values).
    """
    try:
        return settings.load_profiles()
    except profiles_mod.ProfileError as e:
        raise ConfigError(f"llmspawner: invalid GPU profile: {e}") from None


def _discover(issuer: str) -> dict:
    """Read an OIDC issuer's discovery document (``/.well-known/openid-configuration``)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - configured URL
            return json.load(resp)
    except (OSError, ValueError) as e:
        raise ConfigError(f"llmspawner: cannot read OIDC discovery document {url}: {e}") from None


def configure_auth(c, env: Mapping[str, str] = os.environ) -> None:
    """Log in with ``GenericOAuthenticator`` against an OIDC provider, if one is configured.

    Nothing is set when neither ``LLMSPAWNER_OIDC_ISSUER`` nor ``OAUTH2_AUTHORIZE_URL`` is in
    ``env``. The class is :class:`llmspawner.auth.LLMOAuthenticator` (a GenericOAuthenticator
    that re-checks the groups at each auth refresh); with ``JUPYTERHUB_CRYPT_KEY`` set, auth
    state is on and the login is refreshed every ``LLMSPAWNER_AUTH_REFRESH_AGE`` seconds
    (default 300, JupyterHub's ``auth_refresh_age``), so a user removed from the allowed
    groups loses access within that time; without the key a warning is logged.
    Groups come from the ``groups`` claim (``LLMSPAWNER_OIDC_GROUPS_CLAIM``) and are
    managed as JupyterHub groups (``manage_groups``); see
    https://oauthenticator.readthedocs.io/en/latest/reference/api/gen/oauthenticator.generic.html

    Raises:
        ConfigError: if the discovery document cannot be read, or no login rule is set
            (``allow_all`` must be chosen on purpose).
    """
    issuer = env.get("LLMSPAWNER_OIDC_ISSUER")
    if not issuer and not env.get("OAUTH2_AUTHORIZE_URL"):
        return
    # GenericOAuthenticator that re-checks the groups at each auth refresh (llmspawner.auth).
    _set_default(c.JupyterHub, "authenticator_class", "llmspawner.auth.LLMOAuthenticator")
    a = c.GenericOAuthenticator
    # Auth refresh (a user removed from the allowed groups in the IdP loses access, see
    # llmspawner.auth) needs auth state, which needs the hub's encryption key.
    if env.get("JUPYTERHUB_CRYPT_KEY"):
        _set_default(a, "enable_auth_state", True)
        _set_default(
            a,
            "auth_refresh_age",
            _seconds(env, "LLMSPAWNER_AUTH_REFRESH_AGE", 300, minimum=0),
        )
    else:
        log.warning(
            "llmspawner: JUPYTERHUB_CRYPT_KEY is not set: no auth state, so the identity "
            "provider's groups are read only at login (a user removed from the allowed "
            "groups keeps access until their hub session ends)"
        )
    if issuer:
        doc = _discover(issuer)
        _set_default(a, "authorize_url", doc["authorization_endpoint"])
        _set_default(a, "token_url", doc["token_endpoint"])
        _set_default(a, "userdata_url", doc["userinfo_endpoint"])
    # OAUTH2_* / OAUTH_CLIENT_* / OAUTH_CALLBACK_URL are read by GenericOAuthenticator itself.
    _set_default(a, "login_service", env.get("LLMSPAWNER_OIDC_NAME", "your organisation"))
    _set_default(a, "scope", ["openid", "profile", "email", "groups"])
    _set_default(
        a, "username_claim", env.get("LLMSPAWNER_OIDC_USERNAME_CLAIM", "preferred_username")
    )
    groups_claim = env.get("LLMSPAWNER_OIDC_GROUPS_CLAIM", "groups")
    _set_default(a, "manage_groups", True)
    _set_default(a, "auth_state_groups_key", f"oauth_user.{groups_claim}")
    allowed, admins = (
        set(parse_csv(env.get("LLMSPAWNER_ALLOWED_GROUPS"))),
        set(parse_csv(env.get("LLMSPAWNER_ADMIN_GROUPS"))),
    )
    if allowed:
        _set_default(a, "allowed_groups", allowed)
    if admins:
        _set_default(a, "admin_groups", admins)
    allow_all = _flag(env, "LLMSPAWNER_ALLOW_ALL", default=False)
    if allow_all:
        _set_default(a, "allow_all", True)
    if not (
        allow_all or allowed or "allow_all" in a or "allowed_groups" in a or "allowed_users" in a
    ):
        raise ConfigError(
            "llmspawner: set LLMSPAWNER_ALLOWED_GROUPS (groups allowed to log in) or "
            "LLMSPAWNER_ALLOW_ALL=1 (everyone the identity provider authenticates)"
        )


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    """A boolean variable of ``env`` (:func:`llmspawner.settings.parse_bool`).

    Raises:
        ConfigError: naming the variable, for a value that is not a boolean.
    """
    try:
        return parse_bool(env.get(name), name=name, default=default)
    except SettingError as e:
        raise ConfigError(f"llmspawner: {e}") from None


def _seconds(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    """A whole number of seconds from ``env`` (:func:`llmspawner.settings.parse_int`).

    Raises:
        ConfigError: naming the variable, for a non-integer or a value below ``minimum``.
    """
    try:
        return parse_int(env.get(name), name=name, default=default, minimum=minimum, unit="seconds")
    except SettingError as e:
        raise ConfigError(f"llmspawner: {e}") from None


def add_service(c, service: dict, roles: list[dict]) -> None:
    """Append a hub service and its roles, keeping every service and role set before.

    Raises:
        ConfigError: if a service or role of the same name is already configured.
    """
    services = c.JupyterHub.services if "services" in c.JupyterHub else []
    roles_before = c.JupyterHub.load_roles if "load_roles" in c.JupyterHub else []
    names = {s.get("name") for s in services}
    if service["name"] in names:
        raise ConfigError(
            f"llmspawner: a hub service named {service['name']!r} is already configured"
        )
    role_names = {r.get("name") for r in roles_before}
    for role in roles:
        if role["name"] in role_names:
            raise ConfigError(
                f"llmspawner: a hub role named {role['name']!r} is already configured"
            )
    c.JupyterHub.services = [*services, service]
    c.JupyterHub.load_roles = [*roles_before, *roles]


def configure_culler(c, env: Mapping[str, str] = os.environ) -> None:
    """Run ``jupyterhub-idle-culler`` as a hub service with per-profile idle timeouts.

    ``LLMSPAWNER_CULL`` (``0``: off), ``LLMSPAWNER_CULL_TIMEOUT`` (seconds, default 3600, for
    profiles without ``idle_timeout``), ``LLMSPAWNER_CULL_EVERY`` (seconds, default 300),
    ``LLMSPAWNER_CULL_MAX_AGE`` (seconds, default 0: none), ``LLMSPAWNER_CULL_USERS`` (``1``:
    also delete inactive users), ``LLMSPAWNER_HUB_API_URL`` (the culler's ``--url``).
    Skipped when a culler service is configured already (z2jh's ``cull.enabled``).
    The culler's process gets the platform settings as ``LLMSPAWNER_PLATFORM``
    (:meth:`~llmspawner.settings.LLMPlatform.to_env`; its hook reads the profiles with them).

    The hub's own activity polling of the proxy is switched off
    (``JupyterHub.last_activity_interval = 0``): configurable-http-proxy counts every request,
    so LlamaBoard's background polling would keep an idle server alive forever. Activity then
    comes from the user's server, which leaves that polling out (see
    ``llmspawner.singleuser``).
    That also switches off the hub's periodic route check (``check_routes`` runs inside the
    activity poll); :func:`llmspawner.routes.configure_route_repair` adds it back.
    """
    if not _flag(env, "LLMSPAWNER_CULL", default=True):
        return
    existing = c.JupyterHub.services if "services" in c.JupyterHub else []
    if any(
        s.get("name") in ("idle-culler", "jupyterhub-idle-culler", "cull-idle") for s in existing
    ):
        return
    settings = resolve_settings(c, env)
    try:
        service, role = culling.culler_service(
            timeout=_seconds(env, "LLMSPAWNER_CULL_TIMEOUT", 3600, minimum=1),
            cull_every=_seconds(env, "LLMSPAWNER_CULL_EVERY", 300, minimum=1),
            max_age=_seconds(env, "LLMSPAWNER_CULL_MAX_AGE", 0, minimum=0),
            cull_users=_flag(env, "LLMSPAWNER_CULL_USERS", default=False),
            environment=settings.to_env(),
            api_url=env.get("LLMSPAWNER_HUB_API_URL") or None,
        )
    except ValueError as e:
        raise ConfigError(f"llmspawner: {e}") from None
    add_service(c, service, [role])
    _set_default(c.JupyterHub, "last_activity_interval", 0)


def configure(c, env: Mapping[str, str] = os.environ) -> None:
    """Configure the whole hub for llmspawner from ``env`` (see the module docstring).

    Order: the spawner and the platform settings (validating the profiles), the login, the
    batch queue (which adds the queue's URL to the settings), then the idle culler, so both
    services get the same, complete settings.
    Last, the proxy route repair (:func:`llmspawner.routes.configure_route_repair`) and the
    orphan-pod reconciler (:func:`llmspawner.reconciler.configure_reconciler`), and the
    server API handler that answers start/stop races with a sentence
    (:func:`llmspawner.hubapi.install`).

    Every managed service of ours ties its life to the hub's (:mod:`llmspawner.lifeline`), so
    a killed hub leaves no second copy next to the restarted one.

    Raises:
        ConfigError: see :func:`configure_spawner`, :func:`configure_auth`,
            :func:`configure_culler` and :func:`llmspawner.queue.hubservice.configure_queue`.
    """
    configure_spawner(c, env)
    configure_auth(c, env)
    try:
        # MLflow as the hub service `mlflow` first: the queue copies its UI link.
        from .mlflow_hub import configure_mlflow

        configure_mlflow(c, env)
        configure_queue(c, env)
    except SettingError as e:
        raise ConfigError(f"llmspawner: {e}") from None
    configure_culler(c, env)
    # Activity polling is off (configure_culler), and with it the hub's periodic route check.
    routes.configure_route_repair(c, env)
    # Server pods the hub has forgotten (a stop that failed for good) are deleted.
    reconciler.configure_reconciler(c, env)
    # Start/stop races answer 409 with a sentence, not a bare 500 (llmspawner.hubapi; it
    # imports JupyterHub's handlers, so only here, in the hub's process).
    from . import hubapi

    if not hubapi.install():  # JupyterHub moved or renamed its handler: say so, run without
        logging.getLogger("llmspawner").warning(
            "llmspawner.hubapi: JupyterHub's UserServerAPIHandler was not found in its handler "
            "list; start/stop races answer JupyterHub's own errors"
        )
