"""Files changing under a running job: nothing that is not the job's own is ever removed,
reused or published beside the wrong video."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Layout, make_image
from daemon.engines import Clip, RenderRequest
from daemon.engines.motion import MotionEngine
from daemon.intake import Intake
from daemon.rules import load_rules
from daemon.store import Job, JobStore
from daemon.worker import Worker


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


class Desk:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.settings = layout.load(retry_delay_seconds=0)
        self.store = JobStore(self.settings.database_url)
        rules, problems = load_rules(self.settings.rules_dir)
        assert problems == []
        self.intake = Intake(self.store, lambda: rules, self.settings.failed_dir, 3)
        self.worker = Worker(self.settings, self.store, "host:1")

    def take(self, path: Path) -> Job | None:
        return self.intake.take(self.layout.inbox, path).job

    def drain(self) -> list[Job]:
        done = []
        while (job := self.worker.run_once(time.time())) is not None:
            done.append(job)
        return done

    def sidecar(self, name: str) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.layout.outbox / name).read_text())
        return data


@pytest.fixture
def desk(layout: Layout) -> Iterator[Desk]:
    d = Desk(layout)
    yield d
    d.store.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_crashed_jobs_plan_never_removes_another_jobs_video(layout: Layout, desk: Desk) -> None:
    crashed = desk.take(make_image(layout.inbox / "x.jpg", seed=1))
    assert crashed is not None and crashed.id is not None
    # The daemon planned x.motion.* for x.jpg, then was killed before writing anything.
    desk.store.claim("host:999", time.time(), 120)
    outbox = layout.outbox
    desk.store.plan_outputs(
        crashed.id, str(outbox / "x.motion.mp4"), str(outbox / "x.motion.json"),
        str(outbox / "x.jpg"),
    )
    # Meanwhile x.png takes the free name x.motion.* and is published.
    other = desk.take(make_image(layout.inbox / "x.png", seed=2))
    assert [j.id for j in desk.drain()] == [other.id]  # type: ignore[union-attr]
    other_video = digest(outbox / "x.motion.mp4")

    assert [j.id for j in desk.store.recover("host", time.time())] == [crashed.id]
    assert [j.state for j in desk.drain()] == ["done"]
    # x.png's outputs are intact; x.jpg went to the next free name.
    assert digest(outbox / "x.motion.mp4") == other_video
    assert desk.sidecar("x.motion.json")["source"] == "x.png"
    assert desk.sidecar("x.motion-2.json")["source"] == "x.jpg"
    assert sorted(layout.files(outbox)) == [
        "x.jpg", "x.motion-2.json", "x.motion-2.mp4", "x.motion.json", "x.motion.mp4", "x.png",
    ]


def test_a_file_written_at_the_planned_name_mid_job_is_kept(layout: Layout, desk: Desk) -> None:
    foreign = layout.outbox / "x.motion.mp4"
    desk.worker.engines["motion"] = MotionThen(lambda: foreign.write_text("not ours"))
    desk.take(make_image(layout.inbox / "x.jpg"))
    first = desk.worker.run_once(time.time())
    assert first is not None and first.state == "retrying"
    assert "exists" in (first.error or "")
    assert foreign.read_text() == "not ours"
    desk.worker.engines["motion"] = MotionEngine()
    assert [j.state for j in desk.drain()] == ["done"]
    assert foreign.read_text() == "not ours"
    assert desk.sidecar("x.motion-2.json")["source"] == "x.jpg"


def test_an_image_replaced_mid_job_is_not_published_beside_the_old_video(
    layout: Layout, desk: Desk
) -> None:
    target = layout.inbox / "x.jpg"

    def user_saves_a_new_version() -> None:
        make_image(target, seed=2)
        desk.take(target)  # intake queues the new content as its own job

    desk.worker.engines["motion"] = MotionThen(user_saves_a_new_version)
    desk.take(make_image(target, seed=1))
    first = desk.worker.run_once(time.time())
    assert first is not None and first.state == "cancelled"
    desk.worker.engines["motion"] = MotionEngine()
    assert [j.state for j in desk.drain()] == ["done"]
    # One video, and the original beside it is the one it was made from.
    assert layout.files(layout.outbox) == ["x.jpg", "x.motion.json", "x.motion.mp4"]
    assert desk.sidecar("x.motion.json")["sha256"] == digest(layout.outbox / "x.jpg")
    assert layout.files(layout.failed) == []


def test_a_duplicate_never_reuses_a_video_that_only_has_the_old_name(
    layout: Layout, desk: Desk
) -> None:
    first = make_image(layout.inbox / "beach.jpg", seed=1)
    picture_a = first.read_bytes()
    desk.take(first)
    desk.drain()
    for path in layout.outbox.iterdir():  # a consumer collects and clears the outbox
        path.unlink()
    desk.take(make_image(layout.inbox / "beach.jpg", seed=2))  # another picture, same name
    desk.drain()
    video_b = digest(layout.outbox / "beach.motion.mp4")

    (layout.inbox / "sunset.jpg").write_bytes(picture_a)  # picture A again
    desk.take(layout.inbox / "sunset.jpg")
    [job] = desk.drain()
    assert job.state == "done" and job.duplicate_of is None  # regenerated, not reused
    assert digest(layout.outbox / "sunset.motion.mp4") != video_b
    assert desk.sidecar("sunset.motion.json")["sha256"] == hashlib.sha256(picture_a).hexdigest()


def test_an_image_dropped_again_after_it_vanished_is_taken(layout: Layout, desk: Desk) -> None:
    path = make_image(layout.inbox / "a.jpg")
    data = path.read_bytes()
    desk.take(path)
    path.unlink()  # removed while queued
    [gone] = desk.drain()
    assert gone.state == "failed" and "no longer in the inbox" in (gone.error or "")
    path.write_bytes(data)  # "drop the image again", as the hint says
    again = desk.take(path)
    assert again is not None and again.state == "queued"
    assert [j.state for j in desk.drain()] == ["done"]
