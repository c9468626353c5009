"""Start a program in a folder: ``python -m llmspawner.singleuser.launch DIR PROGRAM [ARGS...]``.

jupyter-server-proxy (4.x) starts a server process in the Jupyter server's own working
folder and has no setting to change it (``SuperviseAndProxyHandler.get_cwd`` exists but is
never passed to the process, see jupyter_server_proxy/handlers.py ``ensure_process``).
LlamaBoard writes ``saves/``, ``llamaboard_cache/`` and ``llamaboard_config/`` and reads
``data/`` relative to its working folder, so it must start in the user's folder.

This wrapper changes folder, prepares it for LlamaBoard (the demo dataset and the model
preset, :func:`llmspawner.singleuser.workspace.prepare`: files are only added, never
overwritten; a problem there is a line on stderr and never stops the start), puts the
training shim first on ``PATH`` (:func:`llmspawner.training.llamaboard_path`), and then
*replaces itself* with the program (``os.execv``): the process id stays the same, so
jupyter-server-proxy's supervisor signals LlamaBoard itself when the server stops. It prints
one line to stderr and exits 2 (usage) or 127 (folder or program not usable), so a broken
image fails in seconds instead of at the start-up timeout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

USAGE = "usage: python -m llmspawner.singleuser.launch DIR PROGRAM [ARGS...]"


def main(argv: Sequence[str] | None = None) -> int:
    """Change into ``argv[0]``, prepare it for LlamaBoard and exec ``argv[1:]``; return an
    exit status only on failure.

    Args:
        argv: ``[folder, program, *args]``; ``sys.argv[1:]`` when None. ``program`` is an
            absolute path or a name looked up on ``PATH`` (``os.execvp``).

    Returns:
        2 when fewer than two arguments are given, 127 when the folder cannot be entered or
        the program cannot be executed. On success it does not return (the process image is
        replaced).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    folder, program = args[0], args[1:]
    try:
        os.chdir(folder)
    except OSError as e:
        print(f"llmspawner launch: cannot enter folder {folder!r}: {e}", file=sys.stderr)
        return 127
    # The demo dataset and LlamaBoard's model preset (only added, never overwritten).
    from llmspawner.singleuser.workspace import prepare

    prepare(".")
    # LlamaBoard's trainings run through llmspawner.training's shim: never stalled by
    # LlamaBoard's unread stderr pipe, their output in train.log, adapter and logs into MLflow.
    from llmspawner.training import llamaboard_path

    os.environ["PATH"] = llamaboard_path(os.environ)
    try:
        os.execvp(program[0], program)
    except OSError as e:
        print(f"llmspawner launch: cannot run {program[0]!r}: {e}", file=sys.stderr)
        return 127
    return 127  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
