"""The dev stack's hub: DevSpawner binds the pod IP, the dev config runs the product config
after its own settings. Read as JupyterHub reads them (no hub)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
from kubernetes_validate.utils import latest_version
from traitlets.config import Config, PyFileConfigLoader

from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.settings import LLMPlatform
from llmspawner.spawner import LLMSpawner
from llmspawner_dev import hubconfig as dev_hubconfig
from llmspawner_dev.spawner import DevSpawner, bind_to_pod_ip

from .conftest import pod_for

ROOT = Path(__file__).resolve().parents[2]
POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def load_dev_config(monkeypatch, env: dict | None = None) -> Config:
    """Load ``llmspawner_dev/jupyterhub_config.py`` with ``env`` as the environment."""
    for key in list(os.environ):
        if key.startswith(("LLMSPAWNER_", "OAUTH")):
            monkeypatch.delenv(key)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    path = dev_hubconfig.DEV_CONFIG_FILE
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


def test_bind_to_pod_ip_rewrites_the_service_url_host():
    env = bind_to_pod_ip({"JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/a/", "X": "1"})
    assert env == {
        "JUPYTERHUB_SERVICE_URL": "http://$(POD_IP):8888/user/a/",
        "X": "1",
        "POD_IP": {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    }
    assert bind_to_pod_ip({"JUPYTERHUB_SERVICE_URL": "http://h/"})["JUPYTERHUB_SERVICE_URL"] == (
        "http://$(POD_IP)/"
    )
    assert bind_to_pod_ip({"X": "1"}) == {"X": "1"}


def make(cls, username: str = "alice"):
    """A spawner of class ``cls`` for ``username`` with the shipped profiles (no hub)."""
    c = Config()
    c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    user = SimpleNamespace(name=username, id=1, url=f"/user/{username}/", groups=[])
    # _mock is kubespawner's own test hook for a stand-in hub object.
    return cls(config=c, user=user, _mock=True)


async def test_dev_spawner_pod_listens_on_its_ip(stub_kubeconfig):
    pod = await pod_for(make(DevSpawner), {"profile": "cpu"})
    env = pod["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert POD_IP in env
    by_name = {e["name"]: e.get("value") for e in env}
    assert by_name["JUPYTERHUB_SERVICE_URL"] == "http://$(POD_IP):8888/"
    # A variable must be defined before the one that refers to it.
    assert names.index("POD_IP") < names.index("JUPYTERHUB_SERVICE_URL")
    assert by_name["HOME"]  # LLMSpawner's own environment is kept
    for version in ("1.32", latest_version()):
        kubernetes_validate.validate(pod, version, strict=True)


async def test_product_spawner_leaves_the_service_url_alone(stub_kubeconfig):
    pod = await pod_for(make(LLMSpawner), {"profile": "cpu"})
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert "POD_IP" not in env
    assert "$(POD_IP)" not in env["JUPYTERHUB_SERVICE_URL"]


def test_dev_config_applies_dev_settings_then_the_repository_config(monkeypatch):
    c = load_dev_config(monkeypatch, {"LLMSPAWNER_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert c.JupyterHub.spawner_class == "llmspawner_dev.spawner.DevSpawner"
    s = c.LLMSpawner
    assert s.image == "llmspawner/singleuser:dev"
    assert s.image_pull_policy == "IfNotPresent"
    assert s.cmd == ["jupyterhub-singleuser"]
    assert "args" not in s  # no --ServerApp.allow_root: servers never run as root
    assert (s.start_timeout, s.http_timeout, s.delete_grace_period) == (300, 120, 1)
    assert "bind_pod_ip" not in s
    # The repository's jupyterhub_config.py ran on the same config, after the dev settings:
    # its services are there and hand the dev image (and the environment's MLflow) on.
    services = {service["name"]: service for service in c.JupyterHub.services}
    assert {"llm-queue", "idle-culler"} <= services.keys()
    platform = LLMPlatform.from_env(services["llm-queue"]["environment"])
    assert platform.image == "llmspawner/singleuser:dev"
    assert platform.mlflow_tracking_uri == "http://127.0.0.1:5000"


def test_dev_config_keeps_what_was_set_before(monkeypatch):
    c = Config()
    c.LLMSpawner.start_timeout = 7
    dev_hubconfig.configure_dev(c)
    assert c.LLMSpawner.start_timeout == 7
    assert c.LLMSpawner.http_timeout == 120


def test_dev_config_names_a_missing_base_config(monkeypatch, tmp_path):
    missing = tmp_path / "nope.py"
    try:
        dev_hubconfig.base_config({dev_hubconfig.BASE_CONFIG_ENV: str(missing)})
    except FileNotFoundError as e:
        assert str(missing) in str(e) and dev_hubconfig.BASE_CONFIG_ENV in str(e)
    else:
        raise AssertionError("no error")
    assert dev_hubconfig.base_config({}) == ROOT / "jupyterhub_config.py"


def test_repository_config_has_no_dev_branch():
    text = (ROOT / "jupyterhub_config.py").read_text()
    assert "dev" not in text.split('"""', 2)[2].lower()
