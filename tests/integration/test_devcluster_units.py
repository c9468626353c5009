"""Pure parts of the devcluster: selectors, quantities, scheduling decision, patches, env."""

import base64
from decimal import Decimal

import pytest

from devcluster import containers, nodes, patching, scheduler, schema, selectors, validation
from devcluster.kubelet import IpPool

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def node_objects(layout=None):
    return [nodes.node_object(n) for n in nodes.validate_layout(layout or nodes.default_layout())]


def pod(name="p", gpu=None, selector=None, tolerations=None, node=None, phase="Pending", **res):
    resources = {}
    if gpu is not None:
        resources["limits"] = {"nvidia.com/gpu": str(gpu)}
    if res:
        resources.setdefault("requests", {}).update(res)
    spec = {"containers": [{"name": "c", "image": "i", "resources": resources}]}
    if selector:
        spec["nodeSelector"] = selector
    if tolerations:
        spec["tolerations"] = tolerations
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name}, "spec": spec, "status": {"phase": phase}}


@pytest.mark.parametrize(
    "text, labels, expected",
    [
        ("component=singleuser-server", {"component": "singleuser-server"}, True),
        ("component==singleuser-server", {"component": "x"}, False),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("env in (prod, dev),tier notin (db)", {"env": "dev", "tier": "web"}, True),
        ("env in (prod, dev),tier notin (db)", {"env": "dev", "tier": "db"}, False),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("!app", {}, True),
        ("", {}, True),
    ],
)
def test_label_selector(text, labels, expected):
    assert selectors.match_labels(selectors.parse_label_selector(text), labels) is expected


def test_label_selector_parse_error_names_the_term():
    with pytest.raises(selectors.SelectorError, match=r"unable to parse requirement: 'a in b'"):
        selectors.parse_label_selector("a in b")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("involvedObject.kind=Pod", True),
        ("involvedObject.kind=Pod,involvedObject.name=web", True),
        ("involvedObject.uid=u1", True),
        ("involvedObject.name!=web", False),
        ("metadata.name=web.1", True),
        ("spec.nodeName=", True),
        ("status.phase=Running", False),
    ],
)
def test_field_selector(text, expected):
    event = {
        "metadata": {"name": "web.1"},
        "involvedObject": {"kind": "Pod", "name": "web", "uid": "u1"},
    }
    assert selectors.match_fields(selectors.parse_field_selector(text), event) is expected


@pytest.mark.parametrize(
    "quantity, value",
    [("500m", Decimal("0.5")), ("64Gi", Decimal(64 * 2**30)), ("2", Decimal(2)), (4, Decimal(4))],
)
def test_parse_quantity(quantity, value):
    assert nodes.parse_quantity(quantity) == value


def test_default_layout_fits_the_gpu_profiles():
    by_name = {n["metadata"]["name"]: n for n in node_objects()}
    assert sorted(by_name) == ["cpu-1", "gpu-ts2", "gpu-ts4", "gpu-whole"]
    ts4 = by_name["gpu-ts4"]
    assert ts4["status"]["allocatable"] == {
        "cpu": "16",
        "memory": "64Gi",
        "pods": "110",
        "ephemeral-storage": "100Gi",
        "nvidia.com/gpu": "4",
    }
    assert ts4["metadata"]["labels"]["nvidia.com/gpu.replicas"] == "4"
    assert ts4["metadata"]["labels"]["nvidia.com/gpu.count"] == "1"
    assert ts4["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert by_name["gpu-ts2"]["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert by_name["gpu-whole"]["metadata"]["labels"]["nvidia.com/gpu.replicas"] == "1"
    assert by_name["gpu-whole"]["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in by_name["cpu-1"]["status"]["allocatable"]
    assert by_name["cpu-1"]["spec"] == {}


def test_layout_errors_name_the_node_and_field():
    with pytest.raises(nodes.NodeConfigError, match=r"node n: allocatable cpu: invalid quantity"):
        nodes.validate_layout([{"name": "n", "allocatable": {"cpu": "lots"}}])
    with pytest.raises(nodes.NodeConfigError, match=r"node n: unknown field\(s\) \['gpus'\]"):
        nodes.validate_layout([{"name": "n", "gpus": 2}])


def test_schedule_quarter_gpu_on_the_time_sliced_node():
    gpu_pod = pod(gpu=1, selector={"nvidia.com/gpu.replicas": "4"}, tolerations=[GPU_TOLERATION])
    assert scheduler.decide(gpu_pod, node_objects(), []) == scheduler.Decision("gpu-ts4")


def test_cpu_pod_goes_to_the_untainted_node():
    assert scheduler.decide(pod(cpu="1"), node_objects(), []).node == "cpu-1"


def test_full_gpu_node_gives_the_kube_scheduler_message():
    full = [pod(f"b{i}", gpu=1, node="gpu-ts4", phase="Running") for i in range(4)]
    waiting = pod(gpu=1, selector={"nvidia.com/gpu.replicas": "4"}, tolerations=[GPU_TOLERATION])
    decision = scheduler.decide(waiting, node_objects(), full)
    assert decision.node is None
    assert decision.message == (
        "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, "
        "3 node(s) didn't match Pod's node affinity/selector. "
        "preemption: 0/4 nodes are available: 1 No preemption victims found for incoming pod, "
        "3 Preemption is not helpful for scheduling."
    )
    # A finished pod frees its GPU.
    full[0]["status"]["phase"] = "Succeeded"
    assert scheduler.decide(waiting, node_objects(), full).node == "gpu-ts4"


def test_untolerated_taint_message():
    decision = scheduler.decide(pod(gpu=1), node_objects(), [])
    assert decision.message == (
        "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, "
        "3 node(s) had untolerated taint {nvidia.com/gpu: present}. "
        "preemption: 0/4 nodes are available: 1 No preemption victims found for incoming pod, "
        "3 Preemption is not helpful for scheduling."
    )


def test_limits_count_as_requests_and_too_many_pods():
    layout = [{"name": "tiny", "allocatable": {"cpu": "1", "pods": "1"}}]
    big = pod(cpu="2")
    assert scheduler.decide(big, node_objects(layout), []).message == (
        "0/1 nodes are available: 1 Insufficient cpu. "
        "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    )
    other = pod("o", node="tiny", phase="Running")
    assert scheduler.decide(pod(), node_objects(layout), [other]).message == (
        "0/1 nodes are available: 1 Too many pods. "
        "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    )
    assert scheduler.pod_requests(pod(gpu=2)) == {
        "nvidia.com/gpu": Decimal(2),
        "pods": Decimal(1),
    }


def test_node_affinity_expressions():
    node = node_objects()[0]  # gpu-ts4
    p = pod()
    p["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["0"]}
                        ]
                    }
                ]
            }
        }
    }
    assert scheduler.matches_node_selector(p, node) is True
    assert scheduler.matches_node_selector(p, node_objects()[3]) is False


@pytest.mark.parametrize(
    "toleration, expected",
    [
        (GPU_TOLERATION, True),
        ({"operator": "Exists"}, True),
        ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, True),
        ({"key": "nvidia.com/gpu", "value": "absent"}, False),
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, False),
    ],
)
def test_tolerations(toleration, expected):
    assert scheduler.tolerates([toleration], nodes.GPU_TAINT) is expected


def test_merge_and_strategic_patches():
    obj = {
        "metadata": {"labels": {"a": "1", "b": "2"}},
        "spec": {"containers": [{"name": "x", "image": "1"}, {"name": "y", "image": "1"}]},
    }
    assert patching.merge_patch(obj, {"metadata": {"labels": {"a": None, "c": "3"}}})[
        "metadata"
    ] == {"labels": {"b": "2", "c": "3"}}
    merged = patching.strategic_merge_patch(
        obj, {"spec": {"containers": [{"name": "y", "image": "2"}]}}
    )
    assert merged["spec"]["containers"] == [
        {"name": "x", "image": "1"},
        {"name": "y", "image": "2"},
    ]
    assert patching.apply_patch(
        patching.JSON_PATCH,
        {"spec": {"suspend": True}},
        [{"op": "replace", "path": "/spec/suspend", "value": False}],
    ) == {"spec": {"suspend": False}}
    with pytest.raises(patching.PatchError, match="unsupported patch type: 'text/plain'"):
        patching.apply_patch("text/plain", {}, {})


def test_env_expansion_and_downward_api():
    p = {
        "metadata": {"name": "web", "namespace": "ns1", "labels": {"app": "x"}},
        "spec": {"nodeName": "cpu-1"},
    }
    secret = {"data": {"token": base64.b64encode(b"s3cret").decode()}}

    def lookup(res, ns, name):
        return secret if (res.plural, ns, name) == ("secrets", "ns1", "s") else None

    c = {
        "name": "c",
        "command": ["serve", "--ip=$(POD_IP)", "--url=$(URL)", "$$(POD_IP)", "$(UNDEFINED)"],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(POD_IP):8888"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        ],
    }
    env = containers.build_env(p, c, lookup, "127.0.10.7", "/opt/env", {"HOME": "/root"})
    assert env == {
        "HOME": "/root",
        "PATH": "/opt/env/bin:" + containers.STANDARD_PATH,
        "HOSTNAME": "web",
        "POD_IP": "127.0.10.7",
        "URL": "http://127.0.10.7:8888",
        "NAME": "web",
        "NS": "ns1",
        "NODE": "cpu-1",
        "APP": "x",
        "TOKEN": "s3cret",
    }
    assert containers.build_argv(c, env) == [
        "serve",
        "--ip=127.0.10.7",
        "--url=http://127.0.10.7:8888",
        "$(POD_IP)",
        "$(UNDEFINED)",
    ]
    missing = {
        "name": "c",
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}],
    }
    with pytest.raises(containers.ContainerConfigError, match='secret "nope" not found'):
        containers.build_env(p, missing, lookup, "127.0.10.7", "/opt/env", {})


def test_image_prefix_mapping():
    images = {"*": "/default", "quay.io/x/llm": "/llm", "busybox:1.36": "/bb"}
    assert containers.resolve_prefix("quay.io/x/llm:v2", images) == "/llm"
    assert containers.resolve_prefix("busybox:1.36", images) == "/bb"
    assert containers.resolve_prefix("busybox:1.37", images) == "/default"
    assert containers.resolve_prefix("localhost:5000/img", images) == "/default"


def test_ip_pool_skips_in_use_and_reuses_after_wraparound():
    pool = IpPool("127.0.10.253")
    assert [pool.allocate(), pool.allocate()] == ["127.0.10.253", "127.0.10.254"]
    assert pool.allocate() == "127.0.11.1"
    pool.release("127.0.10.253")
    assert pool.allocate() == "127.0.11.2"


def test_subpath_must_stay_inside_the_volume(tmp_path):
    with pytest.raises(containers.VolumeError, match="subPath '../bob' must be a relative path"):
        containers.container_mounts(
            {"volumeMounts": [{"name": "v", "mountPath": "/s", "subPath": "../bob"}]},
            {"v": str(tmp_path)},
        )
    mounts = containers.container_mounts(
        {
            "volumeMounts": [
                {"name": "v", "mountPath": "/s", "subPath": "users/alice", "readOnly": True}
            ]
        },
        {"v": str(tmp_path)},
    )
    assert mounts == [{"source": f"{tmp_path}/users/alice", "target": "/s", "readOnly": True}]
    assert (tmp_path / "users" / "alice").is_dir()


def test_ip_pool_default_is_random_per_cluster():
    """Two clusters on one machine (a dev stack and a test run) must not share pod IPs."""
    firsts = {IpPool().allocate() for _ in range(20)}
    assert len(firsts) >= 18
    for address in firsts:
        a, b, c, d = map(int, address.split("."))
        assert (a, d) == (127, 1) and 16 <= b <= 254 and 0 <= c <= 255


def _pod(psc=None, csc=None):
    container = {"name": "main", **({"securityContext": csc} if csc is not None else {})}
    return {"metadata": {"name": "p"}, "spec": {"securityContext": psc or {}}}, container


@pytest.mark.parametrize(
    ("psc", "csc", "identity"),
    [
        ({}, None, None),  # nothing set: the kubelet's own user, as before
        (
            {"runAsUser": 5, "runAsGroup": 6, "fsGroup": 7, "supplementalGroups": [8]},
            {"runAsUser": 1000, "allowPrivilegeEscalation": False},
            {"uid": 1000, "gid": 6, "groups": [8, 7], "no_new_privs": True},
        ),
        # runAsGroup unset, uid in no /etc/passwd: group 0, as containerd.
        ({}, {"runAsUser": 54321}, {"uid": 54321, "gid": 0, "groups": [], "no_new_privs": False}),
        # Only an fsGroup: added to the kubelet user's groups.
        (
            {"fsGroup": 100},
            None,
            {"uid": None, "gid": None, "groups": [100], "no_new_privs": False},
        ),
    ],
)
def test_process_identity(psc, csc, identity):
    pod, container = _pod(psc, csc)
    assert containers.process_identity(pod, container) == identity


def test_run_as_non_root_with_uid_0_is_refused():
    pod, container = _pod({"runAsNonRoot": True}, {"runAsUser": 0})
    with pytest.raises(containers.ContainerConfigError, match="breaks non-root policy"):
        containers.process_identity(pod, container)


def test_untraversable_folders(tmp_path):
    (tmp_path / "closed" / "open" / "env").mkdir(parents=True)
    (tmp_path / "closed").chmod(0o700)
    (tmp_path / "closed" / "open").chmod(0o755)
    try:
        found = containers.untraversable([str(tmp_path / "closed" / "open" / "env")], 4321, set())
        assert str(tmp_path / "closed") in found
        assert str(tmp_path / "closed" / "open") not in found
    finally:
        (tmp_path / "closed").chmod(0o755)


# -- validation (issue 14 §1) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        (validation.dns1123_subdomain, "a.b-c", []),
        (validation.dns1123_subdomain, "Bad_Name", [validation.MSG_SUBDOMAIN]),
        (validation.dns1123_subdomain, "a" * 254, ["must be no more than 253 characters"]),
        (validation.dns1123_label, "a.b", [validation.MSG_LABEL]),
        (validation.dns1123_label, "a" * 64, ["must be no more than 63 characters"]),
        (validation.dns1035_label, "1abc", [validation.MSG_DNS1035]),
        (validation.dns1035_label, "abc-1", []),
        (validation.qualified_name, "example.com/My_Name", []),
        (validation.qualified_name, "bad key!", [validation.MSG_QUALIFIED]),
        (validation.qualified_name, "Bad.Prefix/x", ["prefix part " + validation.MSG_SUBDOMAIN]),
        (validation.qualified_name, "/x", ["prefix part must be non-empty"]),
        (validation.label_value, "", []),
        (validation.label_value, "bad value!", [validation.MSG_VALUE]),
        (validation.label_value, "v" * 64, ["must be no more than 63 characters"]),
    ],
)
def test_name_and_label_rules(rule, value, expected):
    assert rule(value) == expected


def test_invalid_aggregates_errors_as_the_api_server():
    one = validation.FieldError("FieldValueRequired", "spec.containers")
    two = validation.FieldError("FieldValueInvalid", "metadata.name", "bad", "X")
    err = validation.invalid("Job", "j", [one, two], "batch")
    assert err.code == 422
    assert err.message == (
        'Job.batch "j" is invalid: [spec.containers: Required value, '
        'metadata.name: Invalid value: "X": bad]'
    )
    assert err.details["causes"][1] == {
        "reason": "FieldValueInvalid",
        "message": 'Invalid value: "X": bad',
        "field": "metadata.name",
    }


def test_schema_check_finds_every_problem_in_one_pass():
    node = schema.root_node(schema.definition_for("v1", "Pod"))
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"a": "b"}},
        "spec": {
            "containers": [{"name": 1, "image": "i", "foo": True}, {"image": "i"}],
            "tolerations": [{"key": "k", "tolerationSeconds": "300"}],
        },
    }
    found = [(p.kind, schema.field_path(p.path)) for p in schema.check(node, obj)]
    assert found == [
        ("type", "spec.containers[0].name"),
        ("unknown", "spec.containers[0].foo"),
        ("required", "spec.containers[1].name"),
        ("type", "spec.tolerations[0].tolerationSeconds"),
    ]
    good = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "i",
                    "resources": {"limits": {"cpu": 1}},
                    "ports": [{"containerPort": 80}],
                }
            ]
        },
    }
    assert schema.check(node, good) == []


def test_decode_prunes_unknown_fields_or_refuses_them_when_strict():
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "x": 1}}
    assert validation.decode("ConfigMap", "v1", obj, "Warn") == ['unknown field "metadata.x"']
    assert obj["metadata"] == {"name": "c"}
    obj["metadata"]["x"] = 1
    assert validation.decode("ConfigMap", "v1", obj, "Ignore") == []
    obj["metadata"]["x"] = 1
    with pytest.raises(Exception) as err:
        validation.decode("ConfigMap", "v1", obj, "Strict")
    assert err.value.code == 400
    assert err.value.message.endswith('strict decoding error: unknown field "metadata.x"')


def pod_spec(**changes):
    spec = {
        "containers": [{"name": "c", "image": "i:1"}],
        "tolerations": [{"key": "a", "operator": "Exists"}],
        "restartPolicy": "Always",
    }
    spec.update(changes)
    return {"spec": spec}


@pytest.mark.parametrize(
    ("change", "allowed"),
    [
        ({"containers": [{"name": "c", "image": "i:2"}]}, True),
        ({"activeDeadlineSeconds": 30}, True),
        ({"tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b"}]}, True),
        ({"tolerations": []}, False),  # removing a toleration
        ({"restartPolicy": "Never"}, False),
        ({"containers": [{"name": "c", "image": "i:1", "command": ["x"]}]}, False),
        ({"nodeSelector": {"a": "b"}}, False),
    ],
)
def test_pod_update_rules(change, allowed):
    errors = validation.validate_update("Pod", pod_spec(), pod_spec(**change))
    assert (errors == []) is allowed, errors
