"""The devcluster's Job controller, driven through kubernetes_asyncio's BatchV1Api."""

import json
import re

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


# -- podFailurePolicy and disruptions ------------------------------------------------------

IGNORE_DISRUPTION = {
    "action": "Ignore",
    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
}


@pytest.fixture
async def namespace(api, request):
    # as conftest's, but always a valid RFC 1123 label (parametrized names carry "[...]")
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    await client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    yield name
    await client.CoreV1Api(api).delete_namespace(name)


def once_job(name, state_dir, first, **spec):
    """A Job whose first pod runs ``first`` (after leaving a mark in ``state_dir``), and
    whose later pods succeed at once."""
    script = f"if [ -e /state/{name} ]; then exit 0; fi; touch /state/{name}; {first}"
    manifest = job_manifest(name, script, **spec)
    pod = manifest["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "state", "hostPath": {"path": str(state_dir)}}]
    pod["containers"][0]["volumeMounts"] = [{"name": "state", "mountPath": "/state"}]
    return manifest


async def first_pod_running(core, namespace, name, state_dir):
    async def check():
        pods = await core.list_namespaced_pod(namespace, label_selector=f"job-name={name}")
        running = [p for p in pods.items if p.status.phase == "Running"]
        return running[0] if running and (state_dir / name).exists() else None

    return await wait_for(check, timeout=20, what=f"job {name}'s first pod running")


async def evict(core, namespace, pod_name):
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod_name}}
    await core.create_namespaced_pod_eviction(pod_name, namespace, body)


async def test_policy_ignores_an_eviction(api, namespace, tmp_path):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    policy = {"rules": [IGNORE_DISRUPTION]}
    manifest = once_job("evicted", tmp_path, "exec sleep 60", backoffLimit=0)
    manifest["spec"]["podFailurePolicy"] = policy
    await batch.create_namespaced_job(namespace, manifest)
    first = await first_pod_running(core, namespace, "evicted", tmp_path)
    await evict(core, namespace, first.metadata.name)
    job = await finished(batch, namespace, "evicted")
    # the evicted pod did not count (backoffLimit 0): a replacement ran and succeeded
    assert ("Complete", "True", "CompletionsReached") in conditions(job)
    assert (job.status.succeeded, job.status.failed) == (1, None)
    pods = await core.list_namespaced_pod(namespace, label_selector="job-name=evicted")
    assert [p.metadata.name for p in pods.items] != [first.metadata.name]


async def test_without_policy_an_eviction_is_a_failure(api, namespace, tmp_path):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    manifest = once_job("plain", tmp_path, "exec sleep 60", backoffLimit=0)
    await batch.create_namespaced_job(namespace, manifest)
    first = await first_pod_running(core, namespace, "plain", tmp_path)
    await evict(core, namespace, first.metadata.name)
    job = await finished(batch, namespace, "plain")
    assert conditions(job) == {
        ("FailureTarget", "True", "BackoffLimitExceeded"),
        ("Failed", "True", "BackoffLimitExceeded"),
    }
    assert job.status.failed == 1  # counted although the pod object is gone


async def test_policy_fail_job_on_an_exit_code(api, namespace):
    batch = client.BatchV1Api(api)
    manifest = job_manifest("fatal", "exit 42", backoffLimit=6)
    manifest["spec"]["podFailurePolicy"] = {
        "rules": [
            IGNORE_DISRUPTION,
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "train", "operator": "In", "values": [42]},
            },
        ]
    }
    await batch.create_namespaced_job(namespace, manifest)
    job = await finished(batch, namespace, "fatal")
    assert conditions(job) == {
        ("FailureTarget", "True", "PodFailurePolicy"),
        ("Failed", "True", "PodFailurePolicy"),
    }
    message = next(c.message for c in job.status.conditions if c.type == "Failed")
    pod = message.split(" for pod ")[1].split(" ")[0]
    assert message == (
        f"Container train for pod {pod} failed with exit code 42 matching FailJob rule at index 1"
    )
    assert pod.startswith(f"{namespace}/fatal-")
    assert job.status.failed == 1  # not retried up to the backoffLimit


async def test_policy_ignore_and_count_exit_codes(api, namespace, tmp_path):
    batch = client.BatchV1Api(api)
    rules = [
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [3]}},
    ]
    ignored = once_job("ignored", tmp_path, "exit 3", backoffLimit=0)
    ignored["spec"]["podFailurePolicy"] = {"rules": rules}
    counted = once_job("counted", tmp_path, "exit 4", backoffLimit=0)
    counted["spec"]["podFailurePolicy"] = {"rules": rules}
    await batch.create_namespaced_job(namespace, ignored)
    await batch.create_namespaced_job(namespace, counted)
    job = await finished(batch, namespace, "ignored")
    assert ("Complete", "True", "CompletionsReached") in conditions(job)
    assert job.status.failed is None
    job = await finished(batch, namespace, "counted")
    assert ("Failed", "True", "BackoffLimitExceeded") in conditions(job)
    assert job.status.failed == 1


@pytest.mark.parametrize(
    ("change", "field", "detail"),
    [
        (
            {"restartPolicy": "OnFailure"},
            "spec.template.spec.restartPolicy",
            (
                'Invalid value: "OnFailure": only "Never" is supported when podFailurePolicy '
                "is specified"
            ),
        ),
        (
            {"rule": {**IGNORE_DISRUPTION, "action": "Retry"}},
            "spec.podFailurePolicy.rules[0].action",
            'Invalid value: "Retry": supported values: "Count", "FailIndex", "FailJob", "Ignore"',
        ),
        (
            {"rule": {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0]}}},
            "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
            "Invalid value: 0: must not be 0 for the In operator",
        ),
    ],
)
async def test_bad_policy_is_refused_422(api, namespace, change, field, detail):
    batch = client.BatchV1Api(api)
    manifest = job_manifest("bad", "true")
    manifest["spec"]["podFailurePolicy"] = {"rules": [change.get("rule", IGNORE_DISRUPTION)]}
    if "restartPolicy" in change:
        manifest["spec"]["template"]["spec"]["restartPolicy"] = change["restartPolicy"]
    with pytest.raises(ApiException) as err:
        await batch.create_namespaced_job(namespace, manifest)
    body = json.loads(err.value.body)
    assert (err.value.status, body["reason"]) == (422, "Invalid")
    assert body["message"] == f'Job.batch "bad" is invalid: {field}: {detail}'
    assert body["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": detail, "field": field}
    ]
