"""llmspawner.tracking, the one MLflow module, against a real ``mlflow server`` (SQLite):
experiments, a queue job's run found by its job-id tag, and the tracker's cache policy."""

import os

import httpx
import pytest

from llmspawner import tracking
from llmspawner_dev import parts
from llmspawner_dev.processes import ChildProcess, free_port, wait_http


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, **parts.mlflow_environment()}
    proc = ChildProcess(
        "mlflow",
        parts.mlflow_command(workdir=workdir, host="127.0.0.1", port=port),
        log_path=workdir / "mlflow.log",
        env=env,
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120, process=proc)
        yield url
    finally:
        proc.stop(grace=5)


def get_experiment(url: str, name: str) -> dict:
    r = httpx.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
    r.raise_for_status()
    return r.json()["experiment"]


async def test_ensure_experiment_creates_once(mlflow_url):
    first = await tracking.ensure_experiment(mlflow_url, "alice-experiments")
    again = await tracking.ensure_experiment(mlflow_url, "alice-experiments")
    assert first == again
    experiment = get_experiment(mlflow_url, "alice-experiments")
    assert (experiment["experiment_id"], experiment["lifecycle_stage"]) == (first, "active")


async def test_ensure_experiment_restores_a_deleted_one(mlflow_url):
    experiment_id = await tracking.ensure_experiment(mlflow_url, "bob-experiments")
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{mlflow_url}/api/2.0/mlflow/experiments/delete",
            json={"experiment_id": experiment_id},
        )
    r.raise_for_status()
    assert get_experiment(mlflow_url, "bob-experiments")["lifecycle_stage"] == "deleted"
    assert await tracking.ensure_experiment(mlflow_url, "bob-experiments") == experiment_id
    assert get_experiment(mlflow_url, "bob-experiments")["lifecycle_stage"] == "active"


async def test_unreachable_mlflow_raises_tracking_unavailable():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(tracking.TrackingUnavailable, match=f"MLflow at {url} is unreachable"):
        await tracking.ensure_experiment(url, "alice-experiments", timeout=2)


async def _create_run(url: str, experiment_id: str, tags: dict[str, str]) -> str:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{url}/api/2.0/mlflow/runs/create",
            json={
                "experiment_id": experiment_id,
                "start_time": 1_700_000_000_000,
                "tags": [{"key": k, "value": v} for k, v in tags.items()],
            },
        )
    r.raise_for_status()
    return r.json()["run"]["info"]["run_id"]


async def test_find_a_jobs_run_by_its_job_id_tag(mlflow_url):
    """As a queue Job's pod makes it: MLFLOW_TAGS {"llmspawner.job_id": "<id>"}; the run's
    name (LLaMA-Factory's run_name) plays no part."""
    experiment_id = await tracking.ensure_experiment(mlflow_url, "carol-experiments")
    assert await tracking.find_job_run(mlflow_url, experiment_id, 7) is None
    run_7 = await _create_run(
        mlflow_url,
        experiment_id,
        {tracking.JOB_ID_TAG: "7", "mlflow.runName": "llm-job-carol-70"},
    )
    await _create_run(mlflow_url, experiment_id, {tracking.JOB_ID_TAG: "70"})
    await _create_run(mlflow_url, experiment_id, {"mlflow.runName": "llm-job-carol-7"})
    assert await tracking.find_job_run(mlflow_url, experiment_id, 7) == run_7
    assert await tracking.find_job_run(mlflow_url, experiment_id, 8) is None


async def test_tracker_caches_the_experiment_and_links_the_run(mlflow_url):
    tracker = tracking.Tracker(mlflow_url, ui_url="https://hub.example.org/mlflow/")
    assert await tracker.find_job_run("dave-experiments", 3) is None  # creates the experiment
    experiment_id = tracker._experiments["dave-experiments"]
    assert experiment_id == get_experiment(mlflow_url, "dave-experiments")["experiment_id"]
    run = await _create_run(mlflow_url, experiment_id, {tracking.JOB_ID_TAG: "3"})
    assert await tracker.find_job_run("dave-experiments", 3) == run
    assert tracker.run_url(run) == f"https://hub.example.org/mlflow/#/runs/{run}"


async def test_tracker_remembers_a_failure_for_a_while_only():
    now = [100.0]
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracker = tracking.Tracker(url, timeout=2, retry_after=30, clock=lambda: now[0])
    with pytest.raises(tracking.TrackingUnavailable) as first:
        await tracker.experiment_id("alice-experiments")
    assert not first.value.cached
    now[0] += 29
    with pytest.raises(tracking.TrackingUnavailable) as cached:
        await tracker.find_job_run("alice-experiments", 1)
    assert cached.value.cached and "not retried for 30 s" in str(cached.value)
    now[0] += 2  # past retry_after: MLflow is asked again
    with pytest.raises(tracking.TrackingUnavailable) as again:
        await tracker.experiment_id("alice-experiments")
    assert not again.value.cached
