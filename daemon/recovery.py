"""After a crash mid-publish: complete the publish if everything landed, else remove
this job's partial outputs so that the retry starts clean.

The row records the planned names and the video's inode before anything is placed, so
a restart can tell this job's files from files that merely have their names.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import original, outputs, reports
from .ownership import inode, is_copy_of_source, sidecar_field
from .plan import SourceAction, source_action
from .rules import Rule
from .scope import Scope
from .store import Job

log = logging.getLogger(__name__)


def finish_interrupted_publish(scope: Scope, job: Job, rule: Rule) -> bool:
    """True when the job's publish had completed and the job is now recorded done."""
    if not job.video_path:
        return False
    assert job.id is not None
    video, sidecar = Path(job.video_path), Path(job.sidecar_path or "")
    moved, source = Path(job.source_dest or ""), Path(job.source)
    ours = inode(video) == job.video_inode and sidecar_field(sidecar, "job") == job.id
    if ours and job.source_dest and moved.is_file():
        if source.exists() and is_copy_of_source(moved, job):
            source.unlink()  # the crash fell between placing the original and unlinking it
        if not source.exists():
            reports.move_companions_logged(job, moved)
            _mark_done(scope, job)
            return True
    elif ours and not job.source_dest:
        # Keep, delete or a variant: the sidecar's presence says the publish got
        # that far; what follows "done" is redone after marking it.
        action = source_action(rule, job.variant)
        if action == SourceAction.KEEP:
            scope.store.keep_in_inbox(job.source, job.sha256)
        _mark_done(scope, job)
        original.after_done(scope, job, rule, action)
        return True
    outputs.discard_partial(scope, job)
    return False


def _mark_done(scope: Scope, job: Job) -> None:
    assert job.id is not None
    scope.store.finish(job.id, time.time(), {}, owner=scope.owner)
    log.info("job %d: its publish had completed before a restart; marked done", job.id)
