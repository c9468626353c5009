"""The queue's loop: database against cluster, admission, and job states from Jobs and pods.

:class:`JobQueue` owns every change of a job's state; the web handlers call its methods
(:meth:`~JobQueue.submit`, :meth:`~JobQueue.cancel`, ...) and the service runs
:meth:`~JobQueue.run` in the background. One pass (:meth:`~JobQueue.run_pass`):

1. list the queue's Jobs and pods;
2. for each admitted or running job: its state and reason from its Job and newest pod
   (:func:`observe`); an admitted job whose Job does not exist yet is created (again): the
   database row is committed as ``admitted`` with its Job name *before* the Job is created,
   and creating is idempotent, so a restart at any point neither loses nor duplicates a Job;
3. admission (:func:`llmspawner.queue.admission.decide`) of the queued jobs against the free
   slices of each profile (:func:`llmspawner.capacity.capacities`, which count every bound
   pod: interactive servers and Job pods alike); the admitted ones get their Job.

In ``kueue`` mode step 3 is replaced: every queued job gets a suspended Job at once and
Kueue decides when it runs (https://kueue.sigs.k8s.io/docs/tasks/run/jobs/); the loop only
tracks states.

Job states: ``queued → admitted → running → succeeded | failed | cancelled``. A failed job's
``reason`` starts with a code: ``BackoffLimitExceeded``, ``DeadlineExceeded``, ``OOMKilled``,
``Evicted``, ``ImageError``, ``ConfigError``, ``Unschedulable``, ``Lost``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select

from .. import capacity as capacity_mod
from .. import tracking
from ..profiles import ClusterGPUConfig, Profile
from . import admission, k8s_objects, lf_config
from .backend import JOB_ID_LABEL, KubeBackend, KubeError
from .models import Job, UserLimit
from .status import Observed, iso, observe, to_epoch, to_utc  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

STATES = ("queued", "admitted", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("admitted", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled")


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


@dataclass(frozen=True)
class Settings:
    """How the queue builds Jobs (the service's traits, resolved once).

    Attributes:
        image: container image of the training (``llamafactory-cli`` on its ``PATH``).
        claim_name: the shared PVC (``storage.build_user_storage``).
        tracking_uri: MLflow URL as seen from the Jobs' pods ('' = no tracking).
        mlflow_ui_url: MLflow URL for links shown to users (default ``tracking_uri``).
        experiment_template: see :func:`llmspawner.tracking.experiment_name`.
        default_limit: running (admitted or running) jobs per user, unless set per user.
        kueue_queue: Kueue ``LocalQueue`` name; ``None``: the service admits.
        backoff_limit: Job retries (``spec.backoffLimit``).
        ttl_seconds_after_finished: seconds a finished Job (and its pods/logs) is kept.
        service_account: service account of the Jobs' pods, or ``None``.
        unschedulable_timeout: seconds an admitted job's pod may stay unschedulable before
            the job fails with ``Unschedulable``.
        interval: seconds between two passes when nothing triggers one earlier.
    """

    image: str
    claim_name: str = "llm-storage"
    tracking_uri: str = ""
    mlflow_ui_url: str = ""
    experiment_template: str = tracking.DEFAULT_EXPERIMENT_TEMPLATE
    default_limit: int = 1
    kueue_queue: str | None = None
    backoff_limit: int = 0
    ttl_seconds_after_finished: int = 86400
    service_account: str | None = None
    unschedulable_timeout: float = 600.0
    interval: float = 5.0


@dataclass
class _Waiting:
    """Positions and reasons of the queued jobs from the last admission pass."""

    positions: dict[int, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)


class JobQueue:
    """The queue: every state change of every job, and the loop that drives them.

    Args:
        sessions: a SQLAlchemy ``sessionmaker`` (:func:`llmspawner.queue.db.connect`).
        backend: the Kubernetes I/O (:class:`~llmspawner.queue.backend.KubeBackend`).
        profiles: the GPU profiles (as loaded at start).
        cluster: how the cluster advertises GPUs.
        settings: :class:`Settings`.
        mlflow: a :class:`~llmspawner.queue.backend.MlflowRuns`-like object with
            ``async ensure(experiment) -> str|None``, ``async find_run(experiment,
            run_name) -> run_id|None`` and ``run_url(run_id) -> str``;
            ``None``: no MLflow.
        clock: wall clock in seconds since the epoch (injectable).
    """

    def __init__(
        self,
        sessions,
        backend: KubeBackend,
        profiles: list[Profile],
        cluster: ClusterGPUConfig,
        settings: Settings,
        *,
        mlflow=None,
        clock: Callable[[], float] = time.time,
    ):
        self.sessions = sessions
        self.backend = backend
        self.profiles = {p.slug: p for p in profiles}
        self.cluster = cluster
        self.settings = settings
        self.mlflow = mlflow
        self.clock = clock
        self.waiting = _Waiting()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._run_lookups: dict[int, float] = {}
        self.last_pass_error: str | None = None

    # -- requests -------------------------------------------------------------------------

    def profile_for(self, slug: str, groups: Iterable[str]) -> Profile:
        """Return the profile ``slug`` if the user (in ``groups``) may use it.

        Raises:
            QueueError: 400 naming the allowed profiles.
        """
        allowed = [p for p in self.profiles.values() if p.allows(groups)]
        for p in allowed:
            if p.slug == slug:
                return p
        raise QueueError(
            400,
            f"unknown profile {slug!r}; allowed: {', '.join(p.slug for p in allowed)}",
            "profile",
        )

    async def submit(
        self, *, user: str, groups: Iterable[str], config, profile: str, priority: str
    ) -> dict:
        """Validate and store a new queued job; return its view (:meth:`view`).

        Args:
            user: the hub username (from the caller's token).
            groups: the user's hub groups (for the profile's ``allowed_groups``).
            config: the LLaMA-Factory training config, a YAML/JSON string or a mapping.
            profile: a profile slug.
            priority: one of :data:`llmspawner.queue.admission.PRIORITIES`.

        Raises:
            QueueError: 400 naming the field; for a bad config, ``problems`` lists all.
        """
        if priority not in admission.PRIORITIES:
            raise QueueError(
                400,
                f"unknown priority {priority!r}; allowed: {', '.join(admission.PRIORITIES)}",
                "priority",
            )
        chosen = self.profile_for(profile, groups)
        try:
            parsed = lf_config.parse_config(config) if isinstance(config, str) else config
            if not isinstance(parsed, dict):
                raise lf_config.ConfigInvalid(
                    [lf_config.ConfigProblem("config", "must be a mapping of arguments")]
                )
        except lf_config.ConfigInvalid as e:
            raise _config_error(e) from None
        with self.sessions() as db:
            row = Job(
                user=user,
                profile=chosen.slug,
                priority=priority,
                state="queued",
                reason="",
                config="{}",
                submitted_at=to_utc(self.clock()),
            )
            db.add(row)
            db.flush()  # the id names the Job and the run
            name = k8s_objects.job_name(user, row.id)
            try:
                prepared = lf_config.prepare_config(parsed, username=user, job_name=name)
            except lf_config.ConfigInvalid as e:
                db.rollback()
                raise _config_error(e) from None
            row.config = json.dumps(prepared)
            row.k8s_name = name
            db.commit()
            view = self.view(row)
        log.info("Queued job %s of %s (profile %s, %s)", view["id"], user, profile, priority)
        self.wake()
        return view

    def get(self, job_id: int, *, user: str | None) -> Job:
        """Return job ``job_id``; with ``user``, only if it is theirs.

        Raises:
            QueueError: 404 when there is no such job *for this caller* (another user's job
                is not revealed).
        """
        with self.sessions() as db:
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
        with self.sessions() as db:
            rows = list(db.scalars(query))
            db.expunge_all()
            return rows

    async def cancel(self, job_id: int, *, user: str | None, by: str) -> dict:
        """Cancel a job: a queued one leaves the queue; an active one's Job is deleted.

        Args:
            job_id: the job.
            user: only this user's job (``None``: any job, for admins).
            by: who cancels (recorded in the reason).

        Raises:
            QueueError: 404 (no such job for this caller), 409 (already finished),
                503 (the cluster cannot be reached; nothing changed).
        """
        self.get(job_id, user=user)
        async with self._lock:
            with self.sessions() as db:
                row = db.get(Job, job_id)
                if row.state in FINAL_STATES:
                    raise QueueError(409, f"job {job_id} has already {row.state}", "id")
                if row.state in ACTIVE_STATES or (
                    self.settings.kueue_queue and row.state == "queued"
                ):
                    try:
                        await self.backend.delete_job(row.k8s_name, config_map=row.k8s_name)
                    except KubeError as e:
                        raise QueueError(
                            503, f"cannot delete the Kubernetes Job: {e.message}"
                        ) from None
                row.state, row.reason = "cancelled", f"cancelled by {by}"
                row.finished_at = to_utc(self.clock())
                db.commit()
                view = self.view(row)
        log.info("Cancelled job %s (%s)", job_id, view["reason"])
        self.wake()
        return view

    def set_limit(self, user: str, max_running: int) -> None:
        """Set a user's limit of running (admitted or running) jobs.

        Raises:
            QueueError: 400 unless ``max_running`` is a whole number >= 0.
        """
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 0:
            raise QueueError(
                400, f"must be a whole number >= 0, not {max_running!r}", "max_running"
            )
        with self.sessions() as db:
            row = db.get(UserLimit, user)
            if row is None:
                db.add(UserLimit(user=user, max_running=max_running))
            else:
                row.max_running = max_running
            db.commit()
        self.wake()

    def limit_of(self, user: str) -> int:
        """Return the user's limit of running jobs (per-user setting or the default)."""
        with self.sessions() as db:
            row = db.get(UserLimit, user)
            return self.settings.default_limit if row is None else row.max_running

    def view(self, row: Job, *, with_config: bool = False) -> dict:
        """Return the API's JSON object of a job (see ``docs/queue-api.md``)."""
        queued = row.state == "queued"
        profile = self.profiles.get(row.profile)
        out = {
            "id": row.id,
            "user": row.user,
            "profile": row.profile,
            "profile_name": profile.display_name if profile else row.profile,
            "priority": row.priority,
            "state": row.state,
            "reason": (self.waiting.reasons.get(row.id) if queued else None) or row.reason or "",
            "position": self.waiting.positions.get(row.id) if queued else None,
            "submitted_at": iso(row.submitted_at),
            "admitted_at": iso(row.admitted_at),
            "started_at": iso(row.started_at),
            "finished_at": iso(row.finished_at),
            "k8s_job": row.k8s_name if row.state != "queued" or self.settings.kueue_queue else None,
            "namespace": self.backend.namespace,
            "mlflow_experiment": tracking.experiment_name(
                row.user, self.settings.experiment_template
            )
            if self.settings.tracking_uri
            else None,
            "mlflow_run_id": row.mlflow_run_id,
            "mlflow_run_url": self.mlflow.run_url(row.mlflow_run_id)
            if self.mlflow is not None and row.mlflow_run_id
            else None,
        }
        if with_config:
            out["config"] = json.loads(row.config or "{}")
        return out

    # -- the loop -------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a pass as soon as possible (after a submit, a cancel or a watch event)."""
        self._wake.set()

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
        jobs = await self.backend.list_jobs()
        missing = await self.backend.missing_priority_classes(
            sorted(set(admission.PRIORITY_CLASSES.values()))
        )
        if missing:
            log.error(
                "PriorityClass(es) %s do not exist: Jobs using them never get a pod. "
                "Create them (deploy/ manifests) before submitting.",
                ", ".join(missing),
            )
        with self.sessions() as db:
            known = set(db.scalars(select(Job.k8s_name).where(Job.k8s_name.is_not(None))))
        orphans = sorted(j["metadata"]["name"] for j in jobs if j["metadata"]["name"] not in known)
        for name in orphans:
            log.warning(
                "Job %s/%s has no row in the queue's database", self.backend.namespace, name
            )
        await self.run_pass()
        return orphans

    async def run(self) -> None:
        """Pass after pass until cancelled: on :meth:`wake`, or every ``interval`` seconds.

        A failed pass (e.g. the cluster unreachable) is logged and retried at the next one.
        """
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.interval)
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(0.05)  # gather a burst of submits into one pass
            self._wake.clear()
            try:
                await self.run_pass()
                self.last_pass_error = None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.last_pass_error = str(e)
                log.warning(
                    "Queue pass failed (retrying): %s", e, exc_info=not isinstance(e, KubeError)
                )

    async def run_pass(self) -> None:
        """One pass: states from the cluster, then admission (see the module docstring).

        Raises:
            KubeError: the cluster cannot be listed (nothing changed).
        """
        async with self._lock:
            jobs, pods = await asyncio.gather(
                self.backend.list_jobs(), self.backend.list_job_pods()
            )
            by_name = {j["metadata"]["name"]: j for j in jobs}
            pods_of: dict[str, list[dict]] = {}
            for pod in pods:
                job_id = (pod["metadata"].get("labels") or {}).get(JOB_ID_LABEL)
                pods_of.setdefault(str(job_id), []).append(pod)
            await self._sync_states(by_name, pods_of)
            if self.settings.kueue_queue:
                await self._create_suspended(by_name)
            else:
                await self._admit(pods_of)
            await self._find_runs()

    async def _sync_states(self, by_name: dict, pods_of: dict) -> None:
        kueue = bool(self.settings.kueue_queue)
        states = ACTIVE_STATES + (("queued",) if kueue else ())
        now = self.clock()
        with self.sessions() as db:
            rows = list(db.scalars(select(Job).where(Job.state.in_(states))))
            for row in rows:
                job = by_name.get(row.k8s_name)
                if job is None:
                    if row.state == "running":
                        row.state, row.finished_at = "failed", to_utc(now)
                        row.reason = (
                            "Lost: the Kubernetes Job disappeared before the queue saw it finish"
                        )
                        log.warning("Job %s of queue job %s is gone", row.k8s_name, row.id)
                    elif row.state == "admitted":
                        db.commit()
                        await self._create(db, row)
                    continue  # kueue mode: a queued job's Job is made by _create_suspended
                seen = observe(
                    job,
                    pods_of.get(str(row.id), []),
                    now=now,
                    unschedulable_timeout=self.settings.unschedulable_timeout,
                )
                if seen.delete:
                    try:
                        await self.backend.delete_job(row.k8s_name, config_map=row.k8s_name)
                    except KubeError as e:
                        log.warning("Cannot delete failed Job %s: %s", row.k8s_name, e)
                        continue
                if seen.state == "queued" and row.state != "queued":
                    continue  # suspended again by Kueue (preempted): keep it active
                if seen.state != row.state or seen.reason != row.reason:
                    log.info("Job %s: %s -> %s %s", row.id, row.state, seen.state, seen.reason)
                if seen.state in ACTIVE_STATES and row.admitted_at is None:
                    row.admitted_at = to_utc(now)
                row.state, row.reason = seen.state, seen.reason
                # Kubernetes times have whole seconds: never before the admission itself.
                floor = row.admitted_at or row.submitted_at
                if seen.started_at and row.started_at is None:
                    row.started_at = max(seen.started_at, floor)
                if seen.finished_at and row.finished_at is None:
                    row.finished_at = max(seen.finished_at, row.started_at or floor)
            db.commit()

    async def _admit(self, pods_of: dict) -> None:
        nodes, all_pods = await self.backend.capacity.snapshot()
        caps = capacity_mod.capacities(self.profiles.values(), self.cluster, nodes, all_pods)
        free = {slug: (caps[slug].free if slug in caps else None) for slug in self.profiles}
        # Whether a job's pod holds a slice must come from the same listing as the free
        # counts: a pod bound after that listing would otherwise be counted nowhere, and a
        # job admitted into a full profile.
        pods_of = _pods_by_job(all_pods)
        with self.sessions() as db:
            rows = db.execute(
                select(
                    Job.id, Job.user, Job.profile, Job.priority, Job.submitted_at, Job.state
                ).where(Job.state.in_(("queued", *ACTIVE_STATES)))
            ).all()
            limits = dict(db.execute(select(UserLimit.user, UserLimit.max_running)).all())
            queued, active, unknown = [], [], []
            for r in rows:
                if r.state != "queued":
                    pods = pods_of.get(str(r.id), [])
                    bound = any(
                        (p.get("spec") or {}).get("nodeName")
                        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                        for p in pods
                    )
                    active.append(admission.ActiveJob(r.id, r.user, r.profile, bound))
                elif r.profile not in self.profiles:
                    unknown.append(r.id)
                else:
                    queued.append(
                        admission.QueuedJob(
                            r.id, r.user, r.profile, r.priority, to_epoch(r.submitted_at)
                        )
                    )
            decision = admission.decide(
                queued,
                active,
                free=free,
                user_limits=limits,
                default_limit=self.settings.default_limit,
                labels={slug: p.gpu.label for slug, p in self.profiles.items()},
                totals={slug: c.total for slug, c in caps.items()},
            )
            now = to_utc(self.clock())
            for job_id in unknown:
                row = db.get(Job, job_id)
                row.state, row.finished_at = "failed", now
                row.reason = f"ConfigError: profile {row.profile!r} no longer exists"
            admitted = []
            for job_id in decision.admit:
                row = db.get(Job, job_id)
                row.state, row.reason, row.admitted_at = "admitted", "", now
                admitted.append(row)
            # Committed before any Job exists: a crash from here on is repaired by the next
            # pass (admitted without a Job -> create), never by admitting twice.
            db.commit()
            self.waiting = _Waiting(dict(decision.positions), dict(decision.reasons))
            for row in admitted:
                await self._create(db, row)
            db.commit()

    async def _create_suspended(self, by_name: dict) -> None:
        with self.sessions() as db:
            rows = list(db.scalars(select(Job).where(Job.state == "queued")))
            for row in rows:
                if row.k8s_name not in by_name:
                    await self._create(db, row)
            db.commit()

    async def _create(self, db, row: Job) -> None:
        """Create the ConfigMap and Job of ``row`` (idempotent); fail the row if refused."""
        profile = self.profiles.get(row.profile)
        experiment = tracking.experiment_name(row.user, self.settings.experiment_template)
        if profile is None:
            row.state, row.finished_at = "failed", to_utc(self.clock())
            row.reason = f"ConfigError: profile {row.profile!r} no longer exists"
            return
        if self.mlflow is not None:
            exp_id = await self.mlflow.ensure(experiment)
            row.mlflow_experiment_id = exp_id or row.mlflow_experiment_id
        s = self.settings
        config_map = k8s_objects.build_config_map(
            name=row.k8s_name,
            namespace=self.backend.namespace,
            job_id=row.id,
            username=row.user,
            config=json.loads(row.config),
        )
        job = k8s_objects.build_job(
            name=row.k8s_name,
            namespace=self.backend.namespace,
            job_id=row.id,
            username=row.user,
            profile=profile,
            cluster=self.cluster,
            image=profile.image or s.image,
            claim_name=s.claim_name,
            config_map=row.k8s_name,
            tracking_uri=s.tracking_uri,
            experiment=experiment,
            priority=row.priority,
            backoff_limit=s.backoff_limit,
            ttl_seconds_after_finished=s.ttl_seconds_after_finished,
            kueue_queue=s.kueue_queue,
            service_account=s.service_account,
        )
        try:
            created = await self.backend.create_job(
                config_map=config_map, job=job, owner_reference=k8s_objects.owner_reference
            )
            if not getattr(created, "existed", False):  # a fake may return None
                row.attempts = (row.attempts or 0) + 1
        except KubeError as e:
            if e.status == 0 or e.status >= 500 or e.status == 429:
                log.warning("Cannot create Job %s yet (will retry): %s", row.k8s_name, e)
                return
            row.state, row.finished_at = "failed", to_utc(self.clock())
            row.reason = f"ConfigError: Kubernetes refused the Job ({e.status}): {e.message}"
            log.warning("Kubernetes refused Job %s: %s", row.k8s_name, e)

    async def _find_runs(self) -> None:
        """Record the MLflow run of jobs that started (looked up at most every 10 s each)."""
        if self.mlflow is None:
            return
        now = self.clock()
        with self.sessions() as db:
            rows = list(
                db.scalars(
                    select(Job).where(
                        Job.mlflow_run_id.is_(None),
                        Job.started_at.is_not(None),
                        Job.state.in_(("running", "succeeded", "failed", "cancelled")),
                    )
                )
            )
            for row in rows:
                if now - self._run_lookups.get(row.id, 0) < 10:
                    continue
                if row.finished_at and now - to_epoch(row.finished_at) > 3600:
                    continue  # it never reported; stop asking
                self._run_lookups[row.id] = now
                experiment = tracking.experiment_name(row.user, self.settings.experiment_template)
                found = await self.mlflow.find_run(experiment, row.k8s_name)
                if found:
                    row.mlflow_run_id = found
                    self._run_lookups.pop(row.id, None)
            db.commit()


def _config_error(e) -> QueueError:
    problems = [{"field": p.field, "message": p.message} for p in e.problems]
    first = problems[0]["field"] if problems else "config"
    field_name = first if first == "config" else f"config.{first}"
    if len(problems) > 1:
        message = f"the training config has {len(problems)} problems (listed in 'problems')"
    else:
        message = str(e)
    return QueueError(400, message, field_name, problems)


def _pods_by_job(pods: list[dict]) -> dict[str, list[dict]]:
    """Pods of queue Jobs by their job id label (as a string)."""
    by_job: dict[str, list[dict]] = {}
    for pod in pods:
        job_id = ((pod.get("metadata") or {}).get("labels") or {}).get(JOB_ID_LABEL)
        if job_id is not None:
            by_job.setdefault(str(job_id), []).append(pod)
    return by_job
