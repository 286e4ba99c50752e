"""Several real daemons on one queue: nothing lost, nothing duplicated, whoever dies.

Daemons are ``i2vd run`` subprocesses (tests/conftest.py); one is killed with
``kill -9`` in the middle of a job and another stopped with SIGTERM in the middle of
one, while 60 images are processed.
"""

from __future__ import annotations

import signal
import socket
from collections import Counter
from pathlib import Path

import pytest

from conftest import DaemonProcess, Layout, make_image, wait_for
from daemon.config import load_settings
from daemon.store import Job, JobStore

pytestmark = pytest.mark.slow

IMAGES = 60


def queue_rows(url: str) -> list[Job]:
    store = JobStore(url)
    try:
        return store.list_jobs(limit=10_000, newest_first=False)
    finally:
        store.close()


def running_job_of(url: str, proc: DaemonProcess) -> int | None:
    owner = f"{socket.gethostname()}:{proc.proc.pid}"
    for job in queue_rows(url):
        if job.state == "running" and job.lease_owner == owner:
            return job.id
    return None


def done_count(url: str) -> int:
    return sum(job.state == "done" for job in queue_rows(url))


def drop_images(inbox: Path, count: int) -> list[str]:
    """Written beside the inbox, then renamed in: each appears whole."""
    staging = inbox.parent / "staging"
    names = []
    for n in range(count):
        name = f"img{n:02d}.jpg"
        make_image(staging / name, 160, 120, seed=n).rename(inbox / name)
        names.append(name)
    return names


def assert_each_image_published_once(outbox: Path, names: list[str], jobs: list[Job]) -> None:
    files = sorted(p.name for p in outbox.rglob("*") if p.is_file())
    suffixes = (".jpg", ".motion.mp4", ".motion.json")
    expected = sorted(f"{Path(n).stem}{suffix}" for n in names for suffix in suffixes)
    assert files == expected  # no "-2" copies, nothing missing
    assert Counter(j.state for j in jobs) == Counter({"done": len(names)})
    assert sorted(j.relative for j in jobs) == sorted(names)  # each queued once


def test_two_daemons_on_one_sqlite_file(layout: Layout, daemon) -> None:
    layout.write_config(lease_seconds=6)
    url = load_settings(layout.config_file).database_url
    first, second = daemon(), daemon()
    first.wait_started()
    second.wait_started()
    names = drop_images(layout.inbox, IMAGES)

    # kill -9 the first in the middle of a job, after both have done some work.
    wait_for(lambda: done_count(url) >= 5, timeout=120)
    killed_job = wait_for(lambda: running_job_of(url, first), timeout=60, interval=0.01)
    first.proc.kill()
    first.wait()
    # The second daemon takes it over once the dead one's lease runs out.
    wait_for(
        lambda: next(j for j in queue_rows(url) if j.id == killed_job).lease_owner
        != f"{socket.gethostname()}:{first.proc.pid}",
        timeout=60,
    )
    assert f"job {killed_job}: its daemon stopped renewing its lease; queued again" in (
        second.log
    )

    # A third joins; then the second is stopped with SIGTERM in the middle of a job.
    third = daemon()
    third.wait_started()
    wait_for(lambda: done_count(url) >= 30, timeout=180)
    wait_for(lambda: running_job_of(url, second), timeout=60, interval=0.01)
    assert second.stop(signal.SIGTERM, timeout=60) == 0

    wait_for(lambda: done_count(url) == IMAGES, timeout=300, interval=0.5)
    assert third.stop() == 0

    jobs = queue_rows(url)
    assert_each_image_published_once(layout.outbox, names, jobs)
    assert [j.attempts for j in jobs if j.id == killed_job] == [2]
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.failed) == []
    assert [p for p in layout.root.rglob("*.i2vd-tmp")] == []
    assert layout.files(layout.state / "work") == []
