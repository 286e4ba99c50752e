"""Whether the daemon is making progress, judged for systemd's watchdog.

A daemon can be alive but useless: a hung GPU call, a poisoned CUDA context, a thread
stuck on a dead share. systemd's watchdog only helps if the pings stop then, so they
come from here, and only while

- the main loop has ticked recently, and
- the worker thread runs, and
- the current job, if any, has reported a step (or a heartbeat) within its allowance:
  ``load_seconds`` before its first step (a model may be loading; counted from the
  load's start when the engine says one began), then
  ``stall_seconds`` between steps.

Then systemd kills the daemon (``WatchdogSec=``), restarts it (``Restart=``), and the
job that hung is queued again on start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# The main loop ticks every 0.2 s; this much silence means it is stuck.
LOOP_ALLOWANCE = 30.0
# Where a job's silence is counted from, as the verdict says it.
_SINCE = {
    "claimed": "since it started (no first step)",
    "loading": "since its model began loading (no first step)",
    "stepped": "since its last step",
}


@dataclass(frozen=True)
class Verdict:
    alive: bool
    reason: str = ""


class Liveness:
    """Fed by the main loop and the worker; read before each watchdog ping."""

    def __init__(
        self,
        stall_seconds: float,
        load_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_seconds = stall_seconds
        self.load_seconds = load_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._loop_at = clock()
        # job id -> (when it last did something, what: claimed, loading or stepped)
        self._jobs: dict[int, tuple[float, str]] = {}
        self.workers: list[threading.Thread] = []

    def loop_tick(self) -> None:
        self._loop_at = self._clock()

    def job_started(self, job_id: int) -> None:
        with self._lock:
            self._jobs[job_id] = (self._clock(), "claimed")

    def loading(self, job_id: int) -> None:
        """The job's engine started loading a model: ``load_seconds`` from now, not from
        the claim, until its first step."""
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id] = (self._clock(), "loading")

    def step(self, job_id: int) -> None:
        """The job did something: a denoising step, a frame, a heartbeat."""
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id] = (self._clock(), "stepped")

    def job_ended(self, job_id: int) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def verdict(self) -> Verdict:
        now = self._clock()
        if now - self._loop_at > LOOP_ALLOWANCE:
            return Verdict(False, f"the main loop has not run for {now - self._loop_at:.0f}s")
        if any(not thread.is_alive() for thread in self.workers):
            return Verdict(False, "a worker thread has died")
        with self._lock:
            jobs = dict(self._jobs)
        for job, (since, what) in sorted(jobs.items()):
            allowance = self.stall_seconds if what == "stepped" else self.load_seconds
            silent = now - since
            if silent > allowance:
                return Verdict(
                    False, f"job {job} has made no progress for {silent:.0f}s {_SINCE[what]}"
                )
        return Verdict(True)
