"""The agreement test of issue 11: a user's server pod and the same user's Job pod are built
from one workload, so they agree on storage, ids, env, resources and placement.

The server pod is a real LLMSpawner's ``get_pod_manifest`` (as the API server receives it);
the Job pod is ``build_job(...)['spec']['template']`` as the queue builds it, from the
settings the hub hands to the queue (``LLMPlatform.to_env``/``from_env``).
"""

import copy

import pytest
from traitlets.config import Config

from llmspawner import tracking
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.profiles import find_profile, load_profiles
from llmspawner.queue.k8s_objects import build_job, job_name
from llmspawner.settings import LLMPlatform
from llmspawner.spawner import WORKLOAD_TRAITS, kubespawner_traits
from llmspawner.workload import build_workload, parse_quantity

from .conftest import pod_for

IMAGE = "ghcr.io/llmspawner/singleuser:0.1.0"
MLFLOW = "http://mlflow.llm.svc:5000"
SHIPPED = load_profiles(REPO_PROFILES)
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
USERS = {"alice": "alice", "Bob.Smith@example.org": "bob-smith-example-org---da50e6af"}
GiB = 2**30
# /dev/shm per shipped profile: a quarter of the memory limit, 1 to 16 GiB.
SHM = {"cpu": 4 * GiB, "small": 8 * GiB, "medium": 12 * GiB, "large": 16 * GiB}
#: The container hardening of both a server and a Job (besides runAsUser/runAsGroup).
HARDENED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

# profile -> (requests, limits) as the Job has them (Kubernetes quantity strings),
# node selector, tolerations. Every shipped profile must be here.
EXPECTED = {
    "cpu": (
        {"cpu": "1", "memory": str(4 * GiB)},
        {"cpu": "4", "memory": str(16 * GiB)},
        {},
        [],
    ),
    "small": (
        {"cpu": "2", "memory": str(8 * GiB), "nvidia.com/gpu": "1"},
        {"cpu": "8", "memory": str(32 * GiB), "nvidia.com/gpu": "1"},
        {"nvidia.com/gpu.replicas": "4"},
        [TOLERATION],
    ),
    "medium": (
        {"cpu": "4", "memory": str(16 * GiB), "nvidia.com/gpu": "1"},
        {"cpu": "8", "memory": str(48 * GiB), "nvidia.com/gpu": "1"},
        {"nvidia.com/gpu.replicas": "2"},
        [TOLERATION],
    ),
    "large": (
        {"cpu": "8", "memory": str(32 * GiB), "nvidia.com/gpu": "1"},
        {"cpu": "16", "memory": str(64 * GiB), "nvidia.com/gpu": "1"},
        {"nvidia.com/gpu.replicas": "1"},
        [TOLERATION],
    ),
}

# How the ids are configured: not at all; z2jh's way (c.KubeSpawner.uid/fs_gid, which the
# hub resolves into the platform settings it hands to the queue); with a gid too; or in
# c.LLMPlatform only (the spawner then takes them from there).
ID_MODES = {
    "none": ({}, {}, (None, None, None)),
    "z2jh": ({"uid": 1000, "fs_gid": 100}, {}, (1000, None, 100)),
    "z2jh-gid": ({"uid": 1000, "gid": 100, "fs_gid": 100}, {}, (1000, 100, 100)),
    "platform": ({}, {"uid": 1000, "gid": 100, "fs_gid": 100}, (1000, 100, 100)),
}


def test_every_shipped_profile_is_checked():
    assert sorted(p.slug for p in SHIPPED) == sorted(EXPECTED)


def queue_platform(ids: dict) -> LLMPlatform:
    """The queue's settings: what the hub resolves and hands over through the environment."""
    c = Config()
    c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    c.LLMPlatform.mlflow_tracking_uri = MLFLOW
    c.LLMPlatform.image = IMAGE
    for key, value in ids.items():
        setattr(c.LLMPlatform, key, value)
    return LLMPlatform.from_env(LLMPlatform(config=c, env={}).to_env())


async def server_and_job(make_spawner, username, profile, mode):
    spawner_ids, platform_ids, _ = ID_MODES[mode]
    c = Config()
    c.KubeSpawner.image = IMAGE  # z2jh's singleuser.image
    for key, value in spawner_ids.items():
        setattr(c.KubeSpawner, key, value)  # z2jh's singleuser.uid / fsGid
    for key, value in platform_ids.items():
        setattr(c.LLMPlatform, key, value)
    server = await pod_for(make_spawner(username, c), {"profile": profile})

    platform = queue_platform({**spawner_ids, **platform_ids})
    p = find_profile(platform.profiles(), profile)
    job = build_job(
        name=job_name(username, 9),
        namespace="llm",
        job_id=9,
        workload=build_workload(username=username, profile=p, settings=platform),
        config_map=job_name(username, 9),
        priority="normal",
        active_deadline_seconds=p.max_runtime or None,
    )
    return server, job["spec"]["template"]


def ids_of(pod_spec):
    """Effective (runAsUser, runAsGroup, fsGroup) of the first container: the container's
    securityContext wins over the pod's."""
    psc = pod_spec.get("securityContext") or {}
    csc = pod_spec["containers"][0].get("securityContext") or {}
    return (
        csc.get("runAsUser", psc.get("runAsUser")),
        csc.get("runAsGroup", psc.get("runAsGroup")),
        psc.get("fsGroup"),
    )


def env_of(container, names=("HOME", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")):
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    return {n: env.get(n) for n in names}


def quantities(resources):
    return {
        kind: {k: parse_quantity(v) for k, v in (resources.get(kind) or {}).items()}
        for kind in ("requests", "limits")
    }


@pytest.mark.parametrize("mode", sorted(ID_MODES))
@pytest.mark.parametrize("username", sorted(USERS))
@pytest.mark.parametrize("profile", sorted(EXPECTED))
async def test_server_pod_and_job_pod_agree(make_spawner, profile, username, mode):
    slug = USERS[username]
    home = f"/storage/users/{slug}"
    server, template = await server_and_job(make_spawner, username, profile, mode)
    s_spec, j_spec = server["spec"], template["spec"]
    (s_main,) = s_spec["containers"]
    (j_main,) = j_spec["containers"]
    requests, limits, selector, tolerations = EXPECTED[profile]
    uid, gid, fs_gid = ID_MODES[mode][2]

    # Storage: the user's folder, the shared models and /dev/shm, nothing else (the Job adds
    # its config).
    shm = str(SHM[profile])
    volumes = [
        {"name": "llm-storage", "persistentVolumeClaim": {"claimName": "llm-storage"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
    ]
    mounts = [
        {"name": "llm-storage", "mountPath": home, "subPath": f"users/{slug}"},
        {
            "name": "llm-storage",
            "mountPath": "/storage/models",
            "subPath": "models",
            "readOnly": True,
        },
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    assert s_spec["volumes"] == volumes
    assert j_spec["volumes"] == [
        *volumes,
        {"name": "llm-queue-config", "configMap": {"name": job_name(username, 9)}},
    ]
    assert s_main["volumeMounts"] == mounts
    assert j_main["volumeMounts"] == [
        *mounts,
        {"name": "llm-queue-config", "mountPath": "/etc/llm-queue", "readOnly": True},
    ]
    assert s_main["workingDir"] == j_main["workingDir"] == home
    assert s_main["image"] == j_main["image"] == IMAGE

    # Who the files belong to, and the same hardening (never root).
    assert ids_of(s_spec) == ids_of(j_spec) == (uid, gid, fs_gid)
    assert s_main["securityContext"] == j_main["securityContext"]
    ids = ("runAsUser", "runAsGroup")
    assert {k: v for k, v in s_main["securityContext"].items() if k not in ids} == HARDENED
    assert s_spec["securityContext"] == j_spec["securityContext"]
    assert s_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert s_spec.get("initContainers") == j_spec.get("initContainers")
    if uid is None:
        assert "initContainers" not in j_spec
        assert s_spec.get("initContainers") is None
    else:
        (owner,) = j_spec["initContainers"]
        assert owner["name"] == "llm-storage-owner"
        assert owner["image"] == IMAGE
        assert owner["command"][-2:] == ["/mnt/user-folder", f"{uid}:{fs_gid}"]
        assert owner["volumeMounts"] == [
            {"name": "llm-storage", "mountPath": "/mnt/user-folder", "subPath": f"users/{slug}"}
        ]

    # Environment.
    expected_env = {
        "HOME": home,
        "MLFLOW_TRACKING_URI": MLFLOW,
        "MLFLOW_EXPERIMENT_NAME": f"{username}-experiments",
    }
    assert env_of(s_main) == env_of(j_main) == expected_env

    # Resources: the same quantities (kubespawner writes numbers, the Job strings).
    assert j_main["resources"] == {"requests": requests, "limits": limits}
    assert quantities(s_main["resources"]) == quantities(j_main["resources"])
    gpu = {k: v for k, v in limits.items() if "/" in k}
    assert {k: v for k, v in s_main["resources"]["limits"].items() if "/" in k} == {
        k: int(v) for k, v in gpu.items()
    }

    # Placement.
    assert (s_spec.get("nodeSelector") or {}) == (j_spec.get("nodeSelector") or {}) == selector
    assert (s_spec.get("tolerations") or []) == (j_spec.get("tolerations") or []) == tolerations

    # The user's labels and annotations.
    user_labels = {"llmspawner.io/user": slug, "llmspawner.io/profile": profile}
    for metadata in (server["metadata"], template["metadata"]):
        assert {k: metadata["labels"].get(k) for k in user_labels} == user_labels
        assert metadata["annotations"]["llmspawner.io/username"] == username


async def test_medium_exact_values(make_spawner):
    """Not just two equal (possibly empty) things: the values of 'medium' under z2jh ids."""
    server, template = await server_and_job(make_spawner, "alice", "medium", "z2jh")
    job_main = template["spec"]["containers"][0]
    server_main = server["spec"]["containers"][0]
    gpu = {k: v for k, v in job_main["resources"]["requests"].items() if "/" in k}
    assert gpu == {"nvidia.com/gpu": "1"}
    assert server_main["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert template["spec"]["nodeSelector"] == {"nvidia.com/gpu.replicas": "2"}
    assert server["spec"]["nodeSelector"] == {"nvidia.com/gpu.replicas": "2"}
    assert (
        template["spec"]["securityContext"]
        == server["spec"]["securityContext"]
        == {"fsGroup": 100, "seccompProfile": {"type": "RuntimeDefault"}}
    )
    assert job_main["securityContext"] == {"runAsUser": 1000, **HARDENED}
    assert server_main["securityContext"] == {"runAsUser": 1000, **HARDENED}


# --- the builder itself ------------------------------------------------------------------


def platform(**traits) -> LLMPlatform:
    c = Config()
    c.LLMPlatform.image = IMAGE
    c.LLMPlatform.mlflow_tracking_uri = MLFLOW
    for key, value in traits.items():
        setattr(c.LLMPlatform, key, value)
    return LLMPlatform(config=c, env={})


def test_build_workload_is_pure():
    profile = find_profile(SHIPPED, "medium")
    before = copy.deepcopy(profile)
    settings = platform()
    a = build_workload(username="alice", profile=profile, settings=settings, uid=1000)
    b = build_workload(username="alice", profile=profile, settings=settings, uid=1000)
    assert a == b
    a.tolerations[0]["key"] = "changed"
    a.env["HOME"] = "/elsewhere"
    assert profile == before
    assert b.tolerations[0]["key"] == "nvidia.com/gpu"
    c = build_workload(username="alice", profile=profile, settings=settings, uid=1000)
    assert c == b


def test_build_workload_fields():
    w = build_workload(
        username="Bob.Smith@example.org",
        profile=find_profile(SHIPPED, "small"),
        settings=platform(),
        uid=1000,
        fs_gid=100,
    )
    slug = USERS["Bob.Smith@example.org"]
    assert w.image == IMAGE
    assert w.gpu == {"nvidia.com/gpu": "1"}
    assert w.node_selector == {"nvidia.com/gpu.replicas": "4"}
    assert w.env == {
        "HOME": f"/storage/users/{slug}",
        "MLFLOW_TRACKING_URI": MLFLOW,
        "MLFLOW_EXPERIMENT_NAME": "Bob.Smith@example.org-experiments",
        **tracking.POD_MLFLOW_ENV,  # the pods' MLflow client settings (llmspawner.tracking)
        "LLMSPAWNER_MODELS_DIR": "/storage/models",  # the LlamaBoard preset's models folder
        "HF_HOME": f"/storage/users/{slug}/.cache/huggingface",  # the user's own HF cache
        "OMP_WAIT_POLICY": "PASSIVE",  # PyTorch's CPU threads sleep, not spin, at barriers
    }
    assert w.pod_security_context == {"fsGroup": 100, "seccompProfile": {"type": "RuntimeDefault"}}
    assert w.container_security_context == {"runAsUser": 1000, **HARDENED}
    assert w.labels == {"llmspawner.io/user": slug, "llmspawner.io/profile": "small"}
    assert w.annotations == {"llmspawner.io/username": "Bob.Smith@example.org"}


def test_arguments_win_over_settings_and_tracking_off():
    w = build_workload(
        username="alice",
        profile=find_profile(SHIPPED, "cpu"),
        settings=platform(uid=5, gid=6, fs_gid=7, mlflow_tracking_uri=""),
        uid=1000,
    )
    assert w.container_security_context == {"runAsUser": 1000, "runAsGroup": 6, **HARDENED}
    assert w.pod_security_context == {"fsGroup": 7, "seccompProfile": {"type": "RuntimeDefault"}}
    assert w.init_containers[0]["command"][-1] == "1000:7"
    assert w.env == {
        "HOME": "/storage/users/alice",
        "LLMSPAWNER_MODELS_DIR": "/storage/models",
        "HF_HOME": "/storage/users/alice/.cache/huggingface",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    assert w.gpu == {}
    assert (w.node_selector, w.tolerations) == ({}, [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"settings": platform(image="")}, "no image for profile 'cpu'"),
        ({"uid": -1}, "uid must be a whole number >= 0 or None, not -1"),
        ({"fs_gid": True}, "fs_gid must be a whole number >= 0 or None, not True"),
        ({"uid": 0}, "uid must not be 0: servers and Jobs never run as root"),
        ({"settings": platform(uid=0)}, "uid must not be 0"),
    ],
)
def test_build_workload_refuses(kwargs, message):
    args = {"username": "alice", "profile": find_profile(SHIPPED, "cpu"), "settings": platform()}
    with pytest.raises(ValueError, match=message):
        build_workload(**{**args, **kwargs})


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("500m", 0.5),
        ("4", 4),
        (4.0, 4),
        (17179869184, 17179869184),
        ("16Gi", 16 * GiB),
        ("1k", 1000),
    ],
)
def test_parse_quantity(value, number):
    assert parse_quantity(value) == number


def test_kubespawner_traits_keep_the_configured_values():
    configured = {name: None for name in WORKLOAD_TRAITS}
    configured.update(
        node_selector={"hub.jupyter.org/node-purpose": "user"},
        tolerations={"b": {"key": "b"}, "a": {"key": "a"}},
        volumes=[{"name": "extra", "emptyDir": {}}],
        volume_mounts=[],
        init_containers=[],
        extra_resource_limits={"example.com/dongle": 1},
        extra_resource_guarantees={},
        extra_labels={"team": "a"},
        extra_annotations={},
        cpu_guarantee=0.1,
        mem_limit=None,
    )
    before = copy.deepcopy(configured)
    w = build_workload(
        username="{odd}", profile=find_profile(SHIPPED, "medium"), settings=platform()
    )
    traits = kubespawner_traits(w, configured)
    assert configured == before
    assert set(traits) == set(WORKLOAD_TRAITS)
    assert traits["node_selector"] == {
        "hub.jupyter.org/node-purpose": "user",
        "nvidia.com/gpu.replicas": "2",
    }
    assert traits["tolerations"] == [{"key": "a"}, {"key": "b"}, TOLERATION]
    assert [v["name"] for v in traits["volumes"]] == ["extra", "llm-storage", "dshm"]
    assert traits["extra_resource_limits"] == {"example.com/dongle": 1, "nvidia.com/gpu": 1}
    assert traits["extra_resource_guarantees"] == {"nvidia.com/gpu": 1}
    assert (traits["cpu_guarantee"], traits["cpu_limit"]) == (4.0, 8.0)
    assert (traits["mem_guarantee"], traits["mem_limit"]) == (16 * GiB, 48 * GiB)
    assert traits["extra_labels"]["team"] == "a"
    # kubespawner expands {...} in label and annotation values: the raw name is escaped.
    assert traits["extra_annotations"] == {"llmspawner.io/username": "{{odd}}"}
    assert (traits["uid"], traits["gid"], traits["fs_gid"]) == (None, None, None)


def test_kubespawner_traits_harden_over_the_configured_security():
    """One rule for server and Job: z2jh's allowPrivilegeEscalation or a configured security
    context cannot loosen the workload's hardening; other configured keys stay."""
    configured = {name: None for name in WORKLOAD_TRAITS}
    configured.update(
        allow_privilege_escalation=True,
        container_security_context={
            "allowPrivilegeEscalation": True,
            "readOnlyRootFilesystem": True,
        },
        pod_security_context={"supplementalGroups": [5]},
    )
    w = build_workload(
        username="alice", profile=find_profile(SHIPPED, "cpu"), settings=platform(), uid=1000
    )
    traits = kubespawner_traits(w, configured)
    assert traits["allow_privilege_escalation"] is False
    assert traits["container_security_context"] == {
        "readOnlyRootFilesystem": True,
        "runAsUser": 1000,
        **HARDENED,
    }
    assert traits["pod_security_context"] == {
        "supplementalGroups": [5],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    with pytest.raises(TypeError, match="container_security_context: resolve the callable"):
        kubespawner_traits(w, {**configured, "container_security_context": lambda s: {}})


async def test_callable_security_context_resolved_per_spawn(make_spawner):
    c = Config()
    c.KubeSpawner.image = IMAGE
    c.KubeSpawner.uid = 1000
    c.KubeSpawner.allow_privilege_escalation = True  # z2jh's singleuser.allowPrivilegeEscalation
    c.KubeSpawner.container_security_context = lambda spawner: {"readOnlyRootFilesystem": True}
    pod = await pod_for(make_spawner("alice", c), {"profile": "cpu"})
    (main,) = pod["spec"]["containers"]
    assert main["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "runAsUser": 1000,
        **HARDENED,
    }


@pytest.mark.parametrize(
    ("memory", "shm_size", "expected"),
    [
        ({}, None, GiB),  # no memory set: 1 GiB
        ({"limit": "2G"}, None, GiB),  # a quarter would be 512 MiB: at least 1 GiB
        ({"limit": "512M"}, None, 512 * 2**20),  # never above the memory limit
        ({"guarantee": "8G"}, None, 2 * GiB),  # a quarter of the guarantee without a limit
        ({"limit": "48G"}, None, 12 * GiB),
        ({"limit": "256G"}, None, 16 * GiB),  # at most 16 GiB
        ({"limit": "48G"}, "2G", 2 * GiB),  # the profile's shm_size wins
    ],
)
def test_shm_size(memory, shm_size, expected):
    from llmspawner.profiles import ClusterGPUConfig, parse_profile

    data = {"slug": "p", "display_name": "P", "memory": memory}
    if shm_size is not None:
        data["shm_size"] = shm_size
    profile = parse_profile(data, file="p.yaml", cluster=ClusterGPUConfig())
    w = build_workload(username="alice", profile=profile, settings=platform())
    assert w.volumes[-1] == {
        "name": "dshm",
        "emptyDir": {"medium": "Memory", "sizeLimit": str(expected)},
    }
    assert w.volume_mounts[-1] == {"name": "dshm", "mountPath": "/dev/shm"}


# --- image pull secrets --------------------------------------------------------------------


async def test_server_and_job_pull_with_the_same_secrets(make_spawner):
    """z2jh's ``singleuser.image.pullSecrets`` (``c.KubeSpawner.image_pull_secrets``, names or
    ``{"name": ...}``): the hub resolves them into the platform settings the queue gets, so a
    user's server and their Job carry the same ``imagePullSecrets``."""
    from llmspawner.settings import resolve_hub_settings

    c = Config()
    c.KubeSpawner.image = IMAGE
    c.KubeSpawner.image_pull_secrets = ["regcred", {"name": "mirror"}, "regcred"]
    server = await pod_for(make_spawner("alice", c), {"profile": "small"})

    hub = Config()
    hub.merge(c)
    hub.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    settings = resolve_hub_settings(hub, env={})
    assert settings.image_pull_secrets == ["regcred", "mirror"]
    platform = LLMPlatform.from_env(settings.to_env())  # the queue's copy
    assert platform.image_pull_secrets == ["regcred", "mirror"]
    workload = build_workload(
        username="alice", profile=find_profile(platform.profiles(), "small"), settings=platform
    )
    assert workload.image_pull_secrets == [{"name": "regcred"}, {"name": "mirror"}]
    job = build_job(
        name=job_name("alice", 9),
        namespace="llm",
        job_id=9,
        workload=workload,
        config_map=job_name("alice", 9),
        priority="normal",
    )
    expected = [{"name": "regcred"}, {"name": "mirror"}]
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == expected
    assert server["spec"]["imagePullSecrets"] == expected


async def test_platform_pull_secrets_reach_a_server_without_spawner_ones(make_spawner):
    c = Config()
    c.KubeSpawner.image = IMAGE
    c.LLMPlatform.image_pull_secrets = ["regcred"]
    server = await pod_for(make_spawner("alice", c), {"profile": "cpu"})
    assert server["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    server = await pod_for(make_spawner("bob", Config({"KubeSpawner": {"image": IMAGE}})), {})
    assert not server["spec"].get("imagePullSecrets")


def test_kubespawner_traits_add_the_workloads_pull_secrets_once():
    configured = {name: None for name in WORKLOAD_TRAITS}
    configured.update(
        tolerations=[],
        volumes=[],
        volume_mounts=[],
        init_containers=[],
        extra_resource_limits={},
        extra_resource_guarantees={},
        extra_labels={},
        extra_annotations={},
        node_selector={},
        image_pull_secrets=["chart-secret", {"name": "regcred"}],
    )
    w = build_workload(
        username="alice",
        profile=find_profile(SHIPPED, "cpu"),
        settings=platform(image_pull_secrets=["regcred", "extra"]),
    )
    traits = kubespawner_traits(w, configured)
    assert traits["image_pull_secrets"] == [
        {"name": "chart-secret"},
        {"name": "regcred"},
        {"name": "extra"},
    ]
    assert configured["image_pull_secrets"] == ["chart-secret", {"name": "regcred"}]


def test_bad_spawner_pull_secrets_name_the_setting():
    from llmspawner.settings import SettingError, pull_secret_names

    assert pull_secret_names("one") == ["one"]
    assert pull_secret_names(None) == []
    with pytest.raises(SettingError, match="KubeSpawner.image_pull_secrets"):
        pull_secret_names([{"nom": "x"}])


def test_hf_offline_env():
    on = build_workload(
        username="alice", profile=find_profile(SHIPPED, "cpu"), settings=platform(hf_offline=True)
    )
    off = build_workload(
        username="alice", profile=find_profile(SHIPPED, "cpu"), settings=platform()
    )
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    assert on.env == {**off.env, **offline}
    assert not set(offline) & set(off.env)


@pytest.mark.parametrize("offline", [False, True])
async def test_hf_cache_and_offline_setting_reach_server_and_job(make_spawner, offline):
    """Each user's HF_HOME is inside their own read-write folder, never in the shared models
    folder (mounted read-only); LLMPlatform.hf_offline reaches the server pod and the queue's
    Job (through the hub's hand-over to the queue, LLMSPAWNER_PLATFORM)."""
    pods = {}
    for username, slug in USERS.items():
        c = Config()
        c.KubeSpawner.image = IMAGE
        c.LLMPlatform.hf_offline = offline
        server = await pod_for(make_spawner(username, c), {"profile": "cpu"})
        platform_c = Config()
        platform_c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
        platform_c.LLMPlatform.image = IMAGE
        platform_c.LLMPlatform.hf_offline = offline
        platform = LLMPlatform.from_env(LLMPlatform(config=platform_c, env={}).to_env())
        job = build_job(
            name=job_name(username, 9),
            namespace="llm",
            job_id=9,
            workload=build_workload(
                username=username,
                profile=find_profile(platform.profiles(), "cpu"),
                settings=platform,
            ),
            config_map=job_name(username, 9),
            priority="normal",
        )["spec"]["template"]
        names = ("HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
        for pod in (server, job):
            spec = pod["spec"]
            container = spec["containers"][0]
            env = env_of(container, names)
            home = f"/storage/users/{slug}"
            assert env["HF_HOME"] == f"{home}/.cache/huggingface"
            flag = "1" if offline else None
            assert [env[n] for n in names[1:]] == [flag, flag, flag]
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert not mounts[home].get("readOnly")  # the cache's folder is writable
            assert mounts["/storage/models"]["readOnly"] is True  # the shared models are not
            assert not env["HF_HOME"].startswith("/storage/models")
        pods[username] = env_of(server["spec"]["containers"][0], ("HF_HOME",))
    assert len({p["HF_HOME"] for p in pods.values()}) == len(USERS)  # one cache per user
