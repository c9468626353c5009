"""Kubernetes API errors: which are worth retrying, how to name them, and what the user reads.

Pure, no I/O. Used by :class:`llmspawner.spawner.LLMSpawner` (pod create and delete) and by
the orphan reconciler (:mod:`llmspawner.reconciler`).

*Transient* is what the API server or the network may answer once and not the next time:
an HTTP 5xx or 429 (``ServiceUnavailable``, ``InternalError``, ``Timeout``,
``TooManyRequests``), a connection refused, reset or closed before an answer (aiohttp's
``ClientConnectionError``/``ServerDisconnectedError``, ``OSError``), or no answer within the
request's timeout (``asyncio.TimeoutError``). kubespawner retries only the last one
(``_make_create_pod_request``/``_make_delete_pod_request`` re-raise every other error at once;
https://github.com/jupyterhub/kubespawner/blob/7.1.0/kubespawner/spawner.py). Everything else
(400 ``BadRequest``, 403 ``Forbidden``, 422 ``Invalid``, 409 ``AlreadyExists``...) is an
answer, handled or reported as such.
"""

from __future__ import annotations

import asyncio

from tornado import web

__all__ = ["UserFacingError", "describe", "is_transient", "status_of"]

#: HTTP statuses of an answer that may be different next time (Kubernetes' own client-go
#: retries 429 and 5xx with ``Retry-After``; https://kubernetes.io/docs/reference/using-api/api-concepts/).
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a ``kubernetes_asyncio`` ``ApiException`` (``None`` for others)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and hasattr(exc, "reason"):
        return status
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` from one Kubernetes API call is worth retrying (see the module docstring).

    Args:
        exc: what the call raised.

    Returns:
        ``True`` for a 429 or 5xx ``ApiException``, a connection error (any ``OSError``,
        aiohttp's ``ClientConnectionError``/``ClientPayloadError``) or a timeout; else ``False``.
    """
    status = status_of(exc)
    if status is not None:
        return status in TRANSIENT_STATUSES or status >= 500
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | OSError):
        return True
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - kubernetes_asyncio depends on aiohttp
        return False
    return isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError)


def describe(exc: BaseException) -> str:
    """A short phrase naming what went wrong, for logs and user messages (never a body).

    Examples: ``"503 Service Unavailable"``, ``"no answer (ServerDisconnectedError)"``,
    ``"no answer in time"``.
    """
    status = status_of(exc)
    if status is not None:
        reason = str(getattr(exc, "reason", "") or "").strip()
        return f"{status} {reason}".strip()
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "no answer in time"
    return f"no answer ({type(exc).__name__})"


class UserFacingError(web.HTTPError):
    """An HTTP error whose one-sentence message is what the user reads, everywhere.

    JupyterHub shows ``jupyterhub_message`` on its spawn-progress page and error pages
    (``jupyterhub/utils.py``, ``format_exception``; ``handlers/base.py``, ``write_error``),
    and the REST API answers ``{"status": N, "message": log_message}``
    (``apihandlers/base.py``); both are the sentence here.

    Args:
        status: the HTTP status (503 for a cluster API that failed, 409 for a race).
        sentence: the message; never a token, a body or a traceback.
    """

    def __init__(self, status: int, sentence: str):
        super().__init__(status, "%s", sentence)
        self.sentence = sentence
        self.jupyterhub_message = sentence

    def __str__(self) -> str:
        return self.sentence
