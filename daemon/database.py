"""Connecting to the queue database, and its clock.

Every time that decides something between daemons (a lease running out, a retry
coming due, a daemon's last heartbeat) is read from the database server's clock, so a
host whose own clock is off by an hour neither steals live jobs nor keeps dead ones.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, event, literal_column
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.sql import bindparam
from sqlmodel import create_engine

# Seconds since the epoch, as a float, evaluated by the database when the statement
# runs. SQLite's julianday('now') has millisecond precision; statement_timestamp() is
# PostgreSQL's start of the current statement (now() would be the transaction's).
_NOW_SQL = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "(extract(epoch FROM statement_timestamp())::float8)",
}


def now_sql(dialect: str) -> str:
    """The database clock as SQL text, for hand-written statements."""
    try:
        return _NOW_SQL[dialect]
    except KeyError:
        raise ValueError(f"i2vd's queue runs on SQLite or PostgreSQL, not {dialect}") from None


def clock(dialect: str, now: float | None) -> ColumnElement[float]:
    """``now`` when a test drives time step by step, else the database's clock."""
    if now is not None:
        return bindparam("clock_now", now, literal_execute=False, unique=True)
    return literal_column(now_sql(dialect))


def read_clock(conn: Connection) -> float:
    value = conn.exec_driver_sql(f"SELECT {now_sql(conn.dialect.name)}").scalar_one()
    return float(value)


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's own default is psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # The busy timeout first: switching to WAL needs a lock that a daemon
            # starting at the same moment may hold.
            cursor.execute("PRAGMA busy_timeout=30000")
            # WAL lets readers (the CLI, status) work while the worker writes; FULL
            # syncs each commit so a power cut never loses a queued job.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    if not url.startswith("postgresql"):
        raise ArgumentError(
            f"database_url must start with sqlite:/// or postgresql://, not {url.split(':')[0]}"
        )
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
