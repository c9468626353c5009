"""The ``llmspawner`` command: a thin dispatcher to each subcommand's own module.

Each subcommand lives where its code is; this file only maps names to modules::

    llmspawner dev [--smoke]          run the whole stack locally (llmspawner_dev.command,
                                      from the llmspawner-devtools distribution)
    llmspawner profiles check|render  GPU profiles (llmspawner.profiles_cli)
    llmspawner queue submit|list|...  the batch training queue (llmspawner.queue.cli)
    llmspawner deploy check           a deployment's files, offline (llmspawner.deploy.cli)
    llmspawner devcluster ...         the emulated cluster alone (devcluster, llmspawner-devtools)

A subcommand module in :data:`COMMANDS` provides ``add_arguments(parser)`` and
``run(args) -> int``; add a line there for a new one. ``devcluster`` has its own parser and
gets the remaining arguments as ``main(argv)``. A subcommand whose module cannot be imported
(its extra is not installed) stays listed and exits 2 naming the missing module.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Sequence

#: Subcommands with ``add_arguments(parser)`` and ``run(args) -> int``: name -> (module, help).
COMMANDS: dict[str, tuple[str, str]] = {
    "dev": (
        "llmspawner_dev.command",
        "run hub, emulated cluster, MLflow and OIDC provider locally (--smoke: check them)",
    ),
    "profiles": (
        "llmspawner.profiles_cli",
        "check the GPU profile files, or render the pod a user would get",
    ),
    "queue": ("llmspawner.queue.cli", "submit, list, show, follow and cancel batch training jobs"),
    "deploy": (
        "llmspawner.deploy.cli",
        "check helm values, GPU profiles and manifests offline, before installing",
    ),
}


def _add_module_command(subparsers, name: str, module_name: str, help_text: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        # Installed without the extra this command needs (e.g. `dev` in the hub image, which
        # has llmspawner[hub] only): the others still work, and this one says what is missing.
        parser = subparsers.add_parser(name, help=help_text, add_help=False)
        parser.set_defaults(func=functools.partial(_unavailable, name, e), unavailable=True)
        return
    parser = subparsers.add_parser(
        name, help=help_text, description=(module.__doc__ or help_text).split("\n\n")[0]
    )
    module.add_arguments(parser)
    parser.set_defaults(func=module.run)


#: Where the modules of the commands that are not part of the ``llmspawner`` wheel come from.
DEVTOOLS_HINT = (
    "install the separate distribution llmspawner-devtools (devtools/ in the repository; "
    "scripts/install.sh does)"
)


def _unavailable(name: str, error: ImportError, args: argparse.Namespace) -> int:
    if getattr(error, "name", None) and not error.name.startswith("llmspawner."):
        top = error.name.split(".")[0]
        hint = DEVTOOLS_HINT if top in ("llmspawner_dev", "devcluster") else None
    else:
        hint = None
    print(
        f"llmspawner {name}: not available in this installation ({error}); "
        + (
            hint
            or "install the llmspawner extra that provides it "
            "(pyproject.toml: [project.optional-dependencies])"
        ),
        file=sys.stderr,
    )
    return 2


def _run_devcluster(args: argparse.Namespace) -> int:
    try:
        from devcluster.__main__ import main as devcluster_main
    except ImportError as e:
        return _unavailable("devcluster", e, args)
    return devcluster_main(list(args.rest)) or 0


def _add_devcluster(subparsers) -> None:
    parser = subparsers.add_parser(
        "devcluster",
        help="run the emulated Kubernetes cluster alone",
        add_help=False,
        description="Run the emulated Kubernetes cluster (see 'llmspawner devcluster --help').",
    )
    # Everything after "devcluster" is the emulated cluster's own (see main()).
    parser.set_defaults(func=_run_devcluster, rest=[])


def build_parser() -> argparse.ArgumentParser:
    """Return the ``llmspawner`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="llmspawner", description="Shared GPUs for LLM fine-tuning on JupyterHub."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    subparsers.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        _add_module_command(subparsers, name, module_name, help_text)
    _add_devcluster(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``llmspawner <command> ...``; return the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "devcluster":
        args.rest = rest
    elif rest and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
