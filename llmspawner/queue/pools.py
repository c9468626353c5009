"""Stopping the queue's worker processes without waiting for one that is still starting.

The queue runs two one-process :class:`concurrent.futures.ProcessPoolExecutor` pools with the
``spawn`` start method (the config checks' worker, :mod:`.limits`; the planning worker,
:mod:`.planning`). A spawned worker imports its modules before it reads its first task:
seconds, tens of seconds on a loaded 2-core machine (kubespawner for the checks).
``shutdown(wait=True)`` waits for it to finish those imports, and so does the interpreter's
exit (``concurrent.futures.process._python_exit`` joins every pool's manager thread, which
waits for its workers). So a queue stopped just after its start (a hub stopping its services:
``SIGINT``, then ``SIGTERM`` 10 s later, then ``SIGKILL``; a pod's termination grace period)
hung for as long as the import took, and its hub was killed before it had stopped its proxy.

The workers hold no state (pure computation on a copy of the data; every decision is made
again on the next pass), so stopping them is safe at any moment: :func:`stop_pool` gives them
``grace`` seconds to leave on their own, then ``SIGTERM``, then ``SIGKILL``.
"""

from __future__ import annotations

import concurrent.futures
import time
from multiprocessing.connection import wait as _wait_ready

__all__ = ["stop_pool"]


def _running(process) -> bool:
    """Whether a worker process still runs: its sentinel (a pipe end the child holds) is not
    readable yet. Unlike ``Process.is_alive()`` this holds when something else in the
    process reaped the child (``is_alive()`` then stays True: its ``waitpid`` gets
    ``ECHILD``), so an exited worker is never signalled (its pid may be reused)."""
    return process.exitcode is None and not _wait_ready([process.sentinel], 0)


def stop_pool(pool: concurrent.futures.ProcessPoolExecutor | None, grace: float = 1.0) -> None:
    """Shut ``pool`` down and end its worker processes within about ``grace + 2`` seconds.

    Args:
        pool: the pool (``None``: nothing to do).
        grace: seconds its workers get to exit on their own (a worker between two tasks reads
            the shutdown at once; one still importing does not) before ``SIGTERM``, then one
            more second before ``SIGKILL``.

    Pending tasks are cancelled; a running one is abandoned (its caller's future fails with
    ``BrokenProcessPool``). Uses the pool's ``_processes`` mapping (CPython's
    ``concurrent/futures/process.py``; no public API lists a pool's processes).
    """
    if pool is None:
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if _running(process):
            process.terminate()
    for process in processes:
        process.join(1.0)
        if _running(process):
            process.kill()
            process.join(1.0)
