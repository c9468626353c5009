"""``LLMOAuthenticator.get_user_groups``: a login without a groups claim is quiet unless a
login rule needs groups (issue 15 §6)."""

from __future__ import annotations

import logging

import pytest

from llmspawner.auth import LLMOAuthenticator, claim

KEY = "oauth_user.groups"


def _authenticator(caplog, **config) -> LLMOAuthenticator:
    a = LLMOAuthenticator(auth_state_groups_key=KEY, manage_groups=True, **config)
    a.log = logging.getLogger("test-auth")
    caplog.set_level(logging.DEBUG, logger="test-auth")
    return a


def _levels(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "test-auth"]


@pytest.mark.parametrize(
    ("state", "value"),
    [
        ({"oauth_user": {"groups": ["a"]}}, ["a"]),
        ({"oauth_user": {"sub": "x"}}, None),
        ({"oauth_user": None}, None),
        ({}, None),
        ({"oauth_user": "text"}, None),
    ],
)
def test_claim_follows_the_dotted_key(state, value):
    assert claim(state, KEY) == value


async def test_no_groups_claim_and_no_group_rule_is_a_debug_line(caplog):
    a = _authenticator(caplog, allow_all=True)
    assert await a.get_user_groups({"oauth_user": {"sub": "alice"}}) == set()
    levels = _levels(caplog)
    assert levels and {level for level, _ in levels} == {"DEBUG"}, levels


@pytest.mark.parametrize("rule", ["allowed_groups", "admin_groups"])
async def test_no_groups_claim_is_an_error_when_a_group_rule_needs_it(caplog, rule):
    a = _authenticator(caplog, **{rule: {"users"}})
    assert await a.get_user_groups({"oauth_user": {"sub": "alice", "email": "a@x"}}) == set()
    errors = [m for level, m in _levels(caplog) if level == "ERROR"]
    assert len(errors) == 1, _levels(caplog)
    assert "'groups' claim" in errors[0] and rule.split("_")[0] in errors[0]
    assert "['email', 'sub']" in errors[0]


async def test_groups_claim_is_used_as_oauthenticator_does(caplog):
    a = _authenticator(caplog, allowed_groups={"users"})
    state = {"oauth_user": {"sub": "alice", "groups": ["users", "gpu"]}}
    assert await a.get_user_groups(state) == {"users", "gpu"}
    assert [m for level, m in _levels(caplog) if level == "ERROR"] == []
