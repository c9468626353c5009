"""The queue's worker processes stop at once, even while still starting (llmspawner.queue.pools)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
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


def test_an_idle_worker_leaves_on_its_own():
    pool = _pool()
    assert pool.submit(int, "7").result(timeout=60) == 7
    processes = list(pool._processes.values())
    stop_pool(pool, grace=30)
    # The pool's own management thread may reap the worker (waitpid) and only then, once it
    # has the GIL again, store its exit code: wait for that thread before reading it.
    pool.shutdown(wait=True)
    assert [p.exitcode for p in processes] == [0]  # it read the shutdown: no signal needed


def test_no_pool_is_nothing_to_do():
    stop_pool(None)
