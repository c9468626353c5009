"""llmspawner.tracking against a real ``mlflow server`` (SQLite), started for this module."""

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
