"""The one MLflow module: a user's experiment (name, pod environment, making sure it exists),
a queue job's run (found by its job-id tag) and the links to both.

Each user reports to their own experiment (default ``{username}-experiments``) on one shared
MLflow tracking server. The user's server (``spawner``) and the batch queue's Jobs (``queue``)
both take the name and the environment from here, and nothing else in llmspawner talks to
MLflow.

Names, environment and links are pure functions. The I/O goes through MLflow's REST API
(https://mlflow.org/docs/latest/api_reference/rest-api.html) with tornado's async HTTP client,
so that the hub's event loop is never blocked. One error policy: every I/O function raises
:class:`TrackingUnavailable` when MLflow cannot be reached or refuses; the caller decides
(a server starts anyway, a Job runs anyway). One cache policy: :class:`Tracker` keeps the
experiment ids it found for the life of the process, and remembers a failure only for
``retry_after`` seconds (meanwhile it raises at once, without asking MLflow again).

Access control (docs/mlflow.md): MLflow runs its auth app with
:func:`llmspawner.mlflow_auth.authenticate_request`. The hub and the queue make a user's
experiment with MLflow's admin credential (:func:`admin_headers`, from
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` of their own environment, never a
pod's) and give the user ``MANAGE`` on it (``owner``); pods get the user's own hub token as
``MLFLOW_TRACKING_TOKEN``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import string
import time
from collections.abc import Callable
from urllib.parse import quote, urlencode

#: The default template of a user's experiment name.
DEFAULT_EXPERIMENT_TEMPLATE = "{username}-experiments"
#: The MLflow run tag holding a queue job's id; a queue Job sets it through ``MLFLOW_TAGS``
#: (read by transformers' ``MLflowCallback``), and :func:`find_job_run` searches by it.
JOB_ID_TAG = "llmspawner.job_id"

_TEMPLATE_FIELDS = {"username", "slug"}
#: Schemes of artifact locations off the pod: the tracking server's proxied store
#: (``mlflow-artifacts:``, ``mlflow server --artifacts-destination``, served by default with
#: ``--serve-artifacts``) or an object store a pod can write to with its own credentials.
REMOTE_ARTIFACT_SCHEMES = ("mlflow-artifacts:", "http:", "https:", "s3:", "gs:", "wasbs:", "abfss:")

log = logging.getLogger(__name__)


class TrackingUnavailable(Exception):
    """MLflow could not be reached or refused the request; the message says why.

    Attributes:
        cached: ``True`` when :class:`Tracker` raised it without asking MLflow (a failure
            less than ``retry_after`` seconds ago), so callers may log it more quietly.
    """

    def __init__(self, message: str, *, cached: bool = False):
        super().__init__(message)
        self.cached = cached


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
    # Imported here: the slug comes from kubespawner, which `llmspawner deploy check`'s
    # install (the `deploy` extra) does not have; it only validates templates.
    from .storage import user_slug

    check_experiment_template(template)
    return template.format(username=username, slug=user_slug(username))


#: The MLflow client settings of every pod that reports (a server and a queue Job), on top of
#: the tracking URI and experiment (:func:`tracking_env`):
#:
#: - ``HF_MLFLOW_LOG_ARTIFACTS=0``: transformers' ``MLflowCallback`` does not log checkpoints
#:   itself (it would log each one as an MLflow pyfunc model and miss the final adapter and the
#:   logs); :mod:`llmspawner.training` uploads the adapter and the logs as the run's
#:   artifacts instead, through the tracking server's proxied store (``mlflow-artifacts:``).
#: - ``MLFLOW_HTTP_REQUEST_TIMEOUT=60``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=3``: a hanging MLflow
#:   delays a training by minutes, not by MLflow's defaults (120 s per try, 7 retries with
#:   back-off); https://mlflow.org/docs/latest/api_reference/python_api/mlflow.environment_variables.html
POD_MLFLOW_ENV = {
    "HF_MLFLOW_LOG_ARTIFACTS": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
}


def tracking_env(*, tracking_uri: str, experiment: str) -> dict[str, str]:
    """Return the environment variables that make MLflow clients in a pod report to ``experiment``.

    ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` are read by MLflow's fluent API and
    by the Hugging Face ``MLflowCallback`` that LLaMA-Factory uses with ``report_to: mlflow``
    (https://huggingface.co/docs/transformers/main_classes/callback#transformers.integrations.MLflowCallback);
    :data:`POD_MLFLOW_ENV` comes with them. This is the one place both a user's server and a
    queue Job get them from (:func:`llmspawner.workload.build_workload`).

    Returns:
        A new dict: ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME`` and
        :data:`POD_MLFLOW_ENV`; empty when ``tracking_uri`` is empty (tracking switched off).
    """
    if not tracking_uri:
        return {}
    return {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": experiment,
        **POD_MLFLOW_ENV,
    }


def admin_headers(env=None) -> dict[str, str]:
    """The HTTP headers of MLflow's admin credential, from ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD`` of ``env`` (default ``os.environ``; MLflow's own client
    variables, https://mlflow.org/docs/latest/self-hosting/security/basic-http-auth/).

    Returns:
        ``{"Authorization": "Basic ..."}``, or ``{}`` when either is unset (MLflow without
        its auth app).
    """
    env = os.environ if env is None else env
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    if not user or not password:
        return {}
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """Return the MLflow UI link of an experiment (``<uri>/#/experiments/<id>``)."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{quote(str(experiment_id))}"


def run_url(ui_url: str, run_id: str) -> str:
    """Return the MLflow UI link of a run (``<ui>/#/runs/<id>``, which MLflow's UI redirects
    to the run's page in its experiment)."""
    return f"{ui_url.rstrip('/')}/#/runs/{quote(str(run_id))}"


def model_url(ui_url: str, name: str, version: int | str | None = None) -> str:
    """Return the MLflow UI link of a registered model (``<ui>/#/models/<name>``) or of one
    of its versions (``.../versions/<version>``)."""
    url = f"{ui_url.rstrip('/')}/#/models/{quote(str(name), safe='')}"
    return url if version is None else f"{url}/versions/{quote(str(version))}"


def job_run_filter(job_id: int | str) -> str:
    """MLflow's ``runs/search`` filter of the runs tagged with a queue job's id:
    ``tags."llmspawner.job_id" = '<id>'`` (a tag key with a dot must be quoted,
    https://mlflow.org/docs/latest/ml/search/search-runs/)."""
    return f"tags.\"{JOB_ID_TAG}\" = '{int(job_id)}'"


async def _call(
    client,
    tracking_uri: str,
    method: str,
    path: str,
    body: dict | None,
    *,
    timeout,
    headers,
    api: str = "2.0",
) -> tuple[int, dict]:
    """One REST call to ``<uri>/api/<api>/mlflow/<path>``: ``(HTTP status, JSON body or {})``.

    Raises:
        TrackingUnavailable: no HTTP response (refused, timed out).
    """
    from tornado.httpclient import HTTPClientError

    url = tracking_uri.rstrip("/") + f"/api/{api}/mlflow/" + path
    try:
        resp = await client.fetch(
            url,
            method=method,
            body=None if body is None else json.dumps(body),
            headers={"Content-Type": "application/json", **(headers or {})},
            connect_timeout=timeout,
            request_timeout=timeout,
            raise_error=False,
        )
    except (OSError, HTTPClientError) as e:
        raise TrackingUnavailable(f"MLflow at {tracking_uri} is unreachable: {e}") from e
    except Exception as e:  # e.g. a server that closes mid-answer: never a caller's traceback
        raise TrackingUnavailable(
            f"MLflow at {tracking_uri} failed: {type(e).__name__}: {e}"
        ) from e
    if resp.code == 599:  # tornado's code for "no HTTP response" (timeout, refused)
        raise TrackingUnavailable(
            f"MLflow at {tracking_uri} is unreachable: {resp.error or 'no response'}"
        )
    try:
        data = json.loads(resp.body or b"{}")
    except ValueError:
        data = {}
    return resp.code, data if isinstance(data, dict) else {}


def _client(http_client):
    from tornado.httpclient import AsyncHTTPClient

    return http_client or AsyncHTTPClient()


async def find_job_run(
    tracking_uri: str,
    experiment_id: str,
    job_id: int | str,
    *,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    http_client=None,
    started_after_ms: int | None = None,
) -> str | None:
    """Return the id of the newest run of queue job ``job_id`` in an experiment, or ``None``.

    Searches ``POST runs/search`` with :func:`job_run_filter` (the tag :data:`JOB_ID_TAG`
    that the job's pod sets through ``MLFLOW_TAGS``); the run's name is not used.

    Args:
        tracking_uri: base URL of the MLflow tracking server.
        experiment_id: the experiment to search (:func:`ensure_experiment`).
        job_id: the queue job's id.
        timeout: per-request timeout in seconds.
        headers: HTTP headers; default :func:`admin_headers` of this process's environment.
        http_client: a ``tornado.httpclient.AsyncHTTPClient``; the shared one when omitted.
        started_after_ms: only runs started after this time (ms since the epoch): a requeued
            job's current attempt's, not an interrupted one's (C, issue 13 §5).

    Raises:
        TrackingUnavailable: MLflow could not be reached in time or answered with an error.
    """
    body = {
        "experiment_ids": [str(experiment_id)],
        "filter": job_run_filter(job_id),
        "max_results": 1,
        "order_by": ["attributes.start_time DESC"],
    }
    if started_after_ms is not None:
        body["filter"] += f" and attributes.start_time > {int(started_after_ms)}"
    code, data = await _call(
        _client(http_client),
        tracking_uri,
        "POST",
        "runs/search",
        body,
        timeout=timeout,
        headers=admin_headers() if headers is None else headers,
    )
    if code != 200:
        raise TrackingUnavailable(
            f"MLflow at {tracking_uri} refused to search runs ({code}): {_message(data)}"
        )
    runs = data.get("runs") or []
    return str(runs[0]["info"]["run_id"]) if runs else None


#: MLflow's final run statuses (https://mlflow.org/docs/latest/api_reference/rest-api.html#mlflowrunstatus).
FINAL_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


async def end_job_runs(
    tracking_uri: str,
    experiment_id: str,
    job_id: int | str,
    status: str,
    *,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    http_client=None,
    now_ms: int | None = None,
    started_before_ms: int | None = None,
) -> list[str]:
    """Give every run of queue job ``job_id`` that is still ``RUNNING`` the final ``status``.

    A training that is killed (SIGKILL of an out-of-memory kill, a deleted pod past its grace
    period) never ends its run, which MLflow would show as running for ever. Searches
    ``POST runs/search`` with :func:`job_run_filter` and ``attributes.status = 'RUNNING'``,
    then ``POST runs/update`` ``{run_id, status, end_time}`` for each (idempotent: runs that
    ended are not touched). Needs a credential that may update the user's runs (the queue's
    admin credential, :func:`admin_headers`).

    Args:
        tracking_uri: base URL of the MLflow tracking server.
        experiment_id: the user's experiment.
        job_id: the queue job's id.
        status: ``FINISHED``, ``FAILED`` or ``KILLED``.
        timeout: per-request timeout in seconds.
        headers: HTTP headers; default :func:`admin_headers` of this process's environment.
        http_client: a ``tornado.httpclient.AsyncHTTPClient``; the shared one when omitted.
        now_ms: the end time in milliseconds since the epoch (default now).
        started_before_ms: only runs started before this time (ms since the epoch): those of
            an interrupted attempt, not the next attempt's (C, issue 13 §5).

    Returns:
        The ids of the runs ended.

    Raises:
        ValueError: ``status`` is not a final status.
        TrackingUnavailable: MLflow could not be reached in time or answered with an error.
    """
    if status not in FINAL_RUN_STATUSES:
        raise ValueError(f"status must be one of {', '.join(FINAL_RUN_STATUSES)}, not {status!r}")
    client = _client(http_client)
    headers = admin_headers() if headers is None else headers
    body = {
        "experiment_ids": [str(experiment_id)],
        "filter": f"{job_run_filter(job_id)} and attributes.status = 'RUNNING'",
        "max_results": 100,
    }
    if started_before_ms is not None:
        body["filter"] += f" and attributes.start_time < {int(started_before_ms)}"
    code, data = await _call(
        client, tracking_uri, "POST", "runs/search", body, timeout=timeout, headers=headers
    )
    if code != 200:
        raise TrackingUnavailable(
            f"MLflow at {tracking_uri} refused to search runs ({code}): {_message(data)}"
        )
    ended = []
    end_time = int(time.time() * 1000) if now_ms is None else now_ms
    for run in data.get("runs") or []:
        run_id = str(run["info"]["run_id"])
        if (run["info"].get("status") or "RUNNING") != "RUNNING":
            continue
        code, data = await _call(
            client,
            tracking_uri,
            "POST",
            "runs/update",
            {"run_id": run_id, "status": status, "end_time": end_time},
            timeout=timeout,
            headers=headers,
        )
        if code != 200:
            raise TrackingUnavailable(
                f"MLflow at {tracking_uri} refused to end run {run_id} ({code}): {_message(data)}"
            )
        ended.append(run_id)
    return ended


def artifact_location_problem(experiment: dict) -> str | None:
    """A sentence when an experiment's artifacts would not go through the tracking server.

    A new experiment of a server run with ``--artifacts-destination`` (and ``--serve-artifacts``,
    MLflow's default) gets ``mlflow-artifacts:/<id>``: pods upload through the server, with
    their own token, and MLflow's auth app lets only the owner write. An experiment made
    earlier by a server without them keeps a local path (``/mlflow/mlruns/1``, ``file:...``):
    a pod's client would write *into its own file system*, so :mod:`llmspawner.training`
    uploads nothing there (https://mlflow.org/docs/latest/self-hosting/architecture/artifact-store/).

    Args:
        experiment: MLflow's experiment object (``experiment_id``, ``name``, ``artifact_location``).

    Returns:
        ``None`` when the location is off the pod (:data:`REMOTE_ARTIFACT_SCHEMES`), else the
        sentence naming the experiment, its location and what to do.
    """
    location = str(experiment.get("artifact_location") or "")
    if location.startswith(REMOTE_ARTIFACT_SCHEMES):
        return None
    return (
        f"MLflow experiment {experiment.get('name')!r} (id {experiment.get('experiment_id')}) "
        f"keeps its artifacts at the local path {location!r}, not in the tracking server's "
        "proxied store (mlflow-artifacts:), so trainings cannot upload their adapter and logs "
        "to it; rename it (the next start makes a new one with the proxied store) or ask an "
        "admin (docs/mlflow.md, 'Artifacts')"
    )


async def ensure_experiment(
    tracking_uri: str,
    name: str,
    *,
    owner: str | None = None,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    http_client=None,
    problems: list[str] | None = None,
) -> str:
    """Make sure the MLflow experiment ``name`` exists and is active; return its id.

    Idempotent: an existing experiment is reused, a deleted one is restored, and a concurrent
    creation by someone else (``RESOURCE_ALREADY_EXISTS``) is resolved by reading it back.
    With ``owner``, the MLflow user ``owner`` is made to exist (``users/create``, a random
    password nobody learns: hub users log in with hub tokens) and is granted ``MANAGE`` on
    the experiment (``POST /api/3.0/mlflow/users/permissions/grant``, MLflow 3.17's auth app),
    which needs an admin credential in ``headers``.

    Args:
        tracking_uri: base URL of the MLflow tracking server, e.g.
            ``http://mlflow:5000/services/mlflow``.
        name: the experiment name (see :func:`experiment_name`).
        owner: the hub username who owns it; ``None``: no permission is granted.
        timeout: per-request timeout in seconds (connect and whole request).
        headers: HTTP headers; default :func:`admin_headers` of this process's environment.
        http_client: a ``tornado.httpclient.AsyncHTTPClient``; the shared one when omitted.
        problems: a list the sentence of :func:`artifact_location_problem` is appended to
            when the experiment's artifacts would not go through the tracking server (it is
            logged as a warning too); the experiment is used anyway.

    Returns:
        The experiment id (a string, as MLflow returns it).

    Raises:
        TrackingUnavailable: MLflow could not be reached in time or answered with an error.
    """
    client = _client(http_client)
    if headers is None:
        headers = admin_headers()

    def check_location(experiment: dict) -> None:
        problem = artifact_location_problem(experiment)
        if problem is not None:
            log.warning("%s", problem)
            if problems is not None:
                problems.append(problem)

    async def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        return await _call(
            client,
            tracking_uri,
            method,
            "experiments/" + path,
            body,
            timeout=timeout,
            headers=headers,
        )

    async def get() -> dict | None:
        code, data = await call("GET", "get-by-name?" + urlencode({"experiment_name": name}))
        if code == 200:
            return data["experiment"]
        if code == 404 or data.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise TrackingUnavailable(f"MLflow at {tracking_uri} answered {code}: {_message(data)}")

    async def owned(experiment_id: str) -> str:
        if owner is not None:
            await grant_manage(
                tracking_uri,
                owner,
                experiment_id,
                timeout=timeout,
                headers=headers,
                http_client=client,
            )
        return experiment_id

    experiment = await get()
    if experiment is None:
        code, data = await call("POST", "create", {"name": name})
        if code == 200:
            created = await get()  # its artifact location is the server's default
            if created is not None:
                check_location(created)
            return await owned(str(data["experiment_id"]))
        if data.get("error_code") != "RESOURCE_ALREADY_EXISTS":
            raise TrackingUnavailable(
                f"MLflow at {tracking_uri} refused to create experiment {name!r} "
                f"({code}): {_message(data)}"
            )
        experiment = await get()
        if experiment is None:
            raise TrackingUnavailable(f"experiment {name!r} vanished while being created")
    check_location(experiment)
    if experiment.get("lifecycle_stage") == "deleted":
        code, data = await call("POST", "restore", {"experiment_id": experiment["experiment_id"]})
        if code != 200:
            raise TrackingUnavailable(
                f"MLflow at {tracking_uri} refused to restore deleted experiment {name!r} "
                f"({code}): {_message(data)}"
            )
    return await owned(str(experiment["experiment_id"]))


async def grant_manage(
    tracking_uri: str,
    username: str,
    experiment_id: str,
    *,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    http_client=None,
) -> None:
    """Make the MLflow user ``username`` exist and give them ``MANAGE`` on an experiment.

    Idempotent (a second spawn, or an experiment the user made themselves, which MLflow's
    auth app already gave its creator ``MANAGE`` on): ``POST /api/2.0/mlflow/users/create``
    (an existing user is kept), then ``GET /api/3.0/mlflow/users/permissions/get`` (the
    user's effective permission on it); already ``MANAGE``: nothing more. Otherwise
    ``POST /api/3.0/mlflow/users/permissions/grant``; MLflow's grant never replaces a row
    (``RESOURCE_ALREADY_EXISTS``, 400, for a lesser grant of the user there), so such a grant
    is revoked (``users/permissions/revoke``) and granted again as ``MANAGE``. Needs an
    admin credential. MLflow 3.x auth app, upstream:
    https://github.com/mlflow/mlflow/blob/master/mlflow/server/auth/__init__.py
    (``grant_user_permission``, ``get_user_permission``, ``revoke_user_permission``).

    Raises:
        TrackingUnavailable: MLflow could not be reached or refused (e.g. 401/403 without an
            admin credential).
    """
    client = _client(http_client)
    if headers is None:
        headers = admin_headers()
    code, data = await _call(
        client,
        tracking_uri,
        "POST",
        "users/create",
        {"username": username, "password": secrets.token_urlsafe(32)},
        timeout=timeout,
        headers=headers,
    )
    if code != 200 and data.get("error_code") != "RESOURCE_ALREADY_EXISTS":
        raise TrackingUnavailable(
            f"MLflow at {tracking_uri} refused to create the user {username!r} "
            f"({code}): {_message(data)}"
        )
    resource = {
        "username": username,
        "resource_type": "experiment",
        "resource_id": str(experiment_id),
    }

    async def v3(method: str, path: str, body: dict) -> tuple[int, dict]:
        if method == "GET":
            path, body = path + "?" + urlencode(body), None
        return await _call(
            client, tracking_uri, method, path, body, timeout=timeout, headers=headers, api="3.0"
        )

    code, data = await v3("GET", "users/permissions/get", resource)
    if code == 200 and data.get("permission") == "MANAGE":
        return
    code, data = await v3("POST", "users/permissions/grant", {**resource, "permission": "MANAGE"})
    if code != 200 and data.get("error_code") == "RESOURCE_ALREADY_EXISTS":
        # A lesser grant of this user on it (e.g. READ): MLflow's grant does not update.
        code, data = await v3("POST", "users/permissions/revoke", resource)
        if code == 200:
            code, data = await v3(
                "POST", "users/permissions/grant", {**resource, "permission": "MANAGE"}
            )
        elif data.get("error_code") == "RESOURCE_DOES_NOT_EXIST":  # revoked meanwhile
            code, data = await v3(
                "POST", "users/permissions/grant", {**resource, "permission": "MANAGE"}
            )
    if code != 200 and data.get("error_code") == "RESOURCE_ALREADY_EXISTS":
        # A concurrent ensure of the same owner won the race: fine if it is MANAGE now.
        code, data = await v3("GET", "users/permissions/get", resource)
        if code == 200 and data.get("permission") == "MANAGE":
            return
    if code != 200:
        raise TrackingUnavailable(
            f"MLflow at {tracking_uri} refused to give {username!r} MANAGE on experiment "
            f"{experiment_id} ({code}): {_message(data)}"
        )


def _message(data: dict) -> str:
    return str(data.get("message") or data.get("error_code") or "no details")


class Tracker:
    """The MLflow I/O of a long-running service (the queue), with the one cache policy.

    Experiment ids found are kept for the life of the object (an experiment's id never
    changes; a deleted one is restored with the same id by :func:`ensure_experiment`). After a
    failure, calls raise :class:`TrackingUnavailable` at once, without I/O, for
    ``retry_after`` seconds; then MLflow is asked again. Failures are never cached for longer.

    Args:
        tracking_uri: the MLflow URL this process can reach.
        ui_url: MLflow's URL in links shown to users (default ``tracking_uri``).
        timeout: seconds per request.
        retry_after: seconds a failure is remembered.
        clock: monotonic clock in seconds (injectable for tests).
        http_client: a ``tornado.httpclient.AsyncHTTPClient`` (default: the shared one).
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        ui_url: str = "",
        timeout: float = 5.0,
        retry_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        http_client=None,
    ):
        self.tracking_uri = tracking_uri.rstrip("/")
        self.ui_url = (ui_url or tracking_uri).rstrip("/")
        self.timeout = timeout
        self.retry_after = retry_after
        self._clock = clock
        self._http_client = http_client
        self._experiments: dict[str, str] = {}
        #: experiment name -> the owner granted MANAGE on it by this tracker
        self._owners: dict[str, str] = {}
        self._failed: tuple[float, str] | None = None
        #: Experiment name -> the sentence of :func:`artifact_location_problem`, for the
        #: experiments found with a local artifact location (shown with their jobs).
        self.artifact_problems: dict[str, str] = {}

    def _check_backoff(self) -> None:
        if self._failed is not None:
            at, message = self._failed
            if self._clock() - at < self.retry_after:
                raise TrackingUnavailable(
                    f"{message} (not retried for {self.retry_after:g} s)", cached=True
                )
            self._failed = None

    async def _guarded(self, coro):
        """Await ``coro`` (made after :meth:`_check_backoff` passed); remember a failure."""
        try:
            return await coro
        except TrackingUnavailable as e:
            self._failed = (self._clock(), str(e))
            raise

    async def experiment_id(self, name: str, owner: str | None = None) -> str:
        """The id of experiment ``name``, made to exist (:func:`ensure_experiment`, with
        ``owner`` given ``MANAGE``); cached.

        Raises:
            TrackingUnavailable: MLflow failed now or less than ``retry_after`` s ago.
        """
        if name in self._experiments and (owner is None or self._owners.get(name) == owner):
            return self._experiments[name]
        self._check_backoff()
        problems: list[str] = []
        exp_id = await self._guarded(
            ensure_experiment(
                self.tracking_uri,
                name,
                owner=owner,
                timeout=self.timeout,
                http_client=self._http_client,
                problems=problems,
            )
        )
        if problems:
            self.artifact_problems[name] = problems[0]
        self._experiments[name] = exp_id
        if owner is not None:
            # granted now: an experiment found without an owner (or made by a queue service
            # killed between its create and its grant) is granted at the next owner's call
            self._owners[name] = owner
        return exp_id

    async def find_job_run(
        self,
        experiment: str,
        job_id: int | str,
        *,
        owner: str | None = None,
        started_after_ms: int | None = None,
    ) -> str | None:
        """The id of queue job ``job_id``'s newest run in experiment ``experiment`` (a name),
        or ``None`` while it has none (:func:`find_job_run`, ``started_after_ms`` too); with
        ``owner``, the experiment is also made theirs (:meth:`experiment_id`) if this tracker
        has not done so yet.

        Raises:
            TrackingUnavailable: MLflow failed now or less than ``retry_after`` s ago.
        """
        exp_id = await self.experiment_id(experiment, owner=owner)
        self._check_backoff()
        return await self._guarded(
            find_job_run(
                self.tracking_uri,
                exp_id,
                job_id,
                timeout=self.timeout,
                http_client=self._http_client,
                started_after_ms=started_after_ms,
            )
        )

    def known_experiment_id(self, name: str, owner: str | None = None) -> str | None:
        """The id of experiment ``name`` if this tracker found it before (with ``owner``:
        and granted it to them) (no I/O)."""
        if owner is not None and self._owners.get(name) != owner:
            return None
        return self._experiments.get(name)

    async def end_job_runs(
        self,
        experiment: str,
        job_id: int | str,
        status: str,
        *,
        owner: str | None = None,
        started_before_ms: int | None = None,
    ) -> list[str]:
        """End the runs of queue job ``job_id`` still ``RUNNING`` in experiment ``experiment``
        (a name) with ``status`` (:func:`end_job_runs`, ``started_before_ms`` too); return
        their ids. ``owner``: as for :meth:`find_job_run`.

        Raises:
            TrackingUnavailable: MLflow failed now or less than ``retry_after`` s ago.
        """
        exp_id = await self.experiment_id(experiment, owner=owner)
        self._check_backoff()
        return await self._guarded(
            end_job_runs(
                self.tracking_uri,
                exp_id,
                job_id,
                status,
                timeout=self.timeout,
                http_client=self._http_client,
                started_before_ms=started_before_ms,
            )
        )

    def run_url(self, run_id: str) -> str:
        """The MLflow UI link of a run (:func:`run_url` with ``ui_url``)."""
        return run_url(self.ui_url, run_id)

    def model_url(self, name: str, version: int | str | None = None) -> str:
        """The MLflow UI link of a registered model or version (:func:`model_url`)."""
        return model_url(self.ui_url, name, version)
