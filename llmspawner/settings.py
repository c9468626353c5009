"""Every platform setting once: :class:`LLMPlatform`, and how the hub hands it to its services.

The spawner, the batch queue service, the idle culler's hook, the ``llmspawner`` CLI and
``llmspawner deploy check`` all read the same :class:`LLMPlatform` (a traitlets
``Configurable``, config section ``c.LLMPlatform``). Each trait is defined here once, with
its help text, default, validation and the ``LLMSPAWNER_*`` environment variable it may come
from.

Where a value comes from, first match wins:

1. the hub's configuration, ``c.LLMPlatform.<trait>`` (z2jh: ``hub.config.LLMPlatform``);
2. the trait's environment variable (``LLMSPAWNER_PROFILES_DIR``, ...; see :func:`env_name`);
3. the default below.

The hub resolves the settings once (:func:`llmspawner.hubconfig.configure`) and hands them
to the processes it starts (the queue service, the culler) through **one** serialisation:
:meth:`LLMPlatform.to_env` writes every trait as JSON into ``LLMSPAWNER_PLATFORM``, and
:meth:`LLMPlatform.from_env` reads it back, so no setting is renamed or re-defaulted on the
way. Parsing of booleans and comma-separated lists from the environment lives here only
(:func:`parse_bool`, :func:`parse_csv`).

A bad value raises :class:`SettingError`, whose message names the setting
(``LLMPlatform.mig_strategy``), the value and the allowed values.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from traitlets import Enum, Float, Integer, List, TraitError, Unicode, validate
from traitlets.config import Config, Configurable

from . import profiles as profiles_mod
from . import tracking

#: The environment variable that carries the whole serialised settings (JSON object).
ENV_VAR = "LLMSPAWNER_PLATFORM"

_DEFAULT_GPU = profiles_mod.ClusterGPUConfig()

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class SettingError(ValueError):
    """A platform setting has a bad value; the message names the setting and what is allowed."""


def parse_bool(value: str | None, *, name: str, default: bool = False) -> bool:
    """Parse an environment flag.

    Args:
        value: the raw value; ``None`` or empty: ``default``.
        name: the variable's name, for the error message.
        default: the value when unset.

    Returns:
        ``True`` for ``1``/``true``/``yes``/``on``, ``False`` for ``0``/``false``/``no``/``off``
        (any case).

    Raises:
        SettingError: for anything else, naming the variable and the allowed values.
    """
    if value is None or value.strip() == "":
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SettingError(f"{name} must be one of 1, true, yes, on, 0, false, no, off; not {value!r}")


def parse_csv(value: str | None) -> list[str]:
    """Split a comma-separated environment value: stripped, empty items and duplicates dropped,
    order kept. ``None`` or empty: ``[]``."""
    return list(dict.fromkeys(v.strip() for v in (value or "").split(",") if v.strip()))


def parse_int(value: str | None, *, name: str, default: int, minimum: int = 0) -> int:
    """Parse a whole number from the environment (``None`` or empty: ``default``).

    Raises:
        SettingError: naming the variable, for a non-integer or a value below ``minimum``.
    """
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise SettingError(f"{name} must be a whole number >= {minimum}, not {value!r}") from None
    if number < minimum:
        raise SettingError(f"{name} must be a whole number >= {minimum}, not {value!r}")
    return number


def env_name(trait_name: str) -> str:
    """The environment variable a trait may come from: ``LLMSPAWNER_`` + its upper-case name,
    unless the trait names another in its ``env`` metadata."""
    trait = LLMPlatform.class_traits()[trait_name]
    return trait.metadata.get("env") or f"LLMSPAWNER_{trait_name.upper()}"


class LLMPlatform(Configurable):
    """The platform's settings, shared by the hub, the spawner and every hub service.

    Construct it with the hub's config (``LLMPlatform(config=c)``), as a child of a
    configurable (``LLMPlatform(parent=spawner)``), or in a service process from the hub's
    serialisation (:meth:`from_env`). Values left unset in the config come from the
    environment variable of each trait (see the module docstring).
    """

    profiles_dir = Unicode(
        "/usr/local/etc/llmspawner/profiles",
        config=True,
        help="""
        Folder of GPU profile files (``*.yaml``, one profile each), offered at spawn and used
        by the queue and the culler. Under zero-to-jupyterhub it is mounted from a ConfigMap.
        Re-read within seconds when the files change (:meth:`profiles`). Environment:
        ``LLMSPAWNER_PROFILES_DIR``.
        """,
    )

    namespace = Unicode(
        "",
        config=True,
        help="""
        Kubernetes namespace of the users' servers and of the queue's Jobs (they share the GPU
        slices, so they must be in one namespace). Empty: the spawner's own
        (``KubeSpawner.namespace``, which z2jh sets to the release's namespace); the hub
        resolves it before handing the settings to its services. Environment:
        ``LLMSPAWNER_NAMESPACE``.
        """,
    )

    image = Unicode(
        "",
        config=True,
        help="""
        Container image of the users' servers and of the queue's training Jobs (JupyterLab,
        LlamaBoard and ``llamafactory-cli``); a profile's own ``image`` wins. Empty: the
        spawner's own (``KubeSpawner.image``, z2jh's ``singleuser.image``), resolved by the
        hub. Environment: ``LLMSPAWNER_SINGLEUSER_IMAGE``.
        """,
        env="LLMSPAWNER_SINGLEUSER_IMAGE",
    )

    uid = Integer(
        None,
        allow_none=True,
        config=True,
        help="""
        User id that the containers of servers and Jobs run as (``runAsUser``); ``None``: the
        image's user. Empty in the config: the spawner's own (``KubeSpawner.uid``, z2jh's
        ``singleuser.uid``), resolved by the hub, so that a user's Job writes files as the same
        user as their server. Environment: ``LLMSPAWNER_UID``.
        """,
    )

    gid = Integer(
        None,
        allow_none=True,
        config=True,
        help="""
        Primary group id of the containers (``runAsGroup``); ``None``: the image's. The hub
        resolves it from ``KubeSpawner.gid``. Environment: ``LLMSPAWNER_GID``.
        """,
    )

    fs_gid = Integer(
        None,
        allow_none=True,
        config=True,
        help="""
        The pods' ``fsGroup`` (z2jh's ``singleuser.fsGid``, ``KubeSpawner.fs_gid``); also the
        group that the user's folder is given to. ``None``: not set. Environment:
        ``LLMSPAWNER_FS_GID``.
        """,
    )

    storage_claim_name = Unicode(
        "llm-storage",
        config=True,
        help="""
        Name of the shared PersistentVolumeClaim (ReadWriteMany) holding the ``users/<slug>``
        folders and the shared ``models/`` folder. Each user's pod mounts only its own folder.
        Environment: ``LLMSPAWNER_STORAGE_CLAIM``.
        """,
        env="LLMSPAWNER_STORAGE_CLAIM",
    )

    mlflow_tracking_uri = Unicode(
        "",
        config=True,
        help="""
        URL of the MLflow tracking server as the users' pods and the hub reach it, set as
        ``MLFLOW_TRACKING_URI`` in servers and Jobs. Empty: no tracking. Environment:
        ``LLMSPAWNER_MLFLOW_TRACKING_URI``.
        """,
    )

    mlflow_ui_url = Unicode(
        "",
        config=True,
        help="""
        MLflow's URL in links shown to users, e.g. ``https://hub.example.org/mlflow`` when the
        pods use ``http://mlflow:5000``. Empty: ``mlflow_tracking_uri``. Environment:
        ``LLMSPAWNER_MLFLOW_UI_URL``.
        """,
    )

    mlflow_experiment_template = Unicode(
        tracking.DEFAULT_EXPERIMENT_TEMPLATE,
        config=True,
        help="""
        Template of a user's MLflow experiment name (``MLFLOW_EXPERIMENT_NAME``); fields
        ``{username}`` and ``{slug}``. Environment: ``LLMSPAWNER_MLFLOW_EXPERIMENT_TEMPLATE``.
        """,
    )

    mlflow_timeout = Float(
        5.0,
        config=True,
        help="""
        Seconds to wait for MLflow per request (making sure an experiment exists, finding a
        job's run). When MLflow cannot be reached, a server starts anyway and a Job runs
        anyway. Environment: ``LLMSPAWNER_MLFLOW_TIMEOUT``.
        """,
    )

    gpu_shared_resource = Unicode(
        _DEFAULT_GPU.shared_resource,
        config=True,
        help="""
        Extended resource of time-sliced GPU replicas: ``nvidia.com/gpu``, or
        ``nvidia.com/gpu.shared`` when the NVIDIA device plugin's ``renameByDefault`` is on
        (https://github.com/NVIDIA/k8s-device-plugin#shared-access-to-gpus). Environment:
        ``LLMSPAWNER_GPU_SHARED_RESOURCE``.
        """,
    )

    gpu_replica_counts = List(
        Integer(),
        default_value=list(_DEFAULT_GPU.replica_counts),
        config=True,
        help="""
        Replica counts that time-sliced GPU nodes are labelled with
        (``nvidia.com/gpu.replicas``). A profile's ``gpu.fraction`` must be ``1/N`` for one of
        them. Environment: ``LLMSPAWNER_GPU_REPLICA_COUNTS`` (comma-separated).
        """,
    )

    mig_strategy = Enum(
        list(profiles_mod.MIG_STRATEGIES),
        default_value=_DEFAULT_GPU.mig_strategy,
        config=True,
        help="""
        The NVIDIA device plugin's MIG strategy, ``mixed`` or ``single``; decides which
        resource a ``gpu.mig`` profile requests
        (https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/gpu-operator-mig.html).
        Environment: ``LLMSPAWNER_MIG_STRATEGY``.
        """,
    )

    queue_url = Unicode(
        "",
        config=True,
        help="""
        The batch queue's URL as the users' pods reach it (``LLMSPAWNER_QUEUE_URL`` in the pod,
        read by ``llmspawner queue``). Set by the hub's configuration when the queue service
        is on. Environment: ``LLMSPAWNER_QUEUE_CLIENT_URL``.
        """,
        env="LLMSPAWNER_QUEUE_CLIENT_URL",
    )

    def __init__(self, *, env: Mapping[str, str] | None = None, **kwargs):
        """Args:
            env: where unset traits take their values from (default ``os.environ``).
            **kwargs: ``config=`` or ``parent=`` as for any ``Configurable``.

        Raises:
            SettingError: a value (from the config or the environment) is invalid.
        """
        self._env = os.environ if env is None else env
        try:
            super().__init__(**kwargs)
            self._apply_env()
        except TraitError as e:
            raise SettingError(_trait_message(e)) from None

    # -- values from the environment ----------------------------------------------------

    def _apply_env(self) -> None:
        """Set each trait the config left unset from its environment variable (validated)."""
        section = self.config.get(type(self).__name__)
        configured = set(section) if isinstance(section, Config) else set()
        for name in sorted(self.trait_names(config=True)):
            raw = self._env.get(env_name(name))
            if raw is None or raw == "" or name in configured:
                continue
            setattr(self, name, self._parse_env(name, raw))

    def _parse_env(self, name: str, raw: str):
        trait = self.traits()[name]
        kind = {List: "comma-separated whole numbers", Integer: "a whole number", Float: "a number"}
        for cls, convert in (
            (List, lambda v: [int(x) for x in parse_csv(v)]),
            (Integer, int),
            (Float, float),
        ):
            if isinstance(trait, cls):
                try:
                    return convert(raw)
                except ValueError:
                    raise TraitError(
                        f"LLMPlatform.{name} ({env_name(name)}) must be {kind[cls]}, not {raw!r}"
                    ) from None
        return raw

    # -- validation ----------------------------------------------------------------------

    @validate("mlflow_experiment_template")
    def _check_template(self, proposal):
        try:
            return tracking.check_experiment_template(proposal["value"])
        except ValueError as e:
            raise TraitError(f"LLMPlatform.mlflow_experiment_template: {e}") from None

    @validate("gpu_replica_counts")
    def _check_replicas(self, proposal):
        value = list(proposal["value"])
        if not value or any(isinstance(n, bool) or n < 2 for n in value):
            raise TraitError(
                "LLMPlatform.gpu_replica_counts must list whole numbers >= 2 (the "
                f"nvidia.com/gpu.replicas values of time-sliced nodes), not {value!r}"
            )
        return value

    @validate("mlflow_timeout")
    def _check_timeout(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(
                f"LLMPlatform.mlflow_timeout must be > 0 seconds, not {proposal['value']!r}"
            )
        return proposal["value"]

    # -- derived values ------------------------------------------------------------------

    @property
    def gpu_cluster(self) -> profiles_mod.ClusterGPUConfig:
        """How the cluster advertises GPUs, for :func:`llmspawner.profiles.gpu_resources`."""
        return profiles_mod.ClusterGPUConfig(
            shared_resource=self.gpu_shared_resource,
            replica_counts=tuple(self.gpu_replica_counts),
            mig_strategy=self.mig_strategy,
        )

    @property
    def mlflow_link_url(self) -> str:
        """MLflow's URL for links shown to users (``mlflow_ui_url``, else the tracking URI)."""
        return self.mlflow_ui_url or self.mlflow_tracking_uri

    def experiment_name(self, username: str) -> str:
        """The user's MLflow experiment name, e.g. ``alice-experiments``."""
        return tracking.experiment_name(username, self.mlflow_experiment_template)

    def profiles(self, log=None) -> list[profiles_mod.Profile]:
        """The validated profiles of ``profiles_dir``, through the process-wide cache.

        Added, changed or removed files are seen within the cache's recheck interval
        (seconds); a broken edit keeps the last valid set and is logged on ``log``.

        Raises:
            llmspawner.profiles.ProfileError: no valid set was ever loaded from the folder.
        """
        return profiles_mod.PROFILES.get(self.profiles_dir, self.gpu_cluster, log)

    def load_profiles(self) -> list[profiles_mod.Profile]:
        """Load and validate the profiles now, bypassing the cache (start-up checks).

        Raises:
            llmspawner.profiles.ProfileError: naming the file, field and allowed values.
        """
        return profiles_mod.load_profiles(self.profiles_dir, self.gpu_cluster)

    # -- the one serialisation -----------------------------------------------------------

    def to_dict(self) -> dict:
        """Every setting as a JSON-compatible dict ``{trait name: value}``."""
        return {name: getattr(self, name) for name in sorted(self.trait_names(config=True))}

    def to_env(self) -> dict[str, str]:
        """The environment that hands these settings to a process the hub starts.

        Returns:
            ``{"LLMSPAWNER_PLATFORM": "<JSON object>"}``; :meth:`from_env` reads it back.
        """
        return {ENV_VAR: json.dumps(self.to_dict(), sort_keys=True)}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LLMPlatform:
        """The settings in a process started by the hub (queue service, culler, CLI).

        Reads ``LLMSPAWNER_PLATFORM`` (see :meth:`to_env`); settings it does not hold (or all,
        when it is unset) come from the traits' own environment variables and defaults.

        Raises:
            SettingError: the JSON is broken, names an unknown setting, or a value is invalid.
        """
        env = os.environ if env is None else env
        raw = env.get(ENV_VAR, "")
        config = Config()
        if raw:
            try:
                data = json.loads(raw)
            except ValueError as e:
                raise SettingError(f"{ENV_VAR} is not valid JSON: {e}") from None
            if not isinstance(data, dict):
                raise SettingError(f"{ENV_VAR} must be a JSON object of settings")
            known = set(cls.class_trait_names(config=True))
            unknown = sorted(set(data) - known)
            if unknown:
                raise SettingError(
                    f"{ENV_VAR} names unknown setting(s) {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(known))}"
                )
            for name, value in data.items():
                config.LLMPlatform[name] = value
        return cls(config=config, env=env)


def _trait_message(e: TraitError) -> str:
    """A TraitError's text as ``LLMPlatform.<setting>: ...`` (traitlets says "The 'x' trait of
    a LLMPlatform instance ...")."""
    text = str(e)
    match = re.match(r"The '(\w+)' trait of an? LLMPlatform instance (.*)", text, re.DOTALL)
    if match:
        name, rest = match.groups()
        return f"LLMPlatform.{name} ({env_name(name)}) {rest}"
    if "LLMPlatform." in text:
        return text
    return f"LLMPlatform: {text}"
