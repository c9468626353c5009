"""The spawn form's text (free slices, time-slicing, idle timeout) and the waiting sentence."""

import pytest

from llmspawner import capacity, profiles
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.spawner import LLMSpawner, describe_profile, waiting_message

from .test_capacity import NODES, FakeCoreV1, pod

SHIPPED = profiles.load_profiles(REPO_PROFILES)
CLUSTER = profiles.ClusterGPUConfig()


def test_describe_time_sliced_profile_with_free_slices():
    medium = profiles.find_profile(SHIPPED, "medium")
    text = describe_profile(medium, capacity.Capacity(total=2, free=1, resource="nvidia.com/gpu"))
    assert text == (
        "For fine-tuning 7B models with QLoRA. GPU: ½ GPU by time-slicing; a slice shares the "
        "GPU's memory with the other users of that GPU. Free now: 1 of 2 slices. Stops after 30 "
        "minutes without activity."
    )


def test_describe_full_profile_can_still_be_chosen():
    large = profiles.find_profile(SHIPPED, "large")
    text = describe_profile(large, capacity.Capacity(total=2, free=0, resource="nvidia.com/gpu"))
    assert (
        "GPU: 1 GPU. Full: all 2 GPUs are in use; choose it to wait for the next free one." in text
    )


def test_describe_cpu_profile():
    cpu = profiles.find_profile(SHIPPED, "cpu")
    assert describe_profile(cpu, None) == (
        "No GPU. For preparing datasets, browsing LlamaBoard and trying tiny models. "
        "Stops after 8 hours without activity."
    )


def test_waiting_message_names_profile_and_resource():
    medium = profiles.find_profile(SHIPPED, "medium")
    raw = (
        "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, 3 node(s) didn't match "
        "Pod's node affinity/selector. preemption: 0/4 nodes are available: 4 Preemption is "
        "not helpful for scheduling."
    )
    assert waiting_message(medium, CLUSTER, raw) == (
        "Waiting for a free ½ GPU slice (nvidia.com/gpu) for profile '½ GPU — 7B with QLoRA': "
        "all of them are in use. Your server starts by itself as soon as one is free."
    )
    assert waiting_message(
        medium, CLUSTER, "0/4 nodes are available: 4 node(s) had untolerated taint"
    ).startswith(
        "Waiting for a node for profile '½ GPU — 7B with QLoRA': no node can run it right now."
    )


@pytest.fixture
def fake_cluster(monkeypatch):
    """Replace the Kubernetes listings behind the form with the default node layout."""
    core = FakeCoreV1(NODES, [])
    monkeypatch.setattr(LLMSpawner, "_cluster_lister", core.lister(ttl=60))
    return core.pods, core.calls


async def test_form_shows_free_slices_and_full(make_spawner, fake_cluster):
    pods, calls = fake_cluster
    pods += [pod("gpu-ts2", 1), pod("gpu-ts2", 1)]
    spawner = make_spawner("alice")
    form = await spawner._render_options_form_dynamically(spawner)
    for slug in ("cpu", "small", "medium", "large"):
        assert f'value="{slug}"' in form
    assert "Free now: 4 of 4 slices." in form
    assert "Full: all 2 slices are in use; choose it to wait for the next free one." in form
    assert "Free now: 2 of 2 GPUs." in form
    # A second page view within the TTL lists nothing again.
    await spawner._render_options_form_dynamically(spawner)
    assert [c[0] for c in calls] == ["list_node", "list_namespaced_pod"]


async def test_form_without_cluster_access_still_renders(make_spawner, monkeypatch):
    refusing = FakeCoreV1([], [], refuse=PermissionError("nodes is forbidden"))
    monkeypatch.setattr(LLMSpawner, "_cluster_lister", refusing.lister())
    spawner = make_spawner("alice")
    form = await spawner._render_options_form_dynamically(spawner)
    assert 'value="medium"' in form
    assert "Free now" not in form


async def test_the_spawner_makes_one_lister_for_its_namespace(make_spawner, monkeypatch):
    monkeypatch.setattr(LLMSpawner, "_cluster_lister", None)
    spawner = make_spawner("alice")
    lister = spawner.cluster_lister()
    assert isinstance(lister, capacity.ClusterLister)
    assert (lister.namespace, lister.ttl) == (spawner.namespace, spawner.capacity_ttl)
    assert make_spawner("bob").cluster_lister() is lister
