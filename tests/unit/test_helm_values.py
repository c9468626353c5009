"""helm-values.yaml against the zero-to-jupyterhub chart's own files (../shared/z2jh)."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from llmspawner.deploy.values import helm_merge

ROOT = Path(__file__).resolve().parents[2]
Z2JH = ROOT.parent / "shared" / "z2jh"


@pytest.mark.skipif(not Z2JH.is_dir(), reason=f"z2jh chart data not found at {Z2JH}")
def test_values_validate_against_chart_schema():
    schema = yaml.safe_load((Z2JH / "values.schema.yaml").read_text())
    values = helm_merge(
        yaml.safe_load((Z2JH / "values.yaml").read_text()),
        yaml.safe_load((ROOT / "helm-values.yaml").read_text()),
    )
    errors = [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(values)
    ]
    assert errors == []


def test_values_use_llmspawner():
    values = yaml.safe_load((ROOT / "helm-values.yaml").read_text())
    assert values["hub"]["config"]["JupyterHub"]["spawner_class"] == "llm"
    assert values["singleuser"]["storage"]["type"] == "none"
    assert "configure(c)" in values["hub"]["extraConfig"]["llmspawner"]


def _egress_to(rules: list[dict], labels: dict) -> list[int]:
    """Ports that egress rules open towards pods carrying ``labels``."""
    return [
        port["port"]
        for rule in rules
        for peer in rule["to"]
        if peer["podSelector"]["matchLabels"].items() <= labels.items()
        for port in rule["ports"]
    ]


def test_network_rules_match_mlflow_and_the_queue():
    """User pods may reach exactly MLflow's pod port and the queue's port in the hub's pod;
    the hub's Service publishes that port, and the queue listens on it."""
    values = yaml.safe_load((ROOT / "helm-values.yaml").read_text())
    docs = list(yaml.safe_load_all((ROOT / "deploy/manifests/mlflow/deployment.yaml").read_text()))
    (mlflow,) = [d for d in docs if d and d["kind"] == "Deployment"]
    pod_labels = mlflow["spec"]["template"]["metadata"]["labels"]
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    mlflow_ports = [p["containerPort"] for p in container["ports"]]
    egress = values["singleuser"]["networkPolicy"]["egress"]
    assert _egress_to(egress, pod_labels) == mlflow_ports == [5000]
    hub_pod = {"app": "jupyterhub", "component": "hub", "release": "llm"}
    assert _egress_to(egress, hub_pod) == [10101]
    assert _egress_to(values["proxy"]["chp"]["networkPolicy"]["egress"], hub_pod) == [10101]
    (ingress,) = values["hub"]["networkPolicy"]["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [10101]
    (extra_port,) = values["hub"]["service"]["extraPorts"]
    assert (extra_port["port"], extra_port["targetPort"]) == (10101, 10101)
    env = values["hub"]["extraEnv"]
    assert env["LLMSPAWNER_QUEUE_SERVICE_URL"] == "http://hub:10101"
    assert env["LLMSPAWNER_QUEUE_BIND_URL"] == "http://0.0.0.0:10101"
