"""MLflow never breaks the queue: against a real socket that accepts connections and never
answers, a pass and a cancel complete while the MLflow request is still in flight (it runs in
the background task, outside the lock), a timed-out request is logged in one line and retried
only after ``retry_after``; and the runs of ended jobs get their final status
(``tracking.end_job_runs``, against a small in-process MLflow REST stand-in).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading

import pytest
from sqlalchemy.orm import sessionmaker
from tornado import web

from llmspawner import tracking
from llmspawner.queue import db as queue_db
from llmspawner.queue.context import QueueContext, QueueSettings
from llmspawner.queue.control import ControlLoop
from llmspawner.queue.operations import QueueOperations
from llmspawner.tracking import Tracker

from .test_queue_control import CONFIG, FakeBackend, platform  # noqa: F401  (a fixture)


class Silent:
    """A TCP server that accepts every connection and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


@pytest.fixture
def silent():
    server = Silent()
    yield server
    server.close()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_queue(tmp_path, platform, tracker):  # noqa: F811
    sessions = sessionmaker(
        queue_db.connect(f"sqlite:///{tmp_path / 'q.sqlite'}").kw["bind"], expire_on_commit=False
    )
    ctx = QueueContext(
        sessions,
        FakeBackend(),
        platform,
        QueueSettings(default_limit=5, interval=0.1, plan_off_loop=False),
        tracker=tracker,
        clock=lambda: 1_767_225_600.0,
    )
    return QueueOperations(ctx), ControlLoop(ctx)


async def until(predicate, what: str, rounds: int = 2000):
    """Yield to the event loop until ``predicate()``; a hang detector, not a timing assert."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_a_hung_mlflow_never_holds_up_a_pass_or_a_cancel(tmp_path, platform, silent):  # noqa: F811
    tracker = Tracker(f"http://127.0.0.1:{silent.port}", timeout=120.0)
    ops, loop = make_queue(tmp_path, platform, tracker)
    view = await ops.submit(
        user="alice", groups=[], config=CONFIG, profile="cpu", priority="normal"
    )
    await loop.run_pass()  # admits, never waits for the experiment (the pass returns)
    assert ops.get(view["id"], user=None).state == "admitted"
    # ... but makes no Job until the experiment is alice's: its pod's runs/create would 403
    assert ops.ctx.backend.created == []
    task = loop.mlflow_task
    await until(lambda: silent.accepted, "MLflow asked")
    await loop.run_pass()  # a pass while MLflow hangs: no second task, no wait
    assert loop.mlflow_task is task and not task.done()
    cancelled = await ops.cancel(view["id"], user="alice", by="alice")
    assert cancelled["state"] == "cancelled"
    assert not task.done()  # the cancel did not wait for MLflow either
    assert not ops.ctx.lock.locked()
    task.cancel()


async def test_a_timed_out_mlflow_is_one_log_line_and_retried_after_retry_after(
    tmp_path,
    platform,  # noqa: F811
    silent,
    caplog,
):
    clock = Clock()
    tracker = Tracker(f"http://127.0.0.1:{silent.port}", timeout=0.2, retry_after=30.0, clock=clock)
    ops, loop = make_queue(tmp_path, platform, tracker)
    await ops.submit(user="alice", groups=[], config=CONFIG, profile="cpu", priority="normal")
    with caplog.at_level(logging.WARNING, logger="llmspawner.queue.control"):
        await loop.run_pass()
        await loop.mlflow_task  # ends by itself, raising nothing
    assert loop.mlflow_task.exception() is None
    warnings = [r for r in caplog.records if r.name == "llmspawner.queue.control"]
    assert warnings and all(r.exc_info is None for r in warnings)
    assert "unreachable" in warnings[0].getMessage()
    asked = len(silent.accepted)
    await loop.run_pass()
    await loop.mlflow_task
    assert len(silent.accepted) == asked  # not asked again within retry_after
    clock.now += 31
    await loop.run_pass()
    await loop.mlflow_task
    await until(lambda: len(silent.accepted) > asked, "MLflow asked again")


class FakeMLflow(web.RequestHandler):
    """``runs/search`` and ``runs/update`` of MLflow's REST API, in memory; the auth app's
    ``users/create`` and ``users/permissions/*`` (the experiment's owner is granted MANAGE)."""

    runs: dict[str, dict] = {}
    updates: list[dict] = []
    grants: list[dict] = []

    def post(self, path):
        body = json.loads(self.request.body)
        if path in ("users/create", "users/permissions/grant"):
            if path.endswith("grant"):
                self.grants.append(body)
            self.finish({})
        elif path == "runs/search":
            job = body["filter"].split("'")[1]
            running_only = "attributes.status = 'RUNNING'" in body["filter"]
            found = [
                {"info": {"run_id": rid, "status": r["status"]}}
                for rid, r in self.runs.items()
                if r["job"] == job and (r["status"] == "RUNNING" or not running_only)
            ]
            self.finish({"runs": found})
        elif path == "runs/update":
            self.updates.append(body)
            self.runs[body["run_id"]]["status"] = body["status"]
            self.finish({"run_info": {}})
        else:
            self.set_status(404)
            self.finish({"error_code": "ENDPOINT_NOT_FOUND"})

    def get(self, path):
        if path.startswith("users/permissions/get"):
            self.set_status(404)
            self.finish({"error_code": "RESOURCE_DOES_NOT_EXIST"})
            return
        assert path.startswith("experiments/get-by-name")
        self.finish(
            {"experiment": {"experiment_id": "5", "artifact_location": "mlflow-artifacts:/5"}}
        )


@pytest.fixture
async def mlflow_server():
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    FakeMLflow.runs, FakeMLflow.updates, FakeMLflow.grants = {}, [], []
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/api/[23].0/mlflow/(.*)", FakeMLflow)]))
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    server.stop()


async def test_end_job_runs_ends_only_the_running_runs_of_the_job(mlflow_server):
    FakeMLflow.runs = {
        "a": {"job": "7", "status": "RUNNING"},  # attempt 1, killed: never ended itself
        "b": {"job": "7", "status": "FAILED"},
        "c": {"job": "8", "status": "RUNNING"},  # another job
    }
    ended = await tracking.end_job_runs(mlflow_server, "5", 7, "KILLED", headers={}, now_ms=42)
    assert ended == ["a"]
    assert FakeMLflow.updates == [{"run_id": "a", "status": "KILLED", "end_time": 42}]
    assert [FakeMLflow.runs[r]["status"] for r in "abc"] == ["KILLED", "FAILED", "RUNNING"]
    assert await tracking.end_job_runs(mlflow_server, "5", 7, "KILLED", headers={}) == []
    with pytest.raises(ValueError, match="FINISHED, FAILED, KILLED"):
        await tracking.end_job_runs(mlflow_server, "5", 7, "RUNNING", headers={})


@pytest.mark.parametrize(
    ("state", "status"), [("cancelled", "KILLED"), ("failed", "FAILED"), ("succeeded", "FINISHED")]
)
async def test_the_runs_of_an_ended_job_get_its_final_status(
    tmp_path,
    platform,  # noqa: F811
    mlflow_server,
    state,
    status,
):
    tracker = Tracker(mlflow_server, timeout=5.0)
    ops, loop = make_queue(tmp_path, platform, tracker)
    view = await ops.submit(
        user="alice", groups=[], config=CONFIG, profile="cpu", priority="normal"
    )
    job_id = view["id"]
    FakeMLflow.runs = {"r1": {"job": str(job_id), "status": "RUNNING"}}
    with ops.ctx.sessions() as db:
        from llmspawner.queue.models import Job

        row = db.get(Job, job_id)
        row.state, row.started_at = state, row.submitted_at
        row.finished_at = row.submitted_at
        db.commit()
    await loop.run_pass()
    await loop.mlflow_task
    assert FakeMLflow.runs["r1"]["status"] == status
    await loop.run_pass()
    await loop.mlflow_task
    assert len(FakeMLflow.updates) == 1  # once
    # the experiment was made alice's (a service restarted after a crash between an
    # experiment's create and its grant would otherwise never grant it)
    assert [g["username"] for g in FakeMLflow.grants] == ["alice"]


class RecordingMLflow:
    """A stand-in for MLflow's REST API (tornado's ``fetch`` signature): the experiment exists
    (made by a queue service killed before its grant); every call is recorded."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    async def fetch(self, url, *, method, body=None, **_):
        path = url.split("?")[0].rsplit("/mlflow/", 1)[1]
        self.calls.append((method, path))

        class Resp:
            code = 200
            error = None

        resp = Resp()
        if path == "experiments/get-by-name":
            resp.body = json.dumps(
                {"experiment": {"experiment_id": "7", "artifact_location": "mlflow-artifacts:/7"}}
            ).encode()
        elif path == "users/permissions/get":
            resp.code, resp.body = (
                404,
                json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST"}).encode(),
            )
        else:
            resp.body = b"{}"
        return resp


async def test_an_experiment_found_without_its_owner_is_granted_at_the_owners_next_call():
    """A queue service killed between an experiment's create and its grant left it without
    its owner's MANAGE (the user's runs/create then answers 403); after the restart, the first
    look-up was a run search (no owner), which must not make the grant be skipped for good."""
    mlflow = RecordingMLflow()
    tracker = Tracker("http://mlflow/services/mlflow", http_client=mlflow)
    assert await tracker.find_job_run("alice-experiments", 3) is None  # no owner: no grant
    assert ("POST", "users/permissions/grant") not in mlflow.calls
    assert tracker.known_experiment_id("alice-experiments") == "7"
    assert tracker.known_experiment_id("alice-experiments", owner="alice") is None
    await tracker.find_job_run("alice-experiments", 3, owner="alice")
    assert ("POST", "users/permissions/grant") in mlflow.calls
    assert tracker.known_experiment_id("alice-experiments", owner="alice") == "7"
    granted = len(mlflow.calls)
    await tracker.end_job_runs("alice-experiments", 3, "FINISHED", owner="alice")
    assert ("POST", "users/permissions/grant") not in mlflow.calls[granted:]  # once
