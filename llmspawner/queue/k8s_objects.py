"""The Kubernetes objects of a queue job: its name, its ConfigMap and its Job.

Pure, keyword-only builders in the manner of kubespawner's ``objects.py``: dicts in, manifest
dicts out, no I/O, inputs never modified. The Job shares the user's server's GPU resources
(:func:`llmspawner.profiles.gpu_resources`), storage (:func:`llmspawner.storage.build_user_storage`)
and MLflow environment (:func:`llmspawner.tracking.tracking_env`), so a job sees what the user
sees in LlamaBoard and reports to the same experiment.

Job fields follow https://kubernetes.io/docs/concepts/workloads/controllers/job/ (pod failure
handling with ``restartPolicy: Never`` and ``backoffLimit``, ``activeDeadlineSeconds``,
``ttlSecondsAfterFinished``, ``suspend``); the Kueue mode follows
https://kueue.sigs.k8s.io/docs/tasks/run/jobs/ (a suspended Job labelled with its LocalQueue).
"""

from __future__ import annotations

import copy
import json

import yaml

from ..profiles import ClusterGPUConfig, Profile, gpu_resources
from ..storage import build_user_storage, user_slug
from ..tracking import tracking_env
from .admission import PRIORITY_CLASSES

#: ``app.kubernetes.io/managed-by`` of every object the queue creates (list/watch selector).
MANAGED_BY = "llm-queue"
#: Label keys and annotation keys.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_USER = "llmspawner.io/user"
LABEL_JOB_ID = "llmspawner.io/job-id"
LABEL_PROFILE = "llmspawner.io/profile"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_USERNAME = "llmspawner.io/username"
#: Where the config is mounted in the pod, and its key in the ConfigMap.
CONFIG_DIR = "/etc/llm-queue"
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
#: The training container's name.
CONTAINER_NAME = "train"
#: Prefix of every job's name.
NAME_PREFIX = "llm-job-"

_MAX_NAME = 63
_CONFIG_VOLUME = "llm-queue-config"


def job_name(username: str, job_id: int) -> str:
    """Return the Kubernetes name of a job's Job and ConfigMap: ``llm-job-<slug>-<id>``.

    The name is a DNS-1123 label of at most 63 characters, because the Job controller copies
    it into the ``batch.kubernetes.io/job-name`` label of its pods (label values have at most
    63 characters). A long slug is cut (and a trailing ``-`` removed); the id is never cut, so
    names of different job ids never collide: the id is everything after the last ``-``.

    Args:
        username: the hub's normalised username (made safe by
            :func:`llmspawner.storage.user_slug`).
        job_id: the job's database id (positive; never reused).

    Raises:
        ValueError: if ``job_id`` is not a positive integer, or ``username`` is empty.
    """
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
        raise ValueError(f"job_id must be a positive integer, not {job_id!r}")
    suffix = f"-{job_id}"
    room = _MAX_NAME - len(NAME_PREFIX) - len(suffix)
    slug = user_slug(username)[:room].rstrip("-")
    return f"{NAME_PREFIX}{slug}{suffix}"


def _labels(*, username: str, job_id: int, profile: str | None = None) -> dict[str, str]:
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_USER: user_slug(username),
        LABEL_JOB_ID: str(job_id),
    }
    if profile is not None:
        labels[LABEL_PROFILE] = profile
    return labels


def build_config_map(
    *, name: str, namespace: str, job_id: int, username: str, config: dict
) -> dict:
    """Build the ConfigMap holding a job's prepared training config.

    Args:
        name: the object's name (use :func:`job_name`).
        namespace: the namespace of the Job.
        job_id: the job's database id (label ``llmspawner.io/job-id``).
        username: the owner's hub name (slug label, raw name in an annotation).
        config: the prepared config (:func:`llmspawner.queue.lf_config.prepare_config`).

    Returns:
        A ConfigMap dict with the config as YAML under key ``config.yaml``, in the config's
        key order. Its ``ownerReferences`` are added by the backend once the Job exists
        (:func:`owner_reference`), so that deleting the Job deletes it.
    """
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": _labels(username=username, job_id=job_id),
            "annotations": {ANNOTATION_USERNAME: username},
        },
        "data": {
            CONFIG_KEY: yaml.safe_dump(
                config, sort_keys=False, allow_unicode=True, default_flow_style=False
            )
        },
    }


def owner_reference(job: dict) -> dict:
    """Return an ``ownerReference`` to a created Job, for its ConfigMap.

    The garbage collector deletes the ConfigMap when the Job is deleted (also by its TTL)
    (https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents).
    ``blockOwnerDeletion`` is left out: setting it needs permission on the Job's finalizers.

    Args:
        job: the Job as the API server returned it (``metadata.name`` and ``metadata.uid``).

    Raises:
        ValueError: if the Job has no ``uid`` (it was not created yet).
    """
    metadata = job.get("metadata") or {}
    if not metadata.get("uid") or not metadata.get("name"):
        raise ValueError("the Job has no metadata.uid/name: pass the Job the API server returned")
    return {
        "apiVersion": job.get("apiVersion") or "batch/v1",
        "kind": job.get("kind") or "Job",
        "name": metadata["name"],
        "uid": metadata["uid"],
    }


def _cpu(cores: float) -> str:
    """CPU cores as a Kubernetes quantity: ``"4"``, ``"500m"``."""
    if float(cores).is_integer():
        return str(int(cores))
    return f"{round(cores * 1000)}m"


def _resources(profile: Profile, cluster: ClusterGPUConfig) -> dict:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if profile.cpu_guarantee is not None:
        requests["cpu"] = _cpu(profile.cpu_guarantee)
    if profile.cpu_limit is not None:
        limits["cpu"] = _cpu(profile.cpu_limit)
    if profile.mem_guarantee is not None:
        requests["memory"] = str(profile.mem_guarantee)
    if profile.mem_limit is not None:
        limits["memory"] = str(profile.mem_limit)
    for name, count in gpu_resources(profile.gpu, cluster).limits.items():
        requests[name] = limits[name] = str(count)
    resources = {}
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests
    return resources


def build_job(
    *,
    name: str,
    namespace: str,
    job_id: int,
    username: str,
    profile: Profile,
    cluster: ClusterGPUConfig,
    image: str,
    claim_name: str,
    config_map: str,
    tracking_uri: str,
    experiment: str,
    priority: str,
    backoff_limit: int = 0,
    ttl_seconds_after_finished: int = 86400,
    kueue_queue: str | None = None,
    service_account: str | None = None,
    pod_security_context: dict | None = None,
) -> dict:
    """Build the Job that runs ``llamafactory-cli train`` on a job's config.

    Args:
        name: the Job's name (use :func:`job_name`).
        namespace: its namespace.
        job_id: the job's database id (label ``llmspawner.io/job-id``, env ``LLMSPAWNER_JOB_ID``,
            MLflow tag ``llmspawner.job_id``).
        username: the owner's hub name: slug label, raw name in an annotation, storage.
        profile: the job's GPU profile: GPU share, CPU (cores) and memory (bytes) requests and
            limits, node selector, tolerations, image (when set, it wins over ``image``),
            ``max_runtime`` (seconds) as ``activeDeadlineSeconds`` when set.
        cluster: how the cluster's GPUs are advertised.
        image: the training image (with ``llamafactory-cli``), used unless the profile has one.
        claim_name: the shared PVC (mounted as in the user's server).
        config_map: the ConfigMap with the config (:func:`build_config_map`), mounted read-only
            at ``/etc/llm-queue``.
        tracking_uri: MLflow's URL; empty switches tracking off (no ``MLFLOW_*`` env).
        experiment: the user's MLflow experiment name (:func:`llmspawner.tracking.experiment_name`).
        priority: ``high``, ``normal`` or ``low``; the PriorityClass ``llm-<priority>``.
        backoff_limit: pod retries before the Job fails (``0``: the first failure is final).
        ttl_seconds_after_finished: seconds a finished Job (and its pods, logs) is kept.
        kueue_queue: a Kueue LocalQueue name: the Job is created suspended and labelled with
            it, and Kueue admits it. ``None``: the queue's own admission (not suspended).
        service_account: the pod's ServiceAccount; ``None``: the namespace's default, with its
            token not mounted (training needs no Kubernetes API).
        pod_security_context: the pod's ``securityContext`` (e.g. ``{"runAsUser": 1000,
            "fsGroup": 100}``, as z2jh's ``singleuser.uid``/``fsGid``), so that files written
            by the job belong to the same user as the server's; ``None``: the image's user.

    Returns:
        A new ``batch/v1`` Job dict.

    Raises:
        ValueError: naming the argument, for an unknown priority, a negative ``backoff_limit``
            or ``ttl_seconds_after_finished``, or a bad ``claim_name``.
    """
    if priority not in PRIORITY_CLASSES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITY_CLASSES)}, not {priority!r}")
    for arg, value in (
        ("backoff_limit", backoff_limit),
        ("ttl_seconds_after_finished", ttl_seconds_after_finished),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{arg} must be a whole number >= 0, not {value!r}")
    storage = build_user_storage(username=username, claim_name=claim_name)
    gpu = gpu_resources(profile.gpu, cluster)
    labels = _labels(username=username, job_id=job_id, profile=profile.slug)
    annotations = {ANNOTATION_USERNAME: username}

    env = {
        "HOME": storage.home,
        "LLMSPAWNER_JOB_ID": str(job_id),
        **tracking_env(tracking_uri=tracking_uri, experiment=experiment),
    }
    if tracking_uri:
        # Read by transformers' MLflowCallback (set_tags), so the run can be found by job id.
        env["MLFLOW_TAGS"] = json.dumps({"llmspawner.job_id": str(job_id)})

    container = {
        "name": CONTAINER_NAME,
        "image": profile.image or image,
        "command": ["llamafactory-cli", "train", CONFIG_PATH],
        "workingDir": storage.home,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "volumeMounts": [
            *storage.volume_mounts,
            {"name": _CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        ],
    }
    resources = _resources(profile, cluster)
    if resources:
        container["resources"] = resources
    pod_spec: dict = {
        "restartPolicy": "Never",
        "priorityClassName": PRIORITY_CLASSES[priority],
        "containers": [container],
        "volumes": [
            *storage.volumes,
            {"name": _CONFIG_VOLUME, "configMap": {"name": config_map}},
        ],
    }
    node_selector = {**profile.node_selector, **gpu.node_selector}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = [*gpu.tolerations, *profile.tolerations]
    if tolerations:
        pod_spec["tolerations"] = copy.deepcopy(tolerations)
    if service_account is None:
        pod_spec["automountServiceAccountToken"] = False
    else:
        pod_spec["serviceAccountName"] = service_account
    if pod_security_context:
        pod_spec["securityContext"] = copy.deepcopy(pod_security_context)

    job_labels = dict(labels)
    spec: dict = {"backoffLimit": backoff_limit}
    if profile.max_runtime:
        spec["activeDeadlineSeconds"] = profile.max_runtime
    spec["ttlSecondsAfterFinished"] = ttl_seconds_after_finished
    if kueue_queue is not None:
        job_labels[LABEL_KUEUE_QUEUE] = kueue_queue
        spec["suspend"] = True
    spec["template"] = {
        "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
        "spec": pod_spec,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": job_labels,
            "annotations": dict(annotations),
        },
        "spec": spec,
    }


#: Values of the queue's PriorityClasses (higher runs first when the scheduler must choose).
#: Below the default of 0 for nothing: interactive servers have no class (priority 0), so
#: a queued training never preempts a user's LlamaBoard (``preemptionPolicy: Never``).
PRIORITY_CLASS_VALUES = {"llm-high": 1000, "llm-normal": 100, "llm-low": 10}


def build_priority_classes() -> list[dict]:
    """The ``llm-high``, ``llm-normal`` and ``llm-low`` PriorityClasses the queue's Jobs use
    (https://kubernetes.io/docs/concepts/scheduling-eviction/pod-priority-preemption/) (pure).

    Returns:
        New ``scheduling.k8s.io/v1`` PriorityClass dicts, highest first.
    """
    return [
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "llm-queue"}},
            "value": value,
            "preemptionPolicy": "Never",
            "globalDefault": False,
            "description": f"llm-queue training jobs of priority {name.removeprefix('llm-')}",
        }
        for name, value in PRIORITY_CLASS_VALUES.items()
    ]
