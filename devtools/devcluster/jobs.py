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

Pod tracking, as the real controller's ``batch.kubernetes.io/job-tracking`` finalizer makes
it: a pod counts once it is terminal, even after it is removed (the controller sees every
pod's last state through the store's events); a pod removed before it was terminal (force
deletion) counts as failed; pods the controller deletes itself (suspend, a finished Job)
never count. Without ``podFailurePolicy``, a pod being deleted counts as failed at once and
is replaced (``podReplacementPolicy: TerminatingOrFailed``); with one, it is replaced once
terminal (``Failed``), as upstream.

``podFailurePolicy`` (https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy,
``pkg/controller/job/pod_failure_policy.go``): for each failed pod the first matching rule's
``action`` applies: ``FailJob`` (conditions FailureTarget and Failed, reason
``PodFailurePolicy``, message ``Container <c> for pod <ns>/<pod> failed with exit code <n>
matching FailJob rule at index <i>`` or ``Pod <ns>/<pod> has condition <type> matching FailJob
rule at index <i>``), ``Ignore`` (not counted in ``status.failed`` nor against
``backoffLimit``; a replacement is created) or ``Count`` (the default without a match).
``onExitCodes`` (``containerName``, ``operator`` In/NotIn, ``values``) matches a container
(or init container) terminated with a non-zero exit code; ``onPodConditions`` (``type``,
``status`` default True) a pod condition. Checked at creation (`admit_job`): the template's
``restartPolicy`` must be ``Never``, and the rules well formed, else 422 ``Invalid`` worded
as kube-apiserver's.

https://kubernetes.io/docs/concepts/workloads/controllers/job/
https://kubernetes.io/docs/concepts/workloads/controllers/ttlafterfinished/
Not emulated: Indexed completion mode (and ``FailIndex``), successPolicy, an explicit
``podReplacementPolicy``, the exponential back-off between retries (``retry_delay`` seconds
instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
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


POLICY_ACTIONS = ("Count", "FailIndex", "FailJob", "Ignore")


def _invalid(job: dict, errors: list[tuple[str, object, str]]) -> ApiError:
    """422 ``Invalid`` for a Job, worded as kube-apiserver's field errors."""
    name = job.get("metadata", {}).get("name", "")
    causes = [
        {
            "reason": "FieldValueInvalid",
            "message": f"Invalid value: {json.dumps(value)}: {detail}",
            "field": path,
        }
        for path, value, detail in errors
    ]
    text = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    if len(causes) > 1:
        text = f"[{text}]"
    return ApiError(
        422,
        "Invalid",
        f'Job.batch "{name}" is invalid: {text}',
        {"name": name, "group": "batch", "kind": "Job", "causes": causes},
    )


def policy_errors(spec: dict) -> list[tuple[str, object, str]]:
    """``(field path, value, detail)`` for each problem of ``spec.podFailurePolicy`` (as
    ``pkg/apis/batch/validation``), empty if it is fine or absent."""
    policy = spec.get("podFailurePolicy")
    if policy is None:
        return []
    errors: list[tuple[str, object, str]] = []
    template = (spec.get("template") or {}).get("spec") or {}
    restart = template.get("restartPolicy", "Always")
    if restart != "Never":
        errors.append(
            (
                "spec.template.spec.restartPolicy",
                restart,
                'only "Never" is supported when podFailurePolicy is specified',
            )
        )
    names = {c.get("name") for c in template.get("containers") or []}
    names |= {c.get("name") for c in template.get("initContainers") or []}
    rules = policy.get("rules")
    if not isinstance(rules, list):
        return [*errors, ("spec.podFailurePolicy.rules", rules, "must be a list of rules")]
    for i, rule in enumerate(rules):
        at = f"spec.podFailurePolicy.rules[{i}]"
        action = rule.get("action")
        if action not in POLICY_ACTIONS:
            supported = ", ".join(f'"{a}"' for a in POLICY_ACTIONS)
            errors.append((f"{at}.action", action, f"supported values: {supported}"))
        elif action == "FailIndex":
            errors.append(
                (f"{at}.action", action, "requires the Indexed completion mode (not emulated)")
            )
        codes, conds = rule.get("onExitCodes"), rule.get("onPodConditions")
        if (codes is None) == (conds is None):
            errors.append(
                (at, None, "specifying one of OnExitCodes and OnPodConditions is required")
            )
        if codes is not None:
            operator = codes.get("operator")
            if operator not in ("In", "NotIn"):
                errors.append(
                    (f"{at}.onExitCodes.operator", operator, 'supported values: "In", "NotIn"')
                )
            values = codes.get("values") or []
            if not values:
                errors.append((f"{at}.onExitCodes.values", values, "Required value"))
            for j, value in enumerate(values):
                if operator == "In" and value == 0:
                    errors.append(
                        (f"{at}.onExitCodes.values[{j}]", 0, "must not be 0 for the In operator")
                    )
            if len(set(values)) != len(values):
                errors.append((f"{at}.onExitCodes.values", values, "must not contain duplicates"))
            container = codes.get("containerName")
            if container is not None and container not in names:
                errors.append(
                    (
                        f"{at}.onExitCodes.containerName",
                        container,
                        "must be one of the container or initContainer names in the pod template",
                    )
                )
        for j, cond in enumerate(conds or []):
            if not cond.get("type"):
                errors.append((f"{at}.onPodConditions[{j}].type", "", "Required value"))
            if cond.get("status", "True") not in ("True", "False", "Unknown"):
                errors.append(
                    (
                        f"{at}.onPodConditions[{j}].status",
                        cond.get("status"),
                        'supported values: "False", "True", "Unknown"',
                    )
                )
    return errors


def admit_job(store: Store, res, obj: dict) -> None:
    """Admission hook (``Store.admit``): refuse a Job whose ``podFailurePolicy`` is invalid
    (422, see `policy_errors`)."""
    if res != JOBS:
        return
    errors = policy_errors(obj.get("spec") or {})
    if errors:
        raise _invalid(obj, errors)


def match_pod_failure_policy(policy: dict, pod: dict) -> tuple[str, str] | None:
    """The action of the first rule of ``policy`` that matches the failed ``pod`` and its
    message (``FailJob`` rules: the Job's condition message), or None (no rule matches:
    count it). As ``matchPodFailurePolicy`` upstream."""
    status = pod.get("status") or {}
    meta = pod["metadata"]
    where = f"{meta.get('namespace')}/{meta['name']}"
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for i, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action", "")
        codes = rule.get("onExitCodes")
        if codes is not None:
            values = set(codes.get("values") or [])
            for cs in statuses:
                if codes.get("containerName") and cs.get("name") != codes["containerName"]:
                    continue
                terminated = (cs.get("state") or {}).get("terminated")
                if not terminated or not terminated.get("exitCode"):
                    continue
                code = terminated["exitCode"]
                if (code in values) == (codes.get("operator") == "In"):
                    return action, (
                        f"Container {cs.get('name')} for pod {where} failed with exit code "
                        f"{code} matching {action} rule at index {i}"
                    )
        for want in rule.get("onPodConditions") or []:
            for cond in status.get("conditions") or []:
                if cond.get("type") == want.get("type") and cond.get("status") == want.get(
                    "status", "True"
                ):
                    return action, (
                        f"Pod {where} has condition {cond['type']} matching {action} rule at "
                        f"index {i}"
                    )
    return None


def _controller_uid(pod: dict) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("controller"):
            return ref.get("uid")
    return None


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
        #: job uid -> pod uid -> the pod's last state, for pods that were removed (the
        #: tracking finalizer's record: they still count)
        self._gone: dict[str, dict[str, dict]] = {}
        self._own_deletions: set[str] = set()  # pods this controller deleted (never counted)
        store.add_listener(self._on_event)
        if admit_job not in store.admit:  # the API server's podFailurePolicy validation
            store.admit.append(admit_job)

    def _on_event(self, event: Event) -> None:
        if event.resource == JOBS and event.type == "DELETED":
            self._gone.pop(event.obj["metadata"]["uid"], None)
        if event.resource == PODS and event.type == "DELETED":
            job_uid = _controller_uid(event.obj)
            uid = event.obj["metadata"]["uid"]
            if job_uid and uid not in self._own_deletions:
                last = copy.deepcopy(event.old or event.obj)
                if (last.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                    last.setdefault("status", {})["phase"] = "Failed"  # removed unfinished
                self._gone.setdefault(job_uid, {})[uid] = last
            self._own_deletions.discard(uid)
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
            self._own_deletions.add(pod["metadata"]["uid"])
            with contextlib.suppress(ApiError):
                self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])

    def sync(self, job: dict) -> None:
        """Bring one Job's pods and status in line with its spec."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        spec, status = job["spec"], job.get("status") or {}
        now = self.clock()
        present = job_pods(self.store, job)
        policy = spec.get("podFailurePolicy")
        active = [
            p
            for p in present
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
        ]
        # being deleted, not terminal yet: with a podFailurePolicy, it still holds its place
        # until it is terminal; without, it counts as failed now (TerminatingOrFailed)
        terminating = [
            p
            for p in present
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and p["metadata"].get("deletionTimestamp")
            and p["metadata"]["uid"] not in self._own_deletions
        ]
        gone = self._gone.get(job["metadata"]["uid"], {})
        pods = [p for p in present if p["metadata"]["uid"] not in gone] + list(gone.values())
        if policy is None:
            for p in terminating:
                p = copy.deepcopy(p)
                p.setdefault("status", {})["phase"] = "Failed"
                pods.append(p)
            pods = list({p["metadata"]["uid"]: p for p in pods}.values())
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
        succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
        failed_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
        policy_failure = None  # (reason message) of a FailJob rule
        if policy is not None:
            counted = []
            for p in sorted(failed_pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
                match = match_pod_failure_policy(policy, p)
                action = match[0] if match else "Count"
                if action == "FailJob" and policy_failure is None:
                    policy_failure = match[1]  # type: ignore[index]
                if action != "Ignore":
                    counted.append(p)
            failed_pods = counted
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
            if policy_failure is not None:
                reason, message = "PodFailurePolicy", policy_failure
            elif failed + restarts > int(spec.get("backoffLimit", 6)):
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
                holding = len(active) + (len(terminating) if policy is not None else 0)
                want = min(int(spec.get("parallelism", 1)), completions - succeeded) - holding
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
