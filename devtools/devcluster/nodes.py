"""Nodes of the emulated cluster: the layout (config or default) and Node objects.

A layout is a list of dicts ``{"name", "labels", "taints", "allocatable"}`` (YAML or JSON
file, or Python). The default fits the shipped GPU profiles (NVIDIA GPU operator
time-slicing labels, https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/gpu-sharing.html):

- ``gpu-ts4``: 1 GPU shared as 4 time-sliced replicas (``nvidia.com/gpu: "4"``),
- ``gpu-ts2``: 1 GPU shared as 2 replicas,
- ``gpu-whole``: 2 whole GPUs,
- ``cpu-1``: no GPU.

GPU nodes carry the taint ``nvidia.com/gpu=present:NoSchedule``. Every node has 16 cpu,
64Gi memory and 110 pods allocatable.

Quantities follow https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/
"""

from __future__ import annotations

import copy
import json
import platform
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
BASE_ALLOCATABLE = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}

_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY_RE = re.compile(
    r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)


class NodeConfigError(ValueError):
    """A node layout that cannot be used; the message names the node and field."""


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity (``"500m"``, ``"64Gi"``, ``"2"``, ``4``) as a Decimal.

    Units: cpu in cores, memory in bytes, extended resources in units. Raises ValueError.
    """
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    match = _QUANTITY_RE.match(str(value).strip())
    if not match:
        raise ValueError(f"invalid quantity: {value!r}")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise ValueError(f"invalid quantity: {value!r}") from None
    return number * Decimal(_SUFFIXES[match.group(2) or ""])


def _gpu_node(name: str, gpus: int, replicas: int, product: str) -> dict:
    return {
        "name": name,
        "labels": {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.count": str(gpus),
            "nvidia.com/gpu.replicas": str(replicas),
            "nvidia.com/gpu.product": product if replicas == 1 else f"{product}-SHARED",
            "nvidia.com/gpu.sharing-strategy": "time-slicing" if replicas > 1 else "none",
        },
        "taints": [dict(GPU_TAINT)],
        "allocatable": {**BASE_ALLOCATABLE, GPU_RESOURCE: str(gpus * replicas)},
    }


def default_layout() -> list[dict]:
    """The default node layout (see the module docstring); a new list each call."""
    return [
        _gpu_node("gpu-ts4", 1, 4, "NVIDIA-L4"),
        _gpu_node("gpu-ts2", 1, 2, "NVIDIA-L4"),
        _gpu_node("gpu-whole", 2, 1, "NVIDIA-L4"),
        {"name": "cpu-1", "labels": {}, "taints": [], "allocatable": dict(BASE_ALLOCATABLE)},
    ]


def validate_layout(layout: object) -> list[dict]:
    """Check and normalise a layout; returns a new list. Raises `NodeConfigError`."""
    if not isinstance(layout, list) or not layout:
        raise NodeConfigError("the node layout must be a non-empty list of nodes")
    result, seen = [], set()
    for i, node in enumerate(layout):
        if not isinstance(node, dict) or not isinstance(node.get("name"), str):
            raise NodeConfigError(f"node #{i}: 'name' (a string) is required")
        name = node["name"]
        if name in seen:
            raise NodeConfigError(f"node {name}: duplicate name")
        seen.add(name)
        unknown = set(node) - {"name", "labels", "taints", "allocatable"}
        if unknown:
            raise NodeConfigError(
                f"node {name}: unknown field(s) {sorted(unknown)}; "
                "allowed: name, labels, taints, allocatable"
            )
        labels = node.get("labels") or {}
        if not isinstance(labels, dict):
            raise NodeConfigError(f"node {name}: 'labels' must be a mapping")
        taints = node.get("taints") or []
        for taint in taints:
            if (
                not isinstance(taint, dict)
                or "key" not in taint
                or taint.get("effect")
                not in (
                    "NoSchedule",
                    "PreferNoSchedule",
                    "NoExecute",
                )
            ):
                raise NodeConfigError(
                    f"node {name}: each taint needs 'key' and 'effect' "
                    "(NoSchedule, PreferNoSchedule or NoExecute)"
                )
        allocatable = {**BASE_ALLOCATABLE, **(node.get("allocatable") or {})}
        for rname, qty in allocatable.items():
            try:
                parse_quantity(qty)
            except ValueError:
                raise NodeConfigError(
                    f"node {name}: allocatable {rname}: invalid quantity {qty!r}"
                ) from None
        result.append(
            {
                "name": name,
                "labels": {str(k): str(v) for k, v in labels.items()},
                "taints": copy.deepcopy(taints),
                "allocatable": {k: str(v) for k, v in allocatable.items()},
            }
        )
    return result


def load_layout(path: str | Path) -> list[dict]:
    """Read a layout from a YAML or JSON file; raises `NodeConfigError`."""
    text = Path(path).read_text()
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise NodeConfigError(f"{path}: cannot parse: {exc}") from None
    if isinstance(data, dict) and "nodes" in data:
        data = data["nodes"]
    return validate_layout(data)


def node_object(node: dict) -> dict:
    """The Node manifest for one (validated) layout entry."""
    labels = {
        "kubernetes.io/hostname": node["name"],
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **node["labels"],
    }
    spec = {"taints": copy.deepcopy(node["taints"])} if node["taints"] else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node["name"], "labels": labels},
        "spec": spec,
        "status": {
            "capacity": dict(node["allocatable"]),
            "allocatable": dict(node["allocatable"]),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status (llmspawner devcluster)",
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": node["name"]},
            ],
            # Every field the NodeSystemInfo schema requires, so that clients that build
            # models (kubernetes_asyncio's V1NodeSystemInfo) accept the Node.
            "nodeInfo": {
                "machineID": node["name"],
                "systemUUID": node["name"],
                "bootID": node["name"],
                "kernelVersion": platform.release(),
                "osImage": "llmspawner devcluster",
                "containerRuntimeVersion": "llmspawner-devcluster://processes",
                "kubeletVersion": "v1.32.0-llmspawner-devcluster",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }
