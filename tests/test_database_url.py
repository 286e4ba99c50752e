"""A database_url means one database to everyone: the daemon (SQLAlchemy) and the admin
commands and wake-ups (plain drivers, database_url.py) read it alike, held here to
SQLAlchemy's own answers and to the files and servers each side actually opens."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import make_url

from conftest import Layout
from daemon.admin_queue import AdminQueue
from daemon.database import make_engine
from daemon.database_url import parse, pg_conninfo, sqlite_target
from daemon.dbapi import Database, SchemaMissing
from daemon.doctor import check_database
from daemon.queue_settings import default_database_url
from daemon.store import JobStore
from daemon.wakeup import QueueListener

PG_URLS = [
    # Passwords as people write them: only an @ must be escaped (%40).
    "postgresql://i2vd:p/ss@db.example/queue",
    "postgresql+psycopg://i2vd:p#ss@db.example:5433/queue?sslmode=require",
    "postgresql://i2vd:p?ss@db.example/queue",
    "postgresql://i2vd:p ss@db.example/queue",
    "postgresql://i2vd:p%40ss@db.example/queue",
    "postgresql://i2vd:100%@db.example/queue",  # a % that is no escape stays
    "postgresql://i2vd:a%2Fb%25c%3Fd%23e@db.example/queue",
    "postgresql://i2vd:p/s#s?x @db.example:6432/queue",
    "postgresql://i2vd:@db.example/queue",  # an empty password is none
    "postgresql+psycopg://u%40corp:pw@[::1]:5432/my%20queue",
    "postgres://u@db/i2vd",
    "postgresql://db",
    "postgresql:///i2vd?host=/var/run/postgresql",
    "postgresql://db/i2vd?application_name=i2vd+admin&connect_timeout=3",
    # Several hosts, in SQLAlchemy's two spellings.
    "postgresql://u@/i2vd?host=h1,h2&port=5432,5433",
    "postgresql://u@/i2vd?host=h1:5432&host=h2:5433",
    "postgresql://u@/i2vd?host=h1:5433",
    "postgresql://u@/i2vd?host=h1,h2,h3",
    "postgresql://u@/i2vd?host=h1&host=h2",
]

SQLITE_URLS = [
    "sqlite:///state/i2vd.db",
    "sqlite:////var/lib/i2vd/i2vd.db",
    "sqlite:////tmp/x/pct%41/q.db",  # SQLAlchemy decodes: /tmp/x/pctA/q.db
    "sqlite:////tmp/x/100%/q.db",
    "sqlite:////tmp/x/a%3Fb/q.db",
    "sqlite:////tmp/x/a#b c/q.db",
    "sqlite:////tmp/q.db?timeout=5",
    "sqlite+pysqlite:////tmp/q.db",
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:///file:q.db?mode=ro&uri=true",
    "sqlite:///file:q%20x.db?cache=shared&uri=true&timeout=3",
]


def sqlalchemy_connect_args(url: str) -> tuple[list[Any], dict[str, Any]]:
    """What the daemon's engine passes to the driver for ``url``."""
    engine = make_engine(url)
    try:
        args, params = engine.dialect.create_connect_args(engine.url)
    finally:
        engine.dispose()
    return list(args), dict(params)


@pytest.mark.parametrize("url", PG_URLS + SQLITE_URLS)
def test_the_parts_are_those_sqlalchemy_reads(url: str) -> None:
    ours, theirs = parse(url), make_url(url)
    assert ours.drivername == theirs.drivername
    assert ours.username == theirs.username
    assert ours.password == theirs.password
    assert ours.host == theirs.host
    assert ours.port == theirs.port
    assert ours.database == theirs.database
    assert ours.query == dict(theirs.query)


@pytest.mark.parametrize("url", PG_URLS)
def test_postgresql_connects_with_what_sqlalchemy_connects_with(url: str) -> None:
    _, params = sqlalchemy_connect_args(url)
    for added in ("context", "client_encoding"):  # the dialect's own, not the URL's
        params.pop(added, None)
    assert conninfo_to_dict(pg_conninfo(url)) == conninfo_to_dict(make_conninfo("", **params))


def test_a_password_with_a_slash_keeps_the_host() -> None:
    assert conninfo_to_dict(pg_conninfo("postgresql://i2vd:p/ss@db.example/queue")) == {
        "user": "i2vd",
        "password": "p/ss",
        "host": "db.example",
        "dbname": "queue",
    }


@pytest.mark.parametrize("url", SQLITE_URLS)
def test_sqlite_opens_what_sqlalchemy_opens(url: str) -> None:
    args, params = sqlalchemy_connect_args(url)
    assert sqlite_target(url) == (args[0], bool(params.get("uri", False)))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@/i2vd?host=h1:5432&host=h2:5433&port=1",  # two spellings at once
        "postgresql://u@/i2vd?host=h1,h2&port=1,2,3",
        "postgresql://u@/i2vd?host=h1&port=x",
    ],
)
def test_several_hosts_sqlalchemy_refuses_are_refused(url: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - SQLAlchemy's ArgumentError
        sqlalchemy_connect_args(url)
    with pytest.raises(ValueError, match="database_url"):
        pg_conninfo(url)


def test_the_databases_i2vd_runs_on() -> None:
    assert parse("sqlite+pysqlite:////tmp/q.db").dialect == "sqlite"
    assert parse("postgres://u@db/i2vd").dialect == "postgresql"
    assert parse("postgresql+psycopg://u@db/i2vd").dialect == "postgresql"
    for url in ("mysql://db/i2vd", "sqlite+pysqlcipher:///q.db", "i2vd.db"):
        with pytest.raises(ValueError, match="must start with sqlite:/// or postgresql://"):
            parse(url).dialect  # noqa: B018 - the property raises


# --- the same file ---------------------------------------------------------------------

# Folder names a state_dir may have; each must hold the one queue both sides open.
ODD_FOLDERS = ["pct%41", "100%", "what?", "hash#tag", "a b", "at@sign", "caf\u00e9", "x%3Fy"]


def opened_file(url: str, daemon: bool) -> Path:
    """The file a connection for ``url`` has open: the daemon's engine, or the admin
    commands' plain connection."""
    if daemon:
        store = JobStore(url)
        try:
            with store.engine.connect() as conn:
                rows = conn.exec_driver_sql("PRAGMA database_list").all()
        finally:
            store.close()
    else:
        db = Database(url)
        try:
            rows = db.rows("PRAGMA database_list")
        finally:
            db.close()
    return Path(next(row[2] for row in rows if row[1] == "main"))


@pytest.mark.parametrize("name", ODD_FOLDERS)
def test_the_default_queue_is_one_file_for_the_daemon_and_the_admin(
    tmp_path: Path, name: str
) -> None:
    state_dir = tmp_path / name
    state_dir.mkdir()
    url = default_database_url(state_dir)
    assert opened_file(url, daemon=True) == state_dir / "i2vd.db"
    assert opened_file(url, daemon=False) == state_dir / "i2vd.db"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no stray folder or file


def test_a_written_url_is_decoded_alike(tmp_path: Path) -> None:
    (tmp_path / "pctA").mkdir()
    url = f"sqlite:///{tmp_path}/pct%41/q.db"
    assert opened_file(url, daemon=True) == tmp_path / "pctA" / "q.db"
    assert opened_file(url, daemon=False) == tmp_path / "pctA" / "q.db"


def test_the_admin_side_never_creates_a_database_file(tmp_path: Path) -> None:
    """A missing file is a queue no daemon has made yet (the admin command then makes it
    as a daemon would, schema and all): not an empty file made by a look."""
    url = f"sqlite:///{tmp_path / 'i2vd.db'}"
    with pytest.raises(SchemaMissing, match="no queue database"):
        Database(url)
    assert list(tmp_path.iterdir()) == []


# --- a real server, with names that need escaping --------------------------------------


@pytest.fixture
def odd_role_url() -> Iterator[tuple[str, str, str]]:
    """A PostgreSQL role and database whose names hold / # ? @ % and a space, the role
    owning the database; (its URL, the role, the database). The server trusts
    127.0.0.1, so the password is not checked, but it must not spoil the rest."""
    from pg import ADMIN_URL

    tag = uuid.uuid4().hex[:8]
    role, database = f"i2vd u/#?@% {tag}", f"i2vd q/#?@% {tag}"
    password = "p/ss#w?rd @%x"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        admin.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
    # As SQLAlchemy takes it: the user and database escaped, the password raw but
    # for its @ and %.
    raw_password = password.replace("%", "%25").replace("@", "%40")
    url = (
        f"postgresql+psycopg://{quote(role, safe='')}:{raw_password}@127.0.0.1:5432/"
        f"{quote(database, safe='')}"
    )
    try:
        yield url, role, database
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_admin_and_the_wake_ups_reach_the_daemons_database(
    odd_role_url: tuple[str, str, str],
) -> None:
    url, role, database = odd_role_url
    JobStore(url).close()  # the daemon's way in makes the schema
    with AdminQueue(url) as queue:
        assert queue.db.rows("SELECT current_user, current_database()") == [(role, database)]
        assert queue.count_by_state() == {}
    woken = threading.Event()
    listener = QueueListener(url, woken.set)
    listener.start()
    try:
        assert listener.listening.wait(10)
    finally:
        listener.stop()


def test_the_doctor_looks_at_the_file_the_daemon_opens(layout: Layout) -> None:
    settings = layout.load(state_dir=str(layout.root / "what?"))
    JobStore(settings.database_url).close()  # the daemon made its queue there
    (finding,) = check_database(settings)
    assert finding.level == "ok" and finding.message.endswith(" answers"), finding
