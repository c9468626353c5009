"""What the kubelet and the container runtime add around a container (issue 14 §4), as pure
functions the kubelet turns into `sandbox.py`'s spec: the pod's ``/etc/hosts``, the
capability set, and the "image"'s user and working folder.

- ``/etc/hosts`` (:func:`hosts_file`): the kubelet's managed hosts file, bind-mounted over
  ``/etc/hosts`` in each container (unless the container mounts ``/etc/hosts`` itself): the
  localhost lines, the pod IP with ``<hostname>.<subdomain>.<namespace>.svc.cluster.local``
  and ``<hostname>`` (only ``<hostname>`` without ``subdomain``), then ``hostAliases``.
  https://kubernetes.io/docs/tasks/network/customize-hosts-file-for-pods/ and
  ``managedHostsFileContent`` in
  https://github.com/kubernetes/kubernetes/blob/master/pkg/kubelet/kubelet_pods.go
- Hostname (:func:`pod_hostname`): ``spec.hostname``, else the pod's name cut to 63
  characters (trailing ``-``/``.`` removed); ``setHostnameAsFQDN`` with a subdomain: the FQDN.
  https://kubernetes.io/docs/concepts/services-networking/dns-pod-service/#pod-hostname-and-subdomain-field
- Capabilities (:func:`capability_set`): containerd's default set (``defaultUnixCaps`` in
  https://github.com/containerd/containerd/blob/main/pkg/oci/spec.go), every capability for
  ``privileged: true``; then ``capabilities.add: [ALL]``, ``drop: [ALL]``, the other ``add``
  names, the other ``drop`` names, in that order, as containerd's CRI ``WithCapabilities``
  applies them (names as Kubernetes writes them, ``NET_ADMIN``, case-insensitive;
  ``CAP_NET_ADMIN`` becomes ``CAP_CAP_NET_ADMIN`` there too). Unknown names are ignored, as
  runc ignores them (with a warning). `sandbox.drop_privileges` makes it the bounding set, and
  the effective and permitted sets of a root process (inheritable empty, as containerd since
  CVE-2022-24769); a non-root process has none (the kernel clears them on ``setuid``).
- The image (:func:`image_config`): the emulator has no images. An image name stands for a
  local Python environment (``KubeletConfig.images``: its prefix, whose ``bin/`` leads PATH)
  plus what its Dockerfile's ``USER`` and ``WORKDIR`` would say (``KubeletConfig.image_config``,
  looked up as ``images`` is). ``user`` ``"uid:gid"`` is who a container runs as when its pod
  sets no ``runAsUser``/``runAsGroup``, and what ``runAsNonRoot`` is checked against;
  ``None`` (the default for images not listed): unknown, the kubelet's own user, unchecked.
  ``workingDir``: where a container without ``workingDir`` starts: a fresh folder per
  container instance (the image's writable layer, in the pod's folder, owned by the
  container's user) mounted there (unless a volume is mounted at that very path, as z2jh
  mounts the home at ``/home/jovyan``), never the host's ``/``. With
  ``readOnlyRootFilesystem`` that folder is read-only too.
- HOME (:func:`container_home`, R): a container whose environment sets no ``HOME`` (neither
  ``env`` nor ``envFrom``) gets the one a container runtime gives it: the image's own
  ``ENV HOME`` (``image_config`` ``home``: ``/home/jovyan`` for ``llmspawner/singleuser``, as
  its Dockerfile), else runc's rule (``libcontainer`` ``setupUser``: the home of the process's
  uid in the image's ``/etc/passwd``, ``/`` when the uid has no entry). An image's passwd is
  ``image_config`` ``passwd`` (``{"uid": home}``) where known; for other images it is this
  machine's ``/etc/passwd``, since an emulated image's root filesystem is the host's.
  https://github.com/opencontainers/runc/blob/main/libcontainer/init_linux.go
  (``if envHome := os.Getenv("HOME"); envHome == ""``; ``defaultExecUser`` Home ``/``),
  https://github.com/containerd/containerd/blob/main/pkg/oci/spec_opts.go (``WithUser``:
  the uid resolved from the image's passwd; the image's ``Env`` first, the pod's after).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: Linux capability numbers (``include/uapi/linux/capability.h``), without ``CAP_``.
CAPABILITIES = {
    name: number
    for number, name in enumerate(
        "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
        "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
        "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
        "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
        "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
        "CHECKPOINT_RESTORE".split()
    )
}

#: containerd's ``defaultUnixCaps`` (the set of a container that is not privileged).
DEFAULT_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)

CLUSTER_DOMAIN = "cluster.local"
MANAGED_HOSTS_HEADER = "# Kubernetes-managed hosts file.\n"

#: Where a container of an image not in ``KubeletConfig.image_config`` starts.
DEFAULT_WORKDIR = "/workspace"

#: ``KubeletConfig.image_config``'s default. ``llmspawner/singleuser``: the repository's
#: ``deploy/images/singleuser/Dockerfile`` (``USER 1000``, jovyan's group 100,
#: ``WORKDIR /home/jovyan``).
#: R: ``home`` is the image's ``ENV HOME`` (the singleuser Dockerfile sets it), ``passwd`` the
#: homes of its ``/etc/passwd`` by uid (the hub image: quay.io/jupyterhub/k8s-hub's jovyan;
#: the MLflow image: root only, as deploy/manifests/mlflow says of uid 1000).
DEFAULT_IMAGE_CONFIG: dict[str, dict] = {
    "*": {"user": None, "workingDir": DEFAULT_WORKDIR},
    "llmspawner/singleuser": {
        "user": "1000:100",
        "workingDir": "/home/jovyan",
        "home": "/home/jovyan",
    },
    "ghcr.io/llmspawner/hub": {"passwd": {"0": "/root", "1000": "/home/jovyan"}},
    "ghcr.io/mlflow/mlflow": {"passwd": {"0": "/root"}},
}

#: Where a container's process finds its passwd entry when its image has no ``passwd`` entry
#: in ``image_config``: this machine's, the emulated images' root filesystem.
HOST_PASSWD = "/etc/passwd"


def pod_hostname(pod: dict) -> tuple[str, str]:
    """``(hostname, fqdn)`` of ``pod`` (see the module docstring); ``fqdn`` is ``""`` when
    the pod has no ``subdomain``."""
    spec = pod.get("spec") or {}
    meta = pod["metadata"]
    name = spec.get("hostname") or meta["name"]
    if len(name) > 63:
        name = name[:63].rstrip("-.")
    subdomain = spec.get("subdomain") or ""
    if not subdomain:
        return name, ""
    ns = meta.get("namespace") or "default"
    return name, f"{name}.{subdomain}.{ns}.svc.{CLUSTER_DOMAIN}"


def uts_hostname(pod: dict) -> str:
    """The hostname a container sees (``hostname``): the FQDN with ``setHostnameAsFQDN``."""
    name, fqdn = pod_hostname(pod)
    return fqdn if fqdn and (pod.get("spec") or {}).get("setHostnameAsFQDN") else name


def hosts_file(pod: dict, pod_ips: list[str]) -> str:
    """The pod's ``/etc/hosts`` as the kubelet writes it (``managedHostsFileContent``)."""
    name, fqdn = pod_hostname(pod)
    out = MANAGED_HOSTS_HEADER
    out += "127.0.0.1\tlocalhost\n"
    out += "::1\tlocalhost ip6-localhost ip6-loopback\n"
    out += "fe00::0\tip6-localnet\n"
    out += "fe00::0\tip6-mcastprefix\n"
    out += "fe00::1\tip6-allnodes\n"
    out += "fe00::2\tip6-allrouters\n"
    for ip in pod_ips:
        out += f"{ip}\t{fqdn}\t{name}\n" if fqdn else f"{ip}\t{name}\n"
    aliases = (pod.get("spec") or {}).get("hostAliases") or []
    if aliases:
        out += "\n# Entries added by HostAliases.\n"
        for alias in aliases:
            out += f"{alias.get('ip', '')}\t" + "\t".join(alias.get("hostnames") or []) + "\n"
    return out


def mounts_etc_hosts(container: dict) -> bool:
    """Whether ``container`` mounts a volume at ``/etc/hosts`` itself (then the kubelet's
    file is not mounted)."""
    return any(
        (vm.get("mountPath") or "").rstrip("/") == "/etc/hosts"
        for vm in container.get("volumeMounts") or []
    )


def capability_set(container: dict) -> list[int]:
    """The capability numbers ``container`` keeps, sorted (see the module docstring)."""
    sc = container.get("securityContext") or {}
    everything = set(CAPABILITIES)
    caps = set(everything if sc.get("privileged") else DEFAULT_CAPABILITIES)
    spec = sc.get("capabilities") or {}
    add = [str(c).upper() for c in spec.get("add") or []]
    drop = [str(c).upper() for c in spec.get("drop") or []]
    if "ALL" in add:
        caps = set(everything)
    if "ALL" in drop:
        caps = set()
    for names, keep in ((add, True), (drop, False)):
        for name in names:
            if name == "ALL":
                continue
            if name not in CAPABILITIES:
                log.warning(
                    "devcluster container %s: ignoring unknown capability CAP_%s",
                    container.get("name"),
                    name,
                )
                continue
            (caps.add if keep else caps.discard)(name)
    return sorted(CAPABILITIES[c] for c in caps)


def image_config(image: str, table: dict[str, dict]) -> dict:
    """``{"user": (uid, gid) | None, "workingDir": str, "home": str | None, "passwd":
    {uid: home} | None}`` of ``image``: its entry in ``table`` (exact name, then without
    tag/digest, then ``"*"``), filled from ``"*"`` and `DEFAULT_IMAGE_CONFIG`. Raises
    ValueError for a ``user`` that is not ``"uid:gid"`` or a ``passwd`` key that is not a
    uid."""
    bare = image.split("@", 1)[0]
    if ":" in bare.rsplit("/", 1)[-1]:
        bare = bare.rsplit(":", 1)[0]
    entry = table.get(image) or table.get(bare) or {}
    merged = {**DEFAULT_IMAGE_CONFIG["*"], **table.get("*", {}), **entry}
    user = merged.get("user")
    if user is not None:
        try:
            uid, gid = (int(part) for part in str(user).split(":"))
        except ValueError:
            raise ValueError(
                f"image_config[{image!r}].user must be 'uid:gid' (numbers), not {user!r}"
            ) from None
        user = (uid, gid)
    passwd = merged.get("passwd")
    if passwd is not None:
        try:
            passwd = {int(uid): str(home) for uid, home in dict(passwd).items()}
        except (TypeError, ValueError):
            raise ValueError(
                f"image_config[{image!r}].passwd must map uids (numbers) to homes, not {passwd!r}"
            ) from None
    return {
        "user": user,
        "workingDir": merged.get("workingDir") or DEFAULT_WORKDIR,
        "home": merged.get("home") or None,
        "passwd": passwd,
    }


def passwd_homes(text: str) -> dict[int, str]:
    """The homes of an ``/etc/passwd`` text by uid (``name:pw:uid:gid:gecos:home:shell``;
    malformed lines skipped; the first entry of a uid wins, as ``getpwuid``). Pure."""
    homes: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or line.startswith("#"):
            continue
        try:
            homes.setdefault(int(fields[2]), fields[5])
        except ValueError:
            continue
    return homes


def container_home(uid: int, image: dict, host_passwd: str = HOST_PASSWD) -> str:
    """The HOME a container runtime gives a process of ``uid`` whose environment sets none
    (see the module docstring): the image's ``ENV HOME``, else its passwd entry's home (the
    image's ``passwd`` from `image_config`, else the file ``host_passwd``), else ``/``.
    ``image``: `image_config`'s answer. An unreadable ``host_passwd`` counts as empty."""
    if image.get("home"):
        return image["home"]
    homes = image.get("passwd")
    if homes is None:
        try:
            with open(host_passwd, encoding="utf-8", errors="replace") as f:
                homes = passwd_homes(f.read())
        except OSError:
            homes = {}
    return homes.get(uid) or "/"


def non_root_refusal(pod: dict, container: dict, image_user: tuple[int, int] | None) -> str:
    """The kubelet's refusal when ``runAsNonRoot`` is set, no ``runAsUser`` is, and the
    image's user is root (``verifyRunAsNonRoot``); ``""`` when it may run."""
    psc = (pod.get("spec") or {}).get("securityContext") or {}
    csc = container.get("securityContext") or {}
    non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    if not non_root or uid is not None or image_user is None or image_user[0] != 0:
        return ""
    meta = pod["metadata"]
    pod_ref = f"{meta['name']}_{meta.get('namespace', 'default')}({meta.get('uid', '')})"
    return (
        f'container has runAsNonRoot and image will run as root (pod: "{pod_ref}", '
        f"container: {container['name']})"
    )


def container_setup(
    pod: dict,
    container: dict,
    *,
    user: dict | None,
    pod_ips: list[str],
    pod_dir,
    instance: str,
    images: dict[str, dict],
    as_root: bool,
) -> dict:
    """What the kubelet adds to the sandbox spec of one container instance (writes
    ``<pod_dir>/etc-hosts`` and the instance's working folder ``<pod_dir>/workdirs/<instance>``).

    Args:
        user: `containers.process_identity`'s answer (``None``: the pod sets no identity),
            or ``None`` when the kubelet is not root.
        as_root: whether the kubelet runs as root (identities and capabilities applied).

    Returns:
        ``{"user": dict | None, "capabilities": [int] | None, "mounts": [mount, ...],
        "cwd": str, "hostname": str, "read_only_root": bool, "home": str}``: ``home`` the
        HOME for an environment that sets none (`container_home`); ``user`` with the image's
        uid/gid where the pod sets none (root kubelet only); ``mounts`` to append (the hosts
        file, the working folder).

    Raises:
        containers.ContainerConfigError: ``runAsNonRoot`` and the image's user is root, or a
            bad ``image_config`` entry.
    """
    from .containers import ContainerConfigError  # containers imports nothing of this

    try:
        image = image_config(container.get("image", ""), images)
    except ValueError as exc:
        raise ContainerConfigError(str(exc)) from None
    csc = container.get("securityContext") or {}
    if as_root:
        refusal = non_root_refusal(pod, container, image["user"])
        if refusal:
            raise ContainerConfigError(refusal)
        if image["user"] is not None:
            user = dict(user or {"uid": None, "gid": None, "groups": [], "no_new_privs": False})
            if user["uid"] is None:
                user["uid"] = image["user"][0]
                if user["gid"] is None:
                    user["gid"] = image["user"][1]
            elif user["gid"] is None:
                user["gid"] = 0
    pod_dir = Path(pod_dir)
    mounts = []
    spec = pod.get("spec") or {}
    if not spec.get("hostNetwork") and not mounts_etc_hosts(container):
        hosts = pod_dir / "etc-hosts"
        hosts.write_text(hosts_file(pod, pod_ips))
        hosts.chmod(0o644)
        mounts.append({"source": str(hosts), "target": "/etc/hosts", "readOnly": False})
    read_only = bool(csc.get("readOnlyRootFilesystem"))
    cwd = container.get("workingDir") or ""
    targets = {
        os.path.normpath(vm.get("mountPath") or "/") for vm in container.get("volumeMounts") or []
    }
    if not cwd:
        cwd = image["workingDir"]
    if not container.get("workingDir") and os.path.normpath(cwd) not in targets:
        # the image's writable layer at its WORKDIR (a volume mounted there is used as is)
        folder = pod_dir / "workdirs" / instance
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        uid = (user or {}).get("uid")
        gid = (user or {}).get("gid")
        if as_root and (uid is not None or gid is not None):
            os.chown(folder, -1 if uid is None else uid, -1 if gid is None else gid)
        mounts.append({"source": str(folder), "target": cwd, "readOnly": read_only})
    uid = (user or {}).get("uid")
    return {
        "home": container_home(os.geteuid() if uid is None else uid, image),  # R
        "user": user,
        "capabilities": capability_set(container) if as_root else None,
        "mounts": mounts,
        "cwd": cwd,
        "hostname": uts_hostname(pod),
        "read_only_root": read_only,
    }


def needs_traversable(capabilities: list[int] | None) -> bool:
    """Whether a root process with ``capabilities`` needs the "image"'s folders made
    enterable (`containers.untraversable`): it has neither DAC_OVERRIDE nor DAC_READ_SEARCH
    (e.g. ``drop: [ALL]``), so only the folders' mode bits let it in."""
    if capabilities is None:
        return False
    return not {CAPABILITIES["DAC_OVERRIDE"], CAPABILITIES["DAC_READ_SEARCH"]} & set(capabilities)
