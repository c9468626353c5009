"""A real browser for e2e tests: Debian's Chromium driven by Playwright.

Playwright's own browser download is not available here, so the system's ``chromium`` is used
(``executable_path``); ``scripts/install.sh`` installs it from Debian's packages when it runs
as root. Where no Chromium can be installed the browser tests skip, saying why; in CI
(``CI=true``) a missing Chromium is a failure.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

from llmspawner_dev.browser import CHROMIUM_ARGS


def chromium_path() -> str:
    """The Chromium executable, or skip (fail in CI) when there is none."""
    path = os.environ.get("LLMSPAWNER_CHROMIUM") or shutil.which("chromium")
    if path:
        return path
    message = "no Chromium: install Debian's chromium package (scripts/install.sh does, as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium():
    """A headless Chromium (a Playwright ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


def oidc_login(page, hub_url: str, sub: str) -> None:
    """Log in to the hub through the OIDC provider's page, as a person would."""
    page.goto(f"{hub_url}/hub/oauth_login")
    page.fill('input[name="sub"]', sub)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{hub_url}/**", timeout=30_000)
