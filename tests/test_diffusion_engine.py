"""The diffusion engine on real (tiny, random-weight) pipelines of each family, loaded by
folder path exactly as a user's rule names them: frames, sizes, effective values, seeds,
warm pipelines, idle unloading, eviction, progress and interruption.

Each family renders once at 256, the smallest resolution rules allow; the other tests
use 64 to stay quick.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, picture
from daemon.engines import EngineOptions, JobInterrupted, RenderRequest, get_engine
from daemon.engines.diffusion import DiffusionEngine
from daemon.rules import DiffusionSettings, MotionSettings, ResolvedParams
from tiny_pipelines import TINY_BUILDERS

# Two OpenMP threads per process on a small, shared CPU spin against each other and
# against other processes: the tiny pipelines then run tens of times slower. One thread
# keeps these tests' time steady; the work is overhead-bound anyway.
torch.set_num_threads(1)

# The smallest resolution rules allow, used where a test is about sizes; elsewhere a
# smaller one keeps the tests quick (a multiple of every tiny pipeline's VAE scale).
RULE_MINIMUM = 256
SMALL = 64
CLASS = {
    "i2vgenxl": "I2VGenXLPipeline",
    "svd": "StableVideoDiffusionPipeline",
    "wan_i2v": "WanImageToVideoPipeline",
}
FAMILIES = [
    pytest.param("i2vgenxl", id="i2vgenxl"),
    pytest.param("svd", id="svd"),
    pytest.param("wan_i2v", id="wan"),
]


def tiny_model(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """The tiny pipeline ``name`` saved once per test session (shared by the modules)."""
    folder = tmp_path_factory.getbasetemp() / "tiny-pipelines" / name
    if not (folder / "model_index.json").exists():
        TINY_BUILDERS[name](folder)
    return folder


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: tiny_model(tmp_path_factory, name) for name in TINY_BUILDERS}


def source_image(width: int = 320, height: int = 240) -> Image.Image:
    return Image.fromarray(picture(width, height))


def make_request(
    model: Path | str,
    resolution: int,
    frames: int = 8,
    steps: int = 10,
    seed: int | None = 7,
    fps: int = 8,
    guidance: float = 9.0,
    aspect: str = "square",
    prompt: str = "a cat dances",
    negative_prompt: str = "blurry",
    diffusion: DiffusionSettings | None = None,
    checkpoint: Callable[[float], None] | None = None,
    image: Image.Image | None = None,
) -> RenderRequest:
    params = ResolvedParams(
        resolution=resolution, frames=frames, fps=fps, steps=steps, guidance=guidance, seed=seed
    )
    extra: dict[str, Any] = {"checkpoint": checkpoint} if checkpoint else {}
    return RenderRequest(
        image=image or source_image(),
        params=params,
        aspect=aspect,
        prompt=prompt,
        negative_prompt=negative_prompt,
        model=str(model),
        motion=MotionSettings(),
        diffusion=diffusion or DiffusionSettings(),
        **extra,
    )


def make_engine(tmp_path: Path, idle_seconds: float = 600.0) -> DiffusionEngine:
    options = EngineOptions(device="cpu", state_dir=tmp_path / "state", idle_seconds=idle_seconds)
    engine = get_engine("diffusion", {}, options)
    assert isinstance(engine, DiffusionEngine)
    return engine


# --- each family --------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_renders_and_records_what_it_used(
    models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    engine = make_engine(tmp_path)
    resolution = RULE_MINIMUM
    fractions: list[float] = []
    request = make_request(models[name], resolution, frames=8, fps=6, checkpoint=fractions.append)
    clip = engine.render(request)

    expected_frames = 9 if name == "wan_i2v" else 8  # Wan makes 4k+1 frames
    assert len(clip.frames) == expected_frames
    for frame in clip.frames:
        assert frame.shape == (resolution, resolution, 3)
        assert frame.dtype == np.uint8
    assert (clip.width, clip.height, clip.fps, clip.steps, clip.seed) == (
        resolution,
        resolution,
        6,
        10,
        7,
    )
    assert clip.guidance == 9.0
    assert clip.family == CLASS[name]
    assert clip.model == str(models[name])
    assert clip.device == "cpu"
    assert clip.load_seconds > 0
    assert clip.extra["packages"] == ("torch", "diffusers", "transformers", "accelerate")
    # Progress: the start, one per denoising step up to 0.9, then each decode starting
    # (I2VGen-XL decodes one frame at a time by default; the others all at once).
    decodes = expected_frames if name == "i2vgenxl" else 1
    decoding = [0.9 + 0.1 * part / decodes for part in range(decodes)]
    assert fractions == pytest.approx([0.0, *(0.9 * step / 10 for step in range(1, 11)), *decoding])
    assert clip.extra["progress"] == {"steps": 10, "total": 10, "decodes": decodes}
    assert clip.effective_extra["dtype"] == "float32"
    assert clip.effective_extra["variant"] is None
    assert clip.effective_extra["memory_savers"] == []
    assert clip.backoff == []  # nothing was backed off from
    if name == "svd":
        assert clip.effective_extra["motion_bucket_id"] == 127
        assert clip.effective_extra["noise_aug_strength"] == 0.02
        assert clip.effective_extra["decode_chunk_size"] == 8
        assert any("takes no prompt" in note for note in clip.notes), clip.notes
    else:
        assert not any("takes no prompt" in note for note in clip.notes)
    if name == "i2vgenxl":
        assert clip.effective_extra["decode_chunk_size"] == 1  # the pipeline's own default
    if name == "wan_i2v":
        assert "decode_chunk_size" not in clip.effective_extra
        assert "frames 8 rounded to 9: Wan 2.x image-to-video makes 4k+1 frames" in clip.notes


def test_svd_settings_reach_the_pipeline(models: dict[str, Path], tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    settings = DiffusionSettings(motion_bucket_id=40, noise_aug_strength=0.1, decode_chunk_size=3)
    fractions: list[float] = []
    request = make_request(
        models["svd"], SMALL, guidance=0.5, diffusion=settings, checkpoint=fractions.append
    )
    clip = engine.render(request)
    assert clip.effective_extra["motion_bucket_id"] == 40
    assert clip.effective_extra["noise_aug_strength"] == 0.1
    assert clip.effective_extra["decode_chunk_size"] == 3
    assert clip.extra["progress"]["decodes"] == 3  # 8 frames in chunks of 3
    assert fractions[-3:] == pytest.approx([0.9, 0.9 + 0.1 / 3, 0.9 + 0.2 / 3])
    assert clip.guidance == 1.0  # SVD's guidance ramps from 1.0: lower means nothing


def test_wan_at_the_smallest_rule_resolution_and_source_aspect(
    models: dict[str, Path], tmp_path: Path
) -> None:
    engine = make_engine(tmp_path)
    clip = engine.render(make_request(models["wan_i2v"], 256, frames=16))
    assert len(clip.frames) == 17
    assert clip.frames[0].shape == (256, 256, 3)

    # source aspect: 4:3 at about 256x256 pixels, sides rounded to Wan's 16-pixel multiple.
    clip = engine.render(make_request(models["wan_i2v"], SMALL, aspect="source"))
    assert (clip.width, clip.height) == (80, 48)
    assert clip.frames[0].shape == (48, 80, 3)
    assert any("rounded to 80x48" in note and "multiples of 16" in note for note in clip.notes)


def test_ltx_renders(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    model = tiny_model(tmp_path_factory, "ltx_i2v")
    fractions: list[float] = []
    request = make_request(model, 32, frames=8, fps=24, guidance=3.0, checkpoint=fractions.append)
    clip = make_engine(tmp_path).render(request)
    # This tiny VAE compresses time 4x (the real one 8x): frames are 4k+1 here.
    assert len(clip.frames) == 9
    assert clip.frames[0].shape == (32, 32, 3)
    assert (clip.family, clip.fps, clip.guidance) == ("LTXImageToVideoPipeline", 24, 3.0)
    assert clip.extra["progress"]["steps"] == 10
    assert fractions == sorted(fractions) and fractions[-1] < 1.0


# --- seeds ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_seed_makes_frames_repeatable_and_a_missing_one_is_drawn_and_recorded(
    models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    engine = make_engine(tmp_path)
    resolution = SMALL
    drawn = engine.render(make_request(models[name], resolution, steps=3, seed=None))
    assert isinstance(drawn.seed, int) and 0 <= drawn.seed < 2**32
    # The recorded seed gives the same frames again.
    again = engine.render(make_request(models[name], resolution, steps=3, seed=drawn.seed))
    assert again.seed == drawn.seed
    assert all(np.array_equal(a, b) for a, b in zip(drawn.frames, again.frames, strict=True))


# --- warm pipelines -----------------------------------------------------------------------


def test_pipeline_stays_warm_is_unloaded_when_idle_and_evicted_by_another_model(
    models: dict[str, Path], tmp_path: Path
) -> None:
    engine = make_engine(tmp_path, idle_seconds=60)
    # Each load is told before it starts (the daemon asks systemd for time then).
    loads: list[str] = []
    wan = replace(make_request(models["wan_i2v"], SMALL, steps=2), loading=loads.append)
    first = engine.render(wan)
    pipe = engine.pipeline
    assert first.load_seconds > 0
    assert engine.loaded_model == str(models["wan_i2v"])
    assert loads == [str(models["wan_i2v"])]

    # Another rule naming the same model, spelled differently: same warm pipeline.
    relative = os.path.relpath(models["wan_i2v"])
    other_rule = make_request(relative, SMALL, steps=2, prompt="another rule")
    second = engine.render(replace(other_rule, loading=loads.append))
    assert second.load_seconds == 0.0
    assert engine.pipeline is pipe
    assert len(loads) == 1

    engine.release_idle(time.monotonic())
    assert engine.pipeline is pipe  # used just now
    engine.release_idle(time.monotonic() + 61)
    assert engine.pipeline is None
    reference = weakref.ref(pipe)
    del pipe
    gc.collect()
    assert reference() is None, "the unloaded pipeline is still referenced"

    third = engine.render(wan)
    assert third.load_seconds > 0
    assert loads == [str(models["wan_i2v"])] * 2  # loaded again after the idle unload
    wan_pipe = weakref.ref(engine.pipeline)
    engine.render(replace(make_request(models["svd"], SMALL, steps=2), loading=loads.append))
    assert engine.loaded_model == str(models["svd"])
    assert loads[2:] == [str(models["svd"])]
    gc.collect()
    assert wan_pipe() is None, "the first model was not freed when the second was loaded"


def test_release_idle_never_unloads_during_a_render(
    models: dict[str, Path], tmp_path: Path
) -> None:
    engine = make_engine(tmp_path, idle_seconds=0)
    seen: list[Any] = []

    def checkpoint(done: float) -> None:
        # As the scheduler thread would, while the worker is inside the pipeline call.
        engine.release_idle(time.monotonic() + 10**6)
        seen.append(engine.pipeline)

    engine.render(make_request(models["wan_i2v"], SMALL, steps=2, checkpoint=checkpoint))
    assert seen and all(pipe is not None for pipe in seen)
    engine.release_idle(time.monotonic() + 1)
    assert engine.pipeline is None


# --- progress -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_interruption_propagates_and_leaves_the_pipeline_usable(
    models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    engine = make_engine(tmp_path)
    seen: list[float] = []

    def checkpoint(done: float) -> None:
        seen.append(done)
        if done >= 0.5:
            raise JobInterrupted("stopping")

    resolution = SMALL
    with pytest.raises(JobInterrupted, match="stopping"):
        engine.render(make_request(models[name], resolution, steps=4, checkpoint=checkpoint))
    assert 0.5 <= seen[-1] < 0.9  # stopped mid-denoising, not at the end
    pipe = engine.pipeline
    assert "progress_bar" not in vars(pipe)
    assert "decode" not in vars(pipe.vae)

    fractions: list[float] = []
    clip = engine.render(
        make_request(models[name], resolution, steps=4, checkpoint=fractions.append)
    )
    assert clip.load_seconds == 0.0
    assert len(clip.frames) >= 8
    assert clip.extra["progress"]["steps"] == 4


# --- imports ------------------------------------------------------------------------------


def test_constructing_the_engine_imports_no_torch(tmp_path: Path) -> None:
    # Importable stand-ins, so the check can fail even where torch is not installed.
    for name in ("torch", "diffusers", "transformers", "accelerate"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    code = (
        "import sys\n"
        "import daemon.engines.diffusion\n"
        "from daemon.engines import EngineOptions, get_engine\n"
        "engine = get_engine('diffusion', {}, EngineOptions())\n"
        "engine.release_idle(0.0)\n"
        "assert type(engine).__name__ == 'DiffusionEngine'\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_step_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    from daemon.engines.diffusion.progress import StepReporter

    now = [0.0]
    reporter = StepReporter(lambda done: None, "job 7 (model m)", clock=lambda: now[0])
    caplog.set_level("INFO", logger="daemon.engines.diffusion.progress")
    with reporter.progress_bar(total=50) as bar:
        for _ in range(50):
            now[0] += 1.0  # a step a second: one line per ten steps
            bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"job 7 (model m): denoising step {n}/50" for n in (10, 20, 30, 40, 50)]
