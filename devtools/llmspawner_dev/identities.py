"""The dev stack's hub runs as a real install's hub: ServiceAccount ``hub`` with z2jh's hub
Role and the queue's RBAC from ``deploy/manifests/queue`` (issue 14 §2).

A real install gives the hub pod (and the queue service ``llm-queue`` and the culler, which run
in it) the chart's ServiceAccount ``hub``, bound to

- the chart's Role ``hub`` (:data:`Z2JH_HUB_RULES`, quoted from zero-to-jupyterhub-k8s
  ``jupyterhub/templates/hub/rbac.yaml``, chart 4.x: pods, PVCs, secrets, services get/watch/
  list/create/delete; events get/watch/list), bound by the RoleBinding ``hub``;
- ``deploy/manifests/queue``: the Role/RoleBinding ``llm-queue`` and the ClusterRole/
  ClusterRoleBinding ``llm-capacity`` (nodes, priorityclasses), read from those files, with
  their namespace ``llm`` replaced by the stack's.

:func:`hub_kubeconfig` makes these objects on the emulated cluster with the admin kubeconfig,
asks a token of ``hub`` (TokenRequest, as ``kubectl create token``) and writes a kubeconfig
with it, which the stack gives the hub as ``KUBECONFIG``: a call the real RBAC would refuse
gets the real server's 403 in the dev stack and the e2e tests.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from .hubconfig import REPO_ROOT
from .kube import KubeClient, KubeError

QUEUE_KIT = REPO_ROOT / "deploy" / "manifests" / "queue"
KIT_NAMESPACE = "llm"
HUB_SERVICE_ACCOUNT = "hub"  # jupyterhub.hub-serviceaccount.fullname with no release prefix
#: z2jh chart 4.x, jupyterhub/templates/hub/rbac.yaml (Role ``hub``), verbatim:
#: https://github.com/jupyterhub/zero-to-jupyterhub-k8s/blob/main/jupyterhub/templates/hub/rbac.yaml
Z2JH_HUB_RULES = (
    {
        "apiGroups": [""],
        "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
        "verbs": ["get", "watch", "list", "create", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]},
)
TOKEN_SECONDS = 7 * 24 * 3600  # a dev stack's lifetime; the emulator does not renew tokens

_PATHS = {
    (
        "rbac.authorization.k8s.io/v1",
        "Role",
    ): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    (
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
    ): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
    ): "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
    ): "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    ("scheduling.k8s.io/v1", "PriorityClass"): "/apis/scheduling.k8s.io/v1/priorityclasses",
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts",
}


def z2jh_hub_objects(namespace: str) -> list[dict]:
    """The chart's Role ``hub`` and RoleBinding ``hub`` (to ServiceAccount ``hub``)."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "hub", "namespace": namespace},
            "rules": copy.deepcopy(list(Z2JH_HUB_RULES)),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "hub", "namespace": namespace},
            "subjects": [
                {"kind": "ServiceAccount", "name": HUB_SERVICE_ACCOUNT, "namespace": namespace}
            ],
            "roleRef": {"kind": "Role", "name": "hub", "apiGroup": "rbac.authorization.k8s.io"},
        },
    ]


def queue_kit_objects(namespace: str, kit: Path = QUEUE_KIT) -> list[dict]:
    """The objects of ``deploy/manifests/queue`` (its kustomization's ``resources``, in order),
    with the kit's namespace ``llm`` replaced by ``namespace`` in ``metadata.namespace`` and
    in the bindings' ServiceAccount subjects. Pure but for reading the files."""
    kustomization = yaml.safe_load((kit / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization.get("resources") or []:
        for doc in yaml.safe_load_all((kit / name).read_text()):
            if not doc:
                continue
            doc = copy.deepcopy(doc)
            meta = doc.setdefault("metadata", {})
            if meta.get("namespace") == KIT_NAMESPACE:
                meta["namespace"] = namespace
            for subject in doc.get("subjects") or []:
                if subject.get("namespace") == KIT_NAMESPACE:
                    subject["namespace"] = namespace
            objects.append(doc)
    return objects


def apply(kube: KubeClient, obj: dict) -> None:
    """Create ``obj``, or replace it if it exists (``kubectl apply``'s outcome). Raises
    `KubeError` for a kind not in the table or a refusal."""
    path = _PATHS.get((obj.get("apiVersion"), obj.get("kind")))
    if path is None:
        raise KubeError(f"no path known for {obj.get('apiVersion')} {obj.get('kind')}", 0)
    path = path.format(ns=obj["metadata"].get("namespace", ""))
    response = kube.request("POST", path, json=obj)
    if response.status_code == 409:
        response = kube.request("PUT", f"{path}/{obj['metadata']['name']}", json=obj)
    if response.status_code not in (200, 201):
        raise KubeError(
            f"applying {obj.get('kind')} {obj['metadata']['name']} answered "
            f"{response.status_code}: {response.text[:300]}",
            response.status_code,
        )


def hub_kubeconfig(admin_kubeconfig: str | Path, namespace: str, path: str | Path) -> Path:
    """Make ServiceAccount ``hub`` with z2jh's hub Role and the queue kit's RBAC in
    ``namespace`` (see the module docstring), and write a kubeconfig at ``path`` (mode 0600)
    with a token of ``hub`` for the admin kubeconfig's server. Returns the path.

    Raises:
        KubeError: the emulated cluster refused an object or the token.
    """
    with KubeClient.from_kubeconfig(admin_kubeconfig) as kube:
        apply(
            kube,
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": HUB_SERVICE_ACCOUNT, "namespace": namespace},
            },
        )
        for obj in z2jh_hub_objects(namespace) + queue_kit_objects(namespace):
            apply(kube, obj)
        response = kube.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{HUB_SERVICE_ACCOUNT}/token",
            json={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": TOKEN_SECONDS},
            },
        )
        if response.status_code != 201:
            raise KubeError(
                f"token of serviceaccount {namespace}/{HUB_SERVICE_ACCOUNT} answered "
                f"{response.status_code}: {response.text[:300]}",
                response.status_code,
            )
        token = response.json()["status"]["token"]
    doc = yaml.safe_load(Path(admin_kubeconfig).read_text())
    for user in doc.get("users") or []:
        user["user"] = {"token": token}
    for context in doc.get("contexts") or []:
        context["context"]["namespace"] = namespace
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
