"""Diffusion jobs through the daemon's own intake and worker, with tiny random-weight
pipelines saved to folders and named in rules by path, as a user names a model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Layout, make_image
from daemon.video import probe
from test_worker import Bench
from tiny_pipelines import build_i2vgenxl, build_svd


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "i2vgenxl": build_i2vgenxl(root / "tiny-i2vgenxl"),
        "svd": build_svd(root / "tiny-svd"),
    }


def rule_text(model: Path, **extra: str) -> str:
    lines = [
        "engine: diffusion",
        "priority: 10",
        f"model: {json.dumps(str(model))}",
        "preset: quick",
        "params: {resolution: 256, frames: 8, fps: 8, steps: 10, seed: 5}",
        'prompt: "{{ stem }} drifting slowly"',
        'negative_prompt: "blurry"',
        *(f"{key}: {value}" for key, value in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def sidecar(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.fixture
def bench(layout: Layout) -> Iterator[Bench]:
    made = Bench(layout, device="cpu")
    yield made
    made.store.close()


def test_i2vgenxl_drop_to_video_and_a_warm_second_job(
    layout: Layout, models: dict[str, Path]
) -> None:
    layout.rule("ai", rule_text(models["i2vgenxl"]))
    bench = Bench(layout, device="cpu")
    try:
        bench.queue(make_image(layout.inbox / "pier.jpg", 320, 240))
        bench.queue(make_image(layout.inbox / "dune.png", 300, 300, seed=3))
        first, second = bench.run(), bench.run()
    finally:
        bench.store.close()
    assert (first.state, second.state) == ("done", "done"), (first.error, second.error)

    info = probe(layout.outbox / "pier.ai.mp4")
    assert (info.width, info.height, info.frames, info.fps) == (256, 256, 8, 8)
    doc = sidecar(layout.outbox / "pier.ai.json")
    assert doc["engine"] == "diffusion"
    assert doc["model"] == str(models["i2vgenxl"])
    assert doc["family"] == "I2VGenXLPipeline"
    assert (doc["prompt"], doc["negative_prompt"]) == ("pier drifting slowly", "blurry")
    for block in ("requested", "effective"):
        assert doc[block]["resolution"] == 256
        assert (doc[block]["frames"], doc[block]["fps"], doc[block]["steps"]) == (8, 8, 10)
        assert doc[block]["seed"] == 5
    assert doc["effective"]["guidance"] == 9.0
    assert doc["backoff"] == []
    assert doc["device"] == "cpu"
    assert {"torch", "diffusers", "transformers"} <= set(doc["versions"])
    # The model stays warm: the second job does not load it again.
    assert doc["timings"]["load"] > 0
    assert sidecar(layout.outbox / "dune.ai.json")["timings"]["load"] < 0.05


def test_svd_has_no_prompt_and_says_so(layout: Layout, models: dict[str, Path]) -> None:
    layout.rule("svd", rule_text(models["svd"], diffusion="{motion_bucket_id: 60}"))
    bench = Bench(layout, device="cpu")
    try:
        bench.queue(make_image(layout.inbox / "a.jpg", 320, 240))
        job = bench.run()
    finally:
        bench.store.close()
    assert job.state == "done", job.error
    assert layout.files(layout.outbox) == ["a.jpg", "a.svd.json", "a.svd.mp4"]
    info = probe(layout.outbox / "a.svd.mp4")
    assert (info.width, info.height, info.frames, info.fps) == (256, 256, 8, 8)
    doc = sidecar(layout.outbox / "a.svd.json")
    assert doc["family"] == "StableVideoDiffusionPipeline"
    assert any("prompt" in note for note in doc["notes"])
    assert doc["effective"]["motion_bucket_id"] == 60


def test_a_missing_model_fails_the_job_not_the_daemon(layout: Layout, tmp_path: Path) -> None:
    layout.rule("ai", rule_text(tmp_path / "no-such-model"))
    bench = Bench(layout, device="cpu", max_attempts=2)
    try:
        bench.queue(make_image(layout.inbox / "a.jpg"))
        job = bench.run()
        assert job.state == "retrying", "a model that is not there yet may be fetched"
        assert "no-such-model" in (job.error or "")
        time.sleep(0.01)
        job = bench.run()
    finally:
        bench.store.close()
    assert job.state == "failed"
    report = sidecar(layout.failed / "a.jpg.error.json")
    assert "no-such-model" in report["error"]
    assert report["hint"]


def test_out_of_memory_at_the_floor_fails_with_the_ladder_in_the_report(
    layout: Layout, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake, injected here: the I2VGen-XL call always raises CUDA's out-of-memory error
    (a CPU machine cannot run out of GPU memory for real)."""
    import torch
    from diffusers import I2VGenXLPipeline

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake, injected by the test)")

    monkeypatch.setattr(I2VGenXLPipeline, "__call__", out_of_memory)
    layout.rule("ai", rule_text(models["i2vgenxl"]))
    bench = Bench(layout, device="cpu")
    try:
        bench.queue(make_image(layout.inbox / "a.jpg"))
        job = bench.run()
        other = bench.queue(make_image(layout.inbox / "b.jpg", seed=4))
    finally:
        bench.store.close()
    assert job.state == "failed"
    report = sidecar(layout.failed / "a.jpg.error.json")
    assert "out of memory" in report["error"].lower()
    assert report["hint"]
    rungs = [entry.get("rung") for entry in report["backoff"]]
    assert rungs[0] is None and "fewer_frames" in rungs
    assert other.state == "queued"  # the daemon carries on with the next image


def test_a_relative_model_folder_is_found_beside_the_config(
    layout: Layout, models: dict[str, Path]
) -> None:
    import shutil

    shutil.copytree(models["i2vgenxl"], layout.root / "models" / "tiny")
    layout.rule("ai", rule_text(Path("models/tiny")))
    bench = Bench(layout, device="cpu")
    try:
        bench.queue(make_image(layout.inbox / "a.jpg"))
        job = bench.run()
    finally:
        bench.store.close()
    assert job.state == "done", job.error
    assert sidecar(layout.outbox / "a.ai.json")["model"] == str(layout.root / "models" / "tiny")
