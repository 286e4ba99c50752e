"""Reading the queue (single jobs, a drop's jobs, listings, counts) and the plumbing
every part of the store shares: sessions, the clock, one-statement writes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ColumnElement, case, text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from .database import clock, make_engine, read_clock
from .host_paths import HostPaths
from .job_states import PENDING, JobState
from .tables import Job
from .wakeup import NOTIFY_SQL


class QueueReads:
    """The reading half of :class:`daemon.store.JobStore`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        self.dialect: str = self.engine.dialect.name
        # How this host sees the queue's paths; the daemon sets its own (host_paths.py).
        self.host_paths = HostPaths()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def _notify(self, session: Session) -> None:
        """Wake the other daemons (delivered at commit; see wakeup.py)."""
        if self.dialect == "postgresql":
            session.execute(text(NOTIFY_SQL))

    def _clock(self, now: float | None) -> Any:
        return clock(self.dialect, now)

    def _execute(self, statement: Any, notify: bool = False) -> int:
        """Run one write; with ``notify``, wake the other daemons if it changed a row."""
        with self._session() as session:
            result = session.execute(statement)
            if notify and result.rowcount:  # type: ignore[attr-defined]
                self._notify(session)
            session.commit()
        return int(result.rowcount)  # type: ignore[attr-defined]

    def now(self) -> float:
        """The database's clock, in seconds since the epoch: the queue's time."""
        with self.engine.connect() as conn:
            return read_clock(conn)

    def _local(self, jobs: Sequence[Job]) -> list[Job]:
        return [self.host_paths.localize(job) for job in jobs]

    def _file_is(self, source: str) -> ColumnElement[bool]:
        """The rows of the file at ``source`` on this host: by inbox name and relative
        path, whichever host queued it (or by the path, for rows made before names)."""
        condition = col(Job.source) == source
        where = self.host_paths.inbox_file(source)
        if where is not None:
            condition = condition | ((col(Job.inbox) == where[0]) & (col(Job.relative) == where[1]))
        return condition

    def get(self, job_id: int) -> Job | None:
        with self._session() as session:
            job = session.get(Job, job_id)
        return self.host_paths.localize(job) if job is not None else None

    def cancel_requested(self, job_id: int) -> bool:
        """Whether `i2vd cancel` asked the running job to stop (its worker polls this)."""
        job = self.get(job_id)
        return bool(job and job.cancel_requested)

    def list_jobs(
        self, states: Iterable[str] | None = None, limit: int = 50, newest_first: bool = True
    ) -> list[Job]:
        """Jobs in ``states`` (all when None), newest first unless told otherwise."""
        query = select(Job)
        if states is not None:
            query = query.where(col(Job.state).in_(list(states)))
        order = col(Job.id).desc() if newest_first else col(Job.id)
        with self._session() as session:
            return self._local(session.exec(query.order_by(order).limit(limit)).all())

    def job_for_file(self, source: str, sha256: str) -> Job | None:
        """The job for this exact file content at this path, whatever its state: a
        pending one first (an image with variants has several), else the newest."""
        pending_first = case((col(Job.state).in_(PENDING), 0), else_=1)
        with self._session() as session:
            job = session.exec(
                select(Job)
                .where(self._file_is(source), Job.sha256 == sha256)
                .order_by(pending_first, col(Job.id).desc())
            ).first()
        return self.host_paths.localize(job) if job is not None else None

    def claim_drop_end(self, drop: str) -> bool:
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
            return self._local(
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
            return self._local(session.exec(query.order_by(col(Job.id))).all())

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
            return self._local(
                session.exec(
                    select(Job).where(Job.state == JobState.FAILED, col(Job.finished_at) >= since)
                ).all()
            )
