"""Protobuf request bodies of the few kinds kubectl's typed commands send, decoded into their
JSON shape.

kubectl 1.32's typed commands (``kubectl create token``, ``kubectl auth can-i``, ``auth
whoami``, and ``kubectl create namespace|configmap|secret|serviceaccount|role|clusterrole|
rolebinding|clusterrolebinding``) POST
``application/vnd.kubernetes.protobuf``: the magic ``k8s\\x00`` and a
``runtime.Unknown`` envelope (1 typeMeta {1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding,
4 contentType) around the object's message. Only the fields these reviews use are decoded,
with the field numbers of the API's ``generated.proto``
(https://github.com/kubernetes/api/blob/master/authorization/v1/generated.proto,
https://github.com/kubernetes/api/blob/master/authentication/v1/generated.proto,
https://github.com/kubernetes/api/blob/master/core/v1/generated.proto,
https://github.com/kubernetes/api/blob/master/rbac/v1/generated.proto,
https://github.com/kubernetes/apimachinery/blob/master/pkg/apis/meta/v1/generated.proto).
Other kinds (``kubectl create deployment|job|role...``, whose specs are not decoded here)
raise `ProtoError`; the API server answers those 415.
"""

from __future__ import annotations

import base64

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"


class ProtoError(ValueError):
    """A body that is not the protobuf encoding expected."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ProtoError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one message: varints as int, length-delimited as
    bytes (fixed 32/64-bit fields as bytes too). Raises `ProtoError`."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtoError("truncated field")
            out.append((number, data[pos : pos + length]))
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            out.append((number, data[pos : pos + size]))
            pos += size
        else:
            raise ProtoError(f"unsupported wire type {wire}")
    return out


def _strings(data: bytes, names: dict[int, str], repeated: tuple[int, ...] = ()) -> dict:
    result: dict = {}
    for number, value in fields(data):
        if number in names and isinstance(value, bytes):
            text = value.decode()
            if number in repeated:
                result.setdefault(names[number], []).append(text)
            elif text:
                result[names[number]] = text
    return result


_RESOURCE_ATTRS = {
    1: "namespace",
    2: "verb",
    3: "group",
    4: "version",
    5: "resource",
    6: "subresource",
    7: "name",
}
_NON_RESOURCE_ATTRS = {1: "path", 2: "verb"}


def _access_spec(data: bytes) -> dict:
    spec: dict = {}
    for number, value in fields(data):
        if not isinstance(value, bytes):
            continue
        if number == 1:
            spec["resourceAttributes"] = _strings(value, _RESOURCE_ATTRS)
        elif number == 2:
            spec["nonResourceAttributes"] = _strings(value, _NON_RESOURCE_ATTRS)
        elif number == 3:
            spec["user"] = value.decode()
        elif number == 4:
            spec.setdefault("groups", []).append(value.decode())
        elif number == 6:
            spec["uid"] = value.decode()
    return spec


def _token_request_spec(data: bytes) -> dict:
    spec: dict = {}
    for number, value in fields(data):
        if number == 1 and isinstance(value, bytes):
            spec.setdefault("audiences", []).append(value.decode())
        elif number == 3 and isinstance(value, bytes):
            spec["boundObjectRef"] = _strings(
                value, {1: "kind", 2: "apiVersion", 3: "name", 4: "uid"}
            )
        elif number == 4 and isinstance(value, int):
            spec["expirationSeconds"] = value
    return spec


_SPECS = {
    "SelfSubjectAccessReview": _access_spec,
    "SubjectAccessReview": _access_spec,
    "SelfSubjectRulesReview": lambda data: _strings(data, {1: "namespace"}),
    "TokenRequest": _token_request_spec,
    "TokenReview": lambda data: _strings(data, {1: "token", 2: "audiences"}, repeated=(2,)),
    "SelfSubjectReview": lambda data: {},
}


def _map(entries: list[bytes], binary: bool = False) -> dict:
    """A proto3 ``map<string, string|bytes>`` (entries {1 key, 2 value}) as JSON: bytes values
    base64-encoded, as the JSON form of ``[]byte``."""
    out: dict = {}
    for entry in entries:
        key, value = "", b""
        for number, item in fields(entry):
            if number == 1 and isinstance(item, bytes):
                key = item.decode()
            elif number == 2 and isinstance(item, bytes):
                value = item
        out[key] = base64.b64encode(value).decode() if binary else value.decode()
    return out


def _grouped(data: bytes) -> dict[int, list]:
    grouped: dict[int, list] = {}
    for number, value in fields(data):
        grouped.setdefault(number, []).append(value)
    return grouped


_OWNER_REF = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}


def _object_meta(data: bytes) -> dict:
    """ObjectMeta: name 1, generateName 2, namespace 3, resourceVersion 6, labels 11,
    annotations 12, ownerReferences 13, finalizers 14 (the fields a create sets)."""
    meta = _strings(data, {1: "name", 2: "generateName", 3: "namespace", 6: "resourceVersion"})
    grouped = _grouped(data)
    if grouped.get(11):
        meta["labels"] = _map(grouped[11])
    if grouped.get(12):
        meta["annotations"] = _map(grouped[12])
    refs = []
    for raw in grouped.get(13, []):
        ref = _strings(raw, _OWNER_REF)
        for number, value in fields(raw):
            if number in (6, 7) and isinstance(value, int):
                ref["controller" if number == 6 else "blockOwnerDeletion"] = bool(value)
        refs.append(ref)
    if refs:
        meta["ownerReferences"] = refs
    if grouped.get(14):
        meta["finalizers"] = [f.decode() for f in grouped[14]]
    return meta


def _config_map(g: dict) -> dict:
    obj: dict = {}
    if g.get(2):
        obj["data"] = _map(g[2])
    if g.get(3):
        obj["binaryData"] = _map(g[3], binary=True)
    if g.get(4):
        obj["immutable"] = bool(g[4][-1])
    return obj


def _secret(g: dict) -> dict:
    obj: dict = {}
    if g.get(2):
        obj["data"] = _map(g[2], binary=True)
    if g.get(3) and g[3][-1]:
        obj["type"] = g[3][-1].decode()
    if g.get(4):
        obj["stringData"] = _map(g[4])
    if g.get(5):
        obj["immutable"] = bool(g[5][-1])
    return obj


def _namespace(g: dict) -> dict:
    finalizers = [f.decode() for raw in g.get(2, []) for n, f in fields(raw) if n == 1]
    return {"spec": {"finalizers": finalizers}} if finalizers else {}


def _service_account(g: dict) -> dict:
    obj: dict = {}
    if g.get(3):
        obj["automountServiceAccountToken"] = bool(g[3][-1])
    if g.get(4):
        obj["imagePullSecrets"] = [_strings(raw, {1: "name"}) for raw in g[4]]
    return obj


def _repeated(raw: bytes, names: dict[int, str]) -> dict:
    out: dict = {}
    for number, value in fields(raw):
        if number in names and isinstance(value, bytes):
            out.setdefault(names[number], []).append(value.decode())
    return out


_RULE = {1: "verbs", 2: "apiGroups", 3: "resources", 4: "resourceNames", 5: "nonResourceURLs"}


def _role(g: dict) -> dict:
    """rbac/v1 Role and ClusterRole: rules 2 (PolicyRule: verbs 1, apiGroups 2, resources 3,
    resourceNames 4, nonResourceURLs 5); an empty apiGroups entry is the core group."""
    rules = []
    for raw in g.get(2, []):
        rule = _repeated(raw, _RULE)
        rule.setdefault("verbs", [])
        rules.append(rule)
    return {"rules": rules} if rules else {}


def _role_binding(g: dict) -> dict:
    """rbac/v1 RoleBinding and ClusterRoleBinding: subjects 2 (kind 1, apiGroup 2, name 3,
    namespace 4), roleRef 3 (apiGroup 1, kind 2, name 3)."""
    obj: dict = {}
    subjects = [
        _strings(raw, {1: "kind", 2: "apiGroup", 3: "name", 4: "namespace"}) for raw in g.get(2, [])
    ]
    if subjects:
        obj["subjects"] = subjects
    if g.get(3):
        ref = _strings(g[3][-1], {1: "apiGroup", 2: "kind", 3: "name"})
        obj["roleRef"] = {"apiGroup": ref.get("apiGroup", ""), **ref}
    return obj


#: kind -> decoder of its fields other than metadata (1), for ``kubectl create <kind>``
_OBJECTS = {
    "Role": _role,
    "ClusterRole": _role,
    "RoleBinding": _role_binding,
    "ClusterRoleBinding": _role_binding,
    "ConfigMap": _config_map,
    "Secret": _secret,
    "Namespace": _namespace,
    "ServiceAccount": _service_account,
}


def decode(body: bytes) -> dict:
    """The JSON-shaped object of a protobuf body: ``apiVersion``, ``kind``, ``spec`` for the
    review kinds and TokenRequest; ``apiVersion``, ``kind``, ``metadata`` and the kind's
    fields for ConfigMap, Secret, Namespace, ServiceAccount and the four RBAC kinds. Raises
    `ProtoError` for any other kind or a malformed body."""
    if not body.startswith(MAGIC):
        raise ProtoError("missing the k8s protobuf magic")
    type_meta, raw = {}, b""
    for number, value in fields(body[len(MAGIC) :]):
        if number == 1 and isinstance(value, bytes):
            type_meta = _strings(value, {1: "apiVersion", 2: "kind"})
        elif number == 2 and isinstance(value, bytes):
            raw = value
    kind = type_meta.get("kind", "")
    if kind in _OBJECTS:
        grouped = _grouped(raw)
        obj = {"apiVersion": type_meta.get("apiVersion", ""), "kind": kind}
        obj["metadata"] = _object_meta(grouped[1][-1]) if grouped.get(1) else {}
        return {**obj, **_OBJECTS[kind](grouped)}
    if kind not in _SPECS:
        raise ProtoError(f"protobuf bodies of kind {kind!r} are not understood")
    spec = {}
    for number, value in fields(raw):
        if number == 2 and isinstance(value, bytes):
            spec = _SPECS[kind](value)
    return {"apiVersion": type_meta.get("apiVersion", ""), "kind": kind, "spec": spec}


def request_body(raw: bytes) -> dict:
    """The JSON shape of a protobuf request body (`decode`), for the API server's create and
    update handlers. Raises `ApiError` 415 ``UnsupportedMediaType`` for a kind not decoded
    here, worded as kube-apiserver's ``NewUnsupportedMediaTypeError`` with the media types
    that work for it (https://github.com/kubernetes/apimachinery/blob/v0.32.0/pkg/api/errors/errors.go)."""
    from .store import ApiError

    try:
        return decode(raw)
    except ProtoError as exc:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format ({exc}) - accepted media types "
            "include: application/json, application/yaml",
        ) from None
