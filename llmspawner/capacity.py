"""GPU slices per profile: how many the cluster has and how many are free now.

A pure function of Nodes and Pods (:func:`profile_capacity`), used by the spawn form and, with
the same counts, by the batch queue's admission. Counting follows the scheduler's rules for
extended resources: a node offers ``status.allocatable[resource]`` units, and every pod bound
to it that has not terminated uses its containers' requests (an extended resource's request
defaults to its limit)
(https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/#extended-resources).

:class:`ClusterLister` is the I/O edge, the one Node/Pod lister of the product: the spawn
form's counts and the queue's admission both use it. It lists Nodes and Pods at most once per
``ttl`` seconds, whatever the number of page views (through :class:`CapacityCache`).

Which nodes a profile may use (selector, required node affinity, tolerations) and which GPU
resources it takes come from :func:`llmspawner.workload.placement`, the same rule the server
pod and the Job pod are built with: a whole or time-sliced GPU profile counts no node whose
``nvidia.com/gpu`` are MIG slices (:data:`llmspawner.profiles.NOT_MIG_SLICES`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .profiles import ClusterGPUConfig, Profile
from .workload import placement

if TYPE_CHECKING:  # pragma: no cover - types only
    from kubernetes_asyncio.client import CoreV1Api

_TERMINATED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Capacity:
    """Slices of one profile's GPU share.

    Attributes:
        total: how many pods of this profile the matching nodes can hold at once.
        free: how many more can start now.
        resource: the extended resource the profile requests, e.g. ``nvidia.com/gpu``.
    """

    total: int
    free: int
    resource: str

    @property
    def full(self) -> bool:
        """No slice is free now (a spawn waits, Pending, until one frees up)."""
        return self.free <= 0


def _quantity(value) -> int:
    """An extended resource quantity as an integer (they are whole numbers by definition)."""
    try:
        return int(str(value))
    except ValueError:
        return 0


def _tolerates(taints: Iterable[Mapping], tolerations: Iterable[Mapping]) -> bool:
    """Whether ``tolerations`` tolerate every NoSchedule/NoExecute taint (simplified rules)."""
    for taint in taints:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(
            t.get("key") in (None, "", taint.get("key"))
            and t.get("effect") in (None, "", taint.get("effect"))
            and (
                t.get("operator") == "Exists"
                or (t.get("value") or "") == (taint.get("value") or "")
            )
            for t in tolerations
        ):
            return False
    return True


def meets(labels: Mapping[str, str], requirements: Iterable[Mapping]) -> bool:
    """Whether a node's ``labels`` meet every node selector requirement (pure).

    The scheduler's rules for ``matchExpressions``: ``In``/``NotIn`` a list of ``values``
    (``NotIn`` also holds when the label is missing), ``Exists``/``DoesNotExist``, ``Gt``/``Lt``
    comparing integers (false when the label is missing or not an integer)
    (https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#operators).

    Raises:
        ValueError: for an unknown operator.
    """
    for r in requirements:
        key, op, values = r.get("key"), r.get("operator"), list(r.get("values") or [])
        value = labels.get(key)
        if op == "In":
            ok = value is not None and value in values
        elif op == "NotIn":
            ok = value is None or value not in values
        elif op == "Exists":
            ok = value is not None
        elif op == "DoesNotExist":
            ok = value is None
        elif op in ("Gt", "Lt"):
            try:
                have, limit = int(value), int(values[0])
            except (TypeError, ValueError, IndexError):
                ok = False
            else:
                ok = have > limit if op == "Gt" else have < limit
        else:
            raise ValueError(f"unknown node selector operator {op!r}")
        if not ok:
            return False
    return True


def pod_requests(pod: Mapping) -> dict[str, int]:
    """Sum of a pod's containers' integer requests of extended resources (``x/y`` names).

    A resource with a limit and no request counts its limit, as Kubernetes defaults it.
    """
    total: dict[str, int] = {}
    for container in pod.get("spec", {}).get("containers") or []:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in merged.items():
            if "/" in name:
                total[name] = total.get(name, 0) + _quantity(value)
    return total


def bound_and_running(pod: Mapping) -> bool:
    """Whether a pod is bound to a node (``spec.nodeName``) and has not terminated: the pods
    whose requests :func:`profile_capacity` counts."""
    return (
        bool((pod.get("spec") or {}).get("nodeName"))
        and (pod.get("status") or {}).get("phase") not in _TERMINATED
    )


def holds_slice(pod: Mapping) -> bool:
    """Whether a pod holds GPU slices now, as :func:`profile_capacity` counts it: bound to a
    node and not terminated (:func:`bound_and_running`), requesting an extended resource."""
    return bound_and_running(pod) and any(n > 0 for n in pod_requests(pod).values())


class SliceHolders:
    """Which pods hold GPU slices (:func:`holds_slice`), kept from a listing and watch events.

    Tells when that set changes: a holder deleted or terminated (a server stopped, a Job's pod
    ended: a slice freed), or a pod newly bound with a GPU request (one taken). Pods are known
    by ``metadata.uid`` (a pod recreated under the same name is another pod).
    """

    def __init__(self):
        self._holders: set[str] = set()

    def __len__(self) -> int:
        return len(self._holders)

    def reset(self, pods: Iterable[Mapping]) -> bool:
        """Start again from a full listing; return whether the set changed."""
        new = {_uid(p) for p in pods if holds_slice(p)}
        changed = new != self._holders
        self._holders = new
        return changed

    def update(self, event_type: str, pod: Mapping) -> bool:
        """Apply one watch event (``ADDED``, ``MODIFIED``, ``DELETED``); return whether the
        set changed."""
        uid = _uid(pod)
        if event_type != "DELETED" and holds_slice(pod):
            if uid in self._holders:
                return False
            self._holders.add(uid)
            return True
        if uid in self._holders:
            self._holders.discard(uid)
            return True
        return False


def _uid(pod: Mapping) -> str:
    meta = pod.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def profile_capacity(
    profile: Profile,
    cluster: ClusterGPUConfig,
    nodes: Iterable[Mapping],
    pods: Iterable[Mapping],
) -> Capacity | None:
    """Count the slices of ``profile`` on ``nodes``, given the ``pods`` already bound.

    Args:
        profile: a GPU profile (``None`` is returned for a profile with no GPU).
        cluster: the cluster's GPU configuration.
        nodes: Node objects as dicts (``metadata.labels``, ``spec.taints``,
            ``status.allocatable``); unschedulable nodes, and nodes that do not match the
            profile's node selector and required node affinity (:func:`meets`), are skipped.
        pods: Pod objects as dicts; only pods bound to a node (``spec.nodeName``) and not
            terminated count.

    Returns:
        A :class:`Capacity`, or ``None`` for a CPU-only profile.
    """
    place = placement(profile, cluster)
    if not place.gpu:
        return None
    selector, tolerations = place.node_selector, place.tolerations
    used_by_node: dict[str, dict[str, int]] = {}
    for pod in pods:
        node_name = pod.get("spec", {}).get("nodeName")
        if not node_name or pod.get("status", {}).get("phase") in _TERMINATED:
            continue
        used = used_by_node.setdefault(node_name, {})
        for name, n in pod_requests(pod).items():
            used[name] = used.get(name, 0) + n
    total = free = 0
    for node in nodes:
        if node.get("spec", {}).get("unschedulable"):
            continue
        labels = node.get("metadata", {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        if not meets(labels, place.node_affinity):
            continue
        if not _tolerates(node.get("spec", {}).get("taints") or [], tolerations):
            continue
        allocatable = node.get("status", {}).get("allocatable") or {}
        used = used_by_node.get(node["metadata"]["name"], {})
        fits_total = fits_free = None
        for name, per_pod in place.gpu.items():
            have = _quantity(allocatable.get(name, 0))
            n_total = have // per_pod
            n_free = max(0, have - used.get(name, 0)) // per_pod
            fits_total = n_total if fits_total is None else min(fits_total, n_total)
            fits_free = n_free if fits_free is None else min(fits_free, n_free)
        total += fits_total or 0
        free += fits_free or 0
    return Capacity(total=total, free=free, resource=", ".join(place.gpu))


def capacities(
    profiles: Iterable[Profile],
    cluster: ClusterGPUConfig,
    nodes: list[Mapping],
    pods: list[Mapping],
) -> dict[str, Capacity]:
    """:func:`profile_capacity` of every GPU profile, by slug (CPU profiles are left out)."""
    out = {}
    for p in profiles:
        c = profile_capacity(p, cluster, nodes, pods)
        if c is not None:
            out[p.slug] = c
    return out


class CapacityCache:
    """Nodes and Pods listed at most once per ``ttl`` seconds, shared by all page views: the
    TTL cache behind :class:`ClusterLister` (use that one to list a cluster).

    Args:
        list_nodes: ``async () -> list[dict]`` of Node objects.
        list_pods: ``async () -> list[dict]`` of Pod objects (all namespaces that hold GPU
            users: user servers and queue Jobs).
        ttl: seconds a listing is reused.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        list_nodes: Callable,
        list_pods: Callable,
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._list_nodes = list_nodes
        self._list_pods = list_pods
        self.ttl = ttl
        self._clock = clock
        self._at: float | None = None
        self._snapshot: tuple[list, list] = ([], [])
        self._lock = asyncio.Lock()
        self._generation = 0

    async def snapshot(self) -> tuple[list, list]:
        """Return ``(nodes, pods)``, listing them again only when older than ``ttl`` or
        invalidated since (:meth:`invalidate`).

        Raises:
            Exception: whatever the listing functions raise (the caller decides).
        """
        async with self._lock:
            now = self._clock()
            if self._at is None or now - self._at >= self.ttl:
                generation = self._generation
                nodes, pods = await asyncio.gather(self._list_nodes(), self._list_pods())
                self._snapshot = (nodes, pods)
                # Invalidated while listing: this listing may predate the change.
                self._at = now if generation == self._generation else None
            return self._snapshot

    def invalidate(self) -> None:
        """Make the next :meth:`snapshot` list again (e.g. a watch saw a slice freed)."""
        self._generation += 1
        self._at = None


class ClusterLister:
    """The one Node/Pod lister: all Nodes and the namespace's Pods, cached ``ttl`` seconds.

    Used by the spawn form's free-slice counts
    (:meth:`llmspawner.spawner.LLMSpawner.current_capacity`) and by the queue's admission.
    Objects are read as plain JSON dicts (``_preload_content=False``), not client models:
    faster for large lists, and no model validation of fields the counts do not read. Needs
    ``list`` on Nodes (cluster-wide) and on Pods (in ``namespace``).

    Args:
        core_v1: ``async () -> CoreV1Api``, called once per listing (e.g. kubespawner's
            ``shared_client("CoreV1Api")`` wrapped in a coroutine, or the queue's client).
        namespace: the namespace whose Pods are listed (users' servers and queue Jobs share it).
        ttl: seconds a listing is reused.
        request_timeout: seconds per Kubernetes API request.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        core_v1: Callable[[], Awaitable[CoreV1Api]],
        namespace: str,
        *,
        ttl: float,
        request_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._core_v1 = core_v1
        self.namespace = namespace
        self.request_timeout = request_timeout
        self._cache = CapacityCache(self.list_nodes, self.list_pods, ttl=ttl, clock=clock)

    @property
    def ttl(self) -> float:
        """Seconds a listing is reused."""
        return self._cache.ttl

    async def list_nodes(self) -> list[dict]:
        """All Nodes now, uncached (``GET /api/v1/nodes``)."""
        api = await self._core_v1()
        resp = await api.list_node(_request_timeout=self.request_timeout, _preload_content=False)
        return json.loads(await resp.read())["items"]

    async def list_pods(self) -> list[dict]:
        """The namespace's Pods now, uncached (``GET /api/v1/namespaces/<ns>/pods``)."""
        api = await self._core_v1()
        resp = await api.list_namespaced_pod(
            self.namespace, _request_timeout=self.request_timeout, _preload_content=False
        )
        return json.loads(await resp.read())["items"]

    async def snapshot(self) -> tuple[list[dict], list[dict]]:
        """``(all Nodes, Pods of the namespace)`` as JSON dicts, listed again only when older
        than ``ttl`` seconds; concurrent callers share one listing. The same tuple object is
        returned while it is fresh (callers may memoise on its identity).

        Raises:
            Exception: whatever the Kubernetes client raises (the caller decides).
        """
        return await self._cache.snapshot()

    def invalidate(self) -> None:
        """Make the next :meth:`snapshot` list again, however fresh the last listing is."""
        self._cache.invalidate()
