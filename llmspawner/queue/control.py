"""The queue's control loop: job states from the cluster, admission, Jobs, MLflow runs.

:class:`ControlLoop` runs in the background of the service (:meth:`~ControlLoop.run`). One
pass (:meth:`~ControlLoop.run_pass`), under the queue's lock:

1. list the queue's Jobs and pods;
2. for each admitted or running job: its state and reason from its Job and newest pod
   (:func:`~llmspawner.queue.status.observe`); an admitted job whose Job does not exist yet
   is created (again): the database row is committed as ``admitted`` with its Job name
   *before* the Job is created, and creating is idempotent, so a restart at any point
   neither loses nor duplicates a Job;
3. admission (:func:`llmspawner.queue.admission.decide`) of the queued jobs against the free
   slices of each profile (:func:`llmspawner.capacity.capacities`, which count every bound
   pod: interactive servers and Job pods alike); the admitted ones get their Job;
4. the MLflow run of each job that started, found by its job-id tag
   (:meth:`llmspawner.tracking.Tracker.find_job_run`).

In ``kueue`` mode step 3 is replaced: every queued job gets a suspended Job at once and
Kueue decides when it runs (https://kueue.sigs.k8s.io/docs/tasks/run/jobs/); the loop only
tracks states.

No database session is open during an ``await`` (Kubernetes or MLflow): each step reads
what it needs and closes the session, awaits, then writes in a new session, re-checking
under the lock that each row is still in the state it was read in.

A failed job's ``reason`` starts with a code: ``BackoffLimitExceeded``,
``DeadlineExceeded``, ``OOMKilled``, ``Evicted``, ``ImageError``, ``ConfigError``,
``Unschedulable``, ``Lost``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time

from sqlalchemy import select

from .. import capacity as capacity_mod
from ..mlflow_hub import JobTokens, TokenUnavailable, build_token_secret
from ..profiles import Profile
from ..tracking import TrackingUnavailable
from ..workload import build_workload
from . import db as db_mod
from . import k8s_objects, planning
from .backend import JOB_ID_LABEL, KubeError
from .context import QueueContext, Waiting
from .models import Job
from .planning import plan_admission
from .states import (
    ACTIVE_STATES,
    ADMITTED,
    FAILED,
    FINAL_STATES,
    PRIORITY_CLASSES,
    QUEUED,
    RUNNING,
)
from .status import observe, to_epoch, to_utc

log = logging.getLogger(__name__)

#: Seconds between two MLflow look-ups of one job's run.
RUN_LOOKUP_INTERVAL = 10.0
#: Seconds after a job finished that its run is still looked for.
RUN_LOOKUP_MAX_AGE = 3600.0


class ControlLoop:
    """The loop that drives every job's state after submission (see the module docstring).

    Args:
        ctx: the :class:`~llmspawner.queue.context.QueueContext` shared with the operations.
    """

    def __init__(self, ctx: QueueContext):
        self.ctx = ctx
        # job id -> (time of its last run look-up, whether the job had ended by then)
        self._run_lookups: dict[int, tuple[float, bool]] = {}
        #: Mints each Job's MLflow token (None: this process has no hub token to do it).
        self._job_tokens = JobTokens.from_env()
        #: The last pass's failure, ``None`` after a pass that worked.
        self.last_pass_error: str | None = None

    # -- running --------------------------------------------------------------------------

    async def startup(self) -> list[str]:
        """Reconcile the database against the cluster once, before serving.

        Runs one pass (which creates every admitted job's missing Job, idempotently) and
        reports the queue's Jobs that have no database row (left alone, never deleted: they
        may belong to another installation sharing the namespace).

        Returns:
            The names of those orphan Jobs.

        Raises:
            KubeError: the cluster cannot be reached.
        """
        backend = self.ctx.backend
        jobs = await backend.list_jobs()
        missing = await backend.missing_priority_classes(sorted(set(PRIORITY_CLASSES.values())))
        if missing:
            log.error(
                "PriorityClass(es) %s do not exist: Jobs using them never get a pod. "
                "Create them (deploy/ manifests) before submitting.",
                ", ".join(missing),
            )
        with self.ctx.sessions() as db:
            known = set(db.scalars(select(Job.k8s_name).where(Job.k8s_name.is_not(None))))
        orphans = sorted(j["metadata"]["name"] for j in jobs if j["metadata"]["name"] not in known)
        for name in orphans:
            log.warning("Job %s/%s has no row in the queue's database", self.ctx.namespace, name)
        await self.run_pass()
        return orphans

    async def run(self) -> None:
        """Pass after pass until cancelled: on a wake-up, or every ``interval`` seconds.

        A failed pass (e.g. the cluster unreachable) is logged and retried at the next one.
        After a wake-up the loop gathers more for as long as the last pass took (at least
        0.05 s, at most 1 s), so that passes take at most about half of the time however
        fast submits come (each pass reads every queued job): measured, submits under load
        went from 30/s to 67/s over a burst of 1,000 (benchmarks/queue_throughput.py).
        """
        took = 0.0
        while True:
            await self.ctx.wait_for_wake(
                self.ctx.settings.interval, gather=min(1.0, max(0.05, took))
            )
            started = time.monotonic()
            try:
                await self.run_pass()
                took = time.monotonic() - started
                self.last_pass_error = None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.last_pass_error = str(e)
                log.warning(
                    "Queue pass failed (retrying): %s", e, exc_info=not isinstance(e, KubeError)
                )

    async def run_pass(self) -> None:
        """One pass: states from the cluster, then admission, then MLflow runs.

        Raises:
            KubeError: the cluster cannot be listed (nothing changed).
        """
        async with self.ctx.lock:
            profiles = self.ctx.profiles()
            backend = self.ctx.backend
            jobs, pods = await asyncio.gather(backend.list_jobs(), backend.list_job_pods())
            by_name = {j["metadata"]["name"]: j for j in jobs}
            await self._sync_states(by_name, _pods_by_job(pods), profiles)
            if self.ctx.settings.kueue_queue:
                await self._create_suspended(by_name, profiles)
            else:
                await self._admit(profiles)
            await self._find_runs()

    # -- database helpers -----------------------------------------------------------------

    def _read(self, query) -> list[Job]:
        """Rows of ``query``, detached (the session is closed on return)."""
        with self.ctx.sessions() as db:
            rows = list(db.scalars(query))
            db.expunge_all()
            return rows

    def _write(self, changes: dict[int, tuple[str, dict]]) -> None:
        """Apply ``{job id: (state it was read in, {column: value})}`` in one session; a row
        whose state changed since it was read is left alone."""
        if not changes:
            return
        with self.ctx.sessions() as db:
            for job_id, (expected, values) in changes.items():
                row = db.get(Job, job_id)
                if row is None or row.state != expected:
                    log.info("Job %s changed while the pass ran; left for the next", job_id)
                    continue
                for key, value in values.items():
                    setattr(row, key, value)
            db.commit()

    def _failed(self, reason: str) -> dict:
        """The column values of a job that fails now with ``reason``."""
        return {"state": FAILED, "finished_at": to_utc(self.ctx.clock()), "reason": reason}

    # -- states ---------------------------------------------------------------------------

    async def _sync_states(self, by_name: dict, pods_of: dict, profiles) -> None:
        settings = self.ctx.settings
        states = ACTIVE_STATES + ((QUEUED,) if settings.kueue_queue else ())
        now = self.ctx.clock()
        rows = self._read(select(Job).where(Job.state.in_(states)))
        changes: dict[int, tuple[str, dict]] = {}
        to_create: list[int] = []
        for row in rows:
            job = by_name.get(row.k8s_name)
            if job is None:
                if row.state == RUNNING:
                    reason = "Lost: the Kubernetes Job disappeared before the queue saw it finish"
                    changes[row.id] = (row.state, self._failed(reason))
                    log.warning("Job %s of queue job %s is gone", row.k8s_name, row.id)
                elif row.state == ADMITTED:
                    to_create.append(row.id)
                continue  # kueue mode: a queued job's Job is made by _create_suspended
            seen = observe(
                job,
                pods_of.get(str(row.id), []),
                now=now,
                unschedulable_timeout=settings.unschedulable_timeout,
            )
            if seen.delete:
                try:
                    await self.ctx.backend.delete_job(row.k8s_name, config_map=row.k8s_name)
                except KubeError as e:
                    log.warning("Cannot delete failed Job %s: %s", row.k8s_name, e)
                    continue
            if seen.state == QUEUED and row.state != QUEUED:
                continue  # suspended again by Kueue (preempted): keep it active
            if seen.state != row.state or seen.reason != row.reason:
                log.info("Job %s: %s -> %s %s", row.id, row.state, seen.state, seen.reason)
            values: dict = {"state": seen.state, "reason": seen.reason}
            admitted_at = row.admitted_at
            if seen.state in ACTIVE_STATES and admitted_at is None:
                admitted_at = values["admitted_at"] = to_utc(now)
            # Kubernetes times have whole seconds: never before the admission itself.
            floor = admitted_at or row.submitted_at
            started_at = row.started_at
            if seen.started_at and started_at is None:
                started_at = values["started_at"] = max(seen.started_at, floor)
            if seen.finished_at and row.finished_at is None:
                values["finished_at"] = max(seen.finished_at, started_at or floor)
            if any(getattr(row, key) != value for key, value in values.items()):
                changes[row.id] = (row.state, values)
        self._write(changes)
        await self._create(to_create, ADMITTED, profiles)

    # -- admission ------------------------------------------------------------------------

    async def _admit(self, profiles: dict[str, Profile]) -> None:
        ctx = self.ctx
        nodes, all_pods = await ctx.backend.capacity.snapshot()
        caps = capacity_mod.capacities(profiles.values(), ctx.platform.gpu_cluster, nodes, all_pods)
        # Whether a job's pod holds a slice must come from the same listing as the free
        # counts: a pod bound after that listing would otherwise be counted nowhere, and a
        # job admitted into a full profile.
        bound = sorted(
            int(job_id)
            for job_id, pods in _pods_by_job(all_pods).items()
            if job_id.isdigit() and any(capacity_mod.bound_and_running(p) for p in pods)
        )
        plan = functools.partial(
            plan_admission,
            free={slug: (caps[slug].free if slug in caps else None) for slug in profiles},
            bound=bound,
            default_limit=ctx.settings.default_limit,
            labels={slug: p.gpu.label for slug, p in profiles.items()},
            totals={slug: c.total for slug, c in caps.items()},
        )
        url = db_mod.shared_url(ctx.sessions.kw["bind"]) if ctx.settings.plan_off_loop else None
        if url:
            # Reading 10,000 queued jobs and deciding takes tens of ms of CPU: done by the
            # planning worker, the event loop only gets the decision (a few ms to unpickle).
            decision, unknown = await planning.plan_in_worker(url, plan)
        else:
            decision, unknown = plan(ctx.sessions)
        now = to_utc(ctx.clock())
        changes = {job_id: (QUEUED, self._failed(_gone(p))) for job_id, p in unknown}
        for job_id in decision.admit:
            changes[job_id] = (QUEUED, {"state": ADMITTED, "reason": "", "admitted_at": now})
        # Committed before any Job exists: a crash from here on is repaired by the next
        # pass (admitted without a Job -> create), never by admitting twice.
        self._write(changes)
        ctx.waiting = Waiting(decision.positions, decision.reasons)
        await self._create(list(decision.admit), ADMITTED, profiles)

    async def _create_suspended(self, by_name: dict, profiles) -> None:
        rows = self._read(select(Job).where(Job.state == QUEUED))
        await self._create([r.id for r in rows if r.k8s_name not in by_name], QUEUED, profiles)

    # -- Jobs -----------------------------------------------------------------------------

    def manifests(
        self, row: Job, profile: Profile, *, mlflow_token_secret: str | None = None
    ) -> tuple[dict, dict]:
        """The ConfigMap and Job of a job (pure, from the row and the platform settings).

        The pod is the user's workload (:func:`llmspawner.workload.build_workload`: the same
        image, resources, storage, security context, MLflow environment as their server),
        with the queue's image when ``QueueSettings.image`` is set and the profile has none.
        """
        ctx, s = self.ctx, self.ctx.settings
        config_map = k8s_objects.build_config_map(
            name=row.k8s_name,
            namespace=ctx.namespace,
            job_id=row.id,
            username=row.user,
            config=json.loads(row.config),
        )
        workload = build_workload(
            username=row.user, profile=profile, settings=ctx.platform, image=s.image or None
        )
        job = k8s_objects.build_job(
            name=row.k8s_name,
            namespace=ctx.namespace,
            job_id=row.id,
            workload=workload,
            config_map=row.k8s_name,
            priority=row.priority,
            active_deadline_seconds=profile.max_runtime or None,
            backoff_limit=s.backoff_limit,
            ttl_seconds_after_finished=s.ttl_seconds_after_finished,
            kueue_queue=s.kueue_queue,
            service_account=s.service_account,
            tracking=bool(ctx.platform.mlflow_tracking_uri),
            mlflow_token_secret=mlflow_token_secret,
        )
        return config_map, job

    async def _mlflow_token_secret(self, row: Job, profile: Profile) -> dict | None:
        """The Secret with a new MLflow-only hub token of the job's user for its Job
        (:class:`llmspawner.mlflow_hub.JobTokens`), valid for the profile's ``max_runtime``
        (or a week) plus a day; ``None`` when this process mints none or the hub refused
        (logged: the Job then runs without MLflow access)."""
        if self._job_tokens is None:
            return None
        try:
            token = await self._job_tokens.mint(
                row.user,
                expires_in=(profile.max_runtime or 7 * 86400) + 86400,
                note=f"llm-queue job {row.id}: MLflow",
            )
        except TokenUnavailable as e:
            log.warning("No MLflow token for Job %s: %s", row.k8s_name, e)
            return None
        return build_token_secret(
            name=row.k8s_name,
            namespace=self.ctx.namespace,
            job_id=row.id,
            username=row.user,
            token=token,
        )

    async def _create(self, job_ids: list[int], expected: str, profiles) -> None:
        """Create the ConfigMap and Job of each job still in state ``expected``
        (idempotent), then record the outcomes in one session: ``attempts`` and the MLflow
        experiment id, or ``failed`` when Kubernetes refuses a Job for good (a transient
        refusal is retried at the next pass)."""
        if not job_ids:
            return
        ctx = self.ctx
        order = {job_id: i for i, job_id in enumerate(job_ids)}
        rows = []
        for start in range(0, len(job_ids), 500):  # within every database's bound parameters
            chunk = job_ids[start : start + 500]
            rows += self._read(select(Job).where(Job.id.in_(chunk), Job.state == expected))
        failed: dict[int, tuple[str, dict]] = {}
        created: dict[int, tuple[bool, str | None]] = {}  # id -> (existed, experiment id)
        for row in sorted(rows, key=lambda r: order[r.id]):
            profile = profiles.get(row.profile)
            if profile is None:
                failed[row.id] = (expected, self._failed(_gone(row.profile)))
                continue
            experiment_id = None
            experiment = ctx.experiment(row.user)
            if ctx.tracker is not None and experiment:
                try:
                    experiment_id = await ctx.tracker.experiment_id(experiment, owner=row.user)
                except TrackingUnavailable as e:
                    level = logging.DEBUG if e.cached else logging.WARNING
                    log.log(
                        level, "Cannot make sure MLflow experiment %s exists: %s", experiment, e
                    )
            secret = await self._mlflow_token_secret(row, profile) if experiment else None
            config_map, job = self.manifests(
                row, profile, mlflow_token_secret=secret["metadata"]["name"] if secret else None
            )
            try:
                outcome = await ctx.backend.create_job(
                    config_map=config_map,
                    job=job,
                    owner_reference=k8s_objects.owner_reference,
                    **({"secret": secret} if secret else {}),
                )
            except KubeError as e:
                if e.status == 0 or e.status >= 500 or e.status == 429:
                    log.warning("Cannot create Job %s yet (will retry): %s", row.k8s_name, e)
                    continue
                log.warning("Kubernetes refused Job %s: %s", row.k8s_name, e)
                reason = f"ConfigError: Kubernetes refused the Job ({e.status}): {e.message}"
                failed[row.id] = (expected, self._failed(reason))
                continue
            # A stand-in backend may return None.
            created[row.id] = (getattr(outcome, "existed", False), experiment_id)
        self._write(failed)
        stale: set[int] = set()
        with ctx.sessions() as db:
            for job_id, (existed, experiment_id) in created.items():
                current = db.get(Job, job_id)
                if current is None or current.state != expected:
                    stale.add(job_id)
                    continue
                if not existed:
                    current.attempts = (current.attempts or 0) + 1
                if experiment_id:
                    current.mlflow_experiment_id = experiment_id
            db.commit()
        stale_rows = [r for r in rows if r.id in stale]
        for row in stale_rows:  # cannot happen under the lock; never leave a stray Job
            log.warning("Job %s changed while its Job was created; deleting it", row.id)
            await ctx.backend.delete_job(row.k8s_name, config_map=row.k8s_name)

    # -- MLflow runs ----------------------------------------------------------------------

    async def _find_runs(self) -> None:
        """Record the MLflow run of jobs that started (looked up at most every
        :data:`RUN_LOOKUP_INTERVAL` s each, until :data:`RUN_LOOKUP_MAX_AGE` s after the end),
        and once more in the pass that sees the job end (its run exists by then), so that a
        finished job shows its MLflow link from that pass on, not a later one."""
        tracker = self.ctx.tracker
        if tracker is None:
            return
        now = self.ctx.clock()
        rows = self._read(
            select(Job).where(
                Job.mlflow_run_id.is_(None),
                Job.started_at.is_not(None),
                Job.state.in_((RUNNING, *FINAL_STATES)),
            )
        )
        found: dict[int, str] = {}
        for row in rows:
            last, ended_then = self._run_lookups.get(row.id, (0.0, False))
            ended = row.state in FINAL_STATES
            if now - last < RUN_LOOKUP_INTERVAL and (ended_then or not ended):
                continue  # asked lately, and the job has not ended since
            if row.finished_at and now - to_epoch(row.finished_at) > RUN_LOOKUP_MAX_AGE:
                continue  # it never reported; stop asking
            self._run_lookups[row.id] = (now, ended)
            try:
                run_id = await tracker.find_job_run(self.ctx.experiment(row.user), row.id)
            except TrackingUnavailable as e:
                log.log(
                    logging.DEBUG if e.cached else logging.WARNING,
                    "Cannot look up MLflow runs: %s",
                    e,
                )
                break
            if run_id:
                found[row.id] = run_id
                self._run_lookups.pop(row.id, None)
        if found:
            with self.ctx.sessions() as db:
                for job_id, run_id in found.items():
                    row = db.get(Job, job_id)
                    if row is not None and row.mlflow_run_id is None:
                        row.mlflow_run_id = run_id
                db.commit()


def _gone(profile: str) -> str:
    return f"ConfigError: profile {profile!r} no longer exists"


def _pods_by_job(pods: list[dict]) -> dict[str, list[dict]]:
    """Pods of queue Jobs by their job id label (as a string)."""
    by_job: dict[str, list[dict]] = {}
    for pod in pods:
        job_id = ((pod.get("metadata") or {}).get("labels") or {}).get(JOB_ID_LABEL)
        if job_id is not None:
            by_job.setdefault(str(job_id), []).append(pod)
    return by_job
