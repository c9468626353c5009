"""The queue's worker processes stop at once, even while still starting (llmspawner.queue.pools)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time

from llmspawner.queue.pools import stop_pool


def _pool(initializer=None, initargs=()):
    return concurrent.futures.ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )


def test_a_worker_still_starting_is_ended_not_waited_for():
    # The initializer stands for a worker's slow imports: it would hold shutdown(wait=True)
    # (and the interpreter's exit) for 600 s.
    pool = _pool(time.sleep, (600,))
    future = pool.submit(int)
    processes = list(pool._processes.values())
    assert len(processes) == 1 and processes[0].is_alive()
    stop_pool(pool, grace=0.2)
    assert not processes[0].is_alive()
    assert processes[0].exitcode == -15  # SIGTERM: it had not left on its own
    assert future.cancelled() or isinstance(
        future.exception(timeout=5), concurrent.futures.process.BrokenProcessPool
    )


def test_an_idle_worker_leaves_on_its_own(monkeypatch):
    pool = _pool()
    assert pool.submit(int, "7").result(timeout=60) == 7
    processes = list(pool._processes.values())
    signalled = []
    for p in processes:
        monkeypatch.setattr(p, "terminate", lambda p=p: signalled.append(("TERM", p.pid)))
        monkeypatch.setattr(p, "kill", lambda p=p: signalled.append(("KILL", p.pid)))
    stop_pool(pool, grace=30)
    # It read the shutdown and left: no signal needed. (Its exit code is not read: in the test
    # process something else may reap the child, and then Process.exitcode stays None while
    # its pid is gone; stop_pool tells an exited worker by its sentinel, so it is not signalled.)
    assert signalled == []
    assert all(not os.path.exists(f"/proc/{p.pid}") or p.exitcode == 0 for p in processes)


def test_no_pool_is_nothing_to_do():
    stop_pool(None)
