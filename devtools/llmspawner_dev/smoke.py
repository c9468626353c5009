"""``llmspawner dev --smoke``: the whole user path, headless, step by step with durations.

Steps: start the stack; log ``alice`` in through the OIDC provider; start the ``medium``
profile through the hub's REST API; wait until the server is ready; fetch LlamaBoard through
the hub's public URL; check alice's MLflow experiment; stop the server; stop the stack.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devcluster.testing import WaitTimeout, wait_until

from .login import HubSession
from .stack import DevStack

#: ``window.gradio_config = {...};`` in a Gradio page.
_GRADIO_CONFIG = re.compile(r"window\.gradio_config\s*=\s*(\{.*?\});\s*</script>", re.S)


def gradio_config(html: str) -> dict | None:
    """Return the ``window.gradio_config`` object of a Gradio page, or ``None``."""
    match = _GRADIO_CONFIG.search(html)
    if not match:
        return None
    try:
        return json.loads(match.group(1))
    except ValueError:
        return None


def fetch_llamaboard(session: HubSession, *, timeout: float, interval: float = 2.0):
    """GET ``/user/<name>/llamaboard/`` until it is LlamaBoard's page; return the response.

    LlamaBoard starts on the first request (jupyter-server-proxy) and takes tens of seconds
    on a CPU; meanwhile the proxy answers with an error, which counts as "not yet".

    Raises:
        TimeoutError: no LlamaBoard page after ``timeout`` seconds (last status in the message).
    """
    path = f"/user/{session.username}/llamaboard/"
    last = ["no response"]

    def page():
        try:
            response = session.get(path, timeout=max(10.0, min(120.0, timeout)))
        except httpx.HTTPError as e:  # e.g. a read timeout while the proxy starts LlamaBoard
            last[0] = repr(e)
            return None
        config = gradio_config(response.text) if response.status_code == 200 else None
        if config and str(config.get("title", "")).startswith("LLaMA Factory"):
            return response
        last[0] = f"{response.status_code} {response.text[:200]!r}"
        return None

    try:
        return wait_until(page, timeout, f"GET {path}: a LlamaBoard page", interval)
    except WaitTimeout as e:
        raise WaitTimeout(f"{e}: {last[0]}") from None


@dataclass
class SmokeReport:
    """The steps run so far: ``(name, seconds, ok, detail)`` each."""

    steps: list[tuple[str, float, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every step passed (and there was at least one)."""
        return bool(self.steps) and all(ok for _, _, ok, _ in self.steps)


def run_smoke(
    workdir: Path,
    *,
    username: str = "alice",
    profile: str = "medium",
    timeout: float = 120.0,
    server_timeout: float = 600.0,
    llamaboard_timeout: float = 300.0,
    echo: Callable[[str], None] = print,
    stack_kwargs: dict | None = None,
) -> SmokeReport:
    """Run the smoke check; print each step with its duration; return the report.

    Args:
        workdir: the stack's work dir.
        timeout: seconds each part of the stack may take to start.
        server_timeout: seconds the user's server may take to become ready.
        llamaboard_timeout: seconds LlamaBoard may take to answer through the hub.
        echo: where the step lines go.
        stack_kwargs: more :class:`DevStack` arguments.

    Never raises for a failed step: it is recorded, the rest is skipped, the stack stopped.
    """
    report = SmokeReport()

    @contextmanager
    def step(name: str) -> Iterator[list[str]]:
        detail: list[str] = []
        t0 = time.monotonic()
        try:
            yield detail
        except BaseException as e:
            seconds = time.monotonic() - t0
            report.steps.append((name, seconds, False, str(e)))
            echo(f"[FAIL] {name:<44} {seconds:7.1f} s\n{e}")
            raise
        seconds = time.monotonic() - t0
        report.steps.append((name, seconds, True, " ".join(detail)))
        echo(f"[ ok ] {name:<44} {seconds:7.1f} s  {' '.join(detail)}".rstrip())

    stack = DevStack(workdir, timeout=timeout, on_step=lambda _: None, **(stack_kwargs or {}))
    session: HubSession | None = None
    pod_logs = [""]  # the pods' latest log lines, kept while the server is pending

    def keep_pod_logs(_server: dict) -> None:
        pod_logs[0] = stack.pod_log_tails(20)

    try:
        with step("start the stack") as d:
            stack.start()
            d.append(stack.hub_url)
        with step(f"log in {username} through the OIDC provider") as d:
            session = HubSession.login(stack.hub_url, username)
            d.append("(token ok)")
        with step(f"start profile {profile!r} via the REST API") as d:
            d.append(f"HTTP {session.start_server(profile)}")
        with step("wait until the server is ready"):
            session.wait_ready(
                timeout=server_timeout,
                on_poll=keep_pod_logs,
            )
        with step(f"GET /user/{username}/llamaboard/ through the hub") as d:
            page = fetch_llamaboard(session, timeout=llamaboard_timeout)
            config = gradio_config(page.text) or {}
            d.append(f"title={config.get('title')!r}")
        with step(f"MLflow has experiment {username}-experiments") as d:
            experiment = stack.mlflow_experiment(f"{username}-experiments")
            if experiment is None:
                raise AssertionError(f"MLflow has no experiment {username}-experiments")
            d.append(f"id={experiment['experiment_id']}")
        with step("stop the server"):
            session.stop_server()
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            echo("interrupted")
        if stack.processes:
            echo(stack.log_tails(20))
            echo(stack.pod_log_tails(20) or pod_logs[0])
        if not isinstance(e, Exception):
            raise
    finally:
        if session is not None:
            session.close()
        t0 = time.monotonic()
        stack.stop()
        seconds = time.monotonic() - t0
        report.steps.append(("stop the stack", seconds, True, ""))
        echo(f"[ ok ] {'stop the stack':<44} {seconds:7.1f} s")
    echo("smoke check " + ("PASSED" if report.ok else "FAILED"))
    return report
