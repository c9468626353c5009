"""Admission on create: the defaulting and the few checks a real API server does that our
clients notice. Each function is a `Store.admit` hook ``hook(store, resource, obj)``.

- Pods: ``spec.containers`` required (each with ``name`` and ``image``), defaults for
  ``restartPolicy`` (Always), ``terminationGracePeriodSeconds`` (30), ``schedulerName``,
  ``priority`` resolved from ``priorityClassName`` (403 if unknown, as the Priority admission
  plugin answers), ``status.phase`` Pending.
  https://kubernetes.io/docs/concepts/scheduling-eviction/pod-priority-preemption/
- Jobs: defaults for ``parallelism``, ``completions``, ``backoffLimit`` (6), ``suspend``,
  ``completionMode``, the selector and template labels (``controller-uid``,
  ``batch.kubernetes.io/job-name``...). https://kubernetes.io/docs/concepts/workloads/controllers/job/
- PersistentVolumeClaims: immediately ``Bound`` (there is no provisioner to wait for) with
  the requested capacity.
"""

from __future__ import annotations

from .resources import JOBS, PODS, PRIORITYCLASSES, PVCS, Resource
from .store import ApiError, Store


def _invalid(kind: str, name: str, message: str) -> ApiError:
    return ApiError(
        422, "Invalid", f'{kind} "{name}" is invalid: {message}', {"name": name, "kind": kind}
    )


def admit_pod(store: Store, res: Resource, obj: dict) -> None:
    """Validate and default a new Pod (see the module docstring)."""
    if res != PODS:
        return
    name = obj["metadata"]["name"]
    spec = obj.setdefault("spec", {})
    containers = spec.get("containers") or []
    if not containers:
        raise _invalid("Pod", name, "spec.containers: Required value")
    for i, c in enumerate(containers + (spec.get("initContainers") or [])):
        for field in ("name", "image"):
            if not c.get(field):
                raise _invalid("Pod", name, f"spec.containers[{i}].{field}: Required value")
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    pc_name = spec.get("priorityClassName")
    if pc_name:
        pc = store.peek(PRIORITYCLASSES, None, pc_name)
        if pc is None:
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: no PriorityClass with name {pc_name} was found',
                {"name": name, "kind": "pods"},
            )
        spec["priority"] = int(pc.get("value", 0))
    else:
        default = next((p for p in store.iter(PRIORITYCLASSES) if p.get("globalDefault")), None)
        spec.setdefault("priority", int(default.get("value", 0)) if default else 0)
    obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}


def admit_job(store: Store, res: Resource, obj: dict) -> None:
    """Default a new Job (see the module docstring)."""
    if res != JOBS:
        return
    spec = obj.setdefault("spec", {})
    template = spec.get("template") or {}
    if not (template.get("spec") or {}).get("containers"):
        raise _invalid(
            "Job", obj["metadata"]["name"], "spec.template.spec.containers: Required value"
        )
    restart = template["spec"].setdefault("restartPolicy", "Never")
    if restart not in ("Never", "OnFailure"):
        raise _invalid(
            "Job",
            obj["metadata"]["name"],
            f'spec.template.spec.restartPolicy: Unsupported value: "{restart}": '
            'supported values: "OnFailure", "Never"',
        )
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("suspend", False)
    spec.setdefault("completionMode", "NonIndexed")
    uid = obj["metadata"]["uid"]
    name = obj["metadata"]["name"]
    labels = {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    obj.setdefault("status", {})


def admit_pvc(store: Store, res: Resource, obj: dict) -> None:
    """Mark a new PVC Bound with its requested capacity (no provisioner is emulated)."""
    if res != PVCS:
        return
    spec = obj.setdefault("spec", {})
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    spec.setdefault("volumeName", f"pv-{obj['metadata']['uid']}")
    obj["status"] = {
        "phase": "Bound",
        "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
        "capacity": {"storage": storage},
    }


HOOKS = (admit_pod, admit_job, admit_pvc)
