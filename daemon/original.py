"""The original's fate: moved beside its video, kept in the inbox, or deleted, and for
an image with variants, decided by the last job of its drop to end.

``delete`` happens only once the job is recorded done, so a failure after it can never
leave a user with neither the original nor its outputs.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from . import reports
from .ownership import is_copy_of_source
from .plan import Fate, SourceAction
from .publish import free_path, place
from .rules import Rule
from .scope import Scope
from .store import Job, JobState

log = logging.getLogger(__name__)


def apply_fate(scope: Scope, job: Job, fate: Fate) -> None:
    """Move or keep the original (and the companion files beside it) as part of the
    publish; OSError is the caller's to report."""
    if fate.action == SourceAction.MOVE:
        dest = fate.dest or free_path(
            scope.settings.outbox / PurePosixPath(job.relative).parent, Path(job.source).name
        )
        place(Path(job.source), dest)
        reports.move_companions_logged(job, dest)
    elif fate.action == SourceAction.KEEP:
        scope.store.keep_in_inbox(job.source, job.sha256)


def after_done(scope: Scope, job: Job, rule: Rule, action: SourceAction) -> None:
    """What happens to the original once the job is recorded done."""
    if action == SourceAction.DELETE:
        delete_original(scope, job)
    elif action == SourceAction.LEAVE:
        finish_drop(scope, job, rule)


def delete_original(scope: Scope, job: Job) -> None:
    """``source: delete``: the original (only if it is still the content this job
    read) and its companion files."""
    source = Path(job.source)
    try:
        if is_copy_of_source(source, job):
            source.unlink()
        for path in job.companions:
            Path(path).unlink(missing_ok=True)
    except OSError as exc:
        scope.store.keep_in_inbox(job.source, job.sha256)
        log.error(
            "job %d: could not delete %s: %s; it stays in the inbox and is not "
            "taken again until it changes",
            job.id,
            job.relative,
            exc,
        )


def finish_drop(scope: Scope, job: Job, rule: Rule) -> None:
    """The last job of a drop to end takes care of the original: the rule's
    ``source`` if any variant succeeded, else failed/ with that job's report."""
    store = scope.store
    if not job.drop or not job.variant or not store.claim_drop_end(job.drop):
        return
    if not is_copy_of_source(Path(job.source), job):
        return  # gone, or a new picture under its name, which intake queues itself
    assert job.id is not None
    jobs = [store.get(job.id) or job, *store.siblings(job)]
    if any(j.state == JobState.DONE for j in jobs):
        action = SourceAction(rule.source)
        if action == SourceAction.DELETE:
            delete_original(scope, job)
            return
        try:
            apply_fate(scope, job, Fate(action, None))
        except OSError as exc:
            store.keep_in_inbox(job.source, job.sha256)
            log.error(
                "job %d: could not %s the original %s: %s; it stays in the inbox",
                job.id,
                rule.source,
                job.relative,
                exc,
            )
        return
    latest = jobs[0]  # this job's row as just recorded, with its error
    report = reports.failure_report(
        latest,
        latest.error or "",
        latest.hint or "",
        variants={j.variant: j.error for j in jobs},
    )
    dest = reports.quarantine_original(store, job, scope.settings.failed_dir, report)
    if dest is not None:
        log.warning("every variant of %s failed -> %s", job.relative, dest)
