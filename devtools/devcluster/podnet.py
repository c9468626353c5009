"""One network namespace per pod, bridged to this machine (Linux, root + CAP_NET_ADMIN).

The Kubernetes network model (https://kubernetes.io/docs/concepts/services-networking/):
every pod has its own network namespace, shared by all its containers, with its own
loopback and one IP address that every other pod and the node reach without NAT. The
emulated kubelet does what the CNI ``bridge`` plugin does for it
(https://www.cni.dev/plugins/current/main/bridge/):

- one Linux bridge per cluster (``dcbr<6 hex>``), with the cluster's *gateway* address (the
  first of a private ``/22``, picked at random in ``10.0.0.0/8`` among the ranges this
  machine neither has an address or route in nor uses for its DNS servers, so that two
  clusters on one machine, a test run and a ``make dev``, never collide);
- per pod, a new network namespace (``unshare(CLONE_NEWNET)`` in a short-lived thread,
  :meth:`PodNetwork.create`), ``lo`` up, a veth pair: ``eth0`` inside with the pod's IP,
  ``dv<tag><n>`` outside, attached to the bridge. The kubelet keeps the namespace alive by
  an open file descriptor (no holder process: its ``/proc/<tid>/ns/net`` opened before the
  thread ends), which each container's supervisor inherits and ``setns``-es into
  (``sandbox.py``), so all containers of a pod (init containers too) share it; ``kubectl
  exec`` enters it through the container's init (``nsexec.py``) and port-forward opens its
  socket inside it (:func:`socket_in`). When the kubelet dies, even by SIGKILL, the
  descriptor closes and the kernel frees the namespace and its veth pair with the last
  process in it (containers die with the kubelet, ``PR_SET_PDEATHSIG``).
- The bridge's alias records its owner (``devcluster pid=<pid> start=<start time>``):
  :func:`reap_stale` deletes bridges (and their veths) whose owner is gone, at the next
  start, as the dev stack's reaper does for processes.

Pods reach every other pod's IP and the machine at the gateway address (``host_address``:
services the pods use listen there), nothing else: there is **no default route**, since
without NAT (no ``iptables``/``nft`` on the machines this runs on) a packet to the outside
would get no answer and a connection would hang for its whole timeout, where without a
route it fails at once (ENETUNREACH; measured: 3 s timeout vs. immediate). The host reaches
pods by pod IP (the bridge's connected route), as the hub, its proxy and probes need.

Needs the ``ip`` command (iproute2). :func:`unavailable` says why a machine cannot.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import itertools
import json
import logging
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
CAP_NET_ADMIN = 12
#: Pod network modes of ``KubeletConfig.pod_network``.
MODES = ("auto", "isolated", "host")
BRIDGE_PREFIX = "dcbr"
VETH_PREFIX = "dv"
ALIAS_PREFIX = "devcluster"
#: Prefix length of a cluster's pod subnet (1021 pod addresses).
PREFIX_LEN = 22
_BRIDGE_RE = re.compile(rf"^{BRIDGE_PREFIX}([0-9a-f]{{6}})$")
_VETH_RE = re.compile(rf"^{VETH_PREFIX}([0-9a-f]{{6}})[0-9a-f]+$")
_ALIAS_RE = re.compile(rf"^{ALIAS_PREFIX} pid=(\d+) start=(\d+)$")

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class PodNetworkError(Exception):
    """A step of the pod network failed; the message names it and the ``ip`` error."""


def _ip(*args: str, batch: list[str] | None = None, check: bool = True) -> str:
    """Run ``ip ARGS`` (``batch``: ``ip -batch -`` with these lines); return its stdout.

    Raises:
        PodNetworkError: it exited non-zero (``check``); the message has its stderr.
    """
    argv = ["ip", *args] if batch is None else ["ip", *args, "-batch", "-"]
    text = None if batch is None else "\n".join(batch) + "\n"
    try:
        done = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PodNetworkError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        what = " ".join(argv) if batch is None else f"{' '.join(argv)} ({'; '.join(batch)})"
        raise PodNetworkError(f"{what}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def in_new_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread of its own and return its result (or raise its exception):
    a thread that changes its network namespace ends with it, the caller's is untouched."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=target, name="devcluster-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


async def in_own_thread(fn: Callable[[], T]) -> T:
    """`in_new_thread` for a coroutine: ``fn`` in a thread of its own, awaited without
    taking a thread of the event loop's default executor (which other work, e.g. the queue's
    checks in the same process, may keep busy)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=target, name="devcluster-netns", daemon=True).start()
    return await future


def socket_in(netns_fd: int, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket created inside the network namespace ``netns_fd`` (a socket stays in the
    namespace it was created in, whichever thread uses it later), non-blocking.

    Raises:
        OSError: ``setns`` or ``socket`` failed.
    """

    def make() -> socket.socket:
        _setns(netns_fd)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    return in_new_thread(make)


def _start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks after boot), None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_alias(pid: int | None = None) -> str:
    """The alias that names a bridge's owner: ``devcluster pid=<pid> start=<ticks>``."""
    pid = os.getpid() if pid is None else pid
    return f"{ALIAS_PREFIX} pid={pid} start={_start_time(pid) or 0}"


def owner_alive(alias: str) -> bool:
    """Whether the process an `owner_alias` names still runs (same pid and start time)."""
    match = _ALIAS_RE.match(alias or "")
    if not match:
        return False
    return _start_time(int(match.group(1))) == int(match.group(2))


def _links() -> list[dict]:
    return json.loads(_ip("-j", "link", "show") or "[]")


def reap_stale() -> list[str]:
    """Delete the bridges whose owner is gone (a SIGKILLed cluster's) and the veths of
    bridges that no longer exist; return the deleted names. Raises PodNetworkError."""
    links = _links()
    live_tags, dead = set(), []
    for link in links:
        match = _BRIDGE_RE.match(link.get("ifname", ""))
        if not match:
            continue
        if owner_alive(link.get("ifalias", "")):
            live_tags.add(match.group(1))
        else:
            dead.append(link["ifname"])
    for link in links:
        name = link.get("ifname", "").split("@")[0]
        match = _VETH_RE.match(name)
        if match and match.group(1) not in live_tags:
            dead.append(name)
    if dead:
        _ip("-force", batch=[f"link del {name}" for name in dead], check=False)
        log.info("devcluster pod network: removed %s left by a cluster that is gone", dead)
    return dead


def _resolv_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        with open(path) as f:
            return [
                line.split()[1]
                for line in f
                if line.startswith("nameserver") and len(line.split()) > 1
            ]
    except OSError:
        return []


def used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this machine uses: its addresses' networks, its routes (but the
    default route), its DNS servers (``/etc/resolv.conf``)."""
    nets = []
    for entry in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
        for info in entry.get("addr_info", []):
            with_prefix = f"{info['local']}/{info.get('prefixlen', 32)}"
            nets.append(ipaddress.ip_network(with_prefix, strict=False))
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            try:
                nets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
            except ValueError:
                continue
    for server in _resolv_nameservers():
        try:
            nets.append(ipaddress.ip_network(f"{server}/32"))
        except ValueError:
            continue
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def pick_subnet(used: list[ipaddress.IPv4Network], rng: random.Random | None = None):
    """A random ``10.A.B.0/22`` that overlaps none of ``used``.

    Raises:
        PodNetworkError: 200 draws all overlapped.
    """
    rng = rng or random.Random()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randint(16, 254)}.{rng.randrange(0, 256, 4)}.0/22")
        if not any(net.overlaps(u) for u in used):
            return net
    raise PodNetworkError("no free 10.x.y.0/22 for the pod network")


def unavailable() -> str | None:
    """Why this machine cannot give pods their own network namespace, or None if it can
    (root, CAP_NET_ADMIN, the ``ip`` command; the bridge and veth kinds are tried by
    `PodNetwork.start`)."""
    if os.geteuid() != 0:
        return f"the kubelet runs as uid {os.geteuid()}, not root"
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
        if not caps >> CAP_NET_ADMIN & 1:
            return "the kubelet lacks CAP_NET_ADMIN"
    except (OSError, StopIteration, ValueError):
        return "cannot read the kubelet's capabilities"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


@dataclass
class PodNamespace:
    """A pod's network namespace: ``fd`` keeps it alive (inherited by the containers'
    supervisors), ``veth`` its host-side interface, ``ip`` its address."""

    fd: int
    veth: str
    ip: str


class PodNetwork:
    """A cluster's bridge and its pods' namespaces (see the module docstring).

    ``subnet``: the pods' network (``"10.1.2.0/22"``; empty: a free one at random).
    Construction does no I/O; `start` makes the bridge, `close` removes it.
    """

    def __init__(self, subnet: str = ""):
        self._subnet = subnet
        self.tag = secrets.token_hex(3)
        self.bridge = f"{BRIDGE_PREFIX}{self.tag}"
        self.network: ipaddress.IPv4Network | None = None
        self.gateway = ""
        self._numbers = itertools.count(1)  # veth numbers (next() is atomic: threads call create)
        self._veths: set[str] = set()
        self._host_fd: int | None = None

    def start(self) -> str:
        """Remove stale bridges (`reap_stale`), pick the subnet, create the bridge with the
        gateway address (the first address) and its owner alias; return the gateway.

        Raises:
            PodNetworkError: a step failed (nothing of this network is left then).
        """
        reap_stale()
        if self._subnet:
            self.network = ipaddress.ip_network(self._subnet, strict=False)
        else:
            self.network = pick_subnet(used_networks())
        self.gateway = str(self.network.network_address + 1)
        try:
            _ip(
                batch=[
                    f"link add name {self.bridge} type bridge",
                    f'link set dev {self.bridge} alias "{owner_alias()}"',
                    f"addr add {self.gateway}/{self.network.prefixlen} dev {self.bridge}",
                    f"link set dev {self.bridge} up",
                ]
            )
        except PodNetworkError:
            _ip("link", "del", self.bridge, check=False)
            raise
        self._host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        log.info(
            "devcluster pod network: bridge %s, pods in %s, host at %s",
            self.bridge,
            self.network,
            self.gateway,
        )
        return self.gateway

    def create(self, ip: str) -> PodNamespace:
        """A new network namespace for a pod with address ``ip`` (from `network`): ``lo`` up,
        ``eth0`` with ``ip``, its veth peer on the bridge. Blocks ~30-50 ms (two ``ip``
        runs; it runs them in a thread of its own, `in_new_thread`): from a coroutine, call
        it through `in_own_thread`.

        Raises:
            PodNetworkError: a step failed (the namespace and veth are gone then).
        """
        assert self.network is not None and self._host_fd is not None, "start() first"
        veth = f"{VETH_PREFIX}{self.tag}{next(self._numbers):x}"
        host_fd, prefix = self._host_fd, self.network.prefixlen

        def make() -> int:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise PodNetworkError(f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            tid = threading.get_native_id()
            fd = os.open(f"/proc/self/task/{tid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _ip(
                    batch=[
                        "link set dev lo up",
                        f"link add eth0 type veth peer name {veth} netns {os.getpid()}",
                        f"addr add {ip}/{prefix} dev eth0",
                        "link set dev eth0 up",
                    ]
                )
                _setns(host_fd)  # this thread back in the host's namespace, for the bridge
                _ip(batch=[f"link set dev {veth} master {self.bridge}", f"link set dev {veth} up"])
            except BaseException:
                os.close(fd)
                raise
            return fd

        try:
            fd = in_new_thread(make)
        except (OSError, PodNetworkError) as exc:
            _ip("link", "del", veth, check=False)
            raise PodNetworkError(f"pod network namespace for {ip}: {exc}") from None
        self._veths.add(veth)
        return PodNamespace(fd=fd, veth=veth, ip=ip)

    def release(self, ns: PodNamespace) -> None:
        """Close the pod's namespace: its veth pair deleted (the namespace itself goes with
        its last process). Blocks ~10 ms."""
        os.close(ns.fd)
        self._veths.discard(ns.veth)
        _ip("link", "del", ns.veth, check=False)

    def close(self) -> None:
        """Delete the bridge and the veths still attached (idempotent)."""
        names = [*sorted(self._veths), self.bridge]
        self._veths.clear()
        _ip("-force", batch=[f"link del {n}" for n in names], check=False)
        if self._host_fd is not None:
            os.close(self._host_fd)
            self._host_fd = None
