"""``deploy check``'s MLflow rule (llmspawner.deploy.mlflow_values) on helm-values.yaml and
on broken variants."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from llmspawner.deploy.mlflow_values import check_mlflow_behind_hub

ROOT = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((ROOT / "helm-values.yaml").read_text())


def lines(values):
    return [p.line() for p in check_mlflow_behind_hub(values, file="v.yaml")]


def test_the_shipped_values_pass():
    assert lines(VALUES) == []


def test_no_tracking_no_rule():
    values = copy.deepcopy(VALUES)
    values["hub"]["config"]["LLMPlatform"]["mlflow_tracking_uri"] = ""
    del values["hub"]["extraEnv"]["MLFLOW_TRACKING_PASSWORD"]
    assert lines(values) == []


def test_each_problem_is_named():
    values = copy.deepcopy(VALUES)
    values["hub"]["config"]["LLMPlatform"]["mlflow_tracking_uri"] = "http://mlflow:5000"
    env = values["hub"]["extraEnv"]
    del env["MLFLOW_TRACKING_USERNAME"]
    env["MLFLOW_TRACKING_PASSWORD"] = "inline"
    del env["LLMSPAWNER_MLFLOW_SERVICE_TOKEN"]
    assert lines(values) == [
        (
            "v.yaml: hub.config.LLMPlatform.mlflow_tracking_uri: must end in /services/mlflow "
            "(MLflow is the hub service mlflow and serves under that prefix, docs/mlflow.md); "
            "got 'http://mlflow:5000'"
        ),
        (
            "v.yaml: hub.extraEnv.MLFLOW_TRACKING_USERNAME: is not set: MLflow's admin "
            "(llmspawner/admin) with which the hub makes each user's experiment"
        ),
        (
            "v.yaml: hub.extraEnv.LLMSPAWNER_MLFLOW_SERVICE_TOKEN: must come from a Secret "
            "(valueFrom.secretKeyRef): the mlflow service's token (Secret mlflow-auth, key "
            "service-token)"
        ),
        (
            "v.yaml: hub.extraEnv.MLFLOW_TRACKING_PASSWORD: must come from a Secret "
            "(valueFrom.secretKeyRef): MLflow's admin password (Secret mlflow-auth, key "
            "admin-password)"
        ),
    ]


def test_a_base_url_moves_the_prefix():
    values = copy.deepcopy(VALUES)
    values["hub"]["baseUrl"] = "/jhub/"
    [problem] = lines(values)
    assert "must end in /jhub/services/mlflow" in problem
