"""A private PostgreSQL database per test, on the server the project's machines run.

The queue's contract tests run on PostgreSQL as well as SQLite; when the server is
unreachable they fail with what to do, they are never skipped.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

# The maintenance database; each test creates and drops its own next to it.
ADMIN_URL = os.environ.get("I2VD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({str(exc).strip()}). The queue tests "
            "need it: start it (.ci/run does: pg_ctlcluster 15 main start) or point "
            "I2VD_TEST_POSTGRES at a server where this user may create databases.",
            pytrace=False,
        )


def create_database() -> str:
    """A new empty database; its SQLAlchemy URL."""
    name = f"i2vd_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
