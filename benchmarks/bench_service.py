"""The service goals: admin commands with a big queue, and the daemon with metrics on.

Run from the repository root:

    .venv/bin/python benchmarks/bench_service.py            # both parts
    .venv/bin/python benchmarks/bench_service.py --quick    # fewer repeats

1. ``i2vd status``, ``jobs``, ``show``, ``pause``/``resume``, ``retry`` and ``cancel``
   as real subprocesses (interpreter start included) against a SQLite queue holding
   10,000 queued jobs: median and max wall time of each.
2. The daemon started with and without ``metrics_port`` in alternating rounds: time to
   "i2vd started", and peak resident memory (VmHWM) after start and after a few
   1024x768 drops, plus one scrape of /metrics per drop while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from conftest import MOTION_RULE, make_image  # noqa: E402 - the tests' rule and pictures

QUEUED = 10_000


def layout(root: Path, **settings: Any) -> Path:
    for name in ("inbox", "outbox", "failed", "rules", "state"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "rules" / "motion.yaml").write_text(MOTION_RULE)
    config = root / "i2vd.yaml"
    values = {
        "inbox": "inbox",
        "outbox": "outbox",
        "failed_dir": "failed",
        "rules_dir": "rules",
        "state_dir": "state",
        "settle_seconds": 0.5,
        **settings,
    }
    config.write_text(yaml.safe_dump(values))
    return config


# --- 1: admin commands -------------------------------------------------------------------


def fill_queue(config: Path, count: int) -> list[int]:
    """``count`` queued jobs and one failed one, written in one transaction."""
    from sqlalchemy import insert

    from daemon.config import load_settings
    from daemon.store import Job, JobStore

    settings = load_settings(config)
    store = JobStore(settings.database_url)
    rows = []
    for i in range(count):
        rows.append(
            Job(
                source=str(settings.inbox[0] / f"batch/img{i:05d}.jpg"),
                inbox_root=str(settings.inbox[0]),
                relative=f"batch/img{i:05d}.jpg",
                sha256=f"{i:064x}",
                size_bytes=1000,
                rule_name="motion",
                rule_hash="h",
                rule_file=str(settings.rules_dir / "motion.yaml"),
                rule_json=json.dumps({"name": "motion", "engine": "motion"}),
                engine="motion",
                drop=f"d{i}",
                created_at=time.time() - count + i,
            ).model_dump(exclude={"id"})
        )
    with store.engine.begin() as conn:
        conn.execute(insert(Job), rows)
    ids = [job.id for job in store.list_jobs(["queued"], limit=3) if job.id is not None]
    store.close()
    return ids


def time_command(config: Path, *args: str) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "daemon", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    return time.perf_counter() - start, result.returncode


def bench_admin(work: Path, repeats: int) -> dict[str, Any]:
    config = layout(work / "admin")
    ids = fill_queue(config, QUEUED)
    commands = {
        "status": ["status"],
        "status --json": ["status", "--json"],
        "jobs": ["jobs"],
        "jobs --state queued --limit 1000 --json": [
            "jobs",
            "--state",
            "queued",
            "--limit",
            "1000",
            "--json",
        ],
        "show ID": ["show", str(ids[0])],
        "pause": ["pause"],
        "resume": ["resume"],
    }
    results: dict[str, Any] = {}
    baseline = [time_command(config, "--version")[0] for _ in range(repeats)]
    results["python -m daemon --version (interpreter start)"] = baseline
    for name, args in commands.items():
        times = []
        for _ in range(repeats):
            seconds, code = time_command(config, *args)
            assert code == 0, (name, code)
            times.append(seconds)
        results[name] = times
    # cancel, then retry, of one queued job each: a change per run, so one run each.
    results["cancel ID"] = [time_command(config, "cancel", str(ids[1]))[0]]
    results["retry ID"] = [time_command(config, "retry", str(ids[1]))[0]]
    return results


def bench_admin_in_process(work: Path, repeats: int) -> dict[str, list[float]]:
    """The same verbs as library calls in one warm process: the queries' own cost with
    the big queue, without the interpreter start and imports of a fresh command."""
    from daemon import admin
    from daemon.config import load_settings
    from daemon.queue_settings import QueueSettings

    config = layout(work / "admin-inproc")
    ids = fill_queue(config, QUEUED)
    settings = QueueSettings.of(load_settings(config))
    queue = admin.open_queue(settings)
    calls = {
        "open the queue": lambda: admin.open_queue(settings).close(),
        "status": lambda: admin.status(queue, settings),
        "jobs (50)": lambda: admin.list_jobs(queue, None, 50),
        "jobs --state queued --limit 1000": lambda: admin.list_jobs(queue, "queued", 1000),
        "show ID": lambda: admin.show(queue, ids[0]),
        "pause + resume": lambda: (admin.pause(queue), admin.resume(queue)),
    }
    results: dict[str, list[float]] = {}
    for name, call in calls.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        results[name] = times
    queue.close()
    return results


# --- 2: the daemon with metrics on -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_kb(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"{key}:\s+(\d+)", text)
    return int(found[1]) if found else 0


def one_daemon(root: Path, metrics: bool, drops: int) -> dict[str, Any]:
    port = free_port() if metrics else None
    config = layout(root, **({"metrics_port": port} if metrics else {}))
    log = root / "daemon.log"
    with open(log, "wb") as out:
        spawned = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(config)],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        while "i2vd started" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise RuntimeError(log.read_text())
            time.sleep(0.005)
        started = time.perf_counter() - spawned
        hwm_start = status_kb(proc.pid, "VmHWM")
        scrapes = 0
        for i in range(drops):
            make_image(root / f"in-{i}.jpg", 1024, 768, seed=i)
            os.rename(root / f"in-{i}.jpg", root / "inbox" / f"d{i}.jpg")
            target = root / "outbox" / f"d{i}.motion.json"
            while not target.exists():
                time.sleep(0.01)
            if port is not None:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                scrapes += 1
        hwm_end = status_kb(proc.pid, "VmHWM")
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {
        "start": started,
        "hwm_start_mb": hwm_start / 1024,
        "hwm_end_mb": hwm_end / 1024,
        "scrapes": scrapes,
    }


def bench_metrics(work: Path, rounds: int, drops: int) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for index in range(rounds):
        order = ("off", "on") if index % 2 == 0 else ("on", "off")
        for kind in order:
            root = work / f"metrics-{kind}-{index}"
            results[kind].append(one_daemon(root, kind == "on", drops))
    return results


def report(admin: dict[str, Any] | None, metrics: dict[str, Any] | None) -> None:
    if admin:
        print(f"\nAdmin commands, {QUEUED:,} queued jobs (wall time incl. interpreter start):")
        for name, times in admin.items():
            print(
                f"  {name:<45} median {1000 * statistics.median(times):5.0f} ms  "
                f"max {1000 * max(times):5.0f} ms  (n={len(times)})"
            )
    if metrics:
        print("\nDaemon start-up and peak RSS, metrics off vs on (alternating rounds):")
        for kind, runs in metrics.items():
            starts = [r["start"] for r in runs]
            at_start = [r["hwm_start_mb"] for r in runs]
            at_end = [r["hwm_end_mb"] for r in runs]
            print(
                f"  metrics {kind:<3}: start median {statistics.median(starts):.2f} s "
                f"max {max(starts):.2f} s; VmHWM at start median {statistics.median(at_start):.0f}"
                f" MB, after drops median {statistics.median(at_end):.0f} MB max "
                f"{max(at_end):.0f} MB; scrapes {sum(r['scrapes'] for r in runs)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["admin", "metrics"])
    parser.add_argument("--json", type=Path, help="also save the raw numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="i2vd-bench-service-") as folder:
        work = Path(folder)
        admin = None
        if args.only != "metrics":
            admin = bench_admin(work, 3 if args.quick else 7)
            inproc = bench_admin_in_process(work, 3 if args.quick else 7)
            admin.update({f"in process: {name}": times for name, times in inproc.items()})
        metrics = (
            bench_metrics(work, 2 if args.quick else 6, 3 if args.quick else 10)
            if args.only != "admin"
            else None
        )
    report(admin, metrics)
    if args.json:
        args.json.write_text(json.dumps({"admin": admin, "metrics": metrics}, indent=2))


if __name__ == "__main__":
    main()
