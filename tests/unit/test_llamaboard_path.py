"""benchmarks/llamaboard_path.py: a page Chromium broke on a network change is loaded again,
a stalled page fails in bounded time with the failed requests named.

Playwright's browser context, request and frame are replaced by small fakes (this test
starts neither Chromium nor LlamaBoard); the clock is a fake too, so nothing sleeps.
"""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "llamaboard_path_b7", BENCHMARKS / "llamaboard_path.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Context:
    """A browser context's ``on("requestfailed", callback)``; ``fail`` plays a request."""

    def __init__(self):
        self.callbacks = []

    def on(self, event, callback):
        assert event == "requestfailed"
        self.callbacks.append(callback)

    def fail(self, url, failure):
        request = type("Request", (), {"url": url, "failure": failure})()
        for callback in self.callbacks:
            callback(request)


@pytest.fixture
def playwright_error(bench, monkeypatch):
    """train_tab_selected replaced: raises Playwright's error until ``ready`` is set."""
    from playwright.sync_api import Error as PlaywrightError

    state = {"ready": lambda: False, "tries": 0}

    def train_tab_selected(frame, timeout_s):
        state["tries"] += 1
        frame.clock.now += timeout_s  # a try costs its timeout
        if not state["ready"]():
            raise PlaywrightError("Timeout 2000ms exceeded: get_by_role('tab', name='Train')")

    monkeypatch.setattr(bench, "train_tab_selected", train_tab_selected)
    monkeypatch.setattr(bench, "log", lambda text: None)
    return state


def test_failed_requests_tell_a_network_change_from_other_failures(bench):
    clock, context = Clock(), Context()
    requests = bench.FailedRequests(context, clock=clock)
    assert requests.describe(0) == "none failed"
    context.fail("https://fonts.googleapis.com/css2", "net::ERR_NAME_NOT_RESOLVED")
    assert not requests.network_changed_since(0)
    clock.now = 105.0
    context.fail("http://127.0.0.1:1/assets/Index-x.js", "net::ERR_NETWORK_CHANGED")
    assert requests.network_changed_since(105.0)
    assert not requests.network_changed_since(105.5)
    assert requests.describe(105.0) == (
        "1 failed: net::ERR_NETWORK_CHANGED http://127.0.0.1:1/assets/Index-x.js"
    )
    assert requests.describe(0).startswith("2 failed: net::ERR_NAME_NOT_RESOLVED https://fonts")


def test_a_page_broken_by_a_network_change_is_reloaded_and_then_works(bench, playwright_error):
    clock, context = Clock(), Context()
    requests = bench.FailedRequests(context, clock=clock)
    frame = type("Frame", (), {"clock": clock})()
    reloads = []

    def reload():
        reloads.append(clock.now)
        playwright_error["ready"] = lambda: True  # the new load gets its modules

    context.fail("http://127.0.0.1:1/assets/index-C.js", bench.NETWORK_CHANGED)
    done = bench.wait_interactive(
        frame, requests, loaded_at=100.0, deadline=400.0, reload=reload, what="t"
    )
    assert done == 1
    assert reloads == [102.0]  # at once, not after SETTLE_S


def test_a_page_stalled_without_a_network_change_is_reloaded_once_per_settle(
    bench, playwright_error
):
    clock, context = Clock(), Context()
    requests = bench.FailedRequests(context, clock=clock)
    frame = type("Frame", (), {"clock": clock})()
    reloads = []
    with pytest.raises(bench.PageStalled, match=r"t: no Train tab \d+ s after the load at each"):
        bench.wait_interactive(
            frame,
            requests,
            loaded_at=100.0,
            deadline=10_000.0,
            reload=lambda: reloads.append(clock.now),
            what="t",
            settle_s=10.0,
        )
    # MAX_LOADS loads: the first and two reloads, each after settle_s without a Train tab,
    # then the failure: bounded by MAX_LOADS * settle_s, never the whole deadline.
    assert len(reloads) == bench.MAX_LOADS - 1
    assert clock.now - 100.0 <= bench.MAX_LOADS * (10.0 + 2.0)


def test_the_deadline_fails_with_what_failed(bench, playwright_error):
    clock, context = Clock(), Context()
    requests = bench.FailedRequests(context, clock=clock)
    frame = type("Frame", (), {"clock": clock})()
    context.fail("http://127.0.0.1:1/theme.css", "net::ERR_CONNECTION_RESET")
    with pytest.raises(TimeoutError, match="after 1 load.*ERR_CONNECTION_RESET"):
        bench.wait_interactive(
            frame, requests, loaded_at=99.0, deadline=105.0, reload=lambda: None, what="t"
        )


class Label:
    """A locator of the progress label: ``texts`` its visible texts, ``gone`` whether it
    disappears between being counted and being read (the training just ended)."""

    def __init__(self, texts, gone=False):
        self.texts, self.gone = texts, gone

    def filter(self, visible):
        return self

    def count(self):
        return len(self.texts)

    @property
    def first(self):
        return self

    def inner_text(self, timeout):
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        assert timeout <= 1000  # not Playwright's default 30 s
        if self.gone:
            raise PlaywrightTimeout("Timeout 1000ms exceeded.")
        return self.texts[0]


class Root:
    def __init__(self, label):
        self.label = label

    def get_by_text(self, pattern):
        return self.label


@pytest.mark.parametrize(
    "label, steps",
    [
        (Label([]), None),
        (Label(["Running 3/40: 0:00:01 < 0:00:12"]), 3),
        (Label(["Running 3/40: 0:00:01 < 0:00:12"], gone=True), None),
        (Label(["Finished."]), None),
    ],
)
def test_shown_steps_reads_the_progress_label_or_none(bench, label, steps):
    import re

    pattern = re.compile(r"Running (\d+)/(\d+): (\S+) < (\S+)")  # tests/e2e/llamaboard_page.py
    assert bench.shown_steps(Root(label), pattern) == steps


def test_the_summary_ends_with_ratio_lines_make_bench_reads(bench):
    spec = importlib.util.spec_from_file_location("run_all_b7", BENCHMARKS / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["run_all_b7"] = run_all  # dataclasses look their module up
    try:
        spec.loader.exec_module(run_all)
        results = {
            "llamaboard_start": ([60.0], [80.0]),
            "llamaboard_page": ([5.0, 7.0], []),  # the direct loads failed
            "gradio_event": ([0.09, 0.11], [0.1, 0.1]),
            "gradio_event_server": ([0.095], []),
            "progress_delay": ([1.5, 2.5], [1.0, 1.0, 3.0]),
        }
        lines = bench.summary_lines(results, progress=True)
        parsed = [run_all.parse_ratio(line) for line in lines if line.startswith("ratio")]
        assert parsed == [
            ("llamaboard_start", "0.75", "1.25"),
            ("llamaboard_page", "failed", "1.20"),
            ("gradio_event", "1.00", "1.20"),
            ("progress_delay", "2.00", "1.20"),
        ]
        assert lines[-4:] == [line for line in lines if line.startswith("ratio")]
        assert any(line.split()[:3] == ["llamaboard_page", "not", "measured"] for line in lines)
    finally:
        sys.modules.pop("run_all_b7", None)


def test_delivery_delays_count_steps_the_label_skipped_and_a_stream_not_delivered_live(bench):
    written = {1: 10.0, 2: 11.0, 3: 12.0, 4: 13.0}
    # Live: the label (polled every 2 s by LlamaBoard) showed steps 1 and 3, then 4.
    assert bench.delivery_delays(written, {1: 10.5, 3: 12.5, 4: 14.0}) == [0.5, 1.5, 0.5, 1.0]
    # Not live: only the last step, at the end: every step waited for it.
    assert bench.delivery_delays(written, {4: 20.0}) == [10.0, 9.0, 8.0, 7.0]
    # Steps no label reached (the page never caught up) are left out.
    assert bench.delivery_delays(written, {2: 11.5}) == [1.5, 0.5]
    assert bench.delivery_delays(written, {}) == []
