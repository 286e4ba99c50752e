"""Crash recovery counts an attempt only if the picture was decoded, rendered or encoded."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.attempts import RENDER_DONE, RENDER_STARTED, rendering
from daemon.store import Job, JobStore


def job(n: int) -> Job:
    return Job(
        source=f"/in/{n}.jpg",
        inbox_root="/in",
        relative=f"{n}.jpg",
        sha256=f"{n}" * 64,
        rule_name="r",
        rule_hash="h",
        rule_file="r.yaml",
        rule_json="{}",
        engine="motion",
    )


@pytest.mark.parametrize(
    ("progress", "attempts"),
    [(None, 0), (RENDER_STARTED, 1), (0.5, 1), (rendering(1.0), 1), (RENDER_DONE, 0)],
    ids=["claimed", "decoding", "rendering", "encoding", "publishing"],
)
def test_a_crash_counts_only_while_the_picture_was_worked_on(
    tmp_path: Path, progress: float | None, attempts: int
) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        queued = store.enqueue(job(1)).id
        assert queued is not None
        store.claim("host:1", 100.0, 1000)
        if progress is not None:
            store.heartbeat(queued, "host:1", 100.0, 1000, progress=progress)
        assert len(store.recover("host", now=101.0)) == 1
        again = store.get(queued)
        assert again is not None and again.state == "queued"
        assert again.attempts == attempts
    finally:
        store.close()


def test_rendering_progress_stays_inside_the_window() -> None:
    assert rendering(0.0) == RENDER_STARTED
    assert 0 < rendering(1.0) < RENDER_DONE
