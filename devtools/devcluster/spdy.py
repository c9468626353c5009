"""The server side of SPDY/3.1 framing, as much of it as ``kubectl port-forward`` uses.

kubectl ≥ 1.31 runs port-forward as SPDY/3.1 tunnelled through a WebSocket (subprotocol
``SPDY/3.1+portforward.k8s.io``: each binary message carries bytes of the SPDY connection;
upstream ``k8s.io/client-go/tools/portforward/tunneling_connection.go``, KEP-4006), falling
back to a plain SPDY upgrade when the WebSocket is refused. This module speaks the SPDY part
over any byte transport: `SpdyConnection.feed` takes the client's bytes, ``send`` writes
frames back.

Frames (https://www.chromium.org/spdy/spdy-protocol/spdy-protocol-draft3-1/): a control
frame is ``1 | version(15) = 3 | type(16) | flags(8) | length(24) | data``, a data frame
``0 | stream-id(31) | flags(8) | length(24) | data``; ``FLAG_FIN`` (1) ends a direction.
Served: SYN_STREAM (a new stream; its name/value header block is zlib-compressed with the
spec's dictionary, one compression context per direction for the whole connection),
answered by SYN_REPLY with an empty header block; DATA; RST_STREAM; PING (echoed); GOAWAY.
SETTINGS and WINDOW_UPDATE are read and ignored (moby/spdystream, kubectl's SPDY library,
does not enforce SPDY flow-control windows either).
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Awaitable, Callable

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
FLAG_FIN = 1
VERSION = 3

_NAMES = (
    "options head post put delete trace accept accept-charset accept-encoding "
    "accept-language accept-ranges age allow authorization cache-control connection "
    "content-base content-encoding content-language content-length content-location "
    "content-md5 content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
    "server te trailer transfer-encoding upgrade user-agent vary via warning "
    "www-authenticate method get status 200|OK version HTTP/1.1 url public set-cookie "
    "keep-alive origin"
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504"
    "505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, "
    "Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    entries = [word.replace("|", " ") for word in _NAMES.split()]  # "200|OK" is "200 OK"
    body = b"".join(struct.pack(">I", len(e)) + e.encode() for e in entries)
    return body + _TAIL.encode()


#: The SPDY/3 header compression dictionary (1423 bytes, section 2.6.10.1 of the draft).
DICTIONARY = _dictionary()


class SpdyError(Exception):
    """A malformed frame; the connection is ended."""


class SpdyStream:
    """One stream opened by the client: ``headers`` (lower-case names → first value),
    incoming data via `read` (``b""`` at the client's FIN or a reset)."""

    def __init__(self, conn: SpdyConnection, stream_id: int, headers: dict[str, str]):
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self._data: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False  # our direction ended (FIN sent or reset)

    async def read(self) -> bytes:
        """The next data from the client; ``b""`` when it ended its direction."""
        return await self._data.get()

    async def write(self, data: bytes) -> None:
        """DATA frames of ``data`` (at most 64 KiB each)."""
        for i in range(0, len(data), 1 << 16):
            await self.conn.send_data(self.id, data[i : i + (1 << 16)], 0)

    async def close(self) -> None:
        """End our direction (an empty DATA frame with FIN)."""
        if not self.closed:
            self.closed = True
            await self.conn.send_data(self.id, b"", FLAG_FIN)


class SpdyConnection:
    """A SPDY/3.1 server connection. ``send(bytes)`` writes to the client; ``on_stream`` is
    called (as a task) for each stream the client opens, after its SYN_REPLY."""

    def __init__(
        self,
        send: Callable[[bytes], Awaitable[None]],
        on_stream: Callable[[SpdyStream], Awaitable[None]],
    ):
        self._send = send
        self._on_stream = on_stream
        self._buffer = b""
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zdict=DICTIONARY)
        self._lock = asyncio.Lock()
        self.streams: dict[int, SpdyStream] = {}
        self.tasks: set[asyncio.Task] = set()
        self.gone = False  # GOAWAY received

    async def _write(self, frame: bytes) -> None:
        async with self._lock:
            await self._send(frame)

    async def send_data(self, stream_id: int, data: bytes, flags: int) -> None:
        """One DATA frame."""
        head = struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data))
        await self._write(head + data)

    async def _control(self, kind: int, flags: int, body: bytes) -> None:
        head = struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body))
        await self._write(head + body)

    def _headers(self, block: bytes) -> dict[str, str]:
        raw = self._inflate.decompress(block)
        (count,) = struct.unpack_from(">I", raw, 0)
        pos, out = 4, {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", raw, pos)
            name = raw[pos + 4 : pos + 4 + n].decode()
            pos += 4 + n
            (n,) = struct.unpack_from(">I", raw, pos)
            value = raw[pos + 4 : pos + 4 + n].decode()
            pos += 4 + n
            out[name.lower()] = value.split("\0")[0]
        return out

    async def feed(self, data: bytes) -> None:
        """Handle the client's bytes ``data`` (any split of the frame stream)."""
        self._buffer += data
        while len(self._buffer) >= 8:
            word, flags_len = struct.unpack_from(">II", self._buffer, 0)
            length = flags_len & 0xFFFFFF
            if len(self._buffer) < 8 + length:
                return
            body = self._buffer[8 : 8 + length]
            self._buffer = self._buffer[8 + length :]
            flags = flags_len >> 24
            if word & 0x80000000:
                await self._on_control(word & 0xFFFF, flags, body)
            else:
                stream = self.streams.get(word & 0x7FFFFFFF)
                if stream is not None:
                    if body:
                        stream._data.put_nowait(body)
                    if flags & FLAG_FIN:
                        stream._data.put_nowait(b"")

    async def _on_control(self, kind: int, flags: int, body: bytes) -> None:
        if kind == SYN_STREAM:
            if len(body) < 10:
                raise SpdyError("short SYN_STREAM")
            stream_id = struct.unpack_from(">I", body, 0)[0] & 0x7FFFFFFF
            stream = SpdyStream(self, stream_id, self._headers(body[10:]))
            self.streams[stream_id] = stream
            block = self._deflate.compress(struct.pack(">I", 0))
            block += self._deflate.flush(zlib.Z_SYNC_FLUSH)
            await self._control(SYN_REPLY, 0, struct.pack(">I", stream_id) + block)
            if flags & FLAG_FIN:
                stream._data.put_nowait(b"")
            task = asyncio.create_task(self._on_stream(stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif kind == HEADERS and len(body) >= 4:
            self._headers(body[4:])  # keeps the decompression context in step
        elif kind == RST_STREAM and len(body) >= 4:
            stream = self.streams.pop(struct.unpack_from(">I", body, 0)[0] & 0x7FFFFFFF, None)
            if stream is not None:
                stream.closed = True
                stream._data.put_nowait(b"")
        elif kind == PING:
            await self._control(PING, 0, body)
        elif kind == GOAWAY:
            self.gone = True

    async def close(self) -> None:
        """Cancel the stream handlers and end every stream's reader."""
        for stream in self.streams.values():
            stream._data.put_nowait(b"")
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
