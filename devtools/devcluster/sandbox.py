"""Runs one container's process in a private mount, PID and UTS namespace (Linux, root).

Run by the kubelet as ``python sandbox.py SPEC.json`` (this file only, no package imports, so
it starts fast). SPEC is ``{"argv": [...], "env": {...}, "cwd": "/", "hostname": "pod",
"mounts": [{"source", "target", "readOnly"}], "hide": [paths], "error_file": path,
"parent_pid": pid, "user": {"uid", "gid", "groups", "no_new_privs"} | null,
"traversable": [paths], "cgroup": path | "", "capabilities": [numbers] | null,
"read_only_root": bool, "netns_fd": int | null, "image_paths": [paths]}``
(``devcluster.isolation`` makes the hosts file, working folder, hostname and capability list;
the kubelet passes them here as mounts, ``cwd`` and keys).

``netns_fd`` (N, the kubelet's isolated pod network, ``devcluster.podnet``): a descriptor of
the pod's network namespace, inherited from the kubelet; the supervisor ``setns``-es into it
first (so every container of the pod, and its init containers, share the pod's ``lo`` and
``eth0``) and closes it. ``null``: the kubelet's own network namespace (host mode).

``cgroup`` (a container with a memory limit, see ``memory.py``): the container process moves
itself into that cgroup (``cgroup.procs``) just before dropping root and ``exec``.

``user`` (the pod's ``runAsUser``/``runAsGroup``, ``supplementalGroups`` + ``fsGroup``, and
``allowPrivilegeEscalation: false``): the container process sets its supplementary groups,
group and user (in that order, so root's groups are gone) and ``PR_SET_NO_NEW_PRIVS`` just
before ``chdir``/``exec``; a uid/gid of ``null`` keeps this process's.

``capabilities`` (the container's set, `isolation.capability_set`; ``null``: unchanged): the
bounding set is cut to it before the user changes (`drop_privileges`, which the kubelet's exec
uses too); a process that stays root keeps it as its effective and permitted sets
(inheritable empty, as containerd), a non-root one has none (the kernel clears them on
``setuid``; no ambient set). Without CAP_SYS_ADMIN (containerd's default set) the process
cannot mount or unmount, so it cannot uncover what the ``hide`` tmpfs covers nor change
its view.

``read_only_root`` (``readOnlyRootFilesystem``): after the volumes are mounted every other
mount (the host's ``/`` and what is mounted on it), except ``/proc``, ``/sys`` and ``/dev``,
is remounted read-only in this namespace (`read_only_root`); the volumes and ``/etc/hosts``
stay as they are. The tmpfs that a created mount point's parent gets stays writable (memory
of this namespace only).

``image_paths`` (the "image": its Python prefix and this checkout): a volume mounted on a
folder above one of them (the kit's MLflow pod mounts an emptyDir at ``/tmp``, and a clean
clone may live in ``/tmp``) would hide the image, which in a real container lives in its own
root filesystem. So the entry of that folder on the way to the image path is bind-mounted back
from the host, its mount point made inside the volume as runc makes nested mount points
(`restore_image_paths`); read-only under ``readOnlyRootFilesystem`` like the rest of the image.

``traversable`` folders (those above the "image"
prefix that the user cannot enter, e.g. ``/root`` of a pyenv interpreter, or a 0700 checkout
whose editable install is on ``sys.path``) are shadowed with ``a+rx`` added to their mode
(listable: Python's importer lists its path folders), in this namespace only.

Layout of processes, so that nothing outlives the container:

- this process (the *supervisor*, started by the kubelet in its own session): dies with the
  kubelet (``PR_SET_PDEATHSIG``), creates the namespaces, bind-mounts the volumes, forks
- the *init* (PID 1 of the new PID namespace): dies with the supervisor, mounts a private
  ``/proc``, forks and forwards SIGTERM/SIGINT/SIGHUP to the container process, reaps orphans,
  exits with its status; when it exits, the kernel kills everything left in the namespace
- the *container process*: ``chdir(cwd)`` and ``execvpe(argv)`` with exactly ``env``.

Volume mounts: a target that exists is bind-mounted over. Else its mount point is made
without touching the host's folders: under an existing folder, that folder is *shadowed* (a
private tmpfs on it, its entries bind-mounted back) and the path created inside; a missing
top-level folder (``/storage``) is created empty on the host and gets a private tmpfs; inside
an already mounted volume the mount point is created in the volume (as runc does).
``readOnly`` remounts read-only. Sources are opened before any mount, so a mount cannot hide
another's source. Then the ``hide`` folders (the
kubelet's PVC and pod folders) are covered with an empty tmpfs: a container reaches volumes
only at their mountPath.

On any failure before ``exec`` the message goes to ``error_file`` and the exit status is 128
(as a container runtime's StartError). Exit status otherwise: the process's, or 128+signal.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NOEXEC = 8
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
#: Mount options of /proc/self/mountinfo kept by a read-only remount.
_MOUNT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
START_ERROR = 128

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(Exception):
    """A failure to set up the container; the message is reported as the StartError."""


def _forward_signals(pid: int, group: bool = False) -> None:
    """Pass SIGTERM, SIGINT and SIGHUP received by this process on to ``pid`` (``group``:
    to its process group, falling back to ``pid`` alone when it has none yet)."""

    def forward(signum, frame):
        try:
            if group:
                try:
                    os.killpg(pid, signum)
                    return
                except (ProcessLookupError, PermissionError):
                    pass  # no such group yet (before its setsid): the process alone
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    _check(
        _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]),
        f"mount {source or fstype} on {target}",
    )


def _die_with_parent(expected_parent: int | None) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    # The parent died before prctl took effect (PID 1 of a new namespace sees ppid 0: skip).
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(START_ERROR)


def _inside(path: str, roots: set) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _shadow(parent: str, add_mode: int = 0) -> None:
    """Make ``parent`` privately writable, its entries still visible: a tmpfs on it (mode: the
    folder's, plus ``add_mode``), with each original entry bind-mounted (or its symlink
    recreated) at its old name."""
    entries = []
    for name in os.listdir(parent):
        full = os.path.join(parent, name)
        if os.path.islink(full):
            entries.append((name, "link", os.readlink(full)))
        else:
            kind = "dir" if os.path.isdir(full) else "file"
            entries.append((name, kind, os.open(full, os.O_PATH | os.O_CLOEXEC)))
    mode = (os.stat(parent).st_mode & 0o7777) | add_mode
    _mount("tmpfs", parent, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode:o}")
    for name, kind, ref in entries:
        full = os.path.join(parent, name)
        if kind == "link":
            os.symlink(ref, full)
            continue
        if kind == "dir":
            os.mkdir(full)
        else:
            open(full, "a").close()
        _mount(f"/proc/self/fd/{ref}", full, None, MS_BIND | MS_REC)
        os.close(ref)


def _prepare_target(target: str, is_dir: bool, private: set, volumes: set) -> None:
    """Create the mount point ``target`` (see the module docstring); ``private`` are the
    folders already private to this namespace, ``volumes`` the targets already mounted."""
    if os.path.lexists(target):
        return
    parts = target.strip("/").split("/")
    path = ""
    for i, part in enumerate(parts):
        parent, path = path or "/", path + "/" + part
        if os.path.lexists(path):
            continue
        if not _inside(parent, private) and not _inside(parent, volumes):
            if parent == "/":  # a new top-level folder: created (empty) on the host
                os.mkdir(path)
                _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
                private.add(path)
            else:
                _shadow(parent)
                private.add(parent)
        # Inside a volume, the mount point is created in the volume, as runc does.
        if i == len(parts) - 1 and not is_dir:
            open(path, "a").close()
        elif not os.path.lexists(path):
            os.mkdir(path)


def setup_mounts(mounts: list) -> set:
    """Bind-mount every ``{"source","target","readOnly"}`` (see the module docstring);
    returns the set of targets."""
    opened = []
    for m in mounts:
        try:
            fd = os.open(m["source"], os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxError(f"volume source {m['source']}: {exc.strerror}") from None
        opened.append((fd, m))
    private: set = set()
    volumes: set = set()
    for fd, m in sorted(opened, key=lambda x: x[1]["target"].count("/")):
        target = os.path.normpath(m["target"])
        is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
        _prepare_target(target, is_dir, private, volumes)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        if m.get("readOnly"):
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
        volumes.add(target)
        os.close(fd)
    return volumes


def open_image_paths(paths: list, mounts: list) -> list:
    """Before any mount: for each of ``paths`` below a volume's target (not the target
    itself), the folder just below the deepest such target on the way to it, opened
    ``O_PATH`` from the host's view. Returns ``[(folder, fd)]`` (each folder once)."""
    targets = [os.path.normpath(m["target"]) for m in mounts]
    out: dict = {}
    for path in paths:
        path = os.path.normpath(path)
        above = [t for t in targets if t != path and _inside(path, {t})]
        if not above:
            continue
        top = max(above, key=len)
        rest = path[len(top.rstrip("/")) + 1 :].split("/")
        folder = os.path.join(top, rest[0])
        if folder in out or not os.path.exists(folder):
            continue
        out[folder] = os.open(folder, os.O_PATH | os.O_CLOEXEC)
    return list(out.items())


def restore_image_paths(opened: list) -> None:
    """After the volumes: bind-mount each ``(folder, fd)`` of `open_image_paths` back where a
    volume hid it (its mount point made in the volume, as runc does). Raises SandboxError."""
    for folder, fd in opened:
        try:
            if not os.path.lexists(folder):
                if os.path.isdir(f"/proc/self/fd/{fd}"):
                    os.mkdir(folder, 0o755)
                else:
                    open(folder, "a").close()
            _mount(f"/proc/self/fd/{fd}", folder, None, MS_BIND | MS_REC)
        except OSError as exc:
            raise SandboxError(f"image path {folder}: {exc.strerror}") from None
        finally:
            os.close(fd)


def _status_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


_error_fd: int | None = None


def _write_error(spec: dict, message: str) -> None:
    try:
        if _error_fd is not None:
            os.write(_error_fd, message.encode())
        else:
            with open(spec["error_file"], "w") as f:
                f.write(message)
    except OSError:
        pass
    sys.stderr.write(f"devcluster: {message}\n")
    sys.stderr.flush()


def hide_paths(paths: list) -> None:
    """Mount an empty read-only tmpfs on each existing path (the kubelet's data folders), so
    that a container cannot reach other pods' volumes by their host path."""
    for path in paths:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=0555")


def _become_user(user: dict) -> None:
    """Drop to the pod's user (see the module docstring); raises OSError."""
    if user.get("gid") is not None or user.get("uid") is not None:
        os.setgroups(list(user.get("groups") or []))
    elif user.get("groups"):
        os.setgroups(sorted({*os.getgroups(), *user["groups"]}))
    if user.get("gid") is not None:
        os.setgid(int(user["gid"]))
    if user.get("uid") is not None:
        os.setuid(int(user["uid"]))
    if user.get("no_new_privs"):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def _drop_bounding(keep: set) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP, so
    before ``setuid``) and clear the ambient set."""
    for cap in range(_last_cap() + 1):
        if cap not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on old kernels


def _set_capabilities(keep: set) -> None:
    """capset: effective = permitted = ``keep`` (of what this process has), inheritable
    empty."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    for i in range(2):
        mask = 0
        for cap in keep:
            if cap // 32 == i:
                mask |= 1 << (cap % 32)
        data[i].permitted &= mask
        data[i].effective = data[i].permitted
        data[i].inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def drop_privileges(spec: dict) -> None:
    """The identity step of a container process (also of a process exec'd into it), just
    before ``chdir``/``exec``, in this order: the capability bounding set becomes
    ``spec["capabilities"]`` (a list of capability numbers; ``None``: unchanged), the
    process becomes ``spec["user"]`` (`_become_user`; a non-root uid loses every capability
    there, as the kernel clears them on ``setuid``), a process still root keeps only those
    capabilities (effective, permitted; inheritable empty), then ``no_new_privs``.

    Raises:
        OSError, SandboxError: a step failed (the message names it).
    """
    caps = spec.get("capabilities")
    keep = None if caps is None else {int(c) for c in caps}
    if keep is not None:
        _drop_bounding(keep)
    user = dict(spec.get("user") or {})
    no_new_privs = user.pop("no_new_privs", False)
    if user:
        _become_user(user)
    if keep is not None and os.geteuid() == 0:
        _set_capabilities(keep)
    if no_new_privs:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def apply_capabilities(spec: dict) -> None:
    """For a caller that has already run `_become_user` (prefer `drop_privileges`, which
    orders the steps): a process still root gets the bounding, effective and permitted sets
    of ``spec["capabilities"]``; a non-root one has no capability left and can no longer
    change its bounding set, which then stays as it was (``no_new_privs``, set by
    `_become_user` for ``allowPrivilegeEscalation: false``, keeps setuid binaries from using
    it). Raises SandboxError."""
    caps = spec.get("capabilities")
    if caps is None or os.geteuid() != 0:
        return
    keep = {int(c) for c in caps}
    _drop_bounding(keep)
    _set_capabilities(keep)


def _unescape_mountinfo(field: str) -> str:
    """mountinfo's octal escapes (``\\040`` for a space) decoded."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_only_root(volumes: set) -> None:
    """``readOnlyRootFilesystem``: every mount of this namespace made read-only (its other
    options kept) except the ``volumes`` (targets, which stay as their ``readOnly`` says),
    ``/proc``, ``/sys``, ``/dev`` and what lies below them. Run after the volumes are
    mounted, so their mount points could still be made."""
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    done = set()
    for line in lines:
        fields = line.split()
        target, options = _unescape_mountinfo(fields[4]), fields[5].split(",")
        skip = target in done or target in volumes or "ro" in options
        if skip or _inside(target, {"/proc", "/sys", "/dev"}):
            continue
        done.add(target)
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for option in options:
            flags |= _MOUNT_FLAGS.get(option, 0)
        _mount(None, target, None, flags)


def _join_cgroup(spec: dict) -> None:
    """Move this process (the container's, before ``exec``) into its memory cgroup."""
    if not spec.get("cgroup"):
        return
    try:
        with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as exc:
        _write_error(spec, f"cannot join the memory cgroup {spec['cgroup']}: {exc}")
        os._exit(START_ERROR)


def _exec_container(spec: dict) -> None:
    _join_cgroup(spec)
    if spec.get("user") or spec.get("capabilities") is not None:
        try:
            drop_privileges(spec)
        except (OSError, SandboxError) as exc:
            _write_error(spec, f"cannot run as {spec.get('user')}: {exc}")
            os._exit(START_ERROR)
    try:
        os.chdir(spec.get("cwd") or "/")
    except OSError as exc:
        _write_error(spec, f'chdir to cwd ("{spec.get("cwd")}") failed: {exc.strerror}')
        os._exit(START_ERROR)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as exc:
        if exc.errno == 2:
            msg = f'exec: "{argv[0]}": executable file not found in $PATH'
        else:
            msg = f'exec: "{argv[0]}": {exc.strerror}'
        _write_error(spec, msg)
        os._exit(START_ERROR)


def _run_init(spec: dict) -> None:
    _die_with_parent(None)
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV)
    except SandboxError as exc:
        _write_error(spec, str(exc))
        os._exit(START_ERROR)
    child = os.fork()
    if child == 0:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _exec_container(spec)

    _forward_signals(child)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(_status_code(status))


def join_netns(spec: dict) -> None:
    """N: ``setns`` into the pod's network namespace ``spec["netns_fd"]`` (an inherited
    descriptor, closed after) if it has one. Raises SandboxError."""
    fd = spec.get("netns_fd")
    if fd is None:
        return
    try:
        _check(_libc.setns(int(fd), CLONE_NEWNET), "cannot join the pod's network namespace")
    finally:
        os.close(int(fd))


def main(argv: list) -> None:
    """Supervisor entry point: ``sandbox.py SPEC.json`` (see the module docstring)."""
    global _error_fd
    with open(argv[1]) as f:
        spec = json.load(f)
    _die_with_parent(int(spec["parent_pid"]))
    _error_fd = os.open(spec["error_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
    try:
        join_netns(spec)
        _check(
            _libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS),
            "cannot create the container's mount/PID namespaces (unshare needs root or "
            "CAP_SYS_ADMIN)",
        )
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        if spec.get("hostname"):
            name = spec["hostname"].encode()[:64]
            _check(_libc.sethostname(name, len(name)), "sethostname")
        image = open_image_paths(spec.get("image_paths") or [], spec.get("mounts") or [])
        volumes = setup_mounts(spec.get("mounts") or [])
        restore_image_paths(image)
        if spec.get("read_only_root"):
            read_only_root(volumes)
        for folder in spec.get("traversable") or []:
            # r as well as x: Python lists every sys.path folder it imports from (FileFinder's
            # cache), and an editable install puts the checkout, which may be such a folder
            # (a mktemp -d clone is 0700), on sys.path
            _shadow(folder, 0o555)
        hide_paths(spec.get("hide") or [])
    except SandboxError as exc:
        _write_error(spec, str(exc))
        sys.exit(START_ERROR)
    init = os.fork()
    if init == 0:
        _run_init(spec)

    _forward_signals(init)
    while True:
        try:
            _, status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
    sys.stdout.flush()
    os._exit(_status_code(status))


if __name__ == "__main__":
    main(sys.argv)
