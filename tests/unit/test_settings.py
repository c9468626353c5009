"""llmspawner.settings: every platform setting's sources, its one serialisation, and errors
that name the setting."""

from __future__ import annotations

import json

import pytest
from traitlets.config import Config

from llmspawner import profiles, tracking
from llmspawner.settings import (
    ENV_VAR,
    MOVED_SETTINGS,
    REPO_PROFILES,
    SPAWNER_TRAITS,
    LLMPlatform,
    SettingError,
    env_name,
    parse_bool,
    parse_csv,
    parse_int,
    resolve_hub_settings,
)

#: Every setting: (its environment variable, the text set there, the value it gives).
FROM_ENV = {
    "profiles_dir": ("LLMSPAWNER_PROFILES_DIR", "/etc/p", "/etc/p"),
    "namespace": ("LLMSPAWNER_NAMESPACE", "llm", "llm"),
    "image": ("LLMSPAWNER_SINGLEUSER_IMAGE", "reg/img:1", "reg/img:1"),
    "uid": ("LLMSPAWNER_UID", "1000", 1000),
    "gid": ("LLMSPAWNER_GID", "100", 100),
    "fs_gid": ("LLMSPAWNER_FS_GID", "0", 0),
    "storage_claim_name": ("LLMSPAWNER_STORAGE_CLAIM", "shared", "shared"),
    "mlflow_tracking_uri": ("LLMSPAWNER_MLFLOW_TRACKING_URI", "http://m:5000", "http://m:5000"),
    "mlflow_ui_url": ("LLMSPAWNER_MLFLOW_UI_URL", "https://h/mlflow", "https://h/mlflow"),
    "mlflow_experiment_template": (
        "LLMSPAWNER_MLFLOW_EXPERIMENT_TEMPLATE",
        "{slug}-runs",
        "{slug}-runs",
    ),
    "mlflow_timeout": ("LLMSPAWNER_MLFLOW_TIMEOUT", "2.5", 2.5),
    "gpu_shared_resource": (
        "LLMSPAWNER_GPU_SHARED_RESOURCE",
        "nvidia.com/gpu.shared",
        "nvidia.com/gpu.shared",
    ),
    "gpu_replica_counts": ("LLMSPAWNER_GPU_REPLICA_COUNTS", " 2, 8,2 ", [2, 8]),
    "mig_strategy": ("LLMSPAWNER_MIG_STRATEGY", "single", "single"),
    "queue_url": ("LLMSPAWNER_QUEUE_CLIENT_URL", "http://hub:10101/q/", "http://hub:10101/q/"),
    "image_pull_secrets": (
        "LLMSPAWNER_IMAGE_PULL_SECRETS",
        " regcred, other ",
        ["regcred", "other"],
    ),
    "hf_offline": ("LLMSPAWNER_HF_OFFLINE", "1", True),
    "llamaboard_eager_start": ("LLMSPAWNER_LLAMABOARD_EAGER_START", "0", False),
}


def test_the_table_covers_every_setting():
    assert set(FROM_ENV) == set(LLMPlatform.class_trait_names(config=True))
    assert set(SPAWNER_TRAITS) | set(MOVED_SETTINGS) == set(FROM_ENV)
    assert not set(SPAWNER_TRAITS) & set(MOVED_SETTINGS)


@pytest.mark.parametrize("name", sorted(FROM_ENV))
def test_each_setting_from_its_environment_variable(name):
    variable, text, value = FROM_ENV[name]
    assert env_name(name) == variable
    assert getattr(LLMPlatform(env={variable: text}), name) == value
    # Unset or empty: the default.
    default = LLMPlatform.class_traits()[name].default()
    assert getattr(LLMPlatform(env={variable: ""}), name) == default


def test_defaults_are_the_shared_literals():
    p = LLMPlatform(env={})
    cluster = profiles.ClusterGPUConfig()
    assert p.gpu_cluster == cluster
    assert p.gpu_shared_resource == profiles.NVIDIA_GPU
    assert p.mig_strategy == profiles.MIG_STRATEGIES[0]
    assert p.mlflow_experiment_template == tracking.DEFAULT_EXPERIMENT_TEMPLATE
    assert (p.uid, p.gid, p.fs_gid, p.namespace, p.image) == (None, None, None, "", "")


@pytest.mark.parametrize("name", sorted(FROM_ENV))
def test_config_wins_over_the_environment(name):
    variable, text, _ = FROM_ENV[name]
    configured = {
        "profiles_dir": "/cfg",
        "namespace": "cfg",
        "image": "cfg:1",
        "uid": 7,
        "gid": 8,
        "fs_gid": 9,
        "image_pull_secrets": ["cfg-secret"],
        "storage_claim_name": "cfg",
        "mlflow_tracking_uri": "http://cfg",
        "mlflow_ui_url": "http://cfg-ui",
        "mlflow_experiment_template": "{username}-cfg",
        "mlflow_timeout": 9.0,
        "gpu_shared_resource": "example.com/gpu",
        "gpu_replica_counts": [3],
        "mig_strategy": "single" if text != "single" else "mixed",
        "queue_url": "http://cfg/q/",
        "hf_offline": False,
        "llamaboard_eager_start": True,
    }[name]
    c = Config()
    c.LLMPlatform[name] = configured
    assert getattr(LLMPlatform(config=c, env={variable: text}), name) == configured


def test_defaults_argument_is_below_config_and_environment():
    defaults = {"namespace": "from-spawner", "uid": 1000, "gid": None}
    assert LLMPlatform(env={}, defaults=defaults).namespace == "from-spawner"
    assert LLMPlatform(env={}, defaults=defaults).uid == 1000
    assert LLMPlatform(env={}, defaults=defaults).gid is None
    env = {"LLMSPAWNER_NAMESPACE": "from-env"}
    assert LLMPlatform(env=env, defaults=defaults).namespace == "from-env"
    c = Config()
    c.LLMPlatform.namespace = "from-config"
    assert LLMPlatform(config=c, env=env, defaults=defaults).namespace == "from-config"


def test_a_child_of_a_configurable_reads_its_config():
    """As the spawner builds it: LLMPlatform(parent=spawner)."""
    from traitlets.config import Configurable

    c = Config()
    c.LLMPlatform.storage_claim_name = "from-parent"
    parent = Configurable(config=c)
    assert LLMPlatform(parent=parent, env={}).storage_claim_name == "from-parent"


def test_to_env_from_env_round_trip():
    c = Config()
    c.LLMPlatform.update(
        profiles_dir="/p",
        namespace="llm",
        image="img:2",
        uid=1000,
        fs_gid=100,
        mlflow_tracking_uri="http://mlflow:5000",
        gpu_replica_counts=[2, 4, 8],
        mig_strategy="single",
        queue_url="http://hub:10101/services/llm-queue/",
    )
    original = LLMPlatform(config=c, env={})
    env = original.to_env()
    assert list(env) == [ENV_VAR]
    assert json.loads(env[ENV_VAR]) == original.to_dict()
    back = LLMPlatform.from_env(env)
    assert back.to_dict() == original.to_dict()
    assert back.gpu_cluster == original.gpu_cluster
    # The serialisation wins over single variables of the receiving process.
    noisy = {**env, "LLMSPAWNER_NAMESPACE": "elsewhere", "LLMSPAWNER_UID": "0"}
    assert LLMPlatform.from_env(noisy).to_dict() == original.to_dict()


def test_from_env_without_the_serialisation_reads_single_variables():
    p = LLMPlatform.from_env({"LLMSPAWNER_MIG_STRATEGY": "single"})
    assert p.mig_strategy == "single"
    assert LLMPlatform.from_env({}).to_dict() == LLMPlatform(env={}).to_dict()


def test_from_env_overrides_and_defaults():
    env = {ENV_VAR: json.dumps({"namespace": "json"})}
    p = LLMPlatform.from_env(
        env,
        overrides={"image": "cli:1", "namespace": None},
        defaults={"profiles_dir": str(REPO_PROFILES), "namespace": "ignored"},
    )
    assert (p.image, p.namespace, p.profiles_dir) == ("cli:1", "json", str(REPO_PROFILES))


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        (
            {"mig_strategy": "full"},
            {},
            (
                "LLMPlatform.mig_strategy (LLMSPAWNER_MIG_STRATEGY) expected any of "
                "['mixed', 'single'], not the str 'full'."
            ),
        ),
        (
            {},
            {"LLMSPAWNER_MIG_STRATEGY": "none"},
            (
                "LLMPlatform.mig_strategy (LLMSPAWNER_MIG_STRATEGY) expected any of "
                "['mixed', 'single'], not the str 'none'."
            ),
        ),
        (
            {"gpu_replica_counts": [1, 4]},
            {},
            (
                "LLMPlatform.gpu_replica_counts must list whole numbers >= 2 (the "
                "nvidia.com/gpu.replicas values of time-sliced nodes), not [1, 4]"
            ),
        ),
        (
            {"gpu_replica_counts": []},
            {},
            (
                "LLMPlatform.gpu_replica_counts must list whole numbers >= 2 (the "
                "nvidia.com/gpu.replicas values of time-sliced nodes), not []"
            ),
        ),
        (
            {},
            {"LLMSPAWNER_GPU_REPLICA_COUNTS": "2,half"},
            (
                "LLMPlatform.gpu_replica_counts (LLMSPAWNER_GPU_REPLICA_COUNTS) must be a whole "
                "number >= 0, not 'half'"
            ),
        ),
        (
            {},
            {"LLMSPAWNER_UID": "jovyan"},
            "LLMPlatform.uid (LLMSPAWNER_UID) must be a whole number >= 0, not 'jovyan'",
        ),
        (
            {"uid": -1},
            {},
            "LLMPlatform.uid (LLMSPAWNER_UID) must be a whole number >= 0 or None, not -1",
        ),
        (
            {"fs_gid": "100"},
            {},
            "LLMPlatform.fs_gid (LLMSPAWNER_FS_GID) expected an int, not the str '100'.",
        ),
        (
            {"mlflow_experiment_template": "{user}-x"},
            {},
            (
                "LLMPlatform.mlflow_experiment_template: experiment name template '{user}-x' uses "
                "unknown field(s) user; allowed: {username}, {slug}"
            ),
        ),
        (
            {},
            {"LLMSPAWNER_MLFLOW_TIMEOUT": "soon"},
            "LLMPlatform.mlflow_timeout (LLMSPAWNER_MLFLOW_TIMEOUT) must be a number, not 'soon'",
        ),
        (
            {"mlflow_timeout": 0},
            {},
            "LLMPlatform.mlflow_timeout must be > 0 seconds, not 0.0",
        ),
        (
            {},
            {"LLMSPAWNER_HF_OFFLINE": "maybe"},
            (
                "LLMPlatform.hf_offline (LLMSPAWNER_HF_OFFLINE) must be one of 1, true, yes, "
                "on, 0, false, no, off; not 'maybe'"
            ),
        ),
    ],
)
def test_a_bad_value_names_the_setting(config, env, message):
    c = Config()
    c.LLMPlatform.update(config)
    with pytest.raises(SettingError) as e:
        LLMPlatform(config=c, env=env)
    assert str(e.value) == message


def test_an_unknown_configured_setting_is_named():
    c = Config()
    c.LLMPlatform.profile_dir = "/x"
    with pytest.raises(SettingError, match=r"^c.LLMPlatform names unknown setting\(s\) "):
        LLMPlatform(config=c, env={})
    with pytest.raises(SettingError, match=r"profile_dir \(did you mean profiles_dir\?\)"):
        LLMPlatform(config=c, env={})


def test_reading_an_unset_config_value_is_not_setting_it():
    """``c.LLMPlatform.x`` on a traitlets Config leaves an empty LazyConfigValue behind."""
    c = Config()
    _ = c.LLMPlatform.namespace
    _ = c.LLMPlatform.nonsense
    # Not refused (traitlets only warns of it), and the environment still counts.
    with pytest.warns(UserWarning, match="`nonsense` not recognized"):
        p = LLMPlatform(config=c, env={"LLMSPAWNER_NAMESPACE": "env"})
    assert p.namespace == "env"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "LLMSPAWNER_PLATFORM is not valid JSON: "),
        ("[1, 2]", "LLMSPAWNER_PLATFORM must be a JSON object of settings"),
        (
            '{"claim_name": "x"}',
            "LLMSPAWNER_PLATFORM names unknown setting(s) claim_name",
        ),
        (
            '{"mig_strategy": "all"}',
            "LLMPlatform.mig_strategy (LLMSPAWNER_MIG_STRATEGY) expected any of",
        ),
    ],
)
def test_a_broken_serialisation_is_named(raw, message):
    with pytest.raises(SettingError) as e:
        LLMPlatform.from_env({ENV_VAR: raw})
    assert str(e.value).startswith(message)


def test_parse_bool():
    for text in ("1", "true", "Yes", " ON "):
        assert parse_bool(text, name="X") is True
    for text in ("0", "false", "No", "off"):
        assert parse_bool(text, name="X") is False
    assert parse_bool(None, name="X", default=True) is True
    assert parse_bool("", name="X", default=True) is True
    with pytest.raises(SettingError, match="^X must be one of 1, true, yes, on, 0, false"):
        parse_bool("maybe", name="X")


def test_parse_csv():
    assert parse_csv(" b, a,,b ,c") == ["b", "a", "c"]
    assert parse_csv(None) == parse_csv("") == []


def test_parse_int():
    assert parse_int(" 42 ", name="N", default=1) == 42
    assert parse_int("", name="N", default=7) == 7
    with pytest.raises(SettingError, match="^N must be a whole number of seconds >= 1, not '0'$"):
        parse_int("0", name="N", default=1, minimum=1, unit="seconds")
    with pytest.raises(SettingError, match="^N must be a whole number >= 0, not '1.5'$"):
        parse_int("1.5", name="N", default=1)


def test_experiment_name_and_link_url():
    p = LLMPlatform(env={"LLMSPAWNER_MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert p.experiment_name("alice") == "alice-experiments"
    assert p.mlflow_link_url == "http://mlflow:5000"
    p = LLMPlatform(env={"LLMSPAWNER_MLFLOW_UI_URL": "https://h/mlflow"})
    assert p.mlflow_link_url == "https://h/mlflow"


def test_load_profiles_uses_the_gpu_settings(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "slug: a\ndisplay_name: A\ndefault: true\ngpu: {fraction: 1/8}\n"
    )
    with pytest.raises(profiles.ProfileError, match="allowed: 1/2, 1/4"):
        LLMPlatform(env={"LLMSPAWNER_PROFILES_DIR": str(tmp_path)}).load_profiles()
    env = {"LLMSPAWNER_PROFILES_DIR": str(tmp_path), "LLMSPAWNER_GPU_REPLICA_COUNTS": "8"}
    assert [p.slug for p in LLMPlatform(env=env).profiles()] == ["a"]


# -- the hub's resolution ---------------------------------------------------------------------


def test_hub_resolution_order():
    """c.LLMPlatform > LLMSPAWNER_* > c.LLMSpawner > c.KubeSpawner > KubeSpawner's default."""
    c = Config()
    c.KubeSpawner.namespace = "chart"
    c.KubeSpawner.image = "chart:1"
    c.KubeSpawner.uid = 1000
    c.LLMSpawner.image = "spawner:1"
    c.LLMPlatform.uid = 2000
    s = resolve_hub_settings(c, {"LLMSPAWNER_NAMESPACE": "env", "LLMSPAWNER_UID": "3000"})
    assert (s.namespace, s.image, s.uid, s.gid, s.fs_gid) == ("env", "spawner:1", 2000, None, None)
    assert s.profiles_dir == str(REPO_PROFILES)
    assert dict(c.LLMPlatform) == s.to_dict()
    for section in (c.LLMSpawner, c.KubeSpawner):
        assert (section.namespace, section.image, section.uid) == ("env", "spawner:1", 2000)
    assert "gid" not in c.LLMSpawner
    # Nothing anywhere: KubeSpawner's own defaults, so the queue's Jobs agree with the servers.
    s = resolve_hub_settings(Config(), {})
    assert s.namespace == "default"
    assert s.image == "quay.io/jupyterhub/singleuser:latest"


def test_hub_refuses_settings_left_on_the_spawner():
    c = Config()
    c.LLMSpawner.profiles_dir = "/p"
    c.LLMSpawner.gpu_replica_counts = [2]
    with pytest.raises(SettingError) as e:
        resolve_hub_settings(c, {})
    assert str(e.value) == (
        "LLMSpawner.gpu_replica_counts is now LLMPlatform.gpu_replica_counts; "
        "LLMSpawner.profiles_dir is now LLMPlatform.profiles_dir "
        "(z2jh: hub.config.LLMPlatform); LLMSpawner no longer reads it"
    )
