"""Files changing under a running job: nothing that is not the job's own is ever removed,
reused or published beside the wrong video."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Layout, make_image
from daemon.engines import Clip, RenderRequest
from daemon.engines.motion import MotionEngine
from worker_bench import Bench


class MotionThen:
    """Test double at the engine seam: the real motion engine, then ``action`` — standing
    in for a user or another process touching files while a job renders."""

    name = "motion"

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.engine = MotionEngine()

    def render(self, request: RenderRequest) -> Clip:
        clip = self.engine.render(request)
        self.action()
        return clip


@pytest.fixture
def bench(layout: Layout) -> Iterator[Bench]:
    made = Bench(layout)
    yield made
    made.store.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_crashed_jobs_plan_never_removes_another_jobs_video(layout: Layout, bench: Bench) -> None:
    crashed = bench.take(make_image(layout.inbox / "x.jpg", seed=1)).job
    assert crashed is not None and crashed.id is not None
    # The daemon planned x.motion.* for x.jpg, then was killed before writing anything.
    bench.store.claim("host:999", time.time(), 120)
    outbox = layout.outbox
    bench.store.plan_outputs(
        crashed.id,
        str(outbox / "x.motion.mp4"),
        str(outbox / "x.motion.json"),
        str(outbox / "x.jpg"),
    )
    # Meanwhile x.png takes the free name x.motion.* and is published.
    other = bench.take(make_image(layout.inbox / "x.png", seed=2)).job
    assert [j.id for j in bench.drain()] == [other.id]  # type: ignore[union-attr]
    other_video = digest(outbox / "x.motion.mp4")

    assert [j.id for j in bench.store.recover("host", time.time())] == [crashed.id]
    assert [j.state for j in bench.drain()] == ["done"]
    # x.png's outputs are intact; x.jpg went to the next free name.
    assert digest(outbox / "x.motion.mp4") == other_video
    assert bench.sidecar("x.motion.json")["source"] == "x.png"
    assert bench.sidecar("x.motion-2.json")["source"] == "x.jpg"
    assert sorted(layout.files(outbox)) == [
        "x.jpg",
        "x.motion-2.json",
        "x.motion-2.mp4",
        "x.motion.json",
        "x.motion.mp4",
        "x.png",
    ]


def test_a_file_written_at_the_planned_name_mid_job_is_kept(layout: Layout, bench: Bench) -> None:
    foreign = layout.outbox / "x.motion.mp4"
    bench.worker.engines["motion"] = MotionThen(lambda: foreign.write_text("not ours"))
    bench.take(make_image(layout.inbox / "x.jpg"))
    first = bench.worker.run_once(time.time())
    assert first is not None and first.state == "retrying"
    assert "exists" in (first.error or "")
    assert foreign.read_text() == "not ours"
    bench.worker.engines["motion"] = MotionEngine()
    assert [j.state for j in bench.drain()] == ["done"]
    assert foreign.read_text() == "not ours"
    assert bench.sidecar("x.motion-2.json")["source"] == "x.jpg"


def test_an_image_replaced_mid_job_is_not_published_beside_the_old_video(
    layout: Layout, bench: Bench
) -> None:
    target = layout.inbox / "x.jpg"

    def user_saves_a_new_version() -> None:
        make_image(target, seed=2)
        bench.take(target)  # intake queues the new content as its own job

    bench.worker.engines["motion"] = MotionThen(user_saves_a_new_version)
    bench.take(make_image(target, seed=1))
    first = bench.worker.run_once(time.time())
    assert first is not None and first.state == "cancelled"
    bench.worker.engines["motion"] = MotionEngine()
    assert [j.state for j in bench.drain()] == ["done"]
    # One video, and the original beside it is the one it was made from.
    assert layout.files(layout.outbox) == ["x.jpg", "x.motion.json", "x.motion.mp4"]
    assert bench.sidecar("x.motion.json")["sha256"] == digest(layout.outbox / "x.jpg")
    assert layout.files(layout.failed) == []


def test_a_duplicate_never_reuses_a_video_that_only_has_the_old_name(
    layout: Layout, bench: Bench
) -> None:
    first = make_image(layout.inbox / "beach.jpg", seed=1)
    picture_a = first.read_bytes()
    bench.take(first)
    bench.drain()
    for path in layout.outbox.iterdir():  # a consumer collects and clears the outbox
        path.unlink()
    bench.take(make_image(layout.inbox / "beach.jpg", seed=2))  # another picture, same name
    bench.drain()
    video_b = digest(layout.outbox / "beach.motion.mp4")

    (layout.inbox / "sunset.jpg").write_bytes(picture_a)  # picture A again
    bench.take(layout.inbox / "sunset.jpg")
    [job] = bench.drain()
    assert job.state == "done" and job.duplicate_of is None  # regenerated, not reused
    assert digest(layout.outbox / "sunset.motion.mp4") != video_b
    assert bench.sidecar("sunset.motion.json")["sha256"] == hashlib.sha256(picture_a).hexdigest()


def test_an_image_dropped_again_after_it_vanished_is_taken(layout: Layout, bench: Bench) -> None:
    path = make_image(layout.inbox / "a.jpg")
    data = path.read_bytes()
    bench.take(path)
    path.unlink()  # removed while queued
    [gone] = bench.drain()
    assert gone.state == "failed" and "no longer in the inbox" in (gone.error or "")
    path.write_bytes(data)  # "drop the image again", as the hint says
    again = bench.take(path).job
    assert again is not None and again.state == "queued"
    assert [j.state for j in bench.drain()] == ["done"]
