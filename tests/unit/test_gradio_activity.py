"""Gradio background traffic vs a person's actions (pure parts)."""

import json

import pytest

from llmspawner.singleuser.gradio_activity import is_user_activity, timer_ids, trigger_id

CONFIG = {
    "components": [
        {"id": 3, "type": "textbox"},
        {"id": 7, "type": "timer"},
        {"id": 9, "type": "button"},
        {"id": 12, "type": "timer"},
    ]
}
BOARD = "/user/alice/llamaboard/gradio_api/"


def body(trigger):
    return json.dumps(
        {"data": [], "fn_index": 1, "trigger_id": trigger, "session_hash": "s"}
    ).encode()


def test_timer_ids():
    assert timer_ids(CONFIG) == {7, 12}
    assert timer_ids({}) == frozenset()


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (body(7), 7),
        (body(None), None),
        (b"", None),
        (None, None),
        (b"not json", None),
        (b"[1]", None),
        (body("7"), None),
    ],
)
def test_trigger_id(raw, value):
    assert trigger_id(raw) == value


@pytest.mark.parametrize(
    ("method", "path", "raw", "user"),
    [
        ("GET", BOARD + "heartbeat/abc123", None, False),
        ("GET", BOARD + "queue/data?session_hash=abc", None, False),
        ("GET", BOARD + "queue/data", None, False),
        ("GET", BOARD + "queue/status", None, False),
        ("POST", BOARD + "run/predict", body(7), False),  # LlamaBoard's GPU-memory timer
        ("POST", BOARD + "queue/join", body(12), False),
        ("POST", BOARD + "run/predict", body(9), True),  # a button
        ("POST", BOARD + "queue/join", body(None), True),  # the page's load event
        ("GET", "/user/alice/llamaboard/", None, True),  # opening the page
        ("GET", "/user/alice/llamaboard/assets/index.js", None, True),
        ("POST", BOARD + "upload", b"...", True),
    ],
)
def test_is_user_activity(method, path, raw, user):
    assert is_user_activity(method, path, raw, timer_ids(CONFIG)) is user
