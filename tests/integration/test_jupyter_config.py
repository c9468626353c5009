"""The Jupyter settings llmspawner ships (``jupyter-config/**``), on a real Jupyter server.

The server runs with the environment the emulated kubelet gives a user's server (PATH = the
"image's" ``bin/`` + the standard PATH, ``devtools/devcluster/containers.py``, like the user
image's ``ENV PATH``) and reads the config files installed into this environment by
pyproject's shared-data:

- a JupyterLab terminal finds ``python`` and ``llmspawner`` (jupyter_server_terminals starts
  ``$SHELL -l`` unless ``terminado_settings.shell_command`` is set, and a login shell resets
  PATH from ``/etc/profile``:
  https://github.com/jupyter-server/jupyter_server_terminals/blob/main/jupyter_server_terminals/app.py);
- JupyterLab never asks to fetch Jupyter's news (``fetchNews: "false"`` in
  ``share/jupyter/lab/settings/overrides.d/llmspawner.json``, read by jupyterlab_server's
  ``_get_overrides``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tornado.websocket import websocket_connect

from devcluster.containers import STANDARD_PATH
from devcluster.testing import wait_until
from llmspawner_dev.processes import free_port

TOKEN = "jupyter-config-test-token"
PREFIX = Path(sys.executable).parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Jupyter server as in a user's pod: ``(base URL, log path)``."""
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    log = home.parent / "jupyter-server.log"
    env = {
        "PATH": f"{PREFIX}/bin:{STANDARD_PATH}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # As in a pod: only what the kubelet sets; the user's own SHELL is not there.
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(PREFIX / "bin" / "jupyter-server"),
                f"--ServerApp.port={port}",
                "--ServerApp.ip=127.0.0.1",
                f"--IdentityProvider.token={TOKEN}",
                f"--ServerApp.root_dir={home}",
                "--ServerApp.open_browser=False",
                "--ServerApp.allow_root=True",
            ],
            env=env,
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/api/status", params={"token": TOKEN}).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 120, "the Jupyter server", 0.5)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_a_terminal_finds_python_and_llmspawner(server):
    url, log = server
    http = httpx.AsyncClient(params={"token": TOKEN})
    r = await http.post(f"{url}/api/terminals")
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    ws = await websocket_connect(
        f"ws{url[4:]}/terminals/websocket/{name}?token={TOKEN}", connect_timeout=30
    )
    out = ""
    try:
        await ws.write_message(
            json.dumps(["stdin", "command -v python llmspawner; echo DO''NE.\r"])
        )
        deadline = time.monotonic() + 60
        while "DONE." not in out:  # the echoed input says DO''NE
            assert time.monotonic() < deadline, out
            message = await ws.read_message()
            assert message is not None, f"the terminal closed: {out}\n{log.read_text()[-2000:]}"
            kind, *rest = json.loads(message)
            if kind == "stdout":
                out += rest[0]
    finally:
        ws.close()
        await http.delete(f"{url}/api/terminals/{name}")
        await http.aclose()
    found = [line.strip() for line in out.splitlines() if line.strip().startswith("/")]
    assert f"{PREFIX}/bin/python" in found, out
    assert f"{PREFIX}/bin/llmspawner" in found, out
    assert os.access(f"{PREFIX}/bin/llmspawner", os.X_OK)


def test_jupyterlab_does_not_ask_to_fetch_news(server):
    url, _ = server
    r = httpx.get(
        f"{url}/lab/api/settings/@jupyterlab/apputils-extension:notification",
        params={"token": TOKEN},
    )
    assert r.status_code == 200, r.text
    settings = r.json()
    # The default the user sees (no user setting yet): "false" is "Never", "none" asks.
    assert settings["schema"]["properties"]["fetchNews"]["default"] == "false"
    assert settings["settings"].get("fetchNews", "false") == "false"
