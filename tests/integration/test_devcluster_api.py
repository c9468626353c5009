"""The devcluster's API server, driven by the real kubernetes_asyncio client, kubespawner's
reflectors and kubectl."""

import asyncio
import ipaddress
import json
import subprocess

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from devcluster.testing import wait_for

SLEEPER = {"name": "main", "image": "python", "command": ["sleep", "60"]}


def kubectl(cluster, *args):
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stdout, result.stderr


async def test_create_fills_metadata_and_resource_versions_increase(api, namespace):
    core = client.CoreV1Api(api)
    first = await core.create_namespaced_config_map(namespace, {"metadata": {"name": "a"}})
    second = await core.create_namespaced_config_map(
        namespace, {"metadata": {"generateName": "gen-"}, "data": {"k": "v"}}
    )
    assert first.metadata.namespace == namespace
    assert len(first.metadata.uid) == 36
    assert first.metadata.creation_timestamp is not None
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert second.metadata.name.startswith("gen-")
    assert len(second.metadata.name) == len("gen-") + 5
    listed = await core.list_namespaced_config_map(namespace)
    assert int(listed.metadata.resource_version) >= int(second.metadata.resource_version)
    assert [c.metadata.name for c in listed.items] == sorted(["a", second.metadata.name])


async def test_errors_are_status_objects(api, namespace):
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_pod("nope", namespace)
    assert missing.value.status == 404
    assert json.loads(missing.value.body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "pods"},
        "code": 404,
    }
    await core.create_namespaced_secret(namespace, {"metadata": {"name": "s"}})
    with pytest.raises(ApiException) as dup:
        await core.create_namespaced_secret(namespace, {"metadata": {"name": "s"}})
    assert dup.value.status == 409
    assert json.loads(dup.value.body)["reason"] == "AlreadyExists"
    assert json.loads(dup.value.body)["message"] == 'secrets "s" already exists'
    with pytest.raises(ApiException) as no_ns:
        await core.create_namespaced_secret("no-such-ns", {"metadata": {"name": "s"}})
    assert no_ns.value.status == 404
    assert json.loads(no_ns.value.body)["message"] == 'namespaces "no-such-ns" not found'
    with pytest.raises(ApiException) as deleted:
        await core.delete_namespaced_pod("nope", namespace, grace_period_seconds=0)
    assert deleted.value.status == 404


async def test_label_and_field_selectors_on_list(api, namespace):
    core = client.CoreV1Api(api)
    for name, component in (("u1", "singleuser-server"), ("u2", "singleuser-server"), ("x", "x")):
        await core.create_namespaced_config_map(
            namespace, {"metadata": {"name": name, "labels": {"component": component}}}
        )
    by_label = await core.list_namespaced_config_map(
        namespace, label_selector="component=singleuser-server"
    )
    assert [c.metadata.name for c in by_label.items] == ["u1", "u2"]
    by_set = await core.list_namespaced_config_map(namespace, label_selector="component notin (x)")
    assert [c.metadata.name for c in by_set.items] == ["u1", "u2"]
    by_field = await core.list_namespaced_config_map(namespace, field_selector="metadata.name=u2")
    assert [c.metadata.name for c in by_field.items] == ["u2"]
    with pytest.raises(ApiException) as bad:
        await core.list_namespaced_config_map(namespace, label_selector="a in b")
    assert bad.value.status == 400


async def test_watch_true_with_selector_and_resource_version(api, namespace):
    core = client.CoreV1Api(api)
    await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "before", "labels": {"w": "yes"}}}
    )
    listed = await core.list_namespaced_config_map(namespace, label_selector="w=yes")
    rv = listed.metadata.resource_version
    # Created without a namespace in the body: must still reach the namespaced watcher.
    await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "after", "labels": {"w": "yes"}}}
    )
    await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "other", "labels": {"w": "no"}}}
    )
    await core.patch_namespaced_config_map("after", namespace, {"data": {"k": "v"}})
    await core.patch_namespaced_config_map(
        "after", namespace, {"metadata": {"labels": {"w": "no"}}}
    )
    seen = []
    w = watch.Watch()
    async with w.stream(
        core.list_namespaced_config_map,
        namespace=namespace,
        label_selector="w=yes",
        resource_version=rv,
        timeout_seconds=1,
        _preload_content=False,
    ) as stream:
        async for event in stream:
            meta = event["raw_object"]["metadata"]
            seen.append((event["type"], meta["name"], meta["namespace"]))
            assert int(meta["resourceVersion"]) > int(rv)
            if len(seen) == 3:
                w.stop()
    assert seen == [
        ("ADDED", "after", namespace),
        ("MODIFIED", "after", namespace),
        ("DELETED", "after", namespace),  # no longer matches the selector
    ]


async def test_watch_too_old_resource_version_is_410(cluster, api, namespace):
    """As kube-apiserver: 200, then one ERROR event holding the 410 Status, which
    kubernetes_asyncio's Watch raises as ApiException(410) (kubespawner relists on it)."""
    store = cluster.store
    floor = store._log_floor
    store._log_floor = int(store.resource_version)  # pretend the log was truncated
    try:
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as gone:
            async with watch.Watch() as w:
                async for _ in w.stream(
                    core.list_namespaced_pod, namespace, resource_version="1", timeout_seconds=5
                ):
                    pass
        assert gone.value.status == 410
        assert "Expired: too old resource version" in gone.value.reason
    finally:
        store._log_floor = floor


async def test_kubespawner_reflector_relists_after_an_expired_watch(cluster, api, namespace):
    """The ERROR 410 event (what kube-apiserver sends for an expired resourceVersion) makes
    kubespawner's reflector list again, and it goes on seeing changes."""
    from kubespawner.spawner import PodReflector

    await config.load_kube_config(config_file=str(cluster.kubeconfig_path))
    core = client.CoreV1Api(api)
    labels = {"component": "singleuser-server"}
    pods = PodReflector(namespace=namespace, labels=labels, timeout_seconds=1)
    await pods.start()
    store, floor = cluster.store, cluster.store._log_floor
    try:
        store._log_floor = int(store.resource_version) + 1000  # every resumed watch: expired
        await core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "jupyter-x", "labels": labels},
                "spec": {"containers": [SLEEPER]},
            },
        )
        await wait_for(lambda: f"{namespace}/jupyter-x" in pods.pods, timeout=20)
    finally:
        store._log_floor = floor
        await pods.stop()
        await core.delete_namespaced_pod("jupyter-x", namespace, grace_period_seconds=0)


async def test_kubespawner_reflectors(cluster, api, namespace):
    from kubespawner.spawner import EventReflector, PodReflector

    # What kubespawner.clients.load_config() does with KUBECONFIG set (it reads the variable
    # when kubernetes_asyncio is imported, so it cannot be set from inside this process).
    await config.load_kube_config(config_file=str(cluster.kubeconfig_path))
    core = client.CoreV1Api(api)
    labels = {"component": "singleuser-server"}
    pods = PodReflector(namespace=namespace, labels=labels, timeout_seconds=1)
    events = EventReflector(
        namespace=namespace, fields={"involvedObject.kind": "Pod"}, timeout_seconds=1
    )
    await pods.start()
    await events.start()
    try:
        await core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "jupyter-u", "labels": labels},
                "spec": {"containers": [SLEEPER]},
            },
        )
        key = f"{namespace}/jupyter-u"

        def running():
            pod = pods.pods.get(key)
            return pod if pod and pod["status"].get("phase") == "Running" else None

        pod = await wait_for(running)
        # N: in the cluster's pod subnet (own network namespaces), else a loopback address
        network = cluster.kubelet.network
        pods_net = network.network if network else ipaddress.ip_network("127.0.0.0/8")
        assert ipaddress.ip_address(pod["status"]["podIP"]) in pods_net
        assert pod["status"]["podIP"] not in ("127.0.0.1", cluster.host_address)
        assert [c["ready"] for c in pod["status"]["containerStatuses"]] == [True]
        await wait_for(
            lambda: (
                {"Scheduled", "Pulled", "Created", "Started"}
                <= {e["reason"] for e in events.events}
            )
        )
        # kubespawner sorts events by time, which ties within a second (and a re-list may
        # reorder ties): which events came, not their order among ties, is what is sure.
        reasons = [e["reason"] for e in events.events]
        assert sorted(reasons) == ["Created", "Pulled", "Scheduled", "Started"]
        assert all(e["involvedObject"]["uid"] == pod["metadata"]["uid"] for e in events.events)
        await core.delete_namespaced_pod("jupyter-u", namespace, grace_period_seconds=1)
        await wait_for(lambda: key not in pods.pods)
    finally:
        await pods.stop()
        await events.stop()


async def test_status_subresource_and_patch_types(api, namespace):
    batch = client.BatchV1Api(api)
    job = {
        "metadata": {"name": "j"},
        "spec": {"suspend": True, "template": {"spec": {"containers": [SLEEPER]}}},
    }
    created = await batch.create_namespaced_job(namespace, job)
    assert created.spec.backoff_limit == 6
    assert created.spec.template.metadata.labels["batch.kubernetes.io/job-name"] == "j"
    # A status change on the main resource is ignored; /status changes only the status.
    patched = await batch.patch_namespaced_job(
        "j", namespace, {"metadata": {"labels": {"x": "1"}}, "status": {"active": 9}}
    )
    assert patched.metadata.labels == {"x": "1"}
    assert patched.status.active is None
    status = await batch.patch_namespaced_job_status("j", namespace, {"status": {"failed": 2}})
    assert status.status.failed == 2
    jp = [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]
    api.set_default_header("Content-Type", "application/json-patch+json")
    try:
        patched = await batch.patch_namespaced_job("j", namespace, jp)
    finally:
        api.default_headers.pop("Content-Type")
    assert patched.metadata.annotations == {"a": "b"}
    await batch.delete_namespaced_job("j", namespace, propagation_policy="Background")


async def test_owner_references_cascade_and_orphan(api, namespace):
    core = client.CoreV1Api(api)
    owner = await core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dep", "ownerReferences": [ref]}}
    )
    await core.delete_namespaced_config_map("owner", namespace, propagation_policy="Orphan")
    kept = await core.read_namespaced_config_map("dep", namespace)
    assert kept.metadata.owner_references is None or kept.metadata.owner_references == []
    owner = await core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref["uid"] = owner.metadata.uid
    await core.patch_namespaced_config_map(
        "dep", namespace, {"metadata": {"ownerReferences": [ref]}}
    )
    await core.delete_namespaced_config_map("owner", namespace)
    with pytest.raises(ApiException) as gone:
        await core.read_namespaced_config_map("dep", namespace)
    assert gone.value.status == 404


async def test_priority_class_admission(api, namespace):
    sched = client.SchedulingV1Api(api)
    core = client.CoreV1Api(api)
    await sched.create_priority_class({"metadata": {"name": "high-" + namespace}, "value": 1000})
    pod = await core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "p"},
            "spec": {"priorityClassName": "high-" + namespace, "containers": [SLEEPER]},
        },
    )
    assert pod.spec.priority == 1000
    with pytest.raises(ApiException) as forbidden:
        await core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "q"},
                "spec": {"priorityClassName": "nope", "containers": [SLEEPER]},
            },
        )
    assert forbidden.value.status == 403
    assert json.loads(forbidden.value.body)["message"] == (
        'pods "q" is forbidden: no PriorityClass with name nope was found'
    )
    await sched.delete_priority_class("high-" + namespace)


async def test_kubectl_get_logs_events_apply(cluster, api, namespace, tmp_path):
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "hello"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "python",
                        "command": ["sh", "-c", "echo line1; echo line2 >&2; echo line3"],
                    }
                ],
            },
        },
    )

    async def succeeded():
        pod = await core.read_namespaced_pod("hello", namespace)
        return pod.status.phase == "Succeeded"

    await wait_for(succeeded)
    code, out, err = await asyncio.to_thread(kubectl, cluster, "get", "pods", "-n", namespace)
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert out.splitlines()[1].split()[:4] == ["hello", "0/1", "Completed", "0"]
    code, out, err = await asyncio.to_thread(kubectl, cluster, "logs", "-n", namespace, "hello")
    assert (code, out) == (0, "line1\nline2\nline3\n")
    code, out, _ = await asyncio.to_thread(
        kubectl, cluster, "logs", "-n", namespace, "hello", "--tail=1"
    )
    assert out == "line3\n"
    code, out, _ = await asyncio.to_thread(
        kubectl, cluster, "get", "events", "-n", namespace, "-o", "json"
    )
    reasons = sorted(e["reason"] for e in json.loads(out)["items"])
    assert reasons == ["Created", "Pulled", "Scheduled", "Started"]
    code, out, _ = await asyncio.to_thread(kubectl, cluster, "get", "nodes")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "cpu-1",
        "gpu-ts2",
        "gpu-ts4",
        "gpu-whole",
    ]
    manifest = tmp_path / "pvc.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\n"
        "spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 5Gi}}}\n"
    )
    code, out, err = await asyncio.to_thread(
        kubectl, cluster, "apply", "--validate=false", "-n", namespace, "-f", str(manifest)
    )
    assert (code, out) == (0, "persistentvolumeclaim/data created\n")
    code, out, err = await asyncio.to_thread(
        kubectl, cluster, "apply", "--validate=false", "-n", namespace, "-f", str(manifest)
    )
    assert (code, out) == (0, "persistentvolumeclaim/data unchanged\n")
    pvc = await core.read_namespaced_persistent_volume_claim("data", namespace)
    assert (pvc.status.phase, pvc.status.capacity) == ("Bound", {"storage": "5Gi"})
    code, out, err = await asyncio.to_thread(
        kubectl, cluster, "delete", "pod", "hello", "-n", namespace
    )
    assert (code, out) == (0, 'pod "hello" deleted\n')


async def test_nodes_deserialize_as_client_models(api):
    """kubernetes_asyncio validates required fields (e.g. nodeInfo.bootID) when it builds
    V1Node models; the default layout must pass, with its GPU labels and allocatable."""
    nodes = (await client.CoreV1Api(api).list_node()).items
    by_name = {n.metadata.name: n for n in nodes}
    assert sorted(by_name) == ["cpu-1", "gpu-ts2", "gpu-ts4", "gpu-whole"]
    assert by_name["gpu-ts2"].metadata.labels["nvidia.com/gpu.replicas"] == "2"
    assert by_name["gpu-ts4"].status.allocatable["nvidia.com/gpu"] == "4"
    assert by_name["gpu-whole"].status.allocatable["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in by_name["cpu-1"].status.allocatable
    assert by_name["cpu-1"].status.node_info.operating_system == "linux"
