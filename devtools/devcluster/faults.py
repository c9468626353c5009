"""A fault-injecting HTTP proxy to put in front of the emulated API server (tests, dev stack).

    with FaultProxy(cluster.url) as proxy:            # its own event loop, in a thread
        proxy.fail(method="DELETE", path_regex=r"/pods/", status=503, times=1)
        ...  # point the client at proxy.url
        assert proxy.hits("DELETE", r"/pods/") == 2   # the failed try and the retry

    async with FaultProxy(cluster.url) as proxy:      # in the running loop (pytest-asyncio)
        ...

Every request goes to ``upstream_url`` unchanged and its answer comes back streamed chunk by
chunk (watches and ``log?follow=true`` stay live), unless a rule matches. Rules (tried in
the order added; the first matching one with ``times`` left applies):

- :meth:`FaultProxy.fail`: answer ``status`` with a Kubernetes ``Status`` body worded as
  kube-apiserver's (``k8s.io/apimachinery/pkg/api/errors``:
  https://github.com/kubernetes/apimachinery/blob/master/pkg/api/errors/errors.go), without
  reaching the API server;
- :meth:`FaultProxy.drop`: close the connection without any answer (``after_upstream``: the
  API server gets the request and acts on it; its answer is lost);
- :meth:`FaultProxy.delay`: wait, then forward.

:meth:`FaultProxy.hits` counts requests seen (faulted or not), :meth:`FaultProxy.faults`
those a rule failed or dropped, :meth:`FaultProxy.cut` aborts every open streaming answer (a
network blip for watches). For development and tests only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web
from aiohttp.client_exceptions import ClientError

log = logging.getLogger(__name__)

#: Status ``reason`` and message per code, as ``apimachinery/pkg/api/errors`` words them.
STATUS_REASONS: dict[int, tuple[str, str]] = {
    409: ("Conflict", "the server reported a conflict"),
    429: (
        "TooManyRequests",
        "the server has received too many requests and has asked us to try again later",
    ),
    500: (
        "InternalError",
        'an error on the server ("injected fault") has prevented the request from succeeding',
    ),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: (
        "Timeout",
        (
            "the server was unable to return a response in the time allotted, but may still "
            "be processing the request"
        ),
    ),
}
ACTIONS = ("fail", "drop", "delay")
#: How many requests :meth:`FaultProxy.hits` remembers (a long dev run forgets the oldest).
SEEN_LIMIT = 100_000
_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
    "te",
    "trailer",
}


def status_body(code: int, message: str | None = None) -> dict:
    """The ``Status`` object kube-apiserver answers with ``code`` (reason and default message
    from :data:`STATUS_REASONS`; ``Unknown`` for other codes)."""
    reason, default = STATUS_REASONS.get(code, ("Unknown", f"the server responded with {code}"))
    details: dict = {"retryAfterSeconds": 1} if code in (429, 503, 504) else {}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message or default,
        "reason": reason,
        "details": details,
        "code": code,
    }


@dataclass
class Rule:
    """One fault rule. ``times``: how many more times it applies (None: always); ``hits``:
    how many times it has applied."""

    action: str
    method: str | None = None
    path_regex: str | None = None
    query_regex: str | None = None
    times: int | None = 1
    status: int = 503
    message: str | None = None
    seconds: float = 0.0
    after_upstream: bool = False
    hits: int = 0
    _path: re.Pattern | None = field(default=None, repr=False)
    _query: re.Pattern | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"fault action {self.action!r}: expected one of {list(ACTIONS)}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"fault times {self.times!r}: expected None or an integer >= 0")
        if self.action == "fail" and not 100 <= int(self.status) <= 599:
            raise ValueError(f"fault status {self.status!r}: expected an HTTP status 100-599")
        self.method = self.method.upper() if self.method else None
        self._path = re.compile(self.path_regex) if self.path_regex else None
        self._query = re.compile(self.query_regex) if self.query_regex else None

    def matches(self, method: str, path: str, query: str) -> bool:
        """Whether this rule concerns the request (ignoring ``times``)."""
        return (
            (self.method is None or self.method == method.upper())
            and (self._path is None or bool(self._path.search(path)))
            and (self._query is None or bool(self._query.search(query)))
        )

    @classmethod
    def from_dict(cls, data: dict) -> Rule:
        """A rule from its JSON form (``{"action": "fail", "method": ..., ...}``); raises
        ValueError naming the unknown key or the bad value."""
        allowed = {
            "action",
            "method",
            "path_regex",
            "query_regex",
            "times",
            "status",
            "message",
            "seconds",
            "after_upstream",
        }
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"fault rule keys {unknown}: expected some of {sorted(allowed)}")
        return cls(**data)


class FaultProxy:
    """An HTTP proxy to ``upstream_url`` that injects the faults of its rules.

    Args:
        upstream_url: the API server, ``http://host:port``.
        host, port: where the proxy listens (port 0: a free one); :attr:`url` once started.

    Start it with :meth:`start` (its own event loop in a daemon thread; :meth:`stop`), or
    ``await`` :meth:`astart` in a running loop (:meth:`astop`); or use it as a (sync or
    async) context manager. Rule methods and counters are thread-safe and may be called
    from any thread at any time.
    """

    def __init__(self, upstream_url: str, host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream_url.rstrip("/")
        self.host = host
        self.port = port
        self.url = ""
        self._rules: list[Rule] = []
        #: (method, path, faulted) of the last :data:`SEEN_LIMIT` requests
        self._seen: collections.deque[tuple[str, str, bool]] = collections.deque(maxlen=SEEN_LIMIT)
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._streams: set[asyncio.Transport] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- rules -----------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Add a rule (after the others); returns it."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        status: int = 503,
        times: int | None = 1,
        *,
        message: str | None = None,
        query_regex: str | None = None,
    ) -> Rule:
        """Answer ``status`` (a ``Status`` body, see :func:`status_body`) to the next
        ``times`` matching requests (None: all), without reaching the API server."""
        return self.add(
            Rule("fail", method, path_regex, query_regex, times, status=status, message=message)
        )

    def drop(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        times: int | None = 1,
        *,
        after_upstream: bool = False,
        query_regex: str | None = None,
    ) -> Rule:
        """Close the connection of the next ``times`` matching requests without an answer;
        ``after_upstream``: forward the request first (the API server acts on it), then drop
        its answer."""
        return self.add(
            Rule("drop", method, path_regex, query_regex, times, after_upstream=after_upstream)
        )

    def delay(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        seconds: float = 1.0,
        times: int | None = None,
        *,
        query_regex: str | None = None,
    ) -> Rule:
        """Wait ``seconds`` before forwarding the next ``times`` matching requests (None:
        all)."""
        return self.add(Rule("delay", method, path_regex, query_regex, times, seconds=seconds))

    def set_rules(self, rules: list[Rule]) -> None:
        """Replace every rule at once."""
        with self._lock:
            self._rules = list(rules)

    def clear(self) -> None:
        """Remove every rule (the counters of :meth:`hits` stay; see :meth:`reset_hits`)."""
        with self._lock:
            self._rules = []

    def reset_hits(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self._seen.clear()

    def hits(self, method: str | None = None, path_regex: str | None = None) -> int:
        """How many requests (faulted or not) matched ``method`` (None: any) and
        ``path_regex`` (``re.search`` on the path; None: any), of the last
        :data:`SEEN_LIMIT`."""
        return self._count(method, path_regex, faulted_only=False)

    def faults(self, method: str | None = None, path_regex: str | None = None) -> int:
        """How many of the matching requests a ``fail`` or ``drop`` rule answered."""
        return self._count(method, path_regex, faulted_only=True)

    def _count(self, method: str | None, path_regex: str | None, faulted_only: bool) -> int:
        pattern = re.compile(path_regex) if path_regex else None
        with self._lock:
            seen = list(self._seen)
        return sum(
            1
            for m, p, faulted in seen
            if (method is None or m == method.upper())
            and (pattern is None or pattern.search(p))
            and (faulted or not faulted_only)
        )

    def _pick(self, method: str, path: str, query: str) -> Rule | None:
        with self._lock:
            rule = next(
                (
                    r
                    for r in self._rules
                    if (r.times is None or r.times > 0) and r.matches(method, path, query)
                ),
                None,
            )
            if rule is not None:
                rule.hits += 1
                if rule.times is not None:
                    rule.times -= 1
            self._seen.append((method.upper(), path, rule is not None and rule.action != "delay"))
        return rule

    # -- serving ---------------------------------------------------------------------------

    async def astart(self) -> FaultProxy:
        """Listen in the running event loop; sets :attr:`url`; returns self."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = ClientSession(
            timeout=ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else self.port
        self.url = f"http://{self.host}:{self.port}"
        log.info("fault proxy %s -> %s", self.url, self.upstream)
        return self

    async def astop(self) -> None:
        """Abort open streams, stop listening, close the upstream session."""
        self._cut_now()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def start(self) -> FaultProxy:
        """Run the proxy in its own event loop in a daemon thread; returns self once it
        listens (:attr:`url` set). Raises what :meth:`astart` raised."""
        if self._thread is not None:
            raise RuntimeError("the fault proxy is already started")
        loop = asyncio.new_event_loop()
        started: dict = {}
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.astart())
            except BaseException as exc:  # reported to start()'s caller
                started["error"] = exc
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="devcluster-fault-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if "error" in started:
            self._thread.join()
            self._thread = self._loop = None
            raise started["error"]
        return self

    def stop(self) -> None:
        """Stop the thread started by :meth:`start` (no-op if not started)."""
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.astop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = self._loop = None

    def cut(self) -> None:
        """Abort every streaming answer now open (watches, followed logs): a network blip."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cut_now)
        else:
            self._cut_now()

    def _cut_now(self) -> None:
        for transport in list(self._streams):
            transport.abort()
        self._streams.clear()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    async def __aenter__(self) -> FaultProxy:
        return await self.astart()

    async def __aexit__(self, *exc_info) -> None:
        await self.astop()

    # -- one request -----------------------------------------------------------------------

    @staticmethod
    def _abort(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        # aiohttp writes nothing to an aborted transport; the client sees the connection end
        raise asyncio.CancelledError

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rule = self._pick(request.method, request.path, request.query_string)
        if rule is not None and rule.action == "delay":
            await asyncio.sleep(rule.seconds)
        elif rule is not None and rule.action == "fail":
            await request.read()
            body = status_body(int(rule.status), rule.message)
            headers = {"Retry-After": "1"} if rule.status in (429, 503, 504) else {}
            return web.Response(
                body=json.dumps(body).encode(),
                status=int(rule.status),
                content_type="application/json",
                headers=headers,
            )
        elif rule is not None and rule.action == "drop" and not rule.after_upstream:
            return self._abort(request)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        target = self.upstream + request.rel_url.raw_path_qs
        try:
            upstream = await self._session.request(
                request.method,
                target,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            )
        except (ClientError, OSError) as exc:
            log.warning("fault proxy: upstream %s %s failed: %s", request.method, target, exc)
            return self._abort(request)
        async with upstream:
            if rule is not None and rule.action == "drop":
                await upstream.read()
                return self._abort(request)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_HEADERS:
                    response.headers.add(key, value)
            if upstream.headers.get("Content-Length") is not None:
                response.content_length = int(upstream.headers["Content-Length"])
            await response.prepare(request)
            transport = request.transport
            if transport is not None:
                self._streams.add(transport)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ClientError, ConnectionResetError, OSError):
                if transport is not None:
                    transport.abort()
            finally:
                if transport is not None:
                    self._streams.discard(transport)
            return response


def load_rules(path: str | Path) -> list[Rule]:
    """The rules in a JSON file (a list of :meth:`Rule.from_dict` objects; a missing or empty
    file: none). Raises ValueError naming the file and the bad rule."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rules")
    rules = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: rule {i}: expected an object")
        try:
            rules.append(Rule.from_dict(item))
        except (TypeError, ValueError, re.error) as exc:
            raise ValueError(f"{path}: rule {i}: {exc}") from None
    return rules


class RulesFile:
    """Keeps a proxy's rules equal to a JSON file's (:func:`load_rules`), re-read when the
    file changes (checked every ``interval`` seconds in a daemon thread). A bad file is
    logged and the previous rules kept."""

    def __init__(self, proxy: FaultProxy, path: str | Path, interval: float = 0.5):
        self.proxy = proxy
        self.path = Path(path)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stamp: tuple | None = None

    def check(self) -> None:
        """Re-read the file if it changed since the last check."""
        try:
            st = self.path.stat()
            stamp: tuple | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            rules = load_rules(self.path)
        except ValueError as exc:
            log.error("fault proxy: %s (rules unchanged)", exc)
            return
        self.proxy.set_rules(rules)
        log.info("fault proxy: %d rule(s) from %s", len(rules), self.path)

    def start(self) -> RulesFile:
        """Check now, then in a daemon thread until :meth:`stop`."""
        self.check()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                with contextlib.suppress(Exception):
                    self.check()

        self._thread = threading.Thread(target=loop, name="fault-rules", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching the file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class StackFaults:
    """The fault proxy of ``llmspawner dev --api-faults``: a :class:`FaultProxy` to
    ``upstream_url`` in a thread, its rules kept equal to ``rules_path`` (:class:`RulesFile`;
    created empty if missing), and at ``kubeconfig_path`` a copy of the cluster's kubeconfig
    ``source_kubeconfig`` (same users and tokens) whose servers are the proxy (for the hub
    and its services). :meth:`start` returns self; :meth:`stop` ends both.
    """

    def __init__(
        self,
        upstream_url: str,
        rules_path: str | Path,
        kubeconfig_path: str | Path,
        source_kubeconfig: str | Path,
    ):
        self.proxy = FaultProxy(upstream_url)
        self.rules_path = Path(rules_path)
        self.kubeconfig_path = Path(kubeconfig_path)
        self.source_kubeconfig = Path(source_kubeconfig)
        self._rules: RulesFile | None = None

    @property
    def url(self) -> str:
        """The proxy's URL (after :meth:`start`)."""
        return self.proxy.url

    def start(self) -> StackFaults:
        """Start the proxy and the rules file's watch; write the kubeconfig."""
        import yaml

        if not self.rules_path.exists():
            self.rules_path.parent.mkdir(parents=True, exist_ok=True)
            self.rules_path.write_text("[]\n")
        self.proxy.start()
        self._rules = RulesFile(self.proxy, self.rules_path).start()
        config = yaml.safe_load(self.source_kubeconfig.read_text())
        for entry in config.get("clusters") or []:
            entry["cluster"]["server"] = self.proxy.url
        self.kubeconfig_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.kubeconfig_path.with_name(self.kubeconfig_path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.kubeconfig_path)
        return self

    def stop(self) -> None:
        """Stop watching the rules file and stop the proxy."""
        if self._rules is not None:
            self._rules.stop()
            self._rules = None
        self.proxy.stop()
