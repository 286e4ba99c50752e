"""Putting files where users see them, never half-written: temp name, fsync, rename.

Also the failed/ quarantine with its ``.error.json``, and the start-up sweep of
temporaries that a crash left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .names import cut
from .problems import RetryableProblem

TEMP_MARK = ".i2vd-tmp"
NAME_MAX = 255  # bytes in one file name on Linux filesystems and SMB shares
# Whether a name is in use; the disk by default, any answer for a plan made ahead.
Taken = Callable[[Path], bool]


class PublishError(RetryableProblem):
    """A file could not be read, written or moved (full disk, permissions, a share gone):
    retryable, since the folder may be fixed or come back meanwhile."""


def temp_name(dest: Path) -> Path:
    """A hidden sibling of ``dest`` that watchers and users ignore, and sweeps can find.
    Only a prefix of the name is kept, so long names stay within the 255-byte limit."""
    return dest.with_name(f".{cut(dest.name, 150)}.{secrets.token_hex(4)}{TEMP_MARK}")


def write_json(dest: Path, data: dict[str, Any]) -> None:
    """Write a new JSON file whole or not at all; an existing ``dest`` is never replaced."""
    # A name that is not UTF-8 is written as a \\udcXX escape: still valid JSON, and
    # read back to the very same name.
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    payload = text.encode("utf-8", errors="backslashreplace")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest)
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        _rename_no_replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(dest.parent)


def replace_file(dest: Path, payload: bytes) -> None:
    """Replace ``dest`` whole: readers see the old file or the new one, never a mix. A
    symlink at ``dest`` is replaced itself, never written through.

    Not synced: this is for files rewritten every few seconds and rebuilt at start
    (the status page), where a sync per write would cost on network shares.
    """
    tmp = temp_name(dest)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def place(src: Path, dest: Path, keep_src: bool = False, link: bool = False) -> None:
    """Move ``src`` to ``dest`` (or copy it with ``keep_src``, or hard-link it with
    ``link``), atomically and across filesystems too. Never overwrites: an existing
    ``dest`` raises FileExistsError.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    moving = not keep_src and not link
    try:
        if link:
            os.link(src, dest)
        elif moving:
            _rename_no_replace(src, dest)
            _fsync_dir(src.parent)
        else:
            raise OSError(errno.EXDEV, "copy requested")
        _fsync_dir(dest.parent)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        # Another filesystem, or a share without hard links (for ``link``): copy.
        if moving and exc.errno != errno.EXDEV:
            raise
    tmp = temp_name(dest)
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        _rename_no_replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(dest.parent)
    if moving:
        src.unlink()


def _rename_no_replace(src: Path, dest: Path) -> None:
    """Rename within one filesystem, refusing an existing ``dest`` (FileExistsError).

    A hard link plus an unlink refuses atomically. It is also how originals leave the
    inbox: a plain rename out of a watched folder leaves an unpaired "moved from" event
    that watchdog holds for half a second, delaying every event behind it (the next
    drop's included). Shares without hard links fall back to a checked rename.
    """
    try:
        os.link(src, dest)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "File exists", str(dest)) from None
        os.rename(src, dest)
        return
    os.unlink(src)


def free_stem(folder: Path, stem: str, suffixes: Iterable[str], taken: Taken = Path.exists) -> str:
    """``stem``, or ``stem-2``, ``stem-3``…: the first for which no ``stem+suffix`` exists.

    A stem too long for the filesystem's 255-byte names (once a suffix and a counter are
    added) is shortened, so a long file name can always be published or quarantined.
    """
    suffixes = list(suffixes)
    room = NAME_MAX - max(len(os.fsencode(s)) for s in suffixes) - len("-999")
    stem = cut(stem, room)
    candidate, n = stem, 1
    while any(taken(folder / f"{candidate}{s}") for s in suffixes):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def free_path(folder: Path, name: str, taken: Taken = Path.exists) -> Path:
    """``folder/name``, or ``name`` with ``-2``, ``-3``… before its extension if taken."""
    path = Path(name)
    stem = free_stem(folder, path.stem, [path.suffix], taken)
    return folder / f"{stem}{path.suffix}"


def quarantine(source: Path, dest_folder: Path, report: dict[str, Any]) -> Path:
    """Move a failed image to ``dest_folder`` with ``<name>.error.json`` beside it."""
    name = Path(source.name)
    # The report's name counts too: an earlier report may outlive its image.
    stem = free_stem(dest_folder, name.stem, [name.suffix, f"{name.suffix}.error.json"])
    dest = dest_folder / f"{stem}{name.suffix}"
    write_json(dest.with_name(dest.name + ".error.json"), report)
    if source.exists():
        place(source, dest)
    return dest


def move_companions(files: Iterable[Path], image_dest: Path) -> list[Path]:
    """Move an image's ``<stem>.txt``/``<stem>.yaml`` next to where the image went,
    renamed to its new stem, never over an existing file. Files already gone are
    skipped (the user took them back)."""
    moved = []
    for path in files:
        if not path.is_file():
            continue
        dest = free_path(image_dest.parent, image_dest.stem + path.suffix)
        place(path, dest)
        moved.append(dest)
    return moved


def sweep_temporaries(roots: Iterable[Path]) -> list[Path]:
    """Delete temporaries that a crash left in the output folders."""
    removed = []
    for root in roots:
        if not root.is_dir():
            continue
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if name.startswith(".") and name.endswith(TEMP_MARK):
                    path = Path(folder, name)
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def describe_os_error(exc: OSError, path: Path) -> PublishError:
    """Turn a failed file operation into a message and a hint a user can act on; the
    system's own words go to the detail."""
    detail = f"{exc.strerror or exc} (errno {exc.errno})"
    if path.name.endswith(TEMP_MARK):
        path = path.parent  # the folder to act on, never a hidden temporary
    if exc.errno == errno.ENOSPC:
        return PublishError(
            f"no space left on the device holding {path}",
            "free disk space there",
            detail=detail,
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PublishError(
            f"permission denied for {path}: i2vd may not use that folder",
            "ask whoever looks after i2vd to give its service user read and write access "
            "to that folder",
            detail=detail,
        )
    if exc.errno == errno.EEXIST:
        return PublishError(
            f"{path} already exists: another file took its name while the video was made",
            "nothing to do: i2vd tries again under the next free name",
            detail=detail,
        )
    if exc.errno == errno.EROFS:
        return PublishError(
            f"{path} is on a read-only filesystem: nothing can be written there",
            "ask whoever looks after i2vd to mount it writable for its service user",
            detail=detail,
        )
    return PublishError(
        f"could not access {path}",
        "check that the folder exists and its share is mounted",
        detail=detail,
    )


def _fsync_dir(folder: Path) -> None:
    # A rename is durable only once its directory entry is on disk; some network
    # filesystems cannot fsync a directory, which is fine to skip there.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
