"""The out-of-memory ladder, with out-of-memory errors injected at the pipeline call.

``FakeOutOfMemory`` is a fake, injected by these tests: it wraps the pipeline class's
``__call__`` and raises ``torch.cuda.OutOfMemoryError`` on the first N calls (with a
tensor that only the exception's traceback keeps alive, as a real pipeline's
intermediates would be), then lets the real call run.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from test_diffusion_engine import make_engine, make_request, tiny_model

from daemon.engines.diffusion import OutOfMemory
from daemon.engines.diffusion.ladder import MEMORY_FILE, is_out_of_memory
from daemon.rules import DiffusionSettings

FAKE_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (fake, injected by the test)"


@dataclass
class Call:
    width: int
    height: int
    frames: int
    decode_chunk_size: int | None
    vae_slicing: bool
    vae_tiling: bool
    chunked_feed_forward: bool
    earlier_scratch_alive: list[bool]


@dataclass
class FakeOutOfMemory:
    """Fake, injected by the test: the first ``fail`` pipeline calls run out of memory."""

    fail: int
    calls: list[Call] = field(default_factory=list)
    scratch: list[weakref.ref[torch.Tensor]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch, pipeline_class: type) -> None:
        original = pipeline_class.__call__

        def call(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            denoiser = getattr(pipe, "unet", None) or pipe.transformer
            self.calls.append(
                Call(
                    width=kwargs["width"],
                    height=kwargs["height"],
                    frames=kwargs["num_frames"],
                    decode_chunk_size=kwargs.get("decode_chunk_size"),
                    vae_slicing=pipe.vae.use_slicing,
                    vae_tiling=pipe.vae.use_tiling,
                    chunked_feed_forward=any(
                        getattr(vars(m).get("forward"), "i2vd_chunked", False)
                        for m in denoiser.modules()
                    ),
                    earlier_scratch_alive=[ref() is not None for ref in self.scratch],
                )
            )
            if len(self.calls) <= self.fail:
                # Held only by this frame; the error refers back to the frame (a cycle),
                # as intermediates inside a real pipeline's frames are.
                scratch = torch.ones(256, 256)
                self.scratch.append(weakref.ref(scratch))
                error = torch.cuda.OutOfMemoryError(FAKE_OOM)
                raise error
            return original(pipe, *args, **kwargs)

        monkeypatch.setattr(pipeline_class, "__call__", call)


@pytest.fixture
def wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "wan_i2v")


def wan_class() -> type:
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline


def test_out_of_memory_is_recognised_for_every_backend() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError(FAKE_OOM))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8 GiB)"))
    assert is_out_of_memory(RuntimeError("XPU out of memory. Tried to allocate 1 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_ladder_steps_down_records_every_attempt_and_remembers_the_rung(
    wan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeOutOfMemory(fail=4)
    fake.install(monkeypatch, wan_class())
    engine = make_engine(tmp_path)
    clip = engine.render(make_request(wan, 512, frames=16, steps=2))

    # Savers first (tiling, chunking), then fewer frames (17 -> 9), then 512 -> 256.
    assert [(c.width, c.frames, c.vae_tiling, c.chunked_feed_forward) for c in fake.calls] == [
        (512, 17, False, False),
        (512, 17, True, False),
        (512, 17, True, True),
        (512, 9, True, True),
        (256, 9, True, True),
    ]
    # The tensor of each failed attempt was gone before the next attempt started.
    assert [c.earlier_scratch_alive for c in fake.calls] == [
        [],
        *([False] * n for n in (1, 2, 3, 4)),
    ]
    assert len(clip.frames) == 9 and (clip.width, clip.height) == (256, 256)
    assert clip.effective_extra["memory_savers"] == ["vae_tiling", "forward_chunking"]

    # Rungs that change nothing for Wan at this size are skipped: decided before the first
    # attempt, listed after it
    # (the second fewer_frames and lower_resolution too: by then 9 frames and 256 are the
    # floors); the rest are
    # tried in the default order, cheapest per byte saved first.
    outcome = [(entry.get("attempt"), entry.get("rung"), entry["result"]) for entry in clip.backoff]
    assert outcome == [
        (1, None, "out_of_memory"),
        (None, "decode_chunk_1", "skipped"),
        (None, "vae_slicing", "skipped"),
        (None, "cpu_offload", "skipped"),
        (None, "fewer_frames", "skipped"),
        (None, "lower_resolution", "skipped"),
        (2, "vae_tiling", "out_of_memory"),
        (3, "forward_chunking", "out_of_memory"),
        (4, "fewer_frames", "out_of_memory"),
        (5, "lower_resolution", "ok"),
    ]
    first = clip.backoff[0]
    assert first["error"] == FAKE_OOM
    assert (first["width"], first["height"], first["frames"], first["savers"]) == (512, 512, 17, [])
    skipped = {e["rung"]: e["reason"] for e in clip.backoff if e["result"] == "skipped"}
    assert all(e["up_front"] for e in clip.backoff if e["result"] == "skipped")
    assert "decodes without chunks" in skipped["decode_chunk_1"]
    assert "one image or one video" in skipped["vae_slicing"]
    assert "needs a GPU" in skipped["cpu_offload"]
    assert "floor of 9 frames" in skipped["fewer_frames"]
    assert clip.effective_extra["ladder"][3:5] == ["cpu_offload", "forward_chunking"]

    # The savers are off again for the next job.
    pipe = engine.pipeline
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling
    assert not any("forward" in vars(m) for m in pipe.transformer.modules())

    # The working rung is remembered on disk, and the next such job starts there.
    memory = json.loads((tmp_path / "state" / MEMORY_FILE).read_text())
    (entry,) = memory["entries"].values()
    assert entry["rungs"] == ["vae_tiling", "forward_chunking", "fewer_frames", "lower_resolution"]
    fake.calls.clear()
    fake.fail = 0
    again = engine.render(make_request(wan, 512, frames=16, steps=2))
    assert [(c.width, c.frames, c.vae_tiling, c.chunked_feed_forward) for c in fake.calls] == [
        (256, 9, True, True)
    ]
    remembered = [e for e in again.backoff if e["result"] == "remembered"]
    assert again.backoff[0]["result"] == "remembered"
    assert remembered[0]["rungs"] == entry["rungs"]
    assert MEMORY_FILE in remembered[0]["note"]
    assert [(e.get("attempt"), e["result"]) for e in again.backoff if "attempt" in e] == [(1, "ok")]

    # A fresh engine (a restarted daemon) reads it from state_dir.
    fake.calls.clear()
    fresh = make_engine(tmp_path)
    restarted = fresh.render(make_request(wan, 512, frames=16, steps=2))
    assert restarted.backoff[0]["result"] == "remembered"
    assert [(c.width, c.frames) for c in fake.calls] == [(256, 9)]

    # Another size is not affected, and starts without savers.
    fake.calls.clear()
    engine.render(make_request(wan, 256, frames=8, steps=2))
    assert [(c.vae_tiling, c.chunked_feed_forward) for c in fake.calls] == [(False, False)]


def test_rule_ladder_override_is_followed(
    wan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeOutOfMemory(fail=1)
    fake.install(monkeypatch, wan_class())
    engine = make_engine(tmp_path)
    settings = DiffusionSettings(ladder=["lower_resolution"])
    clip = engine.render(make_request(wan, 512, frames=8, steps=2, diffusion=settings))
    assert [(c.width, c.vae_slicing) for c in fake.calls] == [(512, False), (256, False)]
    assert [e["rung"] for e in clip.backoff] == [None, "lower_resolution"]


def test_floor_of_the_ladder_fails_with_a_hint(
    wan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeOutOfMemory(fail=100)
    fake.install(monkeypatch, wan_class())
    engine = make_engine(tmp_path)
    settings = DiffusionSettings(ladder=["vae_tiling", "fewer_frames"], min_frames=8)
    with pytest.raises(OutOfMemory) as caught:
        engine.render(make_request(wan, 512, frames=16, steps=2, diffusion=settings))
    message = str(caught.value)
    assert "out of memory on cpu" in message and "9 frames" in message
    detail = caught.value.detail or ""
    assert "vae_tiling, fewer_frames" in detail and FAKE_OOM in detail
    assert "resolution" in caught.value.hint and "GPU" in caught.value.hint
    assert len(fake.calls) == 3
    assert [(e["rung"], e["result"]) for e in caught.value.backoff] == [
        (None, "out_of_memory"),
        ("vae_tiling", "out_of_memory"),
        ("fewer_frames", "out_of_memory"),
    ]
    assert not engine.pipeline.vae.use_tiling  # reverted after the failure too
    assert not (tmp_path / "state" / MEMORY_FILE).exists()


def test_i2vgenxl_forward_chunking_and_decode_chunks(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import I2VGenXLPipeline

    model = tiny_model(tmp_path_factory, "i2vgenxl")
    fake = FakeOutOfMemory(fail=2)
    fake.install(monkeypatch, I2VGenXLPipeline)
    engine = make_engine(tmp_path)
    settings = DiffusionSettings(
        ladder=["forward_chunking", "cpu_offload", "decode_chunk_1"], decode_chunk_size=4
    )
    clip = engine.render(make_request(model, 64, steps=2, diffusion=settings))
    assert [(c.chunked_feed_forward, c.decode_chunk_size) for c in fake.calls] == [
        (False, 4),
        (True, 4),
        (True, 1),
    ]
    assert clip.effective_extra["decode_chunk_size"] == 1
    assert clip.extra["progress"]["decodes"] == 8
    assert [(e["rung"], e["result"]) for e in clip.backoff] == [
        (None, "out_of_memory"),
        ("cpu_offload", "skipped"),
        ("forward_chunking", "out_of_memory"),
        ("decode_chunk_1", "ok"),
    ]
    unet = engine.pipeline.unet
    assert not any("forward" in vars(m) for m in unet.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_out_of_memory_climbs_the_ladder(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from daemon.engines import EngineOptions
    from daemon.engines.diffusion import DiffusionEngine

    model = tiny_model(tmp_path_factory, "wan_i2v")
    engine = DiffusionEngine(EngineOptions(device="cuda", state_dir=tmp_path / "state"))
    engine.render(make_request(model, 256, frames=8, steps=2))  # loaded and warm
    total = torch.cuda.mem_get_info()[1]
    # Room for the weights and a small job only: the conditioning video alone of
    # 33 frames at 1024x1024 (float32) is over 400 MiB.
    budget = torch.cuda.memory_allocated() + 300 * 2**20
    ladder = ["vae_slicing", "vae_tiling", "fewer_frames", "fewer_frames"]
    settings = DiffusionSettings(ladder=[*ladder, *["lower_resolution"] * 3])
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
    try:
        clip = engine.render(make_request(model, 1024, frames=32, steps=2, diffusion=settings))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert clip.backoff[0]["result"] == "out_of_memory"
    assert "out of memory" in clip.backoff[0]["error"].lower()
    assert clip.backoff[-1]["result"] == "ok"
    assert clip.width < 1024
