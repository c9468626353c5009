"""The HTTP face of the emulated cluster: a Kubernetes-shaped REST API over `Store`.

Serves discovery (``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/<g>/<v>``), and for
each resource in `resources.RESOURCES`: list (``labelSelector``, ``fieldSelector``), watch
(``watch=true|True|1``, ``resourceVersion``, ``timeoutSeconds``; also ``/watch/`` paths), get,
create (POST), replace (PUT), patch (merge, strategic, JSON patch), delete
(``gracePeriodSeconds``, ``propagationPolicy``, in the query or a DeleteOptions body),
deletecollection, the ``status`` subresource and the pods ``log`` subresource. Errors are
``Status`` objects. ``Accept: ...;as=Table`` gets a server-side Table (as kubectl asks).

Any bearer token, or none, is accepted: there is no authentication nor authorization.
API reference: https://kubernetes.io/docs/reference/using-api/api-concepts/
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Protocol

from aiohttp import web

from . import resources, tables
from .patching import PatchError, apply_patch
from .resources import Resource
from .selectors import Selector, SelectorError
from .store import ApiError, Store

log = logging.getLogger(__name__)

SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-llmspawner-devcluster",
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
        self, pod: dict, container: str, follow: bool, tail_lines: int | None
    ) -> object:
        """An async iterator of bytes chunks; raises `ApiError` 400 if there is no log yet."""


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes")


def _int_param(query, name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "BadRequest", f"invalid {name}: {value!r}") from None


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
        try:
            return await self._route(request)
        except ApiError as exc:
            return _json_response(exc.status(), exc.code)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # a bug here must still answer as an API server would
            log.exception("devcluster API error on %s %s", request.method, request.path)
            err = ApiError(500, "InternalError", f"internal error: {exc!r}")
            return _json_response(err.status(), 500)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        method = request.method
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
        if name is None:
            if method == "GET" and watch:
                return await self._watch(request, res, namespace)
            if method == "GET":
                return self._list(request, res, namespace)
            if method == "POST":
                obj = await self._body(request)
                return _json_response(self.store.create(res, obj, namespace), 201)
            if method == "DELETE":
                return self._delete_collection(request, res, namespace)
        else:
            if sub == "log" and method == "GET":
                return await self._log(request, res, namespace, name)
            if method == "GET":
                return _json_response(self.store.get(res, namespace, name))
            if method == "PUT":
                obj = await self._body(request)
                return _json_response(self.store.replace(res, namespace, name, obj, sub))
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
    def _selector(request: web.Request) -> Selector:
        try:
            return Selector.parse(
                request.query.get("labelSelector"), request.query.get("fieldSelector")
            )
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None

    # -- verbs -----------------------------------------------------------------------------

    def _list(self, request: web.Request, res: Resource, namespace: str | None) -> web.Response:
        items, rv = self.store.list(res, namespace, self._selector(request))
        if "as=Table" in request.headers.get("Accept", ""):
            return _json_response(tables.table(res, items, rv))
        return _json_response(
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, res: Resource, namespace: str | None
    ) -> web.StreamResponse:
        timeout = _int_param(request.query, "timeoutSeconds")
        watcher = self.store.watch(
            res, namespace, self._selector(request), request.query.get("resourceVersion")
        )
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        as_table, first = "as=Table" in request.headers.get("Accept", ""), True
        try:
            await response.prepare(request)
            while not self._closing.is_set():
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    break
                wait = 1.0 if left is None else min(left, 1.0)
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
        body = await self._body(request)
        content_type = request.headers.get("Content-Type", "")

        def apply(obj: dict) -> dict:
            try:
                return apply_patch(content_type, obj, body)
            except PatchError as exc:
                if "unsupported patch type" in str(exc):
                    raise ApiError(415, "UnsupportedMediaType", str(exc)) from None
                raise ApiError(422, "Invalid", str(exc)) from None

        return _json_response(self.store.patch(res, namespace, name, apply, sub))

    async def _delete_options(self, request: web.Request) -> tuple[int | None, str | None]:
        grace = _int_param(request.query, "gracePeriodSeconds")
        policy = request.query.get("propagationPolicy")
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            if isinstance(body, dict):
                if grace is None and body.get("gracePeriodSeconds") is not None:
                    grace = int(body["gracePeriodSeconds"])
                policy = policy or body.get("propagationPolicy")
                if policy is None and body.get("orphanDependents") is not None:
                    policy = "Orphan" if body["orphanDependents"] else "Background"
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise ApiError(400, "BadRequest", f"invalid propagationPolicy: {policy!r}")
        return grace, policy

    async def _delete(
        self, request: web.Request, res: Resource, namespace: str | None, name: str
    ) -> web.Response:
        grace, policy = await self._delete_options(request)
        return _json_response(self.store.delete(res, namespace, name, grace, policy))

    def _delete_collection(
        self, request: web.Request, res: Resource, namespace: str | None
    ) -> web.Response:
        items, rv = self.store.list(res, namespace, self._selector(request))
        grace = _int_param(request.query, "gracePeriodSeconds")
        policy = request.query.get("propagationPolicy")
        deleted = []
        for obj in items:
            meta = obj["metadata"]
            try:
                deleted.append(
                    self.store.delete(res, meta.get("namespace"), meta["name"], grace, policy)
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
        follow = _truthy(request.query.get("follow"))
        tail = _int_param(request.query, "tailLines")
        chunks = await self.logs.stream_log(pod, container, follow, tail)
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
