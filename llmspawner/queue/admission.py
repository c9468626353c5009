"""Admission: which queued jobs start now, and where the others stand in line.

One pure function, :func:`decide`, called on every admission pass with what the database and
the cluster say now. The policy, in this order:

1. **Capacity per profile.** A GPU profile has ``free[profile]`` slices now, as
   :func:`llmspawner.capacity.capacities` counts them from Nodes and bound Pods (interactive
   servers and running Job pods alike); each admitted job whose pod is not counted there yet
   (``ActiveJob.has_pod`` false) still holds one. A CPU profile (``None``) has no GPU limit.
   A job that does not fit its profile waits, and does not hold up jobs of other profiles.
2. **Per-user limit** of active (admitted or running) jobs: ``user_limits[user]``, else
   ``default_limit``.
3. **Priority**: ``high`` before ``normal`` before ``low`` (the Job's PriorityClass is
   ``llm-<priority>``, so the scheduler agrees).
4. **Fair share**: among jobs of one priority, users with fewer active jobs first, counting the
   jobs admitted earlier in the same pass (so free slices go round the users).
5. **Submission order** (then job id).

A waiting job's *position* is its 1-based place in its profile's line, in the order in which
this policy would admit that profile's waiting jobs if slices freed one at a time: priority,
then the owner's active jobs plus the owner's waiting jobs ahead of it in that line, then
submission order. Jobs held by their owner's limit keep their place in the line.

Profiles that draw on the same GPUs (e.g. two profiles with the same share on the same nodes)
are counted separately, as the spawn form counts them; admitting into one can make the other's
pod wait, Pending, in the scheduler until a slice frees. Under Kueue (``kueue`` mode) this
module is not used: Kueue admits the suspended Jobs.

Cost: O(n log n) in the queued jobs; about 10 ms of CPU time for 10,000 jobs from 100 users on
4 profiles (``tests/unit/test_queue_admission.py``, ``benchmarks/queue_throughput.py``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .states import PRIORITIES, PRIORITY_CLASSES

__all__ = ["PRIORITIES", "PRIORITY_CLASSES", "ActiveJob", "Decision", "QueuedJob", "decide"]

_RANK = {p: i for i, p in enumerate(PRIORITIES)}


@dataclass(frozen=True)
class QueuedJob:
    """A job waiting in the queue.

    Attributes:
        id: the job's database id.
        user: the owner's hub name.
        profile: the profile slug it asks for.
        priority: one of :data:`PRIORITIES`.
        submitted_at: submission time, seconds since the epoch (any monotonic scale works).
    """

    id: int
    user: str
    profile: str
    priority: str
    submitted_at: float


@dataclass(frozen=True)
class ActiveJob:
    """A job that holds a slice: admitted (Job created or about to be) or running.

    Attributes:
        id: the job's database id.
        user: the owner's hub name.
        profile: its profile slug.
        has_pod: whether its pod is already counted in ``free`` (bound to a node and not
            terminated, the pods :func:`llmspawner.capacity.profile_capacity` counts). False
            while the Job or its pod is still being created or is Pending.
    """

    id: int
    user: str
    profile: str
    has_pod: bool


@dataclass(frozen=True)
class Decision:
    """The outcome of one admission pass.

    Attributes:
        admit: ids of the jobs to admit now, in admission order.
        positions: 1-based place of every still-queued job in its profile's line.
        reasons: a plain sentence for every still-queued job, saying what it waits for.
    """

    admit: tuple[int, ...]
    positions: dict[int, int]
    reasons: dict[int, str]


def decide(
    queued: Iterable[QueuedJob],
    active: Iterable[ActiveJob],
    *,
    free: Mapping[str, int | None],
    user_limits: Mapping[str, int],
    default_limit: int = 1,
    labels: Mapping[str, str] | None = None,
    totals: Mapping[str, int] | None = None,
) -> Decision:
    """Decide which queued jobs to admit now (see the module docstring for the policy).

    Args:
        queued: the jobs in state ``queued``, in any order.
        active: the jobs in state ``admitted`` or ``running``.
        free: free slices now per profile slug (``Capacity.free``); ``None`` for a CPU
            profile. A profile missing here is not offered any more: its jobs wait.
        user_limits: per-user maximum of active jobs set by admins (>= 0).
        default_limit: the maximum for users not in ``user_limits``.
        labels: optional GPU label per profile for the reasons, e.g. ``{"medium": "½ GPU"}``
            (``Profile.gpu.label``).
        totals: optional slice count per profile (``Capacity.total``) for the reasons.

    Returns:
        A :class:`Decision`. Its invariant: no job waits while its profile has room and its
        owner is under the limit.

    Raises:
        ValueError: if a queued job's priority is not one of :data:`PRIORITIES`.
    """
    labels = labels or {}
    totals = totals or {}
    room: dict[str, int | None] = {p: None if n is None else max(0, n) for p, n in free.items()}
    count: dict[str, int] = {}
    for a in active:
        count[a.user] = count.get(a.user, 0) + 1
        if not a.has_pod and room.get(a.profile) is not None:
            room[a.profile] = max(0, room[a.profile] - 1)

    by_user: dict[str, list[QueuedJob]] = {}
    rank = _RANK
    for job in queued:
        if job.priority not in rank:
            raise ValueError(
                f"job {job.id}: priority must be one of {', '.join(PRIORITIES)}, "
                f"not {job.priority!r}"
            )
        lst = by_user.get(job.user)
        if lst is None:
            by_user[job.user] = [job]
        else:
            lst.append(job)
    for lst in by_user.values():
        lst.sort(key=lambda j: (rank[j.priority], j.submitted_at, j.id))

    def limit_of(user: str) -> int:
        return user_limits.get(user, default_limit)

    # Greedy: each user offers its best job that still fits; the heap picks the best offer.
    open_profiles = sum(1 for n in room.values() if n is None or n > 0)
    heap = []
    for user, lst in by_user.items():
        if count.get(user, 0) < limit_of(user):
            j = lst[0]
            heap.append((rank[j.priority], count.get(user, 0), j.submitted_at, j.id, user))
    heapq.heapify(heap)
    next_index = dict.fromkeys(by_user, 0)
    admit: list[int] = []
    while heap and open_profiles:
        _, _, _, offered, user = heapq.heappop(heap)
        lst = by_user[user]
        i, n = next_index[user], len(lst)
        while i < n:
            p = lst[i].profile
            if p in room and (room[p] is None or room[p] > 0):
                break
            i += 1  # its profile is full for the rest of this pass: it waits
        next_index[user] = i
        if i == n:
            continue
        job = lst[i]
        c = count.get(user, 0)
        if job.id != offered:  # the offer was stale: offer the job that fits now
            heapq.heappush(heap, (rank[job.priority], c, job.submitted_at, job.id, user))
            continue
        admit.append(job.id)
        count[user] = c + 1
        if room[job.profile] is not None:
            room[job.profile] -= 1
            if room[job.profile] == 0:
                open_profiles -= 1
        next_index[user] = i + 1
        if c + 1 < limit_of(user) and i + 1 < n:
            j = lst[i + 1]
            heapq.heappush(heap, (rank[j.priority], c + 1, j.submitted_at, j.id, user))

    # Lines per profile, reasons.
    admitted = set(admit)
    lines: dict[str, list[tuple]] = {}
    reasons: dict[int, str] = {}
    full_reason: dict[str, str] = {}
    for user, lst in by_user.items():
        c = count.get(user, 0)
        limit = limit_of(user)
        if c >= limit:
            user_reason = _limit_reason(c, limit)
        ahead: dict[str, int] = {}
        for job in lst:
            if job.id in admitted:
                continue
            p = job.profile
            k = ahead.get(p, 0)
            ahead[p] = k + 1
            line = lines.get(p)
            key = (rank[job.priority], c + k, job.submitted_at, job.id)
            if line is None:
                lines[p] = [key]
            else:
                line.append(key)
            if p not in room:
                reasons[job.id] = (
                    f"profile {p!r} is not offered any more; cancel this job and submit it "
                    f"again with one of: {', '.join(sorted(room))}"
                )
            elif c >= limit:
                reasons[job.id] = user_reason
            else:
                reason = full_reason.get(p)
                if reason is None:
                    reason = full_reason[p] = _full_reason(p, labels.get(p), totals.get(p))
                reasons[job.id] = reason
    positions: dict[int, int] = {}
    for line in lines.values():
        line.sort()
        for place, key in enumerate(line, 1):
            positions[key[3]] = place
    return Decision(admit=tuple(admit), positions=positions, reasons=reasons)


def _limit_reason(active: int, limit: int) -> str:
    if limit <= 0:
        return "you may not run jobs now (your limit is 0); ask an admin to raise it"
    jobs = "job" if active == 1 else "jobs"
    return f"you already have {active} running {jobs} (your limit is {limit})"


def _full_reason(profile: str, label: str | None, total: int | None) -> str:
    slice_ = f"{label} slice" if label else "slice"
    reason = f"waiting for a free {slice_} of profile {profile}"
    if total is None:
        return reason
    if total == 0:
        return f"{reason}: the cluster has none now"
    return f"{reason}: {total} in use"
