"""``LLMQueue``: the ``llm-queue`` hub service as a traitlets application.

The hub starts it as a managed service (``python -m llmspawner.queue``, see
:mod:`llmspawner.queue.hubservice`) and gives it, as for every service
(https://jupyterhub.readthedocs.io/en/stable/reference/services.html#launching-a-hub-managed-service):
``JUPYTERHUB_SERVICE_NAME``, ``JUPYTERHUB_SERVICE_URL`` (where to listen),
``JUPYTERHUB_SERVICE_PREFIX`` (its URL prefix), ``JUPYTERHUB_API_URL``,
``JUPYTERHUB_API_TOKEN`` (its own token, used as OAuth client secret), ``JUPYTERHUB_CLIENT_ID``
and ``JUPYTERHUB_OAUTH_CALLBACK_URL``.

The platform settings (profiles folder, namespace, image, uid/gid, storage, MLflow, GPUs) are
the hub's own: :meth:`llmspawner.settings.LLMPlatform.from_env` reads them from
``LLMSPAWNER_PLATFORM``, which the hub sets for the service, so the queue and the spawner
agree by construction. The traits below are the queue's own settings (``--LLMQueue.x=...``
on the command line, or a ``llm_queue_config.py`` file).

Start-up: listen first, with only tornado loaded, and answer as "starting" (the page 200 with
a short HTML page that reloads, the API and other methods 503 JSON with ``Retry-After``):
JupyterHub 5.5 gives a managed service with a URL 10 tries of 1 s to answer
(``tries = 10 if service.managed`` in ``jupyterhub/app.py`` ``start_service``,
https://github.com/jupyterhub/jupyterhub/blob/5.5.4/jupyterhub/app.py; any answer below 500
counts) and then exits, while the queue's imports (JupyterHub's auth, SQLAlchemy,
kubernetes_asyncio) take 10-30 s on a loaded 2-core machine. Those imports run in a thread
(:data:`HEAVY_MODULES`), off the event loop; then, on the loop, load the profiles (a broken
profile stops the service with the file, field and allowed values), open the database
(created or migrated), build the application and hand the listening server over to it
(:class:`_Handoff`), then reconcile the database against the cluster (retrying while the
cluster is unreachable) and run the loop.
Afterwards the profiles are re-read through the one cache (an edit is seen within seconds,
a broken edit keeps the last valid set).

Modules: :mod:`.operations` (what a request does), :mod:`.app` (HTTP), :mod:`.control` (the
loop), :mod:`.context` (what they share), :mod:`.backend` (Kubernetes), :mod:`.db` and
:mod:`.models` (storage), :mod:`llmspawner.tracking` (MLflow).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from urllib.parse import urlsplit

from tornado import httputil, web
from tornado.httpserver import HTTPServer
from traitlets import Bool, Enum, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import Application

from ..profiles import ProfileError
from ..settings import LLMPlatform, SettingError
from . import pools  # noqa: F401 (imported at the start: :meth:`LLMQueue._stop_workers`)
from .states import ADMIN_SCOPE, SERVICE_NAME

log = logging.getLogger(__name__)


#: Imported in a thread before :meth:`LLMQueue.build` (the slow part of the start: seconds to
#: tens of seconds on a loaded machine), in this order.
HEAVY_MODULES = (
    "jupyterhub.services.auth",
    "llmspawner.queue.db",
    "llmspawner.queue.backend",
    # the backend imports it at its first call, which was on the event loop, after "ready":
    # its package imports its dynamic client, kubernetes_validate and jsonschema, whose
    # format checkers compile a Lark grammar (seconds of CPU that blocked every API call)
    "kubernetes_asyncio.client",
    "llmspawner.queue.context",
    "llmspawner.queue.operations",
    "llmspawner.queue.control",
    "llmspawner.queue.app",
)

#: Seconds a client is told to wait (``Retry-After``) while the service starts.
STARTING_RETRY_AFTER = 5

_STARTING_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{retry}">
<title>Training queue starting</title></head>
<body><p>The training queue is starting; this page reloads in {retry} s.</p></body></html>
"""


class _StartingHandler(web.RequestHandler):
    """What the service answers before it is ready (see the module docstring).

    ``GET``/``HEAD`` of a page: 200, a short HTML page that reloads (the hub's start-up
    probe GETs the service's URL and wants an answer below 500). The API
    (``<prefix>api/...``) and every other method: 503 JSON ``{"error": ..., "starting":
    true}`` with ``Retry-After``.
    """

    def initialize(self, prefix: str, started: float):
        self.prefix = prefix
        self.started = started

    def check_xsrf_cookie(self):  # nothing is done with a request yet
        pass

    def _unavailable(self):
        self.set_status(503)
        self.set_header("Retry-After", str(STARTING_RETRY_AFTER))
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        waited = time.monotonic() - self.started
        self.finish(
            json.dumps(
                {
                    "error": f"{SERVICE_NAME} is starting ({waited:.0f} s so far); "
                    f"retry in {STARTING_RETRY_AFTER} s",
                    "starting": True,
                }
            )
        )

    def _page(self):
        if self.request.path.startswith(self.prefix.rstrip("/") + "/api"):
            return self._unavailable()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(_STARTING_PAGE.format(retry=STARTING_RETRY_AFTER))

    get = _page

    def head(self, *args):
        self._page()

    def post(self, *args):
        self._unavailable()

    put = patch = delete = options = post


def starting_app(prefix: str) -> web.Application:
    """The tornado application that answers while the service starts (:class:`_StartingHandler`)."""
    return web.Application(
        [(r".*", _StartingHandler, {"prefix": prefix, "started": time.monotonic()})]
    )


class _Handoff(httputil.HTTPServerConnectionDelegate):
    """An ``HTTPServer`` delegate that passes each new request to ``target``, which can be
    switched while the server listens: requests begun keep their application, later ones
    get the new one (tornado's delegate interface:
    https://www.tornadoweb.org/en/stable/httputil.html#tornado.httputil.HTTPServerConnectionDelegate)."""

    def __init__(self, target: httputil.HTTPServerConnectionDelegate):
        self.target = target

    def start_request(self, server_conn, request_conn):
        return self.target.start_request(server_conn, request_conn)

    def on_close(self, server_conn):
        self.target.on_close(server_conn)


def _env(*names: str, default: str = "") -> str:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


class LLMQueue(Application):
    """The batch training queue service (see the module docstring)."""

    name = SERVICE_NAME
    description = "Batch queue of LLaMA-Factory trainings as Kubernetes Jobs (a hub service)."

    aliases = {
        "db-url": "LLMQueue.db_url",
        "image": "LLMQueue.image",
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
        return _env("LLMSPAWNER_QUEUE_DB_URL", default=f"sqlite:///{SERVICE_NAME}.sqlite")

    sqlite_wal = Bool(
        True,
        config=True,
        help="""
        Open a SQLite ``db_url`` in WAL mode with ``sqlite_synchronous`` and a busy timeout
        (:func:`llmspawner.queue.db.sqlite_pragmas`; its docstring says what survives a crash).
        ``False``: SQLite's defaults (rollback journal, ``synchronous=FULL``): several fsyncs
        per submit.
        """,
    )
    sqlite_synchronous = Enum(
        ["NORMAL", "FULL"],
        default_value="NORMAL",
        config=True,
        help="""
        SQLite's ``synchronous`` in WAL mode (https://www.sqlite.org/pragma.html#pragma_synchronous).
        ``NORMAL``: a commit survives a crash of the service, the last ones may be lost on
        power loss. ``FULL``: one fsync per commit, so power loss loses none either.
        """,
    )

    image = Unicode(
        config=True,
        help="""
        Container image of the training Jobs only (``llamafactory-cli`` on its ``PATH``), when
        it must differ from the users' servers' (``LLMPlatform.image``, the default); a
        profile's own ``image`` wins over both. Default ``$LLMSPAWNER_QUEUE_IMAGE``.
        """,
    )

    @default("image")
    def _image_default(self):
        return _env("LLMSPAWNER_QUEUE_IMAGE")

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
    max_requeues = Integer(
        3,
        config=True,
        help="""
        How many times a job whose pod was disrupted (evicted, preempted by the scheduler,
        drained) or deleted, or whose Job was deleted, runs again, resuming from its last
        checkpoint in the same output folder, before it fails with ``Interrupted: ...``.
        Preemptions by the queue itself (``preemption``) are not counted. ``0``: the first
        interruption fails the job. Example: ``c.LLMQueue.max_requeues = 5``.
        """,
    )

    @validate("max_requeues")
    def _check_requeues(self, proposal):
        if proposal["value"] < 0:
            raise TraitError(f"LLMQueue.max_requeues must be >= 0, not {proposal['value']}")
        return proposal["value"]

    preemption = Bool(
        True,
        config=True,
        help="""
        When a ``high`` job waits for a profile whose slices are all taken and running
        ``low``/``normal`` queue jobs hold some of them, stop the lowest-priority, most recently
        started of those (it goes back to the queue and resumes from its last checkpoint
        later); the ``high`` job is admitted at once, so the freed slice is its own.
        Interactive servers are never stopped. ``False``: ``high`` only goes first in the
        line. See also ``max_preemptions``.
        """,
    )

    max_preemptions = Integer(
        2,
        config=True,
        help="""
        How many times one job may be preempted for ``high`` jobs (``preemption``); a job
        preempted that often runs on until it ends, and the ``high`` jobs that wait for its
        slice say so in their reason. Preemptions are not counted in ``max_requeues``.
        ``0``: jobs are never preempted. Example: ``c.LLMQueue.max_preemptions = 1``.
        """,
    )

    @validate("max_preemptions")
    def _check_preemptions(self, proposal):
        if proposal["value"] < 0:
            raise TraitError(f"LLMQueue.max_preemptions must be >= 0, not {proposal['value']}")
        return proposal["value"]

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
        ADMIN_SCOPE,
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
        if os.environ.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES"):
            return sorted(json.loads(os.environ["JUPYTERHUB_OAUTH_ACCESS_SCOPES"]))
        name = _env("JUPYTERHUB_SERVICE_NAME", default=SERVICE_NAME)
        return [f"access:services!service={name}"]

    @validate("access_scopes")
    def _check_access(self, proposal):
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
        return _env("JUPYTERHUB_SERVICE_PREFIX", default=f"/services/{SERVICE_NAME}/")

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

    def platform(self) -> LLMPlatform:
        """The platform settings the hub handed over (:meth:`LLMPlatform.from_env`).

        Raises:
            SystemExit: a setting is invalid (the message names it).
        """
        try:
            return LLMPlatform.from_env()
        except SettingError as e:
            self.exit_error(f"{SERVICE_NAME}: invalid platform setting: {e}")

    def queue_settings(self):
        """The queue's own settings as a :class:`~llmspawner.queue.context.QueueSettings`."""
        from .context import QueueSettings

        return QueueSettings(
            image=self.image,
            default_limit=self.default_max_running,
            kueue_queue=self.kueue_queue or None,
            backoff_limit=self.backoff_limit,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished,
            service_account=self.service_account or None,
            unschedulable_timeout=self.unschedulable_timeout,
            interval=self.admission_interval,
            max_requeues=self.max_requeues,
            preemption=self.preemption,
            max_preemptions=self.max_preemptions,
        )

    def build(self, platform: LLMPlatform | None = None):
        """Build the control loop and the web application (no network I/O yet).

        Args:
            platform: the platform settings (default :meth:`platform`).

        Returns:
            ``(loop, app)``: the :class:`~llmspawner.queue.control.ControlLoop` and the
            tornado application.

        Raises:
            SystemExit: a profile file or a platform setting is invalid (the message names
                the file, field or setting and what is allowed).
        """
        from jupyterhub.services.auth import HubOAuth

        from . import db
        from .app import make_app, page_routes
        from .backend import KubeBackend
        from .context import QueueContext
        from .control import ControlLoop
        from .operations import QueueOperations

        platform = platform or self.platform()
        try:
            platform.load_profiles()
            platform.profiles(log)  # the cache starts from the set checked here
        except ProfileError as e:
            self.exit_error(f"{SERVICE_NAME}: invalid GPU profile: {e}")
        sessions = db.connect(
            self.db_url, sqlite_wal=self.sqlite_wal, sqlite_synchronous=self.sqlite_synchronous
        )
        backend = KubeBackend(
            platform.namespace or "default",
            request_timeout=self.k8s_request_timeout,
            capacity_ttl=self.capacity_ttl,
        )
        ctx = QueueContext(sessions, backend, platform, self.queue_settings())
        ops = QueueOperations(ctx)
        api_url = {"api_url": self.hub_api_url} if self.hub_api_url else {}
        hub_auth = HubOAuth(parent=self, access_scopes=set(self.access_scopes), **api_url)
        app = make_app(
            ops=ops,
            hub_auth=hub_auth,
            prefix=self.service_prefix,
            access_scopes=set(self.access_scopes),
            admin_scope=self.admin_scope,
            admins_from_hub=self.admins_from_hub,
            cookie_secret=secrets.token_bytes(32),
            extra_routes=page_routes(self.service_prefix),
            hub_prefix=self.hub_prefix,
        )
        return ControlLoop(ctx), app

    def exit_error(self, message: str):
        log.critical("%s", message)
        raise SystemExit(message)

    async def serve(self) -> None:
        """Listen (answering "starting"), import and build, hand over, reconcile, and run the
        loop until SIGTERM/SIGINT (see the module docstring)."""
        from . import limits
        from .limits import MAX_BODY_BYTES

        started = time.monotonic()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        handoff = _Handoff(starting_app(self.service_prefix))
        url = urlsplit(self.bind_url)
        server = HTTPServer(handoff, xheaders=True, max_body_size=MAX_BODY_BYTES + 4096)
        server.listen(url.port or 80, url.hostname or "")
        log.info(
            "%s listening on %s%s (starting)",
            SERVICE_NAME,
            self.bind_url.rstrip("/"),
            self.service_prefix,
        )
        limits.start_worker()  # C: the config checks' worker starts beside the imports
        importing = asyncio.ensure_future(self._import_heavy())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({importing, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not importing.done():  # stopped while starting: the import thread ends on its own
            log.info("%s stopping (while starting)", SERVICE_NAME)
            server.stop()
            await self._stop_workers()
            return
        stopping.cancel()
        importing.result()
        loop_, app = self.build()
        from .planning import start_worker

        start_worker()  # admission's read-and-decide, off the event loop
        # What is imported and built by now lives as long as the service: kept out of the
        # garbage collector's full passes, which would otherwise scan it all and pause the
        # event loop (~0.25 s with the hub's libraries loaded; benchmarks/queue_bad_input.py).
        gc.freeze()
        # C (issue 13 §5): "starting" until a submit's config can be checked: the checks'
        # worker imports kubespawner (seconds; tens of seconds on a loaded 2-core machine),
        # and every submit after "ready" used to wait for it (client timeouts, a service
        # that seemed not to answer right after its start).
        checker = asyncio.ensure_future(limits.worker_ready())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({checker, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not checker.done():  # stopped while the checks' worker was still starting
            log.info("%s stopping (while starting)", SERVICE_NAME)
            checker.cancel()
            server.stop()
            await self._stop_workers()
            return
        stopping.cancel()
        try:
            checker.result()
        except limits.LimitExceeded as e:
            log.warning("%s: %s; ready without it", SERVICE_NAME, e)
        log.info("%s: config checker up after %.1f s", SERVICE_NAME, time.monotonic() - started)
        backend = loop_.ctx.backend
        handoff.target = app
        log.info(
            "%s ready after %.1f s (namespace %s, db %s)",
            SERVICE_NAME,
            time.monotonic() - started,
            backend.namespace,
            _redact(self.db_url),
        )
        tasks = [
            asyncio.create_task(self._start_loop(loop_), name=f"{SERVICE_NAME}-loop"),
            asyncio.create_task(
                backend.watch_changes(loop_.ctx.wake, on_queue_pod=loop_.note_pod),
                name=f"{SERVICE_NAME}-watch",
            ),
        ]
        await stop.wait()
        log.info("%s stopping", SERVICE_NAME)
        server.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await backend.close()
        await self._stop_workers()

    @staticmethod
    async def _stop_workers() -> None:
        """End the checks' and the planning worker processes, not waiting for one still
        importing (:mod:`.pools`): a hub stopping its services gives each 10 s after
        ``SIGINT``.

        Only modules already imported: an import here could wait forever for the import
        lock of a module that the stopped start-up is still importing in its thread.
        """
        modules = [sys.modules.get(f"{__package__}.{name}") for name in ("planning", "limits")]
        await asyncio.gather(
            *(asyncio.to_thread(module.shutdown) for module in modules if module is not None)
        )

    async def _import_heavy(self) -> None:
        """Import :data:`HEAVY_MODULES` in a daemon thread, one after the other (the event
        loop keeps answering "starting" meanwhile).

        A daemon thread, not ``asyncio.to_thread``: a service stopped while starting must
        not wait for its imports (tens of seconds on a loaded machine), and ``asyncio.run``
        joins its default executor's threads before it returns (a hub stopping its services
        gives each 10 s after ``SIGINT``, then kills it, and a killed hub leaves its proxy).

        Raises:
            Exception: what an import raised.
        """
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if not done.done():
                done.set_exception(error) if error is not None else done.set_result(None)

        def run() -> None:
            error: BaseException | None = None
            try:
                for name in HEAVY_MODULES:
                    importlib.import_module(name)
            except BaseException as e:  # handed to the awaiting coroutine
                error = e
            try:
                loop.call_soon_threadsafe(settle, error)
            except RuntimeError:  # the loop has closed: the service is stopping
                pass

        threading.Thread(target=run, name=f"{SERVICE_NAME}-imports", daemon=True).start()
        await done
        log.info("%s: imports took %.1f s", SERVICE_NAME, time.monotonic() - t0)

    async def _start_loop(self, loop_) -> None:
        delay = 1.0
        while True:
            try:
                orphans = await loop_.startup()
                break
            except Exception as e:
                log.warning("Cannot reconcile with the cluster yet (retry in %.0f s): %s", delay, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if orphans:
            log.warning("Jobs without a queue row (left alone): %s", ", ".join(orphans))
        await loop_.run()

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
