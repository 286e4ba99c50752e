"""The durable job queue on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.store import Job, JobState, JobStore


def make_job(
    n: int = 0,
    sha: str | None = None,
    rule: str = "motion",
    rule_hash: str = "h1",
    source: str | None = None,
    **extra: object,
) -> Job:
    return Job(
        source=source or f"/in/img{n}.jpg",
        inbox_root="/in",
        relative=f"img{n}.jpg",
        sha256=sha or f"{n:064x}",
        size_bytes=100 + n,
        rule_name=rule,
        rule_hash=rule_hash,
        rule_file=f"/rules/{rule}.yaml",
        rule_json=json.dumps({"name": rule}),
        engine="motion",
        **extra,
    )


@pytest.fixture
def db_url(queue_url: str) -> str:
    return queue_url


@pytest.fixture
def store(db_url: str) -> Iterator[JobStore]:
    s = JobStore(db_url)
    yield s
    s.close()


def test_enqueue_defaults(store: JobStore) -> None:
    job = store.enqueue(make_job(1))
    assert job.id is not None
    got = store.get(job.id)
    assert got is not None
    assert (got.state, got.attempts, got.not_before, got.progress) == ("queued", 0, 0.0, 0.0)
    assert got.lease_owner is None and got.started_at is None and got.finished_at is None
    assert got.rule_data == {"name": "motion"}
    assert got.size_bytes == 101
    assert store.get(9999) is None


def test_life_cycle(store: JobStore) -> None:
    job = store.enqueue(make_job(1))
    claimed = store.claim("host:1", now=100.0, lease_seconds=60)
    assert claimed is not None and claimed.id == job.id
    assert claimed.state == JobState.RUNNING
    assert (claimed.attempts, claimed.lease_owner, claimed.lease_expires) == (1, "host:1", 160.0)
    assert claimed.started_at == 100.0
    assert store.claim("host:1", now=100.0, lease_seconds=60) is None  # nothing else to run

    store.heartbeat(job.id, "host:1", now=130.0, lease_seconds=60, progress=0.5)
    got = store.get(job.id)
    assert got is not None and (got.lease_expires, got.progress) == (190.0, 0.5)
    # A heartbeat from someone who does not hold the lease changes nothing.
    store.heartbeat(job.id, "thief:9", now=500.0, lease_seconds=60, progress=0.9)
    got = store.get(job.id)
    assert got is not None and (got.lease_expires, got.progress) == (190.0, 0.5)

    store.plan_outputs(job.id, "/out/a.mp4", "/out/a.json", "/out/a.jpg")
    store.finish(job.id, now=150.0, timings={"total": 1.5})
    done = store.get(job.id)
    assert done is not None
    assert done.state == JobState.DONE
    assert (done.finished_at, done.progress, done.lease_owner, done.lease_expires) == (
        150.0,
        1.0,
        None,
        None,
    )
    assert json.loads(done.timings_json or "") == {"total": 1.5}
    assert (done.video_path, done.sidecar_path, done.source_dest) == (
        "/out/a.mp4",
        "/out/a.json",
        "/out/a.jpg",
    )
    assert store.claim("host:1", now=1000.0, lease_seconds=60) is None


def test_claim_order_is_oldest_first(store: JobStore) -> None:
    ids = [store.enqueue(make_job(n)).id for n in range(3)]
    late = store.enqueue(make_job(9, not_before=50.0)).id
    got = [store.claim("h:1", 100.0, 60) for _ in range(5)]
    assert [j.id if j else None for j in got] == [*ids, late, None]


def test_claim_orders_by_not_before_then_id(store: JobStore) -> None:
    a = store.enqueue(make_job(1, not_before=30.0)).id
    b = store.enqueue(make_job(2, not_before=10.0)).id
    c = store.enqueue(make_job(3, not_before=10.0)).id
    d = store.enqueue(make_job(4)).id
    order = [store.claim("h:1", 100.0, 60).id for _ in range(4)]  # type: ignore[union-attr]
    assert order == [d, b, c, a]


def test_claim_respects_not_before(store: JobStore) -> None:
    job = store.enqueue(make_job(1, not_before=200.0))
    assert store.claim("h:1", now=199.9, lease_seconds=60) is None
    assert store.next_due() == 200.0
    claimed = store.claim("h:1", now=200.0, lease_seconds=60)
    assert claimed is not None and claimed.id == job.id


def test_fail_with_retry_then_give_up(store: JobStore) -> None:
    job = store.enqueue(make_job(1))
    store.claim("h:1", 100.0, 60)
    state = store.fail(job.id, now=110.0, error="boom", hint="try later", retry_at=150.0)
    assert state == JobState.RETRYING
    got = store.get(job.id)
    assert got is not None
    assert (got.state, got.error, got.hint, got.not_before) == (
        "retrying",
        "boom",
        "try later",
        150.0,
    )
    assert (got.lease_owner, got.lease_expires, got.finished_at) == (None, None, None)
    assert store.pending() == 1
    assert store.next_due() == 150.0
    assert store.claim("h:1", 149.0, 60) is None
    again = store.claim("h:1", 150.0, 60)
    assert again is not None and again.id == job.id and again.attempts == 2

    state = store.fail(job.id, now=160.0, error="boom again", hint="give up", retry_at=None)
    assert state == JobState.FAILED
    failed = store.get(job.id)
    assert failed is not None
    assert (failed.state, failed.finished_at, failed.attempts, failed.error) == (
        "failed",
        160.0,
        2,
        "boom again",
    )
    assert store.claim("h:1", 10_000.0, 60) is None
    assert store.pending() == 0
    assert [j.id for j in store.failed_since(160.0)] == [job.id]
    assert store.failed_since(160.1) == []


def test_finish_clears_previous_error(store: JobStore) -> None:
    job = store.enqueue(make_job(1))
    store.claim("h:1", 100.0, 60)
    store.fail(job.id, 101.0, "boom", "hint", retry_at=101.0)
    store.claim("h:1", 102.0, 60)
    store.finish(job.id, 103.0, {}, duplicate_of=None)
    got = store.get(job.id)
    assert got is not None and (got.state, got.error, got.hint) == ("done", None, None)


def test_requeue_interrupted_refunds_the_attempt(store: JobStore) -> None:
    job = store.enqueue(make_job(1))
    store.claim("h:1", 100.0, 60)
    store.requeue_interrupted(job.id)
    got = store.get(job.id)
    assert got is not None
    assert (got.state, got.attempts, got.lease_owner, got.lease_expires) == (
        "queued",
        0,
        None,
        None,
    )
    again = store.claim("h:2", 101.0, 60)
    assert again is not None and again.id == job.id and again.attempts == 1
    store.requeue_interrupted(12345)  # unknown id: no error


def test_recover(store: JobStore) -> None:
    mine = store.enqueue(make_job(1)).id
    expired = store.enqueue(make_job(2)).id
    live_other = store.enqueue(make_job(3)).id
    similar_host = store.enqueue(make_job(4)).id
    waiting = store.enqueue(make_job(5)).id
    assert store.claim("me:11", 100.0, 1000).id == mine  # type: ignore[union-attr]
    assert store.claim("other:22", 100.0, 10).id == expired  # type: ignore[union-attr]
    assert store.claim("other:33", 100.0, 1000).id == live_other  # type: ignore[union-attr]
    assert store.claim("me2:44", 100.0, 1000).id == similar_host  # type: ignore[union-attr]

    store.heartbeat(mine, "me:11", 100.0, 1000, progress=0.5)  # its render had begun
    recovered = store.recover("me", now=200.0)
    assert sorted(j.id for j in recovered) == sorted([mine, expired])
    states = {i: store.get(i) for i in (mine, expired, live_other, similar_host, waiting)}
    assert states[mine].state == "queued" and states[mine].lease_owner is None  # type: ignore
    assert states[expired].state == "queued"  # type: ignore[union-attr]
    assert states[live_other].state == "running"  # type: ignore[union-attr]
    assert states[live_other].lease_owner == "other:33"  # type: ignore[union-attr]
    assert states[similar_host].state == "running"  # type: ignore[union-attr]
    assert states[waiting].state == "queued"  # type: ignore[union-attr]
    # Attempts of a job whose render had begun are not refunded by recovery.
    assert states[mine].attempts == 1  # type: ignore[union-attr]
    assert store.recover("me", now=200.0) == []


def test_recover_host_name_is_not_a_pattern(store: JobStore) -> None:
    other = store.enqueue(make_job(1)).id
    store.claim("webXnode:7", 100.0, 1000)
    assert store.recover("web_node", now=200.0) == []
    got = store.get(other)
    assert got is not None and got.state == "running"


def test_recover_running_without_lease(store: JobStore) -> None:
    job = store.enqueue(make_job(1, state=JobState.RUNNING, lease_owner="x:1"))
    assert [j.id for j in store.recover("me", now=0.0)] == [job.id]


def test_seen_and_find_done(store: JobStore) -> None:
    first = store.enqueue(make_job(1, sha="a" * 64, source="/in/x.jpg"))
    second = store.enqueue(make_job(2, sha="a" * 64, source="/in/x.jpg", rule="other"))
    store.enqueue(make_job(3, sha="b" * 64, source="/in/x.jpg"))
    seen = store.job_for_file("/in/x.jpg", "a" * 64)
    assert seen is not None and seen.id == second.id  # newest first
    assert store.job_for_file("/in/x.jpg", "c" * 64) is None
    assert store.job_for_file("/in/y.jpg", "a" * 64) is None

    assert store.find_done("a" * 64, "motion", "h1") == []  # not done yet
    for _ in range(2):
        store.claim("h:1", 100.0, 60)
    store.finish(first.id, 101.0, {})
    store.finish(second.id, 101.0, {})
    copy = store.enqueue(make_job(4, sha="a" * 64, source="/in/copy.jpg"))
    store.claim("h:1", 100.0, 60)
    store.claim("h:1", 100.0, 60)
    store.finish(copy.id, 102.0, {}, duplicate_of=first.id)

    done = store.find_done("a" * 64, "motion", "h1")
    assert [j.id for j in done] == [first.id, copy.id]  # oldest (the generated one) first
    assert [j.id for j in store.find_done("a" * 64, "motion", "h1", exclude=copy.id)] == [first.id]
    assert store.find_done("a" * 64, "motion", "h2") == []
    assert [j.id for j in store.find_done("a" * 64, "other", "h1")] == [second.id]
    assert store.get(copy.id).duplicate_of == first.id  # type: ignore[union-attr]


def test_counts(store: JobStore) -> None:
    assert store.count_by_state() == {}
    assert store.pending() == 0
    assert store.next_due() is None
    ids = [store.enqueue(make_job(n, not_before=float(n))).id for n in range(6)]
    store.claim("h:1", 100.0, 60)  # ids[0] running
    store.claim("h:1", 100.0, 60)  # ids[1]
    store.finish(ids[1], 100.0, {})
    store.claim("h:1", 100.0, 60)  # ids[2]
    store.fail(ids[2], 100.0, "e", "h", retry_at=500.0)
    store.claim("h:1", 100.0, 60)  # ids[3]
    store.fail(ids[3], 100.0, "e", "h", retry_at=None)
    assert store.count_by_state() == {
        "running": 1,
        "done": 1,
        "retrying": 1,
        "failed": 1,
        "queued": 2,
    }
    assert store.pending() == 4
    assert store.next_due() == 4.0  # ids[4] queued with not_before 4; retrying one at 500


def _claim_all(
    store: JobStore,
    owner: str,
    barrier: threading.Barrier,
    out: list[int],
    errors: list[BaseException],
) -> None:
    try:
        barrier.wait()
        while (job := store.claim(owner, 100.0, 60)) is not None:
            assert job.id is not None
            out.append(job.id)
    except BaseException as exc:
        errors.append(exc)


def _race(stores: list[JobStore], total: int) -> list[list[int]]:
    results: list[list[int]] = [[] for _ in stores]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))
    threads = [
        threading.Thread(target=_claim_all, args=(s, f"h:{i}", barrier, results[i], errors))
        for i, s in enumerate(stores)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    claimed = [i for r in results for i in r]
    assert len(claimed) == len(set(claimed)) == total
    return results


def test_claim_is_atomic_across_threads(store: JobStore) -> None:
    ids = {store.enqueue(make_job(n)).id for n in range(50)}
    results = _race([store, store, store, store], 50)
    assert {i for r in results for i in r} == ids
    assert store.count_by_state() == {"running": 50}
    assert all(store.get(i).attempts == 1 for i in ids)  # type: ignore[union-attr]


def test_claim_is_atomic_across_store_instances(db_url: str, store: JobStore) -> None:
    ids = {store.enqueue(make_job(n)).id for n in range(50)}
    others = [JobStore(db_url) for _ in range(3)]
    try:
        results = _race([store, *others], 50)
    finally:
        for other in others:
            other.close()
    assert {i for r in results for i in r} == ids
    owners = {store.get(i).lease_owner for r in results for i in r}  # type: ignore[union-attr]
    assert owners <= {"h:0", "h:1", "h:2", "h:3"}
    # Each job's lease names the worker that got it.
    for index, claimed in enumerate(results):
        for job_id in claimed:
            assert store.get(job_id).lease_owner == f"h:{index}"  # type: ignore[union-attr]


def test_wal_mode_and_durability(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'queue.db'}"
    store = JobStore(db_url)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    job = store.enqueue(make_job(7))
    store.close()
    raw = sqlite3.connect(tmp_path / "queue.db")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT state, relative FROM job").fetchall() == [("queued", "img7.jpg")]
    finally:
        raw.close()
    reopened = JobStore(db_url)
    try:
        got = reopened.get(job.id)
        assert got is not None and got.sha256 == f"{7:064x}"
    finally:
        reopened.close()


def test_source_stuck_flag(store: JobStore) -> None:
    job = store.enqueue(make_job(1)).id
    assert store.get(job).source_stuck is False  # type: ignore[union-attr]
    store.claim("h:1", 100.0, 60)
    store.fail(job, 101.0, "e", "h", retry_at=None)
    assert store.get(job).source_stuck is False  # type: ignore[union-attr]
    row = store.get(job)
    assert row is not None
    store.keep_in_inbox(row.source, row.sha256)
    assert store.get(job).source_stuck is True  # type: ignore[union-attr]


def test_a_worker_that_lost_its_lease_cannot_change_the_job(store: JobStore) -> None:
    job = store.enqueue(make_job(1))
    assert job.id is not None
    store.claim("a:1", now=100.0, lease_seconds=10)
    # a:1 stalls; its lease runs out and the job is recovered and claimed by b:2.
    assert [j.id for j in store.recover(None, now=200.0)] == [job.id]
    store.claim("b:2", now=200.0, lease_seconds=10)
    assert store.finish(job.id, 201.0, {}, owner="a:1") is False
    store.fail(job.id, 201.0, "late", "x", retry_at=None, owner="a:1")
    row = store.get(job.id)
    assert row is not None and row.state == "running" and row.lease_owner == "b:2"
    assert store.finish(job.id, 202.0, {}, owner="b:2") is True
    assert store.get(job.id).state == "done"  # type: ignore[union-attr]


def test_periodic_recovery_leaves_live_leases_alone(store: JobStore) -> None:
    """recover(None, now) is the timer's: only expired leases, whatever the host."""
    live = store.enqueue(make_job(1))
    expired = store.enqueue(make_job(2))
    store.claim("me:1", now=100.0, lease_seconds=1000)  # live until 1100
    store.claim("me:1", now=100.0, lease_seconds=10)  # expired at 110
    recovered = store.recover(None, now=500.0)
    assert [j.id for j in recovered] == [expired.id]
    assert store.get(live.id).state == "running"  # type: ignore[arg-type,union-attr]


def test_recovery_skips_a_lease_renewed_since_it_was_read(store: JobStore) -> None:
    job = store.enqueue(make_job(1))
    store.claim("other:9", now=100.0, lease_seconds=10)
    store.heartbeat(job.id, "other:9", now=150.0, lease_seconds=1000)  # type: ignore[arg-type]
    assert store.recover(None, now=200.0) == []
