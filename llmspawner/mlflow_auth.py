"""MLflow's ``authorization_function`` for the hub: MLflow identities are hub users.

The MLflow tracking server runs MLflow's own authentication app (``mlflow server --app-name
basic-auth``, https://mlflow.org/docs/latest/self-hosting/security/basic-http-auth/) with an
auth config (``MLFLOW_AUTH_CONFIG_PATH``, :func:`auth_config_text`) whose
``authorization_function`` is :func:`authenticate_request`. This module only says *who* a
request comes from; MLflow's own permission model and database say what they may do
(``default_permission = READ``: everyone reads everything; the creator of an experiment or
registered model gets ``MANAGE`` on it; admins may do everything). See docs/mlflow.md.

Who a request comes from:

- ``Authorization: Bearer <hub token>`` (MLflow's clients send ``MLFLOW_TRACKING_TOKEN`` so;
  ``token <hub token>`` is accepted too): the token is checked with the hub
  (``GET <hub>/hub/api/user``, https://jupyterhub.readthedocs.io/en/stable/reference/rest-api.html)
  and must carry ``access:services!service=mlflow``. Answers are cached for ``ttl`` seconds
  (a bad token too), so a user removed from the hub loses MLflow within that time.
- the browser: the hub's OAuth login, as ``jupyterhub.services.auth.HubOAuth`` does it. A page
  request without a login is redirected to the hub's ``/hub/api/oauth2/authorize`` (which
  sends a logged-out user to the hub's login page first); the hub redirects back to
  ``<prefix>oauth_callback``, where the code is exchanged for a token that is kept in an
  HttpOnly cookie on the service's path and checked like a bearer token.
- ``Authorization: Basic``: only for MLflow's bootstrap admin (``admin_username`` of the auth
  config; hub usernames cannot contain ``/``, so the default ``llmspawner/admin`` is never a hub
  user), checked by MLflow's own ``authenticate_request_basic_auth``. The hub and the queue
  use it to create a user's experiment and give the user ``MANAGE`` on it
  (:func:`llmspawner.tracking.ensure_experiment`). No such credential is ever in a user's pod.

A hub user is an MLflow user of the same name, created on first sight with a random password
nobody knows (Basic logins of hub users are refused anyway). The MLflow admin flag follows the
hub: hub admins and members of ``admin_groups`` are MLflow admins, re-checked at every cache
refresh. One rule is added to MLflow's: the experiment name of another user (the platform's
``{username}`` template, e.g. ``bob-experiments``) cannot be created or taken by renaming, so
nobody can take over a user's experiment before their first server starts.

Configuration: the MLflow server's environment (:class:`AuthSettings`). Only the standard
library, Flask/Werkzeug and MLflow are imported, so that the module runs in MLflow's own image
(the deploy kit copies this file there from the hub image).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import string
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: The hub service's name; its UI is at ``<hub>/services/mlflow/``.
SERVICE_NAME = "mlflow"
#: The bootstrap admin of MLflow's auth app: a name no hub user can have (no ``/``).
DEFAULT_ADMIN_USERNAME = "llmspawner/admin"
#: The cookie holding a browser's hub token (path: the service prefix).
TOKEN_COOKIE = "llmspawner-mlflow-token"
#: The cookie holding the OAuth ``state`` id during a browser login.
STATE_COOKIE = "llmspawner-mlflow-oauth-state"


def access_scope(service_name: str = SERVICE_NAME) -> str:
    """The hub scope a token needs for MLflow: ``access:services!service=<name>``."""
    return f"access:services!service={service_name}"


class HubUnavailable(Exception):
    """The hub could not be asked whether a token is valid (unreachable, timeout, 5xx)."""


@dataclass(frozen=True)
class HubIdentity:
    """Who a valid hub token belongs to: the hub username and whether they are an MLflow
    admin (hub admin, or member of one of ``AuthSettings.admin_groups``)."""

    name: str
    admin: bool


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {raw!r}")
    return value


@dataclass(frozen=True)
class AuthSettings:
    """The settings of :func:`authenticate_request`, from the MLflow server's environment.

    ==========================================  =================================================
    ``JUPYTERHUB_API_URL``                      the hub's API as MLflow reaches it
                                                (e.g. ``http://hub:8081/hub/api``); required
    ``JUPYTERHUB_API_TOKEN``                    the ``mlflow`` service's API token, the OAuth
                                                client secret of the browser login
    ``JUPYTERHUB_SERVICE_NAME``                 default ``mlflow``
    ``JUPYTERHUB_CLIENT_ID``                    default ``service-<name>``
    ``JUPYTERHUB_SERVICE_PREFIX``               the service's path on the hub (default
                                                ``/services/<name>/``); MLflow serves under it
                                                (``--static-prefix``)
    ``JUPYTERHUB_BASE_URL``                     the hub's base URL (default ``/``)
    ``JUPYTERHUB_OAUTH_CALLBACK_URL``           default ``<prefix>oauth_callback``
    ``LLMSPAWNER_MLFLOW_ADMIN_GROUPS``          comma-separated hub groups of MLflow admins
    ``LLMSPAWNER_MLFLOW_AUTH_TTL``              seconds a hub answer is cached (default 30)
    ``LLMSPAWNER_MLFLOW_HUB_TIMEOUT``           seconds per hub request (default 5)
    ``LLMSPAWNER_MLFLOW_EXPERIMENT_TEMPLATE``   the users' experiment names (default
                                                ``{username}-experiments``), reserved per user
    ==========================================  =================================================

    Raises (from :meth:`from_env`):
        ValueError: naming the variable, for a missing hub URL or a bad number.
    """

    hub_api_url: str
    client_secret: str = ""
    service_name: str = SERVICE_NAME
    client_id: str = f"service-{SERVICE_NAME}"
    service_prefix: str = f"/services/{SERVICE_NAME}/"
    hub_base_url: str = "/"
    callback_url: str = f"/services/{SERVICE_NAME}/oauth_callback"
    admin_groups: frozenset[str] = frozenset()
    ttl: float = 30.0
    timeout: float = 5.0
    experiment_template: str = "{username}-experiments"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AuthSettings:
        hub_api_url = (env.get("JUPYTERHUB_API_URL") or "").rstrip("/")
        if not hub_api_url:
            raise ValueError("JUPYTERHUB_API_URL (the hub's API as MLflow reaches it) is not set")
        name = env.get("JUPYTERHUB_SERVICE_NAME") or SERVICE_NAME
        prefix = "/" + (env.get("JUPYTERHUB_SERVICE_PREFIX") or f"/services/{name}/").strip("/")
        prefix += "/"
        base = "/" + (env.get("JUPYTERHUB_BASE_URL") or "/").strip("/")
        return cls(
            hub_api_url=hub_api_url,
            client_secret=env.get("JUPYTERHUB_API_TOKEN") or "",
            service_name=name,
            client_id=env.get("JUPYTERHUB_CLIENT_ID") or f"service-{name}",
            service_prefix=prefix,
            hub_base_url=base.rstrip("/") + "/",
            callback_url=env.get("JUPYTERHUB_OAUTH_CALLBACK_URL") or prefix + "oauth_callback",
            admin_groups=frozenset(
                g.strip()
                for g in (env.get("LLMSPAWNER_MLFLOW_ADMIN_GROUPS") or "").split(",")
                if g.strip()
            ),
            ttl=_float(env, "LLMSPAWNER_MLFLOW_AUTH_TTL", 30.0),
            timeout=_float(env, "LLMSPAWNER_MLFLOW_HUB_TIMEOUT", 5.0) or 5.0,
            experiment_template=env.get("LLMSPAWNER_MLFLOW_EXPERIMENT_TEMPLATE")
            or "{username}-experiments",
        )

    @property
    def authorize_url(self) -> str:
        """The hub's OAuth authorize endpoint, as the browser reaches it (same origin)."""
        return f"{self.hub_base_url}hub/api/oauth2/authorize"


def identity_from_model(model: Mapping, settings: AuthSettings) -> HubIdentity | None:
    """The identity in a ``GET /hub/api/user`` answer, or ``None`` when it may not use MLflow.

    ``None`` for a service's token (``kind`` not ``user``) and for a token without
    ``access:services!service=<name>`` (or the unfiltered ``access:services``) in its
    ``scopes``. Pure.
    """
    if model.get("kind") != "user" or not model.get("name"):
        return None
    scopes = set(model.get("scopes") or ())
    if access_scope(settings.service_name) not in scopes and "access:services" not in scopes:
        return None
    groups = set(model.get("groups") or ())
    admin = bool(model.get("admin")) or bool(groups & settings.admin_groups)
    return HubIdentity(name=str(model["name"]), admin=admin)


def _fetch_hub_user(settings: AuthSettings, token: str) -> dict | None:
    """``GET <hub api>/user`` with ``token``: the model, or ``None`` for a refused token.

    Raises:
        HubUnavailable: no answer within ``settings.timeout`` seconds, or a 5xx.
    """
    req = urllib.request.Request(
        settings.hub_api_url + "/user", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=settings.timeout) as resp:  # noqa: S310
            return json.load(resp)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403, 404):
            return None
        raise HubUnavailable(f"the hub answered {e.code} for {settings.hub_api_url}/user") from e
    except (OSError, ValueError) as e:
        raise HubUnavailable(f"the hub at {settings.hub_api_url} is unreachable: {e}") from e


class TokenCache:
    """Hub answers per token (keyed by the token's SHA-256), each kept ``ttl`` seconds.

    Holds at most ``max_size`` entries (the oldest go first). Thread-safe: MLflow's server
    runs the Flask app in a thread pool.

    Args:
        ttl: seconds an answer (valid or not) is kept; ``0``: nothing is kept.
        max_size: the most tokens remembered.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self, ttl: float, *, max_size: int = 10_000, clock: Callable[[], float] = time.monotonic
    ):
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, HubIdentity | None]] = OrderedDict()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> tuple[bool, HubIdentity | None]:
        """``(True, identity or None)`` when an answer younger than ``ttl`` is cached, else
        ``(False, None)``."""
        key = self._key(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False, None
            if self._clock() - entry[0] >= self.ttl:
                del self._entries[key]
                return False, None
            return True, entry[1]

    def put(self, token: str, identity: HubIdentity | None) -> None:
        """Remember the answer for ``token`` (nothing when ``ttl`` is 0)."""
        if self.ttl <= 0:
            return
        key = self._key(token)
        with self._lock:
            self._entries[key] = (self._clock(), identity)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)


class HubTokenValidator:
    """Who a hub token belongs to (:meth:`identify`), with :class:`TokenCache`.

    Args:
        settings: see :class:`AuthSettings`.
        fetch: ``(settings, token) -> model or None`` (default: ``GET /hub/api/user``).
        clock: for the cache.
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        fetch: Callable[[AuthSettings, str], dict | None] = _fetch_hub_user,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self._fetch = fetch
        self.cache = TokenCache(settings.ttl, clock=clock)

    def identify(self, token: str) -> tuple[HubIdentity | None, bool]:
        """``(identity or None, fresh)``: ``fresh`` is ``True`` when the hub was asked now.

        Raises:
            HubUnavailable: the hub could not be asked (nothing is cached then).
        """
        hit, identity = self.cache.get(token)
        if hit:
            return identity, False
        model = self._fetch(self.settings, token)
        identity = None if model is None else identity_from_model(model, self.settings)
        self.cache.put(token, identity)
        return identity, True


# -- reserved experiment names --------------------------------------------------------------


def reserved_owner(name: str, template: str) -> str | None:
    """The user a ``{username}`` experiment name belongs to, or ``None`` for a free name.

    ``reserved_owner("bob-experiments", "{username}-experiments") == "bob"``. A template with
    another field (``{slug}``) reserves nothing here (the slug function is not in MLflow's
    image). Pure.
    """
    pattern, fields = "", []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    for literal, field, _, _ in parsed:
        pattern += re.escape(literal)
        if field is not None:
            fields.append(field)
            pattern += "(.+)"
    if set(fields) != {"username"}:
        return None
    m = re.fullmatch(pattern, name, flags=re.DOTALL)
    if m is None or len(set(m.groups())) != 1:
        return None
    return m.group(1)


def _requested_experiment_name(req) -> str | None:
    """The new experiment name of an ``experiments/create`` or ``experiments/update`` call."""
    path = req.path
    if req.method != "POST":
        return None
    if path.endswith("/mlflow/experiments/create"):
        key = "name"
    elif path.endswith("/mlflow/experiments/update"):
        key = "new_name"
    else:
        return None
    data = req.get_json(force=True, silent=True)
    if not isinstance(data, dict) or not isinstance(data.get(key), str):
        return None
    return data[key]


# -- responses ------------------------------------------------------------------------------


def _json_response(status: int, error_code: str, message: str, headers: Mapping = ()):
    from flask import make_response

    resp = make_response(json.dumps({"error_code": error_code, "message": message}), status)
    resp.headers["Content-Type"] = "application/json"
    for k, v in dict(headers).items():
        resp.headers[k] = v
    return resp


def _unauthenticated(message: str):
    # Not MLflow's "Basic" challenge: that would open the browser's password dialog.
    return _json_response(
        401, "UNAUTHENTICATED", message, {"WWW-Authenticate": 'Bearer realm="mlflow"'}
    )


def _is_page_request(req) -> bool:
    """A browser navigation (GET asking for HTML), which gets a login redirect, not a 401."""
    return req.method in ("GET", "HEAD") and "text/html" in (req.headers.get("Accept") or "")


def _secure(req) -> bool:
    return req.is_secure or req.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _unb64(text: str) -> dict:
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def _login_redirect(req, settings: AuthSettings):
    """Redirect to the hub's OAuth authorize endpoint, remembering where the user was.

    Sets one cookie only (the state): MLflow's server passes on one ``Set-Cookie`` header per
    response (the last), so a stale token cookie is replaced at the callback, not deleted.
    """
    from flask import redirect

    state_id = secrets.token_urlsafe(16)
    next_url = req.full_path.rstrip("?") if req.path.startswith(settings.service_prefix) else ""
    state = _b64({"uuid": state_id, "next_url": next_url or settings.service_prefix})
    query = urllib.parse.urlencode(
        {
            "client_id": settings.client_id,
            "redirect_uri": settings.callback_url,
            "response_type": "code",
            "state": state,
        }
    )
    resp = redirect(f"{settings.authorize_url}?{query}", code=302)
    resp.set_cookie(
        STATE_COOKIE,
        state_id,
        max_age=600,
        path=settings.service_prefix,
        httponly=True,
        secure=_secure(req),
        samesite="Lax",
    )
    return resp


def _exchange_code(settings: AuthSettings, code: str) -> str:
    """``POST <hub api>/oauth2/token``: the access token for an authorization code.

    Raises:
        HubUnavailable: the hub could not be asked, or refused the code.
    """
    body = urllib.parse.urlencode(
        {
            "client_id": settings.client_id,
            "client_secret": settings.client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": settings.callback_url,
        }
    ).encode()
    req = urllib.request.Request(
        settings.hub_api_url + "/oauth2/token",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(req, timeout=settings.timeout) as resp:  # noqa: S310
            return str(json.load(resp)["access_token"])
    except urllib.error.HTTPError as e:
        raise HubUnavailable(f"the hub refused the OAuth code ({e.code})") from e
    except (OSError, ValueError, KeyError) as e:
        raise HubUnavailable(f"the hub's OAuth token endpoint failed: {e}") from e


def _oauth_callback(req, settings: AuthSettings):
    """The end of a browser login: check ``state``, exchange the code, set the cookie."""
    from flask import redirect

    state = _unb64(req.args.get("state", ""))
    state_id = req.cookies.get(STATE_COOKIE)
    if not state_id or not secrets.compare_digest(str(state.get("uuid", "")), state_id):
        return _json_response(400, "INVALID_STATE", "OAuth state does not match; log in again")
    code = req.args.get("code")
    if not code:
        return _json_response(400, "INVALID_PARAMETER_VALUE", "OAuth callback without a code")
    try:
        token = _exchange_code(settings, code)
    except HubUnavailable as e:
        log.warning("MLflow login through the hub failed: %s", e)
        return _json_response(503, "TEMPORARILY_UNAVAILABLE", f"Login failed: {e}")
    next_url = str(state.get("next_url") or settings.service_prefix)
    if not next_url.startswith(settings.service_prefix) or next_url.startswith("//"):
        next_url = settings.service_prefix
    resp = redirect(next_url, code=302)
    resp.set_cookie(
        TOKEN_COOKIE,
        token,
        path=settings.service_prefix,
        httponly=True,
        secure=_secure(req),
        samesite="Lax",
    )
    # The state cookie is not deleted (it expires in 10 minutes): MLflow's server passes on
    # one Set-Cookie header per response, and it must be the token's.
    return resp


# -- the MLflow user of a hub user ----------------------------------------------------------


class UserSync:
    """Makes the MLflow user of a hub identity exist with the hub's admin flag.

    Args:
        store: MLflow's auth store (``mlflow.server.auth.store``): ``has_user``,
            ``create_user``, ``get_user``, ``update_user``.
    """

    def __init__(self, store):
        self.store = store
        self._lock = threading.Lock()
        self._synced: dict[str, bool] = {}

    def sync(self, identity: HubIdentity, *, force: bool = False) -> None:
        """Create the user (random password) or update its admin flag, if not done before in
        this process with the same flag (``force``: check the database again)."""
        with self._lock:
            if not force and self._synced.get(identity.name) == identity.admin:
                return
        from mlflow.exceptions import MlflowException

        store = self.store
        if not store.has_user(identity.name):
            try:
                store.create_user(identity.name, secrets.token_urlsafe(32), is_admin=identity.admin)
                log.info("Created MLflow user %s (admin: %s)", identity.name, identity.admin)
            except MlflowException:  # created by another worker meanwhile
                pass
        if store.get_user(identity.name).is_admin != identity.admin:
            store.update_user(identity.name, is_admin=identity.admin)
            log.info("MLflow user %s: admin set to %s", identity.name, identity.admin)
        with self._lock:
            self._synced[identity.name] = identity.admin


# -- the authorization function -------------------------------------------------------------

_state_lock = threading.Lock()
_state: dict = {}


def _components():
    """The process's settings, validator and user sync, made on first use."""
    with _state_lock:
        if not _state:
            from mlflow.server.auth import store

            settings = AuthSettings.from_env()
            _state["settings"] = settings
            _state["validator"] = HubTokenValidator(settings)
            _state["sync"] = UserSync(store)
        return _state["settings"], _state["validator"], _state["sync"]


def _admin_username() -> str:
    from mlflow.server.auth import auth_config

    return auth_config.admin_username or ""


def _bearer_token(req) -> tuple[str | None, str | None]:
    """``(token, None)`` from ``Authorization: Bearer|token``, ``(None, scheme)`` for another
    scheme, ``(None, None)`` without the header."""
    header = req.headers.get("Authorization") or ""
    if not header:
        return None, None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip(), None
    return None, scheme.lower()


def _authenticate(req):
    """One request's answer: a Werkzeug ``Authorization`` (username) or a Flask response."""
    from werkzeug.datastructures import Authorization

    settings, validator, sync = _components()
    if req.path == settings.callback_url or req.path.rstrip("/") == settings.callback_url:
        return _oauth_callback(req, settings)
    token, other_scheme = _bearer_token(req)
    from_cookie = False
    if other_scheme == "basic":
        basic = req.authorization
        if basic is None or basic.username != _admin_username():
            return _unauthenticated(
                "Basic authentication is for MLflow's admin only; use a hub token "
                "(MLFLOW_TRACKING_TOKEN) or log in through the hub"
            )
        from mlflow.server.auth import authenticate_request_basic_auth

        return authenticate_request_basic_auth()
    if other_scheme is not None:
        return _unauthenticated(f"unsupported authentication scheme {other_scheme!r}")
    if token is None:
        token = req.cookies.get(TOKEN_COOKIE)
        from_cookie = token is not None
    if token is None:
        if _is_page_request(req):
            return _login_redirect(req, settings)
        return _unauthenticated(
            "no credentials: send a hub token as 'Authorization: Bearer <token>' "
            "(MLFLOW_TRACKING_TOKEN) or log in through the hub"
        )
    try:
        identity, fresh = validator.identify(token)
    except HubUnavailable as e:
        log.warning("Cannot check a token with the hub: %s", e)
        return _json_response(
            503, "TEMPORARILY_UNAVAILABLE", "the hub cannot be reached to check the login"
        )
    if identity is None:
        if from_cookie and _is_page_request(req):
            return _login_redirect(req, settings)
        return _unauthenticated(
            "invalid, expired or insufficient hub token (it needs the scope "
            f"{access_scope(settings.service_name)})"
        )
    if identity.name == _admin_username():
        return _json_response(
            403, "PERMISSION_DENIED", "this hub user's name is reserved for MLflow's admin"
        )
    sync.sync(identity, force=fresh)
    if not identity.admin:
        name = _requested_experiment_name(req)
        if name is not None:
            owner = reserved_owner(name, settings.experiment_template)
            if owner is not None and owner != identity.name:
                return _json_response(
                    403,
                    "PERMISSION_DENIED",
                    f"the experiment name {name!r} is reserved for the user {owner!r}",
                )
    return Authorization("bearer", {"username": identity.name})


def authenticate_request():
    """MLflow's ``authorization_function``: the caller as a Werkzeug ``Authorization`` whose
    ``username`` is their hub username, or a Flask response (401 without or with a bad
    token, a redirect to the hub's login for a browser page, 403 for a reserved name, 503 when
    the hub cannot be asked). See the module docstring.

    MLflow calls it several times per request; the first answer is kept on ``flask.g``.
    """
    from flask import g, request

    answer = g.get("_llmspawner_mlflow_auth")
    if answer is None:
        answer = _authenticate(request)
        g._llmspawner_mlflow_auth = answer
    return answer


# -- the auth app's config file and the deploy kit's install step ---------------------------


def auth_config_text(
    *,
    database_uri: str,
    admin_username: str = DEFAULT_ADMIN_USERNAME,
    default_permission: str = "READ",
) -> str:
    """The ini file for ``MLFLOW_AUTH_CONFIG_PATH`` (MLflow's ``basic_auth.ini`` keys).

    The admin password is not in it: MLflow reads ``MLFLOW_AUTH_ADMIN_PASSWORD`` when it
    creates the admin on first start. ``database_uri`` is MLflow's auth database (its own
    alembic migrations run at every start).
    """
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = llmspawner.mlflow_auth:authenticate_request\n"
        "grant_default_workspace_access = false\n"
    )


def install(target: str, *, env: Mapping[str, str] = os.environ) -> None:
    """Copy this module to ``<target>/llmspawner/`` (with an empty ``__init__.py``) and write
    ``<target>/basic_auth.ini`` (:func:`auth_config_text`, database from
    ``LLMSPAWNER_MLFLOW_AUTH_DB_URL``, admin from ``MLFLOW_AUTH_ADMIN_USERNAME``).

    The deploy kit's MLflow pod runs it in an init container of the hub image, so that MLflow's
    image imports ``llmspawner.mlflow_auth`` from ``target`` (``PYTHONPATH``).
    """
    from pathlib import Path

    root = Path(target)
    package = root / "llmspawner"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""llmspawner\'s MLflow auth module only."""\n')
    (package / "mlflow_auth.py").write_text(Path(__file__).read_text())
    db = env.get("LLMSPAWNER_MLFLOW_AUTH_DB_URL") or f"sqlite:///{root / 'basic_auth.db'}"
    admin = env.get("MLFLOW_AUTH_ADMIN_USERNAME") or DEFAULT_ADMIN_USERNAME
    (root / "basic_auth.ini").write_text(auth_config_text(database_uri=db, admin_username=admin))


def main(argv: list[str] | None = None) -> int:
    """``python -m llmspawner.mlflow_auth install TARGET`` (see :func:`install`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "install":
        print("usage: python -m llmspawner.mlflow_auth install TARGET", file=sys.stderr)
        return 2
    install(args[1])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
