"""Label and field selectors: parsing and matching, pure functions.

Label selector syntax (equality- and set-based), as in
https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors :
``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a`` (exists), ``!a``
(does not exist), comma-separated (all must hold).

Field selector syntax, as in
https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/ :
``path=value``, ``path==value``, ``path!=value``, comma-separated, where ``path`` is a dotted
path into the object (``metadata.name``, ``involvedObject.uid``, ``spec.nodeName``,
``status.phase``...). A missing field compares as the empty string. Only the fields the real
server supports for each kind are accepted (`SUPPORTED_FIELDS`, `check_fields`); any other is
a 400, as upstream's ``field label not supported``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class SelectorError(ValueError):
    """A selector string that cannot be parsed; the message names the bad part."""


@dataclass(frozen=True)
class Requirement:
    """One term of a selector: ``key``, an operator and the values it compares with.

    ``op`` is one of ``=``, ``!=``, ``in``, ``notin``, ``exists``, ``!``.
    """

    key: str
    op: str
    values: tuple[str, ...] = ()


_SET_RE = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")


def _split_terms(text: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t for t in terms if t.strip()]


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse a label selector string into requirements; ``None``/``""`` selects everything.

    Raises `SelectorError` for a term it cannot parse.
    """
    if not text:
        return ()
    reqs = []
    for term in _split_terms(text):
        eq = _EQ_RE.match(term)
        if eq:
            op = "!=" if eq.group(2) == "!=" else "="
            reqs.append(Requirement(eq.group(1), op, (eq.group(3),)))
            continue
        st = _SET_RE.match(term)
        if not st:
            raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
        neg, key, setop, values = st.groups()
        if setop and neg:
            raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
        if setop:
            vals = tuple(v.strip() for v in values.split(",") if v.strip())
            reqs.append(Requirement(key, setop, vals))
        else:
            reqs.append(Requirement(key, "!" if neg else "exists"))
    return tuple(reqs)


def match_labels(reqs: tuple[Requirement, ...], labels: dict | None) -> bool:
    """True if ``labels`` (a dict, or None for no labels) satisfies every requirement."""
    labels = labels or {}
    for req in reqs:
        present = req.key in labels
        value = labels.get(req.key)
        if req.op == "=" and not (present and value == req.values[0]):
            return False
        if req.op == "!=" and present and value == req.values[0]:
            return False
        if req.op == "in" and not (present and value in req.values):
            return False
        if req.op == "notin" and present and value in req.values:
            return False
        if req.op == "exists" and not present:
            return False
        if req.op == "!" and present:
            return False
    return True


def parse_field_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse a field selector string (``=``, ``==``, ``!=`` terms); raises `SelectorError`."""
    if not text:
        return ()
    reqs = []
    for term in _split_terms(text):
        eq = _EQ_RE.match(term)
        if not eq:
            raise SelectorError(f"invalid field selector: {term.strip()!r}")
        op = "!=" if eq.group(2) == "!=" else "="
        reqs.append(Requirement(eq.group(1), op, (eq.group(3),)))
    return tuple(reqs)


#: The field selectors kube-apiserver 1.32 supports beyond ``metadata.name`` and
#: ``metadata.namespace``, per resource (each registry's ``GetAttrs``/``ToSelectableFields``,
#: e.g. https://github.com/kubernetes/kubernetes/blob/v1.32.0/pkg/registry/core/pod/strategy.go).
SUPPORTED_FIELDS: dict[str, tuple[str, ...]] = {
    "pods": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "nodes": ("spec.unschedulable",),
    "namespaces": ("status.phase",),
    "secrets": ("type",),
    "jobs": ("status.successful",),
    "replicasets": ("status.replicas",),
    "persistentvolumeclaims": (),
    "services": (),
}

_FIELD_ALIASES = {("events", "source"): "source.component"}


def check_fields(
    reqs: tuple[Requirement, ...], plural: str, namespaced: bool
) -> tuple[Requirement, ...]:
    """``reqs`` with the real server's per-kind aliases applied (events' ``source``); raises
    `SelectorError` worded as kube-apiserver (``field label not supported: spec.x``; kubectl
    prefixes it with ``Unable to find "/v1, Resource=pods" that match ...``) for a field the
    kind does not support."""
    allowed = {"metadata.name"} | ({"metadata.namespace"} if namespaced else set())
    allowed |= set(SUPPORTED_FIELDS.get(plural, ()))
    out = []
    for req in reqs:
        if req.key not in allowed:
            raise SelectorError(f"field label not supported: {req.key}")
        alias = _FIELD_ALIASES.get((plural, req.key))
        out.append(Requirement(alias, req.op, req.values) if alias else req)
    return tuple(out)


def field_value(obj: dict, path: str) -> str:
    """The value at a dotted ``path`` of ``obj`` as a string (``""`` if missing)."""
    cur: object = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return ""
        cur = cur[part]
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


_FIELD_DEFAULTS = {"spec.hostNetwork": "false"}  # what the server reads for an unset field


def match_fields(reqs: tuple[Requirement, ...], obj: dict) -> bool:
    """True if ``obj`` satisfies every field requirement."""
    for req in reqs:
        value = field_value(obj, req.key) or _FIELD_DEFAULTS.get(req.key, "")
        if req.op == "=" and value != req.values[0]:
            return False
        if req.op == "!=" and value == req.values[0]:
            return False
    return True


@dataclass(frozen=True)
class Selector:
    """A label selector and a field selector together, as a list or watch request has them."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None) -> Selector:
        """Parse both query parameters; raises `SelectorError`."""
        return cls(parse_label_selector(label_selector), parse_field_selector(field_selector))

    def matches(self, obj: dict) -> bool:
        """True if ``obj`` matches both selectors."""
        labels = (obj.get("metadata") or {}).get("labels")
        return match_labels(self.labels, labels) and match_fields(self.fields, obj)
