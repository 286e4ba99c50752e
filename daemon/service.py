"""Wiring: settings, store, watcher, intake and worker on one timeline; signals; lifecycle.

No business logic lives here. Timers run on an APScheduler background scheduler;
the worker runs on its own thread so a long job never delays noticing new files; the
rules are reloaded on their own thread when their folder changes, on a timer and on
SIGHUP.

Size: ``Service`` is over ~250 lines because it is the one place where every thread,
timer and signal of the process starts and stops, in order; each timer is a few lines
that read best next to the start-up that schedules it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from .breaker import EXIT_DEVICE_FAULT, DeviceBreaker
from .capabilities import ALL_ENGINES
from .config import Settings
from .control import Gate, JobControl
from .engines import Engine, EngineUnavailable, get_engine
from .host_paths import HostPaths
from .intake import Intake
from .last_good import record_path
from .lifecycle import Lifecycle
from .logs import ProgressLine
from .mounts import MountGate
from .os_errors import report_intake_problem, save_intake_problems
from .publish import sweep_temporaries
from .queue_view import STOPPED, Activity, daemon_state
from .rules import LoadedRule
from .ruleset import RuleSet, RulesWatcher
from .schema_version import SchemaTooNew
from .status_page import StatusPages
from .store import Capabilities, Job, JobState, JobStore
from .tables import DaemonState
from .wakeup import QueueListener
from .watch import InboxWatcher, SettleTracker, scan
from .windows import is_open
from .worker import Worker, engine_options

log = logging.getLogger(__name__)

RELEASE_IDLE_SECONDS = 30.0
FORGET_SILENT_DAEMONS_SECONDS = 86400.0
# A daemon heard from this recently counts as one more worker in the page's estimates.
STATUS_ALIVE_SECONDS = 60.0


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
        self.ruleset = RuleSet(settings.rules_dir, record=record_path(settings.state_dir))
        # Engines built only to check that rules' engines can run here (never rendered
        # with), kept so a reload does not build them again.
        self._engine_checks: dict[str, Engine] = {}
        # Set by the SIGHUP handler, acted on by the main loop.
        self._reload_requested = False
        self._wake = threading.Event()
        self._intake_lock = threading.Lock()
        self._started_at = time.time()
        self._scanned = threading.Event()
        self._intake_errors = 0
        # Files intake could not take, with the reason last said (each is said once).
        self.intake_problems: dict[Path, str] = {}

    # --- lifecycle -----------------------------------------------------------------

    def run(self) -> int:
        """Run until a signal (or, with ``once``, until the inbox is drained). Exit code.

        Raises StartupError when the folders or the database cannot be opened.
        """
        self._install_signal_handlers()
        self._start()
        # What an earlier run could not take is judged afresh by this one.
        save_intake_problems(self.intake_problems, self.settings.state_dir)
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
                if self.once and self._drained():
                    drained = True
                    break
        finally:
            self._shutdown()
        try:
            if self.worker.breaker.exhausted:
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
        if self._intake_errors:
            log.error("%d file(s) could not be read; see the log above", self._intake_errors)
        return 0 if drained and not failed and not self._intake_errors else 1

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
                f"the database driver for {_redact(s.database_url)} is not installed "
                f"({exc.msg}); install it, e.g. pip install 'i2vd[postgres]' for PostgreSQL"
            ) from None
        except SchemaTooNew as exc:
            raise StartupError(str(exc)) from None
        except SQLAlchemyError as exc:
            raise StartupError(
                f"cannot open the queue database {_redact(s.database_url)}: "
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}; check database_url"
            ) from None

    def _start(self) -> None:
        s = self.settings
        self._open()
        self.control = JobControl(self.store, s.windows)
        self.lifecycle = Lifecycle(
            s, self.store, self.host, self._gate, progress_line=self.progress_line
        )
        self.lifecycle.starting("recovering jobs and sweeping scratch files")
        # Jobs name their inbox; this host's folders (and outbox) give their paths here.
        self.store.host_paths = HostPaths.of(s)
        # The queue's clock, not this host's: jobs' times are on the database's clock.
        self._started_at = self.store.now()
        for job in self.store.recover(self.host, None, alive=_other_process_alive):
            log.warning(
                "job %d was running when i2vd stopped; queued again (%s)", job.id, job.relative
            )
        for path in sweep_temporaries([s.outbox, s.failed_dir]):
            log.info("removed a temporary left by an earlier crash: %s", path)
        self._sweep_work_dir()
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
        self._load_rules()

        self.tracker = SettleTracker(s.inbox, s.settle_seconds, s.status_files)
        self.intake = Intake(
            self.store,
            self.ruleset.rules,
            s.failed_dir,
            s.max_attempts,
            on_queued=lambda job: self._wake.set(),
            inbox_name=s.inbox_name,
        )
        can_run = capabilities(s)
        breaker = DeviceBreaker(s.gpu_fault_limit, s.gpu_fault_cooldown_seconds)
        self.worker = self._new_worker(can_run, breaker=breaker)
        # Further motion-only workers: several motion jobs at once on a many-core host.
        # They share the engines (the motion engine holds no state); a diffusion job
        # only ever runs on the first worker, one at a time.
        self.workers = [self.worker] + [
            self._new_worker(can_run, self.worker.engines, "motion")
            for _ in range(s.motion_job_slots() - 1)
        ]
        self._register(can_run)
        self._engines = can_run.engines
        # On PostgreSQL other daemons' new jobs wake this one at once (polling stays).
        self._listener: QueueListener | None = None
        if self.store.dialect == "postgresql":
            self._listener = QueueListener(self.store.url, self._wake.set)
            self._listener.start()
        self.watcher = InboxWatcher(self.tracker, s.watch_mode)
        if not self.once:
            try:
                self.watcher.start()
            except OSError as exc:
                self.store.close()
                raise StartupError(
                    f"cannot watch the inbox for file events ({exc}); raise "
                    "fs.inotify.max_user_watches or set watch_mode: auto or polling"
                ) from None

        # Five short timers need no more threads; every idle thread costs its own
        # malloc arena, which shows in the daemon's resident memory.
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=3)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.scheduler.add_job(self._settle_tick, "interval", seconds=s.settle_poll_seconds)
        self.scheduler.add_job(self._rescan, "interval", seconds=s.rescan_seconds)
        self.scheduler.add_job(
            self._recover_expired, "interval", seconds=max(5.0, s.lease_seconds / 2)
        )
        self.scheduler.add_job(
            self._heartbeat,
            "interval",
            seconds=max(1.0, s.lease_seconds / 4),
        )
        self.scheduler.add_job(self._release_idle, "interval", seconds=RELEASE_IDLE_SECONDS)
        self.status_pages = StatusPages(s, self.store)
        self.scheduler.add_job(self._write_status, "interval", seconds=s.status_page_seconds)
        self.scheduler.add_job(self.gate.check, "interval", seconds=1.0)
        self.scheduler.start()
        self.lifecycle.starting("scanning the inboxes")
        self._rescan()  # whatever arrived while the daemon was down
        self._scanned.set()
        self._write_status(force=True)
        try:
            self.lifecycle.start_metrics()
        except OSError as exc:
            self.scheduler.shutdown(wait=False)
            self.watcher.stop()
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

        self._worker_threads = [
            threading.Thread(target=self._work_loop, args=(worker,), name=f"worker-{index}")
            for index, worker in enumerate(self.workers)
        ]
        for thread in self._worker_threads:
            thread.start()
        self.lifecycle.liveness.workers = list(self._worker_threads)
        log.info(
            "i2vd started: watching %s (%s), %d rule(s), outbox %s, database %s",
            ", ".join(map(str, s.inbox)),
            self.watcher.kind or "scan only",
            len(self.ruleset.snapshot),
            s.outbox,
            _redact(s.database_url),
        )
        self.lifecycle.ready()

    def _gate(self) -> Gate:
        return self.control.gate()

    def _job_step(self, job: Job, done: float) -> None:
        """Between steps: tell the watchdog, then stop here if cancelled or paused now."""
        self.lifecycle.job_step(job, done)
        assert job.id is not None
        self.control.check(job.id, job.engine)

    def _shutdown(self) -> None:
        log.info("stopping: the running job, if any, goes back to the queue")
        self.lifecycle.stopping()
        self.stop_event.set()
        self._wake.set()
        if self._listener is not None:
            self._listener.stop()
        self.rules_watcher.stop()
        self.scheduler.shutdown(wait=True)
        self.watcher.stop()
        for thread in self._worker_threads:
            thread.join()
        breaker = self.worker.breaker
        if breaker.exhausted:
            # Left in the registry, faulted, so `i2vd status` says why it stopped.
            self.store.daemons.heartbeat(self.owner, DaemonState.FAULTED, breaker.reason)
        else:
            self.store.daemons.unregister(self.owner)
        self._write_status(STOPPED, force=True)
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

    # --- the moving parts --------------------------------------------------------------

    def _register(self, can_run: Capabilities) -> None:
        """Join the queue's daemon registry (what `i2vd status` lists)."""
        state = DaemonState.FAULTED if self.worker.breaker.faulted else self._queue_state()
        self.store.daemons.register(
            self.owner,
            self.host,
            os.getpid(),
            can_run,
            version=__version__,
            device=self.settings.device,
            state=state,
        )

    def _queue_state(self) -> DaemonState:
        """Paused while the queue is (`i2vd pause`), else running."""
        return DaemonState.PAUSED if self.store.control.get().paused else DaemonState.RUNNING

    def _heartbeat(self) -> None:
        """The running jobs' leases, and this daemon's row in the registry: its job and
        whether it is paused. Faulted is the worker's to set and to clear (when the GPU
        works again), so it is kept."""
        now = self.store.now()
        for worker in self.workers:
            worker.heartbeat(now)
        current = self.worker.current
        alive = self.store.daemons.heartbeat(
            self.owner,
            self._queue_state(),
            job_id=current.id if current else None,
            keep=DaemonState.FAULTED,
        )
        if not alive:
            self._register(capabilities(self.settings))  # forgotten while it was silent

    def _sweep_work_dir(self) -> None:
        """Delete scratch encodes of jobs that no live daemon is running any more."""
        for path in self.settings.work_dir.iterdir():
            job_id = path.stem.removeprefix("job-")
            job = self.store.get(int(job_id)) if job_id.isdigit() else None
            if job is None or job.state != JobState.RUNNING:
                path.unlink(missing_ok=True)
                log.info("removed a scratch file left by an earlier crash: %s", path.name)

    def _load_rules(self) -> None:
        rules_dir = self.settings.rules_dir
        result = self.ruleset.reload()  # logs each problem, and each rule loaded
        if result.folder_missing:
            log.error(
                "rules folder %s does not exist (or cannot be read): no image will be "
                "processed. Create it (examples are in the i2vd repository's rules/) or set "
                "rules_dir; it is looked for again every rescan_seconds and on SIGHUP",
                rules_dir,
            )
            return
        if not self.ruleset.snapshot:
            log.warning("no valid rules in %s: images will wait in the inbox", rules_dir)
        self._check_engines(self.ruleset.snapshot)

    def _reload_and_announce(self) -> None:
        try:
            self._reload_rules()
        finally:
            if self._announce_reload.is_set():
                self._announce_reload.clear()
                self.lifecycle.reloaded()

    def _reload_rules(self) -> None:
        """Runs on the rules watcher's thread after a change, a rescan or SIGHUP."""
        result = self.ruleset.reload()
        if not result.changed:
            return
        if not self.ruleset.snapshot:
            log.warning(
                "no valid rules in %s: images will wait in the inbox", self.settings.rules_dir
            )
        self._check_engines(result.new_or_changed)
        if result.new_or_changed:
            # Images that waited unmatched are tried against the new rules: forget
            # them, then rescan. Queued jobs keep the rule content they were queued with.
            with self._intake_lock:
                self.intake.forget_unmatched()
            self._rescan()

    def _check_engines(self, rules: Iterable[LoadedRule]) -> None:
        for loaded in rules:
            try:
                get_engine(loaded.rule.engine, self._engine_checks, engine_options(self.settings))
            except EngineUnavailable as exc:
                # Said once per rule version, so nobody drops a hundred images to learn it.
                log.warning(
                    "rule %s: %s; its images will go to %s (%s)",
                    loaded.rule.name,
                    exc,
                    self.settings.failed_dir,
                    exc.hint,
                )

    def _release_idle(self) -> None:
        """Let engines free what has sat unused (a diffusion model's GPU memory)."""
        for engine in tuple(self.worker.engines.values()):
            try:
                engine.release_idle(time.monotonic())
            except Exception:
                # The timer must keep running; the next tick tries again.
                log.exception("engine %s: releasing idle resources failed", engine.name)

    def _settle_tick(self) -> None:
        for folder in self.watcher.take_folder_rescans():
            for path in scan(folder, self.settings.status_files):
                self.tracker.note(path)
        with self._intake_lock:
            for root, path in self.tracker.poll(time.time()):
                try:
                    outcome: str = self.intake.take(root, path).outcome
                    if self.intake_problems.pop(path, None) is not None:
                        save_intake_problems(self.intake_problems, self.settings.state_dir)
                except Exception as exc:
                    # One file that cannot be taken must not stop intake of the others.
                    outcome = "error" if self.gate.available(root) else "vanished"
                    if outcome == "error":
                        report_intake_problem(self.intake_problems, path, exc, self.settings)
                if outcome in ("unreadable", "error"):
                    self._intake_errors += 1

    def _write_status(self, state: Activity | None = None, force: bool = False) -> None:
        """The status page in the share; a failure to build it never stops a job."""
        try:
            if state is None:
                state = self._activity()
            # Estimates count every live daemon on the queue as a worker.
            workers = len(self.store.daemons.alive(STATUS_ALIVE_SECONDS))
            self.status_pages.refresh(
                time.time(), state, force, workers, unavailable=self.gate.unavailable()
            )
        except SQLAlchemyError as exc:
            log.warning("the status page was not updated: the queue could not be read (%s)", exc)

    def _activity(self) -> Activity:
        """Paused (the queue's switch) or outside a schedule window, for the page."""
        moment = dt.datetime.now(dt.UTC)
        closed: dict[str, float | None] = {}
        for engine in self._engines:
            window = is_open(self.settings.windows, engine, moment)
            if not window.open:
                closed[engine] = window.reopens_at.timestamp() if window.reopens_at else None
        return daemon_state(bool(self.store.control.get().paused), closed, self._engines)

    def _recover_expired(self) -> None:
        """Jobs of a daemon that died elsewhere (or under another hostname, as containers
        get on every start) come back once their lease has run out."""
        for job in self.store.recover(None):
            log.warning("job %d: its daemon stopped renewing its lease; queued again", job.id)
        # Daemons that died without leaving the registry drop off its list after a day.
        self.store.daemons.forget_silent(FORGET_SILENT_DAEMONS_SECONDS)
        self._wake.set()

    def _rescan(self) -> None:
        present: set[Path] = set()
        for root in self.settings.inbox:
            if not self.gate.available(root):
                continue  # paused until it is back (said once by the gate)
            for path in scan(root, self.settings.status_files):
                self.tracker.note(path)
                present.add(path)
        with self._intake_lock:
            self.intake.retain(present)

    def _root_returned(self, root: Path) -> None:
        """A root is back: watch it again (its old watch died with the mount), scan it
        now rather than at the next rescan, and let waiting jobs run."""
        if root in self.settings.inbox:
            self.watcher.rearm(root)
            for path in scan(root):
                self.tracker.note(path)
        self._wake.set()

    def _new_worker(
        self,
        can_run: Capabilities,
        engines: dict[str, Engine] | None = None,
        only_engine: str | None = None,
        breaker: DeviceBreaker | None = None,
    ) -> Worker:
        return Worker(
            self.settings,
            self.store,
            self.owner,
            self.stop_event,
            engines if engines is not None else {},
            only_engine,
            can_run=can_run,
            breaker=breaker if breaker is not None else DeviceBreaker(),
            on_claim=self.lifecycle.job_started,
            on_step=self._job_step,
            on_load=self.lifecycle.model_loading,
            holding=lambda: self.control.gate().held(),
            on_end=self._job_ended,
            gate=self.gate,
        )

    def _job_ended(self, claimed: Job) -> None:
        """After each attempt (also one that raised): metrics and webhooks read the row."""
        try:
            row = self.store.get(claimed.id) if claimed.id is not None else None
        except SQLAlchemyError:
            row = None
        self.lifecycle.job_ended(claimed, row)

    def _work_loop(self, worker: Worker) -> None:
        while not self.stop_event.is_set():
            try:
                job = worker.run_once(self.store.now())
                if worker.breaker.exhausted:
                    log.error(
                        "the GPU failed %d times in a row (%s): stopping so that the service "
                        "manager restarts i2vd with a fresh GPU context (exit code %d)",
                        worker.breaker.in_a_row,
                        worker.breaker.reason,
                        EXIT_DEVICE_FAULT,
                    )
                    self.stop_event.set()
                    break
                if job is None:
                    self._wake.wait(self._idle_wait())
                    self._wake.clear()
            except Exception:
                # Typically the database (locked, disk full, server restarting). A job
                # caught mid-way keeps its lease, which expires and is recovered.
                log.exception("the worker hit an error; retrying in 5s")
                self.stop_event.wait(5)

    def _idle_wait(self) -> float:
        due = self.store.next_due()
        if due is None:
            return 5.0
        return min(5.0, max(0.05, due - self.store.now()))

    def _drained(self) -> bool:
        if not self._scanned.is_set():
            return False
        with self._intake_lock:
            return self.tracker.pending() == 0 and self.store.pending() == 0


def capabilities(settings: Settings) -> Capabilities:
    """What this daemon claims: jobs of its engines (every engine unless `engines` says),
    from the inboxes this host has, by name or, for jobs queued before inboxes had
    names, by folder."""
    engines = tuple(settings.engines) if settings.engines is not None else ALL_ENGINES
    names = (*settings.inbox_names, *(str(folder) for folder in settings.inbox))
    return Capabilities(engines, inboxes=tuple(dict.fromkeys(names)))


def _other_process_alive(pid: int) -> bool:
    """Whether another process with ``pid`` runs here. Our own pid counts as dead: a
    restarted daemon (pid 1 in every container start) owns nothing from before."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _redact(url: str) -> str:
    """Never log a database password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
