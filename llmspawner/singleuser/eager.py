"""LlamaBoard starts with the user's server: a Jupyter Server extension.

jupyter-server-proxy (4.6) starts a server process only when the first request for it arrives
(``SuperviseAndProxyHandler.ensure_process``, jupyter_server_proxy/handlers.py), so
LlamaBoard's whole cold start (6-20 s: importing torch, transformers and Gradio) used to be
added to the user's first click on its tile. This extension starts it as soon as the Jupyter
server's event loop runs, through the proxy's **own** machinery, so that by the time
JupyterLab has loaded LlamaBoard is up or nearly so:

- It asks the server's router which handler serves ``<base_url>llamaboard/``
  (``tornado.web.Application.find_handler``, the lookup a real request makes) and builds that
  handler — jupyter-server-proxy's ``SuperviseAndProxyHandler`` subclass for the
  ``llamaboard`` entry point — for a request that is never executed. The handler shares the
  proxy's per-server ``state`` dict (the process and its ``proc_lock``) with every user
  request, so the process started here (:func:`ensure_process`: the proxy's own start, under
  its lock) is *the* LlamaBoard: a user request that comes while it starts waits on the same
  lock and is then proxied to the same process; there is never a second copy.
- It notices that LlamaBoard answers within 0.2 s, where the proxy's own wait (simpervisor's
  doubling sleeps) notices it up to about as late again as LlamaBoard took to start.
- No HTTP request passes through the Jupyter server: the proxy's readiness check talks to
  LlamaBoard's own port, so nothing records activity (``ProxyHandler._record_activity``
  runs only for proxied requests, Jupyter's ``api_last_activity`` only for API requests). An
  eagerly started, unused LlamaBoard leaves the server's ``last_activity`` — what
  jupyterhub-singleuser reports to the hub and the idle culler judges — unchanged; and it is
  not a training (:func:`llmspawner.singleuser.activity.is_training_command`).
- A failure (``llamafactory-cli`` missing, LlamaBoard not answering within its timeout) is
  logged and nothing else happens: the Jupyter server has started before this runs and never
  waits for it; the proxy has forgotten the failed process, so the tile starts LlamaBoard
  again and shows the proxy's error, as it did without this extension.
- After LlamaBoard answers, its timer components are read once
  (:class:`llmspawner.singleuser.gradio_activity.TimerIds`), so that its 5-second timer is
  never counted as activity, not even the first tick.

Switched off by ``LLMSPAWNER_LLAMABOARD_EAGER_START=0`` in the server's environment: the
spawner sets it from ``c.LLMPlatform.llamaboard_eager_start`` (see
:class:`llmspawner.settings.LLMPlatform`). ``GET <base_url>llmspawner/llamaboard-start``
(authenticated like every page of the server, not counted as activity) answers how the start
went, as JSON (:meth:`StartRecord.to_json`).

Enabled by ``jupyter-config/jupyter_server_config.d/llmspawner.json`` (installed to
``etc/jupyter``), next to jupyter-server-proxy's own ``jupyter-server-proxy.json``; without
jupyter-server-proxy it logs a warning and does nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .llamaboard import SERVER_NAME

log = logging.getLogger(__name__)

#: Environment variable switching the eager start (``0``/``false``/``no``/``off``: off). The
#: hub's setting of the same name is ``LLMPlatform.llamaboard_eager_start``.
ENABLE_ENV = "LLMSPAWNER_LLAMABOARD_EAGER_START"
#: The status page, relative to the server's ``base_url``.
STATUS_PATH = "llmspawner/llamaboard-start"
#: The ``web_app.settings`` key of the :class:`StartRecord`. It must not end with
#: ``_last_activity``: Jupyter Server reads such keys as activity.
SETTINGS_KEY = "llmspawner_llamaboard_start"

#: Seconds between readiness checks of a starting LlamaBoard (see :func:`ensure_process`).
READY_INTERVAL = 0.2

#: States of :attr:`StartRecord.state`.
OFF, WAITING, STARTING, READY, FAILED, UNAVAILABLE = (
    "off",
    "waiting",
    "starting",
    "ready",
    "failed",
    "unavailable",
)


def eager_start_enabled(environ: Mapping[str, str], *, log: logging.Logger = log) -> bool:
    """Whether LlamaBoard starts with the server: ``LLMSPAWNER_LLAMABOARD_EAGER_START``.

    Args:
        environ: the server's environment.
        log: where a bad value is reported (the server's log).

    Returns:
        True when unset or empty (the default) or ``1``/``true``/``yes``/``on``; False for
        ``0``/``false``/``no``/``off`` (any case). Anything else is logged as a warning naming
        the variable and counts as unset (True), so a typo does not break the server.
    """
    from llmspawner.settings import env_switch

    return env_switch(
        environ, ENABLE_ENV, default=True, log=log, meaning="LlamaBoard starts with the server"
    )


@dataclass
class StartRecord:
    """How the eager start of LlamaBoard went; times are seconds since the epoch.

    Attributes:
        server_started: when this extension was loaded (the server's start-up).
        state: ``off`` (switched off), ``waiting`` (the event loop has not run it yet),
            ``starting``, ``ready``, ``failed`` (see ``error``) or ``unavailable``
            (jupyter-server-proxy does not serve ``llamaboard``; see ``error``).
        started: when ``ensure_process`` was called, or None.
        ready: when LlamaBoard answered HTTP, or None.
        error: one sentence for ``failed``/``unavailable``, else None.
        proxy_state: jupyter-server-proxy's per-server state dict (shared with user
            requests), once found; the live process id is read from it.
    """

    server_started: float
    state: str = WAITING
    started: float | None = None
    ready: float | None = None
    error: str | None = None
    proxy_state: dict | None = field(default=None, repr=False)
    task: asyncio.Task | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-compatible dict.

        Returns:
            ``{"state", "error", "server_started", "started", "ready"`` (ISO 8601 UTC or
            None), ``"seconds_to_ready"`` (from ``server_started`` to ``ready``, or None),
            ``"pid"`` (the process jupyter-server-proxy runs for LlamaBoard now, whoever
            started it, or None)``}``.
        """
        return {
            "state": self.state,
            "error": self.error,
            "server_started": _iso(self.server_started),
            "started": _iso(self.started),
            "ready": _iso(self.ready),
            "seconds_to_ready": (
                None if self.ready is None else round(self.ready - self.server_started, 3)
            ),
            "pid": proxy_pid(self.proxy_state),
        }


def proxy_pid(state: Mapping | None) -> int | None:
    """The process id jupyter-server-proxy's ``state`` holds, or None (none running).

    Args:
        state: a ``SuperviseAndProxyHandler.state`` dict; its ``proc`` is a
            ``simpervisor.SupervisedProcess`` (or a string for a process the proxy does
            not manage).
    """
    proc = (state or {}).get("proc")
    if proc is None or not getattr(proc, "running", False):
        return None
    return getattr(proc, "pid", None)


class _NoConnection:
    """Stands in for the HTTP connection of a request that is never executed."""

    context = None

    def set_close_callback(self, callback) -> None:
        pass


def proxy_handler(web_app, base_url: str, name: str = SERVER_NAME):
    """The jupyter-server-proxy handler a request for ``<base_url><name>/`` would get.

    Args:
        web_app: the Jupyter server's ``tornado.web.Application``.
        base_url: the server's ``base_url`` (e.g. ``/user/alice/``).
        name: the proxied server's name (the entry point's name).

    Returns:
        A ``SuperviseAndProxyHandler`` instance built for a GET of that URL (never executed),
        whose ``state`` is the dict the proxy shares with every request for ``name``; None
        when the URL is not served by a supervising jupyter-server-proxy handler (the
        extension is not loaded, or the entry point is missing).
    """
    from jupyter_server.utils import url_path_join
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

    try:
        from jupyter_server_proxy.handlers import SuperviseAndProxyHandler
    except ImportError:
        return None
    uri = url_path_join(base_url, name) + "/"
    request = HTTPServerRequest(
        start_line=RequestStartLine("GET", uri, "HTTP/1.1"),
        headers=HTTPHeaders({"Host": "127.0.0.1"}),
        connection=_NoConnection(),
    )
    delegate = web_app.find_handler(request)
    cls = getattr(delegate, "handler_class", None)
    if not (isinstance(cls, type) and issubclass(cls, SuperviseAndProxyHandler)):
        return None
    return cls(web_app, request, **(delegate.handler_kwargs or {}))


async def ensure_process(handler, *, interval: float = READY_INTERVAL) -> None:
    """Start the handler's process as the proxy does, but notice readiness within ``interval``.

    This is jupyter-server-proxy's ``SuperviseAndProxyHandler.ensure_process`` (4.6,
    jupyter_server_proxy/handlers.py; a unit test pins its source) step by step: the same
    ``state["proc_lock"]``, the same ``state["proc"]`` (set before the start, removed on any
    error, so the lock's invariant holds: when it is free, ``proc`` is in the state and
    running, or absent), the same ``simpervisor.SupervisedProcess`` with the handler's command,
    environment, timeout and readiness check (``_http_ready_func``: any HTTP answer on the
    process's port), killed and answered with the proxy's ``could not start <name> in time``
    when it does not answer in time. A user request that comes meanwhile waits on the lock
    and is then proxied to this process.

    One thing differs: the readiness wait. simpervisor's ``SupervisedProcess.ready`` doubles
    its sleep after every failed check (0.01 s, 0.02 s, ... 10.24 s, 20.48 s, 40.96 s): a
    LlamaBoard that answers 11 s after its start is noticed at about 20 s, one that answers at
    21 s at about 41 s, at 101 s at about 140 s, and every request waits for that on the lock.
    Here the check runs every ``interval`` seconds (each call bounded to 5 s, as simpervisor
    bounds it) until the handler's timeout.

    Args:
        handler: from :func:`proxy_handler`.
        interval: seconds between readiness checks.

    Raises:
        tornado.web.HTTPError: 500 ``could not start <name> in time``, or what the command
            callable raises (LlamaBoard's: ``llamafactory-cli`` not on ``PATH``).
    """
    from simpervisor import SupervisedProcess
    from tornado import web

    state = handler.state
    async with state["proc_lock"]:
        if "proc" in state:
            return
        cmd = handler.get_cmd()
        if not cmd:
            state["proc"] = "process not managed by jupyter-server-proxy"
            return
        env = os.environ.copy()
        env.update(handler.get_env())
        timeout = handler.get_timeout()
        proc = SupervisedProcess(
            handler.name,
            *cmd,
            env=env,
            ready_func=handler._http_ready_func,
            ready_timeout=timeout,
            log=handler.log,
        )
        state["proc"] = proc
        try:
            await proc.start()
            if not await wait_ready(lambda: handler._http_ready_func(proc), timeout, interval):
                await proc.kill()
                raise web.HTTPError(500, f"could not start {handler.name} in time")
        except BaseException:
            del state["proc"]
            raise


async def wait_ready(check, timeout: float, interval: float) -> bool:
    """Await ``check()`` every ``interval`` seconds until it is true or ``timeout`` passes.

    Args:
        check: an async callable returning a bool; each call is bounded to 5 s (a call that
            takes longer counts as not ready).
        timeout: seconds in all.
        interval: seconds between calls.

    Returns:
        True as soon as ``check()`` is; False after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if await asyncio.wait_for(check(), 5):
                return True
        except asyncio.TimeoutError:
            pass
        left = deadline - loop.time()
        if left <= 0:
            return False
        await asyncio.sleep(min(interval, left))


async def start_llamaboard(handler, record: StartRecord) -> bool:
    """Start LlamaBoard through ``handler.ensure_process`` and note the outcome in ``record``.

    Never raises (an error is logged and noted): it runs beside the Jupyter server.

    Args:
        handler: from :func:`proxy_handler`.
        record: updated in place (``state``, ``started``, ``ready``, ``error``).

    Returns:
        True when LlamaBoard answers HTTP (started here or by a request that came first).
    """
    from tornado import web

    from . import gradio_activity

    log = handler.log  # the Jupyter server's log
    record.proxy_state = handler.state
    record.state, record.started = STARTING, time.time()
    log.info("LlamaBoard: starting with the server (%s=0 turns this off)", ENABLE_ENV)
    try:
        await ensure_process(handler)
    except web.HTTPError as e:
        message = e.log_message or str(e)
    except Exception as e:  # noqa: BLE001 - the server must not care
        log.warning("LlamaBoard: start with the server failed", exc_info=True)
        message = f"{type(e).__name__}: {e}"
    else:
        record.state, record.ready = READY, time.time()
        log.info(
            "LlamaBoard: answering on port %s, %.1f s after the server started",
            handler.port,
            record.ready - record.server_started,
        )
        try:
            gradio_activity.timer_ids_for(handler.port)
        except Exception:  # noqa: BLE001 - only an optimisation
            log.debug("LlamaBoard: cannot read its timer components yet", exc_info=True)
        return True
    record.state, record.error = FAILED, message
    log.error(
        "LlamaBoard did not start with the server: %s. Its tile starts it again and shows "
        "the error.",
        message,
    )
    return False


def _status_handler_class():
    from jupyter_server.base.handlers import JupyterHandler
    from tornado import web

    class StartStatusHandler(JupyterHandler):
        """``GET <base_url>llmspawner/llamaboard-start``: :meth:`StartRecord.to_json`.

        A plain (non-API) handler: reading it is not activity.
        """

        @web.authenticated
        def get(self):
            record = self.settings[SETTINGS_KEY]
            self.set_header("Content-Type", "application/json")
            self.set_header("Cache-Control", "no-store")
            self.finish(json.dumps(record.to_json()))

    return StartStatusHandler


def _jupyter_server_extension_points() -> Iterable[dict]:
    return [{"module": "llmspawner.singleuser.eager"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Note the start time, add the status page; the start itself waits for the event loop."""
    from jupyter_server.utils import url_path_join

    web_app = serverapp.web_app
    record = StartRecord(server_started=time.time())
    web_app.settings[SETTINGS_KEY] = record
    base_url = web_app.settings.get("base_url", "/")
    web_app.add_handlers(".*", [(url_path_join(base_url, STATUS_PATH), _status_handler_class())])
    if not eager_start_enabled(os.environ, log=serverapp.log):
        record.state = OFF
        serverapp.log.info("LlamaBoard starts at the first request (%s is off)", ENABLE_ENV)


async def _start_jupyter_server_extension(serverapp) -> None:
    """Called once the event loop runs (every extension loaded): start LlamaBoard in a task.

    Returns at once; the server never waits for LlamaBoard.
    """
    record: StartRecord = serverapp.web_app.settings[SETTINGS_KEY]
    if record.state == OFF:
        return
    try:
        handler = proxy_handler(serverapp.web_app, serverapp.web_app.settings.get("base_url", "/"))
    except Exception as e:  # noqa: BLE001 - a proxy we do not understand: lazy start
        handler = None
        record.error = f"{type(e).__name__}: {e}"
        serverapp.log.warning("LlamaBoard: cannot find the proxy's handler", exc_info=True)
    if handler is None:
        record.state = UNAVAILABLE
        record.error = record.error or (
            f"jupyter-server-proxy does not serve {SERVER_NAME!r} in this server (is the "
            "jupyter_server_proxy server extension enabled?)"
        )
        serverapp.log.warning("LlamaBoard is not started with the server: %s", record.error)
        return
    record.state = STARTING
    record.task = asyncio.ensure_future(start_llamaboard(handler, record))


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()
