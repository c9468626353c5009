"""Server-side printing: ``meta.k8s.io/v1`` Tables for ``kubectl get``, pure functions.

kubectl asks with ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints the
columns it gets. Columns imitate kubectl's usual ones for pods, nodes, events and jobs, and
NAME/AGE for anything else.
https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables
"""

from __future__ import annotations

import datetime

from .resources import Resource


def _age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    then = datetime.datetime.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc
    )
    secs = max(0, int((now - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def pod_status_word(pod: dict) -> str:
    """The STATUS column of ``kubectl get pods`` (Pending, ContainerCreating, Running,
    Completed, Error, Terminating...)."""
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    word = status.get("reason") or status.get("phase") or "Pending"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            word = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            word = state["terminated"]["reason"]
    return word


def _pod_row(pod: dict) -> list:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len(pod.get("spec", {}).get("containers", []))
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(cs.get("restartCount", 0) for cs in statuses)
    return [
        pod["metadata"]["name"],
        f"{ready}/{total}",
        pod_status_word(pod),
        restarts,
        _age(pod["metadata"].get("creationTimestamp")),
        (pod.get("status") or {}).get("podIP") or "<none>",
        pod.get("spec", {}).get("nodeName") or "<none>",
    ]


def _node_row(node: dict) -> list:
    return [
        node["metadata"]["name"],
        "Ready",
        "<none>",
        _age(node["metadata"].get("creationTimestamp")),
        node.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", ""),
    ]


def _event_row(event: dict) -> list:
    inv = event.get("involvedObject") or {}
    when = (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event["metadata"].get("creationTimestamp")
    )
    return [
        _age(when),
        event.get("type", ""),
        event.get("reason", ""),
        f"{(inv.get('kind') or '').lower()}/{inv.get('name', '')}",
        event.get("message", ""),
    ]


def _job_row(job: dict) -> list:
    status = job.get("status") or {}
    conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
    if conds.get("Complete") == "True":
        word = "Complete"
    elif conds.get("Failed") == "True":
        word = "Failed"
    elif conds.get("Suspended") == "True":
        word = "Suspended"
    else:
        word = "Running"
    completions = job.get("spec", {}).get("completions", 1)
    return [
        job["metadata"]["name"],
        word,
        f"{status.get('succeeded', 0)}/{completions}",
        _age(job["metadata"].get("creationTimestamp")),
    ]


def _deployment_row(obj: dict) -> list:  # R: kubectl get deployments
    status, replicas = obj.get("status") or {}, (obj.get("spec") or {}).get("replicas", 1)
    return [
        obj["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{replicas}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _age(obj["metadata"].get("creationTimestamp")),
    ]


def _replicaset_row(obj: dict) -> list:  # R: kubectl get replicasets
    status = obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        (obj.get("spec") or {}).get("replicas", 1),
        status.get("replicas", 0),
        status.get("readyReplicas", 0),
        _age(obj["metadata"].get("creationTimestamp")),
    ]


_INTEGER_COLUMNS = {"Restarts", "Up-to-date", "Available", "Desired", "Current"}

_COLUMNS = {
    "pods": (["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"], _pod_row, 5),
    "nodes": (["Name", "Status", "Roles", "Age", "Version"], _node_row, 5),
    "events": (["Last Seen", "Type", "Reason", "Object", "Message"], _event_row, 5),
    "jobs": (["Name", "Status", "Completions", "Age"], _job_row, 4),
    "deployments": (["Name", "Ready", "Up-to-date", "Available", "Age"], _deployment_row, 5),
    "replicasets": (["Name", "Desired", "Current", "Ready", "Age"], _replicaset_row, 5),
}


def table(res: Resource, items: list[dict], resource_version: str) -> dict:
    """A Table of ``items`` of resource ``res``; columns after the first ``n`` are wide-only."""
    names, row, shown = _COLUMNS.get(
        res.plural,
        (
            ["Name", "Age"],
            lambda o: [o["metadata"]["name"], _age(o["metadata"].get("creationTimestamp"))],
            2,
        ),
    )
    columns = [
        {
            "name": name,
            "type": "integer" if name in _INTEGER_COLUMNS else "string",
            "format": "name" if name == "Name" else "",
            "description": name,
            "priority": 0 if i < shown else 1,
        }
        for i, name in enumerate(names)
    ]
    rows = [
        {
            "cells": row(obj),
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            },
        }
        for obj in items
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    }
