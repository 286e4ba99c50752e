"""A ``database_url`` read as SQLAlchemy reads it, without importing SQLAlchemy.

The daemon opens its queue through SQLAlchemy (``database.make_engine``); the admin
commands and the PostgreSQL wake-ups open the same database with the drivers
themselves (``dbapi.py``, ``wakeup.py``). Both must reach the same file or server
with the same user, so this is SQLAlchemy's reading, rule for rule
(``sqlalchemy.engine.url.make_url`` and its dialects' ``create_connect_args``; a
test holds the two together on many URLs):

- ``DRIVER://USER:PASSWORD@HOST:PORT/DATABASE?KEY=VALUE&…``; the user, the password
  and the database are percent-decoded (``p%40ss`` is ``p@ss``), the host is not;
  the query is decoded as a form (``+`` is a space).
- The password runs to the first ``@``: a ``/``, ``#`` or ``?`` in it needs no
  escaping, an ``@`` is written ``%40``.
- SQLite: ``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``sqlite://``
  for a database in memory, ``?uri=true`` to pass a ``file:`` URI on. A path with
  ``%`` or ``?`` in it is written ``%25``, ``%3F``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

# SQLAlchemy's own pattern (sqlalchemy/engine/url.py, _parse_url).
_URL = re.compile(
    r"""
        (?P<name>[\w+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/?]+)\] |
                (?P<ipv4host>[^/:?]+)
            )?
            (?::(?P<port>[^/?]*))?
        )?
        (?:/(?P<database>[^?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)
# The drivers i2vd opens: the standard library's sqlite3 (SQLAlchemy's pysqlite),
# and libpq through psycopg (or psycopg2: the same connection parameters).
_SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
# The options SQLAlchemy hands to sqlite3.connect (the rest go to a file: URI).
_SQLITE_ARGS = frozenset(
    ("uri", "timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements")
)
_TRUE, _FALSE = ("true", "yes", "on", "y", "t", "1"), ("false", "no", "off", "n", "f", "0")
# A single host:port in the query (SQLAlchemy's pattern for it).
_HOST_PORT = re.compile(r"([a-zA-Z0-9\-.]*)(?::(\d*))?")

Query = dict[str, str | tuple[str, ...]]


@dataclass(frozen=True)
class DatabaseURL:
    """The parts of a database URL, decoded (None: not given)."""

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    # A key given twice holds a tuple of its values, in order.
    query: Query = field(default_factory=dict)

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql"; ValueError for any other database or driver."""
        name = self.drivername
        if name in _SQLITE_DRIVERS:
            return "sqlite"
        if name == "postgres" or name.partition("+")[0] == "postgresql":
            return "postgresql"
        raise ValueError(f"database_url must start with sqlite:/// or postgresql://, not {name}://")


def parse(url: str) -> DatabaseURL:
    """``url``'s parts as SQLAlchemy's ``make_url`` gives them; ValueError when it is
    no database URL at all."""
    match = _URL.match(url)
    if match is None:
        scheme = url.split(":")[0]
        raise ValueError(f"database_url must start with sqlite:/// or postgresql://, not {scheme}")
    parts = match.groupdict()
    query: Query = {}
    if parts["query"] is not None:
        for key, value in parse_qsl(parts["query"]):
            if key in query:
                earlier = query[key]
                query[key] = (*(earlier if isinstance(earlier, tuple) else (earlier,)), value)
            else:
                query[key] = value
    port = parts["port"]
    if port and not port.isdigit():
        raise ValueError(f"database_url: the port {port!r} is not a number")
    return DatabaseURL(
        drivername=parts["name"],
        username=_decoded(parts["username"]),
        password=_decoded(parts["password"]),
        host=parts["ipv4host"] or parts["ipv6host"],
        port=int(port) if port else None,
        database=_decoded(parts["database"]),
        query=query,
    )


def _decoded(text: str | None) -> str | None:
    return None if text is None else unquote(text)


def sqlite_target(url: str) -> tuple[str, bool]:
    """(what ``sqlite3.connect`` opens, whether it is a URI) for a SQLite URL, as
    SQLAlchemy's pysqlite dialect makes it: a path made absolute against the working
    directory, ``:memory:``, or with ``?uri=true`` the ``file:`` URI with the other
    options appended.

    Options for ``sqlite3.connect`` in the URL (``?timeout=``) are not used: the
    daemon sets its own (``dbapi.SQLITE_TIMEOUT``, which overrides the URL's in
    SQLAlchemy too), and so does every admin command."""
    parsed = parse(url)
    if parsed.dialect != "sqlite":
        raise ValueError(f"{parsed.drivername}:// is not a SQLite URL")
    if parsed.username or parsed.password or parsed.host or parsed.port:
        raise ValueError(
            "a SQLite database_url names a file: sqlite:////absolute/path/i2vd.db or "
            "sqlite:///relative/path/i2vd.db"
        )
    options = dict(parsed.query)
    if _flag(options.get("uri", "false")):
        filename = parsed.database or ""
        passed_on = {key: value for key, value in options.items() if key not in _SQLITE_ARGS}
        if passed_on:
            filename += "?" + "&".join(f"{key}={passed_on[key]}" for key in sorted(passed_on))
        return filename, True
    filename = parsed.database or ":memory:"
    return (filename if filename == ":memory:" else os.path.abspath(filename)), False


def _flag(value: str | tuple[str, ...]) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"database_url: uri={value!r} is neither true nor false")


def pg_conninfo(url: str) -> str:
    """A PostgreSQL database_url as the connection string libpq takes (key=value
    pairs, quoted where needed): the same user, password, host, port, database and
    options SQLAlchemy's psycopg dialect connects with."""
    from psycopg.conninfo import make_conninfo  # PostgreSQL only: it costs import time

    return make_conninfo("", **pg_params(parse(url)))


def pg_params(parsed: DatabaseURL) -> dict[str, str | int]:
    """The keyword arguments SQLAlchemy passes to ``psycopg.connect`` for ``parsed``.

    Several hosts may be given in the query, as libpq's lists
    (``?host=h1,h2&port=5432,5433``) or one ``host=h:p`` per host."""
    if parsed.dialect != "postgresql":
        raise ValueError(f"{parsed.drivername}:// is not a PostgreSQL URL")
    named = {
        "host": parsed.host,
        "dbname": parsed.database,
        "user": parsed.username,
        "password": parsed.password,
        "port": parsed.port,
    }
    # Only the parts given and not empty, as SQLAlchemy's translate_connect_args.
    params: dict[str, str | int] = {key: value for key, value in named.items() if value}
    for key, value in parsed.query.items():
        params[key] = ",".join(value) if isinstance(value, tuple) else value
    hosts, ports = _query_hosts(parsed.query)
    if hosts is not None:
        params["host"] = ",".join(hosts)
        # Each port as a number ("" for the default), as SQLAlchemy writes them back.
        numbers = ports if ports is not None else [""] * len(hosts)
        listed = ",".join(str(int(p)) if p and int(p) else "" for p in numbers)
        if listed:
            params["port"] = listed
    return params


def _query_hosts(query: Query) -> tuple[list[str] | None, list[str] | None]:
    """Hosts and ports given in the query, as SQLAlchemy splits them (ports: "" for
    the default); (None, None) when the query names no host."""
    host, port = query.get("host"), query.get("port")
    hosts = ports = None
    one_per_host = False
    if isinstance(host, tuple):  # host=h1:p1&host=h2:p2
        one_per_host = True
        pairs = [token.split(":") if ":" in token else [token, ""] for token in host]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"database_url: host={host!r} is not host:port")
        hosts, ports = [h for h, _ in pairs], [p for _, p in pairs]
    elif host is not None:
        hosts = host.split(",")
        if port is None and len(hosts) == 1 and ":" in hosts[0]:
            match = _HOST_PORT.fullmatch(hosts[0])
            if match:
                one_per_host = True
                hosts, ports = [match[1]], [match[2] or ""]
    if port is not None:
        if one_per_host:
            raise ValueError(
                "database_url: give several hosts as host=h1,h2&port=p1,p2 or as "
                "host=h1:p1&host=h2:p2, not both"
            )
        ports = list(port) if isinstance(port, tuple) else port.split(",")
    if ports is not None:
        if not all(p.isdigit() for p in ports if p):
            raise ValueError(f"database_url: port {','.join(ports)!r} is not a number")
        if (not hosts and len(ports) > 1) or (
            hosts and len(hosts) != len(ports) and (len(hosts) > 1 or len(ports) > 1)
        ):
            raise ValueError("database_url: the numbers of hosts and ports differ")
    return hosts, ports


def without_password(url: str) -> str:
    """A database_url fit for a log line or a message: never a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
