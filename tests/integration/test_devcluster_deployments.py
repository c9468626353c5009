"""apps/v1 Deployments on the devcluster (issue 14 §3), driven by kubectl and
kubernetes_asyncio as a user would: pods made from the template and replaced, rollouts,
status, the real server's refusals, and ``kubectl apply -k deploy/manifests``.

Upstream behaviour: https://kubernetes.io/docs/concepts/workloads/controllers/deployment/
"""

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from devcluster.deployments import HASH_LABEL, resolve_int_or_percent, template_hash
from devcluster.testing import fast_cluster, wait_for

REPO = Path(__file__).resolve().parents[2]


def kubectl(cluster, *args, stdin: str | None = None):
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )
    return result.returncode, result.stdout, result.stderr


def deployment(name: str, replicas: int = 2, strategy: str = "RollingUpdate") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": strategy},
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "main", "image": "python", "command": ["sleep", "60"]}]
                },
            },
        },
    }


async def pods_of(core, namespace: str, name: str, running_only: bool = False) -> list:
    pods = await core.list_namespaced_pod(namespace, label_selector=f"app={name}")
    return [
        p
        for p in pods.items
        if p.metadata.deletion_timestamp is None
        and (not running_only or p.status.phase == "Running")
    ]


def test_template_hash_and_percentages_are_pure():
    template = deployment("x")["spec"]["template"]
    assert template_hash(template) == template_hash(json.loads(json.dumps(template)))
    assert set(template_hash(template)) <= set("bcdfghjklmnpqrstvwxz2456789")
    changed = {**template, "metadata": {"labels": {"app": "x"}, "annotations": {"a": "b"}}}
    assert template_hash(changed) != template_hash(template)
    # intstr.GetScaledValueFromIntOrPercent: surge rounds up, unavailable down
    assert resolve_int_or_percent("25%", 2, True) == 1
    assert resolve_int_or_percent("25%", 2, False) == 0
    assert resolve_int_or_percent(3, 2, False) == 3


async def test_pods_from_template_replaced_and_rolled(cluster, api, namespace):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    created = await apps.create_namespaced_deployment(namespace, deployment("web"))
    # the real server's defaults
    assert created.spec.revision_history_limit == 10
    assert created.spec.progress_deadline_seconds == 600
    assert created.spec.strategy.rolling_update.max_surge == "25%"
    assert created.metadata.generation == 1

    pods = await wait_for(
        lambda: _exactly(pods_of(core, namespace, "web", True), 2), 20, "two running pods"
    )
    first = pods[0]
    current = first.metadata.labels[HASH_LABEL]
    assert first.metadata.name.startswith(f"web-{current}-")
    ref = first.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.controller) == ("ReplicaSet", f"web-{current}", True)

    code, out, err = await asyncio.to_thread(
        kubectl, cluster, "rollout", "status", "-n", namespace, "deployment/web", "--timeout=30s"
    )
    assert code == 0, err
    assert 'deployment "web" successfully rolled out' in out
    status = (await apps.read_namespaced_deployment("web", namespace)).status
    assert (status.replicas, status.ready_replicas, status.available_replicas) == (2, 2, 2)
    assert status.updated_replicas == 2
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions["Available"] == ("True", "MinimumReplicasAvailable")
    assert conditions["Progressing"] == ("True", "NewReplicaSetAvailable")

    # a deleted pod is replaced
    await core.delete_namespaced_pod(first.metadata.name, namespace, grace_period_seconds=0)

    async def replaced():
        names = {p.metadata.name for p in await pods_of(core, namespace, "web", True)}
        return len(names) == 2 and first.metadata.name not in names

    await wait_for(replaced, 20, "a replacement pod")

    # a template change (kubectl rollout restart) replaces every pod
    code, _, err = await asyncio.to_thread(
        kubectl, cluster, "rollout", "restart", "-n", namespace, "deployment/web"
    )
    assert code == 0, err
    code, out, err = await asyncio.to_thread(
        kubectl, cluster, "rollout", "status", "-n", namespace, "deployment/web", "--timeout=40s"
    )
    assert code == 0, err
    after = await pods_of(core, namespace, "web")
    hashes = {p.metadata.labels[HASH_LABEL] for p in after}
    assert len(after) == 2 and len(hashes) == 1 and current not in hashes, after
    dep = await apps.read_namespaced_deployment("web", namespace)
    assert dep.metadata.generation == 2
    assert dep.status.observed_generation == 2

    # deleting the Deployment deletes its pods (garbage collection through ownerReferences)
    await apps.delete_namespaced_deployment("web", namespace)

    async def gone():
        return not await pods_of(core, namespace, "web")

    await wait_for(gone, 20, "the pods of a deleted Deployment gone")


async def _exactly(pods_coro, n):
    pods = await pods_coro
    return pods if len(pods) == n else None


async def test_recreate_stops_old_pods_before_new_ones(cluster, api, namespace):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    await apps.create_namespaced_deployment(namespace, deployment("one", 1, "Recreate"))
    old = (await wait_for(lambda: _exactly(pods_of(core, namespace, "one", True), 1), 20))[0]
    since = (await core.list_namespaced_pod(namespace)).metadata.resource_version
    await apps.patch_namespaced_deployment(
        "one",
        namespace,
        {"spec": {"template": {"metadata": {"annotations": {"restart": "1"}}}}},
    )

    async def rolled():
        pods = await pods_of(core, namespace, "one", True)
        return pods if pods and pods[0].metadata.name != old.metadata.name else None

    # The old pod's stop and the new pod's start took over 30 s once on a loaded 2-core
    # machine (a clean-clone CI run); a few seconds otherwise.
    new = (await wait_for(rolled, 90, "the new pod"))[0]
    assert new.metadata.labels[HASH_LABEL] != old.metadata.labels[HASH_LABEL]
    # Recreate: the new pod is created only once no old pod runs (upstream's oldPodsRunning:
    # a pod in a terminal phase, its processes gone, or removed; never two running at once)
    seen = []
    stream = watch.Watch().stream(
        core.list_namespaced_pod, namespace, resource_version=since, timeout_seconds=2
    )
    async for event in stream:
        pod = event["object"]
        stopped = event["type"] == "DELETED" or pod.status.phase in ("Succeeded", "Failed")
        seen.append((pod.metadata.name, "stopped" if stopped else event["type"]))
    assert seen.index((old.metadata.name, "stopped")) < seen.index((new.metadata.name, "ADDED"))
    assert ("ReplicaSet", f"one-{new.metadata.labels[HASH_LABEL]}") == (
        new.metadata.owner_references[0].kind,
        new.metadata.owner_references[0].name,
    )


async def test_refusals_are_worded_as_the_real_server(api, namespace):
    apps = client.AppsV1Api(api)
    bad = deployment("bad")
    bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(ApiException) as e:
        await apps.create_namespaced_deployment(namespace, bad)
    assert e.value.status == 422
    body = json.loads(e.value.body)
    assert body["reason"] == "Invalid"
    assert body["message"] == (
        'Deployment.apps "bad" is invalid: spec.template.metadata.labels: Invalid value: '
        'map[string]string{"app":"bad"}: `selector` does not match template `labels`'
    )
    await apps.create_namespaced_deployment(namespace, deployment("fixed", 0))
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_deployment(
            "fixed",
            namespace,
            {
                "spec": {
                    "selector": {"matchLabels": {"app": "other"}},
                    "template": {"metadata": {"labels": {"app": "other"}}},
                }
            },
        )
    assert e.value.status == 422
    assert json.loads(e.value.body)["message"] == (
        'Deployment.apps "fixed" is invalid: spec.selector: Invalid value: '
        'v1.LabelSelector{MatchLabels:map[string]string{"app":"other"}, '
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
    )
    unchanged = await apps.patch_namespaced_deployment("fixed", namespace, {"spec": {}})
    assert unchanged.metadata.generation == 1
    scaled = await apps.patch_namespaced_deployment("fixed", namespace, {"spec": {"replicas": 0}})
    assert scaled.metadata.generation == 1  # the same spec: no new generation
    scaled = await apps.patch_namespaced_deployment("fixed", namespace, {"spec": {"replicas": 1}})
    assert scaled.metadata.generation == 2
    never = deployment("never")
    never["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    with pytest.raises(ApiException) as e:
        await apps.create_namespaced_deployment(namespace, never)
    assert json.loads(e.value.body)["message"] == (
        'Deployment.apps "never" is invalid: spec.template.spec.restartPolicy: Unsupported '
        'value: "Never": supported values: "Always"'
    )


@pytest.fixture(scope="module")
async def small_cluster(tmp_path_factory):
    """A cluster whose one node fits no MLflow pod (250m CPU asked): the kit's pod is made and
    stays Pending, so no MLflow server starts on a shared machine."""
    nodes = [{"name": "small", "allocatable": {"cpu": "100m", "memory": "1Gi", "pods": "10"}}]
    async with fast_cluster(tmp_path_factory.mktemp("devcluster-kit"), nodes=nodes) as c:
        yield c


async def test_apply_k_deploy_manifests(small_cluster):
    """``kubectl apply -k deploy/manifests`` with validation on creates all 12 objects, the
    MLflow Deployment's pod included (its namespaces first, as docs/deploy.md says)."""
    cluster = small_cluster
    api = await config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    async with api:
        await _apply_kit(cluster, api)


async def _apply_kit(cluster, api):
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    for ns in ("llm", "gpu-operator"):
        await core.create_namespace({"metadata": {"name": ns}})
    flags = ["--validate=strict"]  # kubectl validates with the server's OpenAPI v3 document
    code, out, err = await asyncio.to_thread(
        kubectl, cluster, "apply", *flags, "-k", str(REPO / "deploy/manifests")
    )
    assert code == 0, err
    assert len(out.strip().splitlines()) == 12, out
    for kind in ("role", "rolebinding", "clusterrole", "clusterrolebinding", "deployment"):
        assert f"{kind}.rbac.authorization.k8s.io/" in out or f"{kind}.apps/" in out, kind
    dep = await apps.read_namespaced_deployment("mlflow", "llm")
    assert dep.spec.strategy.type == "Recreate"
    pods = await wait_for(lambda: pods_of_labels(core, "llm", "app.kubernetes.io/name=mlflow"))
    assert pods[0].spec.automount_service_account_token is False
    assert not any(v.projected for v in pods[0].spec.volumes or [])
    # applying again changes nothing
    code, out, err = await asyncio.to_thread(
        kubectl, cluster, "apply", *flags, "-k", str(REPO / "deploy/manifests")
    )
    assert code == 0, err
    assert out.count("unchanged") == 12, out
    assert pods[0].status.phase == "Pending"


async def pods_of_labels(core, namespace, selector):
    return (await core.list_namespaced_pod(namespace, label_selector=selector)).items


# -- ReplicaSets (Deployment -> ReplicaSet -> pods) ----------------------------------------------


def _run(cluster, *args):
    return asyncio.to_thread(kubectl, cluster, *args)


async def _rollout_done(cluster, namespace, name):
    code, out, err = await _run(
        cluster, "rollout", "status", "-n", namespace, f"deployment/{name}", "--timeout=40s"
    )
    assert code == 0, err
    assert f'deployment "{name}" successfully rolled out' in out
    return out


async def test_replicasets_history_undo_scale_and_garbage_collection(cluster, api, namespace):
    """One ReplicaSet per template named ``<deployment>-<hash>``, its revision shown by
    ``kubectl rollout history``; ``rollout undo`` brings revision 1's template back (that set
    becomes revision 3); ``kubectl scale`` uses the scale subresource; deleting the Deployment
    deletes its sets and their pods."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    await apps.create_namespaced_deployment(namespace, deployment("hist"))
    await _rollout_done(cluster, namespace, "hist")
    (rs1,) = (await apps.list_namespaced_replica_set(namespace)).items
    pod_hash = rs1.metadata.labels[HASH_LABEL]
    assert rs1.metadata.name == f"hist-{pod_hash}"
    assert rs1.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert rs1.spec.selector.match_labels == {"app": "hist", HASH_LABEL: pod_hash}
    ref = rs1.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.controller) == ("Deployment", "hist", True)
    assert (rs1.status.replicas, rs1.status.ready_replicas, rs1.status.available_replicas) == (
        2,
        2,
        2,
    )
    pods = await pods_of(core, namespace, "hist")
    assert {p.metadata.owner_references[0].name for p in pods} == {rs1.metadata.name}
    assert all(p.metadata.name.startswith(f"{rs1.metadata.name}-") for p in pods)

    # revision 2: a new template, with a change cause
    code, _, err = await _run(cluster, "set", "env", "-n", namespace, "deployment/hist", "X=2")
    assert code == 0, err
    code, _, err = await _run(
        cluster,
        "annotate",
        "-n",
        namespace,
        "deployment/hist",
        "kubernetes.io/change-cause=set X=2",
    )
    assert code == 0, err
    await _rollout_done(cluster, namespace, "hist")
    code, out, err = await _run(cluster, "rollout", "history", "-n", namespace, "deployment/hist")
    assert code == 0, err
    rows = [line.split(None, 1) for line in out.strip().splitlines()[2:]]
    assert rows == [["1", "<none>"], ["2", "set X=2"]], out
    dep = await apps.read_namespaced_deployment("hist", namespace)
    assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    assert dep.spec.template.spec.containers[0].env[0].name == "X"

    # undo: revision 1's template again, the same ReplicaSet now revision 3
    code, out, err = await _run(cluster, "rollout", "undo", "-n", namespace, "deployment/hist")
    assert code == 0, err
    assert "rolled back" in out
    await _rollout_done(cluster, namespace, "hist")
    dep = await apps.read_namespaced_deployment("hist", namespace)
    assert not dep.spec.template.spec.containers[0].env
    assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    rs1 = await apps.read_namespaced_replica_set(rs1.metadata.name, namespace)
    assert rs1.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    assert rs1.metadata.annotations["deployment.kubernetes.io/revision-history"] == "1"
    assert (rs1.spec.replicas, dep.status.updated_replicas) == (2, 2)
    code, out, err = await _run(cluster, "rollout", "history", "-n", namespace, "deployment/hist")
    assert [line.split()[0] for line in out.strip().splitlines()[2:]] == ["2", "3"], out

    # kubectl scale: the scale subresource (autoscaling/v1 Scale)
    code, out, err = await _run(
        cluster, "scale", "-n", namespace, "deployment/hist", "--replicas=3"
    )
    assert code == 0, err
    assert out.strip() == "deployment.apps/hist scaled"
    await wait_for(lambda: _exactly(pods_of(core, namespace, "hist", True), 3), 20, "3 pods")
    scale = await apps.read_namespaced_deployment_scale("hist", namespace)
    assert (scale.spec.replicas, scale.status.selector) == (3, "app=hist")
    assert (await apps.read_namespaced_replica_set(rs1.metadata.name, namespace)).spec.replicas == 3
    await _rollout_done(cluster, namespace, "hist")

    # garbage collection: the sets, then their pods
    await apps.delete_namespaced_deployment("hist", namespace)

    async def gone():
        sets = (await apps.list_namespaced_replica_set(namespace)).items
        return not sets and not await pods_of(core, namespace, "hist")

    await wait_for(gone, 20, "the sets and pods of a deleted Deployment gone")


async def test_a_replicaset_keeps_its_pods_and_answers_scale(cluster, api, namespace):
    """A ReplicaSet made directly: ``replicas`` pods named ``<set>-xxxxx``, a deleted one
    replaced, scaled down through the scale subresource, refusals worded as the real server."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    body = deployment("solo")
    del body["spec"]["strategy"]
    body["kind"] = "ReplicaSet"
    created = await apps.create_namespaced_replica_set(namespace, body)
    assert (created.metadata.generation, created.spec.replicas) == (1, 2)
    pods = await wait_for(lambda: _exactly(pods_of(core, namespace, "solo", True), 2), 20)
    assert all(p.metadata.name.startswith("solo-") for p in pods)
    assert {p.metadata.owner_references[0].kind for p in pods} == {"ReplicaSet"}
    victim = pods[0].metadata.name
    await core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)

    async def replaced():
        names = {p.metadata.name for p in await pods_of(core, namespace, "solo", True)}
        return len(names) == 2 and victim not in names

    await wait_for(replaced, 20, "a replacement pod")
    scale = await apps.patch_namespaced_replica_set_scale(
        "solo", namespace, {"spec": {"replicas": 1}}
    )
    assert (scale.kind, scale.spec.replicas, scale.status.selector) == ("Scale", 1, "app=solo")
    await wait_for(lambda: _exactly(pods_of(core, namespace, "solo"), 1), 20, "one pod left")
    rs = await apps.read_namespaced_replica_set("solo", namespace)
    assert rs.metadata.generation == 2
    await wait_for(
        lambda: _observed(apps, namespace), 20, "the set's status of generation 2 with 1 pod"
    )

    stale = {"metadata": {"name": "solo", "resourceVersion": "1"}, "spec": {"replicas": 3}}
    with pytest.raises(ApiException) as e:
        await apps.replace_namespaced_replica_set_scale("solo", namespace, stale)
    assert (e.value.status, json.loads(e.value.body)["reason"]) == (409, "Conflict")
    current = await apps.read_namespaced_replica_set_scale("solo", namespace)
    current.spec.replicas = 1
    replaced = await apps.replace_namespaced_replica_set_scale("solo", namespace, current)
    assert replaced.spec.replicas == 1
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_replica_set_scale("solo", namespace, {"spec": {"replicas": -1}})
    assert e.value.status == 422
    assert json.loads(e.value.body)["message"] == (
        'Scale.autoscaling "solo" is invalid: spec.replicas: Invalid value: -1: must be greater '
        "than or equal to 0"
    )
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_replica_set(
            "solo", namespace, {"spec": {"selector": {"matchLabels": {"app": "other"}}}}
        )
    assert json.loads(e.value.body)["message"] == (
        'ReplicaSet.apps "solo" is invalid: spec.selector: Invalid value: '
        'v1.LabelSelector{MatchLabels:map[string]string{"app":"other"}, '
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
    )
    code, out, err = await _run(cluster, "get", "rs", "-n", namespace)
    assert code == 0, err
    assert out.split() == ["NAME", "DESIRED", "CURRENT", "READY", "AGE", "solo", "1", "1", "1"] + [
        out.split()[-1]
    ]


async def _observed(apps, namespace):
    rs = await apps.read_namespaced_replica_set("solo", namespace)
    return rs.status.observed_generation == 2 and rs.status.replicas == 1


def _pod(name, phase="Running", ready=True, node="n1", created="2026-01-01T00:00:00Z", **meta):
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if ready:
        conditions[0]["lastTransitionTime"] = created
    return {
        "metadata": {"name": name, "uid": name, "creationTimestamp": created, **meta},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "conditions": conditions},
    }


def test_scale_down_deletes_pods_in_the_real_controllers_order():
    """``ActivePodsWithRanks``: unscheduled, pending, not ready, lower deletion cost, doubled
    up on a node, ready more recently, newer."""
    import datetime

    from devcluster.replicasets import DELETION_COST, deletion_order

    now = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    old, new = "2026-01-01T00:00:00Z", "2026-01-01T23:59:00Z"
    pods = [
        _pod("ready-old", created=old, node="n2"),
        _pod("ready-new", created=new, node="n3"),
        _pod("costly", created=new, node="n4", annotations={DELETION_COST: "10"}),
        _pod("cheap", created=old, node="n5", annotations={DELETION_COST: "-5"}),
        _pod("unready", ready=False, node="n6"),
        _pod("pending", phase="Pending", ready=False, node="n7"),
        _pod("unscheduled", phase="Pending", ready=False, node=""),
    ]
    order = [p["metadata"]["name"] for p in deletion_order(pods, pods, now)]
    assert order == [
        "unscheduled",
        "pending",
        "unready",
        "cheap",
        "ready-new",
        "ready-old",
        "costly",
    ]
    # two pods on one node go before a lone one
    doubled = [_pod("a", node="n1"), _pod("b", node="n1"), _pod("lone", node="n2")]
    assert deletion_order(doubled, doubled, now)[-1]["metadata"]["name"] == "lone"


def test_rolling_update_keeps_within_max_surge_and_max_unavailable():
    """The controllers stepped by hand on a store (no kubelet: pods marked Ready here): a
    rollout of 4 replicas with maxSurge 1 and maxUnavailable 0 never has more than 5 pods nor
    fewer than 4 available, ends with 4 new pods, and the status says so."""
    from devcluster.deployments import DeploymentController, admit_deployment
    from devcluster.replicasets import ReplicaSetController, admit_replicaset
    from devcluster.resources import DEPLOYMENTS, NAMESPACES, PODS, REPLICASETS
    from devcluster.store import Store

    store = Store()
    store.admit.extend((admit_deployment, admit_replicaset))
    store.create(NAMESPACES, {"metadata": {"name": "default"}})
    body = deployment("roll", 4)
    body["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    store.create(DEPLOYMENTS, body, "default")
    dc, rc = DeploymentController(store), ReplicaSetController(store)

    def ready_all():
        for pod in list(store.iter(PODS)):
            if not pod["metadata"].get("deletionTimestamp") and not (pod.get("status") or {}):
                store.mutate(PODS, "default", pod["metadata"]["name"], _make_ready)

    def step():
        dc.reconcile()
        rc.reconcile()
        ready_all()
        rc.reconcile()
        dc.reconcile()
        pods = [p for p in store.iter(PODS) if not p["metadata"].get("deletionTimestamp")]
        ready = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        return len(pods), len(ready)

    for _ in range(3):
        step()
    assert step() == (4, 4)
    store.patch(DEPLOYMENTS, "default", "roll", _new_template)
    seen = [step() for _ in range(12)]
    assert max(total for total, _ in seen) == 5, seen
    assert min(ready for _, ready in seen) >= 4, seen
    live = [p for p in store.iter(PODS) if not p["metadata"].get("deletionTimestamp")]
    new_hash = template_hash(store.peek(DEPLOYMENTS, "default", "roll")["spec"]["template"])
    assert [p["metadata"]["labels"][HASH_LABEL] for p in live] == [new_hash] * 4
    status = store.peek(DEPLOYMENTS, "default", "roll")["status"]
    assert (status["replicas"], status["updatedReplicas"], status["availableReplicas"]) == (4, 4, 4)
    reasons = {c["type"]: c["reason"] for c in status["conditions"]}
    assert reasons == {
        "Available": "MinimumReplicasAvailable",
        "Progressing": "NewReplicaSetAvailable",
    }
    assert [c["type"] for c in status["conditions"]] == ["Available", "Progressing"]
    assert len(list(store.iter(REPLICASETS))) == 2  # the old one kept, scaled to 0 (history)


def _make_ready(pod: dict) -> None:
    pod["spec"]["nodeName"] = "n1"
    pod["status"] = {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ],
    }


def _new_template(obj: dict) -> dict:
    obj["spec"]["template"]["metadata"]["annotations"] = {"v": "2"}
    return obj


def test_deleting_a_deployment_orphan_keeps_its_sets_background_removes_them():
    """``propagationPolicy`` Orphan: the ReplicaSet stays, without its owner reference (its
    pods keep theirs); Background (the default): the set goes, then its pods. Orphans are
    adopted back by a Deployment (or set) made again whose selector matches them."""
    from devcluster.deployments import DeploymentController, admit_deployment
    from devcluster.replicasets import ReplicaSetController, admit_replicaset
    from devcluster.resources import DEPLOYMENTS, NAMESPACES, PODS, REPLICASETS
    from devcluster.store import Store

    store = Store()
    store.admit.extend((admit_deployment, admit_replicaset))
    store.create(NAMESPACES, {"metadata": {"name": "default"}})
    dc, rc = DeploymentController(store), ReplicaSetController(store)
    for name in ("kept", "gone"):
        store.create(DEPLOYMENTS, deployment(name, 1), "default")
    dc.reconcile()
    rc.reconcile()
    assert len(list(store.iter(PODS))) == 2
    store.delete(DEPLOYMENTS, "default", "kept", propagation="Orphan")
    store.delete(DEPLOYMENTS, "default", "gone")
    (rs,) = list(store.iter(REPLICASETS))
    assert rs["metadata"]["name"].startswith("kept-")
    assert rs["metadata"]["ownerReferences"] == []
    (pod,) = list(store.iter(PODS))  # unscheduled pods go at once (no kubelet to wait for)
    assert pod["metadata"]["ownerReferences"][0]["name"] == rs["metadata"]["name"]

    # made again, the Deployment adopts its orphaned set (no second set, no second pod)
    again = store.create(DEPLOYMENTS, deployment("kept", 1), "default")
    dc.reconcile()
    rc.reconcile()
    (rs,) = list(store.iter(REPLICASETS))
    assert [r["uid"] for r in rs["metadata"]["ownerReferences"]] == [again["metadata"]["uid"]]
    assert [p["metadata"]["name"] for p in store.iter(PODS)] == [pod["metadata"]["name"]]
    # and a set made again adopts the pods an orphaning deletion left
    store.delete(REPLICASETS, "default", rs["metadata"]["name"], propagation="Orphan")
    dc.reconcile()
    rc.reconcile()
    (rs2,) = list(store.iter(REPLICASETS))
    assert rs2["metadata"]["uid"] != rs["metadata"]["uid"]
    (pod,) = list(store.iter(PODS))
    assert [r["uid"] for r in pod["metadata"]["ownerReferences"]] == [rs2["metadata"]["uid"]]


def test_scaling_mid_rollout_is_proportional_as_the_docs_example():
    """The example of the Deployment docs ("Proportional scaling"): 10 replicas, maxSurge 3,
    maxUnavailable 2, a rollout whose new pods never get ready: the old set at 8, the new at
    5; scaled to 15, the 5 more go 3 to the old set and 2 to the new one."""
    from devcluster.deployments import DeploymentController, admit_deployment
    from devcluster.replicasets import ReplicaSetController, admit_replicaset
    from devcluster.resources import DEPLOYMENTS, NAMESPACES, PODS, REPLICASETS
    from devcluster.store import Store

    store = Store()
    store.admit.extend((admit_deployment, admit_replicaset))
    store.create(NAMESPACES, {"metadata": {"name": "default"}})
    body = deployment("prop", 10)
    body["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}}
    store.create(DEPLOYMENTS, body, "default")
    dc, rc = DeploymentController(store), ReplicaSetController(store)
    first = template_hash(body["spec"]["template"])

    def step():
        dc.reconcile()
        rc.reconcile()
        for pod in list(store.iter(PODS)):  # only the first template's pods get ready
            if pod["metadata"]["labels"][HASH_LABEL] == first and not pod.get("status"):
                store.mutate(PODS, "default", pod["metadata"]["name"], _make_ready)
        rc.reconcile()

    def sizes():
        sets = sorted(
            store.iter(REPLICASETS), key=lambda r: r["metadata"]["labels"][HASH_LABEL] != first
        )
        return [rs["spec"]["replicas"] for rs in sets]

    for _ in range(3):
        step()
    assert sizes() == [10]
    store.patch(DEPLOYMENTS, "default", "prop", _new_template)
    for _ in range(4):
        step()
    assert sizes() == [8, 5]
    store.patch(
        DEPLOYMENTS, "default", "prop", lambda o: {**o, "spec": {**o["spec"], "replicas": 15}}
    )
    step()
    assert sizes() == [11, 7]
    dc.reconcile()  # the status of the sets' new pods
    status = store.peek(DEPLOYMENTS, "default", "prop")["status"]
    assert (status["replicas"], status["updatedReplicas"]) == (18, 7)


async def test_rollout_status_fails_past_the_progress_deadline(cluster, api, namespace):
    """A Deployment whose pod cannot be scheduled: after ``progressDeadlineSeconds`` its
    Progressing condition is False/ProgressDeadlineExceeded and ``kubectl rollout status``
    fails with upstream's message."""
    apps = client.AppsV1Api(api)
    body = deployment("stuck", 1)
    body["spec"]["progressDeadlineSeconds"] = 1
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "1000"}  # no node has 1000 CPUs
    }
    await apps.create_namespaced_deployment(namespace, body)

    async def timed_out():
        status = (await apps.read_namespaced_deployment("stuck", namespace)).status
        cond = {c.type: c for c in status.conditions or []}.get("Progressing")
        return cond if cond is not None and cond.reason == "ProgressDeadlineExceeded" else None

    cond = await wait_for(timed_out, 20, "the progress deadline")
    (rs,) = (await apps.list_namespaced_replica_set(namespace)).items
    assert (cond.status, cond.message) == (
        "False",
        f'ReplicaSet "{rs.metadata.name}" has timed out progressing.',
    )
    code, _, err = await _run(
        cluster, "rollout", "status", "-n", namespace, "deployment/stuck", "--timeout=20s"
    )
    assert code == 1
    assert 'error: deployment "stuck" exceeded its progress deadline' in err


def test_foreground_deletion_keeps_the_owner_until_its_blocking_dependents_are_gone():
    """``propagationPolicy: Foreground`` (garbage-collection docs, "Foreground cascading
    deletion"): the Deployment and its ReplicaSet get ``deletionTimestamp`` and the
    ``foregroundDeletion`` finalizer and stay while a pod (``blockOwnerDeletion: true``) is
    left, even one only marked for deletion; once the kubelet removes it the set goes, then
    the Deployment. A dependent without ``blockOwnerDeletion`` is deleted but does not hold
    its owner. ``dryRun`` changes nothing."""
    from devcluster.deployments import DeploymentController, admit_deployment
    from devcluster.replicasets import ReplicaSetController, admit_replicaset
    from devcluster.resources import CONFIGMAPS, DEPLOYMENTS, NAMESPACES, PODS, REPLICASETS
    from devcluster.store import Store

    store = Store()
    store.admit.extend((admit_deployment, admit_replicaset))
    store.create(NAMESPACES, {"metadata": {"name": "default"}})
    dc, rc = DeploymentController(store), ReplicaSetController(store)
    owner = store.create(DEPLOYMENTS, deployment("fg", 1), "default")
    dc.reconcile()
    rc.reconcile()
    (pod,) = list(store.iter(PODS))

    def running(p):
        p["spec"]["nodeName"] = "node-1"
        p.setdefault("status", {})["phase"] = "Running"

    store.mutate(PODS, "default", pod["metadata"]["name"], running)
    ref = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fg",
        "uid": owner["metadata"]["uid"],
    }
    store.create(CONFIGMAPS, {"metadata": {"name": "side", "ownerReferences": [ref]}}, "default")

    dry = store.delete(DEPLOYMENTS, "default", "fg", propagation="Foreground", dry_run=True)
    assert dry["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert "finalizers" not in store.get(DEPLOYMENTS, "default", "fg")["metadata"]

    answer = store.delete(DEPLOYMENTS, "default", "fg", propagation="Foreground")
    assert answer["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert answer["metadata"]["deletionTimestamp"]
    (rs,) = list(store.iter(REPLICASETS))
    assert rs["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert rs["metadata"]["deletionTimestamp"]
    (marked,) = list(store.iter(PODS))
    assert marked["metadata"]["deletionTimestamp"]  # graceful: the kubelet's to remove
    assert store.peek(CONFIGMAPS, "default", "side") is None  # not blocking: gone, not waited on
    dc.reconcile()
    rc.reconcile()  # a set being deleted makes no new pod
    assert len(list(store.iter(PODS))) == 1
    assert store.peek(DEPLOYMENTS, "default", "fg") is not None

    store.remove(PODS, "default", pod["metadata"]["name"])  # the kubelet: processes gone
    assert list(store.iter(REPLICASETS)) == []
    assert store.peek(DEPLOYMENTS, "default", "fg") is None


async def test_kubectl_delete_cascade_foreground(cluster, api, namespace):
    """``kubectl delete --cascade=foreground``: the Deployment is still listed, marked with the
    ``foregroundDeletion`` finalizer, while its pod's processes stop; then it is gone."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    manifest = deployment("fgk", 1)
    pod_spec = manifest["spec"]["template"]["spec"]
    pod_spec["terminationGracePeriodSeconds"] = 2  # the pod ignores SIGTERM: 2 s Terminating
    pod_spec["containers"][0]["command"] = [
        "python",
        "-c",
        (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ignoring', flush=True); time.sleep(60)"
        ),
    ]
    await apps.create_namespaced_deployment(namespace, manifest)
    (pod,) = await wait_for(lambda: pods_of(core, namespace, "fgk", running_only=True), timeout=60)

    async def ignoring():
        log = await core.read_namespaced_pod_log(pod.metadata.name, namespace)
        return "ignoring" in log

    await wait_for(ignoring, timeout=30, ignore=(ApiException,))
    code, out, err = await asyncio.to_thread(
        kubectl,
        cluster,
        "delete",
        "deployment",
        "fgk",
        "-n",
        namespace,
        "--cascade=foreground",
        "--wait=false",
    )
    assert code == 0, err
    marked = await apps.read_namespaced_deployment("fgk", namespace)
    assert marked.metadata.finalizers == ["foregroundDeletion"]
    assert marked.metadata.deletion_timestamp is not None
    code, out, err = await asyncio.to_thread(
        kubectl,
        cluster,
        "wait",
        "--for=delete",
        "deployment/fgk",
        "-n",
        namespace,
        "--timeout=60s",
    )
    assert code == 0, err
    assert (await core.list_namespaced_pod(namespace, label_selector="app=fgk")).items == []
    assert (await apps.list_namespaced_replica_set(namespace)).items == []
