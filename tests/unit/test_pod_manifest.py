"""The user's pod as LLMSpawner builds it, for every shipped profile and two users."""

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version
from traitlets.config import Config

from .conftest import pod_for

TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

# profile -> (GPU limits, node selector, GPU tolerations, cpu request/limit, memory request/limit)
EXPECTED = {
    "cpu": ({}, None, None, (1.0, 4.0), (4 * 2**30, 16 * 2**30)),
    "small": (
        {"nvidia.com/gpu": 1},
        {"nvidia.com/gpu.replicas": "4"},
        [TOLERATION],
        (2.0, 8.0),
        (8 * 2**30, 32 * 2**30),
    ),
    "medium": (
        {"nvidia.com/gpu": 1},
        {"nvidia.com/gpu.replicas": "2"},
        [TOLERATION],
        (4.0, 8.0),
        (16 * 2**30, 48 * 2**30),
    ),
    "large": (
        {"nvidia.com/gpu": 1},
        {"nvidia.com/gpu.replicas": "1"},
        [TOLERATION],
        (8.0, 16.0),
        (32 * 2**30, 64 * 2**30),
    ),
}
# /dev/shm's sizeLimit per profile (bytes): a quarter of the memory limit, 1 to 16 GiB.
SHM = {
    "cpu": str(4 * 2**30),
    "small": str(8 * 2**30),
    "medium": str(12 * 2**30),
    "large": str(16 * 2**30),
}
USERS = {"alice": "alice", "Bob.Smith@example.org": "bob-smith-example-org---da50e6af"}


def env_of(pod):
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]
    }


@pytest.mark.parametrize("profile", sorted(EXPECTED))
@pytest.mark.parametrize("username", sorted(USERS))
async def test_pod_for_profile_and_user(make_spawner, profile, username):
    slug = USERS[username]
    pod = await pod_for(make_spawner(username), {"profile": profile})
    gpu, selector, tolerations, (cpu_req, cpu_lim), (mem_req, mem_lim) = EXPECTED[profile]
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["resources"] == {
        "limits": {"cpu": cpu_lim, "memory": mem_lim, **gpu},
        "requests": {"cpu": cpu_req, "memory": mem_req, **gpu},
    }
    assert spec.get("nodeSelector") == selector
    assert spec.get("tolerations") == tolerations
    assert spec["volumes"] == [
        {"name": "llm-storage", "persistentVolumeClaim": {"claimName": "llm-storage"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM[profile]}},
    ]
    assert container["volumeMounts"] == [
        {"name": "llm-storage", "mountPath": f"/storage/users/{slug}", "subPath": f"users/{slug}"},
        {
            "name": "llm-storage",
            "mountPath": "/storage/models",
            "subPath": "models",
            "readOnly": True,
        },
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    # Hardened like a Job (the "restricted" Pod Security Standard), whatever the uid.
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert container["workingDir"] == f"/storage/users/{slug}"
    env = env_of(pod)
    assert env["HOME"] == f"/storage/users/{slug}"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.llm.svc:5000"
    assert env["MLFLOW_EXPERIMENT_NAME"] == f"{username}-experiments"
    assert env["JUPYTERHUB_DEFAULT_URL"] == "/lab"
    assert env["JUPYTERHUB_USER"] == username
    # The raw name never reaches a label; kubespawner keeps it in an annotation.
    assert pod["metadata"]["annotations"]["hub.jupyter.org/username"] == username
    for version in ("1.32", latest_version()):
        kubernetes_validate.validate(pod, version, strict=True)


async def test_cpu_after_gpu_on_the_same_spawner(make_spawner):
    """kubespawner merges profile overrides into the spawner; a GPU spawn must not leak."""
    spawner = make_spawner("alice")
    gpu_pod = await pod_for(spawner, {"profile": "large"})
    assert gpu_pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu_pod = await pod_for(spawner, {"profile": "cpu"})
    spec = cpu_pod["spec"]
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["requests"]
    assert spec.get("nodeSelector") is None
    assert spec.get("tolerations") is None
    assert len(spec["containers"][0]["volumeMounts"]) == 3  # user folder, models, /dev/shm


async def test_no_options_gives_default_profile(make_spawner):
    """The admin panel's "start server" sends no options: the default profile (cpu)."""
    no_options = await pod_for(make_spawner("alice"), {})
    explicit = await pod_for(make_spawner("alice"), {"profile": "cpu"})
    assert no_options["spec"] == explicit["spec"]


async def test_configured_selector_and_tolerations_are_kept(make_spawner):
    """Settings of the chart (z2jh's user scheduling) stay; the profile adds to them."""
    c = Config()
    dedicated = {
        "key": "hub.jupyter.org/dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    }
    c.LLMSpawner.node_selector = {"hub.jupyter.org/node-purpose": "user"}
    c.LLMSpawner.tolerations = [dedicated]
    c.LLMSpawner.volumes = [{"name": "extra", "emptyDir": {}}]
    c.LLMSpawner.volume_mounts = [{"name": "extra", "mountPath": "/extra"}]
    spawner = make_spawner("alice", c)
    for _ in range(2):  # twice: nothing accumulates across spawns
        pod = await pod_for(spawner, {"profile": "medium"})
        spec = pod["spec"]
        assert spec["nodeSelector"] == {
            "hub.jupyter.org/node-purpose": "user",
            "nvidia.com/gpu.replicas": "2",
        }
        assert spec["tolerations"] == [dedicated, TOLERATION]
        assert [v["name"] for v in spec["volumes"]] == ["extra", "llm-storage", "dshm"]
        assert [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]] == [
            "/extra",
            "/storage/users/alice",
            "/storage/models",
            "/dev/shm",
        ]
    pod = await pod_for(spawner, {"profile": "cpu"})
    assert pod["spec"]["nodeSelector"] == {"hub.jupyter.org/node-purpose": "user"}
    assert pod["spec"]["tolerations"] == [dedicated]


async def test_unknown_profile_is_refused(make_spawner):
    with pytest.raises(
        ValueError, match="No such profile: huge. Options include: cpu, small, medium, large"
    ):
        await pod_for(make_spawner("alice"), {"profile": "huge"})


async def test_no_pod_ip_rewrite_and_get_env_is_overridable(make_spawner):
    """The emulator's $(POD_IP) workaround is the dev stack's (a subclass), not LLMSpawner's."""
    pod = await pod_for(make_spawner("alice"), {"profile": "cpu"})
    env = env_of(pod)
    assert "POD_IP" not in env
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:8888/"

    from llmspawner.spawner import LLMSpawner

    class Dev(LLMSpawner):
        def get_env(self):
            env = super().get_env()
            env["EXTRA"] = "1"
            return env

    spawner = make_spawner("alice")
    dev = Dev(config=spawner.config, user=spawner.user, _mock=True)
    env = env_of(await pod_for(dev, {"profile": "cpu"}))
    assert env["EXTRA"] == "1"
    assert env["HOME"] == "/storage/users/alice"


async def test_moved_settings_are_named_in_the_log(make_spawner, caplog):
    c = Config()
    c.LLMSpawner.profiles_dir = "/nowhere"
    spawner = make_spawner("alice", c)
    assert spawner.platform.profiles_dir != "/nowhere"
    assert "LLMSpawner.profiles_dir moved to the LLMPlatform section" in caplog.text


async def test_experiment_template(make_spawner):
    c = Config()
    c.LLMPlatform.mlflow_experiment_template = "team/{slug}"
    pod = await pod_for(make_spawner("Bob.Smith@example.org", c), {"profile": "cpu"})
    assert env_of(pod)["MLFLOW_EXPERIMENT_NAME"] == "team/bob-smith-example-org---da50e6af"


async def test_bad_experiment_template(make_spawner):
    from llmspawner.settings import SettingError

    c = Config()
    c.LLMPlatform.mlflow_experiment_template = "{user}-runs"
    with pytest.raises(
        SettingError,
        match=r"LLMPlatform.mlflow_experiment_template: .*unknown field\(s\) user; "
        r"allowed: \{username\}, \{slug\}",
    ):
        make_spawner("alice", c)


@pytest.mark.parametrize(
    ("gpu", "cluster", "limits", "selector"),
    [
        ("{mig: 1g.10gb}", {}, {"nvidia.com/mig-1g.10gb": 1}, None),
        (
            "{mig: 3g.40gb}",
            {"mig_strategy": "single"},
            {"nvidia.com/gpu": 1},
            {"nvidia.com/mig.config": "all-3g.40gb"},
        ),
        ("{count: 2}", {}, {"nvidia.com/gpu": 2}, {"nvidia.com/gpu.replicas": "1"}),
        (
            "{fraction: 1/4}",
            {"gpu_shared_resource": "nvidia.com/gpu.shared"},
            {"nvidia.com/gpu.shared": 1},
            {"nvidia.com/gpu.replicas": "4"},
        ),
        (
            "{count: 1}",
            {"gpu_shared_resource": "nvidia.com/gpu.shared"},
            {"nvidia.com/gpu": 1},
            None,
        ),
    ],
)
async def test_every_gpu_kind_validates(make_spawner, tmp_path, gpu, cluster, limits, selector):
    (tmp_path / "p.yaml").write_text(f"slug: p\ndisplay_name: P\ndefault: true\ngpu: {gpu}\n")
    c = Config()
    c.LLMPlatform.profiles_dir = str(tmp_path)
    for key, value in cluster.items():
        setattr(c.LLMPlatform, key, value)
    pod = await pod_for(make_spawner("alice", c), {"profile": "p"})
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources == {"limits": limits, "requests": limits}
    assert all(type(v) is int for v in resources["limits"].values())
    assert pod["spec"].get("nodeSelector") == selector
    assert pod["spec"]["tolerations"] == [TOLERATION]
    for version in ("1.32", latest_version()):
        kubernetes_validate.validate(pod, version, strict=True)


async def test_owner_init_container_with_a_uid(make_spawner):
    """With z2jh's uid/fsGid the user's folder is given to them before the server starts."""
    no_uid = await pod_for(make_spawner("alice"), {"profile": "cpu"})
    assert no_uid["spec"].get("initContainers") is None
    c = Config()
    c.LLMSpawner.uid = 1000
    c.LLMSpawner.fs_gid = 100
    c.LLMSpawner.image = "ghcr.io/llmspawner/singleuser:0.1.0"
    c.LLMSpawner.init_containers = [{"name": "configured", "image": "busybox:1.37"}]
    spawner = make_spawner("Bob.Smith@example.org", c)
    for _ in range(2):  # twice: nothing accumulates across spawns
        pod = await pod_for(spawner, {"profile": "small"})
        configured, owner = pod["spec"]["initContainers"]
        assert configured == {"name": "configured", "image": "busybox:1.37"}
        assert owner["name"] == "llm-storage-owner"
        assert owner["image"] == "ghcr.io/llmspawner/singleuser:0.1.0"
        assert owner["command"][-2:] == ["/mnt/user-folder", "1000:100"]
        assert owner["volumeMounts"] == [
            {
                "name": "llm-storage",
                "mountPath": "/mnt/user-folder",
                "subPath": "users/bob-smith-example-org---da50e6af",
            }
        ]
    for version in ("1.32", latest_version()):
        kubernetes_validate.validate(pod, version, strict=True)
