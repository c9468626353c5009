"""apps/v1 Deployments of the emulated cluster: admission (defaults, selector check) and the
Deployment controller, which runs one ReplicaSet per pod template (`replicasets` makes the
pods).

What is emulated (https://kubernetes.io/docs/concepts/workloads/controllers/deployment/,
upstream ``pkg/controller/deployment``: ``sync.go``, ``rolling.go``, ``recreate.go``,
``progress.go``, ``util/deployment_util.go``):

- **Defaults on create**, as the real server fills them: ``replicas`` 1, ``strategy``
  RollingUpdate with ``maxSurge``/``maxUnavailable`` 25%, ``revisionHistoryLimit`` 10,
  ``progressDeadlineSeconds`` 600, the template's ``restartPolicy`` Always; ``generation`` 1.
  Refused with 422 ``Invalid`` as the real server words it: a missing ``spec.selector``, a
  selector that does not match the template's labels, a template ``restartPolicy`` other than
  Always, a negative ``replicas``, an unknown strategy.
- **Updates** (:func:`admit_deployment_update`): ``metadata.generation`` goes up by one when
  the spec changes, the selector is immutable (422 ``field is immutable``).
- **ReplicaSets**: one per template, named ``<deployment>-<pod-template-hash>`` (the hash of
  the template, in the real controller's alphabet; a name taken by another template bumps
  ``status.collisionCount``), the template and selector carrying the ``pod-template-hash``
  label, owned by the Deployment, annotated ``deployment.kubernetes.io/revision`` (the
  Deployment gets its new ReplicaSet's), ``revision-history`` (a rolled-back-to set's earlier
  revisions), ``desired-replicas`` and ``max-replicas``, and the Deployment's own annotations
  (``kubernetes.io/change-cause`` for ``rollout history``). A template equal to an older
  set's (``kubectl rollout undo``) makes that set the new one again, with the next revision.
  Old sets with no replicas beyond ``revisionHistoryLimit`` are deleted, lowest revision first.
- **Strategies**: ``RollingUpdate`` scales the new set up to ``replicas + maxSurge`` pods in
  all and the old ones down while ``replicas - maxUnavailable`` are available (unhealthy old
  replicas first); ``Recreate`` scales the old sets to 0 and creates the new set only once no
  old pod is left running (terminating pods count), so two pods never run at once. A change of
  ``replicas`` alone is a scaling event: the only active set is resized, or, mid-rollout, all
  active sets proportionally (``max-replicas``), as upstream. ``paused`` stops rollouts
  (scaling still applies). Events ``ScalingReplicaSet`` (``Scaled up replica set x from 0 to
  2``), component ``deployment-controller``.
- **Status**: ``observedGeneration``, ``replicas``, ``updatedReplicas``, ``readyReplicas``,
  ``availableReplicas``, ``unavailableReplicas`` (sums of the sets' status; zero fields left
  out), ``collisionCount``; conditions ``Available`` (MinimumReplicasAvailable /
  MinimumReplicasUnavailable) and ``Progressing`` with the real reasons and messages
  (NewReplicaSetCreated, FoundNewReplicaSet, ReplicaSetUpdated, NewReplicaSetAvailable,
  ProgressDeadlineExceeded after ``progressDeadlineSeconds`` without progress,
  DeploymentPaused, DeploymentResumed), kept in upstream's order and timestamps, so
  ``kubectl rollout status/history/undo/restart/pause/resume`` and ``kubectl scale`` behave
  as against a real cluster.
- **Deletion**: the store's garbage collection deletes the ReplicaSets, which deletes their
  pods (``propagationPolicy`` Foreground is treated as Background: the Deployment goes at once,
  its dependents after; Orphan keeps them, without their owner reference).

- **Adoption**: a ReplicaSet with no controller whose labels the Deployment's selector
  selects (e.g. left by ``kubectl delete deployment --cascade=orphan``) is adopted, so a
  Deployment made again takes its old sets (and their pods) back instead of doubling them.

Not emulated: release of sets whose labels stop matching, the deprecated ``rollbackTo``,
``ReplicaFailure`` conditions copied from the sets.
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
from .replicasets import (
    HASH_LABEL,
    admit_workload_update,
    adopt,
    check_workload_spec,
    controller_ref,
    default_template,
    invalid,
    orphans_for,
    parse_time,
    pod_available,
    pod_ready,
    selector_matches,
)
from .resources import DEPLOYMENTS, PODS, REPLICASETS, Resource
from .store import ApiError, Event, Store, now_iso

log = logging.getLogger(__name__)

__all__ = [
    "HASH_LABEL",
    "DeploymentController",
    "admit_deployment",
    "admit_deployment_update",
    "pod_available",
    "pod_ready",
    "resolve_int_or_percent",
    "selector_matches",
    "template_hash",
]

_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery rand.SafeEncodeString
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
#: annotations a Deployment does not copy to its ReplicaSets (``annotationsToSkip``)
SKIPPED_ANNOTATIONS = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        REVISION_HISTORY,
        DESIRED,
        MAX_REPLICAS,
        "apps.kubernetes.io/deprecated.daemonset.templateGeneration",
    }
)
MAX_REVISION_HISTORY_CHARS = 2000
COMPONENT = "deployment-controller"
_NO_DEADLINE = 2**31 - 1  # progressDeadlineSeconds MaxInt32: no deadline


def _invalid(name: str, message: str) -> ApiError:
    return invalid("Deployment", name, message)


def admit_deployment_update(
    store: Store, res: Resource, old: dict, new: dict, subresource: str
) -> None:
    """A `Store.admit_update` hook for Deployments: `replicasets.admit_workload_update` (a
    changed spec checked as on create, the selector immutable, ``metadata.generation`` up by
    one, as the real server's registry does). Raises `ApiError` 422 Invalid."""
    if res != DEPLOYMENTS or subresource:
        return
    admit_workload_update("Deployment", old, new)


def admit_deployment(store: Store, res: Resource, obj: dict) -> None:
    """A `Store.admit` hook: default and check a new Deployment (see the module docstring).

    Raises `ApiError` 422 Invalid naming the field, as the real server does."""
    if res != DEPLOYMENTS:
        return
    name = obj["metadata"]["name"]
    spec = obj.setdefault("spec", {})
    check_workload_spec("Deployment", name, spec)
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
    default_template(spec["template"])
    obj["metadata"]["generation"] = 1
    obj["status"] = {}


def _compact(value: object) -> object:
    """A template as Go decodes it: nulls, empty maps and empty lists dropped (what a client's
    round trip through a Go struct adds: ``creationTimestamp: null``, ``resources: {}``)."""
    if isinstance(value, dict):
        out = {k: _compact(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def _without_hash(template: dict) -> dict:
    template = copy.deepcopy(template)
    labels = (template.get("metadata") or {}).get("labels") or {}
    labels.pop(HASH_LABEL, None)
    return _compact(template)  # type: ignore[return-value]


def templates_equal(a: dict, b: dict) -> bool:
    """``EqualIgnoreHash``: two pod templates equal but for the ``pod-template-hash`` label."""
    return _without_hash(a) == _without_hash(b)


def template_hash(template: dict, collision_count: int | None = None) -> str:
    """The ``pod-template-hash`` of a pod template: FNV-1a (32 bit) of its canonical JSON (and
    ``collision_count``, as upstream's ``ComputeHash``), written in the real controller's safe
    alphabet (as ``rand.SafeEncodeString`` of the decimal hash). Pure; the same template always
    gives the same value."""
    canonical = json.dumps(_without_hash(template), sort_keys=True, separators=(",", ":"))
    if collision_count:
        canonical += str(collision_count)
    h = 0x811C9DC5
    for byte in canonical.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in str(h).encode())


def resolve_int_or_percent(value: object, total: int, round_up: bool) -> int:
    """``maxSurge``/``maxUnavailable``: an int, or ``"N%"`` of ``total`` rounded up (surge)
    or down (unavailable), as ``intstr.GetScaledValueFromIntOrPercent``."""
    if isinstance(value, str) and value.endswith("%"):
        scaled = int(value[:-1]) * total / 100
        return math.ceil(scaled) if round_up else math.floor(scaled)
    return int(value or 0)


def _rolling(d: dict) -> bool:
    return ((d.get("spec") or {}).get("strategy") or {}).get("type", "RollingUpdate") == (
        "RollingUpdate"
    )


def _fenceposts(d: dict) -> tuple[int, int]:
    """``ResolveFenceposts``: (maxSurge, maxUnavailable) in pods; both 0 means 1 unavailable."""
    spec = d.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge = resolve_int_or_percent(rolling.get("maxSurge", "25%"), replicas, True)
    unavailable = resolve_int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_surge(d: dict) -> int:
    """``MaxSurge``: 0 for Recreate."""
    return _fenceposts(d)[0] if _rolling(d) else 0


def max_unavailable(d: dict) -> int:
    """``MaxUnavailable``: 0 for Recreate or no replicas, at most ``replicas``."""
    replicas = int((d.get("spec") or {}).get("replicas", 1))
    if not _rolling(d) or replicas == 0:
        return 0
    return min(_fenceposts(d)[1], replicas)


def revision(obj: dict | None) -> int:
    """The ``deployment.kubernetes.io/revision`` annotation as an int (0 if none)."""
    if obj is None:
        return 0
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION, 0))
    except ValueError:
        return 0


def _replicas(rs: dict | None) -> int:
    return int((rs.get("spec") or {}).get("replicas", 0)) if rs else 0


def _st(rs: dict | None, field: str) -> int:
    return int((rs.get("status") or {}).get(field) or 0) if rs else 0


def _created(rs: dict) -> tuple:
    return (rs["metadata"].get("creationTimestamp", ""), rs["metadata"]["name"])


def _condition(status: dict, kind: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _new_condition(kind: str, status: str, reason: str, message: str) -> dict:
    now = now_iso()
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def set_condition(status: dict, cond: dict) -> None:
    """``SetDeploymentCondition``: nothing if the same status and reason are there; the
    transition time kept when only the reason changes; the condition moved to the end."""
    current = _condition(status, cond["type"])
    if current and current["status"] == cond["status"] and current["reason"] == cond["reason"]:
        return
    if current and current["status"] == cond["status"]:
        cond["lastTransitionTime"] = current["lastTransitionTime"]
    others = [c for c in status.get("conditions") or [] if c.get("type") != cond["type"]]
    status["conditions"] = [*others, cond]


def _remove_condition(status: dict, kind: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != kind]


def _has_deadline(d: dict) -> bool:
    value = (d.get("spec") or {}).get("progressDeadlineSeconds")
    return value is not None and int(value) != _NO_DEADLINE


class _Sync:
    """One sync of one Deployment: its ReplicaSets (copies, updated as written), its pods by
    set uid, and the status being built (``self.status``, ``self.annotations``)."""

    def __init__(self, ctl: DeploymentController, d: dict, sets: list[dict], pods: dict):
        self.ctl, self.store = ctl, ctl.store
        self.d = d
        self.spec = d.get("spec") or {}
        self.replicas = int(self.spec.get("replicas", 1))
        self.sets = sorted(sets, key=_created)
        self.pods = pods
        self.old_status = copy.deepcopy(d.get("status") or {})
        self.status = copy.deepcopy(d.get("status") or {})
        self.annotations = dict(d["metadata"].get("annotations") or {})
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self._template = _without_hash(self.spec.get("template") or {})
        self._equal: dict[tuple, bool] = {}  # (set uid, resourceVersion) -> same template

    # -- finding and creating the new set ----------------------------------------------------

    def split(self) -> tuple[dict | None, list[dict]]:
        """(the set whose template is the Deployment's, ignoring the hash; the others), the
        oldest first (``FindNewReplicaSet``, ``FindOldReplicaSets``)."""

        def same(rs: dict) -> bool:
            key = (rs["metadata"]["uid"], rs["metadata"].get("resourceVersion"))
            if key not in self._equal:
                self._equal[key] = _without_hash(rs["spec"]["template"]) == self._template
            return self._equal[key]

        new = next((rs for rs in self.sets if same(rs)), None)
        return new, [rs for rs in self.sets if rs is not new]

    def new_replica_set(self, create: bool) -> tuple[dict | None, list[dict]]:
        """``getAllReplicaSetsAndSyncRevision``: the new set (annotations and revision synced;
        created if ``create``) and the old ones."""
        new, old = self.split()
        next_revision = max((revision(rs) for rs in old), default=0) + 1
        if new is not None:
            annotations = dict(new["metadata"].get("annotations") or {})
            changed = self._copy_annotations(annotations)
            current = revision(new)
            if current < next_revision:
                annotations[REVISION] = str(next_revision)
                changed = True
                if REVISION in (new["metadata"].get("annotations") or {}):
                    self._append_history(annotations, str(current))
            min_ready = self.spec.get("minReadySeconds") or 0
            if changed or (new["spec"].get("minReadySeconds") or 0) != min_ready:
                new = self._write_set(new, lambda o: self._set_meta(o, annotations, min_ready))
            self.annotations[REVISION] = (new["metadata"].get("annotations") or {}).get(
                REVISION, str(next_revision)
            )
            if _has_deadline(self.d) and _condition(self.status, "Progressing") is None:
                set_condition(
                    self.status,
                    _new_condition(
                        "Progressing",
                        "True",
                        "FoundNewReplicaSet",
                        f'Found new replica set "{new["metadata"]["name"]}"',
                    ),
                )
            return new, old
        if not create:
            return None, old
        return self._create_set(old, next_revision), old

    def _set_meta(self, obj: dict, annotations: dict, min_ready: int) -> None:
        obj["metadata"]["annotations"] = annotations
        if min_ready:
            obj["spec"]["minReadySeconds"] = min_ready
        else:
            obj["spec"].pop("minReadySeconds", None)

    def _copy_annotations(self, annotations: dict) -> bool:
        changed = False
        for key, value in (self.d["metadata"].get("annotations") or {}).items():
            if key in SKIPPED_ANNOTATIONS or annotations.get(key) == value:
                continue
            annotations[key] = value
            changed = True
        return changed

    @staticmethod
    def _append_history(annotations: dict, old_revision: str) -> None:
        history = annotations.get(REVISION_HISTORY, "")
        revisions = history.split(",") if history else []
        total = len(history) + len(old_revision) + 1
        while total > MAX_REVISION_HISTORY_CHARS and revisions:
            total -= len(revisions.pop(0)) + 1
        if total <= MAX_REVISION_HISTORY_CHARS:
            annotations[REVISION_HISTORY] = ",".join([*revisions, old_revision])

    def _create_set(self, old: list[dict], next_revision: int) -> dict | None:
        meta = self.d["metadata"]
        collisions = self.status.get("collisionCount")
        template = copy.deepcopy(self.spec.get("template") or {})
        pod_hash = template_hash(template, collisions)
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), HASH_LABEL: pod_hash}
        selector = copy.deepcopy(self.spec.get("selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: pod_hash}
        annotations: dict = {}
        self._copy_annotations(annotations)
        annotations[REVISION] = str(next_revision)
        annotations[DESIRED] = str(self.replicas)
        annotations[MAX_REPLICAS] = str(self.replicas + max_surge(self.d))
        name = f"{meta['name']}-{pod_hash}"
        replicas = self._new_set_replicas(old, None)
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": dict(tmeta["labels"]),
                "annotations": annotations,
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
            "spec": {"replicas": replicas, "selector": selector, "template": template},
        }
        if self.spec.get("minReadySeconds"):
            rs["spec"]["minReadySeconds"] = self.spec["minReadySeconds"]
        try:
            created = self.store.create(REPLICASETS, rs, meta["namespace"])
        except ApiError as exc:
            if exc.code == 409:  # a hash collision: another template has this name
                self.status["collisionCount"] = int(collisions or 0) + 1
                return None
            self.ctl.event(self.d, "FailedCreate", exc.message, "Warning")
            if _has_deadline(self.d):
                set_condition(
                    self.status,
                    _new_condition("ReplicaFailure", "True", "FailedCreate", exc.message),
                )
            return None
        if replicas > 0:
            self.ctl.event(
                self.d, "ScalingReplicaSet", f"Scaled up replica set {name} from 0 to {replicas}"
            )
        self.annotations[REVISION] = str(next_revision)
        if _has_deadline(self.d):
            set_condition(
                self.status,
                _new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    f'Created new replica set "{name}"',
                ),
            )
        self.sets.append(created)
        return created

    def _new_set_replicas(self, all_sets: list[dict], new: dict | None) -> int:
        """``NewRSNewReplicas``."""
        if not _rolling(self.d):
            return self.replicas
        current = sum(_replicas(rs) for rs in all_sets if rs is not new) + _replicas(new)
        room = self.replicas + max_surge(self.d) - current
        if room <= 0:
            return _replicas(new)
        return _replicas(new) + min(room, self.replicas - _replicas(new))

    # -- writing sets ----------------------------------------------------------------------

    def _write_set(self, rs: dict, change) -> dict:
        def apply(obj: dict) -> None:
            before = copy.deepcopy(obj.get("spec"))
            change(obj)
            if obj.get("spec") != before:
                obj["metadata"]["generation"] = int(obj["metadata"].get("generation") or 1) + 1

        meta = rs["metadata"]
        stored = self.store.mutate(REPLICASETS, meta["namespace"], meta["name"], apply)
        if stored is None:
            return rs
        stored = copy.deepcopy(stored)
        self.sets = [stored if s["metadata"]["uid"] == meta["uid"] else s for s in self.sets]
        return stored

    def scale(self, rs: dict, size: int, operation: str | None = None) -> tuple[bool, dict]:
        """``scaleReplicaSet``: set ``spec.replicas`` and the replica annotations; an event if
        the size changed. Returns (scaled, the set as stored)."""
        old_size = _replicas(rs)
        operation = operation or ("up" if size > old_size else "down")
        annotations = dict(rs["metadata"].get("annotations") or {})
        want = {DESIRED: str(self.replicas), MAX_REPLICAS: str(self.replicas + max_surge(self.d))}
        if old_size == size and all(annotations.get(k) == v for k, v in want.items()):
            return False, rs
        annotations.update(want)

        def change(obj: dict) -> None:
            obj["spec"]["replicas"] = size
            obj["metadata"]["annotations"] = annotations

        rs = self._write_set(rs, change)
        if old_size != size:
            name = rs["metadata"]["name"]
            message = f"Scaled {operation} replica set {name} from {old_size} to {size}"
            self.ctl.event(self.d, "ScalingReplicaSet", message)
        return old_size != size, rs

    def scale_to(self, rs: dict, size: int) -> tuple[bool, dict]:
        """``scaleReplicaSetAndRecordEvent``: nothing if the size is already right."""
        if _replicas(rs) == size:
            return False, rs
        return self.scale(rs, size)

    # -- strategies ------------------------------------------------------------------------

    def is_scaling_event(self) -> bool:
        new, old = self.split()
        for rs in [r for r in [new, *old] if r is not None and _replicas(r) > 0]:
            desired = (rs["metadata"].get("annotations") or {}).get(DESIRED)
            if desired is not None and desired.isdigit() and int(desired) != self.replicas:
                return True
        return False

    def sync_scaling(self) -> None:
        """``sync``: the revision synced, the sets resized (``scale``), status only."""
        new, old = self.new_replica_set(create=False)
        self._proportional(new, old)
        new, old = self.split()
        if self.spec.get("paused"):
            self.cleanup(old)
        self.status_write(new, rollout=False)

    def _proportional(self, new: dict | None, old: list[dict]) -> None:
        active = [rs for rs in [new, *old] if rs is not None and _replicas(rs) > 0]
        if len(active) <= 1:
            target = active[0] if active else (new or (max(old, key=_created) if old else None))
            if target is not None:
                self.scale_to(target, self.replicas)
            return
        if new is not None and self._saturated(new):
            for rs in old:
                if _replicas(rs) > 0:
                    self.scale_to(rs, 0)
            return
        if not _rolling(self.d):
            return
        total = sum(_replicas(rs) for rs in active)
        allowed = self.replicas + max_surge(self.d) if self.replicas > 0 else 0
        to_add = allowed - total
        if to_add > 0:  # ReplicaSetsBySizeNewer: larger first, newer first among equals
            active.sort(key=_created, reverse=True)
            active.sort(key=_replicas, reverse=True)
            operation = "up"
        elif to_add < 0:  # ReplicaSetsBySizeOlder: larger first, older first among equals
            active.sort(key=_created)
            active.sort(key=_replicas, reverse=True)
            operation = "down"
        else:
            operation = None
        sizes, added = {}, 0
        for rs in active:
            if to_add:
                share = self._proportion(rs, to_add, added)
                sizes[rs["metadata"]["uid"]] = _replicas(rs) + share
                added += share
            else:
                sizes[rs["metadata"]["uid"]] = _replicas(rs)
        for i, rs in enumerate(active):
            uid = rs["metadata"]["uid"]
            if i == 0 and to_add:
                sizes[uid] = max(0, sizes[uid] + to_add - added)
            self.scale(rs, sizes[uid], operation)

    def _saturated(self, rs: dict) -> bool:
        desired = (rs["metadata"].get("annotations") or {}).get(DESIRED, "")
        return (
            desired.isdigit()
            and _replicas(rs) == self.replicas
            and int(desired) == self.replicas
            and _st(rs, "availableReplicas") == self.replicas
        )

    def _proportion(self, rs: dict, to_add: int, added: int) -> int:
        """``GetReplicaSetProportion``."""
        if _replicas(rs) == 0 or to_add == added:
            return 0
        if self.replicas == 0:
            fraction = -_replicas(rs)
        else:
            before = (rs["metadata"].get("annotations") or {}).get(MAX_REPLICAS, "")
            before_n = int(before) if before.isdigit() else 0
            if before_n == 0:
                before_n = int(self.old_status.get("replicas") or 0)
            if before_n == 0:
                fraction = 0
            else:
                size = _replicas(rs) * (self.replicas + max_surge(self.d)) / before_n
                fraction = int(size + 0.5) - _replicas(rs)
        allowed = to_add - added
        return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)

    def rolling(self) -> None:
        """``rolloutRolling``."""
        new, old = self.new_replica_set(create=True)
        if new is None:
            self.status_write(None, rollout=True)
            return
        if self._reconcile_new(new) or self._reconcile_old(new):
            new, _ = self.split()
            self.status_write(new, rollout=True)
            return
        new, old = self.split()
        if self._complete(self.old_status):
            self.cleanup(old)
        self.status_write(new, rollout=True)

    def _reconcile_new(self, new: dict) -> bool:
        if _replicas(new) == self.replicas:
            return False
        if _replicas(new) > self.replicas:
            return self.scale_to(new, self.replicas)[0]
        return self.scale_to(new, self._new_set_replicas(self.sets, new))[0]

    def _reconcile_old(self, new: dict) -> bool:
        old = [rs for rs in self.sets if rs["metadata"]["uid"] != new["metadata"]["uid"]]
        if sum(_replicas(rs) for rs in old) == 0:
            return False
        all_count = sum(_replicas(rs) for rs in self.sets)
        min_available = self.replicas - max_unavailable(self.d)
        new_unavailable = _replicas(new) - _st(new, "availableReplicas")
        max_down = all_count - min_available - new_unavailable
        if max_down <= 0:
            return False
        cleaned = 0
        for rs in sorted(old, key=_created):  # unhealthy old replicas first
            if cleaned >= max_down:
                break
            if _replicas(rs) == 0 or _st(rs, "availableReplicas") >= _replicas(rs):
                continue  # (upstream refuses a negative clean-up; none is asked here)
            down = min(max_down - cleaned, _replicas(rs) - _st(rs, "availableReplicas"))
            self.scale_to(rs, _replicas(rs) - down)
            cleaned += down
        # then available ones, while minAvailable stays available
        available = sum(_st(rs, "availableReplicas") for rs in self.sets)
        scaled = 0
        if available > min_available:
            budget = available - min_available
            old = [rs for rs in self.sets if rs["metadata"]["uid"] != new["metadata"]["uid"]]
            for rs in sorted(old, key=_created):
                if scaled >= budget:
                    break
                if _replicas(rs) == 0:
                    continue
                down = min(_replicas(rs), budget - scaled)
                self.scale_to(rs, _replicas(rs) - down)
                scaled += down
        return cleaned + scaled > 0

    def recreate(self) -> None:
        """``rolloutRecreate``: old sets to 0; the new one only when no old pod runs."""
        new, old = self.new_replica_set(create=False)
        scaled = False
        for rs in old:
            if _replicas(rs) > 0:
                scaled = self.scale_to(rs, 0)[0] or scaled
        if scaled:
            self.status_write(new, rollout=True)
            return
        if self._old_pods_running(new):
            self.status_write(new, rollout=True)
            return
        if new is None:
            new, old = self.new_replica_set(create=True)
            if new is None:
                self.status_write(None, rollout=True)
                return
        self.scale_to(new, self.replicas)
        new, old = self.split()
        if self._complete(self.old_status):
            self.cleanup(old)
        self.status_write(new, rollout=True)

    def _old_pods_running(self, new: dict | None) -> bool:
        new_uid = new["metadata"]["uid"] if new else None
        if sum(_st(rs, "replicas") for rs in self.sets if rs["metadata"]["uid"] != new_uid):
            return True
        for rs in self.sets:
            if rs["metadata"]["uid"] == new_uid:
                continue
            for pod in self.pods.get(rs["metadata"]["uid"], []):
                if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                    return True
        return False

    def cleanup(self, old: list[dict]) -> None:
        """``cleanupDeployment``: old sets beyond ``revisionHistoryLimit`` deleted, lowest
        revision first, never one that still has replicas."""
        limit = self.spec.get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in old if not rs["metadata"].get("deletionTimestamp")]
        extra = len(alive) - int(limit)
        if extra <= 0:
            return
        for rs in sorted(alive, key=lambda r: (revision(r), _created(r)))[:extra]:
            if (
                _st(rs, "replicas")
                or _replicas(rs)
                or int(rs["metadata"].get("generation") or 1) > _st(rs, "observedGeneration")
            ):
                continue
            try:
                self.store.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])
            except ApiError:
                pass
            self.sets = [s for s in self.sets if s["metadata"]["uid"] != rs["metadata"]["uid"]]

    # -- status ----------------------------------------------------------------------------

    def _complete(self, status: dict) -> bool:
        """``DeploymentComplete``."""
        r = self.replicas
        return (
            int(status.get("updatedReplicas") or 0) == r
            and int(status.get("replicas") or 0) == r
            and int(status.get("availableReplicas") or 0) == r
            and int(status.get("observedGeneration") or 0)
            >= int(self.d["metadata"].get("generation") or 1)
        )

    def calculate(self, new: dict | None) -> dict:
        """``calculateStatus``: the sets' sums and the Available condition."""
        available = sum(_st(rs, "availableReplicas") for rs in self.sets)
        total = sum(_replicas(rs) for rs in self.sets)
        status = {
            "observedGeneration": int(self.d["metadata"].get("generation") or 1),
            "replicas": sum(_st(rs, "replicas") for rs in self.sets),
            "updatedReplicas": _st(new, "replicas"),
            "readyReplicas": sum(_st(rs, "readyReplicas") for rs in self.sets),
            "availableReplicas": available,
            "unavailableReplicas": max(0, total - available),
            "conditions": copy.deepcopy(self.status.get("conditions") or []),
        }
        if self.status.get("collisionCount") is not None:
            status["collisionCount"] = self.status["collisionCount"]
        if available >= self.replicas - max_unavailable(self.d):
            cond = _new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        else:
            cond = _new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        set_condition(status, cond)
        return status

    def _progress(self, new: dict | None, status: dict) -> None:
        """``syncRolloutStatus``'s Progressing condition."""
        if not _has_deadline(self.d):
            _remove_condition(status, "Progressing")
            return
        current = _condition(self.status, "Progressing")
        if (
            status["replicas"] == status["updatedReplicas"]
            and current is not None
            and current["reason"] == "NewReplicaSetAvailable"
        ):
            return
        name = new["metadata"]["name"] if new else None
        old = self.old_status

        def said(done: str) -> str:
            if name:
                return f'ReplicaSet "{name}" {done}.'
            return f'Deployment "{self.d["metadata"]["name"]}" {done}.'

        if self._complete(status):
            cond = _new_condition(
                "Progressing", "True", "NewReplicaSetAvailable", said("has successfully progressed")
            )
            set_condition(status, cond)
        elif (
            status["updatedReplicas"] > int(old.get("updatedReplicas") or 0)
            or status["replicas"] - status["updatedReplicas"]
            < int(old.get("replicas") or 0) - int(old.get("updatedReplicas") or 0)
            or status["readyReplicas"] > int(old.get("readyReplicas") or 0)
            or status["availableReplicas"] > int(old.get("availableReplicas") or 0)
        ):
            cond = _new_condition(
                "Progressing", "True", "ReplicaSetUpdated", said("is progressing")
            )
            now_cond = _condition(status, "Progressing")
            if now_cond is not None:
                if now_cond["status"] == "True":
                    cond["lastTransitionTime"] = now_cond["lastTransitionTime"]
                _remove_condition(status, "Progressing")
            set_condition(status, cond)
        elif self._timed_out(status):
            cond = _new_condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                said("has timed out progressing"),
            )
            set_condition(status, cond)

    def _timed_out(self, status: dict) -> bool:
        cond = _condition(status, "Progressing")
        if cond is None or cond["reason"] == "NewReplicaSetAvailable":
            return False
        if cond["reason"] == "ProgressDeadlineExceeded":
            return True
        deadline = int(self.spec.get("progressDeadlineSeconds") or 0)
        since = parse_time(cond.get("lastUpdateTime") or now_iso())
        return (self.now - since).total_seconds() > deadline

    def paused_conditions(self) -> None:
        """``checkPausedConditions``: Progressing Unknown DeploymentPaused/Resumed."""
        if not _has_deadline(self.d):
            return
        cond = _condition(self.status, "Progressing")
        if cond is not None and cond["reason"] == "ProgressDeadlineExceeded":
            return
        paused_cond = cond is not None and cond["reason"] == "DeploymentPaused"
        if self.spec.get("paused") and not paused_cond:
            set_condition(
                self.status,
                _new_condition(
                    "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"
                ),
            )
        elif not self.spec.get("paused") and paused_cond:
            set_condition(
                self.status,
                _new_condition(
                    "Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed"
                ),
            )

    def status_write(self, new: dict | None, rollout: bool) -> None:
        status = self.calculate(new)
        if rollout:
            self._progress(new, status)
        status = {
            k: v
            for k, v in status.items()
            if v not in (0, [], None) or k == "collisionCount" and v is not None
        }
        annotations = self.annotations

        def change(obj: dict) -> None:
            if annotations:
                obj["metadata"]["annotations"] = annotations
            obj["status"] = status

        meta = self.d["metadata"]
        self.store.mutate(DEPLOYMENTS, meta["namespace"], meta["name"], change)


class DeploymentController:
    """Keeps every Deployment's ReplicaSets and status (see the module docstring).

    ``interval``: resync period in seconds; a pass also runs on every Deployment, ReplicaSet
    or pod change (pods: for Recreate's "no old pod running" and progress deadlines).
    """

    def __init__(self, store: Store, interval: float = 1.0):
        self.store = store
        self.interval = interval
        self._wake: asyncio.Event | None = None
        store.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if self._wake is not None and event.resource in (DEPLOYMENTS, REPLICASETS, PODS):
            self._wake.set()

    async def run(self) -> None:
        """Reconcile until cancelled."""
        self._wake = asyncio.Event()
        await reconcile_loop(self.reconcile, self._wake, self.interval, "deployments")

    def event(self, d: dict, reason: str, message: str, type_: str = "Normal") -> None:
        """Record an Event about Deployment ``d`` as the real controller does."""
        record_event(self.store, d, reason, message, type_, component=COMPONENT)

    def reconcile(self) -> None:
        """One pass over every Deployment."""
        deployments = list(self.store.iter(DEPLOYMENTS))
        if not deployments:  # (most clusters: no scan of the sets and pods)
            return
        sets: dict[str, list[dict]] = {}
        orphans: list[dict] = []
        for rs in self.store.iter(REPLICASETS):
            ref = controller_ref(rs)
            if ref is not None and ref.get("kind") == "Deployment":
                sets.setdefault(ref.get("uid", ""), []).append(copy.deepcopy(rs))
            elif ref is None and not rs["metadata"].get("deletionTimestamp"):
                orphans.append(rs)
        for d in deployments if orphans else ():  # ClaimReplicaSets: adopt matching orphans
            if d["metadata"].get("deletionTimestamp"):
                continue
            for rs in orphans_for(orphans, d):
                adopted = adopt(self.store, REPLICASETS, rs, d)
                orphans.remove(rs)
                if adopted is not None:
                    sets.setdefault(d["metadata"]["uid"], []).append(adopted)
        pods: dict[str, list[dict]] = {}
        wanted = {  # Recreate waits for the old sets' pods: only those are gathered
            rs["metadata"]["uid"]
            for d in deployments
            if not _rolling(d)
            for rs in sets.get(d["metadata"]["uid"], [])
        }
        if wanted:
            for pod in self.store.iter(PODS):
                for ref in pod["metadata"].get("ownerReferences") or ():
                    if ref.get("uid") in wanted and ref.get("controller"):
                        pods.setdefault(ref["uid"], []).append(pod)
        for d in deployments:
            if d["metadata"].get("deletionTimestamp"):
                continue
            self.sync(copy.deepcopy(d), sets.get(d["metadata"]["uid"], []), pods)

    def sync(self, d: dict, sets: list[dict], pods: dict[str, list[dict]]) -> None:
        """``syncDeployment`` of one Deployment (a deep copy) with its ReplicaSets."""
        run = _Sync(self, d, sets, pods)
        run.paused_conditions()
        if (d.get("spec") or {}).get("paused") or run.is_scaling_event():
            run.sync_scaling()
        elif _rolling(d):
            run.rolling()
        else:
            run.recreate()
