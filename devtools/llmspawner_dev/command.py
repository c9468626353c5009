"""The ``llmspawner dev`` command: run the whole stack locally, or its smoke check."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
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
        default=Path(".dev"),
        help="folder for state and logs (default: ./.dev)",
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


def _instructions(stack) -> str:
    return f"""
llmspawner dev stack is running (logs in {stack.logs_dir}/)

  Hub:         {stack.hub_url}/
  MLflow:      {stack.hub_url}/services/mlflow/
  OIDC:        {stack.oidc_issuer}/
  Kubernetes:  {stack.cluster_url}
               kubectl --kubeconfig {stack.kubeconfig} get pods
  Shared PVC:  {stack.pvc_path()}

Log in: open the hub, and on the OIDC provider's page type any username (or click alice,
bob or admin). Pick a profile; JupyterLab opens, with a LlamaBoard tile in its launcher
(LlamaBoard alone: {stack.hub_url}/user/<name>/llamaboard/)

Press Ctrl-C to stop everything."""


def run(args: argparse.Namespace) -> int:
    """Run ``llmspawner dev``; return the exit status (0: stopped cleanly / smoke passed)."""
    from .smoke import run_smoke
    from .stack import DevStack

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    hub_args = ["--debug"] if args.hub_debug else []
    previous = {
        sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    # Ctrl-C, even when started in the background by a shell that ignores SIGINT there.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.smoke:
            report = run_smoke(
                args.workdir,
                username=args.user,
                profile=args.profile,
                timeout=args.timeout,
                server_timeout=args.server_timeout,
                llamaboard_timeout=args.llamaboard_timeout,
                stack_kwargs={"hub_args": hub_args},
            )
            return 0 if report.ok else 1
        stack = DevStack(args.workdir, timeout=args.timeout, hub_args=hub_args, on_step=print)
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
