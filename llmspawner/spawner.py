"""LLMSpawner: KubeSpawner with GPU profiles, a per-user folder, MLflow and LlamaBoard.

Glue only: the platform's settings are :class:`llmspawner.settings.LLMPlatform` (config section
``c.LLMPlatform``), and what a user's pod gets for a profile (resources, node selector,
tolerations, storage, owner init container, env, security context, labels) is the
:class:`llmspawner.workload.Workload` of :func:`llmspawner.workload.build_workload`, the same
one the queue's Jobs are built from. This module maps it onto kubespawner's traits once per
spawn (:func:`kubespawner_traits`, :meth:`LLMSpawner.apply_workload`).

Entry point: ``c.JupyterHub.spawner_class = "llm"``.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Mapping
from typing import Any

from jupyterhub.utils import maybe_future
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from tornado import web
from traitlets import Float, Integer, default

from . import apierrors, tracking
from . import capacity as capacity_mod
from . import profiles as profiles_mod
from .settings import LLMPlatform
from .workload import (
    CPU,
    MEMORY,
    Workload,
    build_workload,
    parse_quantity,
    placement,
    required_node_terms,
)

#: kubespawner traits set from the user's workload for each spawn. Their configured values
#: are snapshot once and each spawn's values computed from that snapshot, so nothing of an
#: earlier profile leaks into a later spawn on the same spawner object (kubespawner's
#: ``_apply_overrides`` *merges* dicts in place and keeps earlier values).
WORKLOAD_TRAITS = (
    "extra_resource_limits",
    "extra_resource_guarantees",
    "node_selector",
    "node_affinity_required",
    "tolerations",
    "cpu_guarantee",
    "cpu_limit",
    "mem_guarantee",
    "mem_limit",
    "image",
    "volumes",
    "volume_mounts",
    "working_dir",
    "init_containers",
    "extra_labels",
    "extra_annotations",
    "uid",
    "gid",
    "fs_gid",
    "allow_privilege_escalation",
    "container_security_context",
    "pod_security_context",
    "image_pull_secrets",
)

#: Of :data:`WORKLOAD_TRAITS`, those kubespawner also takes as a callable (resolved per spawn,
#: ``spawner -> value``, before the workload goes on top).
CALLABLE_TRAITS = ("uid", "gid", "fs_gid", "container_security_context", "pod_security_context")

#: Annotation on a server's pod: the id of the start that created it (a new id per
#: :meth:`LLMSpawner.start`). A create retried after a lost reply meets its own pod (409
#: ``AlreadyExists``) and adopts it; a pod of an earlier start is replaced as kubespawner does.
SPAWN_ID_ANNOTATION = "llmspawner.io/spawn-id"

#: Settings that moved from ``c.LLMSpawner`` to ``c.LLMPlatform`` (issue 11).
MOVED_SETTINGS = (
    "profiles_dir",
    "gpu_shared_resource",
    "gpu_replica_counts",
    "mig_strategy",
    "storage_claim_name",
    "mlflow_tracking_uri",
    "mlflow_experiment_template",
    "mlflow_timeout",
)


def _copy(value):
    """A copy of JSON-like data (dicts, lists, tuples as lists; anything else shared): what
    ``copy.deepcopy`` does for manifests, several times faster (it runs on every spawn)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def _listed(value) -> list:
    """kubespawner's list-or-dict traits (``volumes``, ``tolerations``, ...) as a new list:
    a dict's values sorted by key, as kubespawner's ``_sorted_dict_values``."""
    if isinstance(value, dict):
        return [_copy(value[k]) for k in sorted(value)]
    return _copy(list(value or []))


def _literal(value: str) -> str:
    """A string kubespawner must not expand as a template (it ``str.format``s label and
    annotation values): braces doubled."""
    return value.replace("{", "{{").replace("}", "}}")


def kubespawner_traits(workload: Workload, configured: Mapping[str, Any]) -> dict[str, Any]:
    """The kubespawner trait values of one spawn: ``workload`` on top of ``configured`` (pure).

    The one mapping of a :class:`~llmspawner.workload.Workload` onto KubeSpawner:

    - resources: ``cpu`` → ``cpu_guarantee``/``cpu_limit`` (cores, float), ``memory`` →
      ``mem_guarantee``/``mem_limit`` (bytes, int), GPU extended resources →
      ``extra_resource_guarantees``/``extra_resource_limits`` (whole counts, int), merged onto
      the configured dicts; a quantity the workload does not set keeps its configured value;
    - ``node_selector``, ``extra_labels``, ``extra_annotations``: the configured dict with the
      workload's keys on top (the chart's own node selector stays);
    - ``node_affinity_required``: the configured terms with the workload's ``node_affinity``
      added to each (:func:`~llmspawner.workload.required_node_terms`);
    - ``tolerations``, ``volumes``, ``volume_mounts``, ``init_containers``: the configured
      ones first, the workload's appended;
    - ``image_pull_secrets``: the configured ones (names or ``{"name": ...}``) with the
      workload's appended, as ``{"name": ...}``, each name once (a Job gets the workload's);
    - ``image``, ``working_dir``: the workload's;
    - ``uid``/``gid``/``fs_gid``: the workload's ``runAsUser``/``runAsGroup``/``fsGroup``
      (``None`` when unset);
    - ``container_security_context``/``pod_security_context``: the configured dict with the
      workload's keys on top, and ``allow_privilege_escalation`` the workload's (``False``):
      a server is hardened by the same rule as a Job
      (:func:`llmspawner.workload.container_security_context`), whatever z2jh's
      ``singleuser.allowPrivilegeEscalation`` says. Callable configured values must be
      resolved first (:data:`CALLABLE_TRAITS`).

    Args:
        workload: the user's workload for the chosen profile.
        configured: the configured value of every name in :data:`WORKLOAD_TRAITS`.

    Returns:
        A new dict ``{trait name: value}`` for every name in :data:`WORKLOAD_TRAITS`
        (``configured`` and ``workload`` are not modified).
    """
    requests = workload.resources.get("requests", {})
    limits = workload.resources.get("limits", {})
    out: dict[str, Any] = {}
    for trait, source, key, convert in (
        ("cpu_guarantee", requests, CPU, lambda q: float(parse_quantity(q))),
        ("cpu_limit", limits, CPU, lambda q: float(parse_quantity(q))),
        ("mem_guarantee", requests, MEMORY, lambda q: int(parse_quantity(q))),
        ("mem_limit", limits, MEMORY, lambda q: int(parse_quantity(q))),
    ):
        out[trait] = convert(source[key]) if key in source else configured[trait]
    for trait, source in (
        ("extra_resource_guarantees", requests),
        ("extra_resource_limits", limits),
    ):
        extra = {k: int(parse_quantity(v)) for k, v in source.items() if k not in (CPU, MEMORY)}
        out[trait] = {**_copy(dict(configured[trait] or {})), **extra}
    out["node_selector"] = {
        **_copy(dict(configured["node_selector"] or {})),
        **_copy(workload.node_selector),
    }
    out["node_affinity_required"] = required_node_terms(
        configured["node_affinity_required"], workload.node_affinity
    )
    for trait, extra in (
        ("extra_labels", workload.labels),
        ("extra_annotations", workload.annotations),
    ):
        out[trait] = {
            **_copy(dict(configured[trait] or {})),
            **{k: _literal(v) for k, v in extra.items()},
        }
    for trait, extra in (
        ("tolerations", workload.tolerations),
        ("volumes", workload.volumes),
        ("volume_mounts", workload.volume_mounts),
        ("init_containers", workload.init_containers),
    ):
        out[trait] = [*_listed(configured[trait]), *_copy(extra)]
    pull: list[dict] = []
    for ref in [*(configured["image_pull_secrets"] or []), *workload.image_pull_secrets]:
        ref = {"name": ref} if isinstance(ref, str) else _copy(ref)
        if ref.get("name") not in {p.get("name") for p in pull}:
            pull.append(ref)
    out["image_pull_secrets"] = pull
    out["image"] = workload.image
    out["working_dir"] = workload.working_dir
    out["uid"] = workload.container_security_context.get("runAsUser")
    out["gid"] = workload.container_security_context.get("runAsGroup")
    out["fs_gid"] = workload.pod_security_context.get("fsGroup")
    for trait, extra in (
        ("container_security_context", workload.container_security_context),
        ("pod_security_context", workload.pod_security_context),
    ):
        value = configured[trait]
        if callable(value):
            raise TypeError(f"{trait}: resolve the callable before mapping the workload")
        out[trait] = {**_copy(dict(value or {})), **_copy(extra)}
    out["allow_privilege_escalation"] = workload.container_security_context.get(
        "allowPrivilegeEscalation", configured["allow_privilege_escalation"]
    )
    return out


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
    profile: profiles_mod.Profile, capacity: capacity_mod.Capacity | None = None
):
    """Return one KubeSpawner ``profile_list`` entry for a profile (pure).

    The entry has no ``kubespawner_override``: the chosen profile's settings are applied
    from its workload (:meth:`LLMSpawner.apply_workload`), not by kubespawner.
    """
    return {
        "slug": profile.slug,
        "display_name": profile.display_name,
        "description": describe_profile(profile, capacity),
        "default": profile.default,
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
    for resource in placement(profile, cluster).gpu:
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

    Per spawn it builds the user's workload for the chosen profile
    (:func:`llmspawner.workload.build_workload`: GPU share, CPU/memory, the user's subPath of
    the shared PVC, owner init container, ``HOME`` and MLflow env, security context, labels),
    maps it onto kubespawner's traits (:meth:`apply_workload`), makes sure the user's MLflow
    experiment exists (:mod:`llmspawner.tracking`), and opens JupyterLab with LlamaBoard.

    Platform settings (profiles folder, claim, MLflow, GPU advertisement) are
    :attr:`platform`, an :class:`~llmspawner.settings.LLMPlatform` read from
    ``c.LLMPlatform``; the traits here are the spawner's own.
    """

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

    stop_retry_timeout = Integer(
        300,
        config=True,
        help="""
        Seconds a stop keeps trying to delete the server's pod while the Kubernetes API fails
        (5xx, 429, connection errors, timeouts), with exponential backoff (each attempt is
        kubespawner's delete within ``k8s_api_request_retry_timeout``). Meanwhile the hub
        shows the server as stopping, which is the truth: its pod (and its GPU slice) still
        exists. When this runs out the error is logged and raised; JupyterHub then forgets
        the server whatever happens (``User.stop`` clears it in a ``finally``) and the orphan
        reconciler (``llmspawner.reconciler``) deletes the pod after its grace period.
        ``0``: one attempt, as kubespawner.

        c.LLMSpawner.stop_retry_timeout = 600
        """,
    )

    @default("default_url")
    def _default_url_default(self):
        # JupyterLab, whose launcher has the LlamaBoard tile (jupyter-server-proxy's
        # ``llamaboard`` entry): LlamaBoard opens in a JupyterLab tab, beside the user's files
        # and a terminal. LlamaBoard alone is at ``/user/<name>/llamaboard/``.
        return "/lab"

    _platform: LLMPlatform | None = None

    def __init__(self, *args, **kwargs):
        """As KubeSpawner's; the platform settings are read (and checked) here.

        Raises:
            llmspawner.settings.SettingError: a ``c.LLMPlatform`` setting (or its environment
                variable) has a bad value; the message names it.
        """
        super().__init__(*args, **kwargs)
        self.platform  # noqa: B018 - read now: a bad setting fails here, not at spawn
        # The options the hub has stored for this server (it passes them at construction):
        # the last accepted ones, restored when a start's options are refused.
        self._accepted_options = _copy(dict(self.user_options or {}))

    @property
    def platform(self) -> LLMPlatform:
        """The platform's settings (``c.LLMPlatform``), made once per spawner.

        Settings it leaves empty are resolved from this spawner as the hub resolves them for
        its services: ``image`` from the configured ``image`` (z2jh's ``singleuser.image``),
        ``namespace`` from ``namespace``.

        Raises:
            llmspawner.settings.SettingError: a setting has a bad value (names it).
        """
        if self._platform is None:
            platform = LLMPlatform(parent=self)
            if not platform.image:
                # The configured image, not a profile's of an earlier spawn.
                configured = self._configured
                platform.image = configured["image"] if configured is not None else self.image
            if not platform.namespace:
                platform.namespace = self.namespace
            section = self.config.get("LLMSpawner") or {}
            moved = [name for name in MOVED_SETTINGS if name in section]
            if moved:
                self.log.warning(
                    "LLMSpawner.%s moved to the LLMPlatform section (c.LLMPlatform.%s); "
                    "the LLMSpawner value is ignored",
                    ", LLMSpawner.".join(moved),
                    ", c.LLMPlatform.".join(moved),
                )
            self._platform = platform
        return self._platform

    @property
    def gpu_cluster(self) -> profiles_mod.ClusterGPUConfig:
        """How the cluster advertises GPUs (``LLMPlatform.gpu_cluster``)."""
        return self.platform.gpu_cluster

    @property
    def profiles(self) -> list[profiles_mod.Profile]:
        """The validated profiles of ``LLMPlatform.profiles_dir`` (the process-wide cache:
        re-read when the files change, the last valid set kept on a broken edit)."""
        return self.platform.profiles(self.log)

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
            return [profile_list_entry(p, caps.get(p.slug)) for p in spawner.allowed_profiles]

        return allowed_profiles

    #: The Node/Pod lister shared by every spawner of the hub (one listing per
    #: ``capacity_ttl`` seconds, whatever the number of users and page views).
    _cluster_lister: capacity_mod.ClusterLister | None = None
    _capacity_counts: tuple = (None, None, None, {})

    def cluster_lister(self) -> capacity_mod.ClusterLister:
        """The hub's one :class:`~llmspawner.capacity.ClusterLister` (made on first use, with
        kubespawner's shared ``CoreV1Api`` client, this spawner's namespace, ``capacity_ttl``
        and ``k8s_api_request_timeout``)."""
        cls = LLMSpawner
        if cls._cluster_lister is None:

            async def core_v1():
                return shared_client("CoreV1Api")

            cls._cluster_lister = capacity_mod.ClusterLister(
                core_v1,
                self.namespace,
                ttl=self.capacity_ttl,
                request_timeout=self.k8s_api_request_timeout,
            )
        return cls._cluster_lister

    async def current_capacity(self) -> dict[str, capacity_mod.Capacity]:
        """Slices per GPU profile now (listed at most every ``capacity_ttl`` seconds, shared
        by all users).

        Returns:
            ``{slug: Capacity}``; empty when Nodes or Pods cannot be listed (logged).
        """
        cls = LLMSpawner
        try:
            snapshot = await self.cluster_lister().snapshot()
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
        the admin panel. A start with no options (the admin panel's Start button, ``POST
        /hub/api/users/<name>/server`` without a body or with ``"user_options": null``) gets
        the options the hub stored at the last start: JupyterHub's own rule
        (``jupyterhub/user.py``, ``User.spawn``: "options unspecified, load from db"). They are
        always the last *accepted* ones, so such a start runs the last profile this server
        was started with, and the default profile before any. Empty options ask for the default
        profile: ``{"user_options": {}}`` on JupyterHub 6 (which reads a body ``{}`` as no
        options), ``{}`` on JupyterHub 5.

        A refused request leaves no trace: JupyterHub stores a start's options before this
        hook runs (``User.spawn``), so on a refusal the stored options (and
        :attr:`user_options`) are put back to the last accepted ones and committed.

        Raises:
            tornado.web.HTTPError: 400 for an unknown option or profile, listing the valid
                ones; 403 for a profile the user's groups do not allow.
        """
        try:
            self._check_user_options(user_options)
        except web.HTTPError:
            self._restore_user_options()
            raise
        self._accepted_options = _copy(dict(user_options))

    def _restore_user_options(self) -> None:
        """Put the last accepted options back, in this spawner and in the hub's database."""
        accepted = _copy(self._accepted_options)
        self.user_options = accepted
        orm_spawner = self.orm_spawner
        if orm_spawner is not None and getattr(orm_spawner, "user_options", None) != accepted:
            orm_spawner.user_options = _copy(accepted)
            if self.db is not None:
                self.db.commit()
            self.log.info(
                "Refused options for %s not kept; stored options back to %s",
                self._log_name,
                accepted,
            )

    def _check_user_options(self, user_options: dict) -> None:
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
        return self.platform.experiment_name(self.user.name)

    # --- per spawn --------------------------------------------------------------------

    _configured: dict | None = None
    _workload: Workload | None = None
    _workload_memo: tuple = (None, None)
    _traits_memo: tuple = (None, None, None)
    _loading_options = False
    _tracking_task: asyncio.Future | None = None

    def _configured_values(self) -> dict[str, Any]:
        """The configured value of every :data:`WORKLOAD_TRAITS` name.

        Snapshot on first use, which is the first spawn's :meth:`load_user_options` (after
        JupyterHub's ``pre_spawn_hook``, whose changes of these traits are kept), before this
        spawner changed any of them."""
        if self._configured is None:
            self._configured = {
                name: copy.deepcopy(getattr(self, name)) for name in WORKLOAD_TRAITS
            }
        return self._configured

    async def _resolved(self, name: str):
        """A trait that kubespawner allows to be a callable (:data:`CALLABLE_TRAITS`),
        resolved for this spawn."""
        value = self._configured_values()[name]
        if callable(value):
            value = await maybe_future(value(self))
        return value

    async def _resolved_configured(self) -> dict[str, Any]:
        """The configured values with every callable of :data:`CALLABLE_TRAITS` resolved."""
        configured = dict(self._configured_values())
        for name in CALLABLE_TRAITS:
            if callable(configured[name]):
                configured[name] = await self._resolved(name)
        return configured

    async def build_workload(self, profile: profiles_mod.Profile) -> Workload:
        """This user's :class:`~llmspawner.workload.Workload` for ``profile``, with this
        spawner's ``uid``/``gid``/``fs_gid`` (z2jh: ``singleuser.uid``/``fsGid``) where set,
        else ``LLMPlatform``'s.

        Raises:
            ValueError: see :func:`llmspawner.workload.build_workload`.
        """
        ids = (
            await self._resolved("uid"),
            await self._resolved("gid"),
            await self._resolved("fs_gid"),
        )
        key = (profile, *ids)
        memo_key, memo = self._workload_memo
        if memo is not None and memo_key == key:  # pure: the same inputs, the same workload
            return memo
        uid, gid, fs_gid = ids
        workload = build_workload(
            username=self.user.name,
            profile=profile,
            settings=self.platform,
            uid=uid,
            gid=gid,
            fs_gid=fs_gid,
        )
        self._workload_memo = (key, workload)
        return workload

    def apply_workload(
        self, workload: Workload, configured: Mapping[str, Any] | None = None
    ) -> None:
        """Set this spawner's kubespawner traits from ``workload`` on top of their configured
        values (:func:`kubespawner_traits`); remembered as :attr:`workload` for ``get_env``.

        Args:
            workload: the workload of this spawn.
            configured: the configured values with callables resolved
                (:meth:`_resolved_configured`); ``None``: the snapshot, which then must hold
                no callable security context.
        """
        if configured is None:
            configured = self._configured_values()
        # Pure: the same workload over the same configured values maps to the same traits,
        # so a restart of this server with the same profile reuses the last mapping.
        memo_workload, memo_configured, traits = self._traits_memo
        if memo_workload is not workload or memo_configured != configured:
            traits = kubespawner_traits(workload, configured)
            self._traits_memo = (workload, _copy(dict(configured)), traits)
        for name, value in traits.items():
            if getattr(self, name) != value:  # a trait's set validates and notifies: skip
                # A copy: kubespawner may change a trait's dict in place, never the memo's.
                setattr(self, name, _copy(value))
        self._workload = workload

    @property
    def workload(self) -> Workload | None:
        """The workload of the current or last spawn (``None`` before any)."""
        return self._workload

    async def load_user_options(self):
        """Apply the chosen profile (default: the default profile) as the user's workload.

        Called by kubespawner at the start of every spawn: kubespawner picks the profile
        from the user options (refusing an unknown one), then this spawner builds the
        user's workload for it (:meth:`build_workload`: resources, selector, tolerations,
        storage, owner init container when a uid is set, env, security context, labels) and
        maps it onto kubespawner's traits (:meth:`apply_workload`). Settings of an earlier
        spawn on this spawner object never leak into this one.

        Raises:
            ValueError: for an unknown profile, listing the valid ones (kubespawner's check).
        """
        # Every trait of WORKLOAD_TRAITS is set below from the configured values (snapshot
        # now, on the first spawn), so none keeps an earlier spawn's value. kubespawner itself
        # changes none of them: the profile entries have no kubespawner_override.
        self._configured_values()
        self._loading_options = True  # the profile list needs no free-slice counts now
        try:
            await super().load_user_options()
        finally:
            self._loading_options = False
        workload = await self.build_workload(self.current_profile)
        self.apply_workload(workload, await self._resolved_configured())

    def _expand_user_properties(self, template, slug_scheme=None):
        """kubespawner's template expansion (``{username}``, ``{user_server}``, ...), with a
        string that has no brace returned as it is.

        kubespawner expands every string of the volumes, mounts, labels, annotations and init
        containers on each spawn; the workload's strings are already this user's (storage
        subPaths, labels, the owner init container), and ``str.format`` of a string without
        ``{`` or ``}`` is that string, so the result is the same, without computing the user's
        slugs (and a ``stat`` of the service-account namespace file) for each of them.
        """
        if "{" not in template and "}" not in template:
            return template
        return super()._expand_user_properties(template, slug_scheme)

    def get_env(self):
        """kubespawner's environment plus the workload's (``HOME``, ``MLFLOW_*``) and the
        activity settings of the user's server.

        Kept simple so that a subclass (the dev stack's) can extend it.
        """
        env = super().get_env()
        env["JUPYTERHUB_ACTIVITY_INTERVAL"] = str(self.activity_report_interval)
        env["LLMSPAWNER_TRAINING_CHECK_INTERVAL"] = str(self.training_check_interval)
        # LlamaBoard starts with the server unless switched off (llmspawner.singleuser.eager).
        env["LLMSPAWNER_LLAMABOARD_EAGER_START"] = (
            "1" if self.platform.llamaboard_eager_start else "0"
        )
        if self._workload is not None:
            env.update(self._workload.env)
        return env

    async def _ensure_tracking(self) -> str:
        """Make sure the user's experiment exists; return a sentence for the progress page.

        Never raises: when MLflow cannot be reached the spawn goes on.
        """
        platform = self.platform
        if not platform.mlflow_tracking_uri:
            return "Experiment tracking is off (no MLflow server configured)."
        name = self.experiment_name
        try:
            # Made with MLflow's admin credential of the hub's environment, owned by the user.
            experiment_id = await tracking.ensure_experiment(
                platform.mlflow_tracking_uri,
                name,
                owner=self.user.name,
                timeout=platform.mlflow_timeout,
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
        names the last scheduling reason. The pod's create retries transient API errors
        within ``k8s_api_request_retry_timeout`` (:meth:`_make_create_pod_request`); a start
        that still fails on the cluster's API removes what it may have created and raises
        :class:`~llmspawner.apierrors.UserFacingError` (503) with one sentence saying what
        happened and that trying again is safe.
        """
        self._tracking_task = asyncio.ensure_future(self._ensure_tracking())
        # A new id for this start: the pod carries it (SPAWN_ID_ANNOTATION), so a retried
        # create that meets its own pod adopts it.
        self._spawn_id = uuid.uuid4().hex
        self._create_attempts = 0
        self._pod_created = False
        self._api_error = None
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def start_after_tracking():
            await self._tracking_task
            # End a second before JupyterHub's own timeout, so that this message is the one
            # the user sees rather than a bare "timeout".
            left = max(1.0, self.start_timeout - (loop.time() - started) - 1.0)
            try:
                return await asyncio.wait_for(self._start(), timeout=left)
            except (asyncio.TimeoutError, TimeoutError) as e:
                if self._create_attempts and not self._pod_created:
                    # kubespawner's backoff gave up on the create (its budget ran out).
                    raise await self._start_failed_on_api(self._api_error or e) from None
                reason = self.last_scheduling_reason()
                if not reason:
                    raise
                raise TimeoutError(
                    f"Your server did not start within {self.start_timeout} seconds. {reason}"
                ) from None
            except Exception as e:
                if apierrors.status_of(e) is None and not apierrors.is_transient(e):
                    raise
                raise await self._start_failed_on_api(e) from None

        self._start_future = asyncio.ensure_future(start_after_tracking())
        return self._start_future

    _spawn_id: str | None = None
    _create_attempts = 0
    _pod_created = False
    _api_error: BaseException | None = None

    async def get_pod_manifest(self):
        """kubespawner's pod, annotated with this start's id (:data:`SPAWN_ID_ANNOTATION`)."""
        pod = await super().get_pod_manifest()
        if self._spawn_id:
            pod.metadata.annotations = {
                **(pod.metadata.annotations or {}),
                SPAWN_ID_ANNOTATION: self._spawn_id,
            }
        return pod

    async def _make_create_pod_request(self, pod, request_timeout):
        """One attempt to create the server's pod, for kubespawner's ``exponential_backoff``
        (``True``: done, ``False``: try again).

        Unlike kubespawner's: a transient error (:func:`llmspawner.apierrors.is_transient`:
        5xx, 429, a connection closed or refused, no answer in time) is retried, not raised;
        a 409 ``AlreadyExists`` for a pod carrying this start's id is the pod of an earlier
        attempt whose reply was lost, and is adopted; a 409 for another pod (an earlier
        server's) deletes it and tries again, as kubespawner does. Nothing of the pod (its
        environment holds the server's token) is logged.

        Raises:
            kubernetes_asyncio.client.ApiException: an answer that is not transient (403,
                422, ...).
        """
        ref = f"{self.namespace}/{pod.metadata.name}"
        self._create_attempts += 1
        self.log.info(
            "Creating pod %s (attempt %d, timeout %s s)",
            ref,
            self._create_attempts,
            request_timeout,
        )
        try:
            await asyncio.wait_for(
                self.api.create_namespaced_pod(self.namespace, pod), request_timeout
            )
        except Exception as e:
            if apierrors.status_of(e) == 409:
                return await self._on_existing_pod(pod, request_timeout)
            self._api_error = e
            if not apierrors.is_transient(e):
                self.log.error("Creating pod %s refused: %s", ref, apierrors.describe(e))
                raise
            self.log.warning(
                "Creating pod %s failed (%s); trying again", ref, apierrors.describe(e)
            )
            return False
        self._pod_created = True
        return True

    async def _on_existing_pod(self, pod, request_timeout) -> bool:
        """A create answered 409: adopt the pod if it is this start's, else replace it."""
        ref = f"{self.namespace}/{pod.metadata.name}"
        try:
            existing = await asyncio.wait_for(
                self.api.read_namespaced_pod(pod.metadata.name, self.namespace), request_timeout
            )
        except Exception as e:
            if apierrors.status_of(e) == 404:  # gone meanwhile: create it again
                return False
            self._api_error = e
            if apierrors.is_transient(e):
                self.log.warning(
                    "Reading pod %s failed (%s); trying again", ref, apierrors.describe(e)
                )
                return False
            raise
        annotations = (existing.metadata and existing.metadata.annotations) or {}
        if self._spawn_id and annotations.get(SPAWN_ID_ANNOTATION) == self._spawn_id:
            self.log.warning(
                "Pod %s was created by an earlier attempt of this start whose reply was lost; "
                "using it",
                ref,
            )
            self._pod_created = True
            return True
        self.log.info("Pod %s is left from an earlier server; deleting it first", ref)
        await self.stop(True)
        return False

    async def _start_failed_on_api(self, error: BaseException) -> apierrors.UserFacingError:
        """Remove what a start that failed on the cluster's API may have created; return the
        user's error (one sentence: what happened, and that trying again is safe)."""
        what = apierrors.describe(error)
        self.log.error(
            "Starting %s failed on the Kubernetes API: %s (%d create attempt(s))",
            self._log_name,
            what,
            self._create_attempts,
        )
        left_behind = False
        if self._create_attempts:
            left_behind = not await self._remove_failed_pod()
        if apierrors.is_transient(error):
            happened = (
                "the cluster's API kept failing for "
                f"{self.k8s_api_request_retry_timeout} seconds ({what})"
            )
        else:
            happened = f"the cluster's API refused it ({what})"
        if left_behind:
            tail = "a pod left behind is deleted automatically, and it is safe to try again"
        else:
            tail = "nothing was left running, so it is safe to try again"
        return apierrors.UserFacingError(
            503, f"Your server could not be started because {happened}; {tail}."
        )

    async def _remove_failed_pod(self) -> bool:
        """Delete this start's pod, if a create reached the API; ``True`` when none is left.

        Only a pod with this start's id is deleted (a precondition on its uid, so never a
        newer pod of the same name). Transient errors are retried within
        ``k8s_api_request_retry_timeout``; what is still left is the orphan reconciler's.
        """
        from kubernetes_asyncio.client import V1DeleteOptions, V1Preconditions

        ref = f"{self.namespace}/{self.pod_name}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.k8s_api_request_retry_timeout
        wait = 0.2
        while True:
            try:
                pod = await asyncio.wait_for(
                    self.api.read_namespaced_pod(self.pod_name, self.namespace),
                    self.k8s_api_request_timeout,
                )
                annotations = (pod.metadata and pod.metadata.annotations) or {}
                if annotations.get(SPAWN_ID_ANNOTATION) != self._spawn_id:
                    return True  # not this start's pod
                self.log.info("Deleting pod %s of a start that failed", ref)
                await asyncio.wait_for(
                    self.api.delete_namespaced_pod(
                        self.pod_name,
                        self.namespace,
                        body=V1DeleteOptions(
                            grace_period_seconds=0,
                            preconditions=V1Preconditions(uid=pod.metadata.uid),
                        ),
                    ),
                    self.k8s_api_request_timeout,
                )
                return True
            except Exception as e:
                if apierrors.status_of(e) in (404, 409):  # gone, or another pod now
                    return True
                left = deadline - loop.time()
                if not apierrors.is_transient(e) or left <= 0:
                    self.log.error(
                        "Pod %s of a failed start not deleted (%s); the orphan reconciler "
                        "deletes it",
                        ref,
                        apierrors.describe(e),
                    )
                    return False
                await asyncio.sleep(min(wait, left))
                wait = min(wait * 2, 5.0)

    _delete_error: BaseException | None = None

    async def _make_delete_pod_request(
        self, pod_name, delete_options, grace_seconds, request_timeout
    ):
        """One attempt to delete the server's pod, for kubespawner's ``exponential_backoff``:
        kubespawner's (404 counts as deleted, no answer in time is tried again), with transient
        errors tried again too instead of raised (kubespawner raises them: a single 503 made
        the hub forget a running pod)."""
        try:
            return await super()._make_delete_pod_request(
                pod_name, delete_options, grace_seconds, request_timeout
            )
        except Exception as e:
            self._delete_error = e
            if not apierrors.is_transient(e):
                raise
            self.log.warning(
                "Deleting pod %s/%s failed (%s); trying again",
                self.namespace,
                pod_name,
                apierrors.describe(e),
            )
            return False

    async def stop(self, now=False):
        """Delete the server's pod and wait until it is gone (kubespawner's ``stop``), trying
        again while the API fails, for up to ``stop_retry_timeout`` seconds.

        JupyterHub shows the server as stopping for as long as this runs (the pod exists).
        A stop that still fails is logged (JupyterHub's ``stop_single_user`` swallows it
        without a word) and raised; JupyterHub then forgets the server, and the orphan
        reconciler deletes its pod after the grace period (:mod:`llmspawner.reconciler`).

        Raises:
            Exception: the last error, once ``stop_retry_timeout`` is used up, or at once an
                answer that is not transient (e.g. 403 Forbidden).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_retry_timeout
        ref = f"{self.namespace}/{self.pod_name}"
        wait = 1.0
        self._delete_error = None
        while True:
            try:
                return await super().stop(now=now)
            except Exception as e:
                error = self._delete_error or e
                left = deadline - loop.time()
                if not apierrors.is_transient(error) or left <= 0:
                    self.log.error(
                        "Stopping %s failed: pod %s not deleted (%s); the orphan reconciler "
                        "deletes it after its grace period",
                        self._log_name,
                        ref,
                        apierrors.describe(error),
                    )
                    raise
                self.log.warning(
                    "Stopping %s: pod %s not deleted yet (%s); trying again for up to %.0f s",
                    self._log_name,
                    ref,
                    apierrors.describe(error),
                    left,
                )
                self._delete_error = None
                await asyncio.sleep(min(wait, left))
                wait = min(wait * 2, 30.0)

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
