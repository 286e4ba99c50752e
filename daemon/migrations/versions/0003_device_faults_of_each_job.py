"""Each job counts the device faults it met on a GPU that was otherwise working, so an
image that makes every GPU fault fails instead of going round the daemons for ever.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The server default fills the rows already there (and rows a daemon of the previous
    # version still inserts while hosts are upgraded one by one). Batch mode: SQLite
    # alters a table only by copying it when a change needs that.
    with op.batch_alter_table("job") as job:
        job.add_column(sa.Column("device_faults", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("job") as job:
        job.drop_column("device_faults")
