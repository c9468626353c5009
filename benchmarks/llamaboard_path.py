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
  run's ``trainer_log.jsonl`` (polled every 0.1 s) to the browser showing that step in the
  progress bar; the ratio of the two medians. LlamaBoard reads the log every 2 s, so about
  1 s of either delay is LlamaBoard's own polling. A training that fails is logged and the
  figure printed as ``failed``.

The stack is :class:`llmspawner_dev.stack.DevStack` (emulated cluster, hub, proxy, OIDC
provider, MLflow), started once in a temporary folder, as ``make dev`` starts it.

Run: ``.venv/bin/python benchmarks/llamaboard_path.py`` (about 8 minutes on 2 cores;
``--rounds 1`` for a try). Prints each measurement, a table, and the figures as
``ratio NAME VALUE target TARGET`` (``make bench`` collects them).
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


def log(text: str) -> None:
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
        env = {**os.environ, **DIRECT_ENV, "GRADIO_SERVER_PORT": str(self.port)}
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

        while True:
            try:
                page.goto(board.url, wait_until="load", timeout=10_000)
                break
            except PlaywrightError:  # connection refused while LlamaBoard imports
                alive()
                time.sleep(0.1)
        while True:
            try:
                train_tab_selected(page, 2.0)
                break
            except (PlaywrightError, AssertionError):
                alive()
        return time.monotonic() - board.started
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


def time_hub_start(context, hub_url: str, username: str, timeout_s: float) -> float:
    """Seconds from *Start* on the spawn page to LlamaBoard's Train tab selected in its
    JupyterLab tab (opened from the launcher tile). Leaves the page open."""
    page = context.new_page()
    page.goto(f"{hub_url}/hub/spawn")
    start = page.get_by_role("button", name="Start")
    start.wait_for(timeout=60_000)
    started = time.monotonic()
    start.click()
    page.wait_for_url(f"{hub_url}/user/{username}/lab**", timeout=timeout_s * 1000)
    tile = page.locator(".jp-LauncherCard", has_text="LlamaBoard")
    tile.click(timeout=timeout_s * 1000)
    frame = page.frame_locator(f'iframe[src="{hub_url}/user/{username}/llamaboard/"]')
    train_tab_selected(frame, timeout_s)
    return time.monotonic() - started


def time_page_load(browser, url: str, storage_state, timeout_s: float) -> float:
    """Seconds to load ``url`` in a new context (empty cache) until the Train tab is selected."""
    context = browser.new_context(viewport=VIEWPORT, storage_state=storage_state)
    try:
        page = context.new_page()
        started = time.monotonic()
        page.goto(url, wait_until="load", timeout=timeout_s * 1000)
        train_tab_selected(page, timeout_s)
        return time.monotonic() - started
    finally:
        context.close()


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
        batch_size=1,
        gradient_accumulation=1,
        logging_steps=1,
        save_steps=5000,
        report_to="none",
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
        progress = board.progress()
        if progress is not None:
            shown.setdefault(progress.steps, time.monotonic())
        if board.output_box.filter(visible=True).count():
            break
        time.sleep(0.1)
    else:
        raise TimeoutError(f"the training did not end within {timeout_s} s")
    result = board.output_box.filter(visible=True).first.inner_text()
    if not result.startswith(helpers.FINISHED):
        raise RuntimeError(f"the training ended with {result[:300]!r}")
    return [shown[s] - written[s] for s in sorted(shown) if s in written]


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
                seconds = time_hub_start(context, hub, username, timeout)
                results["llamaboard_start"][0].append(seconds)
            log(f"round {r} start     {which:<6} {seconds:7.2f} s")
        state = context.storage_state()
        # -- (b) page loads -------------------------------------------------------------------
        hub_board = f"{hub}/user/{username}/llamaboard/"
        for i in range(args.loads):
            for which in order if i % 2 == 0 else order[::-1]:
                if which == "direct":
                    seconds = time_page_load(browser, board.url, None, timeout)
                    results["llamaboard_page"][1].append(seconds)
                else:
                    seconds = time_page_load(browser, hub_board, state, timeout)
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
            frame = hub_page.frame_locator(f'iframe[src="{hub}/user/{username}/llamaboard/"]')
            direct_context = browser.new_context(viewport=VIEWPORT)
            try:
                direct_page = direct_context.new_page()
                direct_page.goto(board.url, wait_until="load", timeout=args.timeout * 1000)
                for which in order:
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
                        log(f"round {r} progress  {which:<6} not measured: {type(e).__name__}: {e}")
                        continue
                    progress[which].extend(delays)
                    log(
                        f"round {r} progress  {which:<6} delays "
                        f"{', '.join(f'{d:.2f}' for d in delays)} s"
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
        "--epochs", type=int, default=30, help="epochs of --progress's training (20 steps each)"
    )
    parser.add_argument(
        "--hub-arg",
        action="append",
        help="extra jupyterhub flag, e.g. --hub-arg=--LLMPlatform.llamaboard_eager_start=False",
    )
    args = parser.parse_args(argv)
    results = run(args)
    log("")
    log(f"{'figure':<18} {'through the hub':>16} {'direct':>10} {'ratio':>7}")
    ratios = {}
    for name, (hub_values, direct_values) in results.items():
        if name in ("progress_delay", "gradio_event_server"):
            continue
        h, d = median(hub_values), median(direct_values)
        unit, scale = ("ms", 1e3) if name == "gradio_event" else ("s", 1.0)
        ratios[name] = h / d
        log(f"{name:<18} {h * scale:13.2f} {unit:<2} {d * scale:7.2f} {unit:<2} {h / d:7.2f}")
    server = results.get("gradio_event_server", ([], []))[0]
    if server:
        log(
            f"gradio_event via the user's server's own port (no configurable-http-proxy): "
            f"{median(server) * 1e3:.1f} ms"
        )
    if "progress_delay" in results:
        hub_delays, direct_delays = results["progress_delay"]
        for which, delays in (("hub", hub_delays), ("direct", direct_delays)):
            if delays:
                log(
                    f"training progress {which:<6}: {len(delays)} steps, delay from "
                    f"trainer_log.jsonl to the page median {median(delays):.2f} s, "
                    f"max {max(delays):.2f} s"
                )
        if hub_delays and direct_delays:
            ratios["progress_delay"] = median(hub_delays) / median(direct_delays)
    log("")
    for line in ratio_lines(ratios, progress=args.progress):
        log(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
