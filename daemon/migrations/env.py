"""Alembic's entry point: runs the migrations on the connection daemon/migrate.py holds.

Always called with a connection that already holds the migration lock; there is no
offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import daemon.tables  # noqa: F401 - registers the tables on SQLModel.metadata

connection: Connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite cannot alter most of a table in place: Alembic copies it instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
