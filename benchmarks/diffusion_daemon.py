"""The daemon as ``bench_diffusion.py`` drives it: intake and worker wired as the service
wires them, on a temporary layout, one job at a time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from conftest import picture
from daemon.config import load_settings
from daemon.intake import Intake
from daemon.rules import load_rules
from daemon.store import JobStore
from daemon.worker import Worker


class Daemon:
    """Intake and worker wired as the service wires them, on a temporary layout; the
    rule's preset and diffusion block can change between jobs (the model stays warm)."""

    def __init__(self, root: Path, model: Path, device: str) -> None:
        self.root, self.model = root, model
        for name in ("inbox", "outbox", "failed", "rules", "state"):
            (root / name).mkdir(parents=True, exist_ok=True)
        config = root / "i2vd.yaml"
        config.write_text(
            yaml.safe_dump({"device": device, "settle_seconds": 0, "log_level": "WARNING"}),
            encoding="utf-8",
        )
        self.settings = load_settings(config)
        self.store = JobStore(self.settings.database_url)
        self.rules: list[Any] = []
        self.intake = Intake(self.store, lambda: self.rules, self.settings.failed_dir, 3)
        self.worker = Worker(self.settings, self.store, owner="bench:1")
        self.count = 0

    def use(self, params: dict[str, int], diffusion: dict[str, Any] | None = None) -> None:
        rule = {
            "engine": "diffusion",
            "model": str(self.model),
            "preset": "standard",
            "params": {**params, "seed": 1},
            "prompt": "{{ stem }} drifting slowly",
            "negative_prompt": "blurry",
            "diffusion": diffusion or {},
        }
        (self.root / "rules" / "bench.yaml").write_text(yaml.safe_dump(rule), encoding="utf-8")
        self.rules, problems = load_rules(self.settings.rules_dir)
        assert not problems, problems

    def job(self, size: int) -> tuple[float, dict[str, Any]]:
        self.count += 1
        path = self.settings.inbox[0] / f"img{self.count}.png"
        Image.fromarray(picture(size + 64, size, seed=self.count)).save(path)
        result = self.intake.take(self.settings.inbox[0], path)
        assert result.outcome == "queued", result
        start = time.perf_counter()
        job = self.worker.run_once(time.time())
        elapsed = time.perf_counter() - start
        assert job is not None and job.state == "done", job and job.error
        assert job.sidecar_path
        sidecar: dict[str, Any] = json.loads(Path(job.sidecar_path).read_text())
        return elapsed, sidecar

    @property
    def pipeline(self) -> Any:
        return self.worker.engines["diffusion"].pipeline  # type: ignore[attr-defined]
