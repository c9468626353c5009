"""A queue Job's MLflow token on the emulated cluster: a per-job Secret, created before the
Job, owned by it, read by the pod as ``MLFLOW_TRACKING_TOKEN``, gone with the Job; a refused
Job leaves no Secret. (The token itself is minted by the hub: tests/integration/test_mlflow_auth.py
checks what such a token may do in MLflow.)"""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client

from devcluster.testing import wait_for
from llmspawner.mlflow_hub import build_token_secret
from llmspawner.queue import k8s_objects
from llmspawner.queue.backend import KubeBackend, KubeError

NS = "default"


@pytest.fixture
async def backend(api):
    b = KubeBackend(NS, api_client=api, retry_timeout=2, capacity_ttl=0)
    yield b
    for job in await b.list_jobs():
        await b.delete_job(job["metadata"]["name"], config_map=job["metadata"]["name"])


def job_with_token(name: str, script: str) -> tuple[dict, dict, dict]:
    labels = {"app.kubernetes.io/managed-by": "llm-queue", k8s_objects.LABEL_JOB_ID: "1"}
    cm = {"metadata": {"name": name, "labels": labels}, "data": {"x": "y"}}
    secret = build_token_secret(
        name=name, namespace=NS, job_id=1, username="alice", token="alices-job-token"
    )
    env = [
        {
            "name": "MLFLOW_TRACKING_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}},
        }
    ]
    container = {"name": "train", "image": "python", "command": ["sh", "-c", script], "env": env}
    job = {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container],
                },
            },
        },
    }
    return cm, job, secret


async def test_the_job_owns_its_token_secret_and_its_pod_reads_it(backend, api):
    cm, job, secret = job_with_token("tok", 'echo "token=$MLFLOW_TRACKING_TOKEN"; sleep 30')
    created = await backend.create_job(
        config_map=cm, job=job, owner_reference=k8s_objects.owner_reference, secret=secret
    )
    core = client.CoreV1Api(api)
    stored = await core.read_namespaced_secret("tok", NS)
    [owner] = stored.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("Job", "tok", created.job["metadata"]["uid"])
    assert stored.metadata.annotations == {"hub.jupyter.org/username": "alice"}

    async def printed():
        pod = await backend.latest_pod(1)
        if not pod or pod["status"].get("phase") != "Running":
            return None
        chunks = [c async for c in backend.stream_log(pod["metadata"]["name"])]
        return b"".join(chunks) or None

    assert await wait_for(printed, timeout=20) == b"token=alices-job-token\n"
    # Again (a restart of the queue): the Secret is replaced, the Job found.
    again = await backend.create_job(
        config_map=cm, job=job, owner_reference=k8s_objects.owner_reference, secret=secret
    )
    assert again.existed is True
    assert await backend.delete_job("tok") is True

    async def secret_gone():
        secrets = await core.list_namespaced_secret(NS)
        return "tok" not in [s.metadata.name for s in secrets.items]

    await wait_for(secret_gone, timeout=20)


async def test_a_refused_job_leaves_no_token_secret(backend, api):
    cm, job, secret = job_with_token("refused-tok", "true")
    job["spec"]["template"]["spec"]["restartPolicy"] = "Always"  # invalid for a Job
    with pytest.raises(KubeError) as e:
        await backend.create_job(
            config_map=cm, job=job, owner_reference=k8s_objects.owner_reference, secret=secret
        )
    assert e.value.status == 422
    secrets = await client.CoreV1Api(api).list_namespaced_secret(NS)
    assert "refused-tok" not in [s.metadata.name for s in secrets.items]
