"""Every platform setting once: :class:`LLMPlatform`, and how the hub hands it to its services.

The spawner, the batch queue service, the idle culler's hook, the ``llmspawner`` CLI and
``llmspawner deploy check`` all read the same :class:`LLMPlatform` (a traitlets
``Configurable``, config section ``c.LLMPlatform``). Each trait is defined here once, with
its help text, default, validation and the ``LLMSPAWNER_*`` environment variable it may come
from.

Where a value comes from, first match wins:

1. the hub's configuration, ``c.LLMPlatform.<trait>`` (z2jh: ``hub.config.LLMPlatform``);
2. the trait's environment variable (``LLMSPAWNER_PROFILES_DIR``, ...; see :func:`env_name`);
3. the ``defaults`` the constructor is given: the hub passes the spawner's own
   ``namespace``, ``image``, ``uid``, ``gid``, ``fs_gid`` and ``image_pull_secrets``
   (:data:`SPAWNER_TRAITS`, which
   z2jh sets as ``c.KubeSpawner.*``) and the repository's profiles folder;
4. the default below.

The hub resolves the settings once (:func:`llmspawner.hubconfig.configure`) and hands them
to the processes it starts (the queue service, the culler) through **one** serialisation:
:meth:`LLMPlatform.to_env` writes every trait as JSON into ``LLMSPAWNER_PLATFORM``, and
:meth:`LLMPlatform.from_env` reads it back, so no setting is renamed or re-defaulted on the
way. Parsing of booleans, comma-separated lists and whole numbers from the environment lives
here only (:func:`parse_bool`, :func:`parse_csv`, :func:`parse_int`).

A bad value raises :class:`SettingError`, whose message names the setting
(``LLMPlatform.mig_strategy``), the value and the allowed values.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from traitlets import Bool, Enum, Float, Integer, List, TraitError, Unicode, validate
from traitlets.config import Config, Configurable
from traitlets.config.loader import LazyConfigValue

from . import profiles as profiles_mod
from . import tracking

#: The environment variable that carries the whole serialised settings (JSON object).
ENV_VAR = "LLMSPAWNER_PLATFORM"

#: The repository's (a source checkout's) profiles folder: the hub's and the CLI's profiles
#: folder when neither ``c.LLMPlatform.profiles_dir`` nor ``LLMSPAWNER_PROFILES_DIR`` is set.
REPO_PROFILES = Path(__file__).resolve().parent.parent / "profiles"

_DEFAULT_GPU = profiles_mod.ClusterGPUConfig()

#: Settings that the spawner has as traits of its own (``KubeSpawner.namespace``, ``.image``,
#: ``.uid``, ``.gid``, ``.fs_gid``; z2jh sets them from ``singleuser.*``). The hub takes them
#: from there when ``c.LLMPlatform`` and the environment leave them unset, and writes the
#: resolved value back, so that the spawner and the platform agree
#: (:func:`llmspawner.hubconfig.resolve_settings`). Every other setting lives only here.
SPAWNER_TRAITS = ("namespace", "image", "uid", "gid", "fs_gid", "image_pull_secrets")

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


def env_switch(environ, name: str, *, default: bool, log, meaning: str) -> bool:
    """Read an on/off switch of a running server, where a typo must not stop it.

    Args:
        environ: the process's environment (a mapping).
        name: the variable, e.g. ``LLMSPAWNER_LLAMABOARD_ASSETS``.
        default: the value when unset, empty or invalid.
        log: a :class:`logging.Logger`; an invalid value is logged there as a warning naming
            the variable and the allowed values, followed by ``meaning``.
        meaning: what the default means, for that warning (``"LlamaBoard starts with the
            server"``).

    Returns:
        :func:`parse_bool`'s answer, or ``default`` for a value it refuses. Never raises.
    """
    try:
        return parse_bool(environ.get(name), name=name, default=default)
    except SettingError as e:
        log.warning("%s; %s", e, meaning)
        return default


def parse_csv(value: str | None) -> list[str]:
    """Split a comma-separated environment value: stripped, empty items and duplicates dropped,
    order kept. ``None`` or empty: ``[]``."""
    return list(dict.fromkeys(v.strip() for v in (value or "").split(",") if v.strip()))


def parse_int(
    value: str | None, *, name: str, default: int, minimum: int = 0, unit: str = ""
) -> int:
    """Parse a whole number from the environment (``None`` or empty: ``default``).

    Args:
        value: the raw value.
        name: the variable's name, for the error message.
        default: the value when unset.
        minimum: the smallest value allowed.
        unit: what the number counts, for the message (``"seconds"``).

    Raises:
        SettingError: naming the variable, for a non-integer or a value below ``minimum``.
    """
    if value is None or value.strip() == "":
        return default
    what = f"a whole number of {unit}" if unit else "a whole number"
    try:
        number = int(value.strip())
    except ValueError:
        raise SettingError(f"{name} must be {what} >= {minimum}, not {value!r}") from None
    if number < minimum:
        raise SettingError(f"{name} must be {what} >= {minimum}, not {value!r}")
    return number


def is_set(section: Mapping, name: str) -> bool:
    """Whether a traitlets config section really sets ``name``.

    Reading ``c.X.name`` of a config leaves an empty ``LazyConfigValue`` behind, which
    traitlets ignores; so is it here.
    """
    if name not in section:
        return False
    value = section[name]
    return not (isinstance(value, LazyConfigValue) and not value.to_dict())


def unknown_settings(names) -> list[str]:
    """The names in ``names`` that are not settings of :class:`LLMPlatform` (sorted)."""
    return sorted(set(names) - set(LLMPlatform.class_trait_names(config=True)))


def unknown_message(where: str, unknown: list[str]) -> str:
    """``"<where> names unknown setting(s) x (did you mean y?); known: ..."``."""
    known = sorted(LLMPlatform.class_trait_names(config=True))
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        named.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return f"{where} names unknown setting(s) {', '.join(named)}; known: {', '.join(known)}"


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
    ).tag(env="LLMSPAWNER_SINGLEUSER_IMAGE")

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

    image_pull_secrets = List(
        Unicode(),
        config=True,
        help="""
        Names of the Secrets (``kubernetes.io/dockerconfigjson``, in the namespace) with which
        the images of servers and Jobs are pulled: the pods' ``imagePullSecrets``. Empty in
        the config: the spawner's own (``KubeSpawner.image_pull_secrets``, which z2jh sets from
        ``imagePullSecret``, ``imagePullSecrets`` and ``singleuser.image.pullSecrets``),
        resolved by the hub, so that a user's Job pulls its image as their server does.
        Environment: ``LLMSPAWNER_IMAGE_PULL_SECRETS`` (comma-separated names).
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
    ).tag(env="LLMSPAWNER_STORAGE_CLAIM")

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
    ).tag(env="LLMSPAWNER_QUEUE_CLIENT_URL")

    hf_offline = Bool(
        False,
        config=True,
        help="""
        Keep the users' servers and the queue's Jobs off the Hugging Face Hub: they get
        ``HF_HUB_OFFLINE=1`` (and ``TRANSFORMERS_OFFLINE``/``HF_DATASETS_OFFLINE``), so
        LlamaBoard and ``llamafactory-cli`` load models and datasets only from local folders
        (the shared ``models/`` folder, the user's ``data/``) and fail at once, saying so,
        instead of waiting for a network that an offline cluster does not have
        (https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables#hfhuboffline).
        The dev stack sets it. Environment: ``LLMSPAWNER_HF_OFFLINE`` (``1``/``0``).
        """,
    )

    llamaboard_eager_start = Bool(
        True,
        config=True,
        help="""
        Start LlamaBoard in the background as soon as a user's server starts, so that it is
        up (or nearly) when the user opens its tile, instead of starting it at that first
        click (6-20 s of importing torch, transformers and Gradio). It runs whether or not
        the user opens it, and it is not activity: an unused LlamaBoard does not keep a
        server from being culled. The server gets ``LLMSPAWNER_LLAMABOARD_EAGER_START``
        (``1``/``0``), read by ``llmspawner.singleuser.eager``. Turn it off where memory per
        server is tight (LlamaBoard takes about 1 GB). Environment:
        ``LLMSPAWNER_LLAMABOARD_EAGER_START`` (``1``/``0``).
        """,
    )

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        defaults: Mapping[str, object] | None = None,
        **kwargs,
    ):
        """Args:
            env: where unset traits take their values from (default ``os.environ``).
            defaults: values for settings that neither the config nor ``env`` sets, above the
                traits' own defaults (the hub passes the spawner's namespace, image, uid...;
                the CLI the repository's profiles folder). ``None`` values are skipped.
            **kwargs: ``config=`` or ``parent=`` as for any ``Configurable``.

        Raises:
            SettingError: a value (from the config, the environment or ``defaults``) is
                invalid, or the config's ``LLMPlatform`` section names an unknown setting.
        """
        self._env = os.environ if env is None else env
        config = kwargs.get("config")
        if config is None and kwargs.get("parent") is not None:
            config = getattr(kwargs["parent"], "config", None)
        section = config.get(type(self).__name__) if config is not None else None
        if isinstance(section, Mapping):
            unknown = unknown_settings(n for n in section if is_set(section, n))
            if unknown:
                raise SettingError(unknown_message("c.LLMPlatform", unknown))
        try:
            super().__init__(**kwargs)
            set_from_env = self._apply_env()
            for name, value in (defaults or {}).items():
                if value is None or name in set_from_env or name in self._configured():
                    continue
                setattr(self, name, value)
        except TraitError as e:
            raise SettingError(_trait_message(e)) from None

    # -- values from the environment ----------------------------------------------------

    def _configured(self) -> set[str]:
        """The settings the config's ``LLMPlatform`` section sets."""
        section = self.config.get(type(self).__name__)
        if not isinstance(section, Config):
            return set()
        return {name for name in section if is_set(section, name)}

    def _apply_env(self) -> set[str]:
        """Set each trait the config left unset from its environment variable (validated).

        Returns:
            The names of the settings taken from the environment.
        """
        configured = self._configured()
        taken = set()
        for name in sorted(self.trait_names(config=True)):
            raw = self._env.get(env_name(name))
            if raw is None or raw == "" or name in configured:
                continue
            setattr(self, name, self._parse_env(name, raw))
            taken.add(name)
        return taken

    def _parse_env(self, name: str, raw: str):
        """A trait's value from its environment variable's text (lists: comma-separated)."""
        trait = self.traits()[name]
        shown = f"LLMPlatform.{name} ({env_name(name)})"
        if isinstance(trait, Bool):
            return parse_bool(raw, name=shown)
        if isinstance(trait, List) and isinstance(trait._trait, Unicode):
            return parse_csv(raw)
        if isinstance(trait, List):
            return [parse_int(v, name=shown, default=0) for v in parse_csv(raw)]
        if isinstance(trait, Integer):
            return parse_int(raw, name=shown, default=0)
        if isinstance(trait, Float):
            try:
                return float(raw)
            except ValueError:
                raise SettingError(f"{shown} must be a number, not {raw!r}") from None
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

    @validate("uid", "gid", "fs_gid")
    def _check_ids(self, proposal):
        value = proposal["value"]
        if value is not None and (isinstance(value, bool) or value < 0):
            name = proposal["trait"].name
            raise TraitError(
                f"LLMPlatform.{name} ({env_name(name)}) must be a whole number >= 0 or None, "
                f"not {value!r}"
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
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        overrides: Mapping[str, object] | None = None,
        defaults: Mapping[str, object] | None = None,
    ) -> LLMPlatform:
        """The settings in a process started by the hub (queue service, culler, CLI).

        Reads ``LLMSPAWNER_PLATFORM`` (see :meth:`to_env`); settings it does not hold (or all,
        when it is unset) come from the traits' own environment variables and defaults.

        Args:
            env: the environment (default ``os.environ``).
            overrides: ``{setting: value}`` that win over everything (a command's options);
                ``None`` values are skipped.
            defaults: ``{setting: value}`` for settings neither the JSON nor the traits'
                variables set (see :class:`LLMPlatform`).

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
            unknown = unknown_settings(data)
            if unknown:
                raise SettingError(unknown_message(ENV_VAR, unknown))
            for name, value in data.items():
                config.LLMPlatform[name] = value
        for name, value in (overrides or {}).items():
            if value is not None:
                config.LLMPlatform[name] = value
        return cls(config=config, env=env, defaults=defaults)


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


#: Settings that moved from ``LLMSpawner`` to ``LLMPlatform`` (issue 11): every setting that is
#: not also a spawner trait (:data:`SPAWNER_TRAITS`). Set on the spawner they would be ignored,
#: so the hub (:func:`resolve_hub_settings`) and ``deploy check`` refuse them.
MOVED_SETTINGS = tuple(
    sorted(set(LLMPlatform.class_trait_names(config=True)) - set(SPAWNER_TRAITS))
)


def moved_message(section: str, names) -> str:
    """``"LLMSpawner.x is now LLMPlatform.x ...; LLMSpawner no longer reads it"``."""
    moved = "; ".join(f"{section}.{n} is now LLMPlatform.{n}" for n in names)
    return f"{moved} (z2jh: hub.config.LLMPlatform); {section} no longer reads it"


def _kubespawner_default(name: str):
    """KubeSpawner's own default of ``namespace`` or ``image`` when nothing sets it.

    Its rules (``kubespawner.spawner.KubeSpawner``): the namespace of the service account
    (``/var/run/secrets/kubernetes.io/serviceaccount/namespace``), else ``default``; the
    ``image`` trait's default.
    """
    if name == "namespace":
        ns_path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        return ns_path.read_text().strip() if ns_path.exists() else "default"
    from kubespawner import KubeSpawner

    return KubeSpawner.class_traits()["image"].default()


def pull_secret_names(value) -> list[str]:
    """``KubeSpawner.image_pull_secrets`` (a list of names or ``{"name": ...}`` objects, or
    one name, deprecated) as a list of Secret names, in order, each once.

    Raises:
        SettingError: an entry is neither a non-empty name nor an object with one.
    """
    items = [value] if isinstance(value, str) else list(value or [])
    names: list[str] = []
    for item in items:
        name = item.get("name") if isinstance(item, Mapping) else item
        if not isinstance(name, str) or not name:
            raise SettingError(
                f"KubeSpawner.image_pull_secrets: {item!r} is not a Secret name or "
                '{"name": <Secret name>}'
            )
        if name not in names:
            names.append(name)
    return names


def resolve_hub_settings(c: Config, env: Mapping[str, str] | None = None) -> LLMPlatform:
    """Resolve the platform settings of the hub's config ``c``; write them into ``c.LLMPlatform``.

    Each setting, first match wins:

    1. ``c.LLMPlatform.<setting>`` (z2jh: ``hub.config.LLMPlatform``);
    2. its environment variable in ``env`` (:func:`env_name`, e.g. ``LLMSPAWNER_NAMESPACE``);
    3. for :data:`SPAWNER_TRAITS` (namespace, image, uid, gid, fs_gid, image_pull_secrets,
       whose ``{"name": ...}`` entries become names: :func:`pull_secret_names`): ``c.LLMSpawner``'s
       value, then ``c.KubeSpawner``'s (z2jh sets ``c.KubeSpawner.namespace``, ``.image``,
       ``.uid``, ``.fs_gid``); ``profiles_dir``: :data:`REPO_PROFILES`;
    4. namespace and image: KubeSpawner's own defaults; the others: the trait's default.

    Afterwards ``c.LLMPlatform`` holds every setting, so ``LLMPlatform(parent=spawner)`` in
    the hub sees exactly these whatever the environment, and ``c.LLMSpawner`` and
    ``c.KubeSpawner`` hold the resolved namespace and image (and uid, gid, fs_gid when not
    ``None``), so the spawner's own traits agree. Idempotent.

    Args:
        c: the hub's traitlets config (changed in place).
        env: the hub's environment (default ``os.environ``).

    Returns:
        The resolved settings.

    Raises:
        SettingError: a setting is invalid or unknown (the message names it), a setting of
            :data:`MOVED_SETTINGS` is set on ``LLMSpawner``, or the spawner's
            uid/gid/fs_gid is a callable (it cannot be handed to the queue's Jobs).
    """
    env = os.environ if env is None else env
    moved = [name for name in MOVED_SETTINGS if is_set(c.LLMSpawner, name)]
    if moved:
        raise SettingError(moved_message("LLMSpawner", moved))
    defaults: dict = {"profiles_dir": str(REPO_PROFILES)}
    for name in SPAWNER_TRAITS:
        for section_name in ("LLMSpawner", "KubeSpawner"):
            if is_set(c[section_name], name):
                value = c[section_name][name]
                if callable(value):
                    raise SettingError(
                        f"{section_name}.{name} is a callable; set LLMPlatform.{name} to a "
                        "number, so that the queue's Jobs run as the servers do"
                    )
                if name == "image_pull_secrets":
                    value = pull_secret_names(value)
                defaults[name] = value
                break
        else:
            if name in ("namespace", "image"):
                defaults[name] = _kubespawner_default(name)
    settings = LLMPlatform(config=c, env=env, defaults=defaults)
    for name, value in settings.to_dict().items():
        c.LLMPlatform[name] = value
    for name in SPAWNER_TRAITS:
        value = getattr(settings, name)
        if value not in (None, "", []):
            c.LLMSpawner[name] = value
            c.KubeSpawner[name] = value
    return settings
