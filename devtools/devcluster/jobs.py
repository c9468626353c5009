"""A small batch/v1 Job controller.

For each Job: while ``spec.suspend`` is false, keeps ``min(parallelism, completions -
succeeded)`` pods from ``spec.template`` (named ``<job>-<random5>``, labelled
``batch.kubernetes.io/job-name``/``job-name``/``controller-uid``, owned by the Job); counts
failed pods against ``backoffLimit`` (for ``restartPolicy: OnFailure``, container restarts
count too); fails the Job with reason ``BackoffLimitExceeded`` or ``DeadlineExceeded``
(``activeDeadlineSeconds``, counted from ``status.startTime``), deleting its active pods;
completes it once ``completions`` pods succeeded; sets ``status.active/ready/succeeded/
failed/startTime/completionTime/conditions`` (with 1.31's FailureTarget/SuccessCriteriaMet
before Failed/Complete); deletes suspended Jobs' pods (condition Suspended) and recreates them
on resume; deletes finished Jobs after ``ttlSecondsAfterFinished`` (with their pods).

https://kubernetes.io/docs/concepts/workloads/controllers/job/
https://kubernetes.io/docs/concepts/workloads/controllers/ttlafterfinished/
Not emulated: Indexed completion mode, podFailurePolicy, successPolicy, pod replacement
policy, the exponential back-off between retries (``retry_delay`` seconds instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import logging
import time

from .controller import reconcile_loop
from .events import record_event
from .resources import JOBS, PODS
from .scheduler import set_condition
from .store import ApiError, Event, Store, now_iso

log = logging.getLogger(__name__)


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return (
        datetime.datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
        .replace(tzinfo=datetime.timezone.utc)
        .timestamp()
    )


def _cond_true(job: dict, type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def is_finished(job: dict) -> bool:
    """True once the Job has a Complete or Failed condition."""
    return _cond_true(job, "Complete") or _cond_true(job, "Failed")


def job_pods(store: Store, job: dict) -> list[dict]:
    """The pods the Job controls (an ownerReference with the Job's uid)."""
    uid = job["metadata"]["uid"]
    return [
        p
        for p in store.iter(PODS, job["metadata"]["namespace"])
        if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
    ]


def pod_from_template(job: dict) -> dict:
    """A new pod manifest for ``job`` (generateName ``<job>-``, owner reference)."""
    template = copy.deepcopy(job["spec"]["template"])
    meta = template.get("metadata") or {}
    return {
        "metadata": {
            "generateName": f"{job['metadata']['name']}-",
            "namespace": job["metadata"]["namespace"],
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job["metadata"]["name"],
                    "uid": job["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": template["spec"],
    }


def _condition(type_: str, reason: str = "", message: str = "", status: str = "True") -> dict:
    now = now_iso()
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


class JobController:
    """Reconciles every Job on Job/Pod changes and every ``interval`` seconds.

    ``retry_delay``: seconds to wait after a failed pod before creating its replacement.
    ``clock``: a function returning the current time in seconds (injectable).
    """

    def __init__(
        self,
        store: Store,
        interval: float = 1.0,
        retry_delay: float = 0.0,
        clock=time.time,
    ):
        self.store = store
        self.interval = interval
        self.retry_delay = retry_delay
        self.clock = clock
        self._wake = asyncio.Event()
        self._last_failure: dict[str, float] = {}  # job uid -> time of the last pod failure
        self._seen_failures: dict[str, int] = {}  # job uid -> failed pods seen
        store.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.resource in (JOBS, PODS):
            self._wake.set()

    async def run(self) -> None:
        """Reconcile until cancelled."""
        await reconcile_loop(self.reconcile, self._wake, self.interval, "job controller")

    def reconcile(self) -> None:
        """One pass over every Job."""
        for job in list(self.store.iter(JOBS)):
            if not job["metadata"].get("deletionTimestamp"):
                self.sync(job)

    def _delete_pods(self, pods: list[dict]) -> None:
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            with contextlib.suppress(ApiError):
                self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])

    def sync(self, job: dict) -> None:
        """Bring one Job's pods and status in line with its spec."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        spec, status = job["spec"], job.get("status") or {}
        now = self.clock()
        pods = job_pods(self.store, job)
        active = [
            p
            for p in pods
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
        ]
        if is_finished(job):
            self._delete_pods(active)
            ttl = spec.get("ttlSecondsAfterFinished")
            done_at = _parse_time(status.get("completionTime")) or _parse_time(
                next(
                    (
                        c["lastTransitionTime"]
                        for c in status.get("conditions") or []
                        if c["type"] in ("Complete", "Failed")
                    ),
                    None,
                )
            )
            if ttl is not None and done_at is not None and now >= done_at + ttl:
                with contextlib.suppress(ApiError):
                    self.store.delete(JOBS, ns, name, propagation="Background")
            return
        succeeded = sum(1 for p in pods if p["status"].get("phase") == "Succeeded")
        failed_pods = [p for p in pods if p["status"].get("phase") == "Failed"]
        restarts = 0
        if spec["template"]["spec"].get("restartPolicy") == "OnFailure":
            restarts = sum(
                cs.get("restartCount", 0)
                for p in active
                for cs in (p.get("status") or {}).get("containerStatuses") or []
            )
        failed = len(failed_pods)
        ready = sum(
            1
            for p in active
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        )
        new_conditions: list[dict] = []
        finish: dict = {}
        if spec.get("suspend"):
            self._delete_pods(active)
            if not _cond_true(job, "Suspended"):
                new_conditions.append(_condition("Suspended", "JobSuspended", "Job suspended"))
                record_event(
                    self.store, job, "Suspended", "Job suspended", component="job-controller"
                )
            active = []
        else:
            if _cond_true(job, "Suspended"):
                new_conditions.append(
                    _condition("Suspended", "JobResumed", "Job resumed", status="False")
                )
                record_event(self.store, job, "Resumed", "Job resumed", component="job-controller")
            start = status.get("startTime") if not _cond_true(job, "Suspended") else None
            start = start or now_iso()
            finish["startTime"] = start
            deadline = spec.get("activeDeadlineSeconds")
            completions = int(spec.get("completions") or 1)
            if failed + restarts > int(spec.get("backoffLimit", 6)):
                reason, message = (
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
            elif deadline is not None and now >= (_parse_time(start) or now) + int(deadline):
                reason, message = (
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
            else:
                reason = message = ""
            if reason:
                self._delete_pods(active)
                new_conditions += [
                    _condition("FailureTarget", reason, message),
                    _condition("Failed", reason, message),
                ]
                record_event(self.store, job, reason, message, "Warning", "job-controller")
                active = []
            elif succeeded >= completions:
                finish["completionTime"] = now_iso()
                new_conditions += [
                    _condition(
                        "SuccessCriteriaMet",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                    _condition(
                        "Complete",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                ]
                record_event(
                    self.store, job, "Completed", "Job completed", component="job-controller"
                )
            else:
                want = min(int(spec.get("parallelism", 1)), completions - succeeded) - len(active)
                uid = job["metadata"]["uid"]
                last_failure = self._last_failure.get(uid, 0.0)
                if len(failed_pods) > self._seen_failures.get(uid, 0):
                    self._last_failure[uid] = last_failure = now
                    self._seen_failures[uid] = len(failed_pods)
                if want > 0 and now >= last_failure + self.retry_delay:
                    for _ in range(want):
                        try:
                            pod = self.store.create(PODS, pod_from_template(job), ns)
                        except ApiError as exc:
                            record_event(
                                self.store,
                                job,
                                "FailedCreate",
                                f"Error creating: {exc.message}",
                                "Warning",
                                "job-controller",
                            )
                            break
                        active.append(pod)
                        record_event(
                            self.store,
                            job,
                            "SuccessfulCreate",
                            f"Created pod: {pod['metadata']['name']}",
                            component="job-controller",
                        )

        def change(obj: dict) -> None:
            st = obj.setdefault("status", {})
            st.update(finish)
            st["active"] = len(active)
            st["ready"] = ready if active else 0
            st["succeeded"] = succeeded
            st["failed"] = failed
            st.setdefault("uncountedTerminatedPods", {})
            for cond in new_conditions:
                set_condition(obj, cond)
            for key in ("active", "succeeded", "failed"):
                if st[key] == 0:
                    st.pop(key)

        self.store.mutate(JOBS, ns, name, change)
