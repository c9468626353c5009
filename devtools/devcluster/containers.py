"""From a pod's container spec to what a local process needs: environment, argv, prefix of
the "image", and volume mounts. Pure functions except `prepare_volumes` (which writes the
volume folders).

- Environment: ``envFrom`` then ``env`` (``value`` with ``$(VAR)`` expansion, ``valueFrom``
  ``fieldRef``/``configMapKeyRef``/``secretKeyRef``/``resourceFieldRef``), over a base of
  PATH (``<prefix>/bin`` first), HOME, HOSTNAME and the KUBERNETES_SERVICE_* variables.
  https://kubernetes.io/docs/tasks/inject-data-application/define-environment-variable-container/
  https://kubernetes.io/docs/tasks/inject-data-application/environment-variable-expose-pod-information/
- argv: ``command`` + ``args`` (or ``args`` alone: there is no image entrypoint) with
  ``$(VAR)`` expansion. https://kubernetes.io/docs/tasks/inject-data-application/define-command-argument-container/#use-environment-variables-to-define-arguments
- Volumes: ``persistentVolumeClaim`` → ``<data_dir>/pvc/<namespace>/<claimName>/``,
  ``emptyDir`` → a per-pod folder, ``configMap``/``secret`` → files written from the object,
  ``hostPath`` → the path itself; ``subPath`` folders are created as the kubelet does.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from .resources import CONFIGMAPS, PVCS, SECRETS, Resource

STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")

Lookup = Callable[[Resource, str, str], "dict | None"]


class ContainerConfigError(Exception):
    """The container cannot be configured yet (e.g. a missing Secret); the kubelet reports
    it as waiting reason ``CreateContainerConfigError`` and retries."""


class VolumeError(Exception):
    """A volume that cannot be set up; the pod fails with this message."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, undefined ones left
    as written, ``$$`` is a literal ``$``."""

    def repl(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_RE.sub(repl, text)


def resolve_prefix(image: str, images: dict[str, str]) -> str:
    """The local environment prefix standing for ``image``: an exact match in ``images``,
    else the image without its tag/digest, else the ``"*"`` entry. Raises KeyError."""
    if image in images:
        return images[image]
    bare = image.split("@", 1)[0]
    if ":" in bare.rsplit("/", 1)[-1]:
        bare = bare.rsplit(":", 1)[0]
    if bare in images:
        return images[bare]
    return images["*"]


def _field_ref(pod: dict, path: str, pod_ip: str) -> str:
    meta = pod["metadata"]
    match = re.match(r"^metadata\.(labels|annotations)\['([^']+)'\]$", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path not in values:
        raise ContainerConfigError(f"unsupported fieldRef fieldPath: {path}")
    return values[path]


def _key_ref(lookup: Lookup, res: Resource, ns: str, ref: dict) -> str | None:
    obj = lookup(res, ns, ref.get("name", ""))
    if obj is None:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f'{res.singular} "{ref.get("name")}" not found')
    data = obj.get("data") or {}
    key = ref.get("key", "")
    if key in data:
        return base64.b64decode(data[key]).decode() if res == SECRETS else str(data[key])
    if res == SECRETS and key in (obj.get("stringData") or {}):
        return str(obj["stringData"][key])
    if ref.get("optional"):
        return None
    raise ContainerConfigError(f"couldn't find key {key} in {res.kind} {ns}/{ref.get('name')}")


def build_env(
    pod: dict,
    container: dict,
    lookup: Lookup,
    pod_ip: str,
    prefix: str,
    base: dict[str, str],
) -> dict[str, str]:
    """The process environment of ``container`` (see the module docstring).

    ``base`` are extra variables set first (HOME, LANG, KUBERNETES_SERVICE_HOST...). Raises
    `ContainerConfigError` for a missing ConfigMap/Secret or an unsupported field reference.
    """
    ns = pod["metadata"].get("namespace", "default")
    env = {
        **base,
        "PATH": f"{prefix}/bin:{STANDARD_PATH}",
        "HOSTNAME": pod["metadata"]["name"],
    }
    for source in container.get("envFrom") or []:
        pre = source.get("prefix", "")
        for kind, res in (("configMapRef", CONFIGMAPS), ("secretRef", SECRETS)):
            ref = source.get(kind)
            if not ref:
                continue
            obj = lookup(res, ns, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{res.singular} "{ref.get("name")}" not found')
            for key, value in (obj.get("data") or {}).items():
                env[pre + key] = base64.b64decode(value).decode() if res == SECRETS else value
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        vf = var["valueFrom"]
        value: str | None
        if "fieldRef" in vf:
            value = _field_ref(pod, vf["fieldRef"].get("fieldPath", ""), pod_ip)
        elif "configMapKeyRef" in vf:
            value = _key_ref(lookup, CONFIGMAPS, ns, vf["configMapKeyRef"])
        elif "secretKeyRef" in vf:
            value = _key_ref(lookup, SECRETS, ns, vf["secretKeyRef"])
        elif "resourceFieldRef" in vf:
            res_name = vf["resourceFieldRef"].get("resource", "")
            kind, _, rname = res_name.partition(".")
            value = str(((container.get("resources") or {}).get(kind) or {}).get(rname, "0"))
        else:
            raise ContainerConfigError(f"unsupported valueFrom for env var {name}")
        if value is not None:
            env[name] = value
    return env


def build_argv(container: dict, env: dict[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expansion; raises `ContainerConfigError` if
    both are empty (there is no image entrypoint to fall back on)."""
    argv = [expand(str(a), env) for a in (container.get("command") or [])]
    argv += [expand(str(a), env) for a in (container.get("args") or [])]
    if not argv:
        raise ContainerConfigError(
            f"container {container['name']}: no command nor args (the devcluster has no image "
            "entrypoint)"
        )
    return argv


def _safe_relative(path: str, what: str) -> str:
    norm = os.path.normpath(path)
    if os.path.isabs(path) or norm == ".." or norm.startswith("../"):
        raise VolumeError(f"{what} {path!r} must be a relative path without '..'")
    return norm


def _write_items(folder: Path, data: dict[str, bytes], items: list | None, mode: int) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    chosen = [(i["key"], i.get("path", i["key"]), i.get("mode", mode)) for i in items or []]
    if not items:
        chosen = [(k, k, mode) for k in data]
    for key, rel, file_mode in chosen:
        if key not in data:
            raise VolumeError(f"configmap/secret key {key!r} not found")
        target = folder / _safe_relative(rel, "item path")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[key])
        target.chmod(file_mode)


def prepare_volumes(pod: dict, data_dir: Path, pod_dir: Path, lookup: Lookup) -> dict[str, str]:
    """Create the host folders of the pod's volumes; returns volume name → host path.

    Raises `VolumeError` for an unsupported volume type or a missing PVC, ConfigMap or Secret
    (unless ``optional``).
    """
    ns = pod["metadata"].get("namespace", "default")
    sources: dict[str, str] = {}
    for vol in pod.get("spec", {}).get("volumes") or []:
        name = vol["name"]
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"].get("claimName", "")
            if lookup(PVCS, ns, claim) is None:
                raise VolumeError(f'persistentvolumeclaim "{claim}" not found')
            path = data_dir / "pvc" / ns / claim
            path.mkdir(parents=True, exist_ok=True)
        elif "emptyDir" in vol:
            path = pod_dir / "volumes" / "empty-dir" / name
            path.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in vol:
            path = Path(vol["hostPath"]["path"])
            if vol["hostPath"].get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                raise VolumeError(f"hostPath {path} does not exist")
        elif "configMap" in vol or "secret" in vol:
            is_secret = "secret" in vol
            ref = vol["secret"] if is_secret else vol["configMap"]
            obj_name = ref.get("secretName" if is_secret else "name", "")
            obj = lookup(SECRETS if is_secret else CONFIGMAPS, ns, obj_name)
            path = pod_dir / "volumes" / ("secret" if is_secret else "configmap") / name
            if obj is None:
                if not ref.get("optional"):
                    kind = "secret" if is_secret else "configmap"
                    raise VolumeError(f'{kind} "{obj_name}" not found')
                data: dict[str, bytes] = {}
            elif is_secret:
                data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                data.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
            else:
                data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
                data.update(
                    {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
                )
            _write_items(path, data, ref.get("items"), ref.get("defaultMode", 0o644))
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise VolumeError(f"volume {name}: unsupported volume type {kinds}")
        sources[name] = str(path)
    return sources


def container_mounts(container: dict, sources: dict[str, str]) -> list[dict]:
    """The sandbox mount list for ``container``: ``{"source","target","readOnly"}`` each,
    with ``subPath`` folders created. Raises `VolumeError` for an unknown volume name or a
    bad subPath / mountPath."""
    mounts = []
    for vm in container.get("volumeMounts") or []:
        if vm.get("name") not in sources:
            raise VolumeError(f"volumeMount {vm.get('name')!r}: no volume with that name")
        target = vm.get("mountPath", "")
        if not os.path.isabs(target):
            raise VolumeError(f"mountPath {target!r} must be an absolute path")
        source = sources[vm["name"]]
        sub = vm.get("subPath") or ""
        if sub:
            source = os.path.join(source, _safe_relative(sub, "subPath"))
            if not os.path.exists(source):
                os.makedirs(source, exist_ok=True)
        mounts.append({"source": source, "target": target, "readOnly": bool(vm.get("readOnly"))})
    return mounts
