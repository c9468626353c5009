"""A real Jupyter server serves a real LlamaBoard at /user/alice/llamaboard/.

One ``jupyter server`` (base_url ``/user/alice/``, a token, the user's folder as root and
HOME, ``JUPYTERHUB_SERVICE_PREFIX`` set as the spawner sets it) is started per module, with
this package's ``jupyter_serverproxy_servers`` entry point installed. The first request to
``/user/alice/llamaboard/`` makes jupyter-server-proxy start ``llamafactory-cli webui``;
that took 10-21 s on 2 CPU cores here (import of torch, transformers and gradio), and the
whole module about 15-25 s.

Every URL is fetched through the Jupyter server, as a browser would, never from
LlamaBoard's own port.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from devcluster.testing import wait_until

pytestmark = pytest.mark.llamaboard

PREFIX = "/user/alice/"
BOARD = PREFIX + "llamaboard/"
BIN = Path(sys.executable).parent
SERVER_START_S = 60
# The spec's own start-up timeout is 180 s; the test waits a little longer so a slow start
# fails with the proxy's message rather than a client timeout.
BOARD_START_S = 200
# Gradio's page template (gradio/templates/frontend/index.html) itself loads an async
# iframe-resizer script from this CDN; the browser fetches it, the server never does, and
# the page works without it (offline clusters).
THIRD_PARTY_HOSTS = {"cdnjs.cloudflare.com"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, proc: subprocess.Popen, port: int, token: str, home: Path, log: Path):
        self.proc, self.port, self.token, self.home, self.log = proc, port, token, home, log
        self.origin = f"http://127.0.0.1:{port}"
        self.board_start_s: float | None = None

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.origin,
            headers={"Authorization": f"token {self.token}", **headers},
            timeout=BOARD_START_S,
        )

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's process group (the server, LlamaBoard, their children)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # LlamaBoard may outlive the server by a moment; make sure the group is gone.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if (
        shutil.which("llamafactory-cli", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        is None
    ):
        pytest.skip("llamafactory-cli is not installed")
    root = tmp_path_factory.mktemp("llamaboard")
    home = root / "alice"
    home.mkdir()
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTERHUB_", "GRADIO_", "LLMSPAWNER_"))
    }
    env.update(
        HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        JUPYTERHUB_SERVICE_PREFIX=PREFIX,
        JUPYTER_CONFIG_DIR=str(root / "config"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        # No network for model downloads in this test.
        HF_HUB_OFFLINE="1",
    )
    log = root / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={PREFIX}",
        f"--ServerApp.root_dir={home}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers: refuses root without it
        cmd.append("--ServerApp.allow_root=True")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    srv = _Server(proc, port, token, home, log)
    try:
        with srv.client() as c:

            def up() -> bool:
                assert proc.poll() is None, f"jupyter server exited:\n{srv.log_tail()}"
                return c.get(PREFIX + "api/status", timeout=5).status_code == 200

            wait_until(up, SERVER_START_S, "jupyter server", 0.2, ignore=(httpx.TransportError,))
        yield srv
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def page(server):
    """The first GET of /user/alice/llamaboard/, which starts LlamaBoard."""
    with server.client() as c:
        start = time.monotonic()
        r = c.get(BOARD)
        server.board_start_s = time.monotonic() - start
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n{server.log_tail()}"
    print(f"LlamaBoard answered through the proxy after {server.board_start_s:.1f} s")
    return r


def _gradio_config(html: str) -> dict:
    m = re.search(r"window\.gradio_config = (\{.*?\});</script>", html, re.S)
    assert m, "no window.gradio_config in the page"
    return json.loads(m.group(1))


class _Assets(HTMLParser):
    """Collect script src and stylesheet/modulepreload href attributes."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"])
        rel = (a.get("rel") or "").split()
        if tag == "link" and ({"stylesheet", "modulepreload"} & set(rel)) and a.get("href"):
            self.urls.append(a["href"])


def _assets(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


def test_servers_info_lists_llamaboard(server):
    with server.client() as c:
        r = c.get(PREFIX + "server-proxy/servers-info")
        assert r.status_code == 200
        (info,) = [s for s in r.json()["server_processes"] if s["name"] == "llamaboard"]
        assert info["launcher_entry"]["title"] == "LlamaBoard"
        assert info["launcher_entry"]["path_info"] == "llamaboard/"
        assert info["new_browser_tab"] is False
        icon = c.get(info["launcher_entry"]["icon_url"])
        assert icon.status_code == 200
        assert icon.headers["content-type"].startswith("image/svg+xml")
        assert b"<svg" in icon.content


def test_page_is_llamaboard(page):
    assert "text/html" in page.headers["content-type"]
    config = _gradio_config(page.text)
    assert config["title"].startswith("LLaMA Factory")
    assert config["analytics_enabled"] is False


def test_root_is_the_requesting_origin(server, page):
    assert _gradio_config(page.text)["root"] == f"{server.origin}/user/alice/llamaboard"


def test_root_follows_host_and_forwarded_headers(server, page):
    with server.client(Host=f"localhost:{server.port}") as c:
        root = _gradio_config(c.get(BOARD).text)["root"]
    assert root == f"http://localhost:{server.port}/user/alice/llamaboard"
    # What JupyterHub's configurable-http-proxy (xfwd) or an ingress adds in front.
    forwarded = {"X-Forwarded-Host": "hub.example.org", "X-Forwarded-Proto": "https"}
    with server.client(**forwarded) as c:
        root = _gradio_config(c.get(BOARD).text)["root"]
    assert root == "https://hub.example.org/user/alice/llamaboard"


def test_every_script_and_stylesheet_is_under_the_prefix(server, page):
    urls = _assets(page.text)
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls)
    page_url = f"{server.origin}{BOARD}"
    local = [u for u in urls if urlsplit(u).hostname not in THIRD_PARTY_HOSTS]
    assert local, urls
    with server.client() as c:
        for url in local:
            absolute = urljoin(page_url, url)
            assert absolute.startswith(page_url), url
            r = c.get(absolute)
            assert r.status_code == 200, (url, r.status_code)


def test_page_can_be_framed_by_jupyterlab(page):
    # new_browser_tab=False: JupyterLab shows LlamaBoard in a same-origin iframe.
    assert "x-frame-options" not in page.headers
    csp = page.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" not in csp


def test_config_api_through_the_proxy(server, page):
    with server.client() as c:
        r = c.get(BOARD + "config")
        assert r.status_code == 200
        config = r.json()
        assert config["root"] == f"{server.origin}/user/alice/llamaboard"
        assert config["api_prefix"] == "/gradio_api"
        r = c.get(BOARD + "gradio_api/info")
        assert r.status_code == 200


def test_queue_events_stream_through_the_proxy(server, page):
    """The page's load event runs through Gradio's queue and its SSE stream (progress)."""
    config = _gradio_config(page.text)
    (load,) = [
        d
        for d in config["dependencies"]
        if any(t[1] == "load" for t in d["targets"]) and d.get("queue") is not False
    ]
    session = secrets.token_hex(6)
    api = BOARD + "gradio_api/"
    with server.client() as c:
        join = c.post(
            api + "queue/join",
            json={
                "data": [],
                "event_data": None,
                "fn_index": load["id"],
                "trigger_id": None,
                "session_hash": session,
            },
        )
        assert join.status_code == 200, join.text
        event_id = join.json()["event_id"]
        messages = []
        with c.stream(
            "GET",
            api + "queue/data",
            params={"session_hash": session},
            headers={"Accept": "text/event-stream"},
            timeout=60,
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[len("data:") :])
                messages.append(msg)
                if msg.get("msg") == "process_completed" and msg.get("event_id") == event_id:
                    break
    done = messages[-1]
    assert done["msg"] == "process_completed" and done["success"] is True, messages
    assert "process_starts" in [m.get("msg") for m in messages]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_llamaboard_runs_in_the_users_folder_on_localhost_only(server, page):
    (child,) = [
        p for p in _children(server.proc.pid) if b"webui" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert Path(os.readlink(f"/proc/{child}/cwd")) == server.home
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{child}/environ").read_text().split("\0")
        if "=" in item
    )
    assert environ["GRADIO_SERVER_NAME"] == "127.0.0.1"
    assert environ["GRADIO_ROOT_PATH"] == "/user/alice/llamaboard"
    internal = int(environ["GRADIO_SERVER_PORT"])
    assert internal != server.port
    with pytest.raises(httpx.ConnectError):
        # Bound to loopback only: not on the pod's other addresses.
        other = _non_loopback_address()
        if other is None:
            pytest.skip("no non-loopback address to probe")
        httpx.get(f"http://{other}:{internal}/", timeout=5)


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1; UDP connect sends nothing
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def test_unauthenticated_requests_do_not_reach_llamaboard(server, page):
    r = httpx.get(f"{server.origin}{BOARD}", follow_redirects=False, timeout=30)
    assert r.status_code in (302, 403)
    assert urlsplit(r.headers.get("location", "/login")).path.endswith("login")


def _last_activity(client: httpx.Client) -> str:
    # no_track_activity: reading the status must not itself count as activity.
    r = client.get(PREFIX + "api/status", params={"no_track_activity": "1"})
    r.raise_for_status()
    return r.json()["last_activity"]


def test_background_traffic_is_not_activity_but_a_click_is(server, page):
    """An open but idle LlamaBoard tab keeps polling; that must not keep the server alive."""
    config = _gradio_config(page.text)
    (load,) = [
        d
        for d in config["dependencies"]
        if any(t[1] == "load" for t in d["targets"]) and d.get("queue") is not False
    ]
    timers = [c["id"] for c in config["components"] if c.get("type") == "timer"]
    (tick,) = [
        d for d in config["dependencies"] if any(t == [timers[0], "tick"] for t in d["targets"])
    ]
    session = secrets.token_hex(6)
    api = BOARD + "gradio_api/"
    with server.client() as c:
        # LlamaBoard's GPU-memory timer, as the page sends it every 5 s (the proxy learns the
        # timer's id from LlamaBoard's config at the first such request).
        body = {
            "data": [],
            "event_data": None,
            "fn_index": tick["id"],
            "trigger_id": timers[0],
            "session_hash": session,
        }
        assert c.post(api + "run/predict", json=body).status_code == 200
        time.sleep(1)
        before = _last_activity(c)
        time.sleep(0.05)
        for path in (f"heartbeat/{session}", f"queue/data?session_hash={session}"):
            with c.stream(
                "GET", api + path, headers={"Accept": "text/event-stream"}, timeout=5
            ) as r:
                assert r.status_code in (200, 404), (path, r.status_code)
        tick_response = c.post(api + "run/predict", json=body)
        assert tick_response.status_code == 200, tick_response.text
        assert _last_activity(c) == before
        join = c.post(
            api + "queue/join",
            json={
                "data": [],
                "event_data": None,
                "fn_index": load["id"],
                "trigger_id": None,
                "session_hash": session,
            },
        )
        assert join.status_code == 200, join.text
        assert _last_activity(c) > before
