"""A training's adapter and logs land in its MLflow run, through MLflow's proxied artifact
store, with the user's own hub token (:mod:`llmspawner.training`).

The stack is ``test_mlflow_auth``'s (a real ``jupyterhub`` and a real ``mlflow server`` with
its auth app, ``--artifacts-destination`` in the test's folder, behind the prefix
``/services/mlflow``). The trainings: one real LoRA SFT of LLaMA-Factory on the tiny model
(as a queue Job runs it: ``python3 -m llmspawner.training train CONFIG``), and a stand-in
``llamafactory-cli`` (a shell script writing an adapter's files) for the cases around it:
LlamaBoard's ``llamafactory-cli train`` through the shim on ``PATH``, a failed training, bob's
token, an experiment with a local artifact location.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from llmspawner import tracking, training
from llmspawner_dev.tiny_model import lora_sft_config, write_tiny_dataset, write_tiny_model

from .test_mlflow_auth import alice_server_env, bearer, mlflow_api, stack, user_token  # noqa: F401

TRAIN_TIMEOUT = float(os.environ.get("LLMSPAWNER_TRAIN_TIMEOUT", "300"))

# A stand-in llamafactory-cli: "train <config>" writes an adapter's files into output_dir.
FAKE_CLI = """#!/bin/sh
[ "$1" = train ] || { echo "fake: $*"; exit 0; }
out=$(sed -n 's/^output_dir: *//p' "$2")
if grep -q '^register_model' "$2"; then echo "unknown key register_model" >&2; exit 9; fi
mkdir -p "$out/checkpoint-1"
printf '{"peft_type": "LORA"}' > "$out/adapter_config.json"
printf 'weights' > "$out/adapter_model.safetensors"
printf 'ckpt' > "$out/checkpoint-1/adapter_model.safetensors"
printf '{"current_steps": 1, "loss": 1.5}\\n' > "$out/trainer_log.jsonl"
echo "fake training of $2"
echo "a warning" >&2
exit "${FAKE_RC:-0}"
"""


@pytest.fixture(scope="module")
async def alice(stack):  # noqa: F811
    """``{"token", "experiment_id", "bob"}``: alice's server token, her experiment made the
    hub's way (admin credential, alice owner), and bob's token."""
    env = await alice_server_env(stack)
    problems: list[str] = []
    experiment_id = await tracking.ensure_experiment(
        stack.mlflow,
        "alice-experiments",
        owner="alice",
        headers=stack.admin_headers,
        problems=problems,
    )
    assert problems == []
    return {
        "token": env["MLFLOW_TRACKING_TOKEN"],
        "experiment_id": experiment_id,
        "bob": await user_token(stack, "bob"),
    }


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fake-bin")
    cli = folder / "llamafactory-cli"
    cli.write_text(FAKE_CLI)
    cli.chmod(0o755)
    return folder


def pod_env(stack, token, *, experiment="alice-experiments", path=None, **extra):  # noqa: F811
    """A pod's environment: only what the spawner and the queue give it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "JUPYTERHUB_"))}
    env.update(tracking.tracking_env(tracking_uri=stack.mlflow, experiment=experiment))
    env["MLFLOW_TRACKING_TOKEN"] = token
    env["HF_HUB_OFFLINE"] = "1"
    if path is not None:
        env["PATH"] = path
    env.update(extra)
    return env


async def run(argv, env, cwd, timeout=TRAIN_TIMEOUT) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run,
        argv,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def runs_of(stack, experiment_id) -> list[dict]:  # noqa: F811
    r = await mlflow_api(
        stack,
        "POST",
        "runs/search",
        headers=stack.admin_headers,
        json={"experiment_ids": [experiment_id], "order_by": ["attributes.start_time DESC"]},
    )
    assert r.status_code == 200, r.text
    return r.json().get("runs", [])


async def artifact_files(stack, run_id, token, path="") -> list[str]:  # noqa: F811
    """Every artifact file of a run (recursively), as ``folder/name``."""
    params = {"run_id": run_id, **({"path": path} if path else {})}
    r = await mlflow_api(stack, "GET", "artifacts/list", token, params=params)
    assert r.status_code == 200, r.text
    files = []
    for f in r.json().get("files", []):
        if f["is_dir"]:
            files += await artifact_files(stack, run_id, token, f["path"])
        else:
            files.append(f["path"])
    return sorted(files)


def stored(stack, run) -> Path:  # noqa: F811
    """The run's folder in the MLflow server's artifacts destination (the proxied store)."""
    uri = run["info"]["artifact_uri"]
    assert uri.startswith("mlflow-artifacts:/"), uri
    return stack.work / "mlflow-artifacts" / uri.removeprefix("mlflow-artifacts:/")


def write_config(folder: Path, config: dict) -> Path:
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_a_new_experiment_keeps_its_artifacts_in_the_proxied_store(stack, alice):  # noqa: F811
    r = await mlflow_api(
        stack,
        "GET",
        "experiments/get",
        alice["token"],
        params={"experiment_id": alice["experiment_id"]},
    )
    assert r.status_code == 200, r.text
    location = r.json()["experiment"]["artifact_location"]
    assert location == f"mlflow-artifacts:/{alice['experiment_id']}"
    assert tracking.artifact_location_problem(r.json()["experiment"]) is None


async def test_a_real_lora_training_uploads_adapter_and_logs_to_its_run(
    stack,  # noqa: F811
    alice,
    tmp_path,
    record_property,
):
    home = tmp_path / "users" / "alice"
    model = write_tiny_model(tmp_path / "models" / "tiny-llama")
    data = write_tiny_dataset(home / "data")
    out = home / "saves" / "tiny-lora"
    config = lora_sft_config(
        model=str(model), dataset_dir=str(data), output_dir=str(out), run_name="llm-job-alice-5"
    )
    cfg = write_config(home, config)
    env = pod_env(stack, alice["token"], MLFLOW_TAGS=json.dumps({tracking.JOB_ID_TAG: "5"}))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = await run([sys.executable, "-m", "llmspawner.training", "train", str(cfg)], env, home)
    assert done.returncode == 0, done.stderr[-5000:]
    assert "llmspawner training: uploaded" in done.stderr

    (run_,) = [
        r
        for r in await runs_of(stack, alice["experiment_id"])
        if r["info"]["run_name"] == "llm-job-alice-5"
    ]
    run_id = run_["info"]["run_id"]
    # One run: transformers' MLflowCallback resumed the run the wrapper made (MLFLOW_RUN_ID).
    assert (
        await tracking.find_job_run(
            stack.mlflow, alice["experiment_id"], 5, headers=stack.admin_headers
        )
        == run_id
    )
    assert run_["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run_["data"].get("tags", [])}
    assert tags[training.OUTPUT_DIR_TAG] == str(out)
    assert tags[training.WEIGHTS_TAG] == "adapter"
    r = await mlflow_api(
        stack,
        "GET",
        "metrics/get-history",
        alice["bob"],
        params={"run_id": run_id, "metric_key": "loss"},
    )
    assert [m["step"] for m in r.json()["metrics"]] == [1, 2]
    params = {p["key"]: p["value"] for p in run_["data"].get("params", [])}
    assert params["learning_rate"] == "0.001"

    # The artifacts, as anyone reads them (bob may read), and where the server stored them.
    files = await artifact_files(stack, run_id, alice["bob"])
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert name in files, files
    for name in ("logs/trainer_log.jsonl", "logs/train.log", "logs/trainer_state.json"):
        assert name in files, files
    assert not [f for f in files if "checkpoint-" in f]
    folder = stored(stack, run_)
    assert (folder / "adapter" / "adapter_model.safetensors").read_bytes() == (
        out / "adapter_model.safetensors"
    ).read_bytes()
    log_lines = (folder / "logs" / "trainer_log.jsonl").read_text().splitlines()
    assert sorted({json.loads(line)["current_steps"] for line in log_lines}) == [1, 2]
    assert "llamafactory" in (folder / "logs" / "train.log").read_text()  # the training's output
    # Nothing was written to a local artifact store in the pod.
    assert not list(home.rglob("mlruns")) and not list(home.rglob("mlartifacts"))
    record_property("artifacts", files)


async def test_llamaboards_training_goes_through_the_shim_on_path(
    stack,  # noqa: F811
    alice,
    fake_bin,
    tmp_path,
):
    """LlamaBoard runs ``llamafactory-cli train saves/.../training_args.yaml`` from the user's
    folder (relative output_dir) with the PATH that launch.py gave it."""
    env = pod_env(stack, alice["token"], path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    path = training.llamaboard_path(env, base=str(tmp_path))
    assert path.split(os.pathsep)[:2] == [
        str(tmp_path / f"llmspawner-shim-{os.getuid()}"),
        str(fake_bin),
    ]
    env["PATH"] = path
    home = tmp_path / "home"
    run_dir = home / "saves" / "Tiny" / "lora" / "train_1"
    run_dir.mkdir(parents=True)
    (run_dir / "training_args.yaml").write_text(
        "output_dir: saves/Tiny/lora/train_1\nreport_to: mlflow\nstage: sft\n"
    )
    (run_dir / "running_log.txt").write_text("LlamaBoard's log\n")
    done = await run(
        ["llamafactory-cli", "train", "saves/Tiny/lora/train_1/training_args.yaml"], env, home, 120
    )
    assert done.returncode == 0, done.stderr
    assert "fake training of saves/Tiny/lora/train_1/training_args.yaml" in done.stdout
    # LlamaBoard's stderr pipe gets one line (nothing while it runs: it could fill and stall
    # the training); the training's whole stderr is in train.log in the run's folder
    assert "a warning" not in done.stderr
    assert f"finished; the whole output is in {run_dir / training.TRAIN_LOG}" in done.stderr
    assert "a warning" in (run_dir / training.TRAIN_LOG).read_text()
    (run_,) = [
        r
        for r in await runs_of(stack, alice["experiment_id"])
        if {"key": training.OUTPUT_DIR_TAG, "value": str(run_dir)} in r["data"].get("tags", [])
    ]
    assert run_["info"]["status"] == "FINISHED"
    assert await artifact_files(stack, run_["info"]["run_id"], alice["token"]) == [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "logs/running_log.txt",
        "logs/train.log",
        "logs/trainer_log.jsonl",
        "logs/training_args.yaml",
    ]
    # Any other command goes to the real llamafactory-cli unchanged.
    done = await run(["llamafactory-cli", "webui"], env, home, 60)
    assert (done.returncode, done.stdout) == (0, "fake: webui\n")


async def test_a_failed_training_keeps_its_logs_and_its_run_is_failed(
    stack,  # noqa: F811
    alice,
    fake_bin,
    tmp_path,
):
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path, {"output_dir": str(out), "report_to": ["mlflow"], "run_name": "bad"}
    )
    env = pod_env(
        stack, alice["token"], path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", FAKE_RC="3"
    )
    done = await run(
        [sys.executable, "-m", "llmspawner.training", "train", str(cfg)], env, tmp_path, 120
    )
    assert done.returncode == 3
    (run_,) = [
        r for r in await runs_of(stack, alice["experiment_id"]) if r["info"]["run_name"] == "bad"
    ]
    assert run_["info"]["status"] == "FAILED"
    assert "logs/train.log" in await artifact_files(stack, run_["info"]["run_id"], alice["token"])


async def test_no_run_and_no_upload_without_report_to_mlflow(stack, alice, fake_bin, tmp_path):  # noqa: F811
    before = len(await runs_of(stack, alice["experiment_id"]))
    cfg = write_config(tmp_path, {"output_dir": str(tmp_path / "out"), "report_to": "none"})
    env = pod_env(stack, alice["token"], path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    done = await run(
        [sys.executable, "-m", "llmspawner.training", "train", str(cfg)], env, tmp_path, 120
    )
    assert done.returncode == 0, done.stderr
    assert "llmspawner training" not in done.stderr
    assert len(await runs_of(stack, alice["experiment_id"])) == before


async def test_bob_cannot_upload_into_alices_run(stack, alice, fake_bin, tmp_path):  # noqa: F811
    r = await mlflow_api(
        stack, "POST", "runs/create", alice["token"], json={"experiment_id": alice["experiment_id"]}
    )
    assert r.status_code == 200, r.text
    run_id = r.json()["run"]["info"]["run_id"]
    script = textwrap.dedent(
        """
        import sys, mlflow
        mlflow.MlflowClient().log_artifact(sys.argv[1], sys.argv[2], "adapter")
        """
    )
    evil = tmp_path / "adapter_model.safetensors"
    evil.write_bytes(b"bob")
    env = pod_env(stack, alice["bob"])
    done = await run([sys.executable, "-c", script, run_id, str(evil)], env, tmp_path, 120)
    assert done.returncode != 0
    assert "403" in done.stderr or "PERMISSION_DENIED" in done.stderr, done.stderr[-2000:]
    assert await artifact_files(stack, run_id, alice["token"]) == []
    # The same file with alice's token is uploaded.
    env = pod_env(stack, alice["token"])
    done = await run([sys.executable, "-c", script, run_id, str(evil)], env, tmp_path, 120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert await artifact_files(stack, run_id, alice["bob"]) == [
        "adapter/adapter_model.safetensors"
    ]
    # bob's training into alice's experiment gets no run; it trains anyway.
    before = len(await runs_of(stack, alice["experiment_id"]))
    cfg = write_config(tmp_path, {"output_dir": str(tmp_path / "out"), "report_to": "mlflow"})
    env = pod_env(stack, alice["bob"], path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    done = await run(
        [sys.executable, "-m", "llmspawner.training", "train", str(cfg)], env, tmp_path, 120
    )
    assert done.returncode == 0, done.stderr
    assert "no MLflow run for the results" in done.stderr
    assert len(await runs_of(stack, alice["experiment_id"])) == before


async def test_an_experiment_with_a_local_artifact_location_is_reported_and_not_written(
    stack,  # noqa: F811
    alice,
    fake_bin,
    tmp_path,
):
    local = tmp_path / "old-mlruns"
    r = await mlflow_api(
        stack,
        "POST",
        "experiments/create",
        alice["token"],
        json={"name": "alice-old", "artifact_location": str(local)},
    )
    assert r.status_code == 200, r.text
    problems: list[str] = []
    await tracking.ensure_experiment(
        stack.mlflow, "alice-old", owner="alice", headers=stack.admin_headers, problems=problems
    )
    (problem,) = problems
    assert "'alice-old'" in problem and str(local) in problem and "mlflow-artifacts:" in problem
    cfg = write_config(tmp_path, {"output_dir": str(tmp_path / "out"), "report_to": "mlflow"})
    env = pod_env(
        stack,
        alice["token"],
        experiment="alice-old",
        path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
    )
    done = await run(
        [sys.executable, "-m", "llmspawner.training", "train", str(cfg)], env, tmp_path, 120
    )
    assert done.returncode == 0, done.stderr
    assert "keeps its artifacts at" in done.stderr and "not uploaded" in done.stderr
    assert not local.exists()


async def test_a_queue_job_may_register_its_adapter_owned_by_its_user(
    stack,  # noqa: F811
    alice,
    fake_bin,
    tmp_path,
):
    """``register_model`` (the queue's key, set by lf_config to ``alice-adapters``) is taken out
    of the config LLaMA-Factory reads; on success the adapter becomes a version of the model,
    which alice owns and bob cannot change."""
    from llmspawner.queue import lf_config

    prepared = lf_config.prepare_config(
        {
            "model_name_or_path": "/storage/models/tiny",
            "output_dir": "saves/out",  # the pod's path; this test's folder below
            "register_model": True,
        },
        username="alice",
        job_name="llm-job-alice-9",
    )
    assert prepared["register_model"] == "alice-adapters"
    model = tmp_path / "tiny"  # the pod's /storage/models/tiny (the training checks it exists)
    model.mkdir()
    cfg = write_config(
        tmp_path,
        {**prepared, "output_dir": str(tmp_path / "out"), "model_name_or_path": str(model)},
    )
    env = pod_env(stack, alice["token"], path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    for _ in range(2):  # two jobs: versions 1 and 2
        done = await run(
            [sys.executable, "-m", "llmspawner.training", "train", str(cfg)], env, tmp_path, 120
        )
        assert done.returncode == 0, done.stderr
    assert "registered the adapter as version 2 of model 'alice-adapters'" in done.stderr
    r = await mlflow_api(
        stack,
        "GET",
        "model-versions/search",
        alice["bob"],
        params={"filter": "name='alice-adapters'"},
    )
    assert r.status_code == 200, r.text
    versions = sorted(r.json()["model_versions"], key=lambda v: int(v["version"]))
    assert [v["version"] for v in versions] == ["1", "2"]
    run_id = versions[1]["run_id"]
    assert versions[1]["source"] == f"runs:/{run_id}/adapter"
    r = await mlflow_api(stack, "GET", "runs/get", alice["token"], params={"run_id": run_id})
    tags = {t["key"]: t["value"] for t in r.json()["run"]["data"]["tags"]}
    assert tags[training.MODEL_VERSION_TAG] == "alice-adapters/2"
    # alice owns it: she may change it; bob may not.
    body = {"name": "alice-adapters", "description": "mine"}
    r = await mlflow_api(stack, "PATCH", "registered-models/update", alice["token"], json=body)
    assert r.status_code == 200, r.text
    r = await mlflow_api(stack, "PATCH", "registered-models/update", alice["bob"], json=body)
    assert r.status_code == 403, r.text
    r = await mlflow_api(
        stack,
        "POST",
        "model-versions/create",
        alice["bob"],
        json={"name": "alice-adapters", "source": f"runs:/{run_id}/adapter", "run_id": run_id},
    )
    assert r.status_code == 403, r.text
