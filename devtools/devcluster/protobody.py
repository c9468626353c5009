"""Protobuf request bodies of the few kinds `rbac.Gate` answers, decoded into their JSON shape.

kubectl 1.32's typed commands (``kubectl create token``, ``kubectl auth can-i``, ``auth
whoami``) POST ``application/vnd.kubernetes.protobuf``: the magic ``k8s\\x00`` and a
``runtime.Unknown`` envelope (1 typeMeta {1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding,
4 contentType) around the object's message. Only the fields these reviews use are decoded,
with the field numbers of the API's ``generated.proto``
(https://github.com/kubernetes/api/blob/master/authorization/v1/generated.proto,
https://github.com/kubernetes/api/blob/master/authentication/v1/generated.proto).
"""

from __future__ import annotations

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


def decode(body: bytes) -> dict:
    """The JSON-shaped object (``apiVersion``, ``kind``, ``spec``) of a protobuf body of one of
    the review kinds or a TokenRequest. Raises `ProtoError` for anything else."""
    if not body.startswith(MAGIC):
        raise ProtoError("missing the k8s protobuf magic")
    type_meta, raw = {}, b""
    for number, value in fields(body[len(MAGIC) :]):
        if number == 1 and isinstance(value, bytes):
            type_meta = _strings(value, {1: "apiVersion", 2: "kind"})
        elif number == 2 and isinstance(value, bytes):
            raw = value
    kind = type_meta.get("kind", "")
    if kind not in _SPECS:
        raise ProtoError(f"protobuf bodies of kind {kind!r} are not understood")
    spec = {}
    for number, value in fields(raw):
        if number == 2 and isinstance(value, bytes):
            spec = _SPECS[kind](value)
    return {"apiVersion": type_meta.get("apiVersion", ""), "kind": kind, "spec": spec}
