"""Several real daemons on one queue: nothing lost, nothing duplicated, whoever dies.

Daemons are ``i2vd run`` subprocesses; one is killed with ``kill -9`` in the middle of
a job and another stopped with SIGTERM in the middle of one, while 60 images are
processed. On PostgreSQL each daemon runs in a mount namespace of its own where the
shared inbox, outbox and failed folders are bind-mounted at a path no other daemon
has, as on separate hosts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import MOTION_RULE, DaemonProcess, Layout, make_image, wait_for
from daemon.admin_queue import AdminQueue
from daemon.config import load_settings
from daemon.store import Job, JobStore
from daemon.tables import Daemon
from pg import create_database, drop_database

pytestmark = pytest.mark.slow

IMAGES = 60
# About a second of work per image, so that daemons are caught in the middle of jobs.
SLOWER_RULE = MOTION_RULE.replace("resolution: 256", "resolution: 512, frames: 32")


def queue_rows(url: str) -> list[Job]:
    store = JobStore(url, migrate=False)  # the daemons made it; polled many times
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


def drop_images(inbox: Path, count: int, first: int = 0) -> list[str]:
    """Written beside the inbox, then renamed in: each appears whole."""
    staging = inbox.parent / "staging"
    names = []
    for n in range(first, first + count):
        name = f"img{n:02d}.jpg"
        make_image(staging / name, 160, 120, seed=n).rename(inbox / name)
        names.append(name)
    return names


def assert_each_image_published_once(outbox: Path, names: list[str], jobs: list[Job]) -> None:
    # The share's status page and the root marker are i2vd's own, not an image's.
    files = sorted(
        p.name
        for p in outbox.rglob("*")
        if p.is_file() and not p.name.startswith((".", "i2vd-status."))
    )
    suffixes = (".jpg", ".motion.mp4", ".motion.json")
    expected = sorted(f"{Path(n).stem}{suffix}" for n in names for suffix in suffixes)
    assert files == expected  # no "-2" copies, nothing missing
    assert Counter(j.state for j in jobs) == Counter({"done": len(names)})
    assert sorted(j.relative for j in jobs) == sorted(names)  # each queued once


def test_two_daemons_on_one_sqlite_file(layout: Layout, daemon) -> None:
    layout.rule("motion", SLOWER_RULE)
    layout.write_config(lease_seconds=6)
    url = load_settings(layout.config_file).database_url
    first, second = daemon(), daemon()
    first.wait_started()
    second.wait_started()
    names = drop_images(layout.inbox, IMAGES // 2)

    # kill -9 the first in the middle of a job, after both have done some work.
    wait_for(lambda: done_count(url) >= 5, timeout=120)
    killed_job = wait_for(lambda: running_job_of(url, first), timeout=60, interval=0.01)
    first.proc.kill()
    first.wait()
    # The second daemon takes it over once the dead one's lease runs out, and says so;
    # unless the kill landed just after the job had finished, leaving nothing to recover.
    taken_over = f"job {killed_job}: its daemon stopped renewing its lease; queued again"

    def recovered() -> bool:
        row = next(j for j in queue_rows(url) if j.id == killed_job)
        finished_first = (
            row.state == "done" and row.attempts == 1 and taken_over not in (second.log)
        )
        return taken_over in second.log or finished_first

    wait_for(recovered, timeout=60)

    # A third joins and the rest arrive; then the second is stopped with SIGTERM in the
    # middle of a job.
    third = daemon()
    third.wait_started()
    names += drop_images(layout.inbox, IMAGES - len(names), first=len(names))
    wait_for(lambda: running_job_of(url, second), timeout=60, interval=0.01)
    assert second.stop(signal.SIGTERM, timeout=60) == 0

    wait_for(lambda: done_count(url) == IMAGES, timeout=300, interval=0.5)
    assert third.stop() == 0

    jobs = queue_rows(url)
    assert_each_image_published_once(layout.outbox, names, jobs)
    # Killed while running: an attempt is counted only if the kill fell inside the
    # picture's own work (decode to encode; README: Jobs and failures), so 1 or 2.
    assert [j.attempts for j in jobs if j.id == killed_job] in ([1], [2])
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.failed) == []
    assert [p for p in layout.root.rglob("*.i2vd-tmp")] == []
    assert layout.files(layout.state / "work") == []


class HostDaemon:
    """``i2vd run`` seeing the share at a path of its own (a private mount namespace
    with bind mounts that vanish with the process), logging to a file."""

    def __init__(self, root: Path, name: str, share: Path, database_url: str) -> None:
        self.home = root / name
        self.log_path = self.home / f"daemon-{time.monotonic_ns()}.log"
        views = {folder: self.home / f"{folder}-view" for folder in ("in", "out", "failed")}
        for view in views.values():
            view.mkdir(parents=True, exist_ok=True)
        config = {
            "inbox": {"photos": str(views["in"])},
            "outbox": str(views["out"]),
            "failed_dir": str(views["failed"]),
            "rules_dir": str(root / "rules"),
            "state_dir": str(self.home / "state"),
            "database_url": database_url,
            "settle_seconds": 0.5,
            "rescan_seconds": 30,
            "retry_delay_seconds": 0.2,
            "lease_seconds": 6,
            "log_level": "DEBUG",
        }
        config_file = self.home / "i2vd.yaml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        mounts = " && ".join(
            f"mount --bind {share / folder} {view}" for folder, view in views.items()
        )
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'{mounts} && exec "$0" "$@"',
                sys.executable,
                "-m",
                "daemon",
                "run",
                "--config",
                str(config_file),
            ],
            cwd=self.home,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.owner = f"{socket.gethostname()}:{self.proc.pid}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_started(self) -> None:
        wait_for(lambda: "i2vd started" in self.log or self.proc.poll() is not None, 30)
        assert self.proc.poll() is None, f"daemon exited early:\n{self.log}"

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[HostDaemon]]:
    started: list[HostDaemon] = []
    yield started
    for host in started:
        if host.proc.poll() is None:
            host.proc.kill()
            host.wait()


def running_job_of_owner(url: str, owner: str) -> int | None:
    for job in queue_rows(url):
        if job.state == "running" and job.lease_owner == owner:
            return job.id
    return None


def test_three_hosts_on_postgresql_each_seeing_the_share_elsewhere(
    tmp_path: Path, hosts: list[HostDaemon]
) -> None:
    url = create_database()
    try:
        share = tmp_path / "share"
        for folder in ("in", "out", "failed"):
            (share / folder).mkdir(parents=True)
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "motion.yaml").write_text(SLOWER_RULE, encoding="utf-8")

        def start(name: str) -> HostDaemon:
            host = HostDaemon(tmp_path, name, share, url)
            hosts.append(host)
            return host

        first, second, third = start("alpha"), start("beta"), start("gamma")
        for host in (first, second, third):
            host.wait_started()
        names = drop_images(share / "in", IMAGES // 2)

        wait_for(lambda: done_count(url) >= 5, timeout=120)
        killed_job = wait_for(
            lambda: running_job_of_owner(url, first.owner), timeout=60, interval=0.01
        )
        first.proc.kill()
        first.wait()
        # A live host takes the dead one's job over once its lease runs out.
        wait_for(
            lambda: (
                next(j for j in queue_rows(url) if j.id == killed_job).lease_owner
                not in (first.owner,)
            ),
            timeout=60,
        )
        names += drop_images(share / "in", IMAGES - len(names), first=len(names))
        wait_for(lambda: running_job_of_owner(url, second.owner), timeout=60, interval=0.01)
        assert second.stop(signal.SIGTERM) == 0
        # The killed host comes back (as systemd would start it) and sweeps its scratch.
        restarted = start("alpha")
        restarted.wait_started()

        wait_for(lambda: done_count(url) == IMAGES, timeout=300, interval=0.5)
        assert third.stop() == 0
        assert restarted.stop() == 0

        jobs = queue_rows(url)
        assert_each_image_published_once(share / "out", names, jobs)
        assert [j.attempts for j in jobs if j.id == killed_job] in ([1], [2])
        assert {j.inbox for j in jobs} == {"photos"}
        # No host's own path is in the queue: each saw the share somewhere else.
        assert all((j.video_path or "").startswith("@outbox/") for j in jobs)
        # Only i2vd's own files are left: the status page and the hidden root marker.
        own = (".", "i2vd-status.")
        assert [p.name for p in (share / "in").iterdir() if not p.name.startswith(own)] == []
        assert [p for p in (share / "failed").rglob("*") if not p.name.startswith(own)] == []
        assert list(share.rglob("*.i2vd-tmp")) == []
        for name in ("alpha", "beta", "gamma"):
            assert list((tmp_path / name / "state" / "work").glob("*")) == []
    finally:
        drop_database(url)


GPU_RULE = """\
name: gpu
engine: diffusion
model: fake/gpu-model
preset: quick
params: {resolution: 256}
"""
FAKE_GPU_SITE = Path(__file__).resolve().parent / "fake_gpu_site"


def fake_gpu(kind: str) -> dict[str, str]:
    """Environment for a daemon whose `diffusion` engine is a fake GPU (fake_gpu.py)."""
    path = os.pathsep.join(p for p in (str(FAKE_GPU_SITE), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "I2VD_FAKE_GPU": kind}


def test_a_broken_gpu_fails_no_image_and_its_daemon_exits_to_be_restarted(
    layout: Layout, daemon
) -> None:
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    layout.write_config(lease_seconds=6, gpu_fault_limit=2, gpu_fault_cooldown_seconds=1)
    url = load_settings(layout.config_file).database_url
    broken = daemon(env=fake_gpu("faulty"))
    broken.wait_started()
    names = drop_images(layout.inbox, 10)
    wait_for(lambda: "the GPU failed" in broken.log, timeout=60)
    healthy = daemon(env=fake_gpu("healthy"))
    healthy.wait_started()

    assert broken.wait(120) == 7, broken.log
    assert "CUDA error: an illegal memory access was encountered" in broken.log
    assert "stopping so that the service manager restarts i2vd" in broken.log
    wait_for(lambda: done_count(url) == 10, timeout=180, interval=0.5)
    assert healthy.stop() == 0

    jobs = queue_rows(url)
    # Hidden entries (the .i2vd-root marker of a mounted root) are not outputs.
    outbox = sorted(p.name for p in layout.outbox.iterdir() if not p.name.startswith("."))
    assert outbox == sorted(
        f"{Path(n).stem}{suffix}" for n in names for suffix in (".jpg", ".gpu.mp4", ".gpu.json")
    )
    assert layout.files(layout.failed) == []
    assert all(job.attempts == 1 for job in jobs)  # the faults used no attempt
    with AdminQueue(url) as queue:  # what `i2vd status` lists
        [row] = [s.daemon for s in queue.daemons(60)]
    assert (row.id, row.state) == (f"{socket.gethostname()}:{broken.proc.pid}", "faulted")
    assert "illegal memory access" in row.reason


def test_an_image_that_faults_every_working_gpu_fails_instead_of_going_round(
    layout: Layout, daemon
) -> None:
    """The fake driver faults on pictures taller than wide. The first daemon's GPU
    worked when the poison started (counted), then faulted again on it (the GPU's, not
    counted) and exited 7; its restart, working again, counts the second and fails it."""
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    layout.write_config(lease_seconds=6, gpu_fault_limit=2, gpu_fault_cooldown_seconds=1)
    url = load_settings(layout.config_file).database_url
    first = daemon(env=fake_gpu("poisoned"))
    first.wait_started()
    make_image(layout.root / "poison.jpg", 120, 160).rename(layout.inbox / "poison.jpg")
    wait_for(lambda: "the GPU failed" in first.log, timeout=60)
    names = drop_images(layout.inbox, 3)  # queued after it: the poison goes first again
    assert first.wait(120) == 7, first.log
    assert "device fault 1 of 2 on a working GPU" in first.log
    assert "not counted: this GPU was already faulting" in first.log

    restarted = daemon(env=fake_gpu("poisoned"))  # as systemd would
    restarted.wait_started()
    wait_for(lambda: done_count(url) == 3, timeout=120, interval=0.5)
    assert restarted.stop() == 0, restarted.log
    assert "the image faulted a working GPU 2 times" in restarted.log

    by_name = {job.relative: job for job in queue_rows(url)}
    poison = by_name.pop("poison.jpg")
    assert (poison.state, poison.device_faults, poison.attempts) == ("failed", 2, 1)
    assert {job.state for job in by_name.values()} == {"done"}
    assert layout.files(layout.failed) == ["poison.jpg", "poison.jpg.error.json"]
    report = json.loads((layout.failed / "poison.jpg.error.json").read_text(encoding="utf-8"))
    assert report["error"].startswith("the graphics card failed each time it tried")
    assert report["hint"].endswith(f"i2vd retry {poison.id}")
    outbox = sorted(p.name for p in layout.outbox.iterdir() if not p.name.startswith("."))
    assert outbox == sorted(
        f"{Path(n).stem}{suffix}" for n in names for suffix in (".jpg", ".gpu.mp4", ".gpu.json")
    )


def admin(layout: Layout, *args: str) -> subprocess.CompletedProcess[str]:
    """An admin command (`i2vd pause`, `status`...) run as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args, "--config", str(layout.config_file)],
        cwd=layout.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_registry_says_paused_while_the_queue_is_and_faulted_outranks_it(
    layout: Layout, daemon
) -> None:
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    # A heartbeat every 1.5 s; a GPU that faults once and is not tried again meanwhile.
    layout.write_config(lease_seconds=6, gpu_fault_limit=100, gpu_fault_cooldown_seconds=3600)
    url = load_settings(layout.config_file).database_url
    proc = daemon(env=fake_gpu("faulty"))
    proc.wait_started()
    store = JobStore(url)
    try:

        def row() -> Daemon:
            [alive] = store.daemons.alive(within=60)
            return alive

        assert row().state == "running"
        assert admin(layout, "pause").returncode == 0
        wait_for(lambda: row().state == "paused", 10)
        listed = json.loads(admin(layout, "status", "--json").stdout)
        assert [d["state"] for d in listed["daemons"]] == ["paused"]
        assert admin(layout, "resume").returncode == 0
        wait_for(lambda: row().state == "running", 10)

        make_image(layout.inbox / "a.jpg")
        wait_for(lambda: row().state == "faulted", 60)
        assert admin(layout, "pause").returncode == 0
        # The second heartbeat from now began after the pause: it would have said so.
        beat = row().heartbeat_at
        wait_for(lambda: row().heartbeat_at >= beat + 2, 10)
        assert row().state == "faulted" and "illegal memory access" in row().reason
        assert admin(layout, "resume").returncode == 0
    finally:
        store.close()
    assert proc.stop() == 0, proc.log


SKEWED_CLOCK_SITE = Path(__file__).resolve().parent / "skewed_clock_site"


def test_a_daemon_whose_clock_is_an_hour_off_steals_nothing(layout: Layout, daemon) -> None:
    """Leases are judged by the database's clock: a host an hour ahead does not take the
    other daemon's running jobs as expired, nor is its own taken from it."""
    layout.write_config(lease_seconds=6)
    url = load_settings(layout.config_file).database_url
    path = os.pathsep.join(p for p in (str(SKEWED_CLOCK_SITE), os.environ.get("PYTHONPATH")) if p)
    ahead = daemon(env={"PYTHONPATH": path, "I2VD_TEST_CLOCK_SKEW": "3600"})
    normal = daemon()
    ahead.wait_started()
    normal.wait_started()
    names = drop_images(layout.inbox, 20)
    wait_for(lambda: done_count(url) == 20, timeout=300, interval=0.5)
    assert ahead.stop() == 0
    assert normal.stop() == 0

    jobs = queue_rows(url)
    assert_each_image_published_once(layout.outbox, names, jobs)
    assert all(job.attempts == 1 for job in jobs)  # no lease was taken over
    for proc in (ahead, normal):
        assert "stopped renewing its lease" not in proc.log
        assert "another daemon took it over" not in proc.log
