"""A finished queue job has its MLflow run (and link) from the pass that sees it end, not a
later one (issue 15 §6: a test was flaky on it). Uses the control loop's in-memory fixtures."""

from __future__ import annotations

from .test_queue_control import platform, queue, running_pod, submit  # noqa: F401

__all__ = ["platform", "queue"]


async def test_the_pass_that_sees_a_job_end_records_its_run(queue):  # noqa: F811
    view = await submit(queue)
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    queue.backend.pods[view["id"]] = [running_pod(view["id"])]
    await queue.loop.run_pass()  # running; MLflow has no run yet (the training starts it)
    row = queue.get(view["id"], user=None)
    assert (row.state, row.mlflow_run_id) == ("running", None)
    assert queue.tracker.asked == [("alice-experiments", view["id"])]

    # The training made its run and ended; the clock has not moved (same look-up interval).
    queue.tracker.runs[view["id"]] = "run-done"
    queue.backend.jobs[row.k8s_name]["status"] = {
        "succeeded": 1,
        "completionTime": "2026-01-01T00:00:30Z",
        "conditions": [{"type": "Complete", "status": "True"}],
    }
    await queue.loop.run_pass()
    row = queue.get(view["id"], user=None)
    assert (row.state, row.mlflow_run_id) == ("succeeded", "run-done")
    assert queue.view(row)["mlflow_run_url"] == "https://mlflow.example.org/#/runs/run-done"
    assert len(queue.tracker.asked) == 2


async def test_a_running_job_is_not_asked_again_within_the_interval(queue):  # noqa: F811
    view = await submit(queue)
    await queue.loop.run_pass()
    queue.backend.pods[view["id"]] = [running_pod(view["id"])]
    for _ in range(3):
        await queue.loop.run_pass()
    assert queue.tracker.asked == [("alice-experiments", view["id"])]
