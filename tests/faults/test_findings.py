"""One test per finding of the share-faults review: each failed before its fix.

1. a vanished inbox looked like deleted files (jobs failed);
2. a share vanishing mid-publish doubled the outputs;
3. names that are not valid UTF-8 were never processed (a traceback per rescan);
4. valid pictures were refused for their names (control characters, long names);
5. smaller faults: a full state disk, disk-full reasons naming a temp file, signals
   after "stopped", crashes outside the picture's own work counted as attempts, a
   re-mounted inbox waiting for the next rescan, a bad PNG checksum called "wrong
   extension".
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faultkit import SLOW_RULE, can_mount, mounts, unmount
from hostile import _bad_crc_png
from scenarios import (
    Rig,
    fill,
    in_log,
    inbox_lazy_unmount_mid_publish,
    inbox_unmounted,
    names_in,
    new_in,
    queued,
    signal_storm,
    wait_until,
)

from conftest import DaemonProcess, Layout, make_image
from daemon.images import BadImage, check_image
from daemon.store import JobState

pytestmark = pytest.mark.slow
Daemons = Callable[..., DaemonProcess]

needs_mounts = pytest.mark.skipif(not can_mount(), reason="needs root to mount tmpfs and binds")

BAD_ENDINGS = (JobState.FAILED, JobState.CANCELLED)


# --- 1. a vanished inbox is not a deleted file ---------------------------------------


@needs_mounts
@pytest.mark.parametrize("how", ["rename", "unmount"])
def test_a_vanished_inbox_fails_no_job(tmp_path: Path, how: str) -> None:
    with mounts() as made:
        rig = Rig(tmp_path, made)
        real = tmp_path / "inbox-real"
        if how == "unmount":
            real.mkdir()
            made.bind(real, rig.layout.inbox)
        daemon = rig.start()
        rig.drop(12)
        assert wait_until(queued(daemon, 12), 30, 0.02)
        if how == "rename":
            os.rename(rig.layout.inbox, real)
        else:
            assert unmount(rig.layout.inbox) or unmount(rig.layout.inbox, lazy=True)
        time.sleep(5)  # the worker reaches the queued jobs meanwhile
        during = [(j.id, j.state, j.error) for j in rig.jobs() if j.state in BAD_ENDINGS]
        if how == "rename":
            os.rename(real, rig.layout.inbox)
        else:
            made.bind(real, rig.layout.inbox)
        assert rig.drain() == 0, daemon.log
        tally = rig.audit(how)
        assert during == []
        assert "no longer in the inbox" not in "".join(rig.logs())
        assert tally.bad() == {}, tally.notes


# --- 2. a share that vanishes mid-publish never doubles the output ---------------------


@needs_mounts
def test_an_inbox_lost_mid_publish_completes_the_same_outputs(tmp_path: Path) -> None:
    with mounts() as made:
        tally = inbox_lazy_unmount_mid_publish(tmp_path, made)
        outbox = sorted(n for n in names_in(tmp_path / "outbox") if not n.startswith("."))
    if "missed" in tally.notes[0]:
        pytest.skip("the copy finished before the share could be unmounted")
    assert tally.bad() == {}, tally.notes
    assert outbox == ["big0001.motion.json", "big0001.motion.mp4", "big0001.png"]


# --- 3. names that are not UTF-8 ----------------------------------------------------------


def test_names_that_are_not_utf8_are_processed(layout: Layout, daemon: Daemons) -> None:
    inbox = os.fsencode(layout.inbox)
    for raw in (b"caf\xe9.jpg", b"bad\xff\xfe.png"):
        make_image(Path(os.fsdecode(os.path.join(inbox, raw))), seed=len(raw))
    proc = daemon("--once")
    assert proc.wait(60) == 0, proc.log
    outbox = sorted(n for n in os.listdir(os.fsencode(layout.outbox)) if n[:1] != b".")
    assert outbox == sorted(
        [
            b"bad\xff\xfe.motion.json",
            b"bad\xff\xfe.motion.mp4",
            b"bad\xff\xfe.png",
            b"caf\xe9.jpg",
            b"caf\xe9.motion.json",
            b"caf\xe9.motion.mp4",
        ]
    )
    assert "Traceback" not in proc.log
    assert layout.files(layout.inbox) == []
    sidecar = os.path.join(os.fsencode(layout.outbox), b"caf\xe9.motion.json")
    assert json.loads(Path(os.fsdecode(sidecar)).read_bytes())["source"] == "caf\\xe9.jpg"
    assert "caf\\xe9.jpg" in proc.log  # shown readably, not as a surrogate


# --- 4. any name makes a safe output name -------------------------------------------------


def test_pictures_with_odd_names_are_not_refused(layout: Layout, daemon: Daemons) -> None:
    names = [
        "new\nline.jpg",
        "bell\x07.jpg",
        "esc\x1b[31m.jpg",
        "a" * 251 + ".jpg",
        "\u00e9" * 125 + ".jpg",
    ]
    for seed, name in enumerate(names):
        make_image(layout.inbox / name, seed=seed)
    proc = daemon("--once")
    assert proc.wait(90) == 0, proc.log
    assert layout.files(layout.failed) == []
    videos = [n for n in os.listdir(layout.outbox) if n.endswith(".mp4")]
    assert len(videos) == len(names)
    for video in videos:
        assert len(video.encode()) <= 255
        assert not any(ord(c) < 32 for c in video)


# --- 5. smaller faults ----------------------------------------------------------------


@needs_mounts
def test_a_full_state_disk_is_said_once_without_tracebacks(tmp_path: Path) -> None:
    with mounts() as made:
        rig = Rig(tmp_path, made, rescan_seconds=1)
        made.tmpfs(rig.layout.state, "16m")
        daemon = rig.start()
        daemon.wait_started()
        filler = fill(rig.layout.state)
        rig.drop(2)
        time.sleep(4)  # several rescans with the disk full
        log = daemon.log
        filler.unlink()
        assert rig.drain() == 0
        tally = rig.audit("full state disk")
    assert "Traceback" not in log
    assert "full" in log and str(rig.layout.state) in log
    assert tally.bad() == {}, tally.notes


@needs_mounts
def test_a_full_outbox_is_named_not_its_temporary(tmp_path: Path) -> None:
    with mounts() as made:
        rig = Rig(tmp_path, made, retry_delay_seconds=5.0)
        made.tmpfs(rig.layout.outbox, "8m")
        filler = fill(rig.layout.outbox)
        daemon = rig.start()
        rig.drop(1)
        assert wait_until(in_log(daemon, "attempt 1/3 failed"), 30, 0.05)
        filler.unlink()
        line = next(x for x in daemon.log.splitlines() if "attempt 1/3 failed" in x)
        assert rig.drain() == 0
        tally = rig.audit("full outbox")
    assert "i2vd-tmp" not in line
    assert str(rig.layout.outbox) in line
    assert tally.bad() == {}


def test_signals_after_stopping_do_not_kill_the_process(tmp_path: Path) -> None:
    with mounts() as made:
        tally = signal_storm(tmp_path, made, rounds=2)
    assert tally.killed_by_signal == 0, tally.notes[0]
    assert tally.bad() == {}, tally.notes


def kill_when(rig: Rig, sign: str, times: int, delay: float = 0.0) -> None:
    """Start a daemon and ``kill -9`` it at ``sign`` ("render": its job is running;
    "publish": the job's first file appears in the outbox), ``times`` times."""
    for _ in range(times):
        daemon = rig.start()
        assert wait_until(in_log(daemon, " running: "), 60), daemon.log
        if sign == "publish":
            before = names_in(rig.layout.outbox)
            appeared = new_in(rig.layout.outbox, before, lambda n: n.endswith(PUBLISHING))
            assert wait_until(appeared, 60, 0.001), daemon.log
        time.sleep(delay)
        daemon.proc.kill()
        daemon.wait()


PUBLISHING = (".mp4", ".i2vd-tmp")


@needs_mounts
def test_crashes_outside_the_pictures_own_work_are_not_attempts(tmp_path: Path) -> None:
    """Killed three times while publishing (the outbox on another filesystem, so the
    big original takes a while to copy): that is not the picture's doing."""
    with mounts() as made:
        rig = Rig(tmp_path, made)
        made.tmpfs(rig.layout.outbox, "256m")
        rig.drop(1, big=True)
        kill_when(rig, "publish", 3)
        assert rig.drain() == 0, rig.logs()[-1]
        tally = rig.audit("kill while publishing")
    assert tally.bad() == {}, tally.notes
    assert "could not remove" not in "".join(rig.logs())


def test_a_crash_loop_is_still_caught(tmp_path: Path) -> None:
    """A picture that brings the daemon down while it is rendered, every time, ends in
    failed/ after max_attempts instead of looping forever."""
    with mounts() as made:
        rig = Rig(tmp_path, made, rule=SLOW_RULE)
        rig.drop(1)
        kill_when(rig, "render", 3, delay=0.8)
        assert rig.drain() == 1
    jobs = rig.jobs()
    assert [j.state for j in jobs] == [JobState.FAILED]
    assert "crash" in (jobs[0].error or "")


@needs_mounts
def test_a_remounted_inbox_is_watched_again_at_once(tmp_path: Path) -> None:
    with mounts() as made:
        tally = inbox_unmounted(tmp_path, made, images=2)
    assert "not queued" not in tally.notes[0], tally.notes[0]
    assert float(tally.notes[0].split("queued ")[1].split("s")[0]) < 5
    assert tally.bad() == {}, tally.notes


def test_a_bad_png_checksum_is_called_damaged() -> None:
    with pytest.raises(BadImage) as caught:
        check_image(_bad_crc_png(7))
    assert "wrong extension" not in str(caught.value)
    assert "damaged" in str(caught.value)
