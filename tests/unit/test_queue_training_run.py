"""The final MLflow status a queue Job's training gives its run (``RunUpload.finish``): a
training stopped by a signal (its pod deleted, evicted or preempted) is ``KILLED``, not
``FAILED``; the MLflow client is a stand-in (no MLflow server here)."""

from __future__ import annotations

import types

import pytest

from llmspawner.training import RunUpload


class Client:
    def __init__(self, status="RUNNING"):
        self.status = status
        self.terminated: list[tuple[str, str]] = []

    def get_run(self, run_id):
        return types.SimpleNamespace(info=types.SimpleNamespace(status=self.status))

    def set_terminated(self, run_id, status):
        self.terminated.append((run_id, status))


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [
        (0, [("r", "FINISHED")]),
        (1, [("r", "FAILED")]),
        (-15, [("r", "KILLED")]),  # SIGTERM of the pod's termination, passed on to the child
        (143, [("r", "KILLED")]),
        (130, [("r", "KILLED")]),
        (-9, [("r", "FAILED")]),  # the child alone SIGKILLed: the out-of-memory killer
        (137, [("r", "FAILED")]),
    ],
)
def test_the_run_ends_killed_after_a_signal(returncode, expected):
    client = Client()
    upload = RunUpload({}, client=client)
    upload.run_id = "r"
    upload.finish(returncode)
    assert client.terminated == expected


def test_a_run_that_ended_itself_is_left_as_it_is():
    client = Client(status="FINISHED")
    upload = RunUpload({}, client=client)
    upload.run_id = "r"
    upload.finish(0)
    assert client.terminated == []
