"""The MLflow Deployment of the deploy kit runs MLflow as the hub service ``mlflow``: its auth
app with llmspawner's authorization function, under the service's prefix, no database URL or
password on a command line, the hub's origin in the CORS list, and the same addresses and
Secrets as helm-values.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmspawner.mlflow_auth import DEFAULT_ADMIN_USERNAME
from llmspawner.mlflow_hub import service_prefix

ROOT = Path(__file__).resolve().parents[2]


def _deployment() -> dict:
    return yaml.safe_load((ROOT / "deploy/manifests/mlflow/deployment.yaml").read_text())


def _containers() -> dict[str, dict]:
    pod = _deployment()["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_mlflow_runs_the_auth_app_under_the_service_prefix():
    server = _containers()["mlflow"]
    args = server["args"][0].split()
    assert args[args.index("--app-name") + 1] == "basic-auth"
    assert args[args.index("--static-prefix") + 1] == service_prefix().rstrip("/")
    env = _env(server)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/auth/basic_auth.ini"
    assert env["PYTHONPATH"] == "/auth"
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == DEFAULT_ADMIN_USERNAME
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == service_prefix()
    for name, key in (
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-password"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key"),
        ("JUPYTERHUB_API_TOKEN", "service-token"),
    ):
        assert env[name] == {"secretKeyRef": {"name": "mlflow-auth", "key": key}}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/services/mlflow/health"
    init = _containers()["auth"]
    assert init["args"][0].split()[-4:] == ["-m", "llmspawner.mlflow_auth", "install", "/auth"]
    labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert labels["hub.jupyter.org/network-access-hub"] == "true"


def test_mlflow_serves_artifacts_from_its_pvc_as_the_dev_stack_does(tmp_path):
    """Trainings upload through the server (mlflow-artifacts:), stored on the mlflow-data PVC;
    the dev stack's MLflow is started the same way (llmspawner_dev.parts.mlflow_command)."""
    from llmspawner_dev import parts

    args = _containers()["mlflow"]["args"][0].split()
    assert "--serve-artifacts" in args and "--no-serve-artifacts" not in args
    destination = args[args.index("--artifacts-destination") + 1]
    assert destination == "/mlflow/artifacts"
    mounts = {m["mountPath"]: m["name"] for m in _containers()["mlflow"]["volumeMounts"]}
    assert mounts["/mlflow"] == "data"
    volumes = {v["name"]: v for v in _deployment()["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "mlflow-data"
    dev = parts.mlflow_command(workdir=tmp_path, host="127.0.0.1", port=1)
    assert "--serve-artifacts" in dev
    assert dev[dev.index("--artifacts-destination") + 1] == str(tmp_path / "mlflow-artifacts")
    assert "--default-artifact-root" not in args and "--default-artifact-root" not in dev


def test_no_database_url_or_secret_is_an_argument():
    for container in _containers().values():
        text = " ".join([*container.get("command", []), *container.get("args", [])])
        assert "--backend-store-uri" not in text
        assert "postgresql" not in text
        for value in _env(container).values():
            if isinstance(value, dict):  # from a Secret: only by variable name on the line
                assert value.get("secretKeyRef", {}).get("name") in ("mlflow-db", "mlflow-auth")
    server = _containers()["mlflow"]
    assert 'export MLFLOW_BACKEND_STORE_URI="${MLFLOW_DB_URL:-' in server["args"][0]
    assert "os.environ['MLFLOW_BACKEND_STORE_URI']" in _containers()["db-upgrade"]["args"][0]


def test_cors_and_hosts_name_the_hub_of_helm_values():
    values = yaml.safe_load((ROOT / "helm-values.yaml").read_text())
    [host] = values["proxy"]["https"]["hosts"]
    env = _env(_containers()["mlflow"])
    assert env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"].split(",") == [f"https://{host}"]
    assert host in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    uri = values["hub"]["config"]["LLMPlatform"]["mlflow_tracking_uri"]
    assert uri == "http://mlflow.llm.svc.cluster.local:5000/services/mlflow"
    hub_env = values["hub"]["extraEnv"]
    assert hub_env["MLFLOW_TRACKING_USERNAME"] == DEFAULT_ADMIN_USERNAME
    assert hub_env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-auth",
        "key": "admin-password",
    }
    assert hub_env["LLMSPAWNER_MLFLOW_SERVICE_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-auth",
        "key": "service-token",
    }
    # The proxy may reach MLflow's pod.
    egress = values["proxy"]["chp"]["networkPolicy"]["egress"]
    assert any(
        rule["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
        and rule["ports"] == [{"port": 5000, "protocol": "TCP"}]
        for rule in egress
    )
