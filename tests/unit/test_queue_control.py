"""The queue's control loop and operations with stand-ins for Kubernetes and MLflow.

Every stand-in method checks that no database session is open while it is awaited (the loop
and the operations read, close the session, await, then write in a new one), and the Jobs
the loop creates are the user's workload (``build_workload``) inside ``build_job``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy.orm import Session, sessionmaker
from traitlets.config import Config

from llmspawner.queue import db as queue_db
from llmspawner.queue.backend import Created, KubeError
from llmspawner.queue.context import QueueContext, QueueSettings
from llmspawner.queue.control import ControlLoop
from llmspawner.queue.models import Job
from llmspawner.queue.operations import QueueError, QueueOperations
from llmspawner.settings import LLMPlatform
from llmspawner.tracking import TrackingUnavailable

CONFIG = (
    "stage: sft\ndo_train: true\nmodel_name_or_path: /storage/models/tiny\n"
    "dataset: demo\ntemplate: default\nfinetuning_type: lora\noutput_dir: out/run\n"
)

OPEN = {"sessions": 0}


class CountingSession(Session):
    def __enter__(self):
        OPEN["sessions"] += 1
        return super().__enter__()

    def __exit__(self, *exc):
        OPEN["sessions"] -= 1
        return super().__exit__(*exc)


def no_session(what: str) -> None:
    assert OPEN["sessions"] == 0, f"a database session is open while awaiting {what}"


class FakeBackend:
    """The backend's interface in memory: Jobs by name, pods by job id."""

    namespace = "llm"

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.pods: dict[int, list[dict]] = {}
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.refuse: KubeError | None = None
        self.capacity = self

    async def snapshot(self):
        no_session("the capacity listing")
        return [], [p for pods in self.pods.values() for p in pods]

    async def list_jobs(self):
        no_session("list_jobs")
        return list(self.jobs.values())

    async def list_job_pods(self):
        no_session("list_job_pods")
        return [p for pods in self.pods.values() for p in pods]

    async def missing_priority_classes(self, names):
        no_session("missing_priority_classes")
        return []

    async def create_job(self, *, config_map, job, owner_reference):
        no_session("create_job")
        if self.refuse is not None:
            raise self.refuse
        name = job["metadata"]["name"]
        existed = name in self.jobs
        if not existed:
            self.jobs[name] = job
            self.created.append(job)
        return Created(job=self.jobs[name], existed=existed)

    async def delete_job(self, name, *, config_map=None):
        no_session("delete_job")
        self.deleted.append(name)
        return self.jobs.pop(name, None) is not None

    async def latest_pod(self, job_id):
        no_session("latest_pod")
        pods = self.pods.get(job_id)
        return pods[-1] if pods else None

    async def stream_log(self, name, *, follow=False, tail_lines=None):
        no_session("stream_log")
        yield b"step 1\n"


class FakeTracker:
    def __init__(self):
        self.runs: dict[int, str] = {}
        self.asked: list[tuple[str, int]] = []
        self.ended: list[tuple[str, int, str]] = []
        #: (job id, status, ms): the runs of an interrupted attempt ended (started before ms)
        self.ended_before: list[tuple[int, str, int]] = []
        self.experiments_known = True  # made and granted (False: mlflow_work must first)

    async def experiment_id(self, name, owner=None):
        no_session("MLflow")
        return "17"

    async def find_job_run(self, experiment, job_id, owner=None):
        no_session("MLflow")
        self.asked.append((experiment, job_id))
        return self.runs.get(job_id)

    def known_experiment_id(self, name, owner=None):
        return "17" if self.experiments_known else None

    async def end_job_runs(self, experiment, job_id, status, owner=None, started_before_ms=None):
        no_session("MLflow")
        self.ended.append((experiment, job_id, status))
        if started_before_ms is not None:
            self.ended_before.append((job_id, status, started_before_ms))
        return []

    def run_url(self, run_id):
        return f"https://mlflow.example.org/#/runs/{run_id}"


def running_pod(job_id: int) -> dict:
    return {
        "metadata": {
            "name": f"pod-{job_id}",
            "labels": {"llmspawner.io/job-id": str(job_id)},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}],
        },
    }


@pytest.fixture
def platform(tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "cpu.yaml").write_text("slug: cpu\ndisplay_name: CPU\ndefault: true\n")
    values = {
        "profiles_dir": str(folder),
        "image": "singleuser:1",
        "uid": 1000,
        "gid": 100,
        "fs_gid": 100,
        "mlflow_tracking_uri": "http://mlflow:5000",
    }
    return LLMPlatform(config=Config({"LLMPlatform": values}), env={})


@pytest.fixture
def queue(tmp_path, platform):
    engine = queue_db.connect(f"sqlite:///{tmp_path / 'q.sqlite'}").kw["bind"]
    sessions = sessionmaker(engine, class_=CountingSession, expire_on_commit=False)
    backend, tracker = FakeBackend(), FakeTracker()
    ctx = QueueContext(
        sessions,
        backend,
        platform,
        QueueSettings(default_limit=5, interval=0.1),
        tracker=tracker,
        clock=lambda: 1_767_225_600.0,  # 2026-01-01T00:00:00Z
    )
    ops, loop = QueueOperations(ctx), ControlLoop(ctx)
    ops.backend, ops.tracker, ops.loop = backend, tracker, loop
    run_pass = loop.run_pass

    async def pass_then_mlflow():
        """A pass, then the MLflow work it started in the background (never awaited by the
        service's passes: tests/unit/test_queue_mlflow_hang.py)."""
        await run_pass()
        if loop.mlflow_task is not None:
            await loop.mlflow_task

    loop.run_pass = pass_then_mlflow
    return ops


async def submit(ops, user="alice"):
    return await ops.submit(user=user, groups=[], config=CONFIG, profile="cpu", priority="normal")


async def test_a_job_is_admitted_runs_and_finds_its_run_with_no_session_across_awaits(queue):
    view = await submit(queue)
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    assert (row.state, row.attempts, row.mlflow_experiment_id) == ("admitted", 1, "17")
    [job] = queue.backend.created
    assert job["metadata"]["name"] == row.k8s_name == f"llm-job-alice-{view['id']}"

    queue.backend.pods[view["id"]] = [running_pod(view["id"])]
    queue.tracker.runs[view["id"]] = "run-abc"
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    assert (row.state, row.mlflow_run_id) == ("running", "run-abc")
    assert queue.tracker.asked == [("alice-experiments", view["id"])]  # by job id, not name
    shown = queue.view(row)
    assert shown["mlflow_run_url"] == "https://mlflow.example.org/#/runs/run-abc"
    assert shown["namespace"] == "llm"

    stream = await queue.open_log(view["id"], user="alice")
    assert [c async for c in stream] == [b"step 1\n"]
    cancelled = await queue.cancel(view["id"], user="alice", by="alice")
    assert cancelled["state"] == "cancelled"
    assert queue.backend.deleted == [row.k8s_name]


async def test_the_job_pod_is_the_users_workload(queue):
    """uid/gid/fs_gid, owner init container, storage, MLflow env and tag, as the server's."""
    view = await submit(queue)
    await queue.loop.run_pass()
    [job] = queue.backend.created
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"] == {"fsGroup": 100, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 100,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert [c["name"] for c in pod.get("initContainers", [])], "no owner init container"
    assert container["image"] == "singleuser:1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_EXPERIMENT_NAME"] == "alice-experiments"
    assert json.loads(env["MLFLOW_TAGS"]) == {"llmspawner.job_id": str(view["id"])}
    assert env["HOME"] == container["workingDir"] == "/storage/users/alice"


async def test_the_queue_image_wins_over_the_platforms(queue):
    queue.ctx.settings = QueueSettings(image="trainer:2")
    await submit(queue)
    await queue.loop.run_pass()
    [job] = queue.backend.created
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "trainer:2"
    # The owner init container runs from the same image, not the servers' one.
    assert [c["image"] for c in pod["initContainers"]] == ["trainer:2"]


async def test_an_admitted_job_without_its_job_is_created_once(queue):
    """The row is committed as admitted before the Job exists; a restart creates it once."""
    view = await submit(queue)
    with queue.ctx.sessions() as db:
        db.get(Job, view["id"]).state = "admitted"
        db.commit()
    await queue.loop.startup()
    await queue.loop.run_pass()
    assert len(queue.backend.created) == 1
    assert queue.get(view["id"], user=None).attempts == 1


async def test_a_refused_job_fails_a_transient_refusal_is_retried(queue):
    view = await submit(queue)
    queue.backend.refuse = KubeError(503, "ServiceUnavailable", "etcd is slow")
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    assert row.state == "admitted"
    assert queue.view(row)["reason"] == (
        "waiting for the cluster's API: Kubernetes API 503 ServiceUnavailable: etcd is slow, "
        "retrying"
    )
    queue.backend.refuse = KubeError(422, "Invalid", "spec.template is bad")
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    assert row.state == "failed"
    assert row.reason == "ConfigError: Kubernetes refused the Job (422): spec.template is bad"


async def test_a_job_of_a_removed_profile_fails(queue):
    view = await submit(queue)
    with queue.ctx.sessions() as db:
        db.get(Job, view["id"]).profile = "gone"
        db.commit()
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    assert (row.state, row.reason) == ("failed", "ConfigError: profile 'gone' no longer exists")


async def test_cancel_with_the_cluster_unreachable_is_503_and_changes_nothing(queue):
    view = await submit(queue)
    await queue.loop.run_pass()

    async def unreachable(name, *, config_map=None):
        raise KubeError(0, "Unreachable", "no route")

    queue.backend.delete_job = unreachable
    with pytest.raises(QueueError) as e:
        await queue.cancel(view["id"], user=None, by="admin")
    assert e.value.status == 503
    assert queue.get(view["id"], user=None).state == "admitted"  # nothing changed


async def test_the_plan_in_the_worker_process_is_the_plan_on_the_loop(tmp_path):
    """Admission read-and-decide in the planning worker (a SQLite file) gives the same
    decision as on the event loop, unknown profiles included."""
    import datetime
    import functools

    from llmspawner.queue import planning
    from llmspawner.queue.models import UserLimit

    url = f"sqlite:///{tmp_path / 'plan.sqlite'}"
    sessions = queue_db.connect(url)
    t0 = datetime.datetime(2026, 1, 1)
    with sessions() as db:
        for i in range(60):
            db.add(
                Job(
                    user=f"u{i % 7}",
                    profile=("cpu", "medium", "large", "gone")[i % 4],
                    priority=("high", "normal", "low")[i % 3],
                    state="running" if i % 11 == 0 else "queued",
                    submitted_at=t0 + datetime.timedelta(seconds=i),
                )
            )
        db.add(UserLimit(user="u3", max_running=0))
        db.commit()
    plan = functools.partial(
        planning.plan_admission,
        free={"cpu": None, "medium": 1, "large": 0},
        bound=[12],
        default_limit=2,
        labels={"medium": "½ GPU", "large": "1 GPU"},
        totals={"medium": 2, "large": 2},
    )
    here = plan(sessions)
    try:
        there = await planning.plan_in_worker(queue_db.shared_url(sessions.kw["bind"]), plan)
    finally:
        await asyncio.to_thread(planning.shutdown)
    assert there == here
    decision, unknown = here
    assert decision.admit and decision.positions and unknown
    assert {p for _, p in unknown} == {"gone"}
    assert queue_db.shared_url(queue_db.connect("sqlite://").kw["bind"]) is None


def test_a_packed_decision_unpacks_equal_and_in_order():
    """The worker sends the decision as arrays (planning.pack): the same admits, positions and
    reasons come back, in the same order (preemption scans the reasons in that order)."""
    from llmspawner.queue import admission, planning

    positions = {job_id: n for n, job_id in enumerate(range(5000, 0, -3), 1)}
    texts = ["waiting for a free ½ GPU", "waiting: user limit", "profile gone"]
    reasons = {job_id: texts[job_id % 3] for job_id in positions}
    decision = admission.Decision(admit=(7, 3), positions=positions, reasons=reasons)
    back = planning.unpack(planning.pack(decision))
    assert back == decision
    assert list(back.positions.items()) == list(positions.items())
    assert list(back.reasons.items()) == list(reasons.items())
    empty = admission.Decision(admit=(), positions={}, reasons={})
    assert planning.unpack(planning.pack(empty)) == empty


class DownMLflow(FakeTracker):
    """MLflow down: making an experiment fails until ``up`` is set."""

    def __init__(self):
        super().__init__()
        self.experiments_known = False
        self.up = False
        self.tries = 0

    async def experiment_id(self, name, owner=None):
        no_session("MLflow")
        self.tries += 1
        if not self.up:
            raise TrackingUnavailable("MLflow at http://mlflow:5000 is unreachable: refused")
        self.experiments_known = True
        return "17"


async def test_a_job_waiting_for_mlflow_says_so_and_gets_its_job_once_mlflow_is_back(queue):
    tracker = queue.ctx.tracker = DownMLflow()
    view = await submit(queue)
    for _ in range(3):  # each pass: the MLflow work it starts fails
        await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    assert (row.state, queue.backend.created, tracker.tries) == ("admitted", [], 3)
    assert queue.view(row)["reason"] == (
        "waiting for MLflow: MLflow at http://mlflow:5000 is unreachable: refused, retrying"
    )
    tracker.up = True
    for _ in range(3):
        await queue.loop.run_pass()
    [job] = queue.backend.created  # once, never twice
    row = queue.get(view["id"], user=None)
    assert job["metadata"]["name"] == row.k8s_name
    assert (row.state, row.attempts, row.mlflow_experiment_id) == ("admitted", 1, "17")
    assert not queue.view(row)["reason"].startswith("waiting for MLflow")
