"""Speed switches and the ladder's plan, on the tiny real pipelines of each family.

Each switch is applied to a loaded pipeline, checked to be in effect (and to leave the
output as it was where it must), then reverted and checked to be gone. The ladder's
order and up-front skipping are read per family and size without running out of memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_diffusion_engine import make_engine, make_request, tiny_model

from daemon.engines.diffusion import speed
from daemon.engines.diffusion.families import BY_CLASS, Family
from daemon.engines.diffusion.ladder import (
    FORWARD_CHUNKS,
    LadderContext,
    Plan,
    ahead,
    chunk_feed_forwards,
    feed_forwards,
    ordered,
    unchunk_feed_forwards,
)
from daemon.engines.diffusion.speed import WarmSwitches, per_job
from daemon.rules import DiffusionSettings

DEFAULT = DiffusionSettings().ladder


def load(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Any, Family]:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_model(tmp_path_factory, name))
    pipe.set_progress_bar_config(disable=True)
    return pipe, BY_CLASS[type(pipe).__name__]


def context(pipe: Any, family: Family, device: str = "cpu") -> LadderContext:
    return LadderContext(pipe, family, device, "square", (320, 240), 8, 1, 8, 256)


def skipped(pipe: Any, family: Family, size: int, frames: int, device: str) -> list[str]:
    ladder = ordered(list(DEFAULT), family, chosen=False)
    plan = Plan(size, size, size, frames, None)
    return [ladder[i] for i in ahead(ladder, plan, context(pipe, family, device))]


# --- the ladder's plan --------------------------------------------------------------


def test_ladder_order_and_up_front_skips_per_family_and_size(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    i2v, i2v_family = load(tmp_path_factory, "i2vgenxl")
    wan, wan_family = load(tmp_path_factory, "wan_i2v")
    svd, svd_family = load(tmp_path_factory, "svd")

    # UNet families chunk before offloading; Wan (and LTX) offload first: their text
    # encoders are large next to the denoiser's activations.
    assert ordered(list(DEFAULT), i2v_family, chosen=False) == list(DEFAULT)
    wan_ladder = ordered(list(DEFAULT), wan_family, chosen=False)
    assert wan_ladder.index("cpu_offload") < wan_ladder.index("forward_chunking")
    assert ordered(["forward_chunking", "cpu_offload"], wan_family, chosen=True) == [
        "forward_chunking",
        "cpu_offload",
    ]

    # I2VGen-XL already decodes one frame per call: chunk-1 and slicing change nothing.
    # Its tiny VAE tiles above 32 px, so tiling applies at 64 but would not at 32.
    at_64 = skipped(i2v, i2v_family, 64, 16, "cuda")
    assert at_64[:2] == ["decode_chunk_1", "vae_slicing"]
    assert not {"vae_tiling", "forward_chunking", "cpu_offload"} & set(at_64)
    assert i2v.vae.tile_sample_min_size == 32
    assert "vae_tiling" in skipped(i2v, i2v_family, 32, 16, "cuda")
    # On the CPU model offload cannot apply.
    assert "cpu_offload" in skipped(i2v, i2v_family, 64, 16, "cpu")
    # At the floors (8 frames, 256) the output rungs have nothing left to take.
    at_floor = skipped(i2v, i2v_family, 256, 8, "cuda")
    assert at_floor.count("fewer_frames") == 2 and at_floor.count("lower_resolution") == 2

    # Wan's VAE tiles above 256 px and decodes one video per call.
    assert skipped(wan, wan_family, 256, 17, "cuda")[:3] == [
        "decode_chunk_1",
        "vae_slicing",
        "vae_tiling",
    ]
    assert "vae_tiling" not in skipped(wan, wan_family, 512, 17, "cuda")

    # SVD decodes all frames at once by default, so one frame per call is a real saver;
    # its temporal VAE has neither slicing nor tiling.
    svd_skips = skipped(svd, svd_family, 256, 14, "cuda")
    assert "decode_chunk_1" not in svd_skips
    assert {"vae_slicing", "vae_tiling"} <= set(svd_skips)


def test_coarse_forward_chunking_keeps_the_output_and_reverts(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pipe, _ = load(tmp_path_factory, "i2vgenxl")
    layers = feed_forwards(pipe.unet)
    assert layers
    layer = layers[0]
    hidden = torch.randn(2, 10, layer.net[0].proj.in_features)
    with torch.no_grad():
        before = layer(hidden)
        calls: list[int] = []
        inner = layer.net[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[1]))
        assert chunk_feed_forwards(pipe.unet) == len(layers)
        after = layer(hidden)
        inner.remove()
    assert calls == [3, 3, 3, 1]  # ten positions in four pieces, not ten pieces of one
    assert len(calls) == FORWARD_CHUNKS
    torch.testing.assert_close(after, before)
    unchunk_feed_forwards(pipe.unet)
    assert not any("forward" in vars(m) for m in pipe.unet.modules())


# --- warm switches ------------------------------------------------------------------


def frames_of(pipe: Any, steps: int = 2) -> np.ndarray:
    from conftest import picture
    from tiny_pipelines import i2vgenxl_prompt_embeds

    positive, negative = i2vgenxl_prompt_embeds(pipe, "a cat", "blurry")
    from PIL import Image

    with torch.no_grad():
        output = pipe(
            image=Image.fromarray(picture(64, 64)),
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            height=64,
            width=64,
            num_frames=4,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(1),
            output_type="np",
        )
    result: np.ndarray = output.frames[0]
    return result


def test_each_warm_switch_is_applied_and_reverted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    pipe, family = load(tmp_path_factory, "i2vgenxl")
    torch.manual_seed(0)
    baseline = frames_of(pipe)
    conv = pipe.unet.conv_in.weight
    warm = WarmSwitches(pipe, family, "cpu", compile_backend="eager")

    on = DiffusionSettings(compile=True, channels_last=True, fused_qkv=True)
    assert warm.sync(on) == ["compile", "channels_last", "fused_qkv"]
    assert pipe.unet._compiled_call_impl is not None
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any(isinstance(p, FusedAttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    assert "CUDA" in warm.notes["cudnn_benchmark"]  # wanted, not applicable on the CPU
    torch.manual_seed(0)
    switched = frames_of(pipe)
    # Same arithmetic in another layout and grouping: equal up to rounding.
    np.testing.assert_allclose(switched, baseline, atol=2e-3)
    assert warm.sync(on) == []  # already on: nothing is applied twice

    warm.sync(DiffusionSettings())
    assert warm.on == []
    assert pipe.unet._compiled_call_impl is None
    assert pipe.unet.conv_in.weight.is_contiguous()
    assert pipe.unet.conv_in.weight is conv
    assert not any(isinstance(p, FusedAttnProcessor2_0) for p in pipe.unet.attn_processors.values())


def test_cudnn_autotune_is_restored(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CUDA path, on a CPU: the flag is process-wide and needs no GPU to set."""
    pipe, family = load(tmp_path_factory, "i2vgenxl")
    before = torch.backends.cudnn.benchmark
    warm = WarmSwitches(pipe, family, "cuda")
    warm.sync(DiffusionSettings(cudnn_benchmark=True))
    assert torch.backends.cudnn.benchmark is True and warm.on == ["cudnn_benchmark"]
    warm.sync(DiffusionSettings(cudnn_benchmark=False))
    assert torch.backends.cudnn.benchmark is before and warm.on == []


# --- per-job switches ---------------------------------------------------------------


def test_dpm_solver_is_configured_for_the_model_and_reverted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pipe, family = load(tmp_path_factory, "i2vgenxl")
    original = pipe.scheduler
    settings = DiffusionSettings(scheduler="dpm++", scheduler_steps=3)
    assert speed.job_steps(settings, 50, pipe) == 3
    v_config = {
        **original.config,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
    }
    solver = speed.dpm_solver(v_config)
    assert solver.config.prediction_type == "v_prediction"
    assert solver.config.timestep_spacing == "trailing"
    assert solver.config.rescale_betas_zero_snr is True
    assert solver.config.algorithm_type == "dpmsolver++"
    with per_job(pipe, family, settings, 3) as used:
        assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
        frames = frames_of(pipe, steps=3)
    assert used.scheduler == "DPMSolverMultistepScheduler" and used.steps == 3
    assert np.isfinite(frames).all()
    assert pipe.scheduler is original


def test_dpm_solver_is_not_forced_on_a_flow_matching_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pipe, family = load(tmp_path_factory, "wan_i2v")
    settings = DiffusionSettings(scheduler="dpm++", scheduler_steps=3)
    assert speed.job_steps(settings, 10, pipe) == 10
    with per_job(pipe, family, settings, 10) as used:
        assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert "not a discrete-timestep scheduler" in used.notes[0]


def test_deep_cache_reuses_deep_blocks_between_full_steps(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pipe, family = load(tmp_path_factory, "i2vgenxl")
    torch.manual_seed(0)
    full = frames_of(pipe, steps=6)
    with per_job(pipe, family, DiffusionSettings(step_cache=True), 6) as used:
        deep = pipe.unet.down_blocks[1]
        reuse = vars(deep)["forward"]
        torch.manual_seed(0)
        cached = frames_of(pipe, steps=6)
    assert used.step_cache == f"deepcache(interval {speed.CACHE_INTERVAL})"
    assert (reuse.calls, reuse.reused) == (6, 4)  # computed at steps 0 and 3
    assert "forward" not in vars(pipe.unet.down_blocks[0])  # the shallow block runs always
    assert np.isfinite(cached).all() and not np.array_equal(cached, full)
    assert not any("forward" in vars(m) for m in pipe.unet.modules())


def test_first_block_cache_on_a_transformer_family(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = tiny_model(tmp_path_factory, "wan_i2v")
    engine = make_engine(tmp_path)
    settings = DiffusionSettings(step_cache=True)
    clip = engine.render(make_request(model, 64, frames=4, steps=3, diffusion=settings))
    assert clip.effective_extra["speed"]["step_cache"].startswith("first_block")
    assert not engine.pipeline.transformer.is_cache_enabled


def test_sidecar_speed_block_and_compile_warm_up(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.compile's eager backend stands in for inductor (a CPU build of every kernel
    would take minutes); the warm-up, the counting and the revert are the same."""
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    model = tiny_model(tmp_path_factory, "i2vgenxl")
    engine = make_engine(tmp_path)
    plain = engine.render(make_request(model, 64, steps=2))
    block = plain.effective_extra["speed"]
    assert block["compile"] is False and block["scheduler"] == "DDIMScheduler"
    assert block["steps"] == 2 and block["step_cache"] is None
    assert "notes" not in block  # cuDNN is on by default; not applying on a CPU is no news

    settings = DiffusionSettings(
        compile=True, scheduler="dpm++", scheduler_steps=3, cudnn_benchmark=True
    )
    first = engine.render(make_request(model, 64, steps=2, diffusion=settings))
    block = first.effective_extra["speed"]
    assert "cudnn_benchmark not used: cuDNN autotuning applies to CUDA" in block["notes"][0]
    assert block["compile"] is True and block["compile_warm_up_s"] > 0
    assert block["compile_graphs"]["recompiles"] == 0
    assert block["scheduler"] == "DPMSolverMultistepScheduler" and first.steps == 3
    again = engine.render(make_request(model, 64, steps=2, diffusion=settings))
    assert "compile_warm_up_s" not in again.effective_extra["speed"]
    assert again.effective_extra["speed"]["compile_graphs"]["recompiles"] == 0
    engine.render(make_request(model, 64, steps=2))
    assert engine.pipeline.unet._compiled_call_impl is None
