"""The ``llm-queue`` service answers within about a second of starting, before its slow imports.

JupyterHub 5.5 gives a managed service with a URL 10 tries of 1 s (``start_service`` in
jupyterhub/app.py) and then exits; the queue's imports take 10-30 s on a loaded machine. The
real process is started with one of those imports made slow (a ``sitecustomize`` that sleeps
in ``llmspawner.queue.backend``'s import); its first answer comes before the import is done:
the page 200 "starting" HTML that reloads, the API 503 JSON with ``Retry-After``; after the
import, the real application answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from llmspawner.queue.service import HEAVY_MODULES, STARTING_RETRY_AFTER

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/services/llm-queue/"
SLOW_MODULE = "llmspawner.queue.backend"
SLOW_SECONDS = 25.0

SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys, time
    from importlib.abc import MetaPathFinder

    class SlowImport(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != os.environ["SLOW_MODULE"]:
                return None
            marker = os.environ["SLOW_MARKER"]
            open(marker + ".begin", "w").close()
            time.sleep(float(os.environ["SLOW_SECONDS"]))
            open(marker + ".end", "w").close()
            return None  # the ordinary finders import it

    sys.meta_path.insert(0, SlowImport())
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slow_service(tmp_path):
    """The real service process (``python -m llmspawner.queue``) with a slow heavy import;
    yields ``(base URL, popen, marker path, start time)``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTERHUB_", "LLMSPAWNER_")) and k != "KUBECONFIG"
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(REPO)]),
        SLOW_MODULE=SLOW_MODULE,
        SLOW_MARKER=str(tmp_path / "slow"),
        SLOW_SECONDS=str(SLOW_SECONDS),
        JUPYTERHUB_SERVICE_NAME="llm-queue",
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
        JUPYTERHUB_SERVICE_PREFIX=PREFIX,
        JUPYTERHUB_API_URL="http://127.0.0.1:9/hub/api",
        JUPYTERHUB_API_TOKEN="not-a-real-token",
        JUPYTERHUB_CLIENT_ID="service-llm-queue",
        JUPYTERHUB_OAUTH_CALLBACK_URL=f"{PREFIX}oauth_callback",
        LLMSPAWNER_QUEUE_DB_URL=f"sqlite:///{tmp_path / 'queue.sqlite'}",
        KUBECONFIG=str(tmp_path / "no-kubeconfig"),
        LLMSPAWNER_PROFILES_DIR=str(REPO / "profiles"),
    )
    log = (tmp_path / "service.log").open("w")
    t0 = time.monotonic()
    popen = subprocess.Popen(
        [sys.executable, "-m", "llmspawner.queue"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}", popen, tmp_path / "slow", t0
    finally:
        popen.terminate()
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)
        log.close()
        print((tmp_path / "service.log").read_text()[-4000:])


def first_answer(url: str, popen, deadline: float) -> httpx.Response:
    while time.monotonic() < deadline:
        assert popen.poll() is None, "the service exited"
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"no answer from {url}")


def test_the_service_answers_before_its_slow_imports_and_then_serves(slow_service):
    base, popen, marker, t0 = slow_service
    assert SLOW_MODULE in HEAVY_MODULES
    # The hub's probe: GET of the service's URL (its prefix), any answer below 500.
    r = first_answer(f"{base}{PREFIX}", popen, t0 + 15)
    waited = time.monotonic() - t0
    print(f"first answer after {waited:.2f} s")
    assert not Path(f"{marker}.end").exists(), "answered only after the slow import"
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "starting" in r.text and 'http-equiv="refresh"' in r.text
    # The hub waits at most 10 s; the process, interpreter included, answered well within.
    assert waited < 5, f"first answer after {waited:.1f} s"
    # The heavy imports run in a thread while the loop answers (the earlier ones first).
    deadline = time.monotonic() + 60
    while not Path(f"{marker}.begin").exists():
        assert time.monotonic() < deadline, f"{SLOW_MODULE} was never imported"
        r = httpx.get(f"{base}{PREFIX}", timeout=2)
        assert r.status_code == 200 and "starting" in r.text
        time.sleep(0.2)

    for method, path in [
        ("GET", "api/jobs"),
        ("POST", "api/jobs"),
        ("DELETE", "api/jobs/1"),
        ("POST", "jobs"),
    ]:
        r = httpx.request(method, f"{base}{PREFIX}{path}", timeout=5)
        assert r.status_code == 503, (method, path, r.text)
        assert r.headers["retry-after"] == str(STARTING_RETRY_AFTER)
        assert r.headers["content-type"] == "application/json"
        body = json.loads(r.text)
        assert body["starting"] is True and "llm-queue is starting" in body["error"]
    assert not Path(f"{marker}.end").exists()

    # Once imported and built, the real application answers (no token: not a 503).
    deadline = time.monotonic() + SLOW_SECONDS + 90
    while time.monotonic() < deadline:
        assert popen.poll() is None, "the service exited"
        r = httpx.get(f"{base}{PREFIX}api/jobs", timeout=5)
        if r.status_code != 503:
            break
        time.sleep(0.5)
    assert Path(f"{marker}.end").exists()
    assert r.status_code in (401, 403), r.text
    assert "starting" not in r.text
