"""Does the status page slow jobs down? Per-job time outside the engine and the encoder,
with the page on and off, while a burst of small images drains.

Run from the repository root:

    .venv/bin/python benchmarks/bench_status_page.py              # 1,000 images, page on/off
    .venv/bin/python benchmarks/bench_status_page.py --count 100  # a smoke check

Each burst is the spine benchmark's (figure 3): ``count`` different 64x64 PNGs renamed
into the inbox of a real daemon (``python -m daemon run``) at once, a 256p 8-frame
motion rule. Per job, from its queue row: claim to finish (``finished_at -
started_at``) less the sidecar's ``load``, ``generate`` and ``encode`` (``encode``
includes the ffprobe verify). Bursts alternate page on / page off, so the two sides
share the machine's noise; the comparison is the ratio of their medians in this run.
The in-process cost of one page refresh with ``count`` queued jobs is timed as well.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spine import (
    SETTLE,
    TINY_RULE,
    Daemon,
    db_rows,
    encoded,
    make_layout,
    make_sentinel,
    wait_until,
)

from daemon.config import load_settings
from daemon.intake import Intake
from daemon.queue_view import RUNNING
from daemon.rules import load_rules
from daemon.status_page import StatusPages
from daemon.store import JobStore


def burst(
    work: Path, sentinel: Path, count: int, page: bool, drain_timeout: float
) -> dict[str, Any]:
    root = work / f"burst-{'on' if page else 'off'}-{time.monotonic_ns()}"
    config = make_layout(root, "tiny", TINY_RULE)
    values = yaml.safe_load(config.read_text())
    values["status_page"] = page
    config.write_text(yaml.safe_dump(values))
    staging = root / "staging"
    staging.mkdir()
    for index in range(count):
        (staging / f"s-{index:04d}.png").write_bytes(encoded(64, 64, 10_000 + index, "PNG"))
    daemon = Daemon(root, config, sentinel)
    daemon.wait_started()
    inbox, page_file = root / "inbox", root / "inbox" / "i2vd-status.json"
    page_writes: set[int] = set()
    try:
        time.sleep(0.5)
        for path in sorted(staging.iterdir()):
            os.rename(path, inbox / path.name)

        def drained() -> bool:
            if page_file.exists():
                page_writes.add(page_file.stat().st_mtime_ns)
            done = db_rows(root, "SELECT count(*) FROM job WHERE state IN ('done', 'failed')")
            return int(done[0][0]) >= count

        finished = wait_until(drained, drain_timeout, 0.25)
    finally:
        daemon.stop()
    rows = db_rows(
        root,
        "SELECT started_at, finished_at, timings_json FROM job WHERE state = 'done' "
        "ORDER BY started_at",
    )
    overhead = []
    for started, ended, timings_json in rows:
        timings = json.loads(timings_json)
        engine = timings.get("load", 0) + timings.get("generate", 0) + timings.get("encode", 0)
        overhead.append(ended - started - engine)
    return {
        "page": page,
        "drained": finished is not None,
        "done": len(rows),
        "overhead": overhead,
        "page_writes_seen": len(page_writes),
    }


def refresh_cost(work: Path, count: int) -> dict[str, float]:
    """One page refresh (queue read, both pages and their JSON written) with ``count``
    jobs waiting, in this process."""
    root = work / "refresh"
    config = make_layout(root, "tiny", TINY_RULE)
    settings = load_settings(config)
    store = JobStore(settings.database_url)
    rules, _ = load_rules(settings.rules_dir)
    intake = Intake(store, lambda: rules, settings.failed_dir, settings.max_attempts)
    for index in range(count):
        path = settings.inbox[0] / f"q-{index:04d}.png"
        path.write_bytes(encoded(64, 64, 20_000 + index, "PNG"))
        intake.take(settings.inbox[0], path)
    pages = StatusPages(settings, store)
    times = []
    for round_ in range(7):
        t0 = time.perf_counter()
        pages.refresh(time.time() + round_ * 100, RUNNING, force=True)
        times.append(time.perf_counter() - t0)
    store.close()
    return {"median": statistics.median(times), "max": max(times)}


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (
        f"median {statistics.median(values) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
        f"max {max(values) * 1000:.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="page on/off pairs")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="i2vd-bench-status-") as folder:
        work = Path(folder)
        sentinel = make_sentinel(work / "sentinel")
        cost = refresh_cost(work, args.count)
        runs = []
        for round_ in range(args.rounds):
            order = (True, False) if round_ % 2 == 0 else (False, True)
            for page in order:
                runs.append(burst(work, sentinel, args.count, page, args.drain_timeout))
                print(f"burst page={'on' if page else 'off'}: done {runs[-1]['done']}", flush=True)
    on = [v for r in runs if r["page"] for v in r["overhead"]]
    off = [v for r in runs if not r["page"] for v in r["overhead"]]
    first_on = [v for r in runs if r["page"] for v in r["overhead"][: args.count // 10]]
    print(f"\n{args.count} images a burst, {args.rounds} burst(s) each way, settle {SETTLE} s")
    print(
        f"page refresh with {args.count} waiting: median {cost['median'] * 1000:.1f} ms, "
        f"max {cost['max'] * 1000:.1f} ms"
    )
    print(f"per-job overhead, page on : {summary(on)}")
    print(f"per-job overhead, page off: {summary(off)}")
    print(f"page on, first tenth of the jobs (>= 90% still queued): {summary(first_on)}")
    print(f"ratio of medians on/off: {statistics.median(on) / statistics.median(off):.2f}")
    print(f"page rewrites seen during the bursts: {[r['page_writes_seen'] for r in runs]}")
    print(f"all drained: {all(r['drained'] and r['done'] == args.count for r in runs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
