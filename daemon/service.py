"""The daemon's start, run and stop: every part started in order, signals, the main loop.

No business logic lives here, nor the body of any timer or worker thread: each part
of the running daemon is a module of its own, wired together here.

- ``leftovers``: what a crash left (this host's running jobs, temporaries, scratch)
- ``live_rules``: the rules, loaded at start and reloaded by the ``RulesWatcher`` on
  its own thread when their folder changes, on a timer and on SIGHUP
- ``inboxes``: watcher, settle tracker and intake, from a dropped file to a job
- ``worker_pool``: the worker threads, so a long job never delays noticing new files
- ``registration``: this daemon's row in the queue's daemon registry
- ``timers``: the periodic jobs on one background scheduler, and the status page
- ``lifecycle``: what systemd and monitoring are told

The order of start-up and shutdown matters (what a part needs exists before it, and
nothing runs against a part already stopped), so it reads top to bottom in
``_start`` and ``_shutdown``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType

from sqlalchemy.exc import SQLAlchemyError

from .breaker import EXIT_DEVICE_FAULT
from .config import Settings
from .control import JobControl
from .database_url import without_password
from .host_paths import HostPaths
from .inboxes import Inboxes
from .leftovers import clear_leftovers
from .lifecycle import Lifecycle
from .live_rules import LiveRules
from .logs import ProgressLine
from .mounts import MountGate
from .os_errors import save_intake_problems
from .queue_view import STOPPED
from .registration import Registration
from .ruleset import RulesWatcher
from .schema_version import SchemaTooNew
from .store import Capabilities, JobStore
from .timers import Timers
from .wakeup import QueueListener
from .worker_pool import WorkerPool

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start; the message says what to fix."""


class Service:
    def __init__(
        self, settings: Settings, once: bool = False, progress_line: ProgressLine | None = None
    ) -> None:
        self.settings = settings
        self.once = once
        self.progress_line = progress_line
        # Set by the SIGHUP handler's reload: READY=1 follows RELOADING=1 once it is done.
        self._announce_reload = threading.Event()
        self.stop_event = threading.Event()
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}"
        self.rules = LiveRules(settings)
        # Set by the SIGHUP handler, acted on by the main loop.
        self._reload_requested = False
        # Set when there may be a job to claim: a worker waiting idle looks at once.
        self._wake = threading.Event()
        self._started_at = time.time()

    def run(self) -> int:
        """Run until a signal (or, with ``once``, until the inbox is drained). Exit code.

        Raises StartupError when the folders or the database cannot be opened.
        """
        self._install_signal_handlers()
        self._start()
        # What an earlier run could not take is judged afresh by this one.
        save_intake_problems(self.inboxes.problems, self.settings.state_dir)
        drained = False
        try:
            while not self.stop_event.wait(0.2):
                self.lifecycle.tick()
                if self._reload_requested:
                    self._reload_requested = False
                    log.info("received SIGHUP: reloading the rules")
                    self.lifecycle.reloading()
                    self._announce_reload.set()
                    self.rules_watcher.request(0.0)
                if self.once and self.inboxes.drained():
                    drained = True
                    break
        finally:
            self._shutdown()
        try:
            if self.workers.breaker.exhausted:
                return EXIT_DEVICE_FAULT
            return self._exit_code(drained) if self.once else 0
        finally:
            self.lifecycle.close()
            self.store.close()

    def _exit_code(self, drained: bool) -> int:
        """``--once``: 0 only if the inbox was drained and every job of this run succeeded."""
        failed = self.store.failed_since(self._started_at)
        for job in failed:
            log.error("failed: %s (%s)", job.relative, job.error)
        if not drained:
            log.error("stopped before the inbox was drained; run again to finish")
        if self.inboxes.errors:
            log.error("%d file(s) could not be read; see the log above", self.inboxes.errors)
        return 0 if drained and not failed and not self.inboxes.errors else 1

    def _open(self) -> None:
        """Create the folders and open the queue, or explain why that is impossible."""
        s = self.settings
        for folder in (*s.inbox, s.outbox, s.failed_dir, s.state_dir, s.work_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StartupError(
                    f"cannot create {folder}: {exc.strerror}; create it or give the "
                    "service user access to its parent"
                ) from None
        try:
            self.store = JobStore(s.database_url)
        except ImportError as exc:
            raise StartupError(
                f"the database driver for {without_password(s.database_url)} is not "
                f"installed ({exc.msg}); install it, e.g. pip install 'i2vd[postgres]' for "
                "PostgreSQL"
            ) from None
        except SchemaTooNew as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:  # the migration's lock file, beside a SQLite queue
            raise StartupError(
                f"cannot open the queue database {without_password(s.database_url)}: cannot "
                f"write {exc.filename or s.state_dir} ({exc.strerror or exc}); the service "
                "user must be able to write to the queue's folder"
            ) from None
        except SQLAlchemyError as exc:
            raise StartupError(
                f"cannot open the queue database {without_password(s.database_url)}: "
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}; check database_url"
            ) from None

    def _start(self) -> None:
        s = self.settings
        self._open()
        self.control = JobControl(self.store, s.windows)
        self.lifecycle = Lifecycle(
            s, self.store, self.host, self.control.gate, progress_line=self.progress_line
        )
        self.lifecycle.starting("recovering jobs and sweeping scratch files")
        # Jobs name their inbox; this host's folders (and outbox) give their paths here.
        self.store.host_paths = HostPaths.of(s)
        # The queue's clock, not this host's: jobs' times are on the database's clock.
        self._started_at = self.store.now()
        clear_leftovers(s, self.store, self.host)
        self.gate = MountGate(
            [
                *(("inbox", root) for root in s.inbox),
                ("outbox", s.outbox),
                ("failed folder", s.failed_dir),
            ],
            s.state_dir,
            on_return=self._root_returned,
        )
        self.gate.arm()
        self.lifecycle.starting("loading the rules")
        self.rules.load()

        self.inboxes = Inboxes(s, self.store, self.rules.ruleset.rules, self.gate, self._wake)
        can_run = Capabilities.of(s)
        self.workers = WorkerPool(
            s,
            self.store,
            self.owner,
            self.stop_event,
            self._wake,
            self.lifecycle,
            self.control,
            self.gate,
            can_run,
        )
        self.registration = Registration(
            s, self.store, self.owner, self.host, can_run, self.workers.breaker
        )
        self.registration.join()
        # On PostgreSQL other daemons' new jobs wake this one at once (polling stays).
        self._listener: QueueListener | None = None
        if self.store.dialect == "postgresql":
            self._listener = QueueListener(self.store.url, self._wake.set)
            self._listener.start()
        if not self.once:
            try:
                self.inboxes.watcher.start()
            except OSError as exc:
                self.store.close()
                raise StartupError(
                    f"cannot watch the inbox for file events ({exc}); raise "
                    "fs.inotify.max_user_watches or set watch_mode: auto or polling"
                ) from None

        self.timers = Timers(
            s,
            self.store,
            self.inboxes,
            self.workers,
            self.registration,
            self.gate,
            can_run.engines,
            self._wake,
        )
        self.timers.start()
        self.lifecycle.starting("scanning the inboxes")
        self.inboxes.first_scan()
        self.timers.write_status(force=True)
        try:
            self.lifecycle.start_metrics()
        except OSError as exc:
            self.timers.stop(wait=False)
            self.inboxes.watcher.stop()
            self.store.close()
            raise StartupError(
                f"cannot serve metrics on {s.metrics_host}:{s.metrics_port} ({exc.strerror}); "
                "choose a free metrics_port or stop what uses it"
            ) from None

        # Rule edits take effect without a restart: file events (debounced), a rescan
        # as often as the inbox's for shares where events never come, and SIGHUP.
        self.rules_watcher = RulesWatcher(
            s.rules_dir,
            self._reload_and_announce,
            mode=s.watch_mode,
            interval=None if self.once else s.rescan_seconds,
            observe=not self.once,
        )
        self.rules_watcher.start()

        self.lifecycle.liveness.workers = self.workers.start()
        log.info(
            "i2vd started: watching %s (%s), %d rule(s), outbox %s, database %s",
            ", ".join(map(str, s.inbox)),
            self.inboxes.watcher.kind or "scan only",
            len(self.rules.ruleset.snapshot),
            s.outbox,
            without_password(s.database_url),
        )
        self.lifecycle.ready()

    def _shutdown(self) -> None:
        log.info("stopping: the running job, if any, goes back to the queue")
        self.lifecycle.stopping()
        self.stop_event.set()
        self._wake.set()
        if self._listener is not None:
            self._listener.stop()
        self.rules_watcher.stop()
        self.timers.stop()
        self.inboxes.watcher.stop()
        self.workers.join()
        self.registration.leave()
        self.timers.write_status(STOPPED, force=True)
        log.info("stopped")

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            # Only a flag: the loops notice it and unwind at a safe point.
            log.info("received %s", signal.Signals(signum).name)
            self.stop_event.set()
            self._wake.set()

        def request_reload(_signum: int, _frame: FrameType | None) -> None:
            # Only a flag, without locks or logging: the main loop does the rest.
            self._reload_requested = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, request_reload)

    def _reload_and_announce(self) -> None:
        """Runs on the rules watcher's thread after a change, a rescan or SIGHUP."""
        try:
            if self.rules.reload():
                self.inboxes.retry_unmatched()
        finally:
            if self._announce_reload.is_set():
                self._announce_reload.clear()
                self.lifecycle.reloaded()

    def _root_returned(self, root: Path) -> None:
        # The gate is armed before intake exists; it reports a return only from the
        # timers' check, which starts after.
        self.inboxes.root_returned(root)
