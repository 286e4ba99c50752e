"""One watchdog observer in a watch mode, shared by the inbox and the rules watchers.

``watch_mode`` means the same for both: ``events`` (inotify only), ``polling`` (network
shares, where events never arrive), or ``auto``: events, switching to polling once the
kernel refuses inotify (typically ENOSPC: ``fs.inotify.max_user_watches`` is reached),
with one warning that says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)


class WatchMode(StrEnum):
    AUTO = "auto"
    EVENTS = "events"
    POLLING = "polling"


class ObserverKind(StrEnum):
    """How folders are being watched now."""

    EVENTS = "events"
    POLLING = "polling"
    NONE = ""  # not (yet) watched: rescans only


class FolderObserver:
    """Watches folders with one handler, in a ``WatchMode``.

    ``watch`` may be called again with the folders that should be watched now: a folder
    made later is added, one replaced (a new inode) is watched again. In ``events`` mode
    the kernel's refusal is raised as OSError (the caller decides what that costs); in
    ``auto`` mode it means polling from then on. ``subject`` names what is watched, and
    ``otherwise`` what still notices changes in a folder that cannot be watched, in the
    warnings."""

    def __init__(
        self,
        handler: FileSystemEventHandler,
        mode: str,
        *,
        recursive: bool,
        subject: str,
        otherwise: str,
        poll_interval: float = 2.0,
        # Injectable so tests can stand in for inotify failing (watch limit reached).
        event_observer: Callable[[], BaseObserver] = Observer,
    ) -> None:
        self.handler = handler
        self.mode = WatchMode(mode)
        self.recursive = recursive
        self.subject = subject
        self.otherwise = otherwise
        self.poll_interval = poll_interval
        self.event_observer = event_observer
        self.observer: BaseObserver | None = None
        self.kind = ObserverKind.NONE
        self._watches: dict[Path, tuple[ObservedWatch, int]] = {}
        self._warned: set[str] = set()

    @property
    def watched(self) -> list[Path]:
        return list(self._watches)

    def watch(self, folders: Iterable[Path]) -> None:
        folders = list(folders)
        if self.observer is None:
            self._start()
        assert self.observer is not None
        for folder in folders:
            try:
                inode = folder.stat().st_ino if folder.is_dir() else None
            except OSError:
                inode = None
            known = self._watches.get(folder)
            if known is not None and known[1] != inode:
                del self._watches[folder]
                with contextlib.suppress(KeyError, OSError):
                    self.observer.unschedule(known[0])
            if inode is None or folder in self._watches:
                continue
            try:
                watch = self.observer.schedule(self.handler, str(folder), recursive=self.recursive)
            except OSError as exc:
                if self.kind == ObserverKind.EVENTS:
                    self._events_refused(exc)
                    return self.watch(folders)
                self._warn_once(
                    str(folder),
                    "cannot watch %s for changes (%s); %s",
                    folder,
                    exc.strerror or exc,
                    self.otherwise,
                )
                continue
            self._watches[folder] = (watch, inode)

    def forget(self, folder: Path) -> None:
        """Drop ``folder``'s watch, so the next ``watch`` schedules it anew."""
        known = self._watches.pop(folder, None)
        if known is not None and self.observer is not None:
            with contextlib.suppress(KeyError, OSError):
                self.observer.unschedule(known[0])

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            with contextlib.suppress(RuntimeError):  # never started
                self.observer.join(timeout=5)
        self.observer, self.kind = None, ObserverKind.NONE
        self._watches.clear()

    def _start(self) -> None:
        if self.mode == WatchMode.POLLING:
            return self._start_polling()
        observer = self.event_observer()
        try:
            observer.start()
        except OSError as exc:
            with contextlib.suppress(Exception):
                observer.stop()  # the emitters it may have started
            return self._events_refused(exc)
        self.observer, self.kind = observer, ObserverKind.EVENTS

    def _events_refused(self, exc: OSError) -> None:
        self.stop()
        if self.mode == WatchMode.EVENTS:
            raise exc
        self._warn_once(
            "fallback",
            "file events unavailable for %s (%s); watching by polling every %.1fs. Raise "
            "fs.inotify.max_user_watches, or set watch_mode: polling to silence this",
            self.subject,
            exc,
            self.poll_interval,
        )
        self._start_polling()

    def _start_polling(self) -> None:
        observer = PollingObserver(timeout=self.poll_interval)
        observer.start()
        self.observer, self.kind = observer, ObserverKind.POLLING

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)
