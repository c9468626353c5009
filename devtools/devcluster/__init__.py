"""An emulated Kubernetes cluster on one machine: FOR DEVELOPMENT AND TESTS ONLY, NEVER
PRODUCTION.

It lets the real client code (kubespawner, kubernetes_asyncio, kubectl) run with no cluster:

- an API server (`apiserver`, `store`) claiming Kubernetes 1.32, for namespaces, nodes, pods
  (with ``status``, ``log`` and ``eviction``), events, PVCs, ConfigMaps, Secrets, Services,
  ServiceAccounts (with ``token``), batch/v1 Jobs, apps/v1 Deployments and ReplicaSets (with
  ``scale``, R), RBAC roles and
  bindings, the access and token reviews and scheduling.k8s.io/v1 PriorityClasses:
  list/watch with label and field selectors, ``limit``/``continue``, bookmarks and
  resourceVersions, create/replace/patch/delete with ``dryRun`` and delete preconditions,
  Status errors, discovery and ``/openapi/v3`` for kubectl;
- admission and validation as kube-apiserver 1.32 (`admission`, `validation`, `schema`):
  schema decoding with ``fieldValidation``, the server's defaults, 422 ``Invalid`` for names,
  labels, containers, volumes, ports, keys and immutable fields;
- authentication and RBAC (`authn`, `rbac`): the kubeconfig's admin, signed ServiceAccount
  tokens (mounted into pods with ``KUBERNETES_SERVICE_HOST`` of an HTTPS listener), the real
  403/401 answers;
- nodes with GPU labels, taints and allocatable resources (`nodes`);
- a scheduler (`scheduler`) with kube-scheduler's filters and FailedScheduling wording;
- a kubelet (`kubelet`, `sandbox`) running pods' containers as local processes, each pod on
  its own loopback IP, volumes bind-mounted in a private mount namespace, as the pod's
  ``runAsUser``/``runAsGroup`` (or the image's USER, ``KubeletConfig.image_config``) when run
  as root, with containerd's default capabilities and ``drop``/``add``, a per-pod
  ``/etc/hosts`` and hostname, ``readOnlyRootFilesystem``, a working folder at the image's
  WORKDIR (`isolation`); memory limits enforced (`memory`: a memory cgroup, or RSS polling,
  then ``OOMKilled``); logs as timestamped records (`podlogs`: ``previous``, ``since``,
  ``timestamps``, ``tailLines``, ``limitBytes``);
- ``pods/exec``, ``attach`` and ``portforward`` over WebSocket (`streams`, `nsexec`, `spdy`:
  kubectl 1.32 and kubernetes_asyncio's ``WsApiClient``), in the container's namespaces;
- disruptions (`disruption`): eviction, preemption and drains with the ``DisruptionTarget``
  condition, SIGTERM then SIGKILL after the grace period;
- a Job controller (`jobs`) with ``podFailurePolicy``, Deployment and ReplicaSet controllers
  (`deployments`, `replicasets`: one set per template, RollingUpdate/Recreate, revisions,
  ``kubectl rollout``/``scale``), garbage collection by ownerReferences (`store`: Background,
  Orphan, and Foreground with the ``foregroundDeletion`` finalizer);
- an API fault-injecting proxy for tests (`faults`);
- a kubeconfig file (`kubeconfig`) and `DevCluster` / ``python -m devcluster``.

Not emulated: network namespaces (one pod can reach another's loopback-bound port), Services'
virtual IPs, DNS and kube-proxy (pods share the
host network, on distinct loopback addresses); CPU limits, emptyDir ``sizeLimit`` and GPU
isolation (a GPU "request" is only bookkeeping); seccomp; container images
(an image maps to a local Python environment); PodDisruptionBudgets; Indexed Jobs; adoption
of orphan pods without a ``pod-template-hash``; aggregated and
default user-facing ClusterRoles; admission webhooks and most per-field validation;
liveness/startup probes; persistent state across restarts (everything is in memory, except
PVC folders); events.k8s.io, StatefulSets and other resources not listed above; server-side
apply; ``/openapi/v2`` (kubectl 1.32 needs only v3).
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
