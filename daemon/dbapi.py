"""The queue database through plain DB-API: ``sqlite3``, or ``psycopg`` for PostgreSQL.

The daemon reaches its queue through SQLAlchemy (``database.py``). The admin commands
must answer in a fraction of a second, and importing SQLAlchemy alone takes a good
part of that, so they talk to the same database with the drivers themselves. What both
need is said here once: the SQLite settings every connection gets, the database's
clock as SQL, and one connection with errors in the queue's own words
(``database_url.py`` reads the configured URL as SQLAlchemy does).

Statements are written with ``?`` placeholders; :class:`Database` hands them to
psycopg as ``%s``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .database_url import parse, pg_conninfo, sqlite_target

# Seconds since the epoch, as a float, evaluated by the database when the statement
# runs. SQLite's julianday('now') has millisecond precision; statement_timestamp() is
# PostgreSQL's start of the current statement (now() would be the transaction's).
_NOW_SQL = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "(extract(epoch FROM statement_timestamp())::float8)",
}

# Run on every new SQLite connection, in this order. The busy timeout first:
# switching to WAL needs a lock that a daemon starting at the same moment may hold.
# WAL lets readers (the CLI, status) work while the worker writes; FULL syncs each
# commit so a power cut never loses a queued job.
SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=30000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
)
# Seconds a SQLite connection waits for a lock (the driver's own timeout).
SQLITE_TIMEOUT = 30.0


def now_sql(dialect: str) -> str:
    """The database clock as SQL text, for hand-written statements."""
    try:
        return _NOW_SQL[dialect]
    except KeyError:
        raise ValueError(f"i2vd's queue runs on SQLite or PostgreSQL, not {dialect}") from None


def prepare_sqlite(conn: Any) -> None:
    """The settings every SQLite connection to the queue gets (any DB-API connection)."""
    cursor = conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


# --- one connection, errors in the queue's own words -----------------------------------


class QueueDatabaseError(Exception):
    """The queue database failed a statement (the driver's message)."""


class QueueUnavailable(QueueDatabaseError):
    """The queue database cannot be opened: a wrong URL, a server down, no driver."""


class SchemaMissing(QueueDatabaseError):
    """A table or column is missing: no daemon has created or upgraded this queue."""


class UniqueViolation(QueueDatabaseError):
    """A write would break a unique index (the same drop pending twice)."""


class Database:
    """One connection, in autocommit: each statement stands alone unless written
    through :meth:`write` (its own transaction, with the wake-up when asked)."""

    def __init__(self, url: str) -> None:
        try:
            self.dialect = parse(url).dialect
        except ValueError as exc:
            raise QueueUnavailable(str(exc)) from None
        self._conn: Any = _open_sqlite(url) if self.dialect == "sqlite" else _open_postgresql(url)

    def close(self) -> None:
        self._conn.close()

    def now_sql(self) -> str:
        return now_sql(self.dialect)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._errors():
            cursor = self._conn.execute(self._sql(sql), tuple(params))
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows

    def write(self, sql: str, params: Sequence[Any] = (), notify: str | None = None) -> int:
        """Run one write in its own transaction; the rows it changed. With ``notify``
        (PostgreSQL only), also run that statement in the same transaction when a row
        changed: delivered at commit, so a listener wakes to the change made."""
        with self._errors():
            if self.dialect == "sqlite":
                return int(self._conn.execute(sql, tuple(params)).rowcount)
            with self._conn.transaction():
                changed = int(self._conn.execute(self._sql(sql), tuple(params)).rowcount)
                if notify and changed:
                    self._conn.execute(notify)
            return changed

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("?", "%s")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The driver's exceptions as the matching QueueDatabaseError."""
        try:
            yield
        except Exception as exc:
            translated = _translate(self.dialect, exc)
            if translated is None:
                raise
            raise translated from exc


def _open_sqlite(url: str) -> sqlite3.Connection:
    """The queue's SQLite file, opened read-write but never created: an admin command
    that finds no file meets a queue no daemon has made yet (SchemaMissing), which
    ``i2vd`` then makes as a daemon would, schema and all, instead of leaving an empty
    file behind."""
    try:
        path, uri = sqlite_target(url)
    except ValueError as exc:
        raise QueueUnavailable(str(exc)) from None
    target = path
    if not uri and path != ":memory:":
        target, uri = f"file:{quote(os.fsencode(path))}?mode=rw", True
    try:
        conn = sqlite3.connect(target, timeout=SQLITE_TIMEOUT, isolation_level=None, uri=uri)
    except sqlite3.Error as exc:
        if target != path and not Path(path).exists() and Path(path).parent.is_dir():
            raise SchemaMissing(f"there is no queue database at {path} yet") from None
        raise QueueUnavailable(str(exc)) from None
    try:
        prepare_sqlite(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise QueueUnavailable(str(exc)) from None
    return conn


def _open_postgresql(url: str) -> Any:
    try:
        import psycopg  # only for a PostgreSQL queue: it costs import time
    except ImportError as exc:
        raise QueueUnavailable(
            f"a PostgreSQL queue needs psycopg ({exc}): pip install 'i2vd[postgres]'"
        ) from None
    try:
        return psycopg.connect(pg_conninfo(url), autocommit=True, connect_timeout=10)
    except ValueError as exc:  # a URL SQLAlchemy would refuse too
        raise QueueUnavailable(str(exc)) from None
    except psycopg.Error as exc:
        raise QueueUnavailable(str(exc).strip()) from None


def _translate(dialect: str, exc: BaseException) -> QueueDatabaseError | None:
    message = str(exc).strip()
    if dialect == "sqlite":
        if isinstance(exc, sqlite3.IntegrityError) and message.startswith(
            "UNIQUE constraint failed"
        ):
            return UniqueViolation(message)
        if isinstance(exc, sqlite3.OperationalError) and (
            message.startswith(("no such table", "no such column")) or "has no column" in message
        ):
            return SchemaMissing(message)
        return QueueDatabaseError(message) if isinstance(exc, sqlite3.Error) else None
    import psycopg

    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return SchemaMissing(message)
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return UniqueViolation(message)
    if isinstance(exc, psycopg.OperationalError):
        return QueueUnavailable(message)
    return QueueDatabaseError(message) if isinstance(exc, psycopg.Error) else None
