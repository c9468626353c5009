"""The ``llm-queue`` web application: the REST API (``api/``) and the pages, on tornado.

Who is calling comes only from the hub, never from the request: a hub API token
(``Authorization: token <t>`` or ``Bearer <t>``) or, in a browser, the OAuth cookie this
service sets after the hub's login (:class:`jupyterhub.services.auth.HubOAuth`). The hub
answers with the token owner's model and the token's scopes; a caller is let in only if the
token holds one of ``access_scopes`` (explicit: with none configured, JupyterHub's
``HubAuth`` would accept any valid token). A *queue admin* is a hub admin (when
``admins_from_hub``) or a token holding ``admin_scope``
(:data:`llmspawner.queue.states.ADMIN_SCOPE`); admins
see and act on every job, everyone else only on their own, and another user's job answers
``404`` exactly as a job that does not exist.

Errors are JSON ``{"error": <sentence>, "field": <request field or null>}`` (an invalid
training config adds ``"problems": [{"field", "message"}, ...]``, input over a limit of
:mod:`.limits` adds ``"limit": <its name>``); tokens never appear in logs or answers. The API
is documented in ``docs/queue-api.md``.

Request bodies are read as a stream (:class:`BoundedBody`): counted as they arrive, kept up to
:data:`~llmspawner.queue.limits.MAX_BODY_BYTES`, and a larger one is read to its end and
discarded, then answered ``413`` as JSON. (Tornado's own ``max_body_size`` closes the
connection instead, while the client may still be sending: a client sees an empty 400 or a
reset, and the hub's proxy answers its "server appears to be down" 503.) Authentication and
the XSRF check run once the body is there, since a form's ``_xsrf`` field is in the body.

The handlers only parse requests and write answers: every operation is a method of
:class:`~llmspawner.queue.operations.QueueOperations` (``settings["ops"]``).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markupsafe
import yaml
from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
    check_scopes,
)
from jupyterhub.utils import url_path_join
from tornado import httputil, web
from tornado.iostream import StreamClosedError

from . import lf_config, limits
from .limits import LimitExceeded
from .operations import QueueError, QueueOperations
from .states import ADMIN_SCOPE, CANCELLABLE_STATES, DEFAULT_PRIORITY, PRIORITIES, STATES

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
#: Largest request body accepted (bytes); :data:`llmspawner.queue.limits.MAX_BODY_BYTES`.
MAX_BODY = limits.MAX_BODY_BYTES
#: Most jobs one list call returns.
MAX_LIST = 1000
#: Badge colour of each state in the pages.
STATE_COLORS = dict(
    zip(STATES, ("#6c757d", "#0dcaf0", "#0d6efd", "#198754", "#dc3545", "#adb5bd"), strict=True)
)


@dataclass(frozen=True)
class Caller:
    """Who is calling, from the hub's answer for their token.

    Attributes:
        name: the hub username (or service name).
        kind: ``user`` or ``service``.
        admin: a queue admin (sees and acts on every job).
        groups: the user's hub groups.
    """

    name: str
    kind: str
    admin: bool
    groups: tuple[str, ...]


def caller_from_model(model: dict, *, admin_scope: str, admins_from_hub: bool) -> Caller:
    """Build the :class:`Caller` from the hub's ``/hub/api/user`` answer for a token.

    ``model["admin"]`` is the owner's hub admin flag (readable with the token's identify
    scopes); ``model["scopes"]`` are the token's own scopes, checked with JupyterHub's
    :func:`~jupyterhub.services.auth.check_scopes` (filters such as ``!user=`` honoured).
    """
    kind = model.get("kind") or "user"
    scopes = set(model.get("scopes") or [])
    admin = bool(check_scopes({admin_scope}, scopes)) or (
        admins_from_hub and kind == "user" and model.get("admin") is True
    )
    return Caller(
        name=model["name"], kind=kind, admin=admin, groups=tuple(model.get("groups") or ())
    )


@web.stream_request_body
class BoundedBody(web.RequestHandler):
    """A handler that reads its request body as a stream, within :data:`limits.MAX_BODY_BYTES`.

    The body is counted while it arrives and kept only up to the limit; the connection's own
    limit is lifted for this request, so that tornado never closes it mid-body. Once the whole
    body is there (tornado then calls the method named after the verb: ``get``, ``post``, ...),
    a body over the limit raises :class:`~llmspawner.queue.limits.LimitExceeded` (413);
    otherwise ``request.body`` (and, for a form, ``request.body_arguments`` and
    ``request.files``) are set as tornado sets them for a buffered body, :meth:`body_received`
    runs, then the method.
    """

    _received = 0
    _chunks: list[bytes] | None = None

    def prepare(self):
        self.request.connection.set_max_body_size(sys.maxsize)  # counted in data_received
        self._chunks = []
        # Tornado looks the method up by the verb's name once the body has arrived; for this
        # request that name is bound to _with_body, which finishes the body first.
        verb = self.request.method.lower()
        setattr(self, verb, functools.partial(self._with_body, getattr(self, verb)))

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received <= limits.MAX_BODY_BYTES:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()  # read on to the end, keep nothing

    async def _with_body(self, method, *args, **kwargs):
        limits.check_body_size(self._received)
        request = self.request
        request.body = b"".join(self._chunks)
        self._chunks = None
        if request.body:
            httputil.parse_body_arguments(
                request.headers.get("Content-Type", ""),
                request.body,
                request.body_arguments,
                request.files,
                request.headers,
            )
            for name, values in request.body_arguments.items():
                request.arguments.setdefault(name, []).extend(values)
        await self.body_received()
        if not self._finished:
            result = method(*args, **kwargs)
            if result is not None:
                await result

    async def body_received(self) -> None:
        """Runs once the body is complete, before the verb's method (default: nothing)."""


class BaseHandler(HubOAuthenticated, BoundedBody):
    """Authentication shared by API and pages (see the module docstring)."""

    def initialize(self):
        self.hub_auth = self.settings["hub_auth"]

    @property
    def ops(self) -> QueueOperations:
        """The service's operations (:class:`~llmspawner.queue.operations.QueueOperations`)."""
        return self.settings["ops"]

    @property
    def hub_scopes(self) -> set[str]:
        """The scopes that let a token in (never empty; see ``make_app``)."""
        return self.settings["access_scopes"]

    @property
    def caller(self) -> Caller:
        return self.current_user

    def get_current_user(self):
        # Set by prepare(); tornado's synchronous lookup is never used.
        return None

    async def authenticate(self) -> dict | None:
        """Return the hub's model of the caller, ``None`` if no valid credential came.

        Raises:
            web.HTTPError: 403 when the token is valid but lacks ``access_scopes``.
        """
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            return None
        try:
            self.check_hub_user(model)
        except UserNotAllowed:
            raise web.HTTPError(
                403,
                "this token may not use the queue: it needs the scope "
                + " or ".join(sorted(self.hub_scopes)),
            ) from None
        return model

    async def body_received(self):
        model = await self.authenticate()
        if model is None:
            await self.no_user()
            return
        self.current_user = caller_from_model(
            model,
            admin_scope=self.settings["admin_scope"],
            admins_from_hub=self.settings["admins_from_hub"],
        )
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            # Cookie-authenticated changes need JupyterHub's XSRF token; token-
            # authenticated ones do not (HubOAuth.check_xsrf_cookie).
            self.check_xsrf_cookie()

    async def no_user(self):
        raise web.HTTPError(401, "log in to the hub, or send 'Authorization: token <API token>'")

    def scope_user(self, requested: str | None = None) -> str | None:
        """The user whose jobs the caller may act on: ``None`` (all) for admins.

        Raises:
            QueueError: 403 when a non-admin asks for another user's jobs.
        """
        if self.caller.admin:
            return requested or None
        if requested and requested != self.caller.name:
            raise QueueError(403, "only queue admins may see other users' jobs", "user")
        return self.caller.name


class APIHandler(BaseHandler):
    """JSON in, JSON out; errors as ``{"error", "field"}``."""

    def get_login_url(self):
        raise web.HTTPError(401, "log in to the hub first")

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(data))

    async def body_json(self) -> dict:
        """The request body as a JSON object, decoded off the event loop within the limits.

        (A body over :data:`MAX_BODY` was refused before: see :class:`BoundedBody`.)

        Raises:
            QueueError: 400 (not JSON, not an object).
            LimitExceeded: nested deeper than :data:`limits.MAX_BODY_DEPTH` (400).
        """
        try:
            data = await limits.off_loop(limits.load_json_body, self.request.body)
        except LimitExceeded:
            raise
        except ValueError as e:
            raise QueueError(400, f"the body is not valid JSON: {e}", "body") from None
        if not isinstance(data, dict):
            raise QueueError(400, "the body must be a JSON object", "body")
        return data

    def _handle_request_exception(self, e):
        if isinstance(e, LimitExceeded):
            if not self._finished:
                self.clear()
                self.write_json(e.to_json(), e.status)
            return
        if isinstance(e, QueueError):
            if not self._finished:
                body = {"error": e.message, "field": e.field}
                if e.problems:
                    body["problems"] = e.problems
                self.clear()
                self.write_json(body, e.status)
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs):
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "internal error of the queue service; see its log"
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": message, "field": None}))


def _job_id(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise QueueError(404, f"no job {value}", "id") from None


class JobListAPIHandler(APIHandler):
    """``GET api/jobs[?user=&state=&limit=]`` (list), ``POST api/jobs`` (submit)."""

    async def get(self):
        user = self.scope_user(self.get_argument("user", None))
        state = self.get_argument("state", None) or None
        limit = self.get_argument("limit", "200")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIST:
            raise QueueError(400, f"limit must be a whole number 1..{MAX_LIST}", "limit")
        rows = self.ops.list(user=user, state=state, limit=int(limit))
        self.write_json({"jobs": self.ops.views(rows)})

    async def post(self):
        if self.caller.kind != "user":
            raise QueueError(403, "only users can submit jobs (a service has no folder)")
        # One round trip to the checks' worker: the body decoded and its config checked
        # together (lf_config.check_submit_body); the fields' errors are answered first.
        try:
            body = await lf_config.check_submit(self.request.body, username=self.caller.name)
        except lf_config.BadBody as e:
            raise QueueError(400, str(e), "body") from None
        if body.unknown:
            raise QueueError(400, "unknown field; allowed: config, profile, priority", body.unknown)
        if not body.has_config:
            raise QueueError(400, "the training config is required", "config")
        if not body.config_ok:
            raise QueueError(400, "must be YAML/JSON text or an object", "config")
        if not body.profile:
            allowed = ", ".join(self.ops.profile_slugs())
            raise QueueError(400, f"a profile is required; allowed: {allowed}", "profile")
        if not body.priority_ok:
            choices = f"{', '.join(PRIORITIES[:-1])} or {PRIORITIES[-1]}"
            raise QueueError(400, f"must be {choices}", "priority")
        view = await self.ops.submit(
            user=self.caller.name,
            groups=self.caller.groups,
            config=None,
            profile=body.profile,
            priority=body.priority or DEFAULT_PRIORITY,
            prepared=body.prepared,
        )
        self.set_header("Location", url_path_join(self.request.path, str(view["id"])))
        self.write_json(view, 201)


class JobAPIHandler(APIHandler):
    """``GET api/jobs/<id>`` (show, with the prepared config), ``DELETE`` (cancel)."""

    async def get(self, job_id):
        row = self.ops.get(_job_id(job_id), user=self.scope_user())
        self.write_json(self.ops.view(row, with_config=True))

    async def delete(self, job_id):
        view = await self.ops.cancel(_job_id(job_id), user=self.scope_user(), by=self.caller.name)
        self.write_json(view)


class JobLogsAPIHandler(APIHandler):
    """``GET api/jobs/<id>/logs[?follow=1&tail=N&attempt=N]``: the newest pod's log, or the
    saved log of an interrupted attempt, ``text/plain``."""

    async def get(self, job_id):
        follow = self.get_argument("follow", "") in ("1", "true", "yes")
        tail = self.get_argument("tail", "")
        if tail and not tail.isdigit():
            raise QueueError(400, "tail must be a whole number of lines", "tail")
        attempt = self.get_argument("attempt", "")
        if attempt and not attempt.isdigit():
            raise QueueError(
                400, "attempt must be a whole number (see the job's attempts)", "attempt"
            )
        stream = await self.ops.open_log(
            _job_id(job_id),
            user=self.scope_user(),
            follow=follow,
            tail=int(tail) if tail else None,
            attempt=int(attempt) if attempt else None,
        )
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        try:
            async for chunk in stream:
                self.write(chunk)
                if follow:
                    await self.flush()
        except StreamClosedError:
            return
        finally:
            await stream.aclose()
        self.finish()


class UserLimitAPIHandler(APIHandler):
    """``GET``/``PUT api/users/<name>/limit``: a user's limit of running jobs."""

    async def get(self, name):
        self.scope_user(name)
        self.write_json({"user": name, "max_running": self.ops.limit_of(name)})

    async def put(self, name):
        if not self.caller.admin:
            raise QueueError(403, "only queue admins may set limits", "user")
        body = await self.body_json()
        unknown = sorted(set(body) - {"max_running"})
        if unknown:
            raise QueueError(400, "unknown field; allowed: max_running", unknown[0])
        self.ops.set_limit(name, body.get("max_running"))
        log.info("%s set the running-job limit of %s to %s", self.caller.name, name, body)
        self.write_json({"user": name, "max_running": self.ops.limit_of(name)})


class ProfilesAPIHandler(APIHandler):
    """``GET api/profiles``: the profiles the caller may submit to."""

    async def get(self):
        self.write_json(
            {
                "profiles": [
                    {"slug": p.slug, "display_name": p.display_name, "default": p.default}
                    for p in self.ops.allowed_profiles(self.caller.groups)
                ]
            }
        )


class CallbackHandler(BoundedBody, HubOAuthCallbackHandler):
    """``oauth_callback``: completes the hub's OAuth login and sets the service's cookie."""

    def initialize(self):
        self.hub_auth = self.settings["hub_auth"]

    def write_error(self, status_code: int, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, LimitExceeded):
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps(exc.to_json()))
            return
        super().write_error(status_code, **kwargs)


class NotFoundHandler(BoundedBody):
    """Any other path: ``404`` as JSON (its body, too, read within the limit first)."""

    async def body_received(self):
        raise web.HTTPError(404)

    def write_error(self, status_code: int, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body = {"error": "no such page or API path", "field": None}
        if isinstance(exc, LimitExceeded):
            status_code, body = exc.status, exc.to_json()
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body))


def api_routes(prefix: str) -> list[tuple]:
    """The API's URL patterns below ``prefix`` (e.g. ``/services/llm-queue/``)."""
    api = url_path_join(prefix, "api")
    return [
        (url_path_join(api, "jobs") + "/?", JobListAPIHandler),
        (url_path_join(api, "jobs", r"([^/]+)") + "/?", JobAPIHandler),
        (url_path_join(api, "jobs", r"([^/]+)", "logs"), JobLogsAPIHandler),
        (url_path_join(api, "users", r"([^/]+)", "limit"), UserLimitAPIHandler),
        (url_path_join(api, "profiles"), ProfilesAPIHandler),
        (url_path_join(prefix, "oauth_callback"), CallbackHandler),
    ]


class PageHandler(BaseHandler):
    """HTML pages in the hub's look; not logged in: through the hub's OAuth login."""

    async def no_user(self):
        if self.request.method in ("GET", "HEAD"):
            self.redirect(self.get_login_url())
            return
        raise web.HTTPError(403, "log in to the hub first, then submit the form again")

    def render_page(self, name: str, http_status: int = 200, **context) -> None:
        env = self.settings["jinja_env"]
        html = env.get_template(name).render(
            prefix=self.settings["prefix"],
            hub_prefix=self.settings["hub_prefix"],
            caller=self.current_user,
            states=STATES,
            cancellable_states=CANCELLABLE_STATES,
            state_colors=STATE_COLORS,
            priorities=PRIORITIES,
            default_priority=DEFAULT_PRIORITY,
            xsrf_form_html=lambda: markupsafe.Markup(self.xsrf_form_html()),
            **context,
        )
        self.set_status(http_status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)

    def _handle_request_exception(self, e):
        if isinstance(e, LimitExceeded) and not self._finished:
            self.clear()
            self.set_status(e.status)
            if self.current_user is None:
                self.set_header("Content-Type", "text/plain; charset=utf-8")
                self.finish(f"{e.status}: {e.message}\n")
            else:
                self.render_page("error.html", e.status, status=e.status, message=e.message)
            return
        if isinstance(e, QueueError) and self.current_user is not None and not self._finished:
            self.clear()
            self.render_page("error.html", e.status, status=e.status, message=e.message)
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        if self.current_user is None:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"{status_code}: {message}\n")
            return
        self.render_page("error.html", status_code, status=status_code, message=message)


class JobsPage(PageHandler):
    """``GET /`` the jobs (admins: everyone's, filtered), ``POST /`` the submit form."""

    def _page(self, status: int = 200, *, error=None, form=None) -> None:
        filters = {
            "user": self.get_query_argument("user", "") or None,
            "state": self.get_query_argument("state", "") or None,
        }
        rows = self.ops.list(
            user=self.scope_user(filters["user"]), state=filters["state"], limit=500
        )
        self.render_page(
            "jobs.html",
            status,
            jobs=self.ops.views(rows),
            profiles=self.ops.allowed_profiles(self.caller.groups),
            filters=filters,
            error=error,
            form=form or {},
        )

    async def get(self):
        self._page()

    async def post(self):
        form = {
            "config": self.get_body_argument("config", ""),
            "profile": self.get_body_argument("profile", ""),
            "priority": self.get_body_argument("priority", DEFAULT_PRIORITY),
        }
        upload = self.request.files.get("config_file")
        if upload and upload[0]["body"]:
            try:
                form["config"] = upload[0]["body"].decode("utf-8")
            except UnicodeDecodeError:
                error = QueueError(400, "the uploaded file is not UTF-8 text", "config_file")
                self._page(400, error=error, form=form)
                return
        try:
            view = await self.ops.submit(
                user=self.caller.name,
                groups=self.caller.groups,
                config=form["config"],
                profile=form["profile"],
                priority=form["priority"],
            )
        except (QueueError, LimitExceeded) as e:
            if isinstance(e, LimitExceeded) and e.field == "config":
                form["config"] = ""  # not echoed into the page
            self._page(e.status, error=e, form=form)
            return
        self.redirect(url_path_join(self.settings["prefix"], "jobs", str(view["id"])))


class JobPage(PageHandler):
    """``GET /jobs/<id>``: one job, its log's tail and its config."""

    TAIL = 200

    async def get(self, job_id):
        row = self.ops.get(_job_id(job_id), user=self.scope_user())
        log_text = await self.ops.log_tail(row, self.TAIL)
        view = self.ops.view(row, with_config=True)
        tracker = getattr(getattr(self.ops, "ctx", None), "tracker", None)
        model = (view.get("config") or {}).get("register_model")
        self.render_page(
            "job.html",
            job=view,
            log=log_text,
            tail=self.TAIL,
            config_yaml=yaml.safe_dump(view["config"], sort_keys=False, allow_unicode=True),
            registered_model=model,
            model_url=tracker.model_url(model) if tracker is not None and model else None,
            artifact_problem=(
                tracker.artifact_problems.get(view.get("mlflow_experiment") or "")
                if tracker is not None
                else None
            ),
        )


class CancelPage(PageHandler):
    """``POST /jobs/<id>/cancel`` from the pages' cancel buttons."""

    async def post(self, job_id):
        job_id = _job_id(job_id)
        await self.ops.cancel(job_id, user=self.scope_user(), by=self.caller.name)
        self.redirect(url_path_join(self.settings["prefix"], "jobs", str(job_id)))


def page_routes(prefix: str) -> list[tuple]:
    """The pages' URL patterns below ``prefix``."""
    return [
        (prefix.rstrip("/") + "/?", JobsPage),
        (url_path_join(prefix, "jobs", r"([^/]+)") + "/?", JobPage),
        (url_path_join(prefix, "jobs", r"([^/]+)", "cancel"), CancelPage),
    ]


def make_app(
    *,
    ops: QueueOperations,
    hub_auth: HubOAuth,
    prefix: str,
    access_scopes: set[str],
    admin_scope: str = ADMIN_SCOPE,
    admins_from_hub: bool = True,
    cookie_secret: bytes,
    extra_routes: list[tuple] = (),
    **settings,
) -> web.Application:
    """Return the tornado application of the service.

    Args:
        ops: the :class:`~llmspawner.queue.operations.QueueOperations`.
        hub_auth: a configured :class:`~jupyterhub.services.auth.HubOAuth`.
        prefix: the service's URL prefix (``JUPYTERHUB_SERVICE_PREFIX``).
        access_scopes: scopes a token needs to use the service, e.g.
            ``{"access:services!service=llm-queue"}``.
        admin_scope: the scope that makes a token a queue admin.
        admins_from_hub: hub admins are queue admins.
        cookie_secret: signs the OAuth cookie (random per start is fine: users are sent
            through the hub's login again, without a prompt).
        extra_routes: more ``(pattern, handler)`` pairs (the pages).

    Raises:
        ValueError: ``access_scopes`` is empty (it would let any hub token in).
    """
    if not access_scopes:
        raise ValueError("access_scopes must not be empty: HubAuth would accept any token")
    limits.start_worker()  # the config checks' process (limits.off_loop)
    return web.Application(
        [*extra_routes, *api_routes(prefix)],
        default_handler_class=NotFoundHandler,
        hub_auth=hub_auth,
        ops=ops,
        access_scopes=set(access_scopes),
        admin_scope=admin_scope,
        admins_from_hub=admins_from_hub,
        cookie_secret=cookie_secret,
        prefix=prefix,
        jinja_env=jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True
        ),
        **{"hub_prefix": "/hub/", **settings},
    )
