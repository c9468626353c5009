"""jupyterhub_config.py and llmspawner.hubconfig, read as JupyterHub reads them (no hub)."""

from pathlib import Path

import pytest
from traitlets.config import Config, PyFileConfigLoader

from llmspawner import hubconfig

ROOT = Path(__file__).resolve().parents[2]


def load_config_file(env: dict, monkeypatch) -> Config:
    """Load jupyterhub_config.py with ``env`` as the process environment, as the hub does."""
    for key in list(__import__("os").environ):
        if key.startswith(("LLMSPAWNER_", "OAUTH")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loader = PyFileConfigLoader("jupyterhub_config.py", path=str(ROOT))
    return loader.load_config()


def test_standalone_defaults(monkeypatch):
    c = load_config_file({}, monkeypatch)
    assert c.JupyterHub.spawner_class == "llm"
    assert c.LLMSpawner.profiles_dir == str(ROOT / "profiles")
    assert "authenticator_class" not in c.JupyterHub
    assert "bind_pod_ip" not in c.LLMSpawner


def test_standalone_from_environment(monkeypatch):
    c = load_config_file(
        {
            "LLMSPAWNER_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            "LLMSPAWNER_NAMESPACE": "llm",
            "LLMSPAWNER_STORAGE_CLAIM": "shared-models",
            "OAUTH2_AUTHORIZE_URL": "https://idp.example/authorize",
            "LLMSPAWNER_ALLOWED_GROUPS": "ml, staff",
            "LLMSPAWNER_ADMIN_GROUPS": "ml-admins",
            "LLMSPAWNER_DEV": "1",
        },
        monkeypatch,
    )
    s = c.LLMSpawner
    assert (s.mlflow_tracking_uri, s.namespace, s.storage_claim_name) == (
        "http://127.0.0.1:5000",
        "llm",
        "shared-models",
    )
    assert s.bind_pod_ip is True
    assert s.cmd == ["jupyterhub-singleuser"]
    a = c.GenericOAuthenticator
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert a.allowed_groups == {"ml", "staff"}
    assert a.admin_groups == {"ml-admins"}
    assert a.username_claim == "preferred_username"
    assert a.manage_groups is True
    assert a.auth_state_groups_key == "oauth_user.groups"
    assert "allow_all" not in a


def test_login_rule_must_be_chosen(monkeypatch):
    with pytest.raises(
        hubconfig.ConfigError, match="set LLMSPAWNER_ALLOWED_GROUPS .* or LLMSPAWNER_ALLOW_ALL=1"
    ):
        load_config_file({"OAUTH2_AUTHORIZE_URL": "https://idp.example/authorize"}, monkeypatch)


def test_broken_profile_stops_the_hub(tmp_path, monkeypatch):
    (tmp_path / "cpu.yaml").write_text(
        "slug: cpu\ndisplay_name: CPU\ndefault: true\ngpu: {count: 0.5}\n"
    )
    with pytest.raises(hubconfig.ConfigError) as e:
        load_config_file({"LLMSPAWNER_PROFILES_DIR": str(tmp_path)}, monkeypatch)
    assert str(e.value) == (
        "llmspawner: invalid GPU profile: cpu.yaml: gpu.count: must be a whole number of GPUs "
        ">= 1, not 0.5; for a share of one GPU write 'fraction: 1/2'"
    )


def test_values_set_before_win():
    """Under z2jh the chart's config ran first: what it set is kept."""
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.LLMSpawner.profiles_dir = str(ROOT / "profiles")
    c.GenericOAuthenticator.username_claim = "email"
    c.GenericOAuthenticator.allowed_groups = {"from-chart"}
    hubconfig.configure(
        c, {"OAUTH2_AUTHORIZE_URL": "https://idp.example/a", "LLMSPAWNER_ALLOW_ALL": "1"}
    )
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert c.GenericOAuthenticator.username_claim == "email"
    assert c.GenericOAuthenticator.allowed_groups == {"from-chart"}
    assert c.GenericOAuthenticator.allow_all is True


def test_charts_empty_profile_list_is_dropped():
    """z2jh sets ``KubeSpawner.profile_list = []`` (singleuser.profileList's default); kept,
    it would replace LLMSpawner's list and the spawn form would offer no profile."""
    c = Config()
    c.KubeSpawner.profile_list = []
    c.LLMSpawner.profiles_dir = str(ROOT / "profiles")
    hubconfig.configure_spawner(c, {})
    assert "profile_list" not in c.KubeSpawner


def test_a_kubespawner_profile_list_is_refused():
    c = Config()
    c.KubeSpawner.profile_list = [{"display_name": "GPU", "slug": "gpu"}]
    with pytest.raises(hubconfig.ConfigError) as e:
        hubconfig.configure_spawner(c, {})
    assert str(e.value) == (
        "llmspawner: GPU profiles are files in LLMSpawner.profiles_dir; remove "
        "singleuser.profileList (KubeSpawner.profile_list)"
    )


def test_culler_reaches_the_hub_api_given(monkeypatch):
    c = Config()
    c.LLMSpawner.profiles_dir = str(ROOT / "profiles")
    hubconfig.configure_culler(c, {"LLMSPAWNER_HUB_API_URL": "http://localhost:8081/hub/api"})
    (culler,) = c.JupyterHub.services
    assert culler["command"][-1] == "--url=http://localhost:8081/hub/api"
    hubconfig.configure_culler(c2 := Config(), {})
    assert not any(a.startswith("--url") for a in c2.JupyterHub.services[0]["command"])
