"""A training started from LlamaBoard's Train tab in a real browser keeps running, and finishes,
after its event stream is cut (issue 13 §1).

LLaMA-Factory 0.9.5's LlamaBoard starts ``llamafactory-cli train`` with ``stderr=PIPE`` and
reads that pipe only inside the generator behind the page's Gradio event stream
(``llamafactory/webui/runner.py``, ``Runner._launch`` and ``Runner.monitor``;
https://github.com/hiyouga/LlamaFactory/issues/10180). When the stream ends, Gradio stops
iterating that generator (``gradio/queueing.py`` ``clean_events``: the job is no longer
``alive``), nobody reads the pipe, and without our shim (:mod:`llmspawner.training`) the
training blocks in ``write(2)`` once about 64 KiB more of its stderr (tqdm's bars, ~450-550
steps) have filled the pipe.

Here ``oscar`` (any name typed on the provider's page logs in; no other test uses him) starts
a LoRA fine-tune of the tiny random-weight model from the Train tab in Chromium, one example
per step and a loss logged every step, so tqdm redraws its bar at least twice a step. Once
the page shows the first steps, the browser context is closed: the page's connections end,
our proxy hook (:func:`llmspawner.singleuser.llamaboard.update_last_activity`) closes the
proxied stream to LlamaBoard, and LlamaBoard is then seen with no connection at all, for the
rest of the training. Asserted, on progress, never on time:

- while no connection to LlamaBoard exists, the training writes more than
  :data:`AFTER_CUT` bytes of tqdm bars (stderr only: a lower bound of its stderr) to
  ``train.log`` in the run's output folder and its step count grows to the end;
- it completes: ``train.log`` has the final metrics, the adapter is saved;
- reopening LlamaBoard shows this run (its output dir), "Finished." (``Runner.monitor``
  says so only for exit status 0) and the loss curve. That the reopened page finds the run
  still registered as running (``Engine.resume``: ``runner.running``) also shows that the
  first stream's generator was never iterated again after the cut: had it been, it would
  have seen the end and cleared it (``Runner._finalize``).

The speed after the cut against the speed before it (from ``trainer_log.jsonl``) is printed,
not asserted. The session's one stack (``conftest.stack``) is used.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from llmspawner import training
from llmspawner_dev.login import HubSession
from llmspawner_dev.smoke import fetch_llamaboard
from llmspawner_dev.tiny_model import (
    TINY_DATASET_NAME,
    TINY_MODEL_NAME,
    TINY_TEMPLATE,
    write_tiny_dataset,
    write_tiny_model,
)

from .browser import chromium, chromium_path, oidc_login
from .llamaboard_page import FINISHED, LlamaBoardPage
from .polling import wait_until
from .procs import processes_of

pytestmark = [pytest.mark.e2e, pytest.mark.llamaboard]

USER = "oscar"
OUTPUT_DIR = "stream-cut"
MODEL_PATH = f"/storage/models/{TINY_MODEL_NAME}"
#: A pipe buffer on Linux (bytes): what the training could write, unread, before it stalled.
PIPE_BUFFER = 64 * 1024
#: Bytes of stderr the training must write after the cut: half again what would have stalled
#: it (a blocking writer stops at a full pipe).
AFTER_CUT = 3 * PIPE_BUFFER // 2
#: Optimizer steps: a loss line per step makes tqdm clear and redraw its bar (~140 B of
#: stderr counted by :func:`tqdm_bytes` a step, measured), so about 700 steps write
#: AFTER_CUT; the rest is margin for a cut that comes late (step 272 in one run).
STEPS = 1500
#: LlamaBoard's "Extra arguments" (JSON merged over its own arguments, ``_parse_train_args``):
#: a fixed step count, and one dataset worker (LlamaBoard's 16 are 16 processes on 2 cores).
EXTRA_ARGS = {"optim": "adamw_torch", "preprocessing_num_workers": 1, "max_steps": STEPS}
TRAIN_TIMEOUT = float(os.environ.get("LLMSPAWNER_E2E_TRAIN_TIMEOUT", "900"))
#: What tqdm writes to stderr for transformers' ProgressCallback: a redraw of its bar,
#: ``\r 49%|████▉     | 295/600 [07:59<14:10,  2.79s/it]``, or a clear before a line is
#: printed (``\r`` and spaces, then ``\r``). Only stderr holds these, so their bytes in
#: ``train.log`` (stdout and stderr interleaved) are a lower bound of stderr's.
TQDM_BAR = re.compile(rb"\r *\d+%\|[^|\r\n]*\| *\d+/\d+ \[[^\]\r\n]*\]|\r {20,}(?=\r)")


def tqdm_bytes(data: bytes) -> int:
    """Bytes of tqdm bar redraws in ``data`` (a piece of ``train.log``)."""
    return sum(len(m.group()) for m in TQDM_BAR.finditer(data))


def trainer_rows(output: Path) -> list[dict]:
    """The training-step rows of LLaMA-Factory's ``trainer_log.jsonl`` (``[]`` before any)."""
    path = output / "trainer_log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line being written
            continue
        if "loss" in row:
            rows.append(row)
    return rows


def seconds(hms: str) -> int:
    """``"0:01:02"`` (LLaMA-Factory's elapsed time) → 62."""
    h, m, s = (int(x) for x in hms.split(":"))
    return 3600 * h + 60 * m + s


def board_process(pod: dict) -> tuple[int, int]:
    """(pid, port) of the pod's LlamaBoard (``llamafactory-cli webui``)."""
    (pid,) = [p for p, cmd in processes_of(pod).items() if "llamafactory-cli webui" in cmd]
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    return pid, int(env["GRADIO_SERVER_PORT"])


def board_connections(pid: int, port: int) -> int:
    """Established TCP connections to LlamaBoard's port, from its own network namespace's
    ``/proc/<pid>/net/tcp{,6}`` (local port ``port``, state 01).

    Raises:
        AssertionError: no socket listens on ``port`` there (the table was misread).
    """
    listening, established = False, 0
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port != port:
                continue
            if fields[3] == "0A":
                listening = True
            elif fields[3] == "01":
                established += 1
    assert listening, f"nothing listens on LlamaBoard's port {port} in /proc/{pid}/net"
    return established


def training_running(pod: dict) -> bool:
    return any("llamafactory-cli train" in cmd for cmd in processes_of(pod).values())


def open_llamaboard(browser, stack, timeouts):
    """A new browser context logged in as USER, on LlamaBoard's page; (context, board)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    oidc_login(page, stack.hub_url, USER)
    page.goto(f"{stack.hub_url}/user/{USER}/llamaboard/", timeout=timeouts.llamaboard * 1000)
    board = LlamaBoardPage(page)
    board.wait_ready(timeout=timeouts.llamaboard)
    return context, board


def failure_screenshot(context, name: str) -> None:
    folder = Path(__file__).resolve().parents[2] / "test-artifacts"
    folder.mkdir(exist_ok=True)
    for i, page in enumerate(context.pages):
        try:
            page.screenshot(path=str(folder / f"{name}-{i}.png"), full_page=True)
        except Exception:
            pass


def test_a_training_whose_event_stream_is_cut_keeps_running_and_finishes(stack, timeouts):
    chromium_path()  # skip (fail in CI) before anything starts when there is no browser
    from playwright.sync_api import expect

    pvc = stack.pvc_path()
    write_tiny_model(pvc / "models" / TINY_MODEL_NAME)
    write_tiny_dataset(pvc / "users" / USER / "data")
    output = pvc / "users" / USER / "saves" / "Custom" / "lora" / OUTPUT_DIR
    log_path = output / training.TRAIN_LOG
    t0 = time.monotonic()

    def say(what: str) -> None:  # the phases' times, for ``pytest -s``
        print(f"[stream cut] {time.monotonic() - t0:6.1f} s  {what}", flush=True)

    session = HubSession.login(stack.hub_url, USER)
    try:
        assert session.start_server("cpu") in (201, 202)
        session.wait_ready(timeout=timeouts.server)
        fetch_llamaboard(session, timeout=timeouts.llamaboard)
        say("server and LlamaBoard up")
        with stack.kube() as kube:
            pod = kube.get_pod(stack.namespace, f"jupyter-{USER}")
        board_pid, board_port = board_process(pod)

        with chromium() as browser:
            # -- start the training from the Train tab; the page shows its first steps ---
            context, board = open_llamaboard(browser, stack, timeouts)
            try:
                board.select_model(name="Custom", template=TINY_TEMPLATE)
                board.set_training(
                    dataset=[TINY_DATASET_NAME],
                    compute_type="fp32",  # no bf16 on a CPU
                    cutoff_len=64,
                    batch_size=1,
                    gradient_accumulation=1,
                    logging_steps=1,
                    save_steps=5000,  # no checkpoint before the end
                    extra_args=json.dumps(EXTRA_ARGS),
                    output_dir=OUTPUT_DIR,
                )
                board.preview_until_sent(MODEL_PATH)
                board.start_training()
                shown = wait_until(
                    board.progress, timeouts.llamaboard, "the page shows the training's steps"
                )
                assert shown.total == STEPS, shown
                say(f"training started from the Train tab; the page shows {shown}")
                # The page's event stream is one of LlamaBoard's connections now.
                assert board_connections(board_pid, board_port) >= 1
            except BaseException:
                failure_screenshot(context, "stream-cut-start-failed")
                raise
            # -- the cut: every connection of the page ends -------------------------------
            context.close()
            wait_until(
                lambda: board_connections(board_pid, board_port) == 0,
                60,
                "LlamaBoard has no connection left (the proxied event stream closed)",
            )
            assert training_running(pod), "the training ended before its stream was cut"
            cut_at = log_path.stat().st_size
            cut_rows = trainer_rows(output)
            cut_step = cut_rows[-1]["current_steps"] if cut_rows else 0
            say(f"cut: no connection to LlamaBoard; step {cut_step}, train.log {cut_at} B")

            # -- no connection while it trains; it runs to the end ------------------------
            deadline = time.monotonic() + TRAIN_TIMEOUT
            samples = 0
            while training_running(pod):
                assert board_connections(board_pid, board_port) == 0, (
                    "something connected to LlamaBoard while no page was open"
                )
                samples += 1
                assert time.monotonic() < deadline, (
                    f"the training did not end within {TRAIN_TIMEOUT} s: "
                    f"{len(trainer_rows(output))} steps, train.log {log_path.stat().st_size} B"
                )
                time.sleep(1)
            data = log_path.read_bytes()
            rows = trainer_rows(output)
            after_cut = tqdm_bytes(data[cut_at:])
            say(
                f"training ended; after the cut: {after_cut} B of tqdm bars on stderr "
                f"({len(data) - cut_at} B in train.log), steps {cut_step} -> "
                f"{rows[-1]['current_steps']}; train.log {len(data)} B; {samples} checks"
            )
            assert rows[-1]["current_steps"] == STEPS, rows[-1]
            assert rows[-1]["current_steps"] > cut_step
            assert after_cut > AFTER_CUT, after_cut
            assert b"train_runtime" in data[-20_000:], data[-2000:]
            assert (output / "adapter_model.safetensors").is_file()
            before = cut_step / max(1, seconds(cut_rows[-1]["elapsed_time"])) if cut_rows else 0
            span = seconds(rows[-1]["elapsed_time"]) - (
                seconds(cut_rows[-1]["elapsed_time"]) if cut_rows else 0
            )
            after = (STEPS - cut_step) / max(1, span)
            print(
                f"steps/s before the cut {before:.1f}, after {after:.1f} "
                f"(ratio {after / before if before else float('nan'):.2f}; not asserted)"
            )

            # -- reopening LlamaBoard shows the run, finished, with its loss curve --------
            context, board = open_llamaboard(browser, stack, timeouts)
            try:
                board.tab("Train")
                done = board.output_box.filter(visible=True).first
                expect(done).to_be_visible(timeout=60_000)
                expect(done).to_contain_text(FINISHED)
                expect(board.field("Output dir")).to_have_value(OUTPUT_DIR)
                expect(board.loss_plot).to_be_visible()
                expect(board.root.locator("body")).to_contain_text("'loss':")
                say("reopened LlamaBoard: Finished., the run's output dir, its loss curve")
            except BaseException:
                failure_screenshot(context, "stream-cut-reopen-failed")
                raise
            finally:
                context.close()
    finally:
        session.stop_and_close()
