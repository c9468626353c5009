"""A hub-managed service never outlives its hub (no second copy next to a restarted hub).

Why: JupyterHub starts each managed service (``c.JupyterHub.services`` with a ``command``)
with ``Popen(..., start_new_session=True)`` "so that signals are not forwarded"
(``jupyterhub/services/service.py``, ``_ServiceSpawner.start``:
https://github.com/jupyterhub/jupyterhub/blob/5.5.4/jupyterhub/services/service.py). A hub
that stops normally stops them; a hub that is killed (``SIGKILL``, the OOM killer, a crash)
leaves them running in their own sessions, and the hub started next starts a second copy of
each: two queues admitting the same jobs, two cullers, two reconcilers.

What :func:`hold_to_parent` does, first thing in a service's process:

1. remembers its parent (the hub: JupyterHub's ``Popen`` runs in the hub's main thread);
2. on Linux, asks the kernel for ``SIGTERM`` when that parent ends
   (``prctl(PR_SET_PDEATHSIG)``, kept across ``execve``; it fires when the thread that
   started the child ends, which for the hub's main thread is the hub's end:
   https://man7.org/linux/man-pages/man2/PR_SET_PDEATHSIG.2const.html);
3. if the parent is already gone by then (the hub died between ``fork`` and this call), exits;
4. watches the parent in a daemon thread every ``interval`` seconds too, for systems without
   ``prctl`` or where it failed: when its parent changes, it sends itself ``SIGTERM``, and
   ``SIGKILL`` ``kill_after`` seconds later if its own shutdown has not ended it by then (the
   queue's graceful stop was seen to hang for more than 30 s without its hub).

One window is left: a hub that dies between starting the service and this call (the first
fraction of a second of the service's interpreter) leaves the service with its new parent
recorded; call it before a service's heavy imports to keep that short.

It holds wherever the hub runs: on zero-to-jupyterhub the services run in the hub's container
(a restarted hub pod starts a new container, and the old one's processes end with it), and a
hub process killed inside a living container (or on a plain host, under systemd with
``KillMode=process``) takes its services with it. It does nothing outside a hub-managed
service (no ``JUPYTERHUB_SERVICE_NAME`` in the environment), so running a service's module
by hand or in a test is unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["hold_to_parent"]

#: ``prctl`` option number (``<linux/prctl.h>``).
PR_SET_PDEATHSIG = 1
#: Seconds between two looks at the parent by the watching thread.
DEFAULT_INTERVAL = 2.0
#: Seconds an orphaned service gets between SIGTERM and SIGKILL.
DEFAULT_KILL_AFTER = 10.0


def _set_parent_death_signal(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` on Linux; ``True`` when it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def hold_to_parent(
    *,
    env: Mapping[str, str] = os.environ,
    interval: float = DEFAULT_INTERVAL,
    getppid: Callable[[], int] = os.getppid,
    on_orphaned: Callable[[], None] | None = None,
    kill_after: float = DEFAULT_KILL_AFTER,
) -> bool:
    """Tie this process's life to its parent's (see the module docstring).

    Args:
        env: the environment; nothing is done without ``JUPYTERHUB_SERVICE_NAME``.
        interval: seconds between the watching thread's looks at the parent.
        getppid: the parent's pid now (injectable).
        on_orphaned: what to do once the parent is gone; default: ``SIGTERM`` to this
            process (its usual shutdown), then ``SIGKILL`` if it still runs ``kill_after``
            seconds later.
        kill_after: seconds a service gets to stop on its own once its hub is gone.

    Returns:
        ``True`` when this process is now held (a hub-managed service), else ``False``.
    """
    if not env.get("JUPYTERHUB_SERVICE_NAME"):
        return False
    parent = getppid()
    name = env.get("JUPYTERHUB_SERVICE_NAME")

    def orphaned() -> None:
        if on_orphaned is not None:
            on_orphaned()
            return
        print(
            f"llmspawner: service {name}: the hub (pid {parent}) is gone; exiting",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGTERM)
        # A service whose own shutdown hangs without its hub must not stay either.
        time.sleep(kill_after)
        print(
            f"llmspawner: service {name} did not exit within {kill_after:g} s of SIGTERM; "
            "killing it",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGKILL)

    _set_parent_death_signal(signal.SIGTERM)
    if getppid() != parent:  # gone before the kernel could be asked
        threading.Thread(target=orphaned, name="llmspawner-lifeline", daemon=True).start()
        return True

    def watch() -> None:
        while True:
            time.sleep(interval)
            if getppid() != parent:
                orphaned()
                return

    threading.Thread(target=watch, name="llmspawner-lifeline", daemon=True).start()
    return True
