"""How a Kubernetes Job and its pods become a queue job's state and reason. Pure.

:func:`observe` is what the control loop (:mod:`llmspawner.queue.control`) applies to each
admitted or running job; the time helpers convert between Kubernetes timestamps, the
database's naive UTC datetimes and the API's ISO 8601 strings.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from .disruption import JOB_DELETED, POD_DELETED, disruption_reason, is_deleting
from .states import ADMITTED, FAILED, QUEUED, RUNNING, SUCCEEDED

__all__ = ["JOB_DELETED", "OOM_HINT", "Observed", "iso", "observe", "to_epoch", "to_utc"]

#: What an out-of-memory kill tells the user.
OOM_HINT = (
    "out of memory (OOMKilled): the training needed more memory than the profile's limit"
    "{limit}; try a smaller per_device_train_batch_size (or cutoff_len), or a larger profile"
)

#: Waiting reasons of a container that will never start without a change of the manifest.
_IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


@dataclass(frozen=True)
class Observed:
    """A job's state as read from its Job and newest pod (:func:`observe`).

    Attributes:
        state: ``queued``, ``admitted``, ``running``, ``succeeded`` or ``failed``.
        reason: '' or a sentence (failed: ``"<Code>: <sentence>"``).
        started_at: UTC time the training container started, if known.
        finished_at: UTC time the Job finished, if it did.
        delete: the Job must be deleted (it will never succeed by itself).
        interrupted: for a failed Job that did not fail by itself (its pod was deleted, or
            disrupted without the Job ignoring it): why, and the job is to run again
            (:mod:`llmspawner.queue.disruption`); ``""`` otherwise.
    """

    state: str
    reason: str = ""
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    delete: bool = False
    interrupted: str = ""


def _time(value: str | None) -> datetime.datetime | None:
    """Parse a Kubernetes timestamp (RFC 3339, ``Z``) to a naive UTC datetime."""
    if not value:
        return None
    return datetime.datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")


def _condition(obj: dict, type_: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _container_states(pod: dict) -> list[dict]:
    status = pod.get("status") or {}
    return [
        s.get("state") or {}
        for s in (status.get("initContainerStatuses") or [])
        + (status.get("containerStatuses") or [])
    ]


def _pod_failure(pods: list[dict]) -> tuple[str, str] | None:
    """Return ``(code, sentence)`` of the most telling failure among ``pods``, if any."""
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("reason") == "Evicted":
            return "Evicted", status.get("message") or "the node evicted the pod"
    for pod in pods:
        for state in _container_states(pod):
            term = state.get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                return "OOMKilled", OOM_HINT.format(limit=_memory_limit(pod))
    return None


def _memory_limit(pod: dict) -> str:
    for c in (pod.get("spec") or {}).get("containers") or []:
        limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        if limit:
            return f" ({limit})"
    return ""


def observe(
    job: dict, pods: Iterable[dict], *, now: float, unschedulable_timeout: float
) -> Observed:
    """Map a Job and its pods to the queue's state and reason. Pure.

    Rules (https://kubernetes.io/docs/concepts/workloads/controllers/job/#job-termination-and-cleanup):
    condition ``Complete`` → succeeded; ``Failed`` → failed with its reason, refined from the
    pods (``OOMKilled`` from a container's termination, ``Evicted`` from the pod); a
    container that cannot start (image pull, bad config) → failed and ``delete``; a pod
    unschedulable for longer than ``unschedulable_timeout`` seconds → failed and ``delete``;
    ``spec.suspend`` (Kueue) → queued; a running container → running; otherwise admitted.

    Args:
        job: the Job object (dict, as the API returns it).
        pods: its pods (any order).
        now: the current time (seconds since the epoch).
        unschedulable_timeout: seconds, see above.
    """
    pods = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
    status = job.get("status") or {}
    finished = _time(status.get("completionTime"))
    started = _time(status.get("startTime"))
    if _condition(job, "Complete"):
        return Observed(SUCCEEDED, "", started, finished or to_utc(now))
    failed = _condition(job, "Failed")
    if failed:
        code = failed.get("reason") or "Failed"
        if code != "DeadlineExceeded":
            interrupted = _interruption(pods)
            if interrupted:
                return Observed(FAILED, "", started, to_utc(now), interrupted=interrupted)
        detail = _pod_failure(pods)
        if detail and code != "DeadlineExceeded":
            code, sentence = detail
            if code == "OOMKilled":  # the sentence names it: "out of memory (OOMKilled)"
                return Observed(FAILED, sentence, started, to_utc(now))
        elif code == "DeadlineExceeded":
            limit = (job.get("spec") or {}).get("activeDeadlineSeconds")
            sentence = f"the job ran longer than its limit of {limit} s (the profile's max_runtime)"
        elif code == "BackoffLimitExceeded":
            sentence = _exit_sentence(pods)
        else:
            sentence = failed.get("message") or "the Job failed"
        return Observed(FAILED, f"{code}: {sentence}", started, to_utc(now))
    if (job.get("spec") or {}).get("suspend"):
        return Observed(QUEUED, "waiting for Kueue to admit it")
    pod = pods[0] if pods else None
    if pod is None:
        return Observed(ADMITTED, "creating the pod")
    for state in _container_states(pod):
        waiting = state.get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _IMAGE_ERRORS or reason in _CONFIG_ERRORS:
            code = "ImageError" if reason in _IMAGE_ERRORS else "ConfigError"
            message = waiting.get("message") or reason
            return Observed(FAILED, f"{code}: {reason}: {message}", started, to_utc(now), True)
    scheduled = [
        c for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] == "PodScheduled"
    ]
    if scheduled and scheduled[0].get("status") == "False":
        message = scheduled[0].get("message") or scheduled[0].get("reason") or "not scheduled"
        since = _time(
            scheduled[0].get("lastTransitionTime") or pod["metadata"].get("creationTimestamp")
        )
        if since is not None and now - to_epoch(since) > unschedulable_timeout:
            return Observed(
                FAILED,
                f"Unschedulable: no node can run it for {int(unschedulable_timeout)} s: {message}",
                None,
                to_utc(now),
                True,
            )
        return Observed(ADMITTED, f"waiting to be scheduled: {message}")
    for state in _container_states(pod):
        if "running" in state:
            return Observed(RUNNING, "", _time(state["running"].get("startedAt")) or to_utc(now))
    return Observed(ADMITTED, "starting")


def _interruption(pods: list[dict]) -> str:
    """Why a failed Job's pods did not fail by themselves, or ``""``: a pod with
    ``DisruptionTarget`` (its reason), or no pod left but ones being deleted
    (:data:`~llmspawner.queue.disruption.POD_DELETED`)."""
    for pod in pods:
        reason = disruption_reason(pod)
        if reason:
            return reason
        status = pod.get("status") or {}
        if status.get("reason") == "Evicted":  # the kubelet's node-pressure eviction
            return f"Evicted: {status.get('message') or 'the node evicted the pod'}"
    if all(is_deleting(p) for p in pods):  # none left, or every one being deleted
        return POD_DELETED
    return ""


def _exit_sentence(pods: list[dict]) -> str:
    """The exit of the container that failed: a non-zero exit first, the training's own
    container before init containers (the owner init container ends ``0 (Completed)``)."""
    terms = []
    for pod in pods:
        status = pod.get("status") or {}
        for s in (status.get("containerStatuses") or []) + (
            status.get("initContainerStatuses") or []
        ):
            term = (s.get("state") or {}).get("terminated")
            if term:
                terms.append(term)
    term = next((t for t in terms if t.get("exitCode") != 0), terms[0] if terms else None)
    if term is None:
        return "the training failed; see its logs"
    return (
        f"the training exited with code {term.get('exitCode')}"
        f"{' (' + term['reason'] + ')' if term.get('reason') else ''}; see its logs"
    )


def to_utc(ts: float) -> datetime.datetime:
    """Seconds since the epoch as a naive UTC datetime (the database's form)."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).replace(tzinfo=None)


def to_epoch(dt: datetime.datetime) -> float:
    """A naive UTC datetime as seconds since the epoch."""
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def iso(dt: datetime.datetime | None) -> str | None:
    """A stored (naive UTC) datetime as ISO 8601 with ``Z``, or ``None``."""
    if dt is None:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return dt.isoformat(timespec="seconds") + "Z"
