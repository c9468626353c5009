"""How long a queue pass blocks the service's event loop, at 10,000 queued jobs of 100 users.

Target (issue 16 §5): no pass blocks the event loop for more than 20 ms, measured as the p99
latency of a cheap API call made while passes run.

Set-up, in this process as in the service: a SQLite file (WAL) holding ``--queued`` queued
jobs (10,000) of ``--users`` users (100) over the shipped profiles and priorities (the same
jobs as ``benchmarks/queue_throughput.py``'s admission figure), the
:class:`~llmspawner.queue.control.ControlLoop` over a stand-in cluster answering from memory
(so the figure is the service's, not an API server's), and a tornado server on the same
event loop with one cheap handler (``GET /ping``, a small JSON answer: what every API call
costs at least). A client in its own process calls it every 5 ms over keep-alive HTTP while
the loop runs ``--passes`` passes back to back (0.05 s apart, as a burst of submits makes
them); the figure is the p99 (and max) of those calls' latencies. As in the service
(``LLMQueue.serve``), what is built before the passes is frozen out of the garbage
collector's full passes (``gc.freeze()``).

Two modes in one run: the product (admission's read-and-decide in the planning worker
process, :mod:`llmspawner.queue.planning`) and the baseline (the same code on the event loop,
``QueueSettings.plan_off_loop=False``). Prints both and, last,
``ratio queue_pass_block_ms <p99 ms> target 20``.

Run: ``.venv/bin/python -P benchmarks/queue_pass_block.py`` (20 passes a mode: 20-50 s on 2
cores at load 2-7, within ``make bench``'s 1.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from queue_throughput import (  # noqa: E402
    MemoryCluster,
    admission_input,
    platform,
    store_queued,
)

TARGET_MS = 20.0

CLIENT = r"""
import http.client, json, select, sys, time
port = int(sys.argv[1])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
out = []
print("ready", flush=True)
sys.stdin.readline()
while not select.select([sys.stdin], [], [], 0)[0]:
    t = time.perf_counter()
    conn.request("GET", "/ping")
    conn.getresponse().read()
    out.append((time.perf_counter() - t) * 1000)
    time.sleep(0.005)
print(json.dumps(out), flush=True)
"""


def fill(url: str, *, queued: int, users: int) -> None:
    """Store the benchmark's queued jobs and limits (as queue_throughput's service pass)."""
    from llmspawner.queue import db as queue_db

    jobs, _active, _free, limits = admission_input(queued=queued, users=users)
    sessions = queue_db.connect(url)
    store_queued(sessions, jobs, limits)
    sessions.kw["bind"].dispose()


async def measure(*, url: str, off_loop: bool, passes: int) -> dict:
    """Run ``passes`` passes while the client calls ``/ping``; return latency figures."""
    from tornado import web
    from tornado.httpserver import HTTPServer

    from llmspawner.queue import db as queue_db
    from llmspawner.queue.context import QueueContext, QueueSettings
    from llmspawner.queue.control import ControlLoop
    from llmspawner_dev.processes import free_port

    class Ping(web.RequestHandler):
        def get(self):
            self.finish({"ok": True})

    port = free_port()
    server = HTTPServer(web.Application([(r"/ping", Ping)]))
    server.listen(port, "127.0.0.1")
    sessions = queue_db.connect(url)
    ctx = QueueContext(
        sessions,
        MemoryCluster(),
        platform(image="bench"),
        QueueSettings(plan_off_loop=off_loop),
        tracker=None,
    )
    loop_ = ControlLoop(ctx)
    await loop_.run_pass()  # admits what fits; later passes see those as active
    await loop_.run_pass()  # the planning worker is started and warm
    # As LLMQueue.serve does once built: what lives as long as the service is kept out of the
    # garbage collector's full passes (which would scan it all, pausing the loop).
    gc.freeze()
    client = subprocess.Popen(  # noqa: ASYNC220 (started once, before the timing)
        [sys.executable, "-c", CLIENT, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert (await asyncio.to_thread(client.stdout.readline)).strip() == "ready"
        client.stdin.write("go\n")
        client.stdin.flush()
        await asyncio.sleep(0.2)
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            await loop_.run_pass()
            times.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.05)
    finally:
        out, _ = await asyncio.to_thread(client.communicate, "stop\n", 60)
    server.stop()
    sessions.kw["bind"].dispose()
    latencies = sorted(json.loads(out.strip().splitlines()[-1])) if out.strip() else []
    if not latencies:
        raise RuntimeError("the client recorded no calls")
    return {
        "calls": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "max_ms": latencies[-1],
        "pass_ms": statistics.median(times),
        "waiting": len(ctx.waiting.positions),
    }


async def main_async(args) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-pass-") as tmp:
        results = {}
        for off_loop in (True, False):
            name = "worker" if off_loop else "loop"
            url = f"sqlite:///{Path(tmp) / name}.sqlite"
            fill(url, queued=args.queued, users=args.users)
            results[name] = r = await measure(url=url, off_loop=off_loop, passes=args.passes)
            where = (
                "read-and-decide in the planning worker" if off_loop else "all on the event loop"
            )
            print(
                f"{name}: {args.passes} passes over {args.queued} queued jobs of {args.users} "
                f"users ({where}): a cheap call's latency p50 {r['p50_ms']:.1f} ms, p99 "
                f"{r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms ({r['calls']} calls); "
                f"a pass takes {r['pass_ms']:.0f} ms (median, wall); {r['waiting']} waiting",
                flush=True,
            )
    from llmspawner.queue import planning

    planning.shutdown()  # the planning worker, before the interpreter's exit tears it down
    p99 = results["worker"]["p99_ms"]
    print(f"baseline queue_pass_block_ms {results['loop']['p99_ms']:.1f} (the pass on the loop)")
    print(f"ratio queue_pass_block_ms {p99:.1f} target {TARGET_MS:g}", flush=True)
    return 1 if (args.check and p99 > TARGET_MS) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=10_000, help="queued jobs")
    parser.add_argument("--users", type=int, default=100, help="their users")
    parser.add_argument("--passes", type=int, default=20, help="timed passes per mode")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
