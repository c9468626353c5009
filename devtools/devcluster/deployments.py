"""apps/v1 Deployments of the emulated cluster: admission (defaults, selector check) and a
controller that keeps ``spec.replicas`` pods of the current template.

What is emulated (https://kubernetes.io/docs/concepts/workloads/controllers/deployment/):

- **Defaults on create**, as the real server fills them: ``replicas`` 1, ``strategy``
  RollingUpdate with ``maxSurge``/``maxUnavailable`` 25%, ``revisionHistoryLimit`` 10,
  ``progressDeadlineSeconds`` 600, the template's ``restartPolicy`` Always; ``generation`` 1.
  Refused with 422 ``Invalid`` as the real server words it: a missing ``spec.selector``, a
  selector that does not match the template's labels, a template ``restartPolicy`` other than
  Always.
- **Pods** named ``<deployment>-<pod-template-hash>-<5 characters>``, labelled
  ``pod-template-hash`` (a hash of the template, in the real controller's alphabet), owned by
  the Deployment (``ownerReferences`` with ``controller: true``), so deleting the Deployment
  deletes them (the store's garbage collection). There is no ReplicaSet object: the pods' owner
  is the Deployment itself (kubectl's ``get``/``apply``/``rollout status``/``rollout restart``
  do not need one; ``kubectl rollout history``/``undo`` and ``describe``'s ReplicaSet lines do).
- **Replacement**: a pod deleted, failed or succeeded is replaced; a template change
  (``kubectl rollout restart`` patches an annotation) rolls the pods: ``Recreate`` removes every
  old pod before the first new one is created; ``RollingUpdate`` creates new pods up to
  ``replicas + maxSurge`` and removes old ones while at least ``replicas - maxUnavailable`` pods
  are ready.
- **Status**: ``observedGeneration``, ``replicas``, ``updatedReplicas``, ``readyReplicas``,
  ``availableReplicas`` (ready for ``minReadySeconds``), ``unavailableReplicas`` (zero fields
  left out, as the API's ``omitempty``), conditions ``Available`` and ``Progressing`` with the
  real controller's reasons and messages.
- **Updates** (:func:`admit_deployment_update`): ``metadata.generation`` goes up by one when
  the spec changes, the selector is immutable (422 ``field is immutable``), the spec is checked
  as on create.

Not emulated: ``paused``, ``progressDeadlineSeconds`` expiry, revision history, the ``scale``
subresource (``kubectl scale`` needs it: patch ``spec.replicas`` instead).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import logging
import math

from .controller import reconcile_loop
from .events import record_event
from .resources import DEPLOYMENTS, PODS, Resource
from .store import ApiError, Event, Store, now_iso

log = logging.getLogger(__name__)

HASH_LABEL = "pod-template-hash"
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery rand.SafeEncodeString


def _invalid(name: str, message: str) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'Deployment.apps "{name}" is invalid: {message}',
        {"name": name, "group": "apps", "kind": "Deployment"},
    )


def _go_map(labels: dict) -> str:
    inner = ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items()))
    return f"map[string]string{{{inner}}}"


def selector_matches(selector: dict, labels: dict) -> bool:
    """Whether a LabelSelector (``matchLabels``, ``matchExpressions`` with In/NotIn/Exists/
    DoesNotExist) selects ``labels``. An empty selector selects nothing (as a Deployment's)."""
    match = selector.get("matchLabels") or {}
    exprs = selector.get("matchExpressions") or []
    if not match and not exprs:
        return False
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in exprs:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _check_spec(name: str, spec: dict) -> None:
    template = spec.get("template") or {}
    if not (template.get("spec") or {}).get("containers"):
        raise _invalid(name, "spec.template.spec.containers: Required value")
    selector = spec.get("selector")
    if not selector:
        raise _invalid(name, "spec.selector: Required value")
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not selector_matches(selector, labels):
        raise _invalid(
            name,
            f"spec.template.metadata.labels: Invalid value: {_go_map(labels)}: "
            "`selector` does not match template `labels`",
        )
    restart = template["spec"].setdefault("restartPolicy", "Always")
    if restart != "Always":
        raise _invalid(
            name,
            f'spec.template.spec.restartPolicy: Unsupported value: "{restart}": '
            'supported values: "Always"',
        )


def _go_selector(selector: dict) -> str:
    labels = selector.get("matchLabels")
    shown = _go_map(labels) if labels else "map[string]string(nil)"
    exprs = (
        "[]v1.LabelSelectorRequirement(nil)"
        if not selector.get("matchExpressions")
        else ("[]v1.LabelSelectorRequirement{...}")
    )
    return f"v1.LabelSelector{{MatchLabels:{shown}, MatchExpressions:{exprs}}}"


def admit_deployment_update(
    store: Store, res: Resource, old: dict, new: dict, subresource: str
) -> None:
    """A `Store.admit_update` hook: a changed spec is checked as on create, its selector is
    immutable (apps/v1), and ``metadata.generation`` goes up by one (as the real server's
    registry does when the spec changes). Raises `ApiError` 422 Invalid."""
    if res != DEPLOYMENTS or subresource:
        return
    name = old["metadata"]["name"]
    spec = new.setdefault("spec", {})
    generation = int(old["metadata"].get("generation") or 1)
    if spec == (old.get("spec") or {}):
        new["metadata"]["generation"] = generation
        return
    old_selector = (old.get("spec") or {}).get("selector") or {}
    if spec.get("selector") != old_selector:
        raise _invalid(
            name,
            f"spec.selector: Invalid value: {_go_selector(spec.get('selector') or {})}: "
            "field is immutable",
        )
    _check_spec(name, spec)
    new["metadata"]["generation"] = generation + 1


def admit_deployment(store: Store, res: Resource, obj: dict) -> None:
    """A `Store.admit` hook: default and check a new Deployment (see the module docstring).

    Raises `ApiError` 422 Invalid naming the field, as the real server does."""
    if res != DEPLOYMENTS:
        return
    name = obj["metadata"]["name"]
    spec = obj.setdefault("spec", {})
    _check_spec(name, spec)
    template = spec["template"]
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxSurge", "25%")
        rolling.setdefault("maxUnavailable", "25%")
    elif strategy["type"] != "Recreate":
        raise _invalid(
            name,
            f'spec.strategy.type: Unsupported value: "{strategy["type"]}": '
            'supported values: "Recreate", "RollingUpdate"',
        )
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    template["spec"].setdefault("terminationGracePeriodSeconds", 30)
    template["spec"].setdefault("dnsPolicy", "ClusterFirst")
    template["spec"].setdefault("schedulerName", "default-scheduler")
    obj["metadata"]["generation"] = 1
    obj["status"] = {}


def template_hash(template: dict) -> str:
    """The ``pod-template-hash`` of a pod template: FNV-1a (32 bit) of its canonical JSON,
    written in the real controller's safe alphabet (as ``rand.SafeEncodeString`` of the
    decimal hash). Pure; the same template always gives the same value."""
    h = 0x811C9DC5
    for byte in json.dumps(template, sort_keys=True, separators=(",", ":")).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in str(h).encode())


def resolve_int_or_percent(value: object, total: int, round_up: bool) -> int:
    """``maxSurge``/``maxUnavailable``: an int, or ``"N%"`` of ``total`` rounded up (surge)
    or down (unavailable), as ``intstr.GetScaledValueFromIntOrPercent``."""
    if isinstance(value, str) and value.endswith("%"):
        scaled = int(value[:-1]) * total / 100
        return math.ceil(scaled) if round_up else math.floor(scaled)
    return int(value or 0)


def _parse_time(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc
    )


def pod_ready(pod: dict) -> bool:
    """Whether the pod's ``Ready`` condition is True."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_available(pod: dict, min_ready_seconds: int, now: datetime.datetime) -> bool:
    """Ready for at least ``min_ready_seconds`` (``podutil.IsPodAvailable``)."""
    if not pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("lastTransitionTime"):
            elapsed = (now - _parse_time(c["lastTransitionTime"])).total_seconds()
            return elapsed >= min_ready_seconds
    return False


def _condition(kind: str, status: str, reason: str, message: str, old: list[dict]) -> dict:
    now = now_iso()
    previous = next((c for c in old if c.get("type") == kind), None)
    same = previous is not None and previous.get("status") == status
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": now
        if previous is None or previous.get("reason") != reason
        else previous.get("lastUpdateTime", now),
        "lastTransitionTime": previous.get("lastTransitionTime", now) if same else now,
        "reason": reason,
        "message": message,
    }


class DeploymentController:
    """Keeps every Deployment's pods and status (see the module docstring).

    ``interval``: resync period in seconds; a pass also runs on every Deployment or pod change.
    """

    def __init__(self, store: Store, interval: float = 1.0):
        self.store = store
        self.interval = interval
        self._wake: asyncio.Event | None = None
        store.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if self._wake is not None and event.resource in (DEPLOYMENTS, PODS):
            self._wake.set()

    async def run(self) -> None:
        """Reconcile until cancelled."""
        self._wake = asyncio.Event()
        await reconcile_loop(self.reconcile, self._wake, self.interval, "deployments")

    def reconcile(self) -> None:
        """One pass over every Deployment."""
        deployments = list(self.store.iter(DEPLOYMENTS))
        if not deployments:  # (most clusters: no scan of the pods)
            return
        owned: dict[str, list[dict]] = {}
        for pod in self.store.iter(PODS):
            for ref in pod["metadata"].get("ownerReferences") or []:
                if ref.get("kind") == "Deployment" and ref.get("controller"):
                    owned.setdefault(ref.get("uid", ""), []).append(pod)
        for deployment in deployments:
            if deployment["metadata"].get("deletionTimestamp"):
                continue
            self._sync(deployment, owned.get(deployment["metadata"]["uid"], []))

    def _sync(self, deployment: dict, pods: list[dict]) -> None:
        spec = deployment.get("spec") or {}
        template = spec.get("template") or {}
        current = template_hash(template)
        replicas = int(spec.get("replicas", 1))
        now = datetime.datetime.now(datetime.timezone.utc)
        min_ready = int(spec.get("minReadySeconds") or 0)
        finished = [
            p for p in pods if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        ]
        for pod in finished:  # a finished pod of a Deployment is replaced (ReplicaSet controller)
            if not pod["metadata"].get("deletionTimestamp"):
                self._delete(pod)
        active = [
            p for p in pods if p not in finished and not p["metadata"].get("deletionTimestamp")
        ]
        terminating = [p for p in pods if p["metadata"].get("deletionTimestamp")]
        new = [p for p in active if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == current]
        old = [p for p in active if p not in new]
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            if old:
                for pod in old:
                    self._delete(pod)
            elif not any(p for p in terminating if p not in new):
                self._scale(deployment, new, replicas, current)
        else:
            rolling = strategy.get("rollingUpdate") or {}
            surge = resolve_int_or_percent(rolling.get("maxSurge", "25%"), replicas, True)
            unavailable = resolve_int_or_percent(
                rolling.get("maxUnavailable", "25%"), replicas, False
            )
            if surge == 0 and unavailable == 0:
                unavailable = 1  # the API refuses both 0; be safe for objects made otherwise
            if not old:
                self._scale(deployment, new, replicas, current)
            else:
                room = replicas + surge - len(active)
                missing = replicas - len(new)
                if missing > 0 and room > 0:
                    for _ in range(min(missing, room)):
                        self._create(deployment, current)
                available = sum(pod_available(p, min_ready, now) for p in active)
                can_remove = max(0, available - (replicas - unavailable))
                # unready old pods first: removing them costs no availability
                for pod in sorted(old, key=lambda p: pod_available(p, min_ready, now)):
                    if pod_available(pod, min_ready, now):
                        if can_remove <= 0:
                            break
                        can_remove -= 1
                    self._delete(pod)
        self._status(deployment, pods, current, now)

    def _scale(self, deployment: dict, new: list[dict], replicas: int, current: str) -> None:
        for _ in range(replicas - len(new)):
            self._create(deployment, current)
        if len(new) > replicas:
            extra = sorted(new, key=lambda p: (pod_ready(p), p["metadata"]["creationTimestamp"]))
            for pod in extra[: len(new) - replicas]:
                self._delete(pod)

    def _create(self, deployment: dict, current: str) -> None:
        meta = deployment["metadata"]
        template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
        pod_meta = template.get("metadata") or {}
        labels = {**(pod_meta.get("labels") or {}), HASH_LABEL: current}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                **{k: v for k, v in pod_meta.items() if k in ("annotations",)},
                "generateName": f"{meta['name']}-{current}-",
                "namespace": meta["namespace"],
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template.get("spec") or {},
        }
        try:
            self.store.create(PODS, pod, meta["namespace"])
        except ApiError as exc:  # the real controller reports it as a FailedCreate event
            log.warning(
                "devcluster deployment %s/%s: pod not created: %s",
                meta["namespace"],
                meta["name"],
                exc.message,
            )
            self._event(deployment, "FailedCreate", f"Error creating: {exc.message}")

    def _event(self, deployment: dict, reason: str, message: str) -> None:
        record_event(
            self.store, deployment, reason, message, "Warning", component="replicaset-controller"
        )

    def _delete(self, pod: dict) -> None:
        meta = pod["metadata"]
        try:
            self.store.delete(PODS, meta["namespace"], meta["name"])
        except ApiError:
            pass

    def _status(self, deployment: dict, pods: list[dict], current: str, now) -> None:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        fresh = {p["metadata"]["uid"]: p for p in self.store.iter(PODS)}
        active = [
            fresh[p["metadata"]["uid"]]
            for p in pods
            if p["metadata"]["uid"] in fresh
            and not fresh[p["metadata"]["uid"]]["metadata"].get("deletionTimestamp")
            and (fresh[p["metadata"]["uid"]].get("status") or {}).get("phase")
            not in ("Succeeded", "Failed")
        ]
        replicas = int(spec.get("replicas", 1))
        min_ready = int(spec.get("minReadySeconds") or 0)
        updated = [
            p for p in active if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == current
        ]
        ready = sum(pod_ready(p) for p in active)
        available = sum(pod_available(p, min_ready, now) for p in active)
        strategy = spec.get("strategy") or {}
        max_unavailable = 0
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            max_unavailable = resolve_int_or_percent(
                (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%"),
                replicas,
                False,
            )
        old_conditions = (deployment.get("status") or {}).get("conditions") or []
        rs_name = f"{meta['name']}-{current}"
        conditions = [
            _condition(
                "Available",
                "True" if available >= replicas - max_unavailable else "False",
                "MinimumReplicasAvailable"
                if available >= replicas - max_unavailable
                else "MinimumReplicasUnavailable",
                "Deployment has minimum availability."
                if available >= replicas - max_unavailable
                else "Deployment does not have minimum availability.",
                old_conditions,
            ),
        ]
        complete = len(updated) == replicas == len(active) and available >= replicas
        conditions.append(
            _condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                f'ReplicaSet "{rs_name}" has successfully progressed.'
                if complete
                else f'ReplicaSet "{rs_name}" is progressing.',
                old_conditions,
            )
        )
        status = {
            "observedGeneration": int(meta.get("generation") or 1),
            "replicas": len(active),
            "updatedReplicas": len(updated),
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": max(0, replicas - available),
            "conditions": conditions,
        }
        status = {k: v for k, v in status.items() if v not in (0, [], None)}

        def change(obj: dict) -> None:
            before = obj.get("status") or {}
            if {k: v for k, v in before.items() if k != "conditions"} == {
                k: v for k, v in status.items() if k != "conditions"
            } and [(c["type"], c["status"], c["reason"]) for c in before.get("conditions", [])] == [
                (c["type"], c["status"], c["reason"]) for c in conditions
            ]:
                return
            obj["status"] = status

        self.store.mutate(DEPLOYMENTS, meta["namespace"], meta["name"], change)
