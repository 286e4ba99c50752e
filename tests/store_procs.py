"""Queue work run in separate processes by the store's contract tests (spawned, so each
opens its own connections, as separate daemons would)."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from daemon.store import Job, JobStore


def job_for(n: int, inbox: str = "photos", variant: str = "", **extra: Any) -> Job:
    """A job as intake makes it: image number ``n`` in ``inbox``."""
    values: dict[str, Any] = {
        "source": f"/mnt/{inbox}/img{n}.jpg",
        "inbox_root": f"/mnt/{inbox}",
        "inbox": inbox,
        "relative": f"img{n}.jpg",
        "sha256": f"{n:064x}",
        "size_bytes": 100 + n,
        "rule_name": "motion",
        "rule_hash": "h1",
        "rule_file": "/rules/motion.yaml",
        "rule_json": json.dumps({"name": "motion"}),
        "engine": "motion",
        "variant": variant,
        "drop": f"drop-{inbox}-{n}",
    }
    values.update(extra)
    return Job(**values)


def enqueue_all(url: str, start_at: float, count: int) -> list[tuple[int, bool]]:
    """Queue images 0..count-1 (each a drop of two variants); (first job id, new) each."""
    store = JobStore(url)
    try:
        _wait_until(start_at)
        out = []
        for n in range(count):
            queued = store.enqueue_drop([job_for(n, variant="a"), job_for(n, variant="b")])
            out.append((queued.jobs[0].id or 0, queued.new))
        return out
    finally:
        store.close()


def claim_all(url: str, start_at: float, owner: str) -> list[int]:
    store = JobStore(url)
    try:
        _wait_until(start_at)
        got = []
        while (job := store.claim(owner, None, 60)) is not None:
            got.append(job.id or 0)
        return got
    finally:
        store.close()


def open_store(url: str, start_at: float) -> str:
    """Open (and so migrate) the queue at the same moment as the others."""
    _wait_until(start_at)
    store = JobStore(url)
    try:
        return str(store.count_by_state())
    finally:
        store.close()


def run_in_processes(target: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target`` once per argument tuple, each in its own spawned process, all
    released at the same moment; their results, in order."""
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # after every interpreter has started
    with context.Pool(len(args)) as pool:
        pending = [pool.apply_async(target, (a[0], start_at, *a[1:])) for a in args]
        return [p.get(timeout=120) for p in pending]


def _wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))
