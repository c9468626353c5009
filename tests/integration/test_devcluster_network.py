"""One network namespace per pod on the devcluster (issue 14 §4, `devcluster.podnet`): pods
cannot reach each other's loopback-bound ports, reach each other and the host by IP, the
host reaches them by pod IP, the containers of one pod share its loopback, kubectl
exec/port-forward work inside it, and nothing (bridge, veth) outlives the cluster, even a
SIGKILLed one.

The Kubernetes network model: https://kubernetes.io/docs/concepts/services-networking/ .
Isolated pods need a root kubelet with CAP_NET_ADMIN and ``ip`` (as the dev stack and CI
have); elsewhere those tests are skipped, the host-mode and pure ones still run.
"""

import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from kubernetes_asyncio import client, config

from devcluster import podnet
from devcluster.kubelet import KubeletConfig
from devcluster.testing import fast_cluster, wait_for, wait_until

UNAVAILABLE = podnet.unavailable()
needs_netns = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"pods cannot get network namespaces here: {UNAVAILABLE}"
)
NS = "default"
PORT = 7077
POD_IP_ENV = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
#: Answers "<name>@<address>" on 127.0.0.1:PORT and on $POD_IP:PORT.
SERVE = f"""
import os, socket, threading
def serve(host, name):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, {PORT}))
    s.listen()
    while True:
        c, _ = s.accept()
        c.sendall(f"{{name}}@{{host}}".encode())
        c.close()
threading.Thread(target=serve, args=("127.0.0.1", os.environ["WHO"]), daemon=True).start()
print("serving", flush=True)
serve(os.environ["POD_IP"], os.environ["WHO"])
"""
#: Connects to each "host:port" argument; prints ``result=`` and JSON {target: answer or error}
#: (a bare JSON log would be parsed by kubernetes_asyncio's deserializer).
PROBE = """
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as c:
            out[target] = c.recv(100).decode()
    except OSError as exc:
        out[target] = type(exc).__name__
print("result=" + json.dumps(out), flush=True)
"""


def links() -> list[dict]:
    return json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True).stdout or "[]")


def of_tag(tag: str) -> set[str]:
    """The bridge and veths of the pod network whose tag is ``tag`` (other clusters of
    other test runs may have theirs on this machine)."""
    names = {podnet.BRIDGE_PREFIX + tag}
    return {
        link["ifname"]
        for link in links()
        if link["ifname"] in names or link["ifname"].startswith(podnet.VETH_PREFIX + tag)
    }


def server_pod(name: str, **spec) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "python",
                    "command": ["python", "-c", SERVE],
                    "env": [*POD_IP_ENV, {"name": "WHO", "value": name}],
                    "readinessProbe": {"tcpSocket": {"port": PORT}},
                }
            ],
            **spec,
        },
    }


def probe_container(name: str, *targets: str) -> dict:
    return {"name": name, "image": "python", "command": ["python", "-c", PROBE, *targets]}


async def ready_pod(core, name):
    async def check():
        pod = await core.read_namespaced_pod(name, NS)
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        return pod if ready else None

    return await wait_for(check, timeout=30, what=f"pod {name} ready")


async def probe_results(core, name, container=None) -> dict:
    """The JSON line a finished PROBE container printed."""

    async def done():
        pod = await core.read_namespaced_pod(name, NS)
        return pod.status.phase in ("Succeeded", "Failed")

    await wait_for(done, timeout=30, what=f"pod {name} finished")
    text = await core.read_namespaced_pod_log(name, NS, container=container)
    return json.loads(text.strip().splitlines()[-1].removeprefix("result="))


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    if UNAVAILABLE is not None:
        pytest.skip(f"pods cannot get network namespaces here: {UNAVAILABLE}")
    kubelet_config = KubeletConfig(
        interval=0.2, probe_period=0.1, retry_interval=0.2, shutdown_grace=1.0,
        pod_network="isolated",
    )  # fmt: skip
    async with fast_cluster(tmp_path_factory.mktemp("devcluster-net"), kubelet=kubelet_config) as c:
        yield c


@pytest.fixture(scope="module")
async def core(cluster):
    api = await config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    async with api:
        yield client.CoreV1Api(api)


@pytest.fixture(scope="module")
async def bob(core):
    await core.create_namespaced_pod(NS, server_pod("bob"))
    return await ready_pod(core, "bob")


@needs_netns
async def test_a_pod_cannot_reach_another_pods_loopback_but_reaches_its_ip(cluster, core, bob):
    """alice's pod: bob's 127.0.0.1-bound port is her own loopback (refused), bob's pod IP
    answers; the host reaches bob by pod IP, never at its 127.0.0.1."""
    bob_ip = bob.status.pod_ip
    assert ipaddress.ip_address(bob_ip) in cluster.kubelet.network.network
    assert not ipaddress.ip_address(bob_ip).is_loopback
    alice = {
        "metadata": {"name": "alice"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [probe_container("probe", f"127.0.0.1:{PORT}", f"{bob_ip}:{PORT}")],
        },
    }
    await core.create_namespaced_pod(NS, alice)
    results = await probe_results(core, "alice")
    assert results == {
        f"127.0.0.1:{PORT}": "ConnectionRefusedError",
        f"{bob_ip}:{PORT}": f"bob@{bob_ip}",
    }

    def from_host(host):
        with socket.create_connection((host, PORT), timeout=5) as c:
            return c.recv(100).decode()

    assert await asyncio.to_thread(from_host, bob_ip) == f"bob@{bob_ip}"
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(from_host, "127.0.0.1")


@needs_netns
async def test_a_pod_reaches_a_host_service_at_host_address_and_the_api_server(cluster, core):
    """A service on this machine at ``cluster.host_address`` (the pod's ``status.hostIP``,
    from the downward API) answers a pod; 127.0.0.1 in the pod is its own;
    KUBERNETES_SERVICE_HOST is the host address (the in-cluster API answers there)."""
    assert cluster.host_address == cluster.kubelet.network.gateway
    server = socket.socket()
    server.bind((cluster.host_address, 0))
    server.listen()
    port = server.getsockname()[1]

    def answer():
        conn, _ = server.accept()
        conn.sendall(b"host")
        conn.close()

    answering = asyncio.create_task(asyncio.to_thread(answer))
    script = (
        'import os, ssl, urllib.request; h, p = os.environ["KUBERNETES_SERVICE_HOST"], '
        'os.environ["KUBERNETES_SERVICE_PORT"]; '
        "ctx = ssl.create_default_context(cafile="
        '"/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"); '
        'print(urllib.request.urlopen(f"https://{h}:{p}/healthz", context=ctx).read().decode())'
    )
    pod = {
        "metadata": {"name": "caller"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "api", "image": "python", "command": ["python", "-c", script]},
                {
                    **probe_container("probe", f"$(HOST_IP):{port}", f"127.0.0.1:{port}"),
                    "env": [
                        {
                            "name": "HOST_IP",
                            "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}},
                        }
                    ],
                },
            ],
        },
    }
    try:
        await core.create_namespaced_pod(NS, pod)
        results = await probe_results(core, "caller", container="probe")
        assert results == {
            f"{cluster.host_address}:{port}": "host",
            f"127.0.0.1:{port}": "ConnectionRefusedError",
        }
        assert (await core.read_namespaced_pod_log("caller", NS, container="api")).strip() == "ok"
        await answering
    finally:
        server.close()


@needs_netns
async def test_containers_of_one_pod_and_its_init_container_share_its_network(core):
    """The init container and the second container see the first one's 127.0.0.1 server
    (one namespace per pod, not per container); all have the same eth0 address."""
    show = (
        "import json; lines = open('/proc/net/fib_trie').read().splitlines(); print('result=' + json.dumps("
        "sorted({lines[i - 1].split()[-1] for i, l in enumerate(lines) if '/32 host' in l})))"
    )
    pod = server_pod("pair", restartPolicy="Never")
    pod["spec"]["initContainers"] = [
        {"name": "init", "image": "python", "command": ["python", "-c", show]}
    ]
    pod["spec"]["containers"].append(probe_container("probe", f"127.0.0.1:{PORT}"))
    # The probe must wait for the server: retry until it answers
    pod["spec"]["containers"][1]["command"] = [
        "sh", "-c",
        (
            f"for i in $(seq 100); do python -c \"import socket; socket.create_connection("
            f"('127.0.0.1', {PORT}), timeout=1)\" 2>/dev/null && break; sleep 0.1; done; "
            f"exec python -c '{PROBE}' 127.0.0.1:{PORT}"
        ),
    ]  # fmt: skip
    await core.create_namespaced_pod(NS, pod)
    results = await probe_results_running(core, "pair", "probe")
    assert results == {f"127.0.0.1:{PORT}": "pair@127.0.0.1"}
    # Only lo's 127.0.0.1 and eth0's address (the pod IP) are local in the pod's namespace
    pod_ip = (await core.read_namespaced_pod("pair", NS)).status.pod_ip
    text = await core.read_namespaced_pod_log("pair", NS, container="init")
    local = json.loads(text.strip().removeprefix("result="))
    assert local == sorted(["127.0.0.1", pod_ip])
    await core.delete_namespaced_pod("pair", NS, grace_period_seconds=0)


async def probe_results_running(core, name, container):
    """The JSON line of a PROBE container of a pod that keeps running (its other container)."""

    async def printed():
        try:
            text = await core.read_namespaced_pod_log(name, NS, container=container)
        except client.ApiException:
            return None
        lines = text.strip().splitlines()
        done = lines and lines[-1].startswith("result=")
        return json.loads(lines[-1].removeprefix("result=")) if done else None

    return await wait_for(printed, timeout=30, what=f"{name}/{container} printed")


def kubectl(cluster, *args):
    argv = ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), "-n", NS, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@needs_netns
async def test_kubectl_exec_and_port_forward_work_inside_the_pods_namespace(cluster, bob):
    """kubectl exec runs in the pod's namespace (its loopback server answers there); kubectl
    port-forward reaches a port bound to the pod's 127.0.0.1 (as the kubelet connects to
    localhost inside the pod)."""
    check = (
        "import socket; c = socket.create_connection(('127.0.0.1', 7077), timeout=5); "
        "print(c.recv(100).decode())"
    )
    done = await asyncio.to_thread(kubectl, cluster, "exec", "bob", "--", "python", "-c", check)
    assert (done.returncode, done.stdout.strip()) == (0, "bob@127.0.0.1"), done.stderr
    argv = ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), "-n", NS]
    proc = await asyncio.create_subprocess_exec(
        *argv, "port-forward", "pod/bob", f":{PORT}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("Forwarding from 127.0.0.1:"), (await proc.stderr.read()).decode()
        local = int(line.split("127.0.0.1:", 1)[1].split(" -> ")[0])

        def get():
            with socket.create_connection(("127.0.0.1", local), timeout=10) as c:
                return c.recv(100).decode()

        assert await asyncio.to_thread(get) == "bob@127.0.0.1"
    finally:
        proc.terminate()
        await proc.wait()


@needs_netns
async def test_nothing_is_left_after_a_stop(tmp_path):
    """A cluster's bridge and its pods' veths are gone after it stops."""
    kubelet_config = KubeletConfig(interval=0.2, shutdown_grace=0.5, pod_network="isolated")
    async with fast_cluster(tmp_path / "a", kubelet=kubelet_config) as c:
        api = await config.new_client_from_config(config_file=str(c.kubeconfig_path))
        async with api:
            await client.CoreV1Api(api).create_namespaced_pod(NS, server_pod("left"))
            await ready_pod(client.CoreV1Api(api), "left")
        tag = c.kubelet.network.tag
        mine = of_tag(tag)
        assert podnet.BRIDGE_PREFIX + tag in mine
        assert any(n.startswith(podnet.VETH_PREFIX) for n in mine)
    assert not of_tag(tag)


@needs_netns
def test_a_sigkilled_clusters_bridge_is_removed_at_the_next_start(tmp_path):
    """``python -m devcluster`` with a running pod SIGKILLed: the pod's namespace and veth go
    with it (the kernel frees them with the pod's last process, which dies with the kubelet),
    its bridge stays until the next start removes it (its owner is gone)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.Popen(
        [sys.executable, "-m", "devcluster", "--data-dir", str(tmp_path / "b")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )  # fmt: skip
    try:
        info = json.loads(killed.stdout.readline())
        assert info["host_address"] != "127.0.0.1"
        owner = podnet.owner_alias(killed.pid)
        (bridge,) = [link["ifname"] for link in links() if link.get("ifalias") == owner]
        tag = bridge.removeprefix(podnet.BRIDGE_PREFIX)
        kubectl = ["kubectl", "--kubeconfig", info["kubeconfig"], "-n", NS]
        subprocess.run(
            [*kubectl, "run", "sleeper", "--image=python", "--command", "--", "sleep", "600"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        wait_until(lambda: len(of_tag(tag)) == 2, timeout=30, what="the pod's veth", interval=0.1)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    wait_until(lambda: of_tag(tag) == {bridge}, timeout=30, what="the veth gone", interval=0.1)
    assert bridge in podnet.reap_stale()  # what the next start does first
    assert not of_tag(bridge.removeprefix(podnet.BRIDGE_PREFIX))


@needs_netns
async def test_host_mode_shares_this_machines_network(tmp_path):
    """``pod_network="host"``: loopback pod IPs in this machine's namespace, as before."""
    kubelet_config = KubeletConfig(interval=0.2, shutdown_grace=0.5, pod_network="host")
    async with fast_cluster(tmp_path, kubelet=kubelet_config) as c:
        assert (c.host_address, c.kubelet.network) == ("127.0.0.1", None)
        api = await config.new_client_from_config(config_file=str(c.kubeconfig_path))
        async with api:
            core = client.CoreV1Api(api)
            await core.create_namespaced_pod(NS, server_pod("shared"))
            pod = await ready_pod(core, "shared")
            assert ipaddress.ip_address(pod.status.pod_ip).is_loopback

            def get():
                with socket.create_connection((pod.status.pod_ip, PORT), timeout=5) as conn:
                    return conn.recv(100).decode()

            assert await asyncio.to_thread(get) == f"shared@{pod.status.pod_ip}"


async def test_a_bad_mode_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(ValueError, match="KubeletConfig.pod_network: 'bridge' is not one of"):
        async with fast_cluster(tmp_path, kubelet=KubeletConfig(pod_network="bridge")):
            pass


async def test_isolated_where_it_cannot_be_says_why(tmp_path, monkeypatch):
    """``isolated`` on a machine that cannot: PodNetworkError with the reason; ``auto``
    falls back to host mode (one warning)."""
    monkeypatch.setattr(podnet, "unavailable", lambda: "the kubelet runs as uid 1000, not root")
    with pytest.raises(podnet.PodNetworkError, match="isolated: the kubelet runs as uid 1000"):
        async with fast_cluster(tmp_path / "a", kubelet=KubeletConfig(pod_network="isolated")):
            pass
    async with fast_cluster(tmp_path / "b", kubelet=KubeletConfig(pod_network="auto")) as c:
        assert (c.host_address, c.kubelet.network) == ("127.0.0.1", None)


def test_pick_subnet_avoids_the_machines_networks():
    used = [ipaddress.ip_network("10.0.0.0/9"), ipaddress.ip_network("10.200.0.0/16")]
    for seed in range(50):
        net = podnet.pick_subnet(used, podnet.random.Random(seed))
        assert net.prefixlen == podnet.PREFIX_LEN
        assert net.subnet_of(ipaddress.ip_network("10.0.0.0/8"))
        assert not any(net.overlaps(u) for u in used)
    with pytest.raises(podnet.PodNetworkError, match="no free"):
        podnet.pick_subnet([ipaddress.ip_network("10.0.0.0/8")])


def test_owner_alias_names_a_live_process_only():
    assert podnet.owner_alive(podnet.owner_alias())
    child = subprocess.Popen(["true"])
    child.wait()
    assert not podnet.owner_alive(podnet.owner_alias(child.pid))
    assert not podnet.owner_alive("something else")
    assert not podnet.owner_alive(f"devcluster pid={os.getpid()} start=1")
