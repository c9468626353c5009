"""deploy/: the kustomize tree, the storage helper pod and the two images, checked offline.

The manifests are read as plain YAML by following the kustomization ``resources:`` tree (no
kustomize binary), validated against the Kubernetes schemas of 1.32 and of the newest version
kubernetes-validate knows (strict: unknown fields fail), and compared with what the code
builds and calls: PriorityClasses, time-slicing replica counts, the RBAC verbs of every API
call, the MLflow URL. The Dockerfiles and their constraints files are checked statically
(Docker cannot build here).
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import tomllib
import yaml
from kubernetes_validate.utils import latest_version
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from llmspawner.deploy.values import CHART_VERSION
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.profiles import ClusterGPUConfig, gpu_resources, load_profiles
from llmspawner.queue.k8s_objects import build_priority_classes
from llmspawner.settings import LLMPlatform

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "manifests"
HUB_DOCKERFILE = DEPLOY / "images" / "hub" / "Dockerfile"
SINGLEUSER_DOCKERFILE = DEPLOY / "images" / "singleuser" / "Dockerfile"
VERSIONS = ["1.32", latest_version()]
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of")
CLUSTER_SCOPED = {"PriorityClass", "ClusterRole", "ClusterRoleBinding"}
HUB_SERVICE_ACCOUNT = {"kind": "ServiceAccount", "name": "hub", "namespace": "llm"}

# Every Kubernetes API call of the llm-queue service and of the spawner's capacity listing:
# client method -> (API group, resource, verb, namespaced). Where each is called:
API_CALLS = {
    # llmspawner/queue/backend.py, KubeBackend.create_job
    "create_namespaced_job": ("batch", "jobs", "create", True),
    "read_namespaced_job": ("batch", "jobs", "get", True),  # the Job existed (409)
    "create_namespaced_config_map": ("", "configmaps", "create", True),
    "replace_namespaced_config_map": ("", "configmaps", "update", True),  # existed (409)
    "patch_namespaced_config_map": ("", "configmaps", "patch", True),  # ownerReferences
    # KubeBackend.create_job (Job refused) and KubeBackend.delete_job
    "delete_namespaced_config_map": ("", "configmaps", "delete", True),
    "delete_namespaced_job": ("batch", "jobs", "delete", True),  # KubeBackend.delete_job
    # KubeBackend.create_job: the Job's MLflow token Secret (created, replaced when it existed,
    # owner-referenced to the Job, deleted when the Job is refused)
    "create_namespaced_secret": ("", "secrets", "create", True),
    "replace_namespaced_secret": ("", "secrets", "update", True),
    "patch_namespaced_secret": ("", "secrets", "patch", True),
    "delete_namespaced_secret": ("", "secrets", "delete", True),
    "list_namespaced_job": ("batch", "jobs", "list", True),  # KubeBackend.list_jobs
    # KubeBackend.list_job_pods, latest_pod, list_all_pods; capacity.ClusterLister (the spawn
    # form's and admission's one Node/Pod lister)
    "list_namespaced_pod": ("", "pods", "list", True),
    "read_namespaced_pod_log": ("", "pods/log", "get", True),  # KubeBackend.stream_log
    # KubeBackend.list_nodes; capacity.ClusterLister (llmspawner/capacity.py)
    "list_node": ("", "nodes", "list", False),
    # KubeBackend.missing_priority_classes
    "list_priority_class": ("scheduling.k8s.io", "priorityclasses", "list", False),
}
# KubeBackend.watch_changes -> _watch_one(method_name, ..., watch=True).
WATCHED = {"list_namespaced_job", "list_namespaced_pod"}
# Beyond the code: read-only Nodes is get/list/watch by the deployment contract.
CONTRACT_EXTRA = {("", "nodes"): {"get", "watch"}}
_CALL = re.compile(r"(?:\bcore|\bbatch|\bapi|\))\.((?:create|read|replace|patch|delete|list)_\w+)")


# -- reading the tree ------------------------------------------------------------------------


def _kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _resource_files(directory: Path) -> list[Path]:
    """The YAML files the kustomization of ``directory`` lists, following sub-folders."""
    files = []
    for entry in _kustomization(directory)["resources"]:
        path = directory / entry
        files.extend(_resource_files(path) if path.is_dir() else [path])
    return files


@functools.cache
def _objects() -> list[tuple[str, dict]]:
    """``(path relative to deploy/manifests, object)`` of every manifest, in tree order."""
    out = []
    for path in _resource_files(MANIFESTS):
        for obj in yaml.safe_load_all(path.read_text()):
            out.append((str(path.relative_to(MANIFESTS)), obj))
    return out


def _find(kind: str, name: str) -> dict:
    found = [o for _, o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _helm_values() -> dict:
    return yaml.safe_load((ROOT / "helm-values.yaml").read_text())


# -- the tree ----------------------------------------------------------------------------------


def test_kustomizations_are_plain_resource_lists_inside_the_tree():
    folders = sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))
    assert [str(f.relative_to(MANIFESTS)) for f in folders] == [
        ".",
        "gpu-operator",
        "mlflow",
        "queue",
        "storage",
    ]
    for folder in folders:
        k = _kustomization(folder)
        # No namespace override (it would move time-slicing-config out of gpu-operator), no
        # generators or patches reading files from elsewhere.
        assert set(k) == {"apiVersion", "kind", "resources"}, folder
        assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
        for entry in k["resources"]:
            target = (folder / entry).resolve()
            assert target.is_relative_to(MANIFESTS) and target.exists(), f"{folder}: {entry}"


def test_resources_list_every_yaml_file_once():
    listed = [p.resolve() for p in _resource_files(MANIFESTS)]
    on_disk = sorted(
        p.resolve()
        for p in MANIFESTS.rglob("*")
        if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml"
    )
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)


def test_inventory_names_and_namespaces():
    inventory = sorted(
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        for _, o in _objects()
    )
    assert inventory == [
        ("ClusterRole", "", "llm-capacity"),
        ("ClusterRoleBinding", "", "llm-capacity"),
        ("ConfigMap", "gpu-operator", "time-slicing-config"),
        ("Deployment", "llm", "mlflow"),
        ("PersistentVolumeClaim", "llm", "llm-storage"),
        ("PersistentVolumeClaim", "llm", "mlflow-data"),
        ("PriorityClass", "", "llm-high"),
        ("PriorityClass", "", "llm-low"),
        ("PriorityClass", "", "llm-normal"),
        ("Role", "llm", "llm-queue"),
        ("RoleBinding", "llm", "llm-queue"),
        ("Service", "llm", "mlflow"),
    ]
    for _, obj in _objects():
        assert ("namespace" in obj["metadata"]) == (obj["kind"] not in CLUSTER_SCOPED)


@pytest.mark.parametrize(
    "path, obj",
    _objects(),
    ids=[f"{p}:{o['kind']}/{o['metadata']['name']}" for p, o in _objects()],
)
def test_every_object_validates_and_is_labelled(path, obj):
    for version in VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)
    labels = obj["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "llmspawner"
    assert labels["app.kubernetes.io/name"]


def test_strict_validation_refuses_an_unknown_field():
    pvc = yaml.safe_load((MANIFESTS / "storage" / "llm-storage.yaml").read_text())
    pvc["spec"]["accesModes"] = ["ReadWriteMany"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pvc, "1.32", strict=True)


# -- what the code builds ----------------------------------------------------------------------


def test_priority_classes_are_the_builders_with_our_labels():
    expected = build_priority_classes()
    for pc in expected:
        pc["metadata"]["labels"].update(
            {
                "app.kubernetes.io/name": "llm-queue",
                "app.kubernetes.io/component": "queue",
                "app.kubernetes.io/part-of": "llmspawner",
            }
        )
    assert [o for _, o in _objects() if o["kind"] == "PriorityClass"] == expected


def test_generated_priority_classes_validate():
    # The user pod, and the queue's Job and ConfigMap, are validated in test_pod_manifest.py
    # and test_queue_k8s_objects.py; the PriorityClasses of the builder are validated here.
    for pc in build_priority_classes():
        for version in VERSIONS:
            kubernetes_validate.validate(pc, version, strict=True)


def test_time_slicing_matches_profiles_and_spawner():
    cm = _find("ConfigMap", "time-slicing-config")
    cluster = ClusterGPUConfig()
    replicas = {}
    for key, text in cm["data"].items():
        config = yaml.safe_load(text)
        sharing = config["sharing"]["timeSlicing"]
        assert config["version"] == "v1"
        # The operator's MIG_STRATEGY wins over a config file's flags: none are written.
        assert "flags" not in config
        assert sharing["renameByDefault"] is False
        assert sharing["failRequestsGreaterThanOne"] is True
        [resource] = sharing["resources"]
        assert resource["name"] == cluster.shared_resource == "nvidia.com/gpu"
        replicas[key] = resource["replicas"]
    assert replicas == {"replicas-4": 4, "replicas-2": 2}

    shipped = {
        p.slug: p.gpu.replicas
        for p in load_profiles(REPO_PROFILES, cluster)
        if p.gpu.kind == "fraction"
    }
    assert shipped == {"small": 4, "medium": 2}
    assert set(replicas.values()) == set(shipped.values()) == set(cluster.replica_counts)
    assert LLMPlatform.class_traits()["gpu_replica_counts"].default() == [2, 4]
    assert LLMPlatform.class_traits()["gpu_shared_resource"].default() == "nvidia.com/gpu"
    # The label GPU feature discovery puts on a node of that config is the spawner's selector.
    for profile in load_profiles(REPO_PROFILES, cluster):
        if profile.gpu.kind == "fraction":
            assert gpu_resources(profile.gpu, cluster).node_selector == {
                "nvidia.com/gpu.replicas": str(profile.gpu.replicas)
            }


def test_gpu_operator_values_match_the_configmap_and_the_settings():
    """deploy/gpu-operator-values.yaml (install and upgrade, docs/deploy.md steps 4 and 12)."""
    values = yaml.safe_load((DEPLOY / "gpu-operator-values.yaml").read_text())
    assert set(values) == {"devicePlugin", "mig", "toolkit"}
    cm = _find("ConfigMap", "time-slicing-config")
    assert values["devicePlugin"] == {"config": {"name": cm["metadata"]["name"]}}
    assert cm["metadata"]["namespace"] == "gpu-operator"
    # The strategy the profiles assume (LLMPlatform.mig_strategy's default), not the
    # operator's default `single`.
    assert values["mig"] == {"strategy": LLMPlatform.class_traits()["mig_strategy"].default()}
    assert values["mig"]["strategy"] == "mixed"
    assert values["toolkit"] == {
        "env": [{"name": "CONTAINERD_SOCKET", "value": "/run/k3s/containerd/containerd.sock"}]
    }
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert docs.count("-f deploy/gpu-operator-values.yaml") == 2  # install and upgrade
    assert not [line for line in docs.splitlines() if "--reuse-values" in line and "helm " in line]
    assert "--disable-openapi-validation -f deploy/gpu-operator-values.yaml" in docs


# -- RBAC --------------------------------------------------------------------------------------


def _calls_in(module: str) -> set[str]:
    return set(_CALL.findall((ROOT / "llmspawner" / module).read_text()))


def test_api_call_table_lists_every_call_of_the_code():
    backend = (ROOT / "llmspawner" / "queue" / "backend.py").read_text()
    code = _calls_in("queue/backend.py") | _calls_in("capacity.py")
    assert code == set(API_CALLS)
    assert set(re.findall(r'"(list_namespaced_\w+)"', backend)) == WATCHED
    assert "watch=True" in backend


def test_the_hubs_own_pod_calls_are_in_z2jhs_hub_role():
    """The spawner's retried create/read/delete and the orphan reconciler run in the hub pod
    under the chart's Role ``hub`` (not the queue kit's Role): each call they make is one of
    its verbs, so a real install never answers them 403."""
    from llmspawner_dev.identities import Z2JH_HUB_RULES

    verbs = {"create": "create", "read": "get", "list": "list", "delete": "delete"}
    allowed = {
        (group, resource, verb)
        for rule in Z2JH_HUB_RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    calls = _calls_in("spawner.py") | _calls_in("reconciler.py")
    assert calls >= {"create_namespaced_pod", "delete_namespaced_pod"}
    for call in calls:
        verb, _, rest = call.partition("_namespaced_")
        resource = {"pod": "pods"}[rest]
        assert ("", resource, verbs[verb]) in allowed, call


def _rules(obj: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in obj["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def _expected(namespaced: bool) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for method, (group, resource, verb, in_namespace) in API_CALLS.items():
        if in_namespace == namespaced:
            out.setdefault((group, resource), set()).add(verb)
            if method in WATCHED:
                out[(group, resource)].add("watch")
    return out


def test_queue_role_has_exactly_the_verbs_of_the_code():
    assert _rules(_find("Role", "llm-queue")) == _expected(namespaced=True)
    assert _expected(namespaced=True) == {
        ("batch", "jobs"): {"create", "delete", "get", "list", "watch"},
        ("", "configmaps"): {"create", "delete", "patch", "update"},
        ("", "secrets"): {"create", "delete", "patch", "update"},
        ("", "pods"): {"list", "watch"},
        ("", "pods/log"): {"get"},
    }


def test_capacity_cluster_role_reads_nodes_and_priority_classes():
    expected = _expected(namespaced=False)
    for key, verbs in CONTRACT_EXTRA.items():
        expected[key] |= verbs
    assert (
        _rules(_find("ClusterRole", "llm-capacity"))
        == expected
        == {
            ("", "nodes"): {"get", "list", "watch"},
            ("scheduling.k8s.io", "priorityclasses"): {"list"},
        }
    )


@pytest.mark.parametrize(
    "kind, name, role_kind",
    [("RoleBinding", "llm-queue", "Role"), ("ClusterRoleBinding", "llm-capacity", "ClusterRole")],
)
def test_bindings_give_the_roles_to_the_hub_service_account(kind, name, role_kind):
    binding = _find(kind, name)
    assert binding["subjects"] == [HUB_SERVICE_ACCOUNT]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role_kind,
        "name": name,
    }


# -- storage and MLflow ------------------------------------------------------------------------


def test_shared_pvc_is_read_write_many_and_the_spawners_claim():
    pvc = _find("PersistentVolumeClaim", "llm-storage")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert LLMPlatform.class_traits()["storage_claim_name"].default() == "llm-storage"
    assert _helm_values()["hub"]["config"]["LLMPlatform"]["storage_claim_name"] == "llm-storage"


def test_mlflow_service_reaches_the_deployment_at_the_configured_url():
    service, deployment = _find("Service", "mlflow"), _find("Deployment", "mlflow")
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    [container] = template["spec"]["containers"]
    [container_port] = container["ports"]
    assert port == {"name": "http", "port": 5000, "targetPort": "http", "protocol": "TCP"}
    assert container_port == {"name": "http", "containerPort": 5000, "protocol": "TCP"}
    meta = service["metadata"]
    url = f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local:{port['port']}"
    assert url == "http://mlflow.llm.svc.cluster.local:5000"
    # MLflow serves under the hub service's prefix (--static-prefix /services/mlflow, docs/mlflow.md).
    tracking_uri = _helm_values()["hub"]["config"]["LLMPlatform"]["mlflow_tracking_uri"]
    assert tracking_uri == url + "/services/mlflow"


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_mlflow_deployment_settings():
    deployment = _find("Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    auth, upgrade = pod["initContainers"]
    [server] = pod["containers"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert [auth["name"], upgrade["name"], server["name"]] == ["auth", "db-upgrade", "mlflow"]
    # The auth module comes from the hub image, the same llmspawner as the hub's: its tag is
    # the hub's (docs/deploy.md, upgrades: bump both).
    hub_image = _helm_values()["hub"]["image"]
    assert (
        auth["image"] == f"{hub_image['name']}:{hub_image['tag']}" == "ghcr.io/llmspawner/hub:0.1.0"
    )
    assert upgrade["image"] == server["image"] == "ghcr.io/mlflow/mlflow:v3.17.2-full"
    for container in (auth, upgrade, server):
        assert container["command"] == ["/bin/sh", "-c"]
    # auth: writes the auth app's config (auth database on the PVC unless mlflow-db says
    # otherwise) into the emptyDir /auth, which the server mounts read-only.
    [auth_args] = auth["args"]
    assert auth_args.split() == [
        "export",
        'LLMSPAWNER_MLFLOW_AUTH_DB_URL="${MLFLOW_AUTH_DB_URL:-sqlite:////mlflow/basic_auth.db}"',
        "&&",
        "exec",
        "python3",
        "-m",
        "llmspawner.mlflow_auth",
        "install",
        "/auth",
    ]
    assert _env(auth) == {
        "MLFLOW_AUTH_DB_URL": {
            "secretKeyRef": {"name": "mlflow-db", "key": "auth-url", "optional": True}
        },
        "MLFLOW_AUTH_ADMIN_USERNAME": "llmspawner/admin",
    }
    assert auth["volumeMounts"] == [{"name": "auth", "mountPath": "/auth"}]
    # db-upgrade: `mlflow db upgrade` called in Python with the URL from the environment.
    [upgrade_args] = upgrade["args"]
    assert upgrade_args.startswith(
        'export MLFLOW_BACKEND_STORE_URI="${MLFLOW_DB_URL:-sqlite:////mlflow/mlflow.db}" && exec python3 -c '
    )
    assert "['mlflow', 'db', 'upgrade', os.environ['MLFLOW_BACKEND_STORE_URI']]" in upgrade_args
    # The server: the URL from MLflow's own variable (never an argument), the auth app, the
    # hub service's prefix, and the proxied artifact store (mlflow-artifacts:, on the PVC).
    [server_args] = server["args"]
    assert server_args.split() == [
        "export",
        'MLFLOW_BACKEND_STORE_URI="${MLFLOW_DB_URL:-sqlite:////mlflow/mlflow.db}"',
        "&&",
        "exec",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--static-prefix",
        "/services/mlflow",
        "--serve-artifacts",
        "--artifacts-destination",
        "/mlflow/artifacts",
        "--host",
        "0.0.0.0",
        "--port",
        "5000",
        "--workers",
        "2",
    ]
    for container in (upgrade, server):
        assert "--backend-store-uri" not in container["args"][0]
    secret = {"secretKeyRef": {"name": "mlflow-db", "key": "url", "optional": True}}
    assert _env(upgrade)["MLFLOW_DB_URL"] == _env(server)["MLFLOW_DB_URL"] == secret
    env = _env(server)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/auth/basic_auth.ini"
    assert env["PYTHONPATH"] == "/auth"
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "llmspawner/admin"
    for name, key in (
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-password"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key"),
        ("JUPYTERHUB_API_TOKEN", "service-token"),
    ):
        assert env[name] == {"secretKeyRef": {"name": "mlflow-auth", "key": key}}, name
    assert env["JUPYTERHUB_API_URL"] == "http://hub.llm.svc.cluster.local:8081/hub/api"
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/services/mlflow/"
    assert env["LLMSPAWNER_MLFLOW_ADMIN_GROUPS"] == "llm-admins"
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert {
        "llm.example.org",
        "mlflow.llm.svc.cluster.local:5000",
        "mlflow:5000",
        "localhost:*",
    } <= set(hosts)
    assert env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] == "https://llm.example.org"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    # The probes ask MLflow's health page under the prefix (exempt from the host check).
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/services/mlflow/health", "port": "http"}
    assert (
        server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] == 120
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["automountServiceAccountToken"] is False
    for container in (auth, upgrade, server):
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert set(container["resources"]) == {"requests", "limits"}
    assert {"name": "auth", "mountPath": "/auth", "readOnly": True} in server["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"] == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": "mlflow-data"},
    }
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "2Gi"}
    assert volumes["auth"]["emptyDir"] == {"sizeLimit": "16Mi"}
    # The hub's network policy lets MLflow reach the hub's API (token checks).
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["hub.jupyter.org/network-access-hub"] == "true"
    # The server and the users' client are the same MLflow version.
    assert _pins(SINGLEUSER_DOCKERFILE.parent)["mlflow-skinny"] == "3.17.2"


def test_storage_helper_pod():
    pod = yaml.safe_load((DEPLOY / "storage-helper.yaml").read_text())
    for version in VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    assert pod["metadata"]["namespace"] == "llm"
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "llmspawner"
    assert pod["spec"]["volumes"] == [
        {"name": "llm-storage", "persistentVolumeClaim": {"claimName": "llm-storage"}}
    ]
    assert pod["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "llm-storage", "mountPath": "/storage"}
    ]
    assert (
        pod["spec"]["securityContext"]["runAsUser"],
        pod["spec"]["securityContext"]["runAsGroup"],
    ) == (1000, 100)


# -- images ------------------------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def _only(dockerfile: Path, instruction: str) -> list[str]:
    return [args for ins, args in _instructions(dockerfile) if ins == instruction]


def _pins(folder: Path) -> dict[str, str]:
    pins = {}
    for line in (folder / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([a-z0-9][a-z0-9.-]*)==([0-9][^\s=;]*)", line)
            assert m, f"{folder.name}/constraints.txt: not pinned with ==: {line!r}"
            assert m[1] == canonicalize_name(m[1]) and m[1] not in pins, line
            pins[m[1]] = m[2]
    return pins


def _pip_install_args(dockerfile: Path) -> list[str]:
    """The requirement arguments of every ``pip install`` (options left out)."""
    args = []
    for run in _only(dockerfile, "RUN"):
        tokens = shlex.split(run)
        for i, token in enumerate(tokens[:-1]):
            if token == "pip" and tokens[i + 1] == "install":
                end = tokens.index("&&", i) if "&&" in tokens[i:] else len(tokens)
                args += [t for t in tokens[i + 2 : end] if not t.startswith("-")]
    return args


def _chart_versions_in_docs() -> set[str]:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    return set(
        re.findall(
            r"helm upgrade --install llm jupyterhub/jupyterhub --version (\S+) -n llm -f helm-values\.yaml",
            docs,
        )
    )


@pytest.mark.parametrize(
    "dockerfile", [HUB_DOCKERFILE, SINGLEUSER_DOCKERFILE], ids=["hub", "singleuser"]
)
def test_base_image_is_pinned(dockerfile):
    [base] = _only(dockerfile, "FROM")
    image, _, tag = base.rpartition(":")
    assert image and tag and tag != "latest" and "$" not in base and " " not in base


def test_hub_base_is_the_chart_version_of_the_docs():
    assert _chart_versions_in_docs() == {CHART_VERSION} == {"4.4.0"}
    assert _only(HUB_DOCKERFILE, "FROM") == [f"quay.io/jupyterhub/k8s-hub:{CHART_VERSION}"]
    assert _only(HUB_DOCKERFILE, "USER")[-1] == "1000"
    # The values file names the same chart version in its header.
    header = (ROOT / "helm-values.yaml").read_text().splitlines()[0]
    assert f"chart jupyterhub/jupyterhub {CHART_VERSION}" in header


@pytest.mark.parametrize(
    "dockerfile, extra",
    [(HUB_DOCKERFILE, "hub"), (SINGLEUSER_DOCKERFILE, "singleuser")],
    ids=["hub", "singleuser"],
)
def test_every_requirement_is_pinned_and_satisfies_pyproject(dockerfile, extra):
    pins = _pins(dockerfile.parent)
    args = _pip_install_args(dockerfile)
    assert f"/tmp/llmspawner/src[{extra}]" in args
    for arg in args:
        if arg == f"/tmp/llmspawner/src[{extra}]":
            continue
        name, _, version = arg.partition("==")
        assert version and pins[canonicalize_name(name)] == version, arg
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"] + project["optional-dependencies"][extra]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{line} has no pin"
        assert req.specifier.contains(pins[name], prereleases=True), f"{line} != {pins[name]}"
    # The build backend is pinned too (PIP_CONSTRAINT reaches pip's build environment).
    [backend] = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert Requirement(backend).specifier.contains(pins["hatchling"])
    assert "PIP_CONSTRAINT=/tmp/llmspawner/constraints.txt" in " ".join(_only(dockerfile, "RUN"))


def _dev_jupyterhub_pin() -> str:
    """The ``jupyterhub==X`` of pyproject.toml's [dev] extra, which the test suite runs on."""
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [pin] = [
        Requirement(r) for r in dev["dev"] if canonicalize_name(Requirement(r).name) == "jupyterhub"
    ]
    [spec] = pin.specifier
    assert spec.operator == "=="
    return spec.version


def test_hub_user_and_test_jupyterhub_agree():
    hub, user = _pins(HUB_DOCKERFILE.parent), _pins(SINGLEUSER_DOCKERFILE.parent)
    # 5.5.1 and later fix the advisories of the base image's 5.5.0 (constraints.txt's header);
    # jupyterhub-singleuser in the user's pod talks to the hub, so it is the same version, and
    # the test suite runs on it (issue 12: the tests run on the version the image ships).
    assert hub["jupyterhub"] == user["jupyterhub"] == _dev_jupyterhub_pin() == "5.5.4"
    assert Version(hub["jupyterhub"]) >= Version("5.5.1")
    assert hub["oauthenticator"] == "17.4.0"  # the base image's (k8s-hub 4.4.0)
    # Moved to pyproject.toml's minimums.
    assert (hub["jupyterhub-kubespawner"], hub["jupyterhub-idle-culler"]) == ("7.1.0", "2.0.0")
    # The hub image installs no jupyterhub of its own over the constraints.
    assert all(
        canonicalize_name(a.partition("==")[0]) != "jupyterhub"
        for a in _pip_install_args(HUB_DOCKERFILE)
    )


def test_hub_image_changes_only_the_three_moved_base_packages():
    """The build compares ``pip freeze`` before and after and allows exactly these three."""
    run = " ".join(_only(HUB_DOCKERFILE, "RUN"))
    assert "pip freeze --all > /tmp/llmspawner/before.txt" in run
    assert "pip freeze --all > /tmp/llmspawner/after.txt" in run
    assert "expected = ['jupyterhub', 'jupyterhub-idle-culler', 'jupyterhub-kubespawner']" in run
    assert "assert jupyterhub.__version__ == '5.5.4'" in run
    assert "pip check" in run


def test_singleuser_image():
    dockerfile = SINGLEUSER_DOCKERFILE
    [base] = _only(dockerfile, "FROM")
    pins = _pins(dockerfile.parent)
    m = re.fullmatch(r"pytorch/pytorch:([0-9.]+)-cuda[0-9.]+-cudnn[0-9]+-runtime", base)
    assert m and pins["torch"] == m[1] == "2.9.1"
    assert pins["llamafactory"] == "0.9.5"
    assert "useradd --uid 1000 --gid 100 --create-home --home-dir /home/jovyan" in " ".join(
        _only(dockerfile, "RUN")
    )
    assert _only(dockerfile, "USER")[-1] == "1000"
    assert _only(dockerfile, "WORKDIR") == ["/home/jovyan"]
    env = _only(dockerfile, "ENV")[0].split()
    assert "HOME=/home/jovyan" in env
    # The base image's NVIDIA_VISIBLE_DEVICES=all would show every GPU of the node to a pod
    # without a GPU request under the NVIDIA runtime; `void` behaves as runc.
    assert "NVIDIA_VISIBLE_DEVICES=void" in env
    # Offline sites: build arguments, upstream's behaviour by default.
    assert {
        "HF_HUB_OFFLINE=${HF_HUB_OFFLINE}",
        "MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY}",
    } <= set(env)
    assert _only(dockerfile, "ARG") == ["HF_HUB_OFFLINE=0", "MLFLOW_DISABLE_TELEMETRY=false"]
    # The activity extension must be enabled and load, not only be listed.
    run = " ".join(_only(dockerfile, "RUN"))
    assert "grep -qE 'llmspawner\\.singleuser\\.activity .*enabled'" in run
    assert "grep -qE 'llmspawner\\.singleuser\\.activity +.*OK'" in run
    assert _only(dockerfile, "EXPOSE") == ["8888"]
    assert _only(dockerfile, "CMD") == ['["jupyterhub-singleuser"]']


def test_dockerignore_keeps_out_the_bulk_and_in_what_the_images_copy():
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert {".venv", "test-artifacts", "node_modules", "**/node_modules", ".git"} <= set(patterns)
    copied = set()
    for dockerfile in (HUB_DOCKERFILE, SINGLEUSER_DOCKERFILE):
        for args in _only(dockerfile, "COPY"):
            copied.update(args.split()[:-1])
    assert copied == {
        "pyproject.toml",
        "README.md",
        "jupyter-config",
        "llmspawner",
        "deploy/images/hub/constraints.txt",
        "deploy/images/singleuser/constraints.txt",
    }
    for source in copied:
        parts = Path(source).parts
        prefixes = {"/".join(parts[: i + 1]) for i in range(len(parts))}
        assert not prefixes & set(patterns), source


def test_docs_mlflow_secret_backup_and_uninstall_match_the_manifest():
    """docs/deploy.md's mlflow-auth command, backup and uninstall use what the manifest does."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    pod = _find("Deployment", "mlflow")["spec"]["template"]["spec"]
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for c in [*pod["initContainers"], *pod["containers"]]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    manifest_keys = {key for name, key in refs if name == "mlflow-auth"}
    [command] = re.findall(
        r"kubectl create secret generic mlflow-auth -n llm((?:[^\n]*\\\n)*[^\n]*)", docs
    )
    assert (
        set(re.findall(r"--from-literal=([a-z-]+)=", command))
        == manifest_keys
        == {
            "admin-password",
            "service-token",
            "flask-secret-key",
        }
    )
    # The SQLite databases the manifest defaults to are the ones backed up, and the copies
    # are written on the PVC (mounted at /mlflow), not into the 2 GiB /tmp emptyDir.
    args = " ".join(c["args"][0] for c in [*pod["initContainers"], *pod["containers"]])
    databases = set(re.findall(r"sqlite:////mlflow/(\w+)\.db", args))
    assert databases == {"mlflow", "basic_auth"}
    assert "for n in ('mlflow', 'basic_auth'):" in docs
    mlflow_exec = [line for line in docs.splitlines() if "deploy/mlflow -c mlflow --" in line]
    assert mlflow_exec and not [line for line in mlflow_exec if "/tmp" in line]
    [server] = pod["containers"]
    assert {"name": "data", "mountPath": "/mlflow"} in server["volumeMounts"]
    assert "kubectl delete secret llm-oidc mlflow-auth mlflow-db -n llm --ignore-not-found" in docs
    # The UI and in-cluster URLs of the docs are the service prefix's.
    assert "https://$HUB_HOST/services/mlflow/" in docs
    assert "http://mlflow.llm.svc.cluster.local:5000/services/mlflow" in docs
