"""ServiceAccounts, tokens and RBAC on the devcluster (issue 14 §2), driven by kubectl and
kubernetes_asyncio as an outside user: 401/403 Status objects worded as the real server's,
``kubectl auth can-i`` / ``auth whoami``, the token mounted into pods so
``load_incluster_config()`` works, and the queue's RBAC from deploy/manifests/queue.

Upstream: https://kubernetes.io/docs/reference/access-authn-authz/rbac/ ,
https://kubernetes.io/docs/tasks/configure-pod-container/configure-service-account/
"""

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from devcluster.authn import TOKEN_DIR, token_kubeconfig
from devcluster.testing import wait_for

REPO = Path(__file__).resolve().parents[2]
NS = "team"


def kubectl(kubeconfig, *args, stdin=None):
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )
    return result.returncode, result.stdout, result.stderr


def run_kubectl(kubeconfig, *args, stdin=None):
    return asyncio.to_thread(kubectl, kubeconfig, *args, stdin=stdin)


@pytest.fixture(scope="module")
async def team(cluster, api):
    """Namespace ``team`` with ServiceAccount ``bot``."""
    core = client.CoreV1Api(api)
    await core.create_namespace({"metadata": {"name": NS}})
    await core.create_namespaced_service_account(NS, {"metadata": {"name": "bot"}})
    yield NS


async def sa_kubeconfig(cluster, tmp_path, namespace, name, https=True) -> Path:
    """A kubeconfig with a token of ServiceAccount ``namespace/name`` (kubectl create token)."""
    code, token, err = await run_kubectl(
        cluster.kubeconfig_path, "create", "token", name, "-n", namespace
    )
    assert code == 0, err
    server = cluster.tls_url if https else cluster.url
    doc = token_kubeconfig(server, token.strip(), namespace, cluster.data_dir / "ca.crt")
    path = tmp_path / f"{namespace}-{name}.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_service_account_is_forbidden_until_bound(cluster, api, team, tmp_path):
    bot = await sa_kubeconfig(cluster, tmp_path, NS, "bot")
    code, _, err = await run_kubectl(bot, "get", "pods")
    assert code == 1
    assert err.strip() == (
        'Error from server (Forbidden): pods is forbidden: User "system:serviceaccount:team:bot" '
        'cannot list resource "pods" in API group "" in the namespace "team"'
    )
    code, out, _ = await run_kubectl(bot, "auth", "can-i", "list", "pods")
    assert (code, out.strip()) == (1, "no")

    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "pod-reader", "namespace": NS},
        "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "bot-reads-pods", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": NS}],
    }
    manifest = yaml.safe_dump_all([role, binding])
    code, out, err = await run_kubectl(cluster.kubeconfig_path, "apply", "-f", "-", stdin=manifest)
    assert code == 0, err
    code, out, err = await run_kubectl(bot, "get", "pods")
    assert code == 0, err
    assert (await run_kubectl(bot, "auth", "can-i", "list", "pods"))[:2] == (0, "yes\n")
    assert (await run_kubectl(bot, "auth", "can-i", "watch", "pods"))[:2] == (1, "no\n")
    can_log = await run_kubectl(bot, "auth", "can-i", "get", "pods", "--subresource=log")
    assert can_log[:2] == (0, "yes\n")
    # a Role binds in its namespace only
    code, _, err = await run_kubectl(bot, "get", "pods", "-n", "default")
    assert 'cannot list resource "pods" in API group "" in the namespace "default"' in err
    code, out, err = await run_kubectl(bot, "auth", "whoami", "-o", "json")
    assert code == 0, err
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == "system:serviceaccount:team:bot"
    assert info["groups"] == [
        "system:serviceaccounts",
        "system:serviceaccounts:team",
        "system:authenticated",
    ]


async def test_forbidden_and_unauthorized_status_objects(cluster, api, team, tmp_path):
    """kubernetes_asyncio sees the real server's Status: 403 with group-qualified resource and
    name, cluster scope, and 401 for a token that is not valid (also over plain HTTP)."""
    bot = await sa_kubeconfig(cluster, tmp_path, NS, "bot", https=False)
    async with await config.new_client_from_config(config_file=str(bot)) as bot_api:
        with pytest.raises(ApiException) as e:
            await client.BatchV1Api(bot_api).read_namespaced_job("train", NS)
        assert e.value.status == 403
        assert json.loads(e.value.body) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'jobs.batch "train" is forbidden: User "system:serviceaccount:team:bot" '
            'cannot get resource "jobs" in API group "batch" in the namespace "team"',
            "reason": "Forbidden",
            "details": {"name": "train", "group": "batch", "kind": "jobs"},
            "code": 403,
        }
        with pytest.raises(ApiException) as e:
            await client.CoreV1Api(bot_api).list_node()
        assert json.loads(e.value.body)["message"] == (
            'nodes is forbidden: User "system:serviceaccount:team:bot" cannot list resource '
            '"nodes" in API group "" at the cluster scope'
        )
    bad = token_kubeconfig(cluster.url, "not-a-token", NS)
    path = tmp_path / "bad.kubeconfig"
    path.write_text(yaml.safe_dump(bad))
    async with await config.new_client_from_config(config_file=str(path)) as bad_api:
        with pytest.raises(ApiException) as e:
            await client.CoreV1Api(bad_api).list_namespaced_pod(NS)
        assert e.value.status == 401
        body = json.loads(e.value.body)
        assert (body["reason"], body["message"]) == ("Unauthorized", "Unauthorized")


async def test_token_of_a_deleted_service_account_is_refused(cluster, api, team, tmp_path):
    core = client.CoreV1Api(api)
    await core.create_namespaced_service_account(NS, {"metadata": {"name": "temp"}})
    temp = await sa_kubeconfig(cluster, tmp_path, NS, "temp")
    assert (await run_kubectl(temp, "auth", "whoami"))[0] == 0
    await core.delete_namespaced_service_account("temp", NS)
    await core.create_namespaced_service_account(NS, {"metadata": {"name": "temp"}})
    code, _, err = await run_kubectl(temp, "auth", "whoami")
    assert code == 1
    assert "Unauthorized" in err  # the new ServiceAccount of the same name has another uid


async def test_pod_gets_token_and_load_incluster_config_works(cluster, api, team):
    """A pod of ServiceAccount ``bot`` (bound to pod-reader by the first test, or here) lists
    its namespace's pods with kubernetes_asyncio's in-cluster config over HTTPS."""
    rbac = client.RbacAuthorizationV1Api(api)
    await rbac.create_namespaced_role(
        NS,
        {
            "metadata": {"name": "lister"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    await rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": "bot-lists"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lister"},
            "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": NS}],
        },
    )
    script = (
        "import asyncio, os\n"
        "from kubernetes_asyncio import client, config\n"
        "async def main():\n"
        "    config.load_incluster_config()\n"
        "    async with client.ApiClient() as api:\n"
        "        pods = await client.CoreV1Api(api).list_namespaced_pod(open("
        f"'{TOKEN_DIR}/namespace').read())\n"
        "        print('PODS', sorted(p.metadata.name for p in pods.items))\n"
        "        try:\n"
        "            await client.CoreV1Api(api).list_namespaced_secret('team')\n"
        "        except client.ApiException as e:\n"
        "            print('SECRETS', e.status)\n"
        "    print('HOST', os.environ['KUBERNETES_SERVICE_HOST'])\n"
        "asyncio.run(main())\n"
    )
    core = client.CoreV1Api(api)
    pod = {
        "metadata": {"name": "in-cluster"},
        "spec": {
            "serviceAccountName": "bot",
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "python", "command": ["python", "-c", script]}
            ],
        },
    }
    created = await core.create_namespaced_pod(NS, pod)
    volume = next(v for v in created.spec.volumes if v.name.startswith("kube-api-access-"))
    assert [s.service_account_token.path for s in volume.projected.sources[:1]] == ["token"]
    mount = created.spec.containers[0].volume_mounts[0]
    assert (mount.mount_path, mount.read_only) == (TOKEN_DIR, True)

    async def finished():
        p = await core.read_namespaced_pod("in-cluster", NS)
        return p.status.phase in ("Succeeded", "Failed") and p

    done = await wait_for(finished, 60, "the in-cluster pod finished")
    log = await core.read_namespaced_pod_log("in-cluster", NS)
    assert done.status.phase == "Succeeded", log
    assert "PODS ['in-cluster']" in log
    assert "SECRETS 403" in log
    # a pod that opts out gets no token
    opted = await core.create_namespaced_pod(
        NS,
        {
            "metadata": {"name": "no-token"},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [{"name": "main", "image": "python", "command": ["true"]}],
            },
        },
    )
    assert not opted.spec.volumes
    assert opted.spec.service_account_name == "default"


async def test_queue_rbac_from_deploy_manifests(cluster, api, tmp_path):
    """The hub's ServiceAccount ``hub`` with deploy/manifests/queue applied may do exactly the
    calls listed in rbac.yaml, and nothing the kit does not grant."""
    core = client.CoreV1Api(api)
    await core.create_namespace({"metadata": {"name": "llm"}})
    await core.create_namespaced_service_account("llm", {"metadata": {"name": "hub"}})
    code, _, err = await run_kubectl(
        cluster.kubeconfig_path,
        "apply",
        "-k",
        str(REPO / "deploy/manifests/queue"),
    )
    assert code == 0, err
    hub = await sa_kubeconfig(cluster, tmp_path, "llm", "hub")
    allowed = [
        ("create", "jobs.batch"),
        ("watch", "jobs.batch"),
        ("delete", "jobs.batch"),
        ("patch", "configmaps"),
        ("update", "secrets"),
        ("list", "pods"),
        ("get", "pods", "--subresource=log"),
        ("list", "nodes"),
        ("list", "priorityclasses.scheduling.k8s.io"),
    ]
    refused = [
        ("delete", "pods"),
        ("get", "pods"),
        ("get", "secrets"),
        ("create", "priorityclasses"),
        ("get", "pods", "--subresource=exec"),
    ]
    for question in allowed + refused:
        code, out, _ = await run_kubectl(hub, "auth", "can-i", *question)
        assert out.strip() == ("yes" if question in allowed else "no"), question


def test_dev_stack_hub_objects_come_from_the_kit_files():
    """llmspawner_dev.identities: the chart's hub Role verbatim and deploy/manifests/queue
    read from its files, the kit's namespace ``llm`` replaced by the stack's."""
    from llmspawner_dev.identities import Z2JH_HUB_RULES, queue_kit_objects, z2jh_hub_objects

    kit = queue_kit_objects("default")
    kinds = [(o["kind"], o["metadata"]["name"]) for o in kit]
    assert kinds[:4] == [
        ("Role", "llm-queue"),
        ("RoleBinding", "llm-queue"),
        ("ClusterRole", "llm-capacity"),
        ("ClusterRoleBinding", "llm-capacity"),
    ]
    assert [k for k, _ in kinds[4:]] == ["PriorityClass"] * 3
    from_file = yaml.safe_load_all((REPO / "deploy/manifests/queue/rbac.yaml").read_text())
    assert kit[0]["rules"] == next(iter(from_file))["rules"]
    assert {o["metadata"].get("namespace") for o in kit} == {"default", None}
    assert [s["namespace"] for o in kit for s in o.get("subjects", [])] == ["default"] * 2
    role, binding = z2jh_hub_objects("default")
    assert role["rules"] == list(Z2JH_HUB_RULES)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "hub", "namespace": "default"}
    ]


async def test_dev_stack_hub_kubeconfig_has_exactly_the_hubs_rights(cluster, api, tmp_path):
    """The kubeconfig the dev stack gives the hub: ServiceAccount ``hub`` may spawn (pods,
    PVCs), read capacity (nodes) and run the queue (Jobs), and is refused the rest."""
    from llmspawner_dev.identities import hub_kubeconfig

    await client.CoreV1Api(api).create_namespace({"metadata": {"name": "devstack"}})
    path = await asyncio.to_thread(
        hub_kubeconfig, cluster.kubeconfig_path, "devstack", tmp_path / "hub-kubeconfig"
    )
    # twice: a restarted stack applies the same objects again
    await asyncio.to_thread(hub_kubeconfig, cluster.kubeconfig_path, "devstack", path)
    async with await config.new_client_from_config(config_file=str(path)) as hub:
        core = client.CoreV1Api(hub)
        await core.list_namespaced_pod("devstack")
        await core.list_node()
        await client.BatchV1Api(hub).list_namespaced_job("devstack")
        await core.create_namespaced_persistent_volume_claim(
            "devstack",
            {"metadata": {"name": "claim"}, "spec": {"accessModes": ["ReadWriteOnce"]}},
        )
        with pytest.raises(ApiException) as e:
            await core.list_namespaced_config_map("devstack")
        assert e.value.status == 403
        assert json.loads(e.value.body)["message"] == (
            'configmaps is forbidden: User "system:serviceaccount:devstack:hub" cannot list '
            'resource "configmaps" in API group "" in the namespace "devstack"'
        )


async def test_queue_backend_runs_a_job_as_the_hub_service_account(cluster, api, tmp_path):
    """The queue's own calls (llmspawner.queue.backend.KubeBackend) with the hub's identity of
    a real install (z2jh's hub Role + deploy/manifests/queue): a Job with its ConfigMap and
    Secret created, listed, its pod's log read, changes watched, PriorityClasses checked, the
    Job deleted. A verb missing from the kit's Role fails here with the server's 403."""
    from llmspawner.queue import k8s_objects
    from llmspawner.queue.backend import KubeBackend
    from llmspawner_dev.identities import hub_kubeconfig

    ns = "queue-rbac"
    await client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    path = await asyncio.to_thread(
        hub_kubeconfig, cluster.kubeconfig_path, ns, tmp_path / "hub-kubeconfig"
    )
    labels = {"app.kubernetes.io/managed-by": "llm-queue", k8s_objects.LABEL_JOB_ID: "1"}
    cm = {"metadata": {"name": "job-1", "labels": labels}, "data": {"x": "y"}}
    secret = {"metadata": {"name": "job-1-mlflow", "labels": labels}, "stringData": {"t": "s"}}
    job = {
        "metadata": {"name": "job-1", "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [
                        {"name": "train", "image": "python", "command": ["echo", "step 1"]}
                    ],
                },
            },
        },
    }
    async with await config.new_client_from_config(config_file=str(path)) as hub:
        backend = KubeBackend(ns, api_client=hub, retry_timeout=2, capacity_ttl=0)
        changes = []
        watching = asyncio.create_task(backend.watch_changes(lambda: changes.append(1)))
        try:
            await backend.create_job(
                config_map=cm, job=job, owner_reference=k8s_objects.owner_reference, secret=secret
            )
            again = await backend.create_job(  # idempotent: 409s read back / replaced
                config_map=cm, job=job, owner_reference=k8s_objects.owner_reference, secret=secret
            )
            assert again.existed
            assert [j["metadata"]["name"] for j in await backend.list_jobs()] == ["job-1"]

            async def finished_pod():
                pods = await backend.list_job_pods()
                done = [p for p in pods if p["status"].get("phase") == "Succeeded"]
                return done and done[0]

            await wait_for(finished_pod, 30, "the Job's pod succeeded")
            pod = await backend.latest_pod(1)
            assert pod is not None
            assert await backend.missing_priority_classes(["llm-high"]) == []
            await wait_for(lambda: changes, 10, "a change seen by the watch")
            assert await backend.delete_job("job-1", config_map="job-1") is True
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_protobuf_bodies_of_kubectl_are_decoded():
    """kubectl 1.32 POSTs TokenRequests and access reviews as protobuf (devcluster.protobody):
    the bytes of ``kubectl create token default`` (kubectl -v=8), and a hand-encoded
    SelfSubjectAccessReview with generated.proto's field numbers."""
    from devcluster.protobody import ProtoError, decode

    token_request = bytes.fromhex(
        "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e52"
        "657175657374121a0a100a0012001a0022002a0032003800420012001a040a0012001a002200"
    )
    assert decode(token_request) == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {},
    }
    attrs = _field(1, b"team") + _field(2, b"get") + _field(5, b"pods") + _field(6, b"log")
    review = _field(2, _field(1, attrs))
    type_meta = _field(1, b"authorization.k8s.io/v1") + _field(2, b"SelfSubjectAccessReview")
    body = b"k8s\x00" + _field(1, type_meta) + _field(2, review)
    assert decode(body)["spec"] == {
        "resourceAttributes": {
            "namespace": "team",
            "verb": "get",
            "resource": "pods",
            "subresource": "log",
        }
    }
    with pytest.raises(ProtoError):
        decode(b"k8s\x00" + _field(1, _field(2, b"Pod")))


async def test_impersonation_as_kubectl_as_and_as_group(cluster, team, tmp_path):
    """``kubectl --as``/``--as-group`` (``Impersonate-User``/``-Group`` headers): the admin
    acts as the ServiceAccount (its groups follow) or a user (the groups asked, plus
    ``system:authenticated``), so ``kubectl auth can-i --as=...`` answers for them; a
    ServiceAccount without the ``impersonate`` verb is refused as kube-apiserver's
    impersonation filter words it."""
    admin = cluster.kubeconfig_path
    who = f"system:serviceaccount:{NS}:bot"
    code, out, _ = await run_kubectl(admin, "auth", "can-i", "list", "secrets", "-n", NS)
    assert (code, out.strip()) == (0, "yes")
    code, out, _ = await run_kubectl(
        admin, "auth", "can-i", "list", "secrets", "-n", NS, f"--as={who}"
    )
    assert (code, out.strip()) == (1, "no")
    code, _, err = await run_kubectl(admin, "get", "secrets", "-n", NS, f"--as={who}")
    assert code == 1
    assert (
        f'secrets is forbidden: User "{who}" cannot list resource "secrets" in API group "" '
        f'in the namespace "{NS}"'
    ) in err
    code, out, err = await run_kubectl(admin, "auth", "whoami", "--as=jane", "--as-group=devs")
    assert code == 0, err
    assert "jane" in out and "[devs system:authenticated]" in out

    bot = await sa_kubeconfig(cluster, tmp_path, NS, "bot")
    code, _, err = await run_kubectl(bot, "get", "pods", "-n", NS, "--as=jane")
    assert code == 1
    assert (
        f'users "jane" is forbidden: User "{who}" cannot impersonate resource "users" in API '
        'group "" at the cluster scope'
    ) in err
