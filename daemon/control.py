"""What the admin and the schedule say about claiming and running jobs.

Before each claim the worker asks :meth:`JobControl.gate`: nothing while the queue is
paused (``i2vd pause``), and only engines whose schedule window is open. Between
steps of a running job it asks :meth:`JobControl.check`, which raises when the job
must stop: cancelled by ``i2vd cancel`` (the job ends), ``i2vd pause --now`` or its
window closing with ``stop_at_close: now`` (the job goes back to the queue, its
attempt not counted). Both read the queue's database, so they reach every daemon on
the queue and survive restarts; ``check`` reads it at most once a second per job.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .capabilities import ALL_ENGINES
from .engines import JobInterrupted
from .store import JobStore
from .windows import Window, closing, is_open

CHECK_INTERVAL = 1.0


class JobCancelled(JobInterrupted):
    """``i2vd cancel`` asked the running job to stop: it ends as cancelled. A kind of
    interruption, so every engine lets it through as it does a shutdown; the worker
    tells the two apart."""


@dataclass
class Gate:
    """The outcome of one look before claiming."""

    paused: bool
    closed: dict[str, dt.datetime | None] = field(default_factory=dict)  # engine -> reopens

    def held(self) -> frozenset[str]:
        """The engines whose jobs must not start now: all while paused."""
        return frozenset(ALL_ENGINES) if self.paused else frozenset(self.closed)


class JobControl:
    def __init__(
        self,
        store: JobStore,
        windows: Sequence[Window],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.windows = list(windows)
        self._clock = clock
        self._checked: dict[int, float] = {}
        self._lock = threading.Lock()
        self.last_gate = Gate(paused=False)

    def gate(self) -> Gate:
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        control = self.store.control.get()
        closed: dict[str, dt.datetime | None] = {}
        for engine in {w.engine for w in self.windows}:
            state = is_open(self.windows, engine, now)
            if not state.open:
                closed[engine] = state.reopens_at
        self.last_gate = Gate(paused=bool(control.paused), closed=closed)
        return self.last_gate

    def check(self, job_id: int, engine: str) -> None:
        """Raise JobCancelled or JobInterrupted when the running job must stop now."""
        moment = time.monotonic()
        with self._lock:
            if moment - self._checked.get(job_id, 0.0) < CHECK_INTERVAL:
                return
            self._checked = {job_id: moment}  # one running job per worker
        if self.store.cancel_requested(job_id):
            raise JobCancelled(f"job {job_id} cancelled by an administrator")
        if self.store.control.get().pause_now:
            raise JobInterrupted("paused with --now")
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        if closing(self.windows, engine, now) is not None:
            raise JobInterrupted(f"the schedule window for {engine} closed")
