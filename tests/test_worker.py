"""The worker in-process: real queue (SQLite), real motion engine, real ffmpeg, real files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import NEEDS_PERMISSIONS, Layout, make_image
from daemon.store import Job
from daemon.video import probe
from fake_gpu import FakeLoadingGPU
from worker_bench import Bench

CUSTOM_RULE = """\
name: motion
engine: motion
preset: quick
params: {resolution: 256, frames: 10, fps: 12, seed: 7}
aspect: source
prompt: "{{ stem }} in {{ folder }}"
negative_prompt: "blurry"
motion: {effect: pan_right, zoom: 1.3}
"""

PARAM_KEYS = {"resolution", "width", "height", "frames", "fps", "steps", "guidance", "seed"}
SIDECAR_KEYS = {
    "source",
    "sha256",
    "rule",
    "rule_file",
    "engine",
    "model",
    "prompt",
    "negative_prompt",
    "requested",
    "effective",
    "backoff",
    "timings",
    "device",
    "versions",
    "outputs",
}


@pytest.fixture
def bench(layout: Layout) -> Iterator[Bench]:
    made = Bench(layout)
    yield made
    made.store.close()


def sidecar(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_queued_job_is_published_with_video_sidecar_and_original(layout: Layout) -> None:
    layout.rule("motion", CUSTOM_RULE)
    bench = Bench(layout)
    source = make_image(layout.inbox / "trip" / "a.jpg", 320, 240)
    digest = sha256_file(source)
    queued = bench.queue(source)

    job = bench.run()

    assert (job.id, job.state, job.attempts, job.error) == (queued.id, "done", 1, None)
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.outbox) == ["trip/a.jpg", "trip/a.motion.json", "trip/a.motion.mp4"]
    assert sha256_file(layout.outbox / "trip" / "a.jpg") == digest
    video = layout.outbox / "trip" / "a.motion.mp4"
    assert job.video_path == str(video)
    doc = sidecar(layout.outbox / "trip" / "a.motion.json")
    assert doc.keys() >= SIDECAR_KEYS
    assert doc["source"] == "trip/a.jpg"
    assert doc["sha256"] == digest
    assert doc["rule"] == "motion"
    assert doc["rule_file"] == str(layout.rules / "motion.yaml")
    assert doc["engine"] == "motion"
    assert doc["model"] is None
    assert doc["prompt"] == "a in trip"
    assert doc["negative_prompt"] == "blurry"
    assert doc["duplicate_of"] is None
    assert doc["backoff"] == []
    assert doc["device"] == "cpu"
    assert doc["versions"]["i2vd"]
    assert doc["outputs"] == ["a.motion.mp4", "a.motion.json", "a.jpg"]
    assert set(doc["requested"]) == PARAM_KEYS
    assert set(doc["effective"]) == PARAM_KEYS
    # 320x240 at a 256x256 pixel budget, source aspect: 296x222.
    assert doc["requested"] == {
        "resolution": 256,
        "width": 296,
        "height": 222,
        "frames": 10,
        "fps": 12,
        "steps": 30,
        "guidance": 9.0,
        "seed": 7,
    }
    info = probe(video)
    effective = doc["effective"]
    assert (effective["width"], effective["height"]) == (info.width, info.height) == (296, 222)
    assert effective["frames"] == info.frames == 10
    assert effective["fps"] == info.fps == 12
    assert effective["resolution"] == 256
    assert {"queued", "load", "generate", "encode", "total"} <= doc["timings"].keys()
    assert all(value >= 0 for value in doc["timings"].values())
    assert doc["timings"]["total"] >= doc["timings"]["encode"]
    assert bench.worker.run_once(time.time()) is None
    bench.assert_clean()


def test_same_content_again_reuses_the_video(layout: Layout, bench: Bench) -> None:
    first_source = make_image(layout.inbox / "a.jpg")
    bench.queue(first_source)
    first = bench.run()
    again = layout.inbox / "b.jpg"
    shutil.copyfile(layout.outbox / "a.jpg", again)
    bench.queue(again)

    second = bench.run()

    assert (first.state, second.state) == ("done", "done")
    assert second.duplicate_of == first.id
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.outbox) == [
        "a.jpg",
        "a.motion.json",
        "a.motion.mp4",
        "b.jpg",
        "b.motion.json",
        "b.motion.mp4",
    ]
    original, reused = layout.outbox / "a.motion.mp4", layout.outbox / "b.motion.mp4"
    assert (
        os.stat(original).st_ino == os.stat(reused).st_ino
        or original.read_bytes() == reused.read_bytes()
    )
    first_doc = sidecar(layout.outbox / "a.motion.json")
    doc = sidecar(layout.outbox / "b.motion.json")
    assert doc["duplicate_of"] == "a.motion.mp4"
    assert doc["source"] == "b.jpg"
    assert doc["outputs"] == ["b.motion.mp4", "b.motion.json", "b.jpg"]
    assert doc["effective"] == first_doc["effective"]
    assert doc["timings"]["generate"] == 0.0
    assert {"queued", "load", "generate", "encode", "total"} <= doc["timings"].keys()
    bench.assert_clean()


def test_the_same_file_dropped_again_at_the_same_path_is_a_duplicate(
    layout: Layout, bench: Bench
) -> None:
    source = make_image(layout.inbox / "a.jpg")
    data = source.read_bytes()
    bench.queue(source)
    first = bench.run()
    source.write_bytes(data)  # the user drops the very same file again

    bench.queue(source)
    second = bench.run()

    assert second.state == "done"
    assert second.duplicate_of == first.id
    assert layout.files(layout.outbox) == [
        "a-2.jpg",
        "a.jpg",
        "a.motion-2.json",
        "a.motion-2.mp4",
        "a.motion.json",
        "a.motion.mp4",
    ]
    assert sidecar(layout.outbox / "a.motion-2.json")["duplicate_of"] == "a.motion.mp4"
    bench.assert_clean()


def test_an_edited_rule_regenerates_instead_of_reusing(layout: Layout, bench: Bench) -> None:
    source = make_image(layout.inbox / "a.jpg")
    bench.queue(source)
    first = bench.run()
    layout.rule("motion", CUSTOM_RULE.replace("frames: 10", "frames: 12"))
    shutil.copyfile(layout.outbox / "a.jpg", layout.inbox / "b.jpg")
    queued = bench.queue(layout.inbox / "b.jpg")

    second = bench.run()

    assert queued.rule_hash != first.rule_hash
    assert second.state == "done"
    assert second.duplicate_of is None
    doc = sidecar(layout.outbox / "b.motion.json")
    assert doc["duplicate_of"] is None
    assert doc["effective"]["frames"] == probe(layout.outbox / "b.motion.mp4").frames == 12
    assert probe(layout.outbox / "a.motion.mp4").frames == 8
    assert (
        os.stat(layout.outbox / "a.motion.mp4").st_ino
        != os.stat(layout.outbox / "b.motion.mp4").st_ino
    )
    bench.assert_clean()


def _block_with_permissions(folder: Path) -> None:
    folder.mkdir(parents=True)
    folder.chmod(0o555)


def _block_with_dangling_link(folder: Path) -> None:
    # Like a share that is not mounted: the folder's name exists, its target does not.
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(folder.parent / "unmounted-share", target_is_directory=True)


def _unblock(folder: Path) -> None:
    if folder.is_symlink():
        folder.unlink()
    else:
        folder.chmod(0o755)


BLOCKERS = [
    pytest.param(
        _block_with_permissions,
        id="read-only-folder",
        marks=NEEDS_PERMISSIONS,
    ),
    pytest.param(_block_with_dangling_link, id="unmounted-share"),
]


@pytest.mark.parametrize("block", BLOCKERS)
def test_a_publish_failure_is_retried_then_quarantined(layout: Layout, block) -> None:
    bench = Bench(layout, max_attempts=2)
    source = make_image(layout.inbox / "sub" / "a.jpg")
    target_folder = layout.outbox / "sub"
    block(target_folder)
    try:
        bench.queue(source)
        job = bench.run()

        assert (job.state, job.attempts) == ("retrying", 1)
        assert job.error
        assert job.hint
        assert source.is_file()
        assert layout.files(layout.failed) == []
        bench.assert_clean()

        job = bench.run()
    finally:
        _unblock(target_folder)

    assert (job.state, job.attempts) == ("failed", 2)
    assert not source.exists()
    assert layout.files(layout.failed) == ["sub/a.jpg", "sub/a.jpg.error.json"]
    report = sidecar(layout.failed / "sub" / "a.jpg.error.json")
    assert report["error"] == job.error
    assert report["hint"] == job.hint
    assert report["attempts"] == 2
    assert report["rule"] == "motion"
    assert layout.files(layout.outbox) == []
    assert bench.worker.run_once(time.time()) is None
    bench.assert_clean()


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(
            _block_with_permissions,
            id="read-only-folder",
            marks=NEEDS_PERMISSIONS,
        ),
        pytest.param(_block_with_dangling_link, id="unmounted-share"),
    ],
)
def test_a_publish_failure_names_the_outbox_folder(layout: Layout, bench: Bench, block) -> None:
    source = make_image(layout.inbox / "sub" / "a.jpg")
    block(layout.outbox / "sub")
    try:
        bench.queue(source)
        job = bench.run()
    finally:
        _unblock(layout.outbox / "sub")
    assert job.state == "retrying"
    assert job.error is not None and str(layout.outbox / "sub") in job.error
    assert "state/work" not in job.error


def test_a_retry_succeeds_once_the_fault_is_gone(layout: Layout, bench: Bench) -> None:
    source = make_image(layout.inbox / "sub" / "a.jpg")
    _block_with_dangling_link(layout.outbox / "sub")
    bench.queue(source)
    assert bench.run().state == "retrying"
    _unblock(layout.outbox / "sub")

    job = bench.run()

    assert (job.state, job.attempts, job.error) == ("done", 2, None)
    assert layout.files(layout.outbox) == ["sub/a.jpg", "sub/a.motion.json", "sub/a.motion.mp4"]
    bench.assert_clean()


def test_an_outbox_folder_replaced_by_a_file_is_retried(layout: Layout, bench: Bench) -> None:
    source = make_image(layout.inbox / "sub" / "a.jpg")
    (layout.outbox / "sub").write_text("a file where the folder should be")
    bench.queue(source)

    job = bench.run()

    assert (job.state, job.attempts) == ("retrying", 1)
    assert job.error and job.hint
    assert source.is_file()
    bench.assert_clean()


def test_a_job_whose_source_vanished_fails_cleanly(layout: Layout, bench: Bench) -> None:
    source = make_image(layout.inbox / "a.jpg")
    bench.queue(source)
    source.unlink()

    job = bench.run()

    assert (job.state, job.attempts) == ("failed", 1)
    assert job.error == "a.jpg is no longer in the inbox"
    assert job.hint
    assert layout.files(layout.outbox) == []
    assert layout.files(layout.failed) == []
    assert bench.store.count_by_state() == {"failed": 1}
    bench.assert_clean()


def test_existing_outbox_files_are_never_overwritten(layout: Layout, bench: Bench) -> None:
    (layout.outbox / "a.motion.mp4").write_bytes(b"someone else's video")
    (layout.outbox / "a.jpg").write_bytes(b"an older original")
    bench.queue(make_image(layout.inbox / "a.jpg"))

    job = bench.run()

    assert job.state == "done"
    assert layout.files(layout.outbox) == [
        "a-2.jpg",
        "a.jpg",
        "a.motion-2.json",
        "a.motion-2.mp4",
        "a.motion.mp4",
    ]
    assert (layout.outbox / "a.motion.mp4").read_bytes() == b"someone else's video"
    assert (layout.outbox / "a.jpg").read_bytes() == b"an older original"
    doc = sidecar(layout.outbox / "a.motion-2.json")
    assert doc["outputs"] == ["a.motion-2.mp4", "a.motion-2.json", "a-2.jpg"]
    assert probe(layout.outbox / "a.motion-2.mp4").frames == doc["effective"]["frames"] == 8
    bench.assert_clean()


def test_a_file_overwritten_while_queued_is_processed_as_the_new_content(
    layout: Layout, bench: Bench
) -> None:
    path = make_image(layout.inbox / "a.jpg")
    bench.queue(path)
    make_image(path, seed=5)  # replaced before the worker got to it
    newer = bench.queue(path)

    bench.run()
    second = bench.run()

    assert second.id == newer.id
    assert second.state == "done"
    assert sidecar(layout.outbox / "a.motion.json")["sha256"] == newer.sha256
    assert layout.files(layout.failed) == []
    bench.assert_clean()


GPU_RULE = """\
name: gpu
engine: diffusion
model: fake/gpu-model
preset: quick
params: {resolution: 256}
"""


def test_no_model_load_begins_once_the_daemon_stops(layout: Layout) -> None:
    """A load takes minutes: after SIGTERM (the stop flag set) the job goes back to the
    queue before its load begins, and nobody is told of a load."""
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    bench = Bench(layout)
    try:
        gpu = FakeLoadingGPU()
        bench.worker.engines["diffusion"] = gpu  # type: ignore[assignment]
        told: list[str] = []

        def on_load(_job: Job, model: str) -> None:
            told.append(model)

        bench.worker.on_load = on_load
        bench.queue(make_image(layout.inbox / "a.jpg"))
        bench.worker.stop.set()
        interrupted = bench.run()
        assert (interrupted.state, interrupted.attempts) == ("queued", 0)
        assert (gpu.loads, told) == (0, [])
        bench.worker.stop.clear()  # the next start
        assert bench.run().state == "done"
        assert (gpu.loads, told) == (1, ["fake/gpu-model"])
        bench.assert_clean()
    finally:
        bench.store.close()
