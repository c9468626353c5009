"""The resource types the emulated API server serves, and their discovery documents.

One table (`RESOURCES`) says, for each served resource, its API group/version, plural, kind,
whether it is namespaced, its subresources and short names. The discovery documents
(`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`) are pure functions of that table.

Upstream: https://kubernetes.io/docs/reference/using-api/api-concepts/#discovery-api
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Resource:
    """One served resource type, e.g. core/v1 ``pods`` or batch/v1 ``jobs``.

    ``group`` is ``""`` for the core group. ``subresources`` lists served subresources
    (``status``, ``log``).
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = field(default=())
    verbs: tuple[str, ...] = ALL_VERBS  # R: create-only kinds (access reviews)

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` of objects of this type, e.g. ``v1`` or ``batch/v1``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        """Lower-case kind, as Kubernetes reports ``singularName``."""
        return self.kind.lower()

    @property
    def key(self) -> str:
        """A stable key for the store, e.g. ``/v1/pods`` or ``batch/v1/jobs``."""
        return f"{self.group}/{self.version}/{self.plural}"


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", False, ("status",), ("ns",)),
    Resource("", "v1", "nodes", "Node", False, ("status",), ("no",)),
    Resource(
        "",
        "v1",
        "pods",
        "Pod",
        True,
        ("status", "log", "eviction", "exec", "attach", "portforward"),  # D: devcluster.streams
        ("po",),
        ("all",),
    ),
    Resource("", "v1", "events", "Event", True, (), ("ev",)),
    Resource(
        "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("status",), ("pvc",)
    ),
    Resource("", "v1", "configmaps", "ConfigMap", True, (), ("cm",)),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "services", "Service", True, ("status",), ("svc",), ("all",)),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, ("token",), ("sa",)),
    Resource("batch", "v1", "jobs", "Job", True, ("status",), (), ("all",)),
    Resource("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, (), ("pc",)),
    # R (issue 14 §2, §3): Deployments (devcluster.deployments), RBAC (devcluster.rbac),
    # ServiceAccount tokens and identity reviews (devcluster.authn).
    Resource(
        "apps", "v1", "deployments", "Deployment", True, ("status", "scale"), ("deploy",), ("all",)
    ),
    # R (issue 14 §3): ReplicaSets (devcluster.replicasets), Scale of both (autoscaling/v1)
    Resource(
        "apps", "v1", "replicasets", "ReplicaSet", True, ("status", "scale"), ("rs",), ("all",)
    ),
    *(
        Resource("rbac.authorization.k8s.io", "v1", plural, kind, namespaced)
        for plural, kind, namespaced in (
            ("roles", "Role", True),
            ("rolebindings", "RoleBinding", True),
            ("clusterroles", "ClusterRole", False),
            ("clusterrolebindings", "ClusterRoleBinding", False),
        )
    ),
    *(
        Resource(group, "v1", plural, kind, namespaced, verbs=("create",))
        for group, plural, kind, namespaced in (
            ("authorization.k8s.io", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False),
            ("authorization.k8s.io", "selfsubjectrulesreviews", "SelfSubjectRulesReview", False),
            ("authorization.k8s.io", "subjectaccessreviews", "SubjectAccessReview", False),
            ("authentication.k8s.io", "selfsubjectreviews", "SelfSubjectReview", False),
            ("authentication.k8s.io", "tokenreviews", "TokenReview", False),
        )
    ),
)

PODS = next(r for r in RESOURCES if r.plural == "pods")
NODES = next(r for r in RESOURCES if r.plural == "nodes")
EVENTS = next(r for r in RESOURCES if r.plural == "events")
NAMESPACES = next(r for r in RESOURCES if r.plural == "namespaces")
JOBS = next(r for r in RESOURCES if r.plural == "jobs")
CONFIGMAPS = next(r for r in RESOURCES if r.plural == "configmaps")
SECRETS = next(r for r in RESOURCES if r.plural == "secrets")
PVCS = next(r for r in RESOURCES if r.plural == "persistentvolumeclaims")
PRIORITYCLASSES = next(r for r in RESOURCES if r.plural == "priorityclasses")
SERVICEACCOUNTS = next(r for r in RESOURCES if r.plural == "serviceaccounts")  # R
DEPLOYMENTS = next(r for r in RESOURCES if r.plural == "deployments")  # R
REPLICASETS = next(r for r in RESOURCES if r.plural == "replicasets")  # R


def find_resource(group: str, version: str, plural: str) -> Resource | None:
    """The served resource for a URL's group, version and plural, or None."""
    for res in RESOURCES:
        if (res.group, res.version, res.plural) == (group, version, plural):
            return res
    return None


def resource_for_kind(api_version: str, kind: str) -> Resource | None:
    """The served resource for an object's ``apiVersion`` and ``kind``, or None."""
    for res in RESOURCES:
        if res.api_version == api_version and res.kind == kind:
            return res
    return None


def api_versions() -> dict:
    """The ``/api`` document (APIVersions)."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for res in RESOURCES:
        if res.group and res.version not in groups.setdefault(res.group, []):
            groups[res.group].append(res.version)
    return groups


def _group_doc(name: str, versions: list[str]) -> dict:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list() -> dict:
    """The ``/apis`` document (APIGroupList) for the non-core groups."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_doc(g, vs) for g, vs in _groups().items()],
    }


def api_group(name: str) -> dict | None:
    """The ``/apis/<group>`` document (APIGroup), or None for an unknown group."""
    versions = _groups().get(name)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(name, versions)}


def api_resource_list(group: str, version: str) -> dict | None:
    """The ``/api/v1`` or ``/apis/<group>/<version>`` document (APIResourceList), or None."""
    served = [r for r in RESOURCES if r.group == group and r.version == version]
    if not served:
        return None
    items = []
    for res in served:
        items.append(
            {
                "name": res.plural,
                "singularName": res.singular,
                "namespaced": res.namespaced,
                "kind": res.kind,
                "verbs": list(res.verbs),
                "shortNames": list(res.short_names),
                "categories": list(res.categories),
            }
        )
        for sub in res.subresources:
            verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
            kind = "Pod" if sub == "log" else res.kind
            entry = {
                "name": f"{res.plural}/{sub}",
                "singularName": "",
                "namespaced": res.namespaced,
                "kind": kind,
                "verbs": verbs,
            }
            if sub in ("exec", "attach", "portforward"):  # D: devcluster.streams
                kinds = {"attach": "PodAttachOptions", "portforward": "PodPortForwardOptions"}
                entry.update(verbs=["create", "get"], kind=kinds.get(sub, "PodExecOptions"))
            if sub == "eviction":  # F: policy/v1 Eviction (devcluster.disruption)
                entry.update(verbs=["create"], kind="Eviction", group="policy", version="v1")
            if sub == "scale":  # R: autoscaling/v1 Scale (devcluster.replicasets.serve_scale)
                entry.update(kind="Scale", group="autoscaling", version="v1")
            if sub == "token":  # R: TokenRequest (kubectl create token)
                entry.update(verbs=["create"], kind="TokenRequest", group="authentication.k8s.io")
                entry["version"] = "v1"
            items.append(entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": items,
    }
