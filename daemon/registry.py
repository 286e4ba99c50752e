"""Who works on the queue, and the queue-wide switches, both kept in its database.

Every daemon registers itself and beats a heartbeat on the database's clock; a daemon
is alive while its last heartbeat is recent enough, judged by that same clock. Pause
lives here too, so it reaches every daemon on the queue and survives restarts. What
the admin commands read and change here (the listing, pause and resume) is in
admin_queue.py, written without the ORM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ColumnElement, case, delete, literal, literal_column, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .capabilities import Capabilities
from .dbapi import now_sql
from .tables import Control, Daemon, DaemonState


class Unchanged:
    """A field left as it is (where None is a value)."""


UNCHANGED = Unchanged()


class _Table:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._now: ColumnElement[float] = literal_column(now_sql(engine.dialect.name))

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session


class Daemons(_Table):
    """The ``daemon`` table: one row per running daemon."""

    def register(
        self,
        daemon_id: str,
        host: str,
        pid: int,
        can_run: Capabilities,
        version: str = "",
        device: str = "",
        state: DaemonState = DaemonState.RUNNING,
    ) -> None:
        """Add (or, for a reused id, replace) this daemon's row, heard from now."""
        with self._session() as session:
            session.execute(delete(Daemon).where(col(Daemon.id) == daemon_id))
            session.add(
                Daemon(
                    id=daemon_id,
                    host=host,
                    pid=pid,
                    version=version,
                    device=device,
                    engines_json=json.dumps(list(can_run.engines)),
                    models_json=None if can_run.models is None else json.dumps(can_run.models),
                    memory_gb=can_run.memory_gb,
                    inboxes_json=None if can_run.inboxes is None else json.dumps(can_run.inboxes),
                    state=state.value,
                )
            )
            session.flush()
            session.execute(
                update(Daemon)
                .where(col(Daemon.id) == daemon_id)
                .values(started_at=self._now, heartbeat_at=self._now)
            )
            session.commit()

    def heartbeat(
        self,
        daemon_id: str,
        state: DaemonState | None = None,
        reason: str | None = None,
        job_id: int | Unchanged | None = UNCHANGED,
        keep: DaemonState | None = None,
    ) -> bool:
        """Say this daemon is alive (and, when given, its state, why, and its current
        job, None for none). False when its row is gone: register again.

        A row in state ``keep`` keeps it (and its reason) whatever ``state`` says,
        decided in the one UPDATE: the service's timer says running or paused without
        undoing a worker thread's ``faulted`` written a moment before."""
        said: dict[str, Any] = {}
        if state is not None:
            said["state"] = state.value
        if reason is not None:
            said["reason"] = reason
        if keep is not None:
            # Both sides of each CASE read the row as it was (standard SQL's UPDATE).
            held = col(Daemon.state) == keep.value
            said = {
                name: case((held, getattr(Daemon, name)), else_=literal(value))
                for name, value in said.items()
            }
        values: dict[str, Any] = {"heartbeat_at": self._now, **said}
        if not isinstance(job_id, Unchanged):
            values["job_id"] = job_id
        with self._session() as session:
            result = session.execute(
                update(Daemon).where(col(Daemon.id) == daemon_id).values(**values)
            )
            session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def unregister(self, daemon_id: str) -> None:
        with self._session() as session:
            session.execute(delete(Daemon).where(col(Daemon.id) == daemon_id))
            session.commit()

    def alive(self, within: float) -> list[Daemon]:
        """Daemons whose last heartbeat is at most ``within`` seconds old."""
        cutoff = self._now - within
        with self._session() as session:
            query = select(Daemon).where(col(Daemon.heartbeat_at) >= cutoff)
            return list(session.exec(query.order_by(col(Daemon.id))).all())

    def forget_silent(self, longer_than: float) -> int:
        """Drop rows of daemons silent for longer than this (they died unregistered)."""
        with self._session() as session:
            result = session.execute(
                delete(Daemon).where(col(Daemon.heartbeat_at) < self._now - longer_than)
            )
            session.commit()
        return int(result.rowcount)  # type: ignore[attr-defined]


class Controls(_Table):
    """The ``control`` table's one row: the queue-wide switches, as the daemon reads
    them (``i2vd pause`` and ``resume`` set them: admin_queue.py)."""

    def get(self) -> Control:
        with self._session() as session:
            row = session.get(Control, 1)
        return row if row is not None else Control()
