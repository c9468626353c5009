"""A user's MLflow experiment: its name, the pod environment, and making sure it exists.

Each user reports to their own experiment (default ``{username}-experiments``) on one shared
MLflow tracking server. The user's server (``spawner``) and the batch queue's Jobs (``queue``)
both take the name and the environment from here.

Names and environment are pure functions; :func:`ensure_experiment` is the one I/O call, made
through MLflow's REST API (https://mlflow.org/docs/latest/api_reference/rest-api.html) with
tornado's async HTTP client, so that the hub's event loop is never blocked.
"""

from __future__ import annotations

import json
import string
from urllib.parse import quote, urlencode

from .storage import user_slug

#: The default template of a user's experiment name.
DEFAULT_EXPERIMENT_TEMPLATE = "{username}-experiments"

_TEMPLATE_FIELDS = {"username", "slug"}


class TrackingUnavailable(Exception):
    """MLflow could not be reached or refused the request; the message says why."""


def check_experiment_template(template: str) -> str:
    """Validate an experiment name template and return it unchanged.

    Args:
        template: a :meth:`str.format` template; allowed fields are ``{username}`` (the hub's
            normalised username) and ``{slug}`` (its Kubernetes-safe slug).

    Raises:
        ValueError: naming the unknown field and the allowed ones, or if the template has
            no field at all (every user would share one experiment).
    """
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"experiment name template {template!r} is not valid: {e}") from None
    unknown = fields - _TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"experiment name template {template!r} uses unknown field(s) "
            f"{', '.join(sorted(unknown))}; allowed: {{username}}, {{slug}}"
        )
    if not fields:
        raise ValueError(
            f"experiment name template {template!r} must contain {{username}} or {{slug}}, "
            "or every user would share one experiment"
        )
    return template


def experiment_name(username: str, template: str = DEFAULT_EXPERIMENT_TEMPLATE) -> str:
    """Return the MLflow experiment name of a user, e.g. ``alice-experiments``.

    Args:
        username: the hub's normalised username.
        template: see :func:`check_experiment_template`.
    """
    check_experiment_template(template)
    return template.format(username=username, slug=user_slug(username))


def tracking_env(*, tracking_uri: str, experiment: str) -> dict[str, str]:
    """Return the environment variables that make MLflow clients in a pod report to ``experiment``.

    ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` are read by MLflow's fluent API and
    by the Hugging Face ``MLflowCallback`` that LLaMA-Factory uses with ``report_to: mlflow``
    (https://huggingface.co/docs/transformers/main_classes/callback#transformers.integrations.MLflowCallback).

    Returns:
        A new dict ``{"MLFLOW_TRACKING_URI": ..., "MLFLOW_EXPERIMENT_NAME": ...}``; empty
        when ``tracking_uri`` is empty (tracking switched off).
    """
    if not tracking_uri:
        return {}
    return {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment}


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """Return the MLflow UI link of an experiment (``<uri>/#/experiments/<id>``)."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{quote(str(experiment_id))}"


async def ensure_experiment(
    tracking_uri: str,
    name: str,
    *,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    http_client=None,
) -> str:
    """Make sure the MLflow experiment ``name`` exists and is active; return its id.

    Idempotent: an existing experiment is reused, a deleted one is restored, and a concurrent
    creation by someone else (``RESOURCE_ALREADY_EXISTS``) is resolved by reading it back.

    Args:
        tracking_uri: base URL of the MLflow tracking server, e.g. ``http://mlflow:5000``.
        name: the experiment name (see :func:`experiment_name`).
        timeout: per-request timeout in seconds (connect and whole request).
        headers: extra HTTP headers, e.g. ``{"Authorization": "Bearer ..."}``.
        http_client: a ``tornado.httpclient.AsyncHTTPClient``; the shared one when omitted.

    Returns:
        The experiment id (a string, as MLflow returns it).

    Raises:
        TrackingUnavailable: MLflow could not be reached in time or answered with an error.
    """
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    client = http_client or AsyncHTTPClient()
    base = tracking_uri.rstrip("/") + "/api/2.0/mlflow/experiments/"
    hdrs = {"Content-Type": "application/json", **(headers or {})}

    async def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        try:
            resp = await client.fetch(
                base + path,
                method=method,
                body=None if body is None else json.dumps(body),
                headers=hdrs,
                connect_timeout=timeout,
                request_timeout=timeout,
                raise_error=False,
            )
        except (OSError, HTTPClientError) as e:
            raise TrackingUnavailable(f"MLflow at {tracking_uri} is unreachable: {e}") from e
        if resp.code == 599:  # tornado's code for "no HTTP response" (timeout, refused)
            raise TrackingUnavailable(
                f"MLflow at {tracking_uri} is unreachable: {resp.error or 'no response'}"
            )
        try:
            data = json.loads(resp.body or b"{}")
        except ValueError:
            data = {}
        return resp.code, data

    async def get() -> dict | None:
        code, data = await call("GET", "get-by-name?" + urlencode({"experiment_name": name}))
        if code == 200:
            return data["experiment"]
        if code == 404 or data.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise TrackingUnavailable(f"MLflow at {tracking_uri} answered {code}: {_message(data)}")

    experiment = await get()
    if experiment is None:
        code, data = await call("POST", "create", {"name": name})
        if code == 200:
            return str(data["experiment_id"])
        if data.get("error_code") != "RESOURCE_ALREADY_EXISTS":
            raise TrackingUnavailable(
                f"MLflow at {tracking_uri} refused to create experiment {name!r} "
                f"({code}): {_message(data)}"
            )
        experiment = await get()
        if experiment is None:
            raise TrackingUnavailable(f"experiment {name!r} vanished while being created")
    if experiment.get("lifecycle_stage") == "deleted":
        code, data = await call("POST", "restore", {"experiment_id": experiment["experiment_id"]})
        if code != 200:
            raise TrackingUnavailable(
                f"MLflow at {tracking_uri} refused to restore deleted experiment {name!r} "
                f"({code}): {_message(data)}"
            )
    return str(experiment["experiment_id"])


def _message(data: dict) -> str:
    return str(data.get("message") or data.get("error_code") or "no details")
