"""Waiting for a condition in e2e tests, with a deadline and a message naming what was awaited."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Call ``predicate()`` every ``interval`` seconds until it returns something truthy.

    Returns:
        That value.

    Raises:
        AssertionError: ``"<what>: not within <timeout> s"`` when ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
