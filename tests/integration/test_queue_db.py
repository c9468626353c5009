"""The queue's database on real SQLite files and a real PostgreSQL server: schema creation,
alembic migrations, columns, SQLite's journal settings.

PostgreSQL: a throwaway server started once per session (:mod:`tests.postgres`: Debian's
``postgresql`` binaries, which ``scripts/install.sh`` installs as root, and ``psycopg``), or
the database at ``LLMSPAWNER_TEST_POSTGRES_URL`` (an empty database the test may fill and
drop) when that is set. Skipped, saying why, only when neither is available.
"""

import datetime
import os

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from llmspawner.queue import db
from llmspawner.queue.models import Base, Job, UserLimit
from tests import postgres

POSTGRES = os.environ.get("LLMSPAWNER_TEST_POSTGRES_URL", "")


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of an empty PostgreSQL database (see the module docstring)."""
    if POSTGRES:
        yield POSTGRES
        return
    reason = postgres.unavailable()
    if reason:
        pytest.skip(reason)
    with postgres.postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/queue.sqlite"  # the folder does not exist yet
    pg = request.getfixturevalue("postgres_url")
    engine = create_engine(pg)
    Base.metadata.drop_all(engine)
    with engine.begin() as c:
        c.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()
    return pg


def schema_diff(engine):
    with engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c), Base.metadata)


def revision(engine):
    with engine.connect() as c:
        return db.current_revision(c)


def test_fresh_database_is_created_and_stamped_and_a_second_connect_is_a_noop(url):
    sessions = db.connect(url)
    engine = sessions.kw["bind"]
    assert revision(engine) == db.head_revision() == "0002"
    assert set(inspect(engine).get_table_names()) == {
        "alembic_version",
        "jobs",
        "job_pods",
        "user_limits",
    }
    assert schema_diff(engine) == []
    with sessions() as s:
        s.add(Job(user="alice", profile="medium", priority="normal", config="{}"))
        s.commit()
    assert db.upgrade(engine) == "current"
    again = db.connect(url)
    with again() as s:
        (job,) = s.scalars(select(Job)).all()
        assert (job.id, job.user, job.state, job.reason, job.attempts) == (
            1,
            "alice",
            "queued",
            "",
            0,
        )
        assert job.k8s_name is None and job.mlflow_run_id is None


def test_alembic_upgrade_from_empty_builds_the_models_schema(url):
    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(url.removeprefix("sqlite:///")), exist_ok=True)
    engine = create_engine(url)
    with engine.begin() as c:
        command.upgrade(db.alembic_config(c), "head")
    assert revision(engine) == "0002"
    assert schema_diff(engine) == []  # columns, types, nullability, indexes, unique
    # What compare_metadata does not compare: check constraints and AUTOINCREMENT.
    assert db.upgrade(engine) == "current"
    sessions = sessionmaker(engine)
    with sessions() as s:
        s.add(Job(user="a", profile="cpu", state="paused"))
        with pytest.raises(IntegrityError):
            s.commit()
    if url.startswith("sqlite"):
        with engine.connect() as c:
            ddl = c.execute(text("SELECT sql FROM sqlite_master WHERE name = 'jobs'")).scalar()
        assert "AUTOINCREMENT" in ddl
    # and back down, and up again
    with engine.begin() as c:
        command.downgrade(db.alembic_config(c), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    with engine.begin() as c:
        command.upgrade(db.alembic_config(c), "head")
    assert schema_diff(engine) == []


def test_tables_without_a_stamp_are_stamped(tmp_path):
    url = f"sqlite:///{tmp_path}/q.sqlite"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    assert revision(engine) is None
    assert db.upgrade(engine) == "upgraded"
    assert revision(engine) == "0002"


def test_a_newer_database_is_refused_with_its_revision(tmp_path):
    url = f"sqlite:///{tmp_path}/q.sqlite"
    db.connect(url)
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(
        RuntimeError,
        match="the queue database is at revision '0099', which this version of llmspawner does not know",
    ):
        db.connect(url)


def test_job_ids_are_never_reused(url):
    sessions = db.connect(url)
    with sessions() as s:
        s.add_all([Job(user="a", profile="cpu", config="{}") for _ in range(2)])
        s.commit()
        s.delete(s.get(Job, 2))
        s.commit()
        job = Job(user="a", profile="cpu", config="{}")
        s.add(job)
        s.commit()
        assert job.id == 3  # names of Kubernetes Jobs are made of it


@pytest.mark.parametrize(
    "bad",
    [
        {"state": "paused"},
        {"priority": "urgent"},
    ],
)
def test_check_constraints(url, bad):
    sessions = db.connect(url)
    with sessions() as s:
        s.add(Job(user="a", profile="cpu", config="{}", **bad))
        with pytest.raises(IntegrityError):
            s.commit()


def test_unique_job_names_and_limits(url):
    sessions = db.connect(url)
    with sessions() as s:
        s.add_all(
            [
                Job(user="a", profile="cpu", k8s_name="llm-job-a-1"),
                Job(user="a", profile="cpu", k8s_name="llm-job-a-1"),
            ]
        )
        with pytest.raises(IntegrityError):
            s.commit()
        s.rollback()
        s.add(UserLimit(user="a", max_running=-1))
        with pytest.raises(IntegrityError):
            s.commit()
        s.rollback()
        s.add(UserLimit(user="Bob.Smith@example.org", max_running=3))
        s.commit()
    with sessions() as s:
        assert s.get(UserLimit, "Bob.Smith@example.org").max_running == 3


def test_times_are_naive_utc(url):
    sessions = db.connect(url)
    cest = datetime.timezone(datetime.timedelta(hours=2))
    with sessions() as s:
        job = Job(
            user="a",
            profile="cpu",
            admitted_at=datetime.datetime(2026, 1, 2, 12, 0, tzinfo=cest),
            started_at=datetime.datetime(2026, 1, 2, 10, 30),
        )
        s.add(job)
        s.commit()
        job_id = job.id
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.admitted_at == datetime.datetime(2026, 1, 2, 10, 0)
        assert job.started_at == datetime.datetime(2026, 1, 2, 10, 30)
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        assert abs((now - job.submitted_at).total_seconds()) < 60


def test_rows_stay_readable_after_the_session(url):
    sessions = db.connect(url)
    with sessions() as s:
        job = Job(user="a", profile="cpu")
        s.add(job)
        s.commit()
    assert (job.id, job.state) == (1, "queued")


def test_in_memory_database_is_shared_by_sessions():
    sessions = db.connect("sqlite://")
    with sessions() as s:
        s.add(Job(user="a", profile="cpu"))
        s.commit()
    with sessions() as s:
        assert s.scalars(select(Job.user)).all() == ["a"]


def test_sqlite_files_use_wal_normal_and_a_busy_timeout(tmp_path):
    sessions = db.connect(f"sqlite:///{tmp_path}/q.sqlite")
    with sessions() as s:
        pragmas = [
            s.execute(text(f"PRAGMA {p}")).scalar()
            for p in ("journal_mode", "synchronous", "busy_timeout")
        ]
    assert pragmas == ["wal", 1, db.SQLITE_BUSY_TIMEOUT_MS]  # synchronous 1 = NORMAL
    assert (tmp_path / "q.sqlite-wal").exists()
    # A commit is in the log, readable by a new connection (another process, a restart).
    with sessions() as s:
        s.add(Job(user="a", profile="cpu"))
        s.commit()
    engine = create_engine(f"sqlite:///{tmp_path}/q.sqlite")
    with engine.connect() as c:
        assert c.execute(text("SELECT user FROM jobs")).scalars().all() == ["a"]
    full = db.connect(f"sqlite:///{tmp_path}/f.sqlite", sqlite_synchronous="FULL")
    with full() as s:
        assert s.execute(text("PRAGMA synchronous")).scalar() == 2
    with pytest.raises(
        ValueError, match="sqlite_synchronous must be one of NORMAL, FULL, not 'OFF'"
    ):
        db.connect(f"sqlite:///{tmp_path}/o.sqlite", sqlite_synchronous="OFF")


def test_sqlite_defaults_when_wal_is_off(tmp_path):
    sessions = db.connect(f"sqlite:///{tmp_path}/q.sqlite", sqlite_wal=False)
    with sessions() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "delete"
        assert s.execute(text("PRAGMA synchronous")).scalar() == 2


def test_postgresql_urls_without_a_driver_use_psycopg(postgres_url):
    plain = "postgresql://" + postgres_url.split("://", 1)[1]
    sessions = db.connect(plain)
    engine = sessions.kw["bind"]
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        assert engine.url.drivername == "postgresql+psycopg"
    with sessions() as s:
        assert s.execute(text("SELECT 1")).scalar() == 1


def _new_job(user: str) -> dict:
    return {
        **db.row_defaults(Job.__table__),
        "user": user,
        "profile": "medium",
        "priority": "normal",
        "state": "queued",
        "reason": "",
        "submitted_at": datetime.datetime(2026, 1, 1),
    }


async def test_group_commit_stores_every_submit_once_with_its_own_id(url):
    """Concurrent inserts share transactions (db.JobInserter) yet each gets its own id and
    its id-derived columns, and is committed when its insert returns."""
    import asyncio

    sessions = db.connect(url)

    def finish(job_id: int) -> dict:
        return {"k8s_name": f"job-{job_id}", "config": f'{{"run_name": "job-{job_id}"}}'}

    done = await asyncio.gather(
        *(db.insert_job(sessions, _new_job(f"u{i % 7}"), finish) for i in range(60))
    )
    ids = [row["id"] for row in done]
    assert len(set(ids)) == 60
    assert all(row["k8s_name"] == f"job-{row['id']}" for row in done)
    assert all(row["user"] == f"u{i % 7}" for i, row in enumerate(done))
    with sessions() as s:  # a new session sees every row: committed before the answers
        stored = {j.id: (j.user, j.k8s_name, j.config, j.attempts) for j in s.scalars(select(Job))}
    assert stored == {
        row["id"]: (row["user"], row["k8s_name"], row["config"], row["attempts"]) for row in done
    }
    assert Job(**done[0]).k8s_name == done[0]["k8s_name"]  # a row object for the API's view


async def test_a_failed_group_commit_fails_its_submits_and_stores_none(url):
    import asyncio

    sessions = db.connect(url)

    def finish(job_id: int) -> dict:
        return {"k8s_name": "same-name"}  # unique: the second row of a batch breaks it

    results = await asyncio.gather(
        *(db.insert_job(sessions, _new_job("alice"), finish) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, IntegrityError) for r in results), results
    with sessions() as s:
        assert s.scalars(select(Job)).all() == []
    ok = await db.insert_job(sessions, _new_job("bob"), lambda i: {"k8s_name": f"b-{i}"})
    assert ok["k8s_name"] == f"b-{ok['id']}"  # the inserter goes on after a failure


def _plan(sessions):
    from llmspawner.queue import planning

    return planning.plan_admission(
        sessions,
        free={"cpu": None, "medium": 2, "large": 0},
        bound=[],
        default_limit=1,
        labels={},
        totals={},
    )


def _reference_plan(sessions):
    """The decision from the ORM's rows, converted afresh (no memo, no raw read)."""
    from llmspawner.queue import admission
    from llmspawner.queue.status import to_epoch

    free = {"cpu": None, "medium": 2, "large": 0}
    with sessions() as s:
        rows = s.scalars(select(Job).where(Job.state.in_(["queued", "admitted", "running"])))
        queued, active = [], []
        for r in rows:
            if r.state != "queued":
                active.append(admission.ActiveJob(r.id, r.user, r.profile, False))
            elif r.profile in free:
                queued.append(
                    admission.QueuedJob(
                        r.id, r.user, r.profile, r.priority, to_epoch(r.submitted_at)
                    )
                )
        limits = {u.user: u.max_running for u in s.scalars(select(UserLimit))}
    return admission.decide(queued, active, free=free, user_limits=limits, default_limit=1)


def test_admission_reads_submit_times_as_stored(url):
    """planning reads submitted_at as the driver returns it (SQLite: text) and converts it
    itself: the same datetime as the ORM's, with or without microseconds."""
    from llmspawner.queue import planning

    sessions = db.connect(url)
    times = [
        datetime.datetime(2026, 1, 1),
        datetime.datetime(2026, 1, 1, 0, 0, 0, 1),
        datetime.datetime(2026, 3, 4, 5, 6, 7, 890123),
    ]
    with sessions() as s:
        s.add_all(Job(**{**_new_job(f"u{i}"), "submitted_at": t}) for i, t in enumerate(times))
        s.commit()
    with sessions() as s:
        raw = [r[4] for r in s.connection().execute(planning._ROWS, {"states": ["queued"]})]
        stored = [j.submitted_at for j in s.scalars(select(Job).order_by(Job.id))]
    assert [planning._as_datetime(v) for v in raw] == stored == times


def test_admission_memo_never_decides_differently_from_the_database(url):
    """The planning memo (planning._queued_memo: a queued job's QueuedJob by its row) gives
    the decision a fresh read gives after every kind of change between two passes, made
    behind the service's back too (an admin's SQL): a priority, a submit time, a state, a
    profile, a user's limit, new and deleted rows; and a memo from another database (a
    restart: the same ids with other values) is never taken for this one's."""
    from llmspawner.queue import planning

    sessions = db.connect(url)
    base = datetime.datetime(2026, 1, 1)
    with sessions() as s:
        s.add_all(
            Job(
                **{
                    **_new_job(f"u{i % 4}"),
                    "profile": ("medium", "cpu", "large")[i % 3],
                    "priority": ("low", "normal", "high")[i % 3],
                    "submitted_at": base + datetime.timedelta(seconds=i),
                    "k8s_name": f"job-{i}",
                }
            )
            for i in range(30)
        )
        s.commit()
    planning._queued_memo = {  # another database's rows with these ids (before a restart)
        (i, "u0", "medium", "high", "x"): planning.admission.QueuedJob(i, "u0", "medium", "high", 0)
        for i in range(1, 31)
    }
    assert _plan(sessions)[0] == _reference_plan(sessions)
    changes = [
        "UPDATE jobs SET priority = 'high' WHERE id = 4",
        "UPDATE jobs SET submitted_at = '2025-12-31 00:00:00.000000' WHERE id = 20",
        "UPDATE jobs SET state = 'cancelled' WHERE id = 1",
        "UPDATE jobs SET state = 'running' WHERE id = 7",
        "UPDATE jobs SET profile = 'cpu' WHERE id = 3",
        "DELETE FROM jobs WHERE id = 10",
        "INSERT INTO user_limits (user, max_running) VALUES ('u1', 3)",
    ]
    if not url.startswith("sqlite"):
        changes = [c.replace("(user,", '("user",') for c in changes]
        changes[1] = "UPDATE jobs SET submitted_at = '2025-12-31 00:00:00' WHERE id = 20"
    for change in changes:
        before = dict(planning._queued_memo)
        with sessions() as s:
            s.execute(text(change))
            s.commit()
        decision, _ = _plan(sessions)
        assert decision == _reference_plan(sessions), change
        assert before, "the memo was used"
    with sessions() as s:
        s.add(Job(**{**_new_job("u3"), "priority": "high", "k8s_name": "job-new"}))
        s.commit()
    decision, _ = _plan(sessions)
    assert decision == _reference_plan(sessions)
    assert set(j.id for j in planning._queued_memo.values()) == set(decision.positions) | set(
        decision.admit
    ) - {7}
