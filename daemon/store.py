"""The durable job queue: the queue API (enqueue, claim, heartbeat, finish, …).

Knows nothing about engines. Claiming is one atomic statement, so two workers never
get the same job; a claimed job carries a lease that a crashed worker lets expire.

Time: every method that takes ``now`` uses the database's clock when it is None, which
is how the daemon calls them (a host whose clock is off changes nothing). A number is
for tests that drive time step by step.

Fencing: a worker calls :meth:`JobStore.still_owns` right before it renames anything
into the outbox, and publishes only when it returns True (the call also renews the
lease, so the rename happens well inside it); every write of a running job passes
``owner`` so a worker whose lease was taken over changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, false, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select, text

from .capabilities import Capabilities
from .claim import claim_statement
from .job_states import PENDING, PENDING_SQL, JobState
from .queue_reads import QueueReads
from .registry import Controls, Daemons
from .schema_version import at_newest
from .tables import DROP_KEY, Job

__all__ = [
    "PENDING",
    "Capabilities",
    "DeviceFaults",
    "Job",
    "JobState",
    "JobStore",
    "LeaseLost",
    "Queued",
]

from .attempts import after_crash


class LeaseLost(Exception):
    """This daemon's lease on the job ran out and another daemon may hold it: publish
    nothing, write nothing to the job's row."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id}: the lease was lost")
        self.job_id = job_id


@dataclass(frozen=True)
class DeviceFaults:
    """A job handed back after a device fault: its counted faults so far, and whether
    they reached the cap (then it is still running, for its worker to fail it)."""

    counted: int
    cap_reached: bool


@dataclass(frozen=True)
class Queued:
    """The jobs of one drop, and whether this call queued them (False: another daemon
    had already queued the same drop, and these are its jobs)."""

    jobs: list[Job]
    new: bool


class JobStore(QueueReads):
    """The daemon's queue operations. One instance per process; safe to share between
    threads. (The admin commands' own operations are in admin_queue.py.)

    Opening it brings the schema up to date (Alembic, under a lock): see migrate.py.
    """

    daemons: Daemons
    control: Controls

    def __init__(self, url: str, migrate: bool = True) -> None:
        super().__init__(url)
        if migrate and not at_newest(self.engine):
            from .migrate import upgrade  # Alembic only when there is something to do

            upgrade(self.engine)
        self.daemons = Daemons(self.engine)
        self.control = Controls(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # --- writing -------------------------------------------------------------

    def enqueue(self, job: Job) -> Job:
        """Queue one job, or return the pending job of the same drop already queued."""
        return self.enqueue_drop([job]).jobs[0]

    def enqueue_drop(self, jobs: list[Job]) -> Queued:
        """Queue the jobs of one drop (a rule's variants) together, or none of them.

        The unique key on pending drops decides, not a look-up first: two daemons that
        see the same file at once queue it once, and the second gets the first's jobs.
        """
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        with self._session() as session:
            ids = []
            for job in jobs:
                values = job.model_dump(exclude={"id"})
                statement = (
                    insert(Job)
                    .values(**values)
                    .on_conflict_do_nothing(index_elements=DROP_KEY, index_where=text(PENDING_SQL))
                    .returning(col(Job.id))
                )
                row = session.execute(statement).first()
                if row is None:
                    session.rollback()
                    return Queued(self._pending_drop(jobs[0]), new=False)
                ids.append(row[0])
            self._notify(session)
            session.commit()
        for job, job_id in zip(jobs, ids, strict=True):
            job.id = job_id
        return Queued([self.get(i) or job for i, job in zip(ids, jobs, strict=True)], new=True)

    def claim(
        self,
        owner: str,
        now: float | None = None,
        lease_seconds: float = 120.0,
        can_run: Capabilities | None = None,
    ) -> Job | None:
        """Atomically take the next runnable job (see claim.py) and lease it to ``owner``.
        ``can_run`` None: any engine."""
        statement, params = claim_statement(self.dialect, can_run, now)
        with self._session() as session:
            row = session.execute(
                statement, {**params, "owner": owner, "lease": lease_seconds}
            ).first()
            session.commit()
        return self.get(row[0]) if row else None

    def heartbeat(
        self,
        job_id: int,
        owner: str,
        now: float | None = None,
        lease_seconds: float = 120.0,
        progress: float | None = None,
    ) -> bool:
        """Renew ``owner``'s lease; False when it no longer holds the job."""
        values: dict[str, Any] = {"lease_expires": self._clock(now) + lease_seconds}
        if progress is not None:
            values["progress"] = progress
        statement = update(Job).where(
            col(Job.id) == job_id,
            col(Job.lease_owner) == owner,
            col(Job.state) == JobState.RUNNING,
        )
        return bool(self._execute(statement.values(**values)))

    def still_owns(
        self, job_id: int, owner: str, lease_seconds: float = 120.0, now: float | None = None
    ) -> bool:
        """The fence before publishing: True, with the lease renewed, only while
        ``owner`` holds the running job. False: it was taken over; publish nothing."""
        return self.heartbeat(job_id, owner, now, lease_seconds)

    def plan_outputs(
        self,
        job_id: int,
        video: str | None,
        sidecar: str | None,
        source_dest: str | None,
        owner: str | None = None,
    ) -> None:
        neutral = self.host_paths.neutral
        self._update(
            job_id,
            owner=owner,
            video_path=neutral(video),
            sidecar_path=neutral(sidecar),
            source_dest=neutral(source_dest),
            video_inode=None,
        )

    def record_video(self, job_id: int, inode: int, owner: str | None = None) -> None:
        self._update(job_id, owner=owner, video_inode=inode)

    def finish(
        self,
        job_id: int,
        now: float | None,
        timings: dict[str, float],
        duplicate_of: int | None = None,
        owner: str | None = None,
    ) -> bool:
        return self._end_lease(
            job_id,
            owner,
            state=JobState.DONE,
            finished_at=self._clock(now),
            progress=1.0,
            timings_json=json.dumps(timings),
            duplicate_of=duplicate_of,
            error=None,
            hint=None,
        )

    def fail(
        self,
        job_id: int,
        now: float | None,
        error: str,
        hint: str,
        retry_at: float | None,
        owner: str | None = None,
        retry_in: float | None = None,
    ) -> JobState:
        """Record a failed attempt: back to the queue at ``retry_at`` (or ``retry_in``
        seconds from now on the database's clock), or given up."""
        retrying = retry_at is not None or retry_in is not None
        state = JobState.RETRYING if retrying else JobState.FAILED
        due: Any = retry_at if retry_at is not None else 0.0
        if retry_in is not None:
            due = self._clock(now) + retry_in
        self._end_lease(
            job_id,
            owner,
            state=state,
            error=error,
            hint=hint,
            not_before=due,
            finished_at=None if retrying else self._clock(now),
        )
        return state

    def cancel(self, job_id: int, now: float | None, reason: str, owner: str | None = None) -> bool:
        """End a job as cancelled (its worker's call; `i2vd cancel` asks through
        admin_queue.AdminQueue.request_cancel)."""
        return self._end_lease(
            job_id, owner, state=JobState.CANCELLED, finished_at=self._clock(now), error=reason
        )

    def keep_in_inbox(self, source: str, sha256: str) -> None:
        """The original stays in the inbox for good (kept, or it could not be moved or
        deleted): every job of it says so, and intake takes it again only once it
        changes."""
        statement = (
            update(Job)
            .where(self._file_is(source), col(Job.sha256) == sha256)
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
            cancel_requested=False,
            attempts=case((col(Job.attempts) > 0, col(Job.attempts) - 1), else_=0),
        )

    def hand_back_after_device_fault(
        self, job_id: int, owner: str, counted: bool, limit: int
    ) -> DeviceFaults | None:
        """After a device fault (breaker.py): like :meth:`requeue_interrupted`, and when
        ``counted`` (the GPU was working when the job started on it) the job's
        ``device_faults`` goes up by one. Once that reaches ``limit`` the job is the
        image's fault: it stays running, leased to ``owner``, for the worker to fail it
        (``cap_reached``). None when ``owner`` no longer holds the job.

        One UPDATE … RETURNING, so two daemons cannot both count from the same number,
        and a daemon whose lease was taken over changes nothing."""
        step = 1 if counted else 0
        faults = col(Job.device_faults) + step
        # Every value below is computed from the row as it was: the cap is reached
        # only by a counted fault, never by one that belongs to the GPU.
        reached = (faults >= limit) if counted else false()
        values: dict[str, Any] = {
            "device_faults": faults,
            "state": case((reached, col(Job.state)), else_=JobState.QUEUED.value),
            "lease_owner": case((reached, col(Job.lease_owner)), else_=None),
            "lease_expires": case((reached, col(Job.lease_expires)), else_=None),
            "cancel_requested": case((reached, col(Job.cancel_requested)), else_=false()),
            # The fault used no attempt (the failure path counts the one it ends on).
            "attempts": case(
                (reached, col(Job.attempts)),
                (col(Job.attempts) > 0, col(Job.attempts) - 1),
                else_=0,
            ),
        }
        statement = (
            update(Job)
            .where(col(Job.id) == job_id, col(Job.lease_owner) == owner)
            .values(**values)
            .returning(col(Job.device_faults), col(Job.state))
        )
        with self._session() as session:
            row = session.execute(statement).first()
            if row is not None and row[1] == JobState.QUEUED:
                self._notify(session)  # a job for someone to claim
            session.commit()
        if row is None:
            return None
        return DeviceFaults(int(row[0]), row[1] != JobState.QUEUED)

    def postpone(self, job_id: int, until: float, owner: str | None = None) -> bool:
        """Back to the queue until ``until``, the attempt handed back: a folder the job
        needs is unavailable (an unmounted share), which is no fault of the job's."""
        return self._end_lease(
            job_id,
            owner,
            state=JobState.QUEUED,
            not_before=until,
            attempts=case((col(Job.attempts) > 0, col(Job.attempts) - 1), else_=0),
        )

    def recover(
        self,
        host: str | None,
        now: float | None = None,
        alive: Callable[[int], bool] = lambda pid: False,
    ) -> list[Job]:
        """Re-queue running jobs whose daemon is gone: their lease ran out, or (with
        ``host``, at start-up) they were leased on ``host`` by a process that ``alive``
        says no longer runs.

        The attempt counts only if the crash fell while the picture was decoded,
        rendered or encoded (``attempts.after_crash``): a file that kills the daemon every time
        must still reach its ``max_attempts`` instead of looping forever.
        """
        now = self.now() if now is None else now
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
                .values(
                    state=JobState.QUEUED,
                    lease_owner=None,
                    lease_expires=None,
                    attempts=after_crash(col(Job.attempts), col(Job.progress)),
                )
            )
            with self._session() as session:
                changed = session.execute(statement).rowcount  # type: ignore[attr-defined]
                if changed:
                    self._notify(session)
                session.commit()
            if changed:
                stale.append(job)
        return stale

    # --- helpers ---------------------------------------------------------------------

    def _pending_drop(self, job: Job) -> list[Job]:
        """The pending jobs of the same file as ``job``: what a second queueing of one
        drop gets instead of new jobs."""
        with self._session() as session:
            query = select(Job).where(
                Job.inbox == job.inbox,
                Job.relative == job.relative,
                Job.sha256 == job.sha256,
                col(Job.state).in_(PENDING),
            )
            return self._local(session.exec(query.order_by(col(Job.id))).all())

    def _update(self, job_id: int, owner: str | None = None, **values: Any) -> bool:
        """One atomic UPDATE of a job row. With ``owner``, only while that daemon still
        holds the lease: a worker whose lease was taken over cannot overwrite the row."""
        statement = update(Job).where(col(Job.id) == job_id)
        if owner is not None:
            statement = statement.where(col(Job.lease_owner) == owner)
        # Back to the queue (an interrupted job, a retry): a job for someone to claim.
        notify = values.get("state") in (JobState.QUEUED, JobState.RETRYING)
        return bool(self._execute(statement.values(**values), notify))

    def _end_lease(self, job_id: int, owner: str | None, **values: Any) -> bool:
        """Leave 'running': the new state and values, with the lease released."""
        return self._update(job_id, owner=owner, lease_owner=None, lease_expires=None, **values)


def _owner_alive(job: Job, host: str, now: float, alive: Callable[[int], bool]) -> bool:
    """True while a same-host daemon holding a live lease still runs (two daemons may
    share one queue on one host; a restarted one must not steal the other's job)."""
    if job.lease_expires is None or job.lease_expires < now or not job.lease_owner:
        return False
    owner_host, _, pid = job.lease_owner.rpartition(":")
    return owner_host == host and pid.isdigit() and alive(int(pid))
