"""The durable job queue: SQLModel tables and the queue API (enqueue, claim, finish, …).

Knows nothing about engines. Claiming is one atomic UPDATE, so two workers never get
the same job; a claimed job carries a lease that a crashed worker lets expire.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, case, event, text, update
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, create_engine, func, select


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


PENDING = (JobState.QUEUED, JobState.RUNNING, JobState.RETRYING)


class Job(SQLModel, table=True):
    __table_args__ = (
        Index("ix_job_claim", "state", "not_before"),
        Index("ix_job_source", "source", "sha256"),
        Index("ix_job_identity", "sha256", "rule_name", "rule_hash"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str  # absolute path where the image was found
    inbox_root: str
    relative: str  # inbox-relative, POSIX separators
    sha256: str
    size_bytes: int = 0
    rule_name: str
    rule_hash: str
    rule_file: str
    rule_json: str  # the rule as it was when queued: later edits do not change this job
    # One image may make several jobs (a rule's variants): they share `drop`, and each
    # has its own `variant` name. The last of them to end takes care of the original.
    drop: str = Field(default="", index=True)
    variant: str = ""
    # Set on every job of a drop by the one job that takes care of the original.
    drop_settled: bool = False
    # The text of the image's <stem>.txt when it was queued (a template variable).
    text: str = ""
    # The <stem>.txt/.yaml files beside the image, which travel with it (JSON list).
    companions_json: str = "[]"
    engine: str
    state: str = JobState.QUEUED
    attempts: int = 0
    max_attempts: int = 3
    not_before: float = 0.0
    lease_owner: str | None = None
    lease_expires: float | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    hint: str | None = None
    duplicate_of: int | None = None
    # Output paths are recorded before they are written, so a retry after a crash
    # knows exactly which half-published files are its own to remove.
    video_path: str | None = None
    sidecar_path: str | None = None
    source_dest: str | None = None
    # The published video's inode, recorded around placing it: only a file with this
    # inode is this job's to remove after a failure, or to reuse for a duplicate.
    video_inode: int | None = None
    # True when the job ended but its original stays in the inbox (it could not be
    # moved, or the rule says `source: keep`): intake must not take that file again.
    # Any other file at the path afterwards is a new drop.
    source_stuck: bool = False
    progress: float = 0.0
    timings_json: str | None = None

    @property
    def rule_data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.rule_json)
        return data

    @property
    def companions(self) -> list[str]:
        names: list[str] = json.loads(self.companions_json)
        return names


class JobStore:
    """All queue operations. One instance per process; safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        SQLModel.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    # --- writing -------------------------------------------------------------

    def enqueue(self, job: Job) -> Job:
        with self._session() as session:
            session.add(job)
            session.commit()
            session.refresh(job)
            return job

    def claim(self, owner: str, now: float, lease_seconds: float) -> Job | None:
        """Atomically take the oldest runnable job and lease it to ``owner``."""
        lock = " FOR UPDATE SKIP LOCKED" if self.engine.dialect.name == "postgresql" else ""
        statement = text(
            "UPDATE job SET state = :running, attempts = attempts + 1, lease_owner = :owner, "
            "lease_expires = :expires, started_at = :now, progress = 0 "
            "WHERE id = (SELECT id FROM job WHERE state IN (:queued, :retrying) "
            f"AND not_before <= :now ORDER BY not_before, id LIMIT 1{lock}) RETURNING id"
        )
        with self._session() as session:
            row = session.execute(
                statement,
                {
                    "running": JobState.RUNNING.value,
                    "queued": JobState.QUEUED.value,
                    "retrying": JobState.RETRYING.value,
                    "owner": owner,
                    "expires": now + lease_seconds,
                    "now": now,
                },
            ).first()
            session.commit()
        return self.get(row[0]) if row else None

    def heartbeat(
        self,
        job_id: int,
        owner: str,
        now: float,
        lease_seconds: float,
        progress: float | None = None,
    ) -> None:
        values: dict[str, Any] = {"lease_expires": now + lease_seconds}
        if progress is not None:
            values["progress"] = progress
        self._update(job_id, owner=owner, **values)

    def plan_outputs(
        self,
        job_id: int,
        video: str | None,
        sidecar: str | None,
        source_dest: str | None,
        owner: str | None = None,
    ) -> None:
        self._update(
            job_id,
            owner=owner,
            video_path=video,
            sidecar_path=sidecar,
            source_dest=source_dest,
            video_inode=None,
        )

    def record_video(self, job_id: int, inode: int, owner: str | None = None) -> None:
        self._update(job_id, owner=owner, video_inode=inode)

    def finish(
        self,
        job_id: int,
        now: float,
        timings: dict[str, float],
        duplicate_of: int | None = None,
        owner: str | None = None,
    ) -> bool:
        return self._end_lease(
            job_id,
            owner,
            state=JobState.DONE,
            finished_at=now,
            progress=1.0,
            timings_json=json.dumps(timings),
            duplicate_of=duplicate_of,
            error=None,
            hint=None,
        )

    def fail(
        self,
        job_id: int,
        now: float,
        error: str,
        hint: str,
        retry_at: float | None,
        owner: str | None = None,
    ) -> JobState:
        """Record a failed attempt: back to the queue at ``retry_at``, or given up."""
        state = JobState.RETRYING if retry_at is not None else JobState.FAILED
        self._end_lease(
            job_id,
            owner,
            state=state,
            error=error,
            hint=hint,
            not_before=retry_at or 0.0,
            finished_at=None if retry_at else now,
        )
        return state

    def cancel(self, job_id: int, now: float, reason: str, owner: str | None = None) -> bool:
        return self._end_lease(
            job_id, owner, state=JobState.CANCELLED, finished_at=now, error=reason
        )

    def mark_source_stuck(self, job_id: int) -> None:
        self._update(job_id, source_stuck=True)

    def mark_source_left(self, source: str, sha256: str) -> None:
        """The original stays in the inbox for good: every job of it says so."""
        statement = (
            update(Job)
            .where(col(Job.source) == source, col(Job.sha256) == sha256)
            .values(source_stuck=True)
        )
        with self._session() as session:
            session.execute(statement)
            session.commit()

    def requeue_interrupted(self, job_id: int, owner: str | None = None) -> bool:
        """Put back a job the daemon stopped in the middle of; the attempt does not count."""
        return self._end_lease(
            job_id,
            owner,
            state=JobState.QUEUED,
            attempts=case((col(Job.attempts) > 0, col(Job.attempts) - 1), else_=0),
        )

    def recover(
        self, host: str | None, now: float, alive: Callable[[int], bool] = lambda pid: False
    ) -> list[Job]:
        """Re-queue running jobs whose daemon is gone: their lease ran out, or (with
        ``host``, at start-up) they were leased on ``host`` by a process that ``alive``
        says no longer runs.

        Attempts are not refunded: a file that kills the daemon every time must still
        reach its ``max_attempts`` instead of looping forever.
        """
        gone = (col(Job.lease_expires) < now) | col(Job.lease_expires).is_(None)
        if host is not None:
            gone = gone | col(Job.lease_owner).startswith(f"{host}:", autoescape=True)
        with self._session() as session:
            running = session.exec(select(Job).where(Job.state == JobState.RUNNING, gone)).all()
            candidates = [
                job for job in running if host is None or not _owner_alive(job, host, now, alive)
            ]
        stale = []
        for job in candidates:
            # Re-checked in the UPDATE itself: a job whose lease was renewed, or taken
            # by another daemon, since the SELECT is left alone.
            still_gone = col(Job.lease_expires).is_(None) | (col(Job.lease_expires) < now)
            if host is not None and (job.lease_owner or "").startswith(f"{host}:"):
                # Its process is dead: the lease cannot be renewed, only taken over.
                still_gone = still_gone | (col(Job.lease_owner) == job.lease_owner)
            statement = (
                update(Job)
                .where(col(Job.id) == job.id, col(Job.state) == JobState.RUNNING, still_gone)
                .values(state=JobState.QUEUED, lease_owner=None, lease_expires=None)
            )
            with self._session() as session:
                changed = session.execute(statement).rowcount  # type: ignore[attr-defined]
                session.commit()
            if changed:
                stale.append(job)
        return stale

    def _update(self, job_id: int, owner: str | None = None, **values: Any) -> bool:
        """One atomic UPDATE of a job row. With ``owner``, only while that daemon still
        holds the lease: a worker whose lease was taken over cannot overwrite the row."""
        statement = update(Job).where(col(Job.id) == job_id)
        if owner is not None:
            statement = statement.where(col(Job.lease_owner) == owner)
        with self._session() as session:
            result = session.execute(statement.values(**values))
            session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def _end_lease(self, job_id: int, owner: str | None, **values: Any) -> bool:
        """Leave 'running': the new state and values, with the lease released."""
        return self._update(job_id, owner=owner, lease_owner=None, lease_expires=None, **values)

    # --- reading -------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._session() as session:
            return session.get(Job, job_id)

    def seen(self, source: str, sha256: str) -> Job | None:
        """The job for this exact file content at this path, whatever its state: a
        pending one first (an image with variants has several), else the newest."""
        pending_first = case((col(Job.state).in_(PENDING), 0), else_=1)
        with self._session() as session:
            return session.exec(
                select(Job)
                .where(Job.source == source, Job.sha256 == sha256)
                .order_by(pending_first, col(Job.id).desc())
            ).first()

    def settle_drop(self, drop: str) -> bool:
        """True for exactly one caller: the first to ask once no job of ``drop`` is
        pending. Each job commits its own end first, so the last to end always wins,
        also with several daemons on one queue."""
        pending = select(Job.id).where(Job.drop == drop, col(Job.state).in_(PENDING)).exists()
        statement = (
            update(Job)
            .where(col(Job.drop) == drop, col(Job.drop_settled).is_(False), ~pending)
            .values(drop_settled=True)
        )
        with self._session() as session:
            changed = session.execute(statement).rowcount  # type: ignore[attr-defined]
            session.commit()
        return bool(changed)

    def siblings(self, job: Job) -> list[Job]:
        """The other jobs of the same drop (the other variants of this image)."""
        if not job.drop:
            return []
        with self._session() as session:
            return list(
                session.exec(select(Job).where(Job.drop == job.drop, Job.id != job.id)).all()
            )

    def find_done(
        self, sha256: str, rule_name: str, rule_hash: str, exclude: int | None = None
    ) -> list[Job]:
        """Finished jobs with the same identity, oldest first: candidates for reuse."""
        with self._session() as session:
            query = select(Job).where(
                Job.sha256 == sha256,
                Job.rule_name == rule_name,
                Job.rule_hash == rule_hash,
                Job.state == JobState.DONE,
            )
            if exclude is not None:
                query = query.where(Job.id != exclude)
            # Oldest first: a duplicate then points at the video that was generated,
            # not at an earlier duplicate of it.
            return list(session.exec(query.order_by(col(Job.id))).all())

    def count_by_state(self) -> dict[str, int]:
        with self._session() as session:
            rows = session.exec(select(Job.state, func.count()).group_by(Job.state)).all()
            return {state: count for state, count in rows}

    def pending(self) -> int:
        with self._session() as session:
            return session.exec(
                select(func.count()).select_from(Job).where(col(Job.state).in_(PENDING))
            ).one()

    def next_due(self) -> float | None:
        """When the earliest waiting job becomes runnable (None if nothing waits)."""
        with self._session() as session:
            return session.exec(
                select(func.min(Job.not_before)).where(
                    col(Job.state).in_((JobState.QUEUED, JobState.RETRYING))
                )
            ).one()

    def failed_since(self, since: float) -> list[Job]:
        with self._session() as session:
            return list(
                session.exec(
                    select(Job).where(Job.state == JobState.FAILED, col(Job.finished_at) >= since)
                ).all()
            )


def _owner_alive(job: Job, host: str, now: float, alive: Callable[[int], bool]) -> bool:
    """True while a same-host daemon holding a live lease still runs (two daemons may
    share one queue on one host; a restarted one must not steal the other's job)."""
    if job.lease_expires is None or job.lease_expires < now or not job.lease_owner:
        return False
    owner_host, _, pid = job.lease_owner.rpartition(":")
    return owner_host == host and pid.isdigit() and alive(int(pid))


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL lets readers (the CLI, status) work while the worker writes; FULL
            # syncs each commit so a power cut never loses a queued job.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)
