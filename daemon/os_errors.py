"""Expected failures of disks, shares and the queue database, in plain words.

A full disk, a read-only mount or a vanished share is not a bug: it gets one line
that names the folder and what to do, never a traceback. Anything else is a bug and
keeps its traceback (once).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .names import readable

if TYPE_CHECKING:  # `i2vd status` reads the intake problems through this module
    from .config import Settings

log = logging.getLogger(__name__)

# errno -> (what happened to the folder, what to do)
_BY_ERRNO = {
    errno.ENOSPC: ("the disk holding {folder} is full", "free disk space there"),
    errno.EDQUOT: ("the disk quota for {folder} is used up", "free space or raise the quota"),
    errno.EROFS: (
        "{folder} is on a read-only filesystem",
        "mount it writable for the i2vd service user",
    ),
    errno.EACCES: (
        "permission denied in {folder}",
        "give the i2vd service user read and write access to that folder",
    ),
    errno.EPERM: (
        "the operation is not permitted in {folder}",
        "give the i2vd service user read and write access to that folder",
    ),
    errno.EIO: ("input/output error in {folder}", "check the disk or the share's connection"),
    errno.ESTALE: ("the share holding {folder} went stale", "mount the share again"),
    errno.ENOTCONN: ("the share holding {folder} is disconnected", "mount the share again"),
    errno.EHOSTDOWN: ("the server of {folder} is down", "check the file server"),
}


def folder_of(path: Path, roots: list[Path]) -> Path:
    """The configured folder (an inbox, the outbox, the failed folder, the state
    folder) that holds ``path``: what a user can act on, never a hidden temporary."""
    for root in sorted(roots, key=lambda r: len(r.parts), reverse=True):
        if path == root or path.is_relative_to(root):
            return root
    return path.parent if path.name.startswith(".") else path


def describe(exc: BaseException, path: Path, roots: list[Path]) -> tuple[str, str] | None:
    """(message, hint) for an expected OS or database failure at ``path``; None for
    anything else (a bug)."""
    # Imported here: only the daemon, which has SQLAlchemy loaded already, gets here.
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError):
        detail = str(exc.orig) if exc.orig is not None else str(exc)
        database = folder_of(path, roots)
        if "full" in detail:
            return (
                f"the queue database cannot grow: the disk holding {database} is full",
                "free disk space there",
            )
        return (
            f"the queue database cannot be written ({detail})",
            "check the database (state_dir or database_url) and its disk",
        )
    if isinstance(exc, OSError) and exc.errno in _BY_ERRNO:
        where = exc.filename2 or exc.filename
        folder = folder_of(Path(where), roots) if where else folder_of(path, roots)
        what, hint = _BY_ERRNO[exc.errno]
        return what.format(folder=readable(str(folder))), hint
    return None


def settings_roots(settings: Settings) -> list[Path]:
    return [*settings.inbox, settings.outbox, settings.failed_dir, settings.state_dir]


def report_intake_problem(
    problems: dict[Path, str], path: Path, exc: BaseException, settings: Settings
) -> None:
    """Say once per file (and again only if its reason changes) why intake could not
    take it. The file stays in the inbox and is tried again at the next rescan."""
    described = describe(exc, settings.state_dir, settings_roots(settings))
    reason = described[0] if described else f"{type(exc).__name__}: {exc}"
    if problems.get(path) == reason:
        return
    problems[path] = reason
    save_intake_problems(problems, settings.state_dir)
    name = readable(str(path))
    if described is None:
        log.exception("intake of %s failed; it stays in the inbox", name)
        return
    log.error(
        "cannot queue %s: %s; %s. It stays in the inbox and is tried again at the next rescan",
        name,
        reason,
        described[1],
    )


INTAKE_PROBLEMS_FILE = "intake-problems.json"


def save_intake_problems(problems: dict[Path, str], state_dir: Path) -> None:
    """The files intake could not take, for ``i2vd status`` (another process). Best
    effort and atomic: a full state disk must not stop intake, and a reader never
    sees half a file."""
    target = state_dir / INTAKE_PROBLEMS_FILE
    tmp = target.with_name(f".{INTAKE_PROBLEMS_FILE}.tmp")
    data = [{"path": str(path), "reason": reason} for path, reason in problems.items()]
    try:
        tmp.write_text(json.dumps({"not_taken": data}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


def read_intake_problems(state_dir: Path) -> list[tuple[str, str]]:
    """(path, reason) of each file the running daemon could not take."""
    try:
        data = json.loads((state_dir / INTAKE_PROBLEMS_FILE).read_text(encoding="utf-8"))
        return [(str(item["path"]), str(item["reason"])) for item in data["not_taken"]]
    except (OSError, ValueError, TypeError, KeyError):
        return []
