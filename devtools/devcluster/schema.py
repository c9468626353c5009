"""The Kubernetes OpenAPI schema of the served version: a fast object checker and the
``/openapi/v3`` documents kubectl fetches.

The schema is the one `kubernetes-validate <https://github.com/willthames/kubernetes-validate>`_
ships (JSON Schema converted from upstream's OpenAPI, ``v<version>-local-strict/_definitions.json``:
``additionalProperties: false`` everywhere, so unknown fields are seen). It uses a small set of
keywords (``type``, ``properties``, ``required``, ``additionalProperties``, ``items``, ``enum``,
``$ref``, ``format``, two ``oneOf`` for IntOrString and Quantity), so instead of a general JSON
Schema engine (fastjsonschema takes ~600 us per pod, jsonschema several ms) the definitions are
compiled once into `Node` trees and `check` walks an object along them, collecting every
problem in one pass (~60 us for a kubespawner pod).

What a real API server does with each problem (https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation):

- an unknown field: dropped, with a ``Warning`` header (``fieldValidation=Warn``, the default),
  dropped silently (``Ignore``), or 400 ``strict decoding error: unknown field "spec.x"``
  (``Strict``, what kubectl sends);
- a wrong JSON type: 400 ``... cannot be handled as a Pod: json: cannot unmarshal ...``;
- a missing required field or a value outside an enum: 422 Invalid (``Required value``,
  ``Unsupported value``), from the type's validation.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

#: The Kubernetes minor version the emulator serves (``/version``) and validates against.
SERVED_MINOR = "32"


def schema_dir(minor: str = SERVED_MINOR) -> Path:
    """The kubernetes-validate folder of strict JSON schemas for ``1.<minor>``.

    Raises `RuntimeError` naming the versions it has if kubernetes-validate lacks that one.
    """
    spec = importlib.util.find_spec("kubernetes_validate")  # its import is slow: not imported
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("kubernetes-validate is not installed")
    base = Path(spec.submodule_search_locations[0]) / "kubernetes-json-schema"
    path = base / f"v1.{minor}.0-local-strict"
    if not path.is_dir():
        have = sorted(p.name for p in base.iterdir() if p.name.endswith("-strict"))
        raise RuntimeError(f"kubernetes-validate has no schema for 1.{minor}; it has {have}")
    return path


@functools.lru_cache(maxsize=2)
def definitions(minor: str = SERVED_MINOR) -> dict[str, dict]:
    """The ``$defs`` of the schema (definition name -> JSON schema), loaded once."""
    return json.loads((schema_dir(minor) / "_definitions.json").read_text())["$defs"]


# -- the compiled checker -------------------------------------------------------------------


class Node:
    """One compiled schema: ``kind`` is ``object``, ``array``, ``string``, ``integer``,
    ``number``, ``boolean``, ``intorstr``, ``quantity`` or ``any``; ``title`` the Go type's
    name (for decode messages); ``props``/``required``/``extra`` for objects (``extra`` None:
    any value, False: no unknown keys, a Node: the values of a map); ``items`` for arrays;
    ``enum`` the allowed strings, if any."""

    __slots__ = (
        "kind",
        "title",
        "props",
        "required",
        "extra",
        "items",
        "enum",
        "fmt",
        "exact",
        "leaf",
    )

    def __init__(self) -> None:
        self.kind = "any"
        self.title = ""
        self.props: dict[str, Node] = {}
        self.required: tuple[str, ...] = ()
        self.extra: Node | bool | None = None
        self.items: Node | None = None
        self.enum: frozenset | None = None
        self.fmt = ""
        self.exact: frozenset | None = None
        self.leaf = True


class _Compiler:
    def __init__(self, defs: dict[str, dict]):
        self.defs = defs
        self.done: dict[str, Node] = {}

    def ref(self, name: str) -> Node:
        node = self.done.get(name)
        if node is None:
            node = self.done[name] = Node()  # placed first: recursive definitions
            self.fill(node, self.defs[name], name.rsplit(".", 1)[-1])
        return node

    def compile(self, schema: dict, title: str) -> Node:
        if "$ref" in schema:
            return self.ref(schema["$ref"].rsplit("/", 1)[-1])
        node = Node()
        self.fill(node, schema, title)
        return node

    def fill(self, node: Node, schema: dict, title: str) -> None:
        node.title = title
        try:
            self._fill(node, schema, title)
        finally:
            _finish(node)

    def _fill(self, node: Node, schema: dict, title: str) -> None:
        if title in ("IntOrString", "Quantity"):
            node.kind = "intorstr" if title == "IntOrString" else "quantity"
            return
        types = schema.get("type")
        types = [types] if isinstance(types, str) else list(types or [])
        types = [t for t in types if t != "null"]
        node.kind = types[0] if len(types) == 1 else "any"
        node.fmt = schema.get("format", "")
        if "enum" in schema:
            node.enum = frozenset(v for v in schema["enum"] if v is not None)
        if node.kind == "object":
            node.props = {
                k: self.compile(v, title) for k, v in (schema.get("properties") or {}).items()
            }
            node.required = tuple(schema.get("required") or ())
            extra = schema.get("additionalProperties")
            if extra is False:
                node.extra = False
            elif isinstance(extra, dict):
                node.extra = self.compile(extra, title)
        elif node.kind == "array" and isinstance(schema.get("items"), dict):
            node.items = self.compile(schema["items"], title)


@functools.lru_cache(maxsize=64)
def root_node(definition: str, minor: str = SERVED_MINOR) -> Node:
    """The compiled `Node` of one definition, e.g. ``io.k8s.api.core.v1.Pod`` (cached)."""
    return _compiler(minor).ref(definition)


@functools.lru_cache(maxsize=2)
def _compiler(minor: str) -> _Compiler:
    return _Compiler(definitions(minor))


@functools.lru_cache(maxsize=128)
def definition_for(api_version: str, kind: str, minor: str = SERVED_MINOR) -> str | None:
    """The definition name of ``apiVersion``/``kind`` (by ``x-kubernetes-group-version-kind``)."""
    group, _, version = api_version.rpartition("/")
    for name, schema in definitions(minor).items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or ():
            if (gvk.get("group", ""), gvk["version"], gvk["kind"]) == (group, version, kind):
                return name
    return None


@dataclass(frozen=True)
class Problem:
    """One schema problem: ``kind`` is ``unknown`` (a field not in the schema), ``type``
    (wrong JSON type), ``required`` (a missing field) or ``enum`` (a value not allowed);
    ``path`` the keys/indices from the object's root; ``detail`` the expected Go type or the
    allowed values; ``title`` the Go struct that holds the field."""

    kind: str
    path: tuple
    detail: str = ""
    title: str = ""


_EXACT = {
    "string": frozenset({str}),
    "boolean": frozenset({bool}),
    "integer": frozenset({int}),
    "number": frozenset({int, float}),
    "intorstr": frozenset({int, str}),
    "quantity": frozenset({int, float, str}),
    "object": frozenset({dict}),
    "array": frozenset({list}),
}


def _finish(node: Node) -> None:
    node.exact = _EXACT.get(node.kind)
    node.leaf = node.kind not in ("object", "array")


def check(node: Node, value: object, path: tuple = (), out: list | None = None) -> list[Problem]:
    """Every problem of ``value`` against ``node`` (`Problem` list, empty if it conforms).

    Written for speed (it runs on every write): exact-type set membership, leaves checked
    without a call, paths built only on the way down.
    """
    out = [] if out is None else out
    if value is None:
        return out
    exact = node.exact
    if exact is not None and type(value) not in exact:
        out.append(Problem("type", path, _go_type(node), node.title))
        return out
    if node.kind == "object":
        props, extra = node.props, node.extra
        for key, item in value.items():  # type: ignore[union-attr]
            sub = props.get(key)
            if sub is None:
                if extra is False:
                    if props:  # a struct: the key is not one of its fields
                        out.append(Problem("unknown", path + (key,)))
                    continue
                if extra is None:
                    continue
                sub = extra
            if item is None:
                continue
            if sub.leaf and (sub.exact is None or type(item) in sub.exact):
                if sub.enum is not None and item not in sub.enum:
                    check(sub, item, path + (key,), out)
                continue
            check(sub, item, path + (key,), out)
        for key in node.required:
            if key not in value:  # type: ignore[operator]
                out.append(Problem("required", path + (key,)))
    elif node.kind == "array":
        items = node.items
        if items is not None and items.kind != "any":
            for i, item in enumerate(value):  # type: ignore[arg-type]
                if item is not None:
                    check(items, item, path + (i,), out)
    elif node.enum is not None and value not in node.enum:
        out.append(Problem("enum", path, ", ".join(f'"{v}"' for v in sorted(node.enum))))
    return out


def _go_type(node: Node) -> str:
    if node.kind == "integer":
        return "int32" if node.fmt == "int32" else "int64"
    if node.kind == "number":
        return "float64"
    if node.kind == "boolean":
        return "bool"
    if node.kind == "array":
        return f"[]{_go_type(node.items) if node.items else 'interface {}'}"
    if node.kind == "object":
        if not node.props and isinstance(node.extra, Node):
            return f"map[string]{_go_type(node.extra)}"
        return f"v1.{node.title}" if node.title else "struct"
    if node.kind in ("intorstr", "quantity"):
        return node.title
    return node.kind


def field_path(path: tuple) -> str:
    """A `Problem` path as the API server writes it: ``spec.containers[0].name``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def json_type(value: object) -> str:
    """The JSON type word of a decoded value, as Go's decoder names it (``number``...)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def value_at(obj: object, path: tuple) -> object:
    """The value at ``path`` of ``obj`` (None if absent)."""
    for part in path:
        try:
            obj = obj[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


def prune(obj: dict, paths: list[tuple]) -> None:
    """Remove the fields at ``paths`` from ``obj`` in place (unknown fields)."""
    for path in paths:
        parent = value_at(obj, path[:-1])
        if isinstance(parent, dict):
            parent.pop(path[-1], None)


# -- OpenAPI v3 documents ---------------------------------------------------------------------

_WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")


def _param(name: str, where: str = "query", schema_type: str = "string") -> dict:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": {"type": schema_type, "uniqueItems": True},
    }


def _openapi_schema(schema: object) -> object:
    """A JSON schema of kubernetes-validate turned back into OpenAPI 3.0 form."""
    if isinstance(schema, list):
        return [_openapi_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "$ref":
            out[key] = "#/components/schemas/" + value.rsplit("/", 1)[-1]
        elif key == "type" and isinstance(value, list):
            out[key] = next((t for t in value if t != "null"), "object")
        elif key == "additionalProperties" and value is False:
            continue
        elif key == "oneOf":
            out["x-kubernetes-int-or-string"] = True
            out["type"] = "string"
        elif key == "properties":
            out[key] = {k: _openapi_schema(v) for k, v in value.items()}
        else:
            out[key] = _openapi_schema(value)
    return out


def _refs(schema: object, found: set[str], defs: dict) -> None:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref":
                name = value.rsplit("/", 1)[-1]
                if name not in found:
                    found.add(name)
                    _refs(defs.get(name), found, defs)
            else:
                _refs(value, found, defs)
    elif isinstance(schema, list):
        for value in schema:
            _refs(value, found, defs)


_PATCH = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
#: the patch content types the emulated server accepts (`patching`; no server-side apply)
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)


def openapi_group_document(group_version: str, resources: list, minor: str = SERVED_MINOR) -> dict:
    """The ``/openapi/v3/api/v1`` (or ``/openapi/v3/apis/<group>/<version>``) document.

    ``resources``: the `resources.Resource` objects served in that group/version. Paths carry
    each verb with ``x-kubernetes-action`` and ``x-kubernetes-group-version-kind``, and the
    write verbs the ``dryRun``/``fieldManager``/``fieldValidation`` parameters, which is how
    kubectl decides that the server validates (and then sends ``fieldValidation=Strict``
    instead of validating client-side). ``components.schemas`` holds the kinds' definitions
    and everything they reference.
    """
    defs = definitions(minor)
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    paths: dict[str, dict] = {}
    wanted = {
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
    }
    for res in resources:
        definition = definition_for(res.api_version, res.kind, minor)
        gvk = {"group": res.group, "version": res.version, "kind": res.kind}
        if definition:
            wanted.add(definition)
            ref = {"$ref": f"#/components/schemas/{definition}"}
        else:
            ref = {"type": "object"}
        body = {"content": {"application/json": {"schema": ref}}}
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
        base = (
            f"{prefix}/namespaces/{{namespace}}/{res.plural}"
            if res.namespaced
            else (f"{prefix}/{res.plural}")
        )
        scope = [_param("namespace", "path")] if res.namespaced else []

        def op(
            action: str,
            writes: bool,
            body_: dict | None = None,
            extra: tuple = (),
            res=res,  # noqa: ANN001 - bound per resource
            gvk: dict = gvk,
            ok: dict = ok,
        ) -> dict:
            operation = {
                "operationId": f"{action}{res.kind}",
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [_param(p) for p in (_WRITE_PARAMS if writes else ()) + extra],
                "responses": ok,
            }
            if body_ is not None:
                operation["requestBody"] = body_
            return operation

        list_params = ("labelSelector", "fieldSelector", "limit", "continue", "resourceVersion")
        paths[base] = {
            "get": op("list", False, extra=list_params + ("watch", "allowWatchBookmarks")),
            "post": op("post", True, body),
            "delete": op("deletecollection", False, extra=("dryRun",) + list_params),
            "parameters": scope + [_param("pretty")],
        }
        # R: every patch type the server takes; kubectl computes its strategic merge patch
        # from this document's x-kubernetes-patch-* keys when the strategic type is listed
        # (``gvkSupportsPatchOpenAPIV3``), instead of asking for ``/openapi/v2``.
        patch_schema = {"schema": {"$ref": "#/components/schemas/" + _PATCH}}
        patch = op("patch", True, {"content": {t: patch_schema for t in PATCH_TYPES}})
        patch["parameters"].append(_param("force", schema_type="boolean"))
        paths[f"{base}/{{name}}"] = {
            "get": op("get", False),
            "put": op("put", True, body),
            "patch": patch,
            "delete": op("delete", False, extra=("dryRun", "gracePeriodSeconds")),
            # kubectl's query-parameter check reads the path's parameters: both places
            "parameters": [_param("name", "path"), *scope, _param("pretty")]
            + [_param(p) for p in _WRITE_PARAMS],
        }
        for sub in res.subresources:
            paths[f"{base}/{{name}}/{sub}"] = {
                "get": op("get", False),
                "parameters": [_param("name", "path"), *scope],
            }
    closure = set(wanted)
    for name in wanted:
        _refs(defs.get(name), closure, defs)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": f"v1.{minor}.0"},
        "paths": paths,
        "components": {
            "schemas": {n: _openapi_schema(defs[n]) for n in sorted(closure) if n in defs}
        },
    }


def openapi_root(group_versions: dict[str, bytes]) -> dict:
    """The ``/openapi/v3`` discovery document: each group/version's path with a content hash
    (``serverRelativeURL`` ``/openapi/v3/api/v1?hash=...``), as kubectl expects."""
    paths = {}
    for gv, body in group_versions.items():
        key = "api/v1" if gv == "v1" else f"apis/{gv}"
        digest = hashlib.sha512(body).hexdigest()[:128].upper()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}
