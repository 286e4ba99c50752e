"""The failure report (``<image>.error.json`` in failed/): its one writer, and the one
fallback when the image cannot be moved there.

Intake (a file that is no usable image), a job that gave up and the last job of a drop
whose every variant failed all report through here, so the report reads the same
whoever wrote it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from .publish import free_path, move_companions, quarantine, write_json
from .store import Job, JobStore

log = logging.getLogger(__name__)


def failure_report(job: Job, error: str, hint: str, **more: Any) -> dict[str, Any]:
    """The report's fields for ``job``; ``more`` adds or overrides (variant, backoff…)."""
    report: dict[str, Any] = {
        "error": error,
        "hint": hint,
        "attempts": job.attempts,
        "rule": job.rule_name,
        "source": job.relative,
        "sha256": job.sha256,
        "job": job.id,
    }
    report.update(more)
    return report


def failed_folder(failed_dir: Path, job: Job) -> Path:
    """failed/ mirrors the inbox's subfolders."""
    return failed_dir / PurePosixPath(job.relative).parent


def quarantine_original(
    store: JobStore,
    job: Job,
    failed_dir: Path,
    report: dict[str, Any],
    companions: Iterable[Path] | None = None,
) -> Path | None:
    """Move the image and its companion files to failed/ with the report beside it.
    When that fails too, the image stays in the inbox, marked so that it is not taken
    again until it changes (else it would fail again on every scan), and the log says
    so: None then. ``companions`` defaults to the files the job read."""
    folder = failed_folder(failed_dir, job)
    try:
        dest = quarantine(Path(job.source), folder, report)
    except OSError as exc:
        store.keep_in_inbox(job.source, job.sha256)
        job.source_stuck = True
        log.error(
            "job %d failed: %s: %s; it stays in the inbox because moving it to %s failed "
            "too (%s); it is not retried until it changes",
            job.id,
            job.relative,
            report["error"],
            folder,
            exc,
        )
        return None
    move_companions_logged(job, dest, companions)
    return dest


def write_variant_report(job: Job, failed_dir: Path, report: dict[str, Any]) -> None:
    """One variant of several failed: its report goes to failed/ on its own; the
    original stays for the drop's last job (``original.finish_drop``)."""
    folder = failed_folder(failed_dir, job)
    name = PurePosixPath(job.relative).name
    try:
        write_json(free_path(folder, f"{name}.{job.variant}.error.json"), report)
    except OSError as exc:
        log.error("job %d: cannot write its error report to %s: %s", job.id, folder, exc)


def move_companions_logged(
    job: Job, image_dest: Path, companions: Iterable[Path] | None = None
) -> None:
    """The .txt/.yaml follow the image; failing to move them never fails the job
    (their content is in the sidecar)."""
    companions = list(companions if companions is not None else map(Path, job.companions))
    try:
        move_companions(companions, image_dest)
    except OSError as exc:
        log.warning("job %d: could not move %s: %s", job.id, [str(c) for c in companions], exc)
