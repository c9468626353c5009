"""Which requests to LlamaBoard are a person's doing, and which are Gradio's own polling.

An open LlamaBoard tab keeps talking to its server with nobody at the keyboard:

- Gradio's heartbeat (``GET /gradio_api/heartbeat/<session>``) and the queue's event stream
  and status (``/gradio_api/queue/data``, ``/gradio_api/queue/status``), gradio/routes.py;
- LlamaBoard's footer ``gr.Timer(value=5)``, which asks for the GPU memory every 5 seconds
  (``POST /gradio_api/run/predict`` with the timer as ``trigger_id``),
  llamafactory/webui/components/footer.py.

None of these may count as activity, or an idle tab would hold a GPU slice forever. A timer
tick looks like a button click (same path), so ticks are recognised by their ``trigger_id``:
the ids of the ``timer`` components in the app's Gradio config, read once per LlamaBoard
process (``GET /config`` on its own port).

Used as jupyter-server-proxy's ``update_last_activity`` callable
(https://jupyter-server-proxy.readthedocs.io/en/latest/server-process.html).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

#: Request paths of Gradio's background traffic (matched from the start of the path).
BACKGROUND_PATHS = (
    re.compile(r".*/gradio_api/heartbeat/"),
    re.compile(r".*/gradio_api/queue/(data|status)"),
)
#: Paths of event calls, which are a user's action unless a timer triggered them.
EVENT_PATHS = re.compile(r".*/gradio_api/(run/predict|queue/join|run/[^/]+|call/[^/]+)/?$")


def timer_ids(config: Mapping) -> frozenset[int]:
    """Ids of the ``timer`` components of a Gradio app config (``GET /config``) (pure)."""
    return frozenset(
        c["id"] for c in config.get("components") or [] if c.get("type") == "timer" and "id" in c
    )


def trigger_id(body: bytes | None) -> int | None:
    """The ``trigger_id`` of a Gradio event request body (JSON), or ``None`` (pure)."""
    if not body:
        return None
    try:
        value = json.loads(body).get("trigger_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def is_user_activity(method: str, path: str, body: bytes | None, timers: Iterable[int]) -> bool:
    """Whether a request to LlamaBoard is a person's action (pure).

    Args:
        method: HTTP method.
        path: the request path (with the ``/user/<name>/llamaboard`` prefix or without).
        body: the request body (for event calls).
        timers: ids of the app's timer components (see :func:`timer_ids`).

    Returns:
        False for Gradio's heartbeat, queue polling and timer ticks; True otherwise (loading
        the page, a click, an upload).
    """
    if any(p.match(path) for p in BACKGROUND_PATHS):
        return False
    if method == "POST" and EVENT_PATHS.match(path) and trigger_id(body) in set(timers):
        return False
    return True


class TimerIds:
    """Timer component ids per LlamaBoard process (by port), read from its ``/config`` once.

    Until the config has been read, ticks count as activity (a few seconds after start).
    """

    def __init__(self):
        self._ids: dict[int, frozenset[int]] = {}
        self._pending: set[int] = set()

    def get(self, port: int) -> frozenset[int]:
        """The known timer ids of the app on ``port``; starts reading them if unknown."""
        if port not in self._ids and port not in self._pending:
            self._pending.add(port)
            from tornado.ioloop import IOLoop

            IOLoop.current().spawn_callback(self._load, port)
        return self._ids.get(port, frozenset())

    async def _load(self, port: int) -> None:
        from tornado.httpclient import AsyncHTTPClient

        try:
            response = await AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{port}/config", request_timeout=10
            )
            self._ids[port] = timer_ids(json.loads(response.body))
            log.debug("LlamaBoard on port %s: timer components %s", port, sorted(self._ids[port]))
        except Exception as e:  # retried at the next request
            log.warning("Cannot read LlamaBoard's Gradio config on port %s: %s", port, e)
        finally:
            self._pending.discard(port)


_TIMERS = TimerIds()


def timer_ids_for(port: int) -> frozenset[int]:
    """The known timer component ids of the LlamaBoard on ``port`` (the process-wide cache),
    starting to read them when unknown; the eager start (:mod:`llmspawner.singleuser.eager`)
    calls it as soon as LlamaBoard answers, so that even the first tick is not activity.
    Needs a running tornado/asyncio event loop."""
    return _TIMERS.get(port)


def update_last_activity(handler) -> bool:
    """jupyter-server-proxy's ``update_last_activity`` hook: True when the request is a
    person's action (see :func:`is_user_activity`)."""
    request = handler.request
    return is_user_activity(request.method, request.path, request.body, timer_ids_for(handler.port))
