"""Pod disruptions as Kubernetes (>= 1.26) reports them: the ``DisruptionTarget`` condition,
then a graceful deletion.

https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions

- :func:`evict`: the ``pods/eviction`` subresource (``POST .../pods/NAME/eviction`` with a
  policy/v1 ``Eviction``), as ``pkg/registry/core/pod/storage/eviction.go``: condition reason
  ``EvictionByEvictionAPI``, message ``Eviction API: evicting``, then the pod is deleted with
  the Eviction's ``deleteOptions.gracePeriodSeconds`` (else its own grace period); the answer
  is a ``Status`` Success with code 201. PodDisruptionBudgets are not emulated (never 429).
- :func:`preempt`: what kube-scheduler's preemption does to a victim
  (``pkg/scheduler/framework/preemption``): reason ``PreemptionByScheduler``, message
  ``<schedulerName>: preempting to accommodate a higher priority pod``.
- :func:`drain`: what the taint-eviction controller does on a ``NoExecute`` taint
  (``pkg/controller/tainteviction``): reason ``DeletionByTaintManager``, message
  ``Taint manager: deleting due to NoExecute taint``.

A plain ``DELETE`` adds no condition (as upstream). In every case the kubelet then stops the
container (SIGTERM, SIGKILL after the grace period) and writes the pod's final status (phase
``Failed`` unless every container exited 0; ``terminated`` exitCode 143 or 137) before the
pod object goes away; the Job controller counts such pods (`jobs`).
"""

from __future__ import annotations

from .resources import PODS
from .scheduler import set_condition
from .store import ApiError, Store, not_found, now_iso

EVICTION = ("EvictionByEvictionAPI", "Eviction API: evicting")
TAINT_MANAGER = ("DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint")
PREEMPTION_MESSAGE = "{scheduler}: preempting to accommodate a higher priority pod"


def disruption_condition(reason: str, message: str) -> dict:
    """The pod condition ``DisruptionTarget`` (status True) with ``reason``/``message``."""
    return {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": None,
        "lastTransitionTime": now_iso(),
    }


def disrupt(
    store: Store,
    namespace: str,
    name: str,
    reason: str,
    message: str,
    grace_period: int | None = None,
) -> dict:
    """Add the ``DisruptionTarget`` condition to a pod, then delete it gracefully
    (``grace_period`` seconds, else the pod's ``terminationGracePeriodSeconds``).

    Returns the pod as the deletion left it. Raises `ApiError` 404 if there is no such pod.
    """
    pod = store.peek(PODS, namespace, name)
    if pod is None:
        raise not_found(PODS, name)
    if not pod["metadata"].get("deletionTimestamp"):
        store.mutate(
            PODS, namespace, name, lambda p: set_condition(p, disruption_condition(reason, message))
        )
    return store.delete(PODS, namespace, name, grace_period)


def evict(store: Store, namespace: str, name: str, body: dict | None = None) -> dict:
    """The ``pods/eviction`` subresource: returns the ``Status`` to answer with code 201.

    ``body``: the policy/v1 ``Eviction`` (``metadata.name`` must be the pod's, when given;
    ``deleteOptions.gracePeriodSeconds`` is used). Raises `ApiError`: 400 for a body of
    another kind or name, 404 if there is no such pod.
    """
    body = body or {}
    kind = body.get("kind")
    if kind not in (None, "Eviction"):
        raise ApiError(400, "BadRequest", f"expected an Eviction object, got kind {kind!r}")
    body_name = (body.get("metadata") or {}).get("name")
    if body_name and body_name != name:
        raise ApiError(400, "BadRequest", "name in URL does not match name in Eviction object")
    options = body.get("deleteOptions") or {}
    grace = options.get("gracePeriodSeconds")
    if grace is not None:
        try:
            grace = int(grace)
        except (TypeError, ValueError):
            raise ApiError(
                400, "BadRequest", f"deleteOptions.gracePeriodSeconds: invalid value {grace!r}"
            ) from None
    disrupt(store, namespace, name, *EVICTION, grace_period=grace)
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    }


def preempt(store: Store, namespace: str, name: str, grace_period: int | None = None) -> dict:
    """Preempt a pod as kube-scheduler does (condition ``PreemptionByScheduler``)."""
    pod = store.peek(PODS, namespace, name)
    if pod is None:
        raise not_found(PODS, name)
    scheduler = (pod.get("spec") or {}).get("schedulerName") or "default-scheduler"
    message = PREEMPTION_MESSAGE.format(scheduler=scheduler)
    return disrupt(store, namespace, name, "PreemptionByScheduler", message, grace_period)


def drain(store: Store, namespace: str, name: str, grace_period: int | None = None) -> dict:
    """Delete a pod as the taint manager does for a ``NoExecute`` taint (condition
    ``DeletionByTaintManager``)."""
    return disrupt(store, namespace, name, *TAINT_MANAGER, grace_period=grace_period)
