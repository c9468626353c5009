"""Where the ``llm-queue`` service listens and how it reaches the hub, from its environment."""

import pytest

from llmspawner.queue.service import LLMQueue


@pytest.fixture
def env(monkeypatch):
    for name in (
        "LLMSPAWNER_QUEUE_BIND_URL",
        "JUPYTERHUB_SERVICE_URL",
        "LLMSPAWNER_HUB_API_URL",
        "JUPYTERHUB_SERVICE_PREFIX",
        "LLMSPAWNER_PLATFORM",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_listens_where_the_hub_says(env):
    env.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:43001")
    assert LLMQueue().bind_url == "http://127.0.0.1:43001"


def test_bind_url_wins_under_z2jh(env):
    """The hub's service URL is the hub's Service (http://hub:10101), not bindable in the pod."""
    env.setenv("JUPYTERHUB_SERVICE_URL", "http://hub:10101")
    env.setenv("LLMSPAWNER_QUEUE_BIND_URL", "http://0.0.0.0:10101")
    assert LLMQueue().bind_url == "http://0.0.0.0:10101"


def test_hub_api_url(env):
    assert LLMQueue().hub_api_url == ""
    env.setenv("LLMSPAWNER_HUB_API_URL", "http://localhost:8081/hub/api")
    assert LLMQueue().hub_api_url == "http://localhost:8081/hub/api"


def test_platform_settings_come_from_the_hub_not_from_queue_traits(env, tmp_path):
    """The queue has no copy of the platform's settings: it reads LLMPlatform.from_env."""
    from llmspawner.queue import states
    from llmspawner.settings import LLMPlatform

    for name in ("profiles_dir", "namespace", "storage_claim_name", "mlflow_tracking_uri"):
        assert name not in LLMQueue.class_trait_names(), name
    platform = LLMPlatform(env={})
    platform.profiles_dir = str(tmp_path)
    platform.namespace = "llm"
    for key, value in platform.to_env().items():
        env.setenv(key, value)
    app = LLMQueue()
    assert (app.platform().profiles_dir, app.platform().namespace) == (str(tmp_path), "llm")
    assert app.admin_scope == states.ADMIN_SCOPE
    assert app.service_prefix.endswith(f"/services/{states.SERVICE_NAME}/")


def test_queue_image_overrides_only_the_jobs_image(env):
    env.delenv("LLMSPAWNER_QUEUE_IMAGE", raising=False)
    assert LLMQueue().image == ""  # the platform's image (the users' servers')
    env.setenv("LLMSPAWNER_QUEUE_IMAGE", "trainer:1")
    assert LLMQueue().queue_settings().image == "trainer:1"


def test_a_broken_platform_setting_stops_the_service_naming_it(env):
    env.setenv("LLMSPAWNER_PLATFORM", '{"mig_strategy": "both"}')
    with pytest.raises(SystemExit, match="mig_strategy"):
        LLMQueue().platform()


def test_the_queue_gets_the_hubs_pull_secrets(env):
    """The hub's resolved pull secrets reach the queue (and so its Jobs) with the rest of the
    platform settings (``LLMSPAWNER_PLATFORM``)."""
    from llmspawner.settings import LLMPlatform

    platform = LLMPlatform(env={})
    platform.image_pull_secrets = ["regcred"]
    for key, value in platform.to_env().items():
        env.setenv(key, value)
    assert LLMQueue().platform().image_pull_secrets == ["regcred"]


def test_max_preemptions_reaches_the_loop_and_must_not_be_negative(env):
    from traitlets import TraitError
    from traitlets.config import Config

    assert LLMQueue().queue_settings().max_preemptions == 2
    app = LLMQueue(config=Config({"LLMQueue": {"max_preemptions": 0}}))
    assert app.queue_settings().max_preemptions == 0
    with pytest.raises(TraitError, match="LLMQueue.max_preemptions must be >= 0, not -1"):
        LLMQueue(config=Config({"LLMQueue": {"max_preemptions": -1}}))
