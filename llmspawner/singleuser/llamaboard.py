"""LlamaBoard behind jupyter-server-proxy: the ``llamaboard`` server entry point.

``setup_llamaboard`` is registered in ``pyproject.toml`` as::

    [project.entry-points.jupyter_serverproxy_servers]
    llamaboard = "llmspawner.singleuser.llamaboard:setup_llamaboard"

so every Jupyter server with this package and jupyter-server-proxy installed serves
LlamaBoard (LLaMA-Factory's Gradio web UI, ``llamafactory-cli webui``) at
``<base_url>llamaboard/``, e.g. ``/user/alice/llamaboard/`` under JupyterHub, and shows a
"LlamaBoard" tile in the JupyterLab launcher. jupyter-server-proxy would start it at the first
request; :mod:`llmspawner.singleuser.eager` starts it with the server instead, through the
proxy's own handler and lock, so the tile usually finds it running.

How the pieces fit (verified with llamafactory 0.9.5, Gradio 5.50, jupyter-server-proxy 4.6):

- LlamaBoard listens on 127.0.0.1 at the port the proxy picks. ``run_web_ui``
  (llamafactory/webui/interface.py) passes ``server_name`` from ``GRADIO_SERVER_NAME`` and
  ``share`` from ``GRADIO_SHARE``; Gradio's ``launch()`` takes the port from
  ``GRADIO_SERVER_PORT`` and the public mount point from ``GRADIO_ROOT_PATH``
  (https://www.gradio.app/guides/environment-variables).
- The proxy strips the prefix (``absolute_url`` False): Gradio's routes live at ``/``, and
  ``GRADIO_ROOT_PATH`` only changes the URLs Gradio *writes*. Gradio's public root is
  ``gradio.route_utils.get_root_url``: a full-URL root path is used as is; otherwise scheme
  and host come from ``X-Forwarded-Host``/``X-Forwarded-Proto`` when present, else from the
  request URL (the ``Host`` header), and the path is replaced by the root path.
  jupyter-server-proxy forwards the client's own ``Host`` (it copies the request headers),
  and JupyterHub's configurable-http-proxy adds ``X-Forwarded-Host``/``-Proto``, so the
  root is the URL the browser used — never LlamaBoard's internal ``127.0.0.1:<port>``.
  ``GRADIO_ROOT_PATH`` is therefore a path, not a full URL (a full URL would pin one host).
- Gradio's front end receives progress over Server-Sent Events and sends
  ``Accept: text/event-stream``; jupyter-server-proxy streams such responses only since 4.4
  (https://github.com/jupyterhub/jupyter-server-proxy/pull/479, opened for LLaMA-Factory);
  older releases buffer the whole stream, so training progress never reaches the page.
- An event stream whose page is gone stays open upstream: jupyter-server-proxy 4.6 gives a
  streamed request ``request_timeout = 7200`` and ``connect_timeout = 600``, hard-coded in
  ``ProxyHandler._proxy_progressive`` (no setting of ``ServerProcess`` or of the handler
  changes them) and keeps writing what LlamaBoard pushes into the closed connection. Its only
  per-chunk hook is ``update_last_activity`` (called with the handler before each chunk is
  written): :func:`update_last_activity` raises :class:`PageGone` there when the page's own
  connection is closed, which makes tornado's HTTP client close the connection to LlamaBoard
  (``simple_httpclient``: an exception in ``streaming_callback`` ends the fetch), so a closed
  page's stream ends at LlamaBoard's next message (Gradio sends a heartbeat every 15 s). The
  7200 s limit of a stream whose page stays open cannot be changed; a training does not depend
  on it (:mod:`llmspawner.training`: the shim never blocks on LlamaBoard's pipe).
- At each start, :func:`llmspawner.singleuser.runner_check.check` makes sure the installed
  LlamaBoard still starts trainings as that shim relies on; if not, the start fails with the
  reason (the page shows it).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_server.utils import url_path_join
from tornado.httputil import HTTPInputError

from . import gradio_activity, runner_check

log = logging.getLogger(__name__)

#: The URL path segment and jupyter-server-proxy server name (the entry point's name).
SERVER_NAME = "llamaboard"
#: The launcher tile's title.
LAUNCHER_TITLE = "LlamaBoard"
#: The launcher icon, shipped inside the package (hatchling puts it in the wheel).
ICON_PATH = Path(__file__).parent / "icons" / "llamaboard.svg"
#: Program that starts LlamaBoard, looked up on the Jupyter server's ``PATH``.
LLAMAFACTORY_CLI = "llamafactory-cli"
#: Environment variable overriding :data:`DEFAULT_TIMEOUT` (seconds, a positive number).
TIMEOUT_ENV = "LLMSPAWNER_LLAMABOARD_TIMEOUT"
#: Seconds LlamaBoard may take to answer HTTP after start. Measured on 2 CPU cores: 8.5-12 s
#: alone, 10-21 s through the proxy (first start, cold caches), nearly all of it importing
#: torch, transformers and gradio. A cold image on a network volume can take several times
#: that, and the only cost of a generous limit is a slower error message.
DEFAULT_TIMEOUT = 180.0


def root_path(*, base_url: str, environ: Mapping[str, str]) -> str:
    """Return the public URL path LlamaBoard is served at, without a trailing slash.

    Args:
        base_url: the Jupyter server's ``base_url`` (``ServerApp.base_url``), e.g.
            ``/user/alice/``; used when ``JUPYTERHUB_SERVICE_PREFIX`` is unset (a plain
            ``jupyter lab``).
        environ: the server's environment; ``JUPYTERHUB_SERVICE_PREFIX`` (set by the
            spawner, e.g. ``/user/alice/`` or ``/user/alice/gpu/`` for a named server,
            including the hub's own ``base_url``) wins when non-empty. Under JupyterHub the
            two are equal: ``jupyterhub-singleuser`` derives ``base_url`` from it.

    Returns:
        e.g. ``/user/alice/llamaboard`` — the value for ``GRADIO_ROOT_PATH``.
    """
    prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX") or base_url or "/"
    path = url_path_join("/", prefix, SERVER_NAME)
    return path.rstrip("/")


def llamaboard_environment(*, base_url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Return the environment variables LlamaBoard is started with, as proxy templates.

    The values are jupyter-server-proxy templates (``str.format``): ``{port}`` becomes the
    port the proxy picked, and literal braces from ``base_url``/``environ`` are doubled.

    Args:
        base_url: the Jupyter server's ``base_url``, see :func:`root_path`.
        environ: the server's environment, see :func:`root_path`.

    Returns:
        ``{name: template}`` with ``GRADIO_SERVER_NAME`` ``127.0.0.1`` (not reachable from
        outside the pod), ``GRADIO_SERVER_PORT`` ``{port}``, ``GRADIO_ROOT_PATH`` from
        :func:`root_path`, ``GRADIO_SHARE`` off (no public share tunnel),
        ``GRADIO_ANALYTICS_ENABLED`` ``False`` (no telemetry, no version check against
        api.gradio.app; Gradio then also sets ``HF_HUB_DISABLE_TELEMETRY``),
        ``DISABLE_VERSION_CHECK`` ``1`` (LLaMA-Factory's check of the installed
        transformers/datasets/... versions warns instead of refusing to start,
        llamafactory/extras/misc.py ``check_version``), ``BROWSER`` ``true``
        (``run_web_ui`` calls ``launch(inbrowser=True)``; Python's ``webbrowser`` would
        otherwise start whatever text browser the image has) and ``PYTHONUNBUFFERED``.
        Gradio's variables: https://www.gradio.app/guides/environment-variables;
        LLaMA-Factory's: llamafactory/webui/interface.py ``run_web_ui`` (no docs page).
    """
    return {
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": "{port}",
        "GRADIO_ROOT_PATH": _escape_template(root_path(base_url=base_url, environ=environ)),
        "GRADIO_SHARE": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "DISABLE_VERSION_CHECK": "1",
        "BROWSER": "true",
        "PYTHONUNBUFFERED": "1",
    }


def user_folder(*, environ: Mapping[str, str], server_root_dir: str | None) -> str:
    """Return the folder LlamaBoard runs in (its ``saves/``, ``data/`` and caches go there).

    Args:
        environ: the server's environment. ``HOME`` is used when it names an existing
            folder: in the user's pod it is the user's folder on the shared volume.
        server_root_dir: the Jupyter server's ``root_dir`` (what the file browser shows),
            or None when no server is running; used when ``HOME`` is unusable.

    Returns:
        An absolute or server-relative folder path; the server's working folder
        (``os.getcwd()``) when neither is usable.
    """
    home = environ.get("HOME")
    if home and os.path.isdir(home):
        return home
    if server_root_dir and os.path.isdir(server_root_dir):
        return server_root_dir
    return os.getcwd()


def llamaboard_command(*, folder: str, cli: str) -> list[str]:
    """Return the command that starts LlamaBoard in ``folder``, as proxy templates.

    Args:
        folder: the working folder, see :func:`user_folder`.
        cli: path of ``llamafactory-cli``.

    Returns:
        ``[python, "-m", "llmspawner.singleuser.launch", folder, cli, "webui"]``: the
        launcher changes folder and execs ``llamafactory-cli webui`` (see
        :mod:`llmspawner.singleuser.launch` for why a wrapper is needed); braces doubled.
    """
    argv = [sys.executable, "-m", "llmspawner.singleuser.launch", folder, cli, "webui"]
    return [_escape_template(a) for a in argv]


def startup_timeout(environ: Mapping[str, str]) -> float:
    """Return the start-up timeout in seconds: ``LLMSPAWNER_LLAMABOARD_TIMEOUT`` or 180.

    The proxy polls LlamaBoard's port until it answers HTTP or this many seconds pass, then
    answers the request with "could not start llamaboard in time" (HTTP 500).

    Args:
        environ: the server's environment.

    Returns:
        A positive, finite number of seconds. An unparsable or non-positive value is
        logged as a warning naming the variable and :data:`DEFAULT_TIMEOUT` is used, so a
        typo does not remove LlamaBoard from the launcher.
    """
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        log.warning(
            "%s=%r is not a positive number of seconds; using %s",
            TIMEOUT_ENV,
            raw,
            DEFAULT_TIMEOUT,
        )
        return DEFAULT_TIMEOUT
    return value


def setup_llamaboard() -> dict[str, Any]:
    """Return the jupyter-server-proxy server spec for LlamaBoard.

    Called by jupyter-server-proxy when the Jupyter server loads its extensions; the dict
    becomes a ``jupyter_server_proxy.config.ServerProcess``. Keys (documented at
    https://jupyter-server-proxy.readthedocs.io/en/latest/server-process.html):

    - ``command``: a callable run when the process starts (with the server, or at the first
      request when the eager start is off), see :func:`llamaboard_command`; it
      raises ``tornado.web.HTTPError(500)`` with an actionable message when
      ``llamafactory-cli`` is not on ``PATH``, instead of waiting for the timeout.
    - ``environment``: a callable given ``base_url``, see :func:`llamaboard_environment`.
    - ``timeout``: seconds, see :func:`startup_timeout`.
    - ``absolute_url``: False (the proxy's default) — the proxy strips
      ``<base_url>llamaboard``, so Gradio's routes see ``/...`` and ``GRADIO_ROOT_PATH`` only
      shapes the URLs Gradio writes, as Gradio documents for a prefix-stripping reverse proxy
      (https://www.gradio.app/guides/running-gradio-on-your-web-server-with-nginx). True
      also works with Gradio 5.50 (FastAPI strips ``root_path`` from the request path), but
      would depend on that behaviour, which has changed across Starlette releases.
    - ``new_browser_tab``: False — LlamaBoard opens as a tab inside JupyterLab (an iframe
      of the same origin; Gradio sends no ``X-Frame-Options``/``frame-ancestors``).
    - ``update_last_activity``: :func:`update_last_activity`, i.e.
      :func:`llmspawner.singleuser.gradio_activity.update_last_activity`: Gradio's heartbeat,
      queue polling and LlamaBoard's 5-second GPU-memory timer do not count as activity, so an
      open but idle LlamaBoard tab does not hold a GPU forever; a click does. It also ends the
      upstream stream of a page that is gone (module docstring).
    - ``launcher_entry``: title "LlamaBoard" and the shipped SVG icon.

    Returns:
        The spec dict. Reading the environment here (timeout) is the only I/O.
    """
    return {
        "command": _command,
        "environment": _environment,
        "timeout": startup_timeout(os.environ),
        "absolute_url": False,
        "new_browser_tab": False,
        "update_last_activity": update_last_activity,
        "launcher_entry": {
            "enabled": True,
            "title": LAUNCHER_TITLE,
            "icon_path": str(ICON_PATH),
        },
    }


class PageGone(HTTPInputError):
    """Raised in jupyter-server-proxy's per-chunk hook when the page's connection is closed.

    A subclass of ``tornado.httputil.HTTPInputError`` because tornado's HTTP/1 connection lets
    exactly that one through its delegate wrapper (``http1connection._ExceptionLoggingContext``)
    and closes the upstream connection with one info line instead of logging an "Uncaught
    exception" traceback for every closed page.
    """


def client_gone(handler) -> bool:
    """Whether the connection of the request ``handler`` serves is closed (the page is gone).

    Args:
        handler: a tornado ``RequestHandler``; its ``request.connection.stream`` is the
            page's (or the hub proxy's) connection. A detached stream (a websocket, ``None``)
            is not "gone".
    """
    stream = getattr(getattr(handler.request, "connection", None), "stream", None)
    return stream is not None and stream.closed()


def update_last_activity(handler) -> bool:
    """jupyter-server-proxy's ``update_last_activity`` hook for LlamaBoard.

    Returns:
        :func:`llmspawner.singleuser.gradio_activity.update_last_activity`'s answer (is this
        request a person's action).

    Raises:
        PageGone: the page's connection is closed; raised before the proxy writes the next
            chunk of a stream, it ends the stream's connection to LlamaBoard (module
            docstring). Raised once per request: the proxy's own error path that follows
            (``_proxy_progressive``'s 599 branch) calls the hook again and gets ``False``.
            Only inside a stream: for a request jupyter-server-proxy 4.6 streams (``Accept:
            text/event-stream``, its own test in ``ProxyHandler.proxy``) and not at the
            request's first call, which ``ProxyHandler.proxy`` makes before it contacts
            LlamaBoard. Outside a stream (that first call; a buffered request's call after its
            fetch) an exception is the handler's own, an "Uncaught exception" and a 500 in the
            log for a page closed while it loaded, and there is no upstream stream to close.
    """
    calls = getattr(handler, _CALLS, 0) + 1
    setattr(handler, _CALLS, calls)
    if calls > 1 and _streamed(handler) and client_gone(handler):
        if getattr(handler, _GONE, False):  # the proxy's error path calls again: once only
            return False
        setattr(handler, _GONE, True)
        getattr(handler, "log", log).info(
            "LlamaBoard: the page of %s is gone; closing its stream to LlamaBoard",
            handler.request.path,
        )
        raise PageGone(f"the page of {handler.request.path} is gone")
    return gradio_activity.update_last_activity(handler)


_GONE = "_llmspawner_page_gone"
_CALLS = "_llmspawner_activity_calls"


def _streamed(handler) -> bool:
    """Whether jupyter-server-proxy streams this request's response (its own rule, 4.4+:
    the request's ``Accept`` header is exactly ``text/event-stream``)."""
    headers = getattr(handler.request, "headers", None) or {}
    return headers.get("Accept") == "text/event-stream"


# jupyter-server-proxy calls these with the arguments named in their signature, taken from
# {port, unix_socket, base_url} (jupyter_server_proxy.utils.call_with_asked_args reads
# ``__code__``), so they must stay plain functions without defaults.


def _environment(base_url: str) -> dict[str, str]:
    return llamaboard_environment(base_url=base_url, environ=os.environ)


def _command() -> list[str]:
    cli = shutil.which(LLAMAFACTORY_CLI)
    if cli is None:
        from tornado import web

        raise web.HTTPError(
            500,
            f"LlamaBoard cannot start: {LLAMAFACTORY_CLI!r} is not on PATH in this server. "
            "Install LLaMA-Factory with its web UI (pip install 'llamafactory[torch,metrics]') "
            "in the user image, or put its bin folder on PATH.",
        )
    try:
        runner_check.check(os.environ)
    except runner_check.RunnerChanged as e:
        from tornado import web

        log.error("%s", e)
        raise web.HTTPError(500, f"LlamaBoard cannot start: {e}") from None
    return llamaboard_command(
        folder=user_folder(environ=os.environ, server_root_dir=_server_root_dir()),
        cli=cli,
    )


def _server_root_dir() -> str | None:
    """The running Jupyter server's ``root_dir``, or None outside a server."""
    from jupyter_server.serverapp import ServerApp

    if not ServerApp.initialized():
        return None
    return ServerApp.instance().root_dir


def _escape_template(value: str) -> str:
    """Double braces so jupyter-server-proxy's ``str.format`` leaves ``value`` unchanged."""
    return value.replace("{", "{{").replace("}", "}}")
