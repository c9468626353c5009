"""Pod disruptions in the devcluster: the pods/eviction subresource with the DisruptionTarget
condition before the container stops, graceful deletion that leaves a Failed pod with exit
code 143/137, the preemption and drain helpers, and memory limits (OOMKilled, 137) by cgroup
and by RSS polling."""

import json
import re

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from devcluster import disruption, memory
from devcluster.resources import PODS
from devcluster.testing import wait_for

# exits on SIGTERM as a Python process does by default (killed by the signal: 143)
SLEEPER = ["python", "-c", "import time\nprint('up', flush=True)\ntime.sleep(60)"]
# ignores SIGTERM: only the SIGKILL after the grace period ends it (137)
STUBBORN = [
    "python",
    "-c",
    (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\ntime.sleep(60)"
    ),
]


def pod_manifest(name, command, grace=1, resources=None):
    container = {"name": "main", "image": "python", "command": command}
    if resources:
        container["resources"] = resources
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "containers": [container],
        },
    }


class PodHistory:
    """Every stored version of one pod, in order (from the store's change events)."""

    def __init__(self, store, namespace, name):
        self.versions: list[tuple[str, dict]] = []
        self.namespace, self.name = namespace, name
        store.add_listener(self.offer)

    def offer(self, event):
        meta = event.obj["metadata"]
        if event.resource == PODS and (meta.get("namespace"), meta["name"]) == (
            self.namespace,
            self.name,
        ):
            self.versions.append((event.type, event.obj))

    def deleted(self):
        return any(t == "DELETED" for t, _ in self.versions)

    def last_alive(self):
        return [o for t, o in self.versions if t != "DELETED"][-1]


def disruption_target(pod):
    conds = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "DisruptionTarget"), None)


def terminated(pod):
    return pod["status"]["containerStatuses"][0]["state"].get("terminated")


async def running(core, namespace, name):
    async def check():
        pod = await core.read_namespaced_pod(name, namespace)
        return pod.status.phase == "Running"

    await wait_for(check, timeout=20, what=f"pod {name} running")


@pytest.fixture
def core(api):
    return client.CoreV1Api(api)


@pytest.fixture
async def namespace(core, request):
    # a valid RFC 1123 label from the test's name (parametrized names carry "[...]")
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    await core.create_namespace({"metadata": {"name": name}})
    yield name
    await core.delete_namespace(name)


async def test_eviction_adds_the_condition_then_stops_the_pod(cluster, core, namespace):
    history = PodHistory(cluster.store, namespace, "evicted")
    await core.create_namespaced_pod(namespace, pod_manifest("evicted", SLEEPER))
    await running(core, namespace, "evicted")
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evicted"}}
    raw = await core.create_namespaced_pod_eviction(
        "evicted", namespace, body, _preload_content=False
    )
    assert raw.status == 201
    assert await raw.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    }
    await wait_for(history.deleted, timeout=20, what="the evicted pod removed")
    # the condition came first, while the container still ran
    first = next(o for _, o in history.versions if disruption_target(o))
    assert first["status"]["phase"] == "Running"
    assert "running" in first["status"]["containerStatuses"][0]["state"]
    assert {k: v for k, v in disruption_target(first).items() if k != "lastTransitionTime"} == {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting",
        "lastProbeTime": None,
    }
    # then it was deleted gracefully, and ended Failed, killed by SIGTERM
    last = history.last_alive()
    assert last["metadata"]["deletionTimestamp"]
    assert last["status"]["phase"] == "Failed"
    assert terminated(last)["exitCode"] == 143 and terminated(last)["reason"] == "Error"
    assert disruption_target(last)["reason"] == "EvictionByEvictionAPI"


async def test_eviction_of_a_missing_pod_or_another_name_is_refused(core, namespace):
    with pytest.raises(ApiException) as err:
        await core.create_namespaced_pod_eviction(
            "nobody", namespace, {"apiVersion": "policy/v1", "kind": "Eviction"}
        )
    assert err.value.status == 404
    assert json.loads(err.value.body)["message"] == 'pods "nobody" not found'
    await core.create_namespaced_pod(namespace, pod_manifest("named", SLEEPER))
    with pytest.raises(ApiException) as err:
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "other"}}
        await core.create_namespaced_pod_eviction("named", namespace, body)
    assert err.value.status == 400
    assert json.loads(err.value.body)["message"] == (
        "name in URL does not match name in Eviction object"
    )


async def test_delete_of_a_running_pod_ends_failed_143_without_condition(cluster, core, namespace):
    history = PodHistory(cluster.store, namespace, "deleted")
    await core.create_namespaced_pod(namespace, pod_manifest("deleted", SLEEPER))
    await running(core, namespace, "deleted")
    await core.delete_namespaced_pod("deleted", namespace)
    await wait_for(history.deleted, timeout=20, what="the deleted pod removed")
    last = history.last_alive()
    assert last["status"]["phase"] == "Failed" and terminated(last)["exitCode"] == 143
    assert disruption_target(last) is None  # a plain DELETE adds none, as upstream


async def test_grace_period_ends_with_sigkill_137(cluster, core, namespace):
    history = PodHistory(cluster.store, namespace, "stubborn")
    await core.create_namespaced_pod(namespace, pod_manifest("stubborn", STUBBORN, grace=1))
    await running(core, namespace, "stubborn")

    async def printed_up():  # the SIGTERM handler is set only once it printed
        text = await core.read_namespaced_pod_log("stubborn", namespace)
        return "up" in text

    await wait_for(printed_up, timeout=20)
    disruption.drain(cluster.store, namespace, "stubborn")
    await wait_for(history.deleted, timeout=20, what="the drained pod removed")
    last = history.last_alive()
    assert terminated(last)["exitCode"] == 137 and last["status"]["phase"] == "Failed"
    assert disruption_target(last)["reason"] == "DeletionByTaintManager"
    assert disruption_target(last)["message"] == "Taint manager: deleting due to NoExecute taint"


async def test_preempt_helper(cluster, core, namespace):
    history = PodHistory(cluster.store, namespace, "victim")
    await core.create_namespaced_pod(namespace, pod_manifest("victim", SLEEPER))
    await running(core, namespace, "victim")
    disruption.preempt(cluster.store, namespace, "victim")
    await wait_for(history.deleted, timeout=20)
    cond = disruption_target(history.last_alive())
    assert (cond["reason"], cond["message"]) == (
        "PreemptionByScheduler",
        "default-scheduler: preempting to accommodate a higher priority pod",
    )


HOG = [
    "python",
    "-c",
    (
        "import time\nblocks = []\nfor i in range(60):\n"
        "    blocks.append(bytearray(8 * 2**20))\n    time.sleep(0.02)\n"
        "print('survived', flush=True)"
    ),
]


@pytest.fixture(params=["cgroup", "polling"])
def memory_mode(cluster, request):
    kubelet = cluster.kubelet
    if request.param == "cgroup" and kubelet.cgroups() is None:
        pytest.skip("no writable memory cgroup here (not root, or none mounted)")
    saved = (kubelet._cgroups, kubelet._cgroups_probed)
    if request.param == "polling":
        kubelet._cgroups, kubelet._cgroups_probed = None, True
    yield request.param
    kubelet._cgroups, kubelet._cgroups_probed = saved


async def test_memory_limit_exceeded_is_oomkilled(core, namespace, memory_mode):
    limits = {"limits": {"memory": "100Mi"}}
    await core.create_namespaced_pod(namespace, pod_manifest("hog", HOG, resources=limits))
    small = pod_manifest("small", ["python", "-c", "x = bytearray(2**20)"], resources=limits)
    await core.create_namespaced_pod(namespace, small)

    async def ended(name):
        pod = await core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = await wait_for(lambda: ended("hog"), timeout=30, what="the hog ends")
    state = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, state.reason, state.exit_code) == ("Failed", "OOMKilled", 137)
    assert "survived" not in await core.read_namespaced_pod_log("hog", namespace)
    pod = await wait_for(lambda: ended("small"), timeout=30, what="the small one ends")
    state = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, state.reason, state.exit_code) == ("Succeeded", "Completed", 0)


def test_memory_quantities():
    assert memory.parse_bytes("100Mi") == 100 * 2**20
    assert memory.parse_bytes("1G") == 10**9
    assert memory.parse_bytes("1.5Ki") == 1536
    assert memory.parse_bytes(129e6) == 129 * 10**6
    assert memory.parse_bytes("1e3") == 1000
    assert memory.parse_bytes("1500m") == 2  # rounded up
    assert memory.memory_limit({"resources": {"requests": {"memory": "1Gi"}}}) is None
    with pytest.raises(ValueError, match="memory quantity 'lots'"):
        memory.parse_bytes("lots")


def test_cgroups_of_a_dead_kubelet_are_removed(cluster):
    cgroups = cluster.kubelet.cgroups()
    if cgroups is None:
        pytest.skip("no writable memory cgroup here (not root, or none mounted)")
    dead = 4_000_000  # above pid_max's ceiling: no such process
    stale = cgroups.root / f"devcluster-{dead}-abcdef"
    (stale / "some-container").mkdir(parents=True)
    memory.probe().close()
    assert not stale.exists()
    assert cgroups.base.exists()  # the live kubelet's own folder is kept
