"""Processes of a user's pod on this machine (the emulated kubelet runs pods as processes)."""

from __future__ import annotations

import re
from pathlib import Path


def mentions(blob: bytes, ip: str) -> bool:
    """Whether ``blob`` holds the IP address ``ip`` (not as part of a longer address)."""
    return re.search(rb"(?<![\d.])" + re.escape(ip.encode()) + rb"(?![\d])", blob) is not None


def processes_of(*, pod_ip: str, username: str) -> dict[int, str]:
    """Return ``{pid: command line}`` of the live processes that belong to a user's pod.

    A process belongs to it when its command line or environment holds the pod's IP, or its
    environment has ``JUPYTERHUB_USER=<username>`` (set by the hub for the user's server).
    Zombies (ended, not yet reaped) do not count.
    """
    found = {}
    user_entry = f"JUPYTERHUB_USER={username}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z":
            continue
        if (
            mentions(cmdline, pod_ip)
            or mentions(environ, pod_ip)
            or user_entry in environ.split(b"\0")
        ):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found
