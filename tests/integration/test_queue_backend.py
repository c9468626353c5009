"""The queue's Kubernetes backend, its operations and its control loop on the emulated cluster.

Jobs run a stand-in ``llamafactory-cli`` (a shell script in a fake "image" prefix) whose
behaviour follows the config's ``output_dir``: ``out/ok`` prints three steps and succeeds,
``out/fail`` exits 3, ``out/sleep`` sleeps. The real training runs in the e2e tests.
"""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.config import new_client_from_config
from traitlets.config import Config

from devcluster.testing import fast_cluster, wait_for
from llmspawner.queue import db as queue_db
from llmspawner.queue import k8s_objects
from llmspawner.queue.backend import MANAGED_SELECTOR, KubeBackend, KubeError
from llmspawner.queue.context import QueueContext, QueueSettings
from llmspawner.queue.control import ControlLoop
from llmspawner.queue.models import Job
from llmspawner.queue.operations import QueueOperations
from llmspawner.settings import LLMPlatform

NS = "default"

FAKE_TRAIN = """#!/bin/sh
# Stand-in for llamafactory-cli: "train <config>", behaviour from the config's output_dir.
cfg="$2"
echo "fake llamafactory-cli $1 $cfg in $(pwd)"
case "$(grep '^output_dir:' "$cfg")" in
  *fail*) echo "step 1"; echo "boom" >&2; exit 3 ;;
  *sleep*) echo "step 1"; exec sleep 60 ;;
  *) for i in 1 2 3; do echo "step $i"; done; exit 0 ;;
esac
"""

PROFILES = {
    "cpu.yaml": "slug: cpu\ndisplay_name: CPU\ndefault: true\ngpu: none\n"
    "cpu: {guarantee: 0.1}\nmax_runtime: 600\n",
    "medium.yaml": "slug: medium\ndisplay_name: Half\ngpu: {fraction: 1/2}\n"
    "cpu: {guarantee: 0.1}\nmax_runtime: 600\n",
    "quick.yaml": "slug: quick\ndisplay_name: Quick\ngpu: none\ncpu: {guarantee: 0.1}\n"
    "max_runtime: 1\n",
}


def config(output_dir: str) -> str:
    return (
        "stage: sft\ndo_train: true\nmodel_name_or_path: /storage/models/tiny\n"
        "dataset: demo\ntemplate: default\nfinetuning_type: lora\n"
        f"output_dir: {output_dir}\n"
    )


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("trainer-image")
    (prefix / "bin").mkdir()
    script = prefix / "bin" / "llamafactory-cli"
    script.write_text(FAKE_TRAIN)
    script.chmod(0o755)
    # The Job runs "python3 -m llmspawner.training train <config>" (k8s_objects.TRAIN_COMMAND);
    # this image's python3 hands it to the stand-in llamafactory-cli.
    python = prefix / "bin" / "python3"
    python.write_text('#!/bin/sh\nshift 2\nexec "$(dirname "$0")/llamafactory-cli" "$@"\n')
    python.chmod(0o755)
    data = tmp_path_factory.mktemp("queue-devcluster")
    async with fast_cluster(data, images={"trainer": str(prefix)}) as c:
        yield c


@pytest.fixture(scope="module")
async def api(cluster):
    api_client = await new_client_from_config(config_file=str(cluster.kubeconfig_path))
    async with api_client:
        await client.CoreV1Api(api_client).create_namespaced_persistent_volume_claim(
            NS,
            {
                "metadata": {"name": "llm-storage"},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        scheduling = client.SchedulingV1Api(api_client)
        for name, value in (("llm-high", 1000), ("llm-normal", 100), ("llm-low", 10)):
            await scheduling.create_priority_class({"metadata": {"name": name}, "value": value})
        yield api_client


@pytest.fixture
async def backend(api):
    b = KubeBackend(NS, api_client=api, retry_timeout=2, capacity_ttl=0)
    yield b
    # Leave the namespace empty for the next test.
    for job in await b.list_jobs():
        await b.delete_job(job["metadata"]["name"], config_map=job["metadata"]["name"])

    async def no_pods():
        return not await b.list_job_pods()

    await wait_for(no_pods, timeout=15)


def shell_job(name: str, script: str, job_id: int = 1) -> tuple[dict, dict]:
    labels = {
        "app.kubernetes.io/managed-by": "llm-queue",
        k8s_objects.LABEL_JOB_ID: str(job_id),
    }
    cm = {"metadata": {"name": name, "labels": labels}, "data": {"x": "y"}}
    job = {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {"name": "train", "image": "python", "command": ["sh", "-c", script]}
                    ],
                },
            },
        },
    }
    return cm, job


async def test_create_is_idempotent_and_the_job_owns_its_config_map(backend, api):
    cm, job = shell_job("idem", "sleep 30")
    first = await backend.create_job(
        config_map=cm, job=job, owner_reference=k8s_objects.owner_reference
    )
    again = await backend.create_job(
        config_map=cm, job=job, owner_reference=k8s_objects.owner_reference
    )
    assert (first.existed, again.existed) == (False, True)
    assert first.job["metadata"]["uid"] == again.job["metadata"]["uid"]
    assert [j["metadata"]["name"] for j in await backend.list_jobs()] == ["idem"]
    stored = await client.CoreV1Api(api).read_namespaced_config_map("idem", NS)
    [owner] = stored.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("Job", "idem", first.job["metadata"]["uid"])


async def test_refused_job_leaves_no_config_map(backend, api):
    cm, job = shell_job("refused", "true")
    job["spec"]["template"]["spec"]["restartPolicy"] = "Always"  # invalid for a Job
    with pytest.raises(KubeError) as e:
        await backend.create_job(
            config_map=cm, job=job, owner_reference=k8s_objects.owner_reference
        )
    assert e.value.status == 422
    maps = await client.CoreV1Api(api).list_namespaced_config_map(
        NS, label_selector=MANAGED_SELECTOR
    )
    assert [m.metadata.name for m in maps.items] == []


async def test_delete_cascades_to_pods_and_config_map(backend, api):
    cm, job = shell_job("victim", "sleep 30")
    await backend.create_job(config_map=cm, job=job, owner_reference=k8s_objects.owner_reference)

    async def running():
        pods = await backend.list_job_pods()
        return pods and pods[0]["status"].get("phase") == "Running"

    await wait_for(running, timeout=15)
    assert await backend.delete_job("victim") is True

    async def all_gone():
        maps = await client.CoreV1Api(api).list_namespaced_config_map(
            NS, label_selector=MANAGED_SELECTOR
        )
        return not await backend.list_job_pods() and not maps.items

    await wait_for(all_gone, timeout=15)
    assert await backend.delete_job("victim") is False


async def test_logs_whole_and_followed(backend):
    cm, job = shell_job("talker", "for i in 1 2 3; do echo line $i; sleep 0.3; done", job_id=7)
    await backend.create_job(config_map=cm, job=job, owner_reference=k8s_objects.owner_reference)

    async def running_pod():
        pod = await backend.latest_pod(7)
        return pod if pod and pod["status"].get("phase") == "Running" else None

    pod = await wait_for(running_pod, timeout=15)
    chunks = [c async for c in backend.stream_log(pod["metadata"]["name"], follow=True)]
    assert b"".join(chunks) == b"line 1\nline 2\nline 3\n"
    whole = [c async for c in backend.stream_log(pod["metadata"]["name"], tail_lines=1)]
    assert b"".join(whole) == b"line 3\n"
    assert await backend.latest_pod(8) is None


async def test_watch_wakes_on_changes(backend):
    events = []
    task = asyncio.create_task(backend.watch_changes(lambda: events.append(1), timeout=5))
    try:
        await asyncio.sleep(0.3)
        before = len(events)
        cm, job = shell_job("watched", "true", job_id=9)
        await backend.create_job(
            config_map=cm, job=job, owner_reference=k8s_objects.owner_reference
        )
        await wait_for(lambda: len(events) > before, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_watch_wakes_when_a_servers_gpu_slice_frees_and_drops_the_capacity_cache(
    backend, api
):
    """A pod the queue does not own (a user's server) that holds a GPU slice: its deletion
    wakes the loop and makes the next capacity snapshot list again."""
    core = client.CoreV1Api(api)
    events = []
    backend.capacity._cache.ttl = 3600  # only an invalidation lists again
    task = asyncio.create_task(backend.watch_changes(lambda: events.append(1), timeout=5))
    server = {
        "metadata": {"name": "jupyter-alice", "labels": {"component": "singleuser-server"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [
                {
                    "name": "notebook",
                    "image": "python",
                    "command": ["sleep", "60"],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }
    try:
        await backend.capacity.snapshot()
        await core.create_namespaced_pod(NS, server)

        async def bound():
            pod = await core.read_namespaced_pod("jupyter-alice", NS)
            return pod.spec.node_name

        await wait_for(bound, timeout=15)

        async def listed():
            _nodes, pods = await backend.capacity.snapshot()
            return "jupyter-alice" in [p["metadata"]["name"] for p in pods]

        # The cache lives an hour: only the watch's invalidation (the pod bound to a node
        # now holds a slice) lists again; the watch may see the binding after the read above.
        await wait_for(listed, timeout=10)
        before = len(events)
        await core.delete_namespaced_pod("jupyter-alice", NS, grace_period_seconds=0)
        await wait_for(lambda: len(events) > before, timeout=10)
        nodes, pods = await backend.capacity.snapshot()
        assert "jupyter-alice" not in [p["metadata"]["name"] for p in pods]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await core.delete_namespaced_pod("jupyter-alice", NS, grace_period_seconds=0)
        except client.ApiException:
            pass


# -- the operations and the control loop --------------------------------------------------


class Queue:
    """The service's operations and control loop over one context, wired as the service does."""

    def __init__(self, ctx: QueueContext):
        self.ctx, self.ops, self.loop = ctx, QueueOperations(ctx), ControlLoop(ctx)
        self.sessions = ctx.sessions
        self.submit, self.get, self.view = self.ops.submit, self.ops.get, self.ops.view
        self.cancel, self.set_limit = self.ops.cancel, self.ops.set_limit
        self.run_pass, self.startup = self.loop.run_pass, self.loop.startup


@pytest.fixture
def profiles(tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    for name, text in PROFILES.items():
        (folder / name).write_text(text)
    return LLMPlatform(
        config=Config({"LLMPlatform": {"profiles_dir": str(folder), "image": "trainer"}}), env={}
    )


@pytest.fixture
def make_queue(backend, profiles, tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"

    def make(**settings):
        sessions = queue_db.connect(url)
        options = {"interval": 0.2, **settings}
        return Queue(QueueContext(sessions, backend, profiles, QueueSettings(**options)))

    return make


async def state_of(queue: Queue, job_id: int, *states: str, timeout: float = 20) -> Job:
    async def reached():
        await queue.run_pass()
        row = queue.get(job_id, user=None)
        return row if row.state in states else None

    try:
        return await wait_for(reached, timeout=timeout, interval=0.2)
    except TimeoutError:
        row = queue.get(job_id, user=None)
        raise AssertionError(f"job {job_id} is {row.state} ({row.reason}), not {states}") from None


async def test_a_job_runs_to_success(make_queue, backend):
    queue = make_queue()
    view = await queue.submit(
        user="alice", groups=[], config=config("out/ok"), profile="cpu", priority="normal"
    )
    assert (view["state"], view["k8s_job"]) == ("queued", None)
    row = await state_of(queue, view["id"], "succeeded")
    assert row.k8s_name == k8s_objects.job_name("alice", view["id"])
    assert row.admitted_at and row.started_at and row.finished_at
    assert row.submitted_at <= row.admitted_at <= row.finished_at
    pod = await backend.latest_pod(view["id"])
    log_text = b"".join([c async for c in backend.stream_log(pod["metadata"]["name"])])
    assert b"step 3" in log_text
    assert b"/storage/users/alice" in log_text  # working directory: the user's folder


@pytest.mark.parametrize(
    ("output_dir", "profile", "code"),
    [("out/fail", "cpu", "BackoffLimitExceeded"), ("out/sleep", "quick", "DeadlineExceeded")],
)
async def test_failures_name_their_reason(make_queue, output_dir, profile, code):
    queue = make_queue()
    view = await queue.submit(
        user="alice", groups=[], config=config(output_dir), profile=profile, priority="normal"
    )
    row = await state_of(queue, view["id"], "failed")
    assert row.reason.startswith(f"{code}: "), row.reason
    if code == "BackoffLimitExceeded":
        assert "exited with code 3" in row.reason


async def test_full_profile_waits_with_position_and_starts_when_a_slice_frees(make_queue):
    queue = make_queue(default_limit=5)
    # medium: 2 slices in the emulated cluster (one GPU as 2 time-sliced replicas)
    ids = []
    for _ in range(3):
        view = await queue.submit(
            user="alice",
            groups=[],
            config=config("out/sleep"),
            profile="medium",
            priority="normal",
        )
        ids.append(view["id"])
    await state_of(queue, ids[0], "running")
    await state_of(queue, ids[1], "running")
    await queue.run_pass()
    third = queue.view(queue.get(ids[2], user=None))
    assert (third["state"], third["position"]) == ("queued", 1)
    assert "medium" in third["reason"]
    await queue.cancel(ids[0], user="alice", by="alice")
    await state_of(queue, ids[2], "admitted", "running")
    for job_id in ids[1:]:
        await queue.cancel(job_id, user=None, by="admin")


async def test_per_user_limit(make_queue):
    queue = make_queue(default_limit=1)
    first = await queue.submit(
        user="bob", groups=[], config=config("out/sleep"), profile="cpu", priority="normal"
    )
    second = await queue.submit(
        user="bob", groups=[], config=config("out/ok"), profile="cpu", priority="normal"
    )
    await state_of(queue, first["id"], "running")
    waiting = queue.view(queue.get(second["id"], user=None))
    assert waiting["state"] == "queued"
    assert "limit is 1" in waiting["reason"]
    queue.set_limit("bob", 2)
    await state_of(queue, second["id"], "succeeded")
    await queue.cancel(first["id"], user="bob", by="bob")


async def test_restart_creates_a_missing_job_once_and_loses_nothing(make_queue, backend):
    queue = make_queue()
    view = await queue.submit(
        user="carol", groups=[], config=config("out/sleep"), profile="cpu", priority="normal"
    )
    # A crash after the row was committed as admitted, before the Job was created.
    with queue.sessions() as db:
        row = db.get(Job, view["id"])
        row.state = "admitted"
        db.commit()
    restarted = make_queue()
    orphans = await restarted.startup()
    assert orphans == []
    names = [j["metadata"]["name"] for j in await backend.list_jobs()]
    assert names == [k8s_objects.job_name("carol", view["id"])]
    await state_of(restarted, view["id"], "running")
    # Another restart while it runs: still one Job, same uid, still running.
    uid = (await backend.list_jobs())[0]["metadata"]["uid"]
    again = make_queue()
    await again.startup()
    jobs = await backend.list_jobs()
    assert [j["metadata"]["uid"] for j in jobs] == [uid]
    assert again.get(view["id"], user=None).state == "running"
    assert again.get(view["id"], user=None).attempts == 1
    await again.cancel(view["id"], user=None, by="admin")


async def test_orphan_jobs_are_reported_not_deleted(make_queue, backend):
    cm, job = shell_job("llm-job-stranger-99", "sleep 30", job_id=99)
    await backend.create_job(config_map=cm, job=job, owner_reference=k8s_objects.owner_reference)
    queue = make_queue()
    assert await queue.startup() == ["llm-job-stranger-99"]
    assert [j["metadata"]["name"] for j in await backend.list_jobs()] == ["llm-job-stranger-99"]


async def test_cancel_running_deletes_job_and_pods(make_queue, backend):
    queue = make_queue()
    view = await queue.submit(
        user="dave", groups=[], config=config("out/sleep"), profile="cpu", priority="normal"
    )
    await state_of(queue, view["id"], "running")
    cancelled = await queue.cancel(view["id"], user="dave", by="dave")
    assert (cancelled["state"], cancelled["reason"]) == ("cancelled", "cancelled by dave")

    async def gone():
        return not await backend.list_jobs() and not await backend.list_job_pods()

    await wait_for(gone, timeout=15)
    await queue.run_pass()
    assert queue.get(view["id"], user=None).state == "cancelled"


async def test_kueue_mode_creates_suspended_jobs(make_queue, backend):
    queue = make_queue(kueue_queue="team-a")
    view = await queue.submit(
        user="erin", groups=[], config=config("out/ok"), profile="cpu", priority="normal"
    )
    await queue.run_pass()
    await queue.run_pass()
    [job] = await backend.list_jobs()
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    row = queue.get(view["id"], user=None)
    assert (row.state, row.reason) == ("queued", "waiting for Kueue to admit it")
    # Kueue admits it by resuming the Job.
    batch = client.BatchV1Api(await backend.api_client())
    await batch.patch_namespaced_job(job["metadata"]["name"], NS, {"spec": {"suspend": False}})
    await state_of(queue, view["id"], "succeeded")


async def test_a_profile_added_while_the_queue_runs_is_used_within_seconds(make_queue, profiles):
    """The queue reads the profiles through the platform's cache on every request and pass."""
    from pathlib import Path

    from llmspawner.queue.operations import QueueError

    queue = make_queue()
    late = Path(profiles.profiles_dir) / "late.yaml"
    with pytest.raises(QueueError, match="unknown profile 'late'"):
        await queue.submit(
            user="frank", groups=[], config=config("out/ok"), profile="late", priority="low"
        )
    late.write_text("slug: late\ndisplay_name: Late\ngpu: none\ncpu: {guarantee: 0.1}\n")

    async def submitted():
        try:
            return await queue.submit(
                user="frank", groups=[], config=config("out/ok"), profile="late", priority="low"
            )
        except QueueError:
            return None

    view = await wait_for(submitted, timeout=15, interval=0.2)
    row = await state_of(queue, view["id"], "succeeded")
    assert row.profile == "late"
