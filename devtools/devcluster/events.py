"""Recording core/v1 Events, as the scheduler, kubelet and Job controller do.

An Event with the same object, reason and message as an existing one is counted (``count``
+1, ``lastTimestamp`` updated) rather than duplicated, as the client-go event recorder does.
Both ``lastTimestamp`` and ``eventTime`` keys are always present (kubespawner reads either).
https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/
"""

from __future__ import annotations

import secrets

from .resources import EVENTS, NAMESPACES
from .store import ApiError, Store, now_iso


def record_event(
    store: Store,
    obj: dict,
    reason: str,
    message: str,
    type_: str = "Normal",
    component: str = "kubelet",
    host: str | None = None,
) -> dict | None:
    """Create (or count) an Event about ``obj``; returns it, or None if it cannot be stored
    (e.g. its namespace is being deleted)."""
    meta = obj["metadata"]
    namespace = meta.get("namespace") or "default"
    if store.peek(NAMESPACES, None, namespace) is None:
        return None
    for existing in store.iter(EVENTS, namespace):
        inv = existing.get("involvedObject") or {}
        if (
            inv.get("uid") == meta.get("uid")
            and existing.get("reason") == reason
            and existing.get("message") == message
        ):

            def count(event: dict) -> None:
                event["count"] = event.get("count", 1) + 1
                event["lastTimestamp"] = now_iso()

            return store.mutate(EVENTS, namespace, existing["metadata"]["name"], count)
    now = now_iso()
    source = {"component": component}
    if host:
        source["host"] = host
    event = {
        "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", "v1"),
            "kind": obj.get("kind", ""),
            "name": meta["name"],
            "namespace": namespace,
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": source,
        "reportingComponent": component,
        "reportingInstance": host or "",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": None,
        "count": 1,
    }
    try:
        return store.create(EVENTS, event, namespace)
    except ApiError:
        return None
