"""``python -m devcluster``: ready line, shutdown leaves no process behind."""

import json
import os
import signal
import subprocess
import sys

import pytest

from devcluster.__main__ import main
from devcluster.testing import wait_until


def start_cluster(data_dir, *extra):
    proc = subprocess.Popen(
        [sys.executable, "-m", "devcluster", "--data-dir", str(data_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def kubectl(ready, *args, stdin=None):
    return subprocess.run(
        ["kubectl", "--kubeconfig", ready["kubeconfig"], *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def pids_with(marker):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def start_sleeper(ready, seconds):
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper"},
        "spec": {
            "containers": [
                {"name": "main", "image": "python", "command": ["sh", "-c", f"sleep {seconds}"]}
            ]
        },
    }
    kubectl(ready, "create", "--validate=false", "-f", "-", stdin=json.dumps(manifest))
    marker = f"sleep\0{seconds}".encode()
    return wait_until(lambda: pids_with(marker), 10, "the sleeper's process", interval=0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ready_line_and_clean_shutdown(tmp_path, sig):
    proc, ready = start_cluster(tmp_path / "dc", "--image", "python=" + sys.prefix)
    try:
        assert set(ready) == {"url", "kubeconfig", "data_dir"}
        assert ready["url"].startswith("http://127.0.0.1:")
        assert ready["data_dir"] == str(tmp_path / "dc")
        assert ready["kubeconfig"] == str(tmp_path / "dc" / "kubeconfig")
        nodes = kubectl(ready, "get", "nodes", "-o", "name")
        assert nodes == "node/cpu-1\nnode/gpu-ts2\nnode/gpu-ts4\nnode/gpu-whole\n"
        pids = start_sleeper(ready, f"200.{os.getpid()}{sig}")
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert [p for p in pids if os.path.exists(f"/proc/{p}")] == []
        assert pids_with(str(tmp_path).encode()) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigkill_of_the_cluster_kills_its_pods(tmp_path):
    proc, ready = start_cluster(tmp_path / "dc")
    pids = start_sleeper(ready, f"201.{os.getpid()}")
    proc.kill()
    proc.wait(timeout=10)
    wait_until(
        lambda: not [p for p in pids if os.path.exists(f"/proc/{p}")],
        10,
        "the pods' processes end",
        interval=0.05,
    )
    assert pids_with(str(tmp_path).encode()) == []


def test_bad_node_layout_exits_2(tmp_path, capsys):
    layout = tmp_path / "nodes.yaml"
    layout.write_text("- name: n\n  gpus: 2\n")
    assert main(["--data-dir", str(tmp_path / "dc"), "--nodes", str(layout)]) == 2
    assert capsys.readouterr().err == (
        "devcluster: node n: unknown field(s) ['gpus']; allowed: name, labels, taints, "
        "allocatable\n"
    )
