"""exec, attach, cp, port-forward and logs on the devcluster (issue 14 §6), driven by kubectl
1.32 (WebSocket ``v5.channel.k8s.io``) and kubernetes_asyncio's ``WsApiClient``
(``v4.channel.k8s.io``) as an outside user would; errors as the real server words them.

Upstream: https://kubernetes.io/docs/reference/using-api/websockets/ ,
https://kubernetes.io/docs/reference/kubectl/generated/kubectl_logs/
"""

import asyncio
import fcntl
import json
import os
import select
import struct
import subprocess
import termios
import time
import urllib.request

import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.stream import WsApiClient

from devcluster.authn import token_kubeconfig
from devcluster.testing import wait_for

NS = "shell"
POD_IP_ENV = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]


def kubectl(kubeconfig, *args, stdin=None):
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "-n", NS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )
    return result.returncode, result.stdout, result.stderr


def run_kubectl(cluster, *args, stdin=None, kubeconfig=None):
    return asyncio.to_thread(kubectl, kubeconfig or cluster.kubeconfig_path, *args, stdin=stdin)


async def running(core, name, restarts=0):
    async def check():
        pod = await core.read_namespaced_pod(name, NS)
        statuses = pod.status.container_statuses or []
        ok = pod.status.phase == "Running" and all(
            s.state.running and s.restart_count >= restarts for s in statuses
        )
        return pod if ok else None

    return await wait_for(check, timeout=30, what=f"pod {name} running")


@pytest.fixture(scope="module")
async def core(api):
    core = client.CoreV1Api(api)
    await core.create_namespace({"metadata": {"name": NS}})
    box = {
        "metadata": {"name": "box"},
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["sh", "-c", "echo ready; exec sleep 600"],
                    "env": [{"name": "WHO", "value": "box-user"}],
                    "workingDir": "/tmp",
                    "volumeMounts": [{"name": "scratch", "mountPath": "/devcluster-scratch"}],
                },
                {
                    "name": "web",
                    "image": "python",
                    "command": ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8888"],
                    "env": POD_IP_ENV,
                },
            ],
        },
    }
    await core.create_namespaced_pod(NS, box)
    await running(core, "box")
    return core


async def test_kubectl_exec_runs_in_the_containers_namespaces_as_its_user(cluster, core):
    """The exec'd command sees the container's mounts (a mountPath that exists only in its
    mount namespace), its PID namespace (PID 1 is the container's init), its hostname, user,
    environment and workingDir; its exit code and stderr come back."""
    script = (
        "echo $WHO; pwd; hostname; id -u; id -g; touch /devcluster-scratch/by-exec; "
        "tr '\\0' ' ' </proc/1/cmdline; echo; echo oops >&2; exit 3"
    )
    code, out, err = await run_kubectl(
        cluster, "exec", "box", "-c", "main", "--", "sh", "-c", script
    )
    # the file is in the pod's emptyDir (its mountPath exists in the container's view only)
    assert not await asyncio.to_thread(os.path.exists, "/devcluster-scratch/by-exec")
    made = list(cluster.data_dir.glob("pods/shell_box_*/volumes/empty-dir/scratch/by-exec"))
    assert len(made) == 1 and made[0].stat().st_uid == 1000
    lines = out.splitlines()
    assert lines[:5] == ["box-user", "/tmp", "box", "1000", "1000"]
    assert "sandbox.py" in lines[5]
    assert code == 3
    assert err == "oops\ncommand terminated with exit code 3\n"


async def test_kubectl_exec_stdin_and_cp_both_ways(cluster, core, tmp_path):
    """``exec -i`` passes stdin and its end (v5 close), which ``kubectl cp`` (tar) needs."""
    code, out, err = await run_kubectl(
        cluster, "exec", "-i", "box", "-c", "main", "--", "wc", "-c", stdin="12345\n"
    )
    assert (code, out.strip()) == (0, "6"), err
    source = tmp_path / "up.txt"
    source.write_text("uploaded by kubectl cp\n")
    code, _, err = await run_kubectl(
        cluster, "cp", str(source), "box:/devcluster-scratch/up.txt", "-c", "main"
    )
    assert code == 0, err
    code, out, err = await run_kubectl(
        cluster, "exec", "box", "-c", "main", "--", "cat", "/devcluster-scratch/up.txt"
    )
    assert out == "uploaded by kubectl cp\n", err
    back = tmp_path / "down.txt"
    code, _, err = await run_kubectl(
        cluster, "cp", "box:/devcluster-scratch/up.txt", str(back), "-c", "main"
    )
    assert code == 0, err
    assert back.read_text() == "uploaded by kubectl cp\n"


def _with_terminal(argv, keys: bytes, rows=31, cols=101, timeout=30.0, ready=(b"$", b"#")):
    """Run ``argv`` on a pseudo-terminal of ``rows``x``cols``; type ``keys`` once what is
    shown ends with one of ``ready`` (the shell's prompt); returns (exit code, all shown)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    shown, typed, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([master], [], [], 0.2)
            if readable:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: kubectl exited
                    break
                shown += data
            if not typed and shown.rstrip().endswith(ready):
                os.write(master, keys)
                typed = True
            if proc.poll() is not None and not readable:
                break
        return proc.wait(timeout=10), shown.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


async def test_kubectl_exec_it_gets_a_terminal_of_the_clients_size(cluster, core):
    argv = ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), "-n", NS]
    argv += ["exec", "-it", "box", "-c", "main", "--", "sh"]
    code, shown = await asyncio.to_thread(_with_terminal, argv, b"stty size; tty; exit 7\n")
    assert "31 101" in shown
    assert "/dev/pts/" in shown
    assert code == 7


async def test_exec_errors_are_worded_as_the_real_servers(cluster, core):
    code, _, err = await run_kubectl(cluster, "exec", "box", "-c", "nope", "--", "true")
    assert err == "Error from server (BadRequest): container nope is not valid for pod box\n"
    code, _, err = await run_kubectl(cluster, "exec", "box", "-c", "main", "--", "no-such-command")
    assert code == 1
    assert err.startswith("error: Internal error occurred: error executing command in container")
    assert 'exec: "no-such-command": executable file not found in $PATH' in err
    pending = {
        "metadata": {"name": "nowhere"},
        "spec": {
            "nodeSelector": {"no-such": "node"},
            "containers": [{"name": "main", "image": "python", "command": ["true"]}],
        },
    }
    await core.create_namespaced_pod(NS, pending)
    code, _, err = await run_kubectl(cluster, "exec", "nowhere", "--", "true")
    assert err == "Error from server (BadRequest): pod nowhere does not have a host assigned\n"
    await core.delete_namespaced_pod("nowhere", NS, grace_period_seconds=0)


async def test_python_client_exec_and_port_forward(cluster, api, core):
    """kubernetes_asyncio's WsApiClient: exec output and the error channel's exit code
    (v4.channel.k8s.io), and port-forward to the pod's HTTP server."""
    ws_api = WsApiClient(configuration=api.configuration)
    try:
        wcore = client.CoreV1Api(ws_api)
        out = await wcore.connect_get_namespaced_pod_exec(
            "box",
            NS,
            container="web",
            command=["sh", "-c", "echo out; echo err >&2"],
            stderr=True,
            stdout=True,
        )
        assert out == "out\nerr\n"
        conn = await wcore.connect_get_namespaced_pod_exec(
            "box",
            NS,
            container="web",
            command=["sh", "-c", "exit 5"],
            stderr=True,
            stdout=True,
            _preload_content=False,
        )
        async with conn as ws:
            errors = [m.data[1:] async for m in ws if m.data[:1] == b"\x03"]
        assert WsApiClient.parse_error_data(errors[0]) == 5
        assert json.loads(errors[0])["reason"] == "NonZeroExitCode"

        conn = await wcore.connect_get_namespaced_pod_portforward(
            "box", NS, ports="8888", _preload_content=False
        )
        async with conn as ws:
            await ws.send_bytes(b"\x00GET / HTTP/1.0\r\n\r\n")
            frames = []
            async for msg in ws:
                frames.append(msg.data)
                if b"HTTP/1.0 200" in b"".join(f[1:] for f in frames if f[:1] == b"\x00"):
                    break
        assert frames[:2] == [b"\x00" + struct.pack("<H", 8888), b"\x01" + struct.pack("<H", 8888)]
    finally:
        await ws_api.close()


async def test_logs_previous_timestamps_tail_since_limit(cluster, core):
    """A container that failed once: ``--previous`` is the first instance's log; the others
    as ``kubectl logs`` documents them."""
    crash = {
        "metadata": {"name": "twice"},
        "spec": {
            "restartPolicy": "OnFailure",
            "volumes": [{"name": "state", "emptyDir": {}}],
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": [
                        "sh",
                        "-c",
                        (
                            "if [ -e /state/once ]; then echo second; echo more; exec sleep 600;"
                            " fi; touch /state/once; echo first; exit 1"
                        ),
                    ],
                    "volumeMounts": [{"name": "state", "mountPath": "/state"}],
                }
            ],
        },
    }
    await core.create_namespaced_pod(NS, crash)
    await running(core, "twice", restarts=1)

    async def logs(*args):
        code, out, err = await run_kubectl(cluster, "logs", "twice", *args)
        assert code == 0, err
        return out

    async def both_lines():
        return (await logs()).endswith("more\n")

    await wait_for(both_lines, timeout=10, what="the second instance's log")
    assert await logs("--previous") == "first\n"
    assert await logs() == "second\nmore\n"
    assert await logs("--tail=1") == "more\n"
    assert await logs("--limit-bytes=4") == "seco"
    stamped = (await logs("--timestamps")).splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["second", "more"]
    stamp = stamped[0].split(" ", 1)[0]
    assert len(stamp) == 30 and stamp.endswith("Z")  # RFC3339Nano, 9 fraction digits
    assert await logs("--since-time=2099-01-01T00:00:00Z") == ""
    assert await logs(f"--since-time={stamp}") == "second\nmore\n"
    assert await logs("--since=1h") == "second\nmore\n"
    code, _, err = await run_kubectl(cluster, "logs", "box", "-c", "main", "--previous")
    assert err == (
        'Error from server (BadRequest): previous terminated container "main" in pod "box" '
        "not found\n"
    )
    with pytest.raises(ApiException) as refused:
        await core.read_namespaced_pod_log("twice", NS, tail_lines=-1)
    assert refused.value.status == 422
    assert json.loads(refused.value.body)["message"] == (
        'PodLogOptions "twice" is invalid: tailLines: Invalid value: -1: must be greater than '
        "or equal to 0"
    )
    await core.delete_namespaced_pod("twice", NS, grace_period_seconds=0)


async def test_logs_follow_ends_with_the_container_and_attach_passes_stdin(cluster, core):
    short = {
        "metadata": {"name": "short"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "stdin": True,
                    "stdinOnce": True,
                    "command": ["sh", "-c", "echo waiting; read line; echo got $line"],
                }
            ],
        },
    }
    await core.create_namespaced_pod(NS, short)
    await running(core, "short")
    follow = asyncio.create_task(run_kubectl(cluster, "logs", "-f", "short"))
    code, out, err = await run_kubectl(cluster, "attach", "-i", "short", stdin="hello\n")
    assert "got hello" in out, err
    code, out, err = await asyncio.wait_for(follow, 30)
    assert (code, out) == (0, "waiting\ngot hello\n"), err
    await core.delete_namespaced_pod("short", NS, grace_period_seconds=0)


async def test_exec_needs_rbac_on_the_subresource(cluster, api, core, tmp_path):
    """A ServiceAccount that may get pods but not pods/exec is refused with the 403 kubectl
    shows (its WebSocket GET refused, its SPDY POST too: ``create``); with ``create`` on
    pods/exec, as most Roles grant it, it may exec."""
    rbac = client.RbacAuthorizationV1Api(api)
    await core.create_namespaced_service_account(NS, {"metadata": {"name": "dev"}})
    role = {
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }
    await rbac.create_namespaced_role(NS, role)
    binding = {
        "metadata": {"name": "dev-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": NS}],
    }
    await rbac.create_namespaced_role_binding(NS, binding)
    code, token, err = await run_kubectl(cluster, "create", "token", "dev")
    assert code == 0, err
    doc = token_kubeconfig(cluster.tls_url, token.strip(), NS, cluster.data_dir / "ca.crt")
    path = tmp_path / "dev.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = await run_kubectl(
        cluster, "exec", "box", "-c", "main", "--", "true", kubeconfig=path
    )
    assert code == 1
    assert (
        'pods "box" is forbidden: User "system:serviceaccount:shell:dev" cannot create '
        'resource "pods/exec" in API group "" in the namespace "shell"'
    ) in err
    role["rules"].append({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]})
    await rbac.replace_namespaced_role("pod-reader", NS, role)
    code, out, err = await run_kubectl(
        cluster, "exec", "box", "-c", "main", "--", "echo", "in", kubeconfig=path
    )
    assert (code, out) == (0, "in\n"), err


async def test_kubectl_port_forward_reaches_the_pods_port(cluster, core):
    """kubectl port-forward (SPDY/3.1 tunnelled in a WebSocket) to the pod's HTTP server,
    two connections in a row; a port nothing listens on answers on the error stream."""
    argv = ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), "-n", NS]
    proc = await asyncio.create_subprocess_exec(
        *argv, "port-forward", "pod/box", ":8888", ":8999",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        local = {}
        while len(local) < 2:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, (await proc.stderr.read()).decode()
            if line.startswith("Forwarding from 127.0.0.1:"):
                here, there = line.split("127.0.0.1:", 1)[1].split(" -> ")
                local[int(there)] = int(here)

        def get(port):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as r:
                return r.status, r.read()

        for _ in range(2):
            status, body = await asyncio.to_thread(get, local[8888])
            assert status == 200 and b"Directory listing" in body
        with pytest.raises(OSError):
            await asyncio.to_thread(get, local[8999])
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert "error forwarding port 8999 to pod box" in line
        assert "connection refused" in line.lower()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def test_kubectl_run_interactive_attaches_and_removes_the_pod(cluster, core):
    """``kubectl run -i --rm``: a pod with ``stdin: true``, attached, then deleted."""
    code, out, err = await run_kubectl(
        cluster, "run", "-i", "--rm", "--restart=Never", "once", "--image=python", "--",
        "sh", "-c", "read x; echo got $x", stdin="hello\n",
    )  # fmt: skip
    assert (code, out) == (0, 'got hello\npod "once" deleted\n'), err


async def test_kubectl_attach_it_to_a_tty_container(cluster, core):
    """A ``stdin: true, tty: true`` container (as ``kubectl run -it`` makes) has a terminal:
    ``kubectl attach -it`` types into it and sizes it."""
    term = {
        "metadata": {"name": "term"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "python", "stdin": True, "tty": True, "command": ["sh"]}
            ],
        },
    }
    await core.create_namespaced_pod(NS, term)
    await running(core, "term")
    argv = ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), "-n", NS]
    argv += ["attach", "-it", "term"]
    keys = b"stty size; echo typed-$((6*7)); exit 4\n"
    code, shown = await asyncio.to_thread(_with_terminal, argv, keys, 24, 77, ready=(b"enter.",))
    assert "24 77" in shown
    assert "typed-42" in shown
    pod = await wait_for(lambda: phase_is(core, "term", "Failed"), timeout=15, what="term exited 4")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 4
    await core.delete_namespaced_pod("term", NS, grace_period_seconds=0)


async def phase_is(core, name, phase):
    pod = await core.read_namespaced_pod(name, NS)
    return pod if pod.status.phase == phase else None
