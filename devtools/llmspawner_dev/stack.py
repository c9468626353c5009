"""The whole platform on one machine: emulated cluster, MLflow, OIDC provider and hub.

:class:`DevStack` is what ``llmspawner dev`` runs and what the e2e tests' ``stack`` fixture
uses, so that both exercise the same stack::

    with DevStack(Path(".dev")) as stack:
        print(stack.hub_url)

Every part is a child process (see :mod:`llmspawner_dev.processes`) with its log in
``<workdir>/logs/<part>.log``, except MLflow, which by default is the deploy kit's
Deployment (deploy/manifests/mlflow) running as a pod of the emulated cluster
(:mod:`llmspawner_dev.kit`; its pod's log is written to ``logs/mlflow.log`` at the stop);
``LLMSPAWNER_MLFLOW=process`` runs ``mlflow server`` as a child process instead.
Start-up to ready on 2 shared cores at load ~9-10 (2026-12-02, 3 runs each): pod
75-107 s, process 160-211 s (the pod starts while the hub does; the process before it).
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from . import hubdb, identities, kit, parts, proxy
from .hubconfig import DEV_GID, DEV_UID, REPO_ROOT
from .kube import KubeClient
from .models import seed_dev_models
from .processes import (
    ChildProcess,
    StartupError,
    free_port,
    kill_strays,
    wait_http,
    wait_json_line,
)
from .reaper import start_reaper

log = logging.getLogger(__name__)


#: Name of the environment variable that marks every process of one stack.
MARKER_ENV = "LLMSPAWNER_DEV_STACK_ID"

#: Seconds each part gets between SIGTERM and SIGKILL when the stack stops.
STOP_GRACE = {"hub": 30.0, "proxy": 5.0, "oidc": 5.0, "mlflow": 10.0, "cluster": 30.0}

#: K: how the stack runs MLflow unless ``LLMSPAWNER_MLFLOW`` or ``DevStack(mlflow=)`` says
#: (``"pod"``: the deploy kit's Deployment; ``"process"``: ``mlflow server``, see DevStack).
DEFAULT_MLFLOW_MODE = "pod"


class DevStack:
    """Start and stop the dev stack; after :meth:`start`, its URLs and paths are attributes.

    Args:
        workdir: folder for state and logs (created). Holds ``cluster/`` (the emulated
            cluster's data dir; in ``"pod"`` mode MLflow's files are on its PVC,
            ``cluster/pvc/llm/mlflow-data/``), ``mlflow.db`` (``"process"`` mode),
            ``jupyterhub.sqlite``, ``logs/``.
        config_file: the hub's production config; default ``<repo>/jupyterhub_config.py``.
            The hub runs ``jupyterhub -f`` :data:`parts.DEV_HUB_CONFIG`, which applies the
            dev cluster's settings and then runs this file (``LLMSPAWNER_DEV_BASE_CONFIG``).
        namespace: the Kubernetes namespace of the user pods.
        pvc_name: the shared ReadWriteMany PVC created at start.
        timeout: seconds each part may take to become ready.
        hub_env: extra environment variables of the hub only (e.g. short timeouts in tests).
        hub_args: extra ``jupyterhub`` command-line flags, e.g. ``["--debug"]``.
        users: claims of the OIDC provider's predefined users (default
            :data:`parts.DEFAULT_USERS`: alice, bob, admin).
        host: the loopback address every part binds.
        environ: the base environment of all children (default ``os.environ``).
        on_step: called with a line of progress text (default: this module's logger).
        api_faults: a JSON file of fault rules (``devcluster.faults.load_rules``; created
            empty, re-read on change): the hub and its services then reach the cluster
            through a fault proxy (``fault_proxy``), kubectl and the stack itself directly.
        mlflow: ``"pod"``: MLflow is the deploy kit's Deployment (deploy/manifests/mlflow,
            :mod:`llmspawner_dev.kit`) in the cluster's namespace ``llm``, its data on the
            PVC ``mlflow-data``; ``"process"``: a separate ``mlflow server`` with its files
            in the workdir. Default: ``LLMSPAWNER_MLFLOW`` of ``environ``, else
            :data:`DEFAULT_MLFLOW_MODE`. Another value: ``ValueError``.

    Attributes (set by :meth:`start`):
        hub_url: the hub's public URL (through configurable-http-proxy), no trailing ``/``.
        proxy_api_url: configurable-http-proxy's REST API (:meth:`proxy_routes`).
        hub_api_url: ``<hub_url>/hub/api``.
        mlflow_url: the MLflow server's URL, ending in the hub service's prefix
            (``/services/mlflow``); :meth:`mlflow_request` calls it as MLflow's admin.
        oidc_issuer: the OIDC provider's issuer URL.
        kubeconfig: path of the emulated cluster's kubeconfig.
        cluster_url: the emulated Kubernetes API's URL.
        data_dir: the emulated cluster's data folder.
        processes: part name -> :class:`ChildProcess`.

    The proxy runs beside the hub as z2jh's proxy pod does (:mod:`llmspawner_dev.proxy`):
    the stack starts it, the hub gets ``--ConfigurableHTTPProxy.should_start=False`` and the
    shared ``CONFIGPROXY_AUTH_TOKEN``, and :meth:`restart_proxy` restarts it with no routes.

    The constructor does no I/O.
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        config_file: Path | None = None,
        namespace: str = "default",
        pvc_name: str = "llm-storage",
        timeout: float = 120.0,
        hub_env: Mapping[str, str] | None = None,
        hub_args: Sequence[str] = (),
        users: Sequence[Mapping] = parts.DEFAULT_USERS,
        host: str = "127.0.0.1",
        environ: Mapping[str, str] | None = None,
        on_step: Callable[[str], None] | None = None,
        api_faults: Path | None = None,
        hub_rbac: bool = True,
        mlflow: str | None = None,
    ):
        self.workdir = Path(workdir).resolve()
        self.config_file = Path(config_file or REPO_ROOT / "jupyterhub_config.py").resolve()
        self.namespace = namespace
        self.pvc_name = pvc_name
        self.timeout = timeout
        self.hub_env = dict(hub_env or {})
        self.hub_args = list(hub_args)
        self.users = list(users)
        self.host = host
        self.environ = dict(os.environ if environ is None else environ)
        self.on_step = on_step or log.info
        # F: ``llmspawner dev --api-faults RULES.json``: the hub and its services reach the
        # cluster through a fault proxy (devcluster.faults.StackFaults), kubectl directly.
        self.api_faults = Path(api_faults) if api_faults is not None else None
        self.fault_proxy = None
        # R: the hub and its services use ServiceAccount hub's token (z2jh's hub Role and
        # deploy/manifests/queue, llmspawner_dev.identities); False: the admin kubeconfig.
        self.hub_rbac = hub_rbac
        # K: the kit's MLflow Deployment as a pod, or the separate process.
        self.mlflow_mode = kit.mlflow_mode(
            {kit.MODE_ENV: mlflow} if mlflow else self.environ, DEFAULT_MLFLOW_MODE
        )
        self.marker = (MARKER_ENV, secrets.token_hex(8))
        # MLflow's secrets (the hub service token, its admin's password, Flask's key) and the
        # hub's encryption key: kept in the workdir, since MLflow's auth database and the hub's
        # encrypted auth state outlive a run (read at start, see workdir_secrets).
        self._mlflow_secrets: dict[str, str] = {}
        self.processes: dict[str, ChildProcess] = {}
        self.hub_url = self.hub_api_url = self.mlflow_url = self.oidc_issuer = ""
        #: K: the kit's MLflow pod's name (``"pod"`` mode, after :meth:`start`).
        self.mlflow_pod = ""
        self.proxy_api_url = ""
        self._proxy_token = secrets.token_hex(32)
        self.kubeconfig = self.cluster_url = ""
        #: N: where pods reach this machine's services (the cluster's ``host_address``).
        self.pod_host = host
        self.data_dir: Path | None = None
        self._started = False
        self._reaper = None

    # -- paths ----------------------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        """``<workdir>/logs``: one ``<part>.log`` per part."""
        return self.workdir / "logs"

    def pvc_path(self, name: str | None = None, namespace: str | None = None) -> Path:
        """Folder on this machine that holds the PVC's files in the emulated cluster.

        ``<data_dir>/pvc/<namespace>/<name>`` (the emulated cluster's layout).

        Raises:
            RuntimeError: before :meth:`start`.
        """
        if self.data_dir is None:
            raise RuntimeError("the stack is not started")
        return self.data_dir / "pvc" / (namespace or self.namespace) / (name or self.pvc_name)

    # -- start/stop -----------------------------------------------------------------------

    def __enter__(self) -> DevStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _child(self, name: str, argv: list[str], env: Mapping[str, str]) -> ChildProcess:
        child = ChildProcess(
            name, argv, log_path=self.logs_dir / f"{name}.log", env=env, cwd=self.workdir
        )
        self.processes[name] = child
        child.start()
        return child

    def start(self) -> DevStack:
        """Start every part and wait until each is ready; return ``self``.

        On any failure (or Ctrl-C), everything started so far is stopped before the error
        propagates.

        Raises:
            StartupError: a part exited or was not ready within ``timeout`` seconds; the
                message has the part's last log lines.
            RuntimeError: already started, or the hub's config file is missing.
        """
        if self._started:
            raise RuntimeError("the stack is already started")
        if not self.config_file.is_file():
            raise RuntimeError(f"the hub's config file {self.config_file} does not exist")
        self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        # The process way's auth database, and the kit pod's on its PVC (K).
        for auth_db in (self.workdir / "mlflow-auth.db", self._mlflow_data / "basic_auth.db"):
            if auth_db.exists() and not (self.workdir / SECRETS_FILE).exists():
                # Made by a run that kept no secrets: its MLflow admin password is lost.
                moved = auth_db.rename(
                    auth_db.with_name(f"{auth_db.name}.{time.strftime('%Y%m%d-%H%M%S')}")
                )
                log.warning(
                    "MLflow's auth database had an unknown admin password: moved to %s", moved
                )
        kept = workdir_secrets(self.workdir / SECRETS_FILE)
        self._mlflow_secrets = {
            k: kept[k] for k in ("service_token", "admin_password", "secret_key")
        }
        self._crypt_key = kept["crypt_key"]
        # Ends the parts even if this process is killed with SIGKILL (see reaper.py).
        self._reaper = start_reaper(marker=self.marker, under=self.workdir, env=self.environ)
        env = parts.base_environment(self.environ, marker=self.marker)
        host = self.host
        t0 = time.monotonic()

        pod_mode = self.mlflow_mode == "pod"  # K
        # The three independent parts start together, then each is awaited (K: in pod mode
        # MLflow is a pod of the cluster, applied once the cluster answers).
        cluster_argv = parts.devcluster_command(data_dir=self.workdir / "cluster")
        if pod_mode:  # K: the kit's images run as this checkout's environment
            cluster_argv += kit.image_map(sys.prefix)
        cluster = self._child("cluster", cluster_argv, env)
        oidc_port = free_port(host)
        oidc = self._child(
            "oidc", parts.oidc_command(host=host, port=oidc_port, users=self.users), env
        )

        info = wait_json_line(
            cluster.log_path,
            keys=("url", "kubeconfig", "data_dir"),
            timeout=self.timeout,
            process=cluster,
        )
        self.cluster_url = info["url"].rstrip("/")
        self.kubeconfig = str(info["kubeconfig"])
        self.data_dir = Path(info["data_dir"])
        self.on_step(f"cluster ready at {self.cluster_url} ({time.monotonic() - t0:.1f} s)")
        # N: what pods must reach (the hub's API, MLflow, the queue) listens where pods reach
        # this machine: the pod bridge's gateway when each pod has its own network namespace
        # (devcluster.podnet), else ``host``; the browser's URLs stay on ``host``.
        pod_host = self.pod_host = info.get("host_address") or host
        # MLflow is the hub service `mlflow`: it checks tokens with the hub's API (on
        # hub_port, taken now), shares the service token and its admin password with the hub.
        hub_port = free_port(pod_host)
        mlflow_hub_api_url = f"http://{pod_host}:{hub_port}/hub/api"
        mlflow = None
        if not pod_mode:
            mlflow_port = free_port(pod_host)
            auth_config = self.workdir / "mlflow-auth.ini"
            auth_config.write_text(parts.mlflow_auth_config(self.workdir))
            mlflow_env = parts.mlflow_auth_environment(
                config_path=auth_config,
                hub_api_url=mlflow_hub_api_url,
                service_token=self._mlflow_secrets["service_token"],
                admin_password=self._mlflow_secrets["admin_password"],
                secret_key=self._mlflow_secrets["secret_key"],
            )
            mlflow = self._child(
                "mlflow",
                parts.mlflow_command(
                    workdir=self.workdir,
                    host=pod_host,
                    port=mlflow_port,
                    auth=True,
                    static_prefix=parts.MLFLOW_PREFIX,
                ),
                {**env, **parts.mlflow_environment(), **mlflow_env},
            )
        if pod_mode:  # K: the kit's MLflow objects, then on with the other parts
            self._apply_mlflow_kit(mlflow_hub_api_url, host)
        hub_kubeconfig = self.kubeconfig
        if self.hub_rbac:  # R: the hub (and its queue) as ServiceAccount hub, real RBAC
            hub_kubeconfig = str(
                identities.hub_kubeconfig(
                    self.kubeconfig, self.namespace, self.workdir / "hub-kubeconfig"
                )
            )
            self.on_step(
                f"hub identity: serviceaccount {self.namespace}/hub "
                "(z2jh hub Role, deploy/manifests/queue RBAC)"
            )
        if self.api_faults is not None:  # F: fault proxy between the hub and the cluster
            from devcluster.faults import StackFaults

            self.fault_proxy = StackFaults(
                self.cluster_url,
                self.api_faults,
                self.workdir / "api-faults-kubeconfig",
                hub_kubeconfig,  # R: the hub's own identity through the proxy
            ).start()
            hub_kubeconfig = str(self.fault_proxy.kubeconfig_path)
            self.on_step(f"fault proxy at {self.fault_proxy.url}, rules in {self.api_faults}")

        self.oidc_issuer = f"http://{host}:{oidc_port}"
        discovery = wait_http(
            f"{self.oidc_issuer}/.well-known/openid-configuration",
            timeout=self.timeout,
            process=oidc,
        ).json()
        self.on_step(f"OIDC provider ready at {self.oidc_issuer} ({time.monotonic() - t0:.1f} s)")

        if pod_mode:  # K: its pod's IP now (the hub's MLflow URL); its readiness once the hub is up
            self.mlflow_url = kit.pod_url(
                self._wait_mlflow_pod(cluster, ready=False), parts.MLFLOW_PREFIX
            )
        else:
            self.mlflow_url = f"http://{pod_host}:{mlflow_port}{parts.MLFLOW_PREFIX}"
            wait_http(f"{self.mlflow_url}/health", timeout=self.timeout, process=mlflow)
            self.on_step(f"MLflow ready at {self.mlflow_url} ({time.monotonic() - t0:.1f} s)")

        self._create_storage()
        self.on_step(f"PVC {self.namespace}/{self.pvc_name} ready at {self.pvc_path()}")

        port, proxy_api_port = free_port(host), free_port(host)
        self.hub_url = f"http://{host}:{port}"
        self.hub_api_url = f"{self.hub_url}/hub/api"
        # configurable-http-proxy first, then the hub, which only calls its API (z2jh's way).
        self.proxy_api_url = f"http://{host}:{proxy_api_port}"
        executable = proxy.chp_executable(env)
        if executable is None:
            raise StartupError("proxy", f"{proxy.CHP} is not on PATH: run scripts/install.sh", "")
        proxy_child = self._child(
            "proxy",
            proxy.chp_command(
                executable=executable,
                host=host,
                port=port,
                api_port=proxy_api_port,
                hub_url=f"http://{pod_host}:{hub_port}",  # N
            ),
            {**env, proxy.TOKEN_ENV: self._proxy_token},
        )
        self._wait_proxy(proxy_child)
        self.on_step(f"proxy ready at {self.hub_url} ({time.monotonic() - t0:.1f} s)")
        hub_env = dict(env)
        hub_env[proxy.TOKEN_ENV] = self._proxy_token
        hub_env.update(
            parts.hub_environment(
                kubeconfig=hub_kubeconfig,
                namespace=self.namespace,
                mlflow_url=self.mlflow_url,
                oidc_issuer=self.oidc_issuer,
                oidc_endpoints=discovery,
                hub_url=self.hub_url,
                base_config=self.config_file,
            )
        )
        hub_env.update(
            parts.mlflow_hub_environment(
                service_token=self._mlflow_secrets["service_token"],
                admin_password=self._mlflow_secrets["admin_password"],
            )
        )
        # Auth state, and with it the login's refresh at the provider (llmspawner.auth),
        # needs the hub's encryption key: one per workdir, as the database it encrypts.
        hub_env.setdefault("JUPYTERHUB_CRYPT_KEY", self._crypt_key)
        if pod_host != host:  # N: the queue service where the users' pods reach it
            hub_env.setdefault(
                "LLMSPAWNER_QUEUE_SERVICE_URL", f"http://{pod_host}:{free_port(pod_host)}"
            )
        hub_env.update(self.hub_env)
        moved = hubdb.set_aside_if_newer(self.workdir / "jupyterhub.sqlite")
        if moved is not None:
            log.warning(
                "the hub database was written by a newer JupyterHub than the installed one; "
                "moved to %s, the hub starts with a new one (log in again; folders are kept)",
                moved,
            )
        hub = self._child(
            "hub",
            parts.hub_command(
                config_file=parts.DEV_HUB_CONFIG,
                workdir=self.workdir,
                host=host,
                hub_host=pod_host,  # N
                port=port,
                hub_port=hub_port,
                proxy_api_port=proxy_api_port,
                extra_args=[
                    "--ConfigurableHTTPProxy.should_start=False",
                    # A newer JupyterHub than the workdir's database's upgrades it (backup first).
                    "--JupyterHub.upgrade_db=True",
                    *self.hub_args,
                ],
            ),
            hub_env,
        )
        # The hub on its own port first: asked through the proxy before it listens, every
        # poll is a "503 GET /hub/health" error (and a failed error page) in the proxy's log.
        wait_http(f"http://{pod_host}:{hub_port}/hub/health", timeout=self.timeout, process=hub)
        # Then through the proxy: proves that configurable-http-proxy reaches the hub.
        wait_http(f"{self.hub_url}/hub/health", timeout=self.timeout, process=hub)
        self.on_step(f"hub ready at {self.hub_url} ({time.monotonic() - t0:.1f} s)")
        if pod_mode:  # K: its init containers and start ran while the hub started
            pod = self._wait_mlflow_pod(cluster, ready=True)
            took = ", ".join(f"{k} {v} s" for k, v in kit.container_seconds(pod).items())
            self.on_step(
                f"MLflow ready at {self.mlflow_url} ({time.monotonic() - t0:.1f} s; pod "
                f"{kit.NAMESPACE}/{self.mlflow_pod} of the deploy kit's Deployment: {took})"
            )
        self._wait_service_routes(hub, hub_env, t0)

    @property
    def _mlflow_data(self) -> Path:
        """K: the folder of the kit's PVC ``llm/mlflow-data`` (MLflow's SQLite files and
        artifacts in ``"pod"`` mode): ``<workdir>/cluster/pvc/llm/mlflow-data``."""
        return self.workdir / "cluster" / "pvc" / kit.NAMESPACE / kit.PVC

    def _apply_mlflow_kit(self, hub_api_url: str, hub_host: str) -> None:
        """K: create the Namespace ``llm``, the Secret ``mlflow-auth`` (this stack's secrets)
        and the kit's MLflow objects from deploy/manifests/mlflow, with the dev overrides of
        :func:`llmspawner_dev.kit.dev_overrides`; the PVC's folder is made first, for uid
        1000, with a process-way workdir's MLflow files copied in once.

        Raises:
            StartupError: (part ``mlflow``) a kit file cannot be read or the API refused an
                object (the message says which).
        """
        from .kube import KubeError

        copied = kit.prepare_data_folder(
            self._mlflow_data, workdir=self.workdir, chown=os.geteuid() == 0
        )
        if copied:
            self.on_step(f"MLflow: copied {', '.join(copied)} of this workdir to its PVC")
        try:
            objects = kit.dev_overrides(
                kit.load_kustomization(),
                hub_api_url=hub_api_url,
                hub_host=hub_host,
                admin_groups=parts.MLFLOW_ADMIN_GROUPS,
            )
            with self.kube() as kube:
                kit.apply(
                    kube,
                    [
                        kit.namespace_object(),
                        kit.auth_secret(
                            service_token=self._mlflow_secrets["service_token"],
                            admin_password=self._mlflow_secrets["admin_password"],
                            secret_key=self._mlflow_secrets["secret_key"],
                        ),
                        *objects,
                    ],
                )
        except (kit.KitError, KubeError) as e:
            raise StartupError("mlflow", f"the deploy kit's MLflow: {e}") from e
        self.on_step(
            f"MLflow: applied {kit.KIT_DIR.relative_to(REPO_ROOT)} "
            f"({', '.join(o['kind'] for o in objects)}) in namespace {kit.NAMESPACE}"
        )

    def _wait_mlflow_pod(self, cluster: ChildProcess, *, ready: bool) -> dict:
        """K: wait for the kit's MLflow pod to have an IP (``ready=False``) or to pass its
        readiness probe (``<prefix>/health``); return it. At most ``timeout`` seconds.

        Raises:
            StartupError: (part ``mlflow``) the pod failed, the cluster exited, or time ran
                out; with the pod's containers' log tails.
        """
        with self.kube() as kube:
            try:
                pod = kit.wait_pod(
                    kube, ready=ready, timeout=self.timeout, alive=lambda: cluster.running
                )
            except RuntimeError as e:
                raise StartupError("mlflow", str(e), self._mlflow_pod_logs(kube)) from e
        self.mlflow_pod = pod["metadata"]["name"]
        return pod

    def _mlflow_pod_logs(self, kube, lines: int = 40) -> str:
        """K: the log tails of the kit's MLflow pod's containers (init ones first), one
        header each; ``""`` when there is no pod. Never raises."""
        out = []
        try:
            for pod in kube.list_pods(kit.NAMESPACE, label_selector=kit.SELECTOR):
                name = pod["metadata"]["name"]
                spec = pod.get("spec") or {}
                for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                    text = kube.pod_logs(kit.NAMESPACE, name, container=c["name"], tail_lines=lines)
                    out.append(f"--- pod {kit.NAMESPACE}/{name} [{c['name']}] ---\n{text.rstrip()}")
        except Exception as e:  # diagnostics only
            out.append(f"(MLflow pod logs unavailable: {e})")
        return "\n".join(out)

    def _wait_service_routes(self, hub: ChildProcess, hub_env: Mapping[str, str], t0) -> None:
        """Wait until the hub's services answer through the proxy: the hub answers
        ``/hub/health`` a moment before it has added their routes to configurable-http-proxy.

        MLflow (unless ``LLMSPAWNER_MLFLOW_SERVICE=0``): ``/services/mlflow/health`` 200
        ``OK``; the queue (unless ``LLMSPAWNER_QUEUE=0``): ``/services/llm-queue/api/jobs``
        without a token, the queue's own 401 (its "starting" answer is a 503 JSON; without a
        route the hub answers). At most ``timeout`` seconds each.

        Raises:
            StartupError: the hub exited, or a service did not answer in time (the hub's log
                tail, which says why, e.g. "Cannot connect to ... service").
        """
        from llmspawner.settings import parse_bool

        waits = []
        if parse_bool(
            hub_env.get("LLMSPAWNER_MLFLOW_SERVICE"), name="LLMSPAWNER_MLFLOW_SERVICE", default=True
        ):
            waits.append(
                (
                    "MLflow",
                    f"{self.hub_url}{parts.MLFLOW_PREFIX}/health",
                    lambda r: r.status_code == 200 and r.text.strip() == "OK",
                )
            )
        if parse_bool(hub_env.get("LLMSPAWNER_QUEUE"), name="LLMSPAWNER_QUEUE", default=True):
            waits.append(
                (
                    "queue",
                    f"{self.hub_url}/services/llm-queue/api/jobs",
                    lambda r: r.status_code == 401,
                )
            )
        for name, url, ok in waits:
            wait_http(url, timeout=self.timeout, process=hub, ok=ok)
            self.on_step(
                f"{name} answers through the proxy at {url} ({time.monotonic() - t0:.1f} s)"
            )

    def _wait_proxy(self, child: ChildProcess) -> None:
        """Wait until the proxy's API answers (any status: it listens on both ports then)."""
        wait_http(
            f"{self.proxy_api_url}/api/routes",
            timeout=self.timeout,
            process=child,
            ok=lambda response: True,
        )

    def restart_proxy(self, grace: float = 5.0) -> None:
        """Stop configurable-http-proxy and start a new one on the same ports, as when z2jh's
        proxy pod restarts: the new one has no routes (its default target is the hub) until
        the hub adds them again. Returns once the new proxy answers.

        Args:
            grace: seconds between SIGTERM and SIGKILL for the old proxy.

        Raises:
            RuntimeError: before :meth:`start`.
            StartupError: the new proxy did not answer within ``timeout`` seconds.
        """
        child = self.processes.get("proxy")
        if child is None:
            raise RuntimeError("the stack is not started")
        child.restart(grace)
        self._wait_proxy(child)

    def proxy_routes(self) -> dict[str, dict]:
        """The proxy's routing table from its own API: path -> ``{"target", ...}``.

        Raises:
            httpx.HTTPError: the proxy did not answer 200.
        """
        response = httpx.get(
            f"{self.proxy_api_url}/api/routes",
            headers={"Authorization": f"token {self._proxy_token}"},
            timeout=10.0,
        )
        response.raise_for_status()
        return response.json()

    def _create_storage(self) -> None:
        """Create the shared PVC through the Kubernetes API, ``models/`` in it (with
        SmolLM2-135M-Instruct, :func:`llmspawner_dev.models.seed_dev_models`), and the batch
        queue's PriorityClasses (an operator's one-time set-up on a real cluster)."""
        from llmspawner.queue.k8s_objects import build_priority_classes

        with KubeClient.from_kubeconfig(self.kubeconfig) as kube:
            kube.ensure_pvc(self.namespace, self.pvc_name, access_modes=("ReadWriteMany",))
            for priority_class in build_priority_classes():
                kube.ensure_object("/apis/scheduling.k8s.io/v1/priorityclasses", priority_class)
        (self.pvc_path() / "models").mkdir(parents=True, exist_ok=True)
        # The real base model (converted once into the user's cache, then hard-linked).
        seed_dev_models(self.pvc_path() / "models", on_step=self.on_step)
        given = give_back_root_files(self.pvc_path() / "users", DEV_UID, DEV_GID)
        if given:
            log.warning(
                "gave %d root-owned file(s) in the users' folders to %d:%d (left by a dev "
                "stack whose pods ran as root)",
                given,
                DEV_UID,
                DEV_GID,
            )

    def stop(self) -> None:
        """Stop every part (hub first, cluster last) and end any process they left behind.

        Each part gets SIGTERM, then SIGKILL after its grace period (:data:`STOP_GRACE`).
        Safe to call more than once.
        """
        atexit.unregister(self.stop)
        for name in ("hub", "proxy", "oidc", "mlflow", "cluster"):
            child = self.processes.get(name)
            if name == "cluster" and self.mlflow_pod and child is not None and child.running:
                self._save_mlflow_log()  # K: the pod's log outlives the cluster there
            if child is not None and child.popen is not None:
                status = child.stop(STOP_GRACE.get(name, 10.0))
                log.debug("%s stopped with status %s", name, status)
        if self.fault_proxy is not None:  # F: after the hub, before the strays
            self.fault_proxy.stop()
            self.fault_proxy = None
        strays = kill_strays(marker=self.marker, under=self.workdir)
        if strays:
            log.warning("ended %d stray process(es) of the dev stack: %s", len(strays), strays)
        if self._reaper is not None:
            self._reaper.stdin.close()
            try:
                self._reaper.wait(30)
            except subprocess.TimeoutExpired:  # pragma: no cover - it has nothing left to do
                self._reaper.kill()
                self._reaper.wait()
            self._reaper = None

    def _save_mlflow_log(self) -> None:
        """K: write the kit's MLflow pod's logs to ``logs/mlflow.log`` (the process way's
        file), before the cluster, which holds them, stops. Never raises."""
        try:
            with self.kube() as kube:
                text = self._mlflow_pod_logs(kube, lines=2000)
            (self.logs_dir / "mlflow.log").write_text(text + "\n")
        except Exception as e:  # diagnostics only
            log.debug("cannot keep the MLflow pod's log: %s", e)

    def log_tails(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of every part's log, each under a header."""
        out = []
        for name, child in self.processes.items():
            status = "running" if child.running else f"exited {child.returncode}"
            out.append(f"--- {name} ({status}): {child.log_path} ---\n{child.log_tail(lines)}")
        return "\n".join(out)

    # -- conveniences for tests and the smoke check ----------------------------------------

    def pod_log_tails(self, lines: int = 30) -> str:
        """Return the last ``lines`` log lines of every pod in the namespace ('' if none).

        Never raises: when the cluster cannot be asked, the reason is returned instead.
        """
        if not self.kubeconfig:
            return ""
        out = []
        try:
            with self.kube() as kube:
                if self.mlflow_pod:  # K: the kit's MLflow pod, in its own namespace
                    out.append(self._mlflow_pod_logs(kube, lines))
                for pod in kube.list_pods(self.namespace):
                    name = pod["metadata"]["name"]
                    phase = (pod.get("status") or {}).get("phase")
                    text = kube.pod_logs(self.namespace, name, tail_lines=lines)
                    out.append(f"--- pod {self.namespace}/{name} ({phase}) ---\n{text.rstrip()}")
        except Exception as e:  # diagnostics only: never hide the original failure
            return f"(pod logs unavailable: {e})"
        return "\n".join(out)

    def kube(self) -> KubeClient:
        """Return a new :class:`KubeClient` for the emulated cluster (close it after use)."""
        return KubeClient.from_kubeconfig(self.kubeconfig)

    @property
    def mlflow_admin_auth(self) -> tuple[str, str]:
        """MLflow's admin credential ``(username, password)`` (httpx's ``auth=``)."""
        from llmspawner.mlflow_auth import DEFAULT_ADMIN_USERNAME

        return (DEFAULT_ADMIN_USERNAME, self._mlflow_secrets["admin_password"])

    def mlflow_request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One call of MLflow's REST API (``<mlflow_url>/api/2.0/mlflow/<path>``) as MLflow's
        admin; ``kwargs`` go to :func:`httpx.request`."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.request(
            method,
            f"{self.mlflow_url}/api/2.0/mlflow/{path}",
            auth=self.mlflow_admin_auth,
            **kwargs,
        )

    def mlflow_experiment(self, name: str) -> dict | None:
        """Return MLflow's experiment ``name`` (the ``experiment`` object), or ``None`` (404).

        Raises:
            httpx.HTTPStatusError: MLflow answered another error.
        """
        response = self.mlflow_request(
            "GET", "experiments/get-by-name", params={"experiment_name": name}
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()["experiment"]


__all__ = ["DevStack", "StartupError", "REPO_ROOT", "MARKER_ENV"]


def give_back_root_files(users: Path, uid: int, gid: int) -> int:
    """Give every root-owned file and folder under ``users`` (the shared PVC's ``users/``) to
    ``uid:gid``, and return how many were changed.

    Dev stacks before the emulated kubelet applied ``runAsUser`` ran every pod as root, so a
    workdir they left has root-owned files in the users' folders, which a server running as
    ``uid`` cannot write (``PermissionError`` at its start). A real cluster never has them:
    its servers always ran as the image's user. Does nothing unless this process is root
    (only root can change an owner) or when ``users`` does not exist.
    """
    if os.geteuid() != 0 or not users.is_dir():
        return 0
    changed = 0
    for root, dirs, files in os.walk(users):  # users/ itself stays the cluster's
        for name in (*dirs, *files):
            path = os.path.join(root, name)
            if os.lstat(path).st_uid == 0:
                os.lchown(path, uid, gid)
                changed += 1
    return changed


#: The workdir's file of the secrets that outlive a run (mode 0600).
SECRETS_FILE = "dev-secrets.json"
_SECRET_KEYS = ("service_token", "admin_password", "secret_key", "crypt_key")


def workdir_secrets(path: Path) -> dict[str, str]:
    """The dev stack's lasting secrets, from ``path`` (JSON), made and written there (mode
    0600) where missing: ``service_token`` (MLflow's hub service token),
    ``admin_password`` (MLflow's admin: its auth database keeps the first one it was started
    with, so a new one would lock the stack out at the next run), ``secret_key`` (Flask's),
    ``crypt_key`` (``JUPYTERHUB_CRYPT_KEY``: the hub's database keeps auth state encrypted
    with it). An unreadable file is replaced (logged)."""
    import json

    kept: dict[str, str] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            kept = {k: v for k, v in data.items() if k in _SECRET_KEYS and isinstance(v, str) and v}
        except (OSError, ValueError, AttributeError) as e:
            log.warning("cannot read %s (%s): making new secrets", path, e)
    if all(k in kept for k in _SECRET_KEYS):
        return kept
    for key in _SECRET_KEYS:
        kept.setdefault(
            key, secrets.token_hex(32) if key == "crypt_key" else secrets.token_urlsafe(24)
        )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(kept, f)
    return kept
