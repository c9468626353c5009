"""Chromium's launch flags for the browser tests and benchmarks (Playwright, Debian's chromium).

One place for ``tests/e2e/browser.py`` and ``benchmarks/llamaboard_path.py``: both run
Chromium headless on a machine whose only network is loopback.
"""

from __future__ import annotations

#: Chromium flags for a headless run on a machine without a network beyond loopback: no
#: sandbox (the tests run as root), no GPU, none of Chromium's own background traffic
#: (component updates, sync, QUIC), no first-run pages.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
