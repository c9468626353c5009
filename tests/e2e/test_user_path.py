"""One user's whole path in a real browser (Debian's Chromium driven by Playwright).

``ivan`` (offered by the OIDC provider, see ``conftest.BROWSER_USER``) opens the hub, logs in on
the provider's page, reads the four profiles on the spawn page (description, GPU share, free
slices, idle timeout), picks ``medium`` with the keyboard, watches the progress page, lands in
JupyterLab (the server's default URL), starts LlamaBoard from its launcher tile (a JupyterLab
tab: jupyter-server-proxy's ``new_browser_tab`` is off), clicks its Train tab,
and finds his training jobs on the queue page, with state, position and log.

Meanwhile ``judy`` holds the other ½ GPU slice with her own server, so the spawn page shows
"1 of 2" for medium and ivan's queued medium job waits, first in line, for as long as needed.

Throughout, for every page and popup of the browser: each response from the hub's origin is
2xx/3xx, nothing fails to load from it, the console has no error and no page throws. Requests
to any other host are aborted (clusters are often offline) and printed; the pages work without
them. Screenshots go to ``test-artifacts/`` and, with ``LLMSPAWNER_UPDATE_SCREENSHOTS=1``, to
``docs/img/`` (the README's screenshots).
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.storage import models_path
from llmspawner_dev.login import HubSession
from llmspawner_dev.tiny_model import (
    TINY_MODEL_NAME,
    lora_sft_config,
    write_tiny_dataset,
    write_tiny_model,
)

from .browser import CHROMIUM_ARGS, chromium_path
from .conftest import BROWSER_USER
from .polling import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.llamaboard]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
DOCS_IMG = REPO_ROOT / "docs" / "img"
VIEWPORT = {"width": 1280, "height": 800}

USER = BROWSER_USER["sub"]
#: Holds the other ½ GPU slice (any name typed on the provider's page logs in).
NEIGHBOUR = "judy"
API = "/services/llm-queue/api"
#: Hosts that hub pages may ask for and that are blocked here: Gradio's page template loads
#: iframe-resizer from cdnjs and its theme's font from Google Fonts (gradio/templates).
KNOWN_EXTERNAL_HOSTS = {"cdnjs.cloudflare.com", "fonts.googleapis.com", "fonts.gstatic.com"}

#: The sentences the spawn form adds to a profile's description (llmspawner.spawner), per slug,
#: with the emulated cluster's free slices: judy's server holds one of medium's two.
FORM_ADDITIONS = {
    "cpu": "Stops after 8 hours without activity.",
    "small": (
        "GPU: ¼ GPU by time-slicing; a slice shares the GPU's memory with the other users of "
        "that GPU. Free now: 4 of 4 slices. Stops after 30 minutes without activity."
    ),
    "medium": (
        "GPU: ½ GPU by time-slicing; a slice shares the GPU's memory with the other users of "
        "that GPU. Free now: 1 of 2 slices. Stops after 30 minutes without activity."
    ),
    "large": "GPU: 1 GPU. Free now: 2 of 2 GPUs. Stops after 30 minutes without activity.",
}

#: Reports what the spawn-pending page shows, through a binding that outlives the page (it
#: reloads itself when the server is ready): its sentences when it loads, then every text of
#: ``#progress-message`` with the progress bar's value (jupyterhub's spawn_pending.html).
PROGRESS_RECORDER = """
document.addEventListener('DOMContentLoaded', () => {
  const message = document.getElementById('progress-message');
  const bar = document.getElementById('progress-bar');
  if (!message || !bar) return;
  const intro = document.querySelectorAll('.text-center > p:not(#progress-message)');
  window.__llmspawnerProgress('page', Array.from(intro, p => p.innerText).join(' '), null);
  const report = () => window.__llmspawnerProgress(
    'message', message.textContent, bar.getAttribute('aria-valuenow'));
  new MutationObserver(report).observe(message, {childList: true, characterData: true,
                                                  subtree: true});
});
"""


@dataclass
class Traffic:
    """What the browser did, across every page, popup and frame of one context."""

    hub_origin: str
    bad_responses: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    blocked: list[tuple[str, str]] = field(default_factory=list)  # (page URL, request URL)
    console_errors: list[str] = field(default_factory=list)
    explained_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    unload_errors: list[str] = field(default_factory=list)
    hub_requests: int = 0
    _leaving: str | None = None

    def on_hub(self, url: str) -> bool:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" == self.hub_origin

    def attach(self, context) -> None:
        hub_host = urlsplit(self.hub_origin).hostname
        # Every host but the hub's (and its identity provider on the same machine) is aborted.
        context.route(re.compile(rf"^https?://(?!{re.escape(hub_host)}[:/])"), self._block)
        context.on("response", self._response)
        context.on("requestfailed", self._failed)
        context.on("console", self._console)
        context.on("weberror", self._page_error)

    def _block(self, route, request) -> None:
        try:
            page_url = request.frame.url
        except Exception:  # a service worker's request has no frame
            page_url = ""
        self.blocked.append((page_url, request.url))
        route.abort()

    def _response(self, response) -> None:
        if self.on_hub(response.url):
            self.hub_requests += 1
            if response.status >= 400:
                self.bad_responses.append(
                    f"{response.status} {response.request.method} {response.url}"
                )

    def _failed(self, request) -> None:
        if not self.on_hub(request.url):
            return  # the blocked ones
        line = f"{request.failure} {request.method} {request.url}"
        # net::ERR_ABORTED is the browser cancelling (a page left, an event stream closed).
        (self.cancelled if request.failure == "net::ERR_ABORTED" else self.failed).append(line)

    def _console(self, message) -> None:
        if message.type != "error":
            return
        page_url = message.page.url if message.page else ""
        source = message.location.get("url", "")
        if not (self.on_hub(page_url) or self.on_hub(source)):
            return  # the identity provider's page (not this project's)
        line = f"{message.text} (at {source}, page {page_url})"
        if self._leaving and source.startswith(self._leaving):
            self.unload_errors.append(line)
            return
        blocked = {url for _, url in self.blocked}
        if source in blocked or any(url in message.text for url in blocked):
            self.explained_errors.append(line)  # a blocked request's own failure
        else:
            self.console_errors.append(line)

    def _page_error(self, error) -> None:
        self.page_errors.append(f"{error.error} (page {error.page.url if error.page else ''})")

    @contextmanager
    def leaving(self, prefix: str):
        """While the browser leaves a page: console errors of scripts under ``prefix`` are
        that page's goodbye, listed and not counted.

        Gradio's client closes its connections on ``beforeunload`` and logs the aborted
        event stream as errors ("AbortError: signal is aborted without reason", "Unexpected
        error Connection errored out."), gradio/js/app Index.svelte and the client's
        ``close()``; a person never sees them, the page is gone.
        """
        self._leaving = prefix
        try:
            yield
        finally:
            self._leaving = None

    def report(self) -> str:
        lines = [f"{self.hub_requests} responses from the hub's origin {self.hub_origin}"]
        lines.append(f"requests to other hosts, blocked ({len(self.blocked)}):")
        lines += [f"  {url}  (from {page})" for page, url in self.blocked]
        lines.append(f"console errors caused by the blocking ({len(self.explained_errors)}):")
        lines += [f"  {line}" for line in self.explained_errors]
        lines.append(f"console errors of LlamaBoard as it was left ({len(self.unload_errors)}):")
        lines += [f"  {line.splitlines()[0]}" for line in self.unload_errors]
        lines.append(f"requests cancelled by the browser ({len(self.cancelled)}):")
        lines += [f"  {line}" for line in self.cancelled]
        return "\n".join(lines)

    def check(self) -> None:
        problems = {
            "hub responses >= 400": self.bad_responses,
            "requests to the hub that failed": self.failed,
            "console errors": self.console_errors,
            "uncaught errors in pages": self.page_errors,
        }
        found = "\n".join(
            f"{what}:\n  " + "\n  ".join(lines) for what, lines in problems.items() if lines
        )
        assert not found, found
        from_hub_pages = {urlsplit(url).hostname for page, url in self.blocked if self.on_hub(page)}
        assert from_hub_pages <= KNOWN_EXTERNAL_HOSTS, "hub pages ask for unknown external hosts"


def screenshot(page, name: str, *, full_page: bool = False) -> None:
    """Save ``test-artifacts/<name>.png`` and, when asked, ``docs/img/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)
    if os.environ.get("LLMSPAWNER_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / f"{name}.png"), full_page=full_page)


class Steps:
    """Times the steps of the path and prints them (``pytest -s`` shows them)."""

    def __init__(self):
        self.t0 = self.last = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        print(f"[user path] {name:<58} {now - self.last:6.1f} s  (total {now - self.t0:5.1f} s)")
        self.last = now


def profile_texts() -> dict[str, tuple[str, str]]:
    """``{slug: (display name, description as the form shows it)}`` from profiles/*.yaml."""
    texts = {}
    for path in REPO_PROFILES.glob("*.yaml"):
        profile = yaml.safe_load(path.read_text())
        slug = profile["slug"]
        texts[slug] = (profile["display_name"], f"{profile['description']} {FORM_ADDITIONS[slug]}")
    return texts


def gpu_pods(stack) -> list[str]:
    with stack.kube() as kube:
        return sorted(
            p["metadata"]["name"]
            for p in kube.list_pods(stack.namespace)
            if (p["spec"].get("nodeName") or "").startswith("gpu")
            and p.get("status", {}).get("phase") in ("Pending", "Running")
        )


def job_of(session: HubSession, job_id: int) -> dict:
    response = session.get(f"{API}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def submit_job(session: HubSession, output_dir: str, profile: str) -> dict:
    config = lora_sft_config(
        model=f"{models_path()}/{TINY_MODEL_NAME}", dataset_dir="data", output_dir=output_dir
    )
    response = session.request(
        "POST", f"{API}/jobs", json={"config": yaml.safe_dump(config), "profile": profile}
    )
    assert response.status_code == 201, response.text
    return response.json()


@contextmanager
def screenshots_on_failure(context, name: str):
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        for i, page in enumerate(context.pages):
            try:
                page.screenshot(path=str(ARTIFACTS / f"{name}-failed-{i}.png"), full_page=True)
            except Exception:
                pass
        raise


def test_ivan_walks_from_login_to_llamaboard_and_the_queue(stack, timeouts):
    chromium = chromium_path()  # skip (fail in CI) before anything starts when there is none
    from playwright.sync_api import sync_playwright

    hub = stack.hub_url
    steps = Steps()
    assert gpu_pods(stack) == [], "another test left pods on the GPU nodes"
    pvc = stack.pvc_path()
    write_tiny_model(pvc / "models" / TINY_MODEL_NAME)
    write_tiny_dataset(pvc / "users" / USER / "data")

    neighbour = HubSession.login(hub, NEIGHBOUR)
    api = HubSession.login(hub, USER)  # ivan's token, for the queue's REST API
    jobs: list[dict] = []
    pool = ThreadPoolExecutor(1)
    try:
        # The hub answers a start request once the server is ready or after 10 s
        # (slow_spawn_timeout): judy's server starts in the background.
        neighbour_started = pool.submit(neighbour.start_server, "medium")
        # A tiny LoRA fine-tune on the CPU profile: it runs while ivan spawns.
        jobs.append(submit_job(api, "out/tiny-lora", "cpu"))
        wait_until(lambda: gpu_pods(stack) == [f"jupyter-{NEIGHBOUR}"], 30, "judy's pod is bound")
        steps.done("judy's pod bound, a training job submitted")

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
            context = browser.new_context(viewport=VIEWPORT)
            traffic = Traffic(hub)
            traffic.attach(context)
            progress: list[tuple[str, str, str | None]] = []  # (what, text, bar's value)
            context.expose_binding(
                "__llmspawnerProgress", lambda source, *shown: progress.append(shown)
            )
            context.add_init_script(PROGRESS_RECORDER)
            page = context.new_page()
            try:
                with screenshots_on_failure(context, "user-path"):
                    walk(page, context, traffic, stack, api, jobs, progress, timeouts, steps)
                    neighbour_started.result()
            finally:
                print(traffic.report())
                context.close()
                browser.close()
        traffic.check()
    finally:
        pool.shutdown()
        for job in jobs:
            if job_of(api, job["id"])["state"] in ("queued", "admitted", "running"):
                api.request("DELETE", f"{API}/jobs/{job['id']}")
        for session in (api, neighbour):
            session.stop_and_close()
    steps.done("servers stopped")


def walk(page, context, traffic, stack, api, jobs, progress, timeouts, steps) -> None:
    from playwright.sync_api import expect

    hub = stack.hub_url

    # -- the hub's login page, then the identity provider's form ---------------------------
    page.goto(f"{hub}/")
    expect(page).to_have_url(f"{hub}/hub/login?next=%2Fhub%2F")
    page.get_by_role("button", name="Sign in with your organisation").click()
    expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()
    page.get_by_label("Username").fill(USER)  # the dev provider's labelled box
    page.get_by_role("button", name="Authorize", exact=True).click()

    # -- the spawn page: four profiles, as profiles/*.yaml and the cluster say ---------------
    expect(page).to_have_url(f"{hub}/hub/spawn")
    expect(page.get_by_role("heading", name="Server Options")).to_be_visible()
    texts = profile_texts()
    order = ["cpu", "small", "medium", "large"]
    items = page.locator("#kubespawner-profiles-list label.profile")
    expect(items.locator("h3")).to_have_text([texts[s][0] for s in order])
    expect(items.locator("p")).to_have_text([texts[s][1] for s in order])
    radio = {s: page.get_by_role("radio", name=texts[s][0]) for s in order}

    def checked(slug: str) -> None:
        for s in order:
            (expect(radio[s]).to_be_checked if s == slug else expect(radio[s]).not_to_be_checked)()

    checked("cpu")  # the default profile
    radio["cpu"].focus()
    page.keyboard.press("ArrowDown")
    checked("small")
    page.keyboard.press("ArrowDown")
    checked("medium")
    radio["large"].focus()
    expect(radio["large"]).to_be_focused()
    page.keyboard.press("Space")
    checked("large")
    page.keyboard.press("ArrowUp")
    checked("medium")
    expect(radio["medium"]).to_be_focused()
    screenshot(page, "spawn-page", full_page=True)
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Start")).to_be_focused()
    steps.done("logged in; spawn page read; medium picked with the keyboard")
    page.keyboard.press("Enter")

    # -- the progress page, then JupyterLab: the server's default URL -----------------------
    page.wait_for_url(f"{hub}/hub/spawn-pending/{USER}?*")
    page.wait_for_url(f"{hub}/user/{USER}/lab**", timeout=timeouts.server * 1000)
    # What the progress page showed while it was there (a few seconds), in order.
    intro = [text for what, text, _ in progress if what == "page"]
    assert intro == [
        "Your server is starting up. You will be redirected automatically when it's ready for you."
    ], progress
    shown = [(text, value) for what, text, value in progress if what == "message"]
    assert shown[:2] == [
        ("Server requested", "0"),
        (f"MLflow experiment '{USER}-experiments' is ready.", "2"),
    ], progress
    # kubespawner's events carry their time: "2026-01-01T10:00:00Z [Normal] Successfully ..."
    events = [re.sub(r"^\S+Z \[Normal\] ", "", text) for text, _ in shown[2:-1]]
    assert events[0] == f"Successfully assigned default/jupyter-{USER} to gpu-ts2", progress
    assert "Started container notebook" in events, progress
    assert shown[-1] == (f"Server ready at /user/{USER}/", "100"), progress
    steps.done("progress page; server ready; JupyterLab opened")

    # ivan's medium job waits behind judy's and his own server: medium is full now.
    jobs.append(submit_job(api, "out/tiny-lora-medium", "medium"))

    # -- JupyterLab: the launcher's LlamaBoard tile opens LlamaBoard in a JupyterLab tab ----
    board_prefix = f"{hub}/user/{USER}/llamaboard/"
    tile = page.locator(".jp-LauncherCard", has_text="LlamaBoard")
    expect(tile).to_be_visible(timeout=60_000)
    expect(tile.locator(".jp-LauncherCard-label")).to_have_text("LlamaBoard")
    expect(tile.get_by_role("img", name="LlamaBoard")).to_be_visible()
    # JupyterLab does not ask whether to fetch Jupyter's news (fetchNews off for offline
    # clusters: jupyter-config/lab/settings/overrides.d/llmspawner.json).
    expect(
        page.locator(".jp-toast-container, .Toastify").get_by_role("button", name="No", exact=True)
    ).to_have_count(0)
    tile.click()
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="LlamaBoard")
    expect(tab).to_have_attribute("aria-selected", "true")
    frame = page.frame_locator(f'iframe[src="{hub}/user/{USER}/llamaboard/"]')
    train_tab = frame.get_by_role("tab", name="Train")
    expect(train_tab).to_be_visible(timeout=timeouts.llamaboard * 1000)
    assert len(context.pages) == 1, [p.url for p in context.pages]  # no new browser tab
    frame.get_by_role("tab", name="Chat").click()
    expect(frame.get_by_label("Stage", exact=True)).to_be_hidden()
    frame.get_by_role("tab", name="Train").click()
    expect(frame.get_by_role("tab", name="Train")).to_have_attribute("aria-selected", "true")
    # Gradio puts a field's info text into its label: "Model path  Path to pretrained ...".
    for label in ("Model name", "Model path", "Stage", "Data dir", "Dataset"):
        field = frame.get_by_label(re.compile(rf"^\s*{label}(\s|$)")).filter(visible=True)
        expect(field).to_have_count(1)
    expect(frame.get_by_role("heading", level=1)).to_contain_text(
        "LLaMA Factory: Unified Efficient Fine-Tuning of 100+ LLMs"
    )
    # The screenshot: the model fields at the top, the Train tab and its first fields below.
    frame.get_by_text("Language", exact=True).evaluate(
        "label => { label.scrollIntoView({block: 'start'}); window.scrollBy(0, -16); }"
    )
    screenshot(page, "llamaboard")
    steps.done("JupyterLab; LlamaBoard from the launcher tile; Train tab")

    # -- the queue page: both jobs, with state and position; the finished one's log ----------
    done, waiting = jobs
    finished = wait_until(
        lambda: (j := job_of(api, done["id"]))["state"] in ("succeeded", "failed") and j,
        timeouts.server,
        "the CPU job ends",
    )
    assert finished["state"] == "succeeded", finished
    full = "waiting for a free ½ GPU slice of profile medium: 2 in use"
    queued = wait_until(
        lambda: (j := job_of(api, waiting["id"]))["reason"] == full and j,
        60,
        "the medium job waits for a slice",
    )
    assert (queued["state"], queued["position"]) == ("queued", 1), queued
    steps.done("the CPU job succeeded; the medium job waits first in line")

    with traffic.leaving(board_prefix):  # LlamaBoard's frame in JupyterLab
        page.goto(f"{hub}/services/llm-queue/")
    expect(page).to_have_url(f"{hub}/services/llm-queue/")
    expect(page.get_by_role("heading", name="Training queue")).to_be_visible()
    expect(page.locator("#jobs thead th")).to_have_text(
        [
            "Job",
            "State",
            "Position",
            "Profile",
            "Priority",
            "Submitted (UTC)",
            "Started",
            "Finished",
            "MLflow",
            "",
        ]
    )
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(2)
    submitted = queued["submitted_at"][:19].replace("T", " ")
    expect(page.locator(f"#job-{queued['id']} td")).to_have_text(
        [
            f"#{queued['id']}",
            f"queued {full}",
            "1",
            "½ GPU — 7B with QLoRA",
            "normal",
            submitted,
            "",
            "",
            "",
            "Log Cancel",
        ]
    )
    expect(page.locator(f"#job-{finished['id']} td")).to_have_text(
        [
            f"#{finished['id']}",
            "succeeded",
            "",
            "CPU only",
            "normal",
            finished["submitted_at"][:19].replace("T", " "),
            finished["started_at"][11:19],
            finished["finished_at"][11:19],
            "run",
            "Log",
        ]
    )
    screenshot(page, "queue-page")

    page.locator(f"#job-{finished['id']}").get_by_role("link", name="Log", exact=True).click()
    expect(page).to_have_url(f"{hub}/services/llm-queue/jobs/{finished['id']}#log")
    expect(page.locator("#state")).to_have_text("succeeded")
    expect(page.get_by_role("heading", name="Log (last 200 lines)")).to_be_visible()
    expect(page.locator("#log-text")).to_contain_text("train_loss")
    with context.expect_page() as opened:
        page.get_by_role("link", name="whole log").click()
    whole = opened.value
    expect(whole).to_have_url(f"{hub}{API}/jobs/{finished['id']}/logs")
    expect(whole.locator("body")).to_contain_text("Loading dataset tiny_alpaca.json...")
    expect(whole.locator("body")).to_contain_text("train_loss")
    whole.close()

    # ivan cancels the waiting job from the page.
    page.get_by_role("link", name="all jobs").click()
    page.locator(f"#job-{queued['id']}").get_by_role("button", name="Cancel").click()
    expect(page).to_have_url(f"{hub}/services/llm-queue/jobs/{queued['id']}")
    expect(page.locator("#state")).to_have_text("cancelled")
    steps.done("queue page, job log, cancel")
