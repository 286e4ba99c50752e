"""Publishing is fenced by the lease: a daemon whose job was taken over while it
rendered (it stalled past its lease) writes nothing into the outbox or the job's row."""

from __future__ import annotations

import time

from conftest import Layout, make_image
from daemon.engines import Clip, RenderRequest
from daemon.engines.motion import MotionEngine
from daemon.intake import Intake
from daemon.rules import load_rules
from daemon.store import JobState, JobStore
from daemon.worker import Worker


class MotionThenTakenOver:
    """Test double at the engine seam: the real motion engine, after which another
    daemon takes the job over, as if this one had stalled past its lease."""

    name = "motion"

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.engine = MotionEngine()

    def render(self, request: RenderRequest) -> Clip:
        clip = self.engine.render(request)
        # The other daemon finds the lease expired (an hour on) and claims the job.
        later = self.store.now() + 3600
        assert self.store.recover(None, later)
        assert self.store.claim("other-host:2", later, 60) is not None
        return clip


def test_a_worker_that_lost_its_lease_publishes_nothing(layout: Layout) -> None:
    settings = layout.load()
    store = JobStore(settings.database_url)
    try:
        rules, problems = load_rules(settings.rules_dir)
        assert problems == []
        image = make_image(layout.inbox / "a.jpg")
        job = Intake(store, lambda: rules, settings.failed_dir, 3).take(layout.inbox, image).job
        assert job is not None and job.id is not None
        worker = Worker(settings, store, "this-host:1")
        worker.engines["motion"] = MotionThenTakenOver(store)  # type: ignore[assignment]

        worker.run_once(time.time())

        assert layout.files(layout.outbox) == []
        assert layout.files(layout.failed) == []
        assert image.exists()  # the original is the new owner's to move
        assert list(settings.work_dir.glob("*")) == []
        row = store.get(job.id)
        assert row is not None
        assert (row.state, row.lease_owner, row.attempts) == (JobState.RUNNING, "other-host:2", 2)
        assert row.error is None and row.video_inode is None  # nothing written after the fence
    finally:
        store.close()
