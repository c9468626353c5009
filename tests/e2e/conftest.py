"""The e2e harness: one dev stack per test session, and users logged in through OIDC.

The ``stack`` fixture starts the same :class:`~llmspawner_dev.stack.DevStack` as
``llmspawner dev`` (emulated cluster, MLflow, mock OIDC provider, hub with this repository's
``jupyterhub_config.py``, run after the dev cluster's settings of
``llmspawner_dev/jupyterhub_config.py``) in a temporary folder, and stops it at the end of the session. When an
e2e test fails, the last lines of every part's log are added to its report.

Timeouts (seconds) can be raised through the environment on slow machines:

- ``LLMSPAWNER_E2E_TIMEOUT``: each part of the stack to become ready (default 120);
- ``LLMSPAWNER_E2E_SERVER_TIMEOUT``: a user's server to become ready (default 600);
- ``LLMSPAWNER_E2E_LLAMABOARD_TIMEOUT``: LlamaBoard to answer through the hub (default 300).
"""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pytest

from llmspawner_dev.login import HubSession
from llmspawner_dev.parts import DEFAULT_USERS, venv_bin
from llmspawner_dev.stack import DevStack

STACK_TIMEOUT = float(os.environ.get("LLMSPAWNER_E2E_TIMEOUT", "120"))
SERVER_TIMEOUT = float(os.environ.get("LLMSPAWNER_E2E_SERVER_TIMEOUT", "600"))
LLAMABOARD_TIMEOUT = float(os.environ.get("LLMSPAWNER_E2E_LLAMABOARD_TIMEOUT", "300"))

_STACK_KEY = pytest.StashKey[DevStack]()

#: The user who walks the whole path in a real browser (test_user_path.py), offered by the
#: OIDC provider next to the dev defaults; no other test logs in as ``ivan``.
BROWSER_USER = {
    "sub": "ivan",
    "preferred_username": "ivan",
    "email": "ivan@example.org",
    "name": "Ivan",
    "groups": ["users"],
}


@pytest.fixture(scope="session")
def timeouts():
    """Seconds to wait: ``.stack`` (each part), ``.server`` (a user's server), ``.llamaboard``."""
    return SimpleNamespace(
        stack=STACK_TIMEOUT, server=SERVER_TIMEOUT, llamaboard=LLAMABOARD_TIMEOUT
    )


def _missing_prerequisite() -> str | None:
    # The hub's children get this environment's bin/ first on PATH (dev.parts), where
    # scripts/install.sh links configurable-http-proxy.
    path = os.pathsep.join([str(venv_bin()), os.environ.get("PATH", "")])
    if shutil.which("configurable-http-proxy", path=path) is None:
        return (
            "configurable-http-proxy is neither in this environment's bin/ nor on PATH: "
            "run scripts/install.sh (or npm install -g configurable-http-proxy)"
        )
    return None


@pytest.fixture(scope="session")
def stack(request, tmp_path_factory):
    """The running dev stack (a :class:`DevStack`), shared by every e2e test of the session."""
    missing = _missing_prerequisite()
    if missing:
        pytest.fail(missing)
    workdir = tmp_path_factory.mktemp("dev-stack")
    # Free-slice counts in the spawn form are re-listed every second (default 5 s).
    hub_args = ["--debug", "--LLMSpawner.capacity_ttl=1"]
    dev_stack = DevStack(
        workdir, timeout=STACK_TIMEOUT, hub_args=hub_args, users=(*DEFAULT_USERS, BROWSER_USER)
    )
    request.config.stash[_STACK_KEY] = dev_stack
    try:
        dev_stack.start()
    except Exception as e:
        pytest.fail(f"the dev stack did not start: {e}\n{dev_stack.log_tails(40)}")
    yield dev_stack
    dev_stack.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Add every part's log tail to the report of a failed e2e test."""
    report = yield
    if report.failed and item.get_closest_marker("e2e") is not None:
        dev_stack = item.config.stash.get(_STACK_KEY, None)
        if dev_stack is not None and dev_stack.processes:
            report.sections.append(
                (f"dev stack logs ({dev_stack.logs_dir})", dev_stack.log_tails(40))
            )
            pods = dev_stack.pod_log_tails(40)
            if pods:
                report.sections.append(("pod logs", pods))
    return report


def _login(stack: DevStack, username: str):
    session = HubSession.login(stack.hub_url, username)
    yield session
    # A test that failed halfway may have left the server running.
    session.stop_and_close()


@pytest.fixture(scope="session")
def alice(stack):
    """``alice``, logged in through the OIDC provider (a :class:`HubSession` with a token)."""
    yield from _login(stack, "alice")


@pytest.fixture(scope="session")
def bob(stack):
    """``bob``, logged in through the OIDC provider (a :class:`HubSession` with a token)."""
    yield from _login(stack, "bob")
