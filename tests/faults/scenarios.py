"""Fault scenarios on a real daemon: each injects one kind of fault into a running
``i2vd run`` (a subprocess), lets the share or disk recover, drains the queue with
``--once`` and audits where every dropped image went.

Used by ``test_faults.py`` (a small sample) and ``run.py`` (the long runs).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faultkit import (
    FAST_RULE,
    SLOW_RULE,
    Mounts,
    Tally,
    audit,
    files_under,
    mount_bind,
    remount,
    sha256_file,
    unmount,
)
from sqlmodel import Session, col, select

from conftest import DaemonProcess, Layout, make_image
from daemon.config import load_settings
from daemon.store import Job, JobState, JobStore


class Rig:
    """One daemon's folders (some of them mounts) and every daemon started on them."""

    def __init__(self, root: Path, mounts: Mounts, rule: str = FAST_RULE, **settings: Any):
        self.layout = Layout(root)
        self.mounts = mounts
        for folder in ("inbox", "outbox", "failed", "rules", "state"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.layout.rule("motion", rule)
        self.settings = {
            "settle_seconds": 0.3,
            "rescan_seconds": 2,
            "log_level": "INFO",
            **settings,
        }
        self.layout.write_config(**self.settings)
        self.good: dict[str, str] = {}
        self.hostile: dict[str, str] = {}
        self.daemons: list[DaemonProcess] = []
        self.faults = 0
        self._seed = 0

    @property
    def root(self) -> Path:
        return self.layout.root

    def drop(
        self, count: int = 1, folder: Path | None = None, big: bool = False, stem: str = "img"
    ) -> list[Path]:
        """Drop new, distinct pictures; written under a hidden name, then renamed in
        whole, as a careful client does."""
        folder = folder or self.layout.inbox
        dropped = []
        for _ in range(count):
            self._seed += 1
            ext = "png" if big else "jpg"
            size = (2400, 1800) if big else (480, 360)
            final = folder / f"{stem}{self._seed:04d}.{ext}"
            hidden = folder / f".{final.name}.part"
            make_image(hidden, *size, fmt="PNG" if big else "JPEG", seed=self._seed)
            self.good[sha256_file(hidden)] = final.name
            os.rename(hidden, final)
            dropped.append(final)
        return dropped

    def start(self, *args: str) -> DaemonProcess:
        daemon = DaemonProcess(self.layout, *args)
        self.daemons.append(daemon)
        return daemon

    def logs(self) -> list[str]:
        return [d.log for d in self.daemons]

    def kill_all(self) -> None:
        for daemon in self.daemons:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.wait()

    def stop_all(self) -> list[int]:
        """SIGTERM every daemon still running; their exit codes."""
        return [d.stop() for d in self.daemons if d.proc.poll() is None]

    def drain(self, timeout: float = 180.0) -> int:
        """Process whatever is left, as ``i2vd run --once`` does; its exit code."""
        self.stop_all()
        daemon = self.start("--once")
        try:
            return daemon.wait(timeout)
        except Exception:
            daemon.proc.kill()
            daemon.wait()
            raise

    def audit(self, kind: str) -> Tally:
        self.kill_all()
        tally = audit(
            kind,
            self.layout.inbox,
            self.layout.outbox,
            self.layout.failed,
            self.good,
            self.logs(),
            self.hostile,
            faults=self.faults,
        )
        wrong = [
            j
            for j in self.jobs()
            if j.state in (JobState.FAILED, JobState.CANCELLED) and j.sha256 in self.good
        ]
        tally.wrong_failures = len(wrong)
        tally.notes.extend(f"job {j.id} {j.state}: {j.relative}: {j.error}" for j in wrong)
        return tally

    def jobs(self) -> list[Job]:
        store = JobStore(load_settings(self.layout.config_file).database_url)
        try:
            with Session(store.engine) as session:
                return list(session.exec(select(Job).order_by(col(Job.id))).all())
        finally:
            store.close()


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.002) -> bool:
    """Poll fast (kill points are milliseconds wide); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def new_in(folder: Path, before: set[str], match: Callable[[str], bool]) -> Callable[[], bool]:
    def appeared() -> bool:
        try:
            names = {entry.name for entry in os.scandir(folder)}
        except OSError:
            return False
        return any(match(name) for name in names - before)

    return appeared


def names_in(folder: Path) -> set[str]:
    try:
        return {entry.name for entry in os.scandir(folder)}
    except OSError:
        return set()


def in_log(daemon: DaemonProcess, text: str, after: int = 0) -> Callable[[], bool]:
    return lambda: text in daemon.log[after:]


_RUNNING = re.compile(r" running: (.+?) \(rule ")


def running_now(daemon: DaemonProcess) -> str | None:
    """The picture the daemon is working on, from its log; None when idle."""
    log = daemon.log
    found = list(_RUNNING.finditer(log))
    if not found:
        return None
    after = log[found[-1].end() :]
    return None if (" done in " in after or " failed" in after) else found[-1].group(1)


def idle_or_fresh(daemon: DaemonProcess, fresh: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: running_now(daemon) is None or fresh()


def queued(daemon: DaemonProcess, count: int) -> Callable[[], bool]:
    return lambda: daemon.log.count(" queued: ") >= count


# --- kill -9 -------------------------------------------------------------------------

PHASES = ("intake", "render", "encode", "publish")


def kill_points(
    root: Path, mounts: Mounts, kills: int, seed: int = 0, cross_device: bool = False
) -> Tally:
    """``kill -9`` at ``kills`` points spread over intake, render, encode and publish.

    Each round starts a daemon, makes sure work is waiting, waits for its phase's sign
    (a fresh drop settling; "running" in the log; a scratch encode in state/work; a new
    video or temporary in the outbox) plus a random delay, and kills it. With
    ``cross_device`` the outbox is a tmpfs, so publishing copies (temporaries, then
    unlinking the original) instead of renaming.

    A kill during a picture's real work (decode to encode) counts one of its attempts;
    ``max_attempts`` (3) of them in a row is a crash loop by definition, which
    ``test_a_crash_loop_is_still_caught`` checks. So the run, like real crashes that
    strike at random in a long stream of work, never strikes one picture's work a
    third time: a round whose running picture was already hit twice waits for the next.
    """
    rng = random.Random(seed)
    rig = Rig(root, mounts)
    if cross_device:
        mounts.tmpfs(rig.layout.outbox, "512m")
    hits: Counter[str] = Counter()
    worked: Counter[str] = Counter()  # kills that fell in a picture's real work
    work = rig.layout.state / "work"

    def fresh(daemon: DaemonProcess) -> Callable[[], bool]:
        def check() -> bool:
            name = running_now(daemon)
            return name is not None and worked[name] < 2

        return check

    for round_ in range(kills):
        phase = PHASES[round_ % len(PHASES)]
        waiting = sum(1 for p in rig.layout.inbox.iterdir() if not p.name.startswith("."))
        if phase != "intake" and waiting < 2:
            rig.drop(2, big=rng.random() < 0.2)
        daemon = rig.start()
        before = names_in(rig.layout.outbox)
        if phase == "intake":
            wait_until(in_log(daemon, "i2vd started"), 20)
            # The job it resumes first must not be one struck twice already.
            wait_until(in_log(daemon, " running: "), 2)
            wait_until(idle_or_fresh(daemon, fresh(daemon)), 20)
            rig.drop(1)
            time.sleep(rng.uniform(0, 0.8))
            hit = True
        elif phase == "render":
            hit = wait_until(fresh(daemon), 20)
            time.sleep(rng.uniform(0, 0.3))
        elif phase == "encode":
            hit = wait_until(fresh(daemon), 20)
            hit = hit and wait_until(lambda: bool(names_in(work)), 20)
            time.sleep(rng.uniform(0, 0.15))
        else:
            hit = wait_until(
                new_in(rig.layout.outbox, before, lambda n: n.endswith((".mp4", ".i2vd-tmp"))), 20
            )
            time.sleep(rng.uniform(0, 0.005))
        daemon.proc.kill()
        daemon.wait()
        struck = running_now(daemon)
        if struck is not None and phase != "publish":
            worked[struck] += 1
        rig.faults += 1
        hits[phase if hit else f"{phase} (missed)"] += 1
    rig.drain()
    tally = rig.audit("kill -9" + (" (outbox on another filesystem)" if cross_device else ""))
    tally.notes.insert(0, f"kill points: {dict(sorted(hits.items()))}")
    return tally


# --- disks ---------------------------------------------------------------------------


def fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Fill ``folder``'s filesystem, leaving about ``leave_bytes`` free."""
    filler = folder / ".filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as handle:
        try:
            while shutil.disk_usage(folder).free > leave_bytes + len(chunk):
                handle.write(chunk)
                handle.flush()
            handle.write(b"\0" * max(0, shutil.disk_usage(folder).free - leave_bytes))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            pass
    return filler


def full_outbox(root: Path, mounts: Mounts, images: int = 3) -> Tally:
    rig = Rig(root, mounts, retry_delay_seconds=1.0)
    mounts.tmpfs(rig.layout.outbox, "8m")
    filler = fill(rig.layout.outbox)
    daemon = rig.start()
    rig.drop(images)
    wait_until(in_log(daemon, "failed"), 30, 0.05)
    rig.faults += 1
    filler.unlink()
    wait_until(lambda: not any(p.suffix == ".jpg" for p in rig.layout.inbox.iterdir()), 30, 0.1)
    rig.drain()
    return rig.audit("full outbox")


def full_state_disk(root: Path, mounts: Mounts, images: int = 3) -> Tally:
    rig = Rig(root, mounts)
    mounts.tmpfs(rig.layout.state, "16m")
    daemon = rig.start()
    daemon.wait_started()
    filler = fill(rig.layout.state)
    rig.drop(images)
    time.sleep(5)  # two rescans with the disk full
    rig.faults += 1
    filler.unlink()
    wait_until(lambda: not any(p.suffix == ".jpg" for p in rig.layout.inbox.iterdir()), 30, 0.1)
    rig.drain()
    return rig.audit("full state disk")


def read_only_outbox(root: Path, mounts: Mounts, images: int = 3) -> Tally:
    rig = Rig(root, mounts, retry_delay_seconds=1.0)
    real = root / "outbox-real"
    real.mkdir()
    mounts.bind(real, rig.layout.outbox)
    remount(rig.layout.outbox, "ro")
    daemon = rig.start()
    rig.drop(images)
    wait_until(in_log(daemon, "failed"), 30, 0.05)
    rig.faults += 1
    remount(rig.layout.outbox, "rw")
    wait_until(lambda: not any(p.suffix == ".jpg" for p in rig.layout.inbox.iterdir()), 30, 0.1)
    rig.drain()
    return rig.audit("read-only outbox")


# --- shares vanishing ----------------------------------------------------------------


def inbox_renamed(root: Path, mounts: Mounts, images: int = 10, away: float = 4.0) -> Tally:
    """The inbox is renamed away while jobs are queued, and back after ``away`` s."""
    rig = Rig(root, mounts)
    daemon = rig.start()
    rig.drop(images)
    wait_until(queued(daemon, images), 30, 0.02)
    os.rename(rig.layout.inbox, root / "inbox-away")
    rig.faults += 1
    time.sleep(away)
    if rig.layout.inbox.exists():  # something made a new, empty inbox meanwhile
        os.rename(rig.layout.inbox, root / "inbox-impostor")
    os.rename(root / "inbox-away", rig.layout.inbox)
    rig.drain()
    return rig.audit("inbox renamed away and back")


def inbox_unmounted(root: Path, mounts: Mounts, images: int = 10, away: float = 4.0) -> Tally:
    """The inbox share is unmounted (an empty mountpoint stays) while jobs are queued;
    two more pictures reach the share meanwhile; then it is mounted again. Rescans are
    30 s apart (the default), so only a re-armed watch finds those two at once."""
    rig = Rig(root, mounts, rescan_seconds=30)
    real = root / "inbox-real"
    real.mkdir()
    mounts.bind(real, rig.layout.inbox)
    daemon = rig.start()
    rig.drop(images)
    wait_until(queued(daemon, images), 30, 0.02)
    if not unmount(rig.layout.inbox):
        unmount(rig.layout.inbox, lazy=True)
    rig.faults += 1
    meanwhile = rig.drop(2, folder=real)
    time.sleep(away)
    mount_bind(real, rig.layout.inbox)
    returned = time.monotonic()
    picked = wait_until(lambda: all(f"queued: {p.name}" in daemon.log for p in meanwhile), 20, 0.1)
    tally_note = (
        f"pictures that arrived meanwhile queued {time.monotonic() - returned:.1f}s "
        "after the share returned"
        if picked
        else "pictures that arrived meanwhile not queued within 20s of its return"
    )
    rig.drain()
    tally = rig.audit("inbox unmounted (empty mountpoint) and back")
    tally.notes.insert(0, tally_note)
    return tally


def inbox_lazy_unmount_mid_publish(root: Path, mounts: Mounts, away: float = 4.0) -> Tally:
    """A big PNG is being copied to an outbox on another filesystem when the inbox
    share is lazily unmounted; it is mounted again ``away`` seconds later."""
    rig = Rig(root, mounts, retry_delay_seconds=1.0)
    real = root / "inbox-real"
    real.mkdir()
    mounts.bind(real, rig.layout.inbox)
    mounts.tmpfs(rig.layout.outbox, "512m")
    daemon = rig.start()
    daemon.wait_started()
    before = names_in(rig.layout.outbox)
    (path,) = rig.drop(1, big=True, stem="big")
    hit = wait_until(
        new_in(
            rig.layout.outbox,
            before,
            lambda n: n.startswith(f".{path.name}") and n.endswith(".i2vd-tmp"),
        ),
        60,
        0.001,
    )
    unmount(rig.layout.inbox, lazy=True)
    rig.faults += 1
    time.sleep(away)
    mount_bind(real, rig.layout.inbox)
    time.sleep(3)
    rig.drain()
    tally = rig.audit("inbox lazily unmounted mid-publish")
    tally.notes.insert(
        0, "unmounted while the original was being copied" if hit else "missed the copy window"
    )
    return tally


def outbox_unmounted(root: Path, mounts: Mounts, images: int = 3, away: float = 3.0) -> Tally:
    """The outbox share is unmounted (an empty mountpoint stays) and mounted again."""
    rig = Rig(root, mounts)
    real = root / "outbox-real"
    real.mkdir()
    mounts.bind(real, rig.layout.outbox)
    daemon = rig.start()
    rig.drop(1)
    wait_until(in_log(daemon, " done in "), 30, 0.05)
    if not unmount(rig.layout.outbox):
        unmount(rig.layout.outbox, lazy=True)
    rig.faults += 1
    rig.drop(images)
    time.sleep(away)
    hidden = files_under(rig.layout.outbox)  # written to the bare mountpoint
    mount_bind(real, rig.layout.outbox)
    rig.drain()
    tally = rig.audit("outbox unmounted (empty mountpoint) and back")
    if hidden:
        tally.notes.insert(0, f"{len(hidden)} file(s) written under the bare mountpoint")
    return tally


def outbox_renamed(root: Path, mounts: Mounts, images: int = 3, away: float = 3.0) -> Tally:
    rig = Rig(root, mounts)
    daemon = rig.start()
    rig.drop(1)
    wait_until(in_log(daemon, " done in "), 30, 0.05)
    os.rename(rig.layout.outbox, root / "outbox-away")
    rig.faults += 1
    rig.drop(images)
    time.sleep(away)
    stray = 0
    if rig.layout.outbox.exists():
        stray = len(files_under(rig.layout.outbox))
        os.rename(rig.layout.outbox, root / "outbox-impostor")
    os.rename(root / "outbox-away", rig.layout.outbox)
    rig.drain()
    tally = rig.audit("outbox renamed away and back")
    if stray:
        tally.notes.insert(0, f"{stray} file(s) written to a new outbox made in its place")
    return tally


# --- signals -------------------------------------------------------------------------


def signal_storm(root: Path, mounts: Mounts, rounds: int = 3) -> Tally:
    """Bursts of SIGHUP, then SIGTERM, then SIGTERM and SIGHUP until the process is gone:
    it must exit 0 (stopped, not killed by a signal) each time."""
    rig = Rig(root, mounts, rule=SLOW_RULE)
    exits = []
    for _ in range(rounds):
        rig.drop(2)
        daemon = rig.start()
        wait_until(in_log(daemon, " running: "), 30, 0.02)
        for _ in range(20):
            daemon.proc.send_signal(signal.SIGHUP)
            rig.faults += 1
            time.sleep(0.005)
        daemon.proc.send_signal(signal.SIGTERM)
        rig.faults += 1
        while daemon.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                try:
                    daemon.proc.send_signal(sig)
                    rig.faults += 1
                except ProcessLookupError:
                    break
            time.sleep(0.01)
        exits.append(daemon.wait())
    rig.drain()
    tally = rig.audit("SIGTERM/SIGHUP storms")
    killed = [code for code in exits if code != 0]
    tally.notes.insert(0, f"exit codes {exits}")
    tally.killed_by_signal = len(killed)
    return tally


# --- hostile inputs ------------------------------------------------------------------


def hostile_corpus(root: Path, mounts: Mounts) -> Tally:
    """Every item of the generated corpus, drained with ``--once``."""
    import hostile

    rig = Rig(root, mounts)
    items = hostile.build(rig.layout.inbox)
    rig.faults = len(items)
    rig.drain()
    tally = rig.audit("hostile inputs")
    tally.dropped = len(items)
    videos, failed = sidecar_hashes(rig.layout.outbox), failed_hashes(rig.layout.failed)
    for item in items:
        if item.expect == "ignored":
            ok = os.path.lexists(item.path)
        else:
            made, quarantined = videos[item.sha256 or ""], failed[item.sha256 or ""]
            ok = {
                "video": made == 1 and not quarantined,
                "failed": quarantined == 1 and not made,
                "either": made + quarantined == 1,
            }[item.expect]
            tally.good_in_failed += item.expect == "video" and quarantined > 0
        if not ok:
            tally.hostile_unhandled += 1
            name = repr(os.fsencode(item.path.name))
            tally.notes.append(f"{name[:40]}: expected {item.expect}")
    tally.left_in_inbox = sum(
        1 for item in items if item.expect != "ignored" and os.path.lexists(item.path)
    )
    return tally


def sidecar_hashes(outbox: Path) -> Counter[str]:
    import json

    found: Counter[str] = Counter()
    for path in files_under(outbox):
        if path.suffix == ".json" and path.with_suffix(".mp4").is_file():
            try:
                found[str(json.loads(path.read_bytes()).get("sha256"))] += 1
            except ValueError:
                continue
    return found


def failed_hashes(failed: Path) -> Counter[str]:
    return Counter(
        sha256_file(path)
        for path in files_under(failed)
        if not path.name.endswith((".error.json", ".i2vd-tmp"))
    )
