"""Runs one ``kubectl exec`` command inside a running container's namespaces (Linux, root).

Run by the API server (`streams`) as ``python nsexec.py SPEC.json`` (this file and
``sandbox.py`` only, no package imports, so it starts fast). SPEC is ``{"pid": host pid,
"argv": [...], "env": {...}, "cwd": "/", "user": {...} | null, "cgroup": path | "",
"tty": bool, "error_fd": int}``: ``pid`` is the container's init (PID 1 of its PID
namespace, `sandbox.py`); ``env``, ``cwd``, ``user`` and ``cgroup`` are those the kubelet
wrote for the container process (its ``<container>-<restart>.json``), so the command runs as
the container's user, with its environment and working folder, as a runtime's exec does
(the OCI runtime spec's ``process`` of the container: https://github.com/opencontainers/
runc/blob/main/docs/terminals.md, ``runc exec``).

Steps: ``setns`` into the container's network (the pod's: N, ``podnet``), mount, UTS and PID
namespaces (``/proc/<pid>/ns/*``;
https://man7.org/linux/man-pages/man2/setns.2.html), fork (a PID namespace applies to
children), and in the child: a new session with the terminal as its controlling tty
(``tty``), the container's memory cgroup, its capabilities and user
(`sandbox.drop_privileges`, the container process's own step, with the container's
``capabilities`` and ``user``), ``chdir`` and ``execvpe``. This process forwards
SIGTERM/SIGINT/SIGHUP to the child and exits with its status (128+signal when killed);
the child dies with it (``PR_SET_PDEATHSIG``).

A failure before ``exec`` writes a message to ``error_fd`` and exits 126 (``exec`` not found:
127), worded as runc's (``exec: "x": executable file not found in $PATH``).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import sys
import termios

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox  # noqa: E402  (the container process's own user/capability steps)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _fail(spec: dict, message: str, code: int = 126) -> None:
    try:
        os.write(int(spec["error_fd"]), message.encode())
    except (OSError, KeyError, TypeError, ValueError):
        sys.stderr.write(message + "\n")
    os._exit(code)


def enter(pid: int) -> None:
    """``setns`` into the network, mount, UTS and PID namespaces of ``pid`` (the network one
    first: after the mount namespace, ``/proc`` is the container's); raises OSError."""
    namespaces = (
        ("net", CLONE_NEWNET),
        ("uts", CLONE_NEWUTS),
        ("pid", CLONE_NEWPID),
        ("mnt", CLONE_NEWNS),
    )
    for name, flag in namespaces:
        fd = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, flag) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {name}: {os.strerror(err)}")
        finally:
            os.close(fd)


def _child(spec: dict) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    if spec.get("tty"):
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    if spec.get("cgroup"):
        try:
            with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass  # the container's cgroup is gone: the container is ending
    try:
        sandbox.drop_privileges(spec)  # capability bounding set, user, capabilities, no_new_privs
    except (OSError, sandbox.SandboxError) as exc:
        _fail(spec, f"unable to start container process: cannot run as {spec['user']}: {exc}")
    try:
        os.chdir(spec.get("cwd") or "/")
    except OSError as exc:
        _fail(
            spec,
            f'unable to start container process: chdir to cwd ("{spec.get("cwd")}") '
            f"set in config.json failed: {exc.strerror}",
        )
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as exc:
        if exc.errno == 2:
            _fail(
                spec,
                f'unable to start container process: exec: "{argv[0]}": executable '
                "file not found in $PATH",
                127,
            )
        _fail(spec, f'unable to start container process: exec: "{argv[0]}": {exc.strerror}')


def main(argv: list) -> None:
    """Entry point: ``nsexec.py SPEC.json`` (see the module docstring)."""
    with open(argv[1]) as f:
        spec = json.load(f)
    try:
        enter(int(spec["pid"]))
    except OSError as exc:
        _fail(spec, f"cannot enter the container's namespaces: {exc}")
    child = os.fork()
    if child == 0:
        _child(spec)

    sandbox._forward_signals(child, group=True)  # the exec'd command leads its own session
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main(sys.argv)
