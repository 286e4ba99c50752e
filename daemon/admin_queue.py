"""The queue as the admin commands reach it: plain DB-API, no ORM.

``i2vd status``, ``jobs``, ``show``, ``retry``, ``cancel``, ``pause`` and ``resume``
are fresh processes that must answer in a fraction of a second, also with a big
queue. Importing SQLAlchemy and SQLModel would take most of that, so the statements
these commands run are written here by hand (``dbapi.py`` connects), and rows come
back as the plain records of ``records.py``. The daemon keeps its own store
(``store.py``); the two share the schema, the clock and the wake-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, NamedTuple

from .capabilities import Capabilities
from .dbapi import Database, UniqueViolation
from .host_paths import HostPaths
from .job_states import PENDING_SQL, RUNNABLE_SQL, JobState
from .names import from_db, to_db
from .problems import Problem
from .records import (
    JOB_BOOL_COLUMNS,
    JOB_FILE_NAME_COLUMNS,
    ControlRecord,
    DaemonRecord,
    JobRecord,
)
from .wakeup import NOTIFY_SQL

JOB_COLUMNS = tuple(f.name for f in fields(JobRecord))
DAEMON_COLUMNS = tuple(f.name for f in fields(DaemonRecord))
CONTROL_COLUMNS = tuple(f.name for f in fields(ControlRecord))


def _listed(table: str, columns: Iterable[str]) -> str:
    # Quoted, as "drop" is an SQL keyword, and qualified: SQLite reads a quoted name
    # that is no column as a string, which would hide a missing column.
    return ", ".join(f'{table}."{column}"' for column in columns)


_JOBS = f"SELECT {_listed('job', JOB_COLUMNS)} FROM job"
_DAEMONS = f"SELECT {_listed('daemon', DAEMON_COLUMNS)} FROM daemon"
_CONTROL = f"SELECT {_listed('control', CONTROL_COLUMNS)} FROM control"
# Every table and column read here, in one statement that reads no row: the database
# checks the names before it runs it.
_SCHEMA_PROBE = (
    f"SELECT {_listed('job', JOB_COLUMNS)}, {_listed('daemon', DAEMON_COLUMNS)}, "
    f"{_listed('control', CONTROL_COLUMNS)} FROM job, daemon, control LIMIT 0"
)

# Plain strings for the drivers (psycopg would write an Enum by its member name).
QUEUED, RUNNING, RETRYING = JobState.QUEUED.value, JobState.RUNNING.value, JobState.RETRYING.value
FAILED, CANCELLED = JobState.FAILED.value, JobState.CANCELLED.value


class AlreadyQueued(Problem):
    """A retried job's drop is already waiting or running as another job."""


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # it was waiting: it ends now
    REQUESTED = "requested"  # it is running: its worker stops at its next step
    ENDED = "ended"  # it had already ended; nothing to do
    NOT_FOUND = "not found"


class JobKind(NamedTuple):
    """What routing looks at in a job."""

    inbox: str
    engine: str
    model: str
    memory_gb: float


@dataclass(frozen=True)
class DaemonStatus:
    """A registered daemon as seen now: its row, seconds since its last heartbeat (by
    the database's clock) and whether that is recent enough to count it alive."""

    daemon: DaemonRecord
    silent_for: float
    alive: bool


class AdminQueue:
    """One connection to the queue, for one admin command.

    Opening checks that the tables and columns read here exist: a queue that no daemon
    has created or upgraded yet raises ``dbapi.SchemaMissing`` before anything is
    changed (``i2vd`` then upgrades it and opens again). ``host_paths``: how this host
    sees the queue's paths (jobs come back localized).
    """

    def __init__(self, url: str, host_paths: HostPaths | None = None) -> None:
        self.db = Database(url)
        self.host_paths = host_paths or HostPaths()
        try:
            self.db.rows(_SCHEMA_PROBE)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AdminQueue:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- reading -----------------------------------------------------------------------

    def now(self) -> float:
        """The database's clock, in seconds since the epoch: the queue's time."""
        return float(self.db.rows(f"SELECT {self.db.now_sql()}")[0][0])

    def count_by_state(self) -> dict[str, int]:
        rows = self.db.rows("SELECT state, count(*) FROM job GROUP BY state")
        return {str(state): int(count) for state, count in rows}

    def list_jobs(self, states: Iterable[str] | None = None, limit: int = 50) -> list[JobRecord]:
        """Jobs in ``states`` (all when None), newest first."""
        query, params = _JOBS, []
        if states is not None:
            wanted = list(states)
            if not wanted:  # `IN ()` is no SQL to PostgreSQL
                return []
            query += f" WHERE state IN ({_marks(wanted)})"
            params = [str(s) for s in wanted]
        return self._jobs(query + " ORDER BY id DESC LIMIT ?", [*params, int(limit)])

    def get(self, job_id: int) -> JobRecord | None:
        jobs = self._jobs(_JOBS + " WHERE id = ?", [job_id])
        return jobs[0] if jobs else None

    def siblings(self, job: JobRecord) -> list[JobRecord]:
        """The other jobs of the same drop (the other variants of this image)."""
        if not job.drop:
            return []
        return self._jobs(
            _JOBS + ' WHERE job."drop" = ? AND id != ? ORDER BY id', [job.drop, job.id]
        )

    def pending_twins(self, job: JobRecord) -> list[JobRecord]:
        """The pending jobs of the same file (inbox, path, content) as ``job``: what
        makes a retry of it a second queueing of one drop."""
        return self._jobs(
            _JOBS + f" WHERE inbox = ? AND relative = ? AND sha256 = ? AND {PENDING_SQL}"
            " ORDER BY id",
            [job.inbox, to_db(job.relative), job.sha256],
        )

    def daemons(self, alive_within: float) -> list[DaemonStatus]:
        """Every registered daemon, alive ones first, each with how long it has been
        silent. A daemon that died without unregistering stays listed as not alive."""
        columns = _listed("daemon", DAEMON_COLUMNS)
        rows = self.db.rows(f"SELECT {columns}, {self.db.now_sql()} FROM daemon ORDER BY id")
        statuses = []
        for row in rows:
            daemon, now = DaemonRecord(*row[:-1]), float(row[-1])
            silent = now - daemon.heartbeat_at
            statuses.append(DaemonStatus(daemon, max(0.0, silent), silent <= alive_within))
        return sorted(statuses, key=lambda s: not s.alive)

    def control(self) -> ControlRecord:
        """The queue-wide switches (pause); not paused when the row is missing."""
        rows = self.db.rows(_CONTROL + " WHERE id = 1")
        if not rows:
            return ControlRecord()
        values = dict(zip(CONTROL_COLUMNS, rows[0], strict=True))
        values["paused"], values["pause_now"] = bool(values["paused"]), bool(values["pause_now"])
        return ControlRecord(**values)

    def stranded(self, alive_within: float) -> dict[JobKind, int]:
        """Waiting jobs that no live daemon can run, counted by kind (inbox, engine,
        model, GiB of device memory needed): `i2vd status` shows them instead of a
        silent wait."""
        live = [
            DaemonRecord(*row).capabilities
            for row in self.db.rows(
                _DAEMONS + f" WHERE heartbeat_at >= {self.db.now_sql()} - ?", [alive_within]
            )
        ]
        waiting = self.db.rows(
            "SELECT inbox, engine, model, memory_gb, count(*) FROM job "
            f"WHERE {RUNNABLE_SQL} GROUP BY inbox, engine, model, memory_gb"
        )
        kinds = {
            JobKind(box, engine, model, float(gb)): int(n) for box, engine, model, gb, n in waiting
        }
        return {
            kind: count for kind, count in kinds.items() if not any(can_run(c, kind) for c in live)
        }

    # --- changing --------------------------------------------------------------------

    def pause(self, by: str, stop_running: bool = False, reason: str = "") -> None:
        """Every daemon stops claiming; with ``stop_running``, running jobs also stop at
        their next step and go back to the queue. ``paused_at`` on the database's clock."""
        self._set_control(True, stop_running, self.db.now_sql(), by, reason)

    def resume(self) -> None:
        """Claiming again; the listening daemons wake to claim at once (PostgreSQL)."""
        self._set_control(False, False, "NULL", "", "", notify=True)

    def request_cancel(
        self, job_id: int, reason: str = "cancelled by an administrator"
    ) -> CancelOutcome:
        """A waiting job ends now; a running one is flagged and its worker stops at its
        next step (see cancel_requested)."""
        waiting = self.db.write(
            f"UPDATE job SET state = ?, finished_at = {self.db.now_sql()}, error = ? "
            "WHERE id = ? AND state IN (?, ?)",
            [CANCELLED, reason, job_id, QUEUED, RETRYING],
        )
        if waiting:
            return CancelOutcome.CANCELLED
        running = self.db.write(
            "UPDATE job SET cancel_requested = ?, error = ? WHERE id = ? AND state = ?",
            [True, reason, job_id, RUNNING],
        )
        if running:
            return CancelOutcome.REQUESTED
        return CancelOutcome.ENDED if self.get(job_id) is not None else CancelOutcome.NOT_FOUND

    def retry(self, job_id: int) -> JobRecord | None:
        """Queue a failed or cancelled job again with fresh attempts (and no device
        faults counted); None when it is not one. Raises AlreadyQueued when its drop is
        pending as another job."""
        try:
            changed = self.db.write(
                "UPDATE job SET state = ?, attempts = 0, device_faults = 0, not_before = 0.0, "
                "error = NULL, hint = NULL, finished_at = NULL, cancel_requested = ?, "
                "progress = 0.0 "
                "WHERE id = ? AND state IN (?, ?)",
                [QUEUED, False, job_id, FAILED, CANCELLED],
                notify=NOTIFY_SQL,
            )
        except UniqueViolation:
            job = self.get(job_id)
            twins = self.pending_twins(job) if job is not None else []
            raise AlreadyQueued(
                f"job {job_id} is already waiting or running as job "
                f"{twins[0].id if twins else '?'}",
                "nothing to do: that job makes the same video",
            ) from None
        return self.get(job_id) if changed else None

    # --- inside ------------------------------------------------------------------------

    def _jobs(self, query: str, params: list[Any]) -> list[JobRecord]:
        return [self._job(row) for row in self.db.rows(query, params)]

    def _job(self, row: tuple[Any, ...]) -> JobRecord:
        values = dict(zip(JOB_COLUMNS, row, strict=True))
        for name in JOB_FILE_NAME_COLUMNS:
            if values[name] is not None:
                values[name] = from_db(values[name])
        for name in JOB_BOOL_COLUMNS:
            values[name] = bool(values[name])
        return self.host_paths.localize(JobRecord(**values))

    def _set_control(
        self,
        paused: bool,
        stop_running: bool,
        paused_at: str,
        by: str,
        reason: str,
        notify: bool = False,
    ) -> None:
        # One statement, also for a queue whose row was deleted by hand.
        self.db.write(
            "INSERT INTO control (id, paused, pause_now, paused_at, paused_by, reason) "
            f"VALUES (1, ?, ?, {paused_at}, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "paused = excluded.paused, pause_now = excluded.pause_now, "
            "paused_at = excluded.paused_at, paused_by = excluded.paused_by, "
            "reason = excluded.reason",
            [paused, stop_running, by, reason],
            notify=NOTIFY_SQL if notify else None,
        )


def can_run(can: Capabilities, kind: JobKind) -> bool:
    """The claim's routing (claim.py), for one kind of job."""
    if kind.engine not in can.engines:
        return False
    if can.inboxes is not None and kind.inbox not in can.inboxes:
        return False
    if can.models is not None and kind.model and kind.model not in can.models:
        return False
    return can.memory_gb is None or kind.memory_gb <= can.memory_gb


def _marks(values: list[Any]) -> str:
    return ", ".join("?" for _ in values)
