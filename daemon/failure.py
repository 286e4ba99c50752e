"""One job's failure, top to bottom: remove its partial outputs, retry it later or give
up, and report to the user (failed/ with ``.error.json``, or a variant's own report and
the drop's last job deciding the original's fate).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from . import original, outputs, reports
from .ownership import is_copy_of_source
from .problems import Problem
from .rules import Rule
from .scope import Scope
from .store import Job
from .video import VideoError

log = logging.getLogger(__name__)

# Below this much free scratch space, an encoder failure is reported as a full disk.
LOW_DISK_BYTES = 64 * 2**20


def job_failed(scope: Scope, job: Job, rule: Rule | None, problem: Problem) -> None:
    """Record ``problem`` for ``job``: retried after a backoff while attempts are left
    and the problem is retryable, else given up on and reported."""
    assert job.id is not None
    outputs.discard_partial(scope, job)
    problem = explain_encoder_failure(scope, problem)
    error, hint = problem.message, problem.hint
    now = scope.store.now()  # retries come due on the queue's clock
    if problem.retryable and job.attempts < job.max_attempts:
        delay = scope.settings.retry_delay_seconds * 2 ** (job.attempts - 1)
        scope.store.fail(job.id, now, error, hint, retry_at=now + delay, owner=scope.owner)
        log.warning(
            "job %d attempt %d/%d failed: %s; retrying in %.0fs",
            job.id,
            job.attempts,
            job.max_attempts,
            error,
            delay,
        )
        return
    if problem.retryable:
        hint = (
            f"{hint}, then move the image back into the inbox (i2vd gave up after "
            f"{job.attempts} attempts)"
        )
    scope.store.fail(job.id, now, error, hint, retry_at=None, owner=scope.owner)
    report = reports.failure_report(
        job, error, hint, variant=job.variant or None, **problem.report_extra()
    )
    failed_dir = scope.settings.failed_dir
    if job.variant:
        reports.write_variant_report(job, failed_dir, report)
        log.warning("job %d (variant %s) failed: %s: %s", job.id, job.variant, job.relative, error)
        if rule is None:
            rule = Rule.model_validate(job.rule_data)
        original.finish_drop(scope, job, rule)
        return
    if not is_copy_of_source(Path(job.source), job):
        # Gone, or replaced by new content that intake queues as a job of its own.
        log.error("job %d failed: %s: %s", job.id, job.relative, error)
        return
    dest = reports.quarantine_original(scope.store, job, failed_dir, report)
    if dest is not None:
        log.warning(
            "job %d failed after %d attempt(s): %s: %s -> %s",
            job.id,
            job.attempts,
            job.relative,
            error,
            dest,
        )


def explain_encoder_failure(scope: Scope, problem: Problem) -> Problem:
    """A full scratch disk makes ffmpeg write a broken file: say that, not 'encoder'."""
    if not isinstance(problem, VideoError):
        return problem
    work_dir = scope.settings.work_dir
    try:
        free = shutil.disk_usage(work_dir).free
    except OSError:
        return problem
    if free >= LOW_DISK_BYTES:
        return problem
    return VideoError(
        f"the disk holding i2vd's working folder is full (only {free // 2**20} MiB free)",
        "ask whoever looks after i2vd to free disk space there, or to move state_dir to a "
        "larger disk",
        detail=f"{work_dir}: {problem.message}" + (f"; {problem.detail}" if problem.detail else ""),
    )
