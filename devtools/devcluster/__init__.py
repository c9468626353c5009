"""An emulated Kubernetes cluster on one machine: FOR DEVELOPMENT AND TESTS ONLY, NEVER
PRODUCTION.

It lets the real client code (kubespawner, kubernetes_asyncio, kubectl) run with no cluster:

- an API server (`apiserver`, `store`) for namespaces, nodes, pods (with ``status`` and
  ``log``), events, PVCs, ConfigMaps, Secrets, Services, ServiceAccounts, batch/v1 Jobs and
  scheduling.k8s.io/v1 PriorityClasses: list/watch with label and field selectors and
  resourceVersions, create/replace/patch/delete, Status errors, discovery for kubectl;
- nodes with GPU labels, taints and allocatable resources (`nodes`);
- a scheduler (`scheduler`) with kube-scheduler's filters and FailedScheduling wording;
- a kubelet (`kubelet`, `sandbox`) running pods' containers as local processes, each pod on
  its own loopback IP, volumes bind-mounted in a private mount namespace;
- a Job controller (`jobs`), garbage collection by ownerReferences (`store`);
- a kubeconfig file (`kubeconfig`) and `DevCluster` / ``python -m devcluster``.

Not emulated: network namespaces, Services' virtual IPs, DNS and kube-proxy (pods share the
host network, on distinct loopback addresses); cgroups, resource limits and GPU isolation
(a GPU "request" is only bookkeeping); container images (an image maps to a local Python
environment); securityContext/users (processes run as the devcluster's user, which must be
root for the mount namespaces); authentication, RBAC, admission webhooks and most validation;
liveness/startup probes; preemption; persistent state across restarts (everything is in
memory, except PVC folders); events.k8s.io, Deployments, StatefulSets, and other resources
not listed above; server-side apply; OpenAPI (use ``kubectl apply --validate=false``).
"""

from __future__ import annotations

__all__ = ["DevCluster", "main"]


def __getattr__(name: str):
    # Lazy: the sandbox and the kubelet's child processes must not import aiohttp.
    if name == "DevCluster":
        from .cluster import DevCluster

        return DevCluster
    if name == "main":
        from .__main__ import main

        return main
    raise AttributeError(name)
