"""llmspawner.lifeline: a hub-managed service ends when its hub dies (issue 13 §5), checked
with real processes (a parent killed with SIGKILL) and with an injected parent pid."""

import os
import signal
import subprocess
import sys
import threading

from devcluster.testing import pid_alive, wait_until
from llmspawner.lifeline import hold_to_parent

#: The "hub": starts the "service" as JupyterHub does (a session of its own), prints its pid,
#: then waits to be killed.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1]], start_new_session=True, env={**__import__("os").environ,
    "JUPYTERHUB_SERVICE_NAME": "test-service"},
)
print(child.pid, flush=True)
time.sleep(120)
"""
SERVICE = """
from llmspawner.lifeline import hold_to_parent
import time
hold_to_parent(interval=0.2)
print("held", flush=True)
time.sleep(120)
"""




def test_a_service_ends_when_its_hub_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, SERVICE], stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        # Held before the parent dies (a hub killed within the service's first instant of
        # Python is the one window left: see llmspawner.lifeline).
        assert parent.stdout.readline() == "held\n"
        assert pid_alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not pid_alive(child), 10, "the service ends with its parent", 0.05)
    finally:
        parent.kill()
        if "child" in locals() and pid_alive(child):
            os.kill(child, signal.SIGKILL)


#: A service whose own SIGTERM handling never ends it (the queue's graceful stop was seen
#: to hang without its hub).
STUBBORN = """
import signal, time
from llmspawner.lifeline import hold_to_parent
signal.signal(signal.SIGTERM, lambda *a: None)
hold_to_parent(interval=0.2, kill_after=0.5)
print("held", flush=True)
time.sleep(120)
"""


def test_a_service_that_ignores_sigterm_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, STUBBORN], stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline() == "held\n"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not pid_alive(child), 10, "the stubborn service is killed", 0.05)
    finally:
        parent.kill()
        if "child" in locals() and pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_nothing_is_done_outside_a_hub_service():
    assert hold_to_parent(env={}) is False


def test_a_parent_already_gone_ends_it_at_once():
    pids = iter([100, 1])
    ended = threading.Event()
    assert hold_to_parent(
        env={"JUPYTERHUB_SERVICE_NAME": "s"},
        getppid=lambda: next(pids),
        on_orphaned=ended.set,
    )
    assert ended.wait(5)


def test_the_watch_notices_a_new_parent_without_prctl():
    ppid = [100]
    ended = threading.Event()
    assert hold_to_parent(
        env={"JUPYTERHUB_SERVICE_NAME": "s"},
        interval=0.01,
        getppid=lambda: ppid[0],
        on_orphaned=ended.set,
    )
    assert not ended.wait(0.05)
    ppid[0] = 1  # reparented: the parent died
    assert ended.wait(5)
