"""Where the ``llm-queue`` service listens and how it reaches the hub, from its environment."""

import pytest

from llmspawner.queue.service import LLMQueue


@pytest.fixture
def env(monkeypatch):
    for name in ("LLMSPAWNER_QUEUE_BIND_URL", "JUPYTERHUB_SERVICE_URL", "LLMSPAWNER_HUB_API_URL"):
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
