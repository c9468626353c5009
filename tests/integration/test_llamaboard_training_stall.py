"""A training started as LlamaBoard starts it never stalls on its unread stderr pipe.

LLaMA-Factory 0.9.5's ``Runner._launch`` runs ``Popen(["llamafactory-cli", "train", <yaml>],
env=env, stderr=PIPE, text=True)`` and reads the pipe only while the page's event stream lives
(https://github.com/hiyouga/LlamaFactory/issues/10180). Here the pipe is never read while the
training runs: the real shim (:func:`llmspawner.training.shim_main`, first on ``PATH`` as
:mod:`llmspawner.singleuser.launch` puts it) runs a fake ``llamafactory-cli`` that writes 1 MiB
to stderr (16 times a pipe buffer; tqdm-like ``\\r`` updates and log lines) and then waits for
the test's go-ahead. The fake stands in for LLaMA-Factory because a real training takes minutes
on 2 cores; ``tests/integration/test_tiny_training.py`` runs the real one through the shim.
The last test has LLaMA-Factory's own ``Runner`` launch it and abandons its event generator.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmspawner import training
from llmspawner.singleuser import activity

#: What the fake training writes to stderr (bytes): far more than a 64 KiB pipe buffer.
OUTPUT = 1 << 20

FAKE_CLI = f"""#!{sys.executable}
import os, signal, sys, time
go = os.environ["FAKE_GO"]
# LLaMA-Factory's LogCallback (LLAMABOARD_ENABLED): SIGABRT = Abort, the training stops.
signal.signal(signal.SIGABRT, lambda *a: os.write(1, b"aborted\\n") and open(go, "w").close())
line = b"{{'loss': 1.2345, 'grad_norm': 0.5, 'learning_rate': 1e-05, 'epoch': 0.1}}\\n"
bar = b"\\r 42%|####      | 420/1000 [00:42<00:58, 10.00it/s]"
written = 0
i = 0
while written < {OUTPUT}:
    data = bar if i % 2 else line
    os.write(2, data)
    written += len(data)
    i += 1
os.write(2, b"\\nstderr done\\n")
os.write(1, b"stdout done\\n")
while not os.path.exists(go):
    time.sleep(0.05)
if os.environ.get("FAKE_FAIL"):
    os.write(2, b"Traceback (most recent call last):\\nValueError: boom at the end\\n")
    sys.exit(3)
"""


def _start(tmp_path: Path, *, fail: bool = False):
    """Start the shim as LlamaBoard does; return (process, output folder, go file)."""
    real = tmp_path / "real-bin"
    real.mkdir()
    cli = real / "llamafactory-cli"
    cli.write_text(FAKE_CLI)
    cli.chmod(0o755)
    out = tmp_path / "saves" / "train_1"
    config = tmp_path / "training_args.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(out), "report_to": "none"}))
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HF_HUB_OFFLINE"))}
    env["PATH"] = f"{real}{os.pathsep}{env.get('PATH', os.defpath)}"
    (tmp_path / "cache").mkdir()
    env["PATH"] = training.llamaboard_path(env, base=str(tmp_path / "cache"))
    assert env["PATH"].startswith(str(tmp_path / "cache")), "the shim is first on PATH"
    env["FAKE_GO"] = str(go)
    if fail:
        env["FAKE_FAIL"] = "1"
    # LlamaBoard's own call (llamafactory/webui/runner.py, Runner._launch), found on PATH.
    proc = subprocess.Popen(
        ["llamafactory-cli", "train", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out, go


def _wait_for_log(proc, log: Path) -> None:
    """Until the fake training has written all of its stderr (it got past 16 pipe buffers
    that nobody read); fails if the process ends first or 60 s pass (a stall)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.is_file() and b"stderr done" in log.read_bytes()[-64:]:
            return
        assert proc.poll() is None, "the training ended before writing its output"
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the training stalled: {log} holds {log.stat().st_size if log.exists() else 0} B")


def test_a_training_whose_stderr_pipe_is_never_read_runs_to_the_end(tmp_path):
    proc, out, go = _start(tmp_path)
    log = out / training.TRAIN_LOG
    try:
        _wait_for_log(proc, log)
        # While it runs, the training-aware culling counts it (shim and fake child).
        found = activity.training_processes(os.getpid())
        assert proc.pid in found and len(found) == 2
        go.touch()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_bytes()
    assert len(text) > OUTPUT
    assert b"stderr done" in text and b"stdout done" in text
    # What LlamaBoard reads when its page comes back: one line, not the megabyte.
    stderr = proc.stderr.read()
    assert stderr == f"llmspawner training: finished; the whole output is in {log}\n"
    # Once it ended, the culling no longer counts it.
    assert activity.training_processes(os.getpid()) == []


def test_a_failed_training_leaves_its_last_lines_in_the_pipe_for_llamaboards_failed_box(
    tmp_path,
):
    proc, out, go = _start(tmp_path, fail=True)
    log = out / training.TRAIN_LOG
    try:
        _wait_for_log(proc, log)
        go.touch()
        assert proc.wait(timeout=60) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert stderr.startswith(f"llmspawner training: exit status 3; the whole output is in {log}")
    assert stderr.endswith("ValueError: boom at the end\n")
    assert len(stderr.encode()) <= training.PIPE_TAIL + 200
    assert log.read_bytes().endswith(b"ValueError: boom at the end\n")


def test_llamaboards_abort_stops_the_training_not_the_shim(tmp_path):
    """LlamaBoard's Abort sends SIGABRT to every process of the training, children first
    (``llamafactory/webui/common.py`` ``abort_process``): the training stops on its own and
    the shim, whose default for SIGABRT would be to die, waits for it and exits with it."""
    import psutil

    proc, out, go = _start(tmp_path)
    log = out / training.TRAIN_LOG
    try:
        _wait_for_log(proc, log)
        (child,) = psutil.Process(proc.pid).children()
        os.kill(child.pid, signal.SIGABRT)
        os.kill(proc.pid, signal.SIGABRT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"aborted" in log.read_bytes()


@pytest.mark.llamaboard  # imports LlamaBoard's runner: torch, transformers, gradio (10-70 s)
def test_llamaboards_own_runner_whose_event_stream_ended_finishes_and_shows_on_reopening(
    tmp_path, monkeypatch
):
    """LLaMA-Factory's own ``Runner.run_train`` launches the training (its ``Popen`` line, its
    environment: the shim first on PATH); the page's event generator is read once and then no
    more, as when the event stream ends; the training still finishes, and the generator a
    reopened page gets (``Runner.monitor``, through ``resume_btn``) reports it finished.
    Only the form's parsing is replaced (``_initialize``, ``_parse_train_args``: they need a
    whole Gradio form); importing the runner imports torch, transformers and gradio."""
    runner_mod = pytest.importorskip("llamafactory.webui.runner")
    from llamafactory.webui.locales import ALERTS

    real = tmp_path / "real-bin"
    real.mkdir()
    (real / "llamafactory-cli").write_text(FAKE_CLI)
    (real / "llamafactory-cli").chmod(0o755)
    (tmp_path / "cache").mkdir()
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "HF_HUB_OFFLINE")):
            monkeypatch.delenv(name)
    path = f"{real}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
    monkeypatch.setenv("PATH", training.llamaboard_path({"PATH": path}, str(tmp_path / "cache")))
    monkeypatch.setenv("FAKE_GO", str(tmp_path / "go"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "saves" / "train_1"

    class Manager:  # LlamaBoard's component registry, by id
        def get_elem_by_id(self, elem_id):
            return elem_id

        def get_id_by_elem(self, elem):
            return elem

    runner = runner_mod.Runner(Manager())
    monkeypatch.setattr(runner, "_initialize", lambda data, do_train, from_preview: "")
    monkeypatch.setattr(
        runner, "_parse_train_args", lambda data: {"output_dir": str(out), "report_to": "none"}
    )
    data = {
        "top.lang": "en",
        "top.model_name": "Custom",
        "top.finetuning_type": "lora",
        "train.output_dir": str(out),
    }
    events = runner.run_train(data)
    next(events)  # the page's first update; then nobody reads the stream any more
    proc = runner.trainer
    try:
        _wait_for_log(proc, out / training.TRAIN_LOG)
        assert proc.pid in activity.training_processes(os.getpid())
        (tmp_path / "go").touch()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reopened = list(runner.monitor())  # what a page that comes back gets
    output_box = reopened[-1]["train.output_box"]
    assert output_box.startswith(ALERTS["info_finished"]["en"])
    assert runner.running is False and runner.trainer is None
    events.close()
