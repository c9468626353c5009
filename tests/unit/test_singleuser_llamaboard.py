"""The LlamaBoard server spec, checked through jupyter-server-proxy's own objects.

No process is started: the spec is turned into jupyter-server-proxy's ``ServerProcess`` and
its handler class, and the command and environment callables are rendered with the proxy's
own template code, as the proxy does at the first request.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from jupyter_server_proxy.config import ServerProcess, make_server_process
from jupyter_server_proxy.handlers import NamedLocalProxyHandler, SuperviseAndProxyHandler
from tornado import web

from llmspawner.singleuser import llamaboard
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
