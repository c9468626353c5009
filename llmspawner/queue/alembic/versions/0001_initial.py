"""The queue's first schema: jobs and per-user limits.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from llmspawner.queue.models import UTCDateTime

# revision identifiers, used by Alembic.
revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STATES = "'queued', 'admitted', 'running', 'succeeded', 'failed', 'cancelled'"


def upgrade():
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("profile", sa.String(length=63), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("submitted_at", UTCDateTime(), nullable=False),
        sa.Column("admitted_at", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("k8s_name", sa.String(length=63), nullable=True),
        sa.Column("mlflow_experiment_id", sa.String(length=64), nullable=True),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.CheckConstraint(f"state IN ({_STATES})", name=op.f("ck_jobs_state")),
        sa.CheckConstraint("priority IN ('high', 'normal', 'low')", name=op.f("ck_jobs_priority")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("k8s_name", name=op.f("uq_jobs_k8s_name")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"], unique=False)
    op.create_index(op.f("ix_jobs_user"), "jobs", ["user"], unique=False)
    op.create_table(
        "user_limits",
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("max_running", sa.Integer(), nullable=False),
        sa.CheckConstraint("max_running >= 0", name=op.f("ck_user_limits_max_running")),
        sa.PrimaryKeyConstraint("user", name=op.f("pk_user_limits")),
    )


def downgrade():
    op.drop_table("user_limits")
    op.drop_index(op.f("ix_jobs_user"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_state"), table_name="jobs")
    op.drop_table("jobs")
