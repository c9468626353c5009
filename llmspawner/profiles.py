"""GPU profiles: load and validate the YAML files, and turn a profile into pod resources.

One YAML file per profile in a folder (``profiles/`` in this repository; a ConfigMap under
z2jh). A profile file looks like::

    slug: medium
    display_name: "½ GPU — 7B with QLoRA"
    description: "Half of a GPU by time-slicing ..."
    gpu: {fraction: 1/2}         # or {count: 1}, {mig: 1g.10gb}, or none (no key / null)
    cpu: {guarantee: 2, limit: 8}
    memory: {guarantee: 16G, limit: 32G}
    idle_timeout: 1800           # seconds
    max_runtime: 86400           # seconds, used by the batch queue
    allowed_groups: []           # empty: everyone
    shm_size: 8G                 # /dev/shm (default: a quarter of the memory limit, 1-16 GiB)

How a GPU share becomes Kubernetes resources is decided here and nowhere else
(:func:`gpu_resources`); the spawner and the queue's Job builder both call it. A fraction is
never a fractional quantity: with NVIDIA time-slicing a GPU is advertised as N replicas of the
shared resource, so ``1/N`` of a GPU is *one unit* of that resource on a node labelled
``nvidia.com/gpu.replicas=N``
(https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/gpu-sharing.html).

Everything here is pure except :func:`load_profiles`, which reads the folder.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

#: Keys a profile file may have.
PROFILE_KEYS = (
    "slug",
    "display_name",
    "description",
    "default",
    "gpu",
    "cpu",
    "memory",
    "node_selector",
    "tolerations",
    "image",
    "idle_timeout",
    "max_runtime",
    "allowed_groups",
    "shm_size",
)
_REQUIRED_KEYS = ("slug", "display_name")
_GPU_KINDS = ("count", "fraction", "mig")
_SIZE_KEYS = ("guarantee", "limit")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_FRACTION = re.compile(r"^\s*1\s*/\s*([0-9]+)\s*$")
# MIG profile names: <compute slices>g.<memory>gb, optionally with +me / +gfx / .<n>c
# attributes, e.g. 1g.5gb, 1g.10gb, 2g.20gb, 3g.40gb, 7g.80gb, 1g.10gb+me, 1c.3g.20gb.
# https://docs.nvidia.com/datacenter/tesla/mig-user-guide/#supported-mig-profiles
_MIG = re.compile(r"^([1-9]c\.)?[1-8]g\.[1-9][0-9]{0,3}gb(\+(me|gfx|me\.all))?$")
_BYTE_SUFFIXES = {"K": 1, "M": 2, "G": 3, "T": 4}


class ProfileError(ValueError):
    """A profile file is wrong. The message names the file, the field and what is allowed.

    Attributes:
        file: the file's name (or the folder's, for errors across files).
        field: the dotted path of the field, e.g. ``gpu.fraction``; empty for the whole file.
    """

    def __init__(self, file: str, field: str, message: str):
        self.file = file
        self.field = field
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {message}")


#: The NVIDIA device plugin's resource of whole GPUs, also its default for time-sliced
#: replicas and the taint key of GPU nodes (https://github.com/NVIDIA/k8s-device-plugin).
NVIDIA_GPU = "nvidia.com/gpu"
#: The device plugin's MIG strategies (its ``migStrategy``; ``none`` means no MIG).
MIG_STRATEGIES = ("mixed", "single")
#: Node label that GPU Feature Discovery sets only on nodes whose ``nvidia.com/gpu`` devices
#: are MIG slices, i.e. MIG with the ``single`` strategy: the MIG device's attribute labels
#: (``slices.gi``, ``slices.ci``, ``multiprocessors``, ``engines.*``) are named after the
#: resource, and only the single strategy advertises MIG devices as ``nvidia.com/gpu``
#: (the mixed one as ``nvidia.com/mig-<profile>``, with labels named after that). Such a node
#: also carries ``nvidia.com/gpu.replicas=1``, like a node of whole GPUs. Not
#: ``nvidia.com/mig.strategy``: GFD sets that on every GPU node when the strategy is not
#: ``none``, MIG enabled or not, and the GPU operator's default strategy is ``single``.
#: Source: k8s-device-plugin ``internal/lm/mig-strategy.go`` (``newMigStrategySingleLabeler``,
#: ``migStrategyLabeler``) and ``internal/resource/nvml-mig-device.go`` (``GetAttributes``),
#: https://github.com/NVIDIA/k8s-device-plugin/tree/main/internal
MIG_SLICE_LABEL = "nvidia.com/gpu.slices.gi"
#: The node affinity requirement that keeps whole and time-sliced GPU shares off MIG slices.
NOT_MIG_SLICES = {"key": MIG_SLICE_LABEL, "operator": "DoesNotExist"}


@dataclass(frozen=True)
class ClusterGPUConfig:
    """How the cluster's GPUs are advertised: configured once for all profiles.

    Attributes:
        whole_resource: the device plugin's resource for whole GPUs (``nvidia.com/gpu``).
        shared_resource: the resource of time-sliced replicas: ``nvidia.com/gpu``, or
            ``nvidia.com/gpu.shared`` when the device plugin's ``renameByDefault`` is on
            (https://github.com/NVIDIA/k8s-device-plugin#shared-access-to-gpus).
        replicas_label: node label holding the replica count of a node's GPUs
            (set by GPU Feature Discovery).
        replica_counts: the replica counts that nodes are labelled with; a profile's fraction
            must be ``1/N`` for one of them.
        mig_strategy: ``mixed`` (each MIG profile is its own resource ``nvidia.com/mig-<p>``)
            or ``single`` (MIG devices are advertised as ``nvidia.com/gpu`` on nodes whose MIG
            manager config is ``all-<p>``).
        toleration_key: the taint key of GPU nodes that GPU pods tolerate.
    """

    whole_resource: str = NVIDIA_GPU
    shared_resource: str = NVIDIA_GPU
    replicas_label: str = "nvidia.com/gpu.replicas"
    replica_counts: tuple[int, ...] = (2, 4)
    mig_strategy: str = MIG_STRATEGIES[0]
    toleration_key: str = NVIDIA_GPU

    def __post_init__(self):
        if self.mig_strategy not in MIG_STRATEGIES:
            raise ValueError(
                f"mig_strategy must be one of {', '.join(MIG_STRATEGIES)}; "
                f"not {self.mig_strategy!r}"
            )
        bad = [n for n in self.replica_counts if not isinstance(n, int) or n < 2]
        if bad:
            raise ValueError(f"replica_counts must be whole numbers >= 2, not {bad}")


@dataclass(frozen=True)
class GPU:
    """A profile's GPU share. ``kind`` is ``none``, ``count``, ``fraction`` or ``mig``.

    Attributes:
        kind: which of the four shapes.
        count: whole GPUs (``kind == "count"``).
        replicas: N of a ``1/N`` time-sliced fraction (``kind == "fraction"``).
        mig: the MIG profile name, e.g. ``1g.10gb`` (``kind == "mig"``).
    """

    kind: str = "none"
    count: int = 0
    replicas: int = 0
    mig: str = ""

    @property
    def share(self) -> Fraction:
        """The share of one physical GPU: 0, 1/N, or N (a MIG slice counts as 0)."""
        if self.kind == "count":
            return Fraction(self.count)
        if self.kind == "fraction":
            return Fraction(1, self.replicas)
        return Fraction(0)

    @property
    def label(self) -> str:
        """A short human label: ``no GPU``, ``¼ GPU``, ``1 GPU``, ``2 GPUs``, ``MIG 1g.10gb``."""
        if self.kind == "count":
            return "1 GPU" if self.count == 1 else f"{self.count} GPUs"
        if self.kind == "fraction":
            return {2: "½ GPU", 3: "⅓ GPU", 4: "¼ GPU", 8: "⅛ GPU"}.get(
                self.replicas, f"1/{self.replicas} GPU"
            )
        if self.kind == "mig":
            return f"MIG {self.mig}"
        return "no GPU"


@dataclass(frozen=True)
class Profile:
    """One validated GPU profile (see the module docstring for the file format).

    Sizes: ``cpu_*`` in cores (float), ``mem_*`` in bytes (int), ``idle_timeout`` and
    ``max_runtime`` in seconds (int, 0 = not set). ``source`` is the file it came from.
    """

    slug: str
    display_name: str
    description: str = ""
    default: bool = False
    gpu: GPU = field(default_factory=GPU)
    cpu_guarantee: float | None = None
    cpu_limit: float | None = None
    mem_guarantee: int | None = None
    mem_limit: int | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    image: str = ""
    idle_timeout: int = 0
    max_runtime: int = 0
    allowed_groups: tuple[str, ...] = ()
    #: Size of the pod's ``/dev/shm`` in bytes (``shm_size``); ``None``: the workload's
    #: default (:func:`llmspawner.workload.shm_size`).
    shm_size: int | None = None
    source: str = ""

    def allows(self, groups) -> bool:
        """Whether a user in ``groups`` (iterable of JupyterHub group names) may use it."""
        return not self.allowed_groups or bool(set(self.allowed_groups) & set(groups))


@dataclass(frozen=True)
class GPUResources:
    """What a GPU share adds to a pod: resource limits, node selector, required node affinity
    and tolerations.

    ``limits`` maps extended-resource names to integer counts; Kubernetes takes an extended
    resource's request from its limit, and requires the two to be equal when both are set
    (https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/#extended-resources).
    ``node_affinity`` holds node selector requirements (``{"key", "operator", "values"?}``)
    that a node must all meet, for what a ``nodeSelector`` cannot say (``DoesNotExist``)
    (https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#node-affinity).
    """

    limits: dict[str, int] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    node_affinity: tuple[dict, ...] = ()


def gpu_resources(gpu: GPU, cluster: ClusterGPUConfig) -> GPUResources:
    """Map a GPU share to pod resources. The only place that does this.

    - ``none``: nothing at all (no GPU key, no selector, no toleration);
    - ``fraction 1/N``: ``{shared_resource: 1}`` on nodes labelled ``replicas_label=N``;
    - ``count N``: ``{whole_resource: N}``; when whole and shared GPUs share one resource name,
      only on nodes labelled ``replicas_label=1``, so that a whole GPU is never a time-sliced
      replica;
    - ``count`` and ``fraction`` both only on nodes without :data:`MIG_SLICE_LABEL`
      (:data:`NOT_MIG_SLICES`): with MIG's ``single`` strategy ``nvidia.com/gpu`` counts MIG
      slices, on nodes labelled ``replicas=1`` too, and a share of a GPU is not a slice;
    - ``mig P``: ``{nvidia.com/mig-P: 1}`` (mixed strategy) or ``{whole_resource: 1}`` on nodes
      labelled ``nvidia.com/mig.config=all-P`` (single strategy)
      (https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/gpu-operator-mig.html).

    Every GPU share also tolerates the GPU nodes' taint (``toleration_key`` Exists NoSchedule).

    Returns:
        A new :class:`GPUResources`.
    """
    if gpu.kind == "none":
        return GPUResources()
    toleration = ({"key": cluster.toleration_key, "operator": "Exists", "effect": "NoSchedule"},)
    if gpu.kind == "fraction":
        return GPUResources(
            limits={cluster.shared_resource: 1},
            node_selector={cluster.replicas_label: str(gpu.replicas)},
            tolerations=toleration,
            node_affinity=(dict(NOT_MIG_SLICES),),
        )
    if gpu.kind == "count":
        selector = {}
        if cluster.shared_resource == cluster.whole_resource:
            selector = {cluster.replicas_label: "1"}
        return GPUResources(
            limits={cluster.whole_resource: gpu.count},
            node_selector=selector,
            tolerations=toleration,
            node_affinity=(dict(NOT_MIG_SLICES),),
        )
    if gpu.kind == "mig":
        if cluster.mig_strategy == "mixed":
            return GPUResources(limits={f"nvidia.com/mig-{gpu.mig}": 1}, tolerations=toleration)
        return GPUResources(
            limits={cluster.whole_resource: 1},
            node_selector={"nvidia.com/mig.config": f"all-{gpu.mig}"},
            tolerations=toleration,
        )
    raise ValueError(f"unknown GPU kind {gpu.kind!r}; allowed: none, {', '.join(_GPU_KINDS)}")


# --- parsing and validation -------------------------------------------------------------


def parse_profile(data: Any, *, file: str, cluster: ClusterGPUConfig) -> Profile:
    """Validate one profile's parsed YAML and return the :class:`Profile`.

    Args:
        data: the YAML document (a mapping).
        file: the file's name, used in error messages.
        cluster: the cluster's GPU configuration (allowed replica counts).

    Raises:
        ProfileError: naming ``file``, the field and the allowed values.
    """
    if not isinstance(data, dict):
        raise ProfileError(file, "", f"must be a mapping of fields, not {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in PROFILE_KEYS)
    if unknown:
        raise ProfileError(
            file, unknown[0], f"unknown field; allowed fields: {', '.join(PROFILE_KEYS)}"
        )
    for key in _REQUIRED_KEYS:
        if not data.get(key):
            raise ProfileError(file, key, "is required")

    slug = data["slug"]
    if not isinstance(slug, str) or not _DNS_LABEL.match(slug):
        raise ProfileError(
            file,
            "slug",
            f"{slug!r} is not a DNS label: lower-case letters, digits and '-', starting and "
            "ending with a letter or digit, at most 63 characters",
        )
    display_name = _string(data, "display_name", file)
    description = _string(data, "description", file) if "description" in data else ""
    default = data.get("default", False)
    if not isinstance(default, bool):
        raise ProfileError(file, "default", f"must be true or false, not {default!r}")

    cpu = _sizes(data.get("cpu"), "cpu", file, _cores)
    mem = _sizes(data.get("memory"), "memory", file, _bytes)

    node_selector = data.get("node_selector") or {}
    if not isinstance(node_selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in node_selector.items()
    ):
        raise ProfileError(
            file, "node_selector", "must be a mapping of label names to string values"
        )
    tolerations = data.get("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        raise ProfileError(file, "tolerations", "must be a list of Kubernetes toleration mappings")
    image = data.get("image") or ""
    if not isinstance(image, str):
        raise ProfileError(file, "image", f"must be an image reference string, not {image!r}")

    groups = data.get("allowed_groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise ProfileError(
            file, "allowed_groups", "must be a list of JupyterHub group names (empty: everyone)"
        )

    return Profile(
        slug=slug,
        display_name=display_name,
        description=description,
        default=default,
        gpu=_gpu(data.get("gpu"), file, cluster),
        cpu_guarantee=cpu.get("guarantee"),
        cpu_limit=cpu.get("limit"),
        mem_guarantee=mem.get("guarantee"),
        mem_limit=mem.get("limit"),
        node_selector=dict(node_selector),
        tolerations=tuple(dict(t) for t in tolerations),
        image=image,
        idle_timeout=_seconds(data, "idle_timeout", file),
        max_runtime=_seconds(data, "max_runtime", file),
        allowed_groups=tuple(groups),
        shm_size=_bytes(data["shm_size"], "shm_size", file) if "shm_size" in data else None,
        source=file,
    )


def check_profile_set(profiles: list[Profile], *, where: str) -> list[Profile]:
    """Check rules across profiles: unique slugs, exactly one default, at least one profile.

    Args:
        profiles: parsed profiles, in display order.
        where: the folder's name, used in error messages.

    Returns:
        ``profiles`` unchanged.

    Raises:
        ProfileError: naming the files involved.
    """
    if not profiles:
        raise ProfileError(where, "", "no profile files (*.yaml, *.yml) found")
    seen: dict[str, str] = {}
    for p in profiles:
        if p.slug in seen:
            raise ProfileError(
                p.source, "slug", f"duplicate slug {p.slug!r}, also used in {seen[p.slug]}"
            )
        seen[p.slug] = p.source
    defaults = [p for p in profiles if p.default]
    if len(defaults) != 1:
        names = ", ".join(p.source for p in defaults) or "none"
        raise ProfileError(
            where,
            "default",
            f"exactly one profile must have 'default: true'; found {len(defaults)} ({names})",
        )
    return profiles


def load_profiles(directory: str | Path, cluster: ClusterGPUConfig | None = None) -> list[Profile]:
    """Read and validate every ``*.yaml``/``*.yml`` file of a folder.

    Files are read in name order; the profiles are returned sorted by GPU share (CPU first),
    then by slug, which is the order the spawn form shows.

    Args:
        directory: the profiles folder.
        cluster: the cluster's GPU configuration; the defaults when omitted.

    Returns:
        The validated profiles.

    Raises:
        ProfileError: for the first problem found, naming the file, the field and the allowed
            values (a YAML syntax error names the line).
    """
    cluster = cluster or ClusterGPUConfig()
    folder = Path(directory)
    if not folder.is_dir():
        raise ProfileError(str(folder), "", "profiles folder does not exist")
    profiles = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ProfileError(path.name, "", f"is not valid YAML: {e}") from None
        profiles.append(parse_profile(data, file=path.name, cluster=cluster))
    check_profile_set(profiles, where=str(folder))
    return sorted(profiles, key=lambda p: (p.gpu.kind == "mig", p.gpu.share, p.slug))


def find_profile(profiles: list[Profile], slug: str | None) -> Profile:
    """Return the profile with ``slug``, or the default profile when ``slug`` is empty.

    Raises:
        KeyError: with a message listing the valid slugs.
    """
    if not slug:
        return next(p for p in profiles if p.default)
    for p in profiles:
        if p.slug == slug:
            return p
    raise KeyError(
        f"unknown profile {slug!r}; valid profiles: {', '.join(p.slug for p in profiles)}"
    )


def _string(data: dict, key: str, file: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ProfileError(file, key, f"must be a string, not {value!r}")
    return value


def _gpu(value: Any, file: str, cluster: ClusterGPUConfig) -> GPU:
    if value is None or value == "none":
        return GPU()
    allowed = "none, {count: N}, {fraction: 1/N}, or {mig: <MIG profile>}"
    if not isinstance(value, dict) or len(value) != 1:
        raise ProfileError(file, "gpu", f"must be one of {allowed}; got {value!r}")
    ((kind, raw),) = value.items()
    if kind not in _GPU_KINDS:
        raise ProfileError(
            file, f"gpu.{kind}", f"unknown GPU kind; allowed: {', '.join(_GPU_KINDS)}"
        )
    if kind == "count":
        if isinstance(raw, bool) or not isinstance(raw, int):
            hint = ""
            if isinstance(raw, float) and 0 < raw < 1:
                hint = f"; for a share of one GPU write 'fraction: 1/{round(1 / raw)}'"
            raise ProfileError(
                file, "gpu.count", f"must be a whole number of GPUs >= 1, not {raw!r}{hint}"
            )
        if raw < 1:
            raise ProfileError(file, "gpu.count", f"must be >= 1, not {raw}")
        return GPU(kind="count", count=raw)
    if kind == "fraction":
        offered = ", ".join(f"1/{n}" for n in sorted(cluster.replica_counts))
        m = _FRACTION.match(raw) if isinstance(raw, str) else None
        if not m or int(m.group(1)) not in cluster.replica_counts:
            raise ProfileError(
                file,
                "gpu.fraction",
                f"{raw!r} is not offered by the cluster; allowed: {offered} (1/N for a replica "
                "count the GPU nodes are labelled with)",
            )
        return GPU(kind="fraction", replicas=int(m.group(1)))
    if not isinstance(raw, str) or not _MIG.match(raw):
        raise ProfileError(
            file,
            "gpu.mig",
            f"{raw!r} is not a MIG profile name; expected <n>g.<memory>gb such as 1g.10gb, "
            "2g.20gb, 3g.40gb, 7g.80gb",
        )
    return GPU(kind="mig", mig=raw)


def _sizes(value: Any, key: str, file: str, parse) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProfileError(file, key, "must be a mapping with 'guarantee' and/or 'limit'")
    out = {}
    for k, v in value.items():
        if k not in _SIZE_KEYS:
            raise ProfileError(
                file, f"{key}.{k}", f"unknown field; allowed: {', '.join(_SIZE_KEYS)}"
            )
        out[k] = parse(v, f"{key}.{k}", file)
    if "guarantee" in out and "limit" in out and out["guarantee"] > out["limit"]:
        raise ProfileError(file, f"{key}.guarantee", "must not be larger than the limit")
    return out


def _cores(value: Any, where: str, file: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError(
            file, where, f"must be a number of CPU cores such as 0.5 or 4, not {value!r}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ProfileError(file, where, f"must be a positive number of CPU cores, not {value!r}")
    return float(value)


def _bytes(value: Any, where: str, file: str) -> int:
    """Parse a memory size as JupyterHub's ``ByteSpecification`` does (units of 1024)."""
    allowed = "bytes as an integer, or a number with suffix K, M, G, T (or Ki, Mi, Gi, Ti)"
    if isinstance(value, bool):
        raise ProfileError(file, where, f"must be {allowed}, not {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT])i?\s*$", value)
        if not m:
            raise ProfileError(file, where, f"must be {allowed}, not {value!r}")
        n = int(float(m.group(1)) * 1024 ** _BYTE_SUFFIXES[m.group(2)])
    else:
        raise ProfileError(file, where, f"must be {allowed}, not {value!r}")
    if n <= 0:
        raise ProfileError(file, where, f"must be a positive size, not {value!r}")
    return n


def _seconds(data: dict, key: str, file: str) -> int:
    value = data.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProfileError(file, key, f"must be a positive whole number of seconds, not {value!r}")
    return value


class ProfileCache:
    """The validated profiles of a folder, re-read when its files change.

    File names and modification times are checked at most once per ``recheck`` seconds, so a
    spawn or a page view costs no file system calls in between. When the files change into an
    invalid state while the hub runs, the last valid profiles stay in use (and the error is
    logged): a typo in a ConfigMap must not stop every spawn. At hub start, an invalid folder
    stops the hub instead (:func:`llmspawner.hubconfig.check_profiles`).

    Args:
        recheck: seconds between checks of the folder.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, recheck: float = 2.0, clock=time.monotonic):
        self.recheck = recheck
        self._clock = clock
        self._key: tuple | None = None
        self._stamp: tuple | None = None
        self._checked = -math.inf
        self._profiles: list[Profile] | None = None

    def get(self, directory: str, cluster: ClusterGPUConfig, log=None):
        """Return the profiles of ``directory`` (a shared list: do not mutate).

        Raises:
            profiles.ProfileError: when no valid profiles of this folder were loaded before.
        """
        key = (str(directory), cluster)
        now = self._clock()
        if key == self._key and now - self._checked < self.recheck:
            return self._profiles
        folder = Path(directory)
        stamp = (
            tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.y*ml")))
            if folder.is_dir()
            else ()
        )
        self._checked = now
        if key == self._key and stamp == self._stamp:
            return self._profiles
        try:
            loaded = load_profiles(folder, cluster)
        except ProfileError as e:
            if key != self._key or self._profiles is None:
                raise
            if log is not None and stamp != self._stamp:
                log.error("Profiles in %s are invalid, keeping the last valid ones: %s", folder, e)
            self._stamp = stamp
            return self._profiles
        self._key, self._stamp, self._profiles = key, stamp, loaded
        return loaded


#: The process-wide cache used by the spawner and the culler's hook.
PROFILES = ProfileCache()
