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

from .dbapi import SQLITE_TIMEOUT, now_sql, prepare_sqlite


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
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_TIMEOUT}
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            prepare_sqlite(dbapi_conn)  # the same as the admin commands' connections

        return engine
    if not url.startswith("postgresql"):
        raise ArgumentError(
            f"database_url must start with sqlite:/// or postgresql://, not {url.split(':')[0]}"
        )
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
