"""LLMSpawner against the emulated cluster, in this process (no hub): a pod that cannot be
scheduled ends with an error naming the scheduling reason; only the current pod's Events; the
spawn form's free slices through the one Node/Pod lister."""

from types import SimpleNamespace

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.config import kube_config, new_client_from_config
from traitlets.config import Config

from devcluster.testing import fast_cluster, wait_for
from llmspawner.hubconfig import REPO_PROFILES

HALF_GPU = {
    "containers": [
        {
            "name": "main",
            "image": "python",
            "command": ["sleep", "600"],
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
        }
    ],
    "nodeSelector": {"nvidia.com/gpu.replicas": "2"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    async with fast_cluster(tmp_path_factory.mktemp("spawner-devcluster")) as c:
        yield c


@pytest.fixture(scope="module")
async def core(cluster):
    api = await new_client_from_config(config_file=str(cluster.kubeconfig_path))
    async with api:
        core = client.CoreV1Api(api)
        # The shared PVC every user pod mounts (without it the kubelet keeps pods Pending).
        await core.create_namespaced_persistent_volume_claim(
            "default",
            {
                "metadata": {"name": "llm-storage"},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        yield core


def _forget_kubespawner_clients():
    """kubespawner shares its reflectors (per class) and API clients (per event loop, which is
    session-wide here) across spawners: an earlier test's, pointing at a cluster that is gone,
    must not be reused."""
    from kubespawner import KubeSpawner, clients

    KubeSpawner.reflectors.clear()
    clients._client_cache.clear()
    clients.load_config.cache_clear()  # the kubeconfig is read again, for this cluster


@pytest.fixture
async def spawner_for(cluster, monkeypatch):
    from kubespawner import KubeSpawner

    from llmspawner.spawner import LLMSpawner

    # kubespawner loads the kubeconfig once per process (lru_cache): point it here first.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig_path))
    # The hub-wide Node/Pod lister of an earlier test lists another cluster.
    monkeypatch.setattr(LLMSpawner, "_cluster_lister", None)
    monkeypatch.setattr(LLMSpawner, "_capacity_counts", (None, None, None, {}))
    _forget_kubespawner_clients()
    made = []

    def make(username, **traits):
        c = Config()
        c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
        c.LLMSpawner.cmd = ["sleep", "600"]
        for key, value in traits.items():
            setattr(c.LLMSpawner, key, value)
        user = SimpleNamespace(name=username, id=1, url=f"/user/{username}/", groups=[])
        spawner = LLMSpawner(config=c, user=user, _mock=True)
        made.append(spawner)
        return spawner

    yield make
    # kubespawner's reflectors are shared by the class: stop them with this test's cluster.
    for reflector in list(KubeSpawner.reflectors.values()):
        await reflector.stop()
    _forget_kubespawner_clients()


async def test_start_timeout_names_the_scheduling_reason(core, spawner_for):
    for name in ("held-1", "held-2"):
        await core.create_namespaced_pod("default", {"metadata": {"name": name}, "spec": HALF_GPU})
    spawner = spawner_for("ivan", start_timeout=4)
    spawner.user_options = {"profile": "medium"}
    with pytest.raises(TimeoutError) as e:
        await spawner.start()
    assert str(e.value) == (
        "Your server did not start within 4 seconds. Waiting for a free ½ GPU slice "
        "(nvidia.com/gpu) for profile '½ GPU — 7B with QLoRA': all of them are in use. Your "
        "server starts by itself as soon as one is free."
    )
    await spawner.stop(now=True)
    for name in ("held-1", "held-2"):
        await core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


async def test_events_of_an_earlier_pod_with_the_same_name_are_not_shown(core, spawner_for):
    spawner = spawner_for("judy")
    spawner.user_options = {"profile": "cpu"}
    # An earlier pod of the same name, whose Events stay in the API after it is gone.
    old = await core.create_namespaced_pod(
        "default",
        {"metadata": {"name": "jupyter-judy"}, "spec": {**HALF_GPU, "nodeSelector": {"x": "y"}}},
    )

    async def old_event():
        events = await core.list_namespaced_event(
            "default", field_selector=f"involvedObject.uid={old.metadata.uid}"
        )
        return events.items

    await wait_for(old_event, timeout=10)
    await core.delete_namespaced_pod("jupyter-judy", "default", grace_period_seconds=0)

    async def gone():
        pods = await core.list_namespaced_pod(
            "default", field_selector="metadata.name=jupyter-judy"
        )
        return not pods.items

    await wait_for(gone, timeout=10)
    await spawner.start()
    current_uid = spawner._current_pod_uid()
    assert current_uid and current_uid != old.metadata.uid
    assert spawner.events, "the current pod has Events (Scheduled, Started...)"
    assert {e["involvedObject"]["uid"] for e in spawner.events} == {current_uid}
    await spawner.stop(now=True)


async def test_free_slices_through_the_cluster_lister(core, spawner_for):
    """The real client's JSON listing (``_preload_content=False``) of the emulated Nodes and
    Pods gives the form's counts; a pod holding a ½ GPU slice takes one."""
    from llmspawner.capacity import ClusterLister

    await core.create_namespaced_pod("default", {"metadata": {"name": "held-3"}, "spec": HALF_GPU})

    async def scheduled():
        pod = await core.read_namespaced_pod("held-3", "default")
        return pod.spec.node_name

    await wait_for(scheduled, timeout=10)
    spawner = spawner_for("kim", capacity_ttl=0.0)
    assert isinstance(spawner.cluster_lister(), ClusterLister)
    nodes, pods = await spawner.cluster_lister().snapshot()
    assert nodes and all(isinstance(n, dict) for n in nodes)
    assert "held-3" in {p["metadata"]["name"] for p in pods}
    caps = await spawner.current_capacity()
    assert set(caps) == {"small", "medium", "large"}
    medium = caps["medium"]
    assert medium.resource == "nvidia.com/gpu"
    assert medium.free == medium.total - 1
    await core.delete_namespaced_pod("held-3", "default", grace_period_seconds=0)
