"""Run every benchmark, one after another, and end with one ``ratio`` line per figure.

``make bench`` runs this. Each benchmark of :data:`BENCHMARKS` (the scripts of this folder,
see their docstrings for what they measure) runs as its own process,
``python benchmarks/<script> <args>``, with the repository's virtual environment's Python
(the one running this file); its output is shown as it comes, each line prefixed with the
script's name, and every line of the form ``ratio NAME VALUE target TARGET`` is collected.
Each benchmark has a timeout (its time budget, :attr:`Benchmark.timeout`): past it, its
process group is stopped (``SIGTERM``, then ``SIGKILL``) and it counts as failed. Once its main
process has exited, what it left running in its group (worker processes holding the output
pipe) is stopped after :data:`DRAIN_SECONDS`. Time a benchmark leaves unused goes to the
later ones (:func:`_timeout`): the run never takes longer than the sum of the timeouts. Its
wall time is printed when it ends (``=== NAME: SECONDS s (timeout T s)``) and again, for all,
against its budget, above the summary.

The run ends with exactly one line per figure, in the order of :data:`FIGURES` (the figures of
issue 16), then any other figure a benchmark printed, then (a full run only: no ``--only``, no
``--quick``) the run's own wall-clock seconds against issue 16's 20 minutes::

    ratio spawn_manifest 0.71 target 1.50
    ...
    ratio bench_total_seconds 1043 target 1200

A VALUE at or below its TARGET meets the target, except for names ending in ``_rate``, which
must be at or above. A benchmark that fails (non-zero exit, a timeout, or a figure it should
print and did not) is reported, above the summary, with the end of its output; each figure it
owed is then printed with the value ``failed`` (``ratio NAME failed target TARGET``), never
left out. Exit status: 0 when every benchmark ran and every figure was printed, 1 otherwise
(a missed target is a measurement, not a failure; ``--check`` makes it one, exit 2).

Run: ``make bench``, or ``.venv/bin/python benchmarks/run_all.py [--only NAME ...]``
(at most about 18 minutes on 2 cores: the sum of the timeouts). ``--quick`` passes each
benchmark its own few-rounds flags.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: ``ratio NAME VALUE target TARGET`` (VALUE may be ``failed``).
RATIO_LINE = re.compile(
    r"^ratio (?P<name>[A-Za-z0-9_]+) (?P<value>\S+) target (?P<target>[-+0-9.eE]+)\s*$"
)

#: The figures of issue 16, in the summary's order, with their targets (a benchmark's own
#: ``target`` wins; these are used for a figure its benchmark failed to print).
FIGURES = {
    "spawn_manifest": 1.5,
    "spawn_start": 1.10,
    "llamaboard_start": 1.25,
    "llamaboard_page": 1.2,
    "gradio_event": 1.2,
    "freed_slice_seconds": 1.0,
    "queue_submit_rate": 200.0,
    "queue_pass_block_ms": 20.0,
}

#: Targets of the other figures the benchmarks owe (used when their benchmark failed to print
#: them, as for :data:`FIGURES`).
OTHER_TARGETS = {"progress_delay": 1.2, "queue_bad_input_p99_ms": 50.0}

#: Seconds a whole ``make bench`` may take on 2 cores (issue 16 §1: under 20 minutes); printed
#: last, as ``ratio bench_total_seconds VALUE target 1200``, after a full run (no ``--only``,
#: no ``--quick``).
TOTAL_NAME = "bench_total_seconds"
TOTAL_TARGET = 1200.0


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script: ``python benchmarks/<script> *args``.

    Attributes:
        script: file name in this folder.
        figures: the figure names it must print as ``ratio`` lines.
        args: its arguments under ``make bench``.
        quick_args: its arguments under ``--quick`` (fewer rounds, for trying the runner).
        timeout: seconds it may run before it is stopped and reported as failed.
    """

    script: str
    figures: tuple[str, ...]
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    timeout: float = 600.0


#: Seconds a benchmark's output may still come after its main process exited, before what it
#: left running (worker processes of multiprocessing that inherited its stdout and would keep
#: the pipe open: freed_slice and queue_throughput were once reported as timed out that way)
#: is stopped with its process group.
DRAIN_SECONDS = 5.0

#: Every benchmark ``make bench`` runs, in order (the cheap, in-process ones first). The
#: timeouts are the budgets of the session-7 contract plus 10 s each: with the install (about
#: 2 minutes when already installed) they add up to 20 minutes, so a benchmark that hangs
#: costs its budget, never the whole run.
BENCHMARKS = (
    Benchmark(
        "spawn_overhead.py",
        ("spawn_manifest", "spawn_start"),
        quick_args=("--rounds", "1", "--manifests", "50"),
        timeout=190,  # budget 3 min
    ),
    Benchmark(
        "freed_slice.py",
        ("freed_slice_seconds",),
        quick_args=("--frees", "3", "--baseline-frees", "2"),
        timeout=190,  # budget 3 min
    ),
    Benchmark("queue_throughput.py", ("queue_submit_rate",), timeout=160),  # budget 2.5 min
    Benchmark("queue_pass_block.py", ("queue_pass_block_ms",), timeout=100),  # budget 1.5 min
    Benchmark("queue_bad_input.py", ("queue_bad_input_p99_ms",), timeout=70),  # budget 1 min
    Benchmark(
        "llamaboard_path.py",
        ("llamaboard_start", "llamaboard_page", "gradio_event", "progress_delay"),
        # One round (B): 2 page loads and 10 events of each path, progress from a 40-step
        # training each side; the README's figures come from its default 3 rounds.
        args=(
            *("--rounds", "1", "--loads", "2", "--events", "10"),
            *("--epochs", "2", "--timeout", "150"),
        ),
        quick_args=("--rounds", "1", "--loads", "1", "--events", "5", "--no-progress"),
        timeout=370,  # budget 6 min
    ),
)


@dataclass
class Result:
    """What one benchmark gave: its ``ratio`` lines and, when it failed, why."""

    benchmark: Benchmark
    ratios: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (value, target)
    error: str = ""
    tail: str = ""
    seconds: float = 0.0


def parse_ratio(line: str) -> tuple[str, str, str] | None:
    """``"ratio spawn_start 1.02 target 1.10"`` → ``("spawn_start", "1.02", "1.10")``, else
    ``None`` (leading/trailing blanks allowed, nothing else on the line)."""
    match = RATIO_LINE.match(line.strip())
    if match is None:
        return None
    return match["name"], match["value"], match["target"]


def meets(name: str, value: str, target: str) -> bool | None:
    """Whether ``value`` meets ``target`` for figure ``name`` (``_rate``: at or above; any
    other: at or below); ``None`` when the value is not a number (``failed``)."""
    try:
        v, t = float(value), float(target)
    except ValueError:
        return None
    return v >= t if name.endswith("_rate") else v <= t


def run_one(benchmark: Benchmark, *, quick: bool, out=None, timeout: float | None = None) -> Result:
    """Run one benchmark as a subprocess, echoing its output; return what it printed.

    ``timeout``: seconds it may run (default: its own :attr:`Benchmark.timeout`).

    Never raises for a failing benchmark: the failure is in :attr:`Result.error`.
    """
    out = sys.stdout if out is None else out
    timeout = benchmark.timeout if timeout is None else timeout
    result = Result(benchmark)
    path = HERE / benchmark.script
    if not path.exists():
        result.error = f"{path.relative_to(REPO)} does not exist"
        return result
    args = benchmark.quick_args if quick else benchmark.args
    # -P: the script's folder is not put first on sys.path (no file here can shadow a module).
    command = [sys.executable, "-P", str(path), *args]
    print(f"=== {benchmark.script} {' '.join(args)}".rstrip(), file=out, flush=True)
    tail: deque[str] = deque(maxlen=30)
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lock = threading.Lock()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            with lock:
                tail.append(line)
                print(f"[{path.stem}] {line}", file=out, flush=True)
                ratio = parse_ratio(line)
                if ratio is not None:
                    name, value, target = ratio
                    result.ratios[name] = (value, target)

    reader = threading.Thread(target=read, daemon=True, name=f"read {benchmark.script}")
    reader.start()
    timed_out = False
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        code = None
    except BaseException:  # Ctrl-C: its own session would not get the SIGINT
        _stop(process)
        raise
    # Its output until the pipe closes, but not for longer than DRAIN_SECONDS after the main
    # process exited (or was stopped): a child that inherited the pipe would hold it open.
    if not timed_out:
        reader.join(DRAIN_SECONDS)
    _stop(process)  # the whole group: the main process if it still runs, and what it left
    reader.join(5)
    with lock:
        result.seconds = time.monotonic() - started
        if timed_out:
            result.error = f"stopped after {timeout:.0f} s (its timeout)"
        elif code != 0:
            result.error = f"exit status {code}"
        missing = [f for f in benchmark.figures if f not in result.ratios]
        if missing and not result.error:
            result.error = f"did not print {', '.join(missing)}"
        if result.error:
            result.tail = "\n".join(tail)
    print(
        f"=== {benchmark.script}: {result.seconds:.0f} s (timeout {timeout:.0f} s)"
        + (f", {result.error}" if result.error else ""),
        file=out,
        flush=True,
    )
    return result


def _stop(process: subprocess.Popen) -> None:
    """End the benchmark's process group (it started its own stacks and workers in it):
    SIGTERM, then SIGKILL to whatever is left after up to 20 s. The group outlives its leader
    when the leader exited and left children behind; those are ended too."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is None:  # the leader still runs
                try:
                    process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
            if not _group_alive(process.pid):
                return
            time.sleep(0.1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a member of another user
        return True
    return True


def summary(results: list[Result]) -> list[str]:
    """The summary's ``ratio`` lines: one per figure, :data:`FIGURES` first, in order, then
    the others in the order printed; a figure a failed benchmark owed is ``failed``."""
    values: dict[str, tuple[str, str]] = {}
    owed: list[str] = []
    for result in results:
        for name, (value, target) in result.ratios.items():
            values.setdefault(name, (value, target))
        owed += [f for f in result.benchmark.figures if f not in result.ratios]
    for name in owed:
        target = FIGURES.get(name, OTHER_TARGETS.get(name))
        values.setdefault(name, ("failed", _target_text(target)))
    for name, target in FIGURES.items():
        values.setdefault(name, ("failed", _target_text(target)))
    order = [*FIGURES, *(n for n in values if n not in FIGURES)]
    return [f"ratio {n} {values[n][0]} target {values[n][1]}" for n in order]


def _target_text(target: float | None) -> str:
    return "nan" if target is None else f"{target:g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this benchmark (script name with or without .py); repeatable",
    )
    parser.add_argument("--quick", action="store_true", help="few rounds (trying the runner)")
    parser.add_argument("--check", action="store_true", help="exit 2 when a target is missed")
    args = parser.parse_args(argv)
    chosen = BENCHMARKS
    if args.only:
        wanted = {n.removesuffix(".py") for n in args.only}
        chosen = tuple(b for b in BENCHMARKS if b.script.removesuffix(".py") in wanted)
        unknown = wanted - {b.script.removesuffix(".py") for b in chosen}
        if unknown:
            parser.error(
                f"unknown benchmark(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(b.script for b in BENCHMARKS)}"
            )
    started = time.monotonic()
    load_before = _load()
    results = []
    for i, benchmark in enumerate(chosen):
        results.append(run_one(benchmark, quick=args.quick, timeout=_timeout(chosen, i, started)))
    total = time.monotonic() - started
    print()
    print(
        f"benchmarks: {len(results)} in {total:.0f} s; "
        f"load average before {load_before}, after {_load()} ({os.cpu_count()} CPUs)"
    )
    for r in results:  # each benchmark's wall time against its budget
        state = "failed" if r.error else "ok"
        print(
            f"  {r.benchmark.script:<22} {r.seconds:5.0f} s  "
            f"(budget {r.benchmark.timeout:.0f} s)  {state}"
        )
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"FAILED {r.benchmark.script}: {r.error}")
        for line in r.tail.splitlines()[-15:]:
            print(f"    {line}")
    lines = summary(results)
    if args.only:  # only the figures of the chosen benchmarks
        names = {f for b in chosen for f in b.figures} | {n for r in results for n in r.ratios}
        lines = [line for line in lines if line.split()[1] in names]
    elif not args.quick:  # the whole make bench: its own time is a figure (issue 16 §1)
        lines.append(f"ratio {TOTAL_NAME} {total:.0f} target {TOTAL_TARGET:g}")
    missed = []
    for line in lines:
        _, name, value, _, target = line.split()
        if meets(name, value, target) is False:
            missed.append(name)
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    for line in lines:
        print(line)
    if failed or any(line.split()[2] == "failed" for line in lines):
        return 1
    return 2 if args.check and missed else 0


def _timeout(chosen: tuple[Benchmark, ...], i: int, started: float) -> float:
    """Benchmark ``i``'s timeout: its own, or more when the benchmarks before it left time
    unused: what is left of the sum of all timeouts after the later ones' own (so the run
    never takes longer than that sum, and a slow last benchmark gets what the fast ones saved)."""
    later = sum(b.timeout for b in chosen[i + 1 :])
    left = sum(b.timeout for b in chosen) - (time.monotonic() - started) - later
    return max(chosen[i].timeout, left)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
