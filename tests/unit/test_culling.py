"""Idle culling: the per-profile decision, the culler's service and its role's exact scopes."""

import sys
from datetime import timedelta

import pytest

from llmspawner import culling, profiles
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.settings import ENV_VAR, LLMPlatform

from .test_hubconfig import load_config_file

SHIPPED = profiles.load_profiles(REPO_PROFILES)


@pytest.mark.parametrize(
    ("options", "idle_seconds", "cull"),
    [
        ({"profile": "medium"}, 1799, False),
        ({"profile": "medium"}, 1800, True),  # GPU profile: 30 minutes
        ({"profile": "large"}, 1800, True),
        ({"profile": "cpu"}, 7200, False),  # CPU profile: 8 hours, longer than the hub's 1 h
        ({"profile": "cpu"}, 28800, True),
        ({}, 28799, False),  # no options: the default profile (cpu)
        ({"profile": "removed-since"}, 3600, True),  # unknown profile: the culler's --timeout
        ({"profile": "removed-since"}, 3599, False),
    ],
)
def test_should_cull_by_profile_timeout(options, idle_seconds, cull):
    server = {"user_options": options}
    inactive = timedelta(seconds=idle_seconds)
    assert (
        culling.should_cull(SHIPPED, inactive=inactive, inactive_limit=3600, server=server) is cull
    )


def test_no_activity_known_is_not_culled():
    assert culling.should_cull(SHIPPED, inactive=None, inactive_limit=1, server={}) is False


def culled(profile: str, idle_seconds: float, limit: float) -> bool:
    """The hook's verdict on a server of ``profile`` idle for ``idle_seconds``."""
    return culling.profile_arbiter(
        inactive=timedelta(seconds=idle_seconds),
        inactive_limit=limit,
        server={"user_options": {"profile": profile}},
    )


def test_profile_arbiter_reads_profiles_dir(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("LLMSPAWNER_PROFILES_DIR", str(REPO_PROFILES))
    assert culled("small", 31 * 60, limit=36000)
    assert not culled("small", 29 * 60, limit=60)


def test_profile_arbiter_reads_the_hubs_settings(tmp_path, monkeypatch):
    """The culler's process gets LLMSPAWNER_PLATFORM from the hub; it wins over the single
    variables (here: the profiles folder, and replica counts that allow 1/8)."""
    (tmp_path / "gpu.yaml").write_text(
        "slug: gpu\ndisplay_name: GPU\ndefault: true\nidle_timeout: 600\ngpu: {fraction: 1/8}\n"
    )
    platform = LLMPlatform.from_env(
        {}, overrides={"profiles_dir": str(tmp_path), "gpu_replica_counts": [8]}
    )
    for name, value in platform.to_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LLMSPAWNER_PROFILES_DIR", str(REPO_PROFILES))
    assert culled("gpu", 600, limit=36000)
    assert not culled("gpu", 599, limit=36000)


def test_profile_arbiter_without_valid_profiles_uses_the_timeout(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("LLMSPAWNER_PROFILES_DIR", str(tmp_path / "missing"))
    assert not culled("small", 31 * 60, limit=3600)
    assert culled("small", 60 * 60, limit=3600)


def test_culler_service():
    service, role = culling.culler_service(timeout=600, cull_every=60, environment={"A": "b"})
    assert service == {
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            "--timeout=600",
            "--cull-every=60",
            "--max-age=0",
            f"--config={culling.CULLER_CONFIG_FILE}",
        ],
        "environment": {"A": "b"},
    }
    assert role["scopes"] == ["list:users", "read:users:activity", "read:servers", "delete:servers"]
    _, role = culling.culler_service(timeout=600, cull_every=60, cull_users=True)
    assert role["scopes"][-1] == "admin:users"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"timeout": 0, "cull_every": 60},
            "idle culler timeout must be a whole number of seconds >= 1, not 0",
        ),
        (
            {"timeout": 60, "cull_every": -1},
            "idle culler cull_every must be a whole number of seconds >= 1, not -1",
        ),
        (
            {"timeout": 60, "cull_every": 5, "max_age": -5},
            "idle culler max_age must be a whole number of seconds >= 0, not -5",
        ),
    ],
)
def test_culler_service_refuses_bad_numbers(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        culling.culler_service(**kwargs)


def test_config_registers_culler_with_exact_scopes(monkeypatch):
    """Collected from jupyterhub_config.py, as the hub reads it."""
    c = load_config_file(
        {
            "LLMSPAWNER_CULL_TIMEOUT": "900",
            "LLMSPAWNER_CULL_EVERY": "30",
            "LLMSPAWNER_CULL_MAX_AGE": "86400",
        },
        monkeypatch,
    )
    services = {s["name"]: s for s in c.JupyterHub.services}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["idle-culler"] == {
        "name": "idle-culler",
        "description": "Cull idle servers (llmspawner: per-profile idle timeouts)",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }
    command = services["idle-culler"]["command"]
    assert command[1:6] == [
        "-m",
        "jupyterhub_idle_culler",
        "--timeout=900",
        "--cull-every=30",
        "--max-age=86400",
    ]
    # The platform settings, as the spawner has them, in one variable.
    assert list(services["idle-culler"]["environment"]) == [ENV_VAR]
    settings = LLMPlatform.from_env(services["idle-culler"]["environment"])
    assert settings.profiles_dir == str(REPO_PROFILES)
    assert settings.to_dict() == dict(c.LLMPlatform)
    # The queue gets the very same serialisation.
    assert (
        services["llm-queue"]["environment"][ENV_VAR]
        == (services["idle-culler"]["environment"][ENV_VAR])
    )
    assert c.JupyterHub.last_activity_interval == 0


def test_config_culling_users_adds_admin_users(monkeypatch):
    c = load_config_file({"LLMSPAWNER_CULL_USERS": "1"}, monkeypatch)
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == "idle-culler")
    assert role["scopes"] == [
        "list:users",
        "read:users:activity",
        "read:servers",
        "delete:servers",
        "admin:users",
    ]


def test_config_culler_off(monkeypatch):
    c = load_config_file({"LLMSPAWNER_CULL": "0"}, monkeypatch)
    # The route repair stays: it repairs the proxy's routes within 30 s, the hub's own
    # activity poll (on again without the culler) only every 5 minutes.
    assert [s["name"] for s in c.JupyterHub.services] == [
        "llm-queue",
        "route-repair",
        "pod-reconciler",
    ]
    assert "idle-culler" not in {r["name"] for r in c.JupyterHub.load_roles}
    assert "last_activity_interval" not in c.JupyterHub


def test_config_bad_timeout(monkeypatch):
    from llmspawner.hubconfig import ConfigError

    with pytest.raises(
        ConfigError,
        match="LLMSPAWNER_CULL_TIMEOUT must be a whole number of seconds >= 1, not '1h'",
    ):
        load_config_file({"LLMSPAWNER_CULL_TIMEOUT": "1h"}, monkeypatch)


def test_config_bad_culler_flag_is_named(monkeypatch):
    from llmspawner.hubconfig import ConfigError

    with pytest.raises(ConfigError, match="LLMSPAWNER_CULL_USERS must be one of 1, true"):
        load_config_file({"LLMSPAWNER_CULL_USERS": "sometimes"}, monkeypatch)


def test_roles_set_before_are_kept():
    from traitlets.config import Config

    from llmspawner import hubconfig

    c = Config()
    c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    c.JupyterHub.load_roles = [{"name": "server", "scopes": ["inherit"]}]
    c.JupyterHub.services = [{"name": "announcement", "url": "http://127.0.0.1:8888"}]
    hubconfig.configure_culler(c, {})
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["server", "idle-culler"]
    assert [s["name"] for s in c.JupyterHub.services] == ["announcement", "idle-culler"]
    # A culler configured by the chart (z2jh cull.enabled) is not added twice.
    c2 = Config()
    c2.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    c2.JupyterHub.services = [{"name": "jupyterhub-idle-culler", "command": ["x"]}]
    hubconfig.configure_culler(c2, {})
    assert [s["name"] for s in c2.JupyterHub.services] == ["jupyterhub-idle-culler"]
