"""`DevCluster`: the API server, scheduler, kubelet and Job controller, started together.

    async with DevCluster(data_dir="/tmp/dc") as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
        ...  # kubespawner, kubectl, kubernetes_asyncio talk to cluster.url

For development and tests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from urllib.parse import urlsplit

from . import admission, authn, deployments, rbac, replicasets
from . import nodes as nodes_mod
from .apiserver import ApiServer
from .jobs import JobController
from .kubeconfig import write_kubeconfig
from .kubelet import Kubelet, KubeletConfig
from .resources import NAMESPACES, NODES
from .scheduler import Scheduler
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class DevCluster:
    """An emulated Kubernetes cluster on this machine.

    ``data_dir``: folder for PVC data (``pvc/<namespace>/<claim>/``), pod folders and the
    kubeconfig. ``host``/``port``: where the API server listens (port 0: a free one).
    ``nodes``: a node layout (list of dicts), a YAML/JSON file path, or None for
    `nodes.default_layout`. ``images``: image → local environment prefix (default: every image
    → this interpreter's ``sys.prefix``). ``kubelet``: timing/env knobs (`KubeletConfig`).
    ``scheduler_interval``, ``jobs_interval``: resync periods (seconds); controllers also run
    on every change. ``job_retry_delay``: seconds between a failed Job pod and its retry.
    Raises `nodes.NodeConfigError` for a bad layout (at construction, before any I/O).
    """

    def __init__(
        self,
        data_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        nodes: list[dict] | str | Path | None = None,
        images: dict[str, str] | None = None,
        *,
        kubelet: KubeletConfig | None = None,
        scheduler_interval: float = 1.0,
        jobs_interval: float = 1.0,
        job_retry_delay: float = 0.0,
        namespaces: tuple[str, ...] = DEFAULT_NAMESPACES,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        if nodes is None:
            self.node_layout = nodes_mod.default_layout()
        elif isinstance(nodes, (str, Path)):
            self.node_layout = nodes_mod.load_layout(nodes)
        else:
            self.node_layout = nodes_mod.validate_layout(nodes)
        self.kubelet_config = kubelet or KubeletConfig()
        self.kubelet_config.images = {
            "*": sys.prefix,
            **(self.kubelet_config.images or {}),
            **(images or {}),
        }
        self.scheduler_interval = scheduler_interval
        self.jobs_interval = jobs_interval
        self.job_retry_delay = job_retry_delay
        self.namespaces = namespaces
        self.url = ""
        self.tls_url = ""  # R: the HTTPS address pods get (KUBERNETES_SERVICE_HOST/PORT)
        #: N: where pods reach this machine's services (`kubelet.Kubelet.start_network`): the
        #: pod bridge's gateway when pods have their own network namespaces, else 127.0.0.1.
        self.host_address = "127.0.0.1"
        self.authenticator: authn.Authenticator | None = None
        self.kubeconfig_path = self.data_dir / "kubeconfig"
        self.store: Store | None = None
        self.kubelet: Kubelet | None = None
        self._server: ApiServer | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> DevCluster:
        """Create the store, nodes and namespaces, start the controllers and the API server,
        write the kubeconfig. Returns self."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store()
        store.admit.extend(admission.HOOKS)
        store.admit_update.extend(admission.UPDATE_HOOKS)  # V: validation on updates
        store.admit.extend((deployments.admit_deployment, authn.admit_pod_token))  # R
        store.admit_update.append(deployments.admit_deployment_update)  # R
        store.admit.append(replicasets.admit_replicaset)  # R: apps/v1 ReplicaSets
        store.admit_update.append(replicasets.admit_replicaset_update)  # R
        for ns in self.namespaces:
            store.create(NAMESPACES, {"metadata": {"name": ns}, "status": {"phase": "Active"}})
        rbac.bootstrap(store)  # R: cluster-admin, system:basic-user
        for node in self.node_layout:
            store.create(NODES, nodes_mod.node_object(node))
        self.store = store
        self.kubelet = Kubelet(store, self.data_dir, self.kubelet_config)
        self.host_address = self.kubelet.start_network()  # N: podnet (isolated or host)
        scheduler = Scheduler(store, self.scheduler_interval)
        jobs = JobController(store, self.jobs_interval, self.job_retry_delay)
        self._server = ApiServer(store, self.kubelet)
        self.authenticator = authn.Authenticator(store)  # R: tokens, RBAC, HTTPS (authn, rbac)
        self._server.auth = rbac.Gate(store, self.authenticator)
        self.kubelet.projected = self.authenticator.projected_files
        self.url = await self._server.start(self.host, self.port)
        parts = urlsplit(self.url)
        self.kubelet.set_api_address(parts.hostname or self.host, parts.port or 0)
        # N: the in-cluster address is where pods reach this machine (the bridge's gateway)
        pod_side = self.host_address if self.kubelet.network else parts.hostname or self.host
        tls_port = await authn.start_tls_site(  # R: in-cluster clients need HTTPS + ca.crt
            self._server._runner, pod_side, self.data_dir, self.authenticator
        )
        self.tls_url = f"https://{pod_side}:{tls_port}"
        self.kubelet.base_env = authn.service_env(pod_side, tls_port)
        self._tasks = [
            asyncio.create_task(scheduler.run(), name="devcluster-scheduler"),
            asyncio.create_task(self.kubelet.run(), name="devcluster-kubelet"),
            asyncio.create_task(jobs.run(), name="devcluster-jobs"),
            asyncio.create_task(  # R
                deployments.DeploymentController(store, self.jobs_interval).run(),
                name="devcluster-deployments",
            ),
            asyncio.create_task(  # R: Deployment -> ReplicaSet -> pods
                replicasets.ReplicaSetController(store, self.jobs_interval).run(),
                name="devcluster-replicasets",
            ),
            asyncio.create_task(  # R
                authn.ServiceAccountController(store, self.jobs_interval).run(),
                name="devcluster-serviceaccounts",
            ),
        ]
        write_kubeconfig(self.kubeconfig_path, self.url)
        log.info("devcluster API server at %s, kubeconfig %s", self.url, self.kubeconfig_path)
        return self

    async def stop(self) -> None:
        """Stop the controllers, kill every pod process, stop the API server."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.kubelet is not None:
            await self.kubelet.shutdown()
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def __aenter__(self) -> DevCluster:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
