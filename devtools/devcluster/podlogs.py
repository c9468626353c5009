"""Container logs as the kubelet keeps and serves them: one file per container instance, one
timestamped record per line, and ``pods/<name>/log`` with its options.

Writing (:class:`LogWriter`): the kubelet gives each container process a pipe as stdout and
stderr; every line read from it becomes one record in the CRI log format of containerd
(``<RFC3339Nano time> stdout F <line>``; a piece of a line that is not ended yet, as a
progress bar's ``\\r`` updates, is written as a ``P`` partial record if the rest of the
line does not follow within 50 ms), in
``<pod dir>/logs/<container>-<restart>.log``: https://github.com/kubernetes/design-proposals-archive/blob/main/node/kubelet-cri-logging.md
Subscribers (`subscribe`, for ``kubectl attach``) get the raw bytes as they come.

Reading (:func:`read_log`) with `LogOptions`, the ``PodLogOptions`` of
https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#get-read-log-of-the-specified-pod:
``follow``, ``previous`` (the kubelet picks the file), ``sinceSeconds``/``sinceTime``
(records at or after that time), ``timestamps`` (each line prefixed by its record's time and
a space, as ``kubectl logs --timestamps``), ``tailLines`` (the last N lines), ``limitBytes``
(the output stops after N bytes). Parsing of the query: :func:`options_from_query`, with 400s
worded as kube-apiserver's validation of PodLogOptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .store import ApiError


def rfc3339nano(ns: int | None = None) -> str:
    """``2026-12-01T23:00:00.123456789Z`` (always 9 fraction digits, UTC) of ``ns`` (epoch
    nanoseconds; default now)."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def parse_time(text: str) -> int:
    """Epoch nanoseconds of an RFC 3339 time (``Z`` or an offset, up to 9 fraction digits);
    raises ValueError."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    frac_ns = 0
    if "." in text[:26]:
        head, rest = text.split(".", 1)
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        tail = rest[len(digits) :]
        frac_ns = int((digits + "000000000")[:9])
        text = head + tail
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"no time zone in {text!r}")
    return int(moment.timestamp()) * 1_000_000_000 + frac_ns


@dataclass(frozen=True)
class LogOptions:
    """What a ``pods/log`` request asks (see the module docstring); ``since_ns``: epoch ns."""

    follow: bool = False
    previous: bool = False
    since_ns: int | None = None
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None


def _bool(query, name: str) -> bool:
    return (query.get(name) or "").lower() in ("true", "1")


def query_int(query, name: str) -> int | None:
    """The whole number in query parameter ``name`` (``None`` when absent or empty).

    Raises:
        ApiError: 400 ``invalid <name>: '<value>'`` for anything else.
    """
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "BadRequest", f"invalid {name}: {value!r}") from None


def options_from_query(
    query, name: str = "", now_ns: Callable[[], int] = time.time_ns
) -> LogOptions:
    """`LogOptions` of a request's query for pod ``name``; 422 ``Invalid`` as kube-apiserver's
    ``ValidatePodLogOptions`` (``PodLogOptions "x" is invalid: tailLines: Invalid value: -1:
    must be greater than or equal to 0``), 400 for a value that is not a number or time."""
    since_seconds = query_int(query, "sinceSeconds")
    since_time = query.get("sinceTime")
    tail, limit = query_int(query, "tailLines"), query_int(query, "limitBytes")
    errors = []
    if tail is not None and tail < 0:
        errors.append(f"tailLines: Invalid value: {tail}: must be greater than or equal to 0")
    if limit is not None and limit < 1:
        errors.append(f"limitBytes: Invalid value: {limit}: must be greater than 0")
    if since_seconds is not None and since_time:
        errors.append(": Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified")
    if since_seconds is not None and since_seconds < 1:
        errors.append(f"sinceSeconds: Invalid value: {since_seconds}: must be greater than 0")
    if errors:
        shown = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        raise ApiError(422, "Invalid", f'PodLogOptions "{name}" is invalid: {shown}')
    since_ns = None
    if since_seconds is not None:
        since_ns = now_ns() - since_seconds * 1_000_000_000
    elif since_time:
        try:
            since_ns = parse_time(since_time)
        except ValueError:
            raise ApiError(
                400, "BadRequest", f'parsing time "{since_time}" as RFC3339: cannot parse'
            ) from None
    return LogOptions(
        follow=_bool(query, "follow"),
        previous=_bool(query, "previous"),
        since_ns=since_ns,
        timestamps=_bool(query, "timestamps"),
        tail_lines=tail,
        limit_bytes=limit,
    )


class LogWriter:
    """Reads a container's output pipe (``fd``, the read end; owned from now on) into its
    log file at ``path`` (see the module docstring). `start` it, `finish` it after the
    process exited (waits up to ``timeout`` s for the pipe's end)."""

    def __init__(self, path: Path, fd: int, stream: str = "stdout", tty: bool = False):
        self.path = Path(path)
        self.fd = fd
        #: ``fd`` is a terminal's master side (a ``tty: true`` container): `write` types
        #: into it (attach), `resize` sets its size
        self.tty = tty
        self.stream = stream.encode()
        self.task: asyncio.Task | None = None
        self._subscribers: set[asyncio.Queue] = set()

    def start(self) -> None:
        """Begin copying (an asyncio task of the running loop)."""
        self.task = asyncio.create_task(self._copy())

    def write(self, data: bytes) -> None:
        """Type ``data`` into the container's terminal (``tty`` only; OSError once gone)."""
        os.write(self.fd, data)

    def subscribe(self) -> asyncio.Queue:
        """A queue of the raw output bytes from now on; ``b""`` when the output ends."""
        queue: asyncio.Queue = asyncio.Queue()
        if self.task is None or self.task.done():
            queue.put_nowait(b"")
        else:
            self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        """Stop feeding ``queue``."""
        self._subscribers.discard(queue)

    def _records(self, data: bytes) -> bytes:
        stamp = rfc3339nano().encode()
        out = []
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break
            tag = b"P" if last else b"F"
            out.append(b"%s %s %s %s\n" % (stamp, self.stream, tag, line))
        return b"".join(out)

    async def _copy(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        pipe = os.fdopen(self.fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        out = open(self.path, "ab", buffering=0)  # noqa: SIM115, ASYNC230 (a local file)
        try:
            while True:
                try:
                    data = await reader.read(1 << 16)
                except OSError:  # EIO: a terminal's last holder closed it
                    break
                if not data:
                    break
                if not data.endswith(b"\n"):  # the line's rest, if it follows at once
                    try:
                        data += await asyncio.wait_for(reader.readuntil(b"\n"), 0.05)
                    except asyncio.IncompleteReadError as end:
                        data += end.partial
                    except (asyncio.TimeoutError, asyncio.LimitOverrunError, OSError):
                        pass
                out.write(self._records(data))
                for queue in list(self._subscribers):
                    queue.put_nowait(data)
        finally:
            out.close()
            transport.close()
            for queue in list(self._subscribers):
                queue.put_nowait(b"")
            self._subscribers.clear()

    async def finish(self, timeout: float = 2.0) -> None:
        """Wait (up to ``timeout`` s) for the output's end, then stop."""
        if self.task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


_PARTIAL = b" stdout P "  # in a window: render it line by line (also if only content)
_STAMP = len("2026-12-01T23:00:00.000000000Z")
_PREFIX = _STAMP + len(" stdout F ")


def _parse(record: bytes) -> tuple[bytes, bool, bytes] | None:
    """``(timestamp, full, content)`` of one record line (without its ``\\n``)."""
    parts = record.split(b" ", 3)
    if len(parts) < 3:
        return None
    content = parts[3] if len(parts) == 4 else b""
    return parts[0], parts[2] != b"P", content


class _Formatter:
    """Turns records into output lines per `LogOptions` (timestamps, since, limitBytes)."""

    def __init__(self, opts: LogOptions):
        self.opts = opts
        self.left = opts.limit_bytes
        self.open_line = False  # the last output ended inside a line (a P record)

    def lines(self, records: list[bytes]) -> list[bytes]:
        """Whole logical lines (P records joined to what follows) of ``records``."""
        out, current, stamp = [], b"", b""
        for rec in records:
            parsed = _parse(rec)
            if parsed is None:
                continue
            ts, full, content = parsed
            if not current:
                stamp = ts
            current += content
            if full:
                out.append((stamp, current + b"\n"))
                current = b""
        if current:
            out.append((stamp, current))
        return out  # type: ignore[return-value]

    def render(self, pieces: list[tuple[bytes, bytes]]) -> bytes:
        out = []
        for ts, text in pieces:
            if self.opts.since_ns is not None:
                try:
                    if parse_time(ts.decode()) < self.opts.since_ns:
                        continue
                except ValueError:
                    continue
            if self.opts.timestamps and not self.open_line:
                text = ts + b" " + text
            self.open_line = not text.endswith(b"\n")
            out.append(text)
        data = b"".join(out)
        if self.left is not None:
            data = data[: self.left]
            self.left -= len(data)
        return data

    def render_raw(self, raw: bytes, tail: int | None = None) -> bytes:
        """Render whole record lines ``raw`` (each ending in ``\\n``), the last ``tail``
        lines only if given. Without ``since``, records of whole lines (no ``P`` piece, as
        `LogWriter` writes them: a 30-character time, ``stdout F``) are cut by slicing (an
        18 MB log in a fraction of a second); the others go line by line (`lines`)."""
        window, before = raw, b""
        if tail is not None:
            parts = raw.rsplit(b"\n", tail + 2) if tail > 0 else []
            window = b"\n".join(parts[-(tail + 1) : -1]) + b"\n" if tail > 0 else b""
            before = parts[-(tail + 2)] if len(parts) >= tail + 2 else b""  # the record
            before = before.rsplit(b"\n", 1)[-1]  # before the window (a P piece joins it)
        if self.opts.since_ns is None and _PARTIAL not in window and _PARTIAL not in before:
            lines = window.split(b"\n")[:-1]
            if self.opts.timestamps:
                data = b"\n".join(line[:_STAMP] + b" " + line[_PREFIX:] for line in lines)
            else:
                data = b"\n".join(line[_PREFIX:] for line in lines)
            data = data + b"\n" if lines else b""
            self.open_line = False
            if self.left is not None:
                data = data[: self.left]
                self.left -= len(data)
            return data
        pieces = self.lines(raw.split(b"\n")[:-1])
        if tail is not None:
            pieces = pieces[-tail:] if tail > 0 else []
        return self.render(pieces)

    @property
    def exhausted(self) -> bool:
        return self.left is not None and self.left <= 0


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


async def read_log(
    path: Path, opts: LogOptions, ended: Callable[[], bool], poll: float = 0.1
) -> AsyncIterator[bytes]:
    """The log at ``path`` per ``opts``; with ``follow``, what is added until ``ended()``
    (the container exited) and nothing more is left to read."""
    fmt = _Formatter(opts)
    data = _read_from(path, 0)
    cut = data.rfind(b"\n") + 1
    offset = cut
    first = fmt.render_raw(data[:cut], opts.tail_lines)
    if first:
        yield first
    while opts.follow and not fmt.exhausted:
        done = ended()
        more = _read_from(path, offset)
        cut = more.rfind(b"\n") + 1
        if cut:
            offset += cut
            chunk = fmt.render_raw(more[:cut])
            if chunk:
                yield chunk
        elif done:
            return
        else:
            await asyncio.sleep(poll)
