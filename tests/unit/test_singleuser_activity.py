"""A running training counts as activity of the user's server (pure parts + a real child)."""

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from llmspawner.singleuser import activity


@pytest.mark.parametrize(
    ("cmdline", "training"),
    [
        (["llamafactory-cli", "train", "saves/x/training_args.yaml"], True),
        (["/opt/conda/bin/llamafactory-cli", "train", "cfg.yaml"], True),
        (["/usr/bin/python3", "/opt/conda/bin/llamafactory-cli", "train", "cfg.yaml"], True),
        (["lmf", "train", "cfg.yaml"], True),
        (["python", "-m", "llamafactory.cli", "train", "cfg.yaml"], True),
        (
            [
                "torchrun",
                "--nproc_per_node",
                "2",
                "/x/site-packages/llamafactory/launcher.py",
                "cfg.yaml",
            ],
            True,
        ),
        (["llamafactory-cli", "webui"], False),
        (["llamafactory-cli", "export", "cfg.yaml"], False),
        (["python", "train.py"], False),
        (["bash", "-c", "echo llamafactory-cli train"], False),
        ([], False),
    ],
)
def test_is_training_command(cmdline, training):
    assert activity.is_training_command(cmdline) is training


@pytest.fixture
def fake_training(tmp_path):
    """A real child process whose command line is ``<tmp>/llamafactory-cli train cfg.yaml``."""
    script = tmp_path / "llamafactory-cli"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    script.chmod(0o755)

    def start():
        return subprocess.Popen([str(script), "train", "cfg.yaml"])

    procs = []
    yield lambda: procs.append(start()) or procs[-1]
    for p in procs:
        p.kill()
        p.wait()


def test_training_processes_finds_descendants(fake_training):
    assert activity.training_processes(os.getpid()) == []
    proc = fake_training()
    assert activity.training_processes(os.getpid()) == [proc.pid]
    proc.kill()
    proc.wait()
    assert activity.training_processes(os.getpid()) == []


def test_mark_active_if_training(fake_training):
    settings = {}
    now = datetime(2026, 11, 30, tzinfo=timezone.utc)
    assert activity.mark_active_if_training(settings, os.getpid(), now=now) == []
    assert settings == {}
    proc = fake_training()
    assert activity.mark_active_if_training(settings, os.getpid(), now=now) == [proc.pid]
    assert settings == {"llmspawner_training_last_activity": now}


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 30.0), ("2.5", 2.5), ("0", 30.0), ("x", 30.0)]
)
def test_check_interval(value, seconds):
    env = {} if value is None else {"LLMSPAWNER_TRAINING_CHECK_INTERVAL": value}
    assert activity.check_interval(env) == seconds


async def test_extension_marks_the_server_active_while_training_runs(fake_training, monkeypatch):
    """The extension as Jupyter Server loads it; this test process stands for the server."""
    monkeypatch.setenv("LLMSPAWNER_TRAINING_CHECK_INTERVAL", "0.1")
    logs = []
    serverapp = SimpleNamespace(
        web_app=SimpleNamespace(settings={}),
        log=SimpleNamespace(info=lambda *a: logs.append(a[0] % a[1:]), debug=lambda *a: None),
    )
    assert activity._jupyter_server_extension_points() == [
        {"module": "llmspawner.singleuser.activity"}
    ]
    activity._load_jupyter_server_extension(serverapp)
    settings = serverapp.web_app.settings
    try:
        await asyncio.sleep(0.3)
        assert "llmspawner_training_last_activity" not in settings
        proc = fake_training()
        await asyncio.sleep(0.3)
        first = settings["llmspawner_training_last_activity"]
        await asyncio.sleep(0.3)
        assert settings["llmspawner_training_last_activity"] > first
        proc.kill()
        proc.wait()
        await asyncio.sleep(0.3)
        last = settings["llmspawner_training_last_activity"]
        await asyncio.sleep(0.3)
        assert settings["llmspawner_training_last_activity"] == last  # stopped moving
    finally:
        settings["llmspawner_training_check"].stop()
    assert logs == ["llmspawner: a running training counts as activity (checked every 0.1 s)"]


def test_extension_is_enabled_by_the_installed_config():
    """The shipped config (the wheel's shared-data, what the image installs) and the copy in
    this environment enable the activity and eager-start extensions."""
    import json
    from pathlib import Path

    name = "jupyter_server_config.d/llmspawner.json"
    shipped = Path(__file__).parents[2] / "jupyter-config" / name
    installed = Path(sys.prefix) / "etc/jupyter" / name
    for config in (shipped, installed):
        extensions = json.loads(config.read_text())["ServerApp"]["jpserver_extensions"]
        assert extensions["llmspawner.singleuser.activity"] is True, config
        assert extensions["llmspawner.singleuser.eager"] is True, config


def test_llamaboard_itself_is_not_a_training(tmp_path):
    """An eagerly started LlamaBoard (its launcher, then ``llamafactory-cli webui``) does not
    keep the server active; only the trainings it starts do."""
    from llmspawner.singleuser.llamaboard import llamaboard_command

    launcher = llamaboard_command(folder=str(tmp_path), cli="/opt/bin/llamafactory-cli")
    assert not activity.is_training_command(launcher)
    assert not activity.is_training_command([sys.executable, "/opt/bin/llamafactory-cli", "webui"])
    assert activity.is_training_command([sys.executable, "/opt/bin/llamafactory-cli", "train", "x"])
