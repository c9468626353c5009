"""What llmspawner needs from the zero-to-jupyterhub values, beyond the chart's own schema.

Each check is a pure function ``check_x(values, *, file) -> list[Problem]`` of the values
*merged over the chart's defaults* (:func:`llmspawner.deploy.values.helm_merge`), so a
setting left out is judged by the chart's default. :data:`CHECKS` lists them in the order
they run. The z2jh configuration reference is https://z2jh.jupyter.org/en/stable/resources/reference.html
(below: "reference"); the chart's hub configuration is ``jupyterhub/files/hub/jupyterhub_config.py``
in https://github.com/jupyterhub/zero-to-jupyterhub-k8s.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from .mlflow_values import check_mlflow_behind_hub
from .problems import Problem, format_path

#: ``JupyterHub.spawner_class`` values that load :class:`llmspawner.spawner.LLMSpawner`: the
#: ``jupyterhub.spawners`` entry point name (pyproject.toml) and the import paths.
SPAWNER_CLASSES = ("llm", "llmspawner.spawner.LLMSpawner", "llmspawner.LLMSpawner")
#: The module whose functions ``hub.extraConfig`` must call.
HUBCONFIG = "llmspawner.hubconfig"
#: ``hub.extraEnv`` names whose value is a secret (matched anywhere in the name, any case).
SECRET_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|CRYPT_KEY", re.IGNORECASE)
#: ``hub.config.<Class>.<trait>`` traits whose value is a secret.
SECRET_TRAITS = ("client_secret",)


def _get(values: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(values, dict) or key not in values:
            return default
        values = values[key]
    return values


def check_spawner_class(values: dict, *, file: str) -> list[Problem]:
    """``hub.config.JupyterHub.spawner_class`` must load LLMSpawner.

    Why: the chart's hub configuration sets ``c.JupyterHub.spawner_class`` to KubeSpawner
    and then applies ``hub.config`` over it (reference: ``hub.config``);
    :func:`llmspawner.hubconfig.configure_spawner` only fills in a spawner class when none is
    set, so under z2jh the values must name it. Allowed: :data:`SPAWNER_CLASSES`.
    """
    path = "hub.config.JupyterHub.spawner_class"
    value = _get(values, "hub", "config", "JupyterHub", "spawner_class")
    if value in SPAWNER_CLASSES:
        return []
    allowed = ", ".join(SPAWNER_CLASSES)
    if value is None:
        msg = f"is not set (the chart then uses KubeSpawner); set it to one of {allowed}"
    else:
        msg = f"must be one of {allowed}; got {value!r}"
    return [Problem(file, path, msg)]


#: Authenticators that let anyone in; the chart's default is ``dummy``.
OPEN_AUTHENTICATORS = ("dummy", "null", "jupyterhub.auth.DummyAuthenticator")


def check_real_login(values: dict, *, file: str) -> list[Problem]:
    """``hub.config.JupyterHub.authenticator_class`` must not be the chart's ``dummy``.

    Why: the chart's default values set ``authenticator_class: dummy`` (any name and password
    logs in; reference: ``hub.config``), and :func:`llmspawner.hubconfig.configure_auth`
    never replaces a class that is set, so the OIDC login must be named in the values
    (``llm-oauth``, :data:`LLM_AUTHENTICATORS`).
    """
    path = "hub.config.JupyterHub.authenticator_class"
    value = _get(values, "hub", "config", "JupyterHub", "authenticator_class")
    if value not in OPEN_AUTHENTICATORS:
        return []
    return [
        Problem(
            file,
            path,
            f"must name a real login, e.g. llm-oauth (OIDC, see hubconfig); got {value!r}, "
            "with which anyone logs in",
        )
    ]


#: ``JupyterHub.authenticator_class`` values that load :class:`llmspawner.auth.LLMOAuthenticator`
#: (the ``jupyterhub.authenticators`` entry point name in pyproject.toml, and the import path).
LLM_AUTHENTICATORS = ("llm-oauth", "llmspawner.auth.LLMOAuthenticator")
#: The plain GenericOAuthenticator: the same settings, but groups are read at login only.
PLAIN_OAUTH = (
    "generic-oauth",
    "generic",
    "oauthenticator.generic.GenericOAuthenticator",
    "oauthenticator.GenericOAuthenticator",
)
#: The chart's own Secret and key of the hub's CryptKeeper key (generated at the first
#: install, kept across upgrades: ``jupyterhub/templates/hub/secret.yaml``).
CHART_CRYPT_KEY = {"name": "hub", "key": "hub.config.CryptKeeper.keys"}


def _env_spec(values: dict, name: str) -> tuple[str, Any] | None:
    """``(path, value)`` of the variable ``name`` in ``hub.extraEnv`` (both notations: the
    mapping's value, or the list entry), ``None`` when it is not there."""
    env = _get(values, "hub", "extraEnv", default={}) or {}
    if isinstance(env, dict):
        for key, spec in env.items():
            if (spec.get("name", key) if isinstance(spec, dict) else key) == name:
                return format_path(["hub", "extraEnv", key]), spec
    elif isinstance(env, list):
        for i, spec in enumerate(env):
            if isinstance(spec, dict) and spec.get("name") == name:
                return format_path(["hub", "extraEnv", i]), spec
    return None


def check_login_refresh(values: dict, *, file: str) -> list[Problem]:
    """The login re-checks the identity provider's groups at each auth refresh.

    Why: a user removed from the allowed groups in the IdP must lose access at the next auth
    refresh (issue 12). :class:`llmspawner.auth.LLMOAuthenticator` (``llm-oauth``) does that;
    the plain ``generic-oauth`` reads the groups at login only, and the chart's value wins
    over :func:`llmspawner.hubconfig.configure_auth`'s default. The refresh needs auth state,
    which ``configure_auth`` turns on only when ``JUPYTERHUB_CRYPT_KEY`` is in the hub's
    environment: ``hub.extraEnv`` must set it, from a Secret (the chart's own, see
    :data:`CHART_CRYPT_KEY`; z2jh's "Authentication state",
    https://z2jh.jupyter.org/en/stable/administrator/authentication.html). A literal value
    is :func:`check_no_inline_secrets`' to name. Other authenticators are not judged.
    """
    path = "hub.config.JupyterHub.authenticator_class"
    value = _get(values, "hub", "config", "JupyterHub", "authenticator_class")
    if value in PLAIN_OAUTH:
        return [
            Problem(
                file,
                path,
                f"{value!r} reads the identity provider's groups at login only (a user removed "
                "from the allowed groups keeps access until their hub session ends): use "
                "llm-oauth (llmspawner.auth.LLMOAuthenticator, the same settings), which "
                "re-checks them at each auth refresh",
            )
        ]
    if value not in LLM_AUTHENTICATORS:
        return []
    found = _env_spec(values, "JUPYTERHUB_CRYPT_KEY")
    if found is None:
        return [
            Problem(
                file,
                "hub.extraEnv.JUPYTERHUB_CRYPT_KEY",
                "is not set: without it the hub keeps no auth state and llm-oauth reads the "
                "groups at login only; set it from the chart's Secret (valueFrom.secretKeyRef "
                f"name {CHART_CRYPT_KEY['name']}, key {CHART_CRYPT_KEY['key']})",
            )
        ]
    where, spec = found
    source = spec.get("valueFrom") if isinstance(spec, dict) else None
    if isinstance(source, dict) and "secretKeyRef" in source:
        ref = source["secretKeyRef"] or {}
        if (ref.get("name"), ref.get("key")) == ("hub", "hub.config.CryptKeeper.keys"):
            return []
        if ref.get("name") == "hub":
            return [
                Problem(
                    file,
                    where,
                    f"the chart's Secret hub has no key {ref.get('key')!r}; its CryptKeeper key "
                    f"is {CHART_CRYPT_KEY['key']}",
                )
            ]
        return [
            Problem(
                file,
                where,
                "the hub's CryptKeeper key is the chart's (Secret hub, key "
                f"{CHART_CRYPT_KEY['key']}), which the chart sets as c.CryptKeeper.keys; "
                f"Secret {ref.get('name')} must hold the same key, or set "
                "hub.config.CryptKeeper.keys to it",
                warning=True,
            )
        ]
    return []


def check_storage_off(values: dict, *, file: str) -> list[Problem]:
    """``singleuser.storage.type`` must be ``none``.

    Why: LLMSpawner mounts each user's own subPath of one shared PVC
    (:mod:`llmspawner.storage`); the chart's ``dynamic`` (its default) or ``static`` storage
    makes KubeSpawner create or mount per-user home volumes as well (reference:
    ``singleuser.storage.type``).
    """
    value = _get(values, "singleuser", "storage", "type")
    if value == "none":
        return []
    return [
        Problem(
            file,
            "singleuser.storage.type",
            f"must be none (LLMSpawner mounts each user's folder of the shared PVC itself); "
            f"got {value!r}",
        )
    ]


def check_chart_culler_off(values: dict, *, file: str) -> list[Problem]:
    """``cull.enabled`` must be false.

    Why: llmspawner runs its own ``jupyterhub-idle-culler`` service with each profile's
    ``idle_timeout`` and counts a running training as activity (:mod:`llmspawner.culling`,
    started by :func:`llmspawner.hubconfig.configure_culler`). The chart's culler (on by
    default, one ``cull.timeout`` for everyone; reference: ``cull``) would run beside it and
    stop GPU servers on its own clock.
    """
    value = _get(values, "cull", "enabled")
    if value is False:
        return []
    return [
        Problem(
            file,
            "cull.enabled",
            "must be false: llmspawner's own culler (per-profile idle_timeout) replaces the "
            f"chart's; got {value!r}",
        )
    ]


def check_extra_config_calls_llmspawner(values: dict, *, file: str) -> list[Problem]:
    """``hub.extraConfig`` must call llmspawner's hub configuration.

    Why: the spawner's profiles are checked, and the idle culler and the batch queue are
    added, only by :func:`llmspawner.hubconfig.configure` (or, for the first two,
    ``configure_spawner`` and ``configure_culler``); ``hub.extraConfig`` is the chart's way to
    run Python in the hub's configuration (reference: ``hub.extraConfig``). Accepted: a call
    of ``configure(c)``, or of both ``configure_spawner(c)`` and ``configure_culler(c)``,
    imported from :data:`HUBCONFIG`. A snippet that is not valid Python is reported.
    """
    snippets = _get(values, "hub", "extraConfig", default={}) or {}
    problems = []
    called: set[str] = set()
    for name, code in snippets.items() if isinstance(snippets, dict) else []:
        path = format_path(["hub", "extraConfig", name])
        if not isinstance(code, str):
            continue  # the chart's schema reports it
        try:
            tree = ast.parse(code)
        except SyntaxError as e:
            problems.append(Problem(file, path, f"is not valid Python: {e.msg} (line {e.lineno})"))
            continue
        called |= _hubconfig_calls(tree)
    if "configure" in called or {"configure_spawner", "configure_culler"} <= called:
        return problems
    have = f" (it calls only {', '.join(sorted(called))})" if called else ""
    problems.append(
        Problem(
            file,
            "hub.extraConfig",
            f"must call {HUBCONFIG}.configure(c) (the spawner's profiles, the idle culler and "
            f"the batch queue){have}",
        )
    )
    return problems


def _hubconfig_calls(tree: ast.AST) -> set[str]:
    """Names of :data:`HUBCONFIG` functions called in ``tree``, through any import form."""
    functions: dict[str, str] = {}  # local name -> function name
    modules: set[str] = set()  # local names bound to the module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == HUBCONFIG:
            for a in node.names:
                functions[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module == "llmspawner":
            modules |= {a.asname or a.name for a in node.names if a.name == "hubconfig"}
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == HUBCONFIG:
                    modules.add(a.asname or HUBCONFIG)
    called = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in functions:
            called.add(functions[f.id])
        elif isinstance(f, ast.Attribute) and ast.unparse(f.value) in modules:
            called.add(f.attr)
    return called


def check_profiles_mounted(values: dict, *, file: str) -> list[Problem]:
    """``hub.config.LLMPlatform.profiles_dir`` must be set and inside a
    ``hub.extraVolumeMounts`` entry whose volume is in ``hub.extraVolumes``.

    Why: the hub reads the GPU profiles from that folder when it starts and refuses to start
    without them (:func:`llmspawner.hubconfig.check_profiles`); the hub image has no profiles
    of its own, so they come from a volume (a ConfigMap) mounted into the hub pod (reference:
    ``hub.extraVolumes``, ``hub.extraVolumeMounts``).
    """
    path = "hub.config.LLMPlatform.profiles_dir"
    folder = _get(values, "hub", "config", "LLMPlatform", "profiles_dir")
    if folder is None and _get(values, "hub", "config", "LLMSpawner", "profiles_dir"):
        return []  # check_platform_settings reports the old place
    if not isinstance(folder, str) or not folder.startswith("/"):
        got = "is not set" if folder is None else f"must be an absolute path; got {folder!r}"
        return [
            Problem(
                file,
                path,
                f"{got}: set it to the mountPath of the profiles' volume in hub.extraVolumeMounts",
            )
        ]
    mounts = _get(values, "hub", "extraVolumeMounts", default=[]) or []
    volumes = _get(values, "hub", "extraVolumes", default=[]) or []
    volume_names = [v.get("name") for v in volumes if isinstance(v, dict)]
    for i, mount in enumerate(mounts):
        if not isinstance(mount, dict) or not isinstance(mount.get("mountPath"), str):
            continue
        if PurePosixPath(folder).is_relative_to(PurePosixPath(mount["mountPath"])):
            if mount.get("name") in volume_names:
                return []
            return [
                Problem(
                    file,
                    f"hub.extraVolumeMounts[{i}].name",
                    f"no hub.extraVolumes entry is named {mount.get('name')!r} "
                    f"(volumes: {', '.join(map(str, volume_names)) or 'none'})",
                )
            ]
    mounted = ", ".join(str(m.get("mountPath")) for m in mounts if isinstance(m, dict)) or "none"
    return [
        Problem(
            file,
            path,
            f"{folder} is not inside any hub.extraVolumeMounts mountPath (mounted: {mounted}); "
            "mount the profiles' ConfigMap there",
        )
    ]


def check_no_inline_secrets(values: dict, *, file: str) -> list[Problem]:
    """No secret value written into the values file.

    Why: the values file is kept in version control. A secret belongs in a Kubernetes Secret,
    read with ``valueFrom.secretKeyRef`` in ``hub.extraEnv`` (reference: ``hub.extraEnv``;
    GenericOAuthenticator reads ``OAUTH_CLIENT_SECRET`` from the environment). Checked:
    ``hub.extraEnv`` entries whose name matches :data:`SECRET_ENV` (both the mapping and the
    list notation) and ``hub.config.<Class>.client_secret``.
    """
    problems = []
    env = _get(values, "hub", "extraEnv", default={}) or {}
    entries: list[tuple[list, str, Any]] = []
    if isinstance(env, dict):
        for key, spec in env.items():
            name = spec.get("name", key) if isinstance(spec, dict) else key
            entries.append((["hub", "extraEnv", key], str(name), spec))
    elif isinstance(env, list):
        for i, spec in enumerate(env):
            if isinstance(spec, dict):
                entries.append((["hub", "extraEnv", i], str(spec.get("name", "")), spec))
    for where, name, spec in entries:
        if not SECRET_ENV.search(name):
            continue
        source = spec.get("valueFrom") if isinstance(spec, dict) else None
        if isinstance(source, dict) and "secretKeyRef" in source:
            continue
        if isinstance(source, dict):
            how = f"from {', '.join(source)}"
        else:
            how = "as a literal value"
        problems.append(
            Problem(
                file,
                format_path(where),
                f"secret {name} is set {how}; read it from a Kubernetes Secret with "
                "valueFrom.secretKeyRef",
            )
        )
    config = _get(values, "hub", "config", default={}) or {}
    for cls, traits in config.items() if isinstance(config, dict) else []:
        for trait in SECRET_TRAITS:
            if isinstance(traits, dict) and traits.get(trait):
                problems.append(
                    Problem(
                        file,
                        format_path(["hub", "config", cls, trait]),
                        "a secret written in the values file; remove it and set "
                        "OAUTH_CLIENT_SECRET in hub.extraEnv with valueFrom.secretKeyRef",
                    )
                )
    return problems


def check_proxy_activity_off(values: dict, *, file: str) -> list[Problem]:
    """``hub.config.JupyterHub.last_activity_interval`` must be 0.

    Why: the chart's hub configuration sets it to 60 (the hub polls the proxy's routes for
    activity every minute), and :func:`llmspawner.hubconfig.configure_culler` never replaces
    a value that is set. The proxy counts LlamaBoard's background polling as activity, so an
    idle server would never be culled; llmspawner's activity comes from the user's server
    (:mod:`llmspawner.singleuser`) instead.
    """
    value = _get(values, "hub", "config", "JupyterHub", "last_activity_interval")
    if value == 0:
        return []
    shown = "not set (the chart then uses 60)" if value is None else f"{value!r}"
    return [
        Problem(
            file,
            "hub.config.JupyterHub.last_activity_interval",
            "must be 0: the proxy counts LlamaBoard's polling as activity, so idle servers "
            f"would never be culled; got {shown}",
        )
    ]


#: The route repair's interval variable (:mod:`llmspawner.routes`; seconds, ``0``: off).
ROUTE_REPAIR_ENV = "LLMSPAWNER_ROUTE_REPAIR_INTERVAL"


def check_route_repair(values: dict, *, file: str) -> list[Problem]:
    """Something repairs the proxy's routes.

    Why: the chart runs configurable-http-proxy in its own pod with its routes in memory
    only; the hub's only periodic route check runs with the activity poll
    (``last_activity_interval``), which llmspawner switches off (:func:`check_proxy_activity_off`).
    :mod:`llmspawner.routes`' ``route-repair`` service replaces it, every
    ``LLMSPAWNER_ROUTE_REPAIR_INTERVAL`` seconds (default 30, ``0``: no service). With both
    at 0, after a proxy pod restart every server and hub service answers 500 "Redirect loop
    detected" until the hub restarts: a warning. A literal interval the hub would refuse (not
    a whole number >= 0; :func:`llmspawner.routes.configure_route_repair`) is a problem; one
    read from a Secret or ConfigMap is not known offline and is left alone.
    """
    from ..settings import SettingError, parse_int

    found = _env_spec(values, ROUTE_REPAIR_ENV)
    literal = _literal_env(values).get(ROUTE_REPAIR_ENV)
    if found is None or literal is None:
        return []
    where = found[0]
    try:
        interval = parse_int(literal, name=ROUTE_REPAIR_ENV, default=30, unit="seconds")
    except SettingError as e:
        return [Problem(file, where, f"{e}: the hub refuses to start")]
    activity = _get(values, "hub", "config", "JupyterHub", "last_activity_interval")
    if interval or activity != 0:
        return []
    return [
        Problem(
            file,
            where,
            "is 0 and so is hub.config.JupyterHub.last_activity_interval: nothing repairs the "
            "proxy's routes, so after the proxy pod restarts servers and services answer 500 "
            '"Redirect loop detected" until the hub restarts; set it to e.g. 30 (seconds)',
            warning=True,
        )
    ]


#: ``hub.extraEnv`` names of which one must be set for anyone to log in (hubconfig).
LOGIN_RULE_ENV = ("LLMSPAWNER_ALLOWED_GROUPS", "LLMSPAWNER_ALLOW_ALL")
#: ``hub.config.GenericOAuthenticator`` traits that are a login rule as well.
LOGIN_RULE_TRAITS = ("allowed_groups", "allowed_users", "allow_all")


def check_login_rule(values: dict, *, file: str) -> list[Problem]:
    """Someone must be allowed to log in, on purpose.

    Why: :func:`llmspawner.hubconfig.configure_auth` stops the hub ("set
    LLMSPAWNER_ALLOWED_GROUPS ... or LLMSPAWNER_ALLOW_ALL=1") when no login rule is set, and
    OAuthenticator 16.0 and later let nobody in without one (its changelog, 16.0,
    https://oauthenticator.readthedocs.io/en/latest/reference/changelog.html). Allowed:
    one of :data:`LOGIN_RULE_ENV` in ``hub.extraEnv`` (either notation), or one of
    :data:`LOGIN_RULE_TRAITS` in ``hub.config.GenericOAuthenticator``.
    """
    env = _get(values, "hub", "extraEnv", default={}) or {}
    if isinstance(env, dict):
        names = {spec.get("name", k) if isinstance(spec, dict) else k for k, spec in env.items()}
    else:
        names = {spec.get("name") for spec in env if isinstance(spec, dict)}
    auth = _get(values, "hub", "config", "GenericOAuthenticator", default={}) or {}
    if names & set(LOGIN_RULE_ENV) or (
        isinstance(auth, dict) and auth.keys() & set(LOGIN_RULE_TRAITS)
    ):
        return []
    return [
        Problem(
            file,
            "hub.extraEnv",
            f"sets no login rule: set {' or '.join(LOGIN_RULE_ENV)} (or "
            "hub.config.GenericOAuthenticator.allowed_groups); without one the hub refuses to "
            "start",
        )
    ]


def _literal_env(values: dict) -> dict[str, str]:
    """The ``hub.extraEnv`` variables with a literal value (both notations); those read
    from a Secret or a field are unknown offline and left out."""
    env = _get(values, "hub", "extraEnv", default={}) or {}
    items = env.items() if isinstance(env, dict) else ((None, e) for e in env)
    out = {}
    for key, spec in items:
        if isinstance(spec, str | int | float) and key is not None:
            out[str(key)] = str(spec)
        elif isinstance(spec, dict) and "value" in spec and spec.get("name", key):
            out[str(spec.get("name", key))] = str(spec["value"])
    return out


def platform_settings(values: dict, *, file: str):
    """The platform settings the hub will resolve from the values, as far as known offline.

    ``hub.config.LLMPlatform`` (the hub's ``c.LLMPlatform``), over the literal
    ``hub.extraEnv`` variables (``LLMSPAWNER_MIG_STRATEGY``, ...), over the defaults; as
    :func:`llmspawner.settings.resolve_hub_settings` does at hub start. The spawner's
    namespace and image are not resolved here (they come from the chart).

    Returns:
        ``(settings, problems)``: the settings (``None`` when invalid) and one
        :class:`Problem` naming ``hub.config.LLMPlatform[.<setting>]`` when they are invalid.
    """
    from traitlets.config import Config

    from ..settings import LLMPlatform, SettingError, unknown_message, unknown_settings

    section = _get(values, "hub", "config", "LLMPlatform", default={}) or {}
    path = "hub.config.LLMPlatform"
    if not isinstance(section, dict):
        return None, [Problem(file, path, f"must be a mapping, not {type(section).__name__}")]
    unknown = unknown_settings(section)
    if unknown:
        return None, [Problem(file, path, unknown_message("it", unknown))]
    try:
        return LLMPlatform(config=Config(LLMPlatform=Config(section)), env=_literal_env(values)), []
    except SettingError as e:
        text = str(e)
        named = next(
            (n for n in section if text.startswith(f"LLMPlatform.{n} ")),
            next((n for n in section if text.startswith(f"LLMPlatform.{n}:")), None),
        )
        return None, [Problem(file, f"{path}.{named}" if named else path, text)]


def check_platform_settings(values: dict, *, file: str) -> list[Problem]:
    """``hub.config.LLMPlatform`` must hold valid settings, and the platform settings must not
    be under ``hub.config.LLMSpawner``.

    Why: the hub refuses to start on an invalid or unknown setting
    (:func:`llmspawner.hubconfig.resolve_settings`); and since issue 11 the settings of
    :data:`llmspawner.settings.MOVED_SETTINGS` (profiles folder, PVC, MLflow, GPU advertising,
    queue URL) live in ``LLMPlatform``: ``LLMSpawner`` no longer has them, so a value there
    would be ignored (the hub stops on it too). Namespace, image and ids stay spawner
    settings (the chart sets them from ``singleuser``).
    """
    from ..settings import MOVED_SETTINGS

    problems = []
    spawner = _get(values, "hub", "config", "LLMSpawner", default={}) or {}
    if isinstance(spawner, dict):
        for name in MOVED_SETTINGS:
            if name in spawner:
                problems.append(
                    Problem(
                        file,
                        f"hub.config.LLMSpawner.{name}",
                        f"moved: set hub.config.LLMPlatform.{name} instead; LLMSpawner no "
                        "longer reads it",
                    )
                )
    problems.extend(platform_settings(values, file=file)[1])
    return problems


def cluster_gpu_config(values: dict, *, file: str):
    """Return the cluster's GPU configuration the hub will use (:func:`platform_settings`).

    Returns:
        ``(config, problems)``: the :class:`~llmspawner.profiles.ClusterGPUConfig` (the
        defaults when the settings are invalid) and the problems of the settings (reported by
        :func:`check_platform_settings` as well, so :func:`llmspawner.deploy.check.check_all`
        drops repeats).
    """
    from ..profiles import ClusterGPUConfig

    settings, problems = platform_settings(values, file=file)
    return (settings.gpu_cluster if settings is not None else ClusterGPUConfig()), problems


def check_one_tls_front_door(values: dict, *, file: str) -> list[Problem]:
    """The hub's public address: one way in, with TLS, that can get its ports.

    Why: the kit's path (docs/deploy.md) is the chart's own ``proxy-public`` LoadBalancer
    with ``proxy.https`` (Let's Encrypt, or a TLS Secret), on k3s installed with
    ``--disable=traefik``: k3s's Traefik holds ports 80 and 443 on every node, and ServiceLB
    then leaves ``proxy-public`` Pending (https://docs.k3s.io/networking/networking-services).
    The other path is the chart's ``ingress`` through an ingress controller, with
    ``proxy.service.type: ClusterIP``. What the values show is checked; whether the cluster
    still runs Traefik is not (deploy check reads no cluster). Refused:

    - ``proxy.https.enabled`` and ``ingress.enabled`` together (two TLS front doors);
    - ``ingress.enabled`` with ``proxy.service.type: LoadBalancer`` (the chart's default; it
      asks for the ports the ingress controller holds);
    - ``proxy.https`` with Let's Encrypt and ``proxy.service.type`` other than LoadBalancer
      (the ACME HTTP-01 challenge needs port 80 of the public address; reference:
      ``proxy.https``);
    - neither ``proxy.https.enabled`` nor ``ingress.enabled`` (OIDC logins and hub cookies
      over plain HTTP).
    """
    https = _get(values, "proxy", "https", default={}) or {}
    https_on = isinstance(https, dict) and https.get("enabled") is True
    ingress_on = _get(values, "ingress", "enabled") is True
    service_type = _get(values, "proxy", "service", "type", default="LoadBalancer")
    if https_on and ingress_on:
        return [
            Problem(
                file,
                "ingress.enabled",
                "proxy.https and ingress are both enabled: choose one way in (docs/deploy.md: "
                "proxy.https with the proxy-public LoadBalancer, k3s without Traefik)",
            )
        ]
    if ingress_on and service_type == "LoadBalancer":
        return [
            Problem(
                file,
                "proxy.service.type",
                "must be ClusterIP with ingress.enabled: a LoadBalancer asks for ports 80/443, "
                "which the ingress controller holds (on k3s it stays Pending)",
            )
        ]
    letsencrypt = https_on and https.get("type", "letsencrypt") == "letsencrypt"
    if letsencrypt and service_type != "LoadBalancer":
        return [
            Problem(
                file,
                "proxy.service.type",
                "must be LoadBalancer with proxy.https type letsencrypt: Let's Encrypt must "
                f"reach port 80 of the public address; got {service_type!r}",
            )
        ]
    if not (https_on or ingress_on):
        return [
            Problem(
                file,
                "proxy.https.enabled",
                "is off and so is ingress: the hub would serve logins over plain HTTP; enable "
                "proxy.https (Let's Encrypt or type secret) or an ingress with TLS",
            )
        ]
    return []


def check_one_scheduler(values: dict, *, file: str) -> list[Problem]:
    """``scheduling.userScheduler.enabled`` must be false.

    Why: the chart's user-scheduler (on by default; reference:
    ``scheduling.userScheduler``) places users' servers, while the queue's Jobs are placed by
    the cluster's default scheduler. Two schedulers binding pods to the same GPU nodes each
    count free GPUs from their own cache, so one can bind a pod to a GPU the other has just
    given away, and the kubelet rejects that pod (``OutOfnvidia.com/gpu``). The user-scheduler
    packs pods tightly so an autoscaler can remove nodes; on a fixed-size GPU cluster one
    scheduler for both is worth more.
    """
    if _get(values, "scheduling", "userScheduler", "enabled") is False:
        return []
    return [
        Problem(
            file,
            "scheduling.userScheduler.enabled",
            "must be false: servers and queue Jobs share the GPU nodes and must be placed by "
            "one scheduler (the default one), or their pods can be rejected in a bind race",
        )
    ]


def check_hub_requests(values: dict, *, file: str) -> list[Problem]:
    """``hub.resources.requests`` must set ``cpu`` and ``memory``.

    Why: the chart gives the hub pod no requests (reference: ``hub.resources``), so it is
    BestEffort, the first pod the kubelet evicts under memory pressure
    (https://kubernetes.io/docs/concepts/scheduling-eviction/node-pressure-eviction/); here it
    runs the hub, the idle culler and the batch queue.
    """
    requests = _get(values, "hub", "resources", "requests", default={}) or {}
    missing = [r for r in ("cpu", "memory") if not isinstance(requests, dict) or r not in requests]
    if not missing:
        return []
    return [
        Problem(
            file,
            "hub.resources.requests",
            f"must set {' and '.join(missing)}: without requests the hub pod (hub, culler, "
            "queue) is BestEffort and evicted first",
        )
    ]


def check_image_puller_hook(values: dict, *, file: str) -> list[Problem]:
    """A warning when ``prePuller.hook.enabled`` is true (the chart's default).

    Why: the hook is a pre-install/pre-upgrade Helm hook that waits until every node has
    pulled the user image (reference: ``prePuller.hook``); the user image is several GB, so a
    first install or an image change outlasts ``helm``'s default ``--timeout`` of 5 minutes.
    The kit turns it off and keeps the continuous puller (``prePuller.continuous``), which pulls
    in the background. A warning, not a problem: with a long enough ``--timeout`` the hook
    works.
    """
    if _get(values, "prePuller", "hook", "enabled") is False:
        return []
    return [
        Problem(
            file,
            "prePuller.hook.enabled",
            "the image-puller hook makes helm wait for every node to pull the user image "
            "(several GB), past helm's default 5m timeout: set it to false (the continuous "
            "puller pulls in the background) or give helm a longer --timeout",
            warning=True,
        )
    ]


#: The checks, in the order they run.
CHECKS: tuple[Callable[..., list[Problem]], ...] = (
    check_spawner_class,
    check_real_login,
    check_login_refresh,
    check_login_rule,
    check_proxy_activity_off,
    check_route_repair,
    check_storage_off,
    check_chart_culler_off,
    check_extra_config_calls_llmspawner,
    check_platform_settings,
    check_profiles_mounted,
    check_no_inline_secrets,
    check_one_tls_front_door,
    check_one_scheduler,
    check_hub_requests,
    check_image_puller_hook,
    check_mlflow_behind_hub,
)


def llmspawner_problems(values: dict, *, file: str) -> list[Problem]:
    """Run every check of :data:`CHECKS` on merged values; return their problems in order."""
    return [p for check in CHECKS for p in check(values, file=file)]
