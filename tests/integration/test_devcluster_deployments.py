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
    assert (ref.kind, ref.name, ref.controller) == ("Deployment", "web", True)

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

    new = (await wait_for(rolled, 30, "the new pod"))[0]
    assert new.metadata.labels[HASH_LABEL] != old.metadata.labels[HASH_LABEL]
    # Recreate: the new pod is created only after the old one is gone (never two at once)
    seen = []
    stream = watch.Watch().stream(
        core.list_namespaced_pod, namespace, resource_version=since, timeout_seconds=2
    )
    async for event in stream:
        seen.append((event["type"], event["object"].metadata.name))
    assert seen.index(("DELETED", old.metadata.name)) < seen.index(("ADDED", new.metadata.name))


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
