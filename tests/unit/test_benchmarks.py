"""benchmarks/: nothing shadows the standard library, and run_all's summary (make bench)."""

import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest

from devcluster.testing import pid_alive

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCHMARKS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("run_all", None)


def test_no_benchmark_file_shadows_a_standard_module():
    # Running benchmarks/x.py puts benchmarks/ first on sys.path (benchmarks/queue.py once
    # hid the standard library's queue from urllib3).
    names = {p.stem for p in BENCHMARKS.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert names & set(sys.stdlib_module_names) == set()


def test_every_benchmark_of_the_runner_is_a_file(run_all):
    missing = [b.script for b in run_all.BENCHMARKS if not (BENCHMARKS / b.script).exists()]
    # Scripts still being written by their owners are reported by the runner as failed;
    # the ones of this repository's history must be there.
    assert not {"spawn_overhead.py", "queue_throughput.py"} & set(missing)
    owed = [f for b in run_all.BENCHMARKS for f in b.figures]
    assert len(owed) == len(set(owed))
    assert set(run_all.FIGURES) <= set(owed)


@pytest.mark.parametrize(
    "line, parsed",
    [
        ("ratio spawn_start 1.02 target 1.10", ("spawn_start", "1.02", "1.10")),
        ("  ratio queue_submit_rate 310.5 target 200\n", ("queue_submit_rate", "310.5", "200")),
        ("ratio gradio_event failed target 1.2", ("gradio_event", "failed", "1.2")),
        ("[spawn_overhead] ratio spawn_start 1.02 target 1.10", None),
        ("ratio spawn_start 1.02 (target 1.10)", None),
        ("ratio                  0.74           1.10   (LLMSpawner / KubeSpawner)", None),
        ("ratio spawn_start 1.02 target 1.10 extra", None),
    ],
)
def test_parse_ratio(run_all, line, parsed):
    assert run_all.parse_ratio(line) == parsed


@pytest.mark.parametrize(
    "name, value, target, expected",
    [
        ("spawn_start", "1.10", "1.10", True),
        ("spawn_start", "1.11", "1.10", False),
        ("queue_submit_rate", "200", "200", True),
        ("queue_submit_rate", "199.9", "200", False),
        ("queue_submit_rate", "1000", "200", True),
        ("gradio_event", "failed", "1.2", None),
    ],
)
def test_meets(run_all, name, value, target, expected):
    assert run_all.meets(name, value, target) is expected


def test_a_failing_benchmark_is_reported_and_its_figures_printed_as_failed(
    run_all, tmp_path, monkeypatch, capsys
):
    (tmp_path / "good.py").write_text(
        "print('ratio spawn_manifest 0.70 target 1.50')\nprint('ratio extra_one 3 target 4')\n"
    )
    (tmp_path / "half.py").write_text(
        "print('ratio llamaboard_page 1.10 target 1.2')\nraise SystemExit('boom')\n"
    )
    (tmp_path / "silent.py").write_text("print('nothing to say')\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(
        run_all,
        "BENCHMARKS",
        (
            run_all.Benchmark("good.py", ("spawn_manifest", "extra_one")),
            run_all.Benchmark("half.py", ("llamaboard_page", "gradio_event")),
            run_all.Benchmark("silent.py", ("queue_pass_block_ms",)),
            run_all.Benchmark("absent.py", ("spawn_start",)),
        ),
    )
    assert run_all.main([]) == 1
    out = capsys.readouterr().out.splitlines()
    ratios = [line for line in out if line.startswith("ratio ")]
    # The summary ends the output, one line per figure, issue 16's figures first, in order,
    # then the whole run's seconds (issue 16 §1: under 20 minutes).
    assert out[-len(ratios) :] == ratios
    assert re.fullmatch(r"ratio bench_total_seconds \d+ target 1200", ratios.pop())
    assert ratios == [
        "ratio spawn_manifest 0.70 target 1.50",
        "ratio spawn_start failed target 1.1",
        "ratio llamaboard_start failed target 1.25",
        "ratio llamaboard_page 1.10 target 1.2",
        "ratio gradio_event failed target 1.2",
        "ratio freed_slice_seconds failed target 1",
        "ratio queue_submit_rate failed target 200",
        "ratio queue_pass_block_ms failed target 20",
        "ratio extra_one 3 target 4",
    ]
    failed = [line for line in out if line.startswith("FAILED ")]
    assert failed == [
        "FAILED half.py: exit status 1",
        "FAILED silent.py: did not print queue_pass_block_ms",
        "FAILED absent.py: absent.py does not exist",
    ]
    assert "    boom" in out


def test_a_missed_target_fails_only_with_check(run_all, tmp_path, monkeypatch, capsys):
    (tmp_path / "slow.py").write_text("print('ratio spawn_start 1.30 target 1.10')\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(run_all, "BENCHMARKS", (run_all.Benchmark("slow.py", ("spawn_start",)),))
    monkeypatch.setattr(run_all, "FIGURES", {"spawn_start": 1.1})
    assert run_all.main([]) == 0
    assert run_all.main(["--check"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert "targets missed: spawn_start" in out
    assert out[-2] == "ratio spawn_start 1.30 target 1.10"
    assert out[-1].startswith("ratio bench_total_seconds ")


def test_a_figure_no_benchmark_printed_is_a_failure(run_all, tmp_path, monkeypatch, capsys):
    (tmp_path / "one.py").write_text("print('ratio spawn_start 1.00 target 1.10')\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(run_all, "BENCHMARKS", (run_all.Benchmark("one.py", ("spawn_start",)),))
    monkeypatch.setattr(run_all, "FIGURES", {"spawn_start": 1.1, "gradio_event": 1.2})
    assert run_all.main([]) == 1
    assert capsys.readouterr().out.splitlines()[-3:-1] == [
        "ratio spawn_start 1.00 target 1.10",
        "ratio gradio_event failed target 1.2",
    ]


def test_the_total_is_a_figure_of_a_full_run_only(run_all, tmp_path, monkeypatch, capsys):
    (tmp_path / "one.py").write_text("print('ratio spawn_start 1.00 target 1.10')\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(
        run_all, "BENCHMARKS", (run_all.Benchmark("one.py", ("spawn_start",), quick_args=()),)
    )
    monkeypatch.setattr(run_all, "FIGURES", {"spawn_start": 1.1})
    monkeypatch.setattr(run_all, "TOTAL_TARGET", -1.0)  # any run misses it
    assert run_all.main(["--check"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert "targets missed: bench_total_seconds" in out
    assert re.fullmatch(r"ratio bench_total_seconds \d+ target -1", out[-1])
    for argv in (["--quick"], ["--only", "one"]):
        assert run_all.main(argv) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[-1] == "ratio spawn_start 1.00 target 1.10"
        assert not any("bench_total_seconds" in line for line in out)


@pytest.fixture(scope="module")
def llamaboard_path():
    spec = importlib.util.spec_from_file_location(
        "llamaboard_path_bench", BENCHMARKS / "llamaboard_path.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llamaboard_path_prints_every_figure_the_runner_expects(run_all, llamaboard_path):
    (entry,) = [b for b in run_all.BENCHMARKS if b.script == "llamaboard_path.py"]
    lines = llamaboard_path.ratio_lines(
        {"llamaboard_start": 0.9, "gradio_event": 1.234}, progress=True
    )
    assert [run_all.parse_ratio(line)[0] for line in lines] == list(entry.figures)
    assert lines == [
        "ratio llamaboard_start 0.90 target 1.25",
        "ratio llamaboard_page failed target 1.20",
        "ratio gradio_event 1.23 target 1.20",
        "ratio progress_delay failed target 1.20",
    ]
    # --no-progress (make bench --quick): the progress figure is not owed.
    assert "--no-progress" in entry.quick_args
    assert [line.split()[1] for line in llamaboard_path.ratio_lines({}, progress=False)] == [
        "llamaboard_start",
        "llamaboard_page",
        "gradio_event",
    ]


def test_spawn_overheads_cluster_process_serves_and_ends_with_the_run(tmp_path):
    """``spawn_overhead.py --cluster process``: the cluster's child is up once its kubeconfig
    is yielded and is gone once the run's context ends."""
    import asyncio

    spec = importlib.util.spec_from_file_location(
        "spawn_overhead_bench", BENCHMARKS / "spawn_overhead.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def scenario():
        import httpx

        async with module.cluster_kubeconfig(tmp_path / "c", own_process=True) as kubeconfig:
            url = re.search(r"server: (\S+)", kubeconfig.read_text())[1]
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}/version")).status_code == 200
        with pytest.raises(httpx.ConnectError):  # the child stopped its API server and exited
            async with httpx.AsyncClient() as client:
                await client.get(f"{url}/version")

    asyncio.run(scenario())


def test_every_owed_figure_has_a_target_for_its_failed_line(run_all):
    """A figure its benchmark failed to print is shown as ``failed`` against its target, never
    against ``nan``."""
    owed = {f for b in run_all.BENCHMARKS for f in b.figures}
    assert owed <= set(run_all.FIGURES) | set(run_all.OTHER_TARGETS)


def test_a_benchmark_whose_children_hold_its_output_ends_when_it_exits(
    run_all, tmp_path, monkeypatch
):
    """A worker process that inherited the benchmark's stdout (multiprocessing's, left behind
    by ``os._exit``) kept the pipe open, and freed_slice.py, done, was reported as stopped at
    its timeout. Now the runner stops the group DRAIN_SECONDS after the main process exited."""
    pidfile = tmp_path / "child.pid"
    (tmp_path / "leaves.py").write_text(
        "import subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '300'])  # inherits stdout\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "print('ratio spawn_start 1.00 target 1.10', flush=True)\n"
    )
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(run_all, "DRAIN_SECONDS", 0.2)
    benchmark = run_all.Benchmark("leaves.py", ("spawn_start",), timeout=30)
    result = run_all.run_one(benchmark, quick=False, out=io.StringIO())
    assert result.error == ""
    assert result.ratios == {"spawn_start": ("1.00", "1.10")}
    child = int(pidfile.read_text())
    assert not pid_alive(child)  # ended with the benchmark's process group


def test_a_hanging_benchmark_is_stopped_at_its_timeout_with_its_group(
    run_all, tmp_path, monkeypatch, capsys
):
    pidfile = tmp_path / "child.pid"
    (tmp_path / "hangs.py").write_text(
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "print('ratio spawn_start 1.00 target 1.10', flush=True)\n"
        "time.sleep(300)\n"
    )
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(
        run_all,
        "BENCHMARKS",
        (run_all.Benchmark("hangs.py", ("spawn_start", "spawn_manifest"), timeout=1),),
    )
    assert run_all.main([]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "FAILED hangs.py: stopped after 1 s (its timeout)" in out
    # Its wall time is shown when it ends and above the summary.
    assert any(
        re.fullmatch(r"=== hangs\.py: \d+ s \(timeout 1 s\), stopped after .*", x) for x in out
    )
    assert any(re.fullmatch(r"  hangs\.py +\d+ s  \(budget 1 s\)  failed", x) for x in out)
    assert "ratio spawn_manifest failed target 1.5" in out
    assert not pid_alive(int(pidfile.read_text()))


def test_the_timeouts_add_up_to_the_budget(run_all):
    """The contract's budgets (plus slack) and the install's ~2 minutes stay within issue 16's
    20 minutes, so no hanging benchmark can push make bench past it."""
    install_seconds = 120
    assert sum(b.timeout for b in run_all.BENCHMARKS) + install_seconds <= run_all.TOTAL_TARGET




def test_time_a_benchmark_leaves_unused_goes_to_the_later_ones(run_all, monkeypatch):
    chosen = (
        run_all.Benchmark("a.py", (), timeout=100),
        run_all.Benchmark("b.py", (), timeout=50),
        run_all.Benchmark("c.py", (), timeout=30),
    )
    now = [1000.0]
    monkeypatch.setattr(run_all.time, "monotonic", lambda: now[0])
    started = now[0]
    assert run_all._timeout(chosen, 0, started) == 100
    now[0] += 40  # a.py took 40 s of its 100
    assert run_all._timeout(chosen, 1, started) == 110  # 180 - 40 - 30
    now[0] += 50  # b.py took 50 s: c.py gets the rest
    assert run_all._timeout(chosen, 2, started) == 90  # 180 - 90
    now[0] += 200  # a run already past the sum: each keeps at least its own timeout
    assert run_all._timeout(chosen, 2, started) == 30
