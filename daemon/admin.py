"""The admin's verbs as library functions: status, jobs, show, retry, cancel, pause,
resume. ``i2vd`` prints what these return; scripts may call them directly.

Every verb works on the queue's database, so it works while daemons run (on this host
or others) and reaches all of them. They take the queue as ``admin_queue.AdminQueue``
(plain DB-API) and the settings as ``QueueSettings``, and this module imports no ORM,
torch, PIL or numpy: an admin command answers in a fraction of a second, also with a
big queue, and also on a GPU host whose CUDA is broken.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from .admin_queue import AdminQueue, CancelOutcome
from .digests import sha256_file
from .estimates import phase_of, remaining_time
from .host_paths import HostPaths
from .job_states import PENDING, JobState
from .mounts import read_status
from .names import readable
from .os_errors import read_intake_problems
from .problems import Problem
from .publish import place, quarantine
from .queue_settings import QueueSettings
from .records import JobRecord
from .windows import is_open

log = logging.getLogger(__name__)

# A daemon whose heartbeat is older than this is listed as not answering.
ALIVE_WITHIN = 60.0


class AdminProblem(Problem):
    """An admin request that cannot be carried out as asked (no such job, wrong state)."""


def open_queue(settings: QueueSettings) -> AdminQueue:
    """The queue as this host sees it (its paths localized with this host's folders).
    Raises ``dbapi.QueueUnavailable`` when it cannot be opened, ``dbapi.SchemaMissing``
    when no daemon has created or upgraded it yet (see :func:`upgrade`)."""
    return AdminQueue(settings.database_url, HostPaths.of(settings))


def upgrade(settings: QueueSettings) -> None:
    """Create or upgrade the queue's schema as a starting daemon does (Alembic, under
    its lock). Only for a queue :func:`open_queue` found missing a table or column:
    it imports the ORM and Alembic, which the verbs themselves never need."""
    from .store import JobStore

    JobStore(settings.database_url, migrate=True).close()


def me() -> str:
    """Who did it, for the pause record: user@host."""
    try:
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


# --- reading -------------------------------------------------------------------------


def job_summary(job: JobRecord, now: float) -> dict[str, Any]:
    """One job as ``i2vd jobs`` lists it."""
    return {
        "id": job.id,
        "state": job.state,
        "source": job.relative,
        "inbox": job.inbox or job.inbox_root,
        "rule": job.rule_name,
        "variant": job.variant or None,
        "engine": job.engine,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "progress": round(job.progress, 3),
        "age": round(max(0.0, now - job.created_at), 1),
        "error": job.error,
        "hint": job.hint,
    }


def job_details(job: JobRecord, now: float) -> dict[str, Any]:
    """Everything about one job (``i2vd show``)."""
    data = job_summary(job, now)
    data.update(
        {
            "rule_as_queued": job.rule_data,
            "rule_file": job.rule_file,
            "sha256": job.sha256,
            "size_bytes": job.size_bytes,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "not_before": _iso(job.not_before) if job.not_before else None,
            "timings": json.loads(job.timings_json) if job.timings_json else None,
            "outputs": {
                "video": job.video_path,
                "sidecar": job.sidecar_path,
                "original": job.source_dest,
            },
            "duplicate_of": job.duplicate_of,
            "device_faults": job.device_faults,
            "lease_owner": job.lease_owner,
            "cancel_requested": job.cancel_requested,
            "text": job.text or None,
            "companions": job.companions,
        }
    )
    return data


def list_jobs(queue: AdminQueue, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    now = queue.now()
    states = None if state is None else [state]
    return [job_summary(job, now) for job in queue.list_jobs(states, limit=limit)]


def show(queue: AdminQueue, job_id: int) -> dict[str, Any]:
    job = queue.get(job_id)
    if job is None:
        raise AdminProblem(f"there is no job {job_id}", "list the jobs with: i2vd jobs")
    return job_details(job, queue.now())


def status(queue: AdminQueue, settings: QueueSettings) -> dict[str, Any]:
    """The queue at a glance: who works on it, how much waits, what runs, paused or
    not, the schedule windows, the last failure."""
    now = queue.now()
    control = queue.control()
    daemons = [
        {
            "id": s.daemon.id,
            "host": s.daemon.host,
            "pid": s.daemon.pid,
            "since": _iso(s.daemon.started_at),
            "version": s.daemon.version,
            "device": s.daemon.device,
            "engines": s.daemon.engines,
            "state": s.daemon.state,
            "reason": s.daemon.reason or None,
            "alive": s.alive,
            "silent_for": round(s.silent_for, 1),
        }
        for s in queue.daemons(ALIVE_WITHIN)
    ]
    running = []
    for job in queue.list_jobs([JobState.RUNNING], limit=100):
        item = job_summary(job, now)
        item["elapsed"] = round(max(0.0, now - (job.started_at or now)), 1)
        item["eta"] = _remaining(job, now)
        item["owner"] = job.lease_owner
        running.append(item)
    failures = queue.list_jobs([JobState.FAILED], limit=1)
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    windows = []
    for engine in sorted({w.engine for w in settings.windows}):
        state = is_open(settings.windows, engine, moment)
        windows.append(
            {
                "engine": engine,
                "open": state.open,
                "reopens_at": state.reopens_at.astimezone().isoformat(timespec="minutes")
                if state.reopens_at
                else None,
            }
        )
    return {
        "paused": bool(control.paused),
        "pause_now": bool(control.pause_now),
        "paused_at": _iso(control.paused_at),
        "paused_by": control.paused_by or None,
        "counts": {state: n for state, n in sorted(queue.count_by_state().items())},
        "daemons": daemons,
        "running": running,
        "windows": windows,
        "last_failure": _last_failure(failures, now),
        "stranded": _stranded(queue),
        "roots": [
            asdict(root) | {"path": readable(root.path)} for root in read_status(settings.state_dir)
        ],
        "not_taken": [
            {"path": readable(path), "reason": reason}
            for path, reason in read_intake_problems(settings.state_dir)
        ],
    }


def _stranded(queue: AdminQueue) -> list[dict[str, Any]]:
    """Waiting jobs that no live daemon can run, by kind: a wait that would otherwise
    look like a slow queue."""
    return [
        {
            "inbox": kind.inbox,
            "engine": kind.engine,
            "model": kind.model or None,
            "memory_gb": kind.memory_gb,
            "jobs": count,
        }
        for kind, count in sorted(queue.stranded(ALIVE_WITHIN).items())
    ]


def _last_failure(failures: list[JobRecord], now: float) -> dict[str, Any] | None:
    if not failures:
        return None
    return job_summary(failures[0], now) | {"finished_at": _iso(failures[0].finished_at)}


def _remaining(job: JobRecord, now: float) -> float | None:
    """Seconds left, from the pace so far (None before there is any progress), by the
    same estimate the status page in the share uses."""
    if job.started_at is None:
        return None
    phase, _ = phase_of(job.progress, job.engine)
    return remaining_time(max(0.0, now - job.started_at), job.progress, phase, None)[0]


def _iso(timestamp: float | None) -> str | None:
    if not timestamp:
        return None
    return dt.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


# --- changing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    job: int
    ok: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "ok": self.ok, "message": self.message}


def pause(queue: AdminQueue, now: bool = False) -> None:
    queue.pause(me(), stop_running=now)


def resume(queue: AdminQueue) -> None:
    queue.resume()


def cancel(queue: AdminQueue, settings: QueueSettings, ids: Iterable[int]) -> list[Outcome]:
    """A waiting job ends now and its image goes to failed/ (``i2vd retry`` brings it
    back); a running one stops at its next step, and its worker does the same."""
    outcomes = []
    for job_id in ids:
        result = queue.request_cancel(job_id)
        if result == CancelOutcome.CANCELLED:
            job = queue.get(job_id)
            where = set_aside(queue, settings, job) if job is not None else None
            tail = f"; its image is in {where}" if where else ""
            outcomes.append(Outcome(job_id, True, f"job {job_id} cancelled{tail}"))
        elif result == CancelOutcome.REQUESTED:
            outcomes.append(
                Outcome(job_id, True, f"job {job_id} is running: it stops at its next step")
            )
        elif result == CancelOutcome.ENDED:
            job = queue.get(job_id)
            outcomes.append(
                Outcome(job_id, False, f"job {job_id} has already ended ({job and job.state})")
            )
        else:
            outcomes.append(Outcome(job_id, False, f"there is no job {job_id}"))
    return outcomes


def retry(
    queue: AdminQueue, settings: QueueSettings, ids: Sequence[int] = (), failed: bool = False
) -> list[Outcome]:
    """Put failed (or cancelled) jobs' images back where they were dropped.

    The image returns from failed/ to its place in the inbox and its stale report is
    removed; the daemon's intake then queues it again with the rules in force now (so
    a fixed rule applies). An image that never left the inbox is queued again as it
    was. ``failed``: every failed job whose image is still in failed/.
    """
    if failed:
        jobs = queue.list_jobs([JobState.FAILED], limit=1_000_000)
        return [_retry_one(queue, settings, job) for job in jobs if _in_failed(settings, job)]
    outcomes = []
    for job_id in ids:
        job = queue.get(job_id)
        if job is None:
            outcomes.append(Outcome(job_id, False, f"there is no job {job_id}"))
        else:
            outcomes.append(_retry_one(queue, settings, job))
    return outcomes


def _retry_one(queue: AdminQueue, settings: QueueSettings, job: JobRecord) -> Outcome:
    job_id = job.id
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        return Outcome(
            job_id, False, f"job {job_id} is {job.state}; only failed or cancelled jobs are retried"
        )
    source = Path(job.source)
    found = _in_failed(settings, job)
    if found is not None:
        image, report = found
        if source.exists():
            return Outcome(
                job_id,
                False,
                f"job {job_id}: another file is at {job.relative} in the inbox; its failed "
                f"image stays in {image}",
            )
        source.parent.mkdir(parents=True, exist_ok=True)
        place(image, source)
        _companions_back(job, image)
        report.unlink(missing_ok=True)
        return Outcome(
            job_id, True, f"job {job_id}: {job.relative} is back in the inbox and is queued again"
        )
    if not _same_file(source, job):
        return Outcome(
            job_id,
            False,
            f"job {job_id}: its image is neither in {settings.failed_dir} nor in the inbox "
            "any more; drop it into the inbox again",
        )
    try:  # it never left the inbox (it could not be moved): the same job again
        queued = queue.retry(job_id)
    except Problem as exc:
        return Outcome(job_id, False, f"job {job_id}: {exc.message}")
    if queued is None:
        return Outcome(job_id, False, f"job {job_id} changed meanwhile; see i2vd show {job_id}")
    return Outcome(job_id, True, f"job {job_id} queued again: {job.relative}")


def _in_failed(settings: QueueSettings, job: JobRecord) -> tuple[Path, Path] | None:
    """The image in failed/ that this job put there, found by its report (names may
    have taken a -2 suffix) and checked by content."""
    folder = settings.failed_dir / PurePosixPath(job.relative).parent
    if not folder.is_dir():
        return None
    for report in folder.glob("*.error.json"):
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("job") != job.id:
            continue
        image = report.with_name(report.name.removesuffix(".error.json"))
        if _same_file(image, job):
            return image, report
    return None


def _same_file(path: Path, job: JobRecord) -> bool:
    try:
        return path.is_file() and sha256_file(path) == job.sha256
    except OSError:
        return False


def _companions_back(job: JobRecord, image: Path) -> None:
    """The ``<stem>.txt``/``.yaml`` that went to failed/ with the image go back too."""
    for name in job.companions:
        original = Path(name)
        moved = image.with_name(image.stem + original.suffix)
        if moved.is_file() and not original.exists():
            place(moved, original)


class SetAsideJob(Protocol):
    """What :func:`set_aside` reads of a job: the daemon's (tables.Job) or the admin
    commands' (records.JobRecord)."""

    @property
    def id(self) -> int | None: ...
    @property
    def state(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def relative(self) -> str: ...
    @property
    def rule_name(self) -> str: ...
    @property
    def sha256(self) -> str: ...


J = TypeVar("J", bound=SetAsideJob)
J_contra = TypeVar("J_contra", bound=SetAsideJob, contravariant=True)


class DropJobs(Protocol[J_contra]):
    """The queue as :func:`set_aside` needs it: the daemon's JobStore or AdminQueue."""

    def siblings(self, job: J_contra) -> Sequence[SetAsideJob]: ...


class HasFailedDir(Protocol):
    """The settings :func:`set_aside` needs: the daemon's Settings or QueueSettings."""

    @property
    def failed_dir(self) -> Path: ...


def set_aside(queue: DropJobs[J], settings: HasFailedDir, job: J) -> Path | None:
    """Move a cancelled job's image to failed/ with a report, unless other variants of
    the same drop still need it (the last of them settles it). Called by ``i2vd
    cancel`` for a waiting job, and by the daemon's worker for a running one."""
    if any(s.state in PENDING for s in queue.siblings(job)):
        return None
    source = Path(job.source)
    if not source.is_file():
        return None
    report = {
        "error": "cancelled by an administrator",
        "hint": f"to make it after all: i2vd retry {job.id}",
        "rule": job.rule_name,
        "source": job.relative,
        "sha256": job.sha256,
        "job": job.id,
    }
    relative = PurePosixPath(job.relative)
    return quarantine(source, settings.failed_dir / relative.parent, report)
