"""``pods/exec``, ``pods/attach`` and ``pods/portforward`` of the emulated API server, over
WebSocket, as kube-apiserver and the kubelet serve them.

Channel protocol (exec, attach; https://kubernetes.io/docs/reference/using-api/websockets/,
upstream ``k8s.io/apimachinery/pkg/util/httpstream/wsstream/conn.go`` and
``k8s.io/apimachinery/pkg/util/remotecommand/constants.go``): the client upgrades a ``GET``
to a WebSocket offering ``v5.channel.k8s.io`` (kubectl ≥ 1.30: exec, attach and cp go over
WebSocket first, SPDY only if the upgrade fails) or ``v4.channel.k8s.io`` (the Python
clients). Every binary message starts with its channel byte: 0 stdin, 1 stdout, 2 stderr, 3
error (one JSON ``Status`` when the command ends: ``Success``, or ``Failure`` with reason
``NonZeroExitCode`` and the exit code as the ``ExitCode`` cause, or ``InternalError`` when the
command could not start), 4 resize (``{"Width": w, "Height": h}``, with ``tty``), and in v5
255 close (``[255, 0]``: the client's stdin has ended; ``kubectl cp`` into a pod needs it).
Text messages carry the channel as their first character (v4 clients may send them).

Query (``PodExecOptions``/``PodAttachOptions``): ``command`` (repeated), ``container``,
``stdin``, ``stdout``, ``stderr``, ``tty``. Errors worded as the real server's: no command
(400 ``you must specify at least 1 command``), no stream (400 ``you must specify at least
one of stdin, stdout, stderr``), a container not in the pod (400 ``container x is not valid
for pod y``), several containers and none named (400 ``a container name must be specified
for pod y, choose one of: [a b]``), an unscheduled pod (400 ``pod y does not have a host
assigned``), a container that is not running (404 ``container not found ("x")``, the
kubelet's plain-text answer, which kubectl shows as ``unable to upgrade connection: ...``).

exec (`nsexec.py`): the command runs in the container's mount, UTS and PID namespaces, as
its user, with its environment, working folder and memory cgroup; ``tty`` gets a
pseudo-terminal (its size from the resize channel, ``TERM=xterm`` unless the container sets
it, stderr merged as with a runtime's terminal). attach: the container's output from now on
(stdout channel) until it exits, and stdin into the container if its spec has ``stdin:
true`` (else stdin is read and dropped, as a runtime does for a container without stdin);
a ``tty: true`` container has a terminal (its output and input; resize sets its size).

portforward (https://kubernetes.io/docs/reference/using-api/websockets/ and upstream
``k8s.io/kubelet/pkg/cri/streaming/portforward/websocket.go``): WebSocket with
``portforward.k8s.io`` or ``v4.channel.k8s.io`` and ``ports=p1,p2`` (or repeated): port i
has data channel 2i and error channel 2i+1; the server first sends each channel's port as
two little-endian bytes, then relays bytes between the data channel and a TCP connection to
that port of the pod, as the kubelet makes it (N: to ``localhost`` inside the pod's network
namespace, else its IP; `kubelet.Kubelet.open_pod_connection`). A failed
connection answers on the error channel and closes. SPDY (kubectl ``port-forward``, which
tunnels SPDY/3.1 even over its WebSocket) is not served: 400 naming what is.

RBAC: the request's verb is ``get`` for the WebSocket ``GET`` and ``create`` for a ``POST``
(SPDY), on the subresource ``pods/exec``, ``pods/attach`` or ``pods/portforward``, as
kube-apiserver 1.30-1.34 authorizes them (https://kubernetes.io/docs/reference/
access-authn-authz/authorization/#determine-the-request-verb); `rbac.Gate` checks it before
this module runs. A WebSocket ``GET`` refused ``get`` is also allowed with ``create``, and
its 403 names ``create``: on a real server kubectl then retries over SPDY (``POST``, so
``create``), which this module does not serve for exec/attach; so a Role granting only
``create`` (the usual ``pods/exec: [create]``) works with kubectl here as there. (A
WebSocket-only client such as the Python one would need ``get`` on a real 1.32.)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import struct
import sys
import termios
from pathlib import Path

from aiohttp import WSMsgType, web

from . import spdy
from .store import ApiError

log = logging.getLogger(__name__)

SUBRESOURCES = ("exec", "attach", "portforward")
CHANNEL_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
PORTFORWARD_PROTOCOLS = ("portforward.k8s.io", "v4.channel.k8s.io")
SPDY_TUNNEL = "SPDY/3.1+portforward.k8s.io"  # kubectl >= 1.31 (KEP-4006)
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
NSEXEC = str(Path(__file__).with_name("nsexec.py"))
#: seconds the output of an ended command is still read (a background child may hold it)
DRAIN_SECONDS = 1.0


def _flag(query, name: str, default: bool = False) -> bool:
    value = query.get(name)
    if value is None:
        return default
    return value.lower() in ("true", "1")


def pick_container(pod: dict, wanted: str | None) -> str:
    """The container a request means; 400 worded as kube-apiserver's ``streamLocation``."""
    spec = pod.get("spec") or {}
    name = pod["metadata"]["name"]
    names = [c["name"] for c in spec.get("containers") or []]
    inits = [c["name"] for c in spec.get("initContainers") or []]
    if not wanted:
        if len(names) == 1:
            return names[0]
        raise ApiError(
            400,
            "BadRequest",
            f"a container name must be specified for pod {name}, choose one of: "
            f"[{' '.join(names)}] or one of the init containers: [{' '.join(inits)}]"
            if inits
            else f"a container name must be specified for pod {name}, choose one of: "
            f"[{' '.join(names)}]",
        )
    if wanted not in names + inits:
        raise ApiError(400, "BadRequest", f"container {wanted} is not valid for pod {name}")
    return wanted


def _not_found(container: str) -> web.Response:
    return web.Response(status=404, text=f'container not found ("{container}")')


def running_container(kubelet, pod: dict, container: str):
    """``(worker, run)`` of a running container, or None (not started, or exited)."""
    workers = getattr(kubelet, "workers", None) or {}
    worker = workers.get(pod["metadata"]["uid"])
    if worker is None:
        return None
    run = next((r for r in worker.inits + worker.containers if r.name == container), None)
    if run is None or run.proc is None or run.proc.returncode is not None:
        return None
    return worker, run


def init_pid(supervisor: int) -> int | None:
    """The container's init (the sandbox supervisor's one child), whose namespaces an exec
    joins; None if it has not been forked yet or is gone."""
    try:
        with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def status_success() -> dict:
    """The error channel's answer of a command that exited 0."""
    return {"metadata": {}, "status": "Success"}


def status_exit(argv: list[str], code: int) -> dict:
    """The error channel's answer of a command that exited ``code`` (kubelet's
    ``ServeExec``: reason NonZeroExitCode, cause ExitCode)."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: error executing command "
        f"[{' '.join(argv)}], exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def status_internal(message: str) -> dict:
    """The error channel's answer of a command that could not start (500 InternalError)."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


async def serve(server, request: web.Request, res, namespace, name: str, sub: str):
    """Answer ``pods/<name>/<sub>`` (see the module docstring); ``server`` is the
    `apiserver.ApiServer` (its ``store`` and its ``logs``, the kubelet)."""
    pod = server.store.get(res, namespace, name)
    websocket = request.headers.get("Upgrade", "").lower() == "websocket"
    if request.method not in ("GET", "POST"):
        raise ApiError(
            405, "MethodNotAllowed", f"the server does not allow this method: {request.method}"
        )
    if sub == "portforward":
        return await _portforward(server, request, pod, websocket)
    query = request.query
    command = query.getall("command", [])
    if sub == "exec" and not command:
        raise ApiError(400, "BadRequest", "you must specify at least 1 command")
    stdin, tty = _flag(query, "stdin"), _flag(query, "tty")
    stdout = _flag(query, "stdout", sub == "attach")
    stderr = _flag(query, "stderr", sub == "attach") and not tty
    if not (stdin or stdout or stderr):
        raise ApiError(400, "BadRequest", "you must specify at least one of stdin, stdout, stderr")
    container = pick_container(pod, query.get("container"))
    if not (pod.get("spec") or {}).get("nodeName"):
        raise ApiError(400, "BadRequest", f"pod {name} does not have a host assigned")
    target = running_container(server.logs, pod, container)
    if target is None:
        return _not_found(container)
    if not websocket:
        raise ApiError(
            400,
            "BadRequest",
            "the devcluster serves pods/"
            + sub
            + " over WebSocket only ("
            + ", ".join(CHANNEL_PROTOCOLS)
            + "), not SPDY",
        )
    ws = web.WebSocketResponse(protocols=CHANNEL_PROTOCOLS, max_msg_size=16 << 20)
    await ws.prepare(request)
    v5 = ws.ws_protocol == "v5.channel.k8s.io"
    streams = {"stdin": stdin, "stdout": stdout, "stderr": stderr, "tty": tty, "v5": v5}
    try:
        if sub == "exec":
            await _exec(ws, target, command, streams)
        else:
            await _attach(ws, target, streams)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        await ws.close()
    return ws


async def _send(ws: web.WebSocketResponse, channel: int, data: bytes) -> None:
    if not ws.closed:
        await ws.send_bytes(bytes([channel]) + data)


def _frames(msg) -> tuple[int, bytes] | None:
    if msg.type == WSMsgType.BINARY and msg.data:
        return msg.data[0], bytes(msg.data[1:])
    if msg.type == WSMsgType.TEXT and msg.data:
        return ord(msg.data[0]), msg.data[1:].encode("utf-8", "surrogateescape")
    return None


def _set_size(fd: int, payload: bytes) -> None:
    try:
        size = json.loads(payload)
        rows, cols = int(size.get("Height", 0)), int(size.get("Width", 0))
    except (ValueError, TypeError, AttributeError):
        return
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _pump_fd(fd: int, ws, channel: int) -> None:
    """Send what ``fd`` (a pipe or a pty master; non-blocking) yields on ``channel``."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        while True:
            await ready.wait()
            ready.clear()
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the terminal's last holder closed it
                return
            if not data:
                return
            await _send(ws, channel, data)
    finally:
        loop.remove_reader(fd)


async def _exec(ws, target, command: list[str], streams: dict) -> None:
    worker, run = target
    instance = worker.dir / f"{run.name}-{run.restart_count}.json"
    pid = init_pid(run.proc.pid)
    try:
        container_spec = json.loads(instance.read_text())
    except (OSError, ValueError):
        container_spec = None
    if pid is None or container_spec is None:  # between two instances: as not running
        message = f'container not found ("{run.name}")'
        await _send(ws, ERROR, json.dumps(status_internal(message)).encode())
        return
    env = dict(container_spec.get("env") or {})
    if streams["tty"]:
        env.setdefault("TERM", "xterm")
    err_r, err_w = os.pipe()
    # the container process's own spec (user, cwd, cgroup, and E's fields such as its
    # capabilities), with the command in place of the container's argv
    spec = {**container_spec, "pid": pid, "argv": command, "env": env}
    spec.update(cwd=container_spec.get("cwd") or "/", tty=streams["tty"], error_fd=err_w)
    spec_path = worker.dir / f"exec-{os.getpid()}-{id(ws)}.json"
    spec_path.write_text(json.dumps(spec))
    master = None
    pipes: list[tuple[int, int]] = []  # (fd, channel) to pump
    try:
        if streams["tty"]:
            master, slave = os.openpty()
            os.set_blocking(master, False)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                NSEXEC,
                str(spec_path),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                pass_fds=(err_w,),
                start_new_session=True,
            )
            os.close(slave)
            pipes.append((master, STDOUT))
        else:
            fds = {}
            for key, channel in (("stdout", STDOUT), ("stderr", STDERR)):
                if streams[key]:
                    r, w = os.pipe()
                    os.set_blocking(r, False)
                    fds[key] = w
                    pipes.append((r, channel))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                NSEXEC,
                str(spec_path),
                stdin=asyncio.subprocess.PIPE if streams["stdin"] else asyncio.subprocess.DEVNULL,
                stdout=fds.get("stdout", asyncio.subprocess.DEVNULL),
                stderr=fds.get("stderr", asyncio.subprocess.DEVNULL),
                pass_fds=(err_w,),
                start_new_session=True,
            )
            for w in fds.values():
                os.close(w)
    finally:
        os.close(err_w)
    pumps = [asyncio.create_task(_pump_fd(fd, ws, ch)) for fd, ch in pipes]
    reader = asyncio.create_task(_read_client(ws, proc, master, streams))
    try:
        waiter = asyncio.create_task(proc.wait())
        await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():  # the client went away: end the command as a hang-up would
            _signal(proc, signal.SIGHUP)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), 1.0)
            except asyncio.TimeoutError:
                _signal(proc, signal.SIGKILL)
            await waiter
            return
        code = waiter.result()
        if pumps:
            await asyncio.wait(pumps, timeout=DRAIN_SECONDS)
        message = _read_all(err_r)
        if message:
            status = status_internal(
                "error executing command in container: failed to exec in container: "
                f"failed to start exec: OCI runtime exec failed: exec failed: {message}: unknown"
            )
        elif code == 0:
            status = status_success()
        else:
            status = status_exit(command, code)
        await _send(ws, ERROR, json.dumps(status).encode())
    finally:
        for task in [*pumps, reader]:
            task.cancel()
        await asyncio.gather(*pumps, reader, return_exceptions=True)
        for fd, _ in pipes:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.close(err_r)
        with contextlib.suppress(FileNotFoundError):
            spec_path.unlink()
        if proc.returncode is None:
            _signal(proc, signal.SIGKILL)


def _signal(proc, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _read_all(fd: int) -> str:
    out = b""
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            out += chunk
    return out.decode(errors="replace").strip()


async def _read_client(ws, proc, master: int | None, streams: dict) -> None:
    """Client → command: stdin, resize, v5 close. Returns when the client closes."""
    async for msg in ws:
        frame = _frames(msg)
        if frame is None:
            continue
        channel, payload = frame
        if channel == STDIN and streams["stdin"]:
            if master is not None:
                with contextlib.suppress(OSError):
                    os.write(master, payload)
            elif proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.write(payload)
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    await proc.stdin.drain()
        elif channel == RESIZE and master is not None:
            _set_size(master, payload)
        elif channel == CLOSE and payload[:1] == bytes([STDIN]):
            if master is not None:
                with contextlib.suppress(OSError):
                    os.write(master, b"\x04")  # a terminal's end of input
            elif proc.stdin is not None:
                proc.stdin.close()


async def _attach(ws, target, streams: dict) -> None:
    worker, run = target
    writer = run.log_writer
    if writer is None:
        await _send(ws, ERROR, json.dumps(status_internal("the container has no output")).encode())
        return
    queue = writer.subscribe()

    async def output() -> None:
        while data := await queue.get():
            if streams["stdout"]:
                await _send(ws, STDOUT, data)

    async def client() -> None:
        stdin = run.proc.stdin if run.proc is not None else None
        async for msg in ws:
            frame = _frames(msg)
            if frame is None:
                continue
            channel, payload = frame
            if writer.tty:  # a tty: true container: its terminal
                if channel == STDIN and streams["stdin"]:
                    with contextlib.suppress(OSError):
                        writer.write(payload)
                elif channel == RESIZE:
                    _set_size(writer.fd, payload)
                continue
            if channel == STDIN and stdin is not None and not stdin.is_closing():
                stdin.write(payload)
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    await stdin.drain()
            elif channel == CLOSE and payload[:1] == bytes([STDIN]) and stdin is not None:
                if run.spec.get("stdinOnce"):
                    stdin.close()

    out_task, in_task = asyncio.create_task(output()), asyncio.create_task(client())
    try:
        await asyncio.wait({out_task, in_task}, return_when=asyncio.FIRST_COMPLETED)
        if out_task.done():  # the container ended
            await _send(ws, ERROR, json.dumps(status_success()).encode())
    finally:
        writer.unsubscribe(queue)
        for task in (out_task, in_task):
            task.cancel()
        await asyncio.gather(out_task, in_task, return_exceptions=True)


# -- port-forward -------------------------------------------------------------------------


def _ports(query) -> list[int]:
    raw = [p for value in query.getall("ports", []) for p in value.split(",") if p.strip()]
    if not raw:
        raise ApiError(400, "BadRequest", 'query parameter "port" is required')
    ports = []
    for p in raw:
        try:
            port = int(p)
        except ValueError:
            raise ApiError(
                400, "BadRequest", f'unable to parse "{p}" as a port: invalid syntax'
            ) from None
        if not 0 < port < 65536:
            raise ApiError(400, "BadRequest", f"port {port} must be > 0 and < 65536")
        ports.append(port)
    return ports


def _forward_error(pod: dict, ip: str, port: str, exc: Exception) -> str:
    """The kubelet's message for a port that cannot be reached (Go's dial wording)."""
    errno = getattr(exc, "errno", None)
    reason = os.strerror(errno) if errno else str(exc)
    reason = reason[:1].lower() + reason[1:]
    meta = pod["metadata"]
    return (
        f"error forwarding port {port} to pod {meta['name']}, uid {meta.get('uid', '')}: "
        f"failed to connect to localhost:{port} inside namespace of the pod: dial tcp4 "
        f"{ip}:{port}: connect: {reason}"
    )


async def _portforward(server, request: web.Request, pod: dict, websocket: bool):
    name = pod["metadata"]["name"]
    if not (pod.get("spec") or {}).get("nodeName"):
        raise ApiError(400, "BadRequest", f"pod {name} does not have a host assigned")
    ip = (pod.get("status") or {}).get("podIP")
    if (pod.get("status") or {}).get("phase") != "Running" or not ip:
        raise ApiError(400, "BadRequest", f"pod {name} is not running")
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if websocket and SPDY_TUNNEL in offered:
        return await _portforward_spdy(request, pod, ip, server)
    if not websocket:
        raise ApiError(
            400,
            "BadRequest",
            "the devcluster serves pods/portforward over WebSocket only (SPDY/3.1 tunnelled "
            "in a WebSocket as kubectl sends it, portforward.k8s.io, v4.channel.k8s.io), not "
            "over a plain SPDY upgrade",
        )
    ports = _ports(request.query)
    ws = web.WebSocketResponse(protocols=PORTFORWARD_PROTOCOLS, max_msg_size=16 << 20)
    await ws.prepare(request)
    writers: dict[int, asyncio.StreamWriter] = {}
    tasks = []

    async def relay(index: int, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while data := await reader.read(1 << 16):
                await _send(ws, 2 * index, data)

    try:
        for i, port in enumerate(ports):
            head = struct.pack("<H", port)
            await _send(ws, 2 * i, head)
            await _send(ws, 2 * i + 1, head)
        for i, port in enumerate(ports):
            try:
                reader, writer = await _pod_connection(server, pod, ip, port)
            except OSError as exc:
                text = _forward_error(pod, ip, str(port), exc)
                await _send(ws, 2 * i + 1, text.encode())
                continue
            writers[i] = writer
            tasks.append(asyncio.create_task(relay(i, reader)))
        async for msg in ws:
            frame = _frames(msg)
            if frame is None:
                continue
            channel, payload = frame
            writer = writers.get(channel // 2) if channel % 2 == 0 else None
            if writer is not None and payload:
                writer.write(payload)
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    await writer.drain()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        for writer in writers.values():
            writer.close()
        await ws.close()
    return ws


async def _pod_connection(server, pod: dict, ip: str, port: int):
    """N: a connection to the pod's ``port`` as the kubelet's port-forward makes it (inside the
    pod's network namespace: `kubelet.Kubelet.open_pod_connection`); without a kubelet, to
    ``ip``. Returns (reader, writer); raises OSError."""
    if server.logs is None:
        return await asyncio.open_connection(ip, port)
    return await server.logs.open_pod_connection(pod, port)


async def _portforward_spdy(
    request: web.Request, pod: dict, ip: str, server
) -> web.WebSocketResponse:
    """kubectl's port-forward: SPDY/3.1 (`spdy`) in WebSocket binary messages. Each forwarded
    connection is a pair of streams with the same ``requestID`` header: ``streamType: error``
    (a message if the pod's port cannot be reached) and ``streamType: data`` (the bytes),
    ``port`` the pod's port (upstream ``k8s.io/kubelet/pkg/cri/streaming/portforward/
    httpstream.go``)."""
    ws = web.WebSocketResponse(protocols=(SPDY_TUNNEL,), max_msg_size=16 << 20)
    await ws.prepare(request)
    pairs: dict[str, dict] = {}

    async def on_stream(stream: spdy.SpdyStream) -> None:
        kind = stream.headers.get("streamtype", "")
        rid = stream.headers.get("requestid", "")
        pair = pairs.setdefault(rid, {})
        pair[kind] = stream
        if kind != "data":
            return
        error = pair.get("error")
        port_text = stream.headers.get("port", "")
        try:
            port = int(port_text)
            reader, writer = await _pod_connection(server, pod, ip, port)
        except (OSError, ValueError) as exc:
            text = _forward_error(pod, ip, port_text, exc)
            if error is not None:
                await error.write(text.encode())
                await error.close()
            await stream.close()
            pairs.pop(rid, None)
            return

        async def upstream() -> None:  # client -> pod
            while data := await stream.read():
                writer.write(data)
                await writer.drain()
            if stream.closed:  # reset by the client
                writer.close()
            elif writer.can_write_eof():
                writer.write_eof()

        up = asyncio.create_task(upstream())
        try:
            while data := await reader.read(1 << 16):
                await stream.write(data)
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            writer.close()
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await stream.close()
                if error is not None:
                    await error.close()
            pairs.pop(rid, None)

    conn = spdy.SpdyConnection(ws.send_bytes, on_stream)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await conn.feed(msg.data)
    except (ConnectionResetError, asyncio.CancelledError, spdy.SpdyError):
        pass
    finally:
        await conn.close()
        await ws.close()
    return ws
