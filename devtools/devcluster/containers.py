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
  ``hostPath`` → the path itself; ``subPath`` folders are created as the kubelet does (owned
  by root, mode 0755: https://github.com/kubernetes/kubernetes/issues/41638). An emptyDir is
  mode 0777 (``medium: Memory`` is a folder too; ``sizeLimit`` is not enforced). With the
  pod's ``fsGroup``, emptyDir, configMap and secret volumes are given to that group
  (:func:`apply_fs_group`, when the kubelet runs as root); a PVC is left as it is, like an NFS
  volume whose CSI driver does not manage ownership (``fsGroupPolicy: None``), which is what
  an owner init container is for.
- Identity (:func:`process_identity`): ``runAsUser``/``runAsGroup`` (container over pod),
  ``supplementalGroups`` and ``fsGroup`` as supplementary groups; ``runAsNonRoot`` with
  ``runAsUser: 0`` is refused as a kubelet does. https://kubernetes.io/docs/tasks/configure-pod-container/security-context/
"""

from __future__ import annotations

import base64
import os
import pwd
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
    host_ip = (pod.get("status") or {}).get("hostIP") or "127.0.0.1"
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        # N: the kubelet's hostIP (where pods reach this machine: devcluster.podnet)
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
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


def prepare_volumes(
    pod: dict,
    data_dir: Path,
    pod_dir: Path,
    lookup: Lookup,
    manage_ownership: bool = False,
    projected=None,
) -> dict[str, str]:
    """Create the host folders of the pod's volumes; returns volume name → host path.

    ``manage_ownership`` (the kubelet runs as root): emptyDir, configMap and secret volumes
    are given to the pod's ``fsGroup`` (:func:`apply_fs_group`).

    Raises `VolumeError` for an unsupported volume type or a missing PVC, ConfigMap or Secret
    (unless ``optional``). ``projected(pod, source, lookup) -> {path: bytes}`` writes a
    ``projected`` volume (R: the ServiceAccount token, `devcluster.authn.projected_files`).
    """
    ns = pod["metadata"].get("namespace", "default")
    sources: dict[str, str] = {}
    owned: list[tuple[Path, bool]] = []  # volumes whose ownership follows fsGroup
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
            path.chmod(0o777)  # as the kubelet makes an emptyDir
            owned.append((path, False))
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
            owned.append((path, True))
        elif "projected" in vol and projected is not None:  # R: ServiceAccount token
            path = pod_dir / "volumes" / "projected" / name
            try:
                files = projected(pod, vol["projected"], lookup)
            except ValueError as exc:
                raise VolumeError(f"volume {name}: {exc}") from None
            items = [{"key": k, "path": k} for k in files]
            _write_items(path, files, items, vol["projected"].get("defaultMode", 0o644))
            owned.append((path, True))
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise VolumeError(f"volume {name}: unsupported volume type {kinds}")
        sources[name] = str(path)
    fs_group = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
    if fs_group is not None and manage_ownership:
        for path, read_only in owned:
            apply_fs_group(path, int(fs_group), read_only)
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


def process_identity(pod: dict, container: dict) -> dict | None:
    """Who ``container``'s process runs as, from the security contexts (pure but for the
    ``/etc/passwd`` lookup of a uid's primary group).

    Returns:
        ``{"uid": int | None, "gid": int | None, "groups": [int, ...], "no_new_privs": bool}``,
        ``uid``/``gid`` ``None`` where the pod leaves them to the image (here: the kubelet's
        own user; there is no image metadata). A ``runAsUser`` without ``runAsGroup`` gets
        that uid's primary group from ``/etc/passwd``, else 0, as containerd does. ``groups``:
        ``supplementalGroups`` then ``fsGroup``. ``no_new_privs``: not
        ``allowPrivilegeEscalation: true``. ``None`` when the pod sets none of these.

    Raises:
        ContainerConfigError: ``runAsNonRoot`` with ``runAsUser: 0`` (the kubelet's message).
    """
    psc = (pod.get("spec") or {}).get("securityContext") or {}
    csc = container.get("securityContext") or {}

    def pick(key):
        return csc.get(key, psc.get(key))

    uid, gid = pick("runAsUser"), pick("runAsGroup")
    if pick("runAsNonRoot") and uid == 0:
        raise ContainerConfigError(
            "container's runAsUser breaks non-root policy (pod: "
            f'"{pod["metadata"]["name"]}", container: {container["name"]})'
        )
    groups = [int(g) for g in psc.get("supplementalGroups") or []]
    if psc.get("fsGroup") is not None and int(psc["fsGroup"]) not in groups:
        groups.append(int(psc["fsGroup"]))
    no_new_privs = csc.get("allowPrivilegeEscalation") is False
    if uid is None and gid is None and not groups and not no_new_privs:
        return None
    if uid is not None and gid is None:
        try:
            gid = pwd.getpwuid(int(uid)).pw_gid
        except KeyError:
            gid = 0
    return {
        "uid": None if uid is None else int(uid),
        "gid": None if gid is None else int(gid),
        "groups": groups,
        "no_new_privs": no_new_privs,
    }


def apply_fs_group(path: str | Path, gid: int, read_only: bool = False) -> None:
    """Give a volume to the pod's ``fsGroup`` as the kubelet does (``SetVolumeOwnership``):
    every file and folder's group becomes ``gid``; files get ``g+rw`` (``g+r`` read-only),
    folders ``g+rwx`` (``g+rx``) and the set-group-id bit, so new files inherit the group.
    Needs root. https://github.com/kubernetes/kubernetes/blob/master/pkg/volume/volume_linux.go
    """
    file_bits = 0o440 if read_only else 0o660
    dir_bits = (0o550 if read_only else 0o770) | 0o2000
    for root, dirs, files in os.walk(path):
        for name in [None, *files]:
            full = root if name is None else os.path.join(root, name)
            if os.path.islink(full):
                continue
            st = os.lstat(full)
            os.chown(full, -1, gid)
            bits = dir_bits if name is None else file_bits
            os.chmod(full, (st.st_mode & 0o7777) | bits)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]


def untraversable(paths: list[str], uid: int, groups: set[int]) -> list[str]:
    """The folders above (and of) ``paths`` that ``uid`` with ``groups`` cannot enter (no
    ``x`` for them), shallowest first: the kubelet makes them enterable in the container's
    mount namespace, so that the "image" (a local Python prefix, whose interpreter may live
    under root's ``/root``) can run as the pod's user, as an image's files can."""
    out: list[str] = []
    for path in paths:
        parts = Path(path).parts
        for i in range(1, len(parts) + 1):
            folder = str(Path(*parts[:i]))
            try:
                st = os.stat(folder)
            except OSError:
                break
            if st.st_uid == uid:
                ok = st.st_mode & 0o100
            elif st.st_gid in groups:
                ok = st.st_mode & 0o010
            else:
                ok = st.st_mode & 0o001
            if not ok and folder not in out:
                out.append(folder)
    return sorted(out, key=lambda f: f.count("/"))
