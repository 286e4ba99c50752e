"""The queue's read side: one picture of what waits, runs, finished and failed.

Everything people and admins are shown about the queue (the status page in the share,
``i2vd status``) is built from one :class:`Snapshot`, so they never disagree. Nothing
here changes a job. Estimates are medians of measured jobs, said to be estimates and
how they were made; before a rule has a finished job at a size there is none.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, select

from .estimates import Size, claim_order, phase_of, remaining_time, size_of
from .snapshot import (
    PAUSED,
    RUNNING,
    STOPPED,
    Activity,
    Done,
    Failed,
    Running,
    Snapshot,
    Waiting,
    daemon_state,
)
from .store import Job, JobState, JobStore

# What readers of the queue need comes from here (the items live in snapshot.py).
__all__ = [
    "PAUSED",
    "RUNNING",
    "STOPPED",
    "Activity",
    "Done",
    "Failed",
    "QueueView",
    "Running",
    "Snapshot",
    "Waiting",
    "daemon_state",
]

# How many recent finished jobs of one rule and size an estimate is the median of.
ESTIMATE_JOBS = 10
# Finished jobs read to find them: enough for several rules without scanning history.
HISTORY_ROWS = 400
PARAM_KEYS = ("width", "height", "frames", "fps", "steps", "guidance", "seed")


@dataclass
class QueueView:
    """Builds snapshots from the queue. Caches what never changes (a rule snapshot's
    size, a finished job's sidecar and report), so a snapshot costs a few queries."""

    store: JobStore
    inboxes: Mapping[str, Path]  # each inbox's name (as jobs record it) and its folder here
    outbox: Path
    failed_dir: Path
    items: int = 20  # finished and failed jobs listed
    _sizes: dict[str, Size] = field(default_factory=dict)
    _done: dict[int, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)
    _reports: dict[int, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)
    _labels: dict[str, str] = field(default_factory=dict)

    def snapshot(self, now: float, daemon: Activity, workers: int = 1) -> Snapshot:
        with Session(self.store.engine) as session:
            estimates = self._estimates(session)
            running = self._running(session, now, estimates)
            waiting = self._waiting(session, now, estimates, running, max(1, workers))
            done = self._finished(session)
            failed = self._failed(session)
        return Snapshot(
            updated=now,
            daemon=daemon,
            waiting=tuple(waiting),
            running=tuple(running),
            done=tuple(done),
            failed=tuple(failed),
            inboxes=tuple(self.label(name) for name in self.inboxes),
        )

    @property
    def _fetched(self) -> int:
        """Finished and failed jobs read: enough for each inbox's page to list ``items``
        of its own (``Snapshot.newest`` trims each page)."""
        return self.items * max(1, len(self.inboxes))

    def label(self, name: str) -> str:
        """An inbox as pages name it: its name when it was given one, else (the name is
        the folder's own path) the folder's name, or the whole path when two inboxes
        share a folder name."""
        if name not in self._labels:
            folder = self.inboxes.get(name)
            unique = sum(1 for other in self.inboxes.values() if other.name == Path(name).name)
            if folder is None or name != str(folder) or unique != 1:
                self._labels[name] = name
            else:
                self._labels[name] = folder.name
        return self._labels[name]

    def _here(self, jobs: Sequence[Job]) -> list[Job]:
        """Jobs with their paths as this host sees them (the queue stores them
        host-neutral: an inbox by name, outputs relative to the outbox)."""
        return [self.store.host_paths.localize(job) for job in jobs]

    # --- estimates ---------------------------------------------------------------

    def _size(self, session: Session, rule_hash: str, rule_name: str) -> Size:
        cached = self._sizes.get(rule_hash)
        if cached is None:
            text = session.exec(
                select(Job.rule_json).where(Job.rule_hash == rule_hash).limit(1)
            ).first()
            cached = self._sizes[rule_hash] = size_of(rule_name, json.loads(text or "{}"))
        return cached

    def _estimates(self, session: Session) -> dict[tuple[Any, ...], tuple[float, int]]:
        """(median seconds, jobs measured) per rule and size, from the newest jobs that
        were really generated (a reused video took no time)."""
        rows = session.exec(
            select(Job.rule_hash, Job.rule_name, Job.started_at, Job.finished_at)
            .where(
                Job.state == JobState.DONE,
                col(Job.duplicate_of).is_(None),
                col(Job.started_at).is_not(None),
                col(Job.finished_at).is_not(None),
            )
            .order_by(col(Job.finished_at).desc())
            .limit(HISTORY_ROWS)
        ).all()
        samples: dict[tuple[Any, ...], list[float]] = {}
        for rule_hash, rule_name, started, finished in rows:
            seconds = (finished or 0.0) - (started or 0.0)
            key = self._size(session, rule_hash, rule_name).key
            bucket = samples.setdefault(key, [])
            if seconds > 0 and len(bucket) < ESTIMATE_JOBS:
                bucket.append(seconds)
        return {key: (statistics.median(s), len(s)) for key, s in samples.items() if s}

    # --- the queue -----------------------------------------------------------------

    def _running(
        self, session: Session, now: float, estimates: dict[tuple[Any, ...], tuple[float, int]]
    ) -> list[Running]:
        jobs = self._here(
            session.exec(
                select(Job).where(Job.state == JobState.RUNNING).order_by(col(Job.started_at))
            ).all()
        )
        out = []
        for job in jobs:
            assert job.id is not None
            size = self._size(session, job.rule_hash, job.rule_name)
            elapsed = max(0.0, now - (job.started_at or now))
            phase, step = phase_of(job.progress, job.engine)
            measured = estimates.get(size.key)
            remaining, how = remaining_time(elapsed, job.progress, phase, measured, size.words)
            out.append(
                Running(
                    job=job.id,
                    inbox=self.label(job.inbox),
                    source=job.relative,
                    rule=job.rule_name,
                    variant=job.variant,
                    phase=phase,
                    step=step,
                    progress=round(job.progress, 3),
                    started_at=job.started_at or now,
                    elapsed=round(elapsed, 1),
                    remaining=remaining,
                    remaining_how=how,
                    attempt=job.attempts,
                    max_attempts=job.max_attempts,
                )
            )
        return out

    def _waiting(
        self,
        session: Session,
        now: float,
        estimates: dict[tuple[Any, ...], tuple[float, int]],
        running: list[Running],
        workers: int,
    ) -> list[Waiting]:
        rows = session.execute(
            sa_select(
                col(Job.id),
                col(Job.inbox),
                col(Job.relative),
                col(Job.rule_name),
                col(Job.rule_hash),
                col(Job.variant),
                col(Job.state),
                col(Job.attempts),
                col(Job.max_attempts),
                col(Job.created_at),
                col(Job.not_before),
                col(Job.error),
                col(Job.priority),
            ).where(col(Job.state).in_((JobState.QUEUED, JobState.RETRYING)))
        ).all()
        served: dict[str, int] = {
            inbox: seq
            for inbox, seq in session.execute(
                sa_select(col(Job.inbox), func.max(Job.claim_seq)).group_by(Job.inbox)
            ).all()
        }
        # The claim's own order (claim.py): each inbox in turn, best first within it.
        by_id = {row[0]: row for row in rows}
        order = claim_order(((r[1], r[12], r[10], r[0]) for r in rows), served)
        # Work ahead, in seconds of one worker; None once something ahead has no estimate.
        ahead: float | None = 0.0
        for item in running:
            ahead = None if ahead is None or item.remaining is None else ahead + item.remaining
        out = []
        for position, row in enumerate((by_id[job_id] for job_id in order), start=1):
            job_id, inbox, relative, rule, rule_hash, variant, state = row[:7]
            attempts, max_attempts, created, not_before, error = row[7:12]
            size = self._size(session, rule_hash, rule)
            measured = estimates.get(size.key)
            eta: float | None = None
            if measured is None:
                how = f"no estimate yet: no image of rule {rule} at {size.words} has finished"
            elif ahead is None:
                how = "no estimate yet: an image ahead of it has no measured time yet"
            else:
                start = max(ahead / workers, not_before - now)
                eta = round(start + measured[0], 1)
                how = (
                    f"estimate: the median time of the last {measured[1]} image(s) of rule "
                    f"{rule} at {size.words}, after the images ahead of it"
                )
            ahead = None if ahead is None or measured is None else ahead + measured[0]
            out.append(
                Waiting(
                    job=job_id,
                    inbox=self.label(inbox),
                    source=relative,
                    rule=rule,
                    variant=variant,
                    state=state,
                    position=position,
                    attempts=attempts,
                    max_attempts=max_attempts,
                    queued_at=created,
                    last_error=error if state == JobState.RETRYING else None,
                    eta=eta,
                    eta_how=how,
                )
            )
        return out

    # --- finished and failed -------------------------------------------------------

    def _latest(self, session: Session, state: JobState, limit: int) -> list[Job]:
        """This page's jobs that ended in ``state``, newest first."""
        return self._here(
            session.exec(
                select(Job)
                .where(Job.state == state)
                .order_by(col(Job.finished_at).desc(), col(Job.id).desc())
                .limit(limit)
            ).all()
        )

    def _finished(self, session: Session) -> list[Done]:
        jobs = self._latest(session, JobState.DONE, self._fetched)
        out = []
        for job in jobs:
            assert job.id is not None
            if job.id not in self._done:
                self._done[job.id] = _read_sidecar(job.sidecar_path)
            prompt, params = self._done[job.id]
            started, finished = job.started_at, job.finished_at or 0.0
            out.append(
                Done(
                    job=job.id,
                    inbox=self.label(job.inbox),
                    source=job.relative,
                    rule=job.rule_name,
                    variant=job.variant,
                    finished_at=finished,
                    duration=round(finished - started, 1) if started else None,
                    video=_relative(job.video_path, self.outbox),
                    sidecar=_relative(job.sidecar_path, self.outbox),
                    prompt=prompt,
                    params=params,
                    reused=job.duplicate_of is not None,
                )
            )
        return out

    def _failed(self, session: Session) -> list[Failed]:
        jobs = self._latest(session, JobState.FAILED, self._fetched * 3)
        retaken = _retaken(session, jobs)
        out = []
        for job in jobs:
            assert job.id is not None
            if job.id in retaken:
                continue  # taken again since: this failure is history, not news
            if job.id not in self._reports:
                self._reports[job.id] = self._read_report(job)
            report_path, report = self._reports[job.id]
            out.append(
                Failed(
                    job=job.id,
                    inbox=self.label(job.inbox),
                    source=job.relative,
                    rule=job.rule_name,
                    variant=job.variant,
                    finished_at=job.finished_at or 0.0,
                    error=str(report.get("error") or job.error or ""),
                    hint=str(report.get("hint") or job.hint or ""),
                    detail=_text_or_none(report.get("detail")),
                    attempts=job.attempts,
                    report=report_path,
                    retry=retry_words(job),
                )
            )
            if len(out) == self._fetched:
                break
        return out

    def _read_report(self, job: Job) -> tuple[str | None, dict[str, Any]]:
        """The job's .error.json in the failed folder, if it is there and is its own."""
        path = PurePosixPath(job.relative)
        name = f"{path.name}.{job.variant}.error.json" if job.variant else f"{path.name}.error.json"
        relative = (path.parent / name).as_posix()
        try:
            report = json.loads((self.failed_dir / relative).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, {}
        if not isinstance(report, dict) or report.get("job") != job.id:
            return None, {}
        return relative, report


def retry_words(job: Job) -> str:
    relative = PurePosixPath(job.relative)
    where = f"the folder {relative.parent}" if relative.parent.name else "the top of the inbox"
    return (
        f"fix what the hint says, then move {relative.name} from the failed folder back "
        f"into {where}; an administrator can also run: i2vd retry {job.id}"
    )


def _retaken(session: Session, jobs: Sequence[Job]) -> set[int]:
    """The failed jobs whose image was taken again since (a later drop at its path)."""
    relatives = {job.relative for job in jobs}
    if not relatives:
        return set()
    rows = session.exec(
        select(Job.id, Job.inbox, Job.relative, Job.drop).where(col(Job.relative).in_(relatives))
    ).all()
    later: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for job_id, root, relative, drop in rows:
        later.setdefault((root, relative), []).append((job_id or 0, drop))
    return {
        job.id
        for job in jobs
        if job.id is not None
        and any(
            other > job.id and (not drop or drop != job.drop)
            for other, drop in later.get((job.inbox, job.relative), ())
        )
    }


def _read_sidecar(path: str | None) -> tuple[str | None, dict[str, Any]]:
    if not path:
        return None, {}
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, {}
    if not isinstance(document, dict):
        return None, {}
    effective = document.get("effective") or {}
    params = {k: effective[k] for k in PARAM_KEYS if isinstance(effective, dict) and k in effective}
    return _text_or_none(document.get("prompt")), params


def _relative(path: str | None, root: Path) -> str | None:
    """``path`` relative to ``root``, only when it lies inside without climbing out."""
    if not path:
        return None
    try:
        relative = PurePosixPath(Path(path).relative_to(root).as_posix())
    except ValueError:
        return None
    return None if ".." in relative.parts else relative.as_posix()


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
