"""A real Jupyter server serves a real LlamaBoard at /user/alice/llamaboard/.

One ``jupyter server`` (base_url ``/user/alice/``, a token, the user's folder as root and
HOME, ``JUPYTERHUB_SERVICE_PREFIX`` set as the spawner sets it, the repository's shipped
``jupyter-config``) is started per module, with this package's ``jupyter_serverproxy_servers``
entry point installed. The eager-start extension (:mod:`llmspawner.singleuser.eager`) makes
jupyter-server-proxy start ``llamafactory-cli webui`` as soon as the server runs; the fixture
waits on LlamaBoard's own port until it answers (10-21 s on 2 CPU cores: importing torch,
transformers and gradio), without any request to the server, so the first request to
``/user/alice/llamaboard/`` finds it running. A few more servers run a stand-in
``llamafactory-cli`` (concurrent first requests, a broken LlamaBoard, the switch).

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
    """A port outside the ephemeral range, reserved while this process lives (the dev
    stack's picker: no other socket can take it before the server binds it)."""
    from llmspawner_dev.processes import free_port

    return free_port()


class _Server:
    def __init__(self, proc: subprocess.Popen, port: int, token: str, home: Path, log: Path):
        self.proc, self.port, self.token, self.home, self.log = proc, port, token, home, log
        self.origin = f"http://127.0.0.1:{port}"
        self.board_start_s: float | None = None
        self.started = self.up = self.board_up = 0.0
        self.eager_pid: int | None = None
        self.activity_at_start = self.activity_board_up = ""

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


SHIPPED_CONFIG = (
    Path(__file__).parents[2] / "jupyter-config/jupyter_server_config.d/llmspawner.json"
)


def start_server(root: Path, *, environ: dict[str, str] | None = None, path: str | None = None):
    """Start ``jupyter server`` for alice under ``root`` and wait until it answers.

    The repository's shipped ``jupyter-config`` (activity and eager-start extensions) is put
    in the server's own config folder, so the test runs what the image installs whatever the
    virtual environment's ``etc/jupyter`` holds. Returns a :class:`_Server` whose ``started``
    (monotonic, at Popen) and ``up`` (first 200 of ``/api/status``) are set.

    Args:
        root: an empty folder (alice's folder, config, runtime and log go there).
        environ: extra environment for the server (e.g. ``LLMSPAWNER_*``).
        path: the server's ``PATH`` (default: this interpreter's bin folder first).
    """
    home = root / "alice"
    home.mkdir(parents=True)
    config_d = root / "config" / "jupyter_server_config.d"
    config_d.mkdir(parents=True)
    shutil.copy(SHIPPED_CONFIG, config_d / "llmspawner.json")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTERHUB_", "GRADIO_", "LLMSPAWNER_"))
    }
    env.update(
        HOME=str(home),
        PATH=path or f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        JUPYTERHUB_SERVICE_PREFIX=PREFIX,
        JUPYTER_CONFIG_DIR=str(root / "config"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        # No network for model downloads in this test.
        HF_HUB_OFFLINE="1",
    )
    env.update(environ or {})
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
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    srv = _Server(proc, port, token, home, log)
    srv.started = started
    try:
        with srv.client() as c:

            def up() -> bool:
                assert proc.poll() is None, f"jupyter server exited:\n{srv.log_tail()}"
                return c.get(PREFIX + "api/status", timeout=5).status_code == 200

            wait_until(up, SERVER_START_S, "jupyter server", 0.1, ignore=(httpx.TransportError,))
        srv.up = time.monotonic()
    except BaseException:
        _stop(proc)
        raise
    return srv


def board_processes(srv: _Server) -> list[int]:
    """LlamaBoard's processes: children of the server (the proxy's) whose command is webui."""
    found = []
    for pid in _children(srv.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"webui" in cmdline:
            found.append(pid)
    return found


def start_status(client: httpx.Client) -> dict:
    """The eager start's record (``llmspawner/llamaboard-start``), not counted as activity."""
    r = client.get(PREFIX + "llmspawner/llamaboard-start")
    r.raise_for_status()
    return r.json()


def _internal_port(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (port,) = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"GRADIO_SERVER_PORT=")]
    return int(port)


def wait_for_eager_board(srv: _Server) -> int:
    """Wait, without any request to the Jupyter server, until LlamaBoard answers on its own
    port; return its pid. Sets ``srv.board_up`` (monotonic)."""

    def answering() -> int | None:
        assert srv.proc.poll() is None, f"jupyter server exited:\n{srv.log_tail()}"
        pids = board_processes(srv)
        assert len(pids) <= 1, pids
        if not pids:
            return None
        httpx.get(f"http://127.0.0.1:{_internal_port(pids[0])}/", timeout=5)
        return pids[0]

    pid = wait_until(
        answering,
        BOARD_START_S,
        "LlamaBoard started with the server",
        0.2,
        ignore=(httpx.TransportError, OSError, ValueError),
    )
    srv.board_up = time.monotonic()
    return pid


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """alice's server, once LlamaBoard, started with it, answers (no request started it).

    Sets ``eager_pid``, ``activity_at_start`` (the server's last activity when it first
    answered) and ``activity_board_up`` (when LlamaBoard answered) on the server, before any
    test can send a request that counts as activity.
    """
    if (
        shutil.which("llamafactory-cli", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        is None
    ):
        pytest.skip("llamafactory-cli is not installed")
    srv = start_server(tmp_path_factory.mktemp("llamaboard"))
    try:
        with srv.client() as c:
            srv.activity_at_start = _last_activity(c)
            srv.eager_pid = wait_for_eager_board(srv)
            srv.activity_board_up = _last_activity(c)
        print(
            f"server answering {srv.up - srv.started:.1f} s after start; LlamaBoard (started "
            f"with it) answering {srv.board_up - srv.started:.1f} s after start"
        )
        yield srv
    finally:
        _stop(srv.proc)


@pytest.fixture(scope="module")
def page(server):
    """The first GET of /user/alice/llamaboard/, which starts LlamaBoard."""
    with server.client() as c:
        start = time.monotonic()
        r = c.get(BOARD)
        server.board_start_s = time.monotonic() - start
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n{server.log_tail()}"
    print(f"first LlamaBoard page through the proxy took {server.board_start_s:.2f} s")
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
    (child,) = board_processes(server)
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


# -- LlamaBoard starts with the server (llmspawner.singleuser.eager) ---------------------------


def test_llamaboard_starts_with_the_server(server):
    # The fixture waited on LlamaBoard's own port: no request reached <base_url>llamaboard/.
    with server.client() as c:
        status = start_status(c)
    assert status["state"] == "ready", status
    assert status["pid"] == server.eager_pid
    assert status["error"] is None and status["seconds_to_ready"] > 0


def test_eager_start_is_not_activity(server):
    """An eagerly started, unused LlamaBoard does not keep the server from being culled."""
    assert server.activity_board_up == server.activity_at_start
    with server.client() as c:
        before = _last_activity(c)
        start_status(c)  # the status page is not activity either
        assert _last_activity(c) == before


def test_first_request_gets_the_eager_llamaboard(server, page):
    assert _gradio_config(page.text)["title"].startswith("LLaMA Factory")
    assert board_processes(server) == [server.eager_pid]
    with server.client() as c:
        assert start_status(c)["pid"] == server.eager_pid


# A stand-in llamafactory-cli: notes its pid, waits FAKE_BOARD_DELAY seconds, then answers on
# GRADIO_SERVER_PORT; with FAKE_BOARD_FAIL it exits 1 at once (a broken image). Its /stream
# sends an event every 0.2 s until its connection is closed, then writes FAKE_BOARD_STREAM.
FAKE_CLI = """#!{python}
import http.server, os, sys, time
with open(os.environ["FAKE_BOARD_PIDS"], "a") as f:
    f.write(f"{{os.getpid()}}\\n")
if os.environ.get("FAKE_BOARD_FAIL"):
    sys.exit(1)
time.sleep(float(os.environ.get("FAKE_BOARD_DELAY", "0")))


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/stream":  # an endless event stream, as Gradio's queue/data
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"data: tick\\n\\n")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the proxy closed its connection
                with open(os.environ["FAKE_BOARD_STREAM"], "w") as f:
                    f.write("closed")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<title>fake LlamaBoard</title>")

    def log_message(self, *args):
        pass


port = int(os.environ["GRADIO_SERVER_PORT"])
http.server.ThreadingHTTPServer(("127.0.0.1", port), Page).serve_forever()
"""


def _fake_cli_dir(parent: Path) -> Path:
    """``parent/bin`` holding the stand-in ``llamafactory-cli`` (FAKE_CLI)."""
    bin_dir = parent / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "llamafactory-cli"
    cli.write_text(FAKE_CLI.format(python=sys.executable))
    cli.chmod(0o755)
    return bin_dir


@pytest.fixture
def fake_server(tmp_path):
    """start(**environ) -> (server, pids file) with the stand-in llamafactory-cli on PATH."""
    bin_dir = _fake_cli_dir(tmp_path)
    pids = tmp_path / "pids"
    started = []

    def start(**environ: str):
        srv = start_server(
            tmp_path / "server",
            environ={"FAKE_BOARD_PIDS": str(pids), **environ},
            path=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        started.append(srv)
        return srv

    yield start, pids
    for srv in started:
        _stop(srv.proc)


def _pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_concurrent_first_requests_join_the_eager_start(fake_server):
    from concurrent.futures import ThreadPoolExecutor

    start, pids = fake_server
    srv = start(FAKE_BOARD_DELAY="3")  # the clicks come while LlamaBoard still starts

    def click(_):
        with srv.client() as c:
            return c.get(BOARD)

    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(click, range(3)))
    assert [r.status_code for r in responses] == [200] * 3, srv.log_tail()
    assert all("fake LlamaBoard" in r.text for r in responses)
    (pid,) = _pids(pids)  # one LlamaBoard for the eager start and all three requests
    assert board_processes(srv) == [pid]
    with srv.client() as c:
        status = start_status(c)
    assert status["state"] == "ready" and status["pid"] == pid, status


def test_failing_llamaboard_leaves_the_server_working(fake_server):
    start, _ = fake_server
    srv = start(FAKE_BOARD_FAIL="1", LLMSPAWNER_LLAMABOARD_TIMEOUT="5")
    with srv.client() as c:
        status = wait_until(
            lambda: (s := start_status(c))["state"] == "failed" and s,
            60,
            "the eager start to fail",
            0.2,
        )
        assert status["error"] == "could not start llamaboard in time"
        assert status["pid"] is None
        assert c.get(PREFIX + "api/status").status_code == 200
        # The tile starts it again and shows the proxy's error, as without the eager start.
        r = c.get(BOARD)
        assert r.status_code == 500
        assert "could not start llamaboard in time" in r.text
    # The whole log: the tile's second start writes its own error after this line, which can
    # push it out of log_tail()'s last 4,000 characters.
    assert "LlamaBoard did not start with the server" in srv.log.read_text(errors="replace")


def test_eager_start_switched_off(fake_server):
    start, pids = fake_server
    srv = start(LLMSPAWNER_LLAMABOARD_EAGER_START="0")
    with srv.client() as c:
        assert start_status(c)["state"] == "off"
        assert board_processes(srv) == [] and _pids(pids) == []
        r = c.get(BOARD)  # the first request starts it, as before
        assert r.status_code == 200 and "fake LlamaBoard" in r.text
        assert len(_pids(pids)) == 1
        assert start_status(c)["state"] == "off"


def test_the_stream_of_a_closed_page_is_closed_up_to_llamaboard(fake_server, tmp_path):
    """jupyter-server-proxy keeps a streamed request to LlamaBoard open for 7200 s after the
    page left; LlamaBoard's hook (llmspawner.singleuser.llamaboard.update_last_activity) ends
    it at the next chunk once the page's connection is closed."""
    start, _ = fake_server
    closed = tmp_path / "stream-closed"
    srv = start(FAKE_BOARD_STREAM=str(closed))
    with srv.client() as c:
        assert c.get(BOARD).status_code == 200  # LlamaBoard runs
        with c.stream(
            "GET", BOARD + "stream", headers={"Accept": "text/event-stream"}, timeout=30
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            ticks = 0
            for line in r.iter_lines():
                ticks += line == "data: tick"
                if ticks == 3:
                    break
        # The page leaves: httpx closes the connection of an unfinished response.
        assert not closed.exists()
    wait_until(closed.exists, 30, "LlamaBoard's stream to be closed by the proxy", 0.1)
    assert "closing its stream to LlamaBoard" in srv.log_tail()
    with srv.client() as c:  # the server and LlamaBoard work on
        assert c.get(BOARD).status_code == 200


# -- Gradio's assets served by the server itself (llmspawner.singleuser.board_assets) ---------

ASSETS = BOARD + "assets/"


def _gradio_assets() -> Path:
    from llmspawner.singleuser.board_assets import gradio_assets_dir

    found = gradio_assets_dir()
    if found is None:
        pytest.skip("gradio is not installed")
    return found


def _an_asset(min_bytes: int = 4096) -> Path:
    """A content-hashed JavaScript file of the installed Gradio of at least ``min_bytes``."""
    from llmspawner.singleuser.board_assets import HASHED_NAME

    for f in sorted(_gradio_assets().glob("*.js")):
        if HASHED_NAME.search(f.name) and f.stat().st_size >= min_bytes:
            return f
    pytest.skip("no hashed .js file in gradio's assets")


def _served_by_the_server(r: httpx.Response) -> bool:
    """Whether our route answered (the stand-in and Gradio send no such Cache-Control)."""
    from llmspawner.singleuser.board_assets import IMMUTABLE

    return r.headers.get("cache-control") == IMMUTABLE


@pytest.fixture(scope="module")
def assets_server(tmp_path_factory):
    """alice's server with the stand-in LlamaBoard: every request the proxy forwards is
    answered with "fake LlamaBoard", so a response tells which route served it."""
    root = tmp_path_factory.mktemp("assets")
    bin_dir = _fake_cli_dir(root)
    srv = start_server(
        root / "server",
        environ={"FAKE_BOARD_PIDS": str(root / "pids")},
        path=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    try:
        yield srv
    finally:
        _stop(srv.proc)


def test_asset_is_served_by_the_server_with_gradios_bytes(assets_server):
    asset = _an_asset()
    with assets_server.client(**{"Accept-Encoding": "identity"}) as c:
        r = c.get(ASSETS + asset.name)
        assert r.status_code == 200, assets_server.log_tail()
        assert r.content == asset.read_bytes()  # not the stand-in's page: our route
        assert "content-encoding" not in r.headers
        assert r.headers["content-type"].startswith(("application/javascript", "text/javascript"))
        assert r.headers["vary"] == "Accept-Encoding"
        assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
        assert int(r.headers["content-length"]) == asset.stat().st_size
        etag = r.headers["etag"]
        again = c.get(ASSETS + asset.name, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""


def test_asset_is_gzipped_when_accepted(assets_server):
    asset = _an_asset()
    with assets_server.client(**{"Accept-Encoding": "gzip"}) as c:
        with c.stream("GET", ASSETS + asset.name) as r:
            assert r.status_code == 200
            raw = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["vary"] == "Accept-Encoding"
        assert int(r.headers["content-length"]) == len(raw) < asset.stat().st_size
        import gzip

        assert gzip.decompress(raw) == asset.read_bytes()
        plain_etag = c.get(ASSETS + asset.name, headers={"Accept-Encoding": "identity"}).headers[
            "etag"
        ]
        assert r.headers["etag"] != plain_etag  # two representations, two tags
        assert (
            c.get(ASSETS + asset.name, headers={"If-None-Match": r.headers["etag"]}).status_code
            == 304
        )


def test_assets_need_the_users_login(assets_server):
    asset = _an_asset()
    secret = asset.read_bytes()
    url = f"{assets_server.origin}{ASSETS}{asset.name}"
    for headers in ({}, {"Authorization": "token not-alices-token"}):
        r = httpx.get(url, headers=headers, follow_redirects=False, timeout=30)
        assert r.status_code in (302, 403), (headers, r.status_code)
        assert secret not in r.content and not _served_by_the_server(r)
        if r.status_code == 302:
            assert urlsplit(r.headers["location"]).path.endswith("login")


def test_a_file_not_in_gradios_folder_goes_to_the_proxy(assets_server):
    with assets_server.client() as c:
        r = c.get(ASSETS + "Missing-AAAAAAAA.js")  # e.g. LlamaBoard's Gradio is another
    assert r.status_code == 200 and "fake LlamaBoard" in r.text
    assert not _served_by_the_server(r)


@pytest.mark.parametrize(
    "tail", ["../index.html", "..%2Findex.html", "%2e%2e/index.html", "%2E%2E%2Findex.html"]
)
def test_traversal_out_of_the_assets_folder_serves_nothing_of_it(assets_server, tail):
    """Gradio's ``templates/frontend/index.html`` lies next to ``assets/``; the path is sent
    as written (http.client does not normalise it)."""
    import http.client

    outside = (_gradio_assets().parent / "index.html").read_bytes()
    conn = http.client.HTTPConnection("127.0.0.1", assets_server.port, timeout=30)
    try:
        conn.request(
            "GET", ASSETS + tail, headers={"Authorization": f"token {assets_server.token}"}
        )
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    assert body != outside and outside[:200] not in body
    assert r.getheader("cache-control") != "private, max-age=31536000, immutable"


def test_an_asset_load_is_activity_as_through_the_proxy(assets_server):
    """Through jupyter-server-proxy an asset GET counted as activity (gradio_activity:
    only Gradio's polling and timer ticks do not); served by the server, it still does."""
    asset = _an_asset()
    with assets_server.client() as c:
        c.get(PREFIX + "llmspawner/llamaboard-start")
        before = _last_activity(c)
        time.sleep(0.01)  # a later timestamp than ``before``
        r = c.get(ASSETS + asset.name)
        assert _served_by_the_server(r)
        assert _last_activity(c) > before


def test_assets_switched_off_go_to_the_proxy(fake_server):
    start, _ = fake_server
    srv = start(LLMSPAWNER_LLAMABOARD_ASSETS="0")
    asset = _an_asset()
    with srv.client() as c:
        before = _last_activity(c)
        time.sleep(0.01)
        r = c.get(ASSETS + asset.name)
        assert r.status_code == 200 and "fake LlamaBoard" in r.text
        assert not _served_by_the_server(r)
        assert _last_activity(c) > before  # the proxy counts it, as the route does
    assert "LLMSPAWNER_LLAMABOARD_ASSETS is off" in srv.log_tail()


def test_llamaboards_page_assets_come_from_the_server(server, page):
    """Every asset of the real LlamaBoard page under assets/ is answered by our route (the
    rule before jupyter-server-proxy's) with the bytes Gradio would send."""
    folder = _gradio_assets()
    page_url = f"{server.origin}{BOARD}"
    urls = [urljoin(page_url, u) for u in _assets(page.text)]
    mine = [u for u in urls if u.startswith(page_url + "assets/")]
    assert mine, urls
    with server.client() as c:
        for url in mine:
            r = c.get(url)
            assert r.status_code == 200, url
            assert _served_by_the_server(r), (url, dict(r.headers))
            assert r.content == (folder / url[len(page_url + "assets/") :]).read_bytes(), url
