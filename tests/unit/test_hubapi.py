"""The start/stop race sentences (llmspawner.hubapi), the API-error classification and the
user's error (llmspawner.apierrors); the race itself against a real hub is
tests/integration/test_orphan_pods.py::test_rapid_starts_and_stops_never_answer_a_bare_500."""

import asyncio

import aiohttp
import pytest
from jupyterhub import apihandlers
from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.utils import format_exception
from kubernetes_asyncio.client.exceptions import ApiException

from llmspawner import apierrors, hubapi


@pytest.mark.parametrize(
    ("exc", "action", "sentence"),
    [
        (
            RuntimeError("zed pending spawn"),
            "stop",
            (
                "zed's server is starting because of another request that came at the same time, "
                "so this stop was not carried out; it is safe to try again in a few seconds."
            ),
        ),
        (
            RuntimeError("zed pending stop"),
            "start",
            (
                "zed's server is stopping because of another request that came at the same time, "
                "so this start was not carried out; it is safe to try again in a few seconds."
            ),
        ),
        (
            KeyError("User zed has no such spawner ''"),
            "stop",
            (
                "zed's server was removed by another request that came at the same time, so this "
                "stop was not carried out; it is safe to try again."
            ),
        ),
        (
            asyncio.CancelledError(),
            "start",
            (
                "zed's server was stopped by another request that came at the same time, so this "
                "start was not carried out; it is safe to try again."
            ),
        ),
        (RuntimeError("something else"), "stop", None),
        (ValueError("zed pending spawn"), "stop", None),
    ],
)
def test_race_sentence(exc, action, sentence):
    assert hubapi.race_sentence("zed", action, exc) == sentence


def test_install_replaces_the_server_handler_once():
    before = list(apihandlers.default_handlers)
    try:
        assert hubapi.install() and hubapi.install()
        handlers = [h[1] for h in apihandlers.default_handlers]
        assert UserServerAPIHandler not in handlers
        assert handlers.count(hubapi.ServerAPIHandler) == 2  # /server and /servers/<name>
        assert len(handlers) == len(before)
    finally:
        apihandlers.default_handlers[:] = before


@pytest.mark.parametrize(
    ("exc", "transient", "described"),
    [
        (ApiException(status=503, reason="Service Unavailable"), True, "503 Service Unavailable"),
        (ApiException(status=500, reason="Internal Server Error"), True, "500 Internal Server Error"),
        (ApiException(status=429, reason="Too Many Requests"), True, "429 Too Many Requests"),
        (ApiException(status=409, reason="Conflict"), False, "409 Conflict"),
        (ApiException(status=422, reason="Unprocessable Entity"), False, "422 Unprocessable Entity"),
        (ApiException(status=403, reason="Forbidden"), False, "403 Forbidden"),
        (aiohttp.ServerDisconnectedError(), True, "no answer (ServerDisconnectedError)"),
        (aiohttp.ClientConnectorError(None, OSError(111, "refused")), True,
         "no answer (ClientConnectorError)"),
        (ConnectionResetError(), True, "no answer (ConnectionResetError)"),
        (asyncio.TimeoutError(), True, "no answer in time"),
        (ValueError("x"), False, "no answer (ValueError)"),
    ],
)  # fmt: skip
def test_transient_errors(exc, transient, described):
    assert apierrors.is_transient(exc) is transient
    assert apierrors.describe(exc) == described


def test_the_user_facing_error_is_the_sentence_everywhere():
    e = apierrors.UserFacingError(503, "Your server could not be started; try again.")
    assert e.status_code == 503
    assert e.log_message % e.args == "Your server could not be started; try again."  # REST API
    assert format_exception(e) == ("Your server could not be started; try again.", None)
    assert str(e) == "Your server could not be started; try again."
