"""Bring the queue database's schema up to date at start-up, one daemon at a time.

Every daemon runs this when it opens the queue. A lock makes the others wait while
one migrates: PostgreSQL's advisory lock, or on SQLite an exclusive lock on a file
beside the database (SQLite queues live on one host). A queue made by i2vd 0.1.0
(its ``job`` table but no ``alembic_version``) is stamped as the baseline first,
then upgraded like any other.

To add a migration: change the models in ``daemon/tables.py``, then run
``python -m daemon.migrate revision "what changed"`` and edit the new file in
``daemon/migrations/versions`` (README, "Changing the queue's schema").
"""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from .schema_version import SchemaTooNew

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
# Any constant shared by every i2vd: the key of PostgreSQL's migration lock.
PG_LOCK_KEY = 0x69327664  # "i2vd"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: not made by Alembic, or empty)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to ``revision``; safe to call from several daemons at once.

    Raises SchemaTooNew when the database is at a revision this i2vd does not know
    (a newer i2vd upgraded it: this host must be upgraded too)."""
    with _migration_lock(engine), engine.connect() as conn:
        config = alembic_config(conn)
        tables = set(inspect(conn).get_table_names())
        if "job" in tables and "alembic_version" not in tables:
            command.stamp(config, BASELINE)
        at = MigrationContext.configure(conn).get_current_revision()
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        if at is not None and at not in known:
            raise SchemaTooNew(
                f"the queue database is at schema {at}, newer than this i2vd knows "
                f"(up to {head()}): a newer i2vd upgraded it; upgrade i2vd on this host too"
            )
        command.upgrade(config, revision)
        conn.commit()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield  # a private in-memory queue: nobody to race
        return
    lock_path = Path(f"{database}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def main(argv: list[str]) -> int:
    """``python -m daemon.migrate revision "message"``: a new, empty migration file."""
    if len(argv) != 2 or argv[0] != "revision":
        print('usage: python -m daemon.migrate revision "what changed"', file=sys.stderr)
        return 2
    command.revision(alembic_config(), message=argv[1], rev_id=f"{int(head()) + 1:04d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
