"""The dev stack's MLflow from the deploy kit (llmspawner_dev.kit): the kit's files parsed as
kustomize lists them, and only the named dev overrides applied."""

from __future__ import annotations

import base64
import os

import pytest

from llmspawner_dev import kit

HUB_API = "http://10.0.0.1:8081/hub/api"
HUB_HOST = "10.0.0.1"


def overridden():
    return kit.dev_overrides(
        kit.load_kustomization(), hub_api_url=HUB_API, hub_host=HUB_HOST, admin_groups=["admins"]
    )


def mlflow_container(objects):
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    return deployment, deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(container):
    return {e["name"]: e for e in container["env"]}


def test_the_kit_is_read_in_its_kustomization_order():
    objects = kit.load_kustomization()
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("PersistentVolumeClaim", "mlflow-data"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {kit.NAMESPACE}


def test_only_the_named_overrides_change_the_kit():
    original = kit.load_kustomization()
    objects = overridden()
    assert original == kit.load_kustomization()  # the input is not changed
    # PVC and Service as the kit has them; the pod's identity and probes too.
    assert objects[0] == original[0] and objects[2] == original[2]
    deployment, container = mlflow_container(objects)
    _, before = mlflow_container(original)
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 1000
    assert (
        deployment["spec"]["template"]["spec"]["initContainers"]
        == (original[1]["spec"]["template"]["spec"]["initContainers"])
    )
    assert container["readinessProbe"] == before["readinessProbe"]
    assert container["image"] == before["image"]
    env, old = env_of(container), env_of(before)
    changed = {k for k in env if env[k] != old.get(k)}
    assert changed == {
        "POD_IP",
        "JUPYTERHUB_API_URL",
        "MLFLOW_SERVER_ALLOWED_HOSTS",
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS",
        "LLMSPAWNER_MLFLOW_ADMIN_GROUPS",
        "LLMSPAWNER_MLFLOW_AUTH_TTL",
    }
    assert container["env"][0] == {
        "name": "POD_IP",
        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
    }
    assert env["JUPYTERHUB_API_URL"]["value"] == HUB_API
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert hosts[0] == "10.0.0.1:*" and hosts[-1] == "$(POD_IP):5000"
    assert kit.PUBLIC_HOST not in ",".join(hosts)
    assert env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"]["value"] == "http://10.0.0.1:*"
    assert env["LLMSPAWNER_MLFLOW_ADMIN_GROUPS"]["value"] == "admins"
    (args,) = container["args"]
    assert "--host $(POD_IP)" in args and "--workers 1" in args and "0.0.0.0" not in args
    assert (
        args.replace("--host $(POD_IP)", "--host 0.0.0.0").replace("--workers 1", "--workers 2")
        == (before["args"][0])
    )


def test_a_kit_that_no_longer_says_what_an_override_changes_is_refused():
    objects = kit.load_kustomization()
    _, container = mlflow_container(objects)
    container["args"] = [container["args"][0].replace("--workers 2", "--workers 4")]
    with pytest.raises(kit.KitError, match="no longer says '--workers 2'"):
        kit.dev_overrides(objects, hub_api_url=HUB_API, hub_host=HUB_HOST, admin_groups=[])
    container["env"] = [e for e in container["env"] if e["name"] != "JUPYTERHUB_API_URL"]
    container["args"] = [container["args"][0].replace("--workers 4", "--workers 2")]
    with pytest.raises(kit.KitError, match="no env 'JUPYTERHUB_API_URL'"):
        kit.dev_overrides(objects, hub_api_url=HUB_API, hub_host=HUB_HOST, admin_groups=[])


def test_a_kustomization_with_transformers_is_refused(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\nnamespace: other\n")
    with pytest.raises(kit.KitError, match=r"keys \['namespace'\] are not supported"):
        kit.load_kustomization(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\n")
    with pytest.raises(kit.KitError, match="resource 'a.yaml' does not exist"):
        kit.load_kustomization(tmp_path)
    (tmp_path / "a.yaml").write_text("---\nkind: ConfigMap\nmetadata: {name: a}\n---\n")
    assert kit.load_kustomization(tmp_path) == [{"kind": "ConfigMap", "metadata": {"name": "a"}}]


def test_the_auth_secret_has_the_kits_keys():
    secret = kit.auth_secret(service_token="t", admin_password="p", secret_key="k")
    assert secret["metadata"] == {"name": "mlflow-auth", "namespace": "llm"}
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"admin-password": "p", "service-token": "t", "flask-secret-key": "k"}


def test_the_mode_setting_names_its_values():
    assert kit.mlflow_mode({}, "process") == "process"
    assert kit.mlflow_mode({"LLMSPAWNER_MLFLOW": " Pod "}, "process") == "pod"
    with pytest.raises(
        ValueError, match="LLMSPAWNER_MLFLOW must be one of pod, process, not 'k8s'"
    ):
        kit.mlflow_mode({"LLMSPAWNER_MLFLOW": "k8s"}, "process")


def test_a_process_way_workdir_is_copied_to_the_pvc_once(tmp_path):
    (tmp_path / "mlflow.db").write_text("db")
    (tmp_path / "mlflow-auth.db").write_text("auth")
    (tmp_path / "mlflow-artifacts" / "1").mkdir(parents=True)
    (tmp_path / "mlflow-artifacts" / "1" / "a.txt").write_text("x")
    folder = tmp_path / "pvc"
    copied = kit.prepare_data_folder(folder, workdir=tmp_path, chown=False)
    assert copied == ["mlflow.db", "mlflow-auth.db", "mlflow-artifacts"]
    assert (folder / "basic_auth.db").read_text() == "auth"
    assert (folder / "artifacts" / "1" / "a.txt").read_text() == "x"
    (folder / "mlflow.db").write_text("newer")
    assert kit.prepare_data_folder(folder, workdir=tmp_path, chown=False) == []
    assert (folder / "mlflow.db").read_text() == "newer"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to uid 1000")
def test_the_pvc_folder_is_given_to_the_kits_uid(tmp_path):
    (tmp_path / "mlflow.db").write_text("db")
    (tmp_path / "mlflow-artifacts" / "1").mkdir(parents=True)
    (tmp_path / "mlflow-artifacts" / "1" / "a.txt").write_text("x")
    folder = tmp_path / "pvc"
    kit.prepare_data_folder(folder, workdir=tmp_path, chown=True)
    for path in (folder, folder / "mlflow.db", folder / "artifacts" / "1" / "a.txt"):
        assert (path.stat().st_uid, path.stat().st_gid) == (1000, 1000)


def test_pod_failure_names_the_container_and_its_reason():
    waiting = {"state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    pod = {
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {"name": "auth", "state": {"terminated": {"reason": "Completed"}}},
                {"name": "db-upgrade", **waiting, "lastState": {"terminated": {"exitCode": 1}}},
            ],
        }
    }
    assert kit.pod_failure(pod) == "init container db-upgrade: CrashLoopBackOff (last exit 1)"
    starting = {"status": {"containerStatuses": [{"name": "mlflow", "state": {"running": {}}}]}}
    assert kit.pod_failure(starting) == ""
    assert kit.pod_failure({"status": {"phase": "Failed", "reason": "Evicted"}}) == (
        "phase Failed (Evicted)"
    )


def test_container_seconds_are_read_from_the_status_timestamps():
    pod = {
        "status": {
            "initContainerStatuses": [
                {
                    "name": "auth",
                    "state": {
                        "terminated": {
                            "startedAt": "2026-12-02T02:00:00Z",
                            "finishedAt": "2026-12-02T02:00:03Z",
                        }
                    },
                },
                {"name": "db-upgrade", "state": {"waiting": {"reason": "PodInitializing"}}},
            ]
        }
    }
    assert kit.container_seconds(pod) == {"auth": 3}
