"""The kubeconfig file of the emulated cluster, a pure builder and a writer.

One cluster, one user with a static token (the API server accepts any token, or none) and
one context, current, with a default namespace. kubectl and kubernetes_asyncio's
``config.load_kube_config(config_file=...)`` read it; kubespawner finds it via ``KUBECONFIG``.
https://kubernetes.io/docs/concepts/configuration/organize-cluster-access-kubeconfig/
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

CONTEXT = "llmspawner-devcluster"


def kubeconfig(server: str, namespace: str = "default", token: str = "devcluster") -> dict:
    """The kubeconfig document for an API server at ``server`` (``http://host:port``)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": {"server": server}}],
        "users": [{"name": CONTEXT, "user": {"token": token}}],
        "contexts": [
            {
                "name": CONTEXT,
                "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT,
    }


def write_kubeconfig(path: str | Path, server: str, namespace: str = "default") -> Path:
    """Write the kubeconfig for ``server`` to ``path`` (mode 0600); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(kubeconfig(server, namespace), sort_keys=False))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
