"""Measuring instruments for ``bench_diffusion.py``: the raw pipeline call, per-phase and
per-step times, FLOPs, device memory, nvidia-smi's view, the matrix-product ceiling and
the package versions. Nothing here knows about the daemon.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from conftest import picture
from daemon.video import encode_mp4
from tiny_pipelines import i2vgenxl_prompt_embeds

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "huggingface_hub", "numpy")
# Dense bf16/fp16 matrix rates from the vendors' datasheets (TFLOP/s), matched against
# torch.cuda.get_device_name(); the measured matrix-product rate is reported beside it.
DATASHEET_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


def cuda(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available()


def sync(device: str) -> None:
    if cuda(device):
        torch.cuda.synchronize()


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["cuda"] = torch.version.cuda
    found["cudnn"] = str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None
    return found


def nvidia_smi() -> dict[str, str] | None:
    """The driver's view of the GPU (memory of every process, not only the allocator's)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    fields = "name,driver_version,memory.used,memory.total,utilization.gpu,clocks.sm,power.draw"
    run = subprocess.run(
        [exe, f"--query-gpu={fields}", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
    )
    values = (
        [v.strip() for v in run.stdout.strip().splitlines()[0].split(",")] if run.stdout else []
    )
    return dict(zip(fields.split(","), values, strict=False))


def matmul_tflops(device: str, size: int = 8192, repeats: int = 10) -> float | None:
    """The bf16 matrix-product rate this GPU reaches on random data: the practical ceiling."""
    if not cuda(device):
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - start) / repeats
    del a, b
    torch.cuda.empty_cache()
    return 2 * size**3 / seconds / 1e12


def datasheet_tflops(device: str) -> float | None:
    if not cuda(device):
        return None
    name = torch.cuda.get_device_name()
    return next((v for key, v in DATASHEET_TFLOPS.items() if key in name), None)


class Memory:
    """Peak allocated and reserved over a span, and allocated after it (creep)."""

    def __init__(self, device: str) -> None:
        self.device = device

    @contextmanager
    def span(self, into: dict[str, Any]) -> Iterator[None]:
        if not cuda(self.device):
            yield
            return
        torch.cuda.reset_peak_memory_stats()
        yield
        torch.cuda.synchronize()
        gib = 2**30
        into["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / gib, 3)
        into["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / gib, 3)
        into["allocated_after_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)


def raw_call(pipe: Any, preset: dict[str, int], seed: int, steps: int | None = None) -> Any:
    """The I2VGen-XL call exactly as a script would make it; returns its frames."""
    size = preset["resolution"]
    image = Image.fromarray(picture(size + 64, size, seed=seed))
    positive, negative = i2vgenxl_prompt_embeds(pipe, "img drifting slowly", "blurry")
    generator = torch.Generator(device=pipe._execution_device).manual_seed(seed)
    return pipe(
        image=image,
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=size,
        width=size,
        num_frames=preset["frames"],
        num_inference_steps=steps or preset["steps"],
        guidance_scale=9.0,
        target_fps=preset["fps"],
        generator=generator,
        output_type="np",
    ).frames[0]


def raw_job(pipe: Any, preset: dict[str, int], out: Path, seed: int, device: str) -> float:
    """Seconds for the raw call plus the encode of its frames."""
    sync(device)
    start = time.perf_counter()
    frames = raw_call(pipe, preset, seed)
    video = [(frame * 255).round().clip(0, 255).astype("uint8") for frame in frames]
    encode_mp4(video, out, preset["fps"])
    return time.perf_counter() - start


class Phases:
    """Times the encoders, every denoiser call (one per step: guidance is batched) and the
    VAE, synchronising the device at each edge so the times are the device's."""

    def __init__(self, pipe: Any, device: str) -> None:
        self.pipe = pipe
        self.device = device
        self.totals: dict[str, float] = {}
        self.steps: list[float] = []
        self._undo: list[Callable[[], None]] = []

    def _timed(self, module: Any, method: str, phase: str) -> None:
        original = getattr(module, method)

        def run(*args: Any, **kwargs: Any) -> Any:
            sync(self.device)
            start = time.perf_counter()
            result = original(*args, **kwargs)
            sync(self.device)
            seconds = time.perf_counter() - start
            self.totals[phase] = self.totals.get(phase, 0.0) + seconds
            if phase == "denoise":
                self.steps.append(seconds)
            return result

        setattr(module, method, run)
        self._undo.append(lambda: delattr(module, method))

    def __enter__(self) -> Phases:
        pipe = self.pipe
        self._timed(pipe.text_encoder, "forward", "text_encoder")
        self._timed(pipe.image_encoder, "forward", "image_encoder")
        self._timed(pipe.unet, "forward", "denoise")
        self._timed(pipe.vae, "encode", "vae_encode")
        self._timed(pipe.vae, "decode", "vae_decode")
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()

    def report(self, total: float) -> dict[str, Any]:
        timed = sum(self.totals.values())
        steps = sorted(self.steps)
        return {
            "total_s": round(total, 3),
            "phases_s": {k: round(v, 3) for k, v in self.totals.items()},
            "other_s": round(total - timed, 3),
            "step_s": {
                "count": len(steps),
                "median": round(steps[len(steps) // 2], 4) if steps else None,
                "min": round(steps[0], 4) if steps else None,
                "max": round(steps[-1], 4) if steps else None,
                "first": round(self.steps[0], 4) if steps else None,
            },
        }


def phases(pipe: Any, preset: dict[str, int], device: str) -> dict[str, Any]:
    with Phases(pipe, device) as timer:
        sync(device)
        start = time.perf_counter()
        raw_call(pipe, preset, seed=99)
        sync(device)
        total = time.perf_counter() - start
    return timer.report(total)


def flops(pipe: Any, preset: dict[str, int]) -> dict[str, float]:
    """FLOPs of one job at ``preset``: counted for 1 and 2 steps (torch's FLOP counter:
    matrix products, convolutions, attention), the difference is one step's."""
    from torch.utils.flop_counter import FlopCounterMode

    counted = []
    for steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            raw_call(pipe, preset, seed=1, steps=steps)
        counted.append(counter.get_total_flops())
    per_step = counted[1] - counted[0]
    fixed = counted[0] - per_step
    total = fixed + per_step * preset["steps"]
    return {
        "per_step_tflop": round(per_step / 1e12, 6),
        "fixed_tflop": round(fixed / 1e12, 6),
        "job_tflop": round(total / 1e12, 6),
    }


def utilisation(job_tflop: float, seconds: float, peak_tflops: float | None) -> float | None:
    if not peak_tflops or seconds <= 0:
        return None
    return round(job_tflop / seconds / peak_tflops, 4)


# Issue 13's goals on one H100/H200, read off the sections (None: not measured).
GOALS = {
    "standard_s": 5.0,
    "standard_peak_allocated_gib": 8.0,
    "quick_s": 1.6,
    "high_s": 30.0,
    "fastest_variant_standard_s": 3.0,
    "oom_recovery_ratio": 3.0,
    "creep_spread_mib": 50 / 1.048576,
    "daemon_over_raw": 1.05,
}


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """Each goal's figure from this run and whether it is met (only meaningful on the
    full-size model on a GPU; the tiny model's figures are a rehearsal)."""

    def daemon_s(name: str) -> float | None:
        section = result.get(f"preset_{name}") or {}
        value = section.get("daemon_median_s")
        return float(value) if value is not None else None

    standard = result.get("preset_standard") or {}
    peaks = [
        j["peak_allocated_gib"] for j in standard.get("daemon", []) if "peak_allocated_gib" in j
    ]
    variants = [
        v["median_s"]
        for name, v in (result.get("variants") or {}).items()
        if name != "baseline" and "median_s" in v
    ]
    figures = {
        "standard_s": daemon_s("standard"),
        "standard_peak_allocated_gib": max(peaks) if peaks else None,
        "quick_s": daemon_s("quick"),
        "high_s": daemon_s("high"),
        "fastest_variant_standard_s": min(variants) if variants else None,
        "oom_recovery_ratio": (result.get("oom") or {}).get("ratio"),
        "creep_spread_mib": (result.get("creep") or {}).get("allocated_after_spread_mib"),
        "daemon_over_raw": standard.get("daemon_over_raw"),
    }
    return {
        name: {
            "goal": GOALS[name],
            "figure": value,
            "met": None if value is None else value <= GOALS[name],
        }
        for name, value in figures.items()
    }
