"""The ``llm-queue`` service entry and roles, and how they merge into a hub config."""

from __future__ import annotations

import sys

import jupyterhub
from jupyterhub.roles import get_default_roles
from traitlets.config import Config

from llmspawner.queue.hubservice import (
    DEFAULT_SERVER_SCOPES,
    DEFAULT_USER_SCOPES,
    configure_queue,
    merge_roles,
    queue_service,
)
from llmspawner.queue.states import ACCESS_SCOPE, ADMIN_SCOPE
from llmspawner.settings import ENV_VAR, LLMPlatform


def test_the_default_server_scopes_are_jupyterhubs():
    [server] = [r for r in get_default_roles() if r["name"] == "server"]
    assert tuple(server["scopes"]) == DEFAULT_SERVER_SCOPES


def test_service_entry():
    env = {
        "LLMSPAWNER_QUEUE_SERVICE_URL": "http://hub:10101/",
        "LLMSPAWNER_QUEUE_DB_URL": "sqlite:///q.sqlite",
        "LLMSPAWNER_HUB_API_URL": "http://localhost:8081/hub/api",
        "KUBECONFIG": "/k",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "MLFLOW_TRACKING_TOKEN": "t",
        # Single platform variables travel inside LLMSPAWNER_PLATFORM, resolved.
        "LLMSPAWNER_NAMESPACE": "jh",
        "LLMSPAWNER_QUEUE_CLIENT_URL": "http://q/",
        # Not the service's business.
        "LLMSPAWNER_ALLOWED_GROUPS": "staff",
        "HOME": "/root",
        "OAUTH_CLIENT_SECRET": "secret",
    }
    settings = LLMPlatform.from_env(
        {}, overrides={"profiles_dir": "/p", "image": "img:1", "namespace": "llm"}
    )
    service, roles = queue_service(env, settings)
    assert service["name"] == "llm-queue"
    assert service["url"] == "http://hub:10101"
    assert service["command"] == [sys.executable, "-m", "llmspawner.queue"]
    assert service["environment"] == {
        "KUBECONFIG": "/k",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "MLFLOW_TRACKING_TOKEN": "t",
        "LLMSPAWNER_HUB_API_URL": "http://localhost:8081/hub/api",
        "LLMSPAWNER_QUEUE_SERVICE_URL": "http://hub:10101/",
        "LLMSPAWNER_QUEUE_DB_URL": "sqlite:///q.sqlite",
        **settings.to_env(),
    }
    back = LLMPlatform.from_env(service["environment"])
    assert back.to_dict() == settings.to_dict()
    assert (back.profiles_dir, back.image, back.namespace) == ("/p", "img:1", "llm")
    assert service["oauth_no_confirm"] is True
    assert service["oauth_client_allowed_scopes"] == [ADMIN_SCOPE]
    assert [r["name"] for r in roles] == ["llm-queue-service", "server"]
    assert roles[0] == {**roles[0], "scopes": [], "services": ["llm-queue"]}
    assert roles[1]["scopes"] == [*DEFAULT_SERVER_SCOPES, ACCESS_SCOPE]


def test_free_port_by_default_and_admin_groups():
    service, roles = queue_service({"LLMSPAWNER_QUEUE_ADMIN_GROUPS": "ops, admins,ops"})
    assert service["url"].startswith("http://127.0.0.1:")
    assert roles[-1] == {
        "name": "llm-queue-admin",
        "description": roles[-1]["description"],
        "scopes": [ADMIN_SCOPE, ACCESS_SCOPE],
        "groups": ["admins", "ops"],
    }


def test_merge_roles_merges_same_names_and_keeps_others():
    existing = [
        {"name": "server", "scopes": ["inherit"], "description": "mine"},
        {"name": "teacher", "scopes": ["users"], "users": ["t"]},
    ]
    new = [
        {"name": "server", "scopes": ["inherit", ACCESS_SCOPE], "description": "theirs"},
        {"name": "llm-queue-service", "scopes": [], "services": ["llm-queue"]},
    ]
    merged = merge_roles(existing, new)
    assert merged == [
        {"name": "server", "scopes": ["inherit", ACCESS_SCOPE], "description": "mine"},
        {"name": "teacher", "scopes": ["users"], "users": ["t"]},
        {"name": "llm-queue-service", "scopes": [], "services": ["llm-queue"]},
    ]
    assert existing[0]["scopes"] == ["inherit"]  # inputs untouched


def test_configure_queue_appends_to_what_is_configured():
    c = Config()
    c.JupyterHub.services = [{"name": "idle-culler", "command": ["x"]}]
    c.JupyterHub.load_roles = [{"name": "server", "scopes": ["users:activity!user"]}]
    c.JupyterHub.custom_scopes = {"custom:x": {"description": "x"}}
    c.JupyterHub.extra_user_scopes = {"read:users:name"}
    c.JupyterHub.base_url = "/jh/"
    c.LLMSpawner.environment = {"FOO": "1"}
    # JupyterHub 6's extra_user_scopes, whichever JupyterHub runs the tests.
    env = {"LLMSPAWNER_QUEUE_SERVICE_URL": "http://hub:10101"}
    configure_queue(c, env, extra_user_scopes=True)
    assert [s["name"] for s in c.JupyterHub.services] == ["idle-culler", "llm-queue"]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["server"]["scopes"] == [
        "users:activity!user",
        "access:servers!server",
        ACCESS_SCOPE,
    ]
    assert "user" not in roles
    assert set(c.JupyterHub.custom_scopes) == {"custom:x", ADMIN_SCOPE}
    assert c.JupyterHub.extra_user_scopes == {"read:users:name", ACCESS_SCOPE}
    assert c.LLMSpawner.environment == {
        "FOO": "1",
        "LLMSPAWNER_QUEUE_URL": "http://hub:10101/jh/services/llm-queue/",
    }
    # Twice is once.
    configure_queue(c, env, extra_user_scopes=True)
    assert [s["name"] for s in c.JupyterHub.services] == ["idle-culler", "llm-queue"]


def test_configure_queue_can_be_switched_off():
    c = Config()
    configure_queue(c, {"LLMSPAWNER_QUEUE": "0"})
    assert "services" not in c.JupyterHub


def test_configure_queue_reads_the_charts_kubespawner_section():
    """z2jh puts namespace, image and singleuser.extraEnv in ``c.KubeSpawner``."""
    c = Config()
    c.KubeSpawner.namespace = "llm"
    c.KubeSpawner.image = "ghcr.io/llmspawner/singleuser:0.1.0"
    c.KubeSpawner.environment = {"FROM_CHART": "1", "BOTH": "chart"}
    c.LLMSpawner.environment = {"BOTH": "llmspawner"}
    c.LLMSpawner.image = "registry.example/singleuser:2"
    configure_queue(c, {"LLMSPAWNER_QUEUE_SERVICE_URL": "http://hub:10101"})
    platform = LLMPlatform.from_env(c.JupyterHub.services[0]["environment"])
    assert platform.namespace == "llm"
    assert platform.image == "registry.example/singleuser:2"
    assert platform.queue_url == "http://hub:10101/services/llm-queue/"
    assert platform.to_dict() == dict(c.LLMPlatform)
    # The spawner's namespace and image agree with the platform's.
    assert (c.LLMSpawner.namespace, c.LLMSpawner.image) == (platform.namespace, platform.image)
    assert c.LLMSpawner.environment == {
        "FROM_CHART": "1",
        "BOTH": "llmspawner",
        "LLMSPAWNER_QUEUE_URL": "http://hub:10101/services/llm-queue/",
    }


def test_configure_queue_asks_the_installed_jupyterhub():
    """Left to itself, configure_queue picks the way the installed JupyterHub has."""
    c = Config()
    configure_queue(c, {"LLMSPAWNER_QUEUE_SERVICE_URL": "http://hub:10101"})
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    if jupyterhub.version_info >= (6,):
        assert c.JupyterHub.extra_user_scopes == {ACCESS_SCOPE}
        assert "user" not in roles
    else:  # the hub image's JupyterHub 5.4.4 (deploy/images/hub/constraints.txt)
        assert "extra_user_scopes" not in c.JupyterHub
        assert roles["user"] == {"name": "user", "scopes": ["self", ACCESS_SCOPE]}


def test_the_default_user_scopes_are_jupyterhubs():
    (user,) = [r for r in get_default_roles() if r["name"] == "user"]
    assert tuple(user["scopes"]) == DEFAULT_USER_SCOPES


def test_configure_queue_on_jupyterhub_5_defines_the_user_role():
    """JupyterHub 5.x (z2jh 4.x's hub image) has no extra_user_scopes: the ``user`` role is
    defined in load_roles, keeping its default scope and what the config gave it."""
    c = Config()
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["read:groups"]}]
    configure_queue(
        c, {"LLMSPAWNER_QUEUE_SERVICE_URL": "http://hub:10101"}, extra_user_scopes=False
    )
    assert "extra_user_scopes" not in c.JupyterHub
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["user"]["scopes"] == ["read:groups", "self", ACCESS_SCOPE]
    c = Config()
    configure_queue(
        c, {"LLMSPAWNER_QUEUE_SERVICE_URL": "http://hub:10101"}, extra_user_scopes=False
    )
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["user"] == {"name": "user", "scopes": ["self", ACCESS_SCOPE]}


def test_configure_queue_keeps_a_configured_queue_url():
    c = Config()
    c.LLMPlatform.queue_url = "https://llm.example.org/services/llm-queue/"
    configure_queue(c, {"LLMSPAWNER_QUEUE_SERVICE_URL": "http://hub:10101"})
    assert c.LLMSpawner.environment["LLMSPAWNER_QUEUE_URL"] == c.LLMPlatform.queue_url
    env = {"LLMSPAWNER_QUEUE_CLIENT_URL": "http://q:1/"}
    configure_queue(c2 := Config(), env)
    assert c2.LLMPlatform.queue_url == "http://q:1/"
    assert c2.LLMSpawner.environment["LLMSPAWNER_QUEUE_URL"] == "http://q:1/"
    assert ENV_VAR in c2.JupyterHub.services[0]["environment"]


def test_configure_queue_names_a_bad_switch():
    import pytest

    from llmspawner.settings import SettingError

    with pytest.raises(SettingError, match="^LLMSPAWNER_QUEUE must be one of 1, true"):
        configure_queue(Config(), {"LLMSPAWNER_QUEUE": "maybe"})
