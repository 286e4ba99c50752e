"""The out-of-memory ladder: memory savers first, then smaller outputs.

Rungs are data (``DiffusionSettings.ladder``, overridable per rule) and cumulative: each
one taken adds to the ones before. Savers change the warm pipeline's state, so every
saver a job turned on is turned off again when the job ends (the next job may not need
it, and offloading or tiling costs time); reverting is cheaper than reloading the model.
The rung that worked for a model at a size is remembered in ``state_dir`` so the next
such job starts there instead of running out of memory again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...problems import Problem
from ...sizing import frame_size
from .families import Family, lowest_frames, round_frames
from .loading import is_accelerator

log = logging.getLogger(__name__)

RESOLUTIONS = (1024, 768, 512, 256)
SAVERS = ("vae_slicing", "vae_tiling", "forward_chunking", "cpu_offload")
MEMORY_FILE = "oom-ladder.json"


class OutOfMemory(Problem):
    """Every rung of the ladder ran out of memory too. Permanent: the same job on the
    same device would fail the same way. ``hint`` says what to change."""

    def __init__(
        self, message: str, hint: str, backoff: list[dict[str, Any]] | None = None
    ) -> None:
        # Every attempt, as Clip.backoff would have listed them, goes into the failure
        # report: what the ladder tried is the user's next step.
        super().__init__(message, hint, extra={"backoff": backoff} if backoff else None)
        self.backoff = backoff or []


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the RuntimeErrors other backends (MPS, XPU) raise."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_memory(device: str) -> None:
    """Return freed blocks to the device once nothing refers to them any more."""
    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.startswith("mps") and hasattr(torch, "mps"):
        torch.mps.empty_cache()
    elif device.startswith("xpu") and hasattr(torch, "xpu"):
        torch.xpu.empty_cache()


@dataclass(frozen=True)
class Plan:
    """One attempt's shape and the savers on while it runs."""

    resolution: int
    width: int
    height: int
    frames: int
    decode_chunk: int | None  # None: the family's default (all frames at once)
    savers: tuple[str, ...] = ()


@dataclass(frozen=True)
class LadderContext:
    pipe: Any
    family: Family
    device: str
    aspect: str
    image_size: tuple[int, int]
    multiple: int
    frame_step: int
    min_frames: int
    min_resolution: int


@dataclass
class Step:
    """A rung taken (``plan`` set) or skipped (``skipped`` says why)."""

    rung: str
    plan: Plan | None = None
    skipped: str | None = None


def take(rung: str, plan: Plan, ctx: LadderContext) -> Step:
    """Try rung ``rung`` on top of ``plan``; a saver is switched on in the pipeline."""
    if rung in SAVERS:
        reason = _saver_skip_reason(rung, plan, ctx)
        if reason is not None:
            return Step(rung, skipped=reason)
        _SAVER_ON[rung](ctx)
        return Step(rung, replace(plan, savers=(*plan.savers, rung)))
    if rung == "decode_chunk_1":
        if ctx.family.decode_chunk_argument is None:
            return Step(rung, skipped=f"{ctx.family.label} decodes without chunks")
        if plan.decode_chunk == 1:
            return Step(rung, skipped="already decoding one frame at a time")
        return Step(rung, replace(plan, decode_chunk=1))
    if rung == "fewer_frames":
        floor = lowest_frames(ctx.min_frames, ctx.frame_step)
        frames = max(round_frames(plan.frames // 2, ctx.frame_step), floor)
        if frames >= plan.frames:
            return Step(rung, skipped=f"already at the floor of {plan.frames} frames (min_frames)")
        return Step(rung, replace(plan, frames=frames))
    if rung == "lower_resolution":
        lower = [r for r in RESOLUTIONS if ctx.min_resolution <= r < plan.resolution]
        if not lower:
            return Step(
                rung,
                skipped=f"already at the floor of resolution {plan.resolution} (min_resolution)",
            )
        width, height = frame_size(lower[0], ctx.aspect, *ctx.image_size, multiple=ctx.multiple)
        return Step(rung, replace(plan, resolution=lower[0], width=width, height=height))
    return Step(rung, skipped="unknown rung")


def _denoiser(ctx: LadderContext) -> Any:
    return getattr(ctx.pipe, ctx.family.denoiser, None)


def _saver_skip_reason(rung: str, plan: Plan, ctx: LadderContext) -> str | None:
    if rung in plan.savers:
        return "already on"
    vae: Any = getattr(ctx.pipe, "vae", None)
    if rung == "vae_slicing":
        if not hasattr(vae, "use_slicing"):
            return f"{type(vae).__name__} has no sliced decoding"
        return "already on" if vae.use_slicing else None
    if rung == "vae_tiling":
        if not hasattr(vae, "use_tiling"):
            return f"{type(vae).__name__} has no tiled decoding"
        return "already on" if vae.use_tiling else None
    if rung == "forward_chunking":
        denoiser = _denoiser(ctx)
        if not hasattr(denoiser, "enable_forward_chunking"):
            return f"{type(denoiser).__name__} has no feed-forward chunking"
        return None
    if rung == "cpu_offload":
        if not is_accelerator(ctx.device):
            return "model CPU offload needs a GPU; this job runs on the CPU"
        if not getattr(ctx.pipe, "model_cpu_offload_seq", None):
            return f"{type(ctx.pipe).__name__} does not support model CPU offload"
        return None
    return "unknown saver"


def _vae_slicing_on(ctx: LadderContext) -> None:
    ctx.pipe.vae.enable_slicing()


def _vae_tiling_on(ctx: LadderContext) -> None:
    ctx.pipe.vae.enable_tiling()


def _forward_chunking_on(ctx: LadderContext) -> None:
    # dim=1 chunks over the sequence (frames x pixels), where video models spend memory.
    _denoiser(ctx).enable_forward_chunking(chunk_size=1, dim=1)


def _cpu_offload_on(ctx: LadderContext) -> None:
    ctx.pipe.enable_model_cpu_offload(device=ctx.device)


_SAVER_ON = {
    "vae_slicing": _vae_slicing_on,
    "vae_tiling": _vae_tiling_on,
    "forward_chunking": _forward_chunking_on,
    "cpu_offload": _cpu_offload_on,
}


def revert(savers: tuple[str, ...], pipe: Any, family: Family, device: str) -> None:
    """Switch off the savers a job switched on, newest first, back to the loaded state."""
    for saver in reversed(savers):
        if saver == "vae_slicing":
            pipe.vae.disable_slicing()
        elif saver == "vae_tiling":
            pipe.vae.disable_tiling()
        elif saver == "forward_chunking":
            _forward_chunking_off(getattr(pipe, family.denoiser))
        elif saver == "cpu_offload":
            pipe.remove_all_hooks()
            pipe.to(device)


def _forward_chunking_off(denoiser: Any) -> None:
    if hasattr(denoiser, "disable_forward_chunking"):
        denoiser.disable_forward_chunking()
        return
    # Some models only have the "enable" half; chunk_size None is what "off" means there.
    for module in denoiser.modules():
        if hasattr(module, "set_chunk_feed_forward"):
            module.set_chunk_feed_forward(None)


# --- remembered rungs ------------------------------------------------------------


class RungMemory:
    """Which ladder position worked, per (model, device, dtype, size, frames), on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @staticmethod
    def key(model_key: str, device: str, dtype: str, plan: Plan) -> str:
        return f"{model_key}|{device}|{dtype}|{plan.width}x{plan.height}x{plan.frames}"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s (%s); out-of-memory back-off starts afresh", self.path, exc)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def lookup(self, key: str, ladder: list[str]) -> int | None:
        """The remembered ladder position for ``key``, if it was learned with this ladder."""
        with self._lock:
            entry = self._read().get(key)
        if not isinstance(entry, dict) or entry.get("ladder") != ladder:
            return None
        position = entry.get("position")
        if isinstance(position, int) and 0 < position <= len(ladder):
            return position
        return None

    def store(self, key: str, ladder: list[str], position: int, rungs: list[str]) -> None:
        with self._lock:
            entries = self._read()
            entries[key] = {
                "ladder": ladder,
                "position": position,
                "rungs": rungs,
                "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            document = {"version": 1, "entries": entries}
            try:
                _write_atomically(self.path, json.dumps(document, indent=2, sort_keys=True))
            except OSError as exc:
                # Losing the memory only costs the next job its out-of-memory attempts.
                log.warning("could not remember the working rung in %s: %s", self.path, exc)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
