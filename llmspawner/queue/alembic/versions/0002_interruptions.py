"""Interrupted jobs: the jobs' interruption count and sentence, and the job_pods table (the
pods of interrupted attempts with their saved logs).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from llmspawner.queue.models import UTCDateTime

# revision identifiers, used by Alembic.
revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # Tables made by create_all() of these models before any stamp (stamped 0001 by
    # llmspawner.queue.db.upgrade) already have them.
    inspector = sa.inspect(op.get_bind())
    have = {c["name"] for c in inspector.get_columns("jobs")}
    with op.batch_alter_table("jobs") as batch:
        if "interruptions" not in have:
            batch.add_column(
                sa.Column("interruptions", sa.Integer(), nullable=False, server_default="0")
            )
        if "interruption" not in have:
            batch.add_column(
                sa.Column("interruption", sa.Text(), nullable=False, server_default="")
            )
    if "job_pods" in inspector.get_table_names():
        return
    op.create_table(
        "job_pods",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("pod", sa.String(length=253), nullable=False),
        sa.Column("k8s_job", sa.String(length=63), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("counted", sa.Integer(), nullable=False),
        sa.Column("log", sa.Text(), nullable=True),
        sa.Column("saved_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_pods_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_pods")),
        sa.UniqueConstraint("job_id", "pod", name=op.f("uq_job_pods_job_id")),
    )
    op.create_index(op.f("ix_job_pods_job_id"), "job_pods", ["job_id"], unique=False)


def downgrade():
    op.drop_index(op.f("ix_job_pods_job_id"), table_name="job_pods")
    op.drop_table("job_pods")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("interruption")
        batch.drop_column("interruptions")
