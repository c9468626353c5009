"""The pure parts of the devcluster's logs and streams (issue 14 §6): log records and their
rendering per PodLogOptions, RFC 3339 times, and SPDY/3.1 frames (a minimal client encoder
written here from the draft, https://www.chromium.org/spdy/spdy-protocol/spdy-protocol-draft3-1/).
"""

import asyncio
import os
import struct
import zlib

import pytest

from devcluster import podlogs, spdy
from devcluster.store import ApiError


def records(*lines):
    return [line.encode() for line in lines]


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-12-01T23:00:00Z", 1796166000 * 10**9),
        ("2026-12-01T23:00:00.5Z", 1796166000 * 10**9 + 500_000_000),
        ("2026-12-02T00:00:00.000000001+01:00", 1796166000 * 10**9 + 1),
    ],
)
def test_parse_time(text, ns):
    assert podlogs.parse_time(text) == ns


def test_rfc3339nano_round_trips_with_nine_digits():
    stamp = podlogs.rfc3339nano(1796166000 * 10**9 + 42)
    assert stamp == "2026-12-01T23:00:00.000000042Z"
    assert podlogs.parse_time(stamp) == 1796166000 * 10**9 + 42


def test_partial_records_join_their_line_and_keep_the_first_time():
    fmt = podlogs._Formatter(podlogs.LogOptions(timestamps=True))
    lines = fmt.lines(
        records(
            "2026-12-01T23:00:00.000000001Z stdout P 50%\r",
            "2026-12-01T23:00:01.000000001Z stdout F 100%",
            "2026-12-01T23:00:02.000000001Z stdout F done",
        )
    )
    assert fmt.render(lines) == (
        b"2026-12-01T23:00:00.000000001Z 50%\r100%\n2026-12-01T23:00:02.000000001Z done\n"
    )


def test_since_and_limit_bytes():
    recs = records(
        "2026-12-01T23:00:00.000000000Z stdout F old",
        "2026-12-01T23:00:05.000000000Z stdout F new",
    )
    since = podlogs.parse_time("2026-12-01T23:00:01Z")
    fmt = podlogs._Formatter(podlogs.LogOptions(since_ns=since))
    assert fmt.render(fmt.lines(recs)) == b"new\n"
    fmt = podlogs._Formatter(podlogs.LogOptions(limit_bytes=5))
    assert fmt.render(fmt.lines(recs)) == b"old\nn"
    assert fmt.exhausted


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"tailLines": "-1"}, "tailLines: Invalid value: -1: must be greater than or equal to 0"),
        ({"limitBytes": "0"}, "limitBytes: Invalid value: 0: must be greater than 0"),
        ({"sinceSeconds": "0"}, "sinceSeconds: Invalid value: 0: must be greater than 0"),
    ],
)
def test_bad_log_options_are_422_as_the_real_server(query, message):
    with pytest.raises(ApiError) as err:
        podlogs.options_from_query(query, "p")
    assert err.value.code == 422
    assert str(err.value.status()["message"]) == f'PodLogOptions "p" is invalid: {message}'


def test_log_writer_records_lines_and_partials(tmp_path):
    async def main():
        r, w = os.pipe()
        writer = podlogs.LogWriter(tmp_path / "c-0.log", r)
        writer.start()
        queue = writer.subscribe()
        os.write(w, b"one\ntw")
        os.close(w)
        await writer.finish()
        got = []
        while chunk := await queue.get():
            got.append(chunk)
        return got

    assert b"".join(asyncio.run(main())) == b"one\ntw"
    lines = (tmp_path / "c-0.log").read_bytes().splitlines()
    assert [line.split(b" ", 1)[1] for line in lines] == [b"stdout F one", b"stdout P tw"]


def _syn_stream(deflate, stream_id, headers):
    block = struct.pack(">I", len(headers))
    for name, value in headers.items():
        block += struct.pack(">I", len(name)) + name.encode()
        block += struct.pack(">I", len(value)) + value.encode()
    packed = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    body = struct.pack(">IIH", stream_id, 0, 0) + packed
    return struct.pack(">HHI", 0x8003, spdy.SYN_STREAM, len(body)) + body


def test_spdy_streams_replies_data_fin_and_ping():
    """A SYN_STREAM (split across two feeds) gets a SYN_REPLY and its handler; DATA and FIN
    reach the stream; the handler's writes come back as DATA frames; PING is echoed."""

    async def main():
        sent = []
        seen = {}

        async def send(frame):
            sent.append(frame)

        async def on_stream(stream):
            seen["headers"] = stream.headers
            seen["data"] = [await stream.read(), await stream.read()]
            await stream.write(b"pong")
            await stream.close()

        conn = spdy.SpdyConnection(send, on_stream)
        deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
        frame = _syn_stream(deflate, 1, {"streamType": "data", "port": "8888"})
        await conn.feed(frame[:5])
        await conn.feed(frame[5:])
        await conn.feed(struct.pack(">II", 1, (spdy.FLAG_FIN << 24) | 2) + b"hi")
        await conn.feed(struct.pack(">HHI", 0x8003, spdy.PING, 4) + struct.pack(">I", 7))
        await asyncio.gather(*conn.tasks)
        return sent, seen

    sent, seen = asyncio.run(main())
    assert seen == {"headers": {"streamtype": "data", "port": "8888"}, "data": [b"hi", b""]}
    reply = sent[0]
    assert struct.unpack(">HH", reply[:4]) == (0x8003, spdy.SYN_REPLY)
    assert struct.unpack(">I", reply[8:12])[0] == 1
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert inflate.decompress(reply[12:]) == struct.pack(">I", 0)  # no headers
    assert sent[1] == struct.pack(">HHI", 0x8003, spdy.PING, 4) + struct.pack(">I", 7)
    assert sent[2:] == [struct.pack(">II", 1, 4) + b"pong", struct.pack(">II", 1, 1 << 24)]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, b"a\nbc\nd\n"),
        ({"tail_lines": 0}, b""),
        ({"tail_lines": 1}, b"d\n"),
        ({"tail_lines": 2}, b"bc\nd\n"),  # the window starts after a partial piece
        ({"tail_lines": 9}, b"a\nbc\nd\n"),
        ({"tail_lines": 1, "timestamps": True}, b"2026-12-01T23:00:00.000000003Z d\n"),
        ({"limit_bytes": 3}, b"a\nb"),
    ],
)
def test_read_log_tail_whole_lines_and_partial_pieces(tmp_path, options, expected):
    stamp = "2026-12-01T23:00:00.00000000{}Z stdout {} {}\n"
    pieces = [("F", "a"), ("P", "b"), ("F", "c"), ("F", "d")]
    path = tmp_path / "c-0.log"
    path.write_text("".join(stamp.format(i, t, c) for i, (t, c) in enumerate(pieces)))

    async def read():
        opts = podlogs.LogOptions(**options)
        return b"".join([c async for c in podlogs.read_log(path, opts, lambda: True)])

    assert asyncio.run(read()) == expected
