"""Containers' memory limits (``resources.limits.memory``): exceeded, the container is killed
and reported ``terminated: {reason: OOMKilled, exitCode: 137}``, as a kubelet reports the
kernel's OOM kill of a container cgroup.

Two ways, chosen once per kubelet by :func:`probe`:

- :class:`Cgroups` (what real kubelets use): the kubelet, as root, creates one memory cgroup
  per container instance under ``devcluster-<pid>-<id>/`` (cgroup v1 ``memory`` hierarchy:
  ``memory.limit_in_bytes``, OOM kills counted in ``memory.oom_control``; or cgroup v2:
  ``memory.max``, ``memory.swap.max`` 0, ``memory.events``), and the sandbox moves the
  container's process into it just before ``exec`` (the sandbox's own supervisor and init are
  not counted); the kernel's OOM killer does the kill (SIGKILL).
- polling (not root, or no writable memory cgroup): the kubelet sums the resident memory
  (:func:`session_rss`: the container's processes in its sandbox's session, without the
  supervisor and init) every ``KubeletConfig.memory_period`` seconds and SIGKILLs the
  process group when it is over the limit; a short spike between two polls can pass.

Quantities: https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import time
from pathlib import Path

from .nodes import parse_quantity

log = logging.getLogger(__name__)


def parse_bytes(value: object) -> int:
    """A memory quantity (``"512Mi"``, ``"1G"``, ``"128974848"``, ``"1e3"``, ``400``) in bytes,
    rounded up (the one quantity parser: :func:`devcluster.nodes.parse_quantity`). Raises
    ValueError naming the value."""
    try:
        number = parse_quantity(value if isinstance(value, (int, float)) else str(value).strip())
    except ValueError:
        raise ValueError(
            f"memory quantity {value!r}: expected a number with an optional suffix "
            "(Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, m)"
        ) from None
    return int(math.ceil(number))


def memory_limit(container: dict) -> int | None:
    """``resources.limits.memory`` of a container spec in bytes, or None."""
    value = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None if value in (None, "") else parse_bytes(value)


class Cgroups:
    """Memory cgroups under ``<root>/devcluster-<pid>-<id>`` (``version`` 1 or 2)."""

    def __init__(self, root: Path, version: int):
        self.root = Path(root)
        self.version = version
        # one folder per kubelet (a test process may run several clusters)
        self.base = self.root / f"devcluster-{os.getpid()}-{secrets.token_hex(3)}"

    def create(self, name: str, limit: int) -> str:
        """A new cgroup for one container instance with ``limit`` bytes; returns its path.
        Raises OSError."""
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        if self.version == 1:
            (path / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        else:
            (path / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        return str(path)

    def oom_killed(self, path: str) -> bool:
        """Whether the kernel OOM-killed a process of the cgroup at ``path``."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (Path(path) / name).read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def remove(self, path: str) -> None:
        """Remove a container's cgroup once its processes are gone (tries for ~1 s)."""
        for _ in range(20):
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)
        log.warning("devcluster: cannot remove memory cgroup %s", path)

    def close(self) -> None:
        """Remove the kubelet's folder and what is left in it (its containers' processes
        must be gone)."""
        if self.base.is_dir():
            for child in self.base.iterdir():
                if child.is_dir():
                    self.remove(str(child))
        with contextlib.suppress(OSError):
            os.rmdir(self.base)


def probe() -> Cgroups | None:
    """A working :class:`Cgroups` if this process can create a memory cgroup with a limit
    (root, v1 ``/sys/fs/cgroup/memory`` or v2 ``/sys/fs/cgroup`` with the memory
    controller), else None (then the kubelet polls RSS)."""
    if os.geteuid() != 0:
        return None
    candidates: list[tuple[Path, int]] = []
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        candidates.append((v1, 1))
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        candidates.append((v2, 2))
    for root, version in candidates:
        cgroups = Cgroups(root, version)
        _remove_stale(root)
        try:
            if version == 2:
                for folder in (root, cgroups.base):
                    folder.mkdir(exist_ok=True)
                    enabled = (folder / "cgroup.subtree_control").read_text().split()
                    if "memory" not in enabled:
                        (folder / "cgroup.subtree_control").write_text("+memory")
            path = cgroups.create("probe", 64 * 2**20)
            cgroups.remove(path)
            return cgroups
        except OSError as exc:
            log.info("devcluster: no memory cgroup under %s (%s)", root, exc)
            cgroups.close()
    return None


def _remove_stale(root: Path) -> None:
    """Remove the ``devcluster-<pid>-<id>`` folders of kubelets that died without cleaning up
    (SIGKILL): only those whose process is gone, and only empty cgroups (rmdir refuses
    others)."""
    for folder in root.glob("devcluster-*"):
        pid = folder.name.split("-")[1]
        if not pid.isdigit() or int(pid) == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        with contextlib.suppress(OSError):
            for child in folder.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        os.rmdir(child)
            os.rmdir(folder)


def _stat(pid: str) -> tuple[int, int, int] | None:
    """(ppid, session, rss pages) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    try:
        return int(fields[1]), int(fields[3]), int(fields[21])
    except (IndexError, ValueError):
        return None


def session_rss(session: int, exclude: set[int] | None = None) -> int:
    """Bytes resident (RSS) of the processes of ``session``, without ``exclude`` and the
    direct children of the session leader (the sandbox's init); Linux ``/proc``."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(entry)
        if stat is None or stat[1] != session:
            continue
        pid, (ppid, _, rss) = int(entry), stat
        if pid == session or ppid == session or (exclude and pid in exclude):
            continue
        total += rss * page
    return total
