"""Playwright helpers for LlamaBoard's page (LLaMA-Factory 0.9.5's web UI, Gradio 5).

:class:`LlamaBoardPage` drives the page as a person does, by the labels it shows in English:
the model fields at the top, the Chat tab (load a model, ask, read the answer) and the Train
tab (fields, Start, progress, loss plot), and the adapter ("Checkpoint path") to chat with.
It works on a whole page (``llamafactory-cli webui`` opened directly) and on LlamaBoard's
frame inside JupyterLab (a ``FrameLocator``): both offer the same ``get_by_*`` locators.

Where the page's parts come from (llamafactory 0.9.5, ``llamafactory/webui/``):
``components/top.py`` (model name, path, template, checkpoint path), ``components/infer.py``
and ``components/chatbot.py`` (Chat tab), ``components/train.py`` (Train tab),
``locales.py`` (the English labels and messages, e.g. ``ALERTS["info_loaded"]``),
``runner.py`` (``monitor``: the progress label ``Running i/n: ...``, "Finished." or
"Failed. Exit code: ..."), ``control.py`` (``get_trainer_info``: the loss plot from
``trainer_log.jsonl``). Upstream: https://github.com/hiyouga/LLaMA-Factory/tree/v0.9.5/src/llamafactory/webui

Every wait is bounded by a timeout in seconds (``timeout=``) and raises Playwright's
``AssertionError``/``TimeoutError`` naming what did not show.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

#: What the Chat tab's info box says once a model is loaded (locales.ALERTS["info_loaded"]).
LOADED = "Model loaded, now you can chat with your model!"
#: ... and once it is unloaded (locales.ALERTS["info_unloaded"]).
UNLOADED = "Model unloaded."
#: The Train tab's output box at the end of a training (ALERTS["info_finished"/"err_failed"]).
FINISHED = "Finished."
FAILED = "Failed."
#: The progress slider's label while a training runs (runner.monitor / control.get_trainer_info).
PROGRESS = re.compile(r"Running (\d+)/(\d+): (\S+) < (\S+)")


@dataclass(frozen=True)
class Progress:
    """The Train tab's progress label: ``steps`` done of ``total``, elapsed and remaining time
    as LlamaBoard writes them (``"0:00:12"``)."""

    steps: int
    total: int
    elapsed: str
    remaining: str


class LlamaBoardPage:
    """LlamaBoard's page, driven by its English labels.

    ``root`` is a Playwright ``Page`` or ``FrameLocator`` (LlamaBoard in JupyterLab's
    iframe). Methods return ``None`` unless they say otherwise; timeouts are in seconds.
    """

    def __init__(self, root):
        self.root = root

    # -- locating fields -------------------------------------------------------------------

    def field(self, label: str):
        """The one visible input whose label starts with ``label`` (Gradio puts a field's
        info text into its accessible name: "Model path Path to pretrained ...")."""
        return self.root.get_by_label(re.compile(rf"^\s*{re.escape(label)}(\s|$)")).filter(
            visible=True
        )

    def number(self, label: str):
        """The number box of the visible slider ``label`` (Gradio: "number input for X")."""
        return self.root.get_by_label(f"number input for {label}", exact=True).filter(visible=True)

    def button(self, name: str):
        return self.root.get_by_role("button", name=name, exact=True).filter(visible=True)

    def tab(self, name: str) -> None:
        """Open the tab ``name`` ("Train", "Evaluate & Predict", "Chat", "Export")."""
        from playwright.sync_api import expect

        tab = self.root.get_by_role("tab", name=name, exact=True)
        tab.click()
        expect(tab).to_have_attribute("aria-selected", "true")

    def wait_ready(self, *, timeout: float = 300) -> None:
        """Wait until the page is up and its labels are in English (LlamaBoard fills them in
        after the page loads, from ``lang`` of its ``user_config.yaml``)."""
        from playwright.sync_api import expect

        expect(self.root.get_by_role("tab", name="Train")).to_be_visible(timeout=timeout * 1000)
        expect(self.field("Model name")).to_have_count(1, timeout=timeout * 1000)

    # -- setting fields --------------------------------------------------------------------

    def fill(self, label: str, value: str) -> None:
        """Type ``value`` into the text box ``label`` (replacing what it held)."""
        box = self.field(label)
        box.fill(value)
        box.press("Tab")  # the change reaches Gradio on blur

    def choose(self, label: str, value: str) -> None:
        """Pick ``value`` from the dropdown ``label`` (typed to filter, then its option
        clicked; a dropdown that takes custom values gets it typed and Enter)."""
        from playwright.sync_api import expect

        box = self.field(label)
        box.click()
        box.fill(value)
        option = self.root.get_by_role("option", name=value, exact=True)
        if option.count() == 0:
            box.press("Enter")
        else:
            option.first.click()
        expect(box).to_have_value(value)

    def choose_many(self, label: str, values: list[str]) -> None:
        """Pick each of ``values`` in the multiselect dropdown ``label`` (Dataset, Checkpoint
        path). Its options are listed when it gets focus (LlamaBoard's ``.focus`` handlers)."""
        from playwright.sync_api import expect

        box = self.field(label)
        for value in values:
            box.click()
            option = self.root.get_by_role("option", name=value, exact=True)
            expect(option).to_be_visible(timeout=30_000)
            option.click()
        box.press("Escape")
        for value in values:
            expect(self.selected(label)).to_contain_text(value)

    def selected(self, label: str):
        """The chosen tokens of the multiselect dropdown ``label`` (a locator of its block)."""
        return self.root.locator(".block").filter(has=self.field(label)).last.locator(".token")

    def set_number(self, label: str, value: float | int | str) -> None:
        """Set the slider ``label`` through its number box."""
        from playwright.sync_api import expect

        box = self.number(label)
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        expect(box).to_have_value(str(value))

    def open_section(self, name: str) -> None:
        """Open the accordion ``name`` ("Extra configurations", "LoRA configurations")."""
        header = self.root.get_by_role("button", name=re.compile(rf"^\s*{re.escape(name)}"))
        header = header.filter(visible=True)
        if header.get_attribute("aria-expanded") != "true":
            header.click()

    def select_model(self, *, name: str, path: str | None = None, template: str | None = None):
        """Choose the model ``name`` (LlamaBoard's list, e.g. "SmolLM2-135M-Instruct", or
        "Custom"), then its ``path`` and chat ``template`` when given (else as LlamaBoard
        fills them in: its preset's path, or the hub id and the model's template)."""
        from playwright.sync_api import expect

        if self.field("Model name").input_value() != name:
            self.choose("Model name", name)
        if path is not None:
            box = self.field("Model path")
            box.fill(path)
            box.press("Tab")
            expect(box).to_have_value(path)
        if template is not None and self.field("Chat template").input_value() != template:
            self.choose("Chat template", template)

    # -- Chat tab --------------------------------------------------------------------------

    @property
    def info_box(self):
        """The Chat tab's message box ("Model loaded, ...": a read-only text area)."""
        return self.root.locator("textarea[disabled]").filter(visible=True)

    def load_model(self, *, timeout: float = 300) -> None:
        """Chat tab: press "Load model" and wait for "Model loaded, ..." and the chat box."""
        from playwright.sync_api import expect

        self.tab("Chat")
        self.button("Load model").click()
        expect(self.info_box).to_have_value(LOADED, timeout=timeout * 1000)
        expect(self.root.get_by_placeholder("Input...")).to_be_visible()

    def unload_model(self, *, timeout: float = 60) -> None:
        """Chat tab: press "Unload model" and wait for "Model unloaded."."""
        from playwright.sync_api import expect

        self.tab("Chat")
        self.button("Unload model").click()
        expect(self.info_box).to_have_value(UNLOADED, timeout=timeout * 1000)

    def chat_settings(
        self,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> None:
        """Set the Chat tab's sampling sliders (``temperature=0.01`` is LlamaBoard's minimum:
        as good as greedy)."""
        for label, value in (
            ("Maximum new tokens", max_new_tokens),
            ("Temperature", temperature),
            ("Top-p", top_p),
        ):
            if value is not None:
                self.set_number(label, value)

    @property
    def conversation(self):
        return self.root.get_by_role("log", name="chatbot conversation").filter(visible=True)

    def bot_messages(self) -> list[str]:
        """The texts of the model's answers shown so far, oldest first."""
        return self.conversation.locator('[data-testid="bot"]').all_inner_texts()

    def clear_chat(self) -> None:
        """Press "Clear history"."""
        from playwright.sync_api import expect

        self.button("Clear history").click()
        expect(self.conversation.locator('[data-testid="bot"]')).to_have_count(0)

    def ask(self, question: str, *, timeout: float = 300) -> str:
        """Send ``question`` from the Chat tab and return the whole answer once it is
        complete: the chatbot's status tracker (Gradio's ``.wrap`` of the chatbot block) is
        hidden again when the streaming event ends. Raises ``TimeoutError`` otherwise."""
        before = len(self.bot_messages())
        tracker = self._chatbot_tracker()
        self.root.get_by_placeholder("Input...").fill(question)
        self.button("Submit").click()
        deadline = time.monotonic() + timeout
        started = False
        while time.monotonic() < deadline:
            answers = self.bot_messages()
            busy = "hide" not in (tracker.get_attribute("class") or "").split()
            pending = self.conversation.locator(".message.bot.pending").count() > 0
            if busy or pending:
                started = True
            elif len(answers) > before and (started or answers[-1].strip()):
                # Idle after the answer appeared: the stream ended (the tracker may already
                # have been hidden again between two polls for a short answer).
                time.sleep(0.5)
                if self.bot_messages() == answers:
                    return answers[-1]
            time.sleep(0.5)
        raise TimeoutError(
            f"no complete answer to {question!r} within {timeout} s; shown: {self.bot_messages()}"
        )

    def _chatbot_tracker(self):
        block = self.root.locator(".block").filter(has=self.conversation).last
        return block.locator(":scope > .wrap").first

    # -- Train tab -------------------------------------------------------------------------

    def set_training(
        self,
        *,
        dataset: list[str] | None = None,
        data_dir: str | None = None,
        learning_rate: str | None = None,
        epochs: str | None = None,
        max_samples: str | None = None,
        compute_type: str | None = None,
        cutoff_len: int | None = None,
        batch_size: int | None = None,
        gradient_accumulation: int | None = None,
        lr_scheduler: str | None = None,
        logging_steps: int | None = None,
        save_steps: int | None = None,
        warmup_steps: int | None = None,
        report_to: str | None = None,
        extra_args: str | None = None,
        lora_rank: int | None = None,
        lora_alpha: int | None = None,
        output_dir: str | None = None,
    ) -> None:
        """Fill in the Train tab; arguments left ``None`` keep the page's value.

        Labels (locales.py): Data dir, Dataset, Learning rate, Epochs, Max samples, Compute
        type, Cutoff length, Batch size, Gradient accumulation, LR scheduler; under "Extra
        configurations": Logging steps, Save steps, Warmup steps, "Enable external logger"
        (``report_to``: none, wandb, mlflow, ...), "Extra arguments" (``extra_args``, JSON
        that LlamaBoard merges over its arguments, default ``{"optim": "adamw_torch"}``;
        e.g. ``"preprocessing_num_workers": 1`` on a small machine: LlamaBoard's 16 workers
        each start a process); under "LoRA configurations": LoRA rank,
        LoRA alpha; Output dir (``saves/<model name>/<method>/<output dir>``).
        """
        self.tab("Train")
        if data_dir is not None:
            self.fill("Data dir", data_dir)
        if dataset:
            self.choose_many("Dataset", dataset)
        for label, value in (
            ("Learning rate", learning_rate),
            ("Epochs", epochs),
            ("Max samples", max_samples),
        ):
            if value is not None:
                self.fill(label, value)
        if compute_type is not None:
            self.choose("Compute type", compute_type)
        if lr_scheduler is not None:
            self.choose("LR scheduler", lr_scheduler)
        for label, value in (
            ("Cutoff length", cutoff_len),
            ("Batch size", batch_size),
            ("Gradient accumulation", gradient_accumulation),
        ):
            if value is not None:
                self.set_number(label, value)
        extra = (logging_steps, save_steps, warmup_steps, report_to, extra_args)
        if any(v is not None for v in extra):
            self.open_section("Extra configurations")
            for label, value in (
                ("Logging steps", logging_steps),
                ("Save steps", save_steps),
                ("Warmup steps", warmup_steps),
            ):
                if value is not None:
                    self.set_number(label, value)
            if report_to is not None:
                self.choose("Enable external logger", report_to)
            if extra_args is not None:
                self.fill("Extra arguments", extra_args)
        if lora_rank is not None or lora_alpha is not None:
            self.open_section("LoRA configurations")
            if lora_rank is not None:
                self.set_number("LoRA rank", lora_rank)
            if lora_alpha is not None:
                self.set_number("LoRA alpha", lora_alpha)
        if output_dir is not None:
            self.choose("Output dir", output_dir)

    def preview_until_sent(self, path: str, *, timeout: float = 60) -> None:
        """Type the model ``path`` until the Train tab's "Preview command" shows it: Start
        builds its command from the same values, so Start then sends this path.

        The model name's change handler sets the model path (empty for "Custom") in a server
        round trip; on a busy machine its answer can land after the path was typed, and Start
        then fails with "Model not found." (``test_culling.preview_until_sent``, seen there).

        Raises:
            AssertionError: the preview does not show the path within ``timeout`` seconds.
        """
        from playwright.sync_api import expect

        self.tab("Train")
        shown = f"--model_name_or_path {path}"
        deadline = time.monotonic() + timeout
        while True:
            box = self.field("Model path")
            box.fill(path)
            box.press("Tab")
            self.button("Preview command").click()
            try:
                expect(self.root.locator("body")).to_contain_text(shown, timeout=10_000)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def start_training(self) -> None:
        """Press Start on the Train tab."""
        self.tab("Train")
        self.button("Start").click()

    def progress(self) -> Progress | None:
        """The progress label now (``None`` before the first logged step and after the end)."""
        label = self.root.get_by_text(PROGRESS).filter(visible=True)
        if label.count() == 0:
            return None
        match = PROGRESS.search(label.first.inner_text())
        if match is None:
            return None
        steps, total, elapsed, remaining = match.groups()
        return Progress(int(steps), int(total), elapsed, remaining)

    @property
    def output_box(self):
        """The Train tab's output (the running log, then "Finished." or "Failed. ...")."""
        return self.root.get_by_text(re.compile(rf"^({re.escape(FINISHED)}|{re.escape(FAILED)})"))

    def wait_training(self, *, timeout: float = 600, on_progress=None) -> str:
        """Wait for the training to end; return "Finished." or "Failed. Exit code: ...".

        ``on_progress(Progress)`` is called for each new progress label seen (every poll,
        about once a second), e.g. to record the steps.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            done = self.output_box.filter(visible=True)
            if done.count():
                return done.first.inner_text()
            now = self.progress()
            if now is not None and now != last:
                last = now
                if on_progress is not None:
                    on_progress(now)
            time.sleep(1)
        raise TimeoutError(f"the training did not end within {timeout} s (last: {last})")

    @property
    def loss_plot(self):
        """The Train tab's loss plot (Gradio ``Plot`` of a matplotlib figure: an ``img``)."""
        block = self.root.locator(".block").filter(has=self.root.get_by_text("Loss", exact=True))
        return block.filter(visible=True).last.locator("img")

    # -- adapters --------------------------------------------------------------------------

    def select_adapters(self, names: list[str]) -> None:
        """Choose ``names`` (output dirs under ``saves/<model>/<method>/``) as "Checkpoint
        path", the adapters that Chat loads and Train continues from."""
        self.choose_many("Checkpoint path", names)
