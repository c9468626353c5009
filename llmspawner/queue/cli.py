"""Use the batch training queue from a terminal: ``llmspawner queue submit|list|show|logs|cancel``.

::

    llmspawner queue submit train.yaml --profile medium [--priority high|normal|low]
    llmspawner queue submit llamaboard_config/mine.yaml --profile small  (LlamaBoard's)
    llmspawner queue list [--state running] [--user NAME]      (--user: admins)
    llmspawner queue show 12
    llmspawner queue logs 12 [-f] [--tail 100]
    llmspawner queue cancel 12
    llmspawner queue limit alice 2                             (admins)

Inside a user's server it works with no set-up: the hub gives every server
``JUPYTERHUB_API_TOKEN`` (allowed to use the queue) and ``LLMSPAWNER_QUEUE_URL``. Elsewhere,
set ``JUPYTERHUB_API_TOKEN`` to a token from the hub's token page, and
``LLMSPAWNER_QUEUE_URL`` to ``https://<hub>/services/llm-queue/`` (or ``JUPYTERHUB_API_URL``
to ``https://<hub>/hub/api``, from which that URL is derived). Exit status: 0 done, 1 the
queue refused (its message is printed), 2 bad usage or no connection.

``submit`` also takes LlamaBoard's saved arguments (the Train tab's *Save arguments* file,
``llamaboard_config/<name>.yaml``): it turns them into the training config LlamaBoard would
run, with the model folder of the user's LlamaBoard preset (``--model-path`` and
``--output-dir`` to choose), see :mod:`llmspawner.queue.lf_llamaboard`; and LlamaBoard's
previewed command, which the queue reads.

``submit`` checks the config against the queue's limits (:mod:`llmspawner.queue.limits`:
size, nesting, YAML aliases) before sending it, and refuses it with the message the queue
would answer (exit status 1); everything else is checked by the queue.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

# The client imports no server module (no tornado, sqlalchemy, kubernetes_asyncio,
# jupyterhub): only the standard library, httpx, the queue's names and limits (which imports
# PyYAML, a dependency of llmspawner, only when it checks a YAML config).
from . import limits
from .states import DEFAULT_PRIORITY, PRIORITIES, SERVICE_NAME, STATES

#: The service's path below the hub's URL.
SERVICE_PATH = f"/services/{SERVICE_NAME}/"


class CLIError(Exception):
    """A problem to print as ``error: ...``; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def queue_url(env: Mapping[str, str], override: str | None = None) -> str:
    """Return the queue service's URL (ending with ``/``).

    Order: ``override`` (``--url``), ``LLMSPAWNER_QUEUE_URL``, then ``JUPYTERHUB_API_URL``
    with its ``/hub/api`` replaced by :data:`SERVICE_PATH` (``/services/llm-queue/``).

    Raises:
        CLIError: none of them is set (status 2).
    """
    url = override or env.get("LLMSPAWNER_QUEUE_URL")
    if not url:
        api = (env.get("JUPYTERHUB_API_URL") or "").rstrip("/")
        if not api:
            raise CLIError(
                f"set LLMSPAWNER_QUEUE_URL (https://<hub>{SERVICE_PATH}) or "
                "JUPYTERHUB_API_URL (https://<hub>/hub/api)",
                2,
            )
        base = api[: -len("/hub/api")] if api.endswith("/hub/api") else api
        url = f"{base}{SERVICE_PATH}"
    return url.rstrip("/") + "/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``queue`` subcommands to ``parser``."""
    parser.add_argument("--url", help="the queue's URL (default: $LLMSPAWNER_QUEUE_URL)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    sub = parser.add_subparsers(dest="action", metavar="<action>")
    sub.required = True
    p = sub.add_parser("submit", help="submit a LLaMA-Factory training config")
    p.add_argument(
        "config",
        help="the training config, YAML or JSON ('-': standard input); or LlamaBoard's saved "
        "arguments (llamaboard_config/<name>.yaml) or its previewed command",
    )
    p.add_argument("--profile", required=True, help="GPU profile slug, e.g. medium")
    p.add_argument("--priority", choices=PRIORITIES, default=DEFAULT_PRIORITY)
    p.add_argument(
        "--model-path",
        help="LlamaBoard's saved arguments: the base model's folder (default: LlamaBoard's "
        "preset llamaboard_cache/user_config.yaml, else /storage/models/<model name>)",
    )
    p.add_argument(
        "--output-dir",
        help="LlamaBoard's saved arguments: the output folder, a name in "
        "saves/<model>/<method>/ or a path (default: saves/<model>/<method>/queue_<date>)",
    )
    p = sub.add_parser("list", help="list your jobs (admins: everyone's)")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--user", help="only this user's jobs (admins)")
    p.add_argument("--limit", type=int, default=200, help="at most this many (newest first)")
    p = sub.add_parser("show", help="show one job")
    p.add_argument("id", type=int)
    p = sub.add_parser("logs", help="print a job's log")
    p.add_argument("id", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as it grows")
    p.add_argument("--tail", type=int, help="only the last N lines")
    p.add_argument(
        "--attempt",
        type=int,
        help="the saved log of interrupted attempt N (llmspawner queue show ID lists them)",
    )
    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("id", type=int)
    from .render import add_render_arguments

    add_render_arguments(sub)
    p = sub.add_parser("limit", help="set a user's limit of running jobs (admins)")
    p.add_argument("user")
    p.add_argument("max_running", type=int)


class QueueClient:
    """A small HTTP client of the queue's REST API (``docs/queue-api.md``).

    Args:
        url: the service's URL, ending with ``/``.
        token: a hub API token; sent as ``Authorization: token ...`` only.
        transport: an ``httpx`` transport (tests).
    """

    def __init__(self, url: str, token: str, *, transport=None, timeout: float = 30.0):
        import httpx

        self._http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"token {token}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs):
        """Send a request; return the decoded JSON answer.

        Raises:
            CLIError: the queue answered an error (its message and field), or could not be
                reached (status 2).
        """
        import httpx

        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise CLIError(f"cannot reach the queue at {self._http.base_url}: {e}", 2) from None
        if resp.status_code >= 400:
            raise CLIError(_error_text(resp))
        return resp.json()

    def stream_logs(
        self, job_id: int, *, follow: bool, tail: int | None, out, attempt: int | None = None
    ) -> None:
        """Write a job's log to ``out`` (a binary stream) as it comes; with ``attempt``, the
        saved log of that interrupted attempt."""
        import httpx

        params = {"follow": "1" if follow else "0"}
        if tail:
            params["tail"] = str(tail)
        if attempt:
            params["attempt"] = str(attempt)
        try:
            timeout = httpx.Timeout(30.0, read=None) if follow else None
            kwargs = {"timeout": timeout} if timeout else {}
            with self._http.stream("GET", f"api/jobs/{job_id}/logs", params=params, **kwargs) as r:
                if r.status_code >= 400:
                    r.read()
                    raise CLIError(_error_text(r))
                for chunk in r.iter_bytes():
                    out.write(chunk)
                    out.flush()
        except httpx.HTTPError as e:
            raise CLIError(f"cannot reach the queue at {self._http.base_url}: {e}", 2) from None


def _error_text(resp) -> str:
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        # Not the queue's JSON: the hub's proxy answered (e.g. 503 while the service restarts).
        hint = " (the service is not running; the hub restarts it: retry shortly)"
        return (
            f"the queue answered {resp.status_code} {resp.reason_phrase}"
            f"{hint if resp.status_code in (502, 503) else ''}"
        )
    return _format_error(data, resp.status_code)


def _format_error(data: dict, status: int) -> str:
    """The queue's error answer (``{"error", "field", "problems"}``) as printed lines."""
    message = str(data.get("error") or f"the queue answered {status}")
    if data.get("field") and data.get("field") not in message:
        message += f" (field: {data['field']})"
    for problem in data.get("problems") or []:
        message += f"\n  {problem.get('field')}: {problem.get('message')}"
    return message


def _read_config(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e.strerror}", 2) from None
    except UnicodeDecodeError as e:
        raise CLIError(f"cannot read {path}: not UTF-8 text ({e.reason})", 2) from None


def llamaboard_user_config(folders) -> dict | None:
    """LlamaBoard's per-user preset ``llamaboard_cache/user_config.yaml`` (its ``path_dict``:
    model name -> folder) from the first of ``folders`` that has one; ``None`` when none."""
    import yaml

    for folder in folders:
        path = Path(folder) / "llamaboard_cache" / "user_config.yaml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            return data
    return None


def from_llamaboard(
    config: str,
    *,
    model_path: str | None = None,
    output_dir: str | None = None,
    folders=(),
    stamp: str | None = None,
    models_dir: str | None = None,
) -> str:
    """``config`` itself, or, for LlamaBoard's saved arguments, the training config they
    stand for as YAML (:func:`llmspawner.queue.lf_llamaboard.from_llamaboard_args`, with the
    model folder from ``model_path`` or the user's LlamaBoard preset in ``folders``).

    Anything that is not saved arguments (a training config, LlamaBoard's previewed command,
    text that is not YAML) is returned unchanged: the queue reads it.

    Raises:
        CLIError: the saved arguments have a problem (its field named, status 1).
    """
    import yaml

    from .lf_config import ConfigInvalid
    from .lf_llamaboard import from_llamaboard_args, is_llamaboard_args

    try:
        limits.check_config_text(config)
        data = limits.load_config_text(config)
    except Exception:  # over a limit or not YAML: submit_body or the queue says so
        return config
    if not isinstance(data, dict) or not is_llamaboard_args(data):
        return config
    try:
        args = from_llamaboard_args(
            data,
            model_path=model_path,
            output_dir=output_dir,
            user_config=llamaboard_user_config(folders),
            stamp=stamp,
            models_dir=models_dir,
        )
    except ConfigInvalid as e:
        raise CLIError(f"LlamaBoard's saved arguments have problems:\n{e}") from None
    return yaml.safe_dump(args, sort_keys=False, allow_unicode=True)


def submit_body(config: str, *, profile: str, priority: str) -> bytes:
    """The JSON body of ``POST api/jobs``, checked against the queue's limits first.

    Raises:
        CLIError: the config or the body is over a limit of :mod:`llmspawner.queue.limits`
            (status 1, the queue's own message); nothing is sent.
    """
    try:
        limits.check_config_text(config)
    except limits.LimitExceeded as e:
        raise CLIError(_format_error(e.to_json(), e.status)) from None
    except Exception:  # not YAML, say: the queue answers that, with its own message
        pass
    body = json.dumps({"config": config, "profile": profile, "priority": priority}).encode()
    try:
        limits.check_body_size(len(body))
    except limits.LimitExceeded as e:
        raise CLIError(_format_error(e.to_json(), e.status)) from None
    return body


def format_job(job: dict) -> str:
    """A job as ``key: value`` lines, for ``show`` and ``submit``."""
    lines = [f"job {job['id']} of {job['user']}: {job['state']}"]
    if job.get("position"):
        lines[0] += f" (position {job['position']} in the {job['profile']} line)"
    for key in (
        "reason",
        "profile",
        "priority",
        "submitted_at",
        "admitted_at",
        "started_at",
        "finished_at",
        "k8s_job",
        "mlflow_experiment",
        "mlflow_run_url",
    ):
        if job.get(key):
            lines.append(f"  {key}: {job[key]}")
    model = (job.get("config") or {}).get("register_model")
    if model:
        run_link = job.get("mlflow_run_url") or ""
        ui = run_link.split("/#/", 1)[0] if "/#/" in run_link else ""
        link = f" ({ui}/#/models/{quote(str(model), safe='')})" if ui else ""
        lines.append(f"  registered_model: {model}{link}")
    for a in job.get("attempts") or []:
        saved = "log saved" if a.get("log_saved") else "no log"
        lines.append(
            f"  attempt {a['attempt']}: pod {a['pod']} (Job {a['k8s_job']}): "
            f"{a.get('reason') or 'ended'} [{saved}; llmspawner queue logs {job['id']} "
            f"--attempt {a['attempt']}]"
        )
    return "\n".join(lines)


def format_table(jobs: list[dict]) -> str:
    """Jobs as a fixed-width table, for ``list``."""
    header = ("ID", "USER", "STATE", "POS", "PROFILE", "PRIORITY", "SUBMITTED", "REASON")
    rows = [
        (
            str(j["id"]),
            j["user"],
            j["state"],
            str(j.get("position") or ""),
            j["profile"],
            j["priority"],
            (j.get("submitted_at") or "")[:19].replace("T", " "),
            (j.get("reason") or "")[:60],
        )
        for j in jobs
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def execute(args: argparse.Namespace, client: QueueClient, out=None) -> int:
    """Run one action with ``client``; print to ``out`` (default stdout); return 0."""
    out = out or sys.stdout
    if args.action == "submit":
        import time

        config = from_llamaboard(
            _read_config(args.config),
            model_path=getattr(args, "model_path", None),
            output_dir=getattr(args, "output_dir", None),
            folders=[os.getcwd(), os.path.expanduser("~")],
            stamp=time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime()),
            models_dir=os.environ.get("LLMSPAWNER_MODELS_DIR"),  # the pod's (workload.py)
        )
        body = submit_body(config, profile=args.profile, priority=args.priority)
        headers = {"Content-Type": "application/json"}
        job = client.request("POST", "api/jobs", content=body, headers=headers)
        print(json.dumps(job, indent=2) if args.json else format_job(job), file=out)
    elif args.action == "list":
        params = {"limit": str(args.limit)}
        if args.state:
            params["state"] = args.state
        if args.user:
            params["user"] = args.user
        jobs = client.request("GET", "api/jobs", params=params)["jobs"]
        print(json.dumps(jobs, indent=2) if args.json else format_table(jobs), file=out)
    elif args.action == "show":
        job = client.request("GET", f"api/jobs/{args.id}")
        print(json.dumps(job, indent=2) if args.json else format_job(job), file=out)
    elif args.action == "logs":
        binary = getattr(out, "buffer", out)
        client.stream_logs(
            args.id,
            follow=args.follow,
            tail=args.tail,
            out=binary,
            attempt=getattr(args, "attempt", None),
        )
    elif args.action == "cancel":
        job = client.request("DELETE", f"api/jobs/{args.id}")
        print(json.dumps(job, indent=2) if args.json else format_job(job), file=out)
    elif args.action == "limit":
        data = client.request(
            "PUT",
            f"api/users/{quote(args.user, safe='')}/limit",
            json={"max_running": args.max_running},
        )
        print(json.dumps(data) if args.json else f"{data['user']}: {data['max_running']}", file=out)
    return 0


def run(args: argparse.Namespace, env: Mapping[str, str] | None = None, transport=None) -> int:
    """Run ``llmspawner queue ...``; return the exit status (errors go to stderr)."""
    env = os.environ if env is None else env
    if args.action == "render":  # offline: no queue, no token
        from .render import render

        return render(args, env)
    try:
        url = queue_url(env, args.url)
        token = env.get("JUPYTERHUB_API_TOKEN")
        if not token:
            raise CLIError(
                "set JUPYTERHUB_API_TOKEN to a hub API token (inside your server it is set)", 2
            )
        client = QueueClient(url, token, transport=transport)
        try:
            return execute(args, client)
        finally:
            client.close()
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
