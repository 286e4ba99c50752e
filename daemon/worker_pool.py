"""The worker threads: the first worker (any engine) and the motion-only extras.

Each worker runs on its own thread, so a long job never delays noticing new files.
The extras let several motion jobs run at once on a many-core host; they share the
first worker's engines (the motion engine holds no state), and a diffusion job only
ever runs on the first worker, one at a time. Every worker reports its jobs to the
lifecycle (watchdog, status, metrics, webhooks) and asks the job control, between
steps, whether its job must stop.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from .breaker import EXIT_DEVICE_FAULT, DeviceBreaker
from .config import Settings
from .control import JobControl
from .engines import Engine
from .lifecycle import Lifecycle
from .mounts import MountGate
from .store import Capabilities, Job, JobStore
from .worker import Worker

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        owner: str,
        stop_event: threading.Event,
        wake: threading.Event,
        lifecycle: Lifecycle,
        control: JobControl,
        gate: MountGate,
        can_run: Capabilities,
    ) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner
        self.stop_event = stop_event
        self._wake = wake
        self.lifecycle = lifecycle
        self.control = control
        self.gate = gate
        breaker = DeviceBreaker(settings.gpu_fault_limit, settings.gpu_fault_cooldown_seconds)
        self.first = self._new_worker(can_run, breaker=breaker)
        self.workers = [self.first] + [
            self._new_worker(can_run, self.first.engines, "motion")
            for _ in range(settings.motion_job_slots() - 1)
        ]
        self._threads: list[threading.Thread] = []

    @property
    def breaker(self) -> DeviceBreaker:
        """The GPU's circuit breaker (only the first worker runs GPU jobs)."""
        return self.first.breaker

    @property
    def current(self) -> Job | None:
        """The first worker's job, the one the daemon registry shows."""
        return self.first.current

    def start(self) -> list[threading.Thread]:
        """Start one thread per worker; those threads (the watchdog watches them)."""
        self._threads = [
            threading.Thread(target=self._work_loop, args=(worker,), name=f"worker-{index}")
            for index, worker in enumerate(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        return list(self._threads)

    def join(self) -> None:
        """Wait for every thread to finish (after ``stop_event``)."""
        for thread in self._threads:
            thread.join()

    def heartbeat(self, now: float) -> None:
        """Renew the running jobs' leases."""
        for worker in self.workers:
            worker.heartbeat(now)

    def release_idle(self) -> None:
        release_idle(self.first.engines)

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

    def _job_step(self, job: Job, done: float) -> None:
        """Between steps: tell the watchdog, then stop here if cancelled or paused now."""
        self.lifecycle.job_step(job, done)
        assert job.id is not None
        self.control.check(job.id, job.engine)

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


def release_idle(engines: dict[str, Engine]) -> None:
    """Let engines free what has sat unused (a diffusion model's GPU memory)."""
    for engine in tuple(engines.values()):
        try:
            engine.release_idle(time.monotonic())
        except Exception:
            # The timer must keep running; the next tick tries again.
            log.exception("engine %s: releasing idle resources failed", engine.name)
