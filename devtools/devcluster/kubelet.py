"""The kubelet: runs bound pods' containers as local processes and reports their status.

One kubelet serves every node. For each pod bound to a node (``spec.nodeName``) it:

- gives the pod its own network (``KubeletConfig.pod_network``): in ``isolated`` mode a
  network namespace of its own, shared by its containers, with ``lo`` and an address from
  the cluster's private subnet on a host bridge (`podnet`; the host reaches pods by pod IP,
  pods reach the host at ``host_address``, the bridge's gateway); in ``host`` mode a
  loopback address of its own (``127.A.B.1`` upward, A.B random per cluster) in the host's
  namespace, so servers of several pods share a port but every pod reaches every other
  pod's loopback-bound ports. ``auto`` (the default): isolated where the kubelet can
  (root, CAP_NET_ADMIN, ``ip``, bridge and veth), else host with one warning. Either way
  the address is ``status.podIP``/``podIPs``;
- prepares the volumes (`containers.prepare_volumes`), runs the init containers one after
  the other, then the containers, each through `sandbox.py` (private mount/PID namespace,
  volumes at their mountPath, nothing outlives it);
- reports phase (Pending → Running → Succeeded/Failed), ``containerStatuses`` (``ready``
  once started, or once an ``httpGet``/``tcpSocket`` readinessProbe passes; ``started``;
  ``terminated.reason`` Completed/Error/StartError with ``exitCode``), conditions
  (PodScheduled, Initialized, ContainersReady, Ready), restarts per ``restartPolicy`` with a
  back-off, and Events (Pulled, Created, Started, Killing, BackOff, Failed, FailedMount);
- keeps each container instance's output (stdout+stderr) for ``pods/<name>/log``, one
  timestamped record per line (D: `podlogs`; ``--previous`` reads the instance before);
- on deletion (and eviction, `disruption`): SIGTERM to the container, SIGKILL to what is left
  after the grace period, writes the final status (phase Failed unless every container
  exited 0; ``terminated`` exitCode 143 after SIGTERM, 137 after SIGKILL, reason Error; a
  ``DisruptionTarget`` condition set before stays), then removes the pod object;
- ``resources.limits.memory`` (`memory`): the container in its own memory cgroup (root) or
  its processes' RSS polled; over the limit it is killed, ``terminated: {reason: OOMKilled,
  exitCode: 137}``.

Pod lifecycle rules: https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/
Identity: when the kubelet runs as root (``id -u`` is 0, as the sandbox's namespaces need),
each container's process runs as its ``runAsUser``/``runAsGroup`` (container's over pod's;
without ``runAsGroup`` the uid's primary group, else 0, as containerd), with
``supplementalGroups`` and ``fsGroup`` as supplementary groups and ``no_new_privs`` for
``allowPrivilegeEscalation: false``; emptyDir/configMap/secret volumes are given to the
``fsGroup`` (:func:`containers.process_identity`, :func:`containers.prepare_volumes`);
``runAsNonRoot`` with ``runAsUser: 0`` fails with CreateContainerConfigError. Without
``runAsUser`` a process runs as its image's user (``KubeletConfig.image_config``; checked
against ``runAsNonRoot``), or the kubelet's own user for an image whose user is not known
there (unchecked: ``isolation``'s docstring). When the kubelet is *not* root, no identity is
applied: every process runs as the kubelet's user, as before (logged once).

E: each pod gets its own ``/etc/hosts`` (its hostname and FQDN on its IP, ``hostAliases``) and
hostname; containers get containerd's default capability set with ``drop``/``add`` applied
(all for ``privileged``; none for a non-root user), ``readOnlyRootFilesystem``, and, without
``workingDir``, a fresh working folder at the image's WORKDIR; the image's USER applies when
the pod sets no ``runAsUser`` (`isolation`, ``KubeletConfig.image_config``). The kubelet's
data folder (PVCs, pods, kubeconfig, TLS keys) is hidden from every container.

Not emulated: liveness/startup probes, CPU limits, seccomp profiles, emptyDir ``sizeLimit``,
image pulls; in the pod network: NetworkPolicy, Services' virtual IPs, egress beyond the
host (no NAT, no default route: `podnet`), IPv6, hostNetwork/hostPort (``hostNetwork: true``
pods get a namespace of their own like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from . import containers, isolation, memory, podlogs, podnet
from .controller import reconcile_loop
from .events import record_event
from .resources import PODS
from .scheduler import set_condition
from .store import ApiError, Event, Store, now_iso

log = logging.getLogger(__name__)
#: The folder that holds ``devtools/`` (this checkout, whose editable install the "images"
#: import): kept visible in a container even under a volume mounted above it (sandbox).
CHECKOUT = Path(__file__).resolve().parents[2]

SANDBOX = str(Path(__file__).with_name("sandbox.py"))
START_ERROR = 128
NAMESPACE_FAILURE = "cannot create the container's mount/PID namespaces"
#: N: the environment variable that sets ``KubeletConfig.pod_network``'s default, and that
#: default without it.
POD_NETWORK_ENV = "DEVCLUSTER_POD_NETWORK"
DEFAULT_POD_NETWORK = "auto"


@dataclass
class KubeletConfig:
    """Timing knobs and environment of the kubelet (seconds).

    ``images`` maps image → local environment prefix (``"*"``: any other image).
    ``pass_env`` names variables copied from the devcluster's environment into every
    container; ``extra_env`` are set in every container (both before the pod's own env).
    """

    images: dict[str, str] = field(default_factory=lambda: {"*": sys.prefix})
    interval: float = 1.0
    probe_period: float = 0.5
    restart_backoff: float = 1.0
    max_restart_backoff: float = 30.0
    retry_interval: float = 1.0
    shutdown_grace: float = 2.0
    #: Seconds between two memory polls of a container with a memory limit, where the kubelet
    #: cannot use cgroups (`memory.session_rss`).
    memory_period: float = 0.5
    #: First pod address in ``host`` mode; empty: a random ``127.A.B.1`` per cluster, so that
    #: two clusters on one machine (a dev stack and a test run) do not hand out the same
    #: addresses.
    first_ip: str = ""
    #: N: ``"auto"`` | ``"isolated"`` | ``"host"`` (`podnet.MODES`; the module docstring):
    #: isolated gives each pod its own network namespace, host shares this machine's.
    #: Default: ``$DEVCLUSTER_POD_NETWORK``, else ``"auto"``.
    pod_network: str = field(
        default_factory=lambda: os.environ.get(POD_NETWORK_ENV) or DEFAULT_POD_NETWORK
    )
    #: N: the pods' subnet in isolated mode (``"10.1.4.0/22"``); empty: a free one at random.
    pod_subnet: str = ""
    #: (R: no HOME: a container gets its image's, `isolation.container_home`)
    pass_env: tuple[str, ...] = (
        "LANG",
        "LC_ALL",
        "TZ",
        "HF_HOME",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    )
    extra_env: dict[str, str] = field(default_factory=dict)
    #: E: image → ``{"user": "uid:gid" | None, "workingDir": path}``, what its Dockerfile's
    #: USER and WORKDIR would say (`isolation.image_config`; looked up as ``images``).
    image_config: dict[str, dict] = field(
        default_factory=lambda: {k: dict(v) for k, v in isolation.DEFAULT_IMAGE_CONFIG.items()}
    )


class IpPool:
    """Addresses for pods: from ``first`` upward, skipping those in use and any
    ``x.y.z.0``/``x.y.z.255``, up to ``last`` (default: loopback addresses up to
    ``127.255.255.254``); raises RuntimeError when they are exhausted. ``network`` (an
    ``ipaddress.IPv4Network``, isolated mode): from its third address (the second is the
    gateway) to the one before its broadcast address."""

    def __init__(self, first: str = "", network: ipaddress.IPv4Network | None = None):
        self._last = int(ipaddress.IPv4Address("127.255.255.254"))
        if network is not None:
            first = str(network.network_address + 2)
            self._last = int(network.broadcast_address) - 1
        if not first:
            first = f"127.{random.randint(16, 254)}.{random.randint(0, 255)}.1"
        self._next = int(ipaddress.IPv4Address(first))
        self._first = self._next
        self._used: set[int] = set()

    def allocate(self) -> str:
        """A free address, as a string."""
        last = self._last
        for _ in range(last - self._first + 1):
            candidate = self._next
            self._next = self._next + 1 if self._next < last else self._first
            if candidate in self._used or candidate % 256 in (0, 255):
                continue
            self._used.add(candidate)
            return str(ipaddress.IPv4Address(candidate))
        raise RuntimeError("no free loopback address for a pod")

    def release(self, address: str) -> None:
        """Give an address back."""
        self._used.discard(int(ipaddress.IPv4Address(address)))


class ContainerRun:
    """One container of a pod: spec, current state and its running process."""

    def __init__(self, spec: dict, init: bool):
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.restart_count = 0
        self.state: dict = {
            "waiting": {"reason": "PodInitializing" if init else "ContainerCreating"}
        }
        self.last_state: dict = {}
        self.ready = False
        self.started = False
        self.done = False
        self.exit_code: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path: Path | None = None
        self.container_id = ""
        self.cgroup = ""  # this instance's memory cgroup (memory.Cgroups), if any
        self.oom_killed = False
        self.log_writer: podlogs.LogWriter | None = None  # D: this instance's output

    def status(self) -> dict:
        """The ``containerStatuses`` entry."""
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": self.container_id,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }


def _port_number(port: object, spec: dict) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)  # type: ignore[arg-type]
    for p in spec.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"unknown named port {port!r}")


async def probe_once(probe: dict, spec: dict, pod_ip: str, timeout: float) -> bool:
    """Run an ``httpGet`` or ``tcpSocket`` probe once; other kinds count as success.

    https://kubernetes.io/docs/tasks/configure-pod-container/configure-liveness-readiness-startup-probes/
    """
    try:
        if "httpGet" in probe:
            hg = probe["httpGet"]
            host = hg.get("host") or pod_ip
            port = _port_number(hg.get("port", 80), spec)
            path = hg.get("path") or "/"
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            try:
                request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                for header in hg.get("httpHeaders") or []:
                    request += f"{header['name']}: {header['value']}\r\n"
                writer.write((request + "\r\n").encode())
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), timeout)
            finally:
                writer.close()
            parts = line.split()
            return len(parts) >= 2 and 200 <= int(parts[1]) < 400
        if "tcpSocket" in probe:
            port = _port_number(probe["tcpSocket"].get("port"), spec)
            host = probe["tcpSocket"].get("host") or pod_ip
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
            return True
        return True
    except (OSError, ValueError, asyncio.TimeoutError):
        return False


class PodWorker:
    """Runs one pod (by uid) from start to removal."""

    def __init__(self, kubelet: Kubelet, pod: dict):
        self.kubelet = kubelet
        self.store = kubelet.store
        self.uid = pod["metadata"]["uid"]
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.ip = kubelet.ips.allocate()
        #: N: the pod's network namespace (isolated mode; made by `run`), else None.
        self.netns: podnet.PodNamespace | None = None
        self.dir = kubelet.data_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        spec = pod.get("spec") or {}
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.inits = [ContainerRun(c, True) for c in spec.get("initContainers") or []]
        self.containers = [ContainerRun(c, False) for c in spec.get("containers") or []]
        self.initialized = not self.inits
        self.failure: tuple[str, str] | None = None  # (reason, message) of a pod-level failure
        self.init_failed = False
        self.start_time = now_iso()
        self.stopping = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.terminating: asyncio.Task | None = None

    # -- status ----------------------------------------------------------------------------

    def pod(self) -> dict | None:
        """The stored pod if it is still this pod (same uid), else None."""
        pod = self.store.peek(PODS, self.namespace, self.name)
        return pod if pod and pod["metadata"]["uid"] == self.uid else None

    def phase(self) -> str:
        """The pod phase from the container states."""
        if self.failure or self.init_failed:
            return "Failed"
        if not self.initialized:
            return "Pending"
        if all(c.done for c in self.containers):
            return "Succeeded" if all(c.exit_code == 0 for c in self.containers) else "Failed"
        if any(c.started or c.restart_count or c.done for c in self.containers):
            return "Running"
        return "Pending"

    def publish(self) -> None:
        """Write the current status into the stored pod."""
        phase = self.phase()
        ready = phase == "Running" and all(c.ready for c in self.containers)
        now = now_iso()

        def change(pod: dict) -> None:
            if pod["metadata"]["uid"] != self.uid:
                return
            status = pod.setdefault("status", {})
            status.update(
                {
                    "phase": phase,
                    "hostIP": self.kubelet.host_address,
                    "hostIPs": [{"ip": self.kubelet.host_address}],
                    "podIP": self.ip,
                    "podIPs": [{"ip": self.ip}],
                    "startTime": self.start_time,
                    "containerStatuses": [c.status() for c in self.containers],
                }
            )
            if self.inits:
                status["initContainerStatuses"] = [c.status() for c in self.inits]
            if self.failure:
                status["reason"], status["message"] = self.failure
            terminal = phase in ("Succeeded", "Failed")
            for type_, ok in (
                ("PodReadyToStartContainers", not terminal),
                ("Initialized", self.initialized),
                ("ContainersReady", ready),
                ("Ready", ready),
            ):
                cond = {
                    "type": type_,
                    "status": "True" if ok else "False",
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                }
                if not ok and type_ in ("ContainersReady", "Ready"):
                    cond["reason"] = "PodCompleted" if terminal else "ContainersNotReady"
                if not ok and type_ == "Initialized":
                    cond["reason"] = "ContainersNotInitialized"
                set_condition(pod, cond)

        self.store.mutate(PODS, self.namespace, self.name, change)

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        """Record an Event about this pod."""
        pod = self.pod()
        if pod is not None:
            record_event(
                self.store, pod, reason, message, type_, "kubelet", pod["spec"].get("nodeName")
            )

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Prepare volumes, run init containers, then the containers, until all are done."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.publish()
        if self.kubelet.network is not None and not await self._create_netns():
            return
        sources = await self._prepare_volumes()
        if sources is None:
            return
        for run in self.inits:
            await self._run_container(run, sources)
            if self.stopping.is_set() or run.exit_code != 0:
                self.init_failed = not self.stopping.is_set()
                self.publish()
                return
        self.initialized = True
        self.publish()
        await asyncio.gather(*(self._run_container(c, sources) for c in self.containers))
        self.publish()

    async def _create_netns(self) -> bool:
        """N: the pod's network namespace (`podnet.PodNetwork.create`), retried every
        ``retry_interval`` with a FailedCreatePodSandBox event; False once the pod is gone
        or stopping."""
        network = self.kubelet.network
        assert network is not None
        while not self.stopping.is_set():
            if self.pod() is None:
                return False
            try:
                netns = await podnet.in_own_thread(lambda: network.create(self.ip))
            except podnet.PodNetworkError as exc:
                self.event(
                    "FailedCreatePodSandBox",
                    f"Failed to create pod sandbox: failed to set up the pod network: {exc}",
                    "Warning",
                )
                await self._sleep(self.kubelet.config.retry_interval)
                continue
            if self.stopping.is_set():
                network.release(netns)
                return False
            self.netns = netns
            return True
        return False

    async def _prepare_volumes(self) -> dict[str, str] | None:
        lookup = self.store.peek
        while not self.stopping.is_set():
            pod = self.pod()
            if pod is None:
                return None
            try:
                return containers.prepare_volumes(
                    pod,
                    self.kubelet.data_dir,
                    self.dir,
                    lookup,
                    manage_ownership=self.kubelet.as_root,
                    projected=self.kubelet.projected,  # R: ServiceAccount token volume
                )
            except (containers.VolumeError, OSError) as exc:
                self.event("FailedMount", f"MountVolume.SetUp failed: {exc}", "Warning")
            await self._sleep(self.kubelet.config.retry_interval)
        return None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def _will_restart(self, run: ContainerRun, code: int) -> bool:
        if self.stopping.is_set() or self.failure:
            return False
        if run.init:
            return self.restart_policy != "Never" and code != 0
        if self.restart_policy == "Always":
            return True
        return self.restart_policy == "OnFailure" and code != 0

    async def _run_container(self, run: ContainerRun, sources: dict[str, str]) -> None:
        cfg = self.kubelet.config
        backoff = cfg.restart_backoff
        while not self.stopping.is_set():
            pod = self.pod()
            if pod is None:
                return
            try:
                spec_path = self._write_spec(pod, run, sources)
            except (containers.ContainerConfigError, containers.VolumeError, KeyError) as exc:
                message = str(exc) if not isinstance(exc, KeyError) else f"no image mapping: {exc}"
                run.state = {
                    "waiting": {"reason": "CreateContainerConfigError", "message": message}
                }
                self.publish()
                self.event("Failed", f"Error: {message}", "Warning")
                await self._sleep(cfg.retry_interval)
                continue
            code = await self._start_and_wait(run, spec_path)
            if code is None:
                return
            if not self._will_restart(run, code):
                run.done = True
                self.publish()
                return
            run.last_state, run.restart_count = run.state, run.restart_count + 1
            run.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {backoff:g}s restarting failed container={run.name} "
                    f"pod={self.name}_{self.namespace}({self.uid})",
                }
            }
            self.publish()
            self.event(
                "BackOff",
                "Back-off restarting failed container "
                f"{run.name} in pod {self.name}_{self.namespace}({self.uid})",
                "Warning",
            )
            await self._sleep(backoff)
            backoff = min(backoff * 2, cfg.max_restart_backoff)

    def _write_spec(self, pod: dict, run: ContainerRun, sources: dict[str, str]) -> Path:
        cfg = self.kubelet.config
        prefix = containers.resolve_prefix(run.spec.get("image", ""), cfg.images)
        base = {k: os.environ[k] for k in cfg.pass_env if k in os.environ}
        base.update(self.kubelet.base_env)
        base.update(cfg.extra_env)
        env = containers.build_env(pod, run.spec, self.store.peek, self.ip, prefix, base)
        argv = containers.build_argv(run.spec, env)
        mounts = containers.container_mounts(run.spec, sources)
        user = containers.process_identity(pod, run.spec)
        traversable: list[str] = []
        if user is not None and not self.kubelet.as_root:
            self.kubelet.note_not_root()
            user = None
        instance = f"{run.name}-{run.restart_count}"
        # E: /etc/hosts, capabilities, the image's user and working folder (devcluster.isolation)
        extra = isolation.container_setup(
            pod,
            run.spec,
            user=user,
            pod_ips=[self.ip],
            pod_dir=self.dir,
            instance=instance,
            images=cfg.image_config,
            as_root=self.kubelet.as_root,
        )
        user = extra["user"]
        mounts += extra["mounts"]
        env.setdefault("HOME", extra["home"])  # R: HOME as the runtime sets it (isolation)
        if env.get("HOSTNAME") == self.name:
            env["HOSTNAME"] = extra["hostname"]
        ids = user or {"uid": None, "gid": None, "groups": []}
        if ids["uid"] not in (None, 0) or isolation.needs_traversable(extra["capabilities"]):
            python = os.path.realpath(os.path.join(prefix, "bin", "python"))
            traversable = containers.untraversable(
                [prefix, os.path.realpath(prefix), os.path.dirname(python)],
                os.geteuid() if ids["uid"] is None else ids["uid"],
                {g for g in [ids["gid"], *ids["groups"]] if g is not None},
            )
        try:
            limit = memory.memory_limit(run.spec)
        except ValueError as exc:
            raise containers.ContainerConfigError(str(exc)) from None
        run.cgroup = ""
        cgroups = self.kubelet.cgroups()
        if limit is not None and cgroups is not None:
            try:
                run.cgroup = cgroups.create(f"{self.uid}_{instance}", limit)
            except OSError as exc:
                raise containers.ContainerConfigError(f"memory cgroup: {exc}") from None
        run.log_path = self.dir / "logs" / f"{instance}.log"
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec = {
            "argv": argv,
            "env": env,
            "cwd": extra["cwd"],
            "hostname": extra["hostname"],
            "mounts": mounts,
            "hide": [str(self.kubelet.data_dir)],  # E: its pvc/, pods/, kubeconfig, tls/
            "error_file": str(self.dir / f"{instance}.error"),
            "parent_pid": os.getpid(),
            "user": user,
            "traversable": traversable,
            # the image's files stay visible under a volume mounted above them (sandbox)
            "image_paths": [prefix, os.path.realpath(prefix), str(CHECKOUT)],
            "cgroup": run.cgroup,
            "capabilities": extra["capabilities"],  # E
            "read_only_root": extra["read_only_root"],  # E
            # N: the pod's network namespace, inherited by the supervisor (pass_fds)
            "netns_fd": self.netns.fd if self.netns is not None else None,
        }
        path = self.dir / f"{instance}.json"
        path.write_text(json.dumps(spec))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec["error_file"])
        return path

    async def _start_and_wait(self, run: ContainerRun, spec_path: Path) -> int | None:
        assert run.log_path is not None
        if run.restart_count == 0:
            self.event(
                "Pulled", f'Container image "{run.spec.get("image")}" already present on machine'
            )
        # D: output as timestamped records (devcluster.podlogs); ``tty: true``: a terminal
        tty = bool(run.spec.get("tty"))
        logfd, pipe_w = os.openpty() if tty else os.pipe()
        stdin = asyncio.subprocess.PIPE if run.spec.get("stdin") else subprocess.DEVNULL
        try:
            run.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                SANDBOX,
                str(spec_path),
                stdin=pipe_w if tty else stdin,
                stdout=pipe_w,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(self.netns.fd,) if self.netns is not None else (),  # N
            )
        except BaseException:
            os.close(logfd)
            raise
        finally:
            os.close(pipe_w)
        run.log_writer = podlogs.LogWriter(run.log_path, logfd, tty=tty)
        run.log_writer.start()
        started_at = now_iso()
        run.container_id = f"devcluster://{run.proc.pid}"
        run.state = {"running": {"startedAt": started_at}}
        run.started = True
        probe = run.spec.get("readinessProbe")
        run.ready = probe is None and not run.init
        self.publish()
        self.event("Created", f"Created container {run.name}")
        self.event("Started", f"Started container {run.name}")
        prober = None
        if probe is not None and not run.init:
            prober = asyncio.create_task(self._probe(run, probe))
        run.oom_killed = False
        poller = None
        limit = memory.memory_limit(run.spec)
        if limit is not None and not run.cgroup:
            poller = asyncio.create_task(self._poll_memory(run, limit))
        code = await run.proc.wait()
        await run.log_writer.finish()
        if code < 0:  # the supervisor itself was killed (SIGKILL after the grace period)
            code = 128 - code
        for task in (prober, poller):
            if task is not None:
                task.cancel()
        if run.cgroup:
            cgroups = self.kubelet.cgroups()
            if cgroups is not None:
                run.oom_killed = code != 0 and cgroups.oom_killed(run.cgroup)
                cgroups.remove(run.cgroup)
        run.ready, run.started, run.exit_code = False, False, code
        error_file = spec_path.with_suffix(".error")
        message = error_file.read_text().strip() if error_file.exists() else ""
        reason = "StartError" if message else ("Completed" if code == 0 else "Error")
        if run.oom_killed and not message:
            reason = "OOMKilled"
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": now_iso(),
            "containerID": run.container_id,
        }
        if message:
            terminated["message"] = message
            self.event("Failed", f"Error: {message}", "Warning")
            if NAMESPACE_FAILURE in message:
                self.failure = ("StartError", message)
        run.state = {"terminated": terminated}
        return code

    async def _poll_memory(self, run: ContainerRun, limit: int) -> None:
        """Without cgroups: SIGKILL the container when its processes' RSS is over
        ``limit`` bytes (`memory.session_rss`, every ``memory_period`` seconds)."""
        assert run.proc is not None
        pid = run.proc.pid
        while run.proc.returncode is None:
            used = await asyncio.to_thread(memory.session_rss, pid)
            if used > limit and run.proc.returncode is None:
                log.info(
                    "devcluster pod %s/%s container %s: %d bytes over its limit %d: killed",
                    self.namespace,
                    self.name,
                    run.name,
                    used,
                    limit,
                )
                run.oom_killed = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                return
            await asyncio.sleep(self.kubelet.config.memory_period)

    async def _probe(self, run: ContainerRun, probe: dict) -> None:
        cfg = self.kubelet.config
        period = min(float(probe.get("periodSeconds", 10)), cfg.probe_period)
        timeout = float(probe.get("timeoutSeconds", 1))
        successes = failures = 0
        await asyncio.sleep(min(float(probe.get("initialDelaySeconds", 0)), cfg.probe_period))
        while True:
            ok = await probe_once(probe, run.spec, self.ip, timeout)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if ok and successes >= int(probe.get("successThreshold", 1)) and not run.ready:
                run.ready = True
                self.publish()
            elif not ok and failures >= int(probe.get("failureThreshold", 3)) and run.ready:
                run.ready = False
                self.publish()
            await asyncio.sleep(period)

    # -- stopping --------------------------------------------------------------------------

    def running(self) -> list[ContainerRun]:
        """The container runs whose process has not exited."""
        return [
            r
            for r in self.inits + self.containers
            if r.proc is not None and r.proc.returncode is None
        ]

    async def kill(self, grace: float) -> None:
        """SIGTERM every container process, SIGKILL what is left after ``grace`` seconds."""
        self.stopping.set()
        procs = [r.proc for r in self.running() if r.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        if procs and grace > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), grace)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if procs:
            await asyncio.gather(*(p.wait() for p in procs))
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.task, 5)

    async def terminate(self, grace: float) -> None:
        """Graceful deletion: Killing events, `kill`, then remove the pod object."""
        for run in self.running():
            self.event("Killing", f"Stopping container {run.name}")
        await self.kill(grace)
        pod = self.pod()
        if pod is not None:
            self.store.remove(PODS, self.namespace, self.name)

    def cleanup(self) -> None:
        """Release the network namespace (N), the IP and the pod's folder (logs, emptyDir,
        configMap/secret files)."""
        self.release_netns()
        self.kubelet.ips.release(self.ip)
        shutil.rmtree(self.dir, ignore_errors=True)

    def release_netns(self) -> None:
        """N: close the pod's network namespace and delete its veth (idempotent)."""
        netns, self.netns = self.netns, None
        if netns is None:
            return
        if self.kubelet.network is not None:
            self.kubelet.network.release(netns)
        else:  # after the kubelet's shutdown: its bridge and veths are gone already
            os.close(netns.fd)

    async def open_connection(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """N: a TCP connection to ``port`` of this pod as the kubelet's port-forward makes it:
        to ``localhost`` inside the pod's network namespace, else (host mode, or nothing
        listens on 127.0.0.1 there) to the pod IP. Raises OSError (ConnectionRefusedError,
        ...)."""
        if self.netns is None:
            return await asyncio.open_connection(self.ip, port)
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        make_socket = functools.partial(podnet.socket_in, self.netns.fd)
        for host in ("127.0.0.1", self.ip):
            sock = await podnet.in_own_thread(make_socket)
            try:
                await loop.sock_connect(sock, (host, port))
            except OSError as exc:
                sock.close()
                last = exc
                continue
            return await asyncio.open_connection(sock=sock)
        assert last is not None
        raise last

    # -- logs ------------------------------------------------------------------------------

    async def stream_log(
        self, container: str, follow: bool, tail_lines: int | None, options=None
    ) -> AsyncIterator[bytes]:
        """The log of the container's current instance (``options.previous``: the one
        before), then (``follow``) what it writes until it exits, per ``options``
        (`podlogs.LogOptions`; default: ``follow``/``tail_lines`` alone). Raises `ApiError`
        400 if it has not started yet (or has no previous instance)."""
        opts = options or podlogs.LogOptions(follow=follow, tail_lines=tail_lines)
        run = next((r for r in self.inits + self.containers if r.name == container), None)
        if opts.previous:  # D: the instance before the last restart
            path = None
            if run is not None and run.log_path is not None and run.restart_count > 0:
                path = run.log_path.with_name(f"{run.name}-{run.restart_count - 1}.log")
            if path is None or not path.exists():
                raise ApiError(
                    400,
                    "BadRequest",
                    f'previous terminated container "{container}" in pod "{self.name}" not found',
                )
            return podlogs.read_log(path, opts, lambda: True)
        if run is None or run.log_path is None or not run.log_path.exists():
            reason = "ContainerCreating"
            if run is not None and "waiting" in run.state:
                reason = run.state["waiting"].get("reason", reason)
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{self.name}" is waiting to start: {reason}',
            )
        path, proc, writer = run.log_path, run.proc, run.log_writer

        def ended() -> bool:  # the output's end is in the file once its writer is done
            if writer is not None and writer.task is not None:
                return writer.task.done()
            return proc is None or proc.returncode is not None or self.stopping.is_set()

        return podlogs.read_log(path, opts, ended)


class Kubelet:
    """Starts a `PodWorker` for every bound pod and stops it when the pod is deleted."""

    def __init__(self, store: Store, data_dir: Path, config: KubeletConfig | None = None):
        self.store = store
        self.data_dir = Path(data_dir)
        self.config = config or KubeletConfig()
        self.ips = IpPool(self.config.first_ip)
        #: N: the pods' bridge in isolated mode (`start_network`), else None.
        self.network: podnet.PodNetwork | None = None
        #: N: where pods reach this machine: the bridge's gateway (isolated) or 127.0.0.1.
        self.host_address = "127.0.0.1"
        self.workers: dict[str, PodWorker] = {}
        self.base_env: dict[str, str] = {}
        #: R: writes ``projected`` volumes (`devcluster.authn.Authenticator.projected_files`).
        self.projected = None
        #: Whether pod identities are applied (the kubelet runs as root; see the module
        #: docstring). Tests may set it to ``False`` to see the non-root behaviour.
        self.as_root = os.geteuid() == 0
        self._noted_not_root = False
        self._cgroups: memory.Cgroups | None = None
        self._cgroups_probed = False
        self._wake = asyncio.Event()
        store.add_listener(self._on_event)

    def note_not_root(self) -> None:
        """Log, once, that pods' runAsUser/runAsGroup/fsGroup are not applied (not root)."""
        if not self._noted_not_root:
            self._noted_not_root = True
            log.warning(
                "devcluster kubelet runs as uid %s, not root: pods' runAsUser, runAsGroup and "
                "fsGroup are not applied; every container runs as uid %s",
                os.geteuid(),
                os.geteuid(),
            )

    def cgroups(self) -> memory.Cgroups | None:
        """The memory cgroups of containers with a memory limit (probed on first use; None:
        not root or none writable, then RSS is polled)."""
        if not self._cgroups_probed:
            self._cgroups_probed = True
            self._cgroups = memory.probe() if self.as_root else None
            log.info(
                "devcluster kubelet: memory limits by %s",
                f"cgroup v{self._cgroups.version} ({self._cgroups.base})"
                if self._cgroups
                else "polling the containers' RSS",
            )
        return self._cgroups

    def start_network(self) -> str:
        """N: set up the pod network per ``config.pod_network`` (`podnet`); return the
        address pods reach this machine at (`host_address`). ``auto``: isolated when
        `podnet.unavailable` says nothing and the bridge can be made, else host mode with
        one warning saying why.

        Raises:
            ValueError: ``pod_network`` is not one of `podnet.MODES`.
            podnet.PodNetworkError: ``isolated`` and the bridge cannot be made (or
                `podnet.unavailable` names a reason).
        """
        mode = self.config.pod_network
        if mode not in podnet.MODES:
            raise ValueError(
                f"KubeletConfig.pod_network: {mode!r} is not one of {', '.join(podnet.MODES)}"
            )
        if mode == "host" or self.network is not None:
            return self.host_address
        reason = podnet.unavailable()
        network = None
        if reason is None:
            network = podnet.PodNetwork(self.config.pod_subnet)
            try:
                self.host_address = network.start()
            except (podnet.PodNetworkError, OSError) as exc:
                network, reason = None, str(exc)
        if network is None:
            if mode == "isolated":
                raise podnet.PodNetworkError(f"pod_network isolated: {reason}")
            log.warning(
                "devcluster kubelet: pods share this machine's network namespace (pod_network "
                "host; every pod can reach the others' loopback-bound ports): %s",
                reason,
            )
            return self.host_address
        self.network = network
        assert network.network is not None
        self.ips = IpPool(network=network.network)
        return self.host_address

    def set_api_address(self, host: str, port: int) -> None:
        """Tell containers where the API server is (KUBERNETES_SERVICE_HOST/PORT)."""
        self.base_env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port)}

    def _on_event(self, event: Event) -> None:
        if event.resource == PODS:
            self._wake.set()

    async def run(self) -> None:
        """Reconcile until cancelled."""
        await reconcile_loop(self.reconcile, self._wake, self.config.interval, "kubelet")

    def reconcile(self) -> None:
        """Start workers for new bound pods; stop those of deleted pods."""
        live = set()
        for pod in list(self.store.iter(PODS)):
            meta, spec = pod["metadata"], pod.get("spec") or {}
            if not spec.get("nodeName"):
                continue
            uid = meta["uid"]
            live.add(uid)
            worker = self.workers.get(uid)
            if worker is None:
                if meta.get("deletionTimestamp"):
                    self.store.remove(PODS, meta["namespace"], meta["name"])
                    continue
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.task = asyncio.create_task(self._guard(worker.run(), worker))
            elif meta.get("deletionTimestamp") and worker.terminating is None:
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                worker.terminating = asyncio.create_task(worker.terminate(grace))
        for uid, worker in list(self.workers.items()):
            if uid not in live:
                del self.workers[uid]
                asyncio.create_task(self._finish(worker))

    async def _guard(self, coro, worker: PodWorker) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "devcluster pod %s/%s failed in the kubelet", worker.namespace, worker.name
            )
            worker.failure = ("KubeletError", f"devcluster kubelet error: {exc!r}")
            worker.publish()

    async def _finish(self, worker: PodWorker) -> None:
        await worker.kill(0)
        worker.cleanup()

    async def open_pod_connection(
        self, pod: dict, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """N: port-forward's connection to ``port`` of ``pod`` (`PodWorker.open_connection`;
        a pod this kubelet does not run: its pod IP). Raises OSError."""
        worker = self.workers.get(pod["metadata"].get("uid", ""))
        if worker is None:
            ip = (pod.get("status") or {}).get("podIP") or ""
            return await asyncio.open_connection(ip, port)
        return await worker.open_connection(port)

    async def stream_log(
        self, pod: dict, container: str, follow: bool, tail_lines: int | None, options=None
    ) -> AsyncIterator[bytes]:
        """`apiserver.LogSource`: the log of a container of ``pod``."""
        worker = self.workers.get(pod["metadata"]["uid"])
        if worker is None:
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to '
                "start: ContainerCreating",
            )
        return await worker.stream_log(container, follow, tail_lines, options)

    async def shutdown(self) -> None:
        """Stop every pod's processes (SIGTERM, then SIGKILL after ``shutdown_grace``)."""
        workers = list(self.workers.values())
        await asyncio.gather(
            *(w.kill(self.config.shutdown_grace) for w in workers), return_exceptions=True
        )
        for worker in workers:
            if worker.task is not None:
                worker.task.cancel()
            if worker.terminating is not None:
                worker.terminating.cancel()
        if self._cgroups is not None:
            self._cgroups.close()
        if self.network is not None:  # N: namespaces closed, veths and bridge deleted
            for worker in workers:
                worker.release_netns()
            self.network.close()
            self.network = None
