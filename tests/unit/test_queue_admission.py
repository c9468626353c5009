"""Admission policy of the batch queue: exact orders, positions and reasons."""

import random

import pytest

from llmspawner.capacity import capacities
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.profiles import ClusterGPUConfig, find_profile, load_profiles
from llmspawner.queue.admission import (
    PRIORITIES,
    PRIORITY_CLASSES,
    ActiveJob,
    Decision,
    QueuedJob,
    decide,
)


def q(id, user, profile="medium", priority="normal", at=None):
    return QueuedJob(id=id, user=user, profile=profile, priority=priority, submitted_at=at or id)


def a(id, user, profile="medium", has_pod=True):
    return ActiveJob(id=id, user=user, profile=profile, has_pod=has_pod)


FREE = {"cpu": None, "small": 0, "medium": 0, "large": 0}


def test_constants():
    assert PRIORITIES == ("high", "normal", "low")
    assert PRIORITY_CLASSES == {"high": "llm-high", "normal": "llm-normal", "low": "llm-low"}


def test_priority_first_then_submission_order():
    queued = [
        q(1, "u1", priority="low"),
        q(2, "u2", priority="normal"),
        q(3, "u3", priority="high"),
        q(4, "u4", priority="normal"),
        q(5, "u5", priority="high"),
        q(6, "u6", priority="low"),
    ]
    d = decide(queued, [], free={**FREE, "medium": 4}, user_limits={})
    assert d.admit == (3, 5, 2, 4)
    assert d.positions == {1: 1, 6: 2}
    assert d.reasons == {
        1: "waiting for a free slice of profile medium",
        6: "waiting for a free slice of profile medium",
    }


def test_fair_share_counts_active_jobs_and_jobs_admitted_in_this_pass():
    # alice has 2 active jobs, carol 1, bob none; everyone may run 5.
    active = [a(100, "alice", "large"), a(101, "alice", "small"), a(102, "carol", "small")]
    queued = [
        q(1, "alice", at=1),
        q(2, "alice", at=2),
        q(3, "carol", at=3),
        q(4, "bob", at=4),
        q(5, "bob", at=5),
        q(6, "bob", at=6),
        q(7, "carol", at=7),
    ]
    d = decide(queued, active, free={**FREE, "medium": 5}, user_limits={}, default_limit=5)
    # bob4 (bob 0) | carol3 (carol 1, t3) before bob5 (bob 1, t5) | alice1 (alice 2, t1)
    # | bob6 (bob 2, t6) before carol7 (carol 2, t7): the 5 slices are gone.
    assert d.admit == (4, 3, 5, 1, 6)
    # Left: carol7 (carol now 2) before alice2 (alice now 3).
    assert d.positions == {7: 1, 2: 2}


def test_priority_beats_fair_share():
    active = [a(100, "alice", "small"), a(101, "alice", "small")]
    queued = [q(1, "bob", priority="normal"), q(2, "alice", priority="high")]
    d = decide(queued, active, free={**FREE, "medium": 1}, user_limits={}, default_limit=5)
    assert d.admit == (2,)
    assert d.positions == {1: 1}


def test_per_user_limit_default_and_set_by_admins():
    active = [a(100, "alice", "small")]
    queued = [q(1, "alice"), q(2, "alice"), q(3, "bob"), q(4, "bob"), q(5, "carol"), q(6, "dave")]
    d = decide(
        queued,
        active,
        free={**FREE, "medium": 10},
        user_limits={"bob": 2, "dave": 0},
    )
    assert d.admit == (3, 5, 4)
    assert d.reasons == {
        1: "you already have 1 running job (your limit is 1)",
        2: "you already have 1 running job (your limit is 1)",
        6: "you may not run jobs now (your limit is 0); ask an admin to raise it",
    }
    # alice (1 active) before dave (0 active, but limit 0 keeps him out; his place stays)
    assert d.positions == {6: 1, 1: 2, 2: 3}


def test_limit_counts_jobs_of_every_profile():
    active = [a(100, "alice", "cpu"), a(101, "alice", "large")]
    d = decide(
        [q(1, "alice", "small")], active, free={**FREE, "small": 3}, user_limits={"alice": 2}
    )
    assert d.admit == ()
    assert d.reasons == {1: "you already have 2 running jobs (your limit is 2)"}


def test_a_full_profile_does_not_block_other_profiles():
    queued = [
        q(1, "alice", "medium", "high"),
        q(2, "bob", "small", "low"),
        q(3, "carol", "large", "normal"),
        q(4, "dave", "cpu", "low"),
    ]
    d = decide(
        queued,
        [],
        free={"cpu": None, "small": 1, "medium": 0, "large": 0},
        user_limits={},
        labels={"medium": "½ GPU", "large": "1 GPU"},
        totals={"medium": 2, "large": 0},
    )
    # the high medium job and the normal large job wait; both low jobs start, oldest first
    assert d.admit == (2, 4)
    assert d.reasons == {
        1: "waiting for a free ½ GPU slice of profile medium: 2 in use",
        3: "waiting for a free 1 GPU slice of profile large: the cluster has none now",
    }
    assert d.positions == {1: 1, 3: 1}


def test_admission_order_of_a_user_skips_their_jobs_that_do_not_fit():
    # alice's first job waits for medium; her second (small) starts; the limit is per user.
    queued = [q(1, "alice", "medium"), q(2, "alice", "small"), q(3, "alice", "small")]
    d = decide(queued, [], free={**FREE, "small": 2}, user_limits={"alice": 2})
    assert d.admit == (2, 3)
    assert d.reasons == {1: "you already have 2 running jobs (your limit is 2)"}


def test_cpu_profile_has_no_slice_limit():
    queued = [q(i, f"u{i % 4}", "cpu") for i in range(1, 13)]
    d = decide(queued, [], free=FREE, user_limits={}, default_limit=2)
    assert d.admit == (1, 2, 3, 4, 5, 6, 7, 8)
    assert sorted(d.positions) == [9, 10, 11, 12]
    assert set(d.reasons.values()) == {"you already have 2 running jobs (your limit is 2)"}


def test_admitted_jobs_without_a_pod_still_hold_a_slice():
    active = [a(100, "x", "medium", has_pod=False), a(101, "y", "medium", has_pod=True)]
    queued = [q(1, "alice"), q(2, "bob")]
    # free (from the cluster) counts y's bound pod, not x's pending one.
    d = decide(queued, active, free={**FREE, "medium": 2}, user_limits={})
    assert d.admit == (1,)
    assert d.positions == {2: 1}
    d = decide(queued, active, free={**FREE, "medium": 0}, user_limits={})
    assert d.admit == ()


def test_capacity_is_shared_with_interactive_servers():
    """free comes from capacity.capacities, which counts interactive servers' pods too."""
    cluster = ClusterGPUConfig()
    profiles = load_profiles(REPO_PROFILES, cluster)
    taint = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    nodes = [
        {
            "metadata": {"name": "gpu-half", "labels": {"nvidia.com/gpu.replicas": "2"}},
            "spec": {"taints": taint},
            "status": {"allocatable": {"nvidia.com/gpu": "2"}},
        }
    ]
    server = {  # bob's JupyterLab on a medium slice
        "metadata": {"name": "jupyter-bob"},
        "spec": {
            "nodeName": "gpu-half",
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": "Running"},
    }
    caps = capacities(profiles, cluster, nodes, [server])
    free = {p.slug: caps[p.slug].free if p.slug in caps else None for p in profiles}
    assert free == {"cpu": None, "small": 0, "medium": 1, "large": 0}
    medium = find_profile(profiles, "medium")
    d = decide(
        [q(1, "alice"), q(2, "carol")],
        [],
        free=free,
        user_limits={},
        labels={p.slug: p.gpu.label for p in profiles},
        totals={s: c.total for s, c in caps.items()},
    )
    assert d == Decision(
        admit=(1,),
        positions={2: 1},
        reasons={2: f"waiting for a free {medium.gpu.label} slice of profile medium: 2 in use"},
    )


def test_positions_follow_priority_fair_share_and_submission():
    active = [a(100, "alice", "small")]
    queued = [
        q(1, "alice", at=1),
        q(2, "alice", at=2),
        q(3, "alice", at=3),
        q(4, "bob", at=4),
        q(5, "bob", at=5),
        q(6, "carol", at=6, priority="low"),
        q(7, "carol", at=7, priority="high"),
        q(8, "dave", "small", at=8),
    ]
    d = decide(queued, active, free=FREE, user_limits={}, default_limit=9)
    assert d.admit == ()
    # medium line: carol7 (high) | bob4 (bob 0), alice1 (alice 1, t1), bob5 (bob 1, t5),
    # alice2 (alice 2), alice3 (alice 3) | carol6 (low)
    assert d.positions == {7: 1, 4: 2, 1: 3, 5: 4, 2: 5, 3: 6, 6: 7, 8: 1}


def test_unknown_profile():
    d = decide([q(1, "alice", "huge")], [], free=FREE, user_limits={})
    assert d.admit == ()
    assert d.positions == {1: 1}
    assert d.reasons == {
        1: "profile 'huge' is not offered any more; cancel this job and submit it again with "
        "one of: cpu, large, medium, small"
    }


def test_negative_free_is_none_free():
    d = decide([q(1, "alice")], [a(9, "x", has_pod=False)], free={"medium": -1}, user_limits={})
    assert d.admit == ()


def test_bad_priority():
    with pytest.raises(
        ValueError, match="job 1: priority must be one of high, normal, low, not 'urgent'"
    ):
        decide([q(1, "alice", priority="urgent")], [], free=FREE, user_limits={})


def test_empty():
    assert decide([], [], free={}, user_limits={}) == Decision(admit=(), positions={}, reasons={})


# --- against a plain reference implementation on random inputs ---------------------------


def reference(queued, active, free, limits, default):
    rank = {p: i for i, p in enumerate(PRIORITIES)}
    count = {}
    room = dict(free)
    for x in active:
        count[x.user] = count.get(x.user, 0) + 1
        if not x.has_pod and room.get(x.profile) is not None:
            room[x.profile] = max(0, room[x.profile] - 1)
    waiting = list(queued)
    admit = []
    while True:
        candidates = [
            j
            for j in waiting
            if j.profile in room
            and (room[j.profile] is None or room[j.profile] > 0)
            and count.get(j.user, 0) < limits.get(j.user, default)
        ]
        if not candidates:
            break
        best = min(
            candidates, key=lambda j: (rank[j.priority], count.get(j.user, 0), j.submitted_at, j.id)
        )
        admit.append(best.id)
        waiting.remove(best)
        count[best.user] = count.get(best.user, 0) + 1
        if room[best.profile] is not None:
            room[best.profile] -= 1
    positions = {}
    for p in {j.profile for j in waiting}:
        line = [j for j in waiting if j.profile == p]
        c = dict(count)
        place = 0
        while line:
            best = min(
                line, key=lambda j: (rank[j.priority], c.get(j.user, 0), j.submitted_at, j.id)
            )
            place += 1
            positions[best.id] = place
            line.remove(best)
            c[best.user] = c.get(best.user, 0) + 1
    return tuple(admit), positions, room, count


@pytest.mark.parametrize("seed", range(60))
def test_matches_the_reference(seed):
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(rng.randint(1, 8))]
    profiles = ["cpu", "small", "medium", "large"]
    queued = [
        q(i, rng.choice(users), rng.choice(profiles), rng.choice(PRIORITIES), at=rng.randint(0, 20))
        for i in range(1, rng.randint(0, 40) + 1)
    ]
    active = [
        a(1000 + i, rng.choice(users), rng.choice(profiles), rng.random() < 0.5)
        for i in range(rng.randint(0, 6))
    ]
    free = {"cpu": None, **{p: rng.randint(0, 4) for p in profiles[1:]}}
    if rng.random() < 0.2:
        del free["large"]
    limits = {u: rng.randint(0, 3) for u in users if rng.random() < 0.5}
    default = rng.randint(1, 3)
    d = decide(queued, active, free=free, user_limits=limits, default_limit=default)
    admit, positions, room, count = reference(queued, active, free, limits, default)
    assert d.admit == admit
    assert d.positions == positions
    assert set(d.reasons) == set(positions)
    # No job waits while its profile has room and its owner is under the limit.
    for j in queued:
        if j.id in d.reasons and j.profile in room:
            has_room = room[j.profile] is None or room[j.profile] > 0
            assert not (has_room and count.get(j.user, 0) < limits.get(j.user, default))


def test_one_pass_over_10000_jobs_places_every_job():
    """The size of benchmarks/queue_throughput.py's admission pass (its speed is measured there)."""
    rng = random.Random(4)
    profiles = ["cpu", "small", "medium", "large"]
    queued = [
        q(i, f"user{rng.randrange(100)}", rng.choice(profiles), rng.choice(PRIORITIES), at=i)
        for i in range(1, 10_001)
    ]
    active = [a(20_000 + i, f"user{i}", rng.choice(profiles[1:]), i % 3 != 0) for i in range(30)]
    free = {"cpu": None, "small": 3, "medium": 1, "large": 0}
    d = decide(queued, active, free=free, user_limits={"user5": 3})
    assert len(d.positions) + len(d.admit) == 10_000
    assert set(d.positions) | set(d.admit) == {j.id for j in queued}
