"""How a Job and its pods become a queue state and reason (``status.observe``, pure)."""

from __future__ import annotations

import datetime

import pytest

from llmspawner.queue.status import iso, observe

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc).timestamp()


def job(*conditions, suspend=False, deadline=None, start="2026-01-01T11:00:00Z", done=None):
    return {
        "metadata": {"name": "llm-job-alice-1"},
        "spec": {"suspend": suspend, "activeDeadlineSeconds": deadline},
        "status": {
            "startTime": start,
            "completionTime": done,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions
            ],
        },
    }


def pod(
    *, phase="Pending", created="2026-01-01T11:00:00Z", reason=None, state=None, scheduled=None
):
    status = {"phase": phase, "containerStatuses": [{"name": "train", "state": state or {}}]}
    if reason:
        status["reason"], status["message"] = reason, "The node was low on resource: memory."
    if scheduled:
        status["conditions"] = [{"type": "PodScheduled", **scheduled}]
    return {"metadata": {"name": "p", "creationTimestamp": created}, "status": status}


def see(j, pods=(), timeout=600):
    o = observe(j, list(pods), now=NOW, unschedulable_timeout=timeout)
    return o.state, o.reason, o.delete


UNSCHEDULABLE = {
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/4 nodes are available: 1 Insufficient nvidia.com/gpu.",
    "lastTransitionTime": "2026-01-01T11:55:00Z",
}


@pytest.mark.parametrize(
    ("j", "pods", "expected"),
    [
        (job(("Complete", "CompletionsReached", "")), [], ("succeeded", "", False)),
        (
            job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")),
            [pod(phase="Failed", state={"terminated": {"exitCode": 1, "reason": "Error"}})],
            (
                "failed",
                "BackoffLimitExceeded: the training exited with code 1 (Error); see its logs",
                False,
            ),
        ),
        (
            job(("Failed", "BackoffLimitExceeded", "")),
            [pod(phase="Failed", state={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})],
            (
                "failed",
                (
                    "OOMKilled: the training ran out of memory (the profile's memory limit); "
                    "try a smaller batch size, a shorter cutoff_len or quantization"
                ),
                False,
            ),
        ),
        (
            job(("Failed", "BackoffLimitExceeded", "")),
            [pod(phase="Failed", reason="Evicted")],
            ("failed", "Evicted: The node was low on resource: memory.", False),
        ),
        (
            job(
                ("Failed", "DeadlineExceeded", "Job was active longer than specified"), deadline=60
            ),
            [],
            (
                "failed",
                (
                    "DeadlineExceeded: the job ran longer than its limit of 60 s (the "
                    "profile's max_runtime)"
                ),
                False,
            ),
        ),
        (job(suspend=True), [], ("queued", "waiting for Kueue to admit it", False)),
        (job(), [], ("admitted", "creating the pod", False)),
        (
            job(),
            [pod(state={"waiting": {"reason": "ImagePullBackOff", "message": "pull failed"}})],
            ("failed", "ImageError: ImagePullBackOff: pull failed", True),
        ),
        (
            job(),
            [pod(state={"waiting": {"reason": "CreateContainerConfigError", "message": "no cm"}})],
            ("failed", "ConfigError: CreateContainerConfigError: no cm", True),
        ),
        (
            job(),
            [pod(scheduled=UNSCHEDULABLE)],
            (
                "admitted",
                "waiting to be scheduled: 0/4 nodes are available: 1 Insufficient nvidia.com/gpu.",
                False,
            ),
        ),
        (
            job(),
            [pod(state={"running": {"startedAt": "2026-01-01T11:00:05Z"}}, phase="Running")],
            ("running", "", False),
        ),
        (
            job(),
            [pod(state={"waiting": {"reason": "ContainerCreating"}})],
            ("admitted", "starting", False),
        ),
    ],
)
def test_observe(j, pods, expected):
    assert see(j, pods) == expected


def test_unschedulable_for_too_long_fails_and_deletes():
    state, reason, delete = see(job(), [pod(scheduled=UNSCHEDULABLE)], timeout=60)
    assert (state, delete) == ("failed", True)
    assert reason == (
        "Unschedulable: no node can run it for 60 s: 0/4 nodes are available: 1 Insufficient "
        "nvidia.com/gpu."
    )


def test_newest_pod_counts_and_times_are_read():
    old = pod(created="2026-01-01T10:00:00Z", state={"terminated": {"exitCode": 1}})
    new = pod(
        created="2026-01-01T11:00:00Z", state={"running": {"startedAt": "2026-01-01T11:00:05Z"}}
    )
    o = observe(job(), [old, new], now=NOW, unschedulable_timeout=600)
    assert (o.state, iso(o.started_at)) == ("running", "2026-01-01T11:00:05Z")
    done = observe(
        job(("Complete", "", ""), done="2026-01-01T11:30:00Z"), [], now=NOW, unschedulable_timeout=1
    )
    assert iso(done.finished_at) == "2026-01-01T11:30:00Z"
