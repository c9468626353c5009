"""After the hub process dies (SIGKILL), no second copy of its managed services runs next to
the new ones (issue 13 §5, second bullet).

JupyterHub starts each managed service in a session of its own, so a killed hub used to leave
its queue, culler, route repair and reconciler running, and the restarted hub started a
second copy of each (two queues admitting the same jobs). Each of them now ends with the hub
that started it (:mod:`llmspawner.lifeline`). The services are found through this stack's
own hub process (its children), never by scanning every process.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from devcluster.testing import pid_alive
from llmspawner_dev.processes import wait_http

from .polling import wait_until

pytestmark = pytest.mark.e2e

#: A managed service's name → what its command line holds.
SERVICES = {
    "llm-queue": "llmspawner.queue",
    "idle-culler": "jupyterhub_idle_culler",
    "route-repair": "llmspawner.routes",
    "pod-reconciler": "llmspawner.reconciler",
}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""




def services_of(hub_pid: int) -> dict[str, list[int]]:
    """The hub's managed services now: name → pids (its direct children)."""
    children = set()
    for task in Path(f"/proc/{hub_pid}/task").iterdir():
        children.update(int(p) for p in (task / "children").read_text().split())
    found: dict[str, list[int]] = {}
    for pid in sorted(children):
        line = _cmdline(pid)
        for name, needle in SERVICES.items():
            if needle in line:
                found.setdefault(name, []).append(pid)
    return found


def test_a_killed_hub_leaves_no_second_copy_of_its_services(stack, timeouts):
    hub = stack.processes["hub"]
    before = services_of(hub.pid)
    assert sorted(before) == sorted(SERVICES), before
    old = [pid for pids in before.values() for pid in pids]

    os.kill(hub.pid, signal.SIGKILL)
    hub.popen.wait(10)
    try:
        wait_until(
            lambda: not [pid for pid in old if pid_alive(pid)], 30, "the killed hub's services end"
        )
    except AssertionError:
        left = {pid: _cmdline(pid) for pid in old if pid_alive(pid)}
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"still running after the hub was killed: {left}") from None

    hub.restart()
    wait_until(
        lambda: sorted(services_of(hub.pid)) == sorted(SERVICES),
        timeouts.stack,
        "the new hub's services run",
    )
    wait_http(f"{stack.hub_url}/hub/health", timeout=timeouts.stack, process=hub)
    wait_http(
        f"{stack.hub_url}/services/llm-queue/api/jobs",
        timeout=timeouts.stack,
        process=hub,
        ok=lambda r: r.status_code == 401,  # the queue's own answer: it runs (once)
    )
    after = services_of(hub.pid)
    assert all(len(pids) == 1 for pids in after.values()), after
    assert not [pid for pid in old if pid_alive(pid)]
