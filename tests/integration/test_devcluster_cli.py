"""``python -m devcluster``: ready line, shutdown leaves no process behind."""

import argparse
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

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
        assert set(ready) == {"url", "kubeconfig", "data_dir", "host_address"}  # N
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


def test_a_restarted_cluster_with_an_appended_log_is_ready_at_its_own_url(tmp_path):
    # issue 13 §5: the stack appends each run's output to logs/cluster.log; the second run
    # must be waited for with its own ready line, not answered with the first run's dead URL
    from llmspawner_dev.processes import start_devcluster

    log_path = tmp_path / "logs" / "cluster.log"
    urls = []
    for _ in range(2):
        proc, ready = start_devcluster(
            tmp_path / "dc", log_path=log_path, env=os.environ, timeout=60
        )
        try:
            with urllib.request.urlopen(ready["url"] + "/version", timeout=5) as r:
                assert json.loads(r.read())["major"] == "1"  # it is this run's, alive
            urls.append(ready["url"])
        finally:
            proc.stop(grace=10)
    assert log_path.read_text().count('"url"') == 2  # both ready lines are in the one log
    assert urls[0] != urls[1]


def test_api_faults_option_and_stack_proxy(tmp_path):
    from devcluster.faults import StackFaults
    from llmspawner_dev.command import add_arguments, api_faults_path

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    workdir = tmp_path / "w"
    assert api_faults_path(parser.parse_args([]).api_faults, workdir) is None
    bare = parser.parse_args(["--api-faults"]).api_faults
    assert api_faults_path(bare, workdir) == workdir / "api-faults.json"
    given = parser.parse_args(["--api-faults", "/x/r.json"]).api_faults
    assert api_faults_path(given, workdir) == Path("/x/r.json")

    proc, ready = start_cluster(tmp_path / "dc")
    faults = StackFaults(
        ready["url"], workdir / "api-faults.json", workdir / "kubeconfig", ready["kubeconfig"]
    )
    try:
        faults.start()
        assert json.loads((workdir / "api-faults.json").read_text()) == []  # created empty
        config = yaml.safe_load((workdir / "kubeconfig").read_text())
        assert config["clusters"][0]["cluster"]["server"] == faults.url
        (workdir / "api-faults.json").write_text(
            json.dumps([{"action": "fail", "path_regex": "^/api/v1/nodes$", "status": 503}])
        )

        def nodes_status():
            try:
                with urllib.request.urlopen(faults.url + "/api/v1/nodes", timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert wait_until(lambda: nodes_status() == 503, 10, "the rule from the file")
        assert nodes_status() == 200  # times: 1
        assert faults.proxy.faults(path_regex="nodes") == 1
    finally:
        faults.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_kubectl_drain_evicts_through_the_eviction_api(tmp_path):
    proc, ready = start_cluster(tmp_path / "dc")
    try:
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "drained"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "nodeSelector": {"kubernetes.io/hostname": "cpu-1"},
                "containers": [{"name": "main", "image": "python", "command": ["sleep", "60"]}],
            },
        }
        kubectl(ready, "create", "-f", "-", stdin=json.dumps(manifest))

        def phase():
            return kubectl(ready, "get", "pod", "drained", "-o", "jsonpath={.status.phase}")

        wait_until(lambda: phase() == "Running", 20, "the pod running", interval=0.2)
        out = kubectl(ready, "drain", "cpu-1", "--force", "--timeout=30s")
        # kubectl found pods/eviction (policy/v1) in discovery and used it
        assert "evicting pod default/drained" in out and "pod/drained evicted" in out
        assert kubectl(ready, "get", "pods", "-o", "name") == ""
        cordoned = kubectl(ready, "get", "node", "cpu-1", "-o", "jsonpath={.spec.unschedulable}")
        assert cordoned == "true"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
