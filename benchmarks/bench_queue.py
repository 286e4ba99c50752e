"""Speed of the shared queue: claims under concurrency, and drop-to-claim on an idle host.

Run from the repository root (PostgreSQL at I2VD_TEST_POSTGRES, default the local
server's `test` database; a scratch database is created and dropped):

    .venv/bin/python benchmarks/bench_queue.py             # the run in BENCHMARKS.md
    .venv/bin/python benchmarks/bench_queue.py --quick     # a smoke check

1. Claim throughput and latency: 10,000 jobs queued over 10 inboxes, then 1, 4 and 16
   worker processes (each with its own connections, as separate daemons) claim and
   finish jobs until ``--claims`` are done; the queue stays thousands deep throughout.
   Claims/s over the whole run, and each claim call's median and 95th percentile.
2. Drop to claim on an idle second host: one process queues a job now and then; an
   idle daemon loop in another process (the service's: claim, else wait up to 5 s for
   a wake-up) claims it. With LISTEN/NOTIFY (PostgreSQL) and with polling only. Both
   times are read from the database's clock.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from sqlalchemy.dialects.postgresql import insert as pg_insert  # noqa: E402
from sqlalchemy.dialects.sqlite import insert as sqlite_insert  # noqa: E402

from daemon.store import Job, JobStore  # noqa: E402
from daemon.wakeup import QueueListener  # noqa: E402
from pg import create_database, drop_database  # noqa: E402
from store_procs import job_for  # noqa: E402

IDLE_WAIT = 5.0  # the service's longest idle wait between polls


def fill(url: str, count: int, inboxes: int) -> None:
    """Queue ``count`` jobs in one transaction (intake's one-by-one path is not what is
    measured here)."""
    store = JobStore(url)
    insert = pg_insert if store.dialect == "postgresql" else sqlite_insert
    rows = [
        job_for(n, inbox=f"inbox{n % inboxes}").model_dump(exclude={"id"}) for n in range(count)
    ]
    with store.engine.begin() as conn:
        for start in range(0, count, 1000):
            conn.execute(insert(Job), rows[start : start + 1000])
    store.close()


def claimer(
    url: str, owner: str, start_at: float, stop_after: Any
) -> tuple[float, float, list[float]]:
    """Claim and finish until the shared counter reaches zero: when it began and ended
    (the database's clock) and each claim's seconds."""
    store = JobStore(url, migrate=False)
    latencies = []
    try:
        time.sleep(max(0.0, start_at - time.time()))
        began_at = store.now()
        while True:
            with stop_after.get_lock():
                if stop_after.value <= 0:
                    break
                stop_after.value -= 1
            began = time.perf_counter()
            job = store.claim(owner, None, 60)
            latencies.append(time.perf_counter() - began)
            if job is None or job.id is None:
                break
            store.finish(job.id, None, {}, owner=owner)
        ended_at = store.now()
    finally:
        store.close()
    return began_at, ended_at, latencies


def _report(results: Any, target: Any, *args: Any) -> None:
    results.put(target(*args))


def in_processes(calls: list[tuple[Any, ...]]) -> list[Any]:
    """Each (function, *args) in a spawned process of its own (synchronisation objects
    travel as process arguments); their results, in no particular order."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    procs = [context.Process(target=_report, args=(results, *call)) for call in calls]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=1800) for _ in procs]
    for proc in procs:
        proc.join()
    return out


def claim_round(url: str, workers: int, claims: int) -> dict[str, Any]:
    counter = multiprocessing.get_context("spawn").Value("i", claims)
    start_at = time.time() + 3.0 + 0.3 * workers  # once every interpreter is up
    results = in_processes(
        [(claimer, url, f"bench:{i}", start_at, counter) for i in range(workers)]
    )
    # From the first worker's start to the last one's end: a late-starting process
    # (16 interpreters on a small machine) does not count as claim time.
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    latencies = sorted(x for r in results for x in r[2])
    return {
        "workers": workers,
        "claims": len(latencies),
        "claims_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
    }


def idle_host(url: str, notify: bool, ready: Any, done: Any, expected: int) -> list[float]:
    """The service's idle loop on a second host; the claimed jobs' queue-to-claim times."""
    store = JobStore(url, migrate=False)
    wake = threading.Event()
    listener = QueueListener(url, wake.set) if notify else None
    if listener is not None:
        listener.start()
        listener.listening.wait(10)
    ready.set()
    waits = []
    try:
        while len(waits) < expected:
            job = store.claim("idle:2", None, 60)
            if job is None:
                wake.wait(IDLE_WAIT)
                wake.clear()
                continue
            assert job.id is not None and job.started_at is not None
            waits.append(job.started_at - job.not_before)
            store.finish(job.id, None, {}, owner="idle:2")
            done.set()
    finally:
        if listener is not None:
            listener.stop()
        store.close()
    return waits


def drop_to_claim(url: str, notify: bool, drops: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    store = JobStore(url)
    rng = random.Random(7)
    results: list[Any] = []
    host = threading.Thread(
        target=lambda: results.extend(in_processes([(idle_host, url, notify, ready, done, drops)]))
    )
    host.start()
    ready.wait(60)
    time.sleep(1.0)
    for n in range(drops):
        # Any moment of the idle daemon's wait, so polling is measured fairly.
        time.sleep(rng.uniform(0.0, IDLE_WAIT))
        done.clear()
        # not_before carries the moment of queueing, on the database's clock.
        store.enqueue(job_for(50_000 + n, inbox="drops", not_before=store.now()))
        done.wait(30)
    host.join(120)
    waits = results[0]
    store.close()
    return {
        "mode": "notify" if notify else "polling",
        "drops": len(waits),
        "median_s": statistics.median(waits),
        "max_s": max(waits),
    }


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True)
    return out.stdout.decode().strip() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, claims and drops")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=2_000, help="claims per round")
    parser.add_argument("--drops", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.claims, args.drops = 1000, 200, 3

    figures: dict[str, Any] = {
        "commit": git_commit(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "claims": [],
        "drop_to_claim": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for backend in ("sqlite", "postgresql"):
            for workers in (1, 4, 16):
                url = (
                    f"sqlite:///{scratch}/claims-{workers}.db"
                    if backend == "sqlite"
                    else create_database()
                )
                try:
                    fill(url, args.jobs, inboxes=10)
                    row = {"backend": backend, "queued": args.jobs}
                    row.update(claim_round(url, workers, args.claims))
                    figures["claims"].append(row)
                    print(json.dumps(row), flush=True)
                finally:
                    if backend == "postgresql":
                        drop_database(url)
        for backend, notify in (("postgresql", True), ("postgresql", False), ("sqlite", False)):
            url = f"sqlite:///{scratch}/drops.db" if backend == "sqlite" else create_database()
            try:
                row = {"backend": backend, **drop_to_claim(url, notify, args.drops)}
                figures["drop_to_claim"].append(row)
                print(json.dumps(row), flush=True)
            finally:
                if backend == "postgresql":
                    drop_database(url)
    figures["load_average"] = os.getloadavg()
    print(markdown(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


def markdown(figures: dict[str, Any]) -> str:
    lines = [
        f"commit `{figures['commit']}`, {figures['started']}, {figures['cpus']} CPUs, "
        f"load average at the end {', '.join(f'{x:.1f}' for x in figures['load_average'])}",
        "",
        "| backend | queued | workers | claims | claims/s | claim p50 | claim p95 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in figures["claims"]:
        lines.append(
            f"| {r['backend']} | {r['queued']:,} | {r['workers']} | {r['claims']:,} | "
            f"{r['claims_per_s']:.0f} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms |"
        )
    lines += [
        "",
        "| backend | wake-up | drops | median drop→claim | max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in figures["drop_to_claim"]:
        lines.append(
            f"| {r['backend']} | {r['mode']} | {r['drops']} | {r['median_s']:.3f} s | "
            f"{r['max_s']:.3f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
