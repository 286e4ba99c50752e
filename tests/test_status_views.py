"""`i2vd status` shows what waits on someone: jobs no live daemon can run, shares that
are unavailable, and files intake could not take (real SQLite queue, real state files)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.admin import open_queue, status
from daemon.admin_text import status_text
from daemon.capabilities import Capabilities
from daemon.config import Settings
from daemon.mounts import MountGate
from daemon.os_errors import INTAKE_PROBLEMS_FILE, report_intake_problem, save_intake_problems
from daemon.queue_settings import QueueSettings
from daemon.store import JobStore
from store_procs import job_for


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    for name in ("inbox", "outbox", "state"):
        (tmp_path / name).mkdir()
    return Settings(base_dir=tmp_path, inbox=["inbox"], outbox="outbox", state_dir="state")


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    s = JobStore(settings.database_url)
    yield s
    s.close()


def current(settings: Settings) -> dict[str, Any]:
    """`i2vd status` as the command computes it: through a queue of its own."""
    queue_settings = QueueSettings.of(settings)
    with open_queue(queue_settings) as queue:
        return status(queue, queue_settings)


def test_jobs_no_live_daemon_can_run_are_shown(store: JobStore, settings: Settings) -> None:
    store.daemons.register("cpu:1", "cpu", 1, Capabilities(engines=("motion",)))
    store.enqueue(job_for(1))
    for n in (2, 3, 4):
        store.enqueue(job_for(n, engine="diffusion", model="wan", memory_gb=24.0))
    data = current(settings)
    assert data["stranded"] == [
        {"inbox": "photos", "engine": "diffusion", "model": "wan", "memory_gb": 24.0, "jobs": 3}
    ]
    text = status_text(data)
    assert (
        "3 waiting jobs in inbox photos need engine diffusion (model wan, 24 GiB) and no "
        "running daemon can run them: start one that can (README: Several GPUs and hosts)"
    ) in text
    store.daemons.register("gpu:2", "gpu", 2, Capabilities(("diffusion",), memory_gb=40.0))
    assert current(settings)["stranded"] == []
    assert "no running daemon can run them" not in status_text(current(settings))


def test_an_unavailable_share_is_shown_with_its_reason(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    gate = MountGate(
        [("inbox", tmp_path / "inbox"), ("outbox", tmp_path / "outbox")], settings.state_dir
    )
    gate.arm()
    assert [r["available"] for r in current(settings)["roots"]] == [True, True]
    shutil.rmtree(tmp_path / "outbox")
    gate.check()
    roots = current(settings)["roots"]
    assert [(r["kind"], r["available"]) for r in roots] == [("inbox", True), ("outbox", False)]
    assert roots[1]["reason"] and roots[1]["path"] == str(tmp_path / "outbox")
    assert f"outbox {tmp_path / 'outbox'} is unavailable: {roots[1]['reason']}" in status_text(
        current(settings)
    )


def test_files_intake_could_not_take_are_shown_until_taken(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    assert current(settings)["not_taken"] == []
    odd = Path(os.fsdecode(bytes(tmp_path / "inbox") + b"/caf\xe9.jpg"))
    problems: dict[Path, str] = {}
    full = OSError(errno.ENOSPC, "No space left on device", str(settings.state_dir))
    report_intake_problem(problems, odd, full, settings)
    saved = json.loads((settings.state_dir / INTAKE_PROBLEMS_FILE).read_text(encoding="utf-8"))
    assert len(saved["not_taken"]) == 1
    data = current(settings)
    (item,) = data["not_taken"]
    assert "\udce9" not in item["path"] and item["path"].endswith(".jpg")
    assert item["reason"] == f"the disk holding {settings.state_dir} is full"
    assert f"{item['path']}: {item['reason']}" in status_text(data)
    del problems[odd]
    save_intake_problems(problems, settings.state_dir)
    assert current(settings)["not_taken"] == []
    assert "not taken" not in status_text(current(settings))


def test_a_running_jobs_time_left_is_the_share_pages_estimate(
    store: JobStore, settings: Settings
) -> None:
    store.enqueue(job_for(1))
    job = store.claim("cpu:1", now=store.now() - 20)
    assert job is not None and job.id is not None
    assert current(settings)["running"][0]["eta"] is None  # no progress yet
    store.heartbeat(job.id, "cpu:1", progress=0.5)
    (running,) = current(settings)["running"]
    assert 19 <= running["eta"] <= 25  # as long again as the 20 s so far
    store.heartbeat(job.id, "cpu:1", progress=1.0)  # encoding: no pace to go by
    assert current(settings)["running"][0]["eta"] is None


def test_show_says_how_often_a_job_made_the_gpu_fail(store: JobStore, settings: Settings) -> None:
    from daemon.admin import show
    from daemon.admin_text import show_text

    job = store.enqueue(job_for(1))
    assert job.id is not None
    queue_settings = QueueSettings.of(settings)
    with open_queue(queue_settings) as queue:
        assert "GPU faults" not in show_text(show(queue, job.id))
    claimed = store.claim("gpu:1")
    assert claimed is not None and claimed.id == job.id
    store.hand_back_after_device_fault(job.id, "gpu:1", counted=True, limit=3)
    with open_queue(queue_settings) as queue:
        data = show(queue, job.id)
    assert data["device_faults"] == 1
    assert "attempts:  0 of 3 (GPU faults: 1)" in show_text(data)
