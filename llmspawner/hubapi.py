"""The hub's server start/stop API answers a start/stop race with a sentence, not a bare 500.

Why: JupyterHub's ``UserServerAPIHandler`` checks a server's pending state, then awaits
(``refresh_auth``, ``poll_and_notify``, and, when a stop interrupts a pending start,
``await asyncio.sleep(1)`` after cancelling it), then calls ``spawn_single_user`` or
``stop_single_user``, which raise a plain ``RuntimeError("<name> pending spawn")`` when
another request changed the state meanwhile (``KeyError`` when a concurrent stop removed the
server; ``asyncio.CancelledError`` when a start awaits the spawn a concurrent stop
cancelled). A plain exception becomes ``{"status": 500, "message": "Internal Server Error"}``
(``APIHandler.write_error``). Measured on the emulated cluster: of 50 start/stop requests
50 ms apart, 19 stops answered that bare 500, each ``RuntimeError: zed pending spawn`` after
the one-second sleep, and in another run a start the ``CancelledError``
(``jupyterhub/apihandlers/users.py``, ``UserServerAPIHandler.delete``;
``jupyterhub/handlers/base.py``, ``stop_single_user``/``spawn_single_user``:
https://github.com/jupyterhub/jupyterhub/blob/5.5.4/jupyterhub/apihandlers/users.py).

What: :class:`ServerAPIHandler` is JupyterHub's handler, unchanged, except that those
exceptions become a 409 :class:`~llmspawner.apierrors.UserFacingError` with one sentence
saying what happened and that trying again is safe. Nothing else changes: the same scopes
(the parent's ``needs_scope``-decorated methods run), the same statuses otherwise.
:func:`install` puts it in place of ``UserServerAPIHandler`` in JupyterHub's list of API
handlers; :func:`llmspawner.hubconfig.configure` calls it, so it runs in the hub's process
while its config is loaded, before ``JupyterHub.init_handlers`` reads that list.
"""

from __future__ import annotations

import asyncio

from jupyterhub.apihandlers.users import UserServerAPIHandler

from .apierrors import UserFacingError

__all__ = ["ServerAPIHandler", "install", "race_sentence"]

_DOING = {
    "spawn": "is starting",
    "stop": "is stopping",
    "check": "is being checked",
}


def race_sentence(user: str, action: str, exc: BaseException) -> str | None:
    """The user's sentence for a race JupyterHub raised as ``exc`` (pure); ``None`` when
    ``exc`` is not one of them.

    Args:
        user: the server's user name.
        action: ``"start"`` or ``"stop"``: what this request asked for.
        exc: ``RuntimeError("<name> pending <spawn|stop|check>")``, ``KeyError`` (no such
            server any more) or ``asyncio.CancelledError`` (a start whose spawn a concurrent
            stop cancelled: ``spawn_single_user`` awaits the cancelled future).
    """
    if isinstance(exc, RuntimeError) and " pending " in str(exc):
        pending = str(exc).rsplit(" pending ", 1)[1].strip()
        doing = _DOING.get(pending, f"is busy ({pending})")
        return (
            f"{user}'s server {doing} because of another request that came at the same time, "
            f"so this {action} was not carried out; it is safe to try again in a few seconds."
        )
    if isinstance(exc, asyncio.CancelledError):
        return (
            f"{user}'s server was stopped by another request that came at the same time, so "
            f"this {action} was not carried out; it is safe to try again."
        )
    if isinstance(exc, KeyError):
        return (
            f"{user}'s server was removed by another request that came at the same time, so "
            f"this {action} was not carried out; it is safe to try again."
        )
    return None


class ServerAPIHandler(UserServerAPIHandler):
    """``POST``/``DELETE /hub/api/users/<name>/server[s/<server>]``: JupyterHub's, with its
    start/stop races answered 409 and a sentence (see the module docstring)."""

    async def _guarded(self, action: str, call, user_name: str, server_name: str):
        try:
            return await call(user_name, server_name)
        except (RuntimeError, KeyError, asyncio.CancelledError) as e:
            sentence = race_sentence(user_name, action, e)
            task = asyncio.current_task()
            if isinstance(e, asyncio.CancelledError) and task and task.cancelling():
                raise  # this request itself is being cancelled (the hub stops)
            if sentence is None:
                raise
            # with the traceback: a KeyError or "pending" RuntimeError from a hook's bug must
            # stay findable in the log although the user reads the race's sentence
            self.log.warning(
                "%s of %s's server refused: %s (%r)", action, user_name, sentence, e, exc_info=True
            )
            raise UserFacingError(409, sentence) from None

    async def post(self, user_name, server_name=""):
        return await self._guarded("start", super().post, user_name, server_name)

    async def delete(self, user_name, server_name=""):
        return await self._guarded("stop", super().delete, user_name, server_name)


def install() -> bool:
    """Put :class:`ServerAPIHandler` in place of JupyterHub's ``UserServerAPIHandler`` in
    ``jupyterhub.apihandlers.default_handlers`` (idempotent); ``True`` when the list now holds
    it. Call it while the hub's config loads (before ``init_handlers``)."""
    from jupyterhub import apihandlers

    found = False
    for i, entry in enumerate(apihandlers.default_handlers):
        pattern, handler = entry[0], entry[1]
        if handler is UserServerAPIHandler:
            apihandlers.default_handlers[i] = (pattern, ServerAPIHandler, *entry[2:])
            found = True
        elif handler is ServerAPIHandler:
            found = True
    return found
