"""The daemon's periodic jobs, on one background scheduler.

The settle tick and the rescan (intake), the heartbeat (the running jobs' leases and
this daemon's registry row), recovering jobs whose daemon died elsewhere (and
forgetting daemons silent for a day), letting engines free idle models, rewriting the
status page, and looking whether each folder is still there. Each job is a call into
the part it concerns, or a few lines here when it belongs to no other part; the
status page is also written at start and, saying stopped, at stop.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError

from .config import Settings
from .inboxes import Inboxes
from .mounts import MountGate
from .queue_view import Activity, daemon_state
from .registration import Registration
from .status_page import StatusPages
from .store import JobStore
from .windows import is_open
from .worker_pool import WorkerPool

log = logging.getLogger(__name__)

RELEASE_IDLE_SECONDS = 30.0
FORGET_SILENT_DAEMONS_SECONDS = 86400.0
# A daemon heard from this recently counts as one more worker in the page's estimates.
STATUS_ALIVE_SECONDS = 60.0


class Timers:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        inboxes: Inboxes,
        workers: WorkerPool,
        registration: Registration,
        gate: MountGate,
        engines: tuple[str, ...],
        wake: threading.Event,
    ) -> None:
        s = settings
        self.settings = settings
        self.store = store
        self.workers = workers
        self.registration = registration
        self.gate = gate
        self._engines = engines
        self._wake = wake
        # These short timers need no more threads; every idle thread costs its own
        # malloc arena, which shows in the daemon's resident memory.
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=3)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.scheduler.add_job(inboxes.settle_tick, "interval", seconds=s.settle_poll_seconds)
        self.scheduler.add_job(inboxes.rescan, "interval", seconds=s.rescan_seconds)
        self.scheduler.add_job(
            self._recover_expired, "interval", seconds=max(5.0, s.lease_seconds / 2)
        )
        self.scheduler.add_job(
            self._heartbeat,
            "interval",
            seconds=max(1.0, s.lease_seconds / 4),
        )
        self.scheduler.add_job(workers.release_idle, "interval", seconds=RELEASE_IDLE_SECONDS)
        self.status_pages = StatusPages(s, store)
        self.scheduler.add_job(self.write_status, "interval", seconds=s.status_page_seconds)
        self.scheduler.add_job(gate.check, "interval", seconds=1.0)

    def start(self) -> None:
        self.scheduler.start()

    def stop(self, wait: bool = True) -> None:
        """Stop the timers; ``wait``: until the jobs running now have finished."""
        self.scheduler.shutdown(wait=wait)

    def write_status(self, state: Activity | None = None, force: bool = False) -> None:
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

    def _heartbeat(self) -> None:
        """The running jobs' leases, and this daemon's row in the registry."""
        self.workers.heartbeat(self.store.now())
        self.registration.renew(self.workers.current)

    def _recover_expired(self) -> None:
        """Jobs of a daemon that died elsewhere (or under another hostname, as containers
        get on every start) come back once their lease has run out."""
        for job in self.store.recover(None):
            log.warning("job %d: its daemon stopped renewing its lease; queued again", job.id)
        # Daemons that died without leaving the registry drop off its list after a day.
        self.store.daemons.forget_silent(FORGET_SILENT_DAEMONS_SECONDS)
        self._wake.set()
