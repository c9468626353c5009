"""The devcluster's Job controller, driven through kubernetes_asyncio's BatchV1Api."""

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from devcluster.testing import wait_for


def job_manifest(name, script, **spec):
    container = {"name": "train", "image": "python", "command": ["sh", "-c", script]}
    return {
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "queue"}},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container],
                },
            },
            **spec,
        },
    }


def conditions(job):
    return {(c.type, c.status, c.reason) for c in job.status.conditions or []}


async def finished(batch, namespace, name):
    async def check():
        job = await batch.read_namespaced_job(name, namespace)
        types = {c.type for c in job.status.conditions or [] if c.status == "True"}
        return job if types & {"Complete", "Failed"} else None

    return await wait_for(check, timeout=15)


async def test_job_success_creates_labelled_owned_pod(api, namespace):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    created = await batch.create_namespaced_job(namespace, job_manifest("ok", "echo done"))
    job = await finished(batch, namespace, "ok")
    assert conditions(job) == {
        ("SuccessCriteriaMet", "True", "CompletionsReached"),
        ("Complete", "True", "CompletionsReached"),
    }
    assert (job.status.succeeded, job.status.failed, job.status.active) == (1, None, None)
    assert job.status.start_time is not None and job.status.completion_time is not None
    [pod] = (await core.list_namespaced_pod(namespace, label_selector="job-name=ok")).items
    assert pod.metadata.name.startswith("ok-") and len(pod.metadata.name) == len("ok-") + 5
    assert pod.metadata.labels == {
        "app": "queue",
        "batch.kubernetes.io/controller-uid": created.metadata.uid,
        "batch.kubernetes.io/job-name": "ok",
        "controller-uid": created.metadata.uid,
        "job-name": "ok",
    }
    [owner] = pod.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "Job",
        "ok",
        created.metadata.uid,
        True,
    )
    assert pod.status.phase == "Succeeded"
    assert await core.read_namespaced_pod_log(pod.metadata.name, namespace) == "done\n"


async def test_backoff_limit(api, namespace):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    await batch.create_namespaced_job(namespace, job_manifest("bad", "exit 2", backoffLimit=1))
    job = await finished(batch, namespace, "bad")
    assert conditions(job) == {
        ("FailureTarget", "True", "BackoffLimitExceeded"),
        ("Failed", "True", "BackoffLimitExceeded"),
    }
    assert job.status.failed == 2
    pods = (await core.list_namespaced_pod(namespace, label_selector="job-name=bad")).items
    assert sorted(p.status.phase for p in pods) == ["Failed", "Failed"]
    messages = [c.message for c in job.status.conditions if c.type == "Failed"]
    assert messages == ["Job has reached the specified backoff limit"]


async def test_active_deadline(api, namespace):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    await batch.create_namespaced_job(
        namespace, job_manifest("slow", "sleep 60", activeDeadlineSeconds=1)
    )
    job = await finished(batch, namespace, "slow")
    assert conditions(job) == {
        ("FailureTarget", "True", "DeadlineExceeded"),
        ("Failed", "True", "DeadlineExceeded"),
    }

    async def no_pods():
        pods = await core.list_namespaced_pod(namespace, label_selector="job-name=slow")
        return not pods.items

    await wait_for(no_pods)


async def test_suspend_and_resume(api, namespace):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    await batch.create_namespaced_job(namespace, job_manifest("held", "echo ran", suspend=True))

    async def suspended():
        job = await batch.read_namespaced_job("held", namespace)
        return job if ("Suspended", "True", "JobSuspended") in conditions(job) else None

    await wait_for(suspended)
    assert (await core.list_namespaced_pod(namespace)).items == []
    await batch.patch_namespaced_job("held", namespace, {"spec": {"suspend": False}})
    job = await finished(batch, namespace, "held")
    assert ("Suspended", "False", "JobResumed") in conditions(job)
    assert ("Complete", "True", "CompletionsReached") in conditions(job)
    assert job.status.succeeded == 1


async def test_delete_with_background_propagation_cascades(api, namespace):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    job = await batch.create_namespaced_job(namespace, job_manifest("long", "sleep 60"))
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "long", "uid": job.metadata.uid}
    await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "long-config", "ownerReferences": [owner]}}
    )

    async def running():
        pods = await core.list_namespaced_pod(namespace, label_selector="job-name=long")
        return [p for p in pods.items if p.status.phase == "Running"]

    await wait_for(running)
    await batch.delete_namespaced_job("long", namespace, propagation_policy="Background")

    async def all_gone():
        pods = await core.list_namespaced_pod(namespace)
        cms = await core.list_namespaced_config_map(namespace)
        return not pods.items and not cms.items

    await wait_for(all_gone)
    with pytest.raises(ApiException) as missing:
        await batch.read_namespaced_job("long", namespace)
    assert missing.value.status == 404


async def test_ttl_after_finished_deletes_the_job(api, namespace):
    batch = client.BatchV1Api(api)
    await batch.create_namespaced_job(
        namespace, job_manifest("brief", "true", ttlSecondsAfterFinished=0)
    )

    async def deleted():
        jobs = await batch.list_namespaced_job(namespace)
        return not jobs.items

    await wait_for(deleted)
