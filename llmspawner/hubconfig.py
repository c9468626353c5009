"""Hub configuration from environment variables, shared by the standalone config and z2jh.

``jupyterhub_config.py`` at the repository root calls :func:`configure`. Under
zero-to-jupyterhub the chart's own config runs first; then these functions only fill in what
is not configured yet (the chart's values win), so loading them there never breaks it.

Environment variables (all optional):

========================================  ======================================================
``LLMSPAWNER_PROFILES_DIR``               folder of GPU profile files (``LLMSpawner.profiles_dir``)
``LLMSPAWNER_MLFLOW_TRACKING_URI``        MLflow URL (``LLMSpawner.mlflow_tracking_uri``)
``LLMSPAWNER_NAMESPACE``                  Kubernetes namespace of user pods
``LLMSPAWNER_SINGLEUSER_IMAGE``           image of user pods
``LLMSPAWNER_STORAGE_CLAIM``              shared PVC name (default ``llm-storage``)
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
``LLMSPAWNER_CULL_*``                     the idle culler, see :func:`configure_culler`
``LLMSPAWNER_HUB_API_URL``                the hub's API as services in the hub's pod reach it
                                          (z2jh: ``http://localhost:8081/hub/api``)
``LLMSPAWNER_QUEUE*``                     the batch queue, see ``llmspawner.queue.hubservice``
``LLMSPAWNER_DEV``                        ``1``: settings for the emulated dev cluster
========================================  ======================================================
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from . import culling
from . import profiles as profiles_mod
from .queue.hubservice import configure_queue

REPO_PROFILES = Path(__file__).resolve().parent.parent / "profiles"


class ConfigError(SystemExit):
    """The hub's configuration is wrong; the hub refuses to start with this message."""


def _set_default(section, key: str, value) -> None:
    """Set ``section.key`` unless something (e.g. z2jh's config) has set it already."""
    if key not in section:
        section[key] = value


def _csv(value: str | None) -> set[str]:
    return {v.strip() for v in (value or "").split(",") if v.strip()}


def configure_spawner(c, env: Mapping[str, str] = os.environ) -> None:
    """Use :class:`~llmspawner.spawner.LLMSpawner` and configure it from ``env``.

    Validates the profile files now, so that the hub refuses to start on a broken profile.
    Drops an empty ``profile_list`` (z2jh's ``singleuser.profileList: []`` default), which
    would hide the profiles.

    Raises:
        ConfigError: naming the profile file, the field and the allowed values; or when a
            kubespawner ``profile_list`` is configured (profiles are files here).
    """
    _set_default(c.JupyterHub, "spawner_class", "llm")
    # z2jh sets c.KubeSpawner.profile_list from singleuser.profileList, [] by default; that
    # would replace LLMSpawner's own list (built from the profile files) with nothing.
    for section in (c.KubeSpawner, c.LLMSpawner):
        if "profile_list" in section:
            if section.profile_list:
                raise ConfigError(
                    "llmspawner: GPU profiles are files in LLMSpawner.profiles_dir; remove "
                    "singleuser.profileList (KubeSpawner.profile_list)"
                )
            del section["profile_list"]
    s = c.LLMSpawner
    if env.get("LLMSPAWNER_PROFILES_DIR"):
        s.profiles_dir = env["LLMSPAWNER_PROFILES_DIR"]
    else:
        _set_default(s, "profiles_dir", str(REPO_PROFILES))
    if env.get("LLMSPAWNER_MLFLOW_TRACKING_URI"):
        s.mlflow_tracking_uri = env["LLMSPAWNER_MLFLOW_TRACKING_URI"]
    if env.get("LLMSPAWNER_NAMESPACE"):
        s.namespace = env["LLMSPAWNER_NAMESPACE"]
    if env.get("LLMSPAWNER_SINGLEUSER_IMAGE"):
        s.image = env["LLMSPAWNER_SINGLEUSER_IMAGE"]
    if env.get("LLMSPAWNER_STORAGE_CLAIM"):
        s.storage_claim_name = env["LLMSPAWNER_STORAGE_CLAIM"]
    check_profiles(c)


def check_profiles(c) -> list[profiles_mod.Profile]:
    """Load and validate the configured profiles folder.

    Returns:
        The profiles.

    Raises:
        ConfigError: with the :class:`~llmspawner.profiles.ProfileError` message.
    """
    s = c.LLMSpawner
    cluster = profiles_mod.ClusterGPUConfig(
        shared_resource=s.get("gpu_shared_resource", "nvidia.com/gpu"),
        replica_counts=tuple(s.get("gpu_replica_counts", (2, 4))),
        mig_strategy=s.get("mig_strategy", "mixed"),
    )
    try:
        return profiles_mod.load_profiles(s.profiles_dir, cluster)
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
    ``env``. Groups come from the ``groups`` claim (``LLMSPAWNER_OIDC_GROUPS_CLAIM``) and are
    managed as JupyterHub groups (``manage_groups``); see
    https://oauthenticator.readthedocs.io/en/latest/reference/api/gen/oauthenticator.generic.html

    Raises:
        ConfigError: if the discovery document cannot be read, or no login rule is set
            (``allow_all`` must be chosen on purpose).
    """
    issuer = env.get("LLMSPAWNER_OIDC_ISSUER")
    if not issuer and not env.get("OAUTH2_AUTHORIZE_URL"):
        return
    _set_default(c.JupyterHub, "authenticator_class", "generic-oauth")
    a = c.GenericOAuthenticator
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
        _csv(env.get("LLMSPAWNER_ALLOWED_GROUPS")),
        _csv(env.get("LLMSPAWNER_ADMIN_GROUPS")),
    )
    if allowed:
        _set_default(a, "allowed_groups", allowed)
    if admins:
        _set_default(a, "admin_groups", admins)
    allow_all = env.get("LLMSPAWNER_ALLOW_ALL", "") in ("1", "true", "yes")
    if allow_all:
        _set_default(a, "allow_all", True)
    if not (
        allow_all or allowed or "allow_all" in a or "allowed_groups" in a or "allowed_users" in a
    ):
        raise ConfigError(
            "llmspawner: set LLMSPAWNER_ALLOWED_GROUPS (groups allowed to log in) or "
            "LLMSPAWNER_ALLOW_ALL=1 (everyone the identity provider authenticates)"
        )


def configure_dev(c, env: Mapping[str, str] = os.environ) -> None:
    """Settings for the emulated dev cluster (``LLMSPAWNER_DEV=1``), never for production.

    The user's server binds its pod IP (pods share one network namespace there), starts
    with the same Python environment as the hub, and the hub waits long enough for a
    LlamaBoard-sized start on a CPU.
    """
    if env.get("LLMSPAWNER_DEV", "") not in ("1", "true", "yes"):
        return
    s = c.LLMSpawner
    s.bind_pod_ip = True
    _set_default(s, "image", "llmspawner/singleuser:dev")
    _set_default(s, "image_pull_policy", "IfNotPresent")
    # The image stands for a local Python environment, whose bin/ the kubelet puts on PATH.
    _set_default(s, "cmd", ["jupyterhub-singleuser"])
    # The emulated kubelet runs pod processes as the user running it (root in CI), and
    # Jupyter Server refuses to run as root unless told.
    _set_default(s, "args", ["--ServerApp.allow_root=True"])
    _set_default(s, "start_timeout", 300)
    _set_default(s, "http_timeout", 120)
    # A test or a demo needs no grace: the process gets SIGTERM and a second to stop.
    _set_default(s, "delete_grace_period", 1)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"llmspawner: {name} must be a whole number of seconds, not {raw!r}"
        ) from None


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

    The hub's own activity polling of the proxy is switched off
    (``JupyterHub.last_activity_interval = 0``): configurable-http-proxy counts every request,
    so LlamaBoard's background polling would keep an idle server alive forever. Activity then
    comes from the user's server, which leaves that polling out (see
    ``llmspawner.singleuser``).
    """
    if env.get("LLMSPAWNER_CULL", "1") in ("0", "false", "no"):
        return
    existing = c.JupyterHub.services if "services" in c.JupyterHub else []
    if any(
        s.get("name") in ("idle-culler", "jupyterhub-idle-culler", "cull-idle") for s in existing
    ):
        return
    s = c.LLMSpawner
    environment = {
        "LLMSPAWNER_PROFILES_DIR": s.profiles_dir,
        "LLMSPAWNER_GPU_SHARED_RESOURCE": s.get("gpu_shared_resource", "nvidia.com/gpu"),
        "LLMSPAWNER_GPU_REPLICA_COUNTS": ",".join(
            str(n) for n in s.get("gpu_replica_counts", (2, 4))
        ),
        "LLMSPAWNER_MIG_STRATEGY": s.get("mig_strategy", "mixed"),
    }
    try:
        service, role = culling.culler_service(
            timeout=_int(env, "LLMSPAWNER_CULL_TIMEOUT", 3600),
            cull_every=_int(env, "LLMSPAWNER_CULL_EVERY", 300),
            max_age=_int(env, "LLMSPAWNER_CULL_MAX_AGE", 0),
            cull_users=env.get("LLMSPAWNER_CULL_USERS", "") in ("1", "true", "yes"),
            environment=environment,
            api_url=env.get("LLMSPAWNER_HUB_API_URL") or None,
        )
    except ValueError as e:
        raise ConfigError(f"llmspawner: {e}") from None
    add_service(c, service, [role])
    _set_default(c.JupyterHub, "last_activity_interval", 0)


def configure(c, env: Mapping[str, str] = os.environ) -> None:
    """Configure the whole hub for llmspawner from ``env`` (see the module docstring)."""
    configure_spawner(c, env)
    configure_auth(c, env)
    configure_culler(c, env)
    configure_dev(c, env)
    # Last: the queue copies the spawner's settings (profiles, storage, MLflow, image).
    configure_queue(c, env)
