"""The user's way to LlamaBoard, through the product against LlamaBoard alone, in one run.

Four figures (issue 16 §3), each a ratio of medians, product / direct, the two measured
alternately in every round (which one goes first alternates too):

- ``llamaboard_start`` (target <= 1.25): a logged-in user on the spawn page clicks *Start*
  (the default profile) → JupyterLab opens (the server's default URL) → the user clicks the
  LlamaBoard tile of the launcher → LlamaBoard's *Train* tab, in its JupyterLab tab, is
  clicked and selected. Against: ``llamafactory-cli webui`` alone, started cold (a new
  process, the environment the proxy gives it) → the browser, polling its URL, gets its page
  → the *Train* tab is clicked and selected. Both timed from the click / the process start
  to the selected tab, in Debian's Chromium (Playwright), a new user (and a new server) per
  round.
- ``llamaboard_page`` (target <= 1.2): LlamaBoard's page loaded in a new browser context (no
  cache: all assets fetched) until the *Train* tab is clicked and selected, through the
  hub's public URL (configurable-http-proxy → jupyterhub-singleuser → jupyter-server-proxy
  → LlamaBoard, ``/user/<name>/llamaboard/``) against LlamaBoard's own port; ``--loads``
  loads of each per round, alternating.
- ``gradio_event`` (target <= 1.2): one Gradio event round trip of a button that answers at
  once — the Train tab's *Abort* button (``set_abort``, nothing running), sent as Gradio's
  JavaScript client sends it (``POST gradio_api/queue/join``, then the Server-Sent Events
  stream ``gradio_api/queue/data`` until ``process_completed``), through the proxy chain
  against direct; ``--events`` of each per round, alternating.

- ``progress_delay`` (target <= 1.2, with ``--progress``, the default): the delivery delay of
  LlamaBoard's training progress stream, through the hub against direct: in the last round, a
  short LoRA training of the tiny model (``llmspawner_dev.tiny_model``) started from the
  Train tab of each LlamaBoard in turn (the JupyterLab tab's and the direct one's, in the
  round's order); for each logging step, the time from its line in the
  run's ``trainer_log.jsonl`` (polled every 0.1 s) to the browser showing that step, or a
  later one, in the progress bar (:func:`delivery_delays`); the ratio of the two medians.
  LlamaBoard reads the log every 2 s, so about 1 s of either delay is its own polling. A
  training that fails is logged and the figure printed as ``failed``.

The stack is :class:`llmspawner_dev.stack.DevStack` (emulated cluster, hub, proxy, OIDC
provider, MLflow), started once in a temporary folder, as ``make dev`` starts it.

A page Chromium broke is loaded again, never measured: Chromium fails a page's pending
requests with ``net::ERR_NETWORK_CHANGED`` whenever an interface with an address comes or
goes on the machine, as every emulated cluster's bridge does at its start and stop (other
sessions' tests, on a shared machine), and Gradio's page does not retry a module it failed to
load (see :data:`NETWORK_CHANGED`). A page load so broken is done again; a start whose page
was broken reloads it (its log line says so); a page without its Train tab
:data:`SETTLE_S` seconds after it loaded is reloaded; after :data:`MAX_LOADS` loads the round
fails, naming the requests that failed.

Run: ``.venv/bin/python -P benchmarks/llamaboard_path.py`` (3 rounds: about 15 minutes on 2
cores); ``make bench`` runs one round (``--rounds 1 --loads 2 --events 10 --epochs 2``, about
6 minutes at load 4). Prints each measurement (with the seconds since the run began), a
table, and the figures as ``ratio NAME VALUE target TARGET`` (``make bench`` collects them).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from llmspawner_dev.browser import CHROMIUM_ARGS

REPO = Path(__file__).resolve().parents[1]

#: Targets of issue 16 §3 (product / direct). ``progress_delay`` (§3 (c), the training
#: progress stream's delivery delay, through the hub / direct) is printed with ``--progress``.
TARGETS = {
    "llamaboard_start": 1.25,
    "llamaboard_page": 1.2,
    "gradio_event": 1.2,
    "progress_delay": 1.2,
}

VIEWPORT = {"width": 1280, "height": 800}

#: The environment jupyter-server-proxy gives LlamaBoard in the user's server
#: (llmspawner.singleuser.llamaboard.llamaboard_environment), less the port and root path.
DIRECT_ENV = {
    "GRADIO_SERVER_NAME": "127.0.0.1",
    "GRADIO_SHARE": "0",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DISABLE_VERSION_CHECK": "1",
    "BROWSER": "true",
    "PYTHONUNBUFFERED": "1",
}

#: The Gradio API name of the Train tab's Abort button (llamafactory/webui/components/
#: train.py: ``stop_btn.click(engine.runner.set_abort)``): no inputs, no outputs.
ABORT_API_NAME = "set_abort"


def chromium_path() -> str:
    path = os.environ.get("LLMSPAWNER_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise SystemExit("no Chromium: install Debian's chromium package (scripts/install.sh)")
    return path


#: When this run began (``time.monotonic``): log lines say how far into the run they are.
BEGAN = time.monotonic()


def log(text: str) -> None:
    """Print ``text`` (flushed), prefixed with the seconds since the run began."""
    print(f"[{time.monotonic() - BEGAN:5.0f} s] {text}", flush=True)


def say(text: str) -> None:
    """Print ``text`` as it is (flushed): the summary and the ``ratio`` lines, which
    ``make bench`` parses (benchmarks/run_all.py ``parse_ratio``: a line that starts with
    ``ratio``)."""
    print(text, flush=True)


# -- the two LlamaBoards ------------------------------------------------------------------


def free_port() -> int:
    from llmspawner_dev.processes import free_port as _free_port

    return _free_port()


class DirectBoard:
    """``llamafactory-cli webui`` alone, in its own folder, on a free port."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> None:
        from llmspawner_dev.parts import venv_bin

        self.folder.mkdir(parents=True, exist_ok=True)
        # LlamaBoard starts a training as `llamafactory-cli train` found on PATH (llamafactory/
        # webui/runner.py `_launch`): this virtual environment's, as in the user's server.
        path = os.pathsep.join([str(venv_bin()), os.environ.get("PATH", "")])
        env = {**os.environ, **DIRECT_ENV, "GRADIO_SERVER_PORT": str(self.port), "PATH": path}
        logfile = open(self.folder / "webui.log", "ab")  # noqa: SIM115 - the child keeps it
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(venv_bin() / "llamafactory-cli"), "webui"],
            cwd=self.folder,
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logfile.close()

    def stop(self) -> None:
        import signal

        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)


def train_tab_selected(frame, timeout_s: float) -> None:
    """Click LlamaBoard's Train tab in ``frame`` (a page or frame locator) once it is there,
    and wait until it is selected: the page is interactive."""
    from playwright.sync_api import expect

    tab = frame.get_by_role("tab", name="Train")
    tab.click(timeout=timeout_s * 1000)
    expect(tab).to_have_attribute("aria-selected", "true", timeout=timeout_s * 1000)


# -- pages Chromium broke on a network change ------------------------------------------------

#: Chromium's error for the requests it drops when this machine's network changes: an
#: interface with an address comes or goes. Measured here (2026-12-02, Chromium 156): a
#: bridge with an IPv4 address brought up or deleted during a page load, as every emulated
#: cluster's pod network does at its start and stop (``dcbr...``,
#: devtools/devcluster/podnet.py), failed 5-31 of the page's requests, loopback ones too;
#: a veth added to or removed from a bridge (a pod's start or end) failed none. Gradio's
#: page loads its components as JavaScript modules (``import()``) and does not retry one
#: that failed ("Failed to fetch dynamically imported module"): the page stays without its
#: tabs until it is loaded again. Known Chromium behaviour: jupyterhub/jupyterhub#1495,
#: https://github.com/control-center/serviced/pull/2650 (crbug.com/289271, 436086).
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"
#: Seconds a loaded LlamaBoard page may take to show its Train tab before it counts as
#: stalled (a working load took 1-10 s on 2 cores at load 4-9, through the hub too).
SETTLE_S = 40.0
#: Loads of one measurement, the first included, before it fails (each reload is logged).
MAX_LOADS = 3


class PageStalled(RuntimeError):
    """A loaded LlamaBoard page showed no Train tab within :data:`SETTLE_S` seconds and no
    network change explains it (the message lists the requests that failed)."""


class FailedRequests:
    """The requests of one browser context that failed (Playwright's ``requestfailed``:
    pages and their frames), to tell a page Chromium broke from a slow one.

    ``context`` is a Playwright ``BrowserContext`` (anything with ``on(event, callback)``);
    ``clock`` returns seconds (``time.monotonic``).
    """

    def __init__(self, context, clock=time.monotonic):
        self.clock = clock
        self.failed: list[tuple[float, str, str]] = []  # (time, URL, Chromium's error)
        context.on("requestfailed", self._record)

    def _record(self, request) -> None:
        self.failed.append((self.clock(), request.url, request.failure or ""))

    def network_changed_since(self, since: float) -> bool:
        """Whether Chromium dropped a request on a network change at or after ``since``."""
        return any(t >= since and error == NETWORK_CHANGED for t, _, error in self.failed)

    def describe(self, since: float, limit: int = 6) -> str:
        """The requests failed since ``since``, e.g. ``"3 failed: net::ERR_NETWORK_CHANGED
        http://.../assets/x.js; ..."`` (``limit`` of them named), or ``"none failed"``."""
        recent = [(url, error) for t, url, error in self.failed if t >= since]
        if not recent:
            return "none failed"
        named = "; ".join(f"{error} {url[:120]}" for url, error in recent[:limit])
        return f"{len(recent)} failed: {named}"


def wait_interactive(
    frame,
    requests: FailedRequests,
    *,
    loaded_at: float,
    deadline: float,
    reload,
    what: str,
    settle_s: float = SETTLE_S,
) -> int:
    """Wait until ``frame``'s Train tab is clicked and selected; reload the page when
    Chromium broke it (a network change, :data:`NETWORK_CHANGED`) or when it stalled (no
    Train tab ``settle_s`` seconds after it loaded), :data:`MAX_LOADS` loads in all.

    Args:
        frame: the LlamaBoard page or frame locator.
        requests: the failed requests of its browser context.
        loaded_at: when the current load began (``requests.clock`` time).
        deadline: ``requests.clock`` time after which it fails.
        reload: loads LlamaBoard again (a new ``goto``, or the iframe reloaded).
        what: names the page in messages and log lines, e.g. ``"direct start"``.
        settle_s: see :data:`SETTLE_S`.

    Returns:
        How many times it reloaded (0 for a load that worked at once).

    Raises:
        PageStalled: the last load stalled too, or a load stalled without a network change
            after another stalled (the message lists the failed requests).
        TimeoutError: ``deadline`` passed (the message says how many loads and what failed).
    """
    from playwright.sync_api import Error as PlaywrightError

    reloads = 0
    while True:
        try:
            train_tab_selected(frame, 2.0)
            return reloads
        except (PlaywrightError, AssertionError):
            pass
        now = requests.clock()
        broken = requests.network_changed_since(loaded_at)
        stalled = now - loaded_at > settle_s
        if now > deadline:
            raise TimeoutError(
                f"{what}: LlamaBoard's Train tab not interactive by the deadline after "
                f"{reloads + 1} load(s); {requests.describe(loaded_at)}"
            )
        if broken or stalled:
            why = (
                "Chromium dropped requests on a network change"
                if broken
                else (f"no Train tab {now - loaded_at:.0f} s after the load")
            )
            if reloads + 1 >= MAX_LOADS:
                raise PageStalled(
                    f"{what}: {why} at each of {MAX_LOADS} loads; {requests.describe(loaded_at)}"
                )
            log(f"{what}: reloading LlamaBoard ({why}; {requests.describe(loaded_at)})")
            loaded_at = requests.clock()
            reloads += 1
            reload()


class DirectStartFailed(RuntimeError):
    """``llamafactory-cli webui`` exited while it started (the message has its log's end)."""


def time_direct_start(browser, board: DirectBoard, timeout_s: float) -> float:
    """Seconds from starting ``board``'s process to its Train tab selected in the browser.

    Raises:
        DirectStartFailed: the process exited meanwhile. (Gradio's ``launch`` checks that
            it can reach its own URL, 5 ``HEAD`` requests of 3 s at most, and exits with
            "When localhost is not accessible, a shareable link must be created" when none
            is answered in time: seen on a 2-core machine at a load average of 10.)
    """
    from playwright.sync_api import Error as PlaywrightError

    context = browser.new_context(viewport=VIEWPORT)
    requests = FailedRequests(context)
    try:
        page = context.new_page()
        board.start()
        deadline = board.started + timeout_s

        def alive() -> None:
            if board.process.poll() is not None:
                tail = (board.folder / "webui.log").read_text(errors="replace")[-600:]
                raise DirectStartFailed(f"llamafactory-cli webui exited: ...{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"LlamaBoard alone not interactive within {timeout_s} s")

        def load() -> float:
            """Load the page once LlamaBoard answers; return when the load that worked began."""
            while True:
                began = time.monotonic()
                try:
                    page.goto(board.url, wait_until="load", timeout=10_000)
                    return began
                except PlaywrightError:  # connection refused while LlamaBoard imports
                    alive()
                    time.sleep(0.1)

        loaded_at = load()
        reloads = wait_interactive(
            page,
            requests,
            loaded_at=loaded_at,
            deadline=deadline,
            reload=load,
            what="direct start",
        )
        seconds = time.monotonic() - board.started
        if reloads:
            log(f"direct start: {seconds:.2f} s includes {reloads} reload(s)")
        return seconds
    finally:
        context.close()


def browser_login(context, hub_url: str, username: str) -> None:
    """Log ``username`` in on the OIDC provider's page (any name logs in), as a person would."""
    page = context.new_page()
    page.goto(f"{hub_url}/hub/oauth_login")
    page.fill('input[name="sub"]', username)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{hub_url}/hub/spawn**", timeout=60_000)
    page.close()


def llamaboard_iframe(hub_url: str, username: str) -> str:
    """The CSS selector of LlamaBoard's iframe in the user's JupyterLab."""
    return f'iframe[src="{hub_url}/user/{username}/llamaboard/"]'


def time_hub_start(
    context, requests: FailedRequests, hub_url: str, username: str, timeout_s: float
) -> float:
    """Seconds from *Start* on the spawn page to LlamaBoard's Train tab selected in its
    JupyterLab tab (opened from the launcher tile). Leaves the page open. A LlamaBoard frame
    that Chromium broke (or that stalled) is reloaded (:func:`wait_interactive`); so is
    JupyterLab when its launcher tile does not show within :data:`SETTLE_S` seconds."""
    page = context.new_page()
    page.goto(f"{hub_url}/hub/spawn")
    start = page.get_by_role("button", name="Start")
    start.wait_for(timeout=60_000)
    started = time.monotonic()
    deadline = started + timeout_s
    start.click()
    page.wait_for_url(f"{hub_url}/user/{username}/lab**", timeout=timeout_s * 1000)
    tile = page.locator(".jp-LauncherCard", has_text="LlamaBoard")
    for attempt in range(1, MAX_LOADS + 1):
        loaded_at = time.monotonic()
        try:
            tile.click(timeout=min(SETTLE_S, max(deadline - loaded_at, 1)) * 1000)
            break
        except Exception:
            if attempt == MAX_LOADS or time.monotonic() > deadline:
                raise TimeoutError(
                    f"hub start: JupyterLab's LlamaBoard tile not shown after {attempt} "
                    f"load(s); {requests.describe(loaded_at)}"
                ) from None
            log(f"hub start: reloading JupyterLab (no tile; {requests.describe(loaded_at)})")
            page.reload(wait_until="load", timeout=timeout_s * 1000)
    selector = llamaboard_iframe(hub_url, username)
    frame = page.frame_locator(selector).last
    # The frame's page comes once LlamaBoard answers through the proxy, which holds the
    # request while LlamaBoard is still starting (eager start): the stall clock starts when
    # Gradio's page is there (its <gradio-app> element), a network change counts from the
    # click.
    clicked = loaded_at
    try:
        frame.locator("gradio-app").wait_for(
            state="attached", timeout=max(deadline - time.monotonic(), 1) * 1000
        )
    except Exception:
        raise TimeoutError(
            f"hub start: no LlamaBoard page in its JupyterLab tab by the deadline; "
            f"{requests.describe(clicked)}"
        ) from None
    loaded_at = clicked if requests.network_changed_since(clicked) else time.monotonic()

    def reload() -> None:  # the LlamaBoard tab's iframe only (same origin as JupyterLab)
        page.locator(selector).last.evaluate("f => f.contentWindow.location.reload()")

    reloads = wait_interactive(
        frame,
        requests,
        loaded_at=loaded_at,
        deadline=deadline,
        reload=reload,
        what="hub start",
    )
    seconds = time.monotonic() - started
    if reloads:
        log(f"hub start: {seconds:.2f} s includes {reloads} reload(s) of LlamaBoard's frame")
    return seconds


def time_page_load(browser, url: str, storage_state, timeout_s: float, what: str) -> float:
    """Seconds to load ``url`` in a new context (empty cache) until the Train tab is selected.

    A load that Chromium broke on a network change (:data:`NETWORK_CHANGED`) is not a
    measurement of the path: it is logged and done again in a new context,
    :data:`MAX_LOADS` loads in all.

    Raises:
        PageStalled: every load was broken, or a load stalled (no Train tab within
            :data:`SETTLE_S` seconds) without a network change.
    """
    for attempt in range(1, MAX_LOADS + 1):
        context = browser.new_context(viewport=VIEWPORT, storage_state=storage_state)
        requests = FailedRequests(context)
        try:
            page = context.new_page()
            started = time.monotonic()
            try:
                page.goto(url, wait_until="load", timeout=timeout_s * 1000)
                train_tab_selected(page, min(SETTLE_S, timeout_s))
                if not requests.network_changed_since(started):
                    return time.monotonic() - started
            except Exception:
                if not requests.network_changed_since(started):
                    raise PageStalled(
                        f"{what}: no Train tab within {min(SETTLE_S, timeout_s):.0f} s of "
                        f"loading {url}; {requests.describe(started)}"
                    ) from None
            log(f"{what}: load {attempt} not counted, {requests.describe(started)}")
        finally:
            context.close()
    raise PageStalled(
        f"{what}: Chromium dropped requests on a network change at each of "
        f"{MAX_LOADS} loads of {url}"
    )


# -- Gradio events over HTTP --------------------------------------------------------------


def gradio_fn_index(client: httpx.Client, root: str, api_name: str, headers: dict) -> int:
    """The ``fn_index`` (dependency id) of the event named ``api_name`` in the Gradio app at
    ``root`` (``GET <root>config``)."""
    response = client.get(f"{root}config", headers=headers)
    response.raise_for_status()
    for dep in response.json()["dependencies"]:
        if dep.get("api_name") == api_name:
            return dep["id"]
    raise LookupError(f"no Gradio event named {api_name!r} at {root}")


def gradio_round_trip(client: httpx.Client, root: str, fn_index: int, headers: dict) -> float:
    """Seconds for one event round trip, as Gradio's JS client makes it (protocol sse_v3):
    ``POST <root>gradio_api/queue/join`` then the ``queue/data`` event stream until
    ``process_completed``.

    Raises:
        RuntimeError: the event failed or the stream ended before it completed.
    """
    session_hash = secrets.token_hex(6)
    body = {
        "data": [],
        "event_data": None,
        "fn_index": fn_index,
        "trigger_id": None,
        "session_hash": session_hash,
    }
    started = time.perf_counter()
    response = client.post(f"{root}gradio_api/queue/join", json=body, headers=headers)
    response.raise_for_status()
    stream_headers = {**headers, "Accept": "text/event-stream"}
    params = {"session_hash": session_hash}
    with client.stream(
        "GET", f"{root}gradio_api/queue/data", params=params, headers=stream_headers
    ) as stream:
        stream.raise_for_status()
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                if not message.get("success", True):
                    raise RuntimeError(f"event failed: {message}")
                return time.perf_counter() - started
    raise RuntimeError("the event stream ended before process_completed")


# -- training progress --------------------------------------------------------------------


def llamaboard_page_helpers():
    """tests/e2e/llamaboard_page.py (helper E's Playwright helpers), loaded by path."""
    import importlib.util

    path = REPO / "tests" / "e2e" / "llamaboard_page.py"
    spec = importlib.util.spec_from_file_location("llamaboard_page", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("llamaboard_page", module)
    spec.loader.exec_module(module)
    return module


#: Gradio's error toast (``gr.Error``, or an exception in an event handler): frontend
#: StreamingBar component, ``class="toast-body error"``, ``data-testid="toast-body"``.
ERROR_TOAST = '[data-testid="toast-body"].error'


def delivery_delays(written: dict[int, float], shown: dict[int, float]) -> list[float]:
    """For each step in the run's log, the seconds until the page showed that step or a
    later one (the label shows the latest step: steps between two of its updates reach the
    user with the next one) (pure).

    Args:
        written: step -> when its line was seen in ``trainer_log.jsonl``.
        shown: step -> when the progress label first showed it.

    Returns:
        One delay per written step that some label reached, in step order. A page that
        showed only the last step gives every step its delay until the end: a stream that
        is not delivered live scores high, not on its one matching step.
    """
    delays = []
    for step in sorted(written):
        later = [t for s, t in shown.items() if s >= step]
        if later:
            delays.append(min(later) - written[step])
    return delays


def shown_steps(root, pattern) -> int | None:
    """The steps done that the Train tab's progress label shows now (``pattern``: the
    label's regular expression, its first group the steps), or None when none is shown.
    Reads with a 1 s timeout: the label goes away when the training ends, between finding
    it and reading it (Playwright's default would wait 30 s for it then)."""
    from playwright.sync_api import Error as PlaywrightError

    label = root.get_by_text(pattern).filter(visible=True)
    try:
        if label.count() == 0:
            return None
        match = pattern.search(label.first.inner_text(timeout=1000))
    except PlaywrightError:
        return None
    return int(match.group(1)) if match else None


def progress_delays(
    root, folder: Path, model_path: str, timeout_s: float, epochs: int
) -> list[float]:
    """Train the tiny model from LlamaBoard's open Train tab; return, for each progress label
    the page showed, the seconds from that step's line in the run's ``trainer_log.jsonl`` to
    the page showing it (both polled every 0.1 s here).

    Args:
        root: the LlamaBoard page (direct) or the frame of its JupyterLab tab (through the hub).
        folder: LlamaBoard's working folder as seen from here (``data/`` is written there,
            the run's ``saves/`` are read there).
        model_path: the tiny model's path as LlamaBoard sees it.
        timeout_s: seconds the training may take.
        epochs: epochs of the training (20 steps each, one log line per step).

    Raises:
        TimeoutError: the training did not end in time.
        RuntimeError: it ended with something else than LlamaBoard's "Finished.".
    """
    from llmspawner_dev.tiny_model import TINY_DATASET_NAME, TINY_TEMPLATE, write_tiny_dataset

    helpers = llamaboard_page_helpers()
    write_tiny_dataset(folder / "data")
    board = helpers.LlamaBoardPage(root)
    board.wait_ready(timeout=timeout_s)
    board.select_model(name="Custom", path=model_path, template=TINY_TEMPLATE)
    output_dir = f"bench_{secrets.token_hex(3)}"
    board.set_training(
        data_dir="data",
        dataset=[TINY_DATASET_NAME],
        epochs=str(epochs),
        max_samples="20",
        compute_type="fp32",  # LlamaBoard's default bf16 refuses to train on a CPU
        cutoff_len=64,
        batch_size=1,
        gradient_accumulation=1,
        logging_steps=1,
        save_steps=5000,
        report_to="none",
        # LlamaBoard's default 16 dataset workers are 16 processes on a 2-core machine.
        extra_args=json.dumps({"optim": "adamw_torch", "preprocessing_num_workers": 1}),
        output_dir=output_dir,
    )
    board.start_training()
    written: dict[int, float] = {}
    shown: dict[int, float] = {}
    offset = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = time.monotonic()
        for path in folder.glob(f"saves/*/*/{output_dir}/trainer_log.jsonl"):
            with open(path) as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            offset += len(complete)
            for line in complete.splitlines():
                step = json.loads(line).get("current_steps")
                if step is not None:
                    written.setdefault(step, now)
        steps = shown_steps(root, helpers.PROGRESS)
        if steps is not None:
            shown.setdefault(steps, time.monotonic())
        error = root.locator(ERROR_TOAST).filter(visible=True)
        if error.count():  # e.g. the training could not be started: it never ends then
            raise RuntimeError(f"LlamaBoard showed an error: {error.first.inner_text()[:300]!r}")
        if board.output_box.filter(visible=True).count():
            break
        time.sleep(0.1)
    else:
        raise TimeoutError(f"the training did not end within {timeout_s} s")
    result = board.output_box.filter(visible=True).first.inner_text()
    if not result.startswith(helpers.FINISHED):
        raise RuntimeError(f"the training ended with {result[:300]!r}")
    delays = delivery_delays(written, shown)
    log(
        f"progress: {len(written)} steps in trainer_log.jsonl, {len(shown)} progress labels "
        f"shown (steps {sorted(shown)}), {len(delays)} matched"
    )
    return delays


def measure_progress(which, *, page, frame, stack, username, board, args) -> list[float]:
    """:func:`progress_delays` through the hub (``which == "hub"``: the JupyterLab tab's
    frame, the user's folder on the shared volume) or direct (``board``'s own page and
    folder), with the same tiny model (written once on the shared volume)."""
    from llmspawner.storage import user_slug
    from llmspawner_dev.tiny_model import TINY_MODEL_NAME, write_tiny_model

    model = stack.pvc_path() / "models" / TINY_MODEL_NAME
    if not model.exists():
        write_tiny_model(model)
    if which == "hub":
        folder = stack.pvc_path() / "users" / user_slug(username)
        return progress_delays(
            frame, folder, f"/storage/models/{TINY_MODEL_NAME}", args.timeout, args.epochs
        )
    return progress_delays(page, board.folder, str(model), args.timeout, args.epochs)


# -- the run --------------------------------------------------------------------------------


@contextmanager
def dev_stack(workdir: Path, timeout: float, hub_args: list[str]):
    from llmspawner_dev.stack import DevStack

    stack = DevStack(workdir, timeout=timeout, hub_args=hub_args, on_step=lambda _: None)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(args) -> dict[str, tuple[list[float], list[float]]]:
    from playwright.sync_api import sync_playwright

    from llmspawner_dev.login import HubSession

    results: dict[str, tuple[list[float], list[float]]] = {
        "llamaboard_start": ([], []),
        "llamaboard_page": ([], []),
        "gradio_event": ([], []),
    }
    progress: dict[str, list[float]] = {"hub": [], "direct": []}
    timeout = args.timeout
    hub_args = list(args.hub_arg or [])
    with tempfile.TemporaryDirectory(prefix="llamaboard-path-") as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        with dev_stack(tmp / "stack", timeout, hub_args) as stack:
            hub = stack.hub_url
            log(f"dev stack up in {time.monotonic() - t0:.1f} s at {hub}")
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=chromium_path(), args=list(CHROMIUM_ARGS)
                )
                try:
                    for r in range(1, args.rounds + 1):
                        run_round(r, browser, stack, hub, tmp, args, results, progress, HubSession)
                finally:
                    browser.close()
    if args.progress:
        results["progress_delay"] = (progress["hub"], progress["direct"])
    return results


def run_round(r, browser, stack, hub, tmp, args, results, progress, HubSession) -> None:
    timeout = args.timeout
    username = f"bench{r}-{secrets.token_hex(2)}"
    board = DirectBoard(tmp / f"direct-{r}")
    context = browser.new_context(viewport=VIEWPORT)
    requests = FailedRequests(context)
    session = None
    try:
        browser_login(context, hub, username)
        # -- (a) start: alternate which one goes first --------------------------------------
        order = ("direct", "hub") if r % 2 else ("hub", "direct")
        for which in order:
            if which == "direct":
                for attempt in range(1, 4):
                    try:
                        seconds = time_direct_start(browser, board, timeout)
                        break
                    except DirectStartFailed as e:  # not timed: a new process, a new port
                        log(f"round {r} start     direct attempt {attempt} failed: {e}")
                        if attempt == 3:
                            raise
                        board = DirectBoard(tmp / f"direct-{r}-{attempt}")
                results["llamaboard_start"][1].append(seconds)
            else:
                seconds = time_hub_start(context, requests, hub, username, timeout)
                results["llamaboard_start"][0].append(seconds)
            log(f"round {r} start     {which:<6} {seconds:7.2f} s")
        state = context.storage_state()
        # -- (b) page loads -------------------------------------------------------------------
        hub_board = f"{hub}/user/{username}/llamaboard/"
        for i in range(args.loads):
            for which in order if i % 2 == 0 else order[::-1]:
                if which == "direct":
                    seconds = time_page_load(browser, board.url, None, timeout, "page direct")
                    results["llamaboard_page"][1].append(seconds)
                else:
                    seconds = time_page_load(browser, hub_board, state, timeout, "page hub")
                    results["llamaboard_page"][0].append(seconds)
                log(f"round {r} page load {which:<6} {seconds:7.2f} s")
        # -- (c) Gradio events ------------------------------------------------------------------
        session = HubSession.login(hub, username)
        auth = {"Authorization": f"token {session.token}"}
        hub_root = f"/user/{username}/llamaboard/"
        with httpx.Client(timeout=30) as direct:
            direct_fn = gradio_fn_index(direct, board.url, ABORT_API_NAME, {})
            hub_fn = gradio_fn_index(session.client, f"{hub}{hub_root}", ABORT_API_NAME, auth)
            # Where the proxy chain's time goes: the user's server reached on its own port,
            # without configurable-http-proxy (jupyterhub-singleuser + jupyter-server-proxy).
            routes = stack.proxy_routes()
            route = routes.get(f"/user/{username}") or routes.get(f"/user/{username}/")
            server_root = f"{route['target'].rstrip('/')}{hub_root}" if route else None
            paths = {
                "direct": (direct, board.url, direct_fn, {}),
                "hub": (session.client, f"{hub}{hub_root}", hub_fn, auth),
            }
            if server_root:
                paths["server"] = (session.client, server_root, hub_fn, auth)
            per = {which: [] for which in paths}
            for i in range(args.events + 1):  # the first of each warms the connection up
                names = list(paths) if i % 2 == 0 else list(paths)[::-1]
                for which in names:
                    seconds = gradio_round_trip(*paths[which])
                    if i:
                        per[which].append(seconds)
            results["gradio_event"][0].extend(per["hub"])
            results["gradio_event"][1].extend(per["direct"])
            results.setdefault("gradio_event_server", ([], []))[0].extend(per.get("server", []))
            log(
                f"round {r} event     "
                + "  ".join(f"{w} {median(v) * 1e3:6.1f} ms" for w, v in per.items())
                + f"  (medians of {args.events}; server: the user's server without the hub's "
                "proxy)"
            )
        if args.progress and r == args.rounds:
            # -- (c) the training progress stream: one training through each, in turn ------
            hub_page = context.pages[-1]
            frame = hub_page.frame_locator(llamaboard_iframe(hub, username)).last
            direct_context = browser.new_context(viewport=VIEWPORT)
            direct_requests = FailedRequests(direct_context)
            try:
                direct_page = direct_context.new_page()

                def load_direct() -> None:
                    direct_page.goto(board.url, wait_until="load", timeout=args.timeout * 1000)

                loaded_at = time.monotonic()
                load_direct()
                wait_interactive(
                    direct_page,
                    direct_requests,
                    loaded_at=loaded_at,
                    deadline=loaded_at + args.timeout,
                    reload=load_direct,
                    what="progress direct page",
                )
                for which in order:
                    began = time.monotonic()
                    try:
                        delays = measure_progress(
                            which,
                            page=direct_page,
                            frame=frame,
                            stack=stack,
                            username=username,
                            board=board,
                            args=args,
                        )
                    except Exception as e:  # reported: the figure is then "failed"
                        seen = requests if which == "hub" else direct_requests
                        changed = seen.network_changed_since(began)
                        log(
                            f"round {r} progress  {which:<6} not measured: "
                            f"{type(e).__name__}: {str(e)[:600]}"
                            + (
                                "; Chromium dropped requests on a network change meanwhile"
                                if changed
                                else ""
                            )
                        )
                        continue
                    progress[which].extend(delays)
                    log(
                        f"round {r} progress  {which:<6} delays "
                        f"{', '.join(f'{d:.2f}' for d in delays)} s "
                        f"(set-up and training {time.monotonic() - began:.0f} s)"
                    )
            finally:
                direct_context.close()
        board.stop()
    finally:
        board.stop()
        context.close()
        if session is None:
            try:
                session = HubSession.login(hub, username)
            except Exception:
                session = None
        if session is not None:
            try:
                session.stop_server()
            finally:
                session.close()


def ratio_lines(ratios: dict[str, float], *, progress: bool) -> list[str]:
    """The ``ratio NAME VALUE target TARGET`` lines (``make bench`` collects them) (pure).

    Args:
        ratios: the figures measured, name -> through the hub / direct.
        progress: whether ``progress_delay`` was asked for (``--progress``); a figure asked
            for and not measured (its training failed) is printed as ``failed``.

    Returns:
        One line per name of :data:`TARGETS`, in that order (``progress_delay`` only when
        asked for).
    """
    lines = []
    for name, target in TARGETS.items():
        if name == "progress_delay" and not progress:
            continue
        value = ratios.get(name)
        text = "failed" if value is None else f"{value:.2f}"
        lines.append(f"ratio {name} {text} target {target:.2f}")
    return lines


def summary_lines(
    results: dict[str, tuple[list[float], list[float]]], *, progress: bool
) -> list[str]:
    """The run's summary: a table of medians, then the ``ratio`` lines (pure).

    Args:
        results: figure name -> (through the hub, direct) measurements in seconds, as
            :func:`run` returns them (``gradio_event_server``: the user's server's own port,
            first list only; ``progress_delay``: the training progress delays).
        progress: whether ``progress_delay`` was asked for (see :func:`ratio_lines`).

    Returns:
        Lines without a prefix (``make bench`` reads the ``ratio`` lines as they are); a
        figure with no measurement on either side is ``failed``, never ``nan``.
    """
    lines = ["", f"{'figure':<18} {'through the hub':>16} {'direct':>10} {'ratio':>7}"]
    ratios = {}
    for name, (hub_values, direct_values) in results.items():
        if name in ("progress_delay", "gradio_event_server"):
            continue
        if not (hub_values and direct_values):
            lines.append(
                f"{name:<18} not measured (hub {len(hub_values)}, direct "
                f"{len(direct_values)} values)"
            )
            continue
        h, d = median(hub_values), median(direct_values)
        unit, scale = ("ms", 1e3) if name == "gradio_event" else ("s", 1.0)
        ratios[name] = h / d
        lines.append(
            f"{name:<18} {h * scale:13.2f} {unit:<2} {d * scale:7.2f} {unit:<2} {h / d:7.2f}"
            f"  ({len(hub_values)} / {len(direct_values)} values)"
        )
    server = results.get("gradio_event_server", ([], []))[0]
    if server:
        lines.append(
            f"gradio_event via the user's server's own port (no configurable-http-proxy): "
            f"{median(server) * 1e3:.1f} ms"
        )
    if "progress_delay" in results:
        hub_delays, direct_delays = results["progress_delay"]
        for which, delays in (("hub", hub_delays), ("direct", direct_delays)):
            if delays:
                lines.append(
                    f"training progress {which:<6}: {len(delays)} steps, delay from "
                    f"trainer_log.jsonl to the page median {median(delays):.2f} s, "
                    f"max {max(delays):.2f} s"
                )
        if hub_delays and direct_delays:
            ratios["progress_delay"] = median(hub_delays) / median(direct_delays)
    lines.append("")
    lines.extend(ratio_lines(ratios, progress=progress))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (a new user each)")
    parser.add_argument("--loads", type=int, default=2, help="page loads of each per round")
    parser.add_argument("--events", type=int, default=20, help="Gradio events of each per round")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for each wait")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the training progress stream's delay (last round)",
    )
    parser.add_argument(
        "--epochs", type=int, default=5, help="epochs of --progress's training (20 steps each)"
    )
    parser.add_argument(
        "--hub-arg",
        action="append",
        help="extra jupyterhub flag, e.g. --hub-arg=--LLMPlatform.llamaboard_eager_start=False",
    )
    args = parser.parse_args(argv)
    results = run(args)
    for line in summary_lines(results, progress=args.progress):
        say(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
