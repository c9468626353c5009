"""Idle culling on the emulated cluster, with short timeouts set by configuration.

- alice starts a training from LlamaBoard (in a real browser) and closes every connection:
  her server lives as long as the training runs, well past her profile's idle timeout, and is
  culled once it has ended;
- bob keeps LlamaBoard open, with only Gradio's background traffic: he is culled;
- carol's server on a GPU profile with a short ``idle_timeout`` stops at that timeout, while
  dave's CPU server (long ``idle_timeout``) does not.

One stack for this module (its own profiles folder and culler settings).
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from llmspawner.hubconfig import REPO_PROFILES
from llmspawner_dev.login import HubSession
from llmspawner_dev.smoke import fetch_llamaboard
from llmspawner_dev.stack import DevStack
from llmspawner_dev.tiny_model import TINY_DATASET_NAME, write_tiny_dataset, write_tiny_model

from .browser import chromium, chromium_path, oidc_login
from .conftest import STACK_TIMEOUT
from .polling import wait_until
from .procs import processes_of

pytestmark = [pytest.mark.e2e, pytest.mark.llamaboard]

#: The GPU profiles' idle timeout in this stack (seconds): longer than opening a running
#: LlamaBoard and clicking through its form in a browser on a busy 2-core machine.
IDLE = 20
#: Seconds between culling passes, activity reports of the user servers, training checks.
CULL_EVERY, REPORT_EVERY, TRAINING_CHECK = 3, 2, 1
#: Longest delay between "idle for IDLE seconds" and "culled": one culling pass, one
#: activity report, the stop itself (pod deletion), and slack for a busy 2-core machine.
CULL_SLACK = CULL_EVERY + REPORT_EVERY + 25


@pytest.fixture(scope="module")
def cull_stack(tmp_path_factory):
    chromium_path()  # skip (fail in CI) before starting anything when there is no browser
    workdir = tmp_path_factory.mktemp("cull-stack")
    profiles = workdir / "profiles"
    shutil.copytree(REPO_PROFILES, profiles)
    for name in ("small.yaml", "medium.yaml"):
        path = profiles / name
        path.write_text(path.read_text().replace("idle_timeout: 1800", f"idle_timeout: {IDLE}"))
    stack = DevStack(
        workdir,
        timeout=STACK_TIMEOUT,
        hub_env={
            "LLMSPAWNER_PROFILES_DIR": str(profiles),
            "LLMSPAWNER_CULL_TIMEOUT": "600",
            "LLMSPAWNER_CULL_EVERY": str(CULL_EVERY),
        },
        hub_args=[
            f"--LLMSpawner.activity_report_interval={REPORT_EVERY}",
            f"--LLMSpawner.training_check_interval={TRAINING_CHECK}",
        ],
    )
    try:
        stack.start()
    except Exception as e:
        pytest.fail(f"the culling stack did not start: {e}\n{stack.log_tails(40)}")
    write_tiny_model(stack.pvc_path() / "models" / "tiny-llama")
    yield stack
    stack.stop()


def server_of(session: HubSession) -> dict | None:
    return session.server_model()


def last_activity(server: dict) -> datetime:
    return datetime.fromisoformat(server["last_activity"].replace("Z", "+00:00"))


def training_pids(stack, username: str) -> list[int]:
    with stack.kube() as kube:
        pod = kube.get_pod("default", f"jupyter-{username}")
    if pod is None or not pod["status"].get("podIP"):
        return []
    procs = processes_of(pod)  # through this stack's own pod object, not a /proc-wide user scan
    return [pid for pid, cmd in procs.items() if "llamafactory-cli train" in cmd]


class KeepActive:
    """While a person sets things up, their server sees real activity: a tracked Jupyter API
    call every 2 s (a timing-independent way to keep setup steps on a busy machine from
    looking like idleness). Stopped before the behaviour under test begins."""

    def __init__(self, *sessions: HubSession):
        import threading

        self.sessions = sessions
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(2):
            for session in self.sessions:
                try:
                    # Any tracked API call counts (not /api/status, which is never tracked).
                    session.get(f"/user/{session.username}/api/contents?content=0")
                except Exception:
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def preview_until_sent(page, model_path: str, timeout: float = 60) -> None:
    """Type the model path until LlamaBoard's "Preview command" shows it: the command the
    Start button runs is built from the same values, so Start then sends this path.

    The model name's change handler sets the model path (empty for "Custom") in a server
    round trip; on a busy machine its answer can land after the path was typed, and Start
    then fails with "Model not found." (seen in clean-clone CI runs).

    Raises:
        AssertionError: if the preview does not show the path within ``timeout`` seconds.
    """
    from playwright.sync_api import expect

    field = page.get_by_label("Model path")
    shown = f"--model_name_or_path {model_path}"
    deadline = time.monotonic() + timeout
    while True:
        field.fill(model_path)
        field.press("Tab")
        page.get_by_role("button", name="Preview command").click()
        try:
            expect(page.locator("body")).to_contain_text(shown, timeout=10_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def start_training_in_llamaboard(browser, stack, username: str, timeouts, artifacts) -> None:
    """Log in, open LlamaBoard, fill in the tiny model and dataset, click Start, close."""
    context = browser.new_context()
    page = context.new_page()
    try:
        oidc_login(page, stack.hub_url, username)
        page.goto(
            f"{stack.hub_url}/user/{username}/llamaboard/", timeout=timeouts.llamaboard * 1000
        )
        page.get_by_label("Model path").wait_for(timeout=timeouts.llamaboard * 1000)
        name = page.get_by_label("Model name")
        name.click()
        name.fill("Custom")
        page.keyboard.press("Enter")
        page.get_by_label("Model path").fill("/storage/models/tiny-llama")
        page.get_by_label("Model path").press("Tab")
        dataset = page.get_by_label("Dataset").first
        dataset.click()
        page.get_by_role("option", name=TINY_DATASET_NAME).click()
        page.keyboard.press("Escape")
        compute = page.get_by_label("Compute type")
        compute.click()
        page.get_by_role("option", name="fp32").click()
        epochs = page.get_by_label("Epochs")
        # 800 epochs of the 20-example set: about 100 s on an idle 2-core machine (each
        # epoch is ~0.1 s; starting the training takes ~25 s), so longer than twice IDLE.
        epochs.fill("800")
        epochs.press("Tab")
        preview_until_sent(page, "/storage/models/tiny-llama")
        page.get_by_role("button", name="Start").click()
        wait_until(lambda: training_pids(stack, username), 60, f"{username}'s training starts")
    except Exception:
        page.screenshot(path=str(artifacts / f"culling-{username}-llamaboard.png"), full_page=True)
        raise
    finally:
        context.close()  # every connection of the user's browser ends here


@pytest.fixture
def artifacts():
    """Folder for screenshots of failed browser steps (``test-artifacts/``, kept by CI)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


def test_training_keeps_alive_background_traffic_does_not(cull_stack, timeouts, artifacts):
    stack = cull_stack
    names = ("alice", "bob", "carol", "dave")
    sessions = {name: HubSession.login(stack.hub_url, name) for name in names}
    alice, bob, carol, dave = (sessions[n] for n in names)
    try:
        # carol (GPU profile, 15 s) and dave (CPU profile, 8 hours) start and stay idle.
        carol.start_server("medium")
        dave.start_server("cpu")
        carol_last = last_activity(carol.wait_ready(timeouts.server))
        dave.wait_ready(timeouts.server)
        wait_until(lambda: server_of(carol) is None, IDLE + CULL_SLACK, "carol is culled")
        idle_for = (datetime.now(timezone.utc) - carol_last).total_seconds()
        assert IDLE <= idle_for <= IDLE + CULL_SLACK, idle_for

        write_tiny_dataset(stack.pvc_path() / "users" / "alice" / "data")
        with chromium() as browser:
            # Active from the start: on a busy machine bob's start, and the first request's
            # token check, can take longer than IDLE after alice's server is ready.
            with KeepActive(alice, bob):
                alice.start_server("small")
                bob.start_server("small")
                alice.wait_ready(timeouts.server)
                bob.wait_ready(timeouts.server)
                # LlamaBoard takes tens of seconds to start on a CPU (it starts with the
                # server); wait for it first.
                with ThreadPoolExecutor(2) as pool:
                    for started in [
                        pool.submit(fetch_llamaboard, s, timeout=timeouts.llamaboard)
                        for s in (alice, bob)
                    ]:
                        started.result()
                start_training_in_llamaboard(browser, stack, "alice", timeouts, artifacts)
            training_started = time.monotonic()
            # From here on, alice has no connection at all.

            # bob opens LlamaBoard and leaves the tab open: only heartbeat/queue polling.
            with KeepActive(bob):
                bob_page = browser.new_context().new_page()
                oidc_login(bob_page, stack.hub_url, "bob")
                bob_page.goto(
                    f"{stack.hub_url}/user/bob/llamaboard/", timeout=timeouts.llamaboard * 1000
                )
                try:
                    bob_page.get_by_label("Model path").wait_for(timeout=timeouts.llamaboard * 1000)
                except Exception:
                    bob_page.screenshot(path=str(artifacts / "culling-bob-llamaboard.png"))
                    raise
            bob_opened = time.monotonic()
            # bob is culled although his LlamaBoard tab is still open.
            wait_until(lambda: server_of(bob) is None, IDLE + CULL_SLACK, "bob is culled")
            assert time.monotonic() - bob_opened >= IDLE
            assert not bob_page.is_closed()

        # alice: alive while her training runs, well past the idle timeout.
        while training_pids(stack, "alice"):
            assert server_of(alice) is not None, "alice was culled while her training ran"
            time.sleep(1)
        trained_for = time.monotonic() - training_started
        assert trained_for > 2 * IDLE, f"the training ran only {trained_for:.0f} s"
        # Once it has ended, normal idle rules apply again.
        wait_until(
            lambda: server_of(alice) is None, IDLE + CULL_SLACK, "alice is culled after training"
        )
        saves = stack.pvc_path() / "users" / "alice" / "saves"
        # The finished training's adapter (LlamaBoard saves to saves/<model>/lora/train_<date>).
        assert len(list(saves.glob("Custom/lora/train_*/adapter_model.safetensors"))) == 1

        # dave's CPU server (8 hours) is still there after all this.
        assert server_of(dave)["ready"] is True
    finally:
        for session in sessions.values():
            session.stop_and_close()
