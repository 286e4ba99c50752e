"""When the rules are reloaded: after a change in the rules folder, on a timer, on request.

Watchdog events on the rules folder and its ``presets/`` (debounced, so an editor's
burst of writes is one reload), a periodic rescan for shares where events never arrive,
and explicit requests (SIGHUP). What a reload does is ``daemon.ruleset``'s.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from .observer import FolderObserver, ObserverKind
from .rules import is_rule_file_name

log = logging.getLogger(__name__)


class _RulesEvents(FileSystemEventHandler):
    """Any change to a rule or preset file, or to the folders, pokes the watcher."""

    def __init__(self, poke: Callable[[], None]) -> None:
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Opens and plain closes are the reloads' own reads: never a reason to reload.
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, event.dest_path]
        names = [os.path.basename(os.fsdecode(p)) for p in paths if p]
        # A folder's own "modified" is any change inside it, rule file or not.
        folder_event = event.is_directory and event.event_type != "modified"
        if folder_event or any(is_rule_file_name(n) for n in names):
            self._poke()


@dataclass
class RulesWatcher:
    """Calls ``reload`` on its own thread: ``debounce`` seconds after the last change
    seen in the rules folder (at most ``max_delay`` after the first), every
    ``interval`` seconds, and at once on ``request(0)``."""

    rules_dir: Path
    reload: Callable[[], object]
    mode: str = "auto"  # auto | events | polling, as watch_mode
    interval: float | None = 30.0  # the safety rescan; None: none
    observe: bool = True
    debounce: float = 0.4
    max_delay: float = 2.0
    poll_interval: float = 2.0
    event_observer: Callable[[], BaseObserver] = Observer
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _due: float | None = None
    _first: float | None = None
    _stopping: bool = False
    _thread: threading.Thread | None = None
    _observer: FolderObserver = field(init=False)

    def __post_init__(self) -> None:
        self._observer = FolderObserver(
            _RulesEvents(self.request),
            self.mode,
            recursive=False,
            subject="the rules folder",
            otherwise=_rereads(self.interval),
            poll_interval=self.poll_interval,
            event_observer=self.event_observer,
        )

    @property
    def kind(self) -> ObserverKind:
        return self._observer.kind

    @property
    def watched(self) -> list[Path]:
        """The folders watched for changes now."""
        return self._observer.watched

    def start(self) -> None:
        if self.observe:
            self._watch()
        self._thread = threading.Thread(target=self._run, name="rules", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        self._observer.stop()

    def request(self, delay: float | None = None) -> None:
        """Reload ``delay`` seconds from now (default: the debounce); later requests
        push it back, but never past ``max_delay`` after the first one."""
        with self._cond:
            now = time.monotonic()
            if self._first is None:
                self._first = now
            wait = self.debounce if delay is None else delay
            self._due = min(now + wait, self._first + self.max_delay)
            self._cond.notify_all()

    def _run(self) -> None:
        next_rescan = None if self.interval is None else time.monotonic() + self.interval
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if self._due is not None and now >= self._due:
                        break
                    if next_rescan is not None and now >= next_rescan:
                        break
                    deadlines = [t for t in (self._due, next_rescan) if t is not None]
                    self._cond.wait(min(deadlines) - now if deadlines else None)
                self._due = self._first = None
            if self.interval is not None:
                next_rescan = time.monotonic() + self.interval
            try:
                self.reload()
            except Exception:
                log.exception("reloading the rules failed; the rules in force stay")
            if self.observe:
                self._watch()

    def _watch(self) -> None:
        """Watch the rules folder and ``presets/`` wherever they exist now; a folder
        created, removed or replaced later is (re)watched after the next reload."""
        try:
            self._observer.watch([self.rules_dir, self.rules_dir / "presets"])
        except OSError as exc:  # events mode, and the kernel refuses them
            log.warning(
                "file events unavailable for the rules folder (%s); %s",
                exc,
                _rereads(self.interval),
            )
            self.observe = False
        except Exception:
            log.exception("cannot watch the rules folder; relying on rescans and SIGHUP")


def _rereads(interval: float | None) -> str:
    """What still notices an edit in a rules folder that is not watched."""
    if interval is None:
        return "rules are re-read on SIGHUP"
    return f"rules are re-read every {interval}s and on SIGHUP"
