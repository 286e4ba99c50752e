"""The diffusion engine: one warm pipeline at a time with its speed switches
(``speed.py``), and a climb down the out-of-memory ladder around each job's pipeline
call (``climb.py``).

Threads: ``render`` runs on the worker thread; ``release_idle`` on the daemon's
scheduler thread. A render marks the engine busy (under ``_state_lock``) for its whole
length, loading included, and ``release_idle`` never unloads a busy engine, so the lock
is only ever held for moments and the scheduler thread never waits for a render.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...sizing import frame_size
from .. import EngineUnavailable
from ..base import Clip, EngineOptions, RenderRequest
from .climb import OOM_HINT, Climb, Outcome, first_line
from .families import Family, effective_extra, form_of, round_frames
from .ladder import (
    MEMORY_FILE,
    LadderContext,
    OutOfMemory,
    Plan,
    RungMemory,
    is_out_of_memory,
    release_memory,
)
from .loading import (
    ModelSource,
    family_of,
    load_pipeline,
    locate,
    resolve_device,
    resolve_dtype,
    variant_candidates,
)
from .speed import WarmSwitches, effective, job_steps, per_job

log = logging.getLogger(__name__)

# Recorded in the sidecar's "versions" block.
PACKAGES = ("torch", "diffusers", "transformers", "accelerate")
SEED_RANGE = 2**32


@dataclass
class Resident:
    key: tuple[str, str, str, str]
    source: ModelSource
    family: Family
    pipe: Any
    dtype: str
    variant: str | None
    device: str
    last_used: float
    warm: WarmSwitches


class DiffusionEngine:
    name = "diffusion"

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self.memory = RungMemory(self.options.state_dir / MEMORY_FILE)
        self._render_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._busy = False
        self._resident: Resident | None = None

    # --- what is loaded ------------------------------------------------------------

    @property
    def pipeline(self) -> Any:
        """The warm pipeline, or None."""
        with self._state_lock:
            return self._resident.pipe if self._resident is not None else None

    @property
    def loaded_model(self) -> str | None:
        with self._state_lock:
            return self._resident.source.model if self._resident is not None else None

    def release_idle(self, now: float) -> None:
        """Unload the warm pipeline once it has been unused for ``idle_seconds``."""
        with self._state_lock:
            resident = self._resident
            if resident is None or self._busy:
                return
            idle = now - resident.last_used
            if idle < self.options.idle_seconds:
                return
            log.info("unloading model %s: unused for %.0f s", resident.source.model, idle)
            self._resident = None
            self._free(resident)

    def unload(self) -> None:
        """Free the warm pipeline now (daemon shutdown); waits for a render to finish."""
        with self._render_lock, self._state_lock:
            resident, self._resident = self._resident, None
            if resident is not None:
                self._free(resident)

    def _discard(self, resident: Resident) -> None:
        """Unload ``resident`` if it is still the warm pipeline."""
        with self._state_lock:
            if self._resident is not resident:
                return
            self._resident = None
        self._free(resident)

    @staticmethod
    def _free(resident: Resident) -> None:
        pipe, resident.pipe = resident.pipe, None
        if hasattr(pipe, "remove_all_hooks"):
            pipe.remove_all_hooks()  # offload hooks keep references to the modules
        del pipe
        release_memory(resident.device)

    def _acquire(
        self,
        source: ModelSource,
        family: Family,
        dtype: str,
        variant: str | None,
        device: str,
        loading: Callable[[str], None],
    ) -> tuple[Resident, float]:
        """The warm pipeline for this key (loading it, after unloading any other one;
        ``loading`` is told first, as a load can take minutes)."""
        key = (source.key, dtype, str(variant), device)
        with self._state_lock:
            current = self._resident
            if current is not None and current.key == key:
                return current, 0.0
            self._resident = None
        if current is not None:
            # One model on the device at a time: free A before B's weights arrive.
            log.info("unloading model %s to load %s", current.source.model, source.model)
            self._free(current)
        log.info("loading model %s (%s, %s, %s)", source.model, source.class_name, dtype, device)
        loading(source.model)
        started = time.monotonic()
        failure = None
        try:
            pipe, used = load_pipeline(
                source, family, dtype, variant_candidates(variant, source, device), device
            )
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failure = first_line(exc)
            traceback.clear_frames(exc.__traceback__)
        if failure is not None:
            release_memory(device)
            raise OutOfMemory(
                f"out of memory: the AI model {source.model!r} does not fit on {device}",
                OOM_HINT,
                detail=f"as {dtype}: {failure}",
            )
        seconds = time.monotonic() - started
        log.info("loaded model %s in %.1f s", source.model, seconds)
        resident = Resident(
            key,
            source,
            family,
            pipe,
            dtype,
            used,
            device,
            time.monotonic(),
            WarmSwitches(pipe, family, device),
        )
        with self._state_lock:
            self._resident = resident
        return resident, seconds

    # --- rendering -----------------------------------------------------------------

    def render(self, request: RenderRequest) -> Clip:
        with self._render_lock:
            with self._state_lock:
                self._busy = True
            try:
                return self._render(request)
            finally:
                with self._state_lock:
                    self._busy = False
                    if self._resident is not None:
                        self._resident.last_used = time.monotonic()

    def _render(self, request: RenderRequest) -> Clip:
        if not request.model:
            raise EngineUnavailable(
                "this rule makes AI videos but needs a model, and it names none",
                "ask whoever looks after i2vd to set the rule's 'model' to a local pipeline "
                "folder or a hub id such as ali-vilab/i2vgen-xl",
            )
        settings = request.diffusion
        source = locate(request.model)
        family = family_of(source)
        device = resolve_device(self.options.device)
        dtype = resolve_dtype(settings.dtype, family, device)
        resident, load_seconds = self._acquire(
            source, family, dtype, settings.variant, device, request.loading
        )
        pipe = resident.pipe
        seed = request.params.seed
        if seed is None:
            seed = secrets.randbelow(SEED_RANGE)
        ctx = LadderContext(
            pipe=pipe,
            family=family,
            device=device,
            aspect=request.aspect,
            image_size=(request.image.width, request.image.height),
            multiple=family.spatial_multiple(pipe),
            frame_step=family.frame_step(pipe),
            min_frames=settings.min_frames,
            min_resolution=settings.min_resolution,
        )
        plan, notes = self._first_plan(request, ctx)
        switched_on = resident.warm.sync(settings)
        steps = job_steps(settings, request.params.steps, pipe)
        if family.prompt == "none":
            notes.append(
                f"{family.label} ({family.class_name}) takes no prompt: the rule's prompt and "
                "negative_prompt were not used"
            )
        if request.diffusion.decode_chunk_size and family.decode_chunk_argument is None:
            notes.append(
                f"{family.label} decodes all frames at once: diffusion.decode_chunk_size was "
                "not used"
            )
        climb = Climb(
            self.memory,
            lambda: self._discard(resident),
            request,
            resident,
            ctx,
            plan,
            seed,
            dtype,
            steps,
        )
        if "compile" in switched_on:
            load_seconds += climb.warm_up()
        try:
            with per_job(pipe, family, settings, steps) as used:
                outcome = climb.run()
        finally:
            climb.revert_savers()
        speed = effective(resident.warm, used, settings.model_fields_set)
        if climb.warm_up_seconds is not None:
            speed["compile_warm_up_s"] = round(climb.warm_up_seconds, 3)
        if outcome.prompt_truncated:
            notes.append(
                "the prompt is longer than the text encoder's "
                f"{pipe.tokenizer.model_max_length} tokens; the rest was cut off"
            )
        return self._clip(request, resident, climb, outcome, notes, seed, load_seconds, speed)

    def _first_plan(self, request: RenderRequest, ctx: LadderContext) -> tuple[Plan, list[str]]:
        params, family = request.params, ctx.family
        width, height = frame_size(
            params.resolution, request.aspect, *ctx.image_size, multiple=ctx.multiple
        )
        frames = round_frames(params.frames, ctx.frame_step)
        notes = []
        plain = frame_size(params.resolution, request.aspect, *ctx.image_size)
        if plain != (width, height):
            notes.append(
                f"size {plain[0]}x{plain[1]} rounded to {width}x{height}: {family.label} "
                f"needs sides that are multiples of {ctx.multiple}"
            )
        if frames != params.frames:
            notes.append(
                f"frames {params.frames} rounded to {frames}: {family.label} makes "
                f"{form_of(ctx.frame_step)} frames"
            )
        plan = Plan(params.resolution, width, height, frames, request.diffusion.decode_chunk_size)
        return plan, notes

    def _clip(
        self,
        request: RenderRequest,
        resident: Resident,
        climb: Climb,
        outcome: Outcome,
        notes: list[str],
        seed: int,
        load_seconds: float,
        speed: dict[str, Any],
    ) -> Clip:
        family, inputs = resident.family, outcome.inputs
        height, width = outcome.frames[0].shape[:2]
        if (width, height) != (inputs.width, inputs.height):
            notes.append(
                f"the pipeline returned {width}x{height} frames, not the planned "
                f"{inputs.width}x{inputs.height}"
            )
        extra = effective_extra(family, inputs)
        extra.update(
            dtype=resident.dtype,
            variant=resident.variant,
            memory_savers=list(climb.plan.savers),
            ladder=climb.ladder,
            ladder_skipped={climb.ladder[i]: why for i, why in climb.no_ops.items()},
            speed=speed,
        )
        reporter = outcome.reporter
        return Clip(
            frames=outcome.frames,
            fps=request.params.fps,
            width=width,
            height=height,
            steps=inputs.steps,
            guidance=inputs.guidance,
            seed=seed,
            # "Steps taken" (the sidecar contract): none when the first try just worked.
            backoff=climb.backoff if climb.climbed else [],
            load_seconds=load_seconds,
            model=request.model,
            device=resident.device,
            family=family.class_name,
            effective_extra=extra,
            notes=notes,
            extra={
                "packages": PACKAGES,
                "progress": {
                    "steps": reporter.steps,
                    "total": reporter.total,
                    "decodes": reporter.decodes,
                },
            },
        )
