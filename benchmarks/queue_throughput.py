"""The batch queue's two figures: submit throughput through the REST API, and admission time.

Targets (issue 4): at least 200 submits per second, and one admission pass over 10,000 queued
jobs from 100 users in at most 50 ms.

**Admission** (``--only admission``): :func:`llmspawner.queue.admission.decide`, the pure
policy, on ``--queued`` jobs (default 10,000) of ``--users`` users (100), spread over the
shipped profiles (cpu, small, medium, large) and the three priorities, with one active job
per fifth user, a few per-user limits, and free slices on some profiles only (so that the
policy both admits and explains why the others wait). The figure is the median of
``--passes`` calls (min and max too). A second figure, the *service's pass*
(:meth:`llmspawner.queue.control.ControlLoop.run_pass`), adds what the service does around the
policy: it reads the same jobs from its SQLite database, lists the cluster (here a stand-in
that answers from memory, so that the figure is the service's, not an API server's) and
writes the decisions back.

**Submits** (``--only submit``): the real service process (``python -m llmspawner.queue``)
against the emulated cluster (``python -m devcluster``), with its SQLite database,
and a stand-in for the hub's ``GET /hub/api/user`` (the only hub call the service makes per
token; JupyterHub's ``HubAuth`` then caches the answer for 5 minutes, as it does in
production). ``--concurrency`` clients (default 16) post ``--submits`` LoRA SFT configs
(YAML, as the CLI sends them) to ``POST /services/llm-queue/api/jobs`` round-robin with the
tokens of ``--users`` users; an admin first sets every user's limit of running jobs to 0, so
that every job stays queued (no training pod competes for the CPU) while the service still runs
an admission pass after every burst of submits, over a queue that grows to ``--submits``
jobs. The burst starts once a pass has placed the warm-up submits in line
(:func:`wait_for_positions`): the service's planning worker, a spawned process, has started.
(Before 2026-12-02 the burst began while it was still importing, seconds on a loaded
machine: no pass ran during a short burst, and its start-up was counted as the planning
worker's CPU per submit, 2-3 ms of the 7 measured.) The figure is submits per second over
the whole burst, with latency percentiles;
every answer must be ``201``. The hub's proxy (configurable-http-proxy) is not in the path:
it adds the same ~1 ms to every service behind it.

Run: ``.venv/bin/python -P benchmarks/queue_throughput.py`` (defaults sized for ``make bench``'s
2.5 minutes: 6 admission passes, 1,000 submits on SQLite then PostgreSQL, about 2 minutes at
load 5 on 2 cores; ``--db sqlite-rollback`` adds SQLite's rollback-journal baseline). Prints
one line per figure with its target; exits 0 (these are measurements, not tests) unless
``--check`` is given and a target is missed. With ``BENCH_CPU_BY_PROCESS=1`` in the
environment the CPU line also names each worker process of the service by pid (the config
checks' worker starts first, the planning worker second). (The file was
``benchmarks/queue.py``, a name that shadowed the standard library's ``queue`` module when
run as a script.)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmspawner.queue.states import ACCESS_SCOPE, ADMIN_SCOPE, QUEUED, SERVICE_NAME

REPO = Path(__file__).resolve().parents[1]
PROFILES = ("cpu", "small", "medium", "large")
PREFIX = f"/services/{SERVICE_NAME}/"

TARGET_SUBMITS_PER_S = 200.0
TARGET_PASS_MS = 50.0


def usernames(n: int) -> list[str]:
    return [f"user{i:03d}" for i in range(n)]


# -- admission ---------------------------------------------------------------------------


def admission_input(*, queued: int, users: int, seed: int = 0):
    """Return ``(queued_jobs, active_jobs, free, user_limits)`` for :func:`decide`."""
    from llmspawner.queue import admission

    rng = random.Random(seed)
    names = usernames(users)
    t0 = 1_700_000_000.0
    jobs = [
        admission.QueuedJob(
            id=i + 1,
            user=rng.choice(names),
            profile=rng.choice(PROFILES),
            priority=rng.choices(admission.PRIORITIES, weights=(1, 6, 3))[0],
            submitted_at=t0 + i * 0.5,
        )
        for i in range(queued)
    ]
    active = [
        admission.ActiveJob(
            id=queued + 1 + k, user=name, profile=PROFILES[1 + k % 3], has_pod=k % 2 == 0
        )
        for k, name in enumerate(names[::5])
    ]
    # Some room on two profiles, none on "large"; "cpu" has no GPU limit.
    free = {"cpu": None, "small": 3, "medium": 1, "large": 0}
    limits = {name: 2 for name in names[:10]}
    return jobs, active, free, limits


def bench_decide(*, queued: int, users: int, passes: int) -> dict:
    """Time :func:`admission.decide`; return ``{"median_ms", "min_ms", "max_ms", "admitted"}``."""
    from llmspawner.queue import admission

    jobs, active, free, limits = admission_input(queued=queued, users=users)
    times = []
    decision = None
    for _ in range(passes):
        t = time.perf_counter()
        decision = admission.decide(jobs, active, free=free, user_limits=limits, default_limit=1)
        times.append((time.perf_counter() - t) * 1000)
    assert len(decision.positions) + len(decision.admit) == queued, "a queued job got lost"
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "admitted": len(decision.admit),
    }


class MemoryCluster:
    """Stands in for :class:`~llmspawner.queue.backend.KubeBackend` in the service's pass.

    Nodes are the emulated cluster's default layout; Jobs "created" are kept in memory and
    listed back; no pod ever starts.
    """

    namespace = "default"

    def __init__(self):
        from devcluster.nodes import default_layout, node_object, validate_layout

        self.nodes = [node_object(spec) for spec in validate_layout(default_layout())]
        self.jobs: dict[str, dict] = {}
        self.capacity = self  # as capacity.ClusterLister: snapshot() -> (nodes, pods)

    async def snapshot(self):
        return self.nodes, []

    async def list_jobs(self):
        return list(self.jobs.values())

    async def list_job_pods(self):
        return []

    async def create_job(self, *, config_map, job, owner_reference):
        from llmspawner.queue.backend import Created

        existed = job["metadata"]["name"] in self.jobs
        self.jobs.setdefault(job["metadata"]["name"], job)
        return Created(job=self.jobs[job["metadata"]["name"]], existed=existed)

    async def delete_job(self, name, *, config_map=None):
        return self.jobs.pop(name, None) is not None


def store_queued(sessions, jobs, limits: dict[str, int]) -> None:
    """Store ``jobs`` (from :func:`admission_input`) as queued rows and the users' ``limits``
    (``{user: max_running}``) through the queue's ``sessions`` factory; submit times become
    datetimes from 2024-01-01 on, in the same order and spacing."""
    from llmspawner.queue.models import Job, UserLimit
    from llmspawner.queue.states import QUEUED

    epoch, start = datetime.datetime(2024, 1, 1), jobs[0].submitted_at
    with sessions() as session:
        session.add_all(
            Job(
                id=j.id,
                user=j.user,
                profile=j.profile,
                priority=j.priority,
                state=QUEUED,
                reason="",
                config="{}",
                submitted_at=epoch + datetime.timedelta(seconds=j.submitted_at - start),
                k8s_name=f"bench-{j.id}",
            )
            for j in jobs
        )
        session.add_all(UserLimit(user=u, max_running=n) for u, n in limits.items())
        session.commit()


async def bench_service_pass(*, queued: int, users: int, passes: int, workdir: Path) -> dict:
    """Time :meth:`ControlLoop.run_pass` over a SQLite database of ``queued`` queued jobs."""
    from llmspawner.queue import db as queue_db
    from llmspawner.queue.context import QueueContext
    from llmspawner.queue.control import ControlLoop

    jobs, active, free, limits = admission_input(queued=queued, users=users)
    sessions = queue_db.connect(f"sqlite:///{workdir / 'bench-queue.sqlite'}")
    store_queued(sessions, jobs, limits)
    ctx = QueueContext(sessions, MemoryCluster(), platform(image="bench"))
    queue = ControlLoop(ctx)
    # The first pass admits what fits; later passes see those as active, as in service.
    t = time.perf_counter()
    await queue.run_pass()
    first = (time.perf_counter() - t) * 1000
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        await queue.run_pass()
        times.append((time.perf_counter() - t) * 1000)
    return {
        "first_ms": first,
        "median_ms": statistics.median(times),
        "max_ms": max(times),
        "waiting": len(ctx.waiting.positions),
    }


def platform(**settings):
    """The platform settings of the benchmarks: the shipped profiles, no MLflow."""
    from traitlets.config import Config

    from llmspawner.settings import LLMPlatform

    values = {"profiles_dir": str(REPO / "profiles"), "namespace": "default", **settings}
    return LLMPlatform(config=Config({"LLMPlatform": values}), env={})


# -- submits -----------------------------------------------------------------------------


def tiny_config_yaml() -> str:
    import yaml

    from llmspawner_dev.tiny_model import TINY_MODEL_NAME, lora_sft_config

    config = lora_sft_config(
        model=f"/storage/models/{TINY_MODEL_NAME}", dataset_dir="data", output_dir="out/bench"
    )
    # The queue refuses overwrite_output_dir: true (a requeued job resumes in its output_dir).
    config.pop("overwrite_output_dir", None)
    return yaml.safe_dump(config)


def make_hub_stub(models: dict[str, dict]):
    """A tornado app answering the hub's ``GET /hub/api/user`` for the tokens in ``models``."""
    from tornado import web

    class UserHandler(web.RequestHandler):
        def get(self):
            auth = self.request.headers.get("Authorization", "")
            token = auth.split(None, 1)[1] if " " in auth else ""
            model = models.get(token)
            if model is None:
                self.set_status(403)
                self.finish({"status": 403, "message": "invalid token"})
                return
            self.finish(model)

    return web.Application([(r"/hub/api/user", UserHandler)])


def cpu_load() -> subprocess.Popen:
    """The benchmark's own load generator: a busy loop pinned to one core (the last one)."""
    code = (
        "import os\n"
        "try:\n    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})\n"
        "except (AttributeError, OSError):\n    pass\n"
        "while True:\n    pass\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


class _Response:
    def __init__(self, status_code: int, text: str):
        self.status_code, self.text = status_code, text

    def json(self):
        return json.loads(self.text)


class _Client:
    """``get``/``put``/``post`` on an :class:`aiohttp.ClientSession` answering objects with
    ``status_code``, ``text`` and ``json()`` (the body read whole)."""

    def __init__(self, session):
        self.session = session

    async def _call(self, method: str, url: str, **kwargs) -> _Response:
        async with self.session.request(method, url, **kwargs) as r:
            return _Response(r.status, await r.text())

    async def get(self, url: str, **kwargs) -> _Response:
        return await self._call("GET", url, **kwargs)

    async def put(self, url: str, **kwargs) -> _Response:
        return await self._call("PUT", url, **kwargs)

    async def post(self, url: str, **kwargs) -> _Response:
        return await self._call("POST", url, **kwargs)


async def bench_submits(
    *,
    submits: int,
    users: int,
    concurrency: int,
    workdir: Path,
    timeout: float = 120.0,
    db_url: str = "",
    service_args: tuple[str, ...] = (),
    profile: Path | None = None,
) -> dict:
    """Start the emulated cluster and the service; post ``submits`` jobs; return figures."""
    import aiohttp
    from tornado.httpserver import HTTPServer

    from llmspawner_dev.processes import ChildProcess, free_port, start_devcluster

    names = usernames(users)
    tokens = {name: f"bench-token-{name}" for name in names}
    models = {
        token: {
            "kind": "user",
            "name": name,
            "admin": False,
            "groups": [],
            "scopes": [ACCESS_SCOPE],
            "session_id": None,
        }
        for name, token in tokens.items()
    }
    models["bench-admin-token"] = {
        "kind": "user",
        "name": "bench-admin",
        "admin": True,
        "groups": [],
        "scopes": [ACCESS_SCOPE, ADMIN_SCOPE],
        "session_id": None,
    }
    hub_port, service_port = free_port(), free_port()
    hub = HTTPServer(make_hub_stub(models))
    hub.listen(hub_port, "127.0.0.1")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cluster, info = await asyncio.to_thread(
        start_devcluster,
        workdir / "cluster",
        log_path=workdir / "cluster.log",
        env=env,
        timeout=timeout,
    )
    service = None
    try:
        service_url = f"http://127.0.0.1:{service_port}"
        service_env = {
            **env,
            "KUBECONFIG": info["kubeconfig"],
            **platform(image="bench").to_env(),
            "LLMSPAWNER_QUEUE_DB_URL": db_url or f"sqlite:///{workdir / 'llm-queue.sqlite'}",
            "JUPYTERHUB_SERVICE_NAME": SERVICE_NAME,
            "JUPYTERHUB_SERVICE_URL": service_url,
            "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
            "JUPYTERHUB_BASE_URL": "/",
            "JUPYTERHUB_API_URL": f"http://127.0.0.1:{hub_port}/hub/api",
            "JUPYTERHUB_API_TOKEN": "bench-service-token",
            "JUPYTERHUB_CLIENT_ID": f"service-{SERVICE_NAME}",
            "JUPYTERHUB_HOST": "",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{PREFIX}oauth_callback",
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps([ACCESS_SCOPE]),
        }
        command = [sys.executable, "-m", "llmspawner.queue", *service_args]
        if profile is not None:  # py-spy's samples of the service and its worker processes
            spy = Path(sys.executable).with_name("py-spy")
            command = [str(spy), "record", "--subprocesses", "-r", "200", "-f", "raw"]
            command += ["-o", str(profile), "--", sys.executable, "-m", "llmspawner.queue"]
            command += list(service_args)
        service = ChildProcess(
            SERVICE_NAME,
            command,
            log_path=workdir / "llm-queue.log",
            env=service_env,
            cwd=workdir,
        ).start()
        api = f"{service_url}{PREFIX}api"
        # aiohttp, not httpx: the clients share the one free core with the service, and
        # httpx's client costs several times more CPU per request (measured ~7 ms at load 10).
        connector = aiohttp.TCPConnector(limit=concurrency)
        client_timeout = aiohttp.ClientTimeout(total=30.0)
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as http:
            client = _Client(http)
            admin = {"Authorization": "token bench-admin-token"}
            deadline = time.monotonic() + timeout
            while True:
                service.check_running()
                try:
                    r = await client.get(f"{api}/jobs", headers=admin)
                    if r.status_code == 200:
                        break
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the service did not answer:\n{service.log_tail()}")
                await asyncio.sleep(0.25)
            # The first PUT waits for the checks' worker process to start (it decodes the
            # body): seconds, more on a loaded machine, so the set-up calls wait longer.
            # (Together, not one after another: 100 round trips took seconds at load 10.)
            setup_timeout = aiohttp.ClientTimeout(total=timeout)

            async def set_limit(name: str) -> None:
                try:
                    r = await client.put(
                        f"{api}/users/{name}/limit",
                        json={"max_running": 0},
                        headers=admin,
                        timeout=setup_timeout,
                    )
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    print(f"the service did not answer:\n{service.log_tail()}", file=sys.stderr)
                    raise
                assert r.status_code in (200, 204), (r.status_code, r.text)

            await asyncio.gather(*(set_limit(name) for name in names))

            body = {"config": tiny_config_yaml(), "profile": "medium", "priority": "normal"}
            latencies: list[float] = []
            statuses: dict[int, int] = {}

            async def post(i: int) -> None:
                headers = {"Authorization": f"token {tokens[names[i % users]]}"}
                t = time.perf_counter()
                r = await client.post(f"{api}/jobs", json=body, headers=headers)
                latencies.append(time.perf_counter() - t)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code != 201 and statuses[r.status_code] == 1:
                    print(f"  unexpected answer {r.status_code}: {r.text[:300]}", file=sys.stderr)

            # Warm-up: every token once (fills HubAuth's cache, as in a running service).
            await asyncio.gather(*(post(i) for i in range(users)))
            # Then until a pass has placed the warm-up jobs in line: the planning worker has
            # started (a spawned process importing for seconds, more under load) and passes
            # run during the burst, as in a running service. Without this wait a short burst
            # measured the worker's start and no pass at all.
            await wait_for_positions(
                client, api, admin, service, deadline=time.monotonic() + timeout
            )
            latencies.clear()
            warm = dict(statuses)
            statuses.clear()

            queue_: asyncio.Queue[int] = asyncio.Queue()
            for i in range(submits):
                queue_.put_nowait(i)

            async def worker() -> None:
                while True:
                    try:
                        i = queue_.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    await post(i)

            groups = {"service": service.pid, "cluster": cluster.pid, "benchmark": os.getpid()}
            cpu0 = cpu_seconds(groups)
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t0
            cpu1 = cpu_seconds(groups)
            cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
            r = await client.get(
                f"{api}/jobs", params={"state": QUEUED, "limit": "1000"}, headers=admin
            )
            queued_now = len(r.json()["jobs"]) if r.status_code == 200 else None
    finally:
        if service is not None:
            if profile is not None and service.pid:  # py-spy writes when its target exits
                stop_profiled(service.pid)
            service.stop(grace=10)
        cluster.stop(grace=10)
        hub.stop()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "per_s": submits / elapsed,
        "seconds": elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "statuses": statuses,
        "warmup_statuses": warm,
        "queued_after": queued_now,
        "cpu": cpu,
    }


async def wait_for_positions(client, api: str, headers: dict, service, *, deadline: float) -> None:
    """Wait until every queued job has its place in line (``position`` set): an admission
    pass over them has finished.

    Raises:
        TimeoutError: not by ``deadline`` (``time.monotonic()`` seconds).
    """
    while True:
        service.check_running()
        r = await client.get(
            f"{api}/jobs", params={"state": QUEUED, "limit": "1000"}, headers=headers
        )
        if r.status_code == 200:
            jobs = r.json()["jobs"]
            if jobs and all(j.get("position") is not None for j in jobs):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no admission pass placed the jobs:\n{service.log_tail()}")
        await asyncio.sleep(0.25)


def cpu_seconds(groups: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each ``{name: pid}`` and, as
    ``name+workers``, by its live descendants (the service's worker processes); 0 for a
    process that is gone. ``benchmark``'s own process holds the clients and the hub
    stand-in (its load generator and PostgreSQL server are not counted)."""
    import psutil

    out = {}
    for name, pid in groups.items():
        main = workers = 0.0
        try:
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            main = t.user + t.system
            if name != "benchmark":
                for child in proc.children(recursive=True):
                    try:
                        t = child.cpu_times()
                        workers += t.user + t.system
                        if os.environ.get("BENCH_CPU_BY_PROCESS"):  # while developing
                            out[f"{name}/{child.pid}"] = t.user + t.system
                    except psutil.Error:
                        pass
        except (psutil.Error, TypeError, ValueError):
            pass
        out[name] = main
        if name != "benchmark":
            out[f"{name}+workers"] = main + workers
    return out


def stop_profiled(spy_pid: int, seconds: float = 30.0) -> None:
    """SIGTERM the process ``py-spy record`` (``spy_pid``) runs, then wait for py-spy to write
    its samples and exit (a signal to py-spy itself would lose them)."""
    import signal

    try:
        children = Path(f"/proc/{spy_pid}/task/{spy_pid}/children").read_text().split()
    except OSError:
        return
    for child in children:
        try:
            os.kill(int(child), signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and Path(f"/proc/{spy_pid}").exists():
        try:
            if Path(f"/proc/{spy_pid}/stat").read_text().split(") ")[-1].startswith("Z"):
                return
        except OSError:
            return
        time.sleep(0.1)


# -- main --------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "meets the target" if ok else "MISSES the target"


async def main_async(args) -> int:
    missed = []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "admission"):
            d = bench_decide(queued=args.queued, users=args.users, passes=args.passes)
            ok = d["median_ms"] <= TARGET_PASS_MS
            missed += [] if ok else ["admission"]
            print(
                f"admission.decide, {args.queued} queued jobs of {args.users} users: "
                f"median {d['median_ms']:.1f} ms (min {d['min_ms']:.1f}, max {d['max_ms']:.1f}; "
                f"{d['admitted']} admitted) -- target <= {TARGET_PASS_MS:.0f} ms: {verdict(ok)}",
                flush=True,
            )
            s = await bench_service_pass(
                queued=args.queued, users=args.users, passes=args.passes, workdir=workdir
            )
            print(
                f"service pass (SQLite + cluster listing from memory + decide + write): "
                f"median {s['median_ms']:.1f} ms (first pass {s['first_ms']:.1f} ms, "
                f"max {s['max_ms']:.1f}; {s['waiting']} waiting)",
                flush=True,
            )
        if args.only in (None, "submit"):
            load = cpu_load() if args.load else None
            beside = "one CPU-heavy process beside it" if load else "no extra load"
            try:
                rates = {}
                for db in args.db:
                    rates[db] = await submit_run(args, db, workdir / db, beside)
            finally:
                if load is not None:
                    load.kill()
                    load.wait()
            measured = [rates[db] for db in ("sqlite", "postgresql") if db in rates]
            if measured:
                rate = min(measured)
                missed += [] if rate >= TARGET_SUBMITS_PER_S else ["submit"]
                if "sqlite-rollback" in rates:
                    print(
                        f"baseline queue_submit_rate {rates['sqlite-rollback']:.0f} "
                        "(SQLite's rollback journal, synchronous=FULL)"
                    )
                print(
                    f"ratio queue_submit_rate {rate:.0f} target {TARGET_SUBMITS_PER_S:.0f}",
                    flush=True,
                )
    return 1 if (args.check and missed) else 0


async def submit_run(args, db: str, workdir: Path, beside: str) -> float:
    """One submit burst on database ``db``; prints its line, returns submits per second."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before the timing)
    submits, service_args, db_url = args.submits, (), ""
    profile = Path(args.profile) / f"{db}.raw" if args.profile else None
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (py-spy needs it)
    if db == "sqlite-rollback":  # the baseline: SQLite's defaults, fewer submits (slow)
        submits, service_args = max(100, args.submits // 4), ("--LLMQueue.sqlite_wal=False",)
    if db == "postgresql":
        sys.path.insert(0, str(REPO))
        from tests import postgres

        reason = postgres.unavailable()
        if reason:
            print(f"submits on PostgreSQL: skipped ({reason})", flush=True)
            return 0.0
        with postgres.postgres_server() as db_url:
            r = await bench_submits(
                submits=submits,
                users=args.users,
                concurrency=args.concurrency,
                workdir=workdir,
                db_url=db_url,
                profile=profile,
            )
    else:
        r = await bench_submits(
            submits=submits,
            users=args.users,
            concurrency=args.concurrency,
            workdir=workdir,
            service_args=service_args,
            profile=profile,
        )
    ok = set(r["statuses"]) == {201}
    print(
        f"submits through the REST API on {db} ({beside}; {args.concurrency} concurrent "
        f"clients, {args.users} users): {r['per_s']:.0f}/s ({submits} in "
        f"{r['seconds']:.1f} s; latency p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, "
        f"p99 {r['p99_ms']:.0f} ms; answers {r['statuses']}; {r['queued_after']} queued after)"
        + ("" if ok else " -- NOT ALL 201"),
        flush=True,
    )
    cpu = r["cpu"]
    print(
        "  CPU ms per submit during the burst: "
        + ", ".join(f"{k} {v * 1000 / submits:.2f}" for k, v in cpu.items())
        + f" (load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return r["per_s"] if ok else 0.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("admission", "submit"), help="run one benchmark")
    parser.add_argument("--queued", type=int, default=10_000, help="admission: queued jobs")
    parser.add_argument("--users", type=int, default=100, help="users (both benchmarks)")
    parser.add_argument("--passes", type=int, default=6, help="admission: timed passes")
    parser.add_argument("--submits", type=int, default=1000, help="submit: jobs to post")
    parser.add_argument("--concurrency", type=int, default=16, help="submit: parallel clients")
    parser.add_argument(
        "--db",
        nargs="+",
        choices=("sqlite", "postgresql", "sqlite-rollback"),
        default=["sqlite", "postgresql"],
        help="submit: databases (sqlite-rollback: SQLite's defaults, a baseline; not run by "
        "default, to stay within make bench's 2.5 minutes)",
    )
    parser.add_argument(
        "--no-load",
        dest="load",
        action="store_false",
        help="submit: without the CPU-heavy process beside the service",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="submit: run the service under py-spy (pip install py-spy), writing DIR/<db>.raw "
        "(flame-graph text: one stack and its sample count a line)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
