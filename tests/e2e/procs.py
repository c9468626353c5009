"""Processes of a pod of this test's own emulated cluster (its kubelet runs pods as processes).

The emulated kubelet (``devtools/devcluster/kubelet.py``, ``PodWorker._start_and_wait``) starts
each container as one sandbox process in a new session and records it in the pod's status as
``containerStatuses[].containerID = "devcluster://<pid>"``; the sandbox runs the container in
its own PID namespace (``devtools/devcluster/sandbox.py``), so every process of the container,
orphans included (they are re-parented to the namespace's init, the sandbox's child), is a
descendant of that pid. A pod's processes are therefore found from the pod object that this
test's own API server returns, never by a user name or address that another llmspawner stack
on the same machine (someone's ``make dev`` with a user ``alice``) may share.
"""

from __future__ import annotations

from pathlib import Path

CONTAINER_ID_PREFIX = "devcluster://"


def container_pids(pod: dict) -> list[int]:
    """Return the host pids of the running containers (init containers included) of ``pod``.

    ``pod``: a Pod object as the emulated API server returns it (a dict with ``status``).
    A container whose state is not ``running`` or whose ID is not the emulated kubelet's
    (``devcluster://<pid>``) is left out; an empty list when none runs.
    """
    status = pod.get("status") or {}
    pids = []
    for entry in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        cid = entry.get("containerID") or ""
        if "running" in (entry.get("state") or {}) and cid.startswith(CONTAINER_ID_PREFIX):
            pids.append(int(cid[len(CONTAINER_ID_PREFIX) :]))
    return pids


def _table(proc: Path) -> dict[int, tuple[int, str]]:
    """``{pid: (parent pid, state letter)}`` of every process under ``proc``."""
    table = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), fields[0])
        except (OSError, IndexError, ValueError):
            continue
    return table


def descendants(roots: list[int], *, proc: Path = Path("/proc")) -> list[int]:
    """Return ``roots`` and every live descendant of them (by parent pid), zombies left out.

    ``proc``: the proc file system to read (a fake tree in unit tests). Sorted pids.
    """
    table = _table(proc)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [p for p in roots if p in table]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return sorted(p for p in found if table[p][1] != "Z")


def processes_of(pod: dict, *, proc: Path = Path("/proc")) -> dict[int, str]:
    """Return ``{pid: command line}`` of the live processes of ``pod``'s running containers.

    ``pod``: the Pod object from this test's own cluster (``stack.kube().get_pod(...)``).
    The command line has its NUL separators replaced by spaces. Empty when no container
    runs. Processes that ended between the listing and the read are left out.
    """
    found = {}
    for pid in descendants(container_pids(pod), proc=proc):
        try:
            cmdline = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found
