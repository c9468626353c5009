"""LLMSpawner: KubeSpawner with GPU profiles, a per-user folder, MLflow and LlamaBoard.

Glue only: the rules live in :mod:`llmspawner.profiles` (profile → GPU resources),
:mod:`llmspawner.storage` (user → subPath mounts) and :mod:`llmspawner.tracking`
(user → MLflow experiment). This module turns them into kubespawner settings once per spawn.

Entry point: ``c.JupyterHub.spawner_class = "llm"``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from urllib.parse import urlsplit, urlunsplit

from kubespawner import KubeSpawner
from tornado import web
from traitlets import Bool, Float, Integer, List, TraitError, Unicode, default, validate

from . import capacity as capacity_mod
from . import profiles as profiles_mod
from . import storage, tracking

#: kubespawner traits that a profile may set for one spawn. Their configured values are
#: restored before each spawn: kubespawner's profile overrides *merge* dicts and keep earlier
#: values, so a CPU spawn after a GPU spawn on the same spawner object would otherwise keep
#: the GPU request (kubespawner ``_apply_overrides``).
PROFILE_TRAITS = (
    "extra_resource_limits",
    "extra_resource_guarantees",
    "node_selector",
    "tolerations",
    "cpu_guarantee",
    "cpu_limit",
    "mem_guarantee",
    "mem_limit",
    "image",
)
#: kubespawner traits set from the user's storage for one spawn, computed from their
#: configured values each time.
STORAGE_TRAITS = ("volumes", "volume_mounts", "working_dir", "init_containers")


def kubespawner_override(profile: profiles_mod.Profile, cluster: profiles_mod.ClusterGPUConfig):
    """Return the ``kubespawner_override`` of one profile (pure).

    Dict values are merged by kubespawner onto the configured ones (so the chart's own node
    selector stays); the tolerations are a callable that appends to the configured list.

    Args:
        profile: a validated profile.
        cluster: the cluster's GPU configuration.

    Returns:
        A new dict of KubeSpawner trait names to values or callables.
    """
    gpu = profiles_mod.gpu_resources(profile.gpu, cluster)
    extra_tolerations = [*gpu.tolerations, *profile.tolerations]
    override = {
        "extra_resource_limits": dict(gpu.limits),
        "extra_resource_guarantees": dict(gpu.limits),
        "node_selector": {**profile.node_selector, **gpu.node_selector},
        "tolerations": lambda spawner: [
            *spawner._sorted_dict_values(spawner.tolerations),
            *copy.deepcopy(extra_tolerations),
        ],
    }
    for name in ("cpu_guarantee", "cpu_limit", "mem_guarantee", "mem_limit"):
        value = getattr(profile, name)
        if value is not None:
            override[name] = value
    if profile.image:
        override["image"] = profile.image
    return override


def _duration(seconds: int) -> str:
    """``1800`` → ``30 minutes``, ``28800`` → ``8 hours``, ``90`` → ``90 seconds``."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def describe_profile(profile: profiles_mod.Profile, capacity: capacity_mod.Capacity | None) -> str:
    """The spawn form's text for a profile: its description, GPU share, free slices and idle
    timeout, as plain sentences (the form is readable without JavaScript).

    Args:
        profile: the profile.
        capacity: its slices now, or ``None`` (CPU profile, or capacity unknown).

    Returns:
        One line of text; kubespawner's form template escapes it.
    """
    parts = [profile.description.rstrip(".") + "." if profile.description else ""]
    gpu = profile.gpu
    if gpu.kind == "fraction":
        parts.append(
            f"GPU: {gpu.label} by time-slicing; a slice shares the GPU's memory with the other "
            "users of that GPU."
        )
    elif gpu.kind != "none":
        parts.append(f"GPU: {gpu.label}.")
    if capacity is not None:
        # What one server of this profile takes: a slice, a GPU, or a set of GPUs.
        if gpu.kind == "count":
            unit = "GPUs" if gpu.count == 1 else f"sets of {gpu.count} GPUs"
        else:
            unit = "slices"
        if capacity.full:
            parts.append(
                f"Full: all {capacity.total} {unit} are in use; choose it to wait for the next "
                "free one."
            )
        else:
            parts.append(f"Free now: {capacity.free} of {capacity.total} {unit}.")
    if profile.idle_timeout:
        parts.append(f"Stops after {_duration(profile.idle_timeout)} without activity.")
    return " ".join(p for p in parts if p)


def profile_list_entry(
    profile: profiles_mod.Profile,
    cluster: profiles_mod.ClusterGPUConfig,
    capacity: capacity_mod.Capacity | None = None,
):
    """Return one KubeSpawner ``profile_list`` entry for a profile (pure)."""
    return {
        "slug": profile.slug,
        "display_name": profile.display_name,
        "description": describe_profile(profile, capacity),
        "default": profile.default,
        "kubespawner_override": kubespawner_override(profile, cluster),
    }


def waiting_message(
    profile: profiles_mod.Profile, cluster: profiles_mod.ClusterGPUConfig, scheduler_message: str
) -> str:
    """Turn a ``FailedScheduling`` Event's text into one plain sentence for the user (pure).

    Args:
        profile: the profile being started.
        cluster: the cluster's GPU configuration.
        scheduler_message: the Event's message, e.g. ``0/4 nodes are available: 2
            Insufficient nvidia.com/gpu, ...``.

    Returns:
        A sentence naming the profile and the resource when the pod waits for a GPU slice,
        else a generic sentence (the scheduler's text stays in the hub's log).
    """
    gpu = profiles_mod.gpu_resources(profile.gpu, cluster)
    for resource in gpu.limits:
        if f"Insufficient {resource}" in scheduler_message:
            return (
                f"Waiting for a free {profile.gpu.label} slice ({resource}) for profile "
                f"{profile.display_name!r}: all of them are in use. Your server starts by "
                "itself as soon as one is free."
            )
    return (
        f"Waiting for a node for profile {profile.display_name!r}: no node can run it right "
        "now. Your server starts by itself as soon as one can."
    )


class LLMSpawner(KubeSpawner):
    """KubeSpawner for LLM fine-tuning: GPU profiles, the user's own folder, MLflow, LlamaBoard.

    Per spawn it applies the chosen profile (see :mod:`llmspawner.profiles`), mounts only the
    user's subPath of the shared PVC (see :mod:`llmspawner.storage`), sets the MLflow
    environment and makes sure the user's experiment exists (see :mod:`llmspawner.tracking`),
    and opens LlamaBoard.
    """

    profiles_dir = Unicode(
        "/usr/local/etc/llmspawner/profiles",
        config=True,
        help="""
        Folder of GPU profile files (``*.yaml``, one profile each), offered at spawn.

        Under zero-to-jupyterhub the folder is mounted from a ConfigMap. The files are
        validated when the hub starts (see ``llmspawner profiles check``) and re-read when
        they change.

            c.LLMSpawner.profiles_dir = "/etc/llmspawner/profiles"
        """,
    )

    gpu_shared_resource = Unicode(
        "nvidia.com/gpu",
        config=True,
        help="""
        Extended resource of time-sliced GPU replicas: ``nvidia.com/gpu``, or
        ``nvidia.com/gpu.shared`` when the NVIDIA device plugin's ``renameByDefault`` is on.

            c.LLMSpawner.gpu_shared_resource = "nvidia.com/gpu.shared"
        """,
    )

    gpu_replica_counts = List(
        Integer(),
        default_value=[2, 4],
        config=True,
        help="""
        Replica counts that time-sliced GPU nodes are labelled with
        (``nvidia.com/gpu.replicas``). A profile's ``gpu.fraction`` must be ``1/N`` for one
        of them.

            c.LLMSpawner.gpu_replica_counts = [2, 4]
        """,
    )

    mig_strategy = Unicode(
        "mixed",
        config=True,
        help="""
        The NVIDIA device plugin's MIG strategy, ``mixed`` or ``single``; decides which
        resource a ``gpu.mig`` profile requests.
        """,
    )

    storage_claim_name = Unicode(
        "llm-storage",
        config=True,
        help="""
        Name of the shared PersistentVolumeClaim (ReadWriteMany) holding ``users/<slug>``
        folders and the shared ``models/`` folder. Each user's pod mounts only its own folder.

            c.LLMSpawner.storage_claim_name = "llm-storage"
        """,
    )

    mlflow_tracking_uri = Unicode(
        "",
        config=True,
        help="""
        URL of the MLflow tracking server, set as ``MLFLOW_TRACKING_URI`` in the user's pod and
        used by the hub to create the user's experiment. Empty: no tracking.

            c.LLMSpawner.mlflow_tracking_uri = "http://mlflow.llm.svc:5000"
        """,
    )

    mlflow_experiment_template = Unicode(
        tracking.DEFAULT_EXPERIMENT_TEMPLATE,
        config=True,
        help="""
        Template of the user's MLflow experiment name (``MLFLOW_EXPERIMENT_NAME``); fields
        ``{username}`` and ``{slug}``.

            c.LLMSpawner.mlflow_experiment_template = "{username}-experiments"
        """,
    )

    mlflow_timeout = Float(
        5.0,
        config=True,
        help="""
        Seconds to wait for MLflow per request when making sure the user's experiment exists.
        If MLflow cannot be reached the server starts anyway and the progress page says that
        tracking is unavailable.
        """,
    )

    bind_pod_ip = Bool(
        False,
        config=True,
        help="""
        Make the user's server listen on the pod's IP (from the downward API, ``status.podIP``)
        instead of all interfaces. Needed on the emulated dev cluster, where pods share one
        network namespace and each has its own loopback address; harmless on a real cluster.
        """,
    )

    activity_report_interval = Integer(
        300,
        config=True,
        help="""
        Seconds between the user's server's activity reports to the hub
        (``JUPYTERHUB_ACTIVITY_INTERVAL`` of jupyterhub-singleuser). The idle culler judges by
        these reports; keep it well below the shortest profile ``idle_timeout``.
        """,
    )

    training_check_interval = Integer(
        30,
        config=True,
        help="""
        Seconds between checks, in the user's server, for a running ``llamafactory-cli train``
        (``LLMSPAWNER_TRAINING_CHECK_INTERVAL``). While one runs, the server counts as active
        and is not culled. See ``llmspawner.singleuser.activity``.
        """,
    )

    @default("default_url")
    def _default_url_default(self):
        # JupyterLab, whose launcher has the LlamaBoard tile (jupyter-server-proxy's
        # ``llamaboard`` entry): LlamaBoard opens in a JupyterLab tab, beside the user's files
        # and a terminal. LlamaBoard alone is at ``/user/<name>/llamaboard/``.
        return "/lab"

    @validate("mlflow_experiment_template")
    def _validate_template(self, proposal):
        try:
            return tracking.check_experiment_template(proposal["value"])
        except ValueError as e:
            raise TraitError(f"LLMSpawner.mlflow_experiment_template: {e}") from None

    @validate("mig_strategy")
    def _validate_mig_strategy(self, proposal):
        if proposal["value"] not in ("mixed", "single"):
            raise TraitError(
                f"LLMSpawner.mig_strategy must be one of mixed, single; not {proposal['value']!r}"
            )
        return proposal["value"]

    @property
    def gpu_cluster(self) -> profiles_mod.ClusterGPUConfig:
        """The cluster's GPU configuration built from this spawner's traits."""
        return profiles_mod.ClusterGPUConfig(
            shared_resource=self.gpu_shared_resource,
            replica_counts=tuple(self.gpu_replica_counts),
            mig_strategy=self.mig_strategy,
        )

    @property
    def profiles(self) -> list[profiles_mod.Profile]:
        """The validated profiles of ``profiles_dir`` (re-read when the files change)."""
        return profiles_mod.PROFILES.get(self.profiles_dir, self.gpu_cluster, self.log)

    capacity_ttl = Float(
        5.0,
        config=True,
        help="""
        Seconds the listing of Nodes and Pods behind the spawn form's free-slice counts is
        reused: at most one pair of Kubernetes API calls per this many seconds, whatever the
        number of page views. Needs ``list`` on Nodes (cluster-wide) and Pods (in the
        namespace); without them the form shows no counts.
        """,
    )

    @default("profile_list")
    def _profile_list_default(self):
        # A callable, so that each user is offered only the profiles their groups allow,
        # with the free slices of now.
        async def allowed_profiles(spawner):
            caps = {} if spawner._loading_options else await spawner.current_capacity()
            return [
                profile_list_entry(p, spawner.gpu_cluster, caps.get(p.slug))
                for p in spawner.allowed_profiles
            ]

        return allowed_profiles

    _capacity_cache: capacity_mod.CapacityCache | None = None
    _capacity_counts: tuple = (None, None, None, {})

    async def current_capacity(self) -> dict[str, capacity_mod.Capacity]:
        """Slices per GPU profile now (cached ``capacity_ttl`` seconds, shared by all users).

        Returns:
            ``{slug: Capacity}``; empty when Nodes or Pods cannot be listed (logged).
        """
        cls = LLMSpawner
        if cls._capacity_cache is None:
            api, namespace = self.api, self.namespace

            timeout = self.k8s_api_request_timeout

            # Plain JSON, not client models: faster for large lists, and no model validation
            # of fields the capacity count does not read.
            async def list_nodes():
                resp = await api.list_node(_request_timeout=timeout, _preload_content=False)
                return json.loads(await resp.read())["items"]

            async def list_pods():
                resp = await api.list_namespaced_pod(
                    namespace, _request_timeout=timeout, _preload_content=False
                )
                return json.loads(await resp.read())["items"]

            cls._capacity_cache = capacity_mod.CapacityCache(
                list_nodes, list_pods, ttl=self.capacity_ttl
            )
        try:
            snapshot = await cls._capacity_cache.snapshot()
        except Exception as e:  # an API error must not break the spawn form
            self.log.warning("Cannot list Nodes/Pods for free GPU slices: %s", e)
            return {}
        # Counted once per listing (and profile set), not once per page view.
        memo_snapshot, memo_profiles, memo_cluster, counts = cls._capacity_counts
        profiles, cluster = self.profiles, self.gpu_cluster
        if not (
            memo_snapshot is snapshot and memo_profiles is profiles and memo_cluster == cluster
        ):
            nodes, pods = snapshot
            counts = capacity_mod.capacities(profiles, cluster, nodes, pods)
            cls._capacity_counts = (snapshot, profiles, cluster, counts)
        return counts

    @property
    def user_groups(self) -> list[str]:
        """Names of the user's JupyterHub groups (managed from the login's groups claim)."""
        return sorted(g.name for g in (getattr(self.user, "groups", None) or []))

    @property
    def allowed_profiles(self) -> list[profiles_mod.Profile]:
        """The profiles this user may start (``allowed_groups`` empty, or a group in common)."""
        groups = self.user_groups
        return [p for p in self.profiles if p.allows(groups)]

    @default("apply_user_options")
    def _apply_user_options_default(self):
        return self.check_user_options

    def check_user_options(self, spawner, user_options: dict) -> None:
        """Refuse bad user options before anything is created (JupyterHub's
        ``Spawner.apply_user_options`` hook, JupyterHub >= 5.3, which runs before ``start``).

        The same check applies to the spawn form, the REST API (``{"profile": "medium"}``) and
        the admin panel (no options: the default profile).

        Raises:
            tornado.web.HTTPError: 400 for an unknown option or profile, listing the valid
                ones; 403 for a profile the user's groups do not allow.
        """
        unknown = sorted(set(user_options) - {"profile"})
        if unknown:
            raise web.HTTPError(
                400, f"Unknown option {', '.join(map(repr, unknown))}; the only option is 'profile'"
            )
        slug = user_options.get("profile")
        allowed = self.allowed_profiles
        valid = ", ".join(p.slug for p in allowed)
        if slug is not None and not isinstance(slug, str):
            raise web.HTTPError(400, f"Option 'profile' must be a string, one of: {valid}")
        try:
            profile = profiles_mod.find_profile(self.profiles, slug)
        except KeyError:
            raise web.HTTPError(400, f"Unknown profile {slug!r}; valid profiles: {valid}") from None
        if profile not in allowed:
            groups = ", ".join(profile.allowed_groups)
            raise web.HTTPError(
                403,
                f"Profile {profile.slug!r} is only for members of the group(s) {groups}; "
                f"your profiles: {valid}",
            )

    @property
    def current_profile(self) -> profiles_mod.Profile:
        """The profile of the current or last spawn (the default before any)."""
        return profiles_mod.find_profile(self.profiles, (self.user_options or {}).get("profile"))

    @property
    def experiment_name(self) -> str:
        """The user's MLflow experiment name, e.g. ``alice-experiments``."""
        return tracking.experiment_name(self.user.name, self.mlflow_experiment_template)

    # --- per spawn --------------------------------------------------------------------

    _configured: dict | None = None
    _loading_options = False
    _tracking_task: asyncio.Future | None = None

    def _restore_configured(self):
        """Reset every per-spawn trait to its configured value (snapshot on first use)."""
        if self._configured is None:
            self._configured = {
                name: copy.deepcopy(getattr(self, name))
                for name in (*PROFILE_TRAITS, *STORAGE_TRAITS)
            }
        for name in PROFILE_TRAITS:
            value = self._configured[name]
            if getattr(self, name) != value:
                setattr(self, name, copy.deepcopy(value))

    async def load_user_options(self):
        """Apply the chosen profile (default: the default profile) and the user's storage.

        With a ``uid`` configured (z2jh: ``singleuser.uid``), an init container gives the
        user's folder to that uid first (:func:`llmspawner.storage.build_owner_init_container`).

        Called by kubespawner at the start of every spawn. Settings of an earlier spawn on
        this spawner object never leak into this one.

        Raises:
            ValueError: for an unknown profile, listing the valid ones (kubespawner's check).
        """
        self._restore_configured()
        self._loading_options = True  # the profile list needs no free-slice counts now
        try:
            await super().load_user_options()
        finally:
            self._loading_options = False
        user_storage = storage.build_user_storage(
            username=self.user.name, claim_name=self.storage_claim_name
        )
        configured = self._configured
        self.volumes = [
            *copy.deepcopy(self._sorted_dict_values(configured["volumes"])),
            *user_storage.volumes,
        ]
        self.volume_mounts = [
            *copy.deepcopy(self._sorted_dict_values(configured["volume_mounts"])),
            *user_storage.volume_mounts,
        ]
        self.working_dir = user_storage.home
        init_containers = copy.deepcopy(self._sorted_dict_values(configured["init_containers"]))
        if self.uid is not None:
            init_containers.append(
                storage.build_owner_init_container(
                    username=self.user.name,
                    image=self.image,
                    uid=self.uid,
                    gid=self.fs_gid if self.fs_gid is not None else self.uid,
                )
            )
        self.init_containers = init_containers

    def get_env(self):
        """kubespawner's environment plus ``HOME`` (the user's folder) and ``MLFLOW_*``."""
        env = super().get_env()
        if self.bind_pod_ip and env.get("JUPYTERHUB_SERVICE_URL"):
            # $(POD_IP) is expanded by the kubelet; kubespawner orders env vars by reference.
            # https://kubernetes.io/docs/tasks/inject-data-application/define-interdependent-environment-variables/
            env["POD_IP"] = {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
            url = urlsplit(env["JUPYTERHUB_SERVICE_URL"])
            netloc = f"$(POD_IP):{url.port}" if url.port else "$(POD_IP)"
            env["JUPYTERHUB_SERVICE_URL"] = urlunsplit(url._replace(netloc=netloc))
        env["HOME"] = storage.user_home(self.user.name)
        env["JUPYTERHUB_ACTIVITY_INTERVAL"] = str(self.activity_report_interval)
        env["LLMSPAWNER_TRAINING_CHECK_INTERVAL"] = str(self.training_check_interval)
        env.update(
            tracking.tracking_env(
                tracking_uri=self.mlflow_tracking_uri, experiment=self.experiment_name
            )
        )
        return env

    async def _ensure_tracking(self) -> str:
        """Make sure the user's experiment exists; return a sentence for the progress page.

        Never raises: when MLflow cannot be reached the spawn goes on.
        """
        if not self.mlflow_tracking_uri:
            return "Experiment tracking is off (no MLflow server configured)."
        name = self.experiment_name
        try:
            experiment_id = await tracking.ensure_experiment(
                self.mlflow_tracking_uri, name, timeout=self.mlflow_timeout
            )
        except tracking.TrackingUnavailable as e:
            self.log.warning("MLflow experiment %s for %s not ensured: %s", name, self.user.name, e)
            return (
                f"Experiment tracking is unavailable: {e}. Your server starts anyway; runs are "
                f"reported to experiment {name!r} once MLflow is back."
            )
        self.log.info(
            "MLflow experiment %s (id %s) ready for %s", name, experiment_id, self.user.name
        )
        return f"MLflow experiment {name!r} is ready."

    def last_scheduling_reason(self) -> str:
        """The plain sentence for the current pod's latest ``FailedScheduling`` Event, or ``""``."""
        failed = [e for e in self.events if e.get("reason") == "FailedScheduling"]
        if not failed:
            return ""
        return waiting_message(
            self.current_profile, self.gpu_cluster, failed[-1].get("message") or ""
        )

    def start(self):
        """Make sure the user's MLflow experiment exists, then start the pod (kubespawner).

        When ``start_timeout`` ends the wait for a pod that could not be scheduled, the error
        names the last scheduling reason.
        """
        self._tracking_task = asyncio.ensure_future(self._ensure_tracking())
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def start_after_tracking():
            await self._tracking_task
            # End a second before JupyterHub's own timeout, so that this message is the one
            # the user sees rather than a bare "timeout".
            left = max(1.0, self.start_timeout - (loop.time() - started) - 1.0)
            try:
                return await asyncio.wait_for(self._start(), timeout=left)
            except (asyncio.TimeoutError, TimeoutError):
                reason = self.last_scheduling_reason()
                if not reason:
                    raise
                raise TimeoutError(
                    f"Your server did not start within {self.start_timeout} seconds. {reason}"
                ) from None

        self._start_future = asyncio.ensure_future(start_after_tracking())
        return self._start_future

    def _current_pod_uid(self) -> str | None:
        ref_key = f"{self.namespace}/{self.pod_name}"
        pod = self.pod_reflector.pods.get(ref_key) if self.pod_reflector else None
        return (pod or {}).get("metadata", {}).get("uid")

    @property
    def events(self):
        """Events of the current pod only: an earlier pod with the same name has another uid."""
        events = super().events
        uid = self._current_pod_uid()
        if uid is None:
            return events
        return [e for e in events if e["involvedObject"].get("uid") in (None, uid)]

    async def progress(self):
        """kubespawner's progress events, preceded by the state of experiment tracking, with
        the scheduler's ``FailedScheduling`` text replaced by one plain sentence (the raw
        text goes to the hub's log)."""
        if self._tracking_task is not None:
            message = await asyncio.shield(self._tracking_task)
            yield {"progress": 2, "message": message}
        async for event in super().progress():
            raw = event.get("raw_event") or {}
            if raw.get("reason") == "FailedScheduling":
                self.log.info(
                    "Pod %s/%s unschedulable: %s", self.namespace, self.pod_name, raw.get("message")
                )
                sentence = waiting_message(
                    self.current_profile, self.gpu_cluster, raw.get("message") or ""
                )
                event = {**event, "message": sentence}
            yield event
