"""MIG ``single`` nodes never pass as whole (or time-sliced) GPUs (issue 17).

With the ``single`` MIG strategy, GPU Feature Discovery advertises a node's MIG slices as
``nvidia.com/gpu`` and labels it ``nvidia.com/gpu.replicas=1``, as a node of whole GPUs; what
sets it apart is the MIG device's attribute labels (``nvidia.com/gpu.slices.gi`` ...). The
node labels below are GFD's for each case (k8s-device-plugin ``internal/lm``, its
``tests/expected-output-mig-*.txt``): whole-GPU profiles require the label to be absent, in
the pod, in the Job and in the capacity count, and the emulated scheduler honours it.
"""

from __future__ import annotations

import copy
import itertools

import pytest
from traitlets.config import Config

from devcluster import scheduler
from devcluster.nodes import node_object
from llmspawner import capacity, profiles
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.queue.k8s_objects import build_job
from llmspawner.settings import LLMPlatform
from llmspawner.workload import build_workload, placement, required_node_terms

from .conftest import pod_for

NOT_MIG = {"key": "nvidia.com/gpu.slices.gi", "operator": "DoesNotExist"}
TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
BASE = {"cpu": "64", "memory": "512Gi", "pods": "110"}


def gpu_node(name: str, labels: dict, allocatable: dict) -> dict:
    return node_object(
        {
            "name": name,
            "labels": {"nvidia.com/gpu.present": "true", **labels},
            "taints": [dict(TAINT)],
            "allocatable": {**BASE, **allocatable},
        }
    )


#: Two whole A100s, MIG off, in a cluster whose strategy is single (the GPU operator's default):
#: GFD labels mig.strategy=single on every GPU node, MIG enabled or not.
WHOLE = gpu_node(
    "a100-whole",
    {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
        "nvidia.com/gpu.count": "2",
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none",
        "nvidia.com/gpu.memory": "40960",
        "nvidia.com/mig.capable": "true",
        "nvidia.com/mig.strategy": "single",
        "nvidia.com/mig.config": "all-disabled",
    },
    {"nvidia.com/gpu": "2"},
)
#: One A100 split into 7 × 1g.5gb, single strategy: nvidia.com/gpu counts the 7 slices.
MIG_SINGLE = gpu_node(
    "a100-mig-single",
    {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb",
        "nvidia.com/gpu.count": "7",
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none",
        "nvidia.com/gpu.memory": "4864",
        "nvidia.com/gpu.multiprocessors": "14",
        "nvidia.com/gpu.slices.gi": "1",
        "nvidia.com/gpu.slices.ci": "1",
        "nvidia.com/gpu.engines.copy": "1",
        "nvidia.com/mig.capable": "true",
        "nvidia.com/mig.strategy": "single",
        "nvidia.com/mig.config": "all-1g.5gb",
    },
    {"nvidia.com/gpu": "7"},
)
#: The same split with the mixed strategy: the slices are their own resource, nvidia.com/gpu 0.
MIG_MIXED = gpu_node(
    "a100-mig-mixed",
    {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
        "nvidia.com/gpu.count": "1",
        "nvidia.com/gpu.replicas": "0",
        "nvidia.com/mig-1g.5gb.count": "7",
        "nvidia.com/mig-1g.5gb.slices.gi": "1",
        "nvidia.com/mig.capable": "true",
        "nvidia.com/mig.strategy": "mixed",
    },
    {"nvidia.com/gpu": "0", "nvidia.com/mig-1g.5gb": "7"},
)
#: Time-sliced MIG slices (single strategy, 4 replicas of each 1g.5gb slice).
MIG_TIME_SLICED = gpu_node(
    "a100-mig-ts4",
    {
        **MIG_SINGLE["metadata"]["labels"],
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb-SHARED",
        "nvidia.com/gpu.replicas": "4",
        "nvidia.com/gpu.sharing-strategy": "time-slicing",
    },
    {"nvidia.com/gpu": "28"},
)
NODES = [WHOLE, MIG_SINGLE, MIG_MIXED, MIG_TIME_SLICED]


@pytest.fixture
def shipped():
    return {p.slug: p for p in profiles.load_profiles(REPO_PROFILES)}


def profile(gpu: dict, slug: str = "p") -> profiles.Profile:
    return profiles.parse_profile(
        {"slug": slug, "display_name": slug, "gpu": gpu},
        file=f"{slug}.yaml",
        cluster=profiles.ClusterGPUConfig(),
    )


@pytest.mark.parametrize(
    ("gpu", "cluster", "affinity"),
    [
        ({"count": 1}, profiles.ClusterGPUConfig(), (NOT_MIG,)),
        (
            {"count": 2},
            profiles.ClusterGPUConfig(shared_resource="nvidia.com/gpu.shared"),
            (NOT_MIG,),
        ),
        ({"fraction": "1/4"}, profiles.ClusterGPUConfig(), (NOT_MIG,)),
        ({"mig": "1g.5gb"}, profiles.ClusterGPUConfig(mig_strategy="single"), ()),
        ({"mig": "1g.5gb"}, profiles.ClusterGPUConfig(mig_strategy="mixed"), ()),
        (None, profiles.ClusterGPUConfig(), ()),
    ],
)
def test_gpu_shares_of_whole_gpus_exclude_mig_slices(gpu, cluster, affinity):
    p = profile(gpu)
    assert profiles.gpu_resources(p.gpu, cluster).node_affinity == affinity
    assert placement(p, cluster).node_affinity == affinity


def test_the_label_is_the_one_gfd_sets_for_single_mig_devices_only():
    assert profiles.NOT_MIG_SLICES == NOT_MIG
    labels = {n["metadata"]["name"]: n["metadata"]["labels"] for n in NODES}
    with_label = {name for name, lab in labels.items() if profiles.MIG_SLICE_LABEL in lab}
    assert with_label == {"a100-mig-single", "a100-mig-ts4"}
    # mig.strategy would be wrong: a node of whole GPUs carries "single" as well.
    assert labels["a100-whole"]["nvidia.com/mig.strategy"] == "single"


def test_placement_returns_copies(shipped):
    cluster = profiles.ClusterGPUConfig()
    first = placement(shipped["large"], cluster)
    first.node_affinity[0]["operator"] = "Exists"
    assert placement(shipped["large"], cluster).node_affinity == (NOT_MIG,)
    assert profiles.NOT_MIG_SLICES == NOT_MIG


@pytest.mark.parametrize(
    ("terms", "requirements", "expected"),
    [
        ([], [], []),
        (None, [NOT_MIG], [{"matchExpressions": [NOT_MIG]}]),
        (
            [{"matchExpressions": [{"key": "purpose", "operator": "In", "values": ["user"]}]}],
            [NOT_MIG],
            [
                {
                    "matchExpressions": [
                        {"key": "purpose", "operator": "In", "values": ["user"]},
                        NOT_MIG,
                    ]
                }
            ],
        ),
        (
            [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}, {}],
            [NOT_MIG],
            [
                {
                    "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}],
                    "matchExpressions": [NOT_MIG],
                },
                {"matchExpressions": [NOT_MIG]},
            ],
        ),
        ([{"matchExpressions": [NOT_MIG]}], [], [{"matchExpressions": [NOT_MIG]}]),
    ],
)
def test_required_node_terms(terms, requirements, expected):
    before = copy.deepcopy((terms, requirements))
    assert required_node_terms(terms, requirements) == expected
    assert (terms, requirements) == before


REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


async def test_server_pod_and_job_of_a_whole_gpu_keep_off_mig_slices(make_spawner, shipped):
    spawner = make_spawner("alice")
    pod = await pod_for(spawner, {"profile": "large"})
    terms = pod["spec"]["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [NOT_MIG]}]
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.replicas"] == "1"

    settings = LLMPlatform(profiles_dir=str(REPO_PROFILES), image="img:1")
    workload = build_workload(username="alice", profile=shipped["large"], settings=settings)
    job = build_job(
        name="llm-job-alice-1",
        namespace="default",
        job_id=1,
        workload=workload,
        config_map="llm-job-alice-1",
        priority="normal",
    )
    assert job["spec"]["template"]["spec"]["affinity"] == pod["spec"]["affinity"]

    # The scheduler (the emulated one, kube-scheduler's rules) puts either pod on whole GPUs only.
    for manifest in (pod, {"spec": job["spec"]["template"]["spec"]}):
        placed = scheduler.decide(manifest, [MIG_SINGLE, WHOLE, MIG_MIXED], bound=[])
        assert placed.node == "a100-whole"
        refused = scheduler.decide(manifest, [MIG_SINGLE, MIG_MIXED, MIG_TIME_SLICED], bound=[])
        assert refused.node is None


async def test_a_cpu_pod_gets_no_affinity_and_the_charts_terms_are_kept(make_spawner):
    pod = await pod_for(make_spawner("alice"), {"profile": "cpu"})
    assert "affinity" not in pod["spec"]
    # z2jh's scheduling.userPods.nodeAffinity.matchNodePurpose: require
    purpose = {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}
    c = Config()
    c.KubeSpawner.node_affinity_required = [{"matchExpressions": [purpose]}]
    spawner = make_spawner("alice", c)
    pod = await pod_for(spawner, {"profile": "large"})
    terms = pod["spec"]["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [purpose, NOT_MIG]}]
    # The next spawn on the same spawner, on a CPU profile: the chart's term alone again.
    pod = await pod_for(spawner, {"profile": "cpu"})
    terms = pod["spec"]["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [purpose]}]


def test_capacity_counts_no_mig_slice_as_a_gpu(shipped):
    cluster = profiles.ClusterGPUConfig()
    counts = {
        slug: (c.total, c.free)
        for slug, c in capacity.capacities(shipped.values(), cluster, NODES, []).items()
    }
    # 2 whole GPUs, not 2 + 7 slices; no ¼ GPU on time-sliced 1g.5gb slices.
    assert counts == {"large": (2, 2), "small": (0, 0), "medium": (0, 0)}


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("single", (7, 7)), ("mixed", (7, 7))],
)
def test_a_mig_profile_counts_its_slices(strategy, expected):
    cluster = profiles.ClusterGPUConfig(mig_strategy=strategy)
    mig = profiles.parse_profile(
        {"slug": "mig", "display_name": "MIG", "gpu": {"mig": "1g.5gb"}},
        file="mig.yaml",
        cluster=cluster,
    )
    got = capacity.profile_capacity(mig, cluster, [WHOLE, MIG_SINGLE, MIG_MIXED], [])
    assert (got.total, got.free) == expected


REQUIREMENTS = [
    {"key": "k", "operator": "In", "values": ["a", "b"]},
    {"key": "k", "operator": "NotIn", "values": ["a"]},
    {"key": "k", "operator": "Exists"},
    {"key": "k", "operator": "DoesNotExist"},
    {"key": "k", "operator": "Gt", "values": ["3"]},
    {"key": "k", "operator": "Lt", "values": ["3"]},
]
LABELS = [{}, {"k": "a"}, {"k": "b"}, {"k": "c"}, {"k": "2"}, {"k": "3"}, {"k": "10"}]


@pytest.mark.parametrize("labels", LABELS)
def test_meets_agrees_with_the_emulated_scheduler(labels):
    """The capacity count's matching and the scheduler's, on every pair of requirements."""
    for pair in itertools.product(REQUIREMENTS, repeat=2):
        reference = all(scheduler._expr_matches(r, labels) for r in pair)
        assert capacity.meets(labels, pair) == reference, (labels, pair)
    assert capacity.meets(labels, [])


def test_meets_refuses_an_unknown_operator():
    with pytest.raises(ValueError, match="unknown node selector operator 'Near'"):
        capacity.meets({}, [{"key": "k", "operator": "Near"}])
