"""``deploy check`` rules about MLflow behind the hub's login (docs/mlflow.md).

A check of the same shape as :mod:`llmspawner.deploy.llm_values`' (``check_x(values, *, file)
-> list[Problem]`` on values merged over the chart's defaults), to be listed in its
``CHECKS``. Pure.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..mlflow_auth import SERVICE_NAME
from .problems import Problem

#: ``hub.extraEnv`` variables MLflow behind the hub needs, each from a Secret
#: (``valueFrom.secretKeyRef``), and what they are.
SECRET_VARIABLES = {
    "LLMSPAWNER_MLFLOW_SERVICE_TOKEN": "the mlflow service's token (Secret mlflow-auth, "
    "key service-token)",
    "MLFLOW_TRACKING_PASSWORD": "MLflow's admin password (Secret mlflow-auth, key admin-password)",
}


def _get(values: dict, *keys: str, default=None):
    for key in keys:
        if not isinstance(values, dict) or key not in values:
            return default
        values = values[key]
    return values


def check_mlflow_behind_hub(values: dict, *, file: str) -> list[Problem]:
    """With ``hub.config.LLMPlatform.mlflow_tracking_uri`` set, MLflow must be the hub service
    ``mlflow``: the URI ends in the service's prefix (``<hub.baseUrl>services/mlflow``, where
    MLflow serves with ``--static-prefix``; otherwise the hub does not configure the service
    and pods get no token), and ``hub.extraEnv`` gives the hub the service's token and MLflow's
    admin credential (``MLFLOW_TRACKING_USERNAME``, and :data:`SECRET_VARIABLES` from
    Secrets), with which it makes each user's experiment and hands it to them.
    """
    uri = _get(values, "hub", "config", "LLMPlatform", "mlflow_tracking_uri")
    if not uri:
        return []
    problems = []
    base = "/" + str(_get(values, "hub", "baseUrl", default="/") or "/").strip("/")
    prefix = f"{base.rstrip('/')}/services/{SERVICE_NAME}"
    if urlsplit(str(uri)).path.rstrip("/") != prefix:
        problems.append(
            Problem(
                file,
                "hub.config.LLMPlatform.mlflow_tracking_uri",
                f"must end in {prefix} (MLflow is the hub service mlflow and serves under that "
                f"prefix, docs/mlflow.md); got {uri!r}",
            )
        )
    env = _get(values, "hub", "extraEnv", default={}) or {}
    if not isinstance(env, dict):
        return problems  # the chart's schema reports a list form's problems
    if not env.get("MLFLOW_TRACKING_USERNAME"):
        problems.append(
            Problem(
                file,
                "hub.extraEnv.MLFLOW_TRACKING_USERNAME",
                "is not set: MLflow's admin (llmspawner/admin) with which the hub makes each "
                "user's experiment",
            )
        )
    for name, what in SECRET_VARIABLES.items():
        value = env.get(name)
        if not (isinstance(value, dict) and _get(value, "valueFrom", "secretKeyRef")):
            problems.append(
                Problem(
                    file,
                    f"hub.extraEnv.{name}",
                    f"must come from a Secret (valueFrom.secretKeyRef): {what}",
                )
            )
    return problems
