"""Interrupted queue jobs on the emulated cluster: an evicted pod (``DisruptionTarget``,
``podFailurePolicy: Ignore``) and a deleted pod (``kubectl delete pod``: no condition, the Job
fails) are not failures: the job runs again in the same output folder, resumes from its
checkpoint, succeeds once, and the log of the interrupted attempt stays readable.

The stand-in ``llamafactory-cli`` (as in ``test_queue_backend``) for output folders named
``*resume*``: the first attempt "saves a checkpoint" (a ``checkpoint-1`` folder in the user's
folder, as LLaMA-Factory's ``save_steps`` would) and waits; a later attempt that finds it says
``resuming from checkpoint-1`` and succeeds.
"""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client

from devcluster.testing import fast_cluster, wait_for
from llmspawner.queue import k8s_objects

from .test_queue_backend import (  # noqa: F401  (fixtures)
    NS,
    api,
    backend,
    config,
    make_queue,
    state_of,
)
from .test_queue_backend import profiles as backend_profiles  # noqa: F401  (a fixture)


@pytest.fixture
def profiles(backend_profiles):  # noqa: F811
    """test_queue_backend's profiles and ``small-mem``: a CPU profile with a 64 MiB limit."""
    folder = backend_profiles.profiles_dir
    with open(f"{folder}/small-mem.yaml", "w") as f:
        f.write(
            "slug: small-mem\ndisplay_name: Small memory\ngpu: none\n"
            "cpu: {guarantee: 0.1}\nmemory: {guarantee: 32M, limit: 64M}\nmax_runtime: 600\n"
        )
    return backend_profiles


RESUMING_TRAIN = """#!/bin/sh
cfg="$2"
d="resume-$LLMSPAWNER_JOB_ID"
case "$(grep '^output_dir:' "$cfg")" in
  *resume*)
    mkdir -p "$d"
    if [ -d "$d/checkpoint-1" ]; then echo "resuming from checkpoint-1"; echo "step 2"; exit 0; fi
    mkdir "$d/checkpoint-1"; echo "step 1, saved checkpoint-1"; exec sleep 60 ;;
  *oom*) echo "step 1"; exec /usr/bin/python3 -c "
import time
blocks = []
for i in range(60):
    blocks.append(bytearray(8 * 2**20))
    time.sleep(0.02)
print('survived')" ;;
  *) echo "step 1"; exit 0 ;;
esac
"""


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
    data = tmp_path_factory.mktemp("queue-disruption")
    async with fast_cluster(data, images={"trainer": str(prefix)}) as c:
        yield c


async def checkpointed_pod(queue, backend, job_id: int) -> dict:  # noqa: F811
    async def saved():
        await queue.run_pass()
        pod = await backend.latest_pod(job_id)
        if not pod or pod["status"].get("phase") != "Running":
            return None
        text = b"".join([c async for c in backend.stream_log(pod["metadata"]["name"])])
        return pod if b"saved checkpoint-1" in text else None

    return await wait_for(saved, timeout=60, interval=0.2)  # a pod starts slowly under load


async def passes_until(queue, job_id: int, predicate, what: str, timeout: float = 30):
    async def reached():
        await queue.run_pass()
        row = queue.get(job_id, user=None)
        return row if predicate(row) else None

    try:
        return await wait_for(reached, timeout=timeout, interval=0.1)
    except TimeoutError:
        row = queue.get(job_id, user=None)
        raise AssertionError(f"{what}: job {job_id} is {row.state} ({row.reason})") from None


async def saved_log(queue, job_id: int, attempt: int) -> str:
    stream = await queue.ops.open_log(job_id, user=None, attempt=attempt)
    return b"".join([c async for c in stream]).decode()


async def test_an_evicted_pod_is_replaced_in_the_same_job_and_resumes(make_queue, backend, api):  # noqa: F811
    queue = make_queue()
    view = await queue.submit(
        user="alice", groups=[], config=config("out/resume"), profile="cpu", priority="normal"
    )
    job_id = view["id"]
    pod = await checkpointed_pod(queue, backend, job_id)
    await queue.run_pass()
    name = pod["metadata"]["name"]
    await client.CoreV1Api(api).create_namespaced_pod_eviction(
        name, NS, {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}
    )
    seen = await passes_until(
        queue, job_id, lambda r: r.interruptions >= 1 or r.state == "succeeded", "counted"
    )
    assert seen.interruptions == 1
    if seen.state != "succeeded":
        shown = queue.view(seen)["reason"]
        assert shown.startswith("interrupted: EvictionByEvictionAPI, requeued (1 of 3)"), shown
    row = await state_of(queue, job_id, "succeeded", "failed")
    assert (row.state, row.interruptions) == ("succeeded", 1), row.reason
    # one Job (the Job controller made the replacement pod), the newest pod resumed
    assert row.k8s_name == k8s_objects.job_name("alice", job_id)
    newest = await backend.latest_pod(job_id)
    text = b"".join([c async for c in backend.stream_log(newest["metadata"]["name"])])
    assert b"resuming from checkpoint-1" in text
    [attempt] = queue.ops.attempts(job_id)
    assert (attempt["pod"], attempt["reason"]) == (name, "EvictionByEvictionAPI")
    assert_saved(await saved_log(queue, job_id, 1))


async def test_a_pod_evicted_and_replaced_between_two_passes_is_counted(make_queue, backend, api):  # noqa: F811
    """No pass runs from the eviction until the replacement pod has resumed and the Job is
    complete; the queue's pod watch (as the service runs it) saw the eviction."""
    queue = make_queue()
    watch = asyncio.create_task(
        backend.watch_changes(lambda: None, on_queue_pod=queue.loop.note_pod)
    )
    try:
        view = await queue.submit(
            user="gina", groups=[], config=config("out/resume"), profile="cpu", priority="normal"
        )
        job_id = view["id"]
        pod = await checkpointed_pod(queue, backend, job_id)
        name = pod["metadata"]["name"]
        await client.CoreV1Api(api).create_namespaced_pod_eviction(
            name, NS, {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}
        )

        async def complete():
            [job] = [
                j
                for j in await backend.list_jobs()
                if j["metadata"]["name"] == k8s_objects.job_name("gina", job_id)
            ]
            pods = [p["metadata"]["name"] for p in await backend.list_job_pods()]
            conditions = (job.get("status") or {}).get("conditions") or []
            done = any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)
            return done and name not in pods

        await wait_for(complete, timeout=30, interval=0.2)
        await queue.run_pass()
        row = queue.get(job_id, user=None)
        assert (row.state, row.interruptions) == ("succeeded", 1), row.reason
        [attempt] = queue.ops.attempts(job_id)
        assert (attempt["pod"], attempt["reason"]) == (name, "EvictionByEvictionAPI")
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


def assert_saved(text: str) -> None:
    """The interrupted attempt's log as the queue saved it, or, when its pod was gone before
    a pass could read it (here the stand-in exits at once on SIGTERM), where the whole output
    of every attempt is (the training wrapper's train.log in the output folder)."""
    assert text.startswith("--- saved log of pod ")
    assert "saved checkpoint-1" in text or "/out/resume/train.log in your folder" in text, text


async def test_a_deleted_pod_requeues_the_job_as_its_next_attempt(make_queue, backend, api):  # noqa: F811
    queue = make_queue()
    view = await queue.submit(
        user="bob", groups=[], config=config("out/resume"), profile="cpu", priority="normal"
    )
    job_id = view["id"]
    pod = await checkpointed_pod(queue, backend, job_id)
    await queue.run_pass()
    first = queue.get(job_id, user=None).k8s_name
    await client.CoreV1Api(api).delete_namespaced_pod(pod["metadata"]["name"], NS)
    row = await passes_until(
        queue,
        job_id,
        lambda r: r.k8s_name != first or r.state in ("failed", "succeeded"),
        "requeued",
    )
    assert row.interruptions == 1, row.reason
    assert row.k8s_name == k8s_objects.job_name("bob", job_id, 2)
    row = await state_of(queue, job_id, "succeeded", "failed")
    assert (row.state, row.attempts) == ("succeeded", 2), row.reason
    names = [j["metadata"]["name"] for j in await backend.list_jobs()]
    assert names == [row.k8s_name]  # the first attempt's Job was deleted
    newest = await backend.latest_pod(job_id)
    text = b"".join([c async for c in backend.stream_log(newest["metadata"]["name"])])
    assert b"resuming from checkpoint-1" in text
    attempts = queue.ops.attempts(job_id)
    assert attempts and attempts[0]["pod"] == pod["metadata"]["name"]
    assert_saved(await saved_log(queue, job_id, 1))


async def test_a_high_job_preempts_the_newest_low_job_which_resumes_later(make_queue, backend):  # noqa: F811
    """medium: 2 slices (one GPU as 2 time-sliced replicas). Two low jobs hold them; a high
    job preempts the one started last; it goes back to the queue and resumes from its
    checkpoint once the high job is done."""
    queue = make_queue(default_limit=5)
    low = []
    for user in ("carol", "dave"):
        view = await queue.submit(
            user=user, groups=[], config=config("out/resume"), profile="medium", priority="low"
        )
        await checkpointed_pod(queue, backend, view["id"])
        low.append(view["id"])
    high = await queue.submit(
        user="erin", groups=[], config=config("out/ok"), profile="medium", priority="high"
    )
    victim = await passes_until(
        queue, low[1], lambda r: r.state == "queued", "preempted", timeout=20
    )
    assert victim.interruption.startswith(
        f"interrupted: preempted by job {high['id']} of priority high, requeued"
    )
    assert queue.get(low[0], user=None).state == "running"  # the older one is kept
    assert any(
        a["reason"] == f"preempted by job {high['id']} of priority high"
        for a in queue.ops.attempts(low[1])
    )
    done = await state_of(queue, high["id"], "succeeded", "failed", timeout=30)
    assert done.state == "succeeded", done.reason
    row = await state_of(queue, low[1], "succeeded", "failed", timeout=30)
    assert (row.state, row.interruptions) == ("succeeded", 0), row.reason
    newest = await backend.latest_pod(low[1])
    text = b"".join([c async for c in backend.stream_log(newest["metadata"]["name"])])
    assert b"resuming from checkpoint-1" in text
    await queue.cancel(low[0], user=None, by="admin")


async def test_out_of_memory_says_so_with_a_hint(make_queue):  # noqa: F811
    queue = make_queue()
    view = await queue.submit(
        user="frank", groups=[], config=config("out/oom"), profile="small-mem", priority="normal"
    )
    row = await state_of(queue, view["id"], "failed", "succeeded", timeout=40)
    assert (row.state, row.interruptions) == ("failed", 0), row.reason
    assert row.reason.startswith(
        "out of memory (OOMKilled): the training needed more memory than the profile's limit"
    ), row.reason
    assert "per_device_train_batch_size" in row.reason and "a larger profile" in row.reason
