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
4. MLflow, in a background task that the pass starts (one at a time) and never waits for,
   outside the lock (:meth:`~ControlLoop.mlflow_work`): the experiments of the jobs just
   created are made to exist, the MLflow run of each job that started is found by its
   job-id tag (:meth:`llmspawner.tracking.Tracker.find_job_run`), and the runs of jobs that
   ended and are still ``RUNNING`` get their final status (``FINISHED`` / ``FAILED`` /
   ``KILLED``, :meth:`~llmspawner.tracking.Tracker.end_job_runs`). A hung or down MLflow
   only delays that task (each request times out, failures are remembered for
   ``retry_after`` seconds and retried at a later pass); passes and cancels never wait for
   it.

In ``kueue`` mode step 3 is replaced: every queued job gets a suspended Job at once and
Kueue decides when it runs (https://kueue.sigs.k8s.io/docs/tasks/run/jobs/); the loop only
tracks states.

No database session is open during an ``await`` (Kubernetes or MLflow): each step reads
what it needs and closes the session, awaits, then writes in a new session, re-checking
under the lock that each row is still in the state it was read in.

Interruptions (:mod:`llmspawner.queue.disruption`): a pod of a live Job with
``DisruptionTarget`` is counted once and its log saved (the Job controller replaces it),
also when it is gone before the next pass (:meth:`ControlLoop.note_pod`, the pod watch's
memory, and the pods an earlier pass listed); a Job that failed because its pod was deleted,
or a Job that vanished, is requeued as the next attempt's Job; a ``high`` job waiting for a
full profile preempts a running ``low``/``normal`` one (its log saved, its Job deleted,
requeued; at most ``max_preemptions`` times per job) and is admitted in the same pass, so
the freed slice is its own (:meth:`ControlLoop._preempt`). An admitted job without its Job
says why in its reason (:data:`WAITING_PREFIXES`: MLflow, the cluster's API, an earlier
attempt's pod or Job). Requeuing commits the row (``queued``, the
next attempt's Job name) before the old Job is deleted, and a later attempt's Job is created
only when no pod of an earlier attempt is left running, so a crash at any point never runs
one job twice at once; Jobs of earlier attempts are deleted by every pass.

A failed job's ``reason`` starts with a code: ``BackoffLimitExceeded``,
``DeadlineExceeded``, ``ImageError``, ``ConfigError``, ``Unschedulable``, ``Interrupted``
(more than ``max_requeues`` interruptions); an out-of-memory kill with
``out of memory (OOMKilled)``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time

import aiohttp
from sqlalchemy import select

from .. import capacity as capacity_mod
from ..mlflow_hub import JobTokens, TokenUnavailable, build_token_secret
from ..profiles import Profile
from ..tracking import TrackingUnavailable
from ..workload import LABEL_PROFILE, build_workload
from . import db as db_mod
from . import disruption, k8s_objects, planning
from .backend import JOB_ID_LABEL, KubeError
from .context import QueueContext, Waiting
from .disruption import disruption_reason, is_deleting, is_finished, pod_job_name
from .models import Job, JobPod
from .planning import plan_admission
from .states import (
    ACTIVE_STATES,
    ADMITTED,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    PRIORITY_CLASSES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
)
from .status import observe, to_epoch, to_utc

log = logging.getLogger(__name__)

#: Seconds between two MLflow look-ups of one job's run.
RUN_LOOKUP_INTERVAL = 10.0
#: Seconds after a job finished that its run is still looked for (and ended, if running).
RUN_LOOKUP_MAX_AGE = 3600.0
#: The MLflow status a job's runs get when it ends in each final state.
FINAL_RUN_STATUS = {SUCCEEDED: "FINISHED", FAILED: "FAILED", CANCELLED: "KILLED"}
#: After a wake-up that came during the last pass (a burst of submits), the loop gathers this
#: many times as long as that pass took (P2, issue 16: passes, each reading every queued job,
#: then take at most about a tenth of a burst, not half); other wake-ups (a freed slice) once.
PASS_GATHER = 9.0


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
        #: The MLflow work the last pass started (:meth:`mlflow_work`); ``None`` before.
        self.mlflow_task: asyncio.Task | None = None
        # experiment name -> owner, to make exist (jobs were created without waiting for it)
        self._pending_experiments: dict[str, str] = {}
        # jobs whose runs got their final status (by this process)
        self._ended_runs: set[int] = set()
        # C: requeued job id -> (user, requeue time in ms): its interrupted attempt's runs
        # still RUNNING (a training killed with its stack, or past its grace) end KILLED
        self._interrupted_runs: dict[int, tuple[str, int]] = {}
        #: The last failure to make an experiment exist (shown on the jobs that wait for
        #: it, :data:`WAITING_FOR_MLFLOW`); ``None`` after one that worked.
        self.experiment_error: str | None = None
        # pod name -> (its last state seen, removed: the watch saw it DELETED, listed: a
        # pass listed it): what the watch (note_pod) and the passes saw of the queue's pods,
        # so that a disrupted pod removed between two passes is still counted
        self._seen_pods: dict[str, tuple[dict, bool, bool]] = {}

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
        After a wake-up the loop gathers more for as long as the last pass took, or, when
        the wake-up came during that pass (a burst), :data:`PASS_GATHER` times as long (at
        least 0.05 s, at most 1 s), so that passes take at most about a tenth of the time
        however fast submits come (each pass reads every queued job): measured, submits
        under load went from 30/s to 67/s over a burst of 1,000 with passes at most half of
        the time (benchmarks/queue_throughput.py).
        """
        try:
            await self._run()
        finally:
            if self.mlflow_task is not None and not self.mlflow_task.done():
                self.mlflow_task.cancel()

    async def _run(self) -> None:
        took = 0.0
        while True:
            factor = PASS_GATHER if self.ctx.wake_pending() else 1.0
            await self.ctx.wait_for_wake(
                self.ctx.settings.interval, gather=min(1.0, max(0.05, factor * took))
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
            pods_of = _pods_by_job(pods)
            await self._delete_stale(jobs)
            await self._sync_states(by_name, pods_of, profiles)
            if self.ctx.settings.kueue_queue:
                await self._create_suspended(by_name, profiles, pods_of)
            else:
                await self._admit(profiles, pods_of, by_name)
        self.start_mlflow_work()

    def start_mlflow_work(self) -> asyncio.Task | None:
        """Start :meth:`mlflow_work` in the background unless it still runs; return the
        task (``None`` without a tracker). Never awaited by a pass."""
        if self.ctx.tracker is None:
            return None
        if self.mlflow_task is None or self.mlflow_task.done():
            self.mlflow_task = asyncio.create_task(self.mlflow_work(), name="llm-queue-mlflow")
        return self.mlflow_task

    def note_pod(self, type_: str, pod: dict) -> None:
        """Remember a queue pod's state from the pod watch
        (:meth:`~llmspawner.queue.backend.KubeBackend.watch_changes`, ``on_queue_pod``):
        ``type_`` is ``ADDED``, ``MODIFIED`` or ``DELETED``. A pod with ``DisruptionTarget``
        that the Job controller replaces within one pass is then still counted by the next
        pass (with the watch's last state of it, so with its reason). Memory only: what was
        not seen by a pass before a restart of the service is not counted."""
        meta = pod.get("metadata") or {}
        name = meta.get("name")
        if not name or not (meta.get("labels") or {}).get(JOB_ID_LABEL):
            return
        _, removed, listed = self._seen_pods.get(name, (pod, False, False))
        self._seen_pods[name] = (pod, removed or type_ == "DELETED", listed)

    async def mlflow_work(self) -> None:
        """Experiments to make, runs to find, runs to end (see the module docstring, step 4);
        a failure is logged in one line and retried by a later pass."""
        try:
            try:
                await self._ensure_experiments()
            except TrackingUnavailable as e:
                error = self.experiment_error if e.cached and self.experiment_error else str(e)
                if self._pending_experiments and self.experiment_error != error:
                    self.ctx.wake()  # a new reason for the jobs that wait: shown at once
                self.experiment_error = error
                raise
            self.experiment_error = None
            await self._find_runs()
            await self._end_runs()
            await self._end_interrupted_runs()
        except asyncio.CancelledError:
            raise
        except TrackingUnavailable as e:
            log.log(logging.DEBUG if e.cached else logging.WARNING, "MLflow: %s", e)
        except Exception as e:  # never a traceback per pass for MLflow
            log.warning("MLflow work failed (retried later): %s: %s", type(e).__name__, e)

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
        await _breathe()
        rows = self._read(select(Job).where(Job.state.in_(states)))
        await _breathe()
        known = self._known_pods([r.id for r in rows])
        await _breathe()
        changes: dict[int, tuple[str, dict]] = {}
        to_create: list[int] = []
        requeue: list[tuple[Job, str, bool]] = []
        interrupted_pods: list[tuple[Job, dict, str]] = []
        gone_of = self._gone_pods(pods_of)
        unresolved: set[str] = set()
        for n, row in enumerate(rows):
            if n and not n % _ROWS_PER_STEP:
                await _breathe()
            job = by_name.get(row.k8s_name)
            own = [
                p for p in pods_of.get(str(row.id), []) if pod_job_name(p) in (None, row.k8s_name)
            ]
            # a Failed Job's vanished pod is observe()'s (interrupted: requeued and counted)
            gone = gone_of.get(row.k8s_name, []) if job is not None and not _failed(job) else []
            if job is None:
                if row.state == RUNNING:
                    log.warning("Job %s of queue job %s is gone", row.k8s_name, row.id)
                    requeue.append((row, disruption.JOB_DELETED, True))
                elif row.state == ADMITTED:
                    to_create.append(row.id)
                continue  # kueue mode: a queued job's Job is made by _create_suspended
            counted_here = False
            for pod in own:
                name = pod["metadata"]["name"]
                reason = disruption_reason(pod)
                counted = known.get((row.id, name))
                if reason and not counted:
                    interrupted_pods.append((row, pod, reason))
                    counted_here = True
                elif counted:
                    counted_here = True
                elif counted is None and is_deleting(pod):
                    interrupted_pods.append((row, pod, ""))  # save its log while it lasts
            for pod in gone:  # removed since a pass or the watch saw it: never seen failing
                name = pod["metadata"]["name"]
                if known.get((row.id, name)):
                    continue
                reason = disruption_reason(pod)
                if not reason and settings.backoff_limit == 0 and own:
                    # replaced by the Job controller, so its failure was ignored: only a
                    # DisruptionTarget is (k8s_objects.POD_FAILURE_POLICY)
                    reason = disruption.REMOVED
                if reason:
                    interrupted_pods.append((row, pod, reason))
                    counted_here = True
                else:
                    unresolved.add(name)  # the next pass sees its replacement or the Job fail
            seen = observe(
                job,
                own,
                now=now,
                unschedulable_timeout=settings.unschedulable_timeout,
            )
            if seen.interrupted:
                # counted already when its pod's disruption was (a Job that did not ignore it)
                requeue.append((row, seen.interrupted, not counted_here))
                continue
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
            if seen.state in FINAL_STATES:
                values["interruption"] = ""
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
        await _breathe()
        self._write(changes)
        listed = {p["metadata"]["name"] for pods in pods_of.values() for p in pods}
        self._seen_pods = {
            name: seen
            for name, seen in self._seen_pods.items()
            if name in listed or name in unresolved or not (seen[1] or seen[2])
        }
        await self._record_pods(interrupted_pods)
        await self._requeue(requeue, pods_of)
        await self._create(to_create, ADMITTED, profiles, pods_of, by_name)

    # -- interruptions --------------------------------------------------------------------

    def _gone_pods(self, pods_of: dict) -> dict[str, list[dict]]:
        """Record the pass's listing in the pod memory (:meth:`note_pod`) and return the
        pods that are gone, by the name of their Job: listed by an earlier pass, or seen
        ``DELETED`` by the watch, and not in this listing; each with its last state seen."""
        listed = set()
        for pods in pods_of.values():
            for p in pods:
                name = p["metadata"]["name"]
                listed.add(name)
                _, removed, _ = self._seen_pods.get(name, (p, False, False))
                self._seen_pods[name] = (p, removed, True)
        gone: dict[str, list[dict]] = {}
        for name, (pod, removed, was_listed) in self._seen_pods.items():
            if name not in listed and (removed or was_listed):
                gone.setdefault(pod_job_name(pod) or "", []).append(pod)
        return gone

    def _known_pods(self, job_ids: list[int]) -> dict[tuple[int, str], bool]:
        """``{(job id, pod name): counted}`` of the pods already recorded (:class:`JobPod`)."""
        if not job_ids:
            return {}
        out: dict[tuple[int, str], bool] = {}
        with self.ctx.sessions() as db:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start : start + 500]
                for job_id, pod, counted in db.execute(
                    select(JobPod.job_id, JobPod.pod, JobPod.counted).where(
                        JobPod.job_id.in_(chunk)
                    )
                ):
                    out[(job_id, pod)] = bool(counted)
        return out

    async def _save_log(self, pod_name: str) -> str | None:
        """The end (:data:`~llmspawner.queue.disruption.MAX_SAVED_LOG` bytes) of a pod's log,
        or ``None`` when it cannot be read any more."""
        keep = disruption.MAX_SAVED_LOG
        data = b""
        try:
            # the end only: a whole day's log would outlast the request's timeout
            async for chunk in self.ctx.backend.stream_log(pod_name, tail_lines=SAVED_LOG_LINES):
                data = (data + chunk)[-keep:]
        except (KubeError, asyncio.TimeoutError, aiohttp.ClientError, OSError) as e:
            # a huge log past the request timeout, a reset, an unreachable node: what was
            # read is kept, and the pass goes on (never a pass failing on one pod's log)
            log.info("Cannot save the log of pod %s: %s", pod_name, type(e).__name__ + f" {e}")
            return None if not data else data.decode("utf-8", "replace")
        return data.decode("utf-8", "replace")

    async def _record_pods(self, items: list[tuple[Job, dict, str]]) -> None:
        """Save the log of each pod that is interrupted or being deleted, and count each
        disrupted one once (``reason`` set) against ``max_requeues``: the job shows
        ``"interrupted: <reason>, requeued (n of N)"`` while the Job controller replaces the
        pod, or fails (``Interrupted: ...``, its Job deleted) past the cap."""
        if not items:
            return
        logs = {}
        for _row, pod, _ in items:
            logs[pod["metadata"]["name"]] = await self._save_log(pod["metadata"]["name"])
        cap = self.ctx.settings.max_requeues
        now = to_utc(self.ctx.clock())
        to_delete: list[str] = []
        with self.ctx.sessions() as db:
            for row, pod, reason in items:
                name = pod["metadata"]["name"]
                text = logs[name]
                jp = db.scalar(select(JobPod).where(JobPod.job_id == row.id, JobPod.pod == name))
                if jp is None:
                    jp = JobPod(
                        job_id=row.id,
                        pod=name,
                        k8s_job=pod_job_name(pod) or row.k8s_name or "",
                        reason=reason,
                        counted=0,
                        log=text,
                        saved_at=now,
                    )
                    db.add(jp)
                else:
                    if text is not None and len(text) >= len(jp.log or ""):
                        jp.log, jp.saved_at = text, now
                    jp.reason = reason or jp.reason
                if not reason or jp.counted:
                    continue
                jp.counted = 1
                current = db.get(Job, row.id)
                if current is not None and current.state == SUCCEEDED:
                    # its replacement succeeded before a pass saw the disruption: counted,
                    # never failed for it
                    current.interruptions = (current.interruptions or 0) + 1
                    continue
                if current is None or current.state not in ACTIVE_STATES:
                    continue
                n = (current.interruptions or 0) + 1
                current.interruptions = n
                log.warning(
                    "Queue job %s: pod %s interrupted (%s), %d of %d", row.id, name, reason, n, cap
                )
                if n > cap:
                    current.state, current.finished_at = FAILED, now
                    current.reason = disruption.too_many_sentence(reason, n, cap)
                    current.interruption = ""
                    to_delete.append(current.k8s_name)
                else:
                    current.interruption = disruption.interrupted_sentence(reason, n, cap)
            db.commit()
        for name in to_delete:
            await self._delete_quietly(name)

    async def _delete_quietly(self, name: str) -> None:
        try:
            await self.ctx.backend.delete_job(name, config_map=name)
        except KubeError as e:  # _delete_stale retries it
            log.warning("Cannot delete Job %s yet (retried): %s", name, e)

    async def _requeue(
        self, items: list[tuple[Job, str, bool]], pods_of: dict, *, preempted_by: dict | None = None
    ) -> None:
        """Requeue interrupted jobs as their next attempt's Job: save the logs of their pods
        that are left, commit each row as ``queued`` with the next attempt's Job name (or
        ``failed`` past ``max_requeues``, for a counted interruption), then delete the old
        Job (its Job controller would otherwise go on). ``preempted_by``: victim id -> the
        sentence of the preemption, for rows stopped by the queue (not counted)."""
        if not items:
            return
        for row, _, _ in items:
            known = self._known_pods([row.id])
            pods = [
                p
                for p in pods_of.get(str(row.id), [])
                if pod_job_name(p) in (None, row.k8s_name)
                and (row.id, p["metadata"]["name"]) not in known
            ]
            if pods:
                await self._record_pods([(row, p, "") for p in pods])
        cap = self.ctx.settings.max_requeues
        now = to_utc(self.ctx.clock())
        old: list[str] = []
        with self.ctx.sessions() as db:
            for row, reason, counted in items:
                current = db.get(Job, row.id)
                if (
                    current is None
                    or current.state != row.state
                    or current.k8s_name != row.k8s_name
                ):
                    continue
                n = (current.interruptions or 0) + (1 if counted else 0)
                if counted and n > cap:
                    current.state, current.finished_at = FAILED, now
                    current.reason = disruption.too_many_sentence(reason, n, cap)
                    current.interruptions, current.interruption = n, ""
                    log.warning("Queue job %s failed: %s", row.id, current.reason)
                    old.append(row.k8s_name)
                    continue
                current.interruptions = n
                current.interruption = disruption.interrupted_sentence(
                    reason, n if counted else None, cap
                )
                current.state, current.reason = QUEUED, ""
                current.admitted_at = current.started_at = None
                # C: the next attempt's run is the job's (found again once it runs)
                current.mlflow_run_id = None
                self._run_lookups.pop(row.id, None)
                self._interrupted_runs[row.id] = (current.user, int(self.ctx.clock() * 1000))
                current.k8s_name = k8s_objects.job_name(
                    current.user, current.id, (current.attempts or 0) + 1
                )
                log.warning(
                    "Queue job %s requeued (%s); next Job %s",
                    row.id,
                    current.interruption,
                    current.k8s_name,
                )
                old.append(row.k8s_name)
            db.commit()
        for name in old:
            await self._delete_quietly(name)
        self.ctx.wake()

    async def _delete_stale(self, jobs: list[dict]) -> None:
        """Delete the Jobs of earlier attempts (their pods' logs were saved) and unfinished
        Jobs of jobs that ended: a requeue or a fail whose delete did not get through."""
        by_id: dict[int, list[str]] = {}
        for j in jobs:
            job_id = ((j.get("metadata") or {}).get("labels") or {}).get(JOB_ID_LABEL)
            if job_id and str(job_id).isdigit():
                by_id.setdefault(int(job_id), []).append(j["metadata"]["name"])
        if not by_id:
            return
        finished = {
            j["metadata"]["name"]
            for j in jobs
            if any(
                c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                for c in (j.get("status") or {}).get("conditions") or []
            )
        }
        await _breathe()
        with self.ctx.sessions() as db:
            rows = {
                job_id: (k8s_name, state, user)
                for job_id, k8s_name, state, user in db.execute(
                    select(Job.id, Job.k8s_name, Job.state, Job.user).where(
                        Job.id.in_(list(by_id)[:5000])
                    )
                )
            }
        await _breathe()
        for job_id, names in by_id.items():
            if job_id not in rows:
                continue  # not ours (startup() reports it)
            current, state, user = rows[job_id]
            base = k8s_objects.job_name(user, job_id)
            for name in names:
                if not _attempt_of(name, base):
                    continue  # same label, another installation's Job: never touched
                stale = name != current or (state in FINAL_STATES and name not in finished)
                if stale:
                    log.info("Deleting Job %s of queue job %s (%s)", name, job_id, state)
                    await self._delete_quietly(name)

    # -- admission ------------------------------------------------------------------------

    async def _admit(
        self, profiles: dict[str, Profile], pods_of: dict, by_name: dict | None = None
    ) -> None:
        ctx = self.ctx
        await _breathe()
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
        await _breathe()
        now = to_utc(ctx.clock())
        changes = {job_id: (QUEUED, self._failed(_gone(p))) for job_id, p in unknown}
        for job_id in decision.admit:
            changes[job_id] = (QUEUED, {"state": ADMITTED, "reason": "", "admitted_at": now})
        # Committed before any Job exists: a crash from here on is repaired by the next
        # pass (admitted without a Job -> create), never by admitting twice.
        self._write(changes)
        ctx.waiting = Waiting(decision.positions, decision.reasons)
        await _breathe()
        await self._create(list(decision.admit), ADMITTED, profiles, pods_of, by_name)
        if ctx.settings.preemption:
            free = {slug: (caps[slug].free if slug in caps else None) for slug in profiles}
            await self._preempt(
                decision, free, set(bound), all_pods, pods_of, profiles, by_name or {}
            )

    async def _preempt(
        self, decision, free: dict, bound: set[int], all_pods, pods_of, profiles, by_name
    ) -> None:
        """Preempt running ``low``/``normal`` queue jobs for the ``high`` jobs that wait only
        for a slice (:func:`llmspawner.queue.disruption.choose_preemptions`): each victim's
        log is saved, it is requeued (not counted against ``max_requeues``) and its Job
        deleted.

        The freed slice is the ``high`` job's: it is admitted in the same pass and its Job
        created, so that (a) the queue's own admission counts it as holding a slice of the
        profile (an admitted job whose pod holds none yet takes one from the free count,
        :func:`llmspawner.queue.admission.decide`), and no other queued job is admitted into
        it, and (b) its pod waits, pending, for the slice and the scheduler binds it the
        moment the victim's pod is gone, before any pod created later with a lower priority
        (its PriorityClass ``llm-high``; the scheduler orders pending pods by priority). What
        this cannot stop: a server whose pod is bound in the moment the victim's pod
        terminates and the high job's is not yet pending (the spawner counts bound pods, not
        pending ones); the high job then waits, and preempts again only while the victims'
        ``max_preemptions`` allow (a victim preempted that often is never chosen again and
        the waiter's reason says so: :func:`~llmspawner.queue.disruption.capped_sentence`)."""
        if not any(v == 0 for v in free.values()):
            return
        await _breathe()
        waiting_ids = [
            job_id
            for job_id, reason in decision.reasons.items()
            if reason.startswith("waiting for a free") and job_id not in decision.admit
        ]
        if not waiting_ids:
            return
        await _breathe()
        waiters = sorted(
            self._read(
                select(Job).where(
                    Job.id.in_(waiting_ids[:5000]), Job.state == QUEUED, Job.priority == "high"
                )
            ),
            key=lambda r: decision.positions.get(r.id, 0),
        )
        if not waiters:
            return
        profiles_wanted = {w.profile for w in waiters if free.get(w.profile) == 0}
        running = self._read(
            select(Job).where(
                Job.state.in_(ACTIVE_STATES),
                Job.priority != "high",
                Job.profile.in_(profiles_wanted),
            )
        )
        freeing: dict[str, int] = {}
        for pod in all_pods:
            if is_deleting(pod) and capacity_mod.bound_and_running(pod):
                slug = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_PROFILE)
                if slug:
                    freeing[slug] = freeing.get(slug, 0) + 1
        counts = self._preemption_counts([r.id for r in running])
        cap = self.ctx.settings.max_preemptions
        candidates = [
            disruption.Running(
                r.id,
                r.profile,
                r.priority,
                to_epoch(r.started_at or r.admitted_at or r.submitted_at),
                holds_slice=r.id in bound,
                preemptions=counts.get(r.id, 0),
            )
            for r in running
        ]
        wanting = [disruption.Waiter(w.id, w.profile) for w in waiters]
        chosen = disruption.choose_preemptions(
            wanting, candidates, free=free, freeing=freeing, max_preemptions=cap
        )
        reasons = self.ctx.waiting.reasons
        capped = disruption.capped_waiters(
            wanting, candidates, free=free, freeing=freeing, max_preemptions=cap
        )
        for waiter, jobs in capped.items():
            note = disruption.capped_sentence(jobs, cap)
            reasons[waiter] = f"{reasons[waiter]}; {note}" if reasons.get(waiter) else note
            log.info("Queue job %s (high) waits: %s", waiter, note)
        if not chosen:
            return
        by_id = {r.id: r for r in running}
        items = []
        for victim, waiter in chosen:
            row = by_id[victim]
            reason = f"preempted by job {waiter} of priority high"
            log.warning(
                "Preempting queue job %s (%s, %s) on profile %s for job %s (high)",
                victim,
                row.user,
                row.priority,
                row.profile,
                waiter,
            )
            items.append((row, reason, False))
        await self._record_preemptions(items)
        await self._requeue(items, pods_of)
        # the freed slice is reserved for the high job: admitted now (see the docstring)
        now = to_utc(self.ctx.clock())
        admit = [waiter for _, waiter in chosen]
        self._write(
            {w: (QUEUED, {"state": ADMITTED, "reason": "", "admitted_at": now}) for w in admit}
        )
        for w in admit:
            reasons.pop(w, None)
        await self._create(admit, ADMITTED, profiles, pods_of, by_name)

    def _preemption_counts(self, job_ids: list[int]) -> dict[int, int]:
        """``{job id: times the queue preempted it}`` (its :class:`JobPod` rows of a
        preemption, :meth:`_record_preemptions`)."""
        if not job_ids:
            return {}
        out: dict[int, int] = {}
        with self.ctx.sessions() as db:
            for job_id, pod in db.execute(
                select(JobPod.job_id, JobPod.pod).where(JobPod.job_id.in_(job_ids[:5000]))
            ):
                if pod.endswith(PREEMPTED_SUFFIX):
                    out[job_id] = out.get(job_id, 0) + 1
        return out

    async def _record_preemptions(self, items: list[tuple[Job, str, bool]]) -> None:
        """One :class:`JobPod` row per preempted job (its log is saved by :meth:`_requeue`),
        so that admins see why it was preempted in its list of attempts."""
        now = to_utc(self.ctx.clock())
        with self.ctx.sessions() as db:
            for row, reason, _ in items:
                db.add(
                    JobPod(
                        job_id=row.id,
                        pod=f"{row.k8s_name}{PREEMPTED_SUFFIX}",
                        k8s_job=row.k8s_name,
                        reason=reason,
                        counted=0,
                        log=None,
                        saved_at=now,
                    )
                )
            db.commit()

    async def _create_suspended(self, by_name: dict, profiles, pods_of: dict) -> None:
        rows = self._read(select(Job).where(Job.state == QUEUED))
        await self._create(
            [r.id for r in rows if r.k8s_name not in by_name], QUEUED, profiles, pods_of, by_name
        )

    # -- Jobs -----------------------------------------------------------------------------

    def manifests(
        self, row: Job, profile: Profile, *, mlflow_token_secret: str | None = None
    ) -> tuple[dict, dict]:
        """The ConfigMap and Job of a job (pure, from the row and the platform settings):
        :func:`job_manifests`."""
        ctx = self.ctx
        return job_manifests(
            job_id=row.id,
            username=row.user,
            name=row.k8s_name,
            config=json.loads(row.config),
            priority=row.priority,
            profile=profile,
            platform=ctx.platform,
            settings=ctx.settings,
            namespace=ctx.namespace,
            mlflow_token_secret=mlflow_token_secret,
        )

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

    async def _create(
        self,
        job_ids: list[int],
        expected: str,
        profiles,
        pods_of: dict | None = None,
        by_name: dict | None = None,
    ) -> None:
        """Create the ConfigMap and Job of each job still in state ``expected``
        (idempotent), then record the outcomes in one session: ``attempts`` and the MLflow
        experiment id, or ``failed`` when Kubernetes refuses a Job for good (a transient
        refusal is retried at the next pass). A job with a pod of an earlier attempt that
        has not finished (``pods_of``, the pass's listing), or whose earlier attempt's Job is
        still listed (``by_name``: its controller could still make a replacement pod until
        the Job is gone), waits for the next pass: two attempts never write to the same
        output folder at once (with Kueue too: a suspended Job is created only then)."""
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
        waiting: dict[int, str] = {}  # id -> why it has no Job yet (shown as its reason)
        for row in sorted(rows, key=lambda r: order[r.id]):
            earlier = [
                p
                for p in (pods_of or {}).get(str(row.id), [])
                if pod_job_name(p) not in (None, row.k8s_name) and not is_finished(p)
            ]
            if earlier:
                log.info(
                    "Job %s waits for pod %s of its earlier attempt to end",
                    row.k8s_name,
                    earlier[0]["metadata"]["name"],
                )
                waiting[row.id] = (
                    f"waiting for the pod {earlier[0]['metadata']['name']} of its earlier "
                    "attempt to end"
                )
                continue
            base = k8s_objects.job_name(row.user, row.id)
            earlier_jobs = [
                n for n in (by_name or {}) if n != row.k8s_name and _attempt_of(n, base)
            ]
            if earlier_jobs:
                log.info(
                    "Job %s waits for Job %s of its earlier attempt to be gone",
                    row.k8s_name,
                    earlier_jobs[0],
                )
                waiting[row.id] = (
                    f"waiting for the Job {earlier_jobs[0]} of its earlier attempt to be deleted"
                )
                continue
            profile = profiles.get(row.profile)
            if profile is None:
                failed[row.id] = (expected, self._failed(_gone(row.profile)))
                continue
            experiment_id = None
            experiment = ctx.experiment(row.user)
            if ctx.tracker is not None and experiment:
                # Never waited for here (under the lock): made to exist and given to its user
                # by mlflow_work, which then wakes the loop; the Job is created by the pass
                # after that. A pod started before could meet the experiment made but not yet
                # granted (a queue service killed in between: its runs/create answers 403 and
                # the training fails), or MLflow down (the same).
                experiment_id = ctx.tracker.known_experiment_id(experiment, owner=row.user)
                if experiment_id is None:
                    self._pending_experiments[experiment] = row.user
                    log.info("Job %s waits for its MLflow experiment %s", row.k8s_name, experiment)
                    waiting[row.id] = waiting_for_mlflow(self.experiment_error)
                    continue
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
                    waiting[row.id] = waiting_for_cluster(e)
                    continue
                log.warning("Kubernetes refused Job %s: %s", row.k8s_name, e)
                reason = f"ConfigError: Kubernetes refused the Job ({e.status}): {e.message}"
                failed[row.id] = (expected, self._failed(reason))
                continue
            # A stand-in backend may return None.
            created[row.id] = (getattr(outcome, "existed", False), experiment_id)
        self._write(failed)
        self._write(
            {
                r.id: (expected, {"reason": waiting[r.id]})
                for r in rows
                if r.id in waiting and r.reason != waiting[r.id]
            }
        )
        stale: set[int] = set()
        with ctx.sessions() as db:
            for job_id, (existed, experiment_id) in created.items():
                current = db.get(Job, job_id)
                if current is None or current.state != expected:
                    stale.add(job_id)
                    continue
                # the attempt its name says: a Job found existing (a create whose reply was
                # lost, a restart between the create and this write) is this attempt's too
                number = _attempt_number(current.k8s_name, k8s_objects.job_name(row.user, job_id))
                if not existed or (current.attempts or 0) < number:
                    current.attempts = max((current.attempts or 0) + (not existed), number)
                if (current.reason or "").startswith(WAITING_PREFIXES):
                    current.reason = ""  # the next pass reads the Job's own
                if experiment_id:
                    current.mlflow_experiment_id = experiment_id
            db.commit()
        stale_rows = [r for r in rows if r.id in stale]
        for row in stale_rows:  # cannot happen under the lock; never leave a stray Job
            log.warning("Job %s changed while its Job was created; deleting it", row.id)
            await ctx.backend.delete_job(row.k8s_name, config_map=row.k8s_name)

    # -- MLflow runs ----------------------------------------------------------------------

    async def _ensure_experiments(self) -> None:
        """Make the experiments of the jobs created since exist (owner given ``MANAGE``) and
        record their ids on the jobs that have none."""
        tracker = self.ctx.tracker
        for name, owner in list(self._pending_experiments.items()):
            experiment_id = await tracker.experiment_id(name, owner=owner)
            self._pending_experiments.pop(name, None)
            self.ctx.wake()  # the jobs waiting for it get their Jobs at the next pass
            with self.ctx.sessions() as db:
                for row in db.scalars(
                    select(Job).where(Job.user == owner, Job.mlflow_experiment_id.is_(None))
                ):
                    row.mlflow_experiment_id = experiment_id
                db.commit()

    async def _end_runs(self) -> None:
        """Give the runs of jobs that ended (less than :data:`RUN_LOOKUP_MAX_AGE` s ago) and
        are still ``RUNNING`` their final status: ``FINISHED`` (succeeded), ``FAILED``,
        ``KILLED`` (cancelled): a training killed at once (out of memory, a deleted pod past
        its grace period) never ends its own run."""
        tracker = self.ctx.tracker
        now = self.ctx.clock()
        rows = [
            r
            for r in self._read(
                select(Job).where(Job.state.in_(FINAL_STATES), Job.started_at.is_not(None))
            )
            if r.id not in self._ended_runs
            and r.finished_at is not None
            and now - to_epoch(r.finished_at) <= RUN_LOOKUP_MAX_AGE
        ]
        for row in rows:
            experiment = self.ctx.experiment(row.user)
            if not experiment:
                continue
            ended = await tracker.end_job_runs(
                experiment, row.id, FINAL_RUN_STATUS[row.state], owner=row.user
            )
            self._ended_runs.add(row.id)
            if ended:
                log.info(
                    "MLflow run(s) %s of job %s ended as %s",
                    ", ".join(ended),
                    row.id,
                    FINAL_RUN_STATUS[row.state],
                )

    async def _end_interrupted_runs(self) -> None:
        """End as ``KILLED`` the runs still ``RUNNING`` of the attempts that were interrupted
        and requeued (those started before the requeue: never the next attempt's), e.g. a
        training killed with the whole stack (issue 13 §5); a failure is retried later."""
        tracker = self.ctx.tracker
        for job_id, (user, before_ms) in list(self._interrupted_runs.items()):
            experiment = self.ctx.experiment(user)
            if experiment:
                ended = await tracker.end_job_runs(
                    experiment, job_id, "KILLED", owner=user, started_before_ms=before_ms
                )
                if ended:
                    log.info(
                        "MLflow run(s) %s of job %s's interrupted attempt ended as KILLED",
                        ", ".join(ended),
                        job_id,
                    )
            self._interrupted_runs.pop(job_id, None)

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
                # C: a requeued job's run is its current attempt's, started after that
                # attempt's admission (2 s for clocks), never an interrupted one's
                after = {}
                if (row.attempts or 0) > 1 and row.admitted_at is not None:
                    after["started_after_ms"] = int(to_epoch(row.admitted_at) * 1000) - 2000
                run_id = await tracker.find_job_run(
                    self.ctx.experiment(row.user), row.id, owner=row.user, **after
                )
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


def job_manifests(
    *,
    job_id: int,
    username: str,
    name: str,
    config: dict,
    priority: str,
    profile: Profile,
    platform,
    settings,
    namespace: str,
    mlflow_token_secret: str | None = None,
) -> tuple[dict, dict]:
    """The ConfigMap and Job of one attempt of a queue job (pure; what the loop creates and
    ``llmspawner queue render`` prints).

    The pod is the user's workload (:func:`llmspawner.workload.build_workload`: the same
    image, resources, storage, security context, MLflow environment as their server), with
    the queue's image when ``settings.image`` is set and the profile has none.

    Args:
        job_id: the queue job's id.
        username: its owner.
        name: the attempt's Job (and ConfigMap) name (:func:`~.k8s_objects.job_name`).
        config: the prepared training config.
        priority: ``high``, ``normal`` or ``low``.
        profile: its profile.
        platform: the :class:`~llmspawner.settings.LLMPlatform` settings.
        settings: the :class:`~llmspawner.queue.context.QueueSettings`.
        namespace: the Jobs' namespace.
        mlflow_token_secret: the Secret with the job's MLflow token, if one is made.

    Returns:
        ``(config_map, job)`` dicts.
    """
    config_map = k8s_objects.build_config_map(
        name=name, namespace=namespace, job_id=job_id, username=username, config=config
    )
    workload = build_workload(
        username=username, profile=profile, settings=platform, image=settings.image or None
    )
    job = k8s_objects.build_job(
        name=name,
        namespace=namespace,
        job_id=job_id,
        workload=workload,
        config_map=name,
        priority=priority,
        active_deadline_seconds=profile.max_runtime or None,
        backoff_limit=settings.backoff_limit,
        ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
        kueue_queue=settings.kueue_queue,
        service_account=settings.service_account,
        tracking=bool(platform.mlflow_tracking_uri),
        mlflow_token_secret=mlflow_token_secret,
    )
    return config_map, job


#: Lines of an interrupted pod's log asked for (its last ones; then cut to MAX_SAVED_LOG bytes).
SAVED_LOG_LINES = 20_000


#: The end of the :class:`JobPod` ``pod`` of a preemption (its Job's name before it).
PREEMPTED_SUFFIX = " (preempted)"

#: The start of the reason of an admitted job whose Job is not created yet: it waits for
#: MLflow, for the cluster's API (:func:`waiting_for_mlflow`, :func:`waiting_for_cluster`), or
#: for the pod or Job of its earlier attempt to be gone.
WAITING_PREFIXES = (
    "waiting for MLflow",
    "waiting for the cluster's API",
    "waiting for the pod ",
    "waiting for the Job ",
)


def waiting_for_mlflow(error: str | None) -> str:
    """The reason of an admitted job whose Job is not created because its MLflow experiment
    could not be made yet: ``"waiting for MLflow: <error>, retrying"`` (``error`` from the
    last try; ``None``: none ended yet, e.g. MLflow hangs)."""
    if error:
        return f"waiting for MLflow: {error}, retrying"
    return "waiting for MLflow to make its experiment, retrying"


def waiting_for_cluster(error: KubeError) -> str:
    """The reason of an admitted job whose Job create failed on a transient API error
    (5xx, 429, unreachable), retried by every pass."""
    return f"waiting for the cluster's API: {error}, retrying"


#: Rows of a pass's state sync handled between two yields to the event loop (:func:`_breathe`).
_ROWS_PER_STEP = 50


async def _breathe() -> None:
    """Let the event loop run what waits (API calls) between two steps of a pass.

    A pass is CPU work (database reads, the pods' states, the plan's result) between few
    awaits; done in one go it held the loop for tens of ms (up to 70 ms of wall time at load
    4 on 2 cores), and every API call that arrived meanwhile waited for all of it
    (``benchmarks/queue_pass_block.py``). Each step between two yields stays a few ms of CPU.
    Nothing read before a yield is trusted after it without a check: writes go through
    :meth:`ControlLoop._write`, which leaves a row whose state changed since it was read
    (the pass awaited the cluster at the same places before).
    """
    await asyncio.sleep(0)


def _attempt_of(name: str, base: str) -> bool:
    """Whether ``name`` is the Job of an attempt of the job whose first Job is ``base``
    (``base``, or ``base-a<n>``)."""
    if name == base:
        return True
    rest = name[len(base) :] if name.startswith(base) else ""
    return rest.startswith("-a") and rest[2:].isdigit()


def _attempt_number(name: str, base: str) -> int:
    """The attempt a Job name stands for: 1 for ``base``, ``n`` for ``base-a<n>``, 0 for
    another name."""
    if name == base:
        return 1
    if _attempt_of(name, base):
        return int(name[len(base) + 2 :])
    return 0


def _failed(job: dict) -> bool:
    """Whether a Job has the condition ``Failed``."""
    return any(
        c.get("type") == "Failed" and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


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
