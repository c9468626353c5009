"""Helpers for tests and the dev stack: a fast devcluster, and the one way to wait.

Example: ``async with fast_cluster(tmp_path) as cluster: await wait_for(predicate)``.

Waiting: :func:`wait_until` (synchronous) and :func:`wait_for` (its asynchronous twin, for
sync or async predicates) are the only polling helpers of the tests and the dev stack
(``tests/e2e/polling.py`` re-exports :func:`wait_until`; ``llmspawner_dev.processes`` builds
its start-up waits on it). One policy for both: the predicate is called at once and then
every ``interval`` seconds until it returns something truthy, which is returned; exceptions
of the types in ``ignore`` count as "not yet" (the last one is named in the error); after
``timeout`` seconds :class:`WaitTimeout` says what was awaited.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cluster import DevCluster
from .kubelet import KubeletConfig


def fast_cluster(data_dir: str | Path, **kwargs) -> DevCluster:
    """A `DevCluster` with short intervals (0.1-0.2 s) and a 1 s shutdown grace, for tests.

    Keyword arguments override `DevCluster`'s (``nodes``, ``images``...).
    """
    kubelet = KubeletConfig(
        interval=0.2,
        probe_period=0.1,
        restart_backoff=0.2,
        max_restart_backoff=1.0,
        retry_interval=0.2,
        shutdown_grace=1.0,
        memory_period=0.2,
    )
    options = {
        "kubelet": kubelet,
        "scheduler_interval": 0.2,
        "jobs_interval": 0.1,
        **kwargs,
    }
    return DevCluster(data_dir=data_dir, **options)


class WaitTimeout(AssertionError, TimeoutError):
    """A wait ran out of time: ``"<what>: not within <timeout> s"`` (and the last ignored
    error). Both an ``AssertionError`` (a test failure, as pytest reports it) and a
    ``TimeoutError`` (what ``asyncio``-style callers catch)."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie (``/proc/PID/stat``'s state,
    proc(5)); a process that has exited but is not reaped yet counts as gone.

    Args:
        pid: a process id.

    Returns:
        True while it runs; False once it exited, or when there is no such process.
    """
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _describe(predicate: Callable, what: str | None) -> str:
    return what or f"condition {getattr(predicate, '__name__', repr(predicate))}"


def _timed_out(what: str, timeout: float, last: BaseException | None) -> WaitTimeout:
    message = f"{what}: not within {timeout:g} s"
    if last is not None:
        message += f" (last error: {type(last).__name__}: {last})"
    return WaitTimeout(message)


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    what: str | None = None,
    interval: float = 0.5,
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Call ``predicate()`` until it returns something truthy; return that value.

    Args:
        predicate: called at once, then every ``interval`` seconds. Exceptions not in
            ``ignore`` propagate at once.
        timeout: seconds until :class:`WaitTimeout`.
        what: what is awaited, for the error message (default: the predicate's name).
        interval: seconds between calls.
        ignore: exception types that count as "not yet" (e.g. ``httpx.TransportError``).

    Raises:
        WaitTimeout: ``timeout`` seconds passed; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as e:
            value, last = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(_describe(predicate, what), timeout, last)
        time.sleep(interval)


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    what: str | None = None,
    interval: float = 0.05,
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """The asynchronous :func:`wait_until`: ``predicate`` may be sync or return an awaitable.

    Same arguments, result and errors as :func:`wait_until` (default ``interval`` 0.05 s);
    sleeps with ``asyncio.sleep``.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except ignore as e:
            value, last = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(_describe(predicate, what), timeout, last)
        await asyncio.sleep(interval)
