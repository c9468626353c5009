"""Interrupted queue jobs: disruptions, deleted pods and priority preemption. Pure.

A queue job's pod can end without the training failing: an eviction, a preemption by the
scheduler, a node drain (the pod gets the condition ``DisruptionTarget``,
https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions),
a person deleting the pod (no condition: the pod fails with the SIGTERM/SIGKILL exit code and
is removed) or deleting the Job, or the queue preempting it for a ``high`` job. None of these
is the job's failure. The control loop (:mod:`llmspawner.queue.control`) uses these rules:

- **Disrupted pod of a live Job** (``DisruptionTarget``): the Job's ``podFailurePolicy``
  (:data:`llmspawner.queue.k8s_objects.POD_FAILURE_POLICY`) makes the Job controller ignore
  the failure and start a replacement pod in the same Job, which resumes from the last
  checkpoint in the same ``output_dir``. The queue counts it (once per pod) and shows
  ``"interrupted: <reason>, requeued (n of N)"``.
- **Pod deleted, or Job deleted**: the Job fails (``backoffLimit: 0``) with no pod left, or is
  gone; the queue requeues the job as a **new Job** (the next attempt's name,
  :func:`llmspawner.queue.k8s_objects.job_name`), counted the same way.
- **Preempted by the queue** (:func:`choose_preemptions`): its Job is deleted and it goes back
  to its place in the queue as a new Job later; not counted against the cap (a policy, not a
  fault), its reason names the ``high`` job. The ``high`` job is admitted at once (the freed
  slice is its own: :meth:`llmspawner.queue.control.ControlLoop._preempt`). A job is
  preempted at most ``max_preemptions`` times (:func:`capped_waiters`, :func:`capped_sentence`).
- **Removed before a pass saw it** (a disrupted pod gone within one pass interval): the pod
  watch's last state of it gives the reason; a pod listed by an earlier pass and replaced by
  the Job controller is :data:`REMOVED`.
- More than ``max_requeues`` counted interruptions: the job fails with ``Interrupted: ...``.

Logs: the pod of an interrupted attempt is deleted by Kubernetes, with its log; the queue
saves the log while the pod terminates (and before it preempts one), at most
:data:`MAX_SAVED_LOG` bytes (the end), in its database (:class:`~.models.JobPod`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .k8s_objects import DISRUPTION_CONDITION
from .states import PRIORITIES

#: Bytes of an interrupted pod's log that are kept (its end).
MAX_SAVED_LOG = 1024 * 1024
#: The reason of a pod deleted without a disruption condition (``kubectl delete pod``).
POD_DELETED = "its pod was deleted"
#: The reason of a Job that disappeared while it ran (``kubectl delete job``).
JOB_DELETED = "its Kubernetes Job was deleted"
#: The reason of a pod of a live Job that was removed before any pass saw why, and that the
#: Job controller replaced (so its failure was ignored: a ``DisruptionTarget``).
REMOVED = "its pod was disrupted and removed (replaced by the Job controller)"
#: Labels the Job controller puts on its pods (the first on Kubernetes >= 1.27).
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


def disruption_reason(pod: dict) -> str | None:
    """The ``reason`` of the pod's ``DisruptionTarget`` condition (``EvictionByEvictionAPI``,
    ``PreemptionByScheduler``, ``DeletionByTaintManager``, ``TerminationByKubelet``, ...),
    ``"disrupted"`` if it has none, or ``None`` when the pod has no such condition."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == DISRUPTION_CONDITION and c.get("status") == "True":
            return str(c.get("reason") or "disrupted")
    return None


def is_deleting(pod: dict) -> bool:
    """Whether the pod is being deleted (``metadata.deletionTimestamp`` set)."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def pod_job_name(pod: dict) -> str | None:
    """The name of the Job that owns the pod (its Job controller label), or ``None``."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for key in JOB_NAME_LABELS:
        if labels.get(key):
            return labels[key]
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job":
            return ref.get("name")
    return None


def is_finished(pod: dict) -> bool:
    """Whether the pod is done (phase ``Succeeded`` or ``Failed``)."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def interrupted_sentence(reason: str, count: int | None, cap: int) -> str:
    """``"interrupted: <reason>, requeued (n of N)"``; without ``(n of N)`` when ``count`` is
    ``None`` (a preemption, not counted)."""
    if count is None:
        return f"interrupted: {reason}, requeued"
    return f"interrupted: {reason}, requeued ({count} of {cap})"


def too_many_sentence(reason: str, count: int, cap: int) -> str:
    """The failed reason of a job interrupted more often than the cap allows."""
    return (
        f"Interrupted: interrupted {count} times, the last time because {reason}; the limit "
        f"is {cap} requeues (LLMQueue.max_requeues); the log of each attempt is kept "
        "(llmspawner queue logs ID --attempt N)"
    )


@dataclass(frozen=True)
class Running:
    """An active queue job that could be preempted.

    Attributes:
        id: the job id.
        profile: its profile slug.
        priority: ``high``, ``normal`` or ``low``.
        started: when its current attempt started (seconds since the epoch; 0 if unknown).
        holds_slice: its pod holds a GPU slice now.
        preemptions: how many times the queue preempted it already.
    """

    id: int
    profile: str
    priority: str
    started: float
    holds_slice: bool = True
    preemptions: int = 0


@dataclass(frozen=True)
class Waiter:
    """A queued ``high`` job that waits only for a slice of its profile."""

    id: int
    profile: str


def choose_preemptions(
    waiters: Iterable[Waiter],
    running: Iterable[Running],
    *,
    free: Mapping[str, int | None],
    freeing: Mapping[str, int],
    max_preemptions: int | None = None,
) -> list[tuple[int, int]]:
    """Which running queue jobs to preempt for the ``high`` jobs that wait. Pure.

    For each profile with no free slice (``free[p] == 0``; ``None``, a CPU profile, has no
    slices to fight for), as many of its waiting ``high`` jobs as are not covered by slices
    already being freed (``freeing[p]``: pods of the profile that terminate, e.g. a job
    preempted in an earlier pass) each preempt one running queue job of the same profile with
    a lower priority that holds a slice: the lowest priority first, then the most recently
    started. Interactive servers are never candidates (they are not queue jobs), nor are
    ``high`` jobs, nor jobs preempted ``max_preemptions`` times already.

    Args:
        waiters: queued ``high`` jobs that wait for a slice (in queue order).
        running: the active queue jobs.
        free: free slices per profile slug.
        freeing: slices per profile that are being freed now.
        max_preemptions: the most times one job is preempted (``None``: no limit).

    Returns:
        ``[(victim id, for waiter id), ...]``, in the waiters' order.
    """
    return [
        (victim, waiter)
        for waiter, victim, _ in _assign(waiters, running, free, freeing, max_preemptions)
        if victim is not None
    ]


def capped_waiters(
    waiters: Iterable[Waiter],
    running: Iterable[Running],
    *,
    free: Mapping[str, int | None],
    freeing: Mapping[str, int],
    max_preemptions: int,
) -> dict[int, list[Running]]:
    """The waiters of :func:`choose_preemptions` that get no victim only because the jobs
    that could be preempted for them were preempted ``max_preemptions`` times already:
    ``{waiter id: [those jobs]}``. Pure."""
    return {
        waiter: capped
        for waiter, victim, capped in _assign(waiters, running, free, freeing, max_preemptions)
        if victim is None and capped
    }


def _assign(waiters, running, free, freeing, max_preemptions):
    """``[(waiter id, victim id or None, [capped candidates]), ...]`` for the waiters of a
    full profile that no slice being freed covers (see :func:`choose_preemptions`)."""
    rank = {p: i for i, p in enumerate(PRIORITIES)}
    victims: dict[str, list[Running]] = {}
    capped: dict[str, list[Running]] = {}
    for job in running:
        if job.holds_slice and rank[job.priority] > rank["high"]:
            if max_preemptions is not None and job.preemptions >= max_preemptions:
                capped.setdefault(job.profile, []).append(job)
            else:
                victims.setdefault(job.profile, []).append(job)
    for lst in victims.values():
        lst.sort(key=lambda j: (-rank[j.priority], -j.started, -j.id))
    covered = dict(freeing)
    out: list[tuple[int, int | None, list[Running]]] = []
    for waiter in waiters:
        p = waiter.profile
        if free.get(p) != 0:
            continue
        if covered.get(p, 0) > 0:
            covered[p] -= 1
            continue
        if victims.get(p):
            out.append((waiter.id, victims[p].pop(0).id, []))
        else:
            out.append((waiter.id, None, list(capped.get(p, []))))
    return out


def capped_sentence(capped: Iterable[Running], cap: int) -> str:
    """What a ``high`` job that waits says about the jobs not preempted for it because of
    the cap (shown after its waiting reason)."""
    ids = ", ".join(str(j.id) for j in capped)
    return (
        f"job(s) {ids} not preempted for it: preempted {cap} times already, the limit "
        "(LLMQueue.max_preemptions)"
    )
