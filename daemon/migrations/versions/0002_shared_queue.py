"""Several daemons on one queue: inbox names, routing, fairness, the daemons and control
tables, and a unique key that queues a drop once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PENDING_SQL = "state IN ('queued', 'running', 'retrying')"
RUNNABLE_SQL = "state IN ('queued', 'retrying')"


def upgrade() -> None:
    # Server defaults fill the rows already there (and rows a daemon of the previous
    # version still inserts while hosts are upgraded one by one).
    with op.batch_alter_table("job") as job:
        job.add_column(sa.Column("inbox", sa.String(), nullable=False, server_default=""))
        job.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        job.add_column(sa.Column("model", sa.String(), nullable=False, server_default=""))
        job.add_column(sa.Column("memory_gb", sa.Float(), nullable=False, server_default="0"))
        job.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        job.add_column(sa.Column("claim_seq", sa.Integer(), nullable=False, server_default="0"))
        # Files over 2 GiB and 64-bit inode numbers overflow PostgreSQL's INTEGER.
        job.alter_column("size_bytes", type_=sa.BigInteger(), existing_nullable=False)
        job.alter_column("video_inode", type_=sa.BigInteger(), existing_nullable=True)

    # Jobs queued before inboxes had names are known by the folder that held them.
    op.execute("UPDATE job SET inbox = inbox_root WHERE inbox = ''")
    # Earlier versions could queue one drop twice when two daemons watched one inbox;
    # the first copy stays, the others end here instead of publishing a second video.
    op.execute(
        "UPDATE job SET state = 'cancelled', lease_owner = NULL, lease_expires = NULL, "
        "error = 'queued twice by an earlier version of i2vd; the first copy is kept' "
        f"WHERE {PENDING_SQL} AND EXISTS (SELECT 1 FROM job AS first WHERE "
        "first.inbox = job.inbox AND first.relative = job.relative "
        "AND first.sha256 = job.sha256 AND first.rule_hash = job.rule_hash "
        "AND first.variant = job.variant AND first.id < job.id "
        "AND first.state IN ('queued', 'running', 'retrying'))"
    )
    op.create_index(
        "ux_job_pending_drop",
        "job",
        ["inbox", "relative", "sha256", "rule_hash", "variant"],
        unique=True,
        sqlite_where=sa.text(PENDING_SQL),
        postgresql_where=sa.text(PENDING_SQL),
    )
    op.create_index(
        "ix_job_runnable",
        "job",
        ["inbox", sa.text("priority DESC"), "not_before", "id"],
        sqlite_where=sa.text(RUNNABLE_SQL),
        postgresql_where=sa.text(RUNNABLE_SQL),
    )
    op.create_index("ix_job_served", "job", ["inbox", "claim_seq"])
    op.create_index("ix_job_claim_seq", "job", ["claim_seq"])
    op.create_index("ix_job_lease", "job", ["state", "lease_expires"])
    op.create_index("ix_job_file", "job", ["inbox", "relative", "sha256"])

    op.create_table(
        "daemon",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("device", sa.String(), nullable=False),
        sa.Column("engines_json", sa.String(), nullable=False),
        sa.Column("models_json", sa.String()),
        sa.Column("memory_gb", sa.Float()),
        sa.Column("inboxes_json", sa.String()),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("job_id", sa.Integer()),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
    )
    control = op.create_table(
        "control",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("pause_now", sa.Boolean(), nullable=False),
        sa.Column("paused_at", sa.Float()),
        sa.Column("paused_by", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
    )
    op.bulk_insert(
        control,
        [{"id": 1, "paused": False, "pause_now": False, "paused_by": "", "reason": ""}],
    )


def downgrade() -> None:
    op.drop_table("control")
    op.drop_table("daemon")
    for name in (
        "ix_job_file",
        "ix_job_lease",
        "ix_job_claim_seq",
        "ix_job_served",
        "ix_job_runnable",
        "ux_job_pending_drop",
    ):
        op.drop_index(name, "job")
    with op.batch_alter_table("job") as job:
        job.alter_column("video_inode", type_=sa.Integer(), existing_nullable=True)
        job.alter_column("size_bytes", type_=sa.Integer(), existing_nullable=False)
        for name in ("claim_seq", "cancel_requested", "memory_gb", "model", "priority", "inbox"):
            job.drop_column(name)
