"""The queue's database connection: create or migrate the schema, then hand out sessions.

SQLite (a file, the default) or PostgreSQL, by SQLAlchemy URL
(https://docs.sqlalchemy.org/en/20/core/engines.html#database-urls). As in JupyterHub
(``jupyterhub/orm.py``: ``check_db_revision``), a fresh database gets the current schema
(``create_all``) and is stamped with the newest alembic revision; a database at an older
revision is upgraded (``alembic upgrade head``) when the service connects, since the queue
service is the database's only user.

SQLite files are opened in WAL mode with ``synchronous=NORMAL`` and a busy timeout
(:data:`SQLITE_BUSY_TIMEOUT_MS`), set on every new connection (:func:`sqlite_pragmas`):
https://www.sqlite.org/wal.html, https://www.sqlite.org/pragma.html#pragma_synchronous.
A commit then appends to the write-ahead log without waiting for the disk (the log is synced
at each checkpoint), which takes a submit's commit from several fsyncs to none
(``benchmarks/queue_throughput.py`` measures both).
Durability: a commit that returned survives a crash of the service (the process, or it being
killed): the log is in the operating system's file cache and is replayed at the next open.
A power loss or an operating system crash may undo the last commits before the latest
checkpoint (default every 1000 pages), but never corrupts the database nor leaves half a
transaction. ``sqlite_synchronous="FULL"`` (``LLMQueue.sqlite_synchronous``) syncs the log at
every commit, for durability across power loss too, at the cost of one fsync per submit.

``postgresql://`` URLs use psycopg 3 (``postgresql+psycopg://``) when psycopg2, SQLAlchemy's
default driver for that scheme, is not installed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from .models import Base

#: Folder of the alembic environment and migrations.
ALEMBIC_DIR = Path(__file__).resolve().parent / "alembic"

log = logging.getLogger(__name__)

#: Milliseconds a SQLite connection waits for another's write lock before ``database is
#: locked`` (a second process, e.g. the admission worker or an admin's sqlite3 shell).
SQLITE_BUSY_TIMEOUT_MS = 10_000

#: ``synchronous`` settings by name (https://www.sqlite.org/pragma.html#pragma_synchronous).
SQLITE_SYNCHRONOUS = ("NORMAL", "FULL")


def sqlite_pragmas(dbapi_connection, *, synchronous: str = "NORMAL") -> None:
    """Set WAL mode, ``synchronous`` and the busy timeout on a new SQLite connection.

    Args:
        dbapi_connection: a :mod:`sqlite3` connection (SQLAlchemy's ``connect`` event).
        synchronous: one of :data:`SQLITE_SYNCHRONOUS`.

    Raises:
        ValueError: an unknown ``synchronous`` value.
    """
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(
            f"synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS)}, not {synchronous!r}"
        )
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_MS)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
    finally:
        cursor.close()


def _postgres_driver(url):
    """``url`` with psycopg 3 as its driver when it names none and psycopg2 is missing."""
    if url.drivername != "postgresql":
        return url
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return url  # SQLAlchemy says which driver is missing
        return url.set(drivername="postgresql+psycopg")
    return url


def alembic_config(connection: Connection | None = None, url: str = "") -> Config:
    """Return the alembic configuration of the queue's migrations (no ``alembic.ini``).

    Args:
        connection: an open connection the migrations run on (the usual case).
        url: the database URL, for commands run without a connection.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration's revision id, e.g. ``"0001"``."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision a database is stamped with, or ``None`` if it has none."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring a database to the newest schema; return what was done.

    Returns:
        ``"current"`` (nothing to do), ``"created"`` (fresh: tables created and stamped) or
        ``"upgraded"`` (migrations run).

    Raises:
        RuntimeError: the database has a revision this version of llmspawner does not know
            (written by a newer version?), naming it.
    """
    head = head_revision()
    with engine.begin() as connection:
        current = current_revision(connection)
        if current == head:
            return "current"
        cfg = alembic_config(connection)
        if current is None:
            ours = set(Base.metadata.tables)
            if not ours & set(inspect(connection).get_table_names()):
                Base.metadata.create_all(connection)
                command.stamp(cfg, "head")
                log.info("Created the queue database schema (revision %s)", head)
                return "created"
            # Tables without a stamp can only come from the first revision.
            command.stamp(cfg, "0001")
            current = "0001"
        try:
            command.upgrade(cfg, "head")
        except CommandError as e:
            raise RuntimeError(
                f"the queue database is at revision {current!r}, which this version of "
                f"llmspawner does not know (newest: {head!r}); was it written by a newer "
                f"version? ({e})"
            ) from e
        log.info("Upgraded the queue database from revision %s to %s", current, head)
        return "upgraded"


def engine_for(
    url: str, *, sqlite_wal: bool = True, sqlite_synchronous: str = "NORMAL", **engine_kwargs
) -> Engine:
    """The SQLAlchemy engine of the queue's database, without touching its schema.

    Args: as :func:`connect` (which also creates or upgrades the schema).

    Raises:
        ValueError: an unknown ``sqlite_synchronous``.
        sqlalchemy.exc.ArgumentError: the URL is not a database URL.
    """
    parsed = _postgres_driver(make_url(url))
    on_disk = False
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            engine_kwargs.setdefault("poolclass", StaticPool)
            engine_kwargs.setdefault("connect_args", {"check_same_thread": False})
        else:
            on_disk = "mode=memory" not in database
            if not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(
            f"sqlite_synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS)}, "
            f"not {sqlite_synchronous!r}"
        )
    engine = create_engine(parsed, **engine_kwargs)
    if on_disk and sqlite_wal:

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):
            sqlite_pragmas(dbapi_connection, synchronous=sqlite_synchronous)

    return engine


def shared_url(engine: Engine) -> str | None:
    """The URL (password included) by which another process reaches ``engine``'s database,
    or ``None`` for a database only this process can see (SQLite in memory)."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or "mode=memory" in database:
            return None
    return url.render_as_string(hide_password=False)


def connect(
    url: str, *, sqlite_wal: bool = True, sqlite_synchronous: str = "NORMAL", **engine_kwargs
) -> sessionmaker[Session]:
    """Open the queue's database, create or upgrade its schema, and return a session factory.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/queue.sqlite`` (the folder is created),
            ``sqlite://`` (in memory, one shared connection; for tests), or
            ``postgresql://user:password@host/db``.
        sqlite_wal: a SQLite file gets WAL mode, ``sqlite_synchronous`` and the busy
            timeout (:func:`sqlite_pragmas`); ``False``: SQLite's defaults (rollback journal,
            ``synchronous=FULL``; the benchmarks' baseline).
        sqlite_synchronous: ``"NORMAL"`` (default) or ``"FULL"``, see the module docstring.
        engine_kwargs: passed to :func:`sqlalchemy.create_engine` (e.g. ``echo=True``).

    Returns:
        A ``sessionmaker``; its sessions do not expire objects on commit
        (``expire_on_commit=False``), so rows can be read after the session closes.

    Raises:
        RuntimeError: see :func:`upgrade`.
        ValueError: an unknown ``sqlite_synchronous``.
        sqlalchemy.exc.ArgumentError: the URL is not a database URL.
    """
    engine = engine_for(
        url, sqlite_wal=sqlite_wal, sqlite_synchronous=sqlite_synchronous, **engine_kwargs
    )
    upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)


# -- submits: group commit -------------------------------------------------------------------

#: Most new jobs written in one transaction by :class:`JobInserter`.
MAX_INSERT_BATCH = 256


def row_defaults(table) -> dict:
    """``{column: value}`` of ``table``'s columns that have a plain (not callable, not SQL)
    default, e.g. ``{"priority": "normal", "attempts": 0}``; a new row's attributes before the
    database fills them. A new dict each call (computed once per table: it runs per submit)."""
    return dict(_row_defaults(table))


@functools.lru_cache(maxsize=16)
def _row_defaults(table) -> tuple[tuple[str, object], ...]:
    out = []
    for column in table.columns:
        default = column.default
        if default is not None and default.is_scalar:
            out.append((column.key, default.arg))
    return tuple(out)


class JobInserter:
    """Stores new queued jobs with group commit: the submits that arrive while one
    transaction is being written are written together in the next one.

    Each :meth:`insert` returns only after the transaction holding its row committed, so a
    submit answered ``201`` is in the database as before (see the module docstring for what a
    commit survives); a failed transaction fails every submit in it and stores none of them.
    One transaction (at most :data:`MAX_INSERT_BATCH` rows): ``INSERT ... RETURNING id`` of
    all rows (SQLAlchemy's "insertmanyvalues", in parameter order:
    https://docs.sqlalchemy.org/en/20/core/connections.html#engine-insertmanyvalues), then one
    ``UPDATE`` per row of what depends on the id (its config, its Job name), then ``COMMIT``;
    Core statements built once, not ORM objects (a unit of work costs ~1 ms per row). The
    transaction runs in a thread (waiting on PostgreSQL or the disk does not block the event
    loop), except for SQLite in memory, whose one shared connection belongs to the loop's
    thread.

    Args:
        engine: the queue database's engine (``sessionmaker.kw["bind"]``).
        table: the jobs table (``models.Job.__table__``).
    """

    def __init__(self, engine: Engine, table):
        from sqlalchemy import bindparam, insert, update

        self.engine = engine
        self.table = table
        self._insert = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        self._bindparam, self._update = bindparam, update
        self._pending: list[tuple[dict, Callable, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self._threaded = shared_url(engine) is not None

    async def insert(self, values: dict, finish: Callable[[int], dict]) -> dict:
        """Store one new row; return its values with ``id`` and ``finish``'s, once committed.

        Args:
            values: ``{column: value}``, every column but ``id`` and those ``finish`` sets.
            finish: ``finish(id) -> {column: value}``, the columns that depend on the id
                (called in the writer's thread: pure, quick).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the transaction failed (nothing of it is stored).
            Exception: what ``finish`` raised (nothing of that transaction is stored).
        """
        future = asyncio.get_running_loop().create_future()
        self._pending.append((values, finish, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_all())
        return await future

    async def _write_all(self) -> None:
        while self._pending:
            batch = self._pending[:MAX_INSERT_BATCH]
            del self._pending[: len(batch)]
            try:
                rows = [(values, finish) for values, finish, _ in batch]
                if self._threaded:
                    done = await asyncio.to_thread(self._write, rows)
                else:
                    done = self._write(rows)
            except Exception as e:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, _, future), row in zip(batch, done, strict=True):
                if not future.done():
                    future.set_result(row)

    def _write(self, rows: list[tuple[dict, Callable]]) -> list[dict]:
        with self.engine.begin() as connection:
            result = connection.execute(self._insert, [values for values, _ in rows])
            ids = [r[0] for r in result]
            done, updates = [], []
            for job_id, (values, finish) in zip(ids, rows, strict=True):
                extra = finish(job_id)
                done.append({**values, "id": job_id, **extra})
                updates.append({"_id": job_id, **extra})
            columns = tuple(sorted(updates[0])) if updates else ()
            if columns and columns != ("_id",):
                bp = self._bindparam
                stmt = (
                    self._update(self.table)
                    .where(self.table.c.id == bp("_id"))
                    .values({c: bp(c) for c in columns if c != "_id"})
                )
                connection.execute(stmt, updates)
        return done


_inserters: dict[tuple[int, int], tuple[object, object, JobInserter]] = {}


def insert_job(sessions: sessionmaker, values: dict, finish: Callable[[int], dict]):
    """:meth:`JobInserter.insert` of ``values`` into the jobs table of ``sessions``'s database,
    with one inserter per session factory and event loop (an awaitable)."""
    from .models import Job

    loop = asyncio.get_running_loop()
    key = (id(sessions), id(loop))
    entry = _inserters.get(key)
    if entry is None or entry[0] is not sessions or entry[1] is not loop:
        for k in [k for k, (_, lp, _) in _inserters.items() if lp.is_closed()]:
            del _inserters[k]
        entry = _inserters[key] = (sessions, loop, JobInserter(sessions.kw["bind"], Job.__table__))
    return entry[2].insert(values, finish)
