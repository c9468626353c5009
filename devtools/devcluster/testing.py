"""Helpers for tests that use the devcluster: fast timing knobs and polling.

Example: ``async with fast_cluster(tmp_path) as cluster: await wait_for(predicate)``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from pathlib import Path

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
    )
    options = {
        "kubelet": kubelet,
        "scheduler_interval": 0.2,
        "jobs_interval": 0.1,
        **kwargs,
    }
    return DevCluster(data_dir=data_dir, **options)


async def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05
) -> object:
    """Poll ``predicate`` (sync or async) until it returns a truthy value; return it.

    Raises TimeoutError after ``timeout`` seconds, naming the predicate.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            name = getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"condition {name} not met within {timeout} s")
        await asyncio.sleep(interval)
