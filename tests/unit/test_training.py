"""The training wrapper's pure parts and the LlamaBoard shim (llmspawner.training)."""

from __future__ import annotations

import os

import pytest

from llmspawner import training


@pytest.mark.parametrize(
    "report_to, expected",
    [
        ("mlflow", True),
        ("all", True),
        (["tensorboard", "mlflow"], True),
        ("tensorboard,mlflow", True),
        ("none", False),
        (None, False),
        (["wandb"], False),
    ],
)
def test_reports_to_mlflow(report_to, expected):
    assert training.reports_to_mlflow({"report_to": report_to}) is expected


@pytest.mark.parametrize(
    "uri, remote",
    [
        ("mlflow-artifacts:/3", True),
        ("s3://bucket/x", True),
        ("/mlflow/mlruns/3", False),
        ("file:///mlruns/3", False),
        ("", False),
        (None, False),
    ],
)
def test_remote_artifact_locations(uri, remote):
    assert training.is_remote_artifact_location(uri) is remote


def test_artifact_plan_puts_weights_under_adapter_and_logs_under_logs(tmp_path):
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "trainer_log.jsonl",
        "running_log.txt",
        "train.log",
        "all_results.json",
    ):
        (tmp_path / name).write_text("x")
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "adapter_model.safetensors").write_text("x")
    plan = [(p.name, folder) for p, folder in training.artifact_plan(tmp_path)]
    assert plan == [
        ("adapter_config.json", "adapter"),
        ("adapter_model.safetensors", "adapter"),
        ("all_results.json", "logs"),
        ("running_log.txt", "logs"),
        ("tokenizer.json", "adapter"),
        ("train.log", "logs"),
        ("trainer_log.jsonl", "logs"),
    ]
    assert training.artifact_plan(tmp_path / "missing") == []


def test_a_full_fine_tune_goes_under_model(tmp_path):
    (tmp_path / "model.safetensors").write_text("x")
    assert training.artifact_plan(tmp_path) == [(tmp_path / "model.safetensors", "model")]


def test_the_shim_is_first_on_llamaboards_path_and_never_taken_for_the_real_cli(tmp_path):
    real = tmp_path / "bin"
    real.mkdir()
    (real / "llamafactory-cli").write_text("#!/bin/sh\n")
    (real / "llamafactory-cli").chmod(0o755)
    env = {"PATH": f"{real}{os.pathsep}/usr/bin", "MLFLOW_TRACKING_URI": "http://m"}
    path = training.llamaboard_path(env, base=str(tmp_path))
    shim = tmp_path / f"llmspawner-shim-{os.getuid()}"
    assert path == os.pathsep.join([str(shim), str(real), "/usr/bin"])
    assert os.access(shim / "llamafactory-cli", os.X_OK)
    assert training.real_cli({"PATH": path}) == str(real / "llamafactory-cli")
    # Idempotent: the shim folder once, however often.
    assert training.llamaboard_path({**env, "PATH": path}, base=str(tmp_path)) == path


def test_no_shim_without_tracking_or_with_the_upload_off(tmp_path):
    env = {"PATH": "/usr/bin"}
    assert training.llamaboard_path(env, base=str(tmp_path)) == "/usr/bin"
    env = {"PATH": "/usr/bin", "MLFLOW_TRACKING_URI": "http://m", training.ENABLE_ENV: "0"}
    assert training.llamaboard_path(env, base=str(tmp_path)) == "/usr/bin"
    assert list(tmp_path.iterdir()) == []


def test_a_shim_folder_of_someone_else_is_not_used(tmp_path, capsys):
    folder = tmp_path / f"llmspawner-shim-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)
    env = {"PATH": "/usr/bin", "MLFLOW_TRACKING_URI": "http://m"}
    assert training.llamaboard_path(env, base=str(tmp_path)) == "/usr/bin"
    assert "will not upload their results" in capsys.readouterr().err


def test_usage():
    assert training.main([]) == 2
    assert training.main(["webui"]) == 2
