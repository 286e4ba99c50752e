"""End to end: ``i2vd run`` as a subprocess on temp folders, real files, real ffmpeg."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from conftest import Layout, make_image, wait_for
from daemon.config import load_settings
from daemon.store import Job, JobStore
from daemon.video import probe

pytestmark = pytest.mark.slow

# 1024p, 32 frames: about a second of work, long enough to be caught 'running'.
SLOW_RULE = """\
name: slow
match: {patterns: ["big*"]}
priority: 10
engine: motion
preset: quick
params: {resolution: 1024, frames: 32}
"""

# 512p, 30 s at 60 fps (1,800 frames): several seconds, so a second file waits queued behind it.
SLOWER_RULE = SLOW_RULE.replace("resolution: 1024", "resolution: 512") + (
    "motion: {duration: 60, fps: 60}\n"
)


def outputs(stem: str, rule: str = "motion", folder: str = "", ext: str = "jpg") -> list[str]:
    """The sorted outbox listing of one published image: original, sidecar, video."""
    prefix = f"{folder}/" if folder else ""
    return sorted(
        [f"{prefix}{stem}.{ext}", f"{prefix}{stem}.{rule}.json", f"{prefix}{stem}.{rule}.mp4"]
    )


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def jobs(layout: Layout) -> list[Job]:
    """Every job row, read from the daemon's own SQLite file."""
    store = JobStore(load_settings(layout.config_file).database_url)
    try:
        with Session(store.engine) as session:
            return list(session.exec(select(Job).order_by(col(Job.id))).all())
    finally:
        store.close()


def states(layout: Layout) -> dict[str, int]:
    store = JobStore(load_settings(layout.config_file).database_url)
    try:
        return store.count_by_state()
    finally:
        store.close()


def leftovers(layout: Layout) -> list[str]:
    """Temporaries anywhere, and scratch files in state/work: both must be gone."""
    found = [str(p) for p in layout.root.rglob("*") if p.name.endswith(".i2vd-tmp")]
    return found + [f"work/{name}" for name in layout.files(layout.state / "work")]


def check_video(layout: Layout, sidecar_path: Path, frames: int, side: int) -> dict[str, Any]:
    """The sidecar's claims match the file on disk, and the original sits beside it."""
    doc = read_json(sidecar_path)
    video = sidecar_path.with_suffix(".mp4")
    info = probe(video)
    effective = doc["effective"]
    assert (info.width, info.height, info.frames) == (side, side, frames)
    assert (effective["width"], effective["height"], effective["frames"]) == (
        info.width,
        info.height,
        info.frames,
    )
    assert effective["fps"] == info.fps == 8
    assert doc["outputs"][:2] == [video.name, sidecar_path.name]
    original = sidecar_path.parent / doc["outputs"][2]
    assert hashlib.sha256(original.read_bytes()).hexdigest() == doc["sha256"]
    assert {"queued", "load", "generate", "encode", "total"} <= doc["timings"].keys()
    for key in ("rule", "rule_file", "engine", "model", "prompt", "negative_prompt"):
        assert key in doc
    return doc


def test_dropped_jpeg_and_png_become_videos_with_sidecars(layout: Layout, daemon) -> None:
    proc = daemon()
    proc.wait_started()
    jpeg = make_image(layout.inbox / "a.jpg", 320, 240)
    png = make_image(layout.inbox / "shots" / "b.png", 200, 300, seed=3)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (jpeg, png)}

    expected = sorted([*outputs("a"), *outputs("b", folder="shots", ext="png")])
    wait_for(lambda: layout.files(layout.outbox) == expected)
    assert proc.stop() == 0

    assert layout.files(layout.inbox) == []
    assert layout.files(layout.failed) == []
    first = check_video(layout, layout.outbox / "a.motion.json", frames=8, side=256)
    second = check_video(layout, layout.outbox / "shots" / "b.motion.json", frames=8, side=256)
    assert (first["source"], second["source"]) == ("a.jpg", "shots/b.png")
    assert (first["sha256"], second["sha256"]) == (digests["a.jpg"], digests["b.png"])
    assert first["rule"] == second["rule"] == "motion"
    assert first["rule_file"] == str(layout.rules / "motion.yaml")
    assert first["requested"]["resolution"] == first["effective"]["resolution"] == 256
    assert first["duplicate_of"] is None
    assert states(layout) == {"done": 2}
    assert leftovers(layout) == []


def test_debug_log_has_one_line_per_state_change_with_timings(layout: Layout, daemon) -> None:
    proc = daemon()
    proc.wait_started()
    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: layout.files(layout.outbox) == outputs("a"))
    assert proc.stop() == 0

    log = proc.log
    queued = re.findall(r"job 1 queued: a\.jpg -> rule motion", log)
    running = re.findall(r"job 1 running: a\.jpg \(rule motion, attempt 1/3\)", log)
    done = re.findall(
        r"job 1 done in [\d.]+s \(queued [\d.]+s, generate [\d.]+s, encode [\d.]+s\)", log
    )
    assert (len(queued), len(running), len(done)) == (1, 1, 1), log
    assert log.index(queued[0]) < log.index(running[0]) < log.index(done[0])
    assert re.search(r"^\S+ \S+ DEBUG ", log, re.MULTILINE), "the log is not at DEBUG level"
    # i2vd's own lines: exactly those three state changes for this job, nothing repeated.
    own = re.findall(r" daemon\.\w+: (job 1 \w+)", log)
    assert own == ["job 1 queued", "job 1 running", "job 1 done"], own


def test_a_slowly_written_file_is_taken_once_and_whole(layout: Layout, daemon) -> None:
    """A copy that trickles in over longer than the settle window (0.5 s) is not taken
    half-written: one job, and the published original is byte-identical to the source."""
    source = make_image(layout.root / "source.png", 480, 360)
    data = source.read_bytes()
    proc = daemon()
    proc.wait_started()
    target = layout.inbox / "slow.png"
    chunks = 8
    with open(target, "wb") as handle:
        for index in range(chunks):  # 8 chunks 0.3 s apart: 2.1 s in all, never quiet 0.5 s
            handle.write(data[index * len(data) // chunks : (index + 1) * len(data) // chunks])
            handle.flush()
            time.sleep(0.3)
    wait_for(lambda: (layout.outbox / "slow.motion.json").exists(), 30)
    assert proc.stop() == 0
    doc = read_json(layout.outbox / "slow.motion.json")
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert (layout.outbox / "slow.png").read_bytes() == data
    assert [job.state for job in jobs(layout)] == ["done"]
    assert layout.files(layout.failed) == []


def test_bad_files_go_to_failed_while_a_good_one_is_processed(layout: Layout, daemon) -> None:
    proc = daemon()
    proc.wait_started()
    batch = layout.inbox / "batch"
    good = make_image(batch / "good.jpg")
    truncated = make_image(layout.root / "whole.jpg").read_bytes()
    (batch / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (batch / "empty.jpg").write_bytes(b"")
    (batch / "notes.png").write_text("this is text, not a PNG\n")

    bad = {"truncated.jpg": "cut short", "empty.jpg": "empty", "notes.png": "not an image"}
    expected_failed = sorted(
        name for bad_name in bad for name in (f"batch/{bad_name}", f"batch/{bad_name}.error.json")
    )
    wait_for(lambda: layout.files(layout.outbox) == outputs("good", folder="batch"))
    wait_for(lambda: layout.files(layout.failed) == expected_failed)
    assert proc.stop() == 0

    assert not good.exists()
    assert layout.files(layout.inbox) == []
    for name, reason in bad.items():
        report = read_json(layout.failed / "batch" / f"{name}.error.json")
        assert reason in report["error"], report
        assert report["hint"]
        assert report["attempts"] == 1
        assert report["rule"] == "motion"
    assert states(layout) == {"done": 1, "failed": 3}
    assert leftovers(layout) == []


def test_a_duplicate_drop_is_not_regenerated(layout: Layout, daemon) -> None:
    proc = daemon()
    proc.wait_started()
    first = make_image(layout.inbox / "a.jpg")
    data = first.read_bytes()
    wait_for(lambda: layout.files(layout.outbox) == outputs("a"))

    (layout.inbox / "b.jpg").write_bytes(data)
    wait_for(lambda: layout.files(layout.outbox) == sorted([*outputs("a"), *outputs("b")]))
    (layout.inbox / "a.jpg").write_bytes(data)  # the very same file, same name, again
    wait_for(lambda: "a-2.jpg" in layout.files(layout.outbox))
    assert proc.stop() == 0

    assert layout.files(layout.outbox) == sorted(
        [*outputs("a"), *outputs("b"), "a-2.jpg", "a.motion-2.json", "a.motion-2.mp4"]
    )
    original = os.stat(layout.outbox / "a.motion.mp4").st_ino
    assert read_json(layout.outbox / "b.motion.json")["duplicate_of"] == "a.motion.mp4"
    # The third may point at either earlier video: both are the same file.
    assert read_json(layout.outbox / "a.motion-2.json")["duplicate_of"] in (
        "a.motion.mp4",
        "b.motion.mp4",
    )
    for video in ("b.motion.mp4", "a.motion-2.mp4"):
        assert os.stat(layout.outbox / video).st_ino == original
    assert len(re.findall(r"reusing its video", proc.log)) == 2
    assert len(re.findall(r"job \d+ running:", proc.log)) == 3
    first, second, third = jobs(layout)
    assert (first.duplicate_of, second.duplicate_of) == (None, first.id)
    assert third.duplicate_of in (first.id, second.id)
    assert [job.state for job in (first, second, third)] == ["done"] * 3
    assert leftovers(layout) == []


def test_kill_9_mid_job_then_restart_gives_exactly_one_video(layout: Layout, daemon) -> None:
    layout.rule("slow", SLOW_RULE)
    make_image(layout.inbox / "big.jpg", 640, 480)
    work = layout.state / "work"
    first = daemon()
    first.wait_started()
    # ffmpeg is writing the scratch video: the job is as far as it gets before publishing.
    wait_for(lambda: any(work.glob("*.mp4")), timeout=30, interval=0.01)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    assert states(layout) == {"running": 1}
    assert layout.files(layout.outbox) == []
    assert layout.files(layout.inbox) == ["big.jpg"]

    second = daemon()
    second.wait_started()
    wait_for(lambda: layout.files(layout.outbox) == outputs("big", rule="slow"))
    assert second.stop() == 0

    assert "job 1 was running when i2vd stopped; queued again" in second.log
    check_video(layout, layout.outbox / "big.slow.json", frames=32, side=1024)
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.failed) == []
    assert [(job.state, job.attempts) for job in jobs(layout)] == [("done", 2)]
    assert leftovers(layout) == []


def test_once_exits_0_after_a_batch_of_good_images(layout: Layout, daemon) -> None:
    make_image(layout.inbox / "a.jpg")
    make_image(layout.inbox / "b.png", seed=1)
    make_image(layout.inbox / "deep" / "er" / "c.jpg", seed=2)

    proc = daemon("--once")
    assert proc.wait(60) == 0

    assert layout.files(layout.outbox) == sorted(
        [*outputs("a"), *outputs("b", ext="png"), *outputs("c", folder="deep/er")]
    )
    assert layout.files(layout.inbox) == []
    assert states(layout) == {"done": 3}
    assert leftovers(layout) == []


def test_once_exits_1_when_an_image_failed(layout: Layout, daemon) -> None:
    make_image(layout.inbox / "good.jpg")
    (layout.inbox / "bad.png").write_text("not an image\n")

    proc = daemon("--once")
    assert proc.wait(60) == 1

    assert layout.files(layout.outbox) == outputs("good")
    assert layout.files(layout.failed) == ["bad.png", "bad.png.error.json"]
    assert "failed: bad.png" in proc.log
    assert states(layout) == {"done": 1, "failed": 1}


def test_odd_file_names_work_end_to_end(layout: Layout, daemon) -> None:
    layout.rule(
        "motion",
        "engine: motion\npreset: quick\nparams: {resolution: 256}\n"
        'prompt: "{{ stem }} / {{ folder }}"\n',
    )
    names = ["my photo.jpg", "café crème.jpg", "照片.png", "it's.jpg", 'say "hi".jpg']
    folder = "été 2024/写真"
    proc = daemon()
    proc.wait_started()
    for index, name in enumerate(names):
        make_image(layout.inbox / folder / name, 96, 64, seed=index)

    expected = sorted(
        item
        for name in names
        for item in outputs(Path(name).stem, folder=folder, ext=Path(name).suffix[1:])
    )
    wait_for(lambda: layout.files(layout.outbox) == expected)
    assert proc.stop() == 0

    for name in names:
        stem = Path(name).stem
        doc = check_video(layout, layout.outbox / folder / f"{stem}.motion.json", 8, 256)
        assert doc["source"] == f"{folder}/{name}"
        assert doc["prompt"] == f"{stem} / {folder}"
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.failed) == []
    assert states(layout) == {"done": len(names)}


def test_a_symlink_in_the_inbox_is_never_read(layout: Layout, daemon) -> None:
    outside = layout.root / "outside"
    real = make_image(outside / "real.jpg")
    album = outside / "album"
    make_image(album / "in-album.jpg", seed=1)
    (layout.inbox / "before.jpg").symlink_to(real)  # found by the start-up scan
    untouched = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outside.rglob("*.jpg")}

    proc = daemon()
    proc.wait_started()
    (layout.inbox / "after.jpg").symlink_to(real)  # found by a file event
    (layout.inbox / "album").symlink_to(album, target_is_directory=True)
    make_image(layout.inbox / "good.jpg", seed=2)
    wait_for(lambda: layout.files(layout.outbox) == outputs("good"))
    assert proc.stop() == 0

    assert layout.files(layout.failed) == []
    assert sorted(p.name for p in layout.inbox.iterdir() if p.is_symlink()) == [
        "after.jpg",
        "album",
        "before.jpg",
    ]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outside.rglob("*.jpg")} == untouched
    assert [job.relative for job in jobs(layout)] == ["good.jpg"]


def test_sigterm_when_idle_exits_0_promptly(layout: Layout, daemon) -> None:
    proc = daemon()
    proc.wait_started()
    started = time.monotonic()
    assert proc.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 5
    assert "received SIGTERM" in proc.log
    assert "stopped" in proc.log


def test_sigterm_mid_job_leaves_no_half_written_files(layout: Layout, daemon) -> None:
    layout.rule("slow", SLOW_RULE)
    source = make_image(layout.inbox / "big.jpg", 640, 480)
    proc = daemon()
    proc.wait_started()
    wait_for(lambda: states(layout).get("running"), timeout=30, interval=0.01)
    assert proc.stop(signal.SIGTERM, timeout=30) == 0

    [job] = jobs(layout)
    assert job.state in ("queued", "done")
    if job.state == "queued":
        assert "interrupted by shutdown; back in the queue" in proc.log
        assert job.attempts == 0
        assert source.is_file()
        assert layout.files(layout.outbox) == []
    else:
        assert layout.files(layout.outbox) == outputs("big", rule="slow")
        check_video(layout, layout.outbox / "big.slow.json", frames=32, side=1024)
    assert layout.files(layout.failed) == []
    assert leftovers(layout) == []


def test_images_already_in_the_inbox_at_start_are_processed(layout: Layout, daemon) -> None:
    make_image(layout.inbox / "early.jpg")
    make_image(layout.inbox / "sub" / "earlier.png", seed=1)

    proc = daemon()
    proc.wait_started()
    expected = sorted([*outputs("early"), *outputs("earlier", folder="sub", ext="png")])
    wait_for(lambda: layout.files(layout.outbox) == expected)
    assert proc.stop() == 0
    assert states(layout) == {"done": 2}


def test_periodic_rescans_queue_nothing_twice(layout: Layout, daemon) -> None:
    layout.rule("slow", SLOWER_RULE)
    layout.write_config(rescan_seconds=1)
    make_image(layout.inbox / "notes.gif")
    make_image(layout.inbox / "big.jpg", 640, 480)
    proc = daemon()
    proc.wait_started()
    wait_for(lambda: states(layout).get("running"), timeout=30)
    make_image(layout.inbox / "small.jpg", seed=4)
    wait_for(lambda: states(layout) == {"running": 1, "queued": 1}, timeout=30)
    queued_at = time.monotonic()

    wait_for(lambda: states(layout) == {"done": 2}, timeout=60)
    waited = time.monotonic() - queued_at
    assert proc.stop() == 0

    assert waited > 2.5, f"small.jpg waited only {waited:.1f}s: too short to see rescans"
    assert [job.relative for job in jobs(layout)] == ["big.jpg", "small.jpg"]
    assert len(re.findall(r"queued: small\.jpg", proc.log)) == 1
    assert len(re.findall(r"no rule matches notes\.gif", proc.log)) == 1
    assert layout.files(layout.inbox) == ["notes.gif"]
    assert layout.files(layout.outbox) == sorted([*outputs("big", rule="slow"), *outputs("small")])
