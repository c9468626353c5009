"""The devcluster's scheduler and kubelet: pods as local processes, loopback IPs, volumes,
scheduling failures, deletion."""

import asyncio
import ipaddress
import os
import time
import urllib.request

import pytest
from kubernetes_asyncio import client, config

from devcluster.testing import fast_cluster, wait_for

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
POD_IP_ENV = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
HTTP_SERVER = (
    "import http.server, os, socket\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = (os.environ['WHO'] + ' ' + socket.gethostname()).encode()\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
    "http.server.HTTPServer((os.environ['POD_IP'], 8888), H).serve_forever()\n"
)


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    async with fast_cluster(tmp_path_factory.mktemp("devcluster-pods")) as c:
        yield c


@pytest.fixture(scope="module")
async def core(cluster):
    api_client = await config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    async with api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
async def namespace(core, request):
    name = request.node.name.replace("_", "-").lower()[:50]
    await core.create_namespace({"metadata": {"name": name}})
    yield name
    await core.delete_namespace(name)


def pod_manifest(name, command, restart="Never", **spec):
    container = {"name": "main", "image": "python", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": restart, "containers": [container], **spec},
    }


async def phase_is(core, namespace, name, *phases):
    async def check():
        pod = await core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return await wait_for(check, timeout=15)


async def log_of(core, namespace, name):
    return await core.read_namespaced_pod_log(name, namespace)


def pids_with(marker):
    """Host PIDs whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def alive(pids):
    """The PIDs of ``pids`` that still exist."""
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


def http_get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


async def test_two_http_servers_on_the_same_port_each_on_its_pod_ip(cluster, core, namespace):
    for who in ("alice", "bob"):
        manifest = pod_manifest(
            f"web-{who}",
            ["python", "-c", HTTP_SERVER],
            restart="Always",
            container={
                "env": POD_IP_ENV + [{"name": "WHO", "value": who}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8888}, "periodSeconds": 1},
            },
        )
        await core.create_namespaced_pod(namespace, manifest)

    async def ready(name):
        pod = await core.read_namespaced_pod(name, namespace)
        statuses = pod.status.container_statuses or []
        return pod if statuses and statuses[0].ready else None

    alice = await wait_for(lambda: ready("web-alice"), timeout=15)
    bob = await wait_for(lambda: ready("web-bob"), timeout=15)
    assert alice.status.phase == "Running"
    assert alice.status.pod_ip != bob.status.pod_ip
    # N: the cluster's pod subnet (own network namespaces), else a loopback address of its own
    network = cluster.kubelet.network
    pods = network.network if network else ipaddress.ip_network("127.0.0.0/8")
    assert ipaddress.ip_address(alice.status.pod_ip) in pods
    assert alice.status.pod_ip not in ("127.0.0.1", cluster.host_address)
    assert [ip.ip for ip in alice.status.pod_ips] == [alice.status.pod_ip]
    conditions = {c.type: c.status for c in alice.status.conditions}
    assert conditions == {
        "PodScheduled": "True",
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert alice.status.container_statuses[0].started is True
    assert alice.status.container_statuses[0].state.running is not None
    for pod, who in ((alice, "alice"), (bob, "bob")):
        status, body = await asyncio.to_thread(http_get, f"http://{pod.status.pod_ip}:8888/")
        assert (status, body) == (200, f"{who} web-{who}")


async def test_pvc_subpath_is_the_only_thing_visible_at_mount_path(cluster, core, namespace):
    await core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "home"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    pvc_dir = cluster.data_dir / "pvc" / namespace / "home"
    (pvc_dir / "users" / "bob").mkdir(parents=True)
    (pvc_dir / "users" / "bob" / "secret.txt").write_text("bob's")
    volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "home"}}]
    script = (
        "echo mine > /storage/alice.txt; ls -A /storage; "
        "ls -A /storage/.. | grep -c users; "
        f"ls {pvc_dir}/users 2>/dev/null | wc -l; "
        f"cat {pvc_dir}/users/bob/secret.txt 2>&1 || echo hidden; pwd"
    )
    manifest = pod_manifest(
        "alice",
        ["sh", "-c", script],
        volumes=volumes,
        container={
            "workingDir": "/storage",
            "volumeMounts": [{"name": "home", "mountPath": "/storage", "subPath": "users/alice"}],
        },
    )
    await core.create_namespaced_pod(namespace, manifest)
    pod = await phase_is(core, namespace, "alice", "Succeeded", "Failed")
    log = await log_of(core, namespace, "alice")
    assert pod.status.phase == "Succeeded", log
    assert log.splitlines() == [
        "alice.txt",  # only alice's folder at /storage
        "0",  # the PVC's other folders are not above it
        "0",  # nor reachable by their host path
        f"cat: {pvc_dir}/users/bob/secret.txt: No such file or directory",
        "hidden",
        "/storage",
    ]
    assert (pvc_dir / "users" / "alice" / "alice.txt").read_text() == "mine\n"


async def test_read_only_mount_refuses_writes(cluster, core, namespace):
    await core.create_namespaced_persistent_volume_claim(
        namespace, {"metadata": {"name": "models"}, "spec": {"resources": {"requests": {}}}}
    )
    (cluster.data_dir / "pvc" / namespace / "models").mkdir(parents=True, exist_ok=True)
    (cluster.data_dir / "pvc" / namespace / "models" / "m.bin").write_text("weights")
    manifest = pod_manifest(
        "reader",
        ["sh", "-c", "cat /storage/m.bin; echo; touch /storage/new"],
        volumes=[{"name": "m", "persistentVolumeClaim": {"claimName": "models"}}],
        container={"volumeMounts": [{"name": "m", "mountPath": "/storage", "readOnly": True}]},
    )
    await core.create_namespaced_pod(namespace, manifest)
    pod = await phase_is(core, namespace, "reader", "Succeeded", "Failed")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (1, "Error")
    assert await log_of(core, namespace, "reader") == (
        "weights\ntouch: cannot touch '/storage/new': Read-only file system\n"
    )
    assert not (cluster.data_dir / "pvc" / namespace / "models" / "new").exists()


async def test_configmap_secret_and_empty_dir_volumes(core, namespace):
    await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"train.yaml": "stage: sft\n"}}
    )
    await core.create_namespaced_secret(
        namespace, {"metadata": {"name": "tok"}, "stringData": {"token": "abc"}}
    )
    manifest = pod_manifest(
        "vols",
        ["sh", "-c", "cat /storage/cfg/train.yaml /storage/tok/token; echo; ls -A /storage/tmp"],
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "tok", "secret": {"secretName": "tok"}},
            {"name": "tmp", "emptyDir": {}},
        ],
        container={
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/storage/cfg"},
                {"name": "tok", "mountPath": "/storage/tok"},
                {"name": "tmp", "mountPath": "/storage/tmp"},
            ]
        },
    )
    await core.create_namespaced_pod(namespace, manifest)
    pod = await phase_is(core, namespace, "vols", "Succeeded", "Failed")
    log = await log_of(core, namespace, "vols")
    assert (pod.status.phase, log) == ("Succeeded", "stage: sft\nabc\n")


async def test_gpu_pod_waits_with_failed_scheduling_then_starts(core, namespace):
    def gpu_pod(name):
        return pod_manifest(
            name,
            ["sleep", "60"],
            restart="Always",
            nodeSelector={"nvidia.com/gpu.replicas": "2"},
            tolerations=[GPU_TOLERATION],
            terminationGracePeriodSeconds=1,
            container={"resources": {"limits": {"nvidia.com/gpu": "1"}}},
        )

    for name in ("half-1", "half-2", "half-3"):
        await core.create_namespaced_pod(namespace, gpu_pod(name))
    for name in ("half-1", "half-2"):
        pod = await phase_is(core, namespace, name, "Running")
        assert pod.spec.node_name == "gpu-ts2"
    message = (
        "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, "
        "3 node(s) didn't match Pod's node affinity/selector. "
        "preemption: 0/4 nodes are available: 1 No preemption victims found for incoming pod, "
        "3 Preemption is not helpful for scheduling."
    )

    async def failed_scheduling():
        events = await core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=half-3,reason=FailedScheduling"
        )
        return events.items

    [event] = await wait_for(failed_scheduling)
    assert (event.type, event.message, event.source.component, event.reporting_component) == (
        "Warning",
        message,
        "default-scheduler",
        "default-scheduler",
    )
    assert (event.involved_object.kind, event.involved_object.name) == ("Pod", "half-3")
    waiting = await core.read_namespaced_pod("half-3", namespace)
    assert waiting.status.phase == "Pending"
    assert waiting.spec.node_name is None
    [cond] = waiting.status.conditions
    assert (cond.type, cond.status, cond.reason, cond.message) == (
        "PodScheduled",
        "False",
        "Unschedulable",
        message,
    )
    await core.delete_namespaced_pod("half-1", namespace)
    pod = await phase_is(core, namespace, "half-3", "Running")
    assert pod.spec.node_name == "gpu-ts2"


async def test_delete_kills_the_process_group_after_the_grace_period(core, namespace):
    seconds = f"300.{os.getpid()}"
    marker = f"sleep\0{seconds}"  # as in /proc/<pid>/cmdline
    script = f"trap '' TERM; sleep {seconds} & sleep {seconds} & echo started; wait"
    manifest = pod_manifest("stubborn", ["sh", "-c", script], terminationGracePeriodSeconds=1)
    await core.create_namespaced_pod(namespace, manifest)
    await phase_is(core, namespace, "stubborn", "Running")
    pids = await wait_for(lambda: len(pids_with(marker)) == 2 and pids_with(marker))
    started = time.monotonic()
    deleted = await core.delete_namespaced_pod("stubborn", namespace)
    assert deleted.metadata.deletion_timestamp is not None
    assert deleted.metadata.deletion_grace_period_seconds == 1

    async def gone():
        pods = await core.list_namespaced_pod(namespace, field_selector="metadata.name=stubborn")
        return not pods.items

    await wait_for(gone)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 10, elapsed  # SIGTERM ignored: SIGKILL after the 1 s grace
    assert alive(pids) == []


async def test_restart_policies_exit_codes_and_start_errors(core, namespace):
    await core.create_namespaced_pod(namespace, pod_manifest("fails", ["sh", "-c", "exit 3"]))
    await core.create_namespaced_pod(
        namespace, pod_manifest("flaky", ["sh", "-c", "exit 1"], restart="OnFailure")
    )
    await core.create_namespaced_pod(namespace, pod_manifest("typo", ["no-such-command"]))
    fails = await phase_is(core, namespace, "fails", "Failed")
    terminated = fails.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    typo = await phase_is(core, namespace, "typo", "Failed")
    terminated = typo.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason, terminated.message) == (
        128,
        "StartError",
        'exec: "no-such-command": executable file not found in $PATH',
    )

    async def restarted():
        pod = await core.read_namespaced_pod("flaky", namespace)
        statuses = pod.status.container_statuses or []
        return pod if statuses and statuses[0].restart_count >= 2 else None

    flaky = await wait_for(restarted)
    assert flaky.status.phase == "Running"
    assert flaky.status.container_statuses[0].last_state.terminated.exit_code == 1


async def test_log_follow_streams_until_exit(core, namespace):
    script = "for i in 1 2 3; do echo tick $i; sleep 0.2; done"
    await core.create_namespaced_pod(namespace, pod_manifest("ticker", ["sh", "-c", script]))
    await phase_is(core, namespace, "ticker", "Running", "Succeeded")
    response = await core.read_namespaced_pod_log(
        "ticker", namespace, follow=True, _preload_content=False
    )
    body = await response.read()
    assert body == b"tick 1\ntick 2\ntick 3\n"
    assert await core.read_namespaced_pod_log("ticker", namespace, tail_lines=2) == (
        "tick 2\ntick 3\n"
    )
