"""Admission's read-and-decide step, runnable in the queue's worker process.

:func:`plan_admission` reads the queued and active jobs and the users' limits and calls
:func:`llmspawner.queue.admission.decide`; :class:`~llmspawner.queue.control.ControlLoop`
runs it on the event loop (SQLite in memory) or, through :func:`plan_admission_at`, in the
planning worker process (:func:`plan_in_worker`), so that a pass over 10,000 queued jobs
(tens of ms of CPU: SQLAlchemy rows, then the policy) does not block the event loop: only the
decision comes back. A process, not a thread: a thread would hold the GIL the loop needs (see
:mod:`llmspawner.queue.limits`); its own process, not the config checks' worker, so that
passes and submits do not wait for each other. This module imports little (SQLAlchemy, the
models, the policy; never kubespawner: ``tests/unit/test_queue_planning_imports.py``), so the
worker starts in about a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import multiprocessing
import threading
from array import array
from collections.abc import Callable

from sqlalchemy import String, bindparam, select, type_coerce
from sqlalchemy.orm import sessionmaker

from . import admission
from .models import Job, UserLimit
from .states import ACTIVE_STATES, QUEUED

#: Seconds an admission plan in the worker process may take (queueing behind config checks
#: included) before the pass fails and is retried.
PLAN_SECONDS = 60.0


def plan_admission(
    sessions,
    *,
    free: dict[str, int | None],
    bound: list[int],
    default_limit: int,
    labels: dict[str, str],
    totals: dict[str, int],
) -> tuple[admission.Decision, list[tuple[int, str]]]:
    """Read the queued and active jobs and the users' limits; decide (:func:`admission.decide`).

    Pure but for the one read-only session; runs on the event loop or, for a database other
    processes can reach, in the worker process (:func:`plan_admission_at`), with the same
    result.

    Args:
        sessions: a session factory of the queue's database.
        free: free slices per profile slug now (``None``: a CPU profile); the profiles offered.
        bound: ids of the jobs whose pod holds a slice in the listing ``free`` comes from.
        default_limit: active jobs per user unless the user has a limit.
        labels, totals: for the reasons (see :func:`admission.decide`).

    Returns:
        ``(decision, unknown)``: the :class:`~llmspawner.queue.admission.Decision` and the
        ``(id, profile)`` of queued jobs whose profile is no longer offered.
    """
    bound_ids = set(bound)
    limits = UserLimit.__table__.c
    with sessions() as db:
        # Core statements on the session's connection: the ORM's row handling would cost
        # about as much again as the read itself over 10,000 rows.
        connection = db.connection()
        rows = connection.execute(_ROWS, {"states": [QUEUED, *ACTIVE_STATES]}).all()
        user_limits = dict(connection.execute(select(limits.user, limits.max_running)).all())
    global _queued_memo
    queued, active, unknown = [], [], []
    memo, seen = _queued_memo, {}
    for job_id, user, profile, priority, submitted_at, state in rows:
        if state != QUEUED:
            active.append(admission.ActiveJob(job_id, user, profile, job_id in bound_ids))
        elif profile not in free:
            unknown.append((job_id, profile))
        else:
            key = (job_id, user, profile, priority, submitted_at)
            job = memo.get(key)
            if job is None:
                job = admission.QueuedJob(
                    job_id, user, profile, priority, to_epoch(_as_datetime(submitted_at))
                )
            seen[key] = job
            queued.append(job)
    _queued_memo = seen
    decision = admission.decide(
        queued,
        active,
        free=free,
        user_limits=user_limits,
        default_limit=default_limit,
        labels=labels,
        totals=totals,
    )
    return decision, unknown


#: The queued jobs of the last plan in this process, by the values they were made from (id,
#: user, profile, priority and submission time, as read). A row read again with the same
#: values gets the same :class:`~llmspawner.queue.admission.QueuedJob`, a pure function of
#: them, so the decision is the one a fresh conversion gives, while a pass after a burst
#: converts only the new rows (measured with the raw read of :data:`_ROWS`: the plan's CPU
#: 0.61x at 1,000 queued jobs, 0.88x at 10,000, same decisions). Replaced by each plan's
#: rows: it never holds a row the database no longer has, and it never stands in for a
#: read (every pass reads every queued row again; tests/integration/test_queue_db.py).
_queued_memo: dict[tuple, admission.QueuedJob] = {}

_JOBS = Job.__table__.c
#: The queued and active jobs' columns that admission needs (one statement, compiled once).
#: ``submitted_at`` as the driver returns it (SQLite: its text; PostgreSQL: a ``datetime``),
#: without SQLAlchemy's per-row conversion of SQLite's text (a third of the read's CPU):
#: converted by :func:`_as_datetime`, only for rows not seen by the last plan.
_ROWS = select(
    _JOBS.id,
    _JOBS.user,
    _JOBS.profile,
    _JOBS.priority,
    type_coerce(_JOBS.submitted_at, String),
    _JOBS.state,
).where(_JOBS.state.in_(bindparam("states", expanding=True)))


def _as_datetime(value) -> datetime.datetime:
    """A ``submitted_at`` read by :data:`_ROWS` as the naive UTC ``datetime`` stored.

    SQLite holds SQLAlchemy's text form (``2024-01-01 00:00:00.000000``,
    https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#sqlalchemy.dialects.sqlite.DATETIME),
    which :meth:`datetime.datetime.fromisoformat` reads; PostgreSQL's driver returns a
    ``datetime`` already.

    Raises:
        ValueError: text that is not an ISO 8601 date and time.
    """
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value)
    return value


def to_epoch(dt: datetime.datetime) -> float:
    """A naive UTC datetime as seconds since the epoch (as
    :func:`llmspawner.queue.status.to_epoch`, which this module does not import: ``status``
    imports kubespawner, through ``disruption`` and ``k8s_objects``, and the planning worker
    would import all of it at its start: 8 s of CPU on a loaded 2-core machine)."""
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


_plan_engines: dict[str, object] = {}


def plan_admission_at(url: str, plan: Callable) -> tuple:
    """``plan(sessions)`` on the database at ``url``, with one engine per URL kept by the
    process (the worker's side of :meth:`ControlLoop._admit`), packed (:func:`pack`)."""
    from . import db as db_mod

    sessions = _plan_engines.get(url)
    if sessions is None:
        sessions = _plan_engines[url] = sessionmaker(db_mod.engine_for(url), expire_on_commit=False)
    decision, unknown = plan(sessions)
    return pack(decision), unknown


def pack(decision: admission.Decision) -> tuple:
    """A :class:`~llmspawner.queue.admission.Decision` as arrays, for the pipe from the worker.

    Its ``positions`` and ``reasons`` have an entry per queued job (10,000), and unpickling two
    such dicts took 3.7 ms of the service's result thread, holding the GIL the event loop
    needs (longer when that thread lost its core meanwhile). As machine-integer arrays (and
    the few distinct reasons once) it unpickles in microseconds; :func:`unpack` builds the
    dicts in C (``dict(zip(...))``), on the loop, in about a millisecond.

    Returns:
        ``(admit, ids, positions, reason ids, reasons, reason of each)``: :func:`unpack`'s input.
    """
    ids = array("q", decision.positions)
    places = array("q", decision.positions.values())
    texts: dict[str, int] = {}
    reason_ids = array("q", decision.reasons)
    which = array("q", (texts.setdefault(r, len(texts)) for r in decision.reasons.values()))
    return decision.admit, ids, places, reason_ids, list(texts), which


def unpack(packed: tuple) -> admission.Decision:
    """The :class:`~llmspawner.queue.admission.Decision` that :func:`pack` packed (equal)."""
    return admission.Decision(tuple(packed[0]), _positions(packed), _reasons(packed))


def _positions(packed: tuple) -> dict[int, int]:
    _, ids, places, *_ = packed
    return dict(zip(ids, places, strict=True))


def _reasons(packed: tuple) -> dict[int, str]:
    *_, reason_ids, texts, which = packed
    return dict(zip(reason_ids, map(texts.__getitem__, which), strict=True))


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # "spawn": the service runs threads, which fork would copy in an unknown state.
            _pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn")
            )
        return _pool


async def plan_in_worker(
    url: str, plan: Callable, *, seconds: float = PLAN_SECONDS
) -> tuple[admission.Decision, list]:
    """:func:`plan_admission_at` ``(url, plan)`` in the planning worker process.

    Raises:
        TimeoutError: no answer within ``seconds`` (the worker's start included).
        concurrent.futures.process.BrokenProcessPool: the worker died (the next call
            starts a new one).
        Exception: whatever the plan raises (e.g. the database cannot be reached).
    """
    global _pool
    pool = _executor()
    future = asyncio.get_running_loop().run_in_executor(pool, plan_admission_at, url, plan)
    try:
        packed, unknown = await asyncio.wait_for(future, seconds)
    except concurrent.futures.process.BrokenProcessPool:
        with _pool_lock:
            if _pool is pool:
                _pool = None
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    # on the loop, in two steps of about a millisecond each
    positions = _positions(packed)
    await asyncio.sleep(0)
    return admission.Decision(tuple(packed[0]), positions, _reasons(packed)), unknown


def start_worker() -> None:
    """Start the planning worker now (in the background), not at the first pass."""
    _executor().submit(int)


def shutdown() -> None:
    """Stop the planning worker within about 3 s, even one still starting (the next plan
    starts a new one; :func:`.pools.stop_pool`)."""
    from .pools import stop_pool

    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    stop_pool(pool)
