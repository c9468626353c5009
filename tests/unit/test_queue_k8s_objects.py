"""The queue's Job and ConfigMap builders, validated against the Kubernetes schema."""

import copy
import json
import re

import kubernetes_validate
import pytest
import yaml
from kubernetes_asyncio.client import ApiClient
from kubernetes_validate.utils import latest_version
from traitlets.config import Config

from llmspawner.capacity import pod_requests
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.profiles import GPU, Profile, find_profile, load_profiles
from llmspawner.queue.k8s_objects import (
    build_config_map,
    build_job,
    build_priority_classes,
    job_name,
    owner_reference,
)
from llmspawner.settings import LLMPlatform
from llmspawner.workload import build_workload


def platform(**traits) -> LLMPlatform:
    """The platform settings of these tests (not read from this process's environment)."""
    c = Config()
    c.LLMPlatform.image = "llmspawner/singleuser:dev"
    c.LLMPlatform.mlflow_tracking_uri = "http://mlflow.llm.svc:5000"
    for key, value in traits.items():
        setattr(c.LLMPlatform, key, value)
    return LLMPlatform(config=c, env={})


PLATFORM = platform()
PROFILES = load_profiles(REPO_PROFILES, PLATFORM.gpu_cluster)
VERSIONS = ["1.32", latest_version()]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
USERS = {"alice": "alice", "Bob.Smith@example.org": "bob-smith-example-org---da50e6af"}
CONFIG = {
    "model_name_or_path": "/storage/models/tiny-llama",
    "stage": "sft",
    "output_dir": "/storage/users/alice/saves/ü",
    "learning_rate": 1.0e-4,
    "report_to": "mlflow",
    "run_name": "llm-job-alice-7",
}


def job(
    profile="medium",
    username="alice",
    job_id=7,
    *,
    settings=PLATFORM,
    uid=None,
    gid=None,
    fs_gid=None,
    **kwargs,
):
    """The Job as the queue builds it (contract of issue 11)."""
    p = find_profile(PROFILES, profile) if isinstance(profile, str) else profile
    args = dict(
        name=job_name(username, job_id),
        namespace="llm",
        job_id=job_id,
        workload=build_workload(
            username=username, profile=p, settings=settings, uid=uid, gid=gid, fs_gid=fs_gid
        ),
        config_map=job_name(username, job_id),
        priority="normal",
        active_deadline_seconds=p.max_runtime or None,
    )
    args.update(kwargs)
    return build_job(**args)


def validate(obj):
    assert json.loads(json.dumps(obj)) == obj
    for version in VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize(
    ("username", "job_id", "name"),
    [
        ("alice", 1, "llm-job-alice-1"),
        ("alice", 123456789, "llm-job-alice-123456789"),
        ("Bob.Smith@example.org", 42, "llm-job-bob-smith-example-org---da50e6af-42"),
        ("x" * 80, 7, "llm-job-xxxxxxxxxxxxxxxxxxxxx---d929cdee-7"),
        (
            "a-very-long-user-name-that-fills-the-whole-label-abcdefghijk",
            5,
            "llm-job-a-very-long-user-name-that-fills-the-whole-label-abcd-5",
        ),
        (
            "a-very-long-user-name-that-fills-the-whole-label-abcdefghijk",
            12345,
            "llm-job-a-very-long-user-name-that-fills-the-whole-label-12345",  # cut at a "-",
        ),
        (
            "long-name-cut-just-before-a-dash-aaaaaaaaaaaaaaaaaaaaaaa-bbbbb",
            1,
            "llm-job-long-name-cut-just-before-a-dash-aaaaaaaaaaaaaaaaaaaa-1",
        ),
    ],
)
def test_job_name_is_pinned(username, job_id, name):
    assert job_name(username, job_id) == name
    assert len(name) <= 63 and DNS_LABEL.match(name)


def test_job_names_are_unique_and_valid():
    users = ["alice", "Alice", "alice-1", "bob", "x" * 100, "ü" * 40, "a-" * 40]
    names = {(u, i): job_name(u, i) for u in users for i in [1, 2, 10, 11, 99999, 10**12]}
    # ids are unique across users; the names of different ids never collide
    by_id = {}
    for (_, i), n in names.items():
        assert len(n) <= 63 and DNS_LABEL.match(n), n
        assert n.rsplit("-", 1)[1] == str(i)
        by_id.setdefault(i, set()).add(n)
    for a in by_id:
        for b in by_id:
            if a != b:
                assert not by_id[a] & by_id[b]


@pytest.mark.parametrize("bad", [0, -1, True, 1.0, "7"])
def test_job_name_refuses_bad_ids(bad):
    with pytest.raises(ValueError, match=r"job_id must be a positive integer, not"):
        job_name("alice", bad)


def test_config_map():
    before = copy.deepcopy(CONFIG)
    cm = build_config_map(
        name="llm-job-alice-7", namespace="llm", job_id=7, username="alice", config=CONFIG
    )
    assert CONFIG == before
    assert cm == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "llm-job-alice-7",
            "namespace": "llm",
            "labels": {
                "app.kubernetes.io/managed-by": "llm-queue",
                "llmspawner.io/user": "alice",
                "llmspawner.io/job-id": "7",
            },
            "annotations": {"llmspawner.io/username": "alice"},
        },
        "data": {
            "config.yaml": (
                "model_name_or_path: /storage/models/tiny-llama\n"
                "stage: sft\n"
                "output_dir: /storage/users/alice/saves/ü\n"
                "learning_rate: 0.0001\n"
                "report_to: mlflow\n"
                "run_name: llm-job-alice-7\n"
            )
        },
    }
    assert yaml.safe_load(cm["data"]["config.yaml"]) == CONFIG
    validate(cm)


def test_config_map_of_a_lossy_name_keeps_the_raw_name_in_an_annotation():
    cm = build_config_map(
        name="x", namespace="llm", job_id=1, username="Bob.Smith@example.org", config={}
    )
    assert cm["metadata"]["labels"]["llmspawner.io/user"] == "bob-smith-example-org---da50e6af"
    assert cm["metadata"]["annotations"] == {"llmspawner.io/username": "Bob.Smith@example.org"}


def test_owner_reference():
    created = job()
    created["metadata"]["uid"] = "0b5a3c1e-0000-4000-8000-000000000007"
    ref = owner_reference(created)
    assert ref == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "llm-job-alice-7",
        "uid": "0b5a3c1e-0000-4000-8000-000000000007",
    }
    cm = build_config_map(
        name="llm-job-alice-7", namespace="llm", job_id=7, username="alice", config=CONFIG
    )
    cm["metadata"]["ownerReferences"] = [ref]
    validate(cm)
    with pytest.raises(ValueError, match="the Job has no metadata.uid/name"):
        owner_reference(job())


async def test_the_api_client_sends_the_dicts_as_they_are():
    cm = build_config_map(name="n", namespace="llm", job_id=7, username="alice", config=CONFIG)
    async with ApiClient() as api:
        assert api.sanitize_for_serialization(job()) == job()
        assert api.sanitize_for_serialization(cm) == cm


def test_medium_job_whole():
    assert job() == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "llm-job-alice-7",
            "namespace": "llm",
            "labels": {
                "app.kubernetes.io/managed-by": "llm-queue",
                "llmspawner.io/user": "alice",
                "llmspawner.io/job-id": "7",
                "llmspawner.io/profile": "medium",
            },
            "annotations": {"llmspawner.io/username": "alice"},
        },
        "spec": {
            "backoffLimit": 0,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    }
                ]
            },
            "activeDeadlineSeconds": 86400,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/managed-by": "llm-queue",
                        "llmspawner.io/user": "alice",
                        "llmspawner.io/job-id": "7",
                        "llmspawner.io/profile": "medium",
                    },
                    "annotations": {"llmspawner.io/username": "alice"},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "priorityClassName": "llm-normal",
                    "containers": [
                        {
                            "name": "train",
                            "image": "llmspawner/singleuser:dev",
                            "command": [
                                "python3",
                                "-m",
                                "llmspawner.training",
                                "train",
                                "/etc/llm-queue/config.yaml",
                            ],
                            "workingDir": "/storage/users/alice",
                            "env": [
                                {"name": "HOME", "value": "/storage/users/alice"},
                                {
                                    "name": "MLFLOW_TRACKING_URI",
                                    "value": "http://mlflow.llm.svc:5000",
                                },
                                {"name": "MLFLOW_EXPERIMENT_NAME", "value": "alice-experiments"},
                                {"name": "HF_MLFLOW_LOG_ARTIFACTS", "value": "0"},
                                {"name": "MLFLOW_HTTP_REQUEST_TIMEOUT", "value": "60"},
                                {"name": "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "value": "3"},
                                {"name": "LLMSPAWNER_MODELS_DIR", "value": "/storage/models"},
                                {
                                    "name": "HF_HOME",
                                    "value": "/storage/users/alice/.cache/huggingface",
                                },
                                {"name": "OMP_WAIT_POLICY", "value": "PASSIVE"},
                                {"name": "LLMSPAWNER_JOB_ID", "value": "7"},
                                {"name": "MLFLOW_TAGS", "value": '{"llmspawner.job_id": "7"}'},
                            ],
                            "securityContext": {
                                "runAsNonRoot": True,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "resources": {
                                "limits": {
                                    "cpu": "8",
                                    "memory": str(48 * 2**30),
                                    "nvidia.com/gpu": "1",
                                },
                                "requests": {
                                    "cpu": "4",
                                    "memory": str(16 * 2**30),
                                    "nvidia.com/gpu": "1",
                                },
                            },
                            "volumeMounts": [
                                {
                                    "name": "llm-storage",
                                    "mountPath": "/storage/users/alice",
                                    "subPath": "users/alice",
                                },
                                {
                                    "name": "llm-storage",
                                    "mountPath": "/storage/models",
                                    "subPath": "models",
                                    "readOnly": True,
                                },
                                {"name": "dshm", "mountPath": "/dev/shm"},
                                {
                                    "name": "llm-queue-config",
                                    "mountPath": "/etc/llm-queue",
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "llm-storage",
                            "persistentVolumeClaim": {"claimName": "llm-storage"},
                        },
                        {
                            "name": "dshm",
                            "emptyDir": {"medium": "Memory", "sizeLimit": str(12 * 2**30)},
                        },
                        {"name": "llm-queue-config", "configMap": {"name": "llm-job-alice-7"}},
                    ],
                    "nodeSelector": {"nvidia.com/gpu.replicas": "2"},
                    # A share of a GPU, never of a MIG slice (profiles.NOT_MIG_SLICES).
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "nvidia.com/gpu.slices.gi",
                                                "operator": "DoesNotExist",
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "tolerations": [TOLERATION],
                    "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                },
            },
        },
    }


# profile -> (GPU resources, node selector, tolerations, (cpu req, lim), (mem req, lim), deadline)
EXPECTED = {
    "cpu": ({}, None, None, ("1", "4"), (4 * 2**30, 16 * 2**30), 86400),
    "small": (
        {"nvidia.com/gpu": "1"},
        {"nvidia.com/gpu.replicas": "4"},
        [TOLERATION],
        ("2", "8"),
        (8 * 2**30, 32 * 2**30),
        43200,
    ),
    "medium": (
        {"nvidia.com/gpu": "1"},
        {"nvidia.com/gpu.replicas": "2"},
        [TOLERATION],
        ("4", "8"),
        (16 * 2**30, 48 * 2**30),
        86400,
    ),
    "large": (
        {"nvidia.com/gpu": "1"},
        {"nvidia.com/gpu.replicas": "1"},
        [TOLERATION],
        ("8", "16"),
        (32 * 2**30, 64 * 2**30),
        172800,
    ),
}


@pytest.mark.parametrize("profile", sorted(EXPECTED))
@pytest.mark.parametrize("username", sorted(USERS))
@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_job_for_profile_user_priority(profile, username, priority):
    slug = USERS[username]
    obj = job(profile, username, job_id=3, priority=priority)
    validate(obj)
    gpu, selector, tolerations, (cpu_req, cpu_lim), (mem_req, mem_lim), deadline = EXPECTED[profile]
    spec = obj["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert obj["metadata"]["name"] == f"llm-job-{slug}-3"
    assert obj["metadata"]["annotations"] == {"llmspawner.io/username": username}
    labels = {
        "app.kubernetes.io/managed-by": "llm-queue",
        "llmspawner.io/user": slug,
        "llmspawner.io/job-id": "3",
        "llmspawner.io/profile": profile,
    }
    assert obj["metadata"]["labels"] == spec["template"]["metadata"]["labels"] == labels
    assert spec["activeDeadlineSeconds"] == deadline
    assert pod["priorityClassName"] == f"llm-{priority}"
    assert container["resources"] == {
        "limits": {"cpu": cpu_lim, "memory": str(mem_lim), **gpu},
        "requests": {"cpu": cpu_req, "memory": str(mem_req), **gpu},
    }
    assert pod.get("nodeSelector") == selector
    assert pod.get("tolerations") == tolerations
    assert container["workingDir"] == f"/storage/users/{slug}"
    assert {"name": "HOME", "value": f"/storage/users/{slug}"} in container["env"]
    assert container["volumeMounts"][0] == {
        "name": "llm-storage",
        "mountPath": f"/storage/users/{slug}",
        "subPath": f"users/{slug}",
    }
    # The capacity count (spawn form and admission) sees the job's pod as the spawner's.
    assert pod_requests({"spec": pod}) == {k: int(v) for k, v in gpu.items()}


def test_same_storage_and_tracking_env_as_the_users_server():
    from llmspawner.storage import build_user_storage
    from llmspawner.tracking import tracking_env

    obj = job(username="Bob.Smith@example.org")
    pod = obj["spec"]["template"]["spec"]
    storage = build_user_storage(username="Bob.Smith@example.org", claim_name="llm-storage")
    assert pod["volumes"][:1] == storage.volumes
    assert pod["containers"][0]["volumeMounts"][:2] == storage.volume_mounts
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    expected = tracking_env(
        tracking_uri="http://mlflow.llm.svc:5000", experiment="Bob.Smith@example.org-experiments"
    )
    assert {k: env[k] for k in expected} == expected


@pytest.mark.parametrize(
    "kwargs", [{"settings": platform(mlflow_tracking_uri="")}, {"tracking": False}]
)
def test_tracking_off(kwargs):
    env = job(**kwargs)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [
        {"name": "HOME", "value": "/storage/users/alice"},
        {"name": "LLMSPAWNER_MODELS_DIR", "value": "/storage/models"},
        {"name": "HF_HOME", "value": "/storage/users/alice/.cache/huggingface"},
        {"name": "OMP_WAIT_POLICY", "value": "PASSIVE"},
        {"name": "LLMSPAWNER_JOB_ID", "value": "7"},
    ]


def test_kueue_mode_creates_a_suspended_labelled_job():
    obj = job(kueue_queue="team-a")
    validate(obj)
    assert obj["spec"]["suspend"] is True
    assert obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "kueue.x-k8s.io/queue-name" not in obj["spec"]["template"]["metadata"]["labels"]
    assert "suspend" not in job()["spec"]


def test_options():
    obj = job(
        backoff_limit=2,
        ttl_seconds_after_finished=600,
        service_account="trainer",
        active_deadline_seconds=60,
    )
    validate(obj)
    pod = obj["spec"]["template"]["spec"]
    assert (obj["spec"]["backoffLimit"], obj["spec"]["ttlSecondsAfterFinished"]) == (2, 600)
    assert obj["spec"]["activeDeadlineSeconds"] == 60
    assert pod["serviceAccountName"] == "trainer"
    assert "automountServiceAccountToken" not in pod
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}  # no fsGroup
    assert "initContainers" not in pod


@pytest.mark.parametrize("where", ["arguments", "settings"])
def test_uid_and_fs_gid_give_security_contexts_and_the_owner_init_container(where):
    """Issue 11: a Job writes into the user's folder as the same user as their server."""
    if where == "arguments":
        obj = job(username="Bob.Smith@example.org", uid=1000, gid=100, fs_gid=100)
    else:
        obj = job(
            username="Bob.Smith@example.org", settings=platform(uid=1000, gid=100, fs_gid=100)
        )
    validate(obj)
    pod = obj["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "fsGroup": 100,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["containers"][0]["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 100,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (owner,) = pod["initContainers"]
    assert owner["name"] == "llm-storage-owner"
    assert owner["image"] == "llmspawner/singleuser:dev"
    assert owner["command"][-2:] == ["/mnt/user-folder", "1000:100"]
    assert owner["volumeMounts"] == [
        {
            "name": "llm-storage",
            "mountPath": "/mnt/user-folder",
            "subPath": "users/bob-smith-example-org---da50e6af",
        }
    ]


def test_the_workload_is_not_modified_by_the_job():
    workload = build_workload(
        username="alice", profile=find_profile(PROFILES, "medium"), settings=PLATFORM, uid=1000
    )
    before = copy.deepcopy(workload)
    obj = build_job(
        name="n", namespace="llm", job_id=1, workload=workload, config_map="n", priority="low"
    )
    obj["spec"]["template"]["spec"]["tolerations"][0]["key"] = "changed"
    obj["spec"]["template"]["spec"]["containers"][0]["env"].clear()
    assert workload == before


def test_priority_classes():
    classes = build_priority_classes()
    assert [(c["metadata"]["name"], c["value"]) for c in classes] == [
        ("llm-high", 1000),
        ("llm-normal", 100),
        ("llm-low", 10),
    ]
    assert classes[0]["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "llm-queue"}
    assert classes[0]["description"] == "llm-queue training jobs of priority high"
    for c in classes:
        validate(c)


def test_profile_image_wins_and_no_deadline_without_max_runtime():
    profile = Profile(slug="custom", display_name="Custom", image="registry/train:1", max_runtime=0)
    obj = job(profile)
    validate(obj)
    assert obj["spec"]["template"]["spec"]["containers"][0]["image"] == "registry/train:1"
    assert "activeDeadlineSeconds" not in obj["spec"]
    assert "resources" not in obj["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("strategy", "limits", "selector"),
    [
        ("mixed", {"nvidia.com/mig-1g.10gb": "1"}, None),
        ("single", {"nvidia.com/gpu": "1"}, {"nvidia.com/mig.config": "all-1g.10gb"}),
    ],
)
def test_mig_profile(strategy, limits, selector):
    profile = Profile(
        slug="mig",
        display_name="MIG",
        gpu=GPU(kind="mig", mig="1g.10gb"),
        cpu_guarantee=0.5,
        tolerations=({"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"},),
    )
    obj = job(profile, settings=platform(mig_strategy=strategy))
    validate(obj)
    pod = obj["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "limits": limits,
        "requests": {"cpu": "500m", **limits},
    }
    assert pod.get("nodeSelector") == selector
    assert pod["tolerations"] == [
        TOLERATION,
        {"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"},
    ]
    # The builder never shares mutable state with its inputs.
    pod["tolerations"][1]["value"] = "changed"
    assert profile.tolerations[0]["value"] == "a"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"priority": "urgent"}, "priority must be one of high, normal, low, not 'urgent'"),
        ({"backoff_limit": -1}, "backoff_limit must be a whole number >= 0, not -1"),
        (
            {"ttl_seconds_after_finished": 1.5},
            "ttl_seconds_after_finished must be a whole number >= 0, not 1.5",
        ),
        (
            {"active_deadline_seconds": -5},
            "active_deadline_seconds must be a whole number >= 0, not -5",
        ),
        (
            {"settings": platform(storage_claim_name="Bad_Claim")},
            "claim_name 'Bad_Claim' is not a valid PVC name",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        job(**kwargs)


def test_a_job_pulls_with_the_platforms_pull_secrets():
    """``LLMPlatform.image_pull_secrets`` (the spawner's, z2jh's singleuser.image.pullSecrets)
    become the Job pod's ``imagePullSecrets``; none: no such field."""
    pulled = job(settings=platform(image_pull_secrets=["regcred", "mirror"]))
    spec = pulled["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    validate(pulled)
    assert "imagePullSecrets" not in job()["spec"]["template"]["spec"]
