"""A watchdog that ends a dev stack's processes when the process that started it dies.

``DevStack.start`` starts ``python -m llmspawner_dev.reaper MARKER_NAME MARKER_VALUE WORKDIR``
in a session of its own, with a pipe as its stdin. The reaper blocks reading that pipe; it
reads end-of-file when the stack is stopped normally (the pipe is closed) and also when the
starting process is killed (``kill -9``, a test runner's timeout), which no signal handler can
catch. Either way it then ends what is left of the stack (:func:`~.processes.kill_strays`: the
marker in the environment, or a working directory under WORKDIR), SIGTERM then SIGKILL, and
exits. After a normal stop nothing is left, and it exits at once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .processes import kill_strays

#: Seconds the stack's processes get between the reaper's SIGTERM and SIGKILL.
GRACE = 10.0


def start_reaper(
    *, marker: tuple[str, str], under: Path, env: Mapping[str, str]
) -> subprocess.Popen:
    """Start the reaper for the stack marked ``marker``; return it (stdin is its pipe).

    Args:
        env: its environment; must not hold ``marker`` (it would count as a stray).

    Close ``popen.stdin`` after stopping the stack, then ``wait()`` for it.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "llmspawner_dev.reaper", marker[0], marker[1], str(under)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(env),
        cwd="/",
        start_new_session=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Wait for end-of-file on stdin, then end the stack's leftovers; return 0."""
    name, value, under = list(sys.argv[1:] if argv is None else argv)
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, KeyboardInterrupt):
        pass
    kill_strays(marker=(name, value), under=Path(under), grace=GRACE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
