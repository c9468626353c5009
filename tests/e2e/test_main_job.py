"""The main job, end to end: log in, pick ½ GPU, get LlamaBoard behind the hub, own MLflow
experiment, own folder on the shared PVC, and nothing left behind when the server stops.

Everything is real except the Kubernetes cluster (emulated: pods are local processes, each on
its own loopback IP) and the identity provider (a real OIDC server with test users).
"""

from __future__ import annotations

import os
import socket
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from devcluster.testing import wait_until
from llmspawner_dev.smoke import fetch_llamaboard, gradio_config

from .procs import processes_of

pytestmark = [pytest.mark.e2e, pytest.mark.llamaboard]

#: Third-party hosts that Gradio's own page template loads from (gradio/templates/frontend).
GRADIO_CDN_HOSTS = {"cdnjs.cloudflare.com", "fonts.googleapis.com", "fonts.gstatic.com"}


class _AssetParser(HTMLParser):
    """Collect the URLs of scripts and stylesheets of an HTML page."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.urls.append(attrs["src"])
        elif tag == "link" and attrs.get("href"):
            rel = set((attrs.get("rel") or "").lower().split())
            if rel & {"stylesheet", "modulepreload", "preload"}:
                self.urls.append(attrs["href"])


def asset_urls(html: str) -> list[str]:
    """Return the script and stylesheet URLs of ``html`` as written in it."""
    parser = _AssetParser()
    parser.feed(html)
    return parser.urls


def _environ_of(processes: dict[int, str], program: str) -> dict[str, str]:
    """Return the environment of the one process in ``processes`` whose command has ``program``."""
    (pid,) = [pid for pid, cmd in processes.items() if program in cmd]
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.fixture
def servers_stopped(alice, bob):
    """Stop alice's and bob's servers after the test, passed or not: the session's users
    would otherwise hold their GPU slices for every later test of the session."""
    yield
    for session in (alice, bob):
        session.stop_server()


def test_alice_gets_half_a_gpu_llamaboard_mlflow_and_her_own_folder(
    stack, alice, bob, timeouts, servers_stopped
):
    hub = urlsplit(stack.hub_url)
    prefix = "/user/alice/llamaboard/"

    # -- alice starts "medium" through the REST API -------------------------------------
    assert alice.start_server("medium") in (201, 202)

    def alice_pod():
        with stack.kube() as kube:
            return kube.get_pod("default", "jupyter-alice")

    # A 202 comes after the hub's 10 s slow-spawn wait, which may end before the spawner
    # (MLflow experiment first) has created the pod on a loaded machine.
    pod = wait_until(alice_pod, timeouts.server, "the pod jupyter-alice in the emulated cluster")
    spec = pod["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "notebook"]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.replicas": "2"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in [
        {k: t.get(k) for k in ("key", "operator", "effect")} for t in spec["tolerations"]
    ]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["MLFLOW_TRACKING_URI"] == stack.mlflow_url
    assert env["MLFLOW_EXPERIMENT_NAME"] == "alice-experiments"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/storage/users/alice"]["subPath"] == "users/alice"
    assert mounts["/storage/models"]["subPath"] == "models"
    assert mounts["/storage/models"]["readOnly"] is True

    server = alice.wait_ready(timeout=timeouts.server)
    assert server["ready"] is True
    assert server["url"] == "/user/alice/"

    with stack.kube() as kube:
        pod = kube.get_pod("default", "jupyter-alice")
    pod_ip = pod["status"]["podIP"]
    # N: an address of the pod's own network namespace on the cluster's bridge (devcluster
    # podnet), or, where pods share this machine's (pod_network host), a loopback one
    assert pod_ip not in ("127.0.0.1", stack.pod_host)
    assert pod_ip.startswith("127.") == (stack.pod_host == stack.host)

    # -- LlamaBoard through the hub's public URL ----------------------------------------
    page = fetch_llamaboard(alice, timeout=timeouts.llamaboard)
    assert page.status_code == 200
    assert str(page.url) == f"{stack.hub_url}{prefix}"
    config = gradio_config(page.text)
    assert config is not None, page.text[:500]
    assert config["title"] == "LLaMA Factory (jupyter-alice)"  # HOSTNAME is the pod's name
    assert config["root"] == f"{stack.hub_url}/user/alice/llamaboard"

    # The addresses behind the proxy: the pod's, the user server's and LlamaBoard's own port.
    running = processes_of(pod)  # this stack's own pod, so another stack's alice is not seen
    server_port = urlsplit(
        _environ_of(running, "jupyterhub-singleuser")["JUPYTERHUB_SERVICE_URL"]
    ).port
    board_port = int(_environ_of(running, "llamafactory-cli")["GRADIO_SERVER_PORT"])
    if stack.pod_host != stack.host:  # N: LlamaBoard's 127.0.0.1 is the pod's own loopback
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", board_port), timeout=5).close()
    assert pod_ip not in page.text
    internal = {
        f"{host}:{port}"
        for host in (pod_ip, "127.0.0.1", "localhost")
        for port in (server_port, board_port)
    }
    assert not [a for a in internal if a in page.text]

    urls = [urljoin(str(page.url), u) for u in asset_urls(page.text)]
    own = [u for u in urls if urlsplit(u).hostname not in GRADIO_CDN_HOSTS]
    assert own, f"no script or stylesheet of LlamaBoard's own in the page: {urls}"
    for url in own:
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.port) == (hub.scheme, hub.hostname, hub.port)
        assert parts.path.startswith(prefix), url
        asset = alice.get(parts.path)
        assert asset.status_code == 200, (url, asset.status_code)

    # -- alice's MLflow experiment ------------------------------------------------------
    experiment = stack.mlflow_experiment("alice-experiments")
    assert experiment is not None
    assert experiment["name"] == "alice-experiments"
    assert experiment["lifecycle_stage"] == "active"

    # -- alice's folder on the shared PVC, and bob's --------------------------------------
    put = alice.request(
        "PUT",
        "/user/alice/api/contents/alice-secret.txt",
        json={"type": "file", "format": "text", "content": "alice only\n"},
    )
    assert put.status_code == 201, put.text
    alice_dir = stack.pvc_path() / "users" / "alice"
    assert (alice_dir / "alice-secret.txt").read_text() == "alice only\n"

    assert bob.start_server("cpu") in (201, 202)
    bob.wait_ready(timeout=timeouts.server)
    with stack.kube() as kube:
        bob_pod = kube.get_pod("default", "jupyter-bob")
    bob_mounts = {m["mountPath"]: m for m in bob_pod["spec"]["containers"][0]["volumeMounts"]}
    assert bob_mounts["/storage/users/bob"]["subPath"] == "users/bob"
    assert "/storage/users/alice" not in bob_mounts
    bob_dir = stack.pvc_path() / "users" / "bob"
    assert bob_dir.is_dir()
    listing = bob.get("/user/bob/api/contents/")
    assert listing.status_code == 200
    # bob's root is his own folder: every entry he sees is in users/bob on the PVC (read
    # after the listing: LlamaBoard's first start, at server start, only adds to it), and
    # nothing of alice's.
    seen = {item["name"] for item in listing.json()["content"]}
    assert seen <= {p.name for p in bob_dir.iterdir() if not p.name.startswith(".")}, seen
    assert "alice-secret.txt" not in seen
    missing = bob.get("/user/bob/api/contents/alice-secret.txt")
    # (jupyter_server answers this 404 with a plain text body, whatever its content type)
    assert (missing.status_code, missing.text) == (
        404,
        "file or directory '/alice-secret.txt' does not exist",
    )
    outside = bob.get("/user/bob/api/contents/..%2Falice%2Falice-secret.txt")
    assert (outside.status_code, outside.json()["message"]) == (
        404,
        "../alice/alice-secret.txt is outside root contents directory",
    )
    absolute = bob.get("/user/bob/api/contents/storage/users/alice/alice-secret.txt")
    assert (absolute.status_code, absolute.text) == (
        404,
        "file or directory '/storage/users/alice/alice-secret.txt' does not exist",
    )
    # bob's token does not open alice's server either
    other = bob.get("/user/alice/api/contents/alice-secret.txt")
    assert (other.status_code, other.json()["message"]) == (403, "Forbidden")
    bob.stop_server()

    # -- stopping alice's server deletes the pod and ends its processes -----------------
    before = processes_of(pod)  # the running pod's sandbox and everything below it
    assert any("jupyterhub-singleuser" in c for c in before.values()), before
    assert any("llamafactory" in c or "webui" in c for c in before.values()), before

    alice.stop_server()
    with stack.kube() as kube:
        assert kube.get_pod("default", "jupyter-alice") is None
    # The same pod object: none of its container processes is alive any more.
    assert processes_of(pod) == {}
    assert os.path.isfile(alice_dir / "alice-secret.txt")  # the data stays on the PVC
