"""The failure report (``<image>.error.json`` in failed/): its one writer, and the one
fallback when the image cannot be moved there.

Intake (a file that is no usable image), a job that gave up and the last job of a drop
whose every variant failed all report through here, so the report reads the same
whoever wrote it.
"""

from __future__ import annotations

import glob
import json
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


def clear_stale_reports(failed_dir: Path, relative: str) -> list[Path]:
    """The image at inbox path ``relative`` is taken in again (moved back from failed/
    by hand): the reports of its earlier failures are stale. Removed are only reports
    naming this path whose image is no longer beside them (one copied back rather than
    moved keeps its report), so a new failure is reported under the image's own name
    and failed/ keeps nothing of an image that then succeeds."""
    path = PurePosixPath(relative)
    folder = failed_dir / path.parent
    removed = []
    for report in folder.glob(f"{glob.escape(Path(path.name).stem)}*.error.json"):
        try:
            source = json.loads(report.read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError, AttributeError):
            continue  # not one of ours, or unreadable: leave it
        image = report.with_name(report.name.removesuffix(".error.json"))
        if source != relative or image.exists() or (folder / path.name).exists():
            continue
        try:
            report.unlink()
        except OSError as exc:
            log.warning("could not remove the stale report %s: %s", report, exc)
            continue
        removed.append(report)
    return removed


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
