"""Validation of written objects as kube-apiserver does it: pure functions over plain dicts.

- `decode`: the OpenAPI schema of the served version (`schema`): unknown fields dropped with a
  warning, or 400 under ``fieldValidation=Strict``; wrong JSON types 400; missing required
  fields and values outside an enum 422.
- `validate_object`: name rules per kind, label and annotation keys and values, and the
  per-kind checks our clients can trip (containers, volumes, ports, env names, restart
  policy, Secret/ConfigMap keys, Service ports, Job selectors). 422 ``Invalid``.
- `validate_update`: the immutable fields of Pods and Jobs (and Services' clusterIP).

Messages and ``details.causes`` are worded as upstream's (k8s.io/apimachinery
``pkg/util/validation`` and ``pkg/util/validation/field``, kubernetes ``pkg/apis/core/validation``
and ``pkg/apis/batch/validation``):
https://github.com/kubernetes/apimachinery/blob/v0.32.0/pkg/util/validation/validation.go
https://github.com/kubernetes/kubernetes/blob/v1.32.0/pkg/apis/core/validation/validation.go
"""

from __future__ import annotations

import contextvars
import json
import re
from dataclasses import dataclass, field

from . import schema
from .store import ApiError

# -- request options --------------------------------------------------------------------------


@dataclass
class WriteOptions:
    """Per-request write options the API server sets (`OPTIONS`): ``field_validation`` is
    ``Strict``, ``Warn`` (the server's default) or ``Ignore``; ``warnings`` collects the
    ``Warning`` header texts (``unknown field "spec.x"``)."""

    field_validation: str = "Warn"
    warnings: list[str] = field(default_factory=list)


OPTIONS: contextvars.ContextVar[WriteOptions | None] = contextvars.ContextVar(
    "devcluster_write_options", default=None
)

FIELD_VALIDATION_VALUES = ("Ignore", "Warn", "Strict")


# -- field errors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One ``field.Error``: ``type`` is upstream's ErrorType reason (``FieldValueInvalid``,
    ``FieldValueRequired``, ``FieldValueNotSupported``, ``FieldValueForbidden``,
    ``FieldValueDuplicate``, ``FieldValueNotFound``, ``FieldValueTooLong``)."""

    type: str
    field: str
    detail: str = ""
    value: object = None

    @property
    def body(self) -> str:
        """The message without the field (``Invalid value: "x": ...``), as ``causes[].message``."""
        if self.type == "FieldValueRequired":
            text = "Required value"
        elif self.type == "FieldValueForbidden":
            text = "Forbidden"
        elif self.type == "FieldValueTooLong":
            text = "Too long"
        elif self.type == "FieldValueNotSupported":
            text = f"Unsupported value: {_show(self.value)}"
        elif self.type == "FieldValueDuplicate":
            text = f"Duplicate value: {_show(self.value)}"
        elif self.type == "FieldValueNotFound":
            text = f"Not found: {_show(self.value)}"
        else:
            text = f"Invalid value: {_show(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


class Raw(str):
    """A value shown as it is in a message (e.g. Go's ``[]string{"x"}``), not JSON-quoted."""


def _show(value: object) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def invalid(kind: str, name: str, errors: list[FieldError], group: str = "") -> ApiError:
    """The 422 Invalid `ApiError` for ``errors``: ``Pod "x" is invalid: <e>`` (one) or
    ``...: [<e1>, <e2>]`` (several), ``Job.batch "x" ...`` for a group, ``details.causes`` one
    per error (upstream ``apierrors.NewInvalid``; kubectl prints ``The Job "x" is invalid``)."""
    text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    details: dict = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    details["causes"] = [{"reason": e.type, "message": e.body, "field": e.field} for e in errors]
    qualified = f"{kind}.{group}" if group else kind  # schema.GroupKind.String()
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {text}', details)


# -- name and label rules (apimachinery pkg/util/validation) ----------------------------------

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + ")*"
_DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = "(" + _QUALIFIED_NAME + ")?"
_CONFIG_KEY = r"[-._a-zA-Z0-9]+"
_ENV_VAR = r"[-._a-zA-Z][-._a-zA-Z0-9]*"
_IANA_SVC = "[-a-z0-9]+"

_RE = {
    k: re.compile(f"^{v}$")
    for k, v in {
        "label": _DNS1123_LABEL,
        "subdomain": _DNS1123_SUBDOMAIN,
        "dns1035": _DNS1035_LABEL,
        "qualified": _QUALIFIED_NAME,
        "value": _LABEL_VALUE,
        "config": _CONFIG_KEY,
        "env": _ENV_VAR,
        "iana": _IANA_SVC,
    }.items()
}


def _regex_error(what: str, regex: str, examples: tuple[str, ...]) -> str:
    shown = ",  or ".join(f"'{e}'" for e in examples)
    return f"{what} (e.g. {shown}, regex used for validation is '{regex}')"


MSG_LABEL = _regex_error(
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character",
    _DNS1123_LABEL,
    ("my-name", "123-abc"),
)
MSG_SUBDOMAIN = _regex_error(
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character",
    _DNS1123_SUBDOMAIN,
    ("example.com",),
)
MSG_DNS1035 = _regex_error(
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
    "an alphabetic character, and end with an alphanumeric character",
    _DNS1035_LABEL,
    ("my-name", "abc-123"),
)
MSG_QUALIFIED = _regex_error(
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character",
    _QUALIFIED_NAME,
    ("MyName", "my.name", "123-abc"),
)
MSG_VALUE = _regex_error(
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character",
    _LABEL_VALUE,
    ("MyValue", "my_value", "12345"),
)
MSG_CONFIG = _regex_error(
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
    _CONFIG_KEY,
    ("key.name", "KEY_NAME", "key-name"),
)
MSG_ENV = _regex_error(
    "a valid environment variable name must consist of alphabetic characters, digits, '_', "
    "'-', or '.', and must not start with a digit",
    _ENV_VAR,
    ("my.env-name", "MY_ENV.NAME", "MyEnvName1"),
)


def _max_len(n: int) -> str:
    return f"must be no more than {n} characters"


def dns1123_label(value: str) -> list[str]:
    """Upstream ``IsDNS1123Label``: the problems of ``value`` (empty list if valid)."""
    errs = [_max_len(63)] if len(value) > 63 else []
    return errs + ([] if _RE["label"].match(value) else [MSG_LABEL])


def dns1123_subdomain(value: str) -> list[str]:
    """Upstream ``IsDNS1123Subdomain``."""
    errs = [_max_len(253)] if len(value) > 253 else []
    return errs + ([] if _RE["subdomain"].match(value) else [MSG_SUBDOMAIN])


def dns1035_label(value: str) -> list[str]:
    """Upstream ``IsDNS1035Label``."""
    errs = [_max_len(63)] if len(value) > 63 else []
    return errs + ([] if _RE["dns1035"].match(value) else [MSG_DNS1035])


def qualified_name(value: str) -> list[str]:
    """Upstream ``IsQualifiedName`` (label and annotation keys: ``[prefix/]name``)."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
        errs = []
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs = ["prefix part must be non-empty"]
        else:
            errs = ["prefix part " + m for m in dns1123_subdomain(prefix)]
    else:
        return [
            "a qualified name "
            + MSG_QUALIFIED.removeprefix("name part ")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + _max_len(63))
    if name and not _RE["qualified"].match(name):
        errs.append(MSG_QUALIFIED)
    return errs


def label_value(value: str) -> list[str]:
    """Upstream ``IsValidLabelValue``."""
    errs = [_max_len(63)] if len(value) > 63 else []
    return errs + ([] if _RE["value"].match(value) else [MSG_VALUE])


def path_segment_name(value: str) -> list[str]:
    """Upstream ``path.IsValidPathSegmentName`` (RBAC object names)."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    bad = [c for c in ("/", "%") if c in value]
    return [f"may not contain '{c}'" for c in bad]


#: Name rule per kind (``ValidateNameFunc`` of each registry); subdomain for the rest.
NAME_RULES = {
    "Namespace": dns1123_label,
    "Service": dns1035_label,
    "Role": path_segment_name,
    "RoleBinding": path_segment_name,
    "ClusterRole": path_segment_name,
    "ClusterRoleBinding": path_segment_name,
}

TOTAL_ANNOTATION_SIZE = 256 * 1024


def validate_metadata(kind: str, meta: dict) -> list[FieldError]:
    """``ValidateObjectMeta``: ``generateName`` then the name by the kind's rule, labels,
    annotations. A ``generateName`` is checked as a prefix (upstream's ``prefix=true``: a
    trailing ``-`` is allowed, ``maskTrailingDash``; RBAC kinds' prefixes only for ``/`` and
    ``%``), so ``generateName: Bad-`` is named as well as the name made from it
    (https://github.com/kubernetes/apimachinery/blob/v0.32.0/pkg/api/validation/objectmeta.go)."""
    errors = []
    rule = NAME_RULES.get(kind, dns1123_subdomain)
    prefix = meta.get("generateName") or ""
    if prefix:
        masked = prefix[:-1] + "a" if len(prefix) > 1 and prefix.endswith("-") else prefix
        problems = rule(masked)
        if rule is path_segment_name:
            problems = [m for m in problems if not m.startswith("may not be '")]
        errors += [
            FieldError("FieldValueInvalid", "metadata.generateName", m, prefix) for m in problems
        ]
    name = meta.get("name") or ""
    if name:
        errors += [FieldError("FieldValueInvalid", "metadata.name", m, name) for m in rule(name)]
    errors += validate_labels(meta.get("labels") or {}, "metadata.labels")
    annotations = meta.get("annotations") or {}
    for key in annotations:
        for m in qualified_name(key.lower()):
            errors.append(FieldError("FieldValueInvalid", "metadata.annotations", m, key))
    size = sum(len(k) + len(v or "") for k, v in annotations.items())
    if size > TOTAL_ANNOTATION_SIZE:
        errors.append(
            FieldError(
                "FieldValueTooLong",
                "metadata.annotations",
                f"may not be more than {TOTAL_ANNOTATION_SIZE} bytes",
            )
        )
    return errors


def validate_labels(labels: dict, path: str) -> list[FieldError]:
    """``ValidateLabels``: each key a qualified name, each value a label value."""
    errors = []
    for key, value in labels.items():
        errors += [FieldError("FieldValueInvalid", path, m, key) for m in qualified_name(key)]
        if isinstance(value, str):
            errors += [FieldError("FieldValueInvalid", path, m, value) for m in label_value(value)]
    return errors


# -- per kind -------------------------------------------------------------------------------

_RESTART_POLICIES = ("Always", "OnFailure", "Never")


def _unsupported(path: str, value: object, allowed: tuple[str, ...]) -> FieldError:
    shown = ", ".join(f'"{a}"' for a in allowed)
    return FieldError("FieldValueNotSupported", path, f"supported values: {shown}", value)


def validate_pod_spec(spec: dict, path: str) -> list[FieldError]:
    """The parts of ``ValidatePodSpec`` our clients can trip: containers (names, images,
    ports, env names, volume mounts), volume names, restart policy, node selector labels."""
    errors: list[FieldError] = []
    volumes = set()
    for i, vol in enumerate(spec.get("volumes") or []):
        vname = vol.get("name") or ""
        vpath = f"{path}.volumes[{i}].name"
        if not vname:
            errors.append(FieldError("FieldValueRequired", vpath))
        else:
            errors += [
                FieldError("FieldValueInvalid", vpath, m, vname) for m in dns1123_label(vname)
            ]
            if vname in volumes:
                errors.append(FieldError("FieldValueDuplicate", vpath, value=vname))
        volumes.add(vname)
    if not spec.get("containers"):
        errors.append(FieldError("FieldValueRequired", f"{path}.containers"))
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            cpath = f"{path}.{group}[{i}]"
            errors += _validate_container(c, cpath, names, volumes)
    restart = spec.get("restartPolicy")
    if restart is not None and restart not in _RESTART_POLICIES:
        errors.append(_unsupported(f"{path}.restartPolicy", restart, _RESTART_POLICIES))
    errors += validate_labels(spec.get("nodeSelector") or {}, f"{path}.nodeSelector")
    deadline = spec.get("activeDeadlineSeconds")
    if isinstance(deadline, int) and deadline <= 0:
        errors.append(
            FieldError(
                "FieldValueInvalid",
                f"{path}.activeDeadlineSeconds",
                "must be between 1 and 2147483647, inclusive",
                deadline,
            )
        )
    return errors


def _validate_container(c: dict, cpath: str, names: set, volumes: set) -> list[FieldError]:
    errors = []
    cname = c.get("name") or ""
    if not cname:
        errors.append(FieldError("FieldValueRequired", f"{cpath}.name"))
    else:
        errors += [
            FieldError("FieldValueInvalid", f"{cpath}.name", m, cname) for m in dns1123_label(cname)
        ]
        if cname in names:
            errors.append(FieldError("FieldValueDuplicate", f"{cpath}.name", value=cname))
    names.add(cname)
    if not c.get("image"):
        errors.append(FieldError("FieldValueRequired", f"{cpath}.image"))
    for j, port in enumerate(c.get("ports") or []):
        pname = port.get("name")
        ppath = f"{cpath}.ports[{j}]"
        if pname:
            if len(pname) > 15:
                errors.append(FieldError("FieldValueInvalid", f"{ppath}.name", _max_len(15), pname))
            elif (
                not _RE["iana"].match(pname)
                or not re.search("[a-z]", pname)
                or ("--" in pname or pname.startswith("-") or pname.endswith("-"))
            ):
                errors.append(
                    FieldError(
                        "FieldValueInvalid",
                        f"{ppath}.name",
                        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
                        " and at least one letter (a-z), and may not start or end with or contain"
                        " two consecutive hyphens",
                        pname,
                    )
                )
        number = port.get("containerPort")
        if isinstance(number, int) and not 1 <= number <= 65535:
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    f"{ppath}.containerPort",
                    "must be between 1 and 65535, inclusive",
                    number,
                )
            )
    for j, env in enumerate(c.get("env") or []):
        ename = env.get("name") or ""
        if ename and not _RE["env"].match(ename):
            errors.append(FieldError("FieldValueInvalid", f"{cpath}.env[{j}].name", MSG_ENV, ename))
    for j, mount in enumerate(c.get("volumeMounts") or []):
        mname = mount.get("name") or ""
        if mname and mname not in volumes:
            errors.append(
                FieldError("FieldValueNotFound", f"{cpath}.volumeMounts[{j}].name", value=mname)
            )
        if not mount.get("mountPath"):
            errors.append(FieldError("FieldValueRequired", f"{cpath}.volumeMounts[{j}].mountPath"))
    return errors


def _validate_keys(data: dict, path: str) -> list[FieldError]:
    errors = []
    for key in data:
        msgs = []
        if len(key) > 253:
            msgs.append(_max_len(253))
        if not _RE["config"].match(key):
            msgs.append(MSG_CONFIG)
        if key in (".", ".."):
            msgs.append(f"must not be '{key}'")
        errors += [FieldError("FieldValueInvalid", path, m, key) for m in msgs]
    return errors


def _validate_service(spec: dict) -> list[FieldError]:
    errors = []
    ports = spec.get("ports") or []
    if (
        not ports
        and spec.get("type", "ClusterIP") != "ExternalName"
        and (spec.get("clusterIP") != "None")
    ):
        errors.append(FieldError("FieldValueRequired", "spec.ports"))
    seen = set()
    for i, port in enumerate(ports):
        number = port.get("port")
        if isinstance(number, int) and not 1 <= number <= 65535:
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    f"spec.ports[{i}].port",
                    "must be between 1 and 65535, inclusive",
                    number,
                )
            )
        pname = port.get("name") or ""
        if len(ports) > 1 and not pname:
            errors.append(FieldError("FieldValueRequired", f"spec.ports[{i}].name"))
        if pname:
            errors += [
                FieldError("FieldValueInvalid", f"spec.ports[{i}].name", m, pname)
                for m in dns1123_label(pname)
            ]
            if pname in seen:
                errors.append(
                    FieldError("FieldValueDuplicate", f"spec.ports[{i}].name", value=pname)
                )
            seen.add(pname)
    errors += validate_labels(spec.get("selector") or {}, "spec.selector")
    return errors


def _validate_job(spec: dict) -> list[FieldError]:
    template = spec.get("template") or {}
    errors = validate_labels(
        ((template.get("metadata") or {}).get("labels")) or {}, "spec.template.labels"
    )
    errors += validate_pod_spec(template.get("spec") or {}, "spec.template.spec")
    restart = (template.get("spec") or {}).get("restartPolicy")
    if restart == "Always":
        errors.append(
            _unsupported("spec.template.spec.restartPolicy", restart, ("OnFailure", "Never"))
        )
    for key in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds"):
        value = spec.get(key)
        if isinstance(value, int) and value < (1 if key == "activeDeadlineSeconds" else 0):
            errors.append(
                FieldError(
                    "FieldValueInvalid", f"spec.{key}", "must be greater than or equal to 0", value
                )
            )
    return errors


def validate_object(kind: str, obj: dict) -> list[FieldError]:
    """Every `FieldError` of a (defaulted) object of ``kind`` (empty list: valid)."""
    errors = validate_metadata(kind, obj.get("metadata") or {})
    spec = obj.get("spec") or {}
    if kind == "Pod":
        errors += validate_pod_spec(spec, "spec")
    elif kind == "Job":
        errors += _validate_job(spec)
    elif kind == "Service":
        errors += _validate_service(spec)
    elif kind in ("ConfigMap", "Secret"):
        errors += _validate_keys(obj.get("data") or {}, "data")
        if kind == "ConfigMap":
            errors += _validate_keys(obj.get("binaryData") or {}, "binaryData")
    return errors


# -- updates ----------------------------------------------------------------------------------

POD_UPDATABLE = (
    "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
    "`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously "
    "negative)"
)


def _pod_spec_munged(old: dict, new: dict) -> dict:
    """``new`` with the fields a pod update may change set to ``old``'s (upstream's
    ``ValidatePodUpdate`` does the same before comparing)."""
    munged = json.loads(json.dumps(new))
    for group in ("containers", "initContainers"):
        olds = {c.get("name"): c for c in old.get(group) or []}
        for c in munged.get(group) or []:
            if c.get("name") in olds and "image" in olds[c.get("name")]:
                c["image"] = olds[c["name"]]["image"]
    if "activeDeadlineSeconds" in munged or "activeDeadlineSeconds" in old:
        munged["activeDeadlineSeconds"] = old.get("activeDeadlineSeconds")
        if munged["activeDeadlineSeconds"] is None:
            munged.pop("activeDeadlineSeconds")
    old_tol = old.get("tolerations") or []
    new_tol = munged.get("tolerations") or []
    if all(t in new_tol for t in old_tol):  # only additions
        if "tolerations" in old:
            munged["tolerations"] = old["tolerations"]
        else:
            munged.pop("tolerations", None)
    gates_old = old.get("schedulingGates") or []
    gates_new = munged.get("schedulingGates") or []
    if all(g in gates_old for g in gates_new):  # removals of scheduling gates are allowed
        munged["schedulingGates"] = old.get("schedulingGates")
        if munged["schedulingGates"] is None:
            munged.pop("schedulingGates")
    return munged


def _diff(old: dict, new: dict) -> str:
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key in old:
                lines.append(f"- \t{key}: {_show(old[key])}")
            if key in new:
                lines.append(f"+ \t{key}: {_show(new[key])}")
    return "\n".join(lines)


def validate_update(kind: str, old: dict, new: dict) -> list[FieldError]:
    """The immutable-field errors of changing ``old`` into ``new`` (both full objects)."""
    errors: list[FieldError] = []
    if kind == "Pod":
        ospec, nspec = old.get("spec") or {}, new.get("spec") or {}
        deadline_old, deadline_new = (
            ospec.get("activeDeadlineSeconds"),
            nspec.get("activeDeadlineSeconds"),
        )
        if deadline_old is not None and (deadline_new is None or deadline_new > deadline_old):
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    "spec.activeDeadlineSeconds",
                    "must be less than or equal to previous value",
                    deadline_new,
                )
            )
        munged = _pod_spec_munged(ospec, nspec)
        if munged != ospec:
            errors.append(
                FieldError(
                    "FieldValueForbidden",
                    "spec",
                    f"pod updates may not change fields other than {POD_UPDATABLE}\n"
                    f"  core.PodSpec{{\n{_diff(ospec, munged)}\n  }}\n",
                )
            )
    elif kind == "Job":
        ospec, nspec = old.get("spec") or {}, new.get("spec") or {}
        fields = [
            "selector",
            "completionMode",
            "podFailurePolicy",
            "backoffLimitPerIndex",
            "successPolicy",
            "managedBy",
        ]
        elastic = nspec.get("completionMode") == "Indexed" and (
            nspec.get("completions") == nspec.get("parallelism")
        )
        if not elastic:
            fields.append("completions")
        for key in fields:
            if ospec.get(key) != nspec.get(key):
                errors.append(
                    FieldError(
                        "FieldValueInvalid", f"spec.{key}", "field is immutable", nspec.get(key)
                    )
                )
        template_old, template_new = ospec.get("template") or {}, nspec.get("template") or {}
        if template_old != template_new:
            never_started = ospec.get("suspend") and not (old.get("status") or {}).get("startTime")
            if not (never_started and _only_scheduling_changed(template_old, template_new)):
                errors.append(
                    FieldError(
                        "FieldValueInvalid", "spec.template", "field is immutable", template_new
                    )
                )
    elif kind == "Service":
        ospec, nspec = old.get("spec") or {}, new.get("spec") or {}
        if ospec.get("clusterIP") and nspec.get("clusterIP") not in (None, "", ospec["clusterIP"]):
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    "spec.clusterIPs[0]",
                    "may not change once set",
                    nspec.get("clusterIP"),
                )
            )
    return errors


_SCHEDULING = ("nodeSelector", "tolerations", "affinity", "schedulingGates")


def _only_scheduling_changed(old: dict, new: dict) -> bool:
    """A suspended Job that never started may change its template's scheduling directives,
    labels and annotations (upstream: ``JobMutableSchedulingDirectives``)."""
    o, n = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    for t in (o, n):
        t.pop("metadata", None)
        for key in _SCHEDULING:
            (t.get("spec") or {}).pop(key, None)
    return o == n


# -- the schema step ----------------------------------------------------------------------------


def decode(kind: str, api_version: str, obj: dict, mode: str) -> list[str]:
    """Check ``obj`` against the OpenAPI schema of ``api_version``/``kind`` as the API server's
    decoder does; unknown fields are removed from ``obj`` in place.

    Returns the warnings (``unknown field "spec.x"``; empty under ``Ignore``). Raises
    `ApiError` 400 for a wrong JSON type or (``mode == "Strict"``) an unknown field, and 422
    for a missing required field or a value outside an enum. A kind without a schema passes.
    """
    definition = schema.definition_for(api_version, kind)
    if definition is None:
        return []
    problems = schema.check(schema.root_node(definition), obj)
    if not problems:
        return []
    head = f'{kind} in version "{api_version.rsplit("/", 1)[-1]}" cannot be handled as a {kind}'
    for p in problems:
        if p.kind == "type":
            value = schema.value_at(obj, p.path)
            dotted = ".".join(str(x) for x in p.path if not isinstance(x, int))
            raise ApiError(
                400,
                "BadRequest",
                f"{head}: json: cannot unmarshal {schema.json_type(value)} into Go struct "
                f"field {p.title}.{dotted} of type {p.detail}",
            )
    unknown = [p for p in problems if p.kind == "unknown"]
    texts = [f'unknown field "{schema.field_path(p.path)}"' for p in unknown]
    if unknown and mode == "Strict":
        raise ApiError(400, "BadRequest", f"{head}: strict decoding error: {', '.join(texts)}")
    schema.prune(obj, [p.path for p in unknown])
    errors = []
    for p in problems:
        where = schema.field_path(p.path)
        if p.kind == "required":
            errors.append(FieldError("FieldValueRequired", where))
        elif p.kind == "enum":
            value = schema.value_at(obj, p.path)
            errors.append(
                FieldError("FieldValueNotSupported", where, f"supported values: {p.detail}", value)
            )
    if errors:
        group = api_version.rpartition("/")[0]
        raise invalid(kind, (obj.get("metadata") or {}).get("name", ""), errors, group)
    return [] if mode == "Ignore" else texts
