"""The ``llmspawner dev`` command: run the whole stack locally, or its smoke check."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .processes import StartupError


class Terminated(Exception):
    """SIGTERM (or SIGHUP) arrived; the stack is stopped as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated(signal.Signals(signum).name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``llmspawner dev``'s options to ``parser``."""
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for state and logs (default: ./.dev; with --smoke: a new temporary "
        "folder, removed after a passed check, kept with its logs after a failed one)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds each part may take to become ready (default: 120)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run the whole user path headless (log in, start 'medium', open LlamaBoard, "
        "check MLflow, stop) and exit 0 only if every step passed",
    )
    parser.add_argument("--user", default="alice", help="smoke check: the user (default: alice)")
    parser.add_argument(
        "--profile", default="medium", help="smoke check: the profile (default: medium)"
    )
    parser.add_argument(
        "--server-timeout",
        type=float,
        default=600.0,
        help="smoke check: seconds the user's server may take to be ready (default: 600)",
    )
    parser.add_argument(
        "--llamaboard-timeout",
        type=float,
        default=300.0,
        help="smoke check: seconds LlamaBoard may take to answer (default: 300)",
    )
    parser.add_argument(
        "--hub-debug", action="store_true", help="start the hub with --debug (verbose log)"
    )
    parser.add_argument(
        "--api-faults",
        nargs="?",
        const=True,
        default=None,
        metavar="RULES.json",
        help="put a fault-injecting proxy between the hub (and its services) and the emulated "
        "cluster's API server; its rules are the JSON list in RULES.json (default: "
        "<workdir>/api-faults.json, created empty), re-read whenever the file changes, e.g. "
        '[{"action": "fail", "method": "DELETE", "path_regex": "/pods/", "status": 503, '
        '"times": 1}] (actions fail, drop, delay: see devcluster.faults)',
    )


def api_faults_path(option: str | bool | None, workdir: Path) -> Path | None:
    """The rules file of ``--api-faults``: None without the option, ``<workdir>/api-faults.json``
    for the bare flag, else the path given."""
    if option is None or option is False:
        return None
    if option is True:
        return Path(workdir) / "api-faults.json"
    return Path(option)


def _faults_line(stack) -> str:
    proxy = getattr(stack, "fault_proxy", None)
    if proxy is None:
        return ""
    return f"\n  API faults:  the hub reaches it through {proxy.url}; rules: {stack.api_faults}"


def _instructions(stack) -> str:
    return f"""
llmspawner dev stack is running (logs in {stack.logs_dir}/)

  Hub:         {stack.hub_url}/
  MLflow:      {stack.hub_url}/services/mlflow/
  OIDC:        {stack.oidc_issuer}/
  Kubernetes:  {stack.cluster_url}
               kubectl --kubeconfig {stack.kubeconfig} get pods{_faults_line(stack)}
  Shared PVC:  {stack.pvc_path()}

Log in: open the hub, and on the OIDC provider's page type any username (or click alice,
bob or admin). Pick a profile; JupyterLab opens, with a LlamaBoard tile in its launcher
(LlamaBoard alone: {stack.hub_url}/user/<name>/llamaboard/)

Press Ctrl-C to stop everything."""


def configure_logging() -> None:
    """The console logging of ``llmspawner dev``: INFO lines as plain messages, without the
    per-request lines of httpx and the "setup plugin alembic..." lines that alembic (>= 1.18,
    ``alembic/runtime/plugins.py``) logs at INFO when it is imported here (the hub database's
    revision check, :mod:`llmspawner_dev.hubdb`). The stack's processes log to their own
    files under ``<workdir>/logs/``, untouched by this."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


#: The dev stack's work dir when ``--workdir`` is not given (and not ``--smoke``).
DEFAULT_WORKDIR = Path(".dev")


@contextmanager
def smoke_workdir(
    workdir: Path | None, *, echo: Callable[[str], None] | None = None
) -> Iterator[tuple[Path, list[bool]]]:
    """The smoke check's work dir: ``workdir`` as given, else a throwaway one.

    A smoke check never touches ``./.dev`` by default, so its user, experiment and folder do
    not show up in the next ``make dev``. The throwaway folder (``llmspawner-smoke-*`` in the
    system's temporary folder, mode 0755 so that pods running as another uid reach their PVC)
    is removed when the caller sets ``passed[0] = True``, and kept (its path echoed, for the
    logs) otherwise, on ``echo`` (default: print). A given ``workdir`` is never removed.

    Yields:
        ``(path, passed)``: the folder, and a one-item list the caller sets to the outcome.
    """
    passed = [False]
    if workdir is not None:
        yield workdir, passed
        return
    path = Path(tempfile.mkdtemp(prefix="llmspawner-smoke-"))
    os.chmod(path, 0o755)
    try:
        yield path, passed
    finally:
        if passed[0]:
            shutil.rmtree(path, ignore_errors=True)
        else:
            (echo or print)(f"smoke check's work dir (state and logs) kept: {path}")


def run(args: argparse.Namespace) -> int:
    """Run ``llmspawner dev``; return the exit status (0: stopped cleanly / smoke passed)."""
    from .smoke import run_smoke
    from .stack import DevStack

    configure_logging()
    hub_args = ["--debug"] if args.hub_debug else []
    previous = {
        sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    # Ctrl-C, even when started in the background by a shell that ignores SIGINT there.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.smoke:
            with smoke_workdir(args.workdir) as (workdir, passed):
                report = run_smoke(
                    workdir,
                    username=args.user,
                    profile=args.profile,
                    timeout=args.timeout,
                    server_timeout=args.server_timeout,
                    llamaboard_timeout=args.llamaboard_timeout,
                    stack_kwargs={"hub_args": hub_args},
                )
                passed[0] = report.ok
            return 0 if report.ok else 1
        workdir = args.workdir if args.workdir is not None else DEFAULT_WORKDIR
        faults = api_faults_path(args.api_faults, workdir)
        stack = DevStack(
            workdir,
            timeout=args.timeout,
            hub_args=hub_args,
            on_step=print,
            **({"api_faults": faults} if faults is not None else {}),
        )
        try:
            stack.start()
            print(_instructions(stack), flush=True)
            while True:
                for name, child in stack.processes.items():
                    if not child.running:
                        print(
                            f"\n{name} exited with status {child.returncode}; stopping.\n"
                            f"--- last lines of {child.log_path} ---\n{child.log_tail()}",
                            file=sys.stderr,
                        )
                        return 1
                time.sleep(1.0)
        except StartupError as e:
            print(f"\nllmspawner dev: {e}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, Terminated):
            print("\nstopping...", file=sys.stderr)
            return 0
        finally:
            stack.stop()
            print("stopped.", file=sys.stderr)
    except (KeyboardInterrupt, Terminated):
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
