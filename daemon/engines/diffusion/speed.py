"""Speed switches: settings that make the same pipeline run faster, each undoable.

Two kinds. *Warm* switches (compile, channels-last, cuDNN autotune, fused QKV) change the
loaded model and stay with it from job to job; a job that wants a different set has the
difference applied or reverted before it runs. *Per-job* switches (scheduler, step cache)
are applied for one call and reverted after it, like the ladder's savers. A switch that
does not fit the family or device is not applied, and the sidecar says why.

Why each default is what it is: README, "Speed switches".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ...rules import DiffusionSettings
from .families import Family

log = logging.getLogger(__name__)

WARM = ("compile", "channels_last", "cudnn_benchmark", "fused_qkv")
# torch.compile's backend; the tests use "eager" (inductor builds every kernel first).
COMPILE_BACKEND = "inductor"
# Every third step recomputes the deep UNet blocks; the two between reuse them. DeepCache
# reports this interval as its usual trade of speed for fidelity on Stable Diffusion UNets.
CACHE_INTERVAL = 3
# diffusers' default threshold for the first-block cache: steps whose first block's output
# changed less than this (relative) reuse the rest of the transformer's residual.
FIRST_BLOCK_THRESHOLD = 0.05
# Schedulers with integer timesteps and a beta schedule, which DPM-Solver++ can replace
# from their config; flow-matching and continuous-time (SVD's EDM) ones cannot.
_DISCRETE = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler")


def _graphs() -> int:
    import torch._dynamo.utils

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@dataclass
class WarmSwitches:
    """The warm switches on in one loaded pipeline, with how to undo each."""

    pipe: Any
    family: Family
    device: str
    compile_backend: str | None = None  # None: COMPILE_BACKEND
    undo: dict[str, Callable[[], None]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # requested but not applied
    graphs_at_warm_up: int | None = None

    def sync(self, settings: DiffusionSettings) -> list[str]:
        """Apply the switches ``settings`` wants and revert the rest; returns the names
        newly switched on."""
        added = []
        for name in WARM:
            wanted = bool(getattr(settings, name))
            if not wanted and name in self.undo:
                self.undo.pop(name)()
                self.notes.pop(name, None)
            elif wanted and name not in self.undo and name not in self.notes:
                reason = self._apply(name)
                if reason is None:
                    added.append(name)
                else:
                    self.notes[name] = reason
            if not wanted:
                self.notes.pop(name, None)
        return added

    def revert_all(self) -> None:
        for name in reversed(list(self.undo)):
            self.undo.pop(name)()
        self.notes.clear()

    def _apply(self, name: str) -> str | None:
        import torch

        denoiser = getattr(self.pipe, self.family.denoiser)
        if name == "cudnn_benchmark":
            if not self.device.startswith("cuda"):
                return "cuDNN autotuning applies to CUDA devices only"
            before = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True

            def restore() -> None:
                torch.backends.cudnn.benchmark = before

            self.undo[name] = restore
        elif name == "channels_last":
            # 4-D weights only (2-D convolutions): Module.to(memory_format=...) refuses
            # the 5-D temporal convolutions of video UNets and VAEs.
            modules = [m for m in (denoiser, getattr(self.pipe, "vae", None)) if m is not None]
            weights = [p for m in modules for p in m.parameters() if p.dim() == 4]
            for weight in weights:
                weight.data = weight.data.contiguous(memory_format=torch.channels_last)

            def contiguous() -> None:
                for weight in weights:
                    weight.data = weight.data.contiguous()

            self.undo[name] = contiguous
        elif name == "fused_qkv":
            if not hasattr(denoiser, "fuse_qkv_projections"):
                return f"{type(denoiser).__name__} cannot fuse its attention projections"
            try:
                denoiser.fuse_qkv_projections()
            except ValueError as exc:  # e.g. attention with added key/value projections
                return f"{type(denoiser).__name__}: {exc}"
            self.undo[name] = denoiser.unfuse_qkv_projections
        elif name == "compile":
            # In place (nn.Module.compile): the pipeline keeps the same module object, so
            # offload hooks, the ladder's savers and the step cache still find it.
            denoiser.compile(backend=self.compile_backend or COMPILE_BACKEND, dynamic=False)
            self.graphs_at_warm_up = None

            def uncompile() -> None:
                denoiser._compiled_call_impl = None
                self.graphs_at_warm_up = None

            self.undo[name] = uncompile
        return None

    @property
    def on(self) -> list[str]:
        return list(self.undo)


@dataclass
class JobSwitches:
    """What one job used, for the sidecar's ``effective.speed`` block."""

    scheduler: str
    steps: int
    step_cache: str | None
    notes: list[str] = field(default_factory=list)


def job_steps(settings: DiffusionSettings, steps: int, pipe: Any) -> int:
    """The denoising steps this job runs: ``scheduler_steps`` where DPM-Solver++ is used."""
    if settings.scheduler == "dpm++" and settings.scheduler_steps and _dpm_fits(pipe) is None:
        return settings.scheduler_steps
    return steps


def _dpm_fits(pipe: Any) -> str | None:
    name = type(pipe.scheduler).__name__
    if name not in _DISCRETE:
        return f"scheduler dpm++ not used: {name} is not a discrete-timestep scheduler"
    return None


def dpm_solver(config: Any) -> Any:
    """DPM-Solver++ (2M) from a discrete scheduler's config, set up as I2VGen-XL needs:
    its prediction type (v), trailing timesteps (the first step starts from pure noise,
    which zero-SNR training assumes) and the zero-SNR rescaled betas."""
    from diffusers import DPMSolverMultistepScheduler

    solver: Any = DPMSolverMultistepScheduler
    return solver.from_config(
        config,
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        rescale_betas_zero_snr=bool(config.get("rescale_betas_zero_snr", False)),
        final_sigmas_type="zero",
        prediction_type=config.get("prediction_type", "epsilon"),
    )


@contextmanager
def per_job(
    pipe: Any, family: Family, settings: DiffusionSettings, steps: int
) -> Iterator[JobSwitches]:
    """The scheduler and step cache for one call, reverted however the call ends."""
    used = JobSwitches(type(pipe.scheduler).__name__, steps, None)
    undo: list[Callable[[], None]] = []
    try:
        if settings.scheduler == "dpm++":
            reason = _dpm_fits(pipe)
            if reason is None:
                original = pipe.scheduler
                pipe.scheduler = dpm_solver(original.config)
                used.scheduler = type(pipe.scheduler).__name__

                def restore(original: Any = original) -> None:
                    pipe.scheduler = original

                undo.append(restore)
            else:
                used.notes.append(reason)
        if settings.step_cache:
            denoiser = getattr(pipe, family.denoiser)
            kind, reason, off = _step_cache_on(denoiser)
            if off is not None:
                used.step_cache = kind
                undo.append(off)
            else:
                used.notes.append(f"step_cache not used: {reason}")
        yield used
    finally:
        for step in reversed(undo):
            step()


def _step_cache_on(denoiser: Any) -> tuple[str, str, Callable[[], None] | None]:
    if hasattr(denoiser, "down_blocks") and hasattr(denoiser, "up_blocks"):
        return f"deepcache(interval {CACHE_INTERVAL})", "", deep_cache(denoiser)
    if hasattr(denoiser, "enable_cache"):
        try:
            from diffusers.hooks import FirstBlockCacheConfig  # type: ignore[attr-defined]
        except ImportError:
            return "", "this diffusers has no first-block cache (0.35 or later has)", None
        denoiser.enable_cache(FirstBlockCacheConfig(threshold=FIRST_BLOCK_THRESHOLD))
        return f"first_block(threshold {FIRST_BLOCK_THRESHOLD})", "", denoiser.disable_cache
    return "", f"{type(denoiser).__name__} has no cacheable structure", None


class _Reuse:
    """One deep block's forward: computed on every ``CACHE_INTERVAL``-th call, else the
    output of the last computed call. Each wrapped block runs once per denoiser call, so
    every block's counter stays in step with the others."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward
        self.calls = 0
        self.reused = 0
        self.cached: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call, self.calls = self.calls, self.calls + 1
        if self.cached is None or call % CACHE_INTERVAL == 0:
            self.cached = self.forward(*args, **kwargs)
        else:
            self.reused += 1
        return self.cached


def deep_cache(unet: Any) -> Callable[[], None]:
    """DeepCache for a diffusers UNet: the deep blocks (every down block but the first,
    the middle block, every up block but the last) reuse their last computed output
    between full steps; the shallow first and last blocks and the skip connection between
    them run every step. Returns the undo."""
    blocks = [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]
    blocks = [block for block in blocks if block is not None]
    for block in blocks:
        block.forward = _Reuse(block.forward)

    def off() -> None:
        for block in blocks:
            if isinstance(vars(block).get("forward"), _Reuse):
                del block.forward

    return off


def compile_report(warm: WarmSwitches) -> dict[str, Any] | None:
    """Graphs compiled since the warm-up (recompiles), for the sidecar."""
    if "compile" not in warm.undo:
        return None
    graphs = _graphs()
    if warm.graphs_at_warm_up is None:
        return {"graphs": graphs, "recompiles": None}
    return {"graphs": graphs, "recompiles": graphs - warm.graphs_at_warm_up}


def mark_warm(warm: WarmSwitches) -> None:
    if "compile" in warm.undo:
        warm.graphs_at_warm_up = _graphs()


def effective(
    warm: WarmSwitches, job: JobSwitches, asked: set[str] | frozenset[str] = frozenset(WARM)
) -> dict[str, Any]:
    """The sidecar's ``effective.speed`` block: what was on, and why one the rule asked
    for (``asked``) wasn't; a default that does not apply here (cuDNN on a CPU) is not
    worth a note on every job."""
    block: dict[str, Any] = {name: name in warm.undo for name in WARM}
    block.update(scheduler=job.scheduler, steps=job.steps, step_cache=job.step_cache)
    report = compile_report(warm)
    if report is not None:
        block["compile_graphs"] = report
    notes = [f"{name} not used: {why}" for name, why in warm.notes.items() if name in asked]
    notes += job.notes
    if notes:
        block["notes"] = notes
    return block
