"""``llmspawner deploy check``: the shipped files pass; broken copies give the exact lines."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from llmspawner.cli import main
from llmspawner.deploy import check, llm_values, manifests, values
from llmspawner.deploy.problems import Problem, format_path
from llmspawner.settings import LLMPlatform

ROOT = Path(__file__).resolve().parents[2]
SHARED_Z2JH = ROOT.parent / "shared" / "z2jh"
VENDORED_Z2JH = ROOT / "llmspawner" / "deploy" / "z2jh"
VERSIONS = manifests.kubernetes_versions()
K8S = " and ".join(VERSIONS)

# A small kustomize tree shaped like deploy/manifests: two files, three objects.
SAMPLE_TREE = {
    "kustomization.yaml": """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: llm
resources:
  - storage.yaml
  - priorities.yaml
""",
    "storage.yaml": """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: llm-storage}
spec:
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 500Gi}}
""",
    "priorities.yaml": """\
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: llm-high}
value: 1000
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: llm-low}
value: 10
""",
}

# Two invalid objects: accessModes must be a list; a Deployment needs a selector.
BROKEN_MANIFEST = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: scratch}
spec:
  accessModes: ReadWriteMany
  resources: {requests: {storage: 1Gi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
"""


def write_tree(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def deployment(tmp_path, monkeypatch):
    """A copy of the shipped helm-values.yaml, profiles/ and deploy/manifests/, as the cwd."""
    shutil.copy(ROOT / "helm-values.yaml", tmp_path / "helm-values.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    shutil.copytree(ROOT / "deploy" / "manifests", tmp_path / "deploy" / "manifests")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def sample_deployment(deployment):
    """:func:`deployment` with :data:`SAMPLE_TREE` as its manifests (known object counts)."""
    shutil.rmtree(deployment / "deploy" / "manifests")
    write_tree(deployment / "deploy" / "manifests", SAMPLE_TREE)
    return deployment


# The summary of a clean run of the shipped files; the counts follow the shipped files.
CLEAN_SUMMARY = re.compile(
    r"deploy check: no problems \(helm-values\.yaml against the z2jh chart schema; "
    r"\d+ profiles in profiles; \d+ objects in \d+ files of deploy/manifests against "
    rf"Kubernetes {re.escape(K8S)}\)"
)


def run_check(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(["deploy", "check", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


# --- the vendored chart data -------------------------------------------------------------


@pytest.mark.skipif(not SHARED_Z2JH.is_dir(), reason=f"no shared chart data at {SHARED_Z2JH}")
@pytest.mark.parametrize("name", ["values.schema.yaml", "values.yaml", "LICENSE"])
def test_vendored_chart_data_is_identical_to_shared(name):
    assert (VENDORED_Z2JH / name).read_bytes() == (SHARED_Z2JH / name).read_bytes()


def test_chart_data_loads_from_the_package():
    assert values.chart_schema()["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert values.chart_defaults()["cull"]["enabled"] is True


# --- the shipped files ---------------------------------------------------------------------


def test_shipped_files_pass(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, lines, err = run_check(capsys)
    assert len(lines) == 1 and CLEAN_SUMMARY.fullmatch(lines[0]), lines
    assert (code, err) == (0, "")


def test_shipped_values_and_profiles_pass_with_sample_manifests(sample_deployment, capsys):
    code, lines, err = run_check(capsys)
    assert lines == [
        (
            "deploy check: no problems (helm-values.yaml against the z2jh chart schema; "
            f"4 profiles in profiles; 3 objects in 2 files of deploy/manifests against Kubernetes {K8S})"
        )
    ]
    assert (code, err) == (0, "")


def test_broken_copy_gives_one_exact_line_per_problem(deployment, capsys):
    helm = deployment / "helm-values.yaml"
    data = yaml.safe_load(helm.read_text())
    data["singleuser"]["storage"]["type"] = "bogus"
    helm.write_text(yaml.safe_dump(data))
    (deployment / "profiles" / "broken.yaml").write_text(
        "slug: broken\ndisplay_name: Broken\nidle_timeout: soon\n"
    )
    tree = deployment / "deploy" / "manifests"
    (tree / "broken.yaml").write_text(BROKEN_MANIFEST)
    kustomization = yaml.safe_load((tree / "kustomization.yaml").read_text())
    kustomization["resources"].append("broken.yaml")
    (tree / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    code, [*lines, summary], err = run_check(capsys)

    assert lines == [
        "helm-values.yaml: singleuser.storage.type: must be one of dynamic, static, none; got 'bogus'",
        "profiles/broken.yaml: idle_timeout: must be a positive whole number of seconds, not 'soon'",
        "deploy/manifests/broken.yaml: PersistentVolumeClaim/scratch: spec.accessModes: must be an array or null, not 'ReadWriteMany'",
        "deploy/manifests/broken.yaml: Deployment/web: spec.selector: is required",
    ]
    assert re.fullmatch(
        r"deploy check: 4 problems \(helm-values\.yaml against the z2jh chart schema; "
        r"5 profiles in profiles; \d+ objects in \d+ files of deploy/manifests against "
        rf"Kubernetes {re.escape(K8S)}\)",
        summary,
    )
    assert (code, err) == (1, "")


def test_missing_path_is_a_usage_error(deployment, capsys):
    code, lines, err = run_check(capsys, "--manifests", "nowhere")
    assert (code, lines) == (2, [])
    assert err == "llmspawner deploy check: nowhere: no such file or folder\n"


def test_deploy_without_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["deploy"])
    assert e.value.code == 2
    assert "the following arguments are required: <check>" in capsys.readouterr().err


def test_paths_are_options(deployment, capsys, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    shutil.move(deployment / "profiles", other / "gpu-profiles")
    shutil.move(deployment / "helm-values.yaml", other / "values.yaml")
    (other / "objects.yaml").write_text(SAMPLE_TREE["priorities.yaml"])
    code, lines, _ = run_check(
        capsys,
        "--values",
        str(other / "values.yaml"),
        "--profiles",
        str(other / "gpu-profiles"),
        "--manifests",
        str(other / "objects.yaml"),
    )
    assert lines == [
        (
            f"deploy check: no problems ({other}/values.yaml against the z2jh chart schema; "
            f"4 profiles in {other}/gpu-profiles; 2 objects in 1 file of {other}/objects.yaml "
            f"against Kubernetes {K8S})"
        )
    ]
    assert code == 0


# --- values: Helm's merge and the chart's schema ------------------------------------------


def test_helm_merge_merges_maps_replaces_lists_and_null_deletes():
    defaults = {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": 1}}
    merged = values.helm_merge(defaults, {"a": {"c": [3]}, "d": None, "g": 2})
    assert merged == {"a": {"b": 1, "c": [3]}, "e": {"f": 1}, "g": 2}
    assert defaults == {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": 1}}


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (
            {"cull": {"enabled": "yes"}},
            ["v.yaml: cull.enabled: must be a boolean, not 'yes'"],
        ),
        (
            {"hub": {"db": {"type": "sqlite"}}},
            [
                "v.yaml: hub.db.type: must be one of sqlite-pvc, sqlite-memory, mysql, postgres, other; got 'sqlite'"
            ],
        ),
        (
            {"singleuser": {"image": {"pullPolicy": "Sometimes"}}},
            [
                "v.yaml: singleuser.image.pullPolicy: must be one of null, \"\", IfNotPresent, Always, Never; got 'Sometimes'"
            ],
        ),
        (
            {"cull": {"enabled": False, "sometimes": 1}},
            [
                "v.yaml: cull.sometimes: unknown key; allowed keys: enabled, users, adminUsers, removeNamedServers, timeout, every, concurrency, maxAge"
            ],
        ),
        (
            {"cull": None},
            ["v.yaml: cull: is required"],
        ),
    ],
)
def test_schema_problems_name_the_path_and_the_allowed_values(user, expected):
    merged = values.helm_merge(values.chart_defaults(), user)
    problems = values.schema_problems(merged, values.chart_schema(), file="v.yaml")
    assert [p.line() for p in problems] == expected


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], ""),
        (["hub", "extraEnv", 0, "name"], "hub.extraEnv[0].name"),
        (
            ["spec", "nodeSelector", "nvidia.com/gpu.replicas"],
            'spec.nodeSelector["nvidia.com/gpu.replicas"]',
        ),
        ([0, "a"], "[0].a"),
    ],
)
def test_format_path(parts, expected):
    assert format_path(parts) == expected


# --- values: what llmspawner needs ---------------------------------------------------------


def shipped_values() -> dict:
    user = yaml.safe_load((ROOT / "helm-values.yaml").read_text())
    return values.helm_merge(values.chart_defaults(), user)


def test_shipped_values_meet_llmspawner_checks():
    assert llm_values.llmspawner_problems(shipped_values(), file="v.yaml") == []


_DELETE = object()


def _set(tree: dict, dotted: str, value) -> None:
    """Set (or with ``_DELETE`` remove) the key at a dotted path, creating maps on the way."""
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    if value is _DELETE:
        tree.pop(last, None)
    else:
        tree[last] = value


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"hub.config.JupyterHub.spawner_class": "kubespawner.KubeSpawner"},
            "v.yaml: hub.config.JupyterHub.spawner_class: must be one of llm, llmspawner.spawner.LLMSpawner, llmspawner.LLMSpawner; got 'kubespawner.KubeSpawner'",
        ),
        (
            {"hub.config.JupyterHub.spawner_class": _DELETE},
            "v.yaml: hub.config.JupyterHub.spawner_class: is not set (the chart then uses KubeSpawner); set it to one of llm, llmspawner.spawner.LLMSpawner, llmspawner.LLMSpawner",
        ),
        (
            # Deleted from our values, the chart's default `dummy` comes back.
            {"hub.config.JupyterHub.authenticator_class": "dummy"},
            "v.yaml: hub.config.JupyterHub.authenticator_class: must name a real login, e.g. llm-oauth (OIDC, see hubconfig); got 'dummy', with which anyone logs in",
        ),
        # The login re-checks the IdP's groups at each auth refresh (issue 12 §4).
        (
            {"hub.config.JupyterHub.authenticator_class": "generic-oauth"},
            "v.yaml: hub.config.JupyterHub.authenticator_class: 'generic-oauth' reads the identity provider's groups at login only (a user removed from the allowed groups keeps access until their hub session ends): use llm-oauth (llmspawner.auth.LLMOAuthenticator, the same settings), which re-checks them at each auth refresh",
        ),
        (
            {"hub.extraEnv.JUPYTERHUB_CRYPT_KEY": _DELETE},
            "v.yaml: hub.extraEnv.JUPYTERHUB_CRYPT_KEY: is not set: without it the hub keeps no auth state and llm-oauth reads the groups at login only; set it from the chart's Secret (valueFrom.secretKeyRef name hub, key hub.config.CryptKeeper.keys)",
        ),
        (
            {"hub.extraEnv.JUPYTERHUB_CRYPT_KEY": "ab" * 32},
            "v.yaml: hub.extraEnv.JUPYTERHUB_CRYPT_KEY: secret JUPYTERHUB_CRYPT_KEY is set as a literal value; read it from a Kubernetes Secret with valueFrom.secretKeyRef",
        ),
        (
            {
                "hub.extraEnv.JUPYTERHUB_CRYPT_KEY": {
                    "valueFrom": {"secretKeyRef": {"name": "hub", "key": "crypt-key"}}
                }
            },
            "v.yaml: hub.extraEnv.JUPYTERHUB_CRYPT_KEY: the chart's Secret hub has no key 'crypt-key'; its CryptKeeper key is hub.config.CryptKeeper.keys",
        ),
        (
            {
                "hub.extraEnv.JUPYTERHUB_CRYPT_KEY": {
                    "valueFrom": {"secretKeyRef": {"name": "my-keys", "key": "crypt"}}
                }
            },
            "v.yaml: hub.extraEnv.JUPYTERHUB_CRYPT_KEY: warning: the hub's CryptKeeper key is the chart's (Secret hub, key hub.config.CryptKeeper.keys), which the chart sets as c.CryptKeeper.keys; Secret my-keys must hold the same key, or set hub.config.CryptKeeper.keys to it",
        ),
        (
            {"hub.config.JupyterHub.last_activity_interval": _DELETE},
            "v.yaml: hub.config.JupyterHub.last_activity_interval: must be 0: the proxy counts LlamaBoard's polling as activity, so idle servers would never be culled; got not set (the chart then uses 60)",
        ),
        # The proxy's routes are repaired by someone (issue 17).
        (
            {"hub.extraEnv.LLMSPAWNER_ROUTE_REPAIR_INTERVAL": "0"},
            'v.yaml: hub.extraEnv.LLMSPAWNER_ROUTE_REPAIR_INTERVAL: warning: is 0 and so is hub.config.JupyterHub.last_activity_interval: nothing repairs the proxy\'s routes, so after the proxy pod restarts servers and services answer 500 "Redirect loop detected" until the hub restarts; set it to e.g. 30 (seconds)',
        ),
        (
            {"hub.extraEnv.LLMSPAWNER_ROUTE_REPAIR_INTERVAL": "30s"},
            "v.yaml: hub.extraEnv.LLMSPAWNER_ROUTE_REPAIR_INTERVAL: LLMSPAWNER_ROUTE_REPAIR_INTERVAL must be a whole number of seconds >= 0, not '30s': the hub refuses to start",
        ),
        (
            {"hub.extraEnv.LLMSPAWNER_ALLOWED_GROUPS": _DELETE},
            "v.yaml: hub.extraEnv: sets no login rule: set LLMSPAWNER_ALLOWED_GROUPS or LLMSPAWNER_ALLOW_ALL (or hub.config.GenericOAuthenticator.allowed_groups); without one the hub refuses to start",
        ),
        (
            {"singleuser.storage.type": "dynamic"},
            "v.yaml: singleuser.storage.type: must be none (LLMSpawner mounts each user's folder of the shared PVC itself); got 'dynamic'",
        ),
        (
            {"cull.enabled": True},
            "v.yaml: cull.enabled: must be false: llmspawner's own culler (per-profile idle_timeout) replaces the chart's; got True",
        ),
        (
            {
                "hub.extraConfig": {
                    "x": "from llmspawner.hubconfig import configure_spawner\nconfigure_spawner(c)\n"
                }
            },
            "v.yaml: hub.extraConfig: must call llmspawner.hubconfig.configure(c) (the spawner's profiles, the idle culler and the batch queue) (it calls only configure_spawner)",
        ),
        (
            {"hub.extraConfig": {"x": "import llmspawner\n"}},
            "v.yaml: hub.extraConfig: must call llmspawner.hubconfig.configure(c) (the spawner's profiles, the idle culler and the batch queue)",
        ),
        (
            {"hub.config.LLMPlatform.profiles_dir": _DELETE},
            "v.yaml: hub.config.LLMPlatform.profiles_dir: is not set: set it to the mountPath of the profiles' volume in hub.extraVolumeMounts",
        ),
        (
            {"hub.config.LLMPlatform.profiles_dir": "/etc/profiles"},
            "v.yaml: hub.config.LLMPlatform.profiles_dir: /etc/profiles is not inside any hub.extraVolumeMounts mountPath (mounted: /usr/local/etc/llmspawner/profiles); mount the profiles' ConfigMap there",
        ),
        # Before issue 11 these were LLMSpawner's; there they would be ignored now.
        (
            {"hub.config.LLMSpawner.storage_claim_name": "llm-storage"},
            "v.yaml: hub.config.LLMSpawner.storage_claim_name: moved: set hub.config.LLMPlatform.storage_claim_name instead; LLMSpawner no longer reads it",
        ),
        (
            {"hub.config.LLMPlatform.mig_strategy": "both"},
            "v.yaml: hub.config.LLMPlatform.mig_strategy: LLMPlatform.mig_strategy (LLMSPAWNER_MIG_STRATEGY) expected any of ['mixed', 'single'], not the str 'both'.",
        ),
        (
            {"hub.config.LLMPlatform.profile_dir": "/x"},
            # Every setting of LLMPlatform is listed, sorted (the list grows with the settings).
            "v.yaml: hub.config.LLMPlatform: it names unknown setting(s) profile_dir (did you mean profiles_dir?); known: "
            + ", ".join(sorted(LLMPlatform.class_trait_names(config=True))),
        ),
        (
            {"hub.extraEnv.LLMSPAWNER_GPU_REPLICA_COUNTS": "1"},
            "v.yaml: hub.config.LLMPlatform: LLMPlatform.gpu_replica_counts must list whole numbers >= 2 (the nvidia.com/gpu.replicas values of time-sliced nodes), not [1]",
        ),
        (
            {"hub.extraVolumes": []},
            "v.yaml: hub.extraVolumeMounts[0].name: no hub.extraVolumes entry is named 'llm-profiles' (volumes: none)",
        ),
        (
            {"hub.extraEnv.OAUTH_CLIENT_SECRET": "hunter2"},
            "v.yaml: hub.extraEnv.OAUTH_CLIENT_SECRET: secret OAUTH_CLIENT_SECRET is set as a literal value; read it from a Kubernetes Secret with valueFrom.secretKeyRef",
        ),
        (
            {
                "hub.extraEnv.OAUTH_CLIENT_SECRET": {
                    "valueFrom": {"configMapKeyRef": {"name": "a", "key": "b"}}
                }
            },
            "v.yaml: hub.extraEnv.OAUTH_CLIENT_SECRET: secret OAUTH_CLIENT_SECRET is set from configMapKeyRef; read it from a Kubernetes Secret with valueFrom.secretKeyRef",
        ),
        (
            {"hub.config.GenericOAuthenticator.client_secret": "hunter2"},
            "v.yaml: hub.config.GenericOAuthenticator.client_secret: a secret written in the values file; remove it and set OAUTH_CLIENT_SECRET in hub.extraEnv with valueFrom.secretKeyRef",
        ),
        # The hub's public address (issue 17's blocker: k3s's Traefik holds 80/443).
        (
            {"ingress.enabled": True},
            "v.yaml: ingress.enabled: proxy.https and ingress are both enabled: choose one way in (docs/deploy.md: proxy.https with the proxy-public LoadBalancer, k3s without Traefik)",
        ),
        (
            {"proxy.https.enabled": False, "ingress.enabled": True},
            "v.yaml: proxy.service.type: must be ClusterIP with ingress.enabled: a LoadBalancer asks for ports 80/443, which the ingress controller holds (on k3s it stays Pending)",
        ),
        (
            {"proxy.service.type": "NodePort"},
            "v.yaml: proxy.service.type: must be LoadBalancer with proxy.https type letsencrypt: Let's Encrypt must reach port 80 of the public address; got 'NodePort'",
        ),
        (
            {"proxy.https.enabled": False},
            "v.yaml: proxy.https.enabled: is off and so is ingress: the hub would serve logins over plain HTTP; enable proxy.https (Let's Encrypt or type secret) or an ingress with TLS",
        ),
        (
            {"scheduling.userScheduler.enabled": True},
            "v.yaml: scheduling.userScheduler.enabled: must be false: servers and queue Jobs share the GPU nodes and must be placed by one scheduler (the default one), or their pods can be rejected in a bind race",
        ),
        (
            {"hub.resources": {}},
            "v.yaml: hub.resources.requests: must set cpu and memory: without requests the hub pod (hub, culler, queue) is BestEffort and evicted first",
        ),
        (
            {"hub.resources.requests": {"cpu": "1"}},
            "v.yaml: hub.resources.requests: must set memory: without requests the hub pod (hub, culler, queue) is BestEffort and evicted first",
        ),
        (
            {"prePuller.hook.enabled": True},
            "v.yaml: prePuller.hook.enabled: warning: the image-puller hook makes helm wait for every node to pull the user image (several GB), past helm's default 5m timeout: set it to false (the continuous puller pulls in the background) or give helm a longer --timeout",
        ),
    ],
)
def test_each_llmspawner_check_names_the_setting(changes, expected):
    merged = shipped_values()
    for dotted, value in changes.items():
        _set(merged, dotted, value)
    assert [p.line() for p in llm_values.llmspawner_problems(merged, file="v.yaml")] == [expected]


@pytest.mark.parametrize(
    "changes",
    [
        # The other way in: the chart's ingress (e.g. through Traefik), proxy-public internal.
        {"proxy.https.enabled": False, "ingress.enabled": True, "proxy.service.type": "ClusterIP"},
        # A TLS Secret instead of Let's Encrypt needs no public port 80.
        {
            "proxy.https.type": "secret",
            "proxy.https.secret.name": "llm-tls",
            "proxy.service.type": "NodePort",
        },
        # TLS ends before the proxy (an external load balancer).
        {"proxy.https.type": "offload", "proxy.service.type": "NodePort"},
    ],
)
def test_other_tls_front_doors_pass(changes):
    merged = shipped_values()
    for dotted, value in changes.items():
        _set(merged, dotted, value)
    assert llm_values.check_one_tls_front_door(merged, file="v.yaml") == []


def test_settings_of_charts_newer_than_the_installed_one_are_refused(deployment, capsys):
    """The shipped schema is a development commit after 4.4.0 (z2jh/README.md); what only it
    accepts, helm install --version 4.4.0 refuses."""
    helm = deployment / "helm-values.yaml"
    data = yaml.safe_load(helm.read_text())
    data["proxy"]["chp"]["command"] = ["configurable-http-proxy"]
    data["httpRoute"] = {"parentRefs": []}
    helm.write_text(yaml.safe_dump(data))
    code, [*lines, _], _ = run_check(capsys)
    assert lines == [
        "helm-values.yaml: proxy.chp.command: is not a setting of chart 4.4.0 (newer charts only); helm install --version 4.4.0 refuses it",
        "helm-values.yaml: httpRoute.parentRefs: is not a setting of chart 4.4.0 (newer charts only); helm install --version 4.4.0 refuses it",
    ]
    assert code == 1


def test_newer_than_chart_paths_are_in_the_shipped_schema():
    """Each path of NEWER_THAN_CHART is one the shipped schema knows (the list is of its
    additions over chart 4.4.0), under an object that allows no other keys."""
    for path in values.NEWER_THAN_CHART:
        node = values.chart_schema()
        for key in path[:-1]:
            node = node["properties"][key]
        assert node["additionalProperties"] is False, path
        assert path[-1] in node["properties"], path
    assert values.CHART_VERSION == "4.4.0"


@pytest.mark.parametrize(
    "code",
    [
        "from llmspawner.hubconfig import configure as setup\nsetup(c)",
        "import llmspawner.hubconfig\nllmspawner.hubconfig.configure(c)",
        "from llmspawner import hubconfig as h\nh.configure_spawner(c)\nh.configure_culler(c)",
    ],
)
def test_extra_config_may_import_configure_any_way(code):
    merged = shipped_values()
    merged["hub"]["extraConfig"] = {"llmspawner": code}
    assert llm_values.check_extra_config_calls_llmspawner(merged, file="v.yaml") == []


def test_extra_config_that_is_not_python_is_named():
    merged = shipped_values()
    merged["hub"]["extraConfig"]["broken"] = "def (:\n"
    assert [
        p.line() for p in llm_values.check_extra_config_calls_llmspawner(merged, file="v.yaml")
    ] == ["v.yaml: hub.extraConfig.broken: is not valid Python: invalid syntax (line 1)"]


def test_secret_in_list_notation_of_extra_env():
    merged = shipped_values()
    merged["hub"]["extraEnv"] = [
        {"name": "DB_PASSWORD", "value": "x"},
        {"name": "OTHER", "value": "y"},
    ]
    assert [p.line() for p in llm_values.check_no_inline_secrets(merged, file="v.yaml")] == [
        "v.yaml: hub.extraEnv[0]: secret DB_PASSWORD is set as a literal value; read it from a Kubernetes Secret with valueFrom.secretKeyRef"
    ]


def test_schema_problem_hides_the_same_path_from_llmspawner_checks(deployment):
    data = yaml.safe_load((deployment / "helm-values.yaml").read_text())
    data["cull"]["enabled"] = "no"
    (deployment / "helm-values.yaml").write_text(yaml.safe_dump(data))
    part, _ = check.check_values("helm-values.yaml")
    assert [p.line() for p in part.problems] == [
        "helm-values.yaml: cull.enabled: must be a boolean, not 'no'"
    ]


def test_profiles_use_the_gpu_settings_of_the_values(deployment):
    data = yaml.safe_load((deployment / "helm-values.yaml").read_text())
    data["hub"]["config"]["LLMPlatform"]["gpu_replica_counts"] = [4]
    (deployment / "helm-values.yaml").write_text(yaml.safe_dump(data))
    report = check.check_all("helm-values.yaml", "deploy/manifests", "profiles")
    assert [p.line() for p in report.problems] == [
        "profiles/medium.yaml: gpu.fraction: '1/2' is not offered by the cluster; allowed: 1/4 (1/N for a replica count the GPU nodes are labelled with)"
    ]


def test_bad_gpu_settings_in_values_are_named():
    merged = shipped_values()
    merged["hub"]["config"]["LLMPlatform"]["mig_strategy"] = "both"
    _, problems = llm_values.cluster_gpu_config(merged, file="v.yaml")
    assert [p.line() for p in problems] == [
        (
            "v.yaml: hub.config.LLMPlatform.mig_strategy: LLMPlatform.mig_strategy "
            "(LLMSPAWNER_MIG_STRATEGY) expected any of ['mixed', 'single'], not the str 'both'."
        )
    ]


def test_gpu_settings_from_literal_hub_env_are_used():
    """Config wins over the hub's environment, as at hub start."""
    merged = shipped_values()
    merged["hub"]["extraEnv"]["LLMSPAWNER_GPU_REPLICA_COUNTS"] = "8"
    merged["hub"]["extraEnv"]["LLMSPAWNER_MIG_STRATEGY"] = {"value": "single"}
    cluster, problems = llm_values.cluster_gpu_config(merged, file="v.yaml")
    assert (cluster.replica_counts, cluster.mig_strategy, problems) == ((8,), "single", [])
    merged["hub"]["config"]["LLMPlatform"]["gpu_replica_counts"] = [2]
    cluster, _ = llm_values.cluster_gpu_config(merged, file="v.yaml")
    assert cluster.replica_counts == (2,)


def test_a_values_file_of_before_llmplatform_is_refused(deployment):
    """Every platform setting left under hub.config.LLMSpawner is named with its new place,
    once, and the profiles folder is not reported missing besides."""
    data = yaml.safe_load((deployment / "helm-values.yaml").read_text())
    data["hub"]["config"]["LLMSpawner"] = data["hub"]["config"].pop("LLMPlatform")
    data["hub"]["config"]["LLMSpawner"]["namespace"] = "llm"  # still a spawner setting
    (deployment / "helm-values.yaml").write_text(yaml.safe_dump(data))
    report = check.check_all("helm-values.yaml", "deploy/manifests", "profiles")
    assert [p.line() for p in report.problems] == [
        f"helm-values.yaml: hub.config.LLMSpawner.{name}: moved: set "
        f"hub.config.LLMPlatform.{name} instead; LLMSpawner no longer reads it"
        for name in (
            "mlflow_experiment_template",
            "mlflow_tracking_uri",
            "profiles_dir",
            "storage_claim_name",
        )
    ]
    assert not report.ok


# --- profiles ----------------------------------------------------------------------------


def test_every_broken_profile_is_reported(deployment):
    (deployment / "profiles" / "a.yaml").write_text("slug: a\ndisplay_name: A\ncolour: red\n")
    (deployment / "profiles" / "b.yml").write_text("slug: [b\n")
    part = check.check_profiles("profiles", check.profiles_mod.ClusterGPUConfig())
    assert [p.line() for p in part.problems] == [
        "profiles/a.yaml: colour: unknown field; allowed fields: slug, display_name, description, default, gpu, cpu, memory, node_selector, tolerations, image, idle_timeout, max_runtime, allowed_groups, shm_size",
        "profiles/b.yml: is not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)",
    ]


def test_rules_across_profiles_name_the_folder(deployment):
    (deployment / "profiles" / "cpu2.yaml").write_text(
        (deployment / "profiles" / "cpu.yaml").read_text().replace("slug: cpu", "slug: cpu2")
    )
    part = check.check_profiles("profiles", check.profiles_mod.ClusterGPUConfig())
    assert [p.line() for p in part.problems] == [
        "profiles: default: exactly one profile must have 'default: true'; found 2 (cpu.yaml, cpu2.yaml)"
    ]


# --- manifests ---------------------------------------------------------------------------


def test_kustomization_problems(tmp_path):
    write_tree(
        tmp_path,
        {
            "outside.yaml": SAMPLE_TREE["storage.yaml"],
            "m/kustomization.yaml": """\
resources:
  - base
  - plain
  - ../outside.yaml
  - missing.yaml
  - https://github.com/example/repo//deploy?ref=v1
patches:
  - path: patch.yaml
configMapGenerator:
  - name: x
""",
            "m/base/kustomization.yml": "resources: [pc.yaml, ../base]\n",
            "m/base/pc.yaml": SAMPLE_TREE["priorities.yaml"],
            "m/plain/pvc.yaml": SAMPLE_TREE["storage.yaml"],
        },
    )
    documents, problems = manifests.collect(str(tmp_path / "m"))
    render = (
        "cannot be rendered offline by this check; the objects in resources are checked as "
        f"written. Render and check the result: kubectl kustomize {tmp_path}/m > all.yaml && "
        "llmspawner deploy check --manifests all.yaml"
    )
    k = f"{tmp_path}/m/kustomization.yaml"
    assert [p.line() for p in problems] == [
        f"{k}: patches: {render}",
        f"{k}: configMapGenerator: {render}",
        f"{k}: resources[1]: plain is a folder without kustomization.yaml, kustomization.yml, Kustomization",
        f"{k}: resources[2]: ../outside.yaml is outside this kustomization's folder; kustomize refuses to load it (move it below the folder, or list a folder with its own kustomization.yaml)",
        f"{k}: resources[3]: missing.yaml does not exist",
        f"{k}: resources[4]: https://github.com/example/repo//deploy?ref=v1 is remote; this check reads local files only",
    ]
    assert [(d.file, d.index, manifests.object_name(d)) for d in documents] == [
        (f"{tmp_path}/m/base/pc.yaml", 0, "PriorityClass/llm-high"),
        (f"{tmp_path}/m/base/pc.yaml", 1, "PriorityClass/llm-low"),
    ]


def test_folder_without_kustomization_is_read_like_kubectl_apply_f(tmp_path):
    write_tree(
        tmp_path,
        {
            "b.yaml": SAMPLE_TREE["storage.yaml"],
            "a.yml": SAMPLE_TREE["priorities.yaml"],
            "notes.txt": "x",
        },
    )
    documents, problems = manifests.collect(str(tmp_path))
    assert problems == []
    assert [(Path(d.file).name, manifests.object_name(d)) for d in documents] == [
        ("a.yml", "PriorityClass/llm-high"),
        ("a.yml", "PriorityClass/llm-low"),
        ("b.yaml", "PersistentVolumeClaim/llm-storage"),
    ]


def test_unreadable_manifest_names_the_line(tmp_path):
    (tmp_path / "x.yaml").write_text("kind: Pod\nmetadata: {name: [x}\n")
    _, problems = manifests.collect(str(tmp_path / "x.yaml"))
    assert [p.line() for p in problems] == [
        f"{tmp_path}/x.yaml: is not valid YAML: expected ',' or ']', but got '}}' (line 2, column 20)"
    ]


def _object_lines(text: str) -> list[str]:
    docs = [manifests.Document("x.yaml", i, o) for i, o in enumerate(yaml.safe_load_all(text))]
    return [p.line() for d in docs for p in manifests.object_problems(d, VERSIONS)]


def test_custom_resources_are_a_warning_unknown_kinds_and_removed_apis_a_problem():
    assert _object_lines(
        """\
apiVersion: kueue.x-k8s.io/v1beta1
kind: ClusterQueue
metadata: {name: llm}
---
apiVersion: apps/v1
kind: Deploymnet
metadata: {name: typo}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1beta3
kind: FlowSchema
metadata: {name: old}
---
kind: ConfigMap
metadata: {name: no-api}
"""
    ) == [
        "x.yaml: ClusterQueue/llm: warning: not validated: kueue.x-k8s.io/v1beta1 is not a Kubernetes API (a custom resource?); kubernetes-validate has schemas for built-in kinds only",
        "x.yaml: Deploymnet/typo: kind: Kubernetes has no kind Deploymnet in apps/v1",
        f"x.yaml: FlowSchema/old: apiVersion: flowcontrol.apiserver.k8s.io/v1beta3 is not served (Kubernetes {', '.join(VERSIONS)})",
        "x.yaml: ConfigMap/no-api: apiVersion: is required",
    ]


def test_unknown_field_lists_the_allowed_ones():
    assert _object_lines(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\nspec: {}\n"
    ) == [
        "x.yaml: ConfigMap/c: spec: unknown key; allowed keys: apiVersion, binaryData, data, immutable, kind, metadata"
    ]


def test_warnings_do_not_fail_the_check():
    report = check.Report([check.Part("x", [Problem("f", "p", "m", warning=True)])])
    assert (report.ok, report.summary()) == (True, "deploy check: no problems, 1 warning (x)")


def test_mlflow_behind_the_hub_is_checked_by_deploy_check(deployment, capsys):
    """check_mlflow_behind_hub (llmspawner/deploy/mlflow_values.py) runs in ``deploy check``:
    a tracking URI without the hub service's prefix and the service token gone are named."""
    helm = deployment / "helm-values.yaml"
    data = yaml.safe_load(helm.read_text())
    data["hub"]["config"]["LLMPlatform"]["mlflow_tracking_uri"] = (
        "http://mlflow.llm.svc.cluster.local:5000"
    )
    del data["hub"]["extraEnv"]["LLMSPAWNER_MLFLOW_SERVICE_TOKEN"]
    helm.write_text(yaml.safe_dump(data))

    code, [*lines, summary], err = run_check(capsys)

    assert lines == [
        (
            "helm-values.yaml: hub.config.LLMPlatform.mlflow_tracking_uri: must end in "
            "/services/mlflow (MLflow is the hub service mlflow and serves under that prefix, "
            "docs/mlflow.md); got 'http://mlflow.llm.svc.cluster.local:5000'"
        ),
        (
            "helm-values.yaml: hub.extraEnv.LLMSPAWNER_MLFLOW_SERVICE_TOKEN: must come from a "
            "Secret (valueFrom.secretKeyRef): the mlflow service's token (Secret mlflow-auth, "
            "key service-token)"
        ),
    ]
    assert summary.startswith("deploy check: 2 problems (")
    assert (code, err) == (1, "")


def test_mlflow_check_is_listed_in_checks():
    assert llm_values.check_mlflow_behind_hub in llm_values.CHECKS


@pytest.mark.parametrize(
    "changes",
    [
        # llmspawner's login by its import path; the shipped values name the entry point.
        {"hub.config.JupyterHub.authenticator_class": "llmspawner.auth.LLMOAuthenticator"},
        # The list notation of hub.extraEnv.
        {
            "hub.extraEnv": [
                {"name": "LLMSPAWNER_ALLOWED_GROUPS", "value": "llm-users"},
                {
                    "name": "JUPYTERHUB_CRYPT_KEY",
                    "valueFrom": {
                        "secretKeyRef": {"name": "hub", "key": "hub.config.CryptKeeper.keys"}
                    },
                },
            ]
        },
        # Another authenticator is not judged (it is not llmspawner's to re-check).
        {
            "hub.config.JupyterHub.authenticator_class": "github",
            "hub.extraEnv.JUPYTERHUB_CRYPT_KEY": _DELETE,
        },
    ],
)
def test_login_refresh_passes(changes):
    merged = shipped_values()
    for dotted, value in changes.items():
        _set(merged, dotted, value)
    assert llm_values.check_login_refresh(merged, file="v.yaml") == []


def test_shipped_login_is_llm_oauth_with_the_charts_crypt_key():
    hub = shipped_values()["hub"]
    assert hub["config"]["JupyterHub"]["authenticator_class"] == "llm-oauth"
    assert hub["extraEnv"]["JUPYTERHUB_CRYPT_KEY"] == {
        "valueFrom": {"secretKeyRef": {"name": "hub", "key": "hub.config.CryptKeeper.keys"}}
    }
    # The entry point is the authenticator that re-checks the groups.
    from importlib.metadata import entry_points

    from llmspawner.auth import LLMOAuthenticator

    [ep] = entry_points(group="jupyterhub.authenticators", name="llm-oauth")
    assert ep.load() is LLMOAuthenticator


@pytest.mark.parametrize(
    "changes",
    [
        # Unset: the default 30 s.
        {"hub.extraEnv.LLMSPAWNER_ROUTE_REPAIR_INTERVAL": _DELETE},
        # The list notation.
        {"hub.extraEnv": [{"name": "LLMSPAWNER_ROUTE_REPAIR_INTERVAL", "value": "60"}]},
        # From a ConfigMap: not known offline.
        {
            "hub.extraEnv.LLMSPAWNER_ROUTE_REPAIR_INTERVAL": {
                "valueFrom": {"configMapKeyRef": {"name": "a", "key": "b"}}
            }
        },
    ],
)
def test_route_repair_passes(changes):
    merged = shipped_values()
    for dotted, value in changes.items():
        _set(merged, dotted, value)
    assert llm_values.check_route_repair(merged, file="v.yaml") == []


def test_route_repair_off_is_a_warning_through_deploy_check(deployment, capsys):
    helm = deployment / "helm-values.yaml"
    data = yaml.safe_load(helm.read_text())
    data["hub"]["extraEnv"]["LLMSPAWNER_ROUTE_REPAIR_INTERVAL"] = "0"
    helm.write_text(yaml.safe_dump(data))
    code, [line, summary], err = run_check(capsys)
    assert line.startswith(
        "helm-values.yaml: hub.extraEnv.LLMSPAWNER_ROUTE_REPAIR_INTERVAL: warning: is 0 and so is"
    )
    assert (code, err) == (0, "")
