"""The ``llm-queue`` service answers within about a second of starting, before its slow imports.

JupyterHub 5.5 gives a managed service with a URL 10 tries of 1 s (``start_service`` in
jupyterhub/app.py) and then exits; the queue's imports take 10-30 s on a loaded machine. The
real process is started with one of those imports made slow (a ``sitecustomize`` that sleeps
in ``llmspawner.queue.backend``'s import); its first answer comes before the import is done:
the page 200 "starting" HTML that reloads, the API 503 JSON with ``Retry-After``; after the
import, the real application answers.

The first submit after the start must not wait for the config checks' worker process either
(issue 13 §5: over 10 s on a loaded 2-core machine, a client's timeout; a burst of submits
right after the start looked like a service that stopped answering): that worker imports
kubespawner, 2-30 s. It is started as soon as the service listens, beside the service's own
imports, and the service answers "starting" until it is up. Tested with the worker processes
held at their start (a ``sitecustomize`` that waits for a file in every
``--multiprocessing-fork`` process) and the service's own slow import waiting for the worker
to have started: no timing, only the order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
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


#: In the worker processes (``--multiprocessing-fork``): say so, then wait for the gate.
#: In the service: its import of ``llmspawner.queue.backend`` (one of the heavy imports)
#: waits up to 60 s for a worker to have started, and says when none had.
GATED_WORKERS = textwrap.dedent(
    """
    import glob, os, sys, time
    from importlib.abc import MetaPathFinder

    folder = os.environ["STARTUP_DIR"]

    def workers():
        return glob.glob(os.path.join(folder, "worker-*"))

    if "--multiprocessing-fork" in sys.argv:
        parent = os.getppid()
        open(os.path.join(folder, f"worker-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(folder, "open")):
            if os.getppid() != parent:  # the service ended first
                os._exit(0)
            time.sleep(0.05)
    else:
        class AfterWorker(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name != "llmspawner.queue.backend":
                    return None
                deadline = time.monotonic() + 60
                while not workers() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not workers():
                    open(os.path.join(folder, "no-worker-during-imports"), "w").close()
                return None

        sys.meta_path.insert(0, AfterWorker())
    """
)


def free_port() -> int:
    """A port outside the ephemeral range, reserved while this process lives (the dev
    stack's picker: no other socket can take it before the server binds it)."""
    from llmspawner_dev.processes import free_port

    return free_port()


@contextlib.contextmanager
def start_service(tmp_path: Path, sitecustomize: str, **extra_env: str):
    """Start the real service process (``python -m llmspawner.queue``) with ``sitecustomize``
    on its path; yield ``(base URL, popen)``, and stop it afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(sitecustomize)
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTERHUB_", "LLMSPAWNER_")) and k != "KUBECONFIG"
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(REPO)]),
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
        **extra_env,
    )
    log = (tmp_path / "service.log").open("w")
    popen = subprocess.Popen(
        [sys.executable, "-m", "llmspawner.queue", "--log-level=INFO"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}", popen
    finally:
        popen.terminate()
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)
        log.close()
        print((tmp_path / "service.log").read_text()[-4000:])


@pytest.fixture
def slow_service(tmp_path):
    """The service with a slow heavy import; yields ``(base URL, popen, marker, start)``."""
    t0 = time.monotonic()
    with start_service(
        tmp_path,
        SITECUSTOMIZE,
        SLOW_MODULE=SLOW_MODULE,
        SLOW_MARKER=str(tmp_path / "slow"),
        SLOW_SECONDS=str(SLOW_SECONDS),
    ) as (base, popen):
        yield base, popen, tmp_path / "slow", t0


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


def wait_for_file(popen, what: str, found, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert popen.poll() is None, "the service exited"
        assert time.monotonic() < deadline, f"{what}: not after {timeout:g} s"
        time.sleep(0.1)


def test_the_service_is_ready_only_once_its_config_checker_is_up(tmp_path):
    folder = tmp_path / "startup"
    folder.mkdir()
    log = tmp_path / "service.log"
    with (
        start_service(tmp_path, GATED_WORKERS, STARTUP_DIR=str(folder)) as (base, popen),
        contextlib.ExitStack() as opened,
    ):
        # Released before the service is stopped (a held worker would delay its exit).
        opened.callback((folder / "open").touch)
        api = f"{base}{PREFIX}api/jobs"
        # Both workers (the config checks' and admission's) are held at their start, after
        # the service's imports and build: it must still say "starting".
        wait_for_file(
            popen,
            "the service's imports and both worker processes",
            lambda: (
                (folder / "no-worker-during-imports").exists()
                or ("imports took" in log.read_text() and len(list(folder.glob("worker-*"))) == 2)
            ),
        )
        assert not (folder / "no-worker-during-imports").exists(), (
            "the config checks' worker was started only after the service's imports"
        )
        r = httpx.get(api, timeout=5)
        assert r.status_code == 503, r.text
        assert r.json()["starting"] is True
        assert " ready after " not in log.read_text()

        (folder / "open").touch()
        deadline = time.monotonic() + 120
        while (r := httpx.get(api, timeout=5)).status_code == 503:
            assert popen.poll() is None, "the service exited"
            assert time.monotonic() < deadline, "still starting after the workers are up"
            time.sleep(0.2)
        assert r.status_code in (401, 403), r.text
        text = log.read_text()
        assert text.index("config checker up") < text.index(" ready after "), text


def test_a_service_stopped_during_its_imports_exits_without_waiting_for_them(tmp_path):
    # A hub stopping its services sends SIGINT and kills a service still there 10 s later
    # (a killed hub then leaves its proxy running). The import here would take 600 s.
    with start_service(
        tmp_path,
        SITECUSTOMIZE,
        SLOW_MODULE=SLOW_MODULE,
        SLOW_MARKER=str(tmp_path / "slow"),
        SLOW_SECONDS="600",
    ) as (base, popen):
        wait_for_file(popen, f"the import of {SLOW_MODULE}", Path(f"{tmp_path}/slow.begin").exists)
        popen.send_signal(signal.SIGINT)
        assert popen.wait(120) == 0
    assert not Path(f"{tmp_path}/slow.end").exists()
    assert "stopping (while starting)" in (tmp_path / "service.log").read_text()


def test_a_service_stopped_while_its_workers_start_ends_them(tmp_path):
    # The workers are held at their start for good (the gate never opens): the service's
    # stop must neither wait for them (shutdown(wait=True), the interpreter's exit) nor
    # leave them running.
    folder = tmp_path / "startup"
    folder.mkdir()
    log = tmp_path / "service.log"
    with start_service(tmp_path, GATED_WORKERS, STARTUP_DIR=str(folder)) as (base, popen):
        wait_for_file(
            popen,
            "the service's imports and the config checks' worker",
            lambda: "imports took" in log.read_text() and list(folder.glob("worker-*")),
        )
        workers = [int(p.name.split("-")[1]) for p in folder.glob("worker-*")]
        popen.send_signal(signal.SIGINT)
        assert popen.wait(120) == 0
    assert "stopping (while starting)" in log.read_text()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid), pid


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
