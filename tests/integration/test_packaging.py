"""What ``pip install 'llmspawner[singleuser]'`` and ``'llmspawner[hub]'`` give, in clean venvs.

Each extra is installed from this checkout into its own new virtual environment (``python -m
venv``: no system site packages, nothing of the test's own environment), through pip with its
cache, as the images do (deploy/images). pip builds the wheel with hatchling from the
package folder only (``[tool.hatch.build.targets.wheel] packages``), so ``.venv`` and other
local folders never reach it. Then:

- singleuser: a real ``jupyter server`` from that venv lists ``llamaboard`` at
  ``<base_url>server-proxy/servers-info`` (jupyter-server-proxy 4.x,
  ``jupyter_server_proxy/api.py: ServersInfoHandler``) with its launcher title and a served
  icon; the activity server extension is enabled from the wheel's shared data; the
  ``llmspawner queue`` command works, as the README promises inside a user's server;
- the wheel itself (``pip wheel``, what both images install) holds ``llmspawner`` only: no
  file of the emulated cluster or the dev stack (``devtools/``: ``devcluster``,
  ``llmspawner_dev``), and the images' Dockerfiles copy and install nothing of ``devtools/``;
- hub: JupyterHub resolves ``spawner_class = "llm"`` through the ``jupyterhub.spawners``
  entry point to ``llmspawner.spawner.LLMSpawner``; the operator's commands run in the hub
  image (``llmspawner profiles check``; ``llmspawner deploy check`` says which extra it
  needs); the z2jh chart data is inside the installed package; the emulator packages are not
  importable there, and ``llmspawner dev`` says it is not installed (exit 2).

Measured on a 2-core machine with a warm pip cache (2026-11-30): venv 3-4 s, install of
``[singleuser]`` about 50 s, of ``[hub]`` about 30 s; the module about 1.5 minutes. When pip
cannot reach the package index the tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devcluster.testing import WaitTimeout, wait_until
from llmspawner.singleuser.llamaboard import LAUNCHER_TITLE, SERVER_NAME

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 600
SERVER_START_S = 60
# pip's messages when it cannot reach the index (urllib3/requests connection errors).
_OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Name or service not known|Network is unreachable|ConnectTimeout|"
    r"Read timed out|ProxyError"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment with ``venv`` first on PATH and nothing of the test's own venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        and not k.startswith(("JUPYTER", "JUPYTERHUB_", "LLMSPAWNER_"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _install(tmp_path_factory, extra: str) -> Path:
    """Make a fresh venv and ``pip install '<checkout>[extra]'`` into it; return the venv.

    Skips the test when pip cannot reach the package index; fails with pip's output on any
    other error. Prints how long the venv and the install took.
    """
    venv = tmp_path_factory.mktemp(f"venv-{extra}")
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    made = time.monotonic() - start
    python = venv / "bin" / "python"
    start = time.monotonic()
    try:
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"{ROOT}[{extra}]"],
            env=_clean_env(venv),
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip install '[{extra}]' took more than {INSTALL_TIMEOUT_S} s")
    took = time.monotonic() - start
    output = result.stdout + result.stderr
    if result.returncode != 0 and _OFFLINE.search(output):
        pytest.skip(f"pip cannot reach the package index: {_OFFLINE.search(output).group(0)}")
    assert result.returncode == 0, f"pip install '[{extra}]' failed:\n{_tail(output)}"
    print(f"[{extra}]: venv {made:.1f} s, pip install {took:.1f} s")
    return venv


def _run(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args],
        env=_clean_env(venv),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _free_port() -> int:
    """A port outside the ephemeral range, reserved while this process lives (the dev
    stack's picker: no other socket can take it before the server binds it)."""
    from llmspawner_dev.processes import free_port

    return free_port()


# --- llmspawner[singleuser] ----------------------------------------------------------------


@pytest.fixture(scope="module")
def singleuser_venv(tmp_path_factory):
    return _install(tmp_path_factory, "singleuser")


@pytest.fixture(scope="module")
def server(singleuser_venv, tmp_path_factory):
    """``jupyter server`` of the singleuser venv, with a token, on a free port.

    Yields ``(base URL, token)``. Config and runtime folders and HOME are fresh; the
    venv's own ``etc/jupyter`` (where the wheels put their extension config) is read.
    """
    root = tmp_path_factory.mktemp("jupyter")
    port, token = _free_port(), secrets.token_hex(16)
    env = _clean_env(
        singleuser_venv,
        HOME=str(root),
        JUPYTER_CONFIG_DIR=str(root / "config"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
    )
    cmd = [
        str(singleuser_venv / "bin" / "jupyter"),
        "server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers: refuses root without it
        cmd.append("--ServerApp.allow_root=True")
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, f"jupyter server exited:\n{_tail(log.read_text())}"
            r = httpx.get(f"{url}/api/status", params={"token": token}, timeout=5)
            return r.status_code == 200

        try:
            wait_until(up, SERVER_START_S, "jupyter server", 0.2, ignore=(httpx.TransportError,))
        except WaitTimeout as e:
            raise AssertionError(f"{e}\n{_tail(log.read_text())}") from None
        yield url, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_singleuser_server_proxy_lists_llamaboard(server):
    url, token = server
    headers = {"Authorization": f"token {token}"}
    r = httpx.get(f"{url}/server-proxy/servers-info", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    (info,) = [s for s in r.json()["server_processes"] if s["name"] == SERVER_NAME]
    assert info["launcher_entry"]["title"] == LAUNCHER_TITLE == "LlamaBoard"
    assert info["launcher_entry"]["enabled"] is True
    assert info["launcher_entry"]["icon_url"] == "/server-proxy/icon/llamaboard"
    icon = httpx.get(url + info["launcher_entry"]["icon_url"], headers=headers, timeout=10)
    assert icon.status_code == 200
    assert icon.content.lstrip().startswith((b"<svg", b"<?xml"))


def test_singleuser_enables_the_activity_extension(singleuser_venv):
    r = _run(singleuser_venv, singleuser_venv / "bin" / "jupyter", "server", "extension", "list")
    out = _ANSI.sub("", r.stdout + r.stderr)
    assert r.returncode == 0, out
    assert "llmspawner.singleuser.activity enabled" in out
    assert re.search(r"^\s+llmspawner\.singleuser\.activity\s+OK$", out, re.M), out
    # LlamaBoard starts with the server (llmspawner.singleuser.eager), from the same config.
    assert "llmspawner.singleuser.eager enabled" in out
    assert re.search(r"^\s+llmspawner\.singleuser\.eager\s+OK$", out, re.M), out
    # LlamaBoard's Gradio assets are served by the server itself (llmspawner.singleuser.board_assets).
    assert "llmspawner.singleuser.board_assets enabled" in out
    assert re.search(r"^\s+llmspawner\.singleuser\.board_assets\s+OK$", out, re.M), out


def test_singleuser_has_the_queue_command(singleuser_venv):
    r = _run(singleuser_venv, singleuser_venv / "bin" / "llmspawner", "queue", "list", "--help")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith("usage: llmspawner queue list")


# --- llmspawner[hub] -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_venv(tmp_path_factory):
    return _install(tmp_path_factory, "hub")


_RESOLVE = """
import json
from jupyterhub.app import JupyterHub
from importlib import resources
cls = JupyterHub(spawner_class="llm").spawner_class
chart = resources.files("llmspawner.deploy").joinpath("z2jh")
print(json.dumps({
    "spawner_class": f"{cls.__module__}.{cls.__qualname__}",
    "chart_files": sorted(p.name for p in chart.iterdir()),
}))
"""


def test_hub_resolves_spawner_class_llm_by_entry_point(hub_venv):
    r = _run(hub_venv, hub_venv / "bin" / "python", "-c", _RESOLVE)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "spawner_class": "llmspawner.spawner.LLMSpawner",
        "chart_files": ["LICENSE", "README.md", "values.schema.yaml", "values.yaml"],
    }


def test_hub_image_runs_the_operator_commands(hub_venv):
    llmspawner = hub_venv / "bin" / "llmspawner"
    r = _run(hub_venv, llmspawner, "profiles", "check", ROOT / "profiles")
    assert (r.returncode, r.stderr) == (0, ""), r.stdout
    assert r.stdout.splitlines()[-1] == f"4 profiles in {ROOT / 'profiles'} are valid"
    # The hub image has no deploy extra: the command says what to install.
    r = _run(hub_venv, llmspawner, "deploy", "check", cwd=ROOT)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        "llmspawner deploy check: No module named 'kubernetes_validate'; install the deploy "
        "extra: pip install 'llmspawner[deploy]'\n"
    )


# --- the wheel and the images: no emulator code ----------------------------------------------

#: What the Dockerfiles may COPY from the build context (besides their own constraints.txt).
IMAGE_SOURCES = {"pyproject.toml", "README.md", "jupyter-config", "llmspawner"}
EMULATOR_PATHS = ("devtools", "devcluster", "llmspawner_dev")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The llmspawner wheel as pip builds it for the images (``pip wheel --no-deps``)."""
    out = tmp_path_factory.mktemp("wheel")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                str(out),
                str(ROOT),
            ],
            env=_clean_env(Path(sys.prefix)),
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip wheel took more than {INSTALL_TIMEOUT_S} s")
    output = result.stdout + result.stderr
    if result.returncode != 0 and _OFFLINE.search(output):
        pytest.skip(f"pip cannot reach the package index: {_OFFLINE.search(output).group(0)}")
    assert result.returncode == 0, f"pip wheel failed:\n{_tail(output)}"
    (path,) = out.glob("llmspawner-*.whl")
    return path


def test_wheel_holds_the_product_only(wheel):
    import zipfile

    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
    version = dist_info.removeprefix("llmspawner-").removesuffix(".dist-info")
    assert {n.split("/")[0] for n in names} == {
        "llmspawner",
        dist_info,
        f"llmspawner-{version}.data",
    }
    assert [n for n in names if any(p in n for p in EMULATOR_PATHS)] == []
    assert "llmspawner/spawner.py" in names and "llmspawner/cli.py" in names
    # The demo dataset each user's folder gets (llmspawner.singleuser.workspace).
    assert "llmspawner/singleuser/demo/identity_demo.json" in names
    assert not any(p in entry_points for p in EMULATOR_PATHS), entry_points


def test_wheel_ships_the_jupyter_settings_for_the_user_image(wheel):
    """The user image installs the wheel: its terminal shell and JupyterLab defaults come along
    (``tests/integration/test_jupyter_config.py`` checks what they do)."""
    import zipfile

    with zipfile.ZipFile(wheel) as whl:
        data = {n.split("/", 2)[2] for n in whl.namelist() if ".data/data/" in n}
    assert {
        "etc/jupyter/jupyter_server_config.d/llmspawner.json",
        "etc/jupyter/jupyter_server_config.json",
        "share/jupyter/lab/settings/overrides.d/llmspawner.json",
    } <= data, data


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("image", ["hub", "singleuser"])
def test_images_copy_and_install_no_emulator_code(image):
    dockerfile = ROOT / "deploy" / "images" / image / "Dockerfile"
    instructions = _dockerfile_instructions(dockerfile)
    sources = set()
    for instruction, args in instructions:
        assert instruction != "ADD", f"{dockerfile}: ADD {args}"
        if instruction == "COPY":
            *srcs, _dest = [a for a in args.split() if not a.startswith("--")]
            sources.update(srcs)
    assert sources == IMAGE_SOURCES | {f"deploy/images/{image}/constraints.txt"}
    for instruction, args in instructions:
        if instruction == "RUN":
            assert not any(p in args for p in EMULATOR_PATHS), f"{dockerfile}: RUN {args}"
            assert "llmspawner-devtools" not in args
    installs = [a for i, a in instructions if i == "RUN" and "pip install" in a]
    assert installs and all(f'"/tmp/llmspawner/src[{image}]"' in a for a in installs)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "devtools" in ignored and "tests" in ignored


_FIND_EMULATOR = """
import importlib.util, json
print(json.dumps({name: importlib.util.find_spec(name) is not None
                  for name in ("devcluster", "llmspawner_dev")}))
"""


def test_hub_install_has_no_emulator(hub_venv):
    r = _run(hub_venv, hub_venv / "bin" / "python", "-c", _FIND_EMULATOR)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"devcluster": False, "llmspawner_dev": False}
    r = _run(hub_venv, hub_venv / "bin" / "llmspawner", "dev")
    assert (r.returncode, r.stdout) == (2, "")
    assert "llmspawner dev: not available in this installation" in r.stderr
    assert "llmspawner_dev" in r.stderr
    r = _run(hub_venv, hub_venv / "bin" / "llmspawner", "devcluster", "--help")
    assert r.returncode != 0
    assert "devcluster" in r.stderr
