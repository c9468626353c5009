"""The queue's database tables (SQLAlchemy 2 ORM): jobs, their pods (attempts, saved logs) and
per-user limits.

The schema is created and migrated by :func:`llmspawner.queue.db.connect` with alembic
(``llmspawner/queue/alembic/versions/``); a change here needs a new migration there, and
``tests/integration/test_queue_db.py`` fails until the migrations produce this schema.

Times are stored as naive datetimes in UTC, as JupyterHub's ``orm`` does: an aware datetime
given to a column is converted to UTC first; values read back are naive UTC.
"""

from __future__ import annotations

import datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .states import DEFAULT_PRIORITY, PRIORITIES, QUEUED, STATES

# Stable constraint names, so that alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}


def utcnow() -> datetime.datetime:
    """The current time as a naive UTC datetime (the form stored in the database)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class UTCDateTime(TypeDecorator):
    """A ``DateTime`` stored as naive UTC; aware values are converted to UTC on the way in."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value


class Base(DeclarativeBase):
    """Declarative base of the queue's tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Job(Base):
    """One training job handed in by a user.

    Columns:
        id: never reused (SQLite ``AUTOINCREMENT``), as it names the Kubernetes Job.
        user: the owner's hub name (raw, not the slug).
        profile: the GPU profile slug.
        priority: one of :data:`llmspawner.queue.states.PRIORITIES`.
        state: one of :data:`llmspawner.queue.states.STATES`.
        reason: a plain sentence for the state (why it waits, why it failed); ``""`` if none.
        config: the prepared LLaMA-Factory config as JSON text
            (:func:`llmspawner.queue.lf_config.prepare_config`).
        submitted_at, admitted_at, started_at, finished_at: naive UTC datetimes.
        k8s_name: the Job's (and ConfigMap's) name, :func:`llmspawner.queue.k8s_objects.job_name`.
        mlflow_experiment_id, mlflow_run_id: the job's MLflow run, once known.
        attempts: how many times a Kubernetes Job was created for it (0 while queued), so that a
            restart of the service can tell a Job it created from one it did not. A job
            requeued as a new Job gets the name of attempt ``attempts + 1``
            (:func:`~llmspawner.queue.k8s_objects.job_name`).
        interruptions: how many times it was interrupted by a disruption or the deletion of
            its pod or Job and ran again (counted against ``LLMQueue.max_requeues``);
            preemptions by the queue are not counted (they are in :class:`JobPod`).
        interruption: the sentence of the last interruption (``"interrupted: <reason>,
            requeued (n of N)"``), ``""`` if none; shown with the job's reason.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_one_of("state", STATES), name="state"),
        CheckConstraint(_one_of("priority", PRIORITIES), name="priority"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    profile: Mapped[str] = mapped_column(String(63))
    priority: Mapped[str] = mapped_column(String(16), default=DEFAULT_PRIORITY)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[str] = mapped_column(Text, default="{}")
    submitted_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime, default=utcnow)
    admitted_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    k8s_name: Mapped[str | None] = mapped_column(String(63), unique=True)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    interruptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    interruption: Mapped[str] = mapped_column(Text, default="", server_default="")

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.user!r} {self.profile} {self.state}>"


class JobPod(Base):
    """A pod of a job that was interrupted or removed, with a saved copy of its log.

    Kubernetes deletes an evicted, preempted or deleted pod, and with it its log; the queue
    reads the log while the pod terminates (or before it preempts it) and keeps it here, so
    that the log of every attempt stays readable (``GET api/jobs/<id>/logs?attempt=<pod>``).

    Columns:
        job_id: the queue job.
        pod: the pod's name (unique per job).
        k8s_job: the Kubernetes Job it belonged to (the attempt).
        reason: why it ended early (``"EvictionByEvictionAPI"``, ``"preempted by job 7 ..."``,
            ``"its pod was deleted"``), ``""`` when only its log was saved.
        counted: whether it was counted in :attr:`Job.interruptions`.
        log: the saved log (its last :data:`llmspawner.queue.disruption.MAX_SAVED_LOG` bytes,
            decoded as UTF-8), ``None`` when it could not be read.
        saved_at: naive UTC time the row was written.
    """

    __tablename__ = "job_pods"
    __table_args__ = (UniqueConstraint("job_id", "pod"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    pod: Mapped[str] = mapped_column(String(253))
    k8s_job: Mapped[str] = mapped_column(String(63), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    counted: Mapped[int] = mapped_column(Integer, default=0)
    log: Mapped[str | None] = mapped_column(Text)
    saved_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<JobPod {self.job_id} {self.pod!r} {self.reason!r}>"


class UserLimit(Base):
    """A per-user maximum of active (admitted or running) jobs, set by an admin.

    Users without a row get the service's default limit.
    """

    __tablename__ = "user_limits"
    __table_args__ = (CheckConstraint("max_running >= 0", name="max_running"),)

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    max_running: Mapped[int] = mapped_column(Integer)

    def __repr__(self) -> str:
        return f"<UserLimit {self.user!r} {self.max_running}>"
