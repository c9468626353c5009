"""The queue's input limits (:mod:`llmspawner.queue.limits`): each refusal names its limit and
field, comes before the work it bounds, and the scans stay linear on hostile input."""

from __future__ import annotations

import asyncio
import json
import operator
import os
import random
import time

import pytest

from llmspawner.queue import lf_config, limits
from llmspawner.queue.limits import (
    MAX_BODY_BYTES,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    LimitExceeded,
)

BASE = "model_name_or_path: /storage/models/tiny\noutput_dir: out/run\n"


def nested_yaml_block(depth: int) -> str:
    """``depth`` levels of block mappings (the top-level mapping is level 1)."""
    return "".join(" " * i + f"k{i}:\n" for i in range(depth - 1)) + " " * (depth - 1) + "k: 1\n"


def nested_flow(depth: int) -> str:
    return "a: " + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "\n"


def nested_json(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def nested_object(depth: int):
    value = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def refusal(fn, *args) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as e:
        fn(*args)
    return e.value


# -- the table of refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "status", "limit", "words"),
    [
        (BASE + "x: " + "a" * MAX_CONFIG_BYTES + "\n", 413, "max_config_bytes", "64 KiB"),
        # 64 Ki characters of two bytes each: the limit is on bytes
        (BASE + "x: " + "é" * (MAX_CONFIG_BYTES // 2) + "\n", 413, "max_config_bytes", "bytes"),
        (nested_yaml_block(MAX_CONFIG_DEPTH + 1), 400, "max_config_depth", "32 levels"),
        (nested_yaml_block(100), 400, "max_config_depth", "at line 33"),
        (nested_flow(MAX_CONFIG_DEPTH + 1), 400, "max_config_depth", "32 levels"),
        ("a:\n" + "- " * 5000 + "1\n", 400, "max_config_depth", "32 levels"),
        ("a: " + "[" * 30000 + "\n", 400, "max_config_depth", "32 levels"),
        (nested_json(MAX_CONFIG_DEPTH + 1), 400, "max_config_depth", "32 levels"),
        (nested_json(5000), 400, "max_config_depth", "32 levels"),
        ('{"a": ' + "[" * 20000 + "]" * 20000 + "}", 400, "max_config_depth", "32 levels"),
        # the billion laughs: nine anchors of ten aliases each
        (
            'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
            + "".join(
                f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n"
                for a, b in zip("abcdefgh", "bcdefghi", strict=True)
            ),
            400,
            "yaml_aliases",
            "*a (line 2, column 8)",
        ),
        ("a: &x 1\nb: *x\n", 400, "yaml_aliases", "aliases are not allowed"),
        ("x: " + "1" * 5000 + "\n", 400, "max_number_chars", "5000 characters"),
        ("x: " + ":".join(["1"] + ["2"] * 20000) + "\n", 400, "max_number_chars", "(line 1)"),
        ("x: 1" + "0" * 40 + ".5\n", 400, "max_number_chars", "32"),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else str(v),
)
def test_a_config_over_a_limit_is_refused_naming_it(text, status, limit, words):
    started = time.perf_counter()
    e = refusal(lf_config.parse_config, text)
    assert time.perf_counter() - started < 2.0  # linear scans, not the parse of a bomb
    assert (e.status, e.field, e.limit) == (status, "config", limit)
    assert f"({limit})" in e.message and words in e.message
    assert e.to_json() == {"error": e.message, "field": "config", "limit": limit}
    # the CLI's check refuses the same text the same way
    assert refusal(limits.check_config_text, text).to_json() == e.to_json()


@pytest.mark.parametrize(
    "text",
    [
        BASE + "x: " + "a" * (MAX_CONFIG_BYTES - len(BASE) - 4) + "\n",
        nested_yaml_block(MAX_CONFIG_DEPTH),
        nested_flow(MAX_CONFIG_DEPTH),
        "a:\n" + "- " * (MAX_CONFIG_DEPTH - 1) + "1\n",
        nested_json(MAX_CONFIG_DEPTH),
        "a: &x 1\nb: 2\n",  # an anchor alone expands nothing
        "a: \"*x [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"\nb: '&y {{{{'\n",
        '{"a": "' + "[" * 100 + '\\"' + "{" * 100 + '"}',
        "x: " + "1" * 32 + "\n",
    ],
    ids=["size", "block", "flow", "compact", "json", "anchor", "quoted", "escapes", "number"],
)
def test_a_config_at_the_limits_is_parsed(text):
    assert len(text.encode()) <= MAX_CONFIG_BYTES
    limits.check_config_text(text)
    assert isinstance(limits.load_config_text(text), dict)


def test_a_json_object_config_is_bounded_too():
    limits.check_config_object(nested_object(MAX_CONFIG_DEPTH))
    e = refusal(limits.check_config_object, nested_object(MAX_CONFIG_DEPTH + 1))
    assert (e.status, e.limit, e.field) == (400, "max_config_depth", "config")
    e = refusal(limits.check_config_object, {"x": "a" * MAX_CONFIG_BYTES})
    assert (e.status, e.limit) == (413, "max_config_bytes")
    assert "as JSON" in e.message
    with pytest.raises(LimitExceeded, match="max_config_depth"):
        lf_config.check_config_now(nested_object(100), username="alice")


def test_the_body_limits():
    limits.check_body_size(MAX_BODY_BYTES)
    e = refusal(limits.check_body_size, MAX_BODY_BYTES + 1)
    assert (e.status, e.field, e.limit) == (413, "body", "max_body_bytes")
    assert e.message == (
        f"the request body has {MAX_BODY_BYTES + 1} bytes; the limit (max_body_bytes) is "
        "1 MiB (1048576 bytes)"
    )
    assert limits.load_json_body(json.dumps({"config": nested_object(32)}).encode())
    e = refusal(limits.load_json_body, json.dumps({"config": nested_object(33)}).encode())
    assert (e.status, e.field, e.limit) == (400, "body", "max_config_depth")
    e = refusal(limits.load_json_body, b"[" * 500_000 + b"]" * 500_000)
    assert e.limit == "max_config_depth"


# -- the JSON scan against a reference ---------------------------------------------------------


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def test_the_json_scan_agrees_with_the_parsed_depth():
    rng = random.Random(12)
    leaves = [1, None, 'a"[\\', "{", "\\", "]]", '\\"{']

    def make(depth):
        if depth == 0 or rng.random() < 0.2:
            return rng.choice(leaves)
        if rng.random() < 0.5:
            return [make(depth - 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["k", "[", '"}']): make(depth - 1) for _ in range(rng.randint(0, 3))}

    for _ in range(2000):
        value = make(rng.randint(0, 12))
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        for limit in range(8):
            assert limits.json_too_deep(text, limit) == (_depth(value) > limit), (text, limit)


@pytest.mark.parametrize(
    "body",
    [
        b'"' + b'\\"' * 400_000,
        b'"' + b'\\"' * 400_000 + b"\\",
        b"[" * 600_000 + b"]" * 400_000,
        b"[]" * 500_000,
        b'"a' * 500_000,
        b'{"a":' * 200_000,
    ],
    ids=["escapes", "trailing-backslash", "deep", "flat", "quotes", "keys"],
)
def test_the_json_scan_is_linear(body):
    started = time.perf_counter()
    limits.json_too_deep(body, limits.MAX_BODY_DEPTH)
    assert time.perf_counter() - started < 2.0  # milliseconds when the machine is idle


# -- problems, time ----------------------------------------------------------------------------


def test_a_config_with_thousands_of_problems_lists_fifty_quickly():
    text = BASE + "".join(f"u{i}: 1\n" for i in range(5000))
    assert len(text) < MAX_CONFIG_BYTES
    started = time.perf_counter()
    with pytest.raises(lf_config.ConfigInvalid) as e:
        lf_config.check_config_now(text, username="alice")
    assert time.perf_counter() - started < 5.0  # difflib for 50 keys, not for 5000
    assert len(e.value.problems) == limits.MAX_LISTED_PROBLEMS
    assert e.value.total == 5000
    assert str(e.value).endswith("\n... and 4950 more")


async def test_off_loop_runs_in_a_process_within_its_time():
    assert await limits.off_loop(operator.add, 40, 2) == 42
    started = time.perf_counter()
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    with pytest.raises(LimitExceeded) as e:
        await limits.off_loop(time.sleep, 0.5, seconds=0.2)
    ticker.cancel()
    assert 0.2 <= time.perf_counter() - started < 0.45
    assert ticks >= 5  # the loop kept running meanwhile
    assert (e.value.status, e.value.limit, e.value.field) == (503, "check_seconds", "config")
    await asyncio.sleep(0.4)  # let the worker finish before the next test uses it


async def test_refusals_come_back_whole_from_the_worker():
    deep = "".join(" " * i + f"k{i}:\n" for i in range(40)) + " " * 40 + "x: 1\n"
    with pytest.raises(LimitExceeded) as e:
        await lf_config.check_config(deep, username="alice")
    assert e.value.to_json() == refusal(lf_config.parse_config, deep).to_json()
    text = BASE + "".join(f"u{i}: 1\n" for i in range(60))
    with pytest.raises(lf_config.ConfigInvalid) as e:
        await lf_config.check_config(text, username="alice")
    assert (len(e.value.problems), e.value.total) == (50, 60)
    assert e.value.problems[0] == lf_config.ConfigProblem("u0", e.value.problems[0].message)
    prepared = await lf_config.check_config(BASE, username="alice")
    stored = json.loads(lf_config.name_run(prepared, "llm-job-alice-3"))
    assert stored == lf_config.prepare_config(
        lf_config.parse_config(BASE), username="alice", job_name="llm-job-alice-3"
    )
    assert list(stored)[-1] == "run_name"
    text = BASE + 'run_name: mine\ndeepspeed: {run_name: ""}\n'
    stored = json.loads(lf_config.name_run(await lf_config.check_config(text, username="a"), "j"))
    assert (stored["run_name"], stored["deepspeed"]) == ("j", {"run_name": ""})


def test_size_text():
    assert limits.size_text(64 * 1024) == "64 KiB (65536 bytes)"
    assert limits.size_text(1024 * 1024) == "1 MiB (1048576 bytes)"
    assert limits.size_text(1000) == "1000 bytes"


async def test_a_killed_worker_is_a_503_then_replaced():
    await limits.worker_ready()
    with pytest.raises(LimitExceeded) as e:
        await limits.off_loop(os._exit, 1)
    assert (e.value.status, e.value.limit) == (503, "check_seconds")
    assert await limits.off_loop(operator.add, 1, 2) == 3


# -- one round trip per submit, calls to the worker in batches -------------------------------


def _submit_body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_a_submit_body_is_decoded_and_its_config_checked_in_one_call():
    body = lf_config.check_submit_body(
        _submit_body(config=BASE, profile="cpu", priority="high"), username="alice"
    )
    assert (body.unknown, body.has_config, body.config_ok) == (None, True, True)
    assert (body.profile, body.priority, body.priority_ok) == ("cpu", "high", True)
    assert body.prepared() == lf_config.check_config_json(BASE, username="alice")
    # The other fields' errors are the caller's to answer first: the config is checked anyway.
    bad = BASE + "no_such_argument: 1\n"
    body = lf_config.check_submit_body(
        _submit_body(config=bad, profile=3, priority=["x"], user="bob", zz=1), username="alice"
    )
    assert (body.unknown, body.profile, body.priority, body.priority_ok) == (
        "user",
        None,
        None,
        False,
    )
    with pytest.raises(lf_config.ConfigInvalid) as e:
        body.prepared()
    assert e.value.problems[0].field == "no_such_argument"
    body = lf_config.check_submit_body(_submit_body(config=5, profile="cpu"), username="alice")
    assert (body.has_config, body.config_ok, body.checked, body.priority) == (
        True,
        False,
        None,
        None,
    )
    with pytest.raises(ValueError, match="not checked"):
        body.prepared()
    body = lf_config.check_submit_body(_submit_body(profile="cpu"), username="alice")
    assert (body.has_config, body.priority_ok) == (False, True)


def test_a_submit_body_over_a_limit_or_not_an_object_is_refused_whole():
    deep = "".join(" " * i + f"k{i}:\n" for i in range(40)) + " " * 40 + "x: 1\n"
    body = lf_config.check_submit_body(_submit_body(config=deep, profile="cpu"), username="a")
    with pytest.raises(LimitExceeded) as e:
        body.prepared()
    assert e.value.limit == "max_config_depth"
    with pytest.raises(LimitExceeded) as e:
        lf_config.check_submit_body(b"[" * 40 + b"]" * 40, username="a")
    assert (e.value.field, e.value.limit) == ("body", "max_config_depth")
    secret = b'{"config": "hf_secret_token_value", '
    with pytest.raises(lf_config.BadBody) as e:
        lf_config.check_submit_body(secret, username="a")
    assert str(e.value).startswith("the body is not valid JSON: ")
    assert b"hf_secret" not in str(e.value).encode()  # the decoder's message, not the body
    with pytest.raises(lf_config.BadBody, match="must be a JSON object"):
        lf_config.check_submit_body(b"[1, 2]", username="a")


async def test_check_submit_answers_from_the_worker():
    body = await lf_config.check_submit(_submit_body(config=BASE, profile="cpu"), username="al")
    assert json.loads(lf_config.name_run(body.prepared(), "j"))["run_name"] == "j"
    with pytest.raises(lf_config.BadBody):
        await lf_config.check_submit(b"{", username="al")


def _unpicklable():
    class Local(Exception):
        pass

    raise Local("made inside a function: pickle cannot find its class")


def test_a_batch_answers_each_call_and_never_fails_on_an_unpicklable_error():
    import functools
    import pickle

    outcomes = limits._run_batch(
        [functools.partial(operator.add, 1, 2), _unpicklable, functools.partial(int, "x")]
    )
    assert outcomes[0] == (True, 3)
    assert outcomes[1][0] is False and isinstance(outcomes[1][1], RuntimeError)
    assert "Local: made inside a function" in str(outcomes[1][1])
    assert outcomes[2][0] is False and isinstance(outcomes[2][1], ValueError)
    pickle.dumps(outcomes)  # what the worker sends back


async def test_calls_made_together_share_round_trips_each_with_its_own_answer():
    await limits.worker_ready()
    loop = asyncio.get_running_loop()
    trips = []
    original = loop.run_in_executor

    def counting(executor, fn, *args):
        trips.append(len(args[0]) if fn is limits._run_batch else None)
        return original(executor, fn, *args)

    loop.run_in_executor = counting
    try:
        calls = [limits.off_loop(operator.add, i, 1) for i in range(20)]
        calls.append(limits.off_loop(int, "not a number"))
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        del loop.run_in_executor
    assert results[:20] == [i + 1 for i in range(20)]
    assert isinstance(results[20], ValueError)
    assert sum(trips) == 21 and len(trips) < 21  # one batch with the worker at a time
