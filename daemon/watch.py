"""Noticing files: watchdog events plus periodic rescans feed a settle tracker.

A path becomes *stable* once its size and mtime have not changed for
``settle_seconds``. Event handlers only record a path; all stat calls happen in
``SettleTracker.poll``, which the service calls on a timer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from .config import STATUS_JSON_NAME, STATUS_PAGE_NAME
from .observer import FolderObserver, ObserverKind

log = logging.getLogger(__name__)

_PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".temp", ".swp")
_SYSTEM_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}


# The status page's own files (settings ``status_page_name``/``status_json_name``).
DEFAULT_RESERVED = frozenset(name.lower() for name in (STATUS_PAGE_NAME, STATUS_JSON_NAME))


def is_candidate_name(name: str, reserved: Collection[str] = DEFAULT_RESERVED) -> bool:
    """False for hidden, temporary and partial names: they wait until renamed; and for
    ``reserved`` names (lower case), i2vd's own status files, which no rule may take."""
    lower = name.lower()
    return not (
        lower.startswith((".", "~$"))
        or lower.endswith("~")
        or lower.endswith(_PARTIAL_SUFFIXES)
        or lower in _SYSTEM_NAMES
        or lower in reserved
    )


def inside(path: Path, root: Path) -> bool:
    """True when ``path`` is a regular file reached without any symlink, under ``root``."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return False
    current = root
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            return False
    return path.is_file()


@dataclass
class _Sighting:
    root: Path
    size: int
    mtime_ns: int
    unchanged_since: float


class SettleTracker:
    """Candidates waiting to stop changing. Thread-safe; ``poll`` does the I/O."""

    def __init__(
        self,
        roots: list[Path],
        settle_seconds: float,
        reserved: Collection[str] = DEFAULT_RESERVED,
    ) -> None:
        self.roots = roots
        self.settle_seconds = settle_seconds
        self.reserved = reserved
        self._lock = threading.Lock()
        # path -> (root, when noted), waiting for the next poll
        self._noted: dict[Path, tuple[Path, float]] = {}
        self._watching: dict[Path, _Sighting] = {}

    def note(self, path: Path) -> None:
        """Record that ``path`` may be new or changed. Cheap: called from event threads."""
        root = self._root_of(path)
        # Every part counts: files inside hidden folders (.Trash-1000/, .sync/) wait too.
        parts = path.relative_to(root).parts if root is not None else ()
        if root is not None and all(is_candidate_name(p, self.reserved) for p in parts):
            with self._lock:
                self._noted.setdefault(path, (root, time.time()))

    def pending(self) -> int:
        with self._lock:
            return len(self._noted) + len(self._watching)

    def poll(self, now: float) -> list[tuple[Path, Path]]:
        """Stat every candidate; return the (root, path) pairs that have settled."""
        with self._lock:
            noted, self._noted = self._noted, {}
        stable: list[tuple[Path, Path]] = []
        for path, (root, noted_at) in noted.items():
            # Symlinks anywhere on the way are refused once, when a path is first seen.
            if path not in self._watching and inside(path, root):
                self._watching[path] = _Sighting(root, -1, -1, noted_at)
        for path, sighting in list(self._watching.items()):
            try:
                stat = path.lstat()
            except OSError:
                del self._watching[path]  # gone or renamed: its new name gets an event
                continue
            if not S_ISREG(stat.st_mode):
                del self._watching[path]
                continue
            if sighting.size < 0:
                # First look: the quiet window starts at the event that announced the
                # file, or at its last write if that came later (never in the future).
                sighting.unchanged_since = min(
                    now, max(sighting.unchanged_since, stat.st_mtime_ns / 1e9)
                )
                sighting.size, sighting.mtime_ns = stat.st_size, stat.st_mtime_ns
            elif (stat.st_size, stat.st_mtime_ns) != (sighting.size, sighting.mtime_ns):
                sighting.size, sighting.mtime_ns = stat.st_size, stat.st_mtime_ns
                sighting.unchanged_since = now
            elif now - sighting.unchanged_since >= self.settle_seconds:
                del self._watching[path]
                stable.append((sighting.root, path))
        return stable

    def _root_of(self, path: Path) -> Path | None:
        for root in self.roots:
            if path.is_relative_to(root):
                return root
        return None


def scan(root: Path, reserved: Collection[str] = DEFAULT_RESERVED) -> Iterator[Path]:
    """Every candidate file under ``root``; symlinked files and folders are not followed."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc.strerror)
            continue
        for entry in entries:
            if not is_candidate_name(entry.name, reserved) or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path)


class _Recorder(FileSystemEventHandler):
    """Hands every file path an event mentions to the tracker, and nothing more."""

    def __init__(self, note: Callable[[Path], None], rescan_folder: Callable[[Path], None]):
        self._note = note
        self._rescan_folder = rescan_folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("deleted", "opened", "closed_no_write"):
            return
        if isinstance(event, DirMovedEvent | DirCreatedEvent):
            # A folder moved in whole (or created with files in it) sends no file events.
            self._rescan_folder(Path(os.fsdecode(event.dest_path or event.src_path)))
            return
        if event.is_directory:
            return
        target = event.dest_path or event.src_path
        self._note(Path(os.fsdecode(target)))


class InboxWatcher:
    """One watchdog observer over every inbox root, in the settings' ``watch_mode``."""

    def __init__(
        self,
        tracker: SettleTracker,
        mode: str,
        poll_interval: float = 2.0,
        event_observer: Callable[[], BaseObserver] = Observer,
    ) -> None:
        self.tracker = tracker
        self._folder_rescans: list[Path] = []
        self._lock = threading.Lock()
        self._observer = FolderObserver(
            _Recorder(self.tracker.note, self._queue_folder_rescan),
            mode,
            recursive=True,
            subject="the inbox",
            otherwise="it is still rescanned every rescan_seconds",
            poll_interval=poll_interval,
            event_observer=event_observer,
        )

    @property
    def kind(self) -> ObserverKind:
        return self._observer.kind

    @property
    def observer(self) -> BaseObserver | None:
        return self._observer.observer

    def start(self) -> None:
        """Raises OSError in ``events`` mode when the kernel refuses file events."""
        self._observer.watch(self.tracker.roots)

    def stop(self) -> None:
        self._observer.stop()

    def rearm(self, root: Path) -> None:
        """Watch ``root`` afresh: after its share was unmounted and mounted again, the
        old watch is dead though the folder looks the same."""
        self._observer.forget(root)
        self._observer.watch(self.tracker.roots)

    def _queue_folder_rescan(self, folder: Path) -> None:
        with self._lock:
            self._folder_rescans.append(folder)

    def take_folder_rescans(self) -> list[Path]:
        with self._lock:
            folders, self._folder_rescans = self._folder_rescans, []
        return folders
