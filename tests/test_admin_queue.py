"""The queue as the admin commands reach it (plain DB-API, admin_queue.py), run alike on
SQLite and PostgreSQL against a queue the daemon's own store (the ORM) writes.

Each test gets a fresh database of its own (``queue_url``): a SQLite file, or a new
PostgreSQL database that is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.admin_queue import AdminQueue, AlreadyQueued, CancelOutcome, JobKind
from daemon.dbapi import (
    Database,
    QueueDatabaseError,
    QueueUnavailable,
    SchemaMissing,
    UniqueViolation,
)
from daemon.host_paths import HostPaths
from daemon.records import (
    JOB_BOOL_COLUMNS,
    JOB_FILE_NAME_COLUMNS,
    ControlRecord,
    DaemonRecord,
    JobRecord,
)
from daemon.store import Capabilities, JobState, JobStore
from daemon.tables import Control, Daemon, FileName, Job
from daemon.wakeup import QueueListener
from store_procs import job_for


@pytest.fixture
def store(queue_url: str) -> Iterator[JobStore]:
    s = JobStore(queue_url)  # creates the schema, as a starting daemon does
    yield s
    s.close()


@pytest.fixture
def queue(store: JobStore) -> Iterator[AdminQueue]:
    with AdminQueue(store.url) as q:
        yield q


# --- the rows, read without the ORM -----------------------------------------------------


def test_the_plain_records_have_the_tables_columns() -> None:
    def names(record: type) -> set[str]:
        return {f.name for f in dataclasses.fields(record)}

    assert names(JobRecord) == set(Job.model_fields)
    assert names(DaemonRecord) == set(Daemon.model_fields)
    assert names(ControlRecord) == set(Control.model_fields)
    columns = Job.__table__.columns  # type: ignore[attr-defined]
    assert {c.name for c in columns if isinstance(c.type, FileName)} == JOB_FILE_NAME_COLUMNS
    assert {n for n, f in Job.model_fields.items() if f.annotation is bool} == JOB_BOOL_COLUMNS


def test_a_job_reads_the_same_through_the_orm_and_plain_dbapi(
    store: JobStore, queue: AdminQueue
) -> None:
    odd = os.fsdecode(b"caf\xe9 %41.jpg")  # not UTF-8, and a % that is no escape
    job = store.enqueue(
        job_for(
            1,
            source=f"/mnt/photos/{odd}",
            relative=odd,
            variant="wide",
            companions_json='["/mnt/photos/caf.txt"]',
            model="wan",
            memory_gb=12.5,
            size_bytes=5_000_000_000,
        )
    )
    assert job.id is not None
    store.claim("host:1")
    store.plan_outputs(job.id, "/out/a.mp4", None, "/out/orig.jpg", owner="host:1")
    store.record_video(job.id, 2**40, owner="host:1")
    store.keep_in_inbox(f"/mnt/photos/{odd}", job.sha256)
    store.heartbeat(job.id, "host:1", progress=0.25)
    assert queue.request_cancel(job.id) == CancelOutcome.REQUESTED
    orm, plain = store.get(job.id), queue.get(job.id)
    assert orm is not None and plain is not None
    for name in (f.name for f in dataclasses.fields(JobRecord)):
        assert getattr(plain, name) == getattr(orm, name), name
        assert type(getattr(plain, name)) is type(getattr(orm, name)), name
    assert plain.relative == odd and plain.cancel_requested is True
    assert plain.rule_data == {"name": "motion"} and plain.companions == ["/mnt/photos/caf.txt"]


def test_jobs_are_localized_to_this_hosts_folders(store: JobStore) -> None:
    job = store.enqueue(job_for(1))
    assert job.id is not None
    store.claim("host:1")
    store.host_paths = HostPaths({"photos": Path("/mnt/photos")}, Path("/srv/out"))
    store.plan_outputs(job.id, "/srv/out/img1.mp4", None, None, owner="host:1")
    here = HostPaths({"photos": Path("/Volumes/photos")}, Path("/Volumes/out"))
    with AdminQueue(store.url, here) as queue:
        plain = queue.get(job.id)
        assert plain is not None
        assert (plain.source, plain.inbox_root) == ("/Volumes/photos/img1.jpg", "/Volumes/photos")
        assert plain.video_path == "/Volumes/out/img1.mp4"
        assert [j.source for j in queue.list_jobs(["running"])] == ["/Volumes/photos/img1.jpg"]


def test_counts_listings_and_siblings(store: JobStore, queue: AdminQueue) -> None:
    a, b = store.enqueue_drop([job_for(1, variant="a"), job_for(1, variant="b")]).jobs
    other = store.enqueue(job_for(2))
    store.claim("host:1")
    assert queue.count_by_state() == {"queued": 2, "running": 1}
    assert [j.id for j in queue.list_jobs()] == [other.id, b.id, a.id]
    assert [j.id for j in queue.list_jobs(limit=1)] == [other.id]
    assert [j.id for j in queue.list_jobs([JobState.RUNNING])] == [a.id]
    assert [j.id for j in queue.list_jobs(["done", "failed"])] == []
    assert queue.list_jobs([]) == []  # no state asked for: no job (and no `IN ()`)
    plain_a = queue.get(a.id)  # type: ignore[arg-type]
    assert plain_a is not None and [j.id for j in queue.siblings(plain_a)] == [b.id]
    assert queue.get(9999) is None
    assert abs(queue.now() - store.now()) < 5


# --- retry and cancel -------------------------------------------------------------------


def test_list_retry_and_cancel(store: JobStore, queue: AdminQueue) -> None:
    waiting, running, failed = (store.enqueue(job_for(n)).id for n in range(3))
    assert waiting is not None and running is not None and failed is not None
    store.claim("a:1")  # waiting
    store.claim("a:1")  # running
    store.claim("a:1")  # failed
    store.requeue_interrupted(waiting, owner="a:1")
    store.fail(failed, None, "boom", "hint", retry_at=None, owner="a:1")

    retried = queue.retry(failed)
    assert retried is not None and (retried.state, retried.attempts, retried.error) == (
        "queued",
        0,
        None,
    )
    assert queue.retry(running) is None

    assert queue.request_cancel(waiting) == CancelOutcome.CANCELLED
    cancelled = store.get(waiting)
    assert cancelled is not None and cancelled.state == JobState.CANCELLED
    assert cancelled.finished_at is not None and abs(cancelled.finished_at - store.now()) < 5
    assert not store.cancel_requested(running)
    assert queue.request_cancel(running) == CancelOutcome.REQUESTED
    assert store.cancel_requested(running)  # what the running job's worker polls
    assert store.get(running).state == JobState.RUNNING  # type: ignore[union-attr]
    assert queue.request_cancel(waiting) == CancelOutcome.ENDED
    assert queue.request_cancel(9999) == CancelOutcome.NOT_FOUND
    assert queue.count_by_state() == {"queued": 1, "running": 1, "cancelled": 1}
    assert queue.retry(waiting) is not None  # a cancelled job comes back too


def test_retry_forgets_the_device_faults_of_a_job_that_broke_gpus(
    store: JobStore, queue: AdminQueue
) -> None:
    job = store.enqueue(job_for(1))
    assert job.id is not None
    for owner in ("a:1", "b:2"):
        store.claim(owner)
        store.hand_back_after_device_fault(job.id, owner, counted=True, limit=2)
    store.fail(job.id, None, "the graphics card failed", "hint", retry_at=None, owner="b:2")
    assert queue.get(job.id).device_faults == 2  # type: ignore[union-attr]
    retried = queue.retry(job.id)
    assert retried is not None and (retried.state, retried.device_faults) == ("queued", 0)


def test_retry_refuses_a_drop_already_queued_again(store: JobStore, queue: AdminQueue) -> None:
    first = store.enqueue(job_for(1))
    assert first.id is not None
    store.claim("a:1")
    store.fail(first.id, None, "boom", "hint", retry_at=None, owner="a:1")
    second = store.enqueue(job_for(1))  # the image was moved back into the inbox
    plain = queue.get(first.id)
    assert plain is not None and [j.id for j in queue.pending_twins(plain)] == [second.id]
    with pytest.raises(AlreadyQueued, match=f"as job {second.id}"):
        queue.retry(first.id)
    assert queue.get(first.id).state == "failed"  # type: ignore[union-attr]


# --- pause, and what no daemon can run ----------------------------------------------------


def test_pause_reaches_every_daemon_and_survives_restarts(queue_url: str) -> None:
    daemon = JobStore(queue_url)
    try:
        assert not daemon.control.get().paused
        with AdminQueue(queue_url) as admin:
            admin.pause("alice@desk", stop_running=True, reason="driver update")
            assert admin.control().paused
        state = daemon.control.get()  # as every daemon reads it
        assert (state.paused, state.pause_now, state.paused_by, state.reason) == (
            True,
            True,
            "alice@desk",
            "driver update",
        )
        assert state.paused_at is not None and abs(state.paused_at - daemon.now()) < 5
    finally:
        daemon.close()
    reopened = JobStore(queue_url)
    try:
        assert reopened.control.get().paused
        with AdminQueue(queue_url) as admin:
            admin.resume()
            assert admin.control() == ControlRecord(paused=False, paused_by="")
        assert not reopened.control.get().paused
    finally:
        reopened.close()


def test_pause_works_on_a_queue_whose_control_row_was_deleted(
    store: JobStore, queue: AdminQueue
) -> None:
    queue.db.write("DELETE FROM control")
    assert queue.control() == ControlRecord()  # not paused
    queue.pause("bob@desk")
    assert store.control.get().paused and store.control.get().paused_by == "bob@desk"


def test_jobs_no_live_daemon_can_run_are_reported(store: JobStore, queue: AdminQueue) -> None:
    store.enqueue(job_for(1))
    store.enqueue(job_for(2, engine="diffusion", model="wan", memory_gb=40.0))
    store.enqueue(job_for(3, engine="diffusion", model="wan", memory_gb=40.0))
    store.enqueue(job_for(4, engine="diffusion", model="svd", memory_gb=10.0))
    store.enqueue(job_for(5, inbox="scans"))
    assert queue.stranded(alive_within=60) == {
        JobKind("photos", "motion", "", 0.0): 1,
        JobKind("photos", "diffusion", "wan", 40.0): 2,
        JobKind("photos", "diffusion", "svd", 10.0): 1,
        JobKind("scans", "motion", "", 0.0): 1,
    }
    cpu = Capabilities(engines=("motion",), inboxes=("photos",))
    store.daemons.register("cpu:1", "cpu", 1, cpu)
    store.daemons.register("gpu:2", "gpu", 2, Capabilities(("diffusion",), memory_gb=24.0))
    assert queue.stranded(alive_within=60) == {
        JobKind("photos", "diffusion", "wan", 40.0): 2,
        JobKind("scans", "motion", "", 0.0): 1,
    }
    store.daemons.unregister("gpu:2")
    assert JobKind("photos", "diffusion", "svd", 10.0) in queue.stranded(alive_within=60)


# --- opening ----------------------------------------------------------------------------


def test_a_queue_no_daemon_has_created_says_so_before_changing_anything(queue_url: str) -> None:
    with pytest.raises(SchemaMissing):
        AdminQueue(queue_url)
    JobStore(queue_url).close()  # what `i2vd` does then: upgrade as a daemon would
    with AdminQueue(queue_url) as queue:
        assert queue.count_by_state() == {}


def test_a_queue_missing_a_column_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    JobStore(url).close()
    db = Database(url)
    db.write("ALTER TABLE daemon DROP COLUMN inboxes_json")  # as an older schema had it
    db.close()
    with pytest.raises(SchemaMissing, match="inboxes_json"):
        AdminQueue(url)


def test_a_queue_that_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(QueueUnavailable, match="unable to open"):
        AdminQueue(f"sqlite:///{tmp_path / 'no such folder' / 'i2vd.db'}")
    with pytest.raises(QueueUnavailable, match="must start with sqlite"):
        AdminQueue("mysql://db/i2vd")
    with pytest.raises(QueueUnavailable):
        AdminQueue("postgresql://nobody@127.0.0.1:1/i2vd")  # nothing listens on port 1


def open_files() -> set[str]:
    """What this process has open now (Linux)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone by now
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def test_a_file_that_is_no_database_is_not_left_open(tmp_path: Path) -> None:
    path = tmp_path / "i2vd.db"
    path.write_bytes(b"these are not the rows you are looking for\n" * 200)
    with pytest.raises(QueueUnavailable, match="not a database") as raised:
        Database(f"sqlite:///{path}")
    assert raised.value is not None  # still referenced, with its traceback
    assert str(path) not in open_files()


def test_only_a_unique_index_makes_a_unique_violation(store: JobStore, queue: AdminQueue) -> None:
    store.enqueue(job_for(1))
    with pytest.raises(QueueDatabaseError, match=r"(?i)null") as raised:
        queue.db.write("UPDATE job SET sha256 = NULL")  # a NOT NULL column
    assert not isinstance(raised.value, UniqueViolation)
    twin = store.enqueue(job_for(2))
    assert twin.id is not None
    with pytest.raises(UniqueViolation):  # the same drop pending twice
        queue.db.write(
            'UPDATE job SET relative = ?, sha256 = ?, "drop" = ? WHERE id = ?',
            ["img1.jpg", job_for(1).sha256, job_for(1).drop, twin.id],
        )


def test_a_sqlite_queue_is_opened_in_wal_mode_as_the_daemon_opens_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    JobStore(url).close()
    with AdminQueue(url) as queue:
        assert queue.db.rows("PRAGMA journal_mode") == [("wal",)]
        assert queue.db.rows("PRAGMA busy_timeout") == [(30000,)]


# --- wake-ups (PostgreSQL) ------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    from pg import create_database, drop_database

    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def test_retry_and_resume_wake_the_listening_daemons(pg_url: str) -> None:
    store = JobStore(pg_url)
    job = store.enqueue(job_for(1))
    assert job.id is not None
    store.claim("a:1")
    store.fail(job.id, None, "boom", "hint", retry_at=None, owner="a:1")
    woken = threading.Event()
    listener = QueueListener(pg_url, woken.set)
    listener.start()
    try:
        assert listener.listening.wait(10)
        time.sleep(0.2)
        woken.clear()  # the wake-up every (re)connect gives
        with AdminQueue(pg_url) as queue:
            queue.pause("a@b")
            assert not woken.wait(1.0)  # pausing gives no one work
            queue.resume()
            assert woken.wait(5)
            woken.clear()
            assert queue.retry(job.id) is not None
            assert woken.wait(5)
            woken.clear()
            assert queue.retry(job.id) is None  # nothing changed: no wake-up
            assert not woken.wait(1.0)
    finally:
        listener.stop()
        store.close()
