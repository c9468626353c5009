"""The queue's service operations: submit, cancel, show and list jobs, logs, limits, profiles.

:class:`QueueOperations` is what the HTTP handlers (:mod:`.app`) call; it never serves HTTP
and never runs the control loop (:mod:`.control`). Each operation validates its input, reads
or writes the database in a short session (never held across an ``await``), and raises
:class:`QueueError` for a request the queue refuses. A job's JSON view (``docs/queue-api.md``)
is built here too (:meth:`QueueOperations.view`).

State changes of a job after submission (cancel here, everything else in the control loop)
happen under :attr:`QueueContext.lock <llmspawner.queue.context.QueueContext.lock>`, so a
cancel never races a pass that creates the same job's Job.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from types import SimpleNamespace

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select

from ..profiles import Profile
from . import db as db_mod
from . import k8s_objects, lf_config
from .backend import KubeError
from .context import QueueContext
from .models import Job, JobPod, UserLimit
from .states import ACTIVE_STATES, ADMITTED, CANCELLED, FINAL_STATES, PRIORITIES, QUEUED, STATES
from .status import iso, to_utc

log = logging.getLogger(__name__)


class QueueError(Exception):
    """A request the queue refuses; becomes ``{"error": message, "field": field}``.

    Attributes:
        status: the HTTP status (400 bad input, 403 not allowed, 404 no such job, 409 wrong
            state, 503 cluster unreachable).
        field: the request field at fault, or ``None``.
        problems: every problem of an invalid training config, as ``[{"field", "message"}]``.
    """

    def __init__(self, status: int, message: str, field: str | None = None, problems=()):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.problems = list(problems)


class QueueOperations:
    """The service's operations on one queue (see the module docstring).

    Args:
        ctx: the :class:`~llmspawner.queue.context.QueueContext` shared with the loop.
    """

    def __init__(self, ctx: QueueContext):
        self.ctx = ctx

    # -- profiles -------------------------------------------------------------------------

    def profile_slugs(self) -> list[str]:
        """Every profile's slug now, in file order."""
        return list(self.ctx.profiles())

    def allowed_profiles(self, groups: Iterable[str], profiles=None) -> list[Profile]:
        """The profiles a user in ``groups`` may submit to now, in file order (of
        ``profiles``, by slug, when the caller has them)."""
        groups = list(groups)
        profiles = self.ctx.profiles() if profiles is None else profiles
        return [p for p in profiles.values() if p.allows(groups)]

    def profile_for(self, slug: str, groups: Iterable[str], profiles=None) -> Profile:
        """Return the profile ``slug`` if the user (in ``groups``) may use it (among
        ``profiles``, by slug, when the caller has them).

        Raises:
            QueueError: 400 naming the allowed profiles.
        """
        allowed = self.allowed_profiles(groups, profiles)
        for p in allowed:
            if p.slug == slug:
                return p
        raise QueueError(
            400,
            f"unknown profile {slug!r}; allowed: {', '.join(p.slug for p in allowed)}",
            "profile",
        )

    # -- jobs -----------------------------------------------------------------------------

    async def submit(
        self,
        *,
        user: str,
        groups: Iterable[str],
        config,
        profile: str,
        priority: str,
        prepared: Callable[[], str] | None = None,
    ) -> dict:
        """Validate and store a new queued job; return its view (:meth:`view`).

        Args:
            user: the hub username (from the caller's token).
            groups: the user's hub groups (for the profile's ``allowed_groups``).
            config: the LLaMA-Factory training config, a YAML/JSON string or a mapping.
            profile: a profile slug.
            priority: one of :data:`llmspawner.queue.states.PRIORITIES`.
            prepared: ``config`` already checked in the worker
                (:meth:`llmspawner.queue.lf_config.SubmitBody.prepared`: returns the prepared
                text or raises the check's error); ``None``: ``config`` is checked here.

        Raises:
            QueueError: 400 naming the field; for a bad config, ``problems`` lists all.
            LimitExceeded: the config is over a limit of :mod:`.limits` (nothing stored).
        """
        if priority not in PRIORITIES:
            raise QueueError(
                400,
                f"unknown priority {priority!r}; allowed: {', '.join(PRIORITIES)}",
                "priority",
            )
        profiles = self.ctx.profiles()  # one lookup for the check and the view
        chosen = self.profile_for(profile, groups, profiles)
        try:
            # Within the limits of .limits (LimitExceeded passes through to the handlers),
            # parsed and checked off the event loop; run_name is set once the row has its id.
            if prepared is None:
                checked = await lf_config.check_config(config, username=user)
            else:
                checked = prepared()
        except lf_config.ConfigInvalid as e:
            raise _config_error(e) from None
        # Group commit (db.JobInserter): answered once the row's transaction committed.
        values = {
            **db_mod.row_defaults(Job.__table__),
            "user": user,
            "profile": chosen.slug,
            "priority": priority,
            "state": QUEUED,
            "reason": "",
            "submitted_at": to_utc(self.ctx.clock()),
        }

        def finish(job_id: int) -> dict:  # the id names the Job and the run
            name = k8s_objects.job_name(user, job_id)
            return {"config": lf_config.name_run(checked, name), "k8s_name": name}

        # The view reads the stored values as attributes: a plain namespace, not an ORM
        # instance (whose instrumented construction cost as much as the view itself).
        stored = await db_mod.insert_job(self.ctx.sessions, values, finish)
        row = SimpleNamespace(**{**_unset_columns(), **stored})
        view = self.view(row, profiles=profiles)
        log.info("Queued job %s of %s (profile %s, %s)", view["id"], user, profile, priority)
        self.ctx.wake()
        return view

    def get(self, job_id: int, *, user: str | None) -> Job:
        """Return job ``job_id`` (detached from any session); with ``user``, only if theirs.

        Raises:
            QueueError: 404 when there is no such job *for this caller* (another user's job
                is not revealed).
        """
        with self.ctx.sessions() as db:
            row = db.get(Job, job_id)
            if row is None or (user is not None and row.user != user):
                raise QueueError(404, f"no job {job_id}", "id")
            db.expunge(row)
            return row

    def list(
        self, *, user: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[Job]:
        """Return jobs, newest first; ``user``/``state`` filter (``None``: all), at most
        ``limit`` of them.

        Raises:
            QueueError: 400 for an unknown state.
        """
        if state is not None and state not in STATES:
            raise QueueError(400, f"unknown state {state!r}; allowed: {', '.join(STATES)}", "state")
        query = select(Job).order_by(Job.id.desc())
        if user is not None:
            query = query.where(Job.user == user)
        if state is not None:
            query = query.where(Job.state == state)
        if limit is not None:
            query = query.limit(limit)
        with self.ctx.sessions() as db:
            rows = list(db.scalars(query))
            db.expunge_all()
            return rows

    async def cancel(self, job_id: int, *, user: str | None, by: str) -> dict:
        """Cancel a job: a queued one leaves the queue; an active one's Job is deleted.

        Under the queue's lock: the row is read, its Job deleted (no session open during
        that call), then the row is read again and marked ``cancelled``.

        Args:
            job_id: the job.
            user: only this user's job (``None``: any job, for admins).
            by: who cancels (recorded in the reason).

        Raises:
            QueueError: 404 (no such job for this caller), 409 (already finished),
                503 (the cluster cannot be reached; nothing changed).
        """
        self.get(job_id, user=user)
        async with self.ctx.lock:
            row = self.get(job_id, user=None)
            if row.state in FINAL_STATES:
                raise QueueError(409, f"job {job_id} has already {row.state}", "id")
            if row.state in ACTIVE_STATES or (
                self.ctx.settings.kueue_queue and row.state == QUEUED
            ):
                try:
                    await self.ctx.backend.delete_job(row.k8s_name, config_map=row.k8s_name)
                except KubeError as e:
                    raise QueueError(
                        503, f"cannot delete the Kubernetes Job: {e.message}"
                    ) from None
            with self.ctx.sessions() as db:
                row = db.get(Job, job_id)
                if row.state in FINAL_STATES:  # cannot happen under the lock; be sure anyway
                    raise QueueError(409, f"job {job_id} has already {row.state}", "id")
                row.state, row.reason = CANCELLED, f"cancelled by {by}"
                row.finished_at = to_utc(self.ctx.clock())
                db.commit()
        view = self.view(row)
        log.info("Cancelled job %s (%s)", job_id, view["reason"])
        self.ctx.wake()
        return view

    # -- limits ---------------------------------------------------------------------------

    def set_limit(self, user: str, max_running: int) -> None:
        """Set a user's limit of running (admitted or running) jobs.

        Raises:
            QueueError: 400 unless ``max_running`` is a whole number >= 0.
        """
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 0:
            raise QueueError(
                400, f"must be a whole number >= 0, not {max_running!r}", "max_running"
            )
        with self.ctx.sessions() as db:
            row = db.get(UserLimit, user)
            if row is None:
                db.add(UserLimit(user=user, max_running=max_running))
            else:
                row.max_running = max_running
            db.commit()
        self.ctx.wake()

    def limit_of(self, user: str) -> int:
        """Return the user's limit of running jobs (per-user setting or the default)."""
        with self.ctx.sessions() as db:
            row = db.get(UserLimit, user)
            return self.ctx.settings.default_limit if row is None else row.max_running

    # -- logs -----------------------------------------------------------------------------

    def saved_pods(self, job_id: int) -> list[JobPod]:
        """The job's interrupted pods with their saved logs (:class:`~.models.JobPod`), oldest
        first (detached)."""
        with self.ctx.sessions() as db:
            rows = list(
                db.scalars(select(JobPod).where(JobPod.job_id == job_id).order_by(JobPod.id))
            )
            db.expunge_all()
            return rows

    def attempts(self, job_id: int) -> list[dict]:
        """The interrupted attempts of a job for its view: ``[{"attempt": n, "pod",
        "k8s_job", "reason", "saved_at", "log_saved"}]``, ``attempt`` being the number
        ``GET api/jobs/<id>/logs?attempt=n`` takes."""
        return [
            {
                "attempt": n,
                "pod": r.pod,
                "k8s_job": r.k8s_job,
                "reason": r.reason,
                "saved_at": iso(r.saved_at),
                "log_saved": r.log is not None,
            }
            for n, r in enumerate(self.saved_pods(job_id), 1)
        ]

    async def open_log(
        self,
        job_id: int,
        *,
        user: str | None,
        follow: bool = False,
        tail: int | None = None,
        attempt: int | None = None,
    ) -> AsyncIterator[bytes]:
        """Open the log of a job's newest pod; return its chunks of bytes.

        The first chunk is read here, so every refusal comes before anything is sent;
        a stream that breaks later just ends. Close the iterator (``aclose``) when done.
        With ``attempt``, or when the job has no pod any more, the saved log of an
        interrupted pod (:meth:`attempts`; the newest without ``attempt``) is returned.

        Args:
            job_id: the job.
            user: only this user's job (``None``: any job).
            follow: keep the stream open while the container runs.
            tail: only the last ``tail`` lines.
            attempt: the number of an interrupted attempt (1-based, :meth:`attempts`).

        Raises:
            QueueError: 404 (no such job for this caller, or no such attempt), 409 (no pod,
                or its container has not started), 503 (the cluster cannot be reached).
        """
        row = self.get(job_id, user=user)
        if attempt is not None:
            saved = self.saved_pods(row.id)
            if not 1 <= attempt <= len(saved):
                have = f"1 to {len(saved)}" if saved else "none"
                raise QueueError(
                    404, f"job {row.id} has no attempt {attempt} (saved: {have})", "attempt"
                )
            return _saved(saved[attempt - 1], tail, _train_log(row))
        try:
            pod = await self.ctx.backend.latest_pod(row.id)
        except KubeError as e:
            raise QueueError(503, f"cannot reach the cluster: {e.message}") from None
        if pod is None:
            saved = [r for r in self.saved_pods(row.id) if r.log is not None]
            if saved:
                return _saved(saved[-1], tail, _train_log(row))
            hint = (
                "it has not started yet"
                if row.state in (QUEUED, ADMITTED)
                else "its pod was removed (finished Jobs are deleted after a while)"
            )
            raise QueueError(409, f"job {row.id} has no log: {hint} (state: {row.state})", "id")
        stream = self.ctx.backend.stream_log(
            pod["metadata"]["name"], follow=follow, tail_lines=tail or None
        )
        try:
            first = await anext(stream, None)
        except KubeError as e:
            await stream.aclose()
            raise QueueError(409, f"job {row.id} has no log yet: {e.message}", "id") from None
        return _continue(first, stream)

    async def log_tail(self, row: Job, lines: int) -> str:
        """The last ``lines`` lines of a job's log as text, or a sentence in parentheses
        saying why there is none (for the job's page; never raises for the cluster)."""
        try:
            pod = await self.ctx.backend.latest_pod(row.id)
            if pod is None:
                return "(no log yet)"
            chunks = [
                c
                async for c in self.ctx.backend.stream_log(
                    pod["metadata"]["name"], tail_lines=lines
                )
            ]
        except KubeError as e:
            return f"(no log: {e.message})"
        return b"".join(chunks).decode("utf-8", "replace") or "(empty)"

    # -- views ----------------------------------------------------------------------------

    def view(self, row: Job | SimpleNamespace, *, with_config: bool = False, profiles=None) -> dict:
        """Return the API's JSON object of a job (see ``docs/queue-api.md``).

        Args:
            row: the job (detached is fine), or its columns' values as attributes.
            with_config: add the prepared training config.
            profiles: the profiles by slug, when the caller has them (saves a cache lookup).
        """
        ctx = self.ctx
        profiles = ctx.profiles() if profiles is None else profiles
        queued = row.state == QUEUED
        profile = profiles.get(row.profile)
        tracker = ctx.tracker
        reason = (ctx.waiting.reasons.get(row.id) if queued else None) or row.reason or ""
        interruption = getattr(row, "interruption", "") or ""
        if interruption and row.state not in FINAL_STATES:
            reason = f"{interruption}; {reason}" if reason else interruption
        out = {
            "id": row.id,
            "user": row.user,
            "profile": row.profile,
            "profile_name": profile.display_name if profile else row.profile,
            "priority": row.priority,
            "state": row.state,
            "reason": reason,
            "interruptions": row.interruptions or 0,
            "position": ctx.waiting.positions.get(row.id) if queued else None,
            "submitted_at": iso(row.submitted_at),
            "admitted_at": iso(row.admitted_at),
            "started_at": iso(row.started_at),
            "finished_at": iso(row.finished_at),
            "k8s_job": row.k8s_name if not queued or ctx.settings.kueue_queue else None,
            "namespace": ctx.namespace,
            "mlflow_experiment": ctx.experiment(row.user),
            "mlflow_run_id": row.mlflow_run_id,
            "mlflow_run_url": tracker.run_url(row.mlflow_run_id)
            if tracker is not None and row.mlflow_run_id
            else None,
        }
        if with_config:
            out["attempts"] = self.attempts(row.id)
            out["config"] = json.loads(row.config or "{}")
        return out

    def views(self, rows: Iterable[Job]) -> list[dict]:
        """:meth:`view` of each row (one profile lookup for all)."""
        profiles = self.ctx.profiles()
        return [self.view(r, profiles=profiles) for r in rows]


@functools.cache
def _unset_columns() -> dict:
    """``{attribute: None}`` for every column of :class:`Job` (as an ORM instance reads a
    column it was not given)."""
    return dict.fromkeys(a.key for a in sa_inspect(Job).column_attrs)


def _train_log(row: Job) -> str:
    """Where the training wrapper keeps the whole output of every attempt: ``train.log`` in
    the job's ``output_dir`` (:mod:`llmspawner.training`, appended by each attempt)."""
    from ..training import TRAIN_LOG

    output_dir = json.loads(row.config or "{}").get("output_dir") or "the output folder"
    return f"{str(output_dir).rstrip('/')}/{TRAIN_LOG}"


async def _saved(row: JobPod, tail: int | None, train_log: str) -> AsyncIterator[bytes]:
    """A saved log (its last ``tail`` lines), headed by the attempt it comes from."""
    text = (
        row.log
        if row.log is not None
        else f"(the pod was gone before the queue could read its log; the whole output of "
        f"every attempt is in {train_log} in your folder)\n"
    )
    if tail:
        text = "".join(text.splitlines(keepends=True)[-tail:])
    head = f"--- saved log of pod {row.pod} (Job {row.k8s_job}): {row.reason or 'ended'} ---\n"
    yield head.encode()
    yield text.encode()


async def _continue(first: bytes | None, stream) -> AsyncIterator[bytes]:
    """Yield ``first`` then the rest of ``stream``; a failure after the start ends it."""
    try:
        if first is None:
            return
        yield first
        async for chunk in stream:
            yield chunk
    except KubeError as e:
        log.debug("Log stream ended: %s", e)
    finally:
        await stream.aclose()


def _config_error(e) -> QueueError:
    problems = [{"field": p.field, "message": p.message} for p in e.problems]
    first = problems[0]["field"] if problems else "config"
    field_name = first if first == "config" else f"config.{first}"
    if len(problems) < e.total:
        message = (
            f"the training config has {e.total} problems (the first {len(problems)} listed "
            "in 'problems')"
        )
    elif len(problems) > 1:
        message = f"the training config has {len(problems)} problems (listed in 'problems')"
    else:
        message = str(e)
    return QueueError(400, message, field_name, problems)
