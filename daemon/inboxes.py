"""The inbox folders up to the queue: watcher, settle tracker and intake, on one lock.

Files are noticed by the watcher (events) and by rescans (shares where events never
come), wait in the settle tracker until they stop changing, and are then taken by
intake. The lock keeps a settled file from being between the tracker and the queue
while a rescan prunes intake's memory, a rule reload clears its unmatched files, or
``run --once`` asks whether everything is done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from .config import Settings
from .intake import Intake
from .mounts import MountGate
from .os_errors import report_intake_problem, save_intake_problems
from .rules import LoadedRule
from .store import JobStore
from .watch import InboxWatcher, SettleTracker, scan


class Inboxes:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        rules: Callable[[], list[LoadedRule]],
        gate: MountGate,
        wake: threading.Event,
    ) -> None:
        s = settings
        self.settings = settings
        self.store = store
        self.gate = gate
        self._wake = wake
        self.tracker = SettleTracker(s.inbox, s.settle_seconds, s.status_files)
        self.intake = Intake(
            store,
            rules,
            s.failed_dir,
            s.max_attempts,
            on_queued=lambda job: wake.set(),
            inbox_name=s.inbox_name,
        )
        self.watcher = InboxWatcher(self.tracker, s.watch_mode)
        self._lock = threading.Lock()
        self._scanned = threading.Event()
        # Files intake could not take, with the reason last said (each is said once).
        self.problems: dict[Path, str] = {}
        # Files of this run that could not be read or taken (`run --once` fails for them).
        self.errors = 0

    def first_scan(self) -> None:
        """Whatever arrived while the daemon was down."""
        self.rescan()
        self._scanned.set()

    def settle_tick(self) -> None:
        """The settle timer: folders the watcher asked to rescan, then every file that
        has stopped changing goes to intake."""
        for folder in self.watcher.take_folder_rescans():
            for path in scan(folder, self.settings.status_files):
                self.tracker.note(path)
        with self._lock:
            for root, path in self.tracker.poll(time.time()):
                try:
                    outcome: str = self.intake.take(root, path).outcome
                    if self.problems.pop(path, None) is not None:
                        save_intake_problems(self.problems, self.settings.state_dir)
                except Exception as exc:
                    # One file that cannot be taken must not stop intake of the others.
                    outcome = "error" if self.gate.available(root) else "vanished"
                    if outcome == "error":
                        report_intake_problem(self.problems, path, exc, self.settings)
                if outcome in ("unreadable", "error"):
                    self.errors += 1

    def rescan(self) -> None:
        present: set[Path] = set()
        for root in self.settings.inbox:
            if not self.gate.available(root):
                continue  # paused until it is back (said once by the gate)
            for path in scan(root, self.settings.status_files):
                self.tracker.note(path)
                present.add(path)
        with self._lock:
            self.intake.retain(present)

    def retry_unmatched(self) -> None:
        """After new or changed rules: images that waited unmatched are tried against
        them (forgotten, then rescanned). Queued jobs keep the rule content they were
        queued with."""
        with self._lock:
            self.intake.forget_unmatched()
        self.rescan()

    def root_returned(self, root: Path) -> None:
        """A root is back: watch it again (its old watch died with the mount), scan it
        now rather than at the next rescan, and let waiting jobs run."""
        if root in self.settings.inbox:
            self.watcher.rearm(root)
            for path in scan(root):
                self.tracker.note(path)
        self._wake.set()

    def drained(self) -> bool:
        """Everything in the inboxes was taken and the queue has nothing left to run."""
        if not self._scanned.is_set():
            return False
        with self._lock:
            return self.tracker.pending() == 0 and self.store.pending() == 0
