"""benchmarks/queue_throughput.py starts its burst only once a pass has placed the queued
jobs (``wait_for_positions``): before, a short burst ran while the planning worker was still
starting, no pass ran, and the worker's start-up was counted as CPU per submit."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import queue_throughput  # noqa: E402


class _Answer:
    def __init__(self, status_code, jobs):
        self.status_code, self._jobs = status_code, jobs

    def json(self):
        return {"jobs": self._jobs}


class _Client:
    """Answers ``GET api/jobs`` from a list of answers, the last one for ever."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    async def get(self, url, **kwargs):
        self.calls.append((url, kwargs))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class _Service:
    def check_running(self):
        pass

    def log_tail(self):
        return "(log)"


async def test_waits_until_every_queued_job_has_a_position(monkeypatch):
    monkeypatch.setattr(queue_throughput.asyncio, "sleep", _no_sleep)
    client = _Client(
        [
            _Answer(503, []),  # still starting
            _Answer(200, [{"id": 1, "position": None}, {"id": 2, "position": None}]),
            _Answer(200, [{"id": 1, "position": 1}, {"id": 2, "position": None}]),
            _Answer(200, [{"id": 1, "position": 1}, {"id": 2, "position": 2}]),
        ]
    )
    await queue_throughput.wait_for_positions(
        client, "http://q/api", {}, _Service(), deadline=time.monotonic() + 60
    )
    assert len(client.calls) == 4
    assert client.calls[0][1]["params"]["state"] == "queued"


async def test_no_pass_by_the_deadline_says_so(monkeypatch):
    monkeypatch.setattr(queue_throughput.asyncio, "sleep", _no_sleep)
    client = _Client([_Answer(200, [{"id": 1, "position": None}])])
    with pytest.raises(TimeoutError, match="no admission pass"):
        await queue_throughput.wait_for_positions(
            client, "http://q/api", {}, _Service(), deadline=time.monotonic() - 1
        )


async def _no_sleep(_seconds):
    return None
