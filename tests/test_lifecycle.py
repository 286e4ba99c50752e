"""What the daemon tells systemd and the terminal about its jobs, fed as the service
feeds it, on a real SQLite queue: the live progress line of ``run --once`` (this run's
jobs, done of total) and the notifications while a job's model loads."""

from __future__ import annotations

import io
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Layout
from daemon.control import Gate
from daemon.lifecycle import Lifecycle
from daemon.logs import ProgressLine
from daemon.notify import Notifier
from daemon.store import Job, JobStore
from store_procs import job_for


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    opened = JobStore(f"sqlite:///{tmp_path / 'queue.db'}")
    yield opened
    opened.close()


def lifecycle(
    layout: Layout, store: JobStore, out: io.StringIO | None, **settings: object
) -> Lifecycle:
    life = Lifecycle(
        layout.load(**settings),
        store,
        "host",
        lambda: Gate(paused=False),
        progress_line=ProgressLine(out) if out is not None else None,
    )
    life.notifier = Notifier({})  # whatever this test runs under, nothing is sent
    return life


def drawn(out: io.StringIO) -> str:
    """The progress line as the terminal shows it now (the last one drawn)."""
    return out.getvalue().rsplit("\r\x1b[K", 1)[-1]


def claim(store: JobStore) -> Job:
    job = store.claim("host:1")
    assert job is not None and job.id is not None
    return job


def end(life: Lifecycle, store: JobStore, job: Job) -> None:
    assert job.id is not None
    life.job_ended(job, store.get(job.id))
    life.tick()  # the next tick of the main loop draws the change


def test_the_progress_line_counts_this_runs_jobs_done_of_total(
    layout: Layout, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("daemon.lifecycle.STATUS_SECONDS", 0.0)  # each tick reads the queue
    for n in range(4):
        store.enqueue(job_for(n))
    out = io.StringIO()
    life = lifecycle(layout, store, out)
    life.tick()
    assert drawn(out) == "0 of 4 done"

    first = claim(store)
    life.job_started(first)
    life.job_step(first, 0.4)
    line = life.status_line()
    assert re.fullmatch(r"0 of 4 done · job 1 img0\.jpg 40% · ETA \d+:\d\d:\d\d", line), line
    store.finish(first.id or 0, None, {})
    end(life, store, first)
    assert drawn(out) == "1 of 4 done"

    second = claim(store)
    life.job_started(second)
    life.model_loading(second, "/srv/models/tiny-i2vgenxl")
    assert life.status_line() == "1 of 4 done · job 2 img1.jpg loading model tiny-i2vgenxl"
    life.job_step(second, 0.02)
    assert life.status_line() == "1 of 4 done · job 2 img1.jpg 2%"
    store.fail(second.id or 0, None, "broken", "drop it again", retry_at=None)
    end(life, store, second)
    # A failed job is one of this run's: it is not done, and it is said.
    assert drawn(out) == "1 of 4 done · 1 failed"

    store.enqueue(job_for(9))  # an image dropped during the run joins it
    life.tick()
    assert drawn(out) == "1 of 5 done · 1 failed"

    for _ in range(3):
        job = claim(store)
        life.job_started(job)
        store.finish(job.id or 0, None, {})
        end(life, store, job)
    assert drawn(out) == "4 of 5 done · 1 failed · idle"


def test_without_a_terminal_the_status_says_what_waits(layout: Layout, store: JobStore) -> None:
    """systemd's STATUS= (no progress line): the queue as it is, not this run's count."""
    for n in range(3):
        store.enqueue(job_for(n))
    life = lifecycle(layout, store, None)
    life.tick()
    assert life.status_line() == "3 queued"
    job = claim(store)
    life.job_started(job)
    store.finish(job.id or 0, None, {})
    end(life, store, job)
    assert life.status_line() == "2 queued"


def test_a_model_load_asks_for_more_time_and_says_so(
    layout: Layout, store: JobStore, tmp_path: Path
) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify.sock"))
    manager.settimeout(5)
    store.enqueue(job_for(1))
    life = lifecycle(layout, store, None, model_load_seconds=1234)
    life.notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        job = claim(store)
        life.job_started(job)
        assert manager.recv(4096).decode().startswith("STATUS=0 queued · job 1 img1.jpg")
        life.model_loading(job, "ali-vilab/i2vgen-xl")
        assert manager.recv(4096) == b"EXTEND_TIMEOUT_USEC=1234000000"
        status = manager.recv(4096).decode()
        assert status == "STATUS=0 queued · job 1 img1.jpg loading model ali-vilab/i2vgen-xl"
    finally:
        life.notifier.close()
        manager.close()


def test_a_model_load_during_the_stop_asks_for_no_more_time(
    layout: Layout, store: JobStore, tmp_path: Path
) -> None:
    """After SIGTERM systemd waits stall_seconds for the stop; a load told of then (one
    that began a moment before) must not stretch that to model_load_seconds."""
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify.sock"))
    manager.settimeout(5)
    store.enqueue(job_for(1))
    life = lifecycle(layout, store, None, model_load_seconds=1234, stall_seconds=56)
    life.notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        job = claim(store)
        life.job_started(job)
        assert manager.recv(4096).decode().startswith("STATUS=")
        life.stopping()
        assert manager.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
        assert manager.recv(4096) == b"EXTEND_TIMEOUT_USEC=56000000"
        life.model_loading(job, "ali-vilab/i2vgen-xl")
        status = manager.recv(4096).decode()  # only what it does, no extension
        assert status == "STATUS=0 queued · job 1 img1.jpg loading model ali-vilab/i2vgen-xl"
    finally:
        life.notifier.close()
        manager.close()
