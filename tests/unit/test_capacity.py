"""Free GPU slices per profile from Nodes and Pods (pure), and the one Node/Pod lister."""

import asyncio
import json

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


async def test_invalidate_lists_again_and_a_listing_raced_by_it_is_not_reused():
    calls = []
    gate, listing_pods = asyncio.Event(), asyncio.Event()

    async def list_nodes():
        calls.append("nodes")
        return NODES

    async def list_pods():
        calls.append("pods")
        listing_pods.set()
        await gate.wait()
        return []

    cache = capacity.CapacityCache(list_nodes, list_pods, ttl=60, clock=lambda: 100.0)
    gate.set()
    await cache.snapshot()
    cache.invalidate()
    await cache.snapshot()
    assert calls == ["nodes", "pods"] * 2
    gate.clear()
    listing_pods.clear()
    cache.invalidate()
    listing = asyncio.ensure_future(cache.snapshot())
    await asyncio.wait_for(listing_pods.wait(), 10)
    cache.invalidate()  # a slice freed while the listing ran: it may predate that
    gate.set()
    await listing
    await cache.snapshot()
    assert calls == ["nodes", "pods"] * 4
    await cache.snapshot()  # now fresh
    assert len(calls) == 8


def holder(uid, node_name="gpu-ts2", gpus=1, phase="Running"):
    p = pod(node_name, gpus, phase=phase)
    p["metadata"] = {"uid": uid, "name": f"pod-{uid}", "namespace": "llm"}
    return p


@pytest.mark.parametrize(
    "p, holds",
    [
        (holder("a"), True),
        (holder("a", phase="Pending"), True),  # bound, not started: counted as the scheduler does
        (holder("a", node_name=None), False),  # not bound yet
        (holder("a", phase="Succeeded"), False),
        (holder("a", phase="Failed"), False),
        (holder("a", gpus=0), False),
        ({"metadata": {"uid": "x"}, "spec": {"nodeName": "cpu-1", "containers": [{}]}}, False),
    ],
)
def test_holds_slice(p, holds):
    assert capacity.holds_slice(p) is holds


def test_slice_holders_tell_when_a_slice_is_freed_or_taken():
    h = capacity.SliceHolders()
    assert h.reset([holder("a"), holder("b"), holder("c", node_name=None)]) is True
    assert len(h) == 2
    assert h.reset([holder("a"), holder("b")]) is False  # the same set
    assert h.update("MODIFIED", holder("a")) is False  # a status update of a holder
    assert h.update("ADDED", holder("c", node_name=None)) is False  # pending, unbound
    assert h.update("MODIFIED", holder("c")) is True  # bound: takes a slice
    assert h.update("MODIFIED", holder("a", phase="Succeeded")) is True  # a Job's pod ended
    assert h.update("DELETED", holder("a", phase="Succeeded")) is False  # already counted
    assert h.update("DELETED", holder("b")) is True  # a server stopped
    assert h.update("DELETED", holder("z")) is False  # never held one
    assert len(h) == 1
    assert h.reset([]) is True  # a relist after missed events: c is gone too


class FakeCoreV1:
    """A stand-in ``CoreV1Api`` answering ``list_node``/``list_namespaced_pod`` as the real one
    does with ``_preload_content=False`` (a response whose ``read()`` gives the JSON body)."""

    def __init__(self, nodes, pods, refuse: Exception | None = None):
        self.nodes, self.pods, self.refuse = nodes, pods, refuse
        self.calls = []

    class _Response:
        def __init__(self, items):
            self._body = json.dumps({"items": items}).encode()

        async def read(self):
            return self._body

    async def list_node(self, **kwargs):
        self.calls.append(("list_node", kwargs))
        if self.refuse:
            raise self.refuse
        return self._Response(self.nodes)

    async def list_namespaced_pod(self, namespace, **kwargs):
        self.calls.append(("list_namespaced_pod", namespace, kwargs))
        if self.refuse:
            raise self.refuse
        return self._Response(list(self.pods))

    def lister(self, namespace="llm", ttl=60.0, **kwargs):
        async def core_v1():
            return self

        return capacity.ClusterLister(core_v1, namespace, ttl=ttl, request_timeout=3, **kwargs)


async def test_cluster_lister_lists_nodes_and_namespace_pods_once_per_ttl():
    now = [100.0]
    core = FakeCoreV1(NODES, [pod("gpu-ts2", 1)])
    lister = core.lister(ttl=5, clock=lambda: now[0])
    first = await lister.snapshot()
    assert first == (NODES, [pod("gpu-ts2", 1)])
    assert core.calls == [
        ("list_node", {"_request_timeout": 3, "_preload_content": False}),
        ("list_namespaced_pod", "llm", {"_request_timeout": 3, "_preload_content": False}),
    ]
    for _ in range(10):
        assert await lister.snapshot() is first
    assert len(core.calls) == 2
    now[0] += 5
    assert await lister.snapshot() is not first
    assert len(core.calls) == 4


async def test_cluster_lister_raises_what_the_api_raises():
    lister = FakeCoreV1([], [], refuse=PermissionError("nodes is forbidden")).lister()
    with pytest.raises(PermissionError, match="nodes is forbidden"):
        await lister.snapshot()


def test_capacity_uses_the_workloads_placement(shipped):
    """The count reads the selector and tolerations of the same rule the pods are built by."""
    from llmspawner.workload import placement

    medium = profiles.find_profile(shipped, "medium")
    place = placement(medium, profiles.ClusterGPUConfig())
    assert place.gpu == {"nvidia.com/gpu": 1}
    assert place.node_selector == {"nvidia.com/gpu.replicas": "2"}
    assert place.tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
