"""PATCH bodies, applied to plain dicts: pure functions.

- ``application/merge-patch+json``: JSON merge patch, https://www.rfc-editor.org/rfc/rfc7386
  (``null`` deletes a key, dicts merge, anything else replaces).
- ``application/strategic-merge-patch+json``: as merge patch, plus lists of dicts that all
  carry a ``name`` (containers, env, volumes...) merge item by item on ``name``; the
  ``$setElementOrder/...``, ``$retainKeys`` directives are ignored and ``$patch: delete`` in a
  list item removes it. A simplification of
  https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/
- ``application/json-patch+json``: JSON patch, https://www.rfc-editor.org/rfc/rfc6902
  (add, remove, replace, test, copy, move).
- ``application/apply-patch+yaml`` (server-side apply, ``kubectl apply --server-side``):
  applied as a strategic merge of the applied configuration, and an absent object is created
  from it (`apply_creates`), as the real server does. Not emulated: ``managedFields``, field
  ownership and its 409 conflicts, and removal of fields a manager stops applying
  (https://kubernetes.io/docs/reference/using-api/server-side-apply/).

Errors raise `PatchError` (the API server answers 422/400).
"""

from __future__ import annotations

import copy
from typing import Any

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
#: The patch types of a built-in kind in kube-apiserver's order (handlers/patch.go), and its
#: 415 answer for any other Content-Type (negotiation.NewUnsupportedMediaTypeError).
PATCH_TYPES = (JSON_PATCH, MERGE, STRATEGIC, APPLY)
UNSUPPORTED_MESSAGE = (
    "the body of the request was in an unknown format - accepted media types include: "
    + ", ".join(PATCH_TYPES)
)


class PatchError(ValueError):
    """A patch that cannot be applied; the message says why."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 merge of ``patch`` into ``target``; returns a new value."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge (simplified, see the module docstring); returns a new value."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif _named_list(value) and _named_list(result.get(key)):
            merged = list(result[key])
            for item in value:
                idx = next((i for i, m in enumerate(merged) if m["name"] == item["name"]), None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        merged.pop(idx)
                elif idx is None:
                    merged.append(strategic_merge_patch({}, item))
                else:
                    merged[idx] = strategic_merge_patch(merged[idx], item)
            result[key] = merged
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, list):
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise PatchError(f"path not found: /{'/'.join(parts)}")
    return cur, parts[-1]


def _get(doc: Any, path: str) -> Any:
    cur = doc
    for part in _pointer(path):
        try:
            cur = cur[int(part)] if isinstance(cur, list) else cur[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise PatchError(f"path not found: {path}") from None
    return cur


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent, last = _parent(doc, parts)
    if isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        else:
            parent.insert(int(last), copy.deepcopy(value))
    else:
        parent[last] = copy.deepcopy(value)
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent, last = _parent(doc, parts)
    try:
        if isinstance(parent, list):
            parent.pop(int(last))
        else:
            del parent[last]
    except (KeyError, IndexError, ValueError):
        raise PatchError(f"path not found: {path}") from None
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 patch: apply the list of operations ``ops``; returns a new value."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, op.get("value"))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc = _add(_remove(doc, path), path, op.get("value")) if path else op.get("value")
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"test failed at {path}")
        elif kind in ("copy", "move"):
            value = _get(doc, op.get("from", ""))
            if kind == "move":
                doc = _remove(doc, op.get("from", ""))
            doc = _add(doc, path, value)
        else:
            raise PatchError(f"unknown JSON patch operation: {kind!r}")
    return doc


def apply_patch(content_type: str, target: dict, body: Any) -> dict:
    """Apply a PATCH ``body`` of ``content_type`` to ``target``; raises `PatchError`."""
    kind = content_type.split(";")[0].strip()
    if kind == MERGE:
        result = merge_patch(target, body)
    elif kind == STRATEGIC:
        result = strategic_merge_patch(target, body)
    elif kind == JSON_PATCH:
        result = json_patch(target, body)
    elif kind == APPLY:
        if not isinstance(body, dict):
            raise PatchError("the applied configuration is not an object")
        result = strategic_merge_patch(target, body)
    else:
        raise PatchError(f"unsupported patch type: {kind!r}")
    if not isinstance(result, dict):
        raise PatchError("the patched object is not an object")
    return result


def apply_creates(content_type: str) -> bool:
    """Whether a PATCH of ``content_type`` to an absent object creates it (server-side apply
    does; the other patch types answer 404)."""
    return content_type.split(";")[0].strip() == APPLY


def supported(content_type: str) -> bool:
    """Whether ``content_type`` (parameters ignored) is one of `PATCH_TYPES`; kube-apiserver
    answers 415 `UNSUPPORTED_MESSAGE` otherwise, before looking the object up."""
    return content_type.split(";")[0].strip() in PATCH_TYPES
