"""A job's files in the outbox: publishing them whole, reusing a duplicate's video,
and removing only what is provably this job's own after a failure.

Video, then sidecar, then the original: each appears whole or not at all. What marks a
file as this job's: the video's recorded inode, a sidecar naming this job, a copy of
the original's bytes. A file that merely has the planned name is never touched.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from . import original
from .names import readable
from .ownership import Identity, identity, inode, is_copy_of_source, sidecar_field
from .plan import OutputPlan
from .publish import describe_os_error, place, write_json
from .rules import Rule
from .scope import Scope
from .store import Job, LeaseLost

log = logging.getLogger(__name__)


class Superseded(Exception):
    """The file at the job's path now holds other content, which intake queues on its
    own; this job ends without touching the file. Control flow, not a problem."""


def publish(
    scope: Scope,
    job: Job,
    rule: Rule,
    plan: OutputPlan,
    video_file: Path,
    read_as: Identity,
    document: dict[str, Any],
    duplicate_of: Job | None = None,
) -> None:
    """Place the video and the sidecar, apply the original's fate, record the job done."""
    assert job.id is not None
    store, owner = scope.store, scope.owner
    try:
        # A duplicate hard-links the original's video: same bytes, no second copy.
        linked = duplicate_of is not None
        # The fence: a daemon whose lease was taken over publishes nothing.
        if not store.still_owns(job.id, owner, scope.settings.lease_seconds):
            raise LeaseLost(job.id)
        # The inode is recorded before and after placing (a cross-filesystem copy
        # makes a new one): only that file is this job's to remove after a failure.
        store.record_video(job.id, video_file.stat().st_ino, owner=owner)
        place(video_file, plan.video, keep_src=linked, link=linked)
        store.record_video(job.id, plan.video.stat().st_ino, owner=owner)
        document["timings"]["total"] = round(time.time() - job.created_at, 4)
        write_json(plan.sidecar, document)
        if identity(Path(job.source)) != read_as:
            raise Superseded(f"{job.relative} was replaced while its video was made")
        original.apply_fate(scope, job, plan.fate)
    except OSError as exc:
        # For a rename the destination (filename2) is what the user must fix.
        culprit = exc.filename2 or exc.filename or plan.folder
        raise describe_os_error(exc, Path(culprit)) from exc
    duplicate_id = duplicate_of.id if duplicate_of is not None else None
    if not store.finish(job.id, time.time(), document["timings"], duplicate_id, owner=owner):
        # Our lease ran out mid-job and another daemon took the job: its row is theirs.
        log.warning("job %d: published, but its lease had been taken over", job.id)
    original.after_done(scope, job, rule, plan.fate.action)


# --- duplicates ------------------------------------------------------------------


def reusable(scope: Scope, job: Job) -> Job | None:
    """A finished job with the same identity whose video and sidecar are still the
    ones it published (same inode, sidecar of the same image): never reuse a file
    that merely has the old name."""
    for done in scope.store.find_done(job.sha256, job.rule_name, job.rule_hash, exclude=job.id):
        if done.drop and done.drop == job.drop:
            continue  # another output of this very drop, never a copy to reuse
        if (
            done.video_path
            and done.sidecar_path
            and inode(Path(done.video_path)) == done.video_inode
            and sidecar_field(Path(done.sidecar_path), "sha256") == job.sha256
        ):
            return done
    return None


def duplicate_sidecar(
    scope: Scope, job: Job, rule: Rule, plan: OutputPlan, done: Job, started: float
) -> dict[str, Any]:
    """The sidecar of a job that reuses ``done``'s video: its parameters, this job's
    identity and outputs."""
    assert done.video_path and done.sidecar_path
    document: dict[str, Any] = json.loads(Path(done.sidecar_path).read_text(encoding="utf-8"))
    document.update(
        source=readable(job.relative),
        variant=job.variant or None,
        source_handling=rule.source,
        outputs=[readable(name) for name in plan.outputs],
        duplicate_of=Path(done.video_path).relative_to(scope.settings.outbox).as_posix(),
        job=job.id,
        timings={
            "queued": round(started - job.created_at, 4),
            "load": 0.0,
            "generate": 0.0,
            "encode": 0.0,
        },
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    return document


# --- after a failure ---------------------------------------------------------------


def discard_partial(scope: Scope, job: Job) -> None:
    """Remove what this job published before failing: only files that are provably
    its own (recorded inode, sidecar naming this job, a copy of its original)."""
    current = scope.store.get(job.id) if job.id is not None else None
    if current is None or current.id is None or not current.video_path:
        return
    source, moved = Path(current.source), Path(current.source_dest or "")
    if current.source_dest and moved.exists() and not source.exists():
        return  # the original already moved: the publish is complete, keep it
    video, sidecar = Path(current.video_path), Path(current.sidecar_path or "")
    leftovers = [
        # No recorded inode: the video was never placed (both would read None).
        video if current.video_inode is not None and inode(video) == current.video_inode else None,
        sidecar if sidecar_field(sidecar, "job") == current.id else None,
        moved if current.source_dest and is_copy_of_source(moved, current) else None,
    ]
    for path in leftovers:
        if path is None:
            continue
        try:
            path.unlink()
        except OSError as exc:
            # Its folder may be gone or be a file now; the retry plans afresh.
            log.warning("job %d: could not remove %s: %s", current.id, path, exc)
    scope.store.plan_outputs(current.id, None, None, None, owner=scope.owner)
