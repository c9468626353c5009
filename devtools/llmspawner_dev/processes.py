"""Child processes for the dev stack: start, wait until ready, stop, and leave nothing behind.

Each part of the stack (emulated cluster, MLflow, OIDC provider, configurable-http-proxy,
hub) runs as a :class:`ChildProcess` in its own process group (a new session), with its stdout
and stderr appended to one log file. Stopping sends ``SIGTERM`` to the whole group, waits a
grace period (seconds) and then sends ``SIGKILL``; :meth:`ChildProcess.restart` stops and
starts a part again (the e2e tests restart the proxy). When started from the main thread on
Linux, a child also gets ``PR_SET_PDEATHSIG`` (``SIGTERM``), so that it does not outlive a
``kill -9`` of its parent.

:func:`kill_strays` is the last safety net: it ends processes that a part started in a session
of their own (configurable-http-proxy, the pods of the emulated cluster) and that survived their
parent, recognised by a marker in their environment or by their working directory.

Only the standard library is used here, except for :func:`wait_http` (httpx) and the polling
helper of :mod:`devcluster.testing`.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

from devcluster.testing import WaitTimeout
from devcluster.testing import wait_until as _wait_until

T = TypeVar("T")


class StartupError(RuntimeError):
    """A part of the stack did not become ready.

    Attributes:
        part: the part's name, e.g. ``"hub"``.
        log_tail: the last lines of the part's log (may be empty).
    """

    def __init__(self, part: str, message: str, log_tail: str = ""):
        self.part = part
        self.log_tail = log_tail
        text = f"{part}: {message}"
        if log_tail:
            text += f"\n--- last lines of the {part} log ---\n{log_tail}"
        super().__init__(text)


#: The ports :func:`free_port` picks from, less the kernel's ephemeral range (see there).
PORT_RANGE = (20000, 32767)

#: Where :func:`free_port` keeps its reservations: one file per port, naming the process that
#: holds it (``PID STARTTIME``), and the lock file that serialises the pickers of this user.
PORT_RESERVATIONS = Path(tempfile.gettempdir()) / f"llmspawner-ports-{os.getuid()}"

_EPHEMERAL_DEFAULT = (32768, 60999)  # Linux's default net.ipv4.ip_local_port_range
_reserved_here: set[int] = set()
_swept: list[bool] = []  # non-empty once this process has removed the dead ones' reservations
_reserved_lock = threading.Lock()


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's ephemeral port range ``(low, high)``, inclusive: where it picks the local
    port of a ``connect()`` and of a ``bind()`` to port 0 (Linux:
    ``/proc/sys/net/ipv4/ip_local_port_range``; its default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return _EPHEMERAL_DEFAULT


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free and stays free for a part of the stack to bind.

    The port is picked from :data:`PORT_RANGE` outside the kernel's ephemeral range
    (:func:`ephemeral_port_range`), so the kernel never hands it out by itself: not as the
    local port of one of the many client connections the stack and its neighbours open, and
    not to a ``bind()`` to port 0 (the old way of picking, as this function did: under load,
    the hub's port, picked a minute before the hub bound it, was taken in between, "Address
    already in use"). Against the other processes that pick ports this way (parallel tests,
    a second stack), the port is reserved for as long as this process lives: a file in
    :data:`PORT_RESERVATIONS`, made under a lock, as portpicker's port server reserves a port
    for the process that asked (https://github.com/google/python_portpicker, whose
    ``pick_unused_port`` without a server, like ``bind(("", 0))``, gives an ephemeral port).
    A reservation is released when this process exits (or by :func:`release_port`); those
    left by processes that died (killed, ``os._exit``) are removed at this process's first
    pick. The port is also checked free by binding it on
    ``host`` (a listener there, or a connection still in ``TIME_WAIT``, is skipped).

    Where the ephemeral range leaves no room in :data:`PORT_RANGE` (a tuned kernel), the
    port comes from a ``bind()`` to port 0, still reserved.

    Args:
        host: the address the port will be bound on (IPv4 or IPv6 literal).

    Returns:
        The port number.

    Raises:
        OSError: ``EADDRINUSE`` when no port of the range is free (every one reserved or
            bound); ``host`` cannot be bound at all (not an address of this machine).
    """
    low, high = PORT_RANGE
    eph_low, eph_high = ephemeral_port_range()
    candidates = [p for p in range(low, high + 1) if not eph_low <= p <= eph_high]
    PORT_RESERVATIONS.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _reserved_lock, open(PORT_RESERVATIONS / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _swept:
                _sweep()
            if not candidates:
                for _ in range(50):
                    port = _bind_test(host, 0)
                    if port and _reserve(port):
                        return port
            else:
                random.shuffle(candidates)
                for port in candidates:
                    if _reserve(port, check=lambda p: _bind_test(host, p)):
                        return port
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    raise OSError(
        errno.EADDRINUSE,
        f"no free port on {host} in {low}-{high} outside the ephemeral range "
        f"{eph_low}-{eph_high} (all bound or reserved in {PORT_RESERVATIONS})",
    )


def release_port(port: int) -> None:
    """Drop this process's reservation of ``port`` (made by :func:`free_port`), if any."""
    with _reserved_lock:
        _reserved_here.discard(port)
        path = PORT_RESERVATIONS / str(port)
        with contextlib.suppress(OSError):
            if _owner(path) == _process_id(os.getpid()):
                path.unlink()


def _bind_test(host: str, port: int) -> int:
    """Bind ``host:port`` (no ``SO_REUSEADDR``) and close; the bound port, 0 if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return 0
            raise
        return s.getsockname()[1]


def _process_id(pid: int) -> str | None:
    """``"PID STARTTIME"`` of a live process (its start time tells a reused pid apart),
    ``None`` when there is no such process or it is a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except (OSError, IndexError):  # pragma: no cover - no /proc: the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return str(pid)
    if fields[0] in ("Z", "X"):
        return None
    return f"{pid} {fields[19]}"  # field 22 of proc(5): starttime


def _owner(path: Path) -> str | None:
    """The live process that holds the reservation file ``path``, ``None`` if none does."""
    try:
        written = path.read_text().strip()
        pid = int(written.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    holder = _process_id(pid)
    return holder if holder is not None and holder == written else None


def _reserve(port: int, check: Callable[[int], int] = lambda p: p) -> bool:
    """Reserve ``port`` for this process unless a live process holds it or ``check(port)`` is
    falsy (the caller holds the pickers' lock)."""
    if port in _reserved_here:
        return False
    path = PORT_RESERVATIONS / str(port)
    if path.exists() and _owner(path) is not None:
        return False
    if not check(port):
        return False
    me = _process_id(os.getpid()) or str(os.getpid())
    tmp = path.with_name(f".{port}.{os.getpid()}")
    tmp.write_text(me + "\n")
    os.replace(tmp, path)
    if not _reserved_here:
        atexit.register(_release_all)  # once per run of reservations; _release_all is idempotent
    _reserved_here.add(port)
    return True


def _sweep() -> None:
    """Remove the reservations of processes that died without releasing them (``SIGKILL``,
    ``os._exit``); once per process, under the pickers' lock."""
    _swept.append(True)
    for path in PORT_RESERVATIONS.iterdir():
        if path.name.isdigit() and _owner(path) is None:
            with contextlib.suppress(OSError):
                path.unlink()


def _release_all() -> None:
    """At exit: drop the reservations this process made (not a forked child's copy)."""
    for port in list(_reserved_here):
        release_port(port)


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to send SIGTERM to this (child) process when its parent thread exits."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ChildProcess:
    """One part of the stack, run as a child process in its own process group.

    Args:
        name: the part's name, used in messages and as the log file's stem.
        argv: the command line.
        log_path: file that receives stdout and stderr (appended; folders are created).
        env: the full environment of the child; ``None`` inherits this process's.
        cwd: working directory of the child; ``None`` keeps this process's.

    The constructor does nothing; :meth:`start` starts the process.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None
        #: Where this start's output begins in ``log_path`` (the log is appended to across
        #: runs): readers of a ready line skip what earlier runs wrote (F, issue 13 §5).
        self.log_offset = 0

    def __repr__(self) -> str:
        return f"<ChildProcess {self.name} pid={self.pid} running={self.running}>"

    @property
    def pid(self) -> int | None:
        """The child's process id (also its process group id), or ``None`` before start."""
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        """Whether the child has been started and has not exited."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), ``None`` while running."""
        return self.popen.poll() if self.popen else None

    def start(self) -> ChildProcess:
        """Start the child; return ``self``.

        Raises:
            RuntimeError: if it was already started.
            OSError: if the executable cannot be run.
        """
        if self.popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} $ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.log_offset = log.tell()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=(
                    _set_parent_death_signal
                    if main_thread and sys.platform.startswith("linux")
                    else None
                ),
            )
        return self

    def stop(self, grace: float = 10.0) -> int | None:
        """Stop the child's whole process group: SIGTERM, then SIGKILL after ``grace`` seconds.

        Safe to call more than once and on a child that has already exited (its group is
        still signalled, to end what it left behind).

        Returns:
            The child's exit status, or ``None`` if it was never started.
        """
        if self.popen is None:
            return None
        pgid = self.popen.pid
        if self.popen.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Anything left in the group (the leader gone or not) is killed.
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + min(grace, 2.0)
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(pgid, signal.SIGKILL)
        try:
            return self.popen.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            return None

    def restart(self, grace: float = 10.0) -> ChildProcess:
        """Stop the child (:meth:`stop`, its whole group) and start it again with the same
        command line, environment and log file (appended to); return ``self``.

        Raises:
            RuntimeError: if it was never started.
            OSError: if the executable cannot be run any more.
        """
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        self.stop(grace)
        self.popen = None
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the child's log ('' when there is none yet)."""
        return log_tail(self.log_path, lines)

    def check_running(self) -> None:
        """Raise :class:`StartupError` (with the log tail) if the child has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise StartupError(
                self.name, f"exited with status {self.popen.returncode}", self.log_tail()
            )


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of the text file ``path`` ('' if it does not exist)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(collections.deque(f, maxlen=lines)).rstrip("\n")
    except FileNotFoundError:
        return ""


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a group member of another user
        return True
    return True


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    process: ChildProcess | None = None,
    interval: float = 0.25,
) -> T:
    """Call ``check()`` until it returns something other than ``None``; return that.

    Built on the one polling helper, :func:`devcluster.testing.wait_until`.

    Args:
        check: called every ``interval`` seconds; exceptions it raises propagate.
        timeout: total seconds to wait.
        what: what is awaited, for the error message (e.g. ``"hub /hub/health"``).
        process: the child that must stay alive meanwhile.

    Raises:
        StartupError: the child exited, or ``timeout`` passed (with the child's log tail).
    """

    def ready() -> tuple[T] | None:
        if process is not None:
            process.check_running()
        result = check()
        return None if result is None else (result,)  # a falsy result counts as ready too

    try:
        (result,) = _wait_until(ready, timeout, what, interval)
    except WaitTimeout:
        name = process.name if process else what
        tail = process.log_tail() if process else ""
        raise StartupError(name, f"{what} not ready after {timeout:g} s", tail) from None
    return result


def wait_http(
    url: str,
    *,
    timeout: float,
    process: ChildProcess | None = None,
    ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    interval: float = 0.25,
) -> httpx.Response:
    """Poll ``GET url`` until ``ok(response)``; return that response.

    Connection errors and per-request timeouts (5 s) count as "not yet".

    Raises:
        StartupError: as :func:`wait_until`.
    """

    def check() -> httpx.Response | None:
        try:
            response = httpx.get(url, timeout=5.0)
        except httpx.TransportError:
            return None
        return response if ok(response) else None

    return wait_until(check, timeout=timeout, what=f"GET {url}", process=process, interval=interval)


def wait_json_line(
    path: Path,
    *,
    keys: Iterable[str],
    timeout: float,
    process: ChildProcess | None = None,
) -> dict:
    """Wait until the text file ``path`` has a line that is a JSON object with all ``keys``.

    Used for the emulated cluster, which prints one such line on stdout when it is ready.
    With ``process`` (whose log is ``path``), only what this start of it wrote counts, from
    :attr:`ChildProcess.log_offset` on: never a ready line of a previous run in the same log.

    Returns:
        The first such object.

    Raises:
        StartupError: as :func:`wait_until`.
    """
    wanted = set(keys)
    start = 0
    if process is not None and Path(process.log_path) == Path(path):
        start = process.log_offset

    def check() -> dict | None:
        try:
            with open(path, "rb") as f:
                f.seek(start)
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and wanted <= obj.keys():
                return obj
        return None

    return wait_until(
        check, timeout=timeout, what=f"a JSON line with {sorted(wanted)}", process=process
    )


def _read_environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                # the field after the ")" that closes the command name: state, ppid, ...
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def find_strays(*, marker: tuple[str, str] | None = None, under: Path | None = None) -> list[int]:
    """Find this user's processes that belong to a stopped dev stack (Linux ``/proc`` only).

    A process matches when its environment holds ``NAME=VALUE`` of ``marker``, or its working
    directory is ``under`` or below it. This process and its ancestors never match.

    Returns:
        Matching process ids (empty where ``/proc`` is not available).
    """
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        return []
    needle = f"{marker[0]}={marker[1]}".encode() if marker else None
    root = str(Path(under).resolve()) if under is not None else None
    skip = _ancestors(os.getpid())
    uid = os.getuid()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in skip:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            if needle is not None and needle in _read_environ(pid).split(b"\0"):
                found.append(pid)
                continue
            if root is not None:
                cwd = os.readlink(f"/proc/{pid}/cwd")
                if cwd == root or cwd.startswith(root + os.sep):
                    found.append(pid)
        except OSError:
            continue
    return found


def kill_strays(
    *, marker: tuple[str, str] | None = None, under: Path | None = None, grace: float = 3.0
) -> list[int]:
    """End the processes :func:`find_strays` finds: SIGTERM, then SIGKILL after ``grace`` s.

    Returns:
        The process ids that were signalled.
    """
    pids = find_strays(marker=marker, under=under)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _pid_alive(p)]
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start_devcluster(
    data_dir: Path, *, log_path: Path, env: Mapping[str, str], timeout: float = 120.0
) -> tuple[ChildProcess, dict]:
    """Start the emulated cluster (``python -m devcluster``) as its own process and wait for
    its ready line.

    Returns:
        ``(process, ready)``: the started :class:`ChildProcess` and the ready line's JSON
        (``kubeconfig``, ``url``...).

    Raises:
        whatever :func:`wait_json_line` raises (timeout, the process ended); the process is
        stopped first.
    """
    from .parts import devcluster_command

    cluster = ChildProcess(
        "cluster", devcluster_command(data_dir=data_dir), log_path=log_path, env=dict(env)
    ).start()
    try:
        ready = wait_json_line(log_path, keys=("kubeconfig",), timeout=timeout, process=cluster)
    except BaseException:
        cluster.stop(grace=10)
        raise
    return cluster, ready
