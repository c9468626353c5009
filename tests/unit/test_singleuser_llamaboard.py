"""The LlamaBoard server spec, checked through jupyter-server-proxy's own objects.

No process is started: the spec is turned into jupyter-server-proxy's ``ServerProcess`` and
its handler class, and the command and environment callables are rendered with the proxy's
own template code, as the proxy does at the first request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from jupyter_server_proxy.config import ServerProcess, make_server_process
from jupyter_server_proxy.handlers import NamedLocalProxyHandler, SuperviseAndProxyHandler
from tornado import web

from llmspawner.singleuser import eager, llamaboard
from llmspawner.singleuser.llamaboard import (
    DEFAULT_TIMEOUT,
    ICON_PATH,
    TIMEOUT_ENV,
    llamaboard_command,
    root_path,
    setup_llamaboard,
    startup_timeout,
    user_folder,
)

PORT = 43210


class _Renderer:
    """jupyter-server-proxy's template code, with the values the proxy would pass."""

    _render_template = NamedLocalProxyHandler._render_template
    _realize_rendered_template = NamedLocalProxyHandler._realize_rendered_template

    def __init__(self, base_url: str = "/user/alice/"):
        self.process_args = {"port": PORT, "unix_socket": "", "base_url": base_url}


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    home = tmp_path / "alice"
    home.mkdir()
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    return home


@pytest.fixture
def process(hub_env) -> ServerProcess:
    # make_server_process is what jupyter-server-proxy uses for c.ServerProxy.servers;
    # entry points go through ServerProcess(name=..., **spec): the same traitlets object.
    return make_server_process("llamaboard", setup_llamaboard(), serverproxy_config=None)


def test_spec_is_valid_for_jupyter_server_proxy(process):
    assert isinstance(process, ServerProcess)
    handler, kwargs = process.make_proxy_handler()
    assert issubclass(handler, SuperviseAndProxyHandler)
    assert kwargs == {"state": {}}
    assert process.absolute_url is False
    assert process.new_browser_tab is False
    assert process.timeout == DEFAULT_TIMEOUT == 180.0


def test_mistyped_value_is_refused():
    # The check the other tests rely on: a wrong type fails when the spec object is built.
    with pytest.raises(Exception, match="timeout"):
        ServerProcess(name="llamaboard", **{**setup_llamaboard(), "timeout": "slow"})


def test_environment_rendered_by_the_proxy(process):
    env = _Renderer()._realize_rendered_template(process.environment)
    assert env == {
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(PORT),
        "GRADIO_ROOT_PATH": "/user/alice/llamaboard",
        "GRADIO_SHARE": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "DISABLE_VERSION_CHECK": "1",
        "BROWSER": "true",
        "PYTHONUNBUFFERED": "1",
    }


def test_root_path_falls_back_to_base_url_outside_jupyterhub(process, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX")
    env = _Renderer(base_url="/lab-base/")._realize_rendered_template(process.environment)
    assert env["GRADIO_ROOT_PATH"] == "/lab-base/llamaboard"


@pytest.mark.parametrize(
    ("prefix", "base_url", "expected"),
    [
        ("/user/alice/", "/ignored/", "/user/alice/llamaboard"),
        ("/hub-base/user/bob/gpu/", "/x/", "/hub-base/user/bob/gpu/llamaboard"),
        ("/user/alice", "/", "/user/alice/llamaboard"),
        ("", "/", "/llamaboard"),
        ("", "", "/llamaboard"),
        ("", "/user/al%7Bce%7D/", "/user/al%7Bce%7D/llamaboard"),
    ],
)
def test_root_path(prefix, base_url, expected):
    environ = {"JUPYTERHUB_SERVICE_PREFIX": prefix} if prefix else {}
    assert root_path(base_url=base_url, environ=environ) == expected


def test_braces_survive_the_proxy_templates(process, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/{odd}/")
    env = _Renderer()._realize_rendered_template(process.environment)
    assert env["GRADIO_ROOT_PATH"] == "/user/{odd}/llamaboard"
    argv = _Renderer()._render_template(llamaboard_command(folder="/h/{x}", cli="/b/lf"))
    assert argv[3:] == ["/h/{x}", "/b/lf", "webui"]


def test_command_starts_llamafactory_webui_in_home(process, hub_env, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "llamafactory-cli"
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    argv = _Renderer()._realize_rendered_template(process.command)
    assert argv == [
        sys.executable,
        "-m",
        "llmspawner.singleuser.launch",
        str(hub_env),
        str(cli),
        "webui",
    ]


def test_command_without_llamafactory_cli_fails_fast(process, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(web.HTTPError) as info:
        _Renderer()._realize_rendered_template(process.command)
    assert info.value.status_code == 500
    assert "llamafactory-cli" in info.value.log_message
    assert "PATH" in info.value.log_message


def test_user_folder_order(tmp_path):
    home, root = tmp_path / "home", tmp_path / "root"
    home.mkdir()
    root.mkdir()
    assert user_folder(environ={"HOME": str(home)}, server_root_dir=str(root)) == str(home)
    missing = str(tmp_path / "missing")
    assert user_folder(environ={"HOME": missing}, server_root_dir=str(root)) == str(root)
    assert user_folder(environ={}, server_root_dir=None) == str(Path.cwd())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 180.0), ("", 180.0), ("240", 240.0), (" 90.5 ", 90.5)],
)
def test_startup_timeout(raw, expected):
    environ = {} if raw is None else {TIMEOUT_ENV: raw}
    assert startup_timeout(environ) == expected


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "nan", "inf"])
def test_bad_startup_timeout_warns_and_uses_default(raw, caplog):
    with caplog.at_level("WARNING", logger=llamaboard.__name__):
        assert startup_timeout({TIMEOUT_ENV: raw}) == DEFAULT_TIMEOUT
    assert TIMEOUT_ENV in caplog.text


def test_timeout_env_reaches_the_spec(monkeypatch, hub_env):
    monkeypatch.setenv(TIMEOUT_ENV, "300")
    assert ServerProcess(name="llamaboard", **setup_llamaboard()).timeout == 300.0


def test_launcher_entry(process):
    entry = process.launcher_entry
    assert entry.enabled is True
    assert entry.title == "LlamaBoard"
    assert entry.path_info == "llamaboard/"
    assert Path(entry.icon_path) == ICON_PATH
    assert ICON_PATH.is_file()
    root = ET.parse(ICON_PATH).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox")


def test_entry_point_resolves_to_setup_llamaboard():
    (ep,) = entry_points(group="jupyter_serverproxy_servers", name="llamaboard")
    assert ep.value == "llmspawner.singleuser.llamaboard:setup_llamaboard"
    assert ep.load() is setup_llamaboard


def test_jupyter_server_proxy_loads_the_entry_point(hub_env):
    from jupyter_server_proxy.config import get_entrypoint_server_processes

    by_name = {p.name: p for p in get_entrypoint_server_processes()}
    assert by_name["llamaboard"].launcher_entry.title == "LlamaBoard"


def test_launch_changes_folder_and_execs(tmp_path):
    code = "import os; print(os.getcwd()); print(os.getpid())"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmspawner.singleuser.launch", str(tmp_path)]
        + [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    cwd, pid = out.split("\n")[:2]
    assert Path(cwd) == tmp_path
    # exec, not a child: the proxy's supervisor signals the program itself.
    assert int(pid) == proc.pid


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        ([], 2, "usage"),
        (["/nonexistent-folder", "true"], 127, "cannot enter folder"),
        (["{tmp}", "/nonexistent/program"], 127, "cannot run"),
    ],
)
def test_launch_failures(tmp_path, capsys, argv, status, message):
    from llmspawner.singleuser.launch import main

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == status
    assert message in capsys.readouterr().err


# -- the eager start (llmspawner.singleuser.eager) ---------------------------------------------
#
# A real tornado application with jupyter-server-proxy's own handlers (make_handlers) for a
# stand-in LlamaBoard: a tiny HTTP server that notes its pid, waits, then answers. The
# handlers are built as the server's router builds them for a request, so the state dict
# (process + lock) is the one every user request shares.

FAKE_BOARD = r"""
import http.server, os, sys, time
with open(sys.argv[2], "a") as f:
    f.write(f"{os.getpid()}\n")
time.sleep(float(sys.argv[3]))
http.server.HTTPServer(
    ("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler
).serve_forever()
"""


def _proxy_app(command, *, timeout: float = 60, base_url: str = "/user/alice/"):
    from jupyter_server_proxy.config import make_handlers

    board = ServerProcess(name="llamaboard", command=command, timeout=timeout)
    return web.Application(make_handlers(base_url, [board]), base_url=base_url)


def _activity(settings) -> dict:
    """What Jupyter Server reads as activity (ServerApp.last_activity's sources)."""
    return {
        k: v
        for k, v in settings.items()
        if k.endswith("_last_activity") or k == "last_activity_times"
    }


@pytest.fixture
def board(tmp_path):
    """(app, pids file) for a stand-in LlamaBoard that takes 0.5 s to answer."""
    pids = tmp_path / "pids"
    script = tmp_path / "fake_board.py"
    script.write_text(FAKE_BOARD)
    app = _proxy_app([sys.executable, str(script), "{port}", str(pids), "0.5"])
    yield app, pids
    # Tests kill the process they start; this is a safety net for a failing one.
    for pid in pids.read_text().split() if pids.exists() else []:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_eager_start_and_concurrent_requests_share_one_process(board):
    import asyncio

    app, pids = board
    before = _activity(app.settings)
    record = eager.StartRecord(server_started=time.time())
    starter = eager.proxy_handler(app, "/user/alice/")
    # Two user requests that arrive while LlamaBoard starts: the handlers the router gives them.
    users = [eager.proxy_handler(app, "/user/alice/") for _ in range(2)]
    assert all(u.state is starter.state for u in users)
    ok, *_ = await asyncio.gather(
        eager.start_llamaboard(starter, record), *(u.ensure_process() for u in users)
    )
    try:
        assert ok is True
        (pid,) = [int(line) for line in pids.read_text().split()]
        assert record.state == eager.READY and record.error is None
        assert record.to_json()["pid"] == pid == starter.state["proc"].pid
        assert record.started <= record.ready
        assert record.to_json()["seconds_to_ready"] >= 0
        # A later request finds it running: still one process.
        await eager.proxy_handler(app, "/user/alice/").ensure_process()
        assert pids.read_text().split() == [str(pid)]
        assert _activity(app.settings) == before  # nothing counted as activity
    finally:
        await starter.state["proc"].kill()


async def test_user_request_first_then_eager_start_joins_it(board):
    import asyncio

    app, pids = board
    user = eager.proxy_handler(app, "/user/alice/")
    first = asyncio.ensure_future(user.ensure_process())
    await asyncio.sleep(0.1)
    record = eager.StartRecord(server_started=time.time())
    assert await eager.start_llamaboard(eager.proxy_handler(app, "/user/alice/"), record)
    await first
    try:
        assert len(pids.read_text().split()) == 1
        assert record.state == eager.READY
    finally:
        await user.state["proc"].kill()


async def test_failed_eager_start_is_noted_and_the_tile_starts_it_again(tmp_path, caplog):
    pids = tmp_path / "pids"
    # Exits at once (the supervisor restarts it) and never answers: the proxy's timeout.
    app = _proxy_app(
        [sys.executable, "-c", f"open({str(pids)!r}, 'a').write('x\\n'); raise SystemExit(1)"],
        timeout=1,
    )
    record = eager.StartRecord(server_started=time.time())
    handler = eager.proxy_handler(app, "/user/alice/")
    assert await eager.start_llamaboard(handler, record) is False
    assert record.state == eager.FAILED
    assert record.error == "could not start llamaboard in time"
    assert "proc" not in handler.state and record.to_json()["pid"] is None
    assert "LlamaBoard did not start with the server: could not start llamaboard in time" in (
        caplog.text
    )
    # The proxy forgot it: a user's request starts it again and gets the proxy's error.
    with pytest.raises(web.HTTPError, match="in time"):
        await eager.proxy_handler(app, "/user/alice/").ensure_process()


async def test_missing_llamafactory_cli_is_logged_not_raised(process, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no llamafactory-cli
    from jupyter_server_proxy.config import make_handlers

    app = web.Application(make_handlers("/user/alice/", [process]), base_url="/user/alice/")
    record = eager.StartRecord(server_started=time.time())
    assert await eager.start_llamaboard(eager.proxy_handler(app, "/user/alice/"), record) is False
    assert record.state == eager.FAILED
    assert "'llamafactory-cli' is not on PATH" in record.error


def test_proxy_handler_is_the_one_a_request_gets(process):
    from jupyter_server_proxy.config import make_handlers

    app = web.Application(make_handlers("/user/alice/", [process]), base_url="/user/alice/")
    handler = eager.proxy_handler(app, "/user/alice/")
    assert isinstance(handler, SuperviseAndProxyHandler)
    assert handler.name == "llamaboard" and handler.command == process.command
    # Every handler for the name shares one state dict (process and lock).
    assert eager.proxy_handler(app, "/user/alice/").state is handler.state
    # Another base_url, or no proxy at all: nothing to start.
    assert eager.proxy_handler(app, "/user/bob/") is None
    assert eager.proxy_handler(web.Application([]), "/user/alice/") is None


@pytest.mark.parametrize(
    ("raw", "enabled"),
    [
        (None, True),
        ("", True),
        ("1", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("off", False),
        ("no", False),
    ],
)
def test_eager_start_enabled(raw, enabled):
    env = {} if raw is None else {eager.ENABLE_ENV: raw}
    assert eager.eager_start_enabled(env) is enabled


def test_bad_eager_start_value_warns_and_starts(caplog):
    assert eager.eager_start_enabled({eager.ENABLE_ENV: "maybe"}) is True
    assert "LLMSPAWNER_LLAMABOARD_EAGER_START must be one of" in caplog.text


def _serverapp(app):
    import logging
    from types import SimpleNamespace

    return SimpleNamespace(web_app=app, log=logging.getLogger("test-serverapp"))


async def test_extension_switched_off(process, monkeypatch):
    from jupyter_server_proxy.config import make_handlers

    monkeypatch.setenv(eager.ENABLE_ENV, "0")
    app = web.Application(make_handlers("/user/alice/", [process]), base_url="/user/alice/")
    serverapp = _serverapp(app)
    assert eager._jupyter_server_extension_points() == [{"module": "llmspawner.singleuser.eager"}]
    eager._load_jupyter_server_extension(serverapp)
    await eager._start_jupyter_server_extension(serverapp)
    record = app.settings[eager.SETTINGS_KEY]
    assert record.state == eager.OFF and record.task is None
    assert "proc" not in eager.proxy_handler(app, "/user/alice/").state


async def test_extension_without_the_proxy_does_nothing(monkeypatch, caplog):
    monkeypatch.delenv(eager.ENABLE_ENV, raising=False)
    app = web.Application([], base_url="/user/alice/")
    serverapp = _serverapp(app)
    eager._load_jupyter_server_extension(serverapp)
    await eager._start_jupyter_server_extension(serverapp)
    record = app.settings[eager.SETTINGS_KEY]
    assert record.state == eager.UNAVAILABLE and record.task is None
    assert "jupyter_server_proxy server extension enabled?" in record.error
    assert "LlamaBoard is not started with the server" in caplog.text


async def test_extension_starts_in_the_background(board, monkeypatch):
    """The start hook returns before LlamaBoard answers; the task finishes the start."""
    monkeypatch.delenv(eager.ENABLE_ENV, raising=False)
    app, pids = board
    serverapp = _serverapp(app)
    eager._load_jupyter_server_extension(serverapp)
    record = app.settings[eager.SETTINGS_KEY]
    assert record.state == eager.WAITING
    await eager._start_jupyter_server_extension(serverapp)
    try:
        assert record.state == eager.STARTING and record.ready is None
        assert await record.task is True
        assert record.state == eager.READY
        assert record.to_json()["pid"] == int(pids.read_text())
    finally:
        await eager.proxy_handler(app, "/user/alice/").state["proc"].kill()


def test_eager_extension_is_enabled_by_the_shipped_config():
    import json

    shipped = Path(__file__).parents[2] / "jupyter-config/jupyter_server_config.d/llmspawner.json"
    extensions = json.loads(shipped.read_text())["ServerApp"]["jpserver_extensions"]
    assert extensions["llmspawner.singleuser.eager"] is True


async def test_wait_ready_checks_at_a_steady_interval():
    answers = iter([False, False, True])
    calls = []

    async def check():
        calls.append(1)
        return next(answers)

    assert await eager.wait_ready(check, timeout=5, interval=0.01) is True
    assert len(calls) == 3

    async def never():
        calls.append(1)
        return False

    calls.clear()
    assert await eager.wait_ready(never, timeout=0.05, interval=0.01) is False
    assert 2 < len(calls) <= 7  # checked again and again, never with a growing pause


#: sha256 of jupyter-server-proxy 4.6's ``SuperviseAndProxyHandler.ensure_process`` source,
#: which :func:`llmspawner.singleuser.eager.ensure_process` follows step by step.
ENSURE_PROCESS_SHA256 = "0708afb1f16237db0b37e121adf3545f04aafc11d166b3b30be1e219d5cf7c68"


def test_the_proxys_start_is_still_the_one_eager_follows():
    import hashlib
    import inspect

    source = inspect.getsource(SuperviseAndProxyHandler.ensure_process)
    assert hashlib.sha256(source.encode()).hexdigest() == ENSURE_PROCESS_SHA256, (
        "jupyter-server-proxy's ensure_process changed: compare it with "
        "llmspawner.singleuser.eager.ensure_process and update that (and this hash)"
    )


@pytest.mark.parametrize(("configured", "value"), [(None, "1"), (True, "1"), (False, "0")])
async def test_the_server_pod_carries_the_platform_setting(make_spawner, configured, value):
    from traitlets.config import Config

    from .conftest import pod_for

    c = Config()
    if configured is not None:
        c.LLMPlatform.llamaboard_eager_start = configured
    pod = await pod_for(make_spawner("alice", c), {"profile": "cpu"})
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env[eager.ENABLE_ENV] == value
    assert eager.eager_start_enabled(env) is (value == "1")


def test_command_fails_with_the_reason_when_llamaboards_runner_changed(
    process, monkeypatch, tmp_path
):
    from llmspawner.singleuser import runner_check

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llamafactory-cli").write_text("#!/bin/sh\n")
    (bin_dir / "llamafactory-cli").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    changed = runner_check.installed_sources()
    runner = changed[1].replace('Popen(["llamafactory-cli", "train"', 'Popen([sys.executable, "-m"')
    monkeypatch.setattr(runner_check, "installed_sources", lambda: (changed[0], runner, None, "9"))
    with pytest.raises(web.HTTPError) as info:
        _Renderer()._realize_rendered_template(process.command)
    assert info.value.status_code == 500
    assert info.value.log_message.startswith(
        "LlamaBoard cannot start: LlamaBoard does not start trainings the way llmspawner's "
        "training shim relies on"
    )
    assert "no longer runs ['llamafactory-cli', 'train', <config>] by name" in (
        info.value.log_message
    )
    monkeypatch.setenv(runner_check.CHECK_ENV, "warn")  # the admin's way out
    assert _Renderer()._realize_rendered_template(process.command)[-1] == "webui"


class _Stream:
    def __init__(self, closed):
        self._closed = closed

    def closed(self):
        return self._closed


class _Handler:
    """What the hook reads of jupyter-server-proxy's handler."""

    def __init__(
        self, stream, path="/user/alice/llamaboard/gradio_api/queue/data", accept="text/event-stream"
    ):
        from types import SimpleNamespace

        self.request = SimpleNamespace(
            method="GET",
            path=path,
            body=b"",
            headers={"Accept": accept},
            connection=SimpleNamespace(stream=stream),
        )
        self.port = 1


def test_the_activity_hook_ends_the_stream_of_a_page_that_is_gone(process):
    assert process.update_last_activity is llamaboard.update_last_activity
    open_page = _Handler(_Stream(False))
    assert llamaboard.update_last_activity(open_page) is False  # Gradio's polling: as before
    assert llamaboard.update_last_activity(_Handler(None)) is False  # detached: not gone
    gone = _Handler(_Stream(True))
    # The request's first call is jupyter-server-proxy's, in ProxyHandler.proxy before it
    # contacts LlamaBoard: outside a stream an exception would be the handler's own (an
    # "Uncaught exception" and a 500 in the log), so that call never raises.
    assert llamaboard.update_last_activity(gone) is False
    with pytest.raises(llamaboard.PageGone, match="queue/data is gone"):
        llamaboard.update_last_activity(gone)  # the stream's first chunk
    # The proxy's error path calls the hook again for the same request: no second raise.
    assert llamaboard.update_last_activity(gone) is False
    from tornado.httputil import HTTPInputError

    assert issubclass(llamaboard.PageGone, HTTPInputError)  # tornado closes it quietly


def test_the_activity_hook_never_raises_for_a_request_that_is_not_streamed(process):
    """A buffered request (a page asset, Gradio's config) whose page closed while it loaded:
    jupyter-server-proxy calls the hook before and after its fetch, outside any stream, where
    a PageGone would be the handler's own uncaught exception (a 500 and a traceback in the
    server's log) with no upstream stream to close."""
    from llmspawner.singleuser import gradio_activity

    path = "/user/alice/llamaboard/config"
    expected = gradio_activity.update_last_activity(_Handler(_Stream(False), path=path, accept="*/*"))
    gone = _Handler(_Stream(True), path=path, accept="*/*")
    for _ in range(3):  # before the fetch, after it, and once more
        assert llamaboard.update_last_activity(gone) is expected
