"""What marks a file as a job's own: the original's identity when it was read, the
video's recorded inode, a sidecar naming the job, a copy of the original's bytes.

Publishing, recovery, discarding partials and the original's fate all ask these
questions; a file that merely has a planned name is never taken for the job's own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .digests import sha256_of
from .store import Job

Identity = tuple[int, int, int]  # (inode, size, mtime_ns) of the original when it was read


def identity(path: Path) -> Identity:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def sidecar_field(path: Path, key: str) -> Any:
    """A field of a sidecar on disk, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def is_copy_of_source(path: Path, job: Job) -> bool:
    """``path`` holds this job's original: a hard link to it, or a full copy."""
    source = Path(job.source)
    try:
        # A hard link to the original is a copy; the original's own path is not
        # proof of anything (a new picture may have been dropped under its name).
        if path != source and source.exists() and os.path.samefile(path, source):
            return True
        return path.stat().st_size == job.size_bytes and sha256_of(path.read_bytes()) == job.sha256
    except OSError:
        return False
