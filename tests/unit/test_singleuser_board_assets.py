"""LlamaBoard's Gradio assets served by the user's server (llmspawner.singleuser.board_assets):
the pure parts and the router placement. The handler itself runs in a real Jupyter server in
tests/integration/test_llamaboard_proxy.py."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.web import Application, RequestHandler

from llmspawner.singleuser import board_assets
from llmspawner.singleuser.board_assets import (
    AssetMatcher,
    GzipCache,
    accepts_gzip,
    asset_names,
    assets_enabled,
)


@pytest.fixture
def folder(tmp_path):
    """assets/ with two files, a sub-folder, a link inside and links leading out of it."""
    root = tmp_path / "assets"
    (root / "svelte").mkdir(parents=True)
    (root / "Blocks-BEaKnzuj.js").write_text("console.log(1);\n" * 100)
    (root / "svelte" / "svelte.js").write_text("export {};\n")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "outside").mkdir()
    (root / "inside-link.js").symlink_to(root / "svelte" / "svelte.js")
    (root / "out-link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "out-dir").symlink_to(tmp_path / "outside")
    (tmp_path / "outside" / "x.js").write_text("x")
    return root


def test_asset_names_leave_out_links_out_of_the_folder(folder):
    assert asset_names(folder) == {"Blocks-BEaKnzuj.js", "svelte/svelte.js", "inside-link.js"}


def _request(path: str) -> HTTPServerRequest:
    return HTTPServerRequest(
        start_line=RequestStartLine("GET", path, "HTTP/1.1"),
        headers=HTTPHeaders({"Host": "127.0.0.1"}),
    )


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/user/alice/llamaboard/assets/Blocks-BEaKnzuj.js", "Blocks-BEaKnzuj.js"),
        ("/user/alice/llamaboard/assets/svelte/svelte.js", "svelte/svelte.js"),
        # decoded, inside the folder
        ("/user/alice/llamaboard/assets/svelte%2Fsvelte.js", "svelte/svelte.js"),
        ("/user/alice/llamaboard/assets/Blocks-BEaKnzuj.js?v=1", "Blocks-BEaKnzuj.js"),
    ],
)
def test_matcher_matches_files_of_the_folder(folder, path, name):
    matcher = AssetMatcher("/user/alice/llamaboard", asset_names(folder))
    found = matcher.match(_request(path))
    (arg,) = found["path_args"]
    assert (arg.decode() if isinstance(arg, bytes) else arg) == name
    assert found["path_kwargs"] == {}


@pytest.mark.parametrize(
    "path",
    [
        "/user/alice/llamaboard/assets/Missing-AAAAAAAA.js",  # another Gradio version's
        "/user/alice/llamaboard/assets/../secret.txt",
        "/user/alice/llamaboard/assets/..%2Fsecret.txt",
        "/user/alice/llamaboard/assets/%2e%2e/secret.txt",
        "/user/alice/llamaboard/assets/%2E%2E%2Fsecret.txt",
        "/user/alice/llamaboard/assets/svelte/../Blocks-BEaKnzuj.js",
        "/user/alice/llamaboard/assets//etc/passwd",
        "/user/alice/llamaboard/assets/%2Fetc%2Fpasswd",
        "/user/alice/llamaboard/assets/out-link.txt",
        "/user/alice/llamaboard/assets/out-dir/x.js",
        "/user/alice/llamaboard/assets/",
        "/user/alice/llamaboard/assets/svelte",
        "/user/alice/llamaboard/Blocks-BEaKnzuj.js",
        "/user/bob/llamaboard/assets/Blocks-BEaKnzuj.js",
        "/user/alice/llamaboardx/assets/Blocks-BEaKnzuj.js",
    ],
)
def test_matcher_leaves_everything_else_to_the_proxy(folder, path):
    matcher = AssetMatcher("/user/alice/llamaboard", asset_names(folder))
    assert matcher.match(_request(path)) is None


class _Proxy(RequestHandler):
    def get(self, path):
        self.write("proxy")


def test_install_puts_the_rule_before_the_proxys(folder):
    """Added as usual, the rule would come after jupyter-server-proxy's catch-all."""
    app = Application([(r"/user/alice/llamaboard/(.*)", _Proxy)])
    rule = board_assets.asset_rule("/user/alice/", folder, asset_names(folder), GzipCache())
    board_assets.install(app, rule)
    assert app.default_router.rules[0] is rule
    assert app.default_router.named_rules[board_assets.RULE_NAME] is rule
    asset = _request("/user/alice/llamaboard/assets/Blocks-BEaKnzuj.js")
    delegate = app.find_handler(asset)
    assert delegate.handler_class.__name__ == "BoardAssetsHandler"
    assert delegate.handler_kwargs["path"] == os.path.realpath(folder)
    other = app.find_handler(_request("/user/alice/llamaboard/assets/Missing-AAAAAAAA.js"))
    assert other.handler_class is _Proxy


def test_gzip_cache_compresses_each_file_once_and_is_bounded(tmp_path, monkeypatch):
    files = []
    for i in range(3):
        f = tmp_path / f"f{i}.js"
        f.write_bytes(os.urandom(2000))  # incompressible: about 2 KB each compressed
        files.append(str(f))
    calls = []
    real = gzip.compress
    monkeypatch.setattr(gzip, "compress", lambda data, **kw: calls.append(1) or real(data, **kw))
    cache = GzipCache(max_bytes=5000)
    first = cache.get(files[0])
    assert gzip.decompress(first) == Path(files[0]).read_bytes()
    assert cache.get(files[0]) is first and len(calls) == 1
    cache.get(files[1])
    cache.get(files[0])  # most recently used now
    cache.get(files[2])  # over 5000 bytes: the least recently used (f1) goes
    assert len(cache) == 2 and cache.size <= 5000
    cache.get(files[0])
    assert len(calls) == 3
    cache.get(files[1])
    assert len(calls) == 4


def test_gzip_cache_leaves_small_and_missing_files_alone(tmp_path):
    small = tmp_path / "small.js"
    small.write_text("x")
    cache = GzipCache()
    assert cache.get_if_worth(str(small)) is None
    assert cache.get_if_worth(str(tmp_path / "gone.js")) is None
    big = tmp_path / "big.js"
    big.write_text("y" * 1000)
    assert gzip.decompress(cache.get_if_worth(str(big))) == big.read_bytes()


def test_gzip_cache_compresses_a_changed_file_again(tmp_path):
    f = tmp_path / "a.css"
    f.write_text("a{}" * 100)
    cache = GzipCache()
    assert gzip.decompress(cache.get(str(f))) == f.read_bytes()
    f.write_text("b{}" * 200)
    assert gzip.decompress(cache.get(str(f))) == f.read_bytes()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip, deflate, br, zstd", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("*", True),
        ("GZIP", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0, br", False),
        ("identity", False),
        ("br", False),
        ("", False),
        (None, False),
    ],
)
def test_accepts_gzip(header, expected):
    assert accepts_gzip(header) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("", True), ("1", True), ("on", True), ("0", False), ("OFF", False)],
)
def test_switch(value, expected):
    environ = {} if value is None else {board_assets.ENABLE_ENV: value}
    assert assets_enabled(environ) is expected


def test_a_bad_switch_value_is_a_warning_and_on(caplog):
    with caplog.at_level(logging.WARNING):
        assert assets_enabled({board_assets.ENABLE_ENV: "maybe"}) is True
    assert board_assets.ENABLE_ENV in caplog.text and "0, false, no, off" in caplog.text


def test_hashed_names():
    assert board_assets.HASHED_NAME.search("Blocks-BEaKnzuj.js")
    assert board_assets.HASHED_NAME.search("ApiDocs-MshfCJX-.css")
    assert board_assets.HASHED_NAME.search("index-B7xG8uq0.js.map")
    assert not board_assets.HASHED_NAME.search("svelte.js")
    assert not board_assets.HASHED_NAME.search("favicon.svg")


def test_gradio_assets_dir_is_the_installed_gradios():
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # not importing it: 9 s
        pytest.skip("gradio is not installed")
    found = board_assets.gradio_assets_dir()
    origin = Path(importlib.util.find_spec("gradio").origin).parent
    assert found == origin / "templates" / "frontend" / "assets"
    assert any(name.endswith(".js") for name in os.listdir(found))


def test_gradio_assets_dir_without_gradio(monkeypatch):
    monkeypatch.setattr(board_assets.importlib.util, "find_spec", lambda name: None)
    assert board_assets.gradio_assets_dir() is None


def _serverapp(environ_off: bool, monkeypatch, folder):
    monkeypatch.setattr(board_assets, "gradio_assets_dir", lambda: folder)
    if environ_off:
        monkeypatch.setenv(board_assets.ENABLE_ENV, "0")
    else:
        monkeypatch.delenv(board_assets.ENABLE_ENV, raising=False)
    app = Application([(r"/user/alice/llamaboard/(.*)", _Proxy)], base_url="/user/alice/")
    return SimpleNamespace(web_app=app, log=logging.getLogger("test"))


def test_load_hook_installs_the_rule_first(monkeypatch, folder):
    serverapp = _serverapp(False, monkeypatch, folder)
    board_assets._load_jupyter_server_extension(serverapp)
    assert serverapp.web_app.default_router.rules[0].name == board_assets.RULE_NAME


def test_load_hook_switched_off(monkeypatch, folder):
    serverapp = _serverapp(True, monkeypatch, folder)
    rules = list(serverapp.web_app.default_router.rules)
    board_assets._load_jupyter_server_extension(serverapp)
    assert serverapp.web_app.default_router.rules == rules


def test_extension_points_and_shipped_config():
    assert board_assets._jupyter_server_extension_points() == [
        {"module": "llmspawner.singleuser.board_assets"}
    ]
    shipped = Path(__file__).parents[2] / "jupyter-config/jupyter_server_config.d/llmspawner.json"
    extensions = json.loads(shipped.read_text())["ServerApp"]["jpserver_extensions"]
    assert extensions["llmspawner.singleuser.board_assets"] is True


def _asset_request(*, mode: str, site: str = "same-origin", method: str = "GET"):
    path = "/user/alice/llamaboard/assets/Blocks-BEaKnzuj.js"
    headers = HTTPHeaders({"Host": "127.0.0.1", "Sec-Fetch-Mode": mode, "Sec-Fetch-Site": site})
    connection = SimpleNamespace(set_close_callback=lambda _: None)
    start_line = RequestStartLine(method, path, "HTTP/1.1")
    return HTTPServerRequest(start_line=start_line, headers=headers, connection=connection)


@pytest.mark.parametrize("mode", ["cors", "navigate", "no-cors"])
async def test_jupyterhubs_cookie_auth_accepts_a_module_fetch(folder, mode, monkeypatch):
    """A browser fetches Gradio's JavaScript modules with ``Sec-Fetch-Mode: cors``; JupyterHub's
    singleuser auth (``HubOAuth._get_user_cookie``, run here as it is) accepts the login cookie
    of such a request only if the handler's ``check_xsrf_cookie`` passes, as jupyter-server-
    proxy's does. Without the override every module went to the login page (the page stayed
    without its tabs behind the hub, seen in benchmarks/llamaboard_path.py). Mocked: only the
    cookie's token and the hub's answer for it (no hub runs in a unit test)."""
    from jupyterhub.services.auth import HubOAuth

    app = Application([], base_url="/user/alice/", cookie_secret="x" * 32)
    rule = board_assets.asset_rule("/user/alice/", folder, asset_names(folder))
    handler_class, kwargs = rule.target, rule.target_kwargs
    handler = handler_class(app, _asset_request(mode=mode), **kwargs)
    auth = HubOAuth(api_token="t", api_url="http://127.0.0.1:9/hub/api", cache_max_age=0)
    auth._get_token_cookie = lambda h: "cookie-token"
    # The singleuser identity provider patches the base classes' check_xsrf_cookie with
    # JupyterHub's (HubOAuth._patch_xsrf) before every get_user: done here too, and undone.
    from jupyter_server.base.handlers import JupyterHandler

    for cls in (JupyterHandler, RequestHandler):
        for name in ("check_xsrf_cookie", "_xsrf_token_id", "xsrf_token"):
            monkeypatch.setattr(cls, name, cls.__dict__.get(name), raising=False)
    auth._patch_xsrf(handler)

    async def user_for_token(token, session_id=None, sync=True):
        assert token == "cookie-token"
        return {"name": "alice", "kind": "user"}

    auth.user_for_token = user_for_token
    assert await auth._get_user_cookie(handler) == {"name": "alice", "kind": "user"}
