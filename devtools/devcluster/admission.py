"""Admission as kube-apiserver does it: decode against the OpenAPI schema, default, run the
mutating admission plugins our clients notice, validate. `HOOKS` are `Store.admit` hooks
``hook(store, resource, obj)`` (create), `UPDATE_HOOKS` `Store.admit_update` hooks
``hook(store, resource, old, new, subresource)`` (replace, patch).

1. Decode (`validation.decode`): the served version's schema; unknown fields dropped with a
   ``Warning`` (or 400 with ``fieldValidation=Strict``), wrong types 400.
2. Defaults (upstream ``pkg/apis/core/v1/defaults.go``, ``pkg/apis/batch/v1/defaults.go``):
   - Pods: ``restartPolicy`` Always, ``terminationGracePeriodSeconds`` 30, ``dnsPolicy``
     ClusterFirst, ``schedulerName``, ``serviceAccountName``/``serviceAccount`` ``default``,
     ``enableServiceLinks`` true, ``securityContext`` {}, per container
     ``terminationMessagePath``/``Policy``, ``imagePullPolicy`` (Always for ``:latest`` or no
     tag, else IfNotPresent), port ``protocol`` TCP; the DefaultTolerationSeconds plugin's
     not-ready/unreachable NoExecute tolerations (300 s); the Priority plugin's ``priority``
     from ``priorityClassName`` (403 if unknown), ``preemptionPolicy``; ``status.phase``
     Pending. https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/
   - Jobs: ``parallelism``, ``completions``, ``backoffLimit`` (6), ``suspend``,
     ``completionMode``, ``manualSelector`` off: the selector and template labels
     (``controller-uid``, ``batch.kubernetes.io/job-name``...), the template's pod defaults.
     https://kubernetes.io/docs/concepts/workloads/controllers/job/
   - Secrets: ``type`` Opaque, ``stringData`` merged into ``data`` (base64) and dropped.
     https://kubernetes.io/docs/concepts/configuration/secret/#restriction-names-data
   - Services: ``type`` ClusterIP, a ``clusterIP`` from 10.96.0.0/12 (``clusterIPs``,
     ``ipFamilies``, ``ipFamilyPolicy``), ``sessionAffinity`` None, ``internalTrafficPolicy``
     Cluster, port ``protocol`` TCP and ``targetPort`` = ``port``.
     https://kubernetes.io/docs/concepts/services-networking/service/
   - PersistentVolumeClaims: immediately ``Bound`` (no provisioner to wait for).
   - Namespaces (upstream ``pkg/registry/core/namespace/strategy.go``): the label
     ``kubernetes.io/metadata.name`` = the name (create and update), ``spec.finalizers``
     with ``kubernetes`` and ``status.phase`` Active on create. (Deletion stays immediate:
     no Terminating phase.)
3. Validation (`validation.validate_object`, and on updates `validation.validate_update`):
   422 Invalid with ``details.causes``.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools

from . import validation
from .resources import JOBS, NAMESPACES, PODS, PRIORITYCLASSES, PVCS, SECRETS, Resource
from .store import ApiError, Store

_SERVICES_KIND = "Service"
_SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")

DEFAULT_TOLERATION_SECONDS = 300
DEFAULT_TOLERATIONS = tuple(
    {
        "key": f"node.kubernetes.io/{key}",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
    }
    for key in ("not-ready", "unreachable")
)


def _options() -> validation.WriteOptions:
    return validation.OPTIONS.get() or validation.WriteOptions()


# -- 1. decode -------------------------------------------------------------------------------


def decode_new(store: Store, res: Resource, obj: dict) -> None:
    """Create hook: the schema step (see `validation.decode`); warnings go to the request."""
    opts = _options()
    opts.warnings += validation.decode(res.kind, res.api_version, obj, opts.field_validation)


def decode_update(store: Store, res: Resource, old: dict, new: dict, sub: str) -> None:
    """Update hook: the schema step on the new object."""
    decode_new(store, res, new)


# -- 2. defaults -----------------------------------------------------------------------------


def _image_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.split(":", 1)[1] if ":" in last else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def default_pod_spec(spec: dict) -> None:
    """Fill the defaults of a PodSpec in place (``SetDefaults_PodSpec``, ``_Container``...)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    if spec.get("serviceAccount") and not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = spec["serviceAccount"]
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    for container in itertools.chain(
        spec.get("initContainers") or [], spec.get("containers") or []
    ):
        if not isinstance(container, dict):
            continue
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        if isinstance(container.get("image"), str) and container["image"]:
            container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
        for port in container.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


def _tolerates(tolerations: list[dict], key: str) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, "", "NoExecute"):
            continue
        if t.get("operator") == "Exists" and not t.get("key"):
            return True
        if t.get("key") == key:
            return True
    return False


def admit_pod(store: Store, res: Resource, obj: dict) -> None:
    """Default a new Pod, with the DefaultTolerationSeconds and Priority plugins."""
    if res != PODS:
        return
    name = obj["metadata"]["name"]
    spec = obj.setdefault("spec", {})
    default_pod_spec(spec)
    tolerations = spec.get("tolerations") or []
    for default in DEFAULT_TOLERATIONS:
        if not _tolerates(tolerations, default["key"]):
            tolerations.append(dict(default))
    spec["tolerations"] = tolerations
    pc_name = spec.get("priorityClassName")
    if pc_name:
        pc = store.peek(PRIORITYCLASSES, None, pc_name)
        if pc is None:
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: no PriorityClass with name {pc_name} was found',
                {"name": name, "kind": "pods"},
            )
        spec["priority"] = int(pc.get("value", 0))
        spec.setdefault("preemptionPolicy", pc.get("preemptionPolicy", "PreemptLowerPriority"))
    else:
        default = next((p for p in store.iter(PRIORITYCLASSES) if p.get("globalDefault")), None)
        spec.setdefault("priority", int(default.get("value", 0)) if default else 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}


def admit_job(store: Store, res: Resource, obj: dict) -> None:
    """Default a new Job (see the module docstring)."""
    if res != JOBS:
        return
    spec = obj.setdefault("spec", {})
    template = spec.setdefault("template", {})
    pod_spec = template.setdefault("spec", {})
    pod_spec.setdefault("restartPolicy", "Never")
    default_pod_spec(pod_spec)
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("suspend", False)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("manualSelector", False) if spec.get("manualSelector") else None
    if spec.get("podFailurePolicy") is None:
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    uid = obj["metadata"]["uid"]
    name = obj["metadata"]["name"]
    labels = {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    if not spec.get("manualSelector"):
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    obj.setdefault("status", {})


def admit_pvc(store: Store, res: Resource, obj: dict) -> None:
    """Mark a new PVC Bound with its requested capacity (no provisioner is emulated)."""
    if res != PVCS:
        return
    spec = obj.setdefault("spec", {})
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    spec.setdefault("volumeName", f"pv-{obj['metadata']['uid']}")
    spec.setdefault("volumeMode", "Filesystem")
    obj["status"] = {
        "phase": "Bound",
        "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
        "capacity": {"storage": storage},
    }


def default_secret(obj: dict) -> None:
    """``type`` Opaque; ``stringData`` written into ``data`` (base64), then dropped."""
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.get("data") or {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


def admit_secret(store: Store, res: Resource, obj: dict) -> None:
    """Create hook: `default_secret`."""
    if res == SECRETS:
        default_secret(obj)


NAME_LABEL = "kubernetes.io/metadata.name"  # upstream v1.LabelMetadataName


def default_namespace(obj: dict, created: bool) -> None:
    """Namespace strategy: ``Canonicalize`` labels it with its name; ``PrepareForCreate``
    sets ``status.phase`` Active and adds the ``kubernetes`` finalizer to ``spec``."""
    obj["metadata"].setdefault("labels", {})[NAME_LABEL] = obj["metadata"]["name"]
    if created:
        obj["status"] = {"phase": "Active"}
        finalizers = obj.setdefault("spec", {}).setdefault("finalizers", [])
        if "kubernetes" not in finalizers:
            finalizers.append("kubernetes")


def admit_namespace(store: Store, res: Resource, obj: dict) -> None:
    """Create hook: `default_namespace`."""
    if res == NAMESPACES:
        default_namespace(obj, created=True)


def _allocate_cluster_ip(store: Store, res: Resource) -> str:
    used = {(s.get("spec") or {}).get("clusterIP") for s in store.iter(res)}
    for host in itertools.islice(_SERVICE_CIDR.hosts(), 10, None):  # .1-.10: kubernetes, DNS
        if str(host) not in used:
            return str(host)
    raise ApiError(500, "InternalError", "range is full: no more cluster IPs to allocate")


def default_service(store: Store, res: Resource, spec: dict, old_spec: dict | None) -> None:
    """Service defaults; an update keeps the allocated clusterIP(s)."""
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if old_spec and old_spec.get("clusterIP") and not spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
        if not spec.get("clusterIP"):
            spec["clusterIP"] = _allocate_cluster_ip(store, res)
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if spec["clusterIP"] != "None":
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])


def admit_service(store: Store, res: Resource, obj: dict) -> None:
    """Create hook: `default_service`; ``status.loadBalancer`` {} as the real server."""
    if res.kind == _SERVICES_KIND and res.group == "":
        default_service(store, res, obj.setdefault("spec", {}), None)
        obj["status"] = {"loadBalancer": {}}


def default_update(store: Store, res: Resource, old: dict, new: dict, sub: str) -> None:
    """Update hook: the defaults again (the decoder defaults every write)."""
    if sub:
        return
    if res == SECRETS:
        default_secret(new)
    elif res == NAMESPACES:
        default_namespace(new, created=False)
    elif res == PODS:
        default_pod_spec(new.setdefault("spec", {}))
    elif res == JOBS:
        default_pod_spec(
            ((new.setdefault("spec", {})).setdefault("template", {})).setdefault("spec", {})
        )
    elif res.kind == _SERVICES_KIND and res.group == "":
        default_service(store, res, new.setdefault("spec", {}), old.get("spec") or {})


# -- 3. validate -----------------------------------------------------------------------------


def validate_new(store: Store, res: Resource, obj: dict) -> None:
    """Create hook: 422 Invalid for every `validation.validate_object` error."""
    errors = validation.validate_object(res.kind, obj)
    if errors:
        raise validation.invalid(res.kind, obj["metadata"].get("name", ""), errors, res.group)


def validate_changed(store: Store, res: Resource, old: dict, new: dict, sub: str) -> None:
    """Update hook: the object's rules, then (not for ``status``) its immutable fields."""
    errors = validation.validate_object(res.kind, new)
    if not sub:
        errors += validation.validate_update(res.kind, old, new)
    if errors:
        raise validation.invalid(res.kind, old["metadata"].get("name", ""), errors, res.group)


HOOKS = (
    decode_new,
    admit_pod,
    admit_job,
    admit_pvc,
    admit_secret,
    admit_service,
    admit_namespace,
    validate_new,
)
UPDATE_HOOKS = (decode_update, default_update, validate_changed)
