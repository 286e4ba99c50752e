"""Prometheus metrics: what the daemon did (counters, histograms) and what it is doing
(gauges read from the queue at scrape time).

Served on ``metrics_host:metrics_port`` while the daemon runs, or written to
``metrics_textfile`` (for node_exporter's textfile collector) by ``run --once`` and
on a timer. Labels are rule names, engines, outcomes and states, never file paths:
every path would be a new time series, and paths may be private.

Imported only when a metrics setting is on, so a daemon without metrics never loads
``prometheus_client``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds: a motion clip takes a few, a diffusion clip on a small GPU tens of minutes.
# The default buckets stop at 10 s, where every diffusion job would land in +Inf.
DURATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 2700, 3600, float("inf"))
# Waiting in the queue: seconds when idle, up to hours behind a closed window.
WAIT_BUCKETS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, float("inf"))
OUTCOMES = ("done", "failed", "retrying", "cancelled", "interrupted")


class EndedJob(Protocol):
    """What the metrics read from a job row after an attempt ended."""

    rule_name: str
    engine: str
    state: str
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None


@dataclass
class Live:
    """The daemon's state right now, read at each scrape."""

    counts: dict[str, int] = field(default_factory=dict)
    # (rule, engine, progress 0..1) of each job this daemon runs.
    running: list[tuple[str, str, float]] = field(default_factory=list)
    paused: bool = False
    # engine -> whether its schedule window is open (engines with windows only).
    windows: dict[str, bool] = field(default_factory=dict)


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], Live]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        live = self.read()
        depth = GaugeMetricFamily("i2vd_queue_jobs", "Jobs in the queue by state", labels=["state"])
        for state, count in sorted(live.counts.items()):
            depth.add_metric([state], count)
        yield depth
        progress = GaugeMetricFamily(
            "i2vd_running_job_progress",
            "Fraction done of each job this daemon is running",
            labels=["rule", "engine"],
        )
        for rule, engine, done in live.running:
            progress.add_metric([rule, engine], done)
        yield progress
        yield GaugeMetricFamily(
            "i2vd_paused", "1 while the queue is paused (i2vd pause)", value=int(live.paused)
        )
        window = GaugeMetricFamily(
            "i2vd_window_open", "1 while the engine's schedule window is open", labels=["engine"]
        )
        for engine, is_open in sorted(live.windows.items()):
            window.add_metric([engine], int(is_open))
        yield window

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class Metrics:
    """One daemon's metrics, in a registry of its own (no module-level state)."""

    def __init__(self, read_live: Callable[[], Live], version: str, device: str) -> None:
        self.registry = CollectorRegistry()
        self.finished = Counter(
            "i2vd_jobs_finished",
            "Job attempts that ended, by rule, engine and outcome",
            ["rule", "engine", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "i2vd_job_duration_seconds",
            "Time from claim to published outputs, for jobs that succeeded",
            ["engine"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "i2vd_job_queue_wait_seconds",
            "Time from queueing to the first claim",
            ["engine"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.last_success = Gauge(
            "i2vd_last_success_timestamp_seconds",
            "Unix time of the last job that succeeded (0: none since start)",
            registry=self.registry,
        )
        info = Gauge(
            "i2vd_info",
            "Version and device of this daemon",
            ["version", "device"],
            registry=self.registry,
        )
        info.labels(version, device).set(1)
        self.registry.register(_LiveCollector(read_live))
        self._server: Any = None
        self._lock = threading.Lock()

    def job_started(self, job: EndedJob) -> None:
        """A claim: the first one records how long the job waited."""
        if job.attempts <= 1 and job.started_at is not None:
            self.queue_wait.labels(job.engine).observe(max(0.0, job.started_at - job.created_at))

    def job_ended(self, job: EndedJob, outcome: str) -> None:
        """An attempt ended with ``outcome`` (one of OUTCOMES)."""
        self.finished.labels(job.rule_name, job.engine, outcome).inc()
        if outcome == "done" and job.started_at is not None and job.finished_at is not None:
            self.duration.labels(job.engine).observe(max(0.0, job.finished_at - job.started_at))
            self.last_success.set(job.finished_at)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a thread of its own. Raises OSError if the port is taken."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server

    @property
    def port(self) -> int | None:
        return int(self._server.server_port) if self._server is not None else None

    def write_textfile(self, path: Path) -> None:
        """Write the metrics for node_exporter atomically (it must never read half)."""
        data = generate_latest(self.registry)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".i2vd-metrics-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.chmod(tmp, 0o644)  # node_exporter runs as another user
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def text(self) -> str:
        return generate_latest(self.registry).decode()
