"""Profile files: the shipped ones, validation errors, and the GPU resource mapping (pure)."""

import textwrap
from fractions import Fraction

import pytest

from llmspawner import profiles
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.profiles import GPU, ClusterGPUConfig, ProfileError, gpu_resources

TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_shipped_profiles():
    ps = profiles.load_profiles(REPO_PROFILES)
    assert [(p.slug, p.gpu.kind, p.gpu.share, p.default) for p in ps] == [
        ("cpu", "none", Fraction(0), True),
        ("small", "fraction", Fraction(1, 4), False),
        ("medium", "fraction", Fraction(1, 2), False),
        ("large", "count", Fraction(1), False),
    ]
    assert [p.gpu.label for p in ps] == ["no GPU", "¼ GPU", "½ GPU", "1 GPU"]
    medium = profiles.find_profile(ps, "medium")
    assert medium.display_name == "½ GPU — 7B with QLoRA"
    assert (medium.cpu_guarantee, medium.cpu_limit) == (4.0, 8.0)
    assert (medium.mem_guarantee, medium.mem_limit) == (16 * 2**30, 48 * 2**30)
    assert (medium.idle_timeout, medium.max_runtime) == (1800, 86400)
    assert profiles.find_profile(ps, None).slug == "cpu"
    assert profiles.find_profile(ps, "").slug == "cpu"


def test_find_profile_unknown_lists_valid():
    ps = profiles.load_profiles(REPO_PROFILES)
    with pytest.raises(
        KeyError, match="unknown profile 'huge'; valid profiles: cpu, small, medium, large"
    ):
        profiles.find_profile(ps, "huge")


@pytest.mark.parametrize(
    ("gpu", "limits", "selector", "tolerations"),
    [
        (GPU(), {}, {}, ()),
        (
            GPU("fraction", replicas=4),
            {"nvidia.com/gpu": 1},
            {"nvidia.com/gpu.replicas": "4"},
            (TOLERATION,),
        ),
        (
            GPU("fraction", replicas=2),
            {"nvidia.com/gpu": 1},
            {"nvidia.com/gpu.replicas": "2"},
            (TOLERATION,),
        ),
        (
            GPU("count", count=1),
            {"nvidia.com/gpu": 1},
            {"nvidia.com/gpu.replicas": "1"},
            (TOLERATION,),
        ),
        (
            GPU("count", count=2),
            {"nvidia.com/gpu": 2},
            {"nvidia.com/gpu.replicas": "1"},
            (TOLERATION,),
        ),
        (GPU("mig", mig="1g.10gb"), {"nvidia.com/mig-1g.10gb": 1}, {}, (TOLERATION,)),
    ],
)
def test_gpu_resources_default_cluster(gpu, limits, selector, tolerations):
    r = gpu_resources(gpu, ClusterGPUConfig())
    assert (r.limits, r.node_selector, r.tolerations) == (limits, selector, tolerations)
    assert all(isinstance(v, int) for v in r.limits.values())


def test_gpu_resources_renamed_shared_resource():
    cluster = ClusterGPUConfig(shared_resource="nvidia.com/gpu.shared")
    r = gpu_resources(GPU("fraction", replicas=2), cluster)
    assert r.limits == {"nvidia.com/gpu.shared": 1}
    assert r.node_selector == {"nvidia.com/gpu.replicas": "2"}
    # Whole GPUs have their own resource name now: no replica selector needed.
    r = gpu_resources(GPU("count", count=1), cluster)
    assert (r.limits, r.node_selector) == ({"nvidia.com/gpu": 1}, {})


def test_gpu_resources_mig_single_strategy():
    r = gpu_resources(GPU("mig", mig="2g.20gb"), ClusterGPUConfig(mig_strategy="single"))
    assert r.limits == {"nvidia.com/gpu": 1}
    assert r.node_selector == {"nvidia.com/mig.config": "all-2g.20gb"}


def write(tmp_path, name, text):
    (tmp_path / name).write_text(textwrap.dedent(text))


GOOD = """\
slug: {slug}
display_name: Test
default: {default}
"""


def load(tmp_path, body, name="p.yaml", extra_default=True, **cluster):
    write(tmp_path, name, body)
    if extra_default:
        write(tmp_path, "zz-default.yaml", GOOD.format(slug="zz-default", default="true"))
    return profiles.load_profiles(tmp_path, ClusterGPUConfig(**cluster))


# One case per validation rule: (file body, expected fragments of the message).
INVALID = [
    (
        "slug: a\ndisplay_name: A\ncolour: red\n",
        ["p.yaml: colour: unknown field; allowed fields: slug,"],
    ),
    (
        "slug: a\ndisplay_name: A\ngpu: {fraction: 1/3}\n",
        ["p.yaml: gpu.fraction: '1/3' is not offered by the cluster; allowed: 1/2, 1/4"],
    ),
    (
        "slug: a\ndisplay_name: A\ngpu: {fraction: 0.5}\n",
        ["p.yaml: gpu.fraction: 0.5 is not offered", "allowed: 1/2, 1/4"],
    ),
    (
        "slug: a\ndisplay_name: A\ngpu: {count: 0.5}\n",
        [
            "p.yaml: gpu.count: must be a whole number of GPUs >= 1, not 0.5; for a share of one GPU write 'fraction: 1/2'"
        ],
    ),
    ("slug: a\ndisplay_name: A\ngpu: {count: 0}\n", ["p.yaml: gpu.count: must be >= 1, not 0"]),
    (
        "slug: a\ndisplay_name: A\ngpu: {mig: 1g-10gb}\n",
        ["p.yaml: gpu.mig: '1g-10gb' is not a MIG profile name; expected <n>g.<memory>gb"],
    ),
    (
        "slug: a\ndisplay_name: A\ngpu: {tpu: 1}\n",
        ["p.yaml: gpu.tpu: unknown GPU kind; allowed: count, fraction, mig"],
    ),
    (
        "slug: a\ndisplay_name: A\ngpu: 1\n",
        ["p.yaml: gpu: must be one of none, {count: N}, {fraction: 1/N}, or {mig: <MIG profile>}"],
    ),
    ("slug: Big_GPU\ndisplay_name: A\n", ["p.yaml: slug: 'Big_GPU' is not a DNS label"]),
    ("display_name: A\n", ["p.yaml: slug: is required"]),
    (
        "slug: a\ndisplay_name: A\ncpu: {guarantee: -1}\n",
        ["p.yaml: cpu.guarantee: must be a positive number of CPU cores, not -1"],
    ),
    (
        "slug: a\ndisplay_name: A\ncpu: {limit: 0}\n",
        ["p.yaml: cpu.limit: must be a positive number of CPU cores, not 0"],
    ),
    (
        "slug: a\ndisplay_name: A\nmemory: {limit: 0G}\n",
        ["p.yaml: memory.limit: must be a positive size, not '0G'"],
    ),
    (
        "slug: a\ndisplay_name: A\nmemory: {limit: 8GB}\n",
        ["p.yaml: memory.limit: must be bytes as an integer, or a number with suffix K, M, G, T"],
    ),
    (
        "slug: a\ndisplay_name: A\nmemory: {guarantee: 8G, limit: 4G}\n",
        ["p.yaml: memory.guarantee: must not be larger than the limit"],
    ),
    (
        "slug: a\ndisplay_name: A\nidle_timeout: -5\n",
        ["p.yaml: idle_timeout: must be a positive whole number of seconds, not -5"],
    ),
    (
        "slug: a\ndisplay_name: A\nmax_runtime: 0\n",
        ["p.yaml: max_runtime: must be a positive whole number of seconds, not 0"],
    ),
    (
        "slug: a\ndisplay_name: A\nallowed_groups: staff\n",
        ["p.yaml: allowed_groups: must be a list of JupyterHub group names"],
    ),
    ("- slug: a\n", ["p.yaml: must be a mapping of fields, not list"]),
    ("slug: a\n  display_name: [\n", ["p.yaml: is not valid YAML"]),
]


@pytest.mark.parametrize(("body", "fragments"), INVALID)
def test_invalid_profile(tmp_path, body, fragments):
    with pytest.raises(ProfileError) as e:
        load(tmp_path, body)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_fraction_allowed_when_cluster_offers_it(tmp_path):
    ps = load(tmp_path, "slug: a\ndisplay_name: A\ngpu: {fraction: 1/8}\n", replica_counts=(8,))
    assert profiles.find_profile(ps, "a").gpu == GPU("fraction", replicas=8)


def test_duplicate_slugs(tmp_path):
    write(tmp_path, "a.yaml", GOOD.format(slug="same", default="true"))
    write(tmp_path, "b.yaml", GOOD.format(slug="same", default="false"))
    with pytest.raises(
        ProfileError, match=r"^b.yaml: slug: duplicate slug 'same', also used in a.yaml$"
    ):
        profiles.load_profiles(tmp_path)


def test_no_default(tmp_path):
    write(tmp_path, "a.yaml", GOOD.format(slug="a", default="false"))
    with pytest.raises(
        ProfileError,
        match=r"default: exactly one profile must have 'default: true'; found 0 \(none\)",
    ):
        profiles.load_profiles(tmp_path)


def test_two_defaults(tmp_path):
    write(tmp_path, "a.yaml", GOOD.format(slug="a", default="true"))
    write(tmp_path, "b.yaml", GOOD.format(slug="b", default="true"))
    with pytest.raises(ProfileError, match=r"found 2 \(a.yaml, b.yaml\)"):
        profiles.load_profiles(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(ProfileError, match="no profile files"):
        profiles.load_profiles(tmp_path)


def test_allows():
    p = profiles.Profile(slug="a", display_name="A", allowed_groups=("gpu-users",))
    assert p.allows(["staff", "gpu-users"]) is True
    assert p.allows(["staff"]) is False
    assert profiles.Profile(slug="b", display_name="B").allows([]) is True


def test_profile_cache_rereads_changed_files_and_keeps_last_valid(tmp_path):
    now = [0.0]
    cache = profiles.ProfileCache(recheck=2.0, clock=lambda: now[0])
    write(tmp_path, "a.yaml", GOOD.format(slug="a", default="true"))
    first = cache.get(tmp_path, ClusterGPUConfig())
    assert [p.slug for p in first] == ["a"]
    write(tmp_path, "b.yaml", GOOD.format(slug="b", default="false"))
    assert cache.get(tmp_path, ClusterGPUConfig()) is first  # not re-checked within 2 s
    now[0] = 2.0
    second = cache.get(tmp_path, ClusterGPUConfig())
    assert [p.slug for p in second] == ["a", "b"]
    write(tmp_path, "c.yaml", "slug: c\ndisplay_name: C\ngpu: {count: 0}\n")  # broken

    class Log:
        errors = []

        def error(self, *args):
            self.errors.append(args[0] % args[1:])

    now[0] = 4.0
    assert cache.get(tmp_path, ClusterGPUConfig(), Log()) is second
    assert Log.errors == [
        f"Profiles in {tmp_path} are invalid, keeping the last valid ones: c.yaml: gpu.count: must be >= 1, not 0"
    ]
    # A folder never loaded successfully raises.
    with pytest.raises(ProfileError, match="gpu.count: must be >= 1"):
        profiles.ProfileCache().get(tmp_path, ClusterGPUConfig())
