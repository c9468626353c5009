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
                    "out of memory (OOMKilled): the training needed more memory than the "
                    "profile's limit; try a smaller per_device_train_batch_size (or "
                    "cutoff_len), or a larger profile"
                ),
                False,
            ),
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


FAILED_JOB = job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
DELETING = {"deletionTimestamp": "2026-01-01T11:59:00Z"}


def disrupted(reason):
    p = pod(phase="Failed", state={"terminated": {"exitCode": 143, "reason": "Error"}})
    p["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": reason}]
    return p


def deleted_pod():
    p = pod(phase="Failed", state={"terminated": {"exitCode": 143, "reason": "Error"}})
    p["metadata"].update(DELETING)
    return p


@pytest.mark.parametrize(
    ("pods", "interrupted"),
    [
        ([], "its pod was deleted"),  # kubectl delete pod: the Job failed, the pod is gone
        ([deleted_pod()], "its pod was deleted"),  # seen while it is being removed
        ([disrupted("EvictionByEvictionAPI")], "EvictionByEvictionAPI"),
        ([disrupted("PreemptionByScheduler"), deleted_pod()], "PreemptionByScheduler"),
        (
            [pod(phase="Failed", reason="Evicted")],
            "Evicted: The node was low on resource: memory.",
        ),
        # a real failure next to a deleted pod is a failure
        ([deleted_pod(), pod(phase="Failed", state={"terminated": {"exitCode": 1}})], ""),
    ],
)
def test_a_failed_job_whose_pod_was_removed_or_disrupted_is_interrupted(pods, interrupted):
    o = observe(FAILED_JOB, pods, now=NOW, unschedulable_timeout=600)
    assert (o.state, o.interrupted) == ("failed", interrupted)
    if interrupted:
        assert o.reason == ""  # the control loop requeues it, or fails it past the cap
    else:
        assert o.reason.startswith("BackoffLimitExceeded: the training exited with code 1")


def test_the_oom_sentence_names_the_memory_limit():
    p = pod(phase="Failed", state={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    p["spec"] = {"containers": [{"name": "train", "resources": {"limits": {"memory": "8Gi"}}}]}
    o = observe(FAILED_JOB, [p], now=NOW, unschedulable_timeout=600)
    assert o.reason.startswith("out of memory (OOMKilled): the training needed more memory than ")
    assert "limit (8Gi); try a smaller per_device_train_batch_size" in o.reason
    assert o.interrupted == ""


def test_a_job_past_max_runtime_says_so_even_with_its_pod_gone():
    o = observe(
        job(("Failed", "DeadlineExceeded", "Job was active longer than specified"), deadline=7200),
        [deleted_pod()],
        now=NOW,
        unschedulable_timeout=600,
    )
    assert (o.state, o.interrupted) == ("failed", "")
    assert o.reason == (
        "DeadlineExceeded: the job ran longer than its limit of 7200 s (the profile's max_runtime)"
    )


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


def test_the_failed_containers_exit_is_named_not_the_owner_init_containers():
    """The owner init container ends 0 (Completed) before the training starts; a failed Job's
    reason names the training's exit (was: "exited with code 0 (Completed)")."""
    failed = pod(phase="Failed", state={"terminated": {"exitCode": 1, "reason": "Error"}})
    failed["status"]["initContainerStatuses"] = [
        {"name": "owner", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    ]
    state, reason, _ = see(job(("Failed", "BackoffLimitExceeded", "")), [failed])
    assert (state, reason) == (
        "failed",
        "BackoffLimitExceeded: the training exited with code 1 (Error); see its logs",
    )
