"""Metrics: counters and hour-long histograms, live gauges read at scrape time, served
over real HTTP and written as a textfile."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

from daemon.metrics import Live, Metrics


@dataclass
class FakeRow:
    """A job row's fields as the metrics read them (a real row is tested end to end)."""

    rule_name: str = "people"
    engine: str = "diffusion"
    state: str = "done"
    attempts: int = 1
    created_at: float = 1000.0
    started_at: float | None = 1030.0
    finished_at: float | None = 1030.0 + 1500


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in:\n{text}")


def test_jobs_are_counted_by_rule_engine_and_outcome_with_buckets_up_to_an_hour() -> None:
    live = Live(
        counts={"queued": 4, "running": 1},
        running=[("people", "diffusion", 0.4)],
        paused=True,
        windows={"diffusion": False},
    )
    m = Metrics(lambda: live, "0.1.0", "cpu")
    row = FakeRow()
    m.job_started(row)
    m.job_ended(row, "done")
    m.job_ended(FakeRow(state="failed", rule_name="pets", engine="motion"), "failed")
    text = m.text()
    assert 'i2vd_jobs_finished_total{engine="diffusion",outcome="done",rule="people"} 1.0' in text
    assert 'i2vd_jobs_finished_total{engine="motion",outcome="failed",rule="pets"} 1.0' in text
    # 1500 s lands between the 900 and 1800 buckets: the default buckets stop at 10 s.
    assert 'i2vd_job_duration_seconds_bucket{engine="diffusion",le="900.0"} 0.0' in text
    assert 'i2vd_job_duration_seconds_bucket{engine="diffusion",le="1800.0"} 1.0' in text
    assert 'le="3600.0"' in text
    assert 'i2vd_job_queue_wait_seconds_bucket{engine="diffusion",le="30.0"} 1.0' in text
    assert sample(text, "i2vd_last_success_timestamp_seconds") == 2530.0
    assert 'i2vd_queue_jobs{state="queued"} 4.0' in text
    assert 'i2vd_running_job_progress{engine="diffusion",rule="people"} 0.4' in text
    assert "i2vd_paused 1.0" in text
    assert 'i2vd_window_open{engine="diffusion"} 0.0' in text
    assert "/" not in "".join(line.split(" ")[0] for line in text.splitlines() if "{" in line)


def test_gauges_are_read_fresh_at_each_scrape_over_http(tmp_path: Path) -> None:
    live = Live(counts={"queued": 1})
    m = Metrics(lambda: live, "0.1.0", "cpu")
    m.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{m.port}/metrics"
        first = urllib.request.urlopen(url, timeout=5).read().decode()
        live.counts = {"queued": 0, "done": 7}
        second = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        m.close()
    assert 'i2vd_queue_jobs{state="queued"} 1.0' in first
    assert 'i2vd_queue_jobs{state="done"} 7.0' in second


def test_the_textfile_is_replaced_whole(tmp_path: Path) -> None:
    m = Metrics(lambda: Live(), "0.1.0", "cpu")
    target = tmp_path / "textfile" / "i2vd.prom"
    m.write_textfile(target)
    m.job_ended(FakeRow(), "done")
    m.write_textfile(target)
    assert "i2vd_jobs_finished_total" in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["i2vd.prom"]
