"""The emulated API server answers as kube-apiserver 1.32 does (issue 14 §1 and §5), driven
by kubernetes_asyncio, plain HTTP (for headers and raw bodies) and kubectl.

The expected answers are the real server's documented ones: messages from
k8s.io/apimachinery ``pkg/util/validation`` and kubernetes ``pkg/apis/core/validation``
(v1.32), https://kubernetes.io/docs/reference/using-api/api-concepts/ (dryRun, chunking,
field validation, watch bookmarks, 410 Gone), and ``finalizeDelete`` for DELETE answers.
"""

import asyncio
import base64
import json
import shutil
import subprocess

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from devcluster.testing import wait_for

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
MAIN = {"name": "main", "image": "python", "command": ["sleep", "60"]}

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")


def pod(name, **spec):
    return {"metadata": {"name": name}, "spec": {"containers": [dict(MAIN)], **spec}}


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


async def refused(call, code: int) -> dict:
    with pytest.raises(ApiException) as err:
        await call
    assert err.value.status == code, err.value.body
    return status_of(err.value)


def kubectl(cluster, *args, stdin=None):
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


async def raw(cluster, method, path, body=None, headers=None):
    """(status, headers, parsed JSON body) of a plain HTTP request to the API server."""
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, cluster.url + path, json=body, headers=headers or {}
        ) as resp:
            text = await resp.text()
            try:
                doc = json.loads(text)
            except ValueError:
                doc = text
            return resp.status, resp.headers, doc


# -- §1 names, labels, containers ------------------------------------------------------------


async def test_a_pod_named_bad_name_is_invalid_worded_as_the_real_server(api, namespace):
    status = await refused(
        client.CoreV1Api(api).create_namespaced_pod(namespace, pod("Bad_Name")), 422
    )
    assert status["reason"] == "Invalid"
    assert status["message"] == (
        f'Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": {SUBDOMAIN_MSG}'
    )
    assert status["details"]["kind"] == "Pod"
    assert status["details"]["name"] == "Bad_Name"
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": f'Invalid value: "Bad_Name": {SUBDOMAIN_MSG}',
            "field": "metadata.name",
        }
    ]


async def test_too_long_names_bad_labels_and_container_names_are_each_named(api, namespace):
    core = client.CoreV1Api(api)
    status = await refused(
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "a" * 300}}), 422
    )
    assert status["details"]["causes"][0]["message"].endswith("must be no more than 253 characters")

    bad = pod("labelled")
    bad["metadata"]["labels"] = {"ok": "bad value!"}
    status = await refused(core.create_namespaced_pod(namespace, bad), 422)
    assert status["message"] == (
        f'Pod "labelled" is invalid: metadata.labels: Invalid value: "bad value!": '
        f"{LABEL_VALUE_MSG}"
    )

    bad = pod("named")
    bad["spec"]["containers"][0]["name"] = "Bad_Name"
    status = await refused(core.create_namespaced_pod(namespace, bad), 422)
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.containers[0].name"]
    assert status["message"].endswith(f'Invalid value: "Bad_Name": {LABEL_MSG}')

    two = pod("two")
    two["metadata"]["labels"] = {"bad key!": "x"}
    del two["spec"]["containers"][0]["image"]
    status = await refused(core.create_namespaced_pod(namespace, two), 422)
    assert status["message"].startswith('Pod "two" is invalid: [metadata.labels: Invalid value: ')
    assert [c["field"] for c in status["details"]["causes"]] == [
        "metadata.labels",
        "spec.containers[0].image",
    ]


async def test_name_rules_per_kind(api, namespace):
    core = client.CoreV1Api(api)
    # a Service name is a DNS-1035 label (must start with a letter), a Namespace's an RFC 1123
    # label (no dots), a ConfigMap's a subdomain (dots allowed)
    status = await refused(
        core.create_namespaced_service(
            namespace, {"metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 80}]}}
        ),
        422,
    )
    assert "a DNS-1035 label must consist of lower case alphanumeric" in status["message"]
    status = await refused(core.create_namespace({"metadata": {"name": "a.b"}}), 422)
    assert (
        status["message"]
        == f'Namespace "a.b" is invalid: metadata.name: Invalid value: "a.b": {LABEL_MSG}'
    )
    await core.create_namespaced_config_map(namespace, {"metadata": {"name": "a.b"}})
    # generateName is checked as a prefix (a trailing '-' allowed), then the name made from it
    made = await core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "g-"}})
    assert made.metadata.name.startswith("g-")
    status = await refused(
        core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "Bad-"}}), 422
    )
    assert [(c["field"], c["message"]) for c in status["details"]["causes"]][0] == (
        "metadata.generateName",
        f'Invalid value: "Bad-": {SUBDOMAIN_MSG}',
    )
    assert [c["field"] for c in status["details"]["causes"]][1:] == ["metadata.name"]


# -- §1 schema -------------------------------------------------------------------------------


async def test_unknown_fields_warn_by_default_and_fail_when_strict(cluster, namespace):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    body = {"metadata": {"name": "extra", "foo": 1}, "data": {"a": "b"}}
    code, headers, doc = await raw(cluster, "POST", base, body)
    assert code == 201
    assert headers.getall("Warning") == ['299 - "unknown field \\"metadata.foo\\""']
    assert "foo" not in doc["metadata"]  # dropped, as the real decoder does
    body["metadata"]["name"] = "strict"
    code, _, doc = await raw(cluster, "POST", base + "?fieldValidation=Strict", body)
    assert (code, doc["reason"]) == (400, "BadRequest")
    assert doc["message"] == (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: '
        'unknown field "metadata.foo"'
    )
    code, _, doc = await raw(cluster, "POST", base + "?fieldValidation=Sometimes", body)
    assert code == 422
    assert doc["message"] == (
        'CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: '
        '"Sometimes": supported values: "Ignore", "Warn", "Strict"'
    )


async def test_wrong_types_and_missing_required_fields(cluster, namespace):
    base = f"/api/v1/namespaces/{namespace}/pods"
    typed = {"metadata": {"name": "typed"}, "spec": {"containers": [{"name": 3, "image": "x"}]}}
    code, _, doc = await raw(cluster, "POST", base, typed)
    assert code == 400
    assert doc["message"] == (
        'Pod in version "v1" cannot be handled as a Pod: json: cannot unmarshal number into Go '
        "struct field Container.spec.containers.name of type string"
    )
    missing = {"metadata": {"name": "missing"}, "spec": {"containers": [{"image": "x"}]}}
    code, _, doc = await raw(cluster, "POST", base, missing)
    assert code == 422
    assert doc["details"]["causes"] == [
        {
            "reason": "FieldValueRequired",
            "message": "Required value",
            "field": "spec.containers[0].name",
        }
    ]


# -- §1 immutable fields -----------------------------------------------------------------------


async def test_pod_spec_is_immutable_except_image_deadline_and_added_tolerations(api, namespace):
    core = client.CoreV1Api(api)
    created = await core.create_namespaced_pod(namespace, pod("fixed"))
    status = await refused(
        core.patch_namespaced_pod("fixed", namespace, {"spec": {"restartPolicy": "Never"}}), 422
    )
    assert status["message"].startswith(
        'Pod "fixed" is invalid: spec: Forbidden: pod updates may not change fields other than '
        "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
        "`spec.tolerations` (only additions to existing tolerations),"
    )
    assert status["details"]["causes"][0]["field"] == "spec"
    changed = await core.patch_namespaced_pod(
        "fixed",
        namespace,
        {
            "metadata": {"labels": {"new": "label"}},
            "spec": {
                "containers": [{"name": "main", "image": "python:3.12"}],
                "activeDeadlineSeconds": 600,
                # tolerations is an atomic list: a patch sends the whole list
                "tolerations": [api.sanitize_for_serialization(t) for t in created.spec.tolerations]
                + [{"key": "x", "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
    )
    assert changed.spec.containers[0].image == "python:3.12"
    assert changed.spec.active_deadline_seconds == 600
    status = await refused(
        core.patch_namespaced_pod("fixed", namespace, {"spec": {"activeDeadlineSeconds": 900}}),
        422,
    )
    assert "spec.activeDeadlineSeconds" in status["message"]


async def test_job_template_and_completions_are_immutable(api, namespace):
    batch = client.BatchV1Api(api)
    job = {
        "metadata": {"name": "once"},
        "spec": {"suspend": True, "template": {"spec": {"containers": [dict(MAIN)]}}},
    }
    await batch.create_namespaced_job(namespace, job)
    for change, field in (
        ({"spec": {"completions": 3}}, "spec.completions"),
        (
            {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "other"}]}}}},
            "spec.template",
        ),
    ):
        status = await refused(batch.patch_namespaced_job("once", namespace, change), 422)
        assert status["details"]["causes"][0]["field"] == field
        assert status["message"].endswith("field is immutable")
    # a suspended Job that never started may change its template's scheduling directives
    moved = await batch.patch_namespaced_job(
        "once", namespace, {"spec": {"template": {"spec": {"nodeSelector": {"zone": "a"}}}}}
    )
    assert moved.spec.template.spec.node_selector == {"zone": "a"}


# -- §1 defaults -------------------------------------------------------------------------------


async def test_defaults_of_secrets_services_and_pods(api, namespace):
    core = client.CoreV1Api(api)
    secret = await core.create_namespaced_secret(
        namespace, {"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}}
    )
    assert secret.type == "Opaque"
    assert secret.data == {"password": base64.b64encode(b"hunter2").decode()}
    assert secret.string_data is None

    svc = await core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "web"}, "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}},
    )
    assert svc.spec.type == "ClusterIP"
    assert svc.spec.cluster_ip.startswith("10.")
    assert svc.spec.cluster_ips == [svc.spec.cluster_ip]
    assert (svc.spec.ports[0].protocol, svc.spec.ports[0].target_port) == ("TCP", 80)
    again = await core.patch_namespaced_service(
        "web", namespace, {"metadata": {"labels": {"x": "y"}}}
    )
    assert again.spec.cluster_ip == svc.spec.cluster_ip

    created = await core.create_namespaced_pod(namespace, pod("defaults"))
    assert created.spec.service_account_name == "default"
    assert created.spec.enable_service_links is True
    assert [(t.key, t.effect, t.toleration_seconds) for t in created.spec.tolerations] == [
        ("node.kubernetes.io/not-ready", "NoExecute", 300),
        ("node.kubernetes.io/unreachable", "NoExecute", 300),
    ]
    assert created.spec.containers[0].termination_message_path == "/dev/termination-log"
    assert created.spec.containers[0].image_pull_policy == "Always"  # no tag: latest


# -- §5 dryRun ----------------------------------------------------------------------------------


async def test_dry_run_creates_changes_and_deletes_nothing(api, namespace):
    core = client.CoreV1Api(api)
    would = await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dry"}, "data": {"a": "1"}}, dry_run="All"
    )
    assert would.metadata.name == "dry" and would.metadata.uid
    await refused(core.read_namespaced_config_map("dry", namespace), 404)
    await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "wet"}, "data": {"a": "1"}}
    )
    patched = await core.patch_namespaced_config_map(
        "wet", namespace, {"data": {"a": "2"}}, dry_run="All"
    )
    assert patched.data == {"a": "2"}
    assert (await core.read_namespaced_config_map("wet", namespace)).data == {"a": "1"}
    await core.delete_namespaced_config_map("wet", namespace, dry_run="All")
    assert (await core.read_namespaced_config_map("wet", namespace)).data == {"a": "1"}
    # a dry run is validated like a real write
    await refused(core.create_namespaced_pod(namespace, pod("Dry_Bad"), dry_run="All"), 422)


# -- §5 lists ----------------------------------------------------------------------------------


async def test_limit_and_continue_page_through_a_list(api, namespace):
    core = client.CoreV1Api(api)
    for i in range(5):
        await core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{i}"}})
    names, token, remaining = [], None, []
    while True:
        page = await core.list_namespaced_config_map(namespace, limit=2, _continue=token)
        names += [c.metadata.name for c in page.items]
        remaining.append(page.metadata.remaining_item_count)
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"cm-{i}" for i in range(5)]
    assert remaining == [3, 1, None]
    status = await refused(core.list_namespaced_config_map(namespace, _continue="%%%"), 400)
    assert status["reason"] == "BadRequest"
    assert status["message"].startswith("invalid continue token: continue key is not valid: ")


async def test_field_selectors_limited_to_the_supported_fields(api, namespace):
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(namespace, pod("selected"))
    found = await core.list_namespaced_pod(namespace, field_selector="spec.restartPolicy=Always")
    assert [p.metadata.name for p in found.items] == ["selected"]
    found = await core.list_namespaced_pod(namespace, field_selector="spec.hostNetwork=false")
    assert [p.metadata.name for p in found.items] == ["selected"]
    status = await refused(core.list_namespaced_pod(namespace, field_selector="spec.foo=bar"), 400)
    assert (status["reason"], status["message"]) == (
        "BadRequest",
        "field label not supported: spec.foo",
    )
    status = await refused(
        core.list_namespaced_config_map(namespace, field_selector="data.a=b"), 400
    )
    assert status["message"] == "field label not supported: data.a"


# -- §5 watches ---------------------------------------------------------------------------------


async def test_watch_sends_bookmarks_when_allowed(cluster, api, namespace):
    cluster._server.bookmark_interval = 0.2
    core = client.CoreV1Api(api)
    types = []
    try:
        async with watch.Watch() as w:
            async for event in w.stream(
                core.list_namespaced_config_map,
                namespace,
                allow_watch_bookmarks=True,
                timeout_seconds=2,
            ):
                types.append(event["type"])
                if event["type"] == "BOOKMARK":
                    rv = event["raw_object"]["metadata"]["resourceVersion"]
                    assert int(rv) >= 1
                    break
    finally:
        cluster._server.bookmark_interval = 60.0
    assert "BOOKMARK" in types


async def test_expired_watch_is_200_with_an_error_event(cluster, namespace):
    store = cluster.store
    floor = store._log_floor
    store._log_floor = int(store.resource_version)
    try:
        code, _, text = await raw(
            cluster, "GET", f"/api/v1/namespaces/{namespace}/pods?watch=true&resourceVersion=1"
        )
    finally:
        store._log_floor = floor
    assert code == 200
    event = json.loads(text) if isinstance(text, str) else text
    assert event["type"] == "ERROR"
    assert event["object"]["kind"] == "Status"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    assert event["object"]["message"].startswith("too old resource version: 1 (")


# -- §5 DELETE ----------------------------------------------------------------------------------


async def test_delete_answers_a_status_or_the_object_per_kind(cluster, api, namespace):
    core = client.CoreV1Api(api)
    cm = await core.create_namespaced_config_map(namespace, {"metadata": {"name": "gone"}})
    code, _, doc = await raw(cluster, "DELETE", f"/api/v1/namespaces/{namespace}/configmaps/gone")
    assert code == 200
    assert doc == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": "gone", "kind": "configmaps", "uid": cm.metadata.uid},
    }
    await client.BatchV1Api(api).create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "j"},
            "spec": {"suspend": True, "template": {"spec": {"containers": [dict(MAIN)]}}},
        },
    )
    _, _, doc = await raw(cluster, "DELETE", f"/apis/batch/v1/namespaces/{namespace}/jobs/j")
    assert (doc["kind"], doc["details"]["group"], doc["details"]["kind"]) == (
        "Status",
        "batch",
        "jobs",
    )
    await core.create_namespaced_pod(namespace, pod("po", nodeSelector={"no": "such-node"}))
    _, _, doc = await raw(cluster, "DELETE", f"/api/v1/namespaces/{namespace}/pods/po")
    assert (doc["kind"], doc["metadata"]["name"]) == ("Pod", "po")  # pods return the object


async def test_delete_preconditions_protect_a_newer_object_of_the_same_name(api, namespace):
    """DeleteOptions.preconditions (uid, resourceVersion): a mismatch is 409 Conflict, nothing
    deleted (the orphan reconciler and the spawner rely on it never to delete a newer pod)."""
    core = client.CoreV1Api(api)
    created = await core.create_namespaced_pod(namespace, pod("pre", nodeSelector={"no": "n"}))
    wrong = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="0000-old"))
    doc = await refused(core.delete_namespaced_pod("pre", namespace, body=wrong), 409)
    assert doc["reason"] == "Conflict"
    assert doc["message"] == (
        'Operation cannot be fulfilled on pods "pre": Precondition failed: UID in '
        f"precondition: 0000-old, UID in object meta: {created.metadata.uid}"
    )
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="1"))
    doc = await refused(core.delete_namespaced_pod("pre", namespace, body=stale), 409)
    assert "ResourceVersion in precondition: 1" in doc["message"]
    assert (await core.read_namespaced_pod("pre", namespace)).metadata.uid == created.metadata.uid
    right = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=created.metadata.uid), grace_period_seconds=0
    )
    await core.delete_namespaced_pod("pre", namespace, body=right)
    await refused(core.read_namespaced_pod("pre", namespace), 404)


# -- health and OpenAPI; kubectl ------------------------------------------------------------------


async def test_health_endpoints_and_openapi_v3(cluster):
    for path in ("/healthz", "/livez", "/readyz"):
        code, _, text = await raw(cluster, "GET", path)
        assert (code, text) == (200, "ok")
    code, _, text = await raw(cluster, "GET", "/readyz?verbose")
    assert "readyz check passed" in text
    code, _, root = await raw(cluster, "GET", "/openapi/v3")
    assert code == 200
    url = root["paths"]["api/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/api/v1?hash=")
    assert "apis/batch/v1" in root["paths"]
    code, _, doc = await raw(cluster, "GET", url)
    patch = doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert "io.k8s.api.core.v1.Pod" in doc["components"]["schemas"]
    code, _, version = await raw(cluster, "GET", "/version")
    assert (version["major"], version["minor"]) == ("1", "32")


@needs_kubectl
async def test_kubectl_validates_server_side_dry_runs_diffs_and_chunks(cluster, namespace):
    bad = f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: Bad_Name\n  namespace: {namespace}\nspec:\n  containers:\n  - name: c\n    image: busybox\n"
    code, out = await asyncio.to_thread(kubectl, cluster, "apply", "-f", "-", stdin=bad)
    assert code == 1
    assert (
        f'The Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": {SUBDOMAIN_MSG}'
        in out
    )
    unknown = f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: k\n  namespace: {namespace}\n  foo: 1\n"
    code, out = await asyncio.to_thread(kubectl, cluster, "apply", "-f", "-", stdin=unknown)
    assert code == 1
    assert 'strict decoding error: unknown field "metadata.foo"' in out  # kubectl sends Strict
    good = f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: k\n  namespace: {namespace}\ndata:\n  a: b\n"
    code, out = await asyncio.to_thread(
        kubectl, cluster, "apply", "--dry-run=server", "-f", "-", stdin=good
    )
    assert (code, out.strip()) == (0, "configmap/k created (server dry run)")
    code, out = await asyncio.to_thread(kubectl, cluster, "get", "cm", "k", "-n", namespace)
    assert code == 1 and "NotFound" in out
    code, out = await asyncio.to_thread(kubectl, cluster, "apply", "-f", "-", stdin=good)
    assert code == 0, out
    code, out = await asyncio.to_thread(
        kubectl, cluster, "diff", "-f", "-", stdin=good.replace("a: b", "a: c")
    )
    assert code == 1 and "-  a: b" in out and "+  a: c" in out
    for i in range(3):
        await asyncio.to_thread(
            kubectl,
            cluster,
            "create",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=good.replace("name: k", f"name: k{i}"),
        )
    code, out = await asyncio.to_thread(
        kubectl, cluster, "get", "cm", "-n", namespace, "--chunk-size=2", "-o", "name"
    )
    assert out.split() == ["configmap/k", "configmap/k0", "configmap/k1", "configmap/k2"]
    code, out = await asyncio.to_thread(
        kubectl, cluster, "get", "pods", "-n", namespace, "--field-selector", "spec.foo=bar"
    )
    assert code == 1
    assert out.strip() == (
        'Error from server (BadRequest): Unable to find "/v1, Resource=pods" that match label '
        'selector "", field selector "spec.foo=bar": field label not supported: spec.foo'
    )


# -- §3 apps/v1: ReplicaSets and the scale subresource (R) -------------------------------------


async def test_discovery_serves_replicasets_and_scale_as_autoscaling_v1(cluster):
    code, _, doc = await raw(cluster, "GET", "/apis/apps/v1")
    assert code == 200
    by_name = {r["name"]: r for r in doc["resources"]}
    assert by_name["replicasets"]["shortNames"] == ["rs"]
    for parent in ("deployments", "replicasets"):
        scale = by_name[f"{parent}/scale"]
        assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")
        assert scale["verbs"] == ["get", "patch", "update"]


@needs_kubectl
async def test_kubectl_scale_rollout_and_apply_need_no_openapi_v2(cluster, namespace):
    """kubectl 1.32 asks for ``/openapi/v2`` only when the v3 document does not offer the
    strategic merge patch for a kind (apply/diff of a change); with it, never."""
    manifest = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: v2\n"
        f"  namespace: {namespace}\nspec:\n  replicas: REPLICAS\n"
        "  selector: {matchLabels: {app: v2}}\n  template:\n    metadata: {labels: {app: v2}}\n"
        '    spec: {containers: [{name: main, image: python, command: [sleep, "60"]}]}\n'
    )
    asked = []
    for args, stdin in (
        (("apply", "-f", "-"), manifest.replace("REPLICAS", "1")),
        (("apply", "-f", "-"), manifest.replace("REPLICAS", "2")),
        (("diff", "-f", "-"), manifest.replace("REPLICAS", "3")),
        (("scale", "-n", namespace, "deployment/v2", "--replicas=0"), None),
        (("rollout", "status", "-n", namespace, "deployment/v2", "--timeout=30s"), None),
    ):
        code, out = await asyncio.to_thread(kubectl, cluster, *args, "-v=6", stdin=stdin)
        assert code == (1 if args[0] == "diff" else 0), out  # diff: 1 when it differs
        asked += [line for line in out.splitlines() if "/openapi/" in line]
    assert any("/openapi/v3/apis/apps/v1" in line for line in asked)
    assert not [line for line in asked if "/openapi/v2" in line]


# -- §4 HOME as a container runtime sets it (R) ------------------------------------------------


def test_home_from_the_images_env_then_its_passwd_then_slash(tmp_path):
    from devcluster import isolation

    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\nbad line\nu:x:1000:1000::/home/u:/bin/sh\n")
    single = isolation.image_config("llmspawner/singleuser:1.0", isolation.DEFAULT_IMAGE_CONFIG)
    other = isolation.image_config("busybox", isolation.DEFAULT_IMAGE_CONFIG)
    mlflow = isolation.image_config("ghcr.io/mlflow/mlflow:v3", isolation.DEFAULT_IMAGE_CONFIG)
    assert isolation.container_home(1000, single, str(passwd)) == "/home/jovyan"  # ENV HOME
    assert isolation.container_home(0, single, str(passwd)) == "/home/jovyan"
    assert isolation.container_home(0, other, str(passwd)) == "/root"  # runc: passwd
    assert isolation.container_home(1000, other, str(passwd)) == "/home/u"
    assert isolation.container_home(4242, other, str(passwd)) == "/"  # no entry
    assert isolation.container_home(1000, mlflow, str(passwd)) == "/"  # the image's passwd
    assert isolation.container_home(0, other, str(tmp_path / "none")) == "/"
    with pytest.raises(ValueError, match=r"image_config\['x'\].passwd must map uids"):
        isolation.image_config("x", {"x": {"passwd": {"root": "/root"}}})


async def test_a_container_without_home_gets_its_images_home(cluster, api, namespace):
    import os

    from devcluster import isolation

    core = client.CoreV1Api(api)
    show = {"name": "main", "image": "python", "command": ["sh", "-c", "echo HOME=$HOME"]}
    cases = {
        "single": ({**show, "image": "llmspawner/singleuser"}, "/home/jovyan"),
        "given": ({**show, "env": [{"name": "HOME", "value": "/data"}]}, "/data"),
        "own": (dict(show), None),  # the kubelet's user (root: /root), from passwd
    }
    if os.geteuid() == 0:  # identities are applied by a root kubelet only
        cases["nobody"] = ({**show, "securityContext": {"runAsUser": 4242}}, "/")
    own_home = isolation.container_home(os.geteuid(), isolation.image_config("python", {}))
    cases["own"] = (cases["own"][0], own_home)
    for name, (container, _) in cases.items():
        await core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        )
    for name, (_, want) in cases.items():

        async def done(name=name):
            pod = await core.read_namespaced_pod(name, namespace)
            return pod.status.phase in ("Succeeded", "Failed") and pod

        pod = await wait_for(done, 30, f"pod {name} finished")
        log = await core.read_namespaced_pod_log(name, namespace)
        assert (pod.status.phase, log.strip()) == ("Succeeded", f"HOME={want}"), name


@needs_kubectl
async def test_kubectl_create_sends_protobuf_and_namespaces_get_their_defaults(cluster, api):
    """kubectl 1.32's typed ``create`` subcommands POST ``application/vnd.kubernetes.protobuf``:
    namespace, configmap, secret, serviceaccount, role and rolebinding are decoded
    (devcluster.protobody) and
    stored as the JSON ones; other kinds are 415 UnsupportedMediaType. A Namespace gets the
    real server's defaults (its strategy's ``PrepareForCreate``/``Canonicalize``): the label
    ``kubernetes.io/metadata.name``, ``spec.finalizers`` [kubernetes], phase Active."""

    def run(*args):
        return asyncio.to_thread(kubectl, cluster, *args)

    core = client.CoreV1Api(api)
    code, out = await run("create", "namespace", "proto")
    assert code == 0, out
    ns = await core.read_namespace("proto")
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "proto"}
    assert ns.spec.finalizers == ["kubernetes"]
    assert ns.status.phase == "Active"
    code, out = await run(
        "create", "configmap", "cm", "-n", "proto", "--from-literal=a=b", "--from-literal=e="
    )
    assert code == 0, out
    assert (await core.read_namespaced_config_map("cm", "proto")).data == {"a": "b", "e": ""}
    code, out = await run("create", "secret", "generic", "s", "-n", "proto", "--from-literal=k=v")
    assert code == 0, out
    secret = await core.read_namespaced_secret("s", "proto")
    assert (secret.type, secret.data) == ("Opaque", {"k": base64.b64encode(b"v").decode()})
    code, out = await run("create", "serviceaccount", "robot", "-n", "proto")
    assert code == 0, out
    await core.read_namespaced_service_account("robot", "proto")
    robot = "--as=system:serviceaccount:proto:robot"
    assert (await run("auth", "can-i", "list", "pods", "-n", "proto", robot))[0] == 1
    code, out = await run("create", "role", "r", "-n", "proto", "--verb=list", "--resource=pods")
    assert code == 0, out
    code, out = await run(
        "create", "rolebinding", "rb", "-n", "proto", "--role=r", "--serviceaccount=proto:robot"
    )
    assert code == 0, out
    rbac = client.RbacAuthorizationV1Api(api)
    role = await rbac.read_namespaced_role("r", "proto")
    assert [(r.api_groups, r.resources, r.verbs) for r in role.rules] == [
        ([""], ["pods"], ["list"])
    ]
    assert (await run("auth", "can-i", "list", "pods", "-n", "proto", robot))[0] == 0
    code, out = await run("create", "deployment", "d", "-n", "proto", "--image=python")
    assert code == 1
    assert "the body of the request was in an unknown format" in out
    await core.delete_namespace("proto")


@needs_kubectl
async def test_kubectl_apply_server_side_creates_then_updates(cluster, api, namespace):
    """``kubectl apply --server-side`` (PATCH ``application/apply-patch+yaml``): an absent
    object is created (201, as the real server), a present one updated; a body naming another
    object is 400 as upstream words it. (managedFields and apply conflicts not emulated:
    devcluster.patching.)"""
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}}
    for value in ("b", "c"):
        code, out = await asyncio.to_thread(
            kubectl,
            cluster,
            "apply",
            "--server-side",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=json.dumps({**manifest, "data": {"a": value}}),
        )
        assert code == 0, out
        assert "configmap/ssa serverside-applied" in out
        cm = await client.CoreV1Api(api).read_namespaced_config_map("ssa", namespace)
        assert cm.data == {"a": value}
    status, _, doc = await raw(
        cluster,
        "PATCH",
        f"/api/v1/namespaces/{namespace}/configmaps/other?fieldManager=me",
        body={**manifest, "data": {"a": "b"}},
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert status == 400
    assert doc["message"] == (
        "the name of the object (ssa) does not match the name on the URL (other)"
    )


async def test_patch_with_an_unknown_content_type_is_415_before_the_lookup(cluster, namespace):
    """kube-apiserver's patch handler checks the Content-Type first (so even for an absent
    object) and answers negotiation's 415 listing the patch types it accepts."""
    status, _, doc = await raw(
        cluster,
        "PATCH",
        f"/api/v1/namespaces/{namespace}/configmaps/absent",
        body={},
        headers={"Content-Type": "text/plain"},
    )
    assert status == 415
    assert doc["reason"] == "UnsupportedMediaType"
    assert doc["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, "
        "application/strategic-merge-patch+json, application/apply-patch+yaml"
    )
