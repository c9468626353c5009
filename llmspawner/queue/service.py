"""``LLMQueue``: the ``llm-queue`` hub service as a traitlets application.

The hub starts it as a managed service (``python -m llmspawner.queue``, see
:mod:`llmspawner.queue.hubservice`) and gives it, as for every service
(https://jupyterhub.readthedocs.io/en/stable/reference/services.html#launching-a-hub-managed-service):
``JUPYTERHUB_SERVICE_NAME``, ``JUPYTERHUB_SERVICE_URL`` (where to listen),
``JUPYTERHUB_SERVICE_PREFIX`` (its URL prefix), ``JUPYTERHUB_API_URL``,
``JUPYTERHUB_API_TOKEN`` (its own token, used as OAuth client secret), ``JUPYTERHUB_CLIENT_ID``
and ``JUPYTERHUB_OAUTH_CALLBACK_URL``. Every setting below is a trait (``--LLMQueue.x=...``
on the command line, or a ``llm_queue_config.py`` file); defaults come from the same
``LLMSPAWNER_*`` environment variables as the hub's configuration (``llmspawner.hubconfig``),
so that the service and the spawner agree on profiles, storage and MLflow.

Start-up: load the profiles (a broken profile stops the service with the file, field and
allowed values), open the database (created or migrated), listen, then reconcile the
database against the cluster (retrying while the cluster is unreachable) and run the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from urllib.parse import urlsplit

from tornado.httpserver import HTTPServer
from traitlets import Bool, Float, Integer, List, Unicode, default, validate
from traitlets.config import Application

from .. import tracking
from ..profiles import ClusterGPUConfig, ProfileError, load_profiles

log = logging.getLogger(__name__)


def _env(*names: str, default: str = "") -> str:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


class LLMQueue(Application):
    """The batch training queue service (see the module docstring)."""

    name = "llm-queue"
    description = "Batch queue of LLaMA-Factory trainings as Kubernetes Jobs (a hub service)."

    aliases = {
        "db-url": "LLMQueue.db_url",
        "namespace": "LLMQueue.namespace",
        "image": "LLMQueue.image",
        "profiles-dir": "LLMQueue.profiles_dir",
        "log-level": "Application.log_level",
        "config": "LLMQueue.config_file",
    }

    config_file = Unicode(
        "llm_queue_config.py",
        config=True,
        help="A traitlets config file (``c.LLMQueue.x = ...``), read if it exists.",
    )

    db_url = Unicode(
        config=True,
        help="""
        SQLAlchemy URL of the queue's database; the schema is created or migrated at start.

        Default ``$LLMSPAWNER_QUEUE_DB_URL``, else ``sqlite:///llm-queue.sqlite`` in the working
        directory (the hub's, for a managed service). PostgreSQL:
        ``c.LLMQueue.db_url = "postgresql://queue:secret@db/queue"``.
        """,
    )

    @default("db_url")
    def _db_url_default(self):
        return _env("LLMSPAWNER_QUEUE_DB_URL", default="sqlite:///llm-queue.sqlite")

    namespace = Unicode(
        config=True,
        help="""
        Kubernetes namespace of the Jobs; the users' servers must be in it too, since their
        pods use the same GPU slices. Default ``$LLMSPAWNER_NAMESPACE``, else ``default``.
        """,
    )

    @default("namespace")
    def _namespace_default(self):
        return _env("LLMSPAWNER_NAMESPACE", default="default")

    image = Unicode(
        config=True,
        help="""
        Container image of the training Jobs (``llamafactory-cli`` on its ``PATH``); a
        profile's own ``image`` wins. Default ``$LLMSPAWNER_QUEUE_IMAGE``, else
        ``$LLMSPAWNER_SINGLEUSER_IMAGE`` (the user's server image has LLaMA-Factory).
        """,
    )

    @default("image")
    def _image_default(self):
        return _env(
            "LLMSPAWNER_QUEUE_IMAGE",
            "LLMSPAWNER_SINGLEUSER_IMAGE",
            default="llmspawner/singleuser:latest",
        )

    profiles_dir = Unicode(
        config=True,
        help="Folder of GPU profile files, the same as ``LLMSpawner.profiles_dir``. "
        "Default ``$LLMSPAWNER_PROFILES_DIR``, else ``/usr/local/etc/llmspawner/profiles``.",
    )

    @default("profiles_dir")
    def _profiles_dir_default(self):
        return _env("LLMSPAWNER_PROFILES_DIR", default="/usr/local/etc/llmspawner/profiles")

    gpu_shared_resource = Unicode(
        config=True,
        help="As ``LLMSpawner.gpu_shared_resource``; default ``$LLMSPAWNER_GPU_SHARED_RESOURCE``, "
        "else ``nvidia.com/gpu``.",
    )

    @default("gpu_shared_resource")
    def _shared_default(self):
        return _env("LLMSPAWNER_GPU_SHARED_RESOURCE", default="nvidia.com/gpu")

    gpu_replica_counts = List(
        Integer(),
        config=True,
        help="As ``LLMSpawner.gpu_replica_counts``; default ``$LLMSPAWNER_GPU_REPLICA_COUNTS`` "
        "(comma-separated), else ``2,4``.",
    )

    @default("gpu_replica_counts")
    def _replicas_default(self):
        value = _env("LLMSPAWNER_GPU_REPLICA_COUNTS", default="2,4")
        return [int(v) for v in value.split(",") if v.strip()]

    mig_strategy = Unicode(
        config=True,
        help="As ``LLMSpawner.mig_strategy``; default ``$LLMSPAWNER_MIG_STRATEGY``, "
        "else ``mixed``.",
    )

    @default("mig_strategy")
    def _mig_default(self):
        return _env("LLMSPAWNER_MIG_STRATEGY", default="mixed")

    storage_claim_name = Unicode(
        config=True,
        help="The shared PVC, as ``LLMSpawner.storage_claim_name``. Default "
        "``$LLMSPAWNER_STORAGE_CLAIM``, else ``llm-storage``.",
    )

    @default("storage_claim_name")
    def _claim_default(self):
        return _env("LLMSPAWNER_STORAGE_CLAIM", default="llm-storage")

    mlflow_tracking_uri = Unicode(
        config=True,
        help="MLflow URL for the Jobs' pods and this service, as "
        "``LLMSpawner.mlflow_tracking_uri``. Default ``$LLMSPAWNER_MLFLOW_TRACKING_URI``; "
        "empty: no tracking.",
    )

    @default("mlflow_tracking_uri")
    def _mlflow_default(self):
        return _env("LLMSPAWNER_MLFLOW_TRACKING_URI")

    mlflow_experiment_template = Unicode(
        config=True,
        help="A user's experiment name, as ``LLMSpawner.mlflow_experiment_template``; default "
        "``$LLMSPAWNER_MLFLOW_EXPERIMENT_TEMPLATE``, else ``{username}-experiments``.",
    )

    @default("mlflow_experiment_template")
    def _template_default(self):
        return _env(
            "LLMSPAWNER_MLFLOW_EXPERIMENT_TEMPLATE", default=tracking.DEFAULT_EXPERIMENT_TEMPLATE
        )

    @validate("mlflow_experiment_template")
    def _check_template(self, proposal):
        try:
            return tracking.check_experiment_template(proposal["value"])
        except ValueError as e:
            from traitlets import TraitError

            raise TraitError(f"LLMQueue.mlflow_experiment_template: {e}") from None

    mlflow_ui_url = Unicode(
        config=True,
        help="MLflow URL in links shown to users (default: ``mlflow_tracking_uri``), e.g. "
        "``https://hub.example.org/mlflow`` when the pods use ``http://mlflow:5000``. "
        "Default ``$LLMSPAWNER_MLFLOW_UI_URL``.",
    )

    @default("mlflow_ui_url")
    def _mlflow_ui_default(self):
        return _env("LLMSPAWNER_MLFLOW_UI_URL")

    default_max_running = Integer(
        1,
        config=True,
        help="Admitted or running jobs per user, unless an admin set the user's own limit "
        "(``PUT api/users/<name>/limit``).",
    )

    kueue_queue = Unicode(
        config=True,
        help="""
        Kueue LocalQueue name. When set, every job becomes a suspended Job labelled
        ``kueue.x-k8s.io/queue-name`` at once and Kueue admits it; this service only tracks
        states. Default ``$LLMSPAWNER_QUEUE_KUEUE``; empty: this service admits.
        """,
    )

    @default("kueue_queue")
    def _kueue_default(self):
        return _env("LLMSPAWNER_QUEUE_KUEUE")

    backoff_limit = Integer(
        0, config=True, help="Retries of a failed training pod (the Job's ``backoffLimit``)."
    )
    ttl_seconds_after_finished = Integer(
        86400,
        config=True,
        help="Seconds a finished Job and its pod (and so its log) are kept "
        "(``ttlSecondsAfterFinished``).",
    )
    service_account = Unicode(
        "", config=True, help="Service account of the Jobs' pods (empty: the namespace's)."
    )
    unschedulable_timeout = Float(
        600.0,
        config=True,
        help="Seconds an admitted job's pod may stay unschedulable before it fails.",
    )
    admission_interval = Float(
        5.0,
        config=True,
        help="Seconds between two queue passes when no submit, cancel or watch event "
        "triggers one earlier.",
    )
    capacity_ttl = Float(
        2.0, config=True, help="Seconds a Node/Pod listing for free GPU slices is reused."
    )
    k8s_request_timeout = Float(10.0, config=True, help="Seconds per Kubernetes API request.")

    admin_scope = Unicode(
        "custom:llm-queue:admin",
        config=True,
        help="A token with this scope is a queue admin (declared by ``hubservice``).",
    )
    admins_from_hub = Bool(
        True, config=True, help="Hub admins are queue admins (with any token that may use it)."
    )

    access_scopes = List(
        Unicode(),
        config=True,
        help="""
        Scopes of which a token needs one to use the service. Default
        ``$JUPYTERHUB_OAUTH_ACCESS_SCOPES`` (set by the hub), else
        ``access:services!service=<JUPYTERHUB_SERVICE_NAME>``. Never empty: JupyterHub's
        ``HubAuth`` lets every valid token in when no scope is required.
        """,
    )

    @default("access_scopes")
    def _access_default(self):
        import json

        if os.environ.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES"):
            return sorted(json.loads(os.environ["JUPYTERHUB_OAUTH_ACCESS_SCOPES"]))
        return [f"access:services!service={_env('JUPYTERHUB_SERVICE_NAME', default='llm-queue')}"]

    @validate("access_scopes")
    def _check_access(self, proposal):
        from traitlets import TraitError

        if not proposal["value"]:
            raise TraitError("LLMQueue.access_scopes must not be empty")
        return proposal["value"]

    bind_url = Unicode(
        config=True,
        help="Where to listen. Default ``$LLMSPAWNER_QUEUE_BIND_URL``, else "
        "``$JUPYTERHUB_SERVICE_URL``, else ``http://127.0.0.1:10101``. Under z2jh the "
        "service's URL names the hub's Service (``http://hub:10101``), which the pod cannot "
        "bind: set ``LLMSPAWNER_QUEUE_BIND_URL=http://0.0.0.0:10101`` there.",
    )

    @default("bind_url")
    def _bind_default(self):
        return _env(
            "LLMSPAWNER_QUEUE_BIND_URL", "JUPYTERHUB_SERVICE_URL", default="http://127.0.0.1:10101"
        )

    hub_api_url = Unicode(
        config=True,
        help="The hub's API URL for identifying callers. Default "
        "``$LLMSPAWNER_HUB_API_URL``, else ``$JUPYTERHUB_API_URL`` (HubOAuth's own default). "
        "Under z2jh that names the hub's Service, which the hub's pod may not reach through "
        "its own network policy; ``http://localhost:8081/hub/api`` always works there.",
    )

    @default("hub_api_url")
    def _hub_api_url_default(self):
        return _env("LLMSPAWNER_HUB_API_URL")

    service_prefix = Unicode(
        config=True,
        help="URL prefix. Default ``$JUPYTERHUB_SERVICE_PREFIX``, else ``/services/llm-queue/``.",
    )

    @default("service_prefix")
    def _prefix_default(self):
        return _env("JUPYTERHUB_SERVICE_PREFIX", default="/services/llm-queue/")

    hub_prefix = Unicode(
        config=True,
        help="The hub's URL prefix, for its stylesheet in the pages. Default "
        "``$JUPYTERHUB_BASE_URL`` + ``hub/``.",
    )

    @default("hub_prefix")
    def _hub_prefix_default(self):
        return _env("JUPYTERHUB_BASE_URL", default="/").rstrip("/") + "/hub/"

    # -- running ------------------------------------------------------------------------

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file and os.path.exists(self.config_file):
            self.load_config_file(self.config_file)
        logging.getLogger("llmspawner").setLevel(self.log_level)
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=self.log_level, format="[%(levelname)s %(asctime)s %(name)s] %(message)s"
            )

    def cluster_config(self) -> ClusterGPUConfig:
        return ClusterGPUConfig(
            shared_resource=self.gpu_shared_resource,
            replica_counts=tuple(self.gpu_replica_counts),
            mig_strategy=self.mig_strategy,
        )

    def build(self):
        """Build the queue and the web application (no network I/O yet).

        Returns:
            ``(queue, app)``.

        Raises:
            SystemExit: a profile file is invalid (message names file, field, allowed values).
        """
        from jupyterhub.services.auth import HubOAuth

        from . import db
        from .app import make_app, page_routes
        from .backend import KubeBackend, MlflowRuns
        from .reconcile import JobQueue, Settings

        cluster = self.cluster_config()
        try:
            profiles = load_profiles(self.profiles_dir, cluster)
        except ProfileError as e:
            self.exit_error(f"llm-queue: invalid GPU profile: {e}")
        sessions = db.connect(self.db_url)
        backend = KubeBackend(
            self.namespace, request_timeout=self.k8s_request_timeout, capacity_ttl=self.capacity_ttl
        )
        mlflow = (
            MlflowRuns(self.mlflow_tracking_uri, ui_url=self.mlflow_ui_url)
            if self.mlflow_tracking_uri
            else None
        )
        settings = Settings(
            image=self.image,
            claim_name=self.storage_claim_name,
            tracking_uri=self.mlflow_tracking_uri,
            mlflow_ui_url=self.mlflow_ui_url,
            experiment_template=self.mlflow_experiment_template,
            default_limit=self.default_max_running,
            kueue_queue=self.kueue_queue or None,
            backoff_limit=self.backoff_limit,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished,
            service_account=self.service_account or None,
            unschedulable_timeout=self.unschedulable_timeout,
            interval=self.admission_interval,
        )
        queue = JobQueue(sessions, backend, profiles, cluster, settings, mlflow=mlflow)
        api_url = {"api_url": self.hub_api_url} if self.hub_api_url else {}
        hub_auth = HubOAuth(parent=self, access_scopes=set(self.access_scopes), **api_url)
        app = make_app(
            queue=queue,
            hub_auth=hub_auth,
            prefix=self.service_prefix,
            access_scopes=set(self.access_scopes),
            admin_scope=self.admin_scope,
            admins_from_hub=self.admins_from_hub,
            cookie_secret=secrets.token_bytes(32),
            extra_routes=page_routes(self.service_prefix),
            hub_prefix=self.hub_prefix,
        )
        return queue, app

    def exit_error(self, message: str):
        log.critical("%s", message)
        raise SystemExit(message)

    async def serve(self) -> None:
        """Listen, reconcile, and run the loop until SIGTERM/SIGINT."""
        from .app import MAX_BODY

        queue, app = self.build()
        url = urlsplit(self.bind_url)
        server = HTTPServer(app, xheaders=True, max_body_size=MAX_BODY + 4096)
        server.listen(url.port or 80, url.hostname or "")
        log.info(
            "llm-queue listening on %s%s (namespace %s, db %s)",
            self.bind_url.rstrip("/"),
            self.service_prefix,
            self.namespace,
            _redact(self.db_url),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [
            asyncio.create_task(self._start_loop(queue), name="llm-queue-loop"),
            asyncio.create_task(queue.backend.watch_changes(queue.wake), name="llm-queue-watch"),
        ]
        await stop.wait()
        log.info("llm-queue stopping")
        server.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await queue.backend.close()

    async def _start_loop(self, queue) -> None:
        delay = 1.0
        while True:
            try:
                orphans = await queue.startup()
                break
            except Exception as e:
                log.warning("Cannot reconcile with the cluster yet (retry in %.0f s): %s", delay, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if orphans:
            log.warning("Jobs without a queue row (left alone): %s", ", ".join(orphans))
        await queue.run()

    def start(self):
        asyncio.run(self.serve())


def _redact(url: str) -> str:
    """A database URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def main(argv=None) -> None:
    """Entry point of ``python -m llmspawner.queue``."""
    app = LLMQueue.instance()
    app.initialize(argv if argv is not None else sys.argv[1:])
    app.start()
