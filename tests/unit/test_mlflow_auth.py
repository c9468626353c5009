"""The pure parts of MLflow behind the hub's login: who a hub answer is, the token cache,
reserved experiment names, the auth app's config, the hub service entry and a Job's token
Secret (the real hub and MLflow: tests/integration/test_mlflow_auth.py)."""

from __future__ import annotations

import configparser

import pytest
from traitlets.config import Config

from llmspawner import mlflow_auth as ma
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.mlflow_hub import (
    ACCESS_SCOPE,
    JobTokens,
    build_token_secret,
    configure_mlflow,
    service_prefix,
)
from llmspawner.queue import k8s_objects
from llmspawner.queue.hubservice import queue_service
from llmspawner.settings import LLMPlatform
from llmspawner.workload import build_workload

SETTINGS = ma.AuthSettings(hub_api_url="http://hub:8081/hub/api", admin_groups=frozenset({"ml"}))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"kind": "user", "name": "alice", "scopes": [ACCESS_SCOPE]},
            ma.HubIdentity("alice", False),
        ),
        (
            {"kind": "user", "name": "root", "admin": True, "scopes": [ACCESS_SCOPE]},
            ma.HubIdentity("root", True),
        ),
        (
            {"kind": "user", "name": "carol", "groups": ["ml"], "scopes": ["access:services"]},
            ma.HubIdentity("carol", True),
        ),
        ({"kind": "user", "name": "bob", "scopes": ["read:users:name!user=bob"]}, None),
        ({"kind": "user", "name": "bob", "scopes": ["access:services!service=llm-queue"]}, None),
        ({"kind": "service", "name": "llm-queue", "scopes": [ACCESS_SCOPE]}, None),
        ({"kind": "user", "name": "", "scopes": [ACCESS_SCOPE]}, None),
    ],
)
def test_identity_from_a_hub_answer(model, expected):
    assert ma.identity_from_model(model, SETTINGS) == expected


def test_settings_from_the_environment():
    s = ma.AuthSettings.from_env(
        {
            "JUPYTERHUB_API_URL": "http://hub:8081/hub/api/",
            "JUPYTERHUB_API_TOKEN": "secret",
            "JUPYTERHUB_SERVICE_PREFIX": "/jhub/services/mlflow",
            "JUPYTERHUB_BASE_URL": "/jhub",
            "LLMSPAWNER_MLFLOW_ADMIN_GROUPS": "a, b,,a",
            "LLMSPAWNER_MLFLOW_AUTH_TTL": "0",
        }
    )
    assert (s.hub_api_url, s.client_secret, s.client_id) == (
        "http://hub:8081/hub/api",
        "secret",
        "service-mlflow",
    )
    assert (s.service_prefix, s.callback_url) == (
        "/jhub/services/mlflow/",
        "/jhub/services/mlflow/oauth_callback",
    )
    assert s.authorize_url == "/jhub/hub/api/oauth2/authorize"
    assert (s.admin_groups, s.ttl, s.timeout) == (frozenset({"a", "b"}), 0.0, 5.0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "JUPYTERHUB_API_URL (the hub's API as MLflow reaches it) is not set"),
        (
            {"JUPYTERHUB_API_URL": "http://h", "LLMSPAWNER_MLFLOW_AUTH_TTL": "soon"},
            "LLMSPAWNER_MLFLOW_AUTH_TTL must be a number of seconds, not 'soon'",
        ),
        (
            {"JUPYTERHUB_API_URL": "http://h", "LLMSPAWNER_MLFLOW_HUB_TIMEOUT": "-1"},
            "LLMSPAWNER_MLFLOW_HUB_TIMEOUT must be >= 0 seconds, not '-1'",
        ),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ValueError) as e:
        ma.AuthSettings.from_env(env)
    assert str(e.value) == message


def test_the_validator_asks_the_hub_once_per_ttl_and_remembers_bad_tokens():
    now = [0.0]
    asked = []

    def fetch(settings, token):
        asked.append(token)
        return (
            {"kind": "user", "name": "alice", "scopes": [ACCESS_SCOPE]} if token == "ok" else None
        )

    validator = ma.HubTokenValidator(
        ma.AuthSettings(hub_api_url="http://h", ttl=30), fetch=fetch, clock=lambda: now[0]
    )
    assert validator.identify("ok") == (ma.HubIdentity("alice", False), True)
    assert validator.identify("ok") == (ma.HubIdentity("alice", False), False)
    assert validator.identify("forged") == (None, True)
    assert validator.identify("forged") == (None, False)
    now[0] = 30.0
    assert validator.identify("ok") == (ma.HubIdentity("alice", False), True)
    assert asked == ["ok", "forged", "ok"]


def test_an_unreachable_hub_is_not_cached():
    calls = []

    def fetch(settings, token):
        calls.append(token)
        raise ma.HubUnavailable("down")

    validator = ma.HubTokenValidator(ma.AuthSettings(hub_api_url="http://h"), fetch=fetch)
    for _ in range(2):
        with pytest.raises(ma.HubUnavailable):
            validator.identify("t")
    assert calls == ["t", "t"]


def test_the_cache_is_bounded_and_keeps_no_token():
    cache = ma.TokenCache(60, max_size=2)
    for token in ("a", "b", "c"):
        cache.put(token, ma.HubIdentity(token, False))
    assert [cache.get(t)[0] for t in ("a", "b", "c")] == [False, True, True]
    assert all(len(k) == 32 for k in cache._entries)  # SHA-256 digests only
    off = ma.TokenCache(0)
    off.put("a", None)
    assert off.get("a") == (False, None)


@pytest.mark.parametrize(
    ("name", "template", "owner"),
    [
        ("bob-experiments", "{username}-experiments", "bob"),
        ("a-b-experiments", "{username}-experiments", "a-b"),
        ("bob-scratch", "{username}-experiments", None),
        ("experiments", "{username}-experiments", None),
        ("runs of bob", "runs of {username}", "bob"),
        ("bob-experiments", "{slug}-experiments", None),  # no slug function in MLflow's image
        ("x-y", "{username}-{username}", None),  # ambiguous: reserves nothing
    ],
)
def test_reserved_experiment_names(name, template, owner):
    assert ma.reserved_owner(name, template) == owner


def test_auth_config_file():
    text = ma.auth_config_text(database_uri="sqlite:////mlflow/basic_auth.db")
    config = configparser.ConfigParser()
    config.read_string(text)
    assert dict(config["mlflow"]) == {
        "default_permission": "READ",
        "database_uri": "sqlite:////mlflow/basic_auth.db",
        "admin_username": "llmspawner/admin",
        "authorization_function": "llmspawner.mlflow_auth:authenticate_request",
        "grant_default_workspace_access": "false",
    }
    assert "password" not in text


def test_install_copies_the_module_and_writes_the_config(tmp_path):
    ma.install(str(tmp_path), env={"LLMSPAWNER_MLFLOW_AUTH_DB_URL": "postgresql://u:p@db/auth"})
    assert (tmp_path / "llmspawner" / "mlflow_auth.py").read_text() == open(ma.__file__).read()
    assert (tmp_path / "llmspawner" / "__init__.py").is_file()
    config = configparser.ConfigParser()
    config.read(tmp_path / "basic_auth.ini")
    assert config["mlflow"]["database_uri"] == "postgresql://u:p@db/auth"
    assert ma.main(["install"]) == 2


def hub_config(uri="http://mlflow:5000/services/mlflow"):
    c = Config()
    c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    c.LLMPlatform.mlflow_tracking_uri = uri
    c.LLMPlatform.image = "singleuser:1"
    return c


@pytest.mark.parametrize("jupyterhub_6", [True, False])
def test_the_hub_service_its_scopes_and_the_servers_token(jupyterhub_6):
    c = hub_config()
    c.KubeSpawner.environment = {"FROM_CHART": "1"}
    configure_mlflow(c, {"LLMSPAWNER_MLFLOW_SERVICE_TOKEN": "tok"}, extra_user_scopes=jupyterhub_6)
    [service] = c.JupyterHub.services
    assert service == {
        "name": "mlflow",
        "url": "http://mlflow:5000",
        "display": True,
        "info": service["info"],
        "oauth_no_confirm": True,
        "api_token": "tok",
    }
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["mlflow-service"]["scopes"] == []
    assert ACCESS_SCOPE in roles["server"]["scopes"]
    if jupyterhub_6:
        assert c.JupyterHub.extra_user_scopes == {ACCESS_SCOPE}
    else:
        assert roles["user"]["scopes"] == ["self", ACCESS_SCOPE]
    assert c.LLMPlatform.mlflow_ui_url == "/services/mlflow"
    env = c.LLMSpawner.environment
    assert env["FROM_CHART"] == "1"
    spawner = type("S", (), {"api_token": "the-servers-own-token"})()
    assert env["MLFLOW_TRACKING_TOKEN"](spawner) == "the-servers-own-token"


def test_a_charts_mlflow_entry_is_completed_not_duplicated():
    c = hub_config()
    c.JupyterHub.services = [{"name": "mlflow", "api_token": "from-chart", "display": False}]
    c.LLMPlatform.mlflow_ui_url = "https://llm.example.org/services/mlflow"
    configure_mlflow(c, {"LLMSPAWNER_MLFLOW_SERVICE_TOKEN": "ignored"}, extra_user_scopes=True)
    [service] = c.JupyterHub.services
    assert (service["api_token"], service["display"], service["url"]) == (
        "from-chart",
        False,
        "http://mlflow:5000",
    )
    assert c.LLMPlatform.mlflow_ui_url == "https://llm.example.org/services/mlflow"


def test_no_service_without_tracking_off_or_without_the_prefix(caplog):
    for c, env in (
        (hub_config(""), {}),
        (hub_config(), {"LLMSPAWNER_MLFLOW_SERVICE": "0"}),
        (hub_config("http://mlflow:5000"), {}),
    ):
        configure_mlflow(c, env, extra_user_scopes=True)
        assert "services" not in c.JupyterHub
        assert "MLFLOW_TRACKING_TOKEN" not in c.LLMSpawner.get("environment", {})
    assert "does not end in /services/mlflow" in caplog.text
    assert service_prefix("/jhub/") == "/jhub/services/mlflow/"


def test_the_queue_mints_tokens_only_with_mlflow():
    with_mlflow = LLMPlatform(
        config=hub_config(), env={"LLMSPAWNER_PROFILES_DIR": str(REPO_PROFILES)}
    )
    _, roles = queue_service({}, with_mlflow, url="http://q")
    assert roles[0]["scopes"] == ["tokens"]
    _, roles = queue_service({}, LLMPlatform(config=hub_config(""), env={}), url="http://q")
    assert roles[0]["scopes"] == []
    assert JobTokens.from_env({"JUPYTERHUB_API_URL": "http://h"}) is None
    tokens = JobTokens.from_env(
        {"LLMSPAWNER_HUB_API_URL": "http://h/", "JUPYTERHUB_API_TOKEN": "t"}
    )
    assert tokens.hub_api_url == "http://h"


def test_a_jobs_pod_reads_its_token_from_its_secret():
    settings = LLMPlatform(config=hub_config(), env={})
    [profile] = [p for p in settings.load_profiles() if p.slug == "cpu"]
    workload = build_workload(username="alice", profile=profile, settings=settings)
    kwargs = dict(
        name="llm-job-alice-3",
        namespace="llm",
        job_id=3,
        workload=workload,
        config_map="llm-job-alice-3",
        priority="normal",
    )
    job = k8s_objects.build_job(**kwargs, mlflow_token_secret="llm-job-alice-3")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    [token] = [e for e in env if e["name"] == "MLFLOW_TRACKING_TOKEN"]
    assert token == {
        "name": "MLFLOW_TRACKING_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "llm-job-alice-3", "key": "token"}},
    }
    for other in (
        k8s_objects.build_job(**kwargs),
        k8s_objects.build_job(**kwargs, mlflow_token_secret="s", tracking=False),
    ):
        names = [e["name"] for e in other["spec"]["template"]["spec"]["containers"][0]["env"]]
        assert "MLFLOW_TRACKING_TOKEN" not in names
    secret = build_token_secret(
        name="llm-job-alice-3", namespace="llm", job_id=3, username="alice", token="t0k"
    )
    assert secret["stringData"] == {"token": "t0k"}
    assert secret["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "llm-queue",
        "llmspawner.io/job-id": "3",
    }
