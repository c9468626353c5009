"""The level-triggered loop the emulated cluster's controllers share (scheduler, kubelet,
Job controller): reconcile now, and again on every relevant change or after an interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


async def reconcile_loop(
    reconcile: Callable[[], None], wake: asyncio.Event, interval: float, name: str
) -> None:
    """Call ``reconcile()`` until cancelled: at once, then whenever ``wake`` is set or
    ``interval`` seconds have passed. A failing pass is logged (naming ``name``) and the loop
    goes on, as a controller's resync would."""
    while True:
        wake.clear()
        try:
            reconcile()
        except Exception:
            log.exception("devcluster %s pass failed", name)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), interval)
