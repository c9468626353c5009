"""The scheduler: binds pending pods to nodes, or says why not, as kube-scheduler does.

`decide` is a pure function of a pod, the nodes and the pods already bound: it runs, per
node and in kube-scheduler's order, the filters NodeUnschedulable, TaintToleration,
NodeAffinity (nodeSelector and required node affinity) and NodeResourcesFit, and either picks
a node (most free room for what the pod requests, then layout order) or words the
FailedScheduling message exactly as kube-scheduler does
(``0/4 nodes are available: <sorted reason histogram>. preemption: ...``). Preemption itself
is not emulated; queue order is priority, then creation.

References: https://kubernetes.io/docs/concepts/scheduling-eviction/kube-scheduler/ ,
https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/ ,
https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/ ,
https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from .controller import reconcile_loop
from .events import record_event
from .nodes import parse_quantity
from .resources import NODES, PODS
from .store import Event, Store, now_iso

log = logging.getLogger(__name__)

MSG_SELECTOR = "node(s) didn't match Pod's node affinity/selector"
MSG_UNSCHEDULABLE = "node(s) were unschedulable"
MSG_NOT_HELPFUL = "Preemption is not helpful for scheduling"
MSG_NO_VICTIMS = "No preemption victims found for incoming pod"


def pod_requests(pod: dict) -> dict[str, Decimal]:
    """What a pod requests: per resource name, the sum over its containers, at least the
    largest init container; a limit counts as the request where none is given; plus
    ``pods: 1``. https://kubernetes.io/docs/concepts/workloads/pods/init-containers/#resource-sharing-within-containers
    """

    def container(c: dict) -> dict[str, Decimal]:
        res = c.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: parse_quantity(v) for k, v in merged.items()}

    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for c in spec.get("containers") or []:
        for k, v in container(c).items():
            total[k] = total.get(k, Decimal(0)) + v
    for c in spec.get("initContainers") or []:
        for k, v in container(c).items():
            total[k] = max(total.get(k, Decimal(0)), v)
    total["pods"] = Decimal(1)
    return total


def is_terminated(pod: dict) -> bool:
    """True once a pod no longer holds node resources (phase Succeeded or Failed)."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    """True if one of ``tolerations`` tolerates ``taint`` (key/operator/value/effect rules)."""
    for tol in tolerations or []:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        op = tol.get("operator") or "Equal"
        if op == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (
            taint.get("value") or ""
        ):
            return True
    return False


def _expr_matches(expr: dict, labels: dict) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def matches_node_selector(pod: dict, node: dict) -> bool:
    """True if ``node`` satisfies the pod's ``nodeSelector`` and required node affinity."""
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    fields = {"metadata.name": node["metadata"]["name"]}
    for term in terms:
        exprs = term.get("matchExpressions") or []
        fexprs = term.get("matchFields") or []
        if (
            (exprs or fexprs)
            and all(_expr_matches(e, labels) for e in exprs)
            and all(_expr_matches(e, fields) for e in fexprs)
        ):
            return True
    return False


def node_free(node: dict, bound: list[dict]) -> dict[str, Decimal]:
    """Allocatable of ``node`` minus the requests of its non-terminated ``bound`` pods."""
    alloc = {
        k: parse_quantity(v)
        for k, v in ((node.get("status") or {}).get("allocatable") or {}).items()
    }
    name = node["metadata"]["name"]
    for pod in bound:
        if pod.get("spec", {}).get("nodeName") != name or is_terminated(pod):
            continue
        for k, v in pod_requests(pod).items():
            alloc[k] = alloc.get(k, Decimal(0)) - v
    return alloc


@dataclass(frozen=True)
class Decision:
    """Where a pod goes: ``node`` (None if nowhere) and, if nowhere, ``message`` (the
    FailedScheduling text); ``reasons`` maps each node to its failure reasons."""

    node: str | None
    message: str = ""
    reasons: dict[str, list[str]] = field(default_factory=dict)


def node_failures(pod: dict, node: dict, bound: list[dict]) -> tuple[list[str], bool]:
    """Why ``pod`` cannot go on ``node``: (reasons, resolvable by preemption). Empty: fits."""
    spec = pod.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    if (node.get("spec") or {}).get("unschedulable") and not tolerates(
        tolerations,
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
    ):
        return [MSG_UNSCHEDULABLE], False
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return [
                f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
            ], False
    if not matches_node_selector(pod, node):
        return [MSG_SELECTOR], False
    free = node_free(node, bound)
    reasons = []
    for rname, amount in pod_requests(pod).items():
        if amount <= 0:
            continue
        if free.get(rname, Decimal(0)) < amount:
            reasons.append("Too many pods" if rname == "pods" else f"Insufficient {rname}")
    return reasons, True


def _histogram(counts: Counter) -> str:
    return ", ".join(sorted(f"{n} {reason}" for reason, n in counts.items()))


def failed_scheduling_message(
    total: int, reasons: dict[str, list[str]], resolvable: dict[str, bool]
) -> str:
    """kube-scheduler's FitError text for ``total`` nodes that all failed.

    ``reasons`` maps node → reasons; ``resolvable`` node → whether preemption could help
    (only resource shortage can; preemption victims are never found here).
    """
    if total == 0:
        return "no nodes available to schedule pods"
    counts: Counter = Counter()
    for node_reasons in reasons.values():
        counts.update(node_reasons)
    preempt: Counter = Counter(
        MSG_NO_VICTIMS if resolvable.get(node) else MSG_NOT_HELPFUL for node in reasons
    )
    return (
        f"0/{total} nodes are available: {_histogram(counts)}. "
        f"preemption: 0/{total} nodes are available: {_histogram(preempt)}."
    )


def decide(pod: dict, nodes: list[dict], bound: list[dict]) -> Decision:
    """Pick a node for ``pod`` among ``nodes`` given the ``bound`` pods, or say why not."""
    reasons: dict[str, list[str]] = {}
    resolvable: dict[str, bool] = {}
    best: tuple[Decimal, int, str] | None = None
    wanted = pod_requests(pod)
    for index, node in enumerate(nodes):
        name = node["metadata"]["name"]
        why, can_preempt = node_failures(pod, node, bound)
        if why:
            reasons[name], resolvable[name] = why, can_preempt
            continue
        free = node_free(node, bound)
        alloc = {k: parse_quantity(v) for k, v in (node["status"].get("allocatable") or {}).items()}
        room = sum(
            ((free[k] - v) / alloc[k] for k, v in wanted.items() if alloc.get(k)),
            Decimal(0),
        )
        candidate = (room, -index, name)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is not None:
        return Decision(best[2])
    return Decision(None, failed_scheduling_message(len(nodes), reasons, resolvable), reasons)


def _condition(pod: dict, type_: str) -> dict | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def set_condition(obj: dict, cond: dict) -> None:
    """Set (replace by ``type``) a condition in ``obj['status']['conditions']``."""
    conds = obj.setdefault("status", {}).setdefault("conditions", [])
    for i, old in enumerate(conds):
        if old.get("type") == cond["type"]:
            if {k: v for k, v in old.items() if k != "lastTransitionTime"} == {
                k: v for k, v in cond.items() if k != "lastTransitionTime"
            }:
                return
            conds[i] = cond
            return
    conds.append(cond)


class Scheduler:
    """Runs `decide` for every unbound pod whenever pods or nodes change (and every
    ``interval`` seconds), binding pods or marking them Unschedulable with an Event."""

    def __init__(self, store: Store, interval: float = 1.0):
        self.store = store
        self.interval = interval
        self._wake = asyncio.Event()
        store.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.resource in (PODS, NODES):
            self._wake.set()

    async def run(self) -> None:
        """Reconcile until cancelled."""
        await reconcile_loop(self.reconcile, self._wake, self.interval, "scheduler")

    def reconcile(self) -> None:
        """One pass over the pending pods, highest priority first, then oldest."""
        nodes = list(self.store.iter(NODES))  # creation (layout) order
        pods = list(self.store.iter(PODS))
        bound = [p for p in pods if p.get("spec", {}).get("nodeName")]
        pending = [
            p
            for p in pods
            if not p.get("spec", {}).get("nodeName")
            and not p["metadata"].get("deletionTimestamp")
            and not is_terminated(p)
            and (p["spec"].get("schedulerName") or "default-scheduler") == "default-scheduler"
        ]
        pending.sort(
            key=lambda p: (
                -int(p["spec"].get("priority") or 0),
                p["metadata"].get("creationTimestamp", ""),
                int(p["metadata"]["resourceVersion"]),
            )
        )
        for pod in pending:
            decision = decide(pod, nodes, bound)
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            if decision.node:
                node = decision.node

                def bind(p: dict, node: str = node) -> None:
                    p["spec"]["nodeName"] = node
                    set_condition(
                        p,
                        {
                            "type": "PodScheduled",
                            "status": "True",
                            "lastProbeTime": None,
                            "lastTransitionTime": now_iso(),
                        },
                    )

                new = self.store.mutate(PODS, ns, name, bind)
                if new is not None:
                    bound.append(new)
                    record_event(
                        self.store,
                        new,
                        "Scheduled",
                        f"Successfully assigned {ns}/{name} to {node}",
                        component="default-scheduler",
                    )
                continue
            old = _condition(pod, "PodScheduled") or {}
            if old.get("message") == decision.message and old.get("status") == "False":
                continue
            message = decision.message

            def unschedulable(p: dict, message: str = message) -> None:
                set_condition(
                    p,
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                        "lastProbeTime": None,
                        "lastTransitionTime": now_iso(),
                    },
                )

            new = self.store.mutate(PODS, ns, name, unschedulable)
            if new is not None:
                record_event(
                    self.store,
                    new,
                    "FailedScheduling",
                    message,
                    type_="Warning",
                    component="default-scheduler",
                )
