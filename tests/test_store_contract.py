"""The queue's contract, run alike on SQLite and PostgreSQL: several daemons on one queue.

Each test gets a fresh database of its own (``queue_url``): a SQLite file, or a new
PostgreSQL database that is dropped afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conftest import wait_for
from daemon.admin_queue import AdminQueue, CancelOutcome
from daemon.store import Capabilities, DeviceFaults, JobState, JobStore
from daemon.tables import DaemonState
from daemon.wakeup import QueueListener
from store_procs import claim_all, enqueue_all, job_for, open_store, run_in_processes


@pytest.fixture
def store(queue_url: str) -> Iterator[JobStore]:
    s = JobStore(queue_url)
    yield s
    s.close()


def _in_threads(count: int, work: object) -> list[object]:
    """Run ``work(i)`` on ``count`` threads released together; results by index."""
    results: list[object] = [None] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


# --- intake is idempotent ---------------------------------------------------------


def test_one_drop_seen_by_many_daemons_at_once_is_queued_once(queue_url: str) -> None:
    stores = [JobStore(queue_url) for _ in range(6)]
    try:
        results = _in_threads(
            6, lambda i: stores[i].enqueue_drop([job_for(1, variant="a"), job_for(1, variant="b")])
        )
    finally:
        for s in stores[1:]:
            s.close()
    store = stores[0]
    try:
        assert sum(r.new for r in results) == 1  # type: ignore[attr-defined]
        ids = {tuple(j.id for j in r.jobs) for r in results}  # type: ignore[attr-defined]
        assert len(ids) == 1  # every daemon was told about the same two jobs
        rows = store.list_jobs()
        assert len(rows) == 2 and {j.variant for j in rows} == {"a", "b"}
        assert len({j.drop for j in rows}) == 1  # both variants of one drop, never split
    finally:
        store.close()


def test_processes_queue_each_drop_once(queue_url: str) -> None:
    JobStore(queue_url).close()  # the schema first: this test is about intake
    results = run_in_processes(enqueue_all, [(queue_url, 25)] * 4)
    store = JobStore(queue_url)
    try:
        assert store.count_by_state() == {"queued": 50}
        for n in range(25):
            answers = [r[n] for r in results]
            assert sum(new for _, new in answers) == 1
            assert len({job_id for job_id, _ in answers}) == 1
    finally:
        store.close()


def test_the_key_is_inbox_path_content_rule_and_variant(store: JobStore) -> None:
    first = store.enqueue(job_for(1))
    assert store.enqueue(job_for(1)).id == first.id
    others = [
        job_for(1, inbox="clients"),
        job_for(1, relative="sub/img1.jpg"),
        job_for(1, sha256="f" * 64),
        job_for(1, rule_hash="h2"),
        job_for(1, variant="calm"),
    ]
    assert len({store.enqueue(j).id for j in others} | {first.id}) == 6


def test_a_drop_that_ended_may_be_dropped_again(store: JobStore) -> None:
    first = store.enqueue(job_for(1))
    assert first.id is not None
    store.claim("a:1")
    store.finish(first.id, None, {}, owner="a:1")
    again = store.enqueue(job_for(1))
    assert again.id != first.id and again.state == JobState.QUEUED


# --- claims -------------------------------------------------------------------------


def test_processes_claim_each_job_once(queue_url: str) -> None:
    store = JobStore(queue_url)
    ids = {store.enqueue(job_for(n, inbox=f"in{n % 3}")).id for n in range(120)}
    store.close()
    results = run_in_processes(claim_all, [(queue_url, f"h:{i}") for i in range(4)])
    claimed = [i for r in results for i in r]
    assert len(claimed) == len(set(claimed)) == 120
    assert set(claimed) == ids


def test_round_robin_across_inboxes_then_priority_then_age(store: JobStore) -> None:
    a = [store.enqueue(job_for(n, inbox="alice")).id for n in range(4)]
    b = [store.enqueue(job_for(10 + n, inbox="bob")).id for n in range(2)]
    urgent = store.enqueue(job_for(20, inbox="bob", priority=5)).id
    c = store.enqueue(job_for(30, inbox="carol")).id
    order = [store.claim("h:1", None, 60).id for _ in range(8)]  # type: ignore[union-attr]
    # None served yet: bob's urgent job leads (priority), then alice's oldest, carol's;
    # then round the inboxes again, the one served longest ago first.
    assert order == [urgent, a[0], c, b[0], a[1], b[1], a[2], a[3]]
    assert store.claim("h:1", None, 60) is None


def test_fairness_holds_with_a_late_inbox(store: JobStore) -> None:
    for n in range(50):
        store.enqueue(job_for(n, inbox="bulk"))
    for _ in range(10):
        store.claim("h:1")
    late = store.enqueue(job_for(99, inbox="small")).id
    got = store.claim("h:1")
    assert got is not None and got.id == late  # 40 bulk jobs wait; the newcomer goes next


def test_routing_by_engine_model_and_memory(store: JobStore) -> None:
    motion = store.enqueue(job_for(1)).id
    wan = store.enqueue(job_for(2, engine="diffusion", model="wan", memory_gb=20.0)).id
    svd = store.enqueue(job_for(3, engine="diffusion", model="svd", memory_gb=10.0)).id
    cpu = Capabilities(engines=("motion",))
    small_gpu = Capabilities(engines=("diffusion",), memory_gb=12.0)
    only_wan = Capabilities(engines=("diffusion",), models=("wan",), memory_gb=80.0)

    assert store.claim("gpu:1", can_run=Capabilities(engines=())) is None
    got = store.claim("gpu:1", can_run=small_gpu)
    assert got is not None and got.id == svd  # the 20 GiB job does not fit here
    assert store.claim("gpu:1", can_run=small_gpu) is None
    got = store.claim("cpu:1", can_run=cpu)
    assert got is not None and got.id == motion
    assert store.claim("cpu:1", can_run=cpu) is None
    got = store.claim("big:1", can_run=only_wan)
    assert got is not None and got.id == wan


def test_routing_by_inbox(store: JobStore) -> None:
    photos = store.enqueue(job_for(1, inbox="photos")).id
    scans = store.enqueue(job_for(2, inbox="scans")).id
    only_scans = Capabilities(engines=("motion",), inboxes=("scans",))
    got = store.claim("scanner-host:1", can_run=only_scans)
    assert got is not None and got.id == scans
    assert store.claim("scanner-host:1", can_run=only_scans) is None
    got = store.claim("other:2", can_run=Capabilities(engines=("motion",)))
    assert got is not None and got.id == photos


# --- leases run on the database's clock ----------------------------------------------


def test_a_host_clock_an_hour_off_changes_nothing(
    store: JobStore, queue_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = store.enqueue(job_for(1))
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    claimed = store.claim("fast:1", None, lease_seconds=30)
    assert claimed is not None and claimed.lease_expires is not None
    db_now = store.now()
    assert abs(claimed.lease_expires - (db_now + 30)) < 5
    # Another daemon, its clock an hour behind, sees a live lease either way.
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    other = JobStore(queue_url)
    try:
        assert other.recover(None) == []
        assert other.claim("slow:2") is None
        assert other.get(job.id).state == JobState.RUNNING  # type: ignore[arg-type,union-attr]
    finally:
        other.close()


def test_an_expired_lease_is_recovered_by_any_live_daemon(store: JobStore) -> None:
    job = store.enqueue(job_for(1))
    store.claim("dead:1", None, lease_seconds=4)
    store.heartbeat(job.id, "dead:1", None, 4, progress=0.5)  # type: ignore[arg-type]  # rendering
    assert store.recover(None) == []  # still live
    time.sleep(4.3)
    assert [j.id for j in store.recover(None)] == [job.id]
    again = store.claim("live:2", None, 60)
    assert again is not None and again.id == job.id and again.attempts == 2


def test_fencing_a_daemon_that_lost_its_lease_is_told_so(store: JobStore) -> None:
    job = store.enqueue(job_for(1))
    assert job.id is not None
    store.claim("slow:1", None, lease_seconds=2)
    assert store.still_owns(job.id, "slow:1", lease_seconds=2)
    assert not store.still_owns(job.id, "other:2")
    time.sleep(2.3)
    store.recover(None)
    store.claim("fast:2", None, 60)
    # The stalled daemon wakes up before publishing: the fence says no, and none of
    # its writes land.
    assert not store.still_owns(job.id, "slow:1")
    assert not store.heartbeat(job.id, "slow:1", None, 60, progress=0.9)
    assert not store.finish(job.id, None, {}, owner="slow:1")
    row = store.get(job.id)
    assert row is not None and (row.state, row.lease_owner, row.progress) == (
        "running",
        "fast:2",
        0.0,
    )
    assert store.still_owns(job.id, "fast:2")
    assert store.finish(job.id, None, {}, owner="fast:2")
    assert not store.still_owns(job.id, "fast:2")  # a finished job is nobody's to publish


def test_retry_in_waits_on_the_database_clock(store: JobStore) -> None:
    job = store.enqueue(job_for(1))
    assert job.id is not None
    store.claim("a:1")
    store.fail(job.id, None, "boom", "later", retry_at=None, owner="a:1", retry_in=4)
    row = store.get(job.id)
    assert row is not None and row.state == JobState.RETRYING
    assert abs(row.not_before - (store.now() + 4)) < 2
    assert store.claim("a:1") is None
    time.sleep(4.3)
    assert store.claim("a:1") is not None


def test_device_faults_are_counted_only_when_asked_and_the_cap_leaves_the_job_running(
    store: JobStore,
) -> None:
    job = store.enqueue(job_for(1))
    assert job.id is not None

    def faults(owner: str, counted: bool) -> DeviceFaults | None:
        claimed = store.claim(owner)
        assert claimed is not None and claimed.id == job.id
        return store.hand_back_after_device_fault(job.id, owner, counted, limit=3)

    assert faults("a:1", counted=True) == DeviceFaults(1, cap_reached=False)
    row = store.get(job.id)
    assert row is not None and (row.state, row.attempts, row.lease_owner) == ("queued", 0, None)
    assert faults("b:2", counted=False) == DeviceFaults(1, cap_reached=False)  # the GPU's
    assert faults("c:3", counted=True) == DeviceFaults(2, cap_reached=False)
    assert store.get(job.id).attempts == 0  # type: ignore[union-attr]  # faults use none

    assert faults("d:4", counted=True) == DeviceFaults(3, cap_reached=True)
    # Still running and leased, with the attempt it ends on: its worker fails it.
    row = store.get(job.id)
    assert row is not None and (row.state, row.lease_owner, row.attempts) == ("running", "d:4", 1)
    assert row.device_faults == 3
    assert store.fail(job.id, None, "gpu", "hint", retry_at=None, owner="d:4") == "failed"


def test_a_fault_not_counted_never_reaches_the_cap(store: JobStore) -> None:
    """A job over a lowered limit is failed only by a fault of its own."""
    job = store.enqueue(job_for(1))
    assert job.id is not None
    for owner in ("a:1", "b:2"):
        store.claim(owner)
        store.hand_back_after_device_fault(job.id, owner, counted=True, limit=5)
    store.claim("c:3")
    assert store.hand_back_after_device_fault(job.id, "c:3", False, limit=1) == DeviceFaults(
        2, cap_reached=False
    )
    assert store.get(job.id).state == "queued"  # type: ignore[union-attr]


def test_a_device_fault_of_a_daemon_that_lost_its_lease_changes_nothing(store: JobStore) -> None:
    job = store.enqueue(job_for(1))
    assert job.id is not None
    store.claim("slow:1", None, lease_seconds=2)
    time.sleep(2.3)
    store.recover(None)
    store.claim("fast:2", None, 60)
    with AdminQueue(store.url) as queue:
        assert queue.request_cancel(job.id) == CancelOutcome.REQUESTED
    assert store.hand_back_after_device_fault(job.id, "slow:1", True, limit=1) is None
    row = store.get(job.id)
    assert row is not None and (row.state, row.lease_owner, row.device_faults) == (
        "running",
        "fast:2",
        0,
    )
    # The holder's own fault hands it back, its cancel request cleared like a shutdown's.
    assert store.hand_back_after_device_fault(job.id, "fast:2", True, limit=3) == DeviceFaults(
        1, cap_reached=False
    )
    row = store.get(job.id)
    assert row is not None and (row.state, row.cancel_requested) == ("queued", False)


# --- the daemon registry --------------------------------------------------------------
# (What the admin commands do to the queue, listing included: test_admin_queue.py.)


def test_daemon_registry_judges_liveness_by_the_database_clock(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    gpu = Capabilities(engines=("diffusion",), models=("wan",), memory_gb=24.0)
    store.daemons.register("gpu1:10", "gpu1", 10, gpu, version="0.2.0", device="cuda:0")
    store.daemons.register("cpu1:20", "cpu1", 20, Capabilities(engines=("motion",)))
    assert store.daemons.heartbeat("gpu1:10", DaemonState.FAULTED, "device lost", job_id=None)
    assert not store.daemons.heartbeat("gone:1")
    time.sleep(3)
    store.daemons.heartbeat("cpu1:20", job_id=7)

    assert [d.id for d in store.daemons.alive(within=2.5)] == ["cpu1:20"]
    assert [d.id for d in store.daemons.alive(within=60)] == ["cpu1:20", "gpu1:10"]
    with AdminQueue(store.url) as queue:  # the registry as `i2vd status` lists it
        listing = queue.daemons(alive_within=2.5)
    assert [(s.daemon.id, s.alive) for s in listing] == [("cpu1:20", True), ("gpu1:10", False)]
    gpu_row = listing[1].daemon
    assert (gpu_row.state, gpu_row.reason, gpu_row.engines, gpu_row.models) == (
        "faulted",
        "device lost",
        ["diffusion"],
        ["wan"],
    )
    assert (gpu_row.memory_gb, gpu_row.device, gpu_row.version) == (24.0, "cuda:0", "0.2.0")
    assert gpu_row.capabilities == gpu and listing[0].daemon.inboxes is None
    assert 3 <= listing[1].silent_for < 60
    assert listing[0].daemon.job_id == 7 and listing[0].daemon.models is None

    store.daemons.unregister("cpu1:20")
    assert [d.id for d in store.daemons.alive(within=60)] == ["gpu1:10"]
    assert store.daemons.forget_silent(longer_than=0.1) == 1
    assert store.daemons.alive(within=3600) == []


def test_a_heartbeat_says_paused_or_running_but_a_faulted_daemon_stays_faulted(
    store: JobStore,
) -> None:
    """The service's timer says paused or running; faulted is the worker's, kept with
    its reason until the worker itself says the GPU works again."""
    store.daemons.register("gpu:1", "gpu", 1, Capabilities(("diffusion",)))
    store.daemons.register("cpu:2", "cpu", 2, Capabilities(("motion",)), state=DaemonState.PAUSED)
    assert store.daemons.heartbeat("gpu:1", DaemonState.FAULTED, "device lost")

    def states() -> list[tuple[str, str]]:
        daemons = sorted(store.daemons.alive(within=60), key=lambda d: d.id)
        return [(d.state, d.reason) for d in daemons]

    assert states() == [("paused", ""), ("faulted", "device lost")]
    for daemon_id in ("gpu:1", "cpu:2"):
        assert store.daemons.heartbeat(daemon_id, DaemonState.RUNNING, keep=DaemonState.FAULTED)
    assert states() == [("running", ""), ("faulted", "device lost")]
    for daemon_id in ("gpu:1", "cpu:2"):
        store.daemons.heartbeat(daemon_id, DaemonState.PAUSED, "", keep=DaemonState.FAULTED)
    assert states() == [("paused", ""), ("faulted", "device lost")]
    assert not store.daemons.heartbeat("gone:3", DaemonState.PAUSED, keep=DaemonState.FAULTED)
    store.daemons.heartbeat("gpu:1", DaemonState.RUNNING, "")  # the GPU works again
    assert states() == [("paused", ""), ("running", "")]


# --- the schema -----------------------------------------------------------------------


def test_daemons_opening_a_new_queue_at_once_all_succeed(queue_url: str) -> None:
    results = run_in_processes(open_store, [(queue_url,)] * 5)
    assert results == ["{}"] * 5


# --- wake-ups (PostgreSQL) ------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    from pg import create_database, drop_database

    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def test_notify_wakes_a_listening_daemon_at_once(pg_url: str) -> None:
    store = JobStore(pg_url)
    woken = threading.Event()
    listener = QueueListener(pg_url, woken.set)
    listener.start()
    try:
        assert listener.listening.wait(10)
        woken.clear()  # the wake-up every (re)connect gives
        started = time.monotonic()
        store.enqueue(job_for(1))
        assert woken.wait(5)
        assert time.monotonic() - started < 2
        # A job coming back to the queue wakes it too.
        woken.clear()
        job = store.claim("a:1")
        assert job is not None and job.id is not None and not woken.wait(1.5)
        store.requeue_interrupted(job.id, owner="a:1")
        assert woken.wait(5)
    finally:
        listener.stop()
        store.close()


def test_a_listener_survives_its_connection_being_killed(pg_url: str) -> None:
    store = JobStore(pg_url)
    woken = threading.Event()
    listener = QueueListener(pg_url, woken.set, retry_seconds=0.2)
    listener.start()
    try:
        assert listener.listening.wait(10)
        with store.engine.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%%' AND datname = current_database()"
            )
            conn.commit()
        wait_for(lambda: listener.listening.is_set() and woken.is_set(), timeout=10)
        woken.clear()
        store.enqueue(job_for(2))
        assert woken.wait(5)
    finally:
        listener.stop()
        store.close()
