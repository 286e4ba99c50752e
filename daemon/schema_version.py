"""Whether the queue's schema is already this i2vd's newest, without importing Alembic.

Every daemon opens the queue at start, and almost always finds it up to date. Alembic
takes a fifth of a second to import; this check reads one row. Migration files are
named ``NNNN_slug.py`` with the revision as their number (migrate.py makes them so), so
the newest revision is the highest number among them; a test holds this to Alembic's
own answer.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

VERSIONS = Path(__file__).resolve().parent / "migrations" / "versions"


class SchemaTooNew(Exception):
    """The queue was upgraded by a newer i2vd than this one (raised by migrate.py)."""


def newest_revision() -> str:
    numbers = [p.name[:4] for p in VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py")]
    return max(numbers)


def at_newest(engine: Engine) -> bool:
    """True when the database says it is at the newest revision; False when it is
    not, or cannot say (no version table yet: a new or a 0.1.0 queue)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:
        return False
    return [row[0] for row in rows] == [newest_revision()]
