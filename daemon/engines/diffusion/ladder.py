"""The out-of-memory ladder: memory savers first, then smaller outputs.

Rungs are data (``DiffusionSettings.ladder``, overridable per rule) and cumulative: each
one taken adds to the ones before. The default order is by what a rung saves per second
it costs (README, "What each rung costs"), and a rung that cannot change anything for
the family and size (tiling below the VAE's tile size, slicing a batch of one, one frame
per decode when that is already so) is skipped up front, before the first attempt, and
recorded as skipped: a recovery never spends an attempt on a no-op.

Savers change the warm pipeline's state, so every saver a job turned on is turned off
again when the job ends (the next job may not need it, and offloading or tiling costs
time); reverting is cheaper than reloading the model. The rung that worked for a model
at a size is remembered in ``state_dir`` so the next such job starts there instead of
running out of memory again.
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
        self,
        message: str,
        hint: str,
        backoff: list[dict[str, Any]] | None = None,
        *,
        detail: str | None = None,
    ) -> None:
        # Every attempt, as Clip.backoff would have listed them, goes into the failure
        # report: what the ladder tried is the user's next step.
        extra = {"backoff": backoff} if backoff else None
        super().__init__(message, hint, detail=detail, extra=extra)
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
        if (plan.decode_chunk or ctx.family.default_decode_chunk) == 1:
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


def _decode_batch(plan: Plan, family: Family) -> int:
    """Images one VAE call decodes: the decode chunk for per-frame VAEs, else one video."""
    if family.decode_chunk_argument is None:
        return 1  # a video VAE decodes the one video as a whole (batch of one)
    return plan.decode_chunk or family.default_decode_chunk or plan.frames


def _tiling_applies(vae: Any, plan: Plan) -> bool:
    """Whether the VAE would tile at this size; unknown VAEs are assumed to."""
    side = getattr(vae, "tile_sample_min_size", None)
    height = getattr(vae, "tile_sample_min_height", side)
    width = getattr(vae, "tile_sample_min_width", side)
    if not isinstance(height, int) or not isinstance(width, int):
        return True
    frames = getattr(vae, "tile_sample_min_num_frames", None)
    framewise = getattr(vae, "use_framewise_decoding", False)
    if framewise and isinstance(frames, int) and plan.frames > frames:
        return True
    return plan.width > width or plan.height > height


def _saver_skip_reason(rung: str, plan: Plan, ctx: LadderContext) -> str | None:
    if rung in plan.savers:
        return "already on"
    vae: Any = getattr(ctx.pipe, "vae", None)
    if rung == "vae_slicing":
        if not hasattr(vae, "use_slicing"):
            return f"{type(vae).__name__} has no sliced decoding"
        if vae.use_slicing:
            return "already on"
        if _decode_batch(plan, ctx.family) <= 1:
            return "changes nothing here: each VAE call already holds one image or one video"
        return None
    if rung == "vae_tiling":
        if not hasattr(vae, "use_tiling"):
            return f"{type(vae).__name__} has no tiled decoding"
        if vae.use_tiling:
            return "already on"
        if not _tiling_applies(vae, plan):
            return (
                f"changes nothing at {plan.width}x{plan.height}: {type(vae).__name__} tiles "
                "only larger frames"
            )
        return None
    if rung == "forward_chunking":
        if not feed_forwards(_denoiser(ctx)):
            return f"{type(_denoiser(ctx)).__name__} has no feed-forward layers to chunk"
        return None
    if rung == "cpu_offload":
        if not is_accelerator(ctx.device):
            return "model CPU offload needs a GPU; this job runs on the CPU"
        if not getattr(ctx.pipe, "model_cpu_offload_seq", None):
            return f"{type(ctx.pipe).__name__} does not support model CPU offload"
        return None
    return "unknown saver"


def ahead(ladder: list[str], plan: Plan, ctx: LadderContext) -> dict[int, str]:
    """The ladder positions that cannot change anything for this family and size, with
    why, found before the first attempt by walking the ladder on paper (sizes shrink as
    the output rungs would shrink them; no saver is switched on)."""
    skipped: dict[int, str] = {}
    for position, rung in enumerate(ladder):
        reason = _paper_skip(rung, plan, ctx)
        if reason is not None:
            skipped[position] = reason
            continue
        plan = _on_paper(rung, plan, ctx)
    return skipped


def _paper_skip(rung: str, plan: Plan, ctx: LadderContext) -> str | None:
    if rung in SAVERS:
        return _saver_skip_reason(rung, plan, ctx)
    return take(rung, plan, ctx).skipped  # output rungs only change the plan


def _on_paper(rung: str, plan: Plan, ctx: LadderContext) -> Plan:
    if rung in SAVERS:
        return replace(plan, savers=(*plan.savers, rung))
    return take(rung, plan, ctx).plan or plan


# Pieces each feed-forward is cut into along the sequence. Coarse on purpose: diffusers'
# own chunking (chunk size 1) turns one large matrix product into thousands of tiny ones
# (~56x the UNet's operator count for I2VGen-XL); four pieces cut the largest activation
# to a quarter and keep each product large enough to run at full speed on a GPU.
FORWARD_CHUNKS = 4


def feed_forwards(denoiser: Any) -> list[Any]:
    """The denoiser's feed-forward layers (diffusers' FeedForward), where memory peaks."""
    if denoiser is None or not hasattr(denoiser, "modules"):
        return []
    from diffusers.models.attention import FeedForward

    return [module for module in denoiser.modules() if isinstance(module, FeedForward)]


def _chunked(forward: Any, pieces: int) -> Any:
    import torch

    def run(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        # dim 1 is the sequence (tokens or frames); the feed-forward works on each
        # position alone, so the pieces give exactly the unchunked result.
        if hidden_states.dim() < 3 or hidden_states.shape[1] < 2:
            return forward(hidden_states, *args, **kwargs)
        parts = hidden_states.chunk(pieces, dim=1)
        return torch.cat([forward(part, *args, **kwargs) for part in parts], dim=1)

    run.i2vd_chunked = True  # type: ignore[attr-defined]
    return run


def chunk_feed_forwards(denoiser: Any, pieces: int = FORWARD_CHUNKS) -> int:
    """Cut every feed-forward into ``pieces`` along the sequence; returns how many."""
    layers = feed_forwards(denoiser)
    for layer in layers:
        if not getattr(vars(layer).get("forward"), "i2vd_chunked", False):
            layer.forward = _chunked(layer.forward, pieces)
    return len(layers)


def unchunk_feed_forwards(denoiser: Any) -> None:
    for layer in feed_forwards(denoiser):
        if getattr(vars(layer).get("forward"), "i2vd_chunked", False):
            del layer.forward


def _vae_slicing_on(ctx: LadderContext) -> None:
    ctx.pipe.vae.enable_slicing()


def _vae_tiling_on(ctx: LadderContext) -> None:
    ctx.pipe.vae.enable_tiling()


def _forward_chunking_on(ctx: LadderContext) -> None:
    chunk_feed_forwards(_denoiser(ctx))


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
            unchunk_feed_forwards(getattr(pipe, family.denoiser))
        elif saver == "cpu_offload":
            pipe.remove_all_hooks()
            pipe.to(device)


def ordered(ladder: list[str], family: Family, chosen: bool) -> list[str]:
    """The ladder for this family: a rule's own ladder as written; the default one with
    CPU offload moved before feed-forward chunking where the family's encoders are large
    next to its denoiser, so moving them off the GPU saves more per second it costs."""
    if chosen or not family.offload_before_chunking:
        return list(ladder)
    if "forward_chunking" not in ladder or "cpu_offload" not in ladder:
        return list(ladder)
    rest = [rung for rung in ladder if rung != "cpu_offload"]
    at = rest.index("forward_chunking")
    return [*rest[:at], "cpu_offload", *rest[at:]]


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
