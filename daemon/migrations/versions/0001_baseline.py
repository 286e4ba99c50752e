"""Baseline: the job table as i2vd 0.1.0 made it (SQLModel's create_all).

A queue made by 0.1.0 has this table but no alembic_version; daemon/migrate.py
stamps it with this revision instead of running it.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    text, flag, number, real = sa.String(), sa.Boolean(), sa.Integer(), sa.Float()
    op.create_table(
        "job",
        sa.Column("id", number, primary_key=True),
        sa.Column("source", text, nullable=False),
        sa.Column("inbox_root", text, nullable=False),
        sa.Column("relative", text, nullable=False),
        sa.Column("sha256", text, nullable=False),
        sa.Column("size_bytes", number, nullable=False),
        sa.Column("rule_name", text, nullable=False),
        sa.Column("rule_hash", text, nullable=False),
        sa.Column("rule_file", text, nullable=False),
        sa.Column("rule_json", text, nullable=False),
        sa.Column("drop", text, nullable=False),
        sa.Column("variant", text, nullable=False),
        sa.Column("drop_settled", flag, nullable=False),
        sa.Column("text", text, nullable=False),
        sa.Column("companions_json", text, nullable=False),
        sa.Column("engine", text, nullable=False),
        sa.Column("state", text, nullable=False),
        sa.Column("attempts", number, nullable=False),
        sa.Column("max_attempts", number, nullable=False),
        sa.Column("not_before", real, nullable=False),
        sa.Column("lease_owner", text),
        sa.Column("lease_expires", real),
        sa.Column("created_at", real, nullable=False),
        sa.Column("started_at", real),
        sa.Column("finished_at", real),
        sa.Column("error", text),
        sa.Column("hint", text),
        sa.Column("duplicate_of", number),
        sa.Column("video_path", text),
        sa.Column("sidecar_path", text),
        sa.Column("source_dest", text),
        sa.Column("video_inode", number),
        sa.Column("source_stuck", flag, nullable=False),
        sa.Column("progress", real, nullable=False),
        sa.Column("timings_json", text),
    )
    op.create_index("ix_job_claim", "job", ["state", "not_before"])
    op.create_index("ix_job_identity", "job", ["sha256", "rule_name", "rule_hash"])
    op.create_index("ix_job_drop", "job", ["drop"])
    op.create_index("ix_job_source", "job", ["source", "sha256"])


def downgrade() -> None:
    op.drop_table("job")
