"""Authentication of the emulated API server: who a request is, ServiceAccount tokens, the
token files mounted into pods, and the HTTPS listener in-cluster clients need.

Identities (https://kubernetes.io/docs/reference/access-authn-authz/authentication/):

- the kubeconfig's static token (:data:`ADMIN_TOKEN`, what the tests and the dev stack use):
  user ``kubernetes-admin`` in ``system:masters`` (and ``system:authenticated``), the group
  that bypasses authorization, as kind's admin kubeconfig;
- a ServiceAccount token (``kubectl create token SA`` = TokenRequest, or the token mounted
  into a pod): ``system:serviceaccount:<ns>:<name>`` in ``system:serviceaccounts``,
  ``system:serviceaccounts:<ns>`` and ``system:authenticated``. Tokens are JWTs (HS256 with a
  key made at cluster start; the real server signs RS256) with the real claims (``iss``,
  ``sub``, ``aud``, ``exp``, ``kubernetes.io``: namespace, serviceaccount name/uid, the pod's
  name/uid for a mounted one). A token is refused (401) when its signature, expiry or audience
  is wrong, or its ServiceAccount (or bound pod) no longer exists with the same uid;
- no token: ``system:anonymous`` in ``system:unauthenticated``;
- any other token: 401 ``Unauthorized``, as the real server answers.

Pods (https://kubernetes.io/docs/tasks/configure-pod-container/configure-service-account/):
:func:`admit_pod_token` adds the projected volume ``kube-api-access-<5>`` (token, ``ca.crt``,
``namespace``) mounted read-only at ``/var/run/secrets/kubernetes.io/serviceaccount`` in every
container, unless the pod or its ServiceAccount sets ``automountServiceAccountToken: false``;
:func:`projected_files` writes it for the kubelet. Every namespace gets its ServiceAccount
``default`` (:class:`ServiceAccountController`). The ``kube-root-ca.crt`` ConfigMap is not
created in each namespace (tests list ConfigMaps); its ``ca.crt`` comes from the cluster's CA.

TLS: the API server also listens on HTTPS (:func:`start_tls_site`) with a certificate of a CA
made at start (``<data_dir>/ca.crt``), for the IP it listens on and ``kubernetes.default.svc``
names; pods get ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` of that listener, so
``kubernetes_asyncio.config.load_incluster_config()`` works in a pod. The kubeconfig keeps
the plain HTTP address.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .controller import reconcile_loop
from .resources import CONFIGMAPS, NAMESPACES, PODS, SECRETS, SERVICEACCOUNTS, Resource
from .store import ApiError, Event, Store, not_found, random_suffix

log = logging.getLogger(__name__)

ADMIN_TOKEN = "devcluster"  # kubeconfig.kubeconfig's default token
ADMIN_USER = "kubernetes-admin"
ISSUER = "https://kubernetes.default.svc.cluster.local"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MOUNTED_TOKEN_SECONDS = 3607  # the real admission plugin's expirationSeconds
DEFAULT_TOKEN_SECONDS = 3600  # TokenRequest's default
MIN_TOKEN_SECONDS = 600


@dataclass(frozen=True)
class UserInfo:
    """An authenticated identity: ``username``, ``groups``, ``uid`` and ``extra`` as the API's
    ``UserInfo`` (https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/
    token-review-v1/)."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The ``UserInfo`` object (empty fields left out)."""
        info: dict = {"username": self.username, "groups": list(self.groups)}
        if self.uid:
            info["uid"] = self.uid
        if self.extra:
            info["extra"] = self.extra
        return info


ADMIN = UserInfo(ADMIN_USER, ("system:masters", "system:authenticated"))
ANONYMOUS = UserInfo("system:anonymous", ("system:unauthenticated",))


def unauthorized() -> ApiError:
    """401 as the real server answers a bad token (no details)."""
    return ApiError(401, "Unauthorized", "Unauthorized")


def service_account_user(namespace: str, name: str, uid: str = "") -> UserInfo:
    """The identity of ServiceAccount ``namespace/name``."""
    return UserInfo(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
        uid,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Maps bearer tokens to `UserInfo` and issues ServiceAccount tokens, for one cluster.

    ``store``: where ServiceAccounts and pods are looked up. ``key``: the HMAC key (default:
    32 random bytes, so tokens of a previous cluster are refused). ``clock``: seconds since
    the epoch (injectable for tests).
    """

    def __init__(self, store: Store, key: bytes | None = None, clock=time.time):
        self.store = store
        self.key = key or secrets.token_bytes(32)
        self.clock = clock
        self.kid = hashlib.sha256(self.key).hexdigest()[:16]
        self.ca_pem = b""  # set by start_tls_site

    # -- tokens ----------------------------------------------------------------------------

    def issue(
        self,
        namespace: str,
        name: str,
        *,
        seconds: int = DEFAULT_TOKEN_SECONDS,
        audiences: list[str] | None = None,
        pod: dict | None = None,
    ) -> tuple[str, int]:
        """A token for ServiceAccount ``namespace/name`` valid ``seconds``; returns the token
        and its expiry (epoch seconds). Raises `ApiError` 404 if the ServiceAccount is absent.
        ``pod``: bind the token to this pod (it stops working when the pod is gone)."""
        sa = self.store.peek(SERVICEACCOUNTS, namespace, name)
        if sa is None:
            raise not_found(SERVICEACCOUNTS, name)
        now = int(self.clock())
        claims: dict = {
            "aud": audiences or [ISSUER],
            "exp": now + seconds,
            "iat": now,
            "iss": ISSUER,
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
            },
        }
        if pod is not None:
            claims["kubernetes.io"]["pod"] = {
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            }
        header = {"alg": "HS256", "kid": self.kid, "typ": "JWT"}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = hmac.new(self.key, signing.encode(), hashlib.sha256).digest()
        return f"{signing}.{_b64(signature)}", claims["exp"]

    def review(self, token: str, audiences: list[str] | None = None) -> UserInfo | None:
        """The identity of ``token``, or None if it is not valid (see the module docstring)."""
        if hmac.compare_digest(token, ADMIN_TOKEN):
            return ADMIN
        try:
            head, body, sig = token.split(".")
            expected = hmac.new(self.key, f"{head}.{body}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(sig)):
                return None
            claims = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        now = self.clock()
        if not (claims.get("nbf", 0) - 60 <= now < claims.get("exp", 0)):
            return None
        wanted = audiences or [ISSUER]
        if not set(wanted) & set(claims.get("aud") or []):
            return None
        k8s = claims.get("kubernetes.io") or {}
        ns, sa_ref = k8s.get("namespace", ""), k8s.get("serviceaccount") or {}
        sa = self.store.peek(SERVICEACCOUNTS, ns, sa_ref.get("name", ""))
        if sa is None or sa["metadata"]["uid"] != sa_ref.get("uid"):
            return None
        extra: dict = {}
        pod_ref = k8s.get("pod")
        if pod_ref:
            pod = self.store.peek(PODS, ns, pod_ref.get("name", ""))
            if pod is None or pod["metadata"]["uid"] != pod_ref.get("uid"):
                return None
            extra = {
                "authentication.kubernetes.io/pod-name": [pod_ref["name"]],
                "authentication.kubernetes.io/pod-uid": [pod_ref["uid"]],
            }
        user = service_account_user(ns, sa_ref["name"], sa_ref["uid"])
        return UserInfo(user.username, user.groups, user.uid, extra)

    def authenticate(self, authorization: str | None) -> UserInfo:
        """The identity of a request's ``Authorization`` header; `ANONYMOUS` without one.
        Raises `ApiError` 401 for a token that is not valid."""
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized()
        user = self.review(token.strip())
        if user is None:
            raise unauthorized()
        return user

    # -- API objects -----------------------------------------------------------------------

    def token_request(self, namespace: str, name: str, body: dict) -> dict:
        """Answer ``POST .../serviceaccounts/NAME/token`` (a TokenRequest). ``spec``:
        ``audiences``, ``expirationSeconds`` (at least 600, default 3600), ``boundObjectRef``
        (a Pod). Raises `ApiError` 404 (no such ServiceAccount or pod), 422 (too short)."""
        spec = body.get("spec") or {}
        seconds = int(spec.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
        if seconds < MIN_TOKEN_SECONDS:
            raise ApiError(
                422,
                "Invalid",
                f'TokenRequest.authentication.k8s.io "{name}" is invalid: '
                f"spec.expirationSeconds: Invalid value: {seconds}: "
                "may not specify a duration less than 10 minutes",
                {"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest"},
            )
        pod = None
        bound = spec.get("boundObjectRef")
        if bound:
            pod = self.store.peek(PODS, namespace, bound.get("name", ""))
            if pod is None:
                raise not_found(PODS, bound.get("name", ""))
        token, exp = self.issue(
            namespace, name, seconds=seconds, audiences=spec.get("audiences"), pod=pod
        )
        expiry = datetime.datetime.fromtimestamp(exp, datetime.timezone.utc)
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "audiences": spec.get("audiences") or [ISSUER],
                "expirationSeconds": seconds,
                "boundObjectRef": bound,
            },
            "status": {
                "token": token,
                "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        }

    def token_review(self, body: dict) -> dict:
        """Answer a TokenReview (``spec.token``, optional ``spec.audiences``)."""
        spec = body.get("spec") or {}
        user = self.review(str(spec.get("token") or ""), spec.get("audiences"))
        status: dict = {"authenticated": user is not None}
        if user is not None:
            status["user"] = user.to_dict()
            status["audiences"] = spec.get("audiences") or [ISSUER]
        else:
            status["error"] = "invalid bearer token"
        return {**_echo(body, "TokenReview", "authentication.k8s.io/v1"), "status": status}

    # -- pods ------------------------------------------------------------------------------

    def projected_files(self, pod: dict, projected: dict, lookup) -> dict[str, bytes]:
        """The files of a ``projected`` volume: ``serviceAccountToken`` (a token bound to the
        pod), ``configMap``/``secret`` items (``kube-root-ca.crt`` from the cluster's CA when
        no such ConfigMap exists), ``downwardAPI`` ``metadata.namespace``/``name``/``uid``,
        labels and annotations. Returns path → content. Raises `ValueError` if the pod's
        ServiceAccount or a non-optional ConfigMap/Secret is absent, or for an unsupported
        source."""
        meta = pod["metadata"]
        ns = meta.get("namespace", "default")
        files: dict[str, bytes] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
                aud = [sat["audience"]] if sat.get("audience") else None
                seconds = int(sat.get("expirationSeconds") or MOUNTED_TOKEN_SECONDS)
                # the kubelet renews mounted tokens; the emulator does not, so a day at least
                try:
                    token, _ = self.issue(
                        ns, sa, seconds=max(seconds, 86400), audiences=aud, pod=pod
                    )
                except ApiError as exc:  # no such ServiceAccount (yet)
                    raise ValueError(exc.message) from None
                files[sat.get("path", "token")] = token.encode()
            elif "configMap" in source or "secret" in source:
                is_secret = "secret" in source
                ref = source["secret" if is_secret else "configMap"]
                obj = lookup(SECRETS if is_secret else CONFIGMAPS, ns, ref.get("name", ""))
                data: dict[str, bytes] = {}
                if obj is not None:
                    for k, v in (obj.get("data") or {}).items():
                        data[k] = base64.b64decode(v) if is_secret else str(v).encode()
                elif not is_secret and ref.get("name") == "kube-root-ca.crt":
                    data = {"ca.crt": self.ca_pem}
                elif not ref.get("optional"):
                    kind = "secret" if is_secret else "configmap"
                    raise ValueError(f'{kind} "{ref.get("name")}" not found')
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] in data:
                        files[item["path"]] = data[item["key"]]
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    path = (item.get("fieldRef") or {}).get("fieldPath", "")
                    files[item["path"]] = _downward(meta, path).encode()
            else:
                raise ValueError(f"unsupported projected volume source {sorted(source)}")
        return files


def _downward(meta: dict, path: str) -> str:
    if path in ("metadata.namespace", "metadata.name", "metadata.uid"):
        return str(meta.get(path.split(".")[1], ""))
    for kind in ("labels", "annotations"):
        if path == f"metadata.{kind}":
            return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(kind) or {}).items()))
    raise ValueError(f"unsupported downwardAPI fieldPath {path!r}")


def _echo(body: dict, kind: str, api_version: str) -> dict:
    return {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": None, **(body.get("metadata") or {})},
        "spec": body.get("spec") or {},
    }


def self_subject_review(user: UserInfo) -> dict:
    """Answer a SelfSubjectReview (``kubectl auth whoami``)."""
    return {
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "status": {"userInfo": user.to_dict()},
    }


# -- pod admission ---------------------------------------------------------------------------


def admit_pod_token(store: Store, res: Resource, obj: dict) -> None:
    """A `Store.admit` hook (the ServiceAccount admission plugin): default
    ``serviceAccountName`` to ``default`` and add the token volume and its mounts (see the
    module docstring)."""
    if res != PODS:
        return
    spec = obj.setdefault("spec", {})
    sa_name = spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", sa_name)
    if spec.get("automountServiceAccountToken") is False:
        return
    sa = store.peek(SERVICEACCOUNTS, obj["metadata"].get("namespace"), sa_name)
    if spec.get("automountServiceAccountToken") is None and sa is not None:
        if sa.get("automountServiceAccountToken") is False:
            return
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    if all(
        any(m.get("mountPath") == TOKEN_DIR for m in c.get("volumeMounts") or [])
        for c in containers
    ):
        return
    volume = f"kube-api-access-{random_suffix()}"
    spec.setdefault("volumes", []).append(
        {
            "name": volume,
            "projected": {
                "defaultMode": 0o644,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {
                                        "apiVersion": "v1",
                                        "fieldPath": "metadata.namespace",
                                    },
                                }
                            ]
                        }
                    },
                ],
            },
        }
    )
    for c in containers:
        mounts = c.setdefault("volumeMounts", [])
        if not any(m.get("mountPath") == TOKEN_DIR for m in mounts):
            mounts.append({"name": volume, "readOnly": True, "mountPath": TOKEN_DIR})


class ServiceAccountController:
    """Creates the ServiceAccount ``default`` in every namespace (the real
    serviceaccounts-controller), again after it is deleted."""

    def __init__(self, store: Store, interval: float = 1.0):
        self.store = store
        self.interval = interval
        self._wake: asyncio.Event | None = None
        store.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if self._wake is not None and event.resource in (NAMESPACES, SERVICEACCOUNTS):
            self._wake.set()

    def reconcile(self) -> None:
        """Create each missing ``default`` ServiceAccount."""
        for ns in list(self.store.iter(NAMESPACES)):
            name = ns["metadata"]["name"]
            if ns["metadata"].get("deletionTimestamp"):
                continue
            if self.store.peek(SERVICEACCOUNTS, name, "default") is None:
                try:
                    self.store.create(SERVICEACCOUNTS, {"metadata": {"name": "default"}}, name)
                except ApiError:
                    pass

    async def run(self) -> None:
        """Reconcile until cancelled."""
        self._wake = asyncio.Event()
        await reconcile_loop(self.reconcile, self._wake, self.interval, "serviceaccounts")


# -- TLS ---------------------------------------------------------------------------------------


def make_certificates(host: str) -> tuple[bytes, bytes, bytes]:
    """A CA and a server certificate for ``host`` (an IP or name) and the
    ``kubernetes.default.svc`` names; returns (CA PEM, server cert PEM, server key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devcluster-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    for ip in {host, "127.0.0.1"}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            names.append(x509.DNSName(ip))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


async def start_tls_site(runner, host: str, data_dir: Path, auth: Authenticator) -> int:
    """Serve ``runner``'s application over HTTPS on a free port of ``host`` too; writes the
    CA to ``<data_dir>/ca.crt`` (and the server's key pair, mode 0600, under ``tls/``), sets
    ``auth.ca_pem``; returns the port."""
    from aiohttp import web

    ca_pem, cert_pem, key_pem = make_certificates(host)
    tls = Path(data_dir) / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    (Path(data_dir) / "ca.crt").write_bytes(ca_pem)
    cert_path, key_path = tls / "apiserver.crt", tls / "apiserver.key"
    cert_path.write_bytes(cert_pem)
    key_path.touch(mode=0o600)
    key_path.write_bytes(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    site = web.TCPSite(runner, host, 0, ssl_context=context)
    await site.start()
    auth.ca_pem = ca_pem
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    return sockets[0].getsockname()[1]


def service_env(host: str, port: int) -> dict[str, str]:
    """The variables of the ``kubernetes`` Service every container gets."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
    }


def token_kubeconfig(server: str, token: str, namespace: str, ca_file: str | Path = "") -> dict:
    """A kubeconfig document for one identity (a ServiceAccount token), as a pod's in-cluster
    config or ``kubectl --token`` would give: ``server`` the API server's HTTPS address
    (`cluster.DevCluster.tls_url`) with ``ca_file`` (``<data_dir>/ca.crt``), or its plain
    HTTP one (kubectl does not send a token over plain HTTP: use HTTPS for kubectl)."""
    cluster: dict = {"server": server}
    if ca_file:
        cluster["certificate-authority"] = str(ca_file)
    name = "devcluster-token"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}
        ],
        "current-context": name,
    }
