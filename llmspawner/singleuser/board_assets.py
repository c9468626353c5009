"""Gradio's built assets of LlamaBoard's page, served by the user's Jupyter server itself.

A LlamaBoard page load is about 55 requests under ``<base_url>llamaboard/assets/``: Gradio's
built, content-hashed JavaScript and CSS, which Gradio serves as plain files from the
installed package's ``gradio/templates/frontend/assets`` folder (``build_resource``,
https://github.com/gradio-app/gradio/blob/main/gradio/routes.py). Through
jupyter-server-proxy each one costs the user's server a proxied request (a new upstream
connection, 5-7 ms of CPU) and Gradio its own request. This extension answers them from that
folder directly, in the user's server:

- **Only files that exist there.** The route's matcher (:class:`AssetMatcher`) knows the
  folder's file names (read once at start-up, symlinks leading out of the folder left out)
  and matches only a request path naming one of them exactly; any other path under
  ``assets/`` (a file of another Gradio version than the server's, ``..``, encoded or not)
  is not matched and goes on to jupyter-server-proxy and LlamaBoard as before.
- **Authenticated as every proxied request** (jupyterhub-singleuser's auth under
  JupyterHub): the same ``prepare`` check as jupyter-server-proxy's ``ProxyHandler``
  (``web.authenticated``: a redirect to the login page for a GET without a user), and, as
  that handler, no XSRF check of its own (JupyterHub's check would refuse the login cookie of
  the browser's ``Sec-Fetch-Mode: cors`` module fetches; see ``check_xsrf_cookie``).
- **Compressed**: gzip when the request accepts it (each file compressed once, in a thread,
  kept in a bounded in-memory cache, :class:`GzipCache`), ``Vary: Accept-Encoding``;
  ``Cache-Control: private, max-age=31536000, immutable`` for content-hashed names
  (``private``: behind auth), ``no-cache`` otherwise; ETag and 304 from tornado's
  ``StaticFileHandler``.
- **Activity**: the same decision as for the proxied request
  (:func:`llmspawner.singleuser.gradio_activity.is_user_activity`, which counts an asset GET
  as activity), recorded under ``last_activity_times["llmspawner-board-assets"]``.

The rule is put first in the application's router from this extension's load hook:
extensions load in name order (``jupyter_server_proxy`` before ``llmspawner...``) and
tornado serves the first rule that matches, so added normally the proxy's
``<base_url>llamaboard/(.*)`` rule would win.

Switched off by ``LLMSPAWNER_LLAMABOARD_ASSETS=0`` (``0``/``false``/``no``/``off``) in the
server's environment: every request then goes through jupyter-server-proxy. Enabled by
``jupyter-config/jupyter_server_config.d/llmspawner.json`` (installed to ``etc/jupyter``).
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tornado import web
from tornado.routing import PathMatches, Rule

from . import gradio_activity
from .llamaboard import SERVER_NAME

log = logging.getLogger(__name__)

#: Environment variable switching the route (``0``/``false``/``no``/``off``: off).
ENABLE_ENV = "LLMSPAWNER_LLAMABOARD_ASSETS"
#: The ``last_activity_times`` key of an asset request counted as activity.
ACTIVITY_KEY = "llmspawner-board-assets"
#: The route's name in the router (``web_app.default_router.named_rules``).
RULE_NAME = "llmspawner-board-assets"
#: The cache's bound: bytes of compressed content kept in memory (LlamaBoard's page needs
#: about 3 MB compressed; Gradio's whole folder with source maps is about 20 MB).
GZIP_CACHE_BYTES = 32 * 1024 * 1024
#: File name suffixes worth compressing (fonts in woff/woff2 are compressed already).
COMPRESSIBLE = (".js", ".mjs", ".css", ".map", ".svg", ".json", ".ttf", ".html", ".txt")
#: Files smaller than this are sent as they are (gzip's framing would eat the gain).
MIN_GZIP_BYTES = 256
#: Vite's content hash in a built file name: ``Blocks-BEaKnzuj.js``, ``index-B7xG8uq0.css``.
HASHED_NAME = re.compile(r"-[A-Za-z0-9_-]{8}\.[A-Za-z0-9.]+$")
IMMUTABLE = "private, max-age=31536000, immutable"


def assets_enabled(environ: Mapping[str, str], *, log: logging.Logger = log) -> bool:
    """Whether the route is on: ``LLMSPAWNER_LLAMABOARD_ASSETS``.

    Args:
        environ: the server's environment.
        log: where a bad value is reported (the server's log).

    Returns:
        True when unset or empty (the default) or ``1``/``true``/``yes``/``on``; False for
        ``0``/``false``/``no``/``off`` (any case). Anything else is logged as a warning naming
        the variable and the allowed values, and counts as unset (True).
    """
    from llmspawner.settings import env_switch

    return env_switch(
        environ,
        ENABLE_ENV,
        default=True,
        log=log,
        meaning="LlamaBoard's assets are served by the server",
    )


def gradio_assets_dir() -> Path | None:
    """The installed Gradio's ``templates/frontend/assets`` folder, found without importing
    gradio (``importlib.util.find_spec``); None when gradio is not installed here or the
    folder is missing."""
    try:
        spec = importlib.util.find_spec("gradio")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "templates" / "frontend" / "assets"
        if folder.is_dir():
            return folder
    return None


def asset_names(root: Path) -> frozenset[str]:
    """Relative POSIX names of the regular files under ``root`` (recursively) that stay
    inside it after following symlinks; links leading out of ``root`` are left out.

    Args:
        root: a folder.

    Returns:
        e.g. ``{"Blocks-BEaKnzuj.js", "svelte/svelte.js"}``; empty when ``root`` is unreadable.
    """
    real_root = os.path.realpath(root)
    names = set()
    for folder, _dirs, files in os.walk(real_root):
        for name in files:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if os.path.commonpath([real, real_root]) != real_root or not os.path.isfile(real):
                continue
            names.add(os.path.relpath(path, real_root).replace(os.sep, "/"))
    return frozenset(names)


class AssetMatcher(PathMatches):
    """Matches ``<prefix>assets/<name>`` only when ``<name>`` is one of ``names`` exactly.

    The name is compared after tornado's percent-decoding of the path argument, so
    ``..%2F`` or ``%2e%2e`` never match (such names are not in ``names``); a request that
    does not match falls through to the next rule (jupyter-server-proxy).
    """

    def __init__(self, prefix: str, names: frozenset[str]):
        super().__init__(re.escape(prefix.rstrip("/") + "/assets/") + "(.+)")
        self.names = names

    def match(self, request) -> dict[str, Any] | None:
        found = super().match(request)
        if found is None:
            return None
        args = found.get("path_args") or []
        if len(args) != 1 or args[0] is None:
            return None
        name = args[0] if isinstance(args[0], str) else args[0].decode("utf-8", "replace")
        return found if name in self.names else None


class GzipCache:
    """gzip bytes of files, each compressed once, least recently used dropped beyond
    ``max_bytes`` (sum of compressed sizes). Thread-safe.

    Keys are ``(absolute path, mtime_ns, size)``, so a changed file is compressed again.
    """

    def __init__(self, max_bytes: int = GZIP_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(path: str) -> tuple:
        st = os.stat(path)
        return (path, st.st_mtime_ns, st.st_size)

    def get(self, path: str) -> bytes:
        """The gzip of the file at ``path`` (compressed now when not cached).

        Raises:
            OSError: the file cannot be read.
        """
        key = self.key(path)
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                return data
        with open(path, "rb") as f:
            data = gzip.compress(f.read(), compresslevel=6, mtime=0)
        with self._lock:
            if key not in self._items and len(data) <= self.max_bytes:
                self._items[key] = data
                self._size += len(data)
                while self._size > self.max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self._size -= len(dropped)
        return data

    def get_if_worth(self, path: str, min_bytes: int = MIN_GZIP_BYTES) -> bytes | None:
        """:meth:`get` for a file of at least ``min_bytes``; None for a smaller one or one
        that cannot be read (tornado then answers it, 404 if it is gone)."""
        try:
            if os.path.getsize(path) < min_bytes:
                return None
            return self.get(path)
        except OSError:
            return None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes of compressed content held."""
        return self._size


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header value accepts gzip (pure): ``gzip`` or ``*``
    listed without ``q=0``."""
    if not header:
        return False
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                if float(q[2:]) == 0:
                    continue
            except ValueError:
                continue
        return True
    return False


def _handler_class():
    from jupyter_server.base.handlers import JupyterHandler

    class BoardAssetsHandler(JupyterHandler, web.StaticFileHandler):
        """``GET/HEAD <base_url>llamaboard/assets/<name>`` from Gradio's assets folder."""

        def initialize(self, path: str, cache: GzipCache) -> None:  # type: ignore[override]
            web.StaticFileHandler.initialize(self, path=path)
            self._gzip_cache = cache
            self._gzipped: bytes | None = None

        async def prepare(self, *args, **kwargs):
            # The same check as jupyter_server_proxy.handlers.ProxyHandler.prepare.
            prepared = super().prepare(*args, **kwargs)
            if prepared is not None:
                await prepared
            web.authenticated(lambda request_handler: None)(self)

        def check_xsrf_cookie(self) -> None:
            """No XSRF check for these GETs, as jupyter-server-proxy's ``ProxyHandler``.

            JupyterHub's singleuser auth accepts the login cookie of a request whose
            ``Sec-Fetch-Mode`` is ``cors`` only if the handler's ``check_xsrf_cookie`` passes
            (``HubOAuth._get_user_cookie``, jupyterhub/services/auth.py); a browser fetches
            Gradio's JavaScript modules in that mode without an ``_xsrf`` token, so tornado's
            check would refuse the cookie and send every module to the login page. This route
            only reads public files of the installed Gradio (GET/HEAD; other methods 405), so
            there is nothing for a forged request to change; the login is still required.
            """

        @web.authenticated
        async def get(self, path: str, include_body: bool = True) -> None:
            request = self.request
            if gradio_activity.is_user_activity(request.method, request.path, None, ()):
                self.settings.setdefault("last_activity_times", {})[ACTIVITY_KEY] = datetime.now(
                    timezone.utc
                )
            if path.endswith(COMPRESSIBLE) and accepts_gzip(request.headers.get("Accept-Encoding")):
                from tornado.ioloop import IOLoop

                absolute = self.get_absolute_path(self.root, self.parse_url_path(path))
                self._gzipped = await IOLoop.current().run_in_executor(
                    None, self._gzip_cache.get_if_worth, absolute
                )
            await web.StaticFileHandler.get(self, path, include_body)

        def compute_etag(self) -> str | None:
            etag = web.StaticFileHandler.compute_etag(self)
            if etag and self._gzipped is not None:
                etag = etag[:-1] + '-gzip"'  # another representation, another tag
            return etag

        def get_content_size(self) -> int:
            if self._gzipped is not None:
                return len(self._gzipped)
            return web.StaticFileHandler.get_content_size(self)

        def get_content(self, abspath, start=None, end=None):  # type: ignore[override]
            if self._gzipped is not None:
                return self._gzipped[start:end]
            return web.StaticFileHandler.get_content(abspath, start, end)

        @classmethod
        def get_content_version(cls, abspath: str) -> str:
            # A class method in tornado that calls cls.get_content: keep tornado's own.
            return web.StaticFileHandler.get_content_version(abspath)

        def get_cache_time(self, path, modified, mime_type) -> int:
            return 0  # Cache-Control is set in set_extra_headers

        def set_extra_headers(self, path: str) -> None:
            if path.endswith(COMPRESSIBLE):
                self.set_header("Vary", "Accept-Encoding")
            if self._gzipped is not None:
                self.set_header("Content-Encoding", "gzip")
            hashed = HASHED_NAME.search(path.rsplit("/", 1)[-1])
            self.set_header("Cache-Control", IMMUTABLE if hashed else "no-cache")

    return BoardAssetsHandler


def asset_rule(
    base_url: str, root: Path, names: frozenset[str], cache: GzipCache | None = None
) -> Rule:
    """The router rule serving ``<base_url>llamaboard/assets/<name>`` from ``root`` (pure:
    the folder is not read here).

    Args:
        base_url: the server's ``base_url``, e.g. ``/user/alice/``.
        root: the assets folder (:func:`gradio_assets_dir`), an absolute real path.
        names: the files the route serves, relative to ``root`` (:func:`asset_names`).
        cache: the gzip cache (a new :class:`GzipCache` when None).
    """
    from jupyter_server.utils import url_path_join

    prefix = url_path_join(base_url, SERVER_NAME)
    return Rule(
        AssetMatcher(prefix, names),
        _handler_class(),
        {"path": str(root), "cache": cache or GzipCache()},
        name=RULE_NAME,
    )


def install(web_app, rule: Rule) -> None:
    """Put ``rule`` first in ``web_app``'s router, before every rule added so far
    (jupyter-server-proxy's among them), and name it (``default_router.named_rules``)."""
    router = web_app.default_router
    router.rules.insert(0, router.process_rule(rule))  # process_rule names it


def _jupyter_server_extension_points() -> Iterable[dict]:
    return [{"module": "llmspawner.singleuser.board_assets"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Put the assets route before jupyter-server-proxy's (unless switched off)."""
    if not assets_enabled(os.environ, log=serverapp.log):
        serverapp.log.info("LlamaBoard's assets go through the proxy (%s is off)", ENABLE_ENV)
        return
    root = gradio_assets_dir()
    if root is None:
        serverapp.log.info("LlamaBoard's assets go through the proxy (no gradio installed here)")
        return
    web_app = serverapp.web_app
    root = Path(os.path.realpath(root))
    rule = asset_rule(web_app.settings.get("base_url", "/"), root, asset_names(root))
    install(web_app, rule)
    serverapp.log.info(
        "llmspawner: LlamaBoard's assets served from %s (%d files)",
        root,
        len(rule.matcher.names),
    )
