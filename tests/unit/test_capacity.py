"""Free GPU slices per profile from Nodes and Pods (pure), and the listing cache."""

import pytest

from llmspawner import capacity, profiles
from llmspawner.hubconfig import REPO_PROFILES

TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(name, replicas=None, gpus=0, taint=True, **extra):
    labels = {"kubernetes.io/hostname": name}
    if replicas is not None:
        labels["nvidia.com/gpu.replicas"] = str(replicas)
    allocatable = {"cpu": "16", "memory": "64Gi", "pods": "110"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    spec = {"taints": [TAINT]} if taint and gpus else {}
    spec.update(extra)
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"allocatable": allocatable},
    }


# The emulated cluster's default layout: 1 GPU as 4 replicas, 1 GPU as 2, 2 whole GPUs, CPU.
NODES = [node("gpu-ts4", 4, 4), node("gpu-ts2", 2, 2), node("gpu-whole", 1, 2), node("cpu-1")]


def pod(node_name, gpus, phase="Running", requests=True):
    res = {"limits": {"nvidia.com/gpu": gpus, "cpu": "1"}}
    if requests:
        res["requests"] = {"nvidia.com/gpu": str(gpus)}
    return {
        "spec": {"nodeName": node_name, "containers": [{"resources": res}]},
        "status": {"phase": phase},
    }


@pytest.fixture
def shipped():
    return profiles.load_profiles(REPO_PROFILES)


def counts(shipped, pods, nodes=NODES):
    result = capacity.capacities(shipped, profiles.ClusterGPUConfig(), nodes, pods)
    return {slug: (c.total, c.free) for slug, c in result.items()}


def test_empty_cluster(shipped):
    assert counts(shipped, []) == {"small": (4, 4), "medium": (2, 2), "large": (2, 2)}


def test_running_pods_use_slices(shipped):
    pods = [
        pod("gpu-ts2", 1),
        pod("gpu-ts2", 1, requests=False),  # request defaults to the limit
        pod("gpu-ts4", 1),
        pod("gpu-whole", 1),
        pod("gpu-whole", 1, phase="Succeeded"),  # finished: frees its slice
        {
            "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": 1}}}]},
            "status": {"phase": "Pending"},
        },
    ]
    result = counts(shipped, pods)
    assert result == {"small": (4, 3), "medium": (2, 0), "large": (2, 1)}
    medium = capacity.capacities(shipped, profiles.ClusterGPUConfig(), NODES, pods)["medium"]
    assert (medium.full, medium.resource) == (True, "nvidia.com/gpu")


def test_untolerated_taint_and_cordoned_node_do_not_count(shipped):
    nodes = [
        node("gpu-ts2", 2, 2),
        {
            **node("gpu-ts2-b", 2, 2),
            "spec": {"taints": [TAINT, {"key": "dedicated", "value": "x", "effect": "NoSchedule"}]},
        },
        node("gpu-ts2-c", 2, 2, unschedulable=True),
    ]
    assert counts(shipped, [], nodes)["medium"] == (2, 2)


def test_cpu_profile_has_no_capacity(shipped):
    cpu = profiles.find_profile(shipped, "cpu")
    assert capacity.profile_capacity(cpu, profiles.ClusterGPUConfig(), NODES, []) is None


async def test_cache_lists_once_per_ttl():
    calls = []
    now = [100.0]

    async def list_nodes():
        calls.append("nodes")
        return NODES

    async def list_pods():
        calls.append("pods")
        return []

    cache = capacity.CapacityCache(list_nodes, list_pods, ttl=5, clock=lambda: now[0])
    for _ in range(10):
        assert await cache.snapshot() == (NODES, [])
    assert calls == ["nodes", "pods"]
    now[0] += 5
    await cache.snapshot()
    assert calls == ["nodes", "pods", "nodes", "pods"]
