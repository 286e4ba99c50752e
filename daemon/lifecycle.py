"""The daemon as systemd and monitoring see it: sd_notify, the watchdog, the one-line
status, metrics and webhooks. The service calls in at a few points (started,
reloading, each main-loop tick, each job's start and end, stopping); nothing here
decides what to process.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Settings
from .control import Gate
from .liveness import Liveness
from .logs import ProgressLine
from .notify import Notifier
from .store import Job, JobStore
from .webhooks import Webhooks, job_payload

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

STATUS_SECONDS = 2.0
TEXTFILE_SECONDS = 15.0
# How much longer systemd should wait each time a start-up or stop phase makes progress.
EXTEND_SECONDS = 90.0
# State names of a job's attempt ending, for metrics and webhooks.
OUTCOME_BY_STATE = {
    "done": "done",
    "failed": "failed",
    "retrying": "retrying",
    "cancelled": "cancelled",
    "queued": "interrupted",
}


class Lifecycle:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        host: str,
        gate: Callable[[], Gate],
        progress_line: ProgressLine | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.host = host
        self._gate = gate
        self.notifier = Notifier()
        self.liveness = Liveness(settings.stall_seconds, settings.model_load_seconds)
        self.webhooks = Webhooks(settings.webhooks)
        self.metrics: Metrics | None = None
        self.progress_line = progress_line
        # The jobs this daemon runs now: id -> (the claimed row, fraction done).
        self._running: dict[int, tuple[Job, float]] = {}
        self._last_ping = 0.0
        self._stalled = False
        self._last_status = 0.0
        self._last_textfile = 0.0
        self._had_pending = False
        # Jobs whose engine is loading a model (no step yet) -> the model, for the status.
        self._loading: dict[int, str] = {}
        # Attempts of this run that ended, by outcome: the progress line's "done of total".
        self._finished: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        # Set by stopping(): from then on systemd's stop timeout is the stall allowance
        # asked for there, never stretched for a model load.
        self._stopping = False

    # --- start, reload, stop --------------------------------------------------------

    def starting(self, what: str) -> None:
        """A start-up phase began: systemd waits EXTEND_SECONDS more, and says what."""
        self.notifier.extend_timeout(EXTEND_SECONDS)
        self.notifier.status(what)

    def start_metrics(self) -> None:
        s = self.settings
        if s.metrics_port is None and s.metrics_textfile is None:
            return
        from .metrics import Metrics  # only with metrics on: keeps the plain daemon lean

        self.metrics = Metrics(self._live, __version__, s.device)
        if s.metrics_port is not None:
            self.metrics.serve(s.metrics_host, s.metrics_port)
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, s.metrics_port)

    def ready(self) -> None:
        self.notifier.ready(self.status_line())

    def reloading(self) -> None:
        self.notifier.reloading()

    def reloaded(self) -> None:
        self.notifier.ready(self.status_line())

    def stopping(self) -> None:
        self._stopping = True
        self.notifier.stopping()
        self.notifier.extend_timeout(self.settings.stall_seconds)

    def close(self) -> None:
        self.webhooks.close()
        if self.metrics is not None:
            if self.settings.metrics_textfile is not None:
                self._write_textfile()
            self.metrics.close()
        if self.progress_line is not None:
            self.progress_line.clear()
        self.notifier.close()

    # --- the main loop's tick -----------------------------------------------------------

    def tick(self) -> None:
        """Called by the main loop a few times a second."""
        self.liveness.loop_tick()
        now = time.monotonic()
        period = self.notifier.watchdog_seconds
        if period is not None and now - self._last_ping >= period / 4:
            verdict = self.liveness.verdict()
            if verdict.alive:
                self.notifier.watchdog()
                self._last_ping, self._stalled = now, False
            elif not self._stalled:
                # Said once per silent stretch: systemd's kill follows within the period.
                self._stalled = True
                log.error("not making progress (%s): watchdog pings stopped", verdict.reason)
        if now - self._last_status >= STATUS_SECONDS:
            self._last_status = now
            self._refresh_status()
        if (
            self.metrics is not None
            and self.settings.metrics_textfile is not None
            and now - self._last_textfile >= TEXTFILE_SECONDS
        ):
            self._last_textfile = now
            self._write_textfile()

    def _refresh_status(self) -> None:
        self._counts = self.store.count_by_state()
        line = self.status_line()
        self.notifier.status(line)
        if self.progress_line is not None:
            self.progress_line.update(line)
        pending = sum(self._counts.get(s, 0) for s in ("queued", "running", "retrying"))
        if self._had_pending and not pending and self.webhooks.wants("drained"):
            self.webhooks.send("drained", {"host": self.host, "counts": self._counts})
        self._had_pending = pending > 0

    def status_line(self) -> str:
        """systemd's, e.g. ``3 queued · job 12 a.jpg 40% · diffusion closed until 22:00``;
        the terminal's progress line (``run --once``) counts this run's jobs instead:
        ``3 of 10 done · job 12 a.jpg 40% · ETA 0:00:42``."""
        counts = self._counts
        waiting = counts.get("queued", 0) + counts.get("retrying", 0)
        if self.progress_line is not None:
            parts = self._run_counts(counts)
        else:
            parts = [f"{waiting} queued"]
        # copy(): one step under the GIL, while worker threads add and remove jobs.
        running = sorted(self._running.copy().items())
        loading = self._loading.copy()
        for job_id, (job, done) in running[:2]:
            if job_id in loading:
                parts.append(f"job {job.id} {job.relative} loading model {loading[job_id]}")
                continue
            parts.append(f"job {job.id} {job.relative} {100 * done:.0f}%")
            eta = _eta(job, done)
            if eta is not None:
                parts.append(f"ETA {_clock(eta)}")
        if len(running) > 2:
            parts.append(f"{len(running) - 2} more running")
        if not running and not waiting:
            parts.append("idle")
        gate = self._gate()
        if gate.paused:
            parts.append("paused")
        for engine, reopens in sorted(gate.closed.items()):
            when = reopens.astimezone().strftime("%a %H:%M") if reopens else "further notice"
            parts.append(f"{engine} closed until {when}")
        return " · ".join(parts)

    def _run_counts(self, counts: dict[str, int]) -> list[str]:
        """``3 of 10 done`` (and ``1 failed``, ``1 cancelled`` when any): the jobs of this
        run are those that ended in it and those still to do."""
        finished = self._finished.copy()
        pending = sum(counts.get(s, 0) for s in ("queued", "retrying", "running"))
        done = finished.get("done", 0)
        parts = [f"{done} of {pending + sum(finished.values())} done"]
        parts += [f"{finished[o]} {o}" for o in ("failed", "cancelled") if finished.get(o)]
        return parts

    # --- jobs ----------------------------------------------------------------------------

    def job_started(self, job: Job) -> None:
        assert job.id is not None
        self._running[job.id] = (job, 0.0)
        self._had_pending = True  # a job shorter than a status refresh still drains
        self.liveness.job_started(job.id)
        if self.metrics is not None:
            self.metrics.job_started(job)
        # Said at once (a short job may be over before the next tick's refresh).
        self.notifier.status(self.status_line())

    def model_loading(self, job: Job, model: str) -> None:
        """The job's engine started loading a model (the first job, or the first after an
        idle unload): say so, and ask for ``model_load_seconds`` more.

        systemd honours EXTEND_TIMEOUT_USEC only while the unit starts or stops, or
        against ``RuntimeMaxSec=`` while it runs; a load at run time is otherwise
        allowed for by the watchdog, which waits ``model_load_seconds`` for a job's
        first step (``Liveness.load_seconds``), counted from here. Once the daemon is
        stopping no extension is asked for (the worker begins no load then, but one
        may have been told a moment before the stop)."""
        assert job.id is not None
        self.liveness.loading(job.id)
        if not self._stopping:
            self.notifier.extend_timeout(self.settings.model_load_seconds)
        # A local folder by its name (the whole path is in the log); a hub id as it is.
        self._loading[job.id] = Path(model).name if Path(model).is_absolute() else model
        self.notifier.status(self.status_line())

    def job_step(self, job: Job, done: float) -> None:
        assert job.id is not None
        self._running[job.id] = (job, done)
        self._loading.pop(job.id, None)
        self.liveness.step(job.id)

    def job_ended(self, claimed: Job, row: Job | None) -> None:
        """After an attempt: ``claimed`` as it was claimed, ``row`` as it is now (None
        when it could not be read)."""
        assert claimed.id is not None
        self._running.pop(claimed.id, None)
        self._loading.pop(claimed.id, None)
        self.liveness.job_ended(claimed.id)
        if row is not None:
            self._ended(row)
        # Show the change at the next tick; set after counting the job, so that tick's
        # refresh, which reads the queue afresh, sees it ended in both.
        self._last_status = 0.0

    def _ended(self, row: Job) -> None:
        outcome = OUTCOME_BY_STATE.get(row.state)
        if outcome in ("done", "failed", "cancelled"):
            self._finished[outcome] = self._finished.get(outcome, 0) + 1
        if self.metrics is not None and outcome is not None:
            self.metrics.job_ended(row, outcome)
        if row.state == "failed" and self.webhooks.wants("failed"):
            self.webhooks.send("failed", job_payload(row, self.host))
        elif row.state == "done" and self.webhooks.wants("done"):
            self.webhooks.send("done", job_payload(row, self.host))

    # --- metrics' live view -----------------------------------------------------------

    def _live(self) -> Any:
        from .metrics import Live

        gate = self._gate()
        jobs = self._running.copy().values()
        running = [(job.rule_name, job.engine, done) for job, done in jobs]
        windows: dict[str, bool] = {
            w.engine: w.engine not in gate.closed for w in self.settings.windows
        }
        return Live(
            counts=self.store.count_by_state(),
            running=running,
            paused=gate.paused,
            windows=windows,
        )

    def _write_textfile(self) -> None:
        assert self.metrics is not None and self.settings.metrics_textfile is not None
        try:
            self.metrics.write_textfile(self.settings.metrics_textfile)
        except OSError as exc:
            log.warning("cannot write metrics to %s: %s", self.settings.metrics_textfile, exc)


def _eta(job: Job, done: float) -> float | None:
    """Seconds left at the pace so far (None before 5 %: too early to tell)."""
    if done < 0.05 or job.started_at is None:
        return None
    elapsed = max(0.0, time.time() - job.started_at)
    return elapsed * (1 - done) / done


def _clock(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))
