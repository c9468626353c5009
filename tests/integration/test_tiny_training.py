"""A real LoRA SFT run of LLaMA-Factory on the CPU, on the tiny model, into a real MLflow.

The tiny model, tokenizer and dataset come from :mod:`llmspawner_dev.tiny_model` (written
offline, nothing downloaded: ``HF_HUB_OFFLINE=1``). ``llamafactory-cli train`` runs as a child
process, as in a queue Job, with the MLflow environment the spawner and the queue give a user
(``tracking.tracking_env``); the run must land in that user's experiment with a ``loss``
metric, and the adapter must be saved.

This is the basis of the queue's e2e test: if it fails, read its output before the queue's.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest
import yaml

from llmspawner import tracking
from llmspawner_dev import parts
from llmspawner_dev.processes import ChildProcess, free_port, wait_http
from llmspawner_dev.tiny_model import (
    TINY_DATASET_NAME,
    lora_sft_config,
    tiny_examples,
    write_tiny_dataset,
    write_tiny_model,
)

#: Seconds the whole ``llamafactory-cli train`` process may take (it takes ~10-15 s: imports).
TRAIN_TIMEOUT = float(os.environ.get("LLMSPAWNER_TRAIN_TIMEOUT", "300"))


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    """A real ``mlflow server`` on SQLite (as ``test_tracking_mlflow.py`` starts it)."""
    workdir = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = ChildProcess(
        "mlflow",
        parts.mlflow_command(workdir=workdir, host="127.0.0.1", port=port),
        log_path=workdir / "mlflow.log",
        env={**os.environ, **parts.mlflow_environment()},
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120, process=proc)
        yield url
    finally:
        proc.stop(grace=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(model_dir, dataset_dir)``: the tiny model in a shared ``models/``, data in alice's."""
    root = tmp_path_factory.mktemp("storage")
    model = write_tiny_model(root / "models" / "tiny-llama")
    data = write_tiny_dataset(root / "users" / "alice" / "data")
    return model, data


def test_tiny_dataset_is_20_alpaca_examples(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    assert json.loads((data / "dataset_info.json").read_text()) == {
        TINY_DATASET_NAME: {"file_name": f"{TINY_DATASET_NAME}.json"}
    }
    examples = json.loads((data / f"{TINY_DATASET_NAME}.json").read_text())
    assert examples == tiny_examples()
    assert len(examples) == 20
    assert {tuple(e) for e in examples} == {("instruction", "input", "output")}
    assert len({(e["instruction"], e["input"]) for e in examples}) == 20


def test_tiny_dataset_keeps_other_entries_of_dataset_info(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{"mine": {"file_name": "mine.json"}}')
    write_tiny_dataset(tmp_path, name="tiny2")
    assert json.loads((tmp_path / "dataset_info.json").read_text()) == {
        "mine": {"file_name": "mine.json"},
        "tiny2": {"file_name": "tiny2.json"},
    }


def test_tiny_model_loads_offline_and_is_deterministic(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, _ = tiny
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<pad>",
    )
    # Byte-level: any text round-trips, with no <unk>.
    for text in ["The sky is blue.", "Ünïcödé and 数字 42!"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<s>Human: hi</s>\nAssistant:"
    # Same seed, same files.
    again = write_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name
    assert {oct(p.stat().st_mode & 0o777) for p in again.iterdir()} == {"0o644"}


def _mlflow(url: str, method: str, path: str, **kwargs) -> dict:
    response = httpx.request(method, f"{url}/api/2.0/mlflow/{path}", timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


async def test_lora_sft_on_cpu_saves_adapter_and_logs_loss_to_the_users_experiment(
    tiny, mlflow_url, tmp_path, record_property
):
    model_dir, data_dir = tiny
    experiment = tracking.experiment_name("alice")
    # As the spawner and the queue do before a user's pod or Job starts.
    experiment_id = await tracking.ensure_experiment(mlflow_url, experiment)

    output_dir = data_dir.parent / "out" / "tiny-lora"
    config = lora_sft_config(
        model=str(model_dir),
        dataset_dir=str(data_dir),
        output_dir=str(output_dir),
        run_name="job-1",
    )
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        **tracking.tracking_env(tracking_uri=mlflow_url, experiment=experiment),
        # As a queue Job sets it (k8s_objects.build_job), so the queue finds the run by tag.
        "MLFLOW_TAGS": json.dumps({tracking.JOB_ID_TAG: "1"}),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(parts.venv_bin() / "llamafactory-cli"),
        "train",
        str(config_file),
        cwd=data_dir.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), TRAIN_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    seconds = time.monotonic() - started
    record_property("train_seconds", round(seconds, 2))
    print(f"llamafactory-cli train took {seconds:.1f} s")
    assert proc.returncode == 0, output.decode(errors="replace")[-5000:]

    # -- the adapter, in the output folder --------------------------------------------
    assert (output_dir / "adapter_model.safetensors").stat().st_size > 0
    adapter = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    assert adapter["base_model_name_or_path"] == str(model_dir)
    assert adapter["r"] == 4
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == config["max_steps"]

    # -- the MLflow run, in alice's experiment ------------------------------------------
    runs = _mlflow(mlflow_url, "POST", "runs/search", json={"experiment_ids": [experiment_id]}).get(
        "runs", []
    )
    assert len(runs) == 1, runs
    (run,) = runs
    assert run["info"]["run_name"] == "job-1"
    assert run["info"]["status"] == "FINISHED"
    # The queue finds a job's run by the job-id tag that transformers' MLflowCallback set.
    assert await tracking.find_job_run(mlflow_url, experiment_id, 1) == run["info"]["run_id"]
    assert await tracking.find_job_run(mlflow_url, experiment_id, 2) is None
    history = _mlflow(
        mlflow_url,
        "GET",
        "metrics/get-history",
        params={"run_id": run["info"]["run_id"], "metric_key": "loss"},
    )["metrics"]
    assert [m["step"] for m in history] == list(range(1, config["max_steps"] + 1))
    assert all(m["value"] > 0 for m in history)
