"""The user's workload: what a user's server pod and the same user's training Job share.

One pure builder, :func:`build_workload`, turns ``(username, profile, settings, uid/gid)``
into a :class:`Workload`: the image, CPU/memory/GPU requests and limits, node selector,
tolerations, the user's storage volumes and mounts, the owner init container, the
environment (``HOME``, MLflow, the user's own Hugging Face cache), the working directory,
the security contexts (the "restricted" Pod Security Standard, never root), ``/dev/shm``
sized per profile, labels and annotations. The spawner maps it onto its kubespawner traits
(:meth:`llmspawner.spawner.LLMSpawner.apply_workload`), the queue embeds it in its Job
(:func:`llmspawner.queue.k8s_objects.build_job`), and the capacity count reads the same
placement (:func:`placement`), so the three never derive these rules separately.

The rules come from:

- GPU share → extended resources, selector, tolerations: :func:`llmspawner.profiles.gpu_resources`;
- the user's folder: :func:`llmspawner.storage.build_user_storage` and
  :func:`llmspawner.storage.build_owner_init_container`;
- MLflow: :func:`llmspawner.tracking.tracking_env` with
  :meth:`llmspawner.settings.LLMPlatform.experiment_name`;
- resource quantities: https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/

Everything here is pure: no I/O, and no input is ever modified (every returned list and dict
is new).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from . import profiles as profiles_mod
from . import storage, tracking
from .singleuser.workspace import MODELS_DIR_ENV  # the pod reads it: defined there

if TYPE_CHECKING:  # pragma: no cover - types only
    from .settings import LLMPlatform

#: A pod's environment when ``LLMPlatform.hf_offline`` is on: no Hugging Face Hub for
#: huggingface_hub, transformers and datasets
#: (https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables#hfhuboffline).
HF_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
#: Where a user's Hugging Face cache lives, relative to their folder (``HF_HOME``; the hub
#: cache, datasets cache and token under it). Set explicitly, never left to the image or to a
#: shared ``XDG_CACHE_HOME``: huggingface_hub guards each cache entry with a lock file
#: (``filelock``) and writes blobs beside them; one cache shared by many pods on the
#: ReadWriteMany volume (often NFS, where locks can hang or be lost) lets users wait on each
#: other's downloads or see a half-written blob. One per user, in their folder, is only ever
#: used by that user's server and Jobs
#: (https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables#hfhome).
HF_HOME_DIR = ".cache/huggingface"
#: Every pod's OpenMP wait policy: PyTorch's CPU threads (GNU libgomp in PyPI's wheels) sleep
#: at a barrier instead of spinning. On a shared node, or under a CPU limit's CFS quota, a
#: spinning thread burns the time its descheduled partner needs. Measured on 2 cores, another
#: process busy (2026-12-01): 300 small forward/backward steps took 2.63 s with the default
#: policy, 0.70 s with ``PASSIVE``; a LoRA step of the dev model under heavy load took
#: 150-177 s with two spinning threads, about 7 s with one
#: (https://gcc.gnu.org/onlinedocs/libgomp/OMP_005fWAIT_005fPOLICY.html).
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

#: Label of every user workload (server pod, Job, Job pod): the user's slug.
LABEL_USER = "llmspawner.io/user"
#: Label of every user workload: the profile's slug.
LABEL_PROFILE = "llmspawner.io/profile"
#: Annotation of every user workload: the user's raw hub name (a label cannot hold it).
ANNOTATION_USERNAME = "llmspawner.io/username"

#: Name of the pod volume mounted at ``/dev/shm`` (:func:`shm_volume`).
SHM_VOLUME = "dshm"
#: Where it is mounted.
SHM_PATH = "/dev/shm"
#: Bounds of the default ``/dev/shm`` size (bytes): a quarter of the memory, within these.
SHM_DEFAULT_MIN = 1 << 30
SHM_DEFAULT_MAX = 16 << 30

#: Resource names of CPU and memory in ``resources.requests``/``limits``.
CPU = "cpu"
MEMORY = "memory"


@dataclass(frozen=True)
class Placement:
    """Where a profile's pods may run and which GPU resources they take.

    Attributes:
        gpu: extended resource name → whole count per pod, e.g. ``{"nvidia.com/gpu": 1}``
            (``{}`` for a CPU profile). Kubernetes takes an extended resource's request from
            its limit; both are set to this count.
        node_selector: the profile's own node selector with the GPU selector on top
            (e.g. ``{"nvidia.com/gpu.replicas": "2"}``).
        tolerations: the GPU nodes' toleration first, then the profile's own.
        node_affinity: node selector requirements a node must all meet, the GPU share's
            (e.g. no MIG slices for a whole GPU: :data:`llmspawner.profiles.NOT_MIG_SLICES`);
            a pod gets them as one required term (:func:`required_node_terms`).
    """

    gpu: dict[str, int] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    node_affinity: tuple[dict, ...] = ()


def required_node_terms(terms, requirements) -> list[dict]:
    """``nodeSelectorTerms`` of a required node affinity with ``requirements`` added (pure).

    Terms are alternatives (any one may match) and a term's ``matchExpressions`` must all
    hold, so the requirements go into every configured term (e.g. z2jh's
    ``scheduling.userPods.nodeAffinity.matchNodePurpose: require``), or make the one term
    when none is configured.

    Args:
        terms: configured ``NodeSelectorTerm`` dicts (kubespawner's ``node_affinity_required``).
        requirements: node selector requirements (:attr:`Placement.node_affinity`).

    Returns:
        New term dicts (``terms`` unchanged when there are no requirements, as copies).
    """
    terms = copy.deepcopy(list(terms or []))
    requirements = copy.deepcopy(list(requirements or []))
    if not requirements:
        return terms
    if not terms:
        return [{"matchExpressions": requirements}]
    for term in terms:
        term["matchExpressions"] = [*(term.get("matchExpressions") or []), *requirements]
    return terms


def placement(profile: profiles_mod.Profile, cluster: profiles_mod.ClusterGPUConfig) -> Placement:
    """The GPU resources, node selector and tolerations of one profile (pure).

    The one place that merges a profile's own ``node_selector``/``tolerations`` with those of
    its GPU share (:func:`llmspawner.profiles.gpu_resources`); used by :func:`build_workload`
    and by the capacity count (:func:`llmspawner.capacity.profile_capacity`).

    Args:
        profile: a validated profile.
        cluster: how the cluster advertises GPUs (``LLMPlatform.gpu_cluster``).

    Returns:
        A new :class:`Placement` (fresh dicts; tolerations deep-copied).
    """
    gpu = profiles_mod.gpu_resources(profile.gpu, cluster)
    return Placement(
        gpu=dict(gpu.limits),
        node_selector={**profile.node_selector, **gpu.node_selector},
        tolerations=tuple(copy.deepcopy([*gpu.tolerations, *profile.tolerations])),
        node_affinity=tuple(copy.deepcopy(list(gpu.node_affinity))),
    )


def cpu_quantity(cores: float) -> str:
    """CPU cores as a Kubernetes quantity: ``4`` → ``"4"``, ``0.5`` → ``"500m"`` (millicores,
    rounded)."""
    if float(cores).is_integer():
        return str(int(cores))
    return f"{round(cores * 1000)}m"


def memory_quantity(size: int) -> str:
    """A memory size in bytes as a Kubernetes quantity: ``17179869184`` → ``"17179869184"``."""
    return str(int(size))


_SUFFIXES = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


#: Suffixes longest first (``Mi`` before ``M``... and ``m``), without the empty one.
_SUFFIX_ORDER = sorted((k for k in _SUFFIXES if k), key=len, reverse=True)


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity as a number: ``"500m"`` → ``0.5``, ``"16Gi"`` → ``17179869184``,
    ``4.0`` → ``4``. Accepts the numbers kubespawner puts in pods as they are.

    Raises:
        ValueError: for a value that is not a quantity.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = str(value).strip()
    for suffix in _SUFFIX_ORDER:
        if text.endswith(suffix):
            number, unit = text[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, unit = text, Decimal(1)
    try:
        return Decimal(number) * unit
    except InvalidOperation:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from None


def resources(profile: profiles_mod.Profile, cluster: profiles_mod.ClusterGPUConfig) -> dict:
    """A profile's container ``resources`` as Kubernetes quantity strings (pure).

    CPU from ``cpu_guarantee``/``cpu_limit`` (cores, :func:`cpu_quantity`), memory from
    ``mem_guarantee``/``mem_limit`` (bytes, :func:`memory_quantity`), and the GPU share's
    extended resources (:func:`placement`) in both requests and limits, since Kubernetes
    requires them equal.

    Returns:
        ``{"requests": {...}, "limits": {...}}``, each key present only when non-empty, e.g.
        ``{"requests": {"cpu": "4", "memory": "17179869184", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "8", "memory": "51539607552", "nvidia.com/gpu": "1"}}``.
    """
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if profile.cpu_guarantee is not None:
        requests[CPU] = cpu_quantity(profile.cpu_guarantee)
    if profile.cpu_limit is not None:
        limits[CPU] = cpu_quantity(profile.cpu_limit)
    if profile.mem_guarantee is not None:
        requests[MEMORY] = memory_quantity(profile.mem_guarantee)
    if profile.mem_limit is not None:
        limits[MEMORY] = memory_quantity(profile.mem_limit)
    for name, count in placement(profile, cluster).gpu.items():
        requests[name] = limits[name] = str(count)
    out = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def shm_size(profile: profiles_mod.Profile) -> int:
    """The size of a profile's ``/dev/shm`` in bytes (pure).

    The profile's ``shm_size`` when set; else a quarter of its memory limit (or guarantee),
    at least :data:`SHM_DEFAULT_MIN` (1 GiB) and at most :data:`SHM_DEFAULT_MAX` (16 GiB), but
    never above the memory limit; 1 GiB when the profile sets no memory. A container
    runtime's default is 64 MiB, which makes PyTorch's multi-worker data loading die with a
    bus error (https://github.com/pytorch/pytorch/issues/2244).
    """
    if profile.shm_size is not None:
        return profile.shm_size
    memory = profile.mem_limit or profile.mem_guarantee
    if not memory:
        return SHM_DEFAULT_MIN
    size = min(max(memory // 4, SHM_DEFAULT_MIN), SHM_DEFAULT_MAX)
    return min(size, profile.mem_limit) if profile.mem_limit else size


def shm_volume(size: int) -> tuple[dict, dict]:
    """The ``/dev/shm`` volume and its mount: an emptyDir of ``medium: Memory`` (a tmpfs)
    with ``sizeLimit`` ``size`` bytes (pure). What it holds counts against the container's
    memory limit (https://kubernetes.io/docs/concepts/storage/volumes/#emptydir).

    Returns:
        ``(volume, volume_mount)``, new dicts.
    """
    return (
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": memory_quantity(size)}},
        {"name": SHM_VOLUME, "mountPath": SHM_PATH},
    )


#: The seccomp profile of every user container: the container runtime's default.
#: https://kubernetes.io/docs/tutorials/security/seccomp/
SECCOMP_RUNTIME_DEFAULT = {"type": "RuntimeDefault"}


def pod_security_context(*, fs_gid: int | None) -> dict:
    """The pod ``securityContext`` of a user's server and Job (pure): ``fsGroup`` when
    ``fs_gid`` is set, and ``seccompProfile: RuntimeDefault`` (which the owner init container
    gets too). https://kubernetes.io/docs/tasks/configure-pod-container/security-context/
    """
    out: dict = {}
    if fs_gid is not None:
        out["fsGroup"] = fs_gid
    out["seccompProfile"] = dict(SECCOMP_RUNTIME_DEFAULT)
    return out


def container_security_context(*, uid: int | None, gid: int | None) -> dict:
    """The ``securityContext`` of the user's container in a server and in a Job (pure):
    the Pod Security Standard "restricted" profile
    (https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted):
    ``runAsUser``/``runAsGroup`` when set, ``runAsNonRoot: true`` (with no uid the image's
    user must not be root), ``allowPrivilegeEscalation: false``, capabilities ``drop: [ALL]``,
    ``seccompProfile: RuntimeDefault``. The one rule for both; kubespawner's
    ``allow_privilege_escalation`` and ``container_security_context`` are overridden by it
    (:func:`llmspawner.spawner.kubespawner_traits`).
    """
    out: dict = {}
    if uid is not None:
        out["runAsUser"] = uid
    if gid is not None:
        out["runAsGroup"] = gid
    out["runAsNonRoot"] = True
    out["allowPrivilegeEscalation"] = False
    out["capabilities"] = {"drop": ["ALL"]}
    out["seccompProfile"] = dict(SECCOMP_RUNTIME_DEFAULT)
    return out


@dataclass(frozen=True)
class Workload:
    """What a user's server pod and their Job pods share (see the module docstring).

    Consumers copy what they embed (the dicts and lists are the workload's own).

    Attributes:
        image: the container image: the profile's ``image``, else ``LLMPlatform.image``.
        resources: ``{"requests": {...}, "limits": {...}}`` of Kubernetes quantity strings:
            ``cpu`` (cores, e.g. ``"4"``/``"500m"``), ``memory`` (bytes) and GPU extended
            resources (whole counts); see :func:`resources`.
        node_selector: label → value the node must have (profile's, then GPU's).
        tolerations: Kubernetes toleration dicts (GPU nodes' taint first, then the profile's).
        volumes: the user's storage volumes (the shared PVC) and the ``/dev/shm`` emptyDir
            (:func:`shm_volume`).
        volume_mounts: the user's folder read-write at their home, shared models read-only,
            ``/dev/shm``.
        init_containers: the owner init container when a uid is set, else ``[]``.
        env: ``HOME``, and ``MLFLOW_TRACKING_URI``/``MLFLOW_EXPERIMENT_NAME`` when tracking is
            on (``LLMPlatform.mlflow_tracking_uri`` set); :data:`MODELS_DIR_ENV`; ``HF_HOME``
            in the user's folder (:data:`HF_HOME_DIR`);
            :data:`OPENMP_ENV`; and :data:`HF_OFFLINE_ENV` when ``LLMPlatform.hf_offline`` is on.
        working_dir: the user's folder in the pod, ``/storage/users/<slug>``.
        pod_security_context: :func:`pod_security_context`: ``fsGroup`` (when set) and
            ``seccompProfile: RuntimeDefault``.
        container_security_context: :func:`container_security_context`: ``runAsUser``/
            ``runAsGroup`` when set, ``runAsNonRoot``, ``allowPrivilegeEscalation: False``,
            all capabilities dropped, ``seccompProfile: RuntimeDefault``.
        labels: ``llmspawner.io/user`` (slug) and ``llmspawner.io/profile`` (profile slug).
        annotations: ``llmspawner.io/username`` (the raw hub name).
        node_affinity: node selector requirements a node must all meet
            (:attr:`Placement.node_affinity`; ``[]`` for most profiles).
        image_pull_secrets: the pods' ``imagePullSecrets``, ``[{"name": <Secret>}, ...]``
            from ``LLMPlatform.image_pull_secrets`` (the spawner's, i.e. z2jh's
            ``singleuser.image.pullSecrets``, resolved by the hub); ``[]``: none.
    """

    image: str
    resources: dict
    node_selector: dict[str, str]
    tolerations: list[dict]
    volumes: list[dict]
    volume_mounts: list[dict]
    init_containers: list[dict]
    env: dict[str, str]
    working_dir: str
    pod_security_context: dict
    container_security_context: dict
    labels: dict[str, str]
    annotations: dict[str, str]
    node_affinity: list[dict] = field(default_factory=list)
    image_pull_secrets: list[dict] = field(default_factory=list)

    @property
    def gpu(self) -> dict[str, str]:
        """The GPU extended resources of the limits, e.g. ``{"nvidia.com/gpu": "1"}``."""
        return {k: v for k, v in self.resources.get("limits", {}).items() if k not in (CPU, MEMORY)}


def _id(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0 or None, not {value!r}")
    return value


def build_workload(
    *,
    username: str,
    profile: profiles_mod.Profile,
    settings: LLMPlatform,
    uid: int | None = None,
    gid: int | None = None,
    fs_gid: int | None = None,
    image: str | None = None,
) -> Workload:
    """Build the workload of one user and profile (pure; nothing is read or written).

    Args:
        username: the hub's normalised username (any Unicode; made safe by
            :func:`llmspawner.storage.user_slug` where Kubernetes needs a name).
        profile: a validated profile (GPU share, CPU cores, memory bytes, selector,
            tolerations, image).
        settings: the platform settings: ``gpu_cluster``, ``storage_claim_name``,
            ``mlflow_tracking_uri``, ``mlflow_experiment_template``, ``image``,
            ``image_pull_secrets``, and
            ``uid``/``gid``/``fs_gid`` where the arguments are ``None``.
        uid: the containers' ``runAsUser``; ``None``: ``settings.uid``. When a uid results, the
            owner init container gives the user's folder to ``uid:<fs_gid, else uid>``
            (as the spawner always did; :func:`llmspawner.storage.build_owner_init_container`).
        gid: the containers' ``runAsGroup``; ``None``: ``settings.gid``.
        fs_gid: the pod's ``fsGroup``; ``None``: ``settings.fs_gid``.
        image: the image when the profile names none, instead of ``settings.image`` (the
            queue's ``LLMQueue.image``); used by every container, the owner init container
            included. ``None``: ``settings.image``.

    Returns:
        A new :class:`Workload`.

    Raises:
        ValueError: no image (neither the profile's nor ``LLMPlatform.image``), a bad
            ``storage_claim_name``, an empty ``username``, a negative/non-integer id, or
            uid 0 (root; the containers have ``runAsNonRoot``).
    """
    uid = _id("uid", settings.uid if uid is None else uid)
    if uid == 0:
        raise ValueError(
            "uid must not be 0: servers and Jobs never run as root (runAsNonRoot); set "
            "LLMPlatform.uid / KubeSpawner.uid (z2jh: singleuser.uid) to the image's user, "
            "e.g. 1000"
        )
    gid = _id("gid", settings.gid if gid is None else gid)
    fs_gid = _id("fs_gid", settings.fs_gid if fs_gid is None else fs_gid)
    image = profile.image or image or settings.image
    if not image:
        raise ValueError(
            f"no image for profile {profile.slug!r}: set LLMPlatform.image (or the spawner's "
            "image) or the profile's 'image'"
        )
    cluster = settings.gpu_cluster
    place = placement(profile, cluster)
    user_storage = storage.build_user_storage(
        username=username, claim_name=settings.storage_claim_name
    )
    init_containers = []
    if uid is not None:
        init_containers.append(
            storage.build_owner_init_container(
                username=username,
                image=image,
                uid=uid,
                gid=fs_gid if fs_gid is not None else uid,
            )
        )
    env = {"HOME": user_storage.home}
    env.update(
        tracking.tracking_env(
            tracking_uri=settings.mlflow_tracking_uri,
            experiment=settings.experiment_name(username),
        )
    )
    env[MODELS_DIR_ENV] = storage.models_path()
    env["HF_HOME"] = f"{user_storage.home}/{HF_HOME_DIR}"
    env.update(OPENMP_ENV)
    if settings.hf_offline:
        env.update(HF_OFFLINE_ENV)
    shm_volume_, shm_mount = shm_volume(shm_size(profile))
    return Workload(
        image=image,
        resources=resources(profile, cluster),
        node_selector=dict(place.node_selector),
        tolerations=list(place.tolerations),
        volumes=[*user_storage.volumes, shm_volume_],
        volume_mounts=[*user_storage.volume_mounts, shm_mount],
        init_containers=init_containers,
        env=env,
        working_dir=user_storage.home,
        pod_security_context=pod_security_context(fs_gid=fs_gid),
        container_security_context=container_security_context(uid=uid, gid=gid),
        labels={LABEL_USER: storage.user_slug(username), LABEL_PROFILE: profile.slug},
        annotations={ANNOTATION_USERNAME: username},
        node_affinity=list(place.node_affinity),
        image_pull_secrets=[{"name": name} for name in settings.image_pull_secrets],
    )
