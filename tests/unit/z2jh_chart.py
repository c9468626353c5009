"""The zero-to-jupyterhub chart's hub configuration, reduced to what llmspawner's values use.

The chart's hub runs its own ``jupyterhub_config.py`` (``jupyterhub/files/hub/`` in
https://github.com/jupyterhub/zero-to-jupyterhub-k8s, chart 4.x) over the Helm values. This
module repeats its steps, in its order, for the values that ``helm-values.yaml`` sets or
that shape the user's pod, so that a test can load our values the way the chart does and
build from the result what the hub would: no Kubernetes, Helm or hub pod runs here.

Left out, because our values do not touch them and they do not change the user's pod:
the proxy and database connection, image pull secrets, user pod affinities other than the
node-purpose one, ``singleuser.extraFiles``, the cookie secret and proxy token. The CryptKeeper
key is in (auth state, and llmspawner's auth refresh, depend on it): the chart generates it
into its Secret ``hub`` (:data:`HUB_SECRET`, key :data:`CRYPT_KEY`) and sets
``c.CryptKeeper.keys`` from there.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping

from traitlets.config import Config

# The chart's `fullnameOverride: ""` default: no release prefix, so the hub's Service is `hub`.
HUB_SERVICE = "hub"
HUB_PORT = 8081
# The chart's own Secret (`jupyterhub.hub.fullname`) and its key of the CryptKeeper keys, `;`
# between keys (jupyterhub/templates/hub/secret.yaml, files/hub/jupyterhub_config.py).
HUB_SECRET = "hub"
CRYPT_KEY = "hub.config.CryptKeeper.keys"


def _camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


class Values:
    """``z2jh.get_config``: dotted lookups in the merged values, ``default`` when unset/null."""

    def __init__(self, values: dict):
        self.values = values

    def get(self, key: str, default=None):
        node = self.values
        for part in key.split("."):
            if not isinstance(node, dict) or node.get(part) is None:
                return default
            node = node[part]
        return copy.deepcopy(node)

    def set_if_not_none(self, section, trait: str, key: str) -> None:
        value = self.get(key)
        if value is not None:
            section[trait] = value


def hub_environment(values: dict, secrets: Mapping[str, Mapping[str, str]], namespace: str):
    """The hub container's environment: ``hub.extraEnv`` with ``secretKeyRef`` resolved
    from ``secrets`` (``{secret name: {key: value}}``), plus what Kubernetes and the chart set.

    Raises:
        KeyError: for a reference to a Secret or key not in ``secrets`` (the pod would not
            start on a real cluster either).
    """
    env = {
        "POD_NAMESPACE": namespace,
        "HELM_RELEASE_NAME": "llm",
        "HUB_SERVICE_HOST": "10.43.0.10",
        "HUB_SERVICE_PORT": str(HUB_PORT),
    }
    extra = Values(values).get("hub.extraEnv", {})
    items = extra.items() if isinstance(extra, dict) else ((e["name"], e) for e in extra)
    for name, spec in items:
        if isinstance(spec, str):
            env[name] = spec
        elif "value" in spec:
            env[spec.get("name", name)] = spec["value"]
        else:
            ref = spec["valueFrom"]["secretKeyRef"]
            env[spec.get("name", name)] = secrets[ref["name"]][ref["key"]]
    return env


def apply_chart_config(values: dict, hub_secret: Mapping[str, str] | None = None) -> Config:
    """Return the traitlets config the chart's hub builds from ``values`` (already merged
    onto the chart's defaults), running ``hub.extraConfig`` last as the chart does.

    ``hub_secret`` is the chart's Secret :data:`HUB_SECRET` (``{key: value}``); its
    :data:`CRYPT_KEY` becomes ``c.CryptKeeper.keys`` (the chart generates it; ``None``: left
    out). ``hub.extraConfig`` runs with ``os.environ`` as the hub's environment: set it first
    (:func:`hub_environment`).
    """
    v = Values(values)
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.last_activity_interval = 60
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
    c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
    for trait in ("concurrent_spawn_limit", "active_server_limit", "base_url"):
        v.set_if_not_none(c.JupyterHub, trait, "hub." + _camel(trait))
    c.JupyterHub.hub_bind_url = f"http://:{HUB_PORT}"
    c.JupyterHub.hub_connect_url = f"http://{HUB_SERVICE}:{HUB_PORT}"
    c.KubeSpawner.common_labels = {"app": "jupyterhub", "heritage": "jupyterhub", "release": "llm"}
    c.KubeSpawner.namespace = os.environ.get("POD_NAMESPACE", "default")
    v.set_if_not_none(c.Spawner, "consecutive_failure_limit", "hub.consecutiveFailureLimit")
    for trait, key in (
        ("start_timeout", None),
        ("image_pull_policy", "image.pullPolicy"),
        ("events_enabled", "events"),
        ("extra_labels", None),
        ("extra_annotations", None),
        ("uid", None),
        ("fs_gid", None),
        ("service_account", "serviceAccountName"),
        ("node_selector", None),
        ("lifecycle_hooks", None),
        ("init_containers", None),
        ("extra_containers", None),
        ("mem_limit", "memory.limit"),
        ("mem_guarantee", "memory.guarantee"),
        ("cpu_limit", "cpu.limit"),
        ("cpu_guarantee", "cpu.guarantee"),
        ("extra_resource_limits", "extraResource.limits"),
        ("extra_resource_guarantees", "extraResource.guarantees"),
        ("environment", "extraEnv"),
        ("profile_list", None),
        ("extra_pod_config", None),
    ):
        v.set_if_not_none(c.KubeSpawner, trait, "singleuser." + (key or _camel(trait)))
    image = v.get("singleuser.image.name")
    if image:
        tag = v.get("singleuser.image.tag")
        c.KubeSpawner.image = f"{image}:{tag}" if tag else image
    if v.get("scheduling.userScheduler.enabled"):
        c.KubeSpawner.scheduler_name = "user-scheduler"
    if v.get("scheduling.podPriority.enabled"):
        c.KubeSpawner.priority_class_name = "priority"
    if v.get("scheduling.userPods.nodeAffinity.matchNodePurpose") == "prefer":
        c.KubeSpawner.node_affinity_preferred = [
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [
                        {
                            "key": "hub.jupyter.org/node-purpose",
                            "operator": "In",
                            "values": ["user"],
                        }
                    ]
                },
            }
        ]
    tolerations = v.get("scheduling.userPods.tolerations", []) + v.get(
        "singleuser.extraTolerations", []
    )
    if tolerations:
        c.KubeSpawner.tolerations = tolerations
    storage = v.get("singleuser.storage.type")
    if storage in ("dynamic", "static"):
        raise NotImplementedError(f"singleuser.storage.type {storage!r}: llmspawner uses none")
    c.KubeSpawner.volumes = v.get("singleuser.storage.extraVolumes", [])
    c.KubeSpawner.volume_mounts = v.get("singleuser.storage.extraVolumeMounts", [])

    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    if v.get("cull.enabled"):
        c.JupyterHub.services.append(
            {
                "name": "jupyterhub-idle-culler",
                "command": ["python3", "-m", "jupyterhub_idle_culler"],
            }
        )
        c.JupyterHub.load_roles.append(
            {
                "name": "jupyterhub-idle-culler",
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
                "services": ["jupyterhub-idle-culler"],
            }
        )
    for key, service in v.get("hub.services", {}).items():
        service.setdefault("name", key)
        service.pop("apiToken", None)
        service["api_token"] = f"chart-generated-token-for-{key}"
        c.JupyterHub.services.append(service)
    for key, role in v.get("hub.loadRoles", {}).items():
        role.setdefault("name", key)
        c.JupyterHub.load_roles.append(role)
    _unset = object()
    cmd = v.get("singleuser.cmd", _unset)
    if cmd is not _unset:
        c.Spawner.cmd = cmd
    v.set_if_not_none(c.Spawner, "default_url", "singleuser.defaultUrl")
    metadata = v.get("singleuser.cloudMetadata", {})
    if metadata.get("blockWithIptables"):
        tools = v.get("singleuser.networkTools.image")
        c.KubeSpawner.init_containers = [
            *c.KubeSpawner.get("init_containers", []),
            {
                "name": "block-cloud-metadata",
                "image": f"{tools['name']}:{tools['tag']}",
                "command": ["iptables", "-A", "OUTPUT", "-d", metadata["ip"], "-j", "DROP"],
                "securityContext": {
                    "privileged": True,
                    "runAsUser": 0,
                    "capabilities": {"add": ["NET_ADMIN"]},
                },
            },
        ]
    if hub_secret is not None:
        c.CryptKeeper.keys = hub_secret[CRYPT_KEY].split(";")
    for app, cfg in v.get("hub.config", {}).items():
        if app == "JupyterHub":
            for secret in ("proxy_auth_token", "cookie_secret", "services"):
                cfg.pop(secret, None)
        elif app == "CryptKeeper":
            cfg.pop("keys", None)
        c[app].update(cfg)
    for key, code in sorted(v.get("hub.extraConfig", {}).items()):
        exec(compile(code, f"hub.extraConfig.{key}", "exec"), {"c": c, "get_config": v.get})
    return c
