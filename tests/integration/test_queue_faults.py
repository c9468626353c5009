"""The queue against an API server that fails: ``devcluster.faults.FaultProxy`` in front of
the emulated cluster answers 503 or drops the connection (before the API server acted, or
after it did with the answer lost) on Job create, Job delete and the pod list, during a
submit, a requeue and a cancel.

The queue runs as the service runs it: its own loop (:meth:`ControlLoop.run`: a failed pass is
logged and retried) and its watch (with ``on_queue_pod``), through the proxy; nobody steps in.
Checked with a client that bypasses the proxy: no job lost or run twice (exactly one Job and
one pod per attempt), no pod left holding a GPU slice, and the reason the user sees while
the API fails.

The stand-in training is ``test_queue_disruption``'s (``out/resume`` saves a checkpoint and
waits on its first attempt, resumes and succeeds on a later one; ``out/ok`` succeeds).
"""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.config import new_client_from_config

from devcluster.faults import FaultProxy
from devcluster.kubeconfig import write_kubeconfig
from devcluster.testing import fast_cluster, wait_for
from llmspawner import capacity as capacity_mod
from llmspawner.queue import db as queue_db
from llmspawner.queue import k8s_objects
from llmspawner.queue.backend import KubeBackend
from llmspawner.queue.context import QueueContext, QueueSettings
from llmspawner.queue.operations import QueueError

from .test_queue_backend import (  # noqa: F401  (fixtures)
    NS,
    Queue,
    api,
    backend,
    config,
    profiles,
)
from .test_queue_disruption import RESUMING_TRAIN

JOBS = rf"/apis/batch/v1/namespaces/{NS}/jobs"
PODS = rf"/api/v1/namespaces/{NS}/pods$"


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("trainer-image")
    (prefix / "bin").mkdir()
    script = prefix / "bin" / "llamafactory-cli"
    script.write_text(RESUMING_TRAIN)
    script.chmod(0o755)
    python = prefix / "bin" / "python3"
    python.write_text('#!/bin/sh\nshift 2\nexec "$(dirname "$0")/llamafactory-cli" "$@"\n')
    python.chmod(0o755)
    async with fast_cluster(
        tmp_path_factory.mktemp("queue-faults"), images={"trainer": str(prefix)}
    ) as c:
        yield c


@pytest.fixture
async def proxy(cluster):
    async with FaultProxy(cluster.url) as p:
        yield p


@pytest.fixture
async def queue(proxy, profiles, tmp_path, backend):  # noqa: F811
    """The queue's loop and watch through the proxy (``backend`` is the direct one, for the
    checks and the clean-up)."""
    path = write_kubeconfig(tmp_path / "proxied-kubeconfig", proxy.url)
    api_client = await new_client_from_config(config_file=str(path))
    faulty = KubeBackend(NS, api_client=api_client, retry_timeout=1, capacity_ttl=0)
    ctx = QueueContext(
        queue_db.connect(f"sqlite:///{tmp_path / 'queue.sqlite'}"),
        faulty,
        profiles,
        QueueSettings(interval=0.2, plan_off_loop=False, default_limit=5),
    )
    q = Queue(ctx)
    tasks = [
        asyncio.create_task(q.loop.run()),
        asyncio.create_task(faulty.watch_changes(ctx.wake, on_queue_pod=q.loop.note_pod)),
    ]
    yield q
    proxy.clear()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await api_client.close()


async def until(queue, job_id: int, predicate, what: str, timeout: float = 30):
    """The job's row once ``predicate(row)`` holds (the loop runs by itself meanwhile)."""

    def reached():
        row = queue.get(job_id, user=None)
        return row if predicate(row) else None

    try:
        return await wait_for(reached, timeout=timeout, interval=0.1)
    except TimeoutError:
        row = queue.get(job_id, user=None)
        raise AssertionError(f"{what}: job {job_id} is {row.state} ({row.reason})") from None


async def jobs_and_pods(api, job_id: int) -> tuple[list[str], list[str]]:  # noqa: F811
    """The names of the Jobs and pods of queue job ``job_id``, read past the proxy."""
    selector = f"{k8s_objects.LABEL_JOB_ID}={job_id}"
    jobs = await client.BatchV1Api(api).list_namespaced_job(NS, label_selector=selector)
    pods = await client.CoreV1Api(api).list_namespaced_pod(NS, label_selector=selector)
    return sorted(j.metadata.name for j in jobs.items), sorted(
        p.metadata.labels.get("batch.kubernetes.io/job-name", "") for p in pods.items
    )


async def free_slices(backend, profiles, slug: str) -> tuple[int, int]:  # noqa: F811
    nodes, pods = await backend.capacity.snapshot()
    caps = capacity_mod.capacities(profiles.profiles(), profiles.gpu_cluster, nodes, pods)
    return caps[slug].free, caps[slug].total


async def test_a_submit_through_failing_job_creates_runs_once(queue, proxy, api):  # noqa: F811
    proxy.fail("POST", JOBS + "$", status=503, times=None)
    view = await queue.submit(
        user="alice", groups=[], config=config("out/ok"), profile="cpu", priority="normal"
    )
    row = await until(
        queue, view["id"], lambda r: r.reason.startswith("waiting for the cluster's API"), "503"
    )
    assert row.state == "admitted"
    assert queue.view(row)["reason"].startswith(
        "waiting for the cluster's API: Kubernetes API 503 ServiceUnavailable"
    )
    assert queue.view(row)["reason"].endswith(", retrying")
    # the API comes back, but the first create's answer is lost after the Job was made
    proxy.clear()
    lost = proxy.drop("POST", JOBS + "$", times=1, after_upstream=True)
    row = await until(queue, view["id"], lambda r: r.state in ("succeeded", "failed"), "done")
    assert (row.state, row.attempts, row.interruptions) == ("succeeded", 1, 0), row.reason
    assert lost.hits == 1
    name = k8s_objects.job_name("alice", view["id"])
    assert await jobs_and_pods(api, view["id"]) == ([name], [name])  # one Job, one pod


async def test_a_requeue_through_failing_deletes_and_pod_lists_runs_each_attempt_once(
    queue,
    proxy,
    api,  # noqa: F811
    backend,  # noqa: F811
    profiles,  # noqa: F811
):
    """medium: a GPU profile (2 slices), so a pod left over would hold a slice."""
    view = await queue.submit(
        user="bob", groups=[], config=config("out/resume"), profile="medium", priority="normal"
    )
    job_id = view["id"]
    first = k8s_objects.job_name("bob", job_id)

    async def checkpointed():
        pod = await backend.latest_pod(job_id)
        if not pod or pod["status"].get("phase") != "Running":
            return None
        text = b"".join([c async for c in backend.stream_log(pod["metadata"]["name"])])
        return pod if b"saved checkpoint-1" in text else None

    pod = await wait_for(checkpointed, timeout=30, interval=0.2)
    # a person deletes the pod while the Job's delete fails (the requeue's, then every
    # pass's retry) and a few pod lists are dropped (retried within the call)
    deletes = proxy.fail("DELETE", JOBS + "/", status=503, times=None)
    proxy.drop("GET", PODS, query_regex=r"labelSelector", times=3)
    await client.CoreV1Api(api).delete_namespaced_pod(pod["metadata"]["name"], NS)
    row = await until(queue, job_id, lambda r: r.k8s_name != first, "requeued")
    assert row.interruptions == 1
    assert queue.view(row)["reason"].startswith(
        "interrupted: its pod was deleted, requeued (1 of 3)"
    )
    # now every pod list fails too: whole passes fail (logged, retried by the loop)
    lists = proxy.drop("GET", PODS, query_regex=r"labelSelector", times=None)
    hits = deletes.hits
    await wait_for(lambda: deletes.hits > hits and lists.hits >= 2, timeout=15)
    jobs, pods = await jobs_and_pods(api, job_id)
    assert jobs == [first]  # the old Job cannot go, so the next attempt is not made yet
    row = queue.get(job_id, user=None)
    if row.state == "admitted":  # admitted before the pod lists failed: says what it waits for
        assert queue.view(row)["reason"] == (
            f"interrupted: its pod was deleted, requeued (1 of 3); waiting for the Job {first} "
            "of its earlier attempt to be deleted"
        )
    proxy.clear()
    row = await until(queue, job_id, lambda r: r.state in ("succeeded", "failed"), "done")
    assert (row.state, row.attempts, row.interruptions) == ("succeeded", 2, 1), row.reason
    second = k8s_objects.job_name("bob", job_id, 2)
    assert row.k8s_name == second
    jobs, pods = await jobs_and_pods(api, job_id)
    assert (jobs, pods) == ([second], [second])  # the first attempt's Job and pod are gone
    newest = await backend.latest_pod(job_id)
    text = b"".join([c async for c in backend.stream_log(newest["metadata"]["name"])])
    assert b"resuming from checkpoint-1" in text  # resumed, not run again from scratch
    free, total = await free_slices(backend, profiles, "medium")
    assert free == total  # a finished pod holds no slice


async def test_a_cancel_through_a_failing_delete_leaves_no_pod(
    queue,
    proxy,
    api,  # noqa: F811
    backend,  # noqa: F811
    profiles,  # noqa: F811
):
    view = await queue.submit(
        user="carol", groups=[], config=config("out/resume"), profile="medium", priority="normal"
    )
    job_id = view["id"]
    await until(queue, job_id, lambda r: r.state == "running", "running")
    proxy.fail("DELETE", JOBS + "/", status=503, times=None)
    with pytest.raises(QueueError) as e:
        await queue.cancel(job_id, user="carol", by="carol")
    assert e.value.status == 503
    assert e.value.message.startswith(
        "cannot delete the Kubernetes Job: Service Unavailable"
    ) or e.value.message.startswith("cannot delete the Kubernetes Job"), e.value.message
    assert queue.get(job_id, user=None).state == "running"  # nothing changed; safe to retry
    # the retry's delete reaches the API server, its answer is lost: cancelled all the same
    proxy.clear()
    proxy.drop("DELETE", JOBS + "/", times=1, after_upstream=True)
    cancelled = await queue.cancel(job_id, user="carol", by="carol")
    assert (cancelled["state"], cancelled["reason"]) == ("cancelled", "cancelled by carol")

    async def gone():
        return await jobs_and_pods(api, job_id) == ([], [])

    await wait_for(gone, timeout=20)
    free, total = await free_slices(backend, profiles, "medium")
    assert free == total
    listed = proxy.hits("GET", JOBS + "$")
    await wait_for(lambda: proxy.hits("GET", JOBS + "$") >= listed + 3, timeout=10)
    assert await jobs_and_pods(api, job_id) == ([], [])  # three passes on: never made again
    assert queue.get(job_id, user=None).state == "cancelled"
