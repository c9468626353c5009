"""Fixtures for pure unit tests: no cluster, no network, no hub process."""

from types import SimpleNamespace

import pytest
from kubernetes_asyncio.client import ApiClient
from traitlets.config import Config

from llmspawner.hubconfig import REPO_PROFILES

# KubeSpawner's constructor loads a kubeconfig (kubespawner/clients.py: load_config), even
# though building a manifest needs no cluster. This one points at a closed port and is never
# contacted by these tests.
_STUB_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: stub, cluster: {server: "http://127.0.0.1:9"}}]
users: [{name: stub, user: {}}]
contexts: [{name: stub, context: {cluster: stub, user: stub, namespace: default}}]
current-context: stub
"""


@pytest.fixture
def stub_kubeconfig(tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(_STUB_KUBECONFIG)
    # kubernetes_asyncio reads $KUBECONFIG once, at import; its default location is read at
    # call time.
    from kubernetes_asyncio.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    yield path
    # kubespawner caches its kubeconfig and API clients process-wide: a later test (an
    # integration test, in the same process) must not get this stub's closed port.
    from kubespawner import KubeSpawner, clients

    KubeSpawner.reflectors.clear()
    clients._client_cache.clear()
    clients.load_config.cache_clear()


@pytest.fixture
def make_spawner(stub_kubeconfig):
    """Return ``make(username, config=None) -> LLMSpawner`` with the shipped profiles."""
    from llmspawner.spawner import LLMSpawner

    def make(username: str, config: Config | None = None) -> LLMSpawner:
        c = Config()
        c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
        c.LLMPlatform.mlflow_tracking_uri = "http://mlflow.llm.svc:5000"
        if config is not None:
            c.merge(config)
        # The user is given at construction (KubeSpawner expands its name templates there);
        # _mock is kubespawner's own test hook for a stand-in hub object.
        user = SimpleNamespace(name=username, id=1, url=f"/user/{username}/", groups=[])
        return LLMSpawner(config=c, user=user, _mock=True)

    return make


async def pod_for(spawner, options: dict) -> dict:
    """Apply ``options`` as user options and return the pod as the API server receives it."""
    spawner.user_options = options
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    # kubernetes_asyncio's own serializer, as used when kubespawner creates the pod.
    async with ApiClient() as api:
        return api.sanitize_for_serialization(pod)
