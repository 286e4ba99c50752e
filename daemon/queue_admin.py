"""Administering the queue: what `i2vd retry`, `cancel` and `status` ask of it."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import NamedTuple

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from .capabilities import Capabilities
from .problems import Problem
from .queue_reads import QueueReads
from .registry import Daemons
from .tables import PENDING, RUNNABLE, Job, JobState


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


class QueueAdmin(QueueReads):
    """Retry, cancel, and which waiting jobs no live daemon can run."""

    daemons: Daemons

    def retry(self, job_id: int) -> Job | None:
        """Queue a failed or cancelled job again with fresh attempts; None when it is
        not one. Raises AlreadyQueued when its drop is pending as another job."""
        statement = (
            update(Job)
            .where(
                col(Job.id) == job_id,
                col(Job.state).in_((JobState.FAILED, JobState.CANCELLED)),
            )
            .values(
                state=JobState.QUEUED,
                attempts=0,
                not_before=0.0,
                error=None,
                hint=None,
                finished_at=None,
                cancel_requested=False,
                progress=0.0,
            )
        )
        try:
            changed = self._execute(statement, notify=True)
        except IntegrityError:
            job = self.get(job_id)
            twins = self._pending_drop(job) if job is not None else []
            twin = twins[0] if twins else None
            raise AlreadyQueued(
                f"job {job_id} is already waiting or running as job {twin.id if twin else '?'}",
                "nothing to do: that job makes the same video",
            ) from None
        return self.get(job_id) if changed else None

    def request_cancel(
        self, job_id: int, reason: str = "cancelled by an administrator"
    ) -> CancelOutcome:
        """A waiting job ends now; a running one is flagged and its worker stops at its
        next step (see cancel_requested)."""
        waiting = (
            update(Job)
            .where(col(Job.id) == job_id, col(Job.state).in_((JobState.QUEUED, JobState.RETRYING)))
            .values(state=JobState.CANCELLED, finished_at=self._clock(None), error=reason)
        )
        if self._execute(waiting):
            return CancelOutcome.CANCELLED
        running = (
            update(Job)
            .where(col(Job.id) == job_id, col(Job.state) == JobState.RUNNING)
            .values(cancel_requested=True, error=reason)
        )
        if self._execute(running):
            return CancelOutcome.REQUESTED
        return CancelOutcome.ENDED if self.get(job_id) is not None else CancelOutcome.NOT_FOUND

    def cancel_requested(self, job_id: int) -> bool:
        """Whether `i2vd cancel` asked the running job to stop (its worker polls this)."""
        job = self.get(job_id)
        return bool(job and job.cancel_requested)

    def stranded(self, alive_within: float) -> dict[JobKind, int]:
        """Waiting jobs that no live daemon can run, counted by kind (inbox, engine,
        model, GiB of device memory needed): `i2vd status` shows them instead of a
        silent wait."""
        live = [d.capabilities for d in self.daemons.alive(alive_within)]
        with self._session() as session:
            rows = session.exec(
                select(Job.inbox, Job.engine, Job.model, Job.memory_gb).where(
                    col(Job.state).in_(RUNNABLE)
                )
            ).all()
        waiting = Counter(JobKind(*row) for row in rows)
        return {
            kind: count
            for kind, count in waiting.items()
            if not any(_can_run(can, kind) for can in live)
        }

    def _pending_drop(self, job: Job) -> list[Job]:
        with self._session() as session:
            query = select(Job).where(
                Job.inbox == job.inbox,
                Job.relative == job.relative,
                Job.sha256 == job.sha256,
                col(Job.state).in_(PENDING),
            )
            return self._local(session.exec(query.order_by(col(Job.id))).all())


def _can_run(can: Capabilities, kind: JobKind) -> bool:
    """The claim's routing (claim.py), for one kind of job."""
    if kind.engine not in can.engines:
        return False
    if can.inboxes is not None and kind.inbox not in can.inboxes:
        return False
    if can.models is not None and kind.model and kind.model not in can.models:
        return False
    return can.memory_gb is None or kind.memory_gb <= can.memory_gb
