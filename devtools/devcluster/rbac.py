"""Authorization of the emulated API server: RBAC as kube-apiserver's, its 403s, and the
access reviews ``kubectl auth can-i`` / ``auth whoami`` send.

Every request to a resource is turned into attributes (user, verb, API group, resource,
subresource, namespace, name; `request_attributes`) and allowed when

- the user is in ``system:masters`` (the admin kubeconfig: it bypasses RBAC, as in
  kube-apiserver), or
- a ClusterRoleBinding (anywhere) or a RoleBinding in the request's namespace binds the user,
  one of its groups, or its ServiceAccount to a Role/ClusterRole with a matching rule
  (https://kubernetes.io/docs/reference/access-authn-authz/rbac/): ``apiGroups``,
  ``resources`` (``*``, ``pods``, ``pods/log``, ``*/log``), ``verbs`` (``*``), and
  ``resourceNames`` (only for requests that name an object).

Otherwise the answer is 403 ``Forbidden`` worded as the real server's
(``pods is forbidden: User "system:serviceaccount:ns:sa" cannot list resource "pods" in API
group "" in the namespace "ns"``; ``jobs.batch "x" is forbidden: ... cannot get resource
"jobs" in API group "batch" ...``; ``... at the cluster scope`` for cluster-wide requests).

Bootstrap objects made at start (:func:`bootstrap`): the ClusterRole ``cluster-admin`` bound to
``system:masters``, and ``system:basic-user`` (create SelfSubjectAccessReviews,
SelfSubjectRulesReviews, SelfSubjectReviews) bound to ``system:authenticated``. The other
default roles (``admin``, ``edit``, ``view``, aggregation rules) are not made.

Discovery (``/api``, ``/apis``, ``/version``...) is not authorized: anyone with a valid token,
or none, reads it (the real server gives it to ``system:authenticated``, and ``/version`` also
to ``system:unauthenticated``). Escalation checks (a user may only grant what it holds) are
not emulated.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from aiohttp import web

from . import protobody
from .authn import ADMIN, Authenticator, UserInfo, self_subject_review
from .resources import Resource, find_resource
from .store import ApiError, Event, Store

GROUP = "rbac.authorization.k8s.io"
ROLES = find_resource(GROUP, "v1", "roles")
ROLEBINDINGS = find_resource(GROUP, "v1", "rolebindings")
CLUSTERROLES = find_resource(GROUP, "v1", "clusterroles")
CLUSTERROLEBINDINGS = find_resource(GROUP, "v1", "clusterrolebindings")
REVIEWS = {
    "selfsubjectaccessreviews",
    "selfsubjectrulesreviews",
    "subjectaccessreviews",
    "selfsubjectreviews",
    "tokenreviews",
}
#: Who a plain-HTTP request without a token is: the admin, as on kube-apiserver's old
#: ``--insecure-port`` (no authentication, no authorization; removed in 1.20). kubectl never
#: sends a token over plain HTTP, and the tests' and dev stack's kubeconfig is plain HTTP.
INSECURE_PORT_USER = ADMIN
USER_KEY = web.RequestKey("devcluster_user", UserInfo)  # the request's UserInfo


@dataclass(frozen=True)
class Attributes:
    """What a request asks: ``verb`` (get, list, watch, create, update, patch, delete,
    deletecollection), ``group`` ("" for core), ``resource`` (plural), ``subresource``,
    ``namespace`` ("" for cluster scope), ``name`` ("" for collections)."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""


def request_verb(method: str, name: str | None, watch: bool) -> str:
    """The RBAC verb of an HTTP request (https://kubernetes.io/docs/reference/
    access-authn-authz/authorization/#determine-the-request-verb)."""
    if method in ("GET", "HEAD"):
        if watch:
            return "watch"
        return "get" if name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if name else "deletecollection"
    return method.lower()


def _rule_matches(rule: dict, attrs: Attributes) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.group not in groups:
        return False
    wanted = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    ok = False
    for resource in rule.get("resources") or []:
        if resource in ("*", wanted) or (
            attrs.subresource and resource == f"*/{attrs.subresource}"
        ):
            ok = True
            break
    if not ok:
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _subject_matches(subject: dict, user: UserInfo, binding_ns: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == user.username
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns
        return user.username == f"system:serviceaccount:{ns}:{subject.get('name')}"
    return False


def _describe_subject(subject: dict, binding_ns: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or binding_ns}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


class Authorizer:
    """RBAC over the objects of ``store`` (see the module docstring)."""

    def __init__(self, store: Store):
        self.store = store
        # the bindings, kept until one changes (the store's iter scans every object)
        self._bindings: tuple[list[dict], dict[str, list[dict]]] | None = None
        store.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.resource in (CLUSTERROLEBINDINGS, ROLEBINDINGS):
            self._bindings = None

    def _all_bindings(self) -> tuple[list[dict], dict[str, list[dict]]]:
        if self._bindings is None:
            by_ns: dict[str, list[dict]] = {}
            for rb in self.store.iter(ROLEBINDINGS):
                by_ns.setdefault(rb["metadata"]["namespace"], []).append(rb)
            self._bindings = (list(self.store.iter(CLUSTERROLEBINDINGS)), by_ns)
        return self._bindings

    def _bound_rules(self, user: UserInfo, namespace: str):
        """(rules, why) for each binding of ``user`` that applies in ``namespace``
        ("" = cluster scope: ClusterRoleBindings only)."""
        cluster_bindings, by_namespace = self._all_bindings()
        for crb in cluster_bindings:
            for subject in crb.get("subjects") or []:
                if _subject_matches(subject, user, ""):
                    ref = crb.get("roleRef") or {}
                    role = self.store.peek(CLUSTERROLES, None, ref.get("name", ""))
                    if role is not None:
                        why = (
                            f'ClusterRoleBinding "{crb["metadata"]["name"]}" of ClusterRole '
                            f'"{ref.get("name")}" to {_describe_subject(subject, "")}'
                        )
                        yield role.get("rules") or [], why
                    break
        if not namespace:
            return
        for rb in by_namespace.get(namespace, []):
            for subject in rb.get("subjects") or []:
                if _subject_matches(subject, user, namespace):
                    ref = rb.get("roleRef") or {}
                    if ref.get("kind") == "ClusterRole":
                        role = self.store.peek(CLUSTERROLES, None, ref.get("name", ""))
                    else:
                        role = self.store.peek(ROLES, namespace, ref.get("name", ""))
                    if role is not None:
                        why = (
                            f'RoleBinding "{rb["metadata"]["name"]}/{namespace}" of '
                            f'{ref.get("kind")} "{ref.get("name")}" to '
                            f"{_describe_subject(subject, namespace)}"
                        )
                        yield role.get("rules") or [], why
                    break

    def allowed(self, user: UserInfo, attrs: Attributes) -> tuple[bool, str]:
        """Whether ``user`` may do ``attrs``, and the reason (``RBAC: allowed by ...``)."""
        if "system:masters" in user.groups:
            return True, ""
        for rules, why in self._bound_rules(user, attrs.namespace):
            if any(_rule_matches(rule, attrs) for rule in rules):
                return True, f"RBAC: allowed by {why}"
        return False, ""

    def rules(self, user: UserInfo, namespace: str) -> list[dict]:
        """The resource rules that apply to ``user`` in ``namespace`` (SelfSubjectRulesReview)."""
        if "system:masters" in user.groups:
            return [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]
        found = []
        for rules, _ in self._bound_rules(user, namespace):
            for rule in rules:
                if rule.get("resources"):
                    kept = ("verbs", "apiGroups", "resources", "resourceNames")
                    found.append({k: rule[k] for k in kept if rule.get(k)})
        return found

    @staticmethod
    def forbidden(user: UserInfo, attrs: Attributes) -> ApiError:
        """403 Forbidden worded as kube-apiserver's RBAC refusal."""
        qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
        what = f'{qualified} "{attrs.name}"' if attrs.name else qualified
        wanted = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        where = (
            f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
        )
        details = {"name": attrs.name, "kind": attrs.resource}
        if attrs.group:
            details["group"] = attrs.group
        if not attrs.name:
            del details["name"]
        return ApiError(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{user.username}" cannot {attrs.verb} resource '
            f'"{wanted}" in API group "{attrs.group}" {where}',
            details,
        )


def bootstrap(store: Store) -> None:
    """Create the default ClusterRoles and ClusterRoleBindings (see the module docstring)."""
    labels = {"kubernetes.io/bootstrapping": "rbac-defaults"}
    annotations = {"rbac.authorization.kubernetes.io/autoupdate": "true"}
    roles = {
        "cluster-admin": (
            [
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ],
            {"kind": "Group", "apiGroup": GROUP, "name": "system:masters"},
        ),
        "system:basic-user": (
            [
                {
                    "apiGroups": ["authorization.k8s.io"],
                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    "verbs": ["create"],
                },
                {
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["selfsubjectreviews"],
                    "verbs": ["create"],
                },
            ],
            {"kind": "Group", "apiGroup": GROUP, "name": "system:authenticated"},
        ),
    }
    for name, (rules, subject) in roles.items():
        meta = {"name": name, "labels": labels, "annotations": annotations}
        store.create(CLUSTERROLES, {"metadata": meta, "rules": rules})
        store.create(
            CLUSTERROLEBINDINGS,
            {
                "metadata": meta,
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": name},
                "subjects": [subject],
            },
        )


def _json(body: dict, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


def _resource_attributes(spec_attrs: dict) -> Attributes:
    return Attributes(
        verb=spec_attrs.get("verb") or "",
        group=spec_attrs.get("group") or "",
        resource=spec_attrs.get("resource") or "",
        subresource=spec_attrs.get("subresource") or "",
        namespace=spec_attrs.get("namespace") or "",
        name=spec_attrs.get("name") or "",
    )


class Gate:
    """The API server's hook (``ApiServer.auth``): authenticate every request, authorize
    every resource request, and answer the kinds that are not stored (TokenRequest, access
    and token reviews)."""

    def __init__(self, store: Store, authenticator: Authenticator):
        self.store = store
        self.authn = authenticator
        self.authz = Authorizer(store)

    def authenticate(self, request: web.Request) -> UserInfo:
        """The request's `UserInfo` (kept in ``request[USER_KEY]``); `ApiError` 401 if its
        token is not valid."""
        header = request.headers.get("Authorization")
        if not header and not request.secure:
            user = INSECURE_PORT_USER  # plain HTTP without a token: the old insecure port
        else:
            user = self.authn.authenticate(header)
        if "Impersonate-User" in request.headers or "Impersonate-Group" in request.headers:
            user = self.impersonate(user, request.headers)
        request[USER_KEY] = user
        return user

    def impersonate(self, user: UserInfo, headers) -> UserInfo:
        """The identity ``user`` acts as with ``Impersonate-User``/``Impersonate-Group``
        headers (``kubectl --as/--as-group``), as kube-apiserver's impersonation filter: the
        ``impersonate`` verb on ``serviceaccounts`` (namespace and name from a
        ``system:serviceaccount:<ns>:<name>`` user, whose groups follow when none is asked),
        else on ``users``, and on ``groups`` for each group asked; ``system:authenticated``
        added. Raises `ApiError` 403 worded as the RBAC refusal of that check
        (``users "x" is forbidden: User "y" cannot impersonate resource "users" in API
        group "" at the cluster scope``), 400 for groups without a user.
        https://kubernetes.io/docs/reference/access-authn-authz/authentication/#user-impersonation
        """
        username = headers.get("Impersonate-User", "")
        groups = list(headers.getall("Impersonate-Group", []))
        if not username:
            raise ApiError(400, "BadRequest", f"requested {groups} without impersonating a user")
        checks = []
        parts = username.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            checks.append(Attributes("impersonate", "", "serviceaccounts", "", parts[2], parts[3]))
            if not groups:
                groups = ["system:serviceaccounts", f"system:serviceaccounts:{parts[2]}"]
        else:
            checks.append(Attributes("impersonate", "", "users", "", "", username))
        checks += [Attributes("impersonate", "", "groups", "", "", g) for g in groups]
        for attrs in checks:
            if not self.authz.allowed(user, attrs)[0]:
                raise self.authz.forbidden(user, attrs)
        if username != "system:anonymous" and "system:authenticated" not in groups:
            groups.append("system:authenticated")
        return UserInfo(username, tuple(groups))

    async def handle(
        self,
        request: web.Request,
        res: Resource,
        namespace: str | None,
        name: str | None,
        sub: str,
        watch: bool,
    ) -> web.StreamResponse | None:
        """Raise `ApiError` 403 if the request is not allowed; return the answer for the
        kinds this module serves, None for the API server's own."""
        user = request.get(USER_KEY) or self.authenticate(request)
        attrs = Attributes(
            request_verb(request.method, name, watch),
            res.group,
            res.plural,
            sub,
            namespace or "",
            name or "",
        )
        allowed, _ = self.authz.allowed(user, attrs)
        if not allowed and sub in ("exec", "attach", "portforward") and attrs.verb == "get":
            # D: a refused WebSocket GET makes kubectl retry over SPDY (POST: create), which
            # the devcluster does not serve; devcluster.streams
            attrs = dataclasses.replace(attrs, verb="create")
            allowed, _ = self.authz.allowed(user, attrs)
        if not allowed:
            raise self.authz.forbidden(user, attrs)
        if res.plural in REVIEWS or sub == "token":
            if request.method != "POST" or (res.plural in REVIEWS and name):
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            body = await _body(request)
            if sub == "token":
                return _json(
                    self.authn.token_request(namespace or "default", name or "", body), 201
                )
            return _json(self.review(res.plural, user, body), 201)
        return None

    def review(self, plural: str, user: UserInfo, body: dict) -> dict:
        """Answer an access or identity review of ``user`` (or, for a SubjectAccessReview,
        of the user it names)."""
        spec = body.get("spec") or {}
        if plural == "selfsubjectreviews":
            return self_subject_review(user)
        if plural == "tokenreviews":
            return self.authn.token_review(body)
        group_version = "authorization.k8s.io/v1"
        kind = {
            "selfsubjectaccessreviews": "SelfSubjectAccessReview",
            "selfsubjectrulesreviews": "SelfSubjectRulesReview",
            "subjectaccessreviews": "SubjectAccessReview",
        }[plural]
        echo = {
            "kind": kind,
            "apiVersion": group_version,
            "metadata": {"creationTimestamp": None},
            "spec": spec,
        }
        if plural == "subjectaccessreviews":
            user = UserInfo(spec.get("user") or "", tuple(spec.get("groups") or ()))
        if plural == "selfsubjectrulesreviews":
            ns = spec.get("namespace") or ""
            return {
                **echo,
                "status": {
                    "resourceRules": self.authz.rules(user, ns),
                    "nonResourceRules": [],
                    "incomplete": False,
                },
            }
        if spec.get("nonResourceAttributes"):
            # discovery and health paths are open to all (see the module docstring)
            allowed = (spec["nonResourceAttributes"].get("verb") or "get") == "get" or (
                "system:masters" in user.groups
            )
            return {**echo, "status": {"allowed": allowed}}
        attrs = _resource_attributes(spec.get("resourceAttributes") or {})
        allowed, reason = self.authz.allowed(user, attrs)
        status: dict = {"allowed": allowed}
        if reason:
            status["reason"] = reason
        return {**echo, "status": status}


async def _body(request: web.Request) -> dict:
    raw = await request.read()
    if request.headers.get("Content-Type", "").startswith(protobody.CONTENT_TYPE):
        try:  # kubectl 1.32's typed commands (create token, auth can-i)
            return protobody.decode(raw)
        except protobody.ProtoError as exc:
            raise ApiError(415, "UnsupportedMediaType", str(exc)) from None
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the request body is not a JSON object")
    return body
