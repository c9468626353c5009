"""The HTTP face of the emulated cluster: a Kubernetes-shaped REST API over `Store`.

Serves discovery (``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/<g>/<v>``), and for
each resource in `resources.RESOURCES`: list (``labelSelector``, ``fieldSelector``), watch
(``watch=true|True|1``, ``resourceVersion``, ``timeoutSeconds``; also ``/watch/`` paths), get,
create (POST), replace (PUT), patch (merge, strategic, JSON patch), delete
(``gracePeriodSeconds``, ``propagationPolicy``, in the query or a DeleteOptions body),
deletecollection, the ``status`` subresource, ``scale`` of Deployments and ReplicaSets
(R: autoscaling/v1 ``Scale``, `replicasets.serve_scale`) and the pods ``log`` subresource (D: with
``previous``, ``sinceSeconds``/``sinceTime``, ``timestamps``, ``tailLines``, ``limitBytes``,
`podlogs`), the pods ``exec``, ``attach`` and ``portforward`` subresources over WebSocket
(D: `streams`). Errors are
``Status`` objects. ``Accept: ...;as=Table`` gets a server-side Table (as kubectl asks).

As kube-apiserver (https://kubernetes.io/docs/reference/using-api/api-concepts/):

- writes go through `admission` (schema, defaults, validation); ``fieldValidation``
  (Ignore/Warn/Strict) and ``dryRun=All`` are honoured on create, update, patch and delete;
  warnings come back as ``Warning: 299 - "..."`` headers;
- DELETE answers the object for pods, services, serviceaccounts, PVCs and namespaces
  (``ReturnDeletedObject``) and for any object left pending (finalizers, graceful pod
  deletion); other kinds deleted at once get a ``Status`` ``Success`` with the name, group,
  plural and uid;
- lists take ``limit``/``continue`` (the continuation lists the objects after the last one
  returned, from the current state, not a snapshot; a token older than the event log is 410);
  field selectors are limited to each kind's supported fields (`selectors.SUPPORTED_FIELDS`);
- watches send ``BOOKMARK`` events every `ApiServer.bookmark_interval` seconds when
  ``allowWatchBookmarks=true``; a ``resourceVersion`` older than the event log answers 200
  with one ``ERROR`` event holding the 410 ``Expired`` Status;
- ``/openapi/v3`` and its group/version documents (`schema`), ``/healthz``, ``/livez`` and
  ``/readyz`` are served, so kubectl validates server-side (``fieldValidation=Strict``).

Any bearer token, or none, is accepted: there is no authentication nor authorization.
API reference: https://kubernetes.io/docs/reference/using-api/api-concepts/
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from typing import Protocol

from aiohttp import web

from . import (
    disruption,
    podlogs,
    protobody,
    replicasets,
    resources,
    schema,
    selectors,
    streams,
    tables,
    validation,
)
from .patching import UNSUPPORTED_MESSAGE as UNSUPPORTED_PATCH_MESSAGE
from .patching import PatchError, apply_creates, apply_patch
from .patching import supported as patch_supported
from .resources import Resource
from .selectors import Selector, SelectorError
from .store import ApiError, Store

log = logging.getLogger(__name__)

SERVER_VERSION = {
    "major": "1",
    "minor": schema.SERVED_MINOR,  # the version whose OpenAPI schema validates writes
    "gitVersion": f"v1.{schema.SERVED_MINOR}.0-llmspawner-devcluster",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class LogSource(Protocol):
    """What the API server needs from the kubelet to serve ``pods/<name>/log``."""

    async def stream_log(
        self, pod: dict, container: str, follow: bool, tail_lines: int | None, options=None
    ) -> object:
        """An async iterator of bytes chunks; raises `ApiError` 400 if there is no log yet.
        ``options``: a `podlogs.LogOptions` (previous, since, timestamps, limitBytes)."""


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes")


_int_param = podlogs.query_int  # one rule for whole-number query parameters


#: Kinds whose DELETE answers the deleted object (``ReturnDeletedObject`` in their registry);
#: the others answer a Status once the object is gone.
RETURNS_DELETED_OBJECT = {
    "pods",
    "services",
    "serviceaccounts",
    "persistentvolumeclaims",
    "persistentvolumes",
    "namespaces",
}

HEALTH_CHECKS = ("ping", "log", "etcd", "poststarthook/start-apiserver-admission-initializer")

_VERB_OPTIONS = {
    "POST": "CreateOptions",
    "PUT": "UpdateOptions",
    "PATCH": "PatchOptions",
    "DELETE": "DeleteOptions",
}


def _write_options(request: web.Request) -> tuple[bool, str]:
    """``(dry_run, field_validation)`` of a write request; 422 for values the real server
    refuses (``dryRun: Unsupported value: []string{"x"}: supported values: "All"``)."""
    dry = request.query.getall("dryRun", [])
    opts = validation.OPTIONS.get()
    mode = request.query.get("fieldValidation") or (opts.field_validation if opts else "Warn")
    errors = []
    if any(v != "All" for v in dry):
        shown = "[]string{" + ", ".join(json.dumps(v) for v in dry) + "}"
        errors.append(
            validation.FieldError(
                "FieldValueNotSupported", "dryRun", 'supported values: "All"', validation.Raw(shown)
            )
        )
    if request.method != "DELETE" and mode not in validation.FIELD_VALIDATION_VALUES:
        errors.append(
            validation.FieldError(
                "FieldValueNotSupported",
                "fieldValidation",
                'supported values: "Ignore", "Warn", "Strict"',
                mode,
            )
        )
    if errors:
        kind = _VERB_OPTIONS.get(request.method, "CreateOptions")
        raise validation.invalid(kind, "", errors, "meta.k8s.io")
    return bool(dry), mode


def _continue_token(rv: str, key: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": int(rv), "start": key + "\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parse_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
        return int(doc["rv"]), str(doc["start"]).rstrip("\x00")
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiError(  # upstream storage.DecodeContinue's ErrGenericInvalidKey wording
            400, "BadRequest", f"invalid continue token: continue key is not valid: {exc}"
        ) from None


def _list_key(obj: dict) -> str:
    return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def _json_response(body: dict, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


class ApiServer:
    """An aiohttp application serving ``store`` as a Kubernetes API server.

    ``logs`` serves the pods ``log`` subresource (the kubelet); without it, log requests get
    a 400. Start with `start`, which binds ``host``:``port`` (0: any free port) and sets `url`.
    """

    def __init__(self, store: Store, logs: LogSource | None = None):
        self.store = store
        self.logs = logs
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        #: R: authentication and RBAC (`devcluster.rbac.Gate`); None: everyone is admin.
        self.auth = None
        #: seconds between BOOKMARK events of watches that allow them (upstream: ~1 minute)
        self.bookmark_interval = 60.0
        #: ``fieldValidation`` of requests that send none: Warn as kube-apiserver, or
        #: ``$DEVCLUSTER_FIELD_VALIDATION`` (Strict: find clients that send unknown fields)
        self.default_field_validation = os.environ.get("DEVCLUSTER_FIELD_VALIDATION", "Warn")
        self._openapi: dict[str, bytes] = {}
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host``:``port``; returns the base URL (``http://host:port``)."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        real_port = sockets[0].getsockname()[1] if sockets else port
        self.url = f"http://{host}:{real_port}"
        return self.url

    async def stop(self) -> None:
        """End watch streams and stop listening."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- routing ---------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        opts = validation.WriteOptions(self.default_field_validation)
        token = validation.OPTIONS.set(opts)
        try:
            response = await self._route(request)
            if opts.warnings and not response.prepared:
                log.warning(
                    "devcluster: %s %s: %s", request.method, request.path, "; ".join(opts.warnings)
                )
                for text in dict.fromkeys(opts.warnings):
                    response.headers.add("Warning", f"299 - {json.dumps(text)}")
            return response
        except ApiError as exc:
            return _json_response(exc.status(), exc.code)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # a bug here must still answer as an API server would
            log.exception("devcluster API error on %s %s", request.method, request.path)
            err = ApiError(500, "InternalError", f"internal error: {exc!r}")
            return _json_response(err.status(), 500)
        finally:
            validation.OPTIONS.reset(token)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        opts = validation.OPTIONS.get() or validation.WriteOptions()
        parts = [p for p in request.path.split("/") if p]
        method = request.method
        if method == "GET" and parts and parts[0] in ("healthz", "livez", "readyz"):
            return self._health(request, parts)
        if self.auth is not None:  # R: 401 for a token that is not valid (devcluster.authn)
            self.auth.authenticate(request)
        if method == "GET" and parts[:2] == ["openapi", "v3"]:
            return self._openapi_v3(parts[2:])
        if method == "GET":
            doc = self._discovery(parts)
            if doc is not None:
                return _json_response(doc)
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        watch = _truthy(request.query.get("watch"))
        if rest and rest[0] == "watch":
            watch, rest = True, rest[1:]
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = resources.find_resource(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        res = resources.find_resource(group, version, rest[0])
        if res is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in res.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if self.auth is not None:  # R: RBAC (403), TokenRequest, reviews (devcluster.rbac)
            answer = await self.auth.handle(request, res, namespace, name, sub, watch)
            if answer is not None:
                return answer
        if name is None:
            if method == "GET" and watch:
                return await self._watch(request, res, namespace)
            if method == "GET":
                return self._list(request, res, namespace)
            if method == "POST":
                dry_run, opts.field_validation = _write_options(request)
                obj = await self._body(request)
                created = self.store.create(res, obj, namespace, dry_run=dry_run)
                return _json_response(created, 201)
            if method == "DELETE":
                return self._delete_collection(request, res, namespace)
        else:
            if sub == "eviction" and method == "POST":  # F: devcluster.disruption
                body = await self._body(request)
                return _json_response(disruption.evict(self.store, namespace, name, body), 201)
            if sub == "log" and method == "GET":
                return await self._log(request, res, namespace, name)
            if sub in streams.SUBRESOURCES:  # D: exec, attach, portforward (devcluster.streams)
                return await streams.serve(self, request, res, namespace, name, sub)
            if sub == "scale":  # R: autoscaling/v1 Scale (devcluster.replicasets)
                return await replicasets.serve_scale(self, request, res, namespace, name)
            if method == "GET":
                return _json_response(self.store.get(res, namespace, name))
            if method == "PUT":
                dry_run, opts.field_validation = _write_options(request)
                obj = await self._body(request)
                return _json_response(
                    self.store.replace(res, namespace, name, obj, sub, dry_run=dry_run)
                )
            if method == "PATCH":
                return await self._patch(request, res, namespace, name, sub)
            if method == "DELETE" and not sub:
                return await self._delete(request, res, namespace, name)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method: {method}")

    def _discovery(self, parts: list[str]) -> dict | None:
        if not parts:
            paths = ["/api", "/api/v1", "/apis", "/version"]
            for g in resources.api_group_list()["groups"]:
                paths += [f"/apis/{g['name']}", f"/apis/{g['preferredVersion']['groupVersion']}"]
            return {"paths": sorted(paths)}
        if parts == ["version"]:
            return SERVER_VERSION
        if parts == ["api"]:
            return resources.api_versions()
        if parts == ["apis"]:
            return resources.api_group_list()
        if parts == ["api", "v1"]:
            return resources.api_resource_list("", "v1")
        if len(parts) == 2 and parts[0] == "apis":
            doc = resources.api_group(parts[1])
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return doc
        if len(parts) == 3 and parts[0] == "apis":
            doc = resources.api_resource_list(parts[1], parts[2])
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return doc
        return None

    @staticmethod
    async def _body(request: web.Request) -> dict:
        raw = await request.read()
        if request.headers.get("Content-Type", "").startswith(protobody.CONTENT_TYPE):
            return protobody.request_body(raw)  # kubectl create namespace|configmap|secret...
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if body is None and raw:
            import yaml  # kubectl sends JSON; YAML is accepted for curl users

            try:
                body = yaml.safe_load(raw)
            except yaml.YAMLError:
                body = None
        if not isinstance(body, dict) and not (
            request.method == "PATCH" and isinstance(body, list)
        ):
            raise ApiError(400, "BadRequest", "the request body is not a JSON object")
        return body  # type: ignore[return-value]

    @staticmethod
    def _selector(request: web.Request, res: Resource) -> Selector:
        try:
            selector = Selector.parse(
                request.query.get("labelSelector"), request.query.get("fieldSelector")
            )
            fields = selectors.check_fields(selector.fields, res.plural, res.namespaced)
            return Selector(selector.labels, fields)
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None

    # -- verbs -----------------------------------------------------------------------------

    def _list(self, request: web.Request, res: Resource, namespace: str | None) -> web.Response:
        items, rv = self.store.list(res, namespace, self._selector(request, res))
        limit = _int_param(request.query, "limit")
        token = request.query.get("continue")
        meta: dict = {"resourceVersion": rv}
        if token:
            since, start = _parse_continue(token)
            if since < self.store._log_floor:
                raise ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use "
                    "the continue token in this response to retrieve the remainder of the "
                    "results. Continuing with the provided token results in an inconsistent "
                    "list - objects that were created, modified, or deleted between the time "
                    "the first chunk was returned and now may show up in the list.",
                )
            items = [o for o in items if _list_key(o) > start]
        if limit and limit > 0 and len(items) > limit:
            rest = len(items) - limit
            items = items[:limit]
            meta["continue"] = _continue_token(rv, _list_key(items[-1]))
            meta["remainingItemCount"] = rest
        if "as=Table" in request.headers.get("Accept", ""):
            table = tables.table(res, items, rv)
            table["metadata"] = meta
            return _json_response(table)
        return _json_response(
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": meta,
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, res: Resource, namespace: str | None
    ) -> web.StreamResponse:
        timeout = _int_param(request.query, "timeoutSeconds")
        selector = self._selector(request, res)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            watcher = self.store.watch(
                res, namespace, selector, request.query.get("resourceVersion")
            )
        except ApiError as exc:
            if exc.code != 410:
                raise
            # as kube-apiserver: the watch starts (200), then one ERROR event with the Status
            await response.prepare(request)
            event = {"type": "ERROR", "object": exc.status()}
            await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        bookmarks = _truthy(request.query.get("allowWatchBookmarks"))
        next_bookmark = loop.time() + self.bookmark_interval
        as_table, first = "as=Table" in request.headers.get("Accept", ""), True
        try:
            await response.prepare(request)
            while not self._closing.is_set():
                now = loop.time()
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    break
                wait = 1.0 if left is None else min(left, 1.0)
                if bookmarks:
                    if now >= next_bookmark:
                        rv_now = self.store.resource_version
                        mark_obj = (  # kubectl get -w decodes every event object as a Table
                            {**tables.table(res, [], rv_now), "columnDefinitions": []}
                            if as_table
                            else {
                                "kind": res.kind,
                                "apiVersion": res.api_version,
                                "metadata": {"resourceVersion": rv_now},
                            }
                        )
                        mark = {"type": "BOOKMARK", "object": mark_obj}
                        await response.write(json.dumps(mark).encode() + b"\n")
                        next_bookmark = now + self.bookmark_interval
                    wait = max(0.0, min(wait, next_bookmark - now))
                event = await watcher.next(wait)
                if event is not None:
                    if as_table:  # kubectl get -w: one-row Tables, columns only in the first
                        obj = event["object"]
                        rv = obj["metadata"]["resourceVersion"]
                        row_table = tables.table(res, [obj], rv)
                        if not first:
                            row_table["columnDefinitions"] = []
                        event = {"type": event["type"], "object": row_table}
                        first = False
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            watcher.close()
        return response

    async def _patch(
        self, request: web.Request, res: Resource, namespace: str | None, name: str, sub: str
    ) -> web.Response:
        opts = validation.OPTIONS.get() or validation.WriteOptions()
        dry_run, opts.field_validation = _write_options(request)
        content_type = request.headers.get("Content-Type", "")
        if not patch_supported(content_type):
            raise ApiError(415, "UnsupportedMediaType", UNSUPPORTED_PATCH_MESSAGE)
        body = await self._body(request)

        def apply(obj: dict) -> dict:
            try:
                return apply_patch(content_type, obj, body)
            except PatchError as exc:
                if "unsupported patch type" in str(exc):
                    raise ApiError(415, "UnsupportedMediaType", str(exc)) from None
                raise ApiError(422, "Invalid", str(exc)) from None

        if (
            apply_creates(content_type)
            and not sub
            and self.store.peek(res, namespace, name) is None
            and isinstance(body, dict)
        ):  # server-side apply of an absent object creates it (devcluster.patching)
            if body.setdefault("metadata", {}).setdefault("name", name) != name:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"the name of the object ({body['metadata']['name']}) does not match the "
                    f"name on the URL ({name})",
                )
            created = self.store.create(res, body, namespace, dry_run=dry_run)
            return _json_response(created, 201)
        patched = self.store.patch(res, namespace, name, apply, sub, dry_run=dry_run)
        return _json_response(patched)

    async def _delete_options(
        self, request: web.Request
    ) -> tuple[int | None, str | None, bool, dict | None]:
        """``(gracePeriodSeconds, propagationPolicy, dryRun, preconditions)`` from the query
        or the DeleteOptions body."""
        dry_run = _write_options(request)[0]
        grace = _int_param(request.query, "gracePeriodSeconds")
        policy = request.query.get("propagationPolicy")
        preconditions = None
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            if isinstance(body, dict):
                if isinstance(body.get("preconditions"), dict):
                    preconditions = body["preconditions"]
                if grace is None and body.get("gracePeriodSeconds") is not None:
                    grace = int(body["gracePeriodSeconds"])
                policy = policy or body.get("propagationPolicy")
                if policy is None and body.get("orphanDependents") is not None:
                    policy = "Orphan" if body["orphanDependents"] else "Background"
                if body.get("dryRun"):
                    if any(v != "All" for v in body["dryRun"]):
                        raise validation.invalid(
                            "DeleteOptions",
                            "",
                            [
                                validation.FieldError(
                                    "FieldValueNotSupported",
                                    "dryRun",
                                    'supported values: "All"',
                                    validation.Raw(
                                        "[]string{"
                                        + ", ".join(json.dumps(v) for v in body["dryRun"])
                                        + "}"
                                    ),
                                )
                            ],
                            "meta.k8s.io",
                        )
                    dry_run = True
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise ApiError(400, "BadRequest", f"invalid propagationPolicy: {policy!r}")
        return grace, policy, dry_run, preconditions

    def _deleted_answer(self, res: Resource, obj: dict, dry_run: bool) -> dict:
        """What DELETE answers: the object (kinds that return it, or a deletion left pending),
        else a ``Status`` ``Success`` (upstream's ``finalizeDelete``)."""
        meta = obj["metadata"]
        pending = (
            bool(meta.get("deletionTimestamp"))
            if dry_run
            else self.store.peek(res, meta.get("namespace"), meta["name"]) is not None
        )
        if res.plural in RETURNS_DELETED_OBJECT or pending:
            return obj
        details = {"name": meta["name"], "kind": res.plural, "uid": meta.get("uid", "")}
        if res.group:
            details["group"] = res.group
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    async def _delete(
        self, request: web.Request, res: Resource, namespace: str | None, name: str
    ) -> web.Response:
        grace, policy, dry_run, preconditions = await self._delete_options(request)
        obj = self.store.delete(
            res, namespace, name, grace, policy, dry_run=dry_run, preconditions=preconditions
        )
        return _json_response(self._deleted_answer(res, obj, dry_run))

    def _delete_collection(
        self, request: web.Request, res: Resource, namespace: str | None
    ) -> web.Response:
        items, rv = self.store.list(res, namespace, self._selector(request, res))
        grace = _int_param(request.query, "gracePeriodSeconds")
        policy = request.query.get("propagationPolicy")
        dry_run = _write_options(request)[0]
        deleted = []
        for obj in items:
            meta = obj["metadata"]
            try:
                deleted.append(
                    self.store.delete(
                        res, meta.get("namespace"), meta["name"], grace, policy, dry_run=dry_run
                    )
                )
            except ApiError:
                continue
        return _json_response(
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": self.store.resource_version},
                "items": deleted,
            }
        )

    # -- health and OpenAPI ------------------------------------------------------------------

    @staticmethod
    def _health(request: web.Request, parts: list[str]) -> web.Response:
        """``/healthz``, ``/livez``, ``/readyz`` (and ``/<x>/<check>``, ``?verbose``): ok."""
        if len(parts) > 1 and "/".join(parts[1:]) not in HEALTH_CHECKS:
            return web.Response(status=404, text="404 page not found\n")
        if "verbose" in request.query:
            lines = [f"[+]{c} ok" for c in HEALTH_CHECKS]
            return web.Response(text="\n".join(lines) + f"\n{parts[0]} check passed\n")
        return web.Response(text="ok")

    def _openapi_v3(self, rest: list[str]) -> web.Response:
        """``/openapi/v3`` (the index) and ``/openapi/v3/api/v1``,
        ``/openapi/v3/apis/<group>/<version>`` (`schema.openapi_group_document`)."""
        served: dict[str, list[Resource]] = {}
        for res in resources.RESOURCES:
            served.setdefault(res.api_version, []).append(res)
        for gv, group_resources in served.items():
            if gv not in self._openapi:
                doc = schema.openapi_group_document(gv, group_resources)
                self._openapi[gv] = json.dumps(doc).encode()
        if not rest:
            return _json_response(schema.openapi_root(self._openapi))
        gv = "/".join(rest[1:])
        if rest[0] not in ("api", "apis") or gv not in self._openapi:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.Response(
            body=self._openapi[gv],
            content_type="application/json",
            headers={"Cache-Control": "public, immutable", "Etag": '"devcluster"'},
        )

    async def _log(
        self, request: web.Request, res: Resource, namespace: str | None, name: str
    ) -> web.StreamResponse:
        pod = self.store.get(res, namespace, name)
        names = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
        inits = [c["name"] for c in pod.get("spec", {}).get("initContainers", []) or []]
        container = request.query.get("container")
        if not container:
            if len(names) != 1:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"[{' '.join(names)}]",
                )
            container = names[0]
        if container not in names + inits:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if self.logs is None:
            raise ApiError(400, "BadRequest", "no kubelet serves logs in this cluster")
        opts = podlogs.options_from_query(request.query, name)  # D: previous/since/...
        chunks = await self.logs.stream_log(
            pod, container, opts.follow, opts.tail_lines, options=opts
        )
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        try:
            async for chunk in chunks:  # type: ignore[attr-defined]
                if self._closing.is_set():
                    break
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response
