"""jupyterhub_config.py and llmspawner.hubconfig, read as JupyterHub reads them (no hub)."""

from pathlib import Path

import pytest
from traitlets.config import Config, PyFileConfigLoader

from llmspawner import hubconfig
from llmspawner.settings import LLMPlatform

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
    assert c.LLMPlatform.profiles_dir == str(ROOT / "profiles")
    assert "authenticator_class" not in c.JupyterHub
    # The dev cluster's settings live in devtools now (llmspawner_dev.hubconfig).
    assert "bind_pod_ip" not in c.LLMSpawner
    assert not hasattr(hubconfig, "configure_dev")
    # Every setting is resolved into c.LLMPlatform; the spawner's namespace and image agree.
    assert set(c.LLMPlatform) == set(LLMPlatform.class_trait_names(config=True))
    assert c.LLMSpawner.namespace == c.LLMPlatform.namespace == "default"
    assert c.LLMSpawner.image == c.LLMPlatform.image
    assert c.LLMPlatform.queue_url.endswith("/services/llm-queue/")


def test_standalone_from_environment(monkeypatch):
    c = load_config_file(
        {
            "LLMSPAWNER_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            "LLMSPAWNER_NAMESPACE": "llm",
            "LLMSPAWNER_SINGLEUSER_IMAGE": "registry.example/singleuser:3",
            "LLMSPAWNER_STORAGE_CLAIM": "shared-models",
            "OAUTH2_AUTHORIZE_URL": "https://idp.example/authorize",
            "LLMSPAWNER_ALLOWED_GROUPS": "ml, staff",
            "LLMSPAWNER_ADMIN_GROUPS": "ml-admins",
        },
        monkeypatch,
    )
    p = c.LLMPlatform
    assert (p.mlflow_tracking_uri, p.namespace, p.storage_claim_name, p.image) == (
        "http://127.0.0.1:5000",
        "llm",
        "shared-models",
        "registry.example/singleuser:3",
    )
    # The environment still sets the spawner's own namespace and image.
    assert (c.LLMSpawner.namespace, c.LLMSpawner.image) == (
        "llm",
        "registry.example/singleuser:3",
    )
    a = c.GenericOAuthenticator
    assert c.JupyterHub.authenticator_class == "llmspawner.auth.LLMOAuthenticator"
    assert a.allowed_groups == {"ml", "staff"}
    assert a.admin_groups == {"ml-admins"}
    assert a.username_claim == "preferred_username"
    assert a.manage_groups is True
    assert a.auth_state_groups_key == "oauth_user.groups"
    assert "allow_all" not in a
    # No JUPYTERHUB_CRYPT_KEY: no auth state (groups read at login only; logged).
    assert "enable_auth_state" not in a


def test_auth_refresh_with_the_crypt_key():
    """With the hub's encryption key, auth state is on and the login is re-checked every
    LLMSPAWNER_AUTH_REFRESH_AGE seconds (default 300)."""
    env = {
        "OAUTH2_AUTHORIZE_URL": "https://idp.example/authorize",
        "LLMSPAWNER_ALLOWED_GROUPS": "ml",
        "JUPYTERHUB_CRYPT_KEY": "0" * 64,
    }
    c = Config()
    hubconfig.configure_auth(c, env)
    a = c.GenericOAuthenticator
    assert (a.enable_auth_state, a.auth_refresh_age) == (True, 300)
    c = Config()
    hubconfig.configure_auth(c, {**env, "LLMSPAWNER_AUTH_REFRESH_AGE": "30"})
    assert c.GenericOAuthenticator.auth_refresh_age == 30
    with pytest.raises(hubconfig.ConfigError, match="LLMSPAWNER_AUTH_REFRESH_AGE"):
        hubconfig.configure_auth(Config(), {**env, "LLMSPAWNER_AUTH_REFRESH_AGE": "soon"})


def test_chart_spawner_values_reach_the_settings():
    """z2jh sets c.KubeSpawner.namespace/.image/.uid/.fs_gid; they become the platform's."""
    c = Config()
    c.KubeSpawner.namespace = "llm"
    c.KubeSpawner.image = "ghcr.io/x/singleuser:1"
    c.KubeSpawner.uid = 1000
    c.KubeSpawner.fs_gid = 100
    c.LLMSpawner.gid = 100
    settings = hubconfig.resolve_settings(c, {})
    assert (settings.namespace, settings.image, settings.uid, settings.gid, settings.fs_gid) == (
        "llm",
        "ghcr.io/x/singleuser:1",
        1000,
        100,
        100,
    )
    assert (c.LLMSpawner.uid, c.LLMSpawner.fs_gid) == (1000, 100)
    # The environment wins over the chart's spawner values, c.LLMPlatform over both.
    c = Config()
    c.KubeSpawner.namespace = "llm"
    c.KubeSpawner.image = "ghcr.io/x/singleuser:1"
    c.LLMPlatform.image = "ghcr.io/x/singleuser:2"
    env = {"LLMSPAWNER_NAMESPACE": "other", "LLMSPAWNER_SINGLEUSER_IMAGE": "ignored:0"}
    settings = hubconfig.resolve_settings(c, env)
    assert (settings.namespace, settings.image) == ("other", "ghcr.io/x/singleuser:2")
    assert (c.KubeSpawner.namespace, c.LLMSpawner.namespace) == ("other", "other")
    assert (c.KubeSpawner.image, c.LLMSpawner.image) == ("ghcr.io/x/singleuser:2",) * 2
    # Resolving again changes nothing.
    before = dict(c.LLMPlatform)
    hubconfig.resolve_settings(c, {})
    assert dict(c.LLMPlatform) == before


def test_the_spawner_sees_exactly_the_resolved_settings(monkeypatch):
    """LLMPlatform(parent=spawner) in the hub: the hub's environment cannot change them."""
    c = Config()
    c.LLMPlatform.profiles_dir = str(ROOT / "profiles")
    hubconfig.resolve_settings(c, {"LLMSPAWNER_MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    monkeypatch.setenv("LLMSPAWNER_MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    assert LLMPlatform(config=c).mlflow_tracking_uri == "http://mlflow:5000"


@pytest.mark.parametrize(
    ("setup", "env", "message"),
    [
        (
            lambda c: setattr(c.LLMPlatform, "mig_strategy", "full"),
            {},
            (
                "llmspawner: LLMPlatform.mig_strategy (LLMSPAWNER_MIG_STRATEGY) expected any "
                "of ['mixed', 'single'], not the str 'full'."
            ),
        ),
        (
            lambda c: None,
            {"LLMSPAWNER_GPU_REPLICA_COUNTS": "2,four"},
            (
                "llmspawner: LLMPlatform.gpu_replica_counts (LLMSPAWNER_GPU_REPLICA_COUNTS) "
                "must be a whole number >= 0, not 'four'"
            ),
        ),
        (
            lambda c: setattr(c.LLMPlatform, "profile_dir", "/x"),
            {},
            (
                "llmspawner: c.LLMPlatform names unknown setting(s) profile_dir (did you mean "
                "profiles_dir?); known: "
            ),
        ),
        (
            lambda c: setattr(c.LLMSpawner, "mlflow_tracking_uri", "http://m"),
            {},
            (
                "llmspawner: LLMSpawner.mlflow_tracking_uri is now "
                "LLMPlatform.mlflow_tracking_uri (z2jh: hub.config.LLMPlatform); LLMSpawner "
                "no longer reads it"
            ),
        ),
        (
            lambda c: setattr(c.KubeSpawner, "uid", lambda spawner: 1000),
            {},
            "llmspawner: KubeSpawner.uid is a callable; set LLMPlatform.uid to a number",
        ),
    ],
)
def test_a_bad_setting_stops_the_hub_naming_it(monkeypatch, setup, env, message):
    c = Config()
    setup(c)
    with pytest.raises(hubconfig.ConfigError) as e:
        hubconfig.configure(c, env)
    assert str(e.value).startswith(message)


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
    c.LLMPlatform.profiles_dir = str(ROOT / "profiles")
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
    c.LLMPlatform.profiles_dir = str(ROOT / "profiles")
    hubconfig.configure_spawner(c, {})
    assert "profile_list" not in c.KubeSpawner


def test_a_kubespawner_profile_list_is_refused():
    c = Config()
    c.KubeSpawner.profile_list = [{"display_name": "GPU", "slug": "gpu"}]
    with pytest.raises(hubconfig.ConfigError) as e:
        hubconfig.configure_spawner(c, {})
    assert str(e.value) == (
        "llmspawner: GPU profiles are files in LLMPlatform.profiles_dir; remove "
        "singleuser.profileList (KubeSpawner.profile_list)"
    )


def test_culler_reaches_the_hub_api_given(monkeypatch):
    c = Config()
    c.LLMPlatform.profiles_dir = str(ROOT / "profiles")
    hubconfig.configure_culler(c, {"LLMSPAWNER_HUB_API_URL": "http://localhost:8081/hub/api"})
    (culler,) = c.JupyterHub.services
    assert culler["command"][-1] == "--url=http://localhost:8081/hub/api"
    hubconfig.configure_culler(c2 := Config(), {})
    assert not any(a.startswith("--url") for a in c2.JupyterHub.services[0]["command"])
