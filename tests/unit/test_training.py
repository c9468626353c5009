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


def test_the_shim_is_on_llamaboards_path_without_mlflow_too(tmp_path):
    """The shim keeps trainings from stalling on LlamaBoard's pipe: with or without MLflow."""
    shim = str(tmp_path / f"llmspawner-shim-{os.getuid()}")
    for env in (
        {"PATH": "/usr/bin"},
        {"PATH": "/usr/bin", "MLFLOW_TRACKING_URI": "http://m", training.ENABLE_ENV: "0"},
    ):
        assert training.llamaboard_path(env, base=str(tmp_path)) == f"{shim}{os.pathsep}/usr/bin"


def test_a_shim_folder_of_someone_else_is_not_used(tmp_path, capsys):
    folder = tmp_path / f"llmspawner-shim-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)
    env = {"PATH": "/usr/bin", "MLFLOW_TRACKING_URI": "http://m"}
    assert training.llamaboard_path(env, base=str(tmp_path)) == "/usr/bin"
    assert "run without the llmspawner shim" in capsys.readouterr().err


def test_usage():
    assert training.main([]) == 2
    assert training.main(["webui"]) == 2


def test_the_pipe_tail_never_blocks_and_fits_what_the_pipe_has_room_for():
    read, write = os.pipe()
    try:
        pipe = training.PipeTail(write)
        size = pipe.room()
        assert size and size >= 4096
        assert pipe.write(b"x" * (size + 100)) == size  # fills the pipe, drops the rest
        assert pipe.dropped == 100
        assert pipe.room() == 0
        assert pipe.write("more") == 0 and pipe.dropped == 104
        assert pipe.write_tail(b"tail\n") == 0
        page = os.sysconf("SC_PAGE_SIZE")
        os.read(read, 3 * page + 10)  # three pages free, the fourth partly read
        assert pipe.room() == 2 * page
        data = b"".join(b"line %05d\n" % i for i in range(3000))  # 33000 bytes
        written = pipe.write_tail(data)
        # All it wrote fitted, cut at a line start: the end of the output, whole lines.
        assert 0 < written <= 2 * page
        os.read(read, size - 3 * page - 10)
        got = os.read(read, 3 * page)
        assert got == data[-written:] and got.startswith(b"line ") and got.endswith(b"02999\n")
    finally:
        os.close(read)
        os.close(write)


def test_the_pipe_tail_is_bounded_and_never_raises_when_the_reader_is_gone(tmp_path):
    read, write = os.pipe()
    pipe = training.PipeTail(write)
    data = b"".join(b"line %06d\n" % i for i in range(20000))
    written = pipe.write_tail(data)
    assert 0 < written <= training.PIPE_TAIL
    assert os.read(read, 1 << 20).endswith(b"019999\n")
    os.close(read)
    assert pipe.write(b"nobody reads") == 0  # EPIPE: dropped, never raised
    os.close(write)
    with open(tmp_path / "f", "wb") as f:  # not a pipe: no room limit
        assert training.PipeTail(f.fileno()).room() is None


def test_the_tail_keeps_the_last_bytes():
    tail = training._Tail(limit=10)
    for i in range(100):
        tail.write(b"%03d" % i)
    assert tail.value() == b"6097098099"


def test_a_missing_model_is_refused_with_the_shared_folder_named(tmp_path):
    models = tmp_path / "models"
    (models / "SmolLM2-135M-Instruct").mkdir(parents=True)
    (models / "SmolLM2-135M-Instruct" / "config.json").write_text("{}")
    env = {"LLMSPAWNER_MODELS_DIR": str(models), "HF_HOME": str(tmp_path / "hf")}
    ok = {"model_name_or_path": str(models / "SmolLM2-135M-Instruct")}
    assert training.missing_model(ok, env) is None
    assert training.missing_model({}, env) is None
    gone = training.missing_model({"model_name_or_path": str(models / "Qwen3-8B")}, env)
    assert gone == (
        f"the base model folder {models}/Qwen3-8B does not exist (the shared models folder "
        f"{models} holds: SmolLM2-135M-Instruct): choose one of those in LlamaBoard's Model "
        "path (or the config's model_name_or_path), or ask an admin to add it "
        "(docs/deploy.md, 'Base models')"
    )
    hub = {"model_name_or_path": "Qwen/Qwen3-8B"}
    assert training.missing_model(hub, env) is None  # online: transformers downloads it
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    message = training.missing_model(hub, offline)
    assert message.startswith("the base model 'Qwen/Qwen3-8B' is not in the shared models")
    assert "HF_HUB_OFFLINE=1" in message and "holds: SmolLM2-135M-Instruct" in message
    # In the user's Hugging Face cache: offline mode loads it from there.
    snapshot = tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-8B" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert training.missing_model(hub, offline) is None


def test_a_training_with_a_missing_model_is_not_started(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: /nowhere/model\noutput_dir: out\n")
    cli = tmp_path / "llamafactory-cli"
    cli.write_text("#!/bin/sh\ntouch started\n")
    cli.chmod(0o755)
    code = training.run_training(["train", str(config)], environ={"PATH": ""}, cli=str(cli))
    assert code == training.EXIT_REFUSED
    assert "not started: the base model folder /nowhere/model does not exist" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "started").exists()


def test_overwrite_output_dir_applies_to_a_queue_jobs_first_attempt_only(tmp_path, capsys):
    out = tmp_path / "out"
    env = {"LLMSPAWNER_JOB_ID": "8"}
    first = {"output_dir": str(out), "overwrite_output_dir": True}
    assert training.first_attempt_only(first, env) is None
    assert first["overwrite_output_dir"] is True  # attempt 1 starts afresh, as asked
    assert (out / training.ATTEMPT_MARKER).read_text() == "8\n"
    again = {"output_dir": str(out), "overwrite_output_dir": True}
    note = training.first_attempt_only(again, env)
    assert "overwrite_output_dir" not in again and "resumes" in note  # attempt 2 resumes
    other = {"output_dir": str(out), "overwrite_output_dir": True}
    assert training.first_attempt_only(other, {"LLMSPAWNER_JOB_ID": "9"}) is None
    assert other["overwrite_output_dir"] is True  # another job reusing the folder
    lamaboard = {"output_dir": str(out), "overwrite_output_dir": True}
    assert training.first_attempt_only(lamaboard, {}) is None and lamaboard["overwrite_output_dir"]


def test_a_requeued_attempt_runs_without_overwrite(tmp_path):
    """run_training hands the real CLI a config without the key on the job's second attempt."""
    out = tmp_path / "out"
    seen = tmp_path / "seen.yaml"
    cli = tmp_path / "llamafactory-cli"
    cli.write_text(f'#!/bin/sh\ncp "$2" {seen}\n')
    cli.chmod(0o755)
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out}\noverwrite_output_dir: true\n")
    env = {"LLMSPAWNER_JOB_ID": "8", "PATH": os.environ["PATH"]}
    assert training.run_training(["train", str(config)], environ=env, cli=str(cli)) == 0
    assert "overwrite_output_dir: true" in seen.read_text()
    assert training.run_training(["train", str(config)], environ=env, cli=str(cli)) == 0
    assert "overwrite_output_dir" not in seen.read_text()


def test_a_first_attempt_with_overwrite_sets_another_runs_checkpoints_aside(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-900").mkdir(parents=True)
    (out / "adapter_model.safetensors").write_text("old")
    config = {"output_dir": str(out), "overwrite_output_dir": True}
    note = training.first_attempt_only(config, {"LLMSPAWNER_JOB_ID": "8"})
    assert config["overwrite_output_dir"] is True and "moved" in note
    assert not list(out.glob("checkpoint-*"))  # a resume can only find this run's own
    (aside,) = out.glob("overwritten-*")
    assert (aside / "checkpoint-900").is_dir() and (out / "adapter_model.safetensors").exists()
