"""The Kubernetes objects of a queue job: its name, its ConfigMap and its Job.

Pure, keyword-only builders in the manner of kubespawner's ``objects.py``: dicts in, manifest
dicts out, no I/O, inputs never modified. The Job's pod is the user's
:class:`~llmspawner.workload.Workload`, the same one their server is built from (GPU and
CPU/memory resources, selector, tolerations, storage, ``HOME`` and MLflow environment,
security contexts, owner init container), so a job sees what the user sees in LlamaBoard,
writes files as the same user and reports to the same experiment.

Job fields follow https://kubernetes.io/docs/concepts/workloads/controllers/job/ (pod failure
handling with ``restartPolicy: Never`` and ``backoffLimit``, ``activeDeadlineSeconds``,
``ttlSecondsAfterFinished``, ``suspend``); the Kueue mode follows
https://kueue.sigs.k8s.io/docs/tasks/run/jobs/ (a suspended Job labelled with its LocalQueue).
"""

from __future__ import annotations

import copy
import functools
import json

import yaml

from ..storage import user_slug
from ..tracking import JOB_ID_TAG, POD_MLFLOW_ENV
from ..workload import (
    ANNOTATION_USERNAME,
    LABEL_PROFILE,
    LABEL_USER,
    Workload,
    required_node_terms,
)
from .states import PRIORITY_CLASSES, SERVICE_NAME

__all__ = [
    "ANNOTATION_USERNAME",
    "LABEL_JOB_ID",
    "LABEL_KUEUE_QUEUE",
    "LABEL_MANAGED_BY",
    "LABEL_PROFILE",
    "LABEL_USER",
    "MANAGED_BY",
    "build_config_map",
    "build_job",
    "build_priority_classes",
    "job_name",
    "owner_reference",
]

#: ``app.kubernetes.io/managed-by`` of every object the queue creates (list/watch selector).
MANAGED_BY = SERVICE_NAME
#: Label keys (the user's and profile's come from :mod:`llmspawner.workload`).
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB_ID = "llmspawner.io/job-id"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
#: Where the config is mounted in the pod, and its key in the ConfigMap.
CONFIG_DIR = f"/etc/{SERVICE_NAME}"
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
#: The training container's name.
CONTAINER_NAME = "train"
#: The training container's command: ``llamafactory-cli train`` through
#: :mod:`llmspawner.training`, which makes the MLflow run first and uploads the adapter and the
#: logs (the pod's log included) as its artifacts afterwards.
TRAIN_COMMAND = ("python3", "-m", "llmspawner.training", "train", CONFIG_PATH)
#: Prefix of every job's name.
NAME_PREFIX = "llm-job-"
#: The pod condition that marks a disruption (eviction, preemption, node drain, taint
#: manager): https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions
DISRUPTION_CONDITION = "DisruptionTarget"
#: The Job's ``podFailurePolicy``: a pod that fails by disruption is not counted against
#: ``backoffLimit``; the Job controller replaces it, and the new pod resumes from the last
#: checkpoint in the same ``output_dir``
#: (https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy;
#: GA since Kubernetes 1.31, needs ``restartPolicy: Never``).
POD_FAILURE_POLICY = {
    "rules": [
        {"action": "Ignore", "onPodConditions": [{"type": DISRUPTION_CONDITION, "status": "True"}]}
    ]
}

_MAX_NAME = 63
_CONFIG_VOLUME = f"{SERVICE_NAME}-config"


def job_name(username: str, job_id: int, attempt: int = 1) -> str:
    """Return the Kubernetes name of a job's Job and ConfigMap: ``llm-job-<slug>-<id>``, and
    ``llm-job-<slug>-<id>-a<n>`` for its attempt ``n`` >= 2 (a job requeued after its pod was
    deleted or it was preempted runs again as a new Job; see :mod:`llmspawner.queue.control`).

    The name is a DNS-1123 label of at most 63 characters, because the Job controller copies
    it into the ``batch.kubernetes.io/job-name`` label of its pods (label values have at most
    63 characters). A long slug is cut (and a trailing ``-`` removed); the id and the attempt
    are never cut, so names of different job ids or attempts never collide: the id is the last
    all-digit part after a ``-`` (followed by ``-a<n>`` for a later attempt).

    Args:
        username: the hub's normalised username (made safe by
            :func:`llmspawner.storage.user_slug`).
        job_id: the job's database id (positive; never reused).
        attempt: the attempt's number (1, the first, has no suffix).

    Raises:
        ValueError: if ``job_id`` or ``attempt`` is not a positive integer, or ``username``
            is empty.
    """
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
        raise ValueError(f"job_id must be a positive integer, not {job_id!r}")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be a positive integer, not {attempt!r}")
    suffix = f"-{job_id}" + (f"-a{attempt}" if attempt > 1 else "")
    room = _MAX_NAME - len(NAME_PREFIX) - len(suffix)
    slug = _slug(username)[:room].rstrip("-")
    return f"{NAME_PREFIX}{slug}{suffix}"


@functools.lru_cache(maxsize=4096)
def _slug(username: str) -> str:
    """:func:`llmspawner.storage.user_slug`, remembered: a pure function of the name, and each
    queue pass names the Jobs of every active job (a sha256 and regular expressions each)."""
    return user_slug(username)


def _labels(*, username: str, job_id: int) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_USER: user_slug(username),
        LABEL_JOB_ID: str(job_id),
    }


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


def build_job(
    *,
    name: str,
    namespace: str,
    job_id: int,
    workload: Workload,
    config_map: str,
    priority: str,
    active_deadline_seconds: int | None = None,
    backoff_limit: int = 0,
    ttl_seconds_after_finished: int = 86400,
    kueue_queue: str | None = None,
    service_account: str | None = None,
    tracking: bool = True,
    mlflow_token_secret: str | None = None,
) -> dict:
    """Build the Job that runs ``llamafactory-cli train`` on a job's config
    (:data:`TRAIN_COMMAND`).

    The Job's pod is the user's workload (:func:`llmspawner.workload.build_workload`, the same
    one the user's server is built from): image, CPU/memory/GPU resources, node selector,
    tolerations, the user's storage, working directory, ``HOME`` and MLflow environment, the
    pod and container security contexts and the owner init container. On top of it come the
    job's own parts: env ``LLMSPAWNER_JOB_ID``, ``MLFLOW_TAGS`` (``{"llmspawner.job_id": id}``,
    read by transformers' ``MLflowCallback``, so the run can be found by job id) when tracking
    is on, the config volume, the ``managed-by``/``job-id`` labels, the command,
    ``restartPolicy: Never`` with :data:`POD_FAILURE_POLICY` (a disrupted pod is replaced,
    not counted as a failure) and the PriorityClass.

    Args:
        name: the Job's name (use :func:`job_name`).
        namespace: its namespace.
        job_id: the job's database id (label ``llmspawner.io/job-id``, env ``LLMSPAWNER_JOB_ID``,
            MLflow tag ``llmspawner.job_id``).
        workload: the owner's workload for the job's profile.
        config_map: the ConfigMap with the config (:func:`build_config_map`), mounted read-only
            at ``/etc/llm-queue``.
        priority: ``high``, ``normal`` or ``low``; the PriorityClass ``llm-<priority>``
            (:data:`llmspawner.queue.states.PRIORITY_CLASSES`).
        active_deadline_seconds: seconds the Job may run (the profile's ``max_runtime``);
            ``None`` or ``0``: no deadline.
        backoff_limit: pod retries before the Job fails (``0``: the first failure is final).
        ttl_seconds_after_finished: seconds a finished Job (and its pods, logs) is kept.
        kueue_queue: a Kueue LocalQueue name: the Job is created suspended and labelled with
            it, and Kueue admits it. ``None``: the queue's own admission (not suspended).
        service_account: the pod's ServiceAccount; ``None``: the namespace's default, with its
            token not mounted (training needs no Kubernetes API).
        tracking: ``False`` leaves out the workload's ``MLFLOW_*`` environment (and the tags).
        mlflow_token_secret: a Secret whose key ``token`` holds a hub token of the job's user
            for MLflow (:func:`llmspawner.mlflow_hub.build_token_secret`), given to the pod as
            ``MLFLOW_TRACKING_TOKEN`` (``secretKeyRef``) when tracking is on; ``None``: none.

    Returns:
        A new ``batch/v1`` Job dict (``workload`` is not modified).

    Raises:
        ValueError: naming the argument, for an unknown priority, a negative ``backoff_limit``,
            ``ttl_seconds_after_finished`` or ``active_deadline_seconds``.
    """
    if priority not in PRIORITY_CLASSES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITY_CLASSES)}, not {priority!r}")
    for arg, value in (
        ("backoff_limit", backoff_limit),
        ("ttl_seconds_after_finished", ttl_seconds_after_finished),
        ("active_deadline_seconds", active_deadline_seconds or 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{arg} must be a whole number >= 0, not {value!r}")
    w = copy.deepcopy(workload)  # nothing of the workload is shared with the manifest
    env = dict(w.env)
    if not tracking:
        env = {
            k: v for k, v in env.items() if not k.startswith("MLFLOW_") and k not in POD_MLFLOW_ENV
        }
    env["LLMSPAWNER_JOB_ID"] = str(job_id)
    if "MLFLOW_TRACKING_URI" in env:
        env["MLFLOW_TAGS"] = json.dumps({JOB_ID_TAG: str(job_id)})
    labels = {LABEL_MANAGED_BY: MANAGED_BY, **w.labels, LABEL_JOB_ID: str(job_id)}
    env_entries = [{"name": k, "value": v} for k, v in env.items()]
    if mlflow_token_secret and "MLFLOW_TRACKING_URI" in env:
        secret_ref = {"secretKeyRef": {"name": mlflow_token_secret, "key": "token"}}
        env_entries.append({"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": secret_ref})

    container: dict = {
        "name": CONTAINER_NAME,
        "image": w.image,
        "command": list(TRAIN_COMMAND),
        "workingDir": w.working_dir,
        "env": env_entries,
        "volumeMounts": [
            *w.volume_mounts,
            {"name": _CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        ],
    }
    if w.resources:
        container["resources"] = w.resources
    if w.container_security_context:
        container["securityContext"] = w.container_security_context
    pod_spec: dict = {
        "restartPolicy": "Never",
        "priorityClassName": PRIORITY_CLASSES[priority],
    }
    if w.init_containers:
        pod_spec["initContainers"] = w.init_containers
    pod_spec["containers"] = [container]
    pod_spec["volumes"] = [
        *w.volumes,
        {"name": _CONFIG_VOLUME, "configMap": {"name": config_map}},
    ]
    if w.node_selector:
        pod_spec["nodeSelector"] = w.node_selector
    if w.node_affinity:  # e.g. a whole GPU on no MIG slices (profiles.NOT_MIG_SLICES)
        pod_spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": required_node_terms([], w.node_affinity)
                }
            }
        }
    if w.tolerations:
        pod_spec["tolerations"] = w.tolerations
    if service_account is None:
        pod_spec["automountServiceAccountToken"] = False
    else:
        pod_spec["serviceAccountName"] = service_account
    if w.pod_security_context:
        pod_spec["securityContext"] = w.pod_security_context
    if w.image_pull_secrets:  # the server's, so the Job pulls the same image (z2jh's pullSecrets)
        pod_spec["imagePullSecrets"] = [dict(ref) for ref in w.image_pull_secrets]

    job_labels = dict(labels)
    spec: dict = {
        "backoffLimit": backoff_limit,
        "podFailurePolicy": copy.deepcopy(POD_FAILURE_POLICY),
    }
    if active_deadline_seconds:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    spec["ttlSecondsAfterFinished"] = ttl_seconds_after_finished
    if kueue_queue is not None:
        job_labels[LABEL_KUEUE_QUEUE] = kueue_queue
        spec["suspend"] = True
    spec["template"] = {
        "metadata": {"labels": dict(labels), "annotations": dict(w.annotations)},
        "spec": pod_spec,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": job_labels,
            "annotations": dict(w.annotations),
        },
        "spec": spec,
    }


#: Values of the queue's PriorityClasses (higher runs first when the scheduler must choose).
#: Below the default of 0 for nothing: interactive servers have no class (priority 0), so
#: a queued training never preempts a user's LlamaBoard (``preemptionPolicy: Never``).
PRIORITY_CLASS_VALUES = dict(zip(PRIORITY_CLASSES.values(), (1000, 100, 10), strict=True))


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
            "metadata": {"name": name, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
            "value": PRIORITY_CLASS_VALUES[name],
            "preemptionPolicy": "Never",
            "globalDefault": False,
            "description": f"{SERVICE_NAME} training jobs of priority {priority}",
        }
        for priority, name in PRIORITY_CLASSES.items()
    ]
