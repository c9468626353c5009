"""helm-values.yaml loaded the way the z2jh chart's hub loads it, and what the hub builds.

The chart's own steps are repeated by ``tests/unit/z2jh_chart.py``. Stand-ins, because no
cluster runs here: the ConfigMap ``llm-profiles`` mounted in the hub is the repository's
``profiles/`` folder, the Secret ``llm-oidc`` is a dict, and the OIDC issuer's discovery
document is served by a local HTTP server.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import jupyterhub
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from llmspawner.deploy.values import chart_defaults, helm_merge
from llmspawner.hubconfig import REPO_PROFILES
from llmspawner.queue.states import ACCESS_SCOPE, ADMIN_SCOPE
from llmspawner.settings import ENV_VAR, LLMPlatform

from .conftest import pod_for
from .z2jh_chart import apply_chart_config, hub_environment

ROOT = Path(__file__).resolve().parents[2]
SINGLEUSER_IMAGE = "ghcr.io/llmspawner/singleuser:0.1.0"
# MLflow serves under the hub service's prefix (docs/mlflow.md).
MLFLOW = "http://mlflow.llm.svc.cluster.local:5000/services/mlflow"


@pytest.fixture(scope="module")
def issuer():
    """A local OIDC issuer: only its discovery document, which the hub reads at start."""
    doc = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/realms/lab/.well-known/openid-configuration":
                self.send_error(404)
                return
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{server.server_port}/realms/lab"
    doc.update(
        issuer=url,
        authorization_endpoint=f"{url}/auth",
        token_endpoint=f"{url}/token",
        userinfo_endpoint=f"{url}/userinfo",
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()


@pytest.fixture
def chart_config(issuer, monkeypatch):
    """The hub's config as the chart builds it from helm-values.yaml, in namespace ``llm``."""
    values = helm_merge(chart_defaults(), yaml.safe_load((ROOT / "helm-values.yaml").read_text()))
    # Stand-in for the ConfigMap mounted at hub.extraVolumeMounts' mountPath.
    mounted = values["hub"]["extraVolumeMounts"][0]["mountPath"]
    assert values["hub"]["config"]["LLMPlatform"]["profiles_dir"] == mounted
    values["hub"]["config"]["LLMPlatform"]["profiles_dir"] = str(REPO_PROFILES)
    secrets = {
        "llm-oidc": {"issuer": issuer, "client-id": "llm-hub", "client-secret": "s3cret"},
        "mlflow-auth": {"service-token": "mlflow-service-token", "admin-password": "adm1n"},
    }
    env = hub_environment(values, secrets, namespace="llm")
    for name in [n for n in os.environ if n.startswith(("LLMSPAWNER_", "OAUTH"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return apply_chart_config(values)


def test_hub_settings(chart_config, issuer):
    hub = chart_config.JupyterHub
    assert hub.spawner_class == "llm"
    assert hub.authenticator_class == "generic-oauth"
    # The chart sets 60; proxy activity would count LlamaBoard's polling.
    assert hub.last_activity_interval == 0
    auth = chart_config.GenericOAuthenticator
    assert (auth.authorize_url, auth.token_url, auth.userdata_url) == (
        f"{issuer}/auth",
        f"{issuer}/token",
        f"{issuer}/userinfo",
    )
    assert auth.allowed_groups == {"llm-users"}
    assert auth.admin_groups == {"llm-admins"}
    assert auth.manage_groups is True
    # Client id and secret stay in the environment (from the Secret), read by oauthenticator.
    assert "client_secret" not in auth


def test_culler_service(chart_config):
    services = {s["name"]: s for s in chart_config.JupyterHub.services}
    # The culler, the queue, MLflow behind the hub login and the proxy route repair.
    assert sorted(services) == ["idle-culler", "llm-queue", "mlflow", "route-repair"]
    culler = services["idle-culler"]
    assert culler["command"] == [
        sys.executable,
        "-m",
        "jupyterhub_idle_culler",
        "--timeout=3600",
        "--cull-every=300",
        "--max-age=0",
        "--config=" + str(ROOT / "llmspawner" / "culler_config.py"),
        "--url=http://localhost:8081/hub/api",
    ]
    # The platform settings, one serialisation, the same the queue gets.
    assert list(culler["environment"]) == [ENV_VAR]
    assert culler["environment"][ENV_VAR] == services["llm-queue"]["environment"][ENV_VAR]
    settings = LLMPlatform.from_env(culler["environment"])
    assert settings.profiles_dir == str(REPO_PROFILES)
    assert (settings.gpu_shared_resource, settings.gpu_replica_counts, settings.mig_strategy) == (
        "nvidia.com/gpu",
        [2, 4],
        "mixed",
    )
    roles = {r["name"]: r for r in chart_config.JupyterHub.load_roles}
    assert roles["idle-culler"]["services"] == ["idle-culler"]
    assert roles["idle-culler"]["scopes"] == [
        "list:users",
        "read:users:activity",
        "read:servers",
        "delete:servers",
    ]


def test_queue_service(chart_config):
    services = {s["name"]: s for s in chart_config.JupyterHub.services}
    queue = services["llm-queue"]
    assert queue["url"] == "http://hub:10101"
    assert queue["command"] == [sys.executable, "-m", "llmspawner.queue"]
    env = queue["environment"]
    assert {k: v for k, v in env.items() if k.startswith("LLMSPAWNER_QUEUE")} == {
        "LLMSPAWNER_QUEUE_SERVICE_URL": "http://hub:10101",
        "LLMSPAWNER_QUEUE_BIND_URL": "http://0.0.0.0:10101",
        "LLMSPAWNER_QUEUE_DB_URL": "sqlite:////srv/jupyterhub/llm-queue.sqlite",
        "LLMSPAWNER_QUEUE_ADMIN_GROUPS": "llm-admins",
    }
    # The chart's namespace, image and ids (c.KubeSpawner) reach the queue's Jobs.
    settings = LLMPlatform.from_env({ENV_VAR: env[ENV_VAR]})
    assert settings.namespace == "llm"
    assert settings.image == SINGLEUSER_IMAGE
    assert (settings.uid, settings.fs_gid) == (1000, 100)
    assert settings.storage_claim_name == "llm-storage"
    assert settings.mlflow_tracking_uri == MLFLOW
    assert settings.queue_url == "http://hub:10101/services/llm-queue/"
    # Exactly what the hub's spawner reads (LLMPlatform(parent=spawner)).
    assert settings.to_dict() == dict(chart_config.LLMPlatform)
    assert env["LLMSPAWNER_HUB_API_URL"] == "http://localhost:8081/hub/api"
    # Secrets of the hub's environment are not handed to the service.
    assert "OAUTH_CLIENT_SECRET" not in env
    roles = {r["name"]: r for r in chart_config.JupyterHub.load_roles}
    # The queue mints each Job's MLflow token (a token of the job's user).
    assert roles["llm-queue-service"]["scopes"] == ["tokens"]
    assert roles["llm-queue-admin"]["groups"] == ["llm-admins"]
    assert roles["llm-queue-admin"]["scopes"] == [ADMIN_SCOPE, ACCESS_SCOPE]
    # Every user may use the queue: JupyterHub 6 has extra_user_scopes; the hub image's
    # JupyterHub 5.4.4 (deploy/images/hub/constraints.txt) gets the user role instead.
    if jupyterhub.version_info >= (6,):
        assert ACCESS_SCOPE in chart_config.JupyterHub.extra_user_scopes
    else:
        assert "extra_user_scopes" not in chart_config.JupyterHub
        assert roles["user"]["scopes"] == ["self", ACCESS_SCOPE]


async def test_alice_on_medium(chart_config, stub_kubeconfig):
    from llmspawner.spawner import LLMSpawner

    user = SimpleNamespace(name="alice", id=1, url="/user/alice/", groups=[])
    spawner = LLMSpawner(config=chart_config, user=user, _mock=True)
    pod = await pod_for(spawner, {"profile": "medium"})
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["image"] == SINGLEUSER_IMAGE
    assert container["args"] == ["jupyterhub-singleuser"]
    assert container["resources"] == {
        "limits": {"cpu": 8.0, "memory": 48 * 2**30, "nvidia.com/gpu": 1},
        "requests": {"cpu": 4.0, "memory": 16 * 2**30, "nvidia.com/gpu": 1},
    }
    assert spec["nodeSelector"] == {"nvidia.com/gpu.replicas": "2"}
    # The chart's user-pod tolerations stay; the GPU toleration is added.
    assert spec["tolerations"] == [
        {
            "key": "hub.jupyter.org/dedicated",
            "operator": "Equal",
            "value": "user",
            "effect": "NoSchedule",
        },
        {
            "key": "hub.jupyter.org_dedicated",
            "operator": "Equal",
            "value": "user",
            "effect": "NoSchedule",
        },
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    # One scheduler for servers and queue Jobs: the chart's user-scheduler is off.
    assert "schedulerName" not in spec
    assert spec["securityContext"] == {"fsGroup": 100, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"]["runAsUser"] == 1000
    # /dev/shm: a quarter of medium's 48G memory limit (workload.shm_size).
    assert spec["volumes"] == [
        {"name": "llm-storage", "persistentVolumeClaim": {"claimName": "llm-storage"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(12 * 2**30)}},
    ]
    assert container["volumeMounts"] == [
        {"name": "llm-storage", "mountPath": "/storage/users/alice", "subPath": "users/alice"},
        {
            "name": "llm-storage",
            "mountPath": "/storage/models",
            "subPath": "models",
            "readOnly": True,
        },
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    blocker, owner = spec["initContainers"]
    assert blocker["name"] == "block-cloud-metadata"
    # The kubelet creates users/alice owned by root; the chart's uid 1000, gid 100 get it.
    assert owner["name"] == "llm-storage-owner"
    assert owner["image"] == SINGLEUSER_IMAGE
    assert owner["command"][-2:] == ["/mnt/user-folder", "1000:100"]
    assert owner["volumeMounts"] == [
        {"name": "llm-storage", "mountPath": "/mnt/user-folder", "subPath": "users/alice"}
    ]
    # The chart's label that lets the pod reach the hub (and, through our rules, the queue).
    assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == MLFLOW
    assert env["MLFLOW_EXPERIMENT_NAME"] == "alice-experiments"
    assert env["LLMSPAWNER_QUEUE_URL"] == "http://hub:10101/services/llm-queue/"
    assert env["HOME"] == "/storage/users/alice"
    for version in ("1.32", latest_version()):
        kubernetes_validate.validate(pod, version, strict=True)


def test_chart_parts_of_the_values():
    """What the chart itself deploys from the values (its templates, not the hub's config)."""
    values = helm_merge(chart_defaults(), yaml.safe_load((ROOT / "helm-values.yaml").read_text()))
    # The hub pod is not BestEffort (it runs the hub, the culler and the queue).
    assert values["hub"]["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert values["hub"]["resources"]["limits"] == {"memory": "2Gi"}
    # No pre-install hook waiting for a multi-GB pull; the continuous puller stays.
    assert values["prePuller"]["hook"]["enabled"] is False
    assert values["prePuller"]["continuous"]["enabled"] is True
    assert values["scheduling"]["userScheduler"]["enabled"] is False
    # The chart's proxy-public LoadBalancer with Let's Encrypt, no ingress (docs/deploy.md:
    # k3s installed with --disable=traefik, so the LoadBalancer gets ports 80 and 443).
    assert values["proxy"]["service"]["type"] == "LoadBalancer"
    assert values["proxy"]["https"]["enabled"] is True
    assert values["proxy"]["https"]["type"] == "letsencrypt"
    assert values["ingress"]["enabled"] is False
    # The hub database is upgraded by the chart itself on sqlite-pvc (hub.db.upgrade unset).
    assert values["hub"]["db"]["type"] == "sqlite-pvc"
    assert values["hub"]["db"].get("upgrade") is None
