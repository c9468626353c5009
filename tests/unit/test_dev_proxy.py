"""The dev stack's own configurable-http-proxy (llmspawner_dev.proxy) and restarting a part."""

from __future__ import annotations

import signal

from devcluster.testing import wait_until
from llmspawner_dev import proxy
from llmspawner_dev.parts import venv_bin
from llmspawner_dev.processes import ChildProcess


def test_chp_command_is_the_charts_proxy_on_one_host():
    argv = proxy.chp_command(
        executable="/v/bin/configurable-http-proxy",
        host="127.0.0.1",
        port=8000,
        api_port=8001,
        hub_url="http://127.0.0.1:8081",
    )
    assert argv == [
        "/v/bin/configurable-http-proxy",
        "--ip",
        "127.0.0.1",
        "--port",
        "8000",
        "--api-ip",
        "127.0.0.1",
        "--api-port",
        "8001",
        "--default-target",
        "http://127.0.0.1:8081",
        "--error-target",
        "http://127.0.0.1:8081/hub/error",
        "--log-level",
        "info",
    ]


def test_chp_executable_is_found_on_the_given_path(tmp_path):
    assert proxy.chp_executable({"PATH": str(tmp_path)}) is None
    found = proxy.chp_executable({"PATH": str(venv_bin())})
    assert found is None or found.endswith("/configurable-http-proxy")


def test_restart_runs_the_same_command_again_in_a_new_process(tmp_path):
    child = ChildProcess(
        # It prints 42, which its command line (the log's header line) does not hold.
        "sleeper",
        ["sh", "-c", "echo $((6 * 7)); exec sleep 300"],
        log_path=tmp_path / "s.log",
    ).start()

    def starts() -> int:
        return child.log_tail().splitlines().count("42")

    try:
        wait_until(lambda: starts() == 1, 10, "the first start", 0.05)
        first = child.popen
        assert child.restart(grace=2) is child
        assert first.returncode == -signal.SIGTERM
        assert child.running and child.pid != first.pid
        wait_until(lambda: starts() == 2, 10, "the second start", 0.05)
    finally:
        child.stop(grace=2)


def test_restart_needs_a_started_child(tmp_path):
    child = ChildProcess("never", ["true"], log_path=tmp_path / "n.log")
    try:
        child.restart()
    except RuntimeError as e:
        assert str(e) == "never was never started"
    else:  # pragma: no cover
        raise AssertionError("restart of a child never started must fail")
