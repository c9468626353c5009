"""The devcluster's kubelet runs a pod's processes as its runAsUser/runAsGroup with fsGroup
(issue 12 §2): a file a user's queue Job writes and one their server writes have the same
owner, and neither runs as root.

The server's pod is a real LLMSpawner's manifest and the Job is the queue's ``build_job``,
both from the z2jh ids (uid 1000, fsGid 100, and gid 100 as the image's jovyan has), each
running a short shell command instead of its server/training. The kubelet applies identities
only when it runs as root (as the dev stack and CI do); elsewhere these tests are skipped.
"""

import os
import sys
from types import SimpleNamespace

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config import new_client_from_config
from traitlets.config import Config

from devcluster.testing import fast_cluster, wait_for
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.profiles import find_profile
from llmspawner.queue.k8s_objects import build_config_map, build_job, build_priority_classes
from llmspawner.settings import LLMPlatform
from llmspawner.workload import build_workload

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="the devcluster kubelet applies runAsUser/runAsGroup/fsGroup only when it runs as "
    "root (not root: every container runs as the kubelet's user, so owners cannot differ)",
)

UID, GID, FS_GID = 1000, 100, 100
# What each pod reports: its ids, NoNewPrivs, /dev/shm's mode and group, and whether the
# "image" (this checkout's Python environment) runs as the user.
REPORT = (
    'echo "$0" > "$HOME/$0.txt"; id -u; id -g; id -G; grep NoNewPrivs /proc/self/status; '
    'touch /dev/shm/x && stat -c %a:%g /dev/shm; python -c "import sys; print(sys.prefix)"'
)


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    async with fast_cluster(tmp_path_factory.mktemp("devcluster-identity")) as c:
        yield c


@pytest.fixture(scope="module")
async def api(cluster):
    api_client = await new_client_from_config(config_file=str(cluster.kubeconfig_path))
    async with api_client:
        core = client.CoreV1Api(api_client)
        await core.create_namespaced_persistent_volume_claim(
            "default",
            {
                "metadata": {"name": "llm-storage"},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {}}},
            },
        )
        scheduling = client.SchedulingV1Api(api_client)
        for pc in build_priority_classes():
            await scheduling.create_priority_class(pc)
        yield SimpleNamespace(core=core, batch=client.BatchV1Api(api_client))


def platform() -> LLMPlatform:
    c = Config()
    c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    c.LLMPlatform.image = "python"
    c.LLMPlatform.uid, c.LLMPlatform.gid, c.LLMPlatform.fs_gid = UID, GID, FS_GID
    return LLMPlatform(config=c, env={})


async def server_pod(monkeypatch, cluster) -> dict:
    """alice's server pod as LLMSpawner builds it (z2jh's ids in c.KubeSpawner)."""
    from kubernetes_asyncio.config import kube_config

    from llmspawner.spawner import LLMSpawner

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig_path))
    c = Config()
    c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    c.KubeSpawner.image = "python"
    c.KubeSpawner.uid, c.KubeSpawner.gid, c.KubeSpawner.fs_gid = UID, GID, FS_GID
    c.KubeSpawner.allow_privilege_escalation = True  # z2jh's value cannot loosen it
    c.LLMSpawner.cmd = ["sh", "-c", REPORT, "server"]
    user = SimpleNamespace(name="alice", id=1, url="/user/alice/", groups=[])
    spawner = LLMSpawner(config=c, user=user, _mock=True)
    spawner.user_options = {"profile": "cpu"}
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    async with ApiClient() as serializer:
        pod = serializer.sanitize_for_serialization(pod)
    pod["spec"]["restartPolicy"] = "Never"
    return pod


def job_manifest() -> tuple[dict, dict]:
    settings = platform()
    workload = build_workload(
        username="alice", profile=find_profile(settings.profiles(), "cpu"), settings=settings
    )
    name = "llm-job-alice-1"
    job = build_job(
        name=name,
        namespace="default",
        job_id=1,
        workload=workload,
        config_map=name,
        priority="normal",
        tracking=False,
    )
    job["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", REPORT, "job"]
    cm = build_config_map(
        name=name, namespace="default", job_id=1, username="alice", config={"stage": "sft"}
    )
    return job, cm


async def finished(core, selector: str) -> dict:
    async def check():
        pods = (await core.list_namespaced_pod("default", label_selector=selector)).items
        done = [p for p in pods if p.status.phase in ("Succeeded", "Failed")]
        return done[0] if done else None

    return await wait_for(check, timeout=30, what=f"pod {selector} finished")


async def test_a_job_and_a_server_write_files_as_the_same_user(cluster, api, monkeypatch):
    await api.core.create_namespaced_pod("default", await server_pod(monkeypatch, cluster))
    job, cm = job_manifest()
    await api.core.create_namespaced_config_map("default", cm)
    await api.batch.create_namespaced_job("default", job)

    logs = {}
    for who, selector in (
        ("server", "component=singleuser-server"),
        ("job", "llmspawner.io/job-id=1"),
    ):
        pod = await finished(api.core, selector)
        name = pod.metadata.name
        logs[who] = await api.core.read_namespaced_pod_log(name, "default")
        assert pod.status.phase == "Succeeded", (who, logs[who])

    folder = cluster.data_dir / "pvc" / "default" / "llm-storage" / "users" / "alice"
    # The owner init container gave the user's folder to uid:fsGid.
    st = folder.stat()
    assert (st.st_uid, st.st_gid) == (UID, FS_GID)
    server_file, job_file = (folder / "server.txt").stat(), (folder / "job.txt").stat()
    assert (server_file.st_uid, server_file.st_gid) == (job_file.st_uid, job_file.st_gid)
    assert (job_file.st_uid, job_file.st_gid) == (UID, GID)
    for who in ("server", "job"):
        assert logs[who].splitlines() == [
            str(UID),
            str(GID),
            str(GID),  # groups: runAsGroup, and fsGroup (the same here)
            "NoNewPrivs:\t1",
            f"2777:{FS_GID}",  # /dev/shm: an emptyDir given to the fsGroup
            sys.prefix,  # the "image" runs as the user (its interpreter may be under /root)
        ], who


async def test_identity_rules_of_a_plain_pod(cluster, api):
    """runAsGroup unset: the uid's primary group; supplementalGroups and fsGroup added;
    configMap files given to the fsGroup; runAsNonRoot with runAsUser 0 refused."""
    await api.core.create_namespaced_config_map(
        "default", {"metadata": {"name": "cfg"}, "data": {"k": "v"}}
    )
    pod = {
        "metadata": {"name": "ids", "labels": {"app": "ids"}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"fsGroup": 3000, "supplementalGroups": [4000]},
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["sh", "-c", "id -u; id -G; stat -c %g /cfg/k; cat /cfg/k"],
                    "securityContext": {"runAsUser": 4321},
                    "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}],
                }
            ],
        },
    }
    await api.core.create_namespaced_pod("default", pod)
    done = await finished(api.core, "app=ids")
    log = await api.core.read_namespaced_pod_log("ids", "default")
    assert done.status.phase == "Succeeded", log
    # uid 4321 is in no /etc/passwd: primary group 0, as containerd gives it.
    assert log.splitlines() == ["4321", "0 3000 4000", "3000", "v"]

    root = {
        "metadata": {"name": "root", "labels": {"app": "root"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["true"],
                    "securityContext": {"runAsUser": 0, "runAsNonRoot": True},
                }
            ],
        },
    }
    await api.core.create_namespaced_pod("default", root)

    async def refused():
        p = await api.core.read_namespaced_pod("root", "default")
        statuses = p.status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting if waiting and waiting.reason == "CreateContainerConfigError" else None

    waiting = await wait_for(refused, timeout=15, what="root pod refused")
    assert waiting.message == (
        'container\'s runAsUser breaks non-root policy (pod: "root", container: main)'
    )
    await api.core.delete_namespaced_pod("root", "default", grace_period_seconds=0)


async def test_a_kubelet_that_is_not_root_keeps_its_own_user(cluster, api, monkeypatch):
    """Documented behaviour without root: no identity applied, the kubelet's user runs it."""
    monkeypatch.setattr(cluster.kubelet, "as_root", False)
    pod = {
        "metadata": {"name": "asis", "labels": {"app": "asis"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["id", "-u"],
                    "securityContext": {"runAsUser": 1000},
                }
            ],
        },
    }
    await api.core.create_namespaced_pod("default", pod)
    await finished(api.core, "app=asis")
    log = await api.core.read_namespaced_pod_log("asis", "default")
    assert log.strip() == str(os.geteuid())
