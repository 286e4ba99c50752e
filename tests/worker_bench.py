"""The one worker test harness: Intake and Worker wired the way the service wires them,
minus the timers, on a real SQLite queue and real folders."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import Layout
from daemon.config import Settings
from daemon.intake import Intake, IntakeResult
from daemon.rules import load_rules
from daemon.store import Job, JobStore
from daemon.worker import Worker


class Bench:
    def __init__(self, layout: Layout, **settings: Any) -> None:
        self.layout = layout
        self.settings: Settings = layout.load(retry_delay_seconds=0, **settings)
        self.store = JobStore(self.settings.database_url)
        self.worker = Worker(self.settings, self.store, owner="test-host:1")

    def intake(self) -> Intake:
        """An intake on the rules as they are now (tests edit them between drops)."""
        rules, problems = load_rules(self.settings.rules_dir)
        assert problems == []
        return Intake(
            self.store, lambda: rules, self.settings.failed_dir, self.settings.max_attempts
        )

    def take(self, path: Path) -> IntakeResult:
        return self.intake().take(self.settings.inbox[0], path)

    def queue(self, path: Path) -> Job:
        """Take ``path``, which must be queued; its (first) job."""
        result = self.take(path)
        assert result.outcome == "queued", result
        assert result.job is not None
        return result.job

    def run(self) -> Job:
        job = self.worker.run_once(time.time())
        assert job is not None, "nothing was runnable"
        return job

    def drain(self) -> list[Job]:
        """Run every runnable job; the jobs as they ended."""
        done = []
        while (job := self.worker.run_once(time.time())) is not None:
            done.append(job)
        return done

    def sidecar(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.layout.outbox / name).read_text())
        return data

    def assert_clean(self) -> None:
        """Nothing half-written anywhere, and no scratch files left in state/work."""
        temporaries = [p for p in self.layout.root.rglob("*") if p.name.endswith(".i2vd-tmp")]
        assert temporaries == []
        assert self.layout.files(self.settings.work_dir) == []
