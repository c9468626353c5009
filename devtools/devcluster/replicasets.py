"""apps/v1 ReplicaSets of the emulated cluster: admission, the ReplicaSet controller and the
``scale`` subresource (autoscaling/v1 ``Scale``) of ReplicaSets and Deployments.

What is emulated (https://kubernetes.io/docs/concepts/workloads/controllers/replicaset/,
upstream ``pkg/controller/replicaset/replica_set.go``):

- **Admission** (`admit_replicaset`, `admit_replicaset_update`): ``replicas`` 1, the template's
  ``restartPolicy`` Always and the pod defaults a Deployment's template gets; ``generation`` 1,
  then +1 on every spec change; ``status.replicas`` 0. Refused with 422 ``Invalid`` worded as
  the real server: no selector, a selector that does not match the template's labels, another
  ``restartPolicy``, a changed selector (``field is immutable``), a negative ``replicas``.
- **The controller** (`ReplicaSetController`): keeps ``spec.replicas`` active pods (not
  ``Succeeded``/``Failed``, not terminating), named ``<replicaset>-<5 characters>``, with the
  template's labels, annotations and finalizers and an ``ownerReferences`` entry
  (``controller: true``, ``blockOwnerDeletion: true``); a deleted or failed pod is replaced (a
  failed pod stays, as upstream, until its ReplicaSet goes); extra pods are deleted in the
  order of upstream's ``ActivePodsWithRanks`` (`deletion_order`): unscheduled, then pending,
  then not ready, lower ``controller.kubernetes.io/pod-deletion-cost``, more pods of the same
  owner on its node, ready more recently (the logarithmic buckets of ``LogarithmicScaleDown``),
  more restarts, newer. Events ``SuccessfulCreate``/``SuccessfulDelete``/``FailedCreate`` as
  the real controller's. Status: ``replicas``, ``fullyLabeledReplicas``, ``readyReplicas``,
  ``availableReplicas`` (ready for ``minReadySeconds``), ``observedGeneration`` and a
  ``ReplicaFailure`` condition while pods cannot be created (zero fields omitted but
  ``replicas``, as the API's JSON).
- **Scale** (`serve_scale`): GET, PUT and PATCH (merge, strategic, JSON patch) of
  ``<deployments|replicasets>/<name>/scale`` answer an ``autoscaling/v1`` ``Scale`` whose
  ``status.selector`` is the selector as a string (``kubectl scale`` patches it); a write sets
  ``spec.replicas`` of the object (generation +1), ``dryRun`` honoured, a stale
  ``metadata.resourceVersion`` 409.

- **Adoption** (`adopt`): an active pod with no controller whose labels the set's selector
  selects (it carries the set's ``pod-template-hash``: e.g. left by ``kubectl delete rs
  --cascade=orphan``) is adopted (a controller reference added) and counted.

Not emulated: pods adopted without the hash label (upstream adopts any pod its selector
matches; only pods with a ``pod-template-hash`` label are looked at here), release of pods
whose labels stop matching, slow-start batches and expectations (a pass sees its own writes
at once), ``status.terminatingReplicas`` (1.33).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import functools
import json
import logging
import math

from .controller import reconcile_loop
from .events import record_event
from .resources import PODS, REPLICASETS, Resource
from .store import ApiError, Event, Store, conflict, now_iso

log = logging.getLogger(__name__)

HASH_LABEL = "pod-template-hash"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
COMPONENT = "replicaset-controller"
_PHASE_ORDER = {"Pending": 0, "Unknown": 1, "Running": 2}


# -- shared helpers (also used by `deployments`) ------------------------------------------------


def invalid(kind: str, name: str, message: str, group: str = "apps") -> ApiError:
    """422 Invalid as kube-apiserver words it: ``<Kind>.<group> "<name>" is invalid: <msg>``."""
    return ApiError(
        422,
        "Invalid",
        f'{kind}.{group} "{name}" is invalid: {message}',
        {"name": name, "group": group, "kind": kind},
    )


def go_map(labels: dict) -> str:
    """A label map as Go's ``%#v`` prints it (``map[string]string{"a":"b"}``)."""
    inner = ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items()))
    return f"map[string]string{{{inner}}}"


def go_selector(selector: dict) -> str:
    """A LabelSelector as Go's ``%#v`` prints it (in ``field is immutable`` messages)."""
    labels = selector.get("matchLabels")
    shown = go_map(labels) if labels else "map[string]string(nil)"
    exprs = (
        "[]v1.LabelSelectorRequirement(nil)"
        if not selector.get("matchExpressions")
        else "[]v1.LabelSelectorRequirement{...}"
    )
    return f"v1.LabelSelector{{MatchLabels:{shown}, MatchExpressions:{exprs}}}"


def selector_matches(selector: dict, labels: dict) -> bool:
    """Whether a LabelSelector (``matchLabels``, ``matchExpressions`` with In/NotIn/Exists/
    DoesNotExist) selects ``labels``. An empty selector selects nothing (as a workload's)."""
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


def selector_string(selector: dict) -> str:
    """A LabelSelector as ``metav1.LabelSelectorAsSelector(...).String()`` writes it, e.g.
    ``app=web,tier in (a,b),!legacy`` (requirements sorted by key), for ``Scale.status``."""
    terms: list[tuple[str, str]] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        terms.append((key, f"{key}={value}"))
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key", ""), expr.get("operator")
        values = ",".join(sorted(expr.get("values") or []))
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(op, key)
        terms.append((key, text))
    return ",".join(text for _, text in sorted(terms))


def check_workload_spec(kind: str, name: str, spec: dict) -> None:
    """The checks a Deployment's and a ReplicaSet's spec share (``ValidatePodTemplateSpecFor
    ReplicaSet``): containers, a selector matching the template's labels, ``restartPolicy``
    Always (defaulted), ``replicas`` >= 0. Raises `ApiError` 422 naming the field."""
    template = spec.get("template") or {}
    if not (template.get("spec") or {}).get("containers"):
        raise invalid(kind, name, "spec.template.spec.containers: Required value")
    selector = spec.get("selector")
    if not selector:
        raise invalid(kind, name, "spec.selector: Required value")
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not selector_matches(selector, labels):
        raise invalid(
            kind,
            name,
            f"spec.template.metadata.labels: Invalid value: {go_map(labels)}: "
            "`selector` does not match template `labels`",
        )
    restart = template["spec"].setdefault("restartPolicy", "Always")
    if restart != "Always":
        raise invalid(
            kind,
            name,
            f'spec.template.spec.restartPolicy: Unsupported value: "{restart}": '
            'supported values: "Always"',
        )
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        raise invalid(
            kind,
            name,
            f"spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0",
        )


def default_template(template: dict) -> None:
    """The pod-spec defaults the real server fills in a workload's template (in place)."""
    pod_spec = template.setdefault("spec", {})
    pod_spec.setdefault("restartPolicy", "Always")
    pod_spec.setdefault("terminationGracePeriodSeconds", 30)
    pod_spec.setdefault("dnsPolicy", "ClusterFirst")
    pod_spec.setdefault("schedulerName", "default-scheduler")


def controller_ref(obj: dict) -> dict | None:
    """The ``ownerReferences`` entry with ``controller: true``, or None."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def adopt(store: Store, res: Resource, obj: dict, owner: dict) -> dict | None:
    """Make ``owner`` (a Deployment or ReplicaSet) the controller of ``obj``, an object of
    ``res`` that has none (``ClaimObject``'s adoption): a controller reference is appended to
    its ``ownerReferences``. Returns the stored copy, or None if it is gone or has a
    controller by now."""
    meta = owner["metadata"]
    ref = {
        "apiVersion": "apps/v1",
        "kind": owner.get("kind", ""),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    taken = False

    def change(o: dict) -> None:
        nonlocal taken
        if controller_ref(o) is not None:
            taken = True
            return
        o["metadata"]["ownerReferences"] = [*(o["metadata"].get("ownerReferences") or []), ref]

    stored = store.mutate(res, obj["metadata"].get("namespace"), obj["metadata"]["name"], change)
    return None if stored is None or taken else copy.deepcopy(stored)


def orphans_for(orphans: list[dict], owner: dict) -> list[dict]:
    """The objects of ``orphans`` (no controller, not being deleted) in ``owner``'s namespace
    whose labels ``owner``'s ``spec.selector`` selects."""
    ns = owner["metadata"].get("namespace")
    selector = (owner.get("spec") or {}).get("selector") or {}
    return [
        o
        for o in orphans
        if o["metadata"].get("namespace") == ns
        and selector_matches(selector, o["metadata"].get("labels") or {})
    ]


def parse_time(stamp: str) -> datetime.datetime:
    """An RFC 3339 timestamp as Kubernetes writes it, as an aware UTC datetime."""
    return datetime.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc
    )


def pod_active(pod: dict) -> bool:
    """``controller.IsPodActive``: not Succeeded/Failed and not being deleted."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp")


def pod_ready(pod: dict) -> bool:
    """Whether the pod's ``Ready`` condition is True."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _ready_since(pod: dict) -> datetime.datetime | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True" and c.get("lastTransitionTime"):
            return parse_time(c["lastTransitionTime"])
    return None


def pod_available(pod: dict, min_ready_seconds: int, now: datetime.datetime) -> bool:
    """Ready for at least ``min_ready_seconds`` (``podutil.IsPodAvailable``)."""
    if not pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = _ready_since(pod)
    return since is not None and (now - since).total_seconds() >= min_ready_seconds


# -- which pods go first ---------------------------------------------------------------------


def _deletion_cost(pod: dict) -> int:
    try:
        return int((pod["metadata"].get("annotations") or {}).get(DELETION_COST, 0))
    except ValueError:
        return 0


def _restarts(pod: dict) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return max((cs.get("restartCount", 0) for cs in statuses), default=0)


def _log_rank(then: datetime.datetime, now: datetime.datetime) -> int:
    nanos = (now - then).total_seconds() * 1e9
    return int(math.log2(nanos)) if nanos > 0 else -1


def deletion_order(
    pods: list[dict], related: list[dict], now: datetime.datetime | None = None
) -> list[dict]:
    """``pods`` sorted as upstream's ``controller.ActivePodsWithRanks`` (with the default
    feature gates PodDeletionCost and LogarithmicScaleDown): the first ones are deleted first
    when a ReplicaSet scales down. ``related``: the active pods of every ReplicaSet of the same
    owner (for the "doubled up on a node" rank). Pure; ``now`` defaults to the current time.
    https://github.com/kubernetes/kubernetes/blob/v1.32.0/pkg/controller/controller_utils.go
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    on_node = collections.Counter(
        (p.get("spec") or {}).get("nodeName", "") for p in related if pod_active(p)
    )

    def node(p: dict) -> str:
        return (p.get("spec") or {}).get("nodeName", "")

    def less(a: dict, b: dict) -> bool:
        if node(a) != node(b) and (not node(a) or not node(b)):
            return not node(a)  # 1. unassigned first
        pa = _PHASE_ORDER.get((a.get("status") or {}).get("phase"), 0)
        pb = _PHASE_ORDER.get((b.get("status") or {}).get("phase"), 0)
        if pa != pb:
            return pa < pb  # 2. Pending < Unknown < Running
        if pod_ready(a) != pod_ready(b):
            return not pod_ready(a)  # 3. not ready first
        if _deletion_cost(a) != _deletion_cost(b):
            return _deletion_cost(a) < _deletion_cost(b)  # 4. lower deletion cost
        ra, rb = on_node[node(a)], on_node[node(b)]
        if ra != rb:
            return ra > rb  # 5. doubled up first
        if pod_ready(a) and pod_ready(b):  # 6. ready more recently first (log buckets)
            ta, tb = _ready_since(a), _ready_since(b)
            if ta != tb:
                if ta is None or tb is None:
                    return ta is None
                diff = _log_rank(ta, now) - _log_rank(tb, now)
                if diff == 0:
                    return a["metadata"].get("uid", "") < b["metadata"].get("uid", "")
                return diff < 0
        if _restarts(a) != _restarts(b):
            return _restarts(a) > _restarts(b)  # 7. more restarts first
        ca, cb = a["metadata"].get("creationTimestamp"), b["metadata"].get("creationTimestamp")
        if ca != cb:  # 8. newer first (log buckets)
            if not ca or not cb:
                return not ca
            diff = _log_rank(parse_time(ca), now) - _log_rank(parse_time(cb), now)
            if diff == 0:
                return a["metadata"].get("uid", "") < b["metadata"].get("uid", "")
            return diff < 0
        return False

    def compare(a: dict, b: dict) -> int:
        return -1 if less(a, b) else (1 if less(b, a) else 0)

    return sorted(pods, key=functools.cmp_to_key(compare))


# -- admission ---------------------------------------------------------------------------------


def admit_replicaset(store: Store, res: Resource, obj: dict) -> None:
    """A `Store.admit` hook: default and check a new ReplicaSet (see the module docstring).
    Raises `ApiError` 422 Invalid naming the field."""
    if res != REPLICASETS:
        return
    name = obj["metadata"]["name"]
    spec = obj.setdefault("spec", {})
    check_workload_spec("ReplicaSet", name, spec)
    spec.setdefault("replicas", 1)
    default_template(spec["template"])
    obj["metadata"]["generation"] = 1
    obj["status"] = {"replicas": 0}


def admit_workload_update(kind: str, old: dict, new: dict) -> None:
    """The update rule Deployments and ReplicaSets share (apps/v1 registries' ``ValidateUpdate``
    and ``PrepareForUpdate``): an unchanged spec keeps ``metadata.generation``; a changed one
    is checked as on create (`check_workload_spec`), its selector is immutable, and the
    generation goes up by one.

    Args:
        kind: ``"Deployment"`` or ``"ReplicaSet"`` (for the messages).
        old: the stored object; new: the object being written (changed in place).

    Raises:
        ApiError: 422 Invalid, ``spec.selector: Invalid value: ...: field is immutable`` or
            what `check_workload_spec` refuses.
    """
    name = old["metadata"]["name"]
    spec = new.setdefault("spec", {})
    old_spec = old.get("spec") or {}
    generation = int(old["metadata"].get("generation") or 1)
    if spec == old_spec:
        new["metadata"]["generation"] = generation
        return
    if (spec.get("selector") or {}) != (old_spec.get("selector") or {}):
        raise invalid(
            kind,
            name,
            f"spec.selector: Invalid value: {go_selector(spec.get('selector') or {})}: "
            "field is immutable",
        )
    check_workload_spec(kind, name, spec)
    new["metadata"]["generation"] = generation + 1


def admit_replicaset_update(
    store: Store, res: Resource, old: dict, new: dict, subresource: str
) -> None:
    """A `Store.admit_update` hook for ReplicaSets: `admit_workload_update`. Raises `ApiError`
    422."""
    if res != REPLICASETS or subresource:
        return
    admit_workload_update("ReplicaSet", old, new)


# -- the scale subresource -------------------------------------------------------------------


def scale_of(obj: dict) -> dict:
    """The autoscaling/v1 ``Scale`` of a Deployment or ReplicaSet (pure)."""
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": int(spec.get("replicas", 0))},
        "status": {
            "replicas": int((obj.get("status") or {}).get("replicas") or 0),
            "selector": selector_string(spec.get("selector") or {}),
        },
    }


async def serve_scale(server, request, res: Resource, namespace: str | None, name: str):
    """``GET``/``PUT``/``PATCH`` of ``<res>/<name>/scale`` for the API server (``server``: an
    `apiserver.ApiServer`). Returns an aiohttp response holding a ``Scale``; raises `ApiError`
    404 (no object), 409 (a stale ``resourceVersion`` in a PUT), 422 (``spec.replicas``
    negative or not an integer), 405 (another method)."""
    from . import apiserver  # (the server imports this module)
    from .patching import PatchError, apply_patch

    store: Store = server.store
    current = store.get(res, namespace, name)
    if request.method == "GET":
        return apiserver._json_response(scale_of(current))
    if request.method not in ("PUT", "PATCH"):
        raise ApiError(
            405, "MethodNotAllowed", f"the server does not allow this method: {request.method}"
        )
    dry_run, _mode = apiserver._write_options(request)
    body = await server._body(request)
    if request.method == "PUT":
        scale = body
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != current["metadata"]["resourceVersion"]:
            raise conflict(res, name)
    else:
        try:
            scale = apply_patch(request.headers.get("Content-Type", ""), scale_of(current), body)
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from None
    replicas = (scale.get("spec") or {}).get("replicas", 0)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise validation_error(name, replicas)

    def apply(obj: dict) -> dict:
        obj.setdefault("spec", {})["replicas"] = replicas
        return obj

    updated = store.patch(res, namespace, name, apply, dry_run=dry_run)
    return apiserver._json_response(scale_of(updated))


def validation_error(name: str, replicas: object) -> ApiError:
    """422 for a bad ``Scale.spec.replicas``, as the real server words it."""
    return invalid(
        "Scale",
        name,
        f"spec.replicas: Invalid value: {json.dumps(replicas)}: must be greater than or equal to 0",
        group="autoscaling",
    )


# -- the controller ----------------------------------------------------------------------------


def pod_from_template(rs: dict) -> dict:
    """The pod a ReplicaSet creates (``controller.GetPodFromTemplate``): the template's labels,
    annotations and finalizers, ``generateName`` ``<replicaset>-``, an owner reference. Pure."""
    meta = rs["metadata"]
    template = copy.deepcopy((rs.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    pod_meta: dict = {
        "generateName": f"{meta['name']}-",
        "namespace": meta["namespace"],
        "labels": tmeta.get("labels") or {},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    for key in ("annotations", "finalizers"):
        if tmeta.get(key):
            pod_meta[key] = tmeta[key]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template.get("spec")}


class ReplicaSetController:
    """Keeps every ReplicaSet's pods and status (see the module docstring).

    ``interval``: resync period in seconds; a pass also runs on every ReplicaSet or pod
    change. ``burst``: the most pods one pass creates for one ReplicaSet (upstream: 500).
    """

    def __init__(self, store: Store, interval: float = 1.0, burst: int = 500):
        self.store = store
        self.interval = interval
        self.burst = burst
        self._wake: asyncio.Event | None = None
        store.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if self._wake is not None and event.resource in (REPLICASETS, PODS):
            self._wake.set()

    async def run(self) -> None:
        """Reconcile until cancelled."""
        self._wake = asyncio.Event()
        await reconcile_loop(self.reconcile, self._wake, self.interval, "replicasets")

    def reconcile(self) -> None:
        """One pass over every ReplicaSet."""
        sets = list(self.store.iter(REPLICASETS))
        if not sets:
            return
        owned: dict[str, list[dict]] = {}
        orphans: list[dict] = []
        for pod in self.store.iter(PODS):
            ref = controller_ref(pod)
            if ref is not None and ref.get("kind") == "ReplicaSet":
                owned.setdefault(ref.get("uid", ""), []).append(pod)
            elif (
                ref is None
                and pod_active(pod)
                and HASH_LABEL in (pod["metadata"].get("labels") or {})
            ):
                orphans.append(pod)  # (only a set's pods carry the hash its selector asks)
        for rs in sets if orphans else ():
            if rs["metadata"].get("deletionTimestamp"):
                continue
            for pod in orphans_for(orphans, rs):
                adopted = adopt(self.store, PODS, pod, rs)
                orphans.remove(pod)
                if adopted is not None:
                    owned.setdefault(rs["metadata"]["uid"], []).append(adopted)
        family: dict[str, list[dict]] = {}  # owner uid (a Deployment's) -> pods of its sets
        for rs in sets:
            ref = controller_ref(rs)
            key = ref["uid"] if ref else rs["metadata"]["uid"]
            family.setdefault(key, []).extend(owned.get(rs["metadata"]["uid"], []))
        now = datetime.datetime.now(datetime.timezone.utc)
        for rs in sets:
            if rs["metadata"].get("deletionTimestamp"):
                continue
            ref = controller_ref(rs)
            related = family[ref["uid"] if ref else rs["metadata"]["uid"]]
            self._sync(rs, owned.get(rs["metadata"]["uid"], []), related, now)

    def _sync(self, rs: dict, pods: list[dict], related: list[dict], now) -> None:
        meta, spec = rs["metadata"], rs.get("spec") or {}
        active = [p for p in pods if pod_active(p)]
        want = int(spec.get("replicas", 1))
        failure = None
        if len(active) < want:
            for _ in range(min(want - len(active), self.burst)):
                try:
                    pod = self.store.create(PODS, pod_from_template(rs), meta["namespace"])
                except ApiError as exc:  # upstream: a FailedCreate event, ReplicaFailure
                    failure = exc.message
                    log.warning(
                        "devcluster replicaset %s/%s: pod not created: %s",
                        meta["namespace"],
                        meta["name"],
                        exc.message,
                    )
                    self._event(rs, "FailedCreate", f"Error creating: {exc.message}", "Warning")
                    break
                active.append(pod)
                self._event(rs, "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}")
        elif len(active) > want:
            for pod in deletion_order(active, related, now)[: len(active) - want]:
                try:
                    self.store.delete(PODS, meta["namespace"], pod["metadata"]["name"])
                except ApiError:
                    continue
                active.remove(pod)
                self._event(rs, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}")
        self._status(rs, active, failure, now)

    def _event(self, rs: dict, reason: str, message: str, type_: str = "Normal") -> None:
        record_event(self.store, rs, reason, message, type_, component=COMPONENT)

    def _status(self, rs: dict, active: list[dict], failure: str | None, now) -> None:
        meta, spec = rs["metadata"], rs.get("spec") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        min_ready = int(spec.get("minReadySeconds") or 0)
        old = rs.get("status") or {}
        conditions = [c for c in old.get("conditions") or [] if c.get("type") != "ReplicaFailure"]
        if failure is not None:
            previous = next(
                (c for c in old.get("conditions") or [] if c.get("type") == "ReplicaFailure"), {}
            )
            conditions.append(
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "lastTransitionTime": previous.get("lastTransitionTime") or now_iso(),
                    "reason": "FailedCreate",
                    "message": failure,
                }
            )
        status = {
            "replicas": len(active),
            "fullyLabeledReplicas": sum(
                all((p["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
                for p in active
            ),
            "readyReplicas": sum(pod_ready(p) for p in active),
            "availableReplicas": sum(pod_available(p, min_ready, now) for p in active),
            "observedGeneration": int(meta.get("generation") or 1),
            "conditions": conditions,
        }
        status = {k: v for k, v in status.items() if k == "replicas" or v not in (0, [])}

        def change(obj: dict) -> None:
            obj["status"] = status

        self.store.mutate(REPLICASETS, meta["namespace"], meta["name"], change)
