"""Interrupted queue jobs: disrupted and deleted pods, deleted Jobs, the requeue cap, saved logs
of every attempt, and priority preemption (``llmspawner.queue.disruption`` and the control
loop), with the stand-in backend of ``test_queue_control`` (pods shaped as the API server
returns them: the Job controller's ``batch.kubernetes.io/job-name`` label, the
``DisruptionTarget`` condition, ``deletionTimestamp``).
"""

from __future__ import annotations

import json
import types

import pytest

from llmspawner.queue import control as control_mod
from llmspawner.queue.disruption import (
    Running,
    Waiter,
    capped_sentence,
    capped_waiters,
    choose_preemptions,
)
from llmspawner.queue.operations import QueueError

from .test_queue_control import CONFIG, platform  # noqa: F401  (a fixture)
from .test_queue_control import queue as control_queue  # noqa: F401  (a fixture)


@pytest.fixture
def queue(control_queue):  # noqa: F811
    """The control tests' queue, planning on the event loop (no worker process to start)."""
    s = control_queue.ctx.settings
    control_queue.ctx.settings = s.__class__(**{**s.__dict__, "plan_off_loop": False})
    return control_queue


def pod(job_id: int, job: str, name: str, *, phase="Running", condition=None, deleting=False):
    p = {
        "metadata": {
            "name": name,
            "labels": {
                "llmspawner.io/job-id": str(job_id),
                "batch.kubernetes.io/job-name": job,
                "llmspawner.io/profile": "cpu",
            },
            "creationTimestamp": f"2026-01-01T00:00:0{len(name) % 10}Z",
        },
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": phase,
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {"state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}
                if phase == "Running"
                else {"state": {"terminated": {"exitCode": 143, "reason": "Error"}}}
            ],
        },
    }
    if condition:
        p["status"]["conditions"].append(
            {"type": "DisruptionTarget", "status": "True", "reason": condition}
        )
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return p


def failed(job: dict) -> None:
    job["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    }


async def started(queue, user="alice", priority="normal"):
    view = await queue.submit(user=user, groups=[], config=CONFIG, profile="cpu", priority=priority)
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    queue.backend.pods[row.id] = [pod(row.id, row.k8s_name, f"{row.k8s_name}-aaaaa")]
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    assert row.state == "running"
    return row


async def test_a_disrupted_pod_is_counted_once_its_log_saved_and_the_job_goes_on(queue):
    row = await started(queue)
    name = f"{row.k8s_name}-aaaaa"
    queue.backend.pods[row.id] = [
        pod(row.id, row.k8s_name, name, condition="EvictionByEvictionAPI")
    ]
    await queue.loop.run_pass()
    await queue.loop.run_pass()  # seen twice, counted once
    row = queue.get(row.id, user=None)
    assert (row.state, row.interruptions) == ("running", 1)
    view = queue.view(row, with_config=True)
    assert view["reason"].startswith("interrupted: EvictionByEvictionAPI, requeued (1 of 3)")
    assert view["interruptions"] == 1
    [attempt] = view["attempts"]
    assert (attempt["attempt"], attempt["pod"], attempt["reason"], attempt["log_saved"]) == (
        1,
        name,
        "EvictionByEvictionAPI",
        True,
    )
    # the Job controller replaced the pod (podFailurePolicy Ignore): same Job, no new one
    queue.backend.pods[row.id] = [pod(row.id, row.k8s_name, f"{row.k8s_name}-bbbbbb")]
    await queue.loop.run_pass()
    assert [j["metadata"]["name"] for j in queue.backend.created] == [row.k8s_name]
    stream = await queue.open_log(row.id, user="alice", attempt=1)
    text = b"".join([c async for c in stream]).decode()
    assert f"saved log of pod {name}" in text and "step 1" in text
    with pytest.raises(QueueError) as e:
        await queue.open_log(row.id, user="alice", attempt=2)
    assert (e.value.status, e.value.field) == (404, "attempt")


async def test_past_max_requeues_the_job_fails_saying_so_and_its_job_is_deleted(queue):
    queue.ctx.settings = queue.ctx.settings.__class__(
        **{**queue.ctx.settings.__dict__, "max_requeues": 1}
    )
    row = await started(queue)
    for n, suffix in enumerate(("aaaaa", "bbbbbb"), 1):
        queue.backend.pods[row.id] = [
            pod(
                row.id, row.k8s_name, f"{row.k8s_name}-{suffix}", condition="DeletionByTaintManager"
            )
        ]
        await queue.loop.run_pass()
        current = queue.get(row.id, user=None)
        assert current.interruptions == n
    assert current.state == "failed"
    assert current.reason.startswith(
        "Interrupted: interrupted 2 times, the last time because DeletionByTaintManager; "
        "the limit is 1 requeues (LLMQueue.max_requeues)"
    )
    assert row.k8s_name in queue.backend.deleted


async def test_a_deleted_pod_requeues_the_job_as_a_new_job_in_the_same_output_dir(queue):
    row = await started(queue)
    first = row.k8s_name
    # kubectl delete pod: seen while it terminates (log saved), then the Job fails, pod gone
    queue.backend.pods[row.id] = [
        pod(row.id, first, f"{first}-aaaaa", phase="Failed", deleting=True)
    ]
    await queue.loop.run_pass()
    assert queue.get(row.id, user=None).interruptions == 0  # not counted yet: not known why
    queue.backend.pods[row.id] = []
    failed(queue.backend.jobs[first])
    await queue.loop.run_pass()
    row = queue.get(row.id, user=None)
    assert first in queue.backend.deleted
    assert row.interruptions == 1
    view = queue.view(row, with_config=True)
    assert view["reason"].startswith("interrupted: its pod was deleted, requeued (1 of 3)")
    # admitted again in the same pass or the next one, as the next attempt's Job
    await queue.loop.run_pass()
    row = queue.get(row.id, user=None)
    assert (row.state, row.k8s_name, row.attempts) == ("admitted", f"{first}-a2", 2)
    old, new = queue.backend.created
    assert new["metadata"]["name"] == f"{first}-a2"
    configs = [
        json.loads(json.dumps(j["spec"]["template"]["spec"]["volumes"][-1])) for j in (old, new)
    ]
    assert [c["configMap"]["name"] for c in configs] == [first, f"{first}-a2"]
    assert json.loads(row.config)["output_dir"].endswith("/out/run")  # fixed across attempts
    assert "overwrite_output_dir" not in json.loads(row.config)
    # the log of the deleted pod stays readable, the newest saved one when no pod is left
    stream = await queue.open_log(row.id, user="alice")
    assert b"step 1" in b"".join([c async for c in stream])


async def test_a_later_attempt_waits_until_the_earlier_attempts_pod_has_ended(queue):
    row = await started(queue)
    first = row.k8s_name
    # kubectl delete job: the Job is gone at once, its pod still terminates
    del queue.backend.jobs[first]
    queue.backend.pods[row.id] = [pod(row.id, first, f"{first}-zzzzz", deleting=True)]
    await queue.loop.run_pass()  # requeued, admitted, but not created
    await queue.loop.run_pass()
    assert queue.get(row.id, user=None).k8s_name == f"{first}-a2"
    assert [j["metadata"]["name"] for j in queue.backend.created] == [first]
    queue.backend.pods[row.id] = []
    await queue.loop.run_pass()
    assert [j["metadata"]["name"] for j in queue.backend.created] == [first, f"{first}-a2"]


async def test_a_later_attempt_waits_while_the_earlier_attempts_job_is_still_listed(queue):
    """A Job whose delete has not taken effect yet (or a queue that crashed between the requeue's
    commit and the delete) could still get a replacement pod from its controller: the next
    attempt's Job is created only once the earlier Job is gone from the listing."""
    row = await started(queue)
    first = row.k8s_name
    queue.backend.pods[row.id] = []
    failed(queue.backend.jobs[first])
    old_job = queue.backend.jobs[first]
    await queue.loop.run_pass()  # requeued; the old Job deleted
    assert queue.get(row.id, user=None).interruptions == 1
    for _ in range(2):
        queue.backend.jobs[first] = old_job  # ... but still listed (deletion in progress)
        await queue.loop.run_pass()
    assert queue.get(row.id, user=None).k8s_name == f"{first}-a2"
    assert [j["metadata"]["name"] for j in queue.backend.created] == [first]
    assert first not in queue.backend.jobs  # deleted again; now gone from the listing
    await queue.loop.run_pass()
    assert [j["metadata"]["name"] for j in queue.backend.created] == [first, f"{first}-a2"]


async def test_a_running_job_whose_job_vanished_is_requeued_not_lost(queue):
    queue.tracker.runs[1] = "run-killed"
    row = await started(queue)
    assert row.mlflow_run_id == "run-killed"
    del queue.backend.jobs[row.k8s_name]
    queue.backend.pods[row.id] = []
    await queue.loop.run_pass()
    row = queue.get(row.id, user=None)
    assert row.interruptions == 1
    assert queue.view(row)["reason"].startswith(
        "interrupted: its Kubernetes Job was deleted, requeued (1 of 3)"
    )
    # The killed attempt's run (left RUNNING: e.g. MLflow died with the whole stack) ends
    # KILLED, only the runs started before the requeue (never the next attempt's), and the
    # job no longer links the dead run (tests/e2e/test_stack_restart.py end to end).
    assert queue.tracker.ended_before == [(row.id, "KILLED", 1_767_225_600_000)]
    assert row.mlflow_run_id is None


async def test_a_real_failure_is_a_failure(queue):
    row = await started(queue)
    p = pod(row.id, row.k8s_name, f"{row.k8s_name}-aaaaa", phase="Failed")
    p["status"]["containerStatuses"] = [{"state": {"terminated": {"exitCode": 1}}}]
    queue.backend.pods[row.id] = [p]
    failed(queue.backend.jobs[row.k8s_name])
    await queue.loop.run_pass()
    row = queue.get(row.id, user=None)
    assert (row.state, row.interruptions) == ("failed", 0)
    assert row.reason.startswith("BackoffLimitExceeded: the training exited with code 1")


async def test_a_high_job_preempts_the_most_recent_low_job_never_a_server(queue, monkeypatch):
    low_old = await started(queue, user="bob", priority="low")
    low_new = await started(queue, user="carol", priority="low")
    normal = await started(queue, user="dave", priority="normal")
    with queue.ctx.sessions() as db:  # carol's started last
        from llmspawner.queue.models import Job

        for job_id, minute in ((low_old.id, 1), (low_new.id, 5), (normal.id, 9)):
            import datetime

            db.get(Job, job_id).started_at = datetime.datetime(2026, 1, 1, 0, minute)
        db.commit()
    # an interactive server holds a slice too: not a queue job, never a candidate
    server = pod(0, "", "jupyter-erin")
    server["metadata"]["labels"] = {"llmspawner.io/profile": "cpu"}
    queue.backend.pods[0] = [server]
    full = {"cpu": types.SimpleNamespace(free=0, total=4)}
    monkeypatch.setattr(control_mod.capacity_mod, "capacities", lambda *a: full)
    high = await queue.submit(
        user="alice", groups=[], config=CONFIG, profile="cpu", priority="high"
    )
    await queue.loop.run_pass()
    victim = queue.get(low_new.id, user=None)
    assert (victim.state, victim.interruptions) == ("queued", 0)  # preemption: not counted
    assert victim.k8s_name == f"{low_new.k8s_name}-a2"
    assert low_new.k8s_name in queue.backend.deleted
    assert queue.get(low_old.id, user=None).state == "running"
    assert queue.get(normal.id, user=None).state == "running"
    # the freed slice is the high job's: admitted in the same pass, its Job created (its pod
    # waits, pending, for the slice), so nothing else is admitted into it
    high_row = queue.get(high["id"], user=None)
    assert high_row.state == "admitted"
    assert [j["metadata"]["name"] for j in queue.backend.created].count(high_row.k8s_name) == 1
    view = queue.view(victim, with_config=True)
    assert view["reason"].startswith(f"interrupted: preempted by job {high['id']} of priority high")
    reasons = [a["reason"] for a in view["attempts"]]
    assert f"preempted by job {high['id']} of priority high" in reasons
    assert any(a["log_saved"] for a in view["attempts"])  # its log, read before the delete
    # carol's pod terminates (still bound): no second preemption for the same high job
    queue.backend.pods[low_new.id] = [
        pod(low_new.id, low_new.k8s_name, f"{low_new.k8s_name}-aaaaa", deleting=True)
    ]
    await queue.loop.run_pass()
    assert queue.get(low_old.id, user=None).state == "running"


@pytest.mark.parametrize(
    ("waiters", "running", "free", "freeing", "expected"),
    [
        # lowest priority first, then the most recently started
        (
            [Waiter(9, "a")],
            [Running(1, "a", "low", 10), Running(2, "a", "low", 20), Running(3, "a", "normal", 30)],
            {"a": 0},
            {},
            [(2, 9)],
        ),
        ([Waiter(9, "a")], [Running(3, "a", "normal", 30)], {"a": 0}, {}, [(3, 9)]),
        # a free slice, a CPU profile, or a slice already being freed: nobody
        ([Waiter(9, "a")], [Running(1, "a", "low", 10)], {"a": 1}, {}, []),
        ([Waiter(9, "a")], [Running(1, "a", "low", 10)], {"a": None}, {}, []),
        ([Waiter(9, "a")], [Running(1, "a", "low", 10)], {"a": 0}, {"a": 1}, []),
        # other profiles, high jobs and pods that hold no slice are never victims
        ([Waiter(9, "a")], [Running(1, "b", "low", 10)], {"a": 0, "b": 0}, {}, []),
        ([Waiter(9, "a")], [Running(1, "a", "high", 10)], {"a": 0}, {}, []),
        ([Waiter(9, "a")], [Running(1, "a", "low", 10, holds_slice=False)], {"a": 0}, {}, []),
        # two waiters, one slice being freed: one more victim
        (
            [Waiter(8, "a"), Waiter(9, "a")],
            [Running(1, "a", "low", 10), Running(2, "a", "low", 20)],
            {"a": 0},
            {"a": 1},
            [(2, 9)],
        ),
    ],
)
def test_choose_preemptions(waiters, running, free, freeing, expected):
    assert choose_preemptions(waiters, running, free=free, freeing=freeing) == expected


def test_a_job_preempted_max_preemptions_times_is_not_chosen_and_the_waiter_learns_why():
    running = [Running(1, "a", "low", 10, preemptions=2), Running(2, "a", "normal", 5)]
    kw = {"free": {"a": 0}, "freeing": {}, "max_preemptions": 2}
    assert choose_preemptions([Waiter(9, "a")], running, **kw) == [(2, 9)]
    assert capped_waiters([Waiter(9, "a")], running, **kw) == {}
    assert choose_preemptions([Waiter(8, "a"), Waiter(9, "a")], running, **kw) == [(2, 8)]
    assert capped_waiters([Waiter(8, "a"), Waiter(9, "a")], running, **kw) == {9: [running[0]]}
    assert capped_sentence([running[0]], 2) == (
        "job(s) 1 not preempted for it: preempted 2 times already, the limit "
        "(LLMQueue.max_preemptions)"
    )


def full_profile(monkeypatch, free=0):
    full = {"cpu": types.SimpleNamespace(free=free, total=4)}
    monkeypatch.setattr(control_mod.capacity_mod, "capacities", lambda *a: full)
    return full


async def test_the_slice_freed_by_a_preemption_stays_the_high_jobs(queue, monkeypatch):
    """A server that takes the victim's slice the moment it frees (what the queue cannot
    stop) makes no second victim for the same high job, and while the high job's pod is not
    bound yet no other queued job is admitted into a slice that frees."""
    old = await started(queue, user="bob", priority="low")
    new = await started(queue, user="carol", priority="low")
    with queue.ctx.sessions() as db:
        import datetime

        from llmspawner.queue.models import Job

        db.get(Job, old.id).started_at = datetime.datetime(2026, 1, 1, 0, 1)
        db.get(Job, new.id).started_at = datetime.datetime(2026, 1, 1, 0, 5)
        db.commit()
    full = full_profile(monkeypatch)
    high = await queue.submit(
        user="alice", groups=[], config=CONFIG, profile="cpu", priority="high"
    )
    await queue.loop.run_pass()
    assert queue.get(new.id, user=None).state == "queued"
    # carol's pod is gone and a server took its slice at once: still no free slice
    del queue.backend.pods[new.id]
    for _ in range(2):
        await queue.loop.run_pass()
    assert queue.get(old.id, user=None).state == "running"  # bob is not preempted as well
    assert queue.get(high["id"], user=None).state == "admitted"
    # the server stops: a free slice while the high job's pod is not bound yet
    full["cpu"].free = 1
    other = await queue.submit(
        user="dave", groups=[], config=CONFIG, profile="cpu", priority="normal"
    )
    await queue.loop.run_pass()
    assert queue.get(other["id"], user=None).state == "queued"
    assert queue.get(new.id, user=None).state == "queued"
    names = [j["metadata"]["name"] for j in queue.backend.created]
    assert names.count(queue.get(high["id"], user=None).k8s_name) == 1


async def test_a_job_preempted_max_preemptions_times_runs_on_and_the_high_job_says_why(
    queue, monkeypatch
):
    queue.ctx.settings = queue.ctx.settings.__class__(
        **{**queue.ctx.settings.__dict__, "max_preemptions": 1}
    )
    low = await started(queue, user="bob", priority="low")
    with queue.ctx.sessions() as db:  # preempted once already (as _record_preemptions writes)
        from llmspawner.queue.models import JobPod

        db.add(
            JobPod(
                job_id=low.id,
                pod=f"{low.k8s_name}-x (preempted)",
                k8s_job="x",
                reason="preempted by job 99 of priority high",
                counted=0,
            )
        )
        db.commit()
    full_profile(monkeypatch)
    high = await queue.submit(
        user="alice", groups=[], config=CONFIG, profile="cpu", priority="high"
    )
    await queue.loop.run_pass()
    assert queue.get(low.id, user=None).state == "running"
    view = queue.view(queue.get(high["id"], user=None))
    assert view["state"] == "queued"
    assert view["reason"].endswith(
        f"; job(s) {low.id} not preempted for it: preempted 1 times already, the limit "
        "(LLMQueue.max_preemptions)"
    ), view["reason"]


async def test_a_disrupted_pod_removed_between_two_passes_is_counted(queue):
    """The pass saw the pod running; before the next one it was evicted, removed and
    replaced by the Job controller (podFailurePolicy Ignore): counted once."""
    row = await started(queue)
    queue.backend.pods[row.id] = [pod(row.id, row.k8s_name, f"{row.k8s_name}-bbbbbb")]
    await queue.loop.run_pass()
    await queue.loop.run_pass()
    row = queue.get(row.id, user=None)
    assert (row.state, row.interruptions) == ("running", 1)
    assert queue.view(row)["reason"].startswith(
        "interrupted: its pod was disrupted and removed (replaced by the Job controller), "
        "requeued (1 of 3)"
    )
    assert [a["pod"] for a in queue.attempts(row.id)] == [f"{row.k8s_name}-aaaaa"]
    assert [j["metadata"]["name"] for j in queue.backend.created] == [row.k8s_name]


async def test_a_disrupted_pod_only_the_watch_saw_is_counted_with_its_reason(queue):
    view = await queue.submit(
        user="alice", groups=[], config=CONFIG, profile="cpu", priority="normal"
    )
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    first = pod(row.id, row.k8s_name, f"{row.k8s_name}-aaaaa")
    queue.loop.note_pod("ADDED", first)
    gone = pod(
        row.id,
        row.k8s_name,
        f"{row.k8s_name}-aaaaa",
        condition="PreemptionByScheduler",
        deleting=True,
    )
    queue.loop.note_pod("MODIFIED", gone)
    queue.loop.note_pod("DELETED", gone)
    queue.backend.pods[row.id] = [pod(row.id, row.k8s_name, f"{row.k8s_name}-bbbbbb")]
    await queue.loop.run_pass()
    await queue.loop.run_pass()
    row = queue.get(row.id, user=None)
    assert (row.state, row.interruptions) == ("running", 1)
    assert queue.view(row)["reason"].startswith(
        "interrupted: PreemptionByScheduler, requeued (1 of 3)"
    )
    [attempt] = queue.attempts(row.id)
    assert (attempt["pod"], attempt["reason"]) == (
        first["metadata"]["name"],
        "PreemptionByScheduler",
    )


async def test_a_deleted_pod_gone_before_its_job_failed_is_counted_once(queue):
    """No replacement (a deletion is not ignored): nothing counted until the Job fails,
    then once."""
    row = await started(queue)
    queue.backend.pods[row.id] = []
    await queue.loop.run_pass()
    assert queue.get(row.id, user=None).interruptions == 0
    failed(queue.backend.jobs[row.k8s_name])
    await queue.loop.run_pass()
    await queue.loop.run_pass()
    row = queue.get(row.id, user=None)
    assert row.interruptions == 1, row.reason
    assert row.k8s_name.endswith("-a2")


async def test_stale_attempts_are_deleted_never_another_installations_job(queue):
    row = await started(queue)
    base = row.k8s_name
    for name in (f"{base}-a7", f"llm-job-stranger-{row.id}"):  # same job-id label, both
        queue.backend.jobs[name] = {
            "metadata": {"name": name, "labels": {"llmspawner.io/job-id": str(row.id)}},
            "status": {},
        }
    await queue.loop.run_pass()
    assert f"{base}-a7" in queue.backend.deleted  # an earlier (or stray) attempt of ours
    assert f"llm-job-stranger-{row.id}" not in queue.backend.deleted
    assert base not in queue.backend.deleted  # the current attempt
