"""The diffusion engine: one warm pipeline at a time, and the out-of-memory ladder
around each pipeline call.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ...rules import DiffusionSettings
from ...sizing import crop_box, frame_size
from ...video import Frame
from .. import EngineUnavailable
from ..base import Clip, EngineOptions, RenderRequest
from .families import (
    CallInputs,
    Family,
    call_arguments,
    effective_extra,
    form_of,
    round_frames,
)
from .ladder import (
    MEMORY_FILE,
    SAVERS,
    LadderContext,
    OutOfMemory,
    Plan,
    RungMemory,
    ahead,
    is_out_of_memory,
    ordered,
    release_memory,
    revert,
    take,
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
from .progress import StepReporter, decode_calls
from .prompts import i2vgenxl_embeddings
from .speed import WarmSwitches, effective, job_steps, mark_warm, per_job

log = logging.getLogger(__name__)

# Recorded in the sidecar's "versions" block.
PACKAGES = ("torch", "diffusers", "transformers", "accelerate")
SEED_RANGE = 2**32

OOM_HINT = (
    "lower the rule's preset or its params (resolution, frames), allow smaller outputs "
    "(diffusion.min_frames, diffusion.min_resolution, more rungs in diffusion.ladder), free "
    "GPU memory held by other processes (see nvidia-smi), or use a GPU with more memory"
)


@dataclass
class _Resident:
    key: tuple[str, str, str, str]
    source: ModelSource
    family: Family
    pipe: Any
    dtype: str
    variant: str | None
    device: str
    last_used: float
    warm: WarmSwitches


@dataclass
class _Outcome:
    frames: list[Frame]
    inputs: CallInputs
    reporter: StepReporter
    prompt_truncated: bool


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


@contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """The global random streams seeded for one call, and restored after it.

    Pipelines take a generator for their noise, but some also draw from the global
    stream (I2VGen-XL samples the image latents with ``latent_dist.sample()``), so the
    seed alone would not make a clip repeatable.
    """
    import torch

    cuda = device.startswith("cuda")
    devices = [torch.device(device).index or 0] if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """The largest centred crop of ``image`` with the output's aspect, at exactly that size."""
    box = crop_box(image.width, image.height, width, height)
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS, box=box)


def to_frames(video: Any) -> list[Frame]:
    """HxWx3 uint8 frames from a pipeline's numpy (0..1 floats), tensor or PIL output."""
    import numpy as np

    if hasattr(video, "detach"):
        video = video.detach().float().cpu().numpy()
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8:
            video = (np.clip(video, 0.0, 1.0) * 255).round().astype(np.uint8)
        return [np.ascontiguousarray(frame[..., :3]) for frame in video]
    return [np.asarray(frame.convert("RGB")) for frame in video]


class DiffusionEngine:
    name = "diffusion"

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self.memory = RungMemory(self.options.state_dir / MEMORY_FILE)
        self._render_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._busy = False
        self._resident: _Resident | None = None

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

    def _discard(self, resident: _Resident) -> None:
        """Unload ``resident`` if it is still the warm pipeline."""
        with self._state_lock:
            if self._resident is not resident:
                return
            self._resident = None
        self._free(resident)

    @staticmethod
    def _free(resident: _Resident) -> None:
        pipe, resident.pipe = resident.pipe, None
        if hasattr(pipe, "remove_all_hooks"):
            pipe.remove_all_hooks()  # offload hooks keep references to the modules
        del pipe
        release_memory(resident.device)

    def _acquire(
        self, source: ModelSource, family: Family, dtype: str, variant: str | None, device: str
    ) -> tuple[_Resident, float]:
        """The warm pipeline for this key (loading it, after unloading any other one)."""
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
        started = time.monotonic()
        failure = None
        try:
            pipe, used = load_pipeline(
                source, family, dtype, variant_candidates(variant, source, device), device
            )
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failure = _first_line(exc)
            traceback.clear_frames(exc.__traceback__)
        if failure is not None:
            release_memory(device)
            raise OutOfMemory(
                f"model {source.model!r} does not fit in {device} memory as {dtype} ({failure})",
                OOM_HINT,
            )
        seconds = time.monotonic() - started
        log.info("loaded model %s in %.1f s", source.model, seconds)
        resident = _Resident(
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
                "engine 'diffusion' needs a model",
                "set the rule's 'model' to a local pipeline folder or a hub id such as "
                "ali-vilab/i2vgen-xl",
            )
        settings = request.diffusion
        source = locate(request.model)
        family = family_of(source)
        device = resolve_device(self.options.device)
        dtype = resolve_dtype(settings.dtype, family, device)
        resident, load_seconds = self._acquire(source, family, dtype, settings.variant, device)
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
        climb = _Climb(self, request, resident, ctx, plan, seed, dtype, steps)
        if "compile" in switched_on:
            load_seconds += climb.warm_up()
        try:
            with per_job(pipe, family, settings, steps) as used:
                outcome = climb.run()
        finally:
            climb.revert_savers()
        speed = effective(resident.warm, used)
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
        resident: _Resident,
        climb: _Climb,
        outcome: _Outcome,
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


class _Climb:
    """One job's attempts: the remembered start, then one rung per out-of-memory."""

    def __init__(
        self,
        engine: DiffusionEngine,
        request: RenderRequest,
        resident: _Resident,
        ctx: LadderContext,
        plan: Plan,
        seed: int,
        dtype: str,
        steps: int,
    ) -> None:
        self.engine = engine
        self.request = request
        self.resident = resident
        self.ctx = ctx
        self.plan = plan
        self.seed = seed
        self.settings: DiffusionSettings = request.diffusion
        chosen = "ladder" in self.settings.model_fields_set
        self.ladder: list[str] = ordered(list(self.settings.ladder), ctx.family, chosen)
        self.steps = steps
        self.warm_up_seconds: float | None = None
        # Rungs that cannot change anything for this family and size: never attempted.
        self.no_ops = ahead(self.ladder, plan, ctx)
        self.position = 0
        self.taken: list[str] = []
        self.attempted_savers: list[str] = []
        self.backoff: list[dict[str, Any]] = []
        self.memory_key = RungMemory.key(resident.source.key, ctx.device, dtype, plan)

    @property
    def climbed(self) -> bool:
        """Whether the job ran out of memory or started at a remembered rung."""
        return any(e["result"] in ("out_of_memory", "remembered") for e in self.backoff)

    def warm_up(self) -> float:
        """Run the compiled denoiser once at this job's size (two steps), so compiling
        happens at model load and not inside the first job's timing."""
        started = time.monotonic()
        with seeded(self.seed, self.ctx.device):
            self._call(steps=2, checkpoint=lambda fraction: None)
        self.warm_up_seconds = time.monotonic() - started
        mark_warm(self.resident.warm)
        log.info(
            "compiled %s's %s in %.1f s (warm-up at %dx%d, %d frames)",
            self.resident.source.model,
            self.ctx.family.denoiser,
            self.warm_up_seconds,
            self.plan.width,
            self.plan.height,
            self.plan.frames,
        )
        return self.warm_up_seconds

    def run(self) -> _Outcome:
        remembered = self.engine.memory.lookup(self.memory_key, self.ladder)
        if remembered is not None:
            self._replay(remembered)
        rung: str | None = self.taken[-1] if self.taken else None
        attempt = 0
        while True:
            attempt += 1
            record: dict[str, Any] = {
                "attempt": attempt,
                "rung": rung,
                "width": self.plan.width,
                "height": self.plan.height,
                "frames": self.plan.frames,
                "decode_chunk_size": self.plan.decode_chunk,
                "savers": list(self.plan.savers),
            }
            error = None
            try:
                outcome = self._call()
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                error = _first_line(exc)
                # The traceback's frames hold the attempt's tensors: drop them so the
                # memory is really free for the next rung.
                traceback.clear_frames(exc.__traceback__)
            if error is None:
                self.backoff.append({**record, "result": "ok"})
                if self.position and self.position != remembered:
                    self.engine.memory.store(
                        self.memory_key, self.ladder, self.position, self.taken
                    )
                return outcome
            self.backoff.append({**record, "result": "out_of_memory", "error": error})
            if attempt == 1:
                # Decided before this attempt; listed once the ladder is needed at all.
                self.backoff.extend(
                    {"rung": self.ladder[i], "result": "skipped", "reason": why, "up_front": True}
                    for i, why in self.no_ops.items()
                )
            log.warning(
                "%s ran out of memory at %dx%d, %d frames (attempt %d): %s",
                self.resident.source.model,
                self.plan.width,
                self.plan.height,
                self.plan.frames,
                attempt,
                error,
            )
            release_memory(self.ctx.device)
            rung = self._next_rung()
            if rung is None:
                raise OutOfMemory(
                    f"out of memory on {self.ctx.device} with {self.resident.source.model!r} "
                    f"even at {self.plan.width}x{self.plan.height}, {self.plan.frames} frames "
                    f"after {attempt} attempt(s); rungs taken: {', '.join(self.taken) or 'none'} "
                    f"(last error: {error})",
                    OOM_HINT,
                    self.backoff,
                )

    def _step(self, rung: str) -> str | None:
        """Take ``rung``; if it does not apply, say why."""
        if rung in SAVERS:
            # Counted before it is switched on, so a half-applied saver is reverted too.
            self.attempted_savers.append(rung)
        step = take(rung, self.plan, self.ctx)
        if step.plan is None:
            return step.skipped or "does not apply"
        self.plan = step.plan
        self.taken.append(rung)
        return None

    def _next_rung(self) -> str | None:
        while self.position < len(self.ladder):
            rung = self.ladder[self.position]
            self.position += 1
            if self.position - 1 in self.no_ops:
                continue  # recorded before the first attempt
            skipped = self._step(rung)
            if skipped is None:
                return rung
            self.backoff.append({"rung": rung, "result": "skipped", "reason": skipped})
        return None

    def _replay(self, position: int) -> None:
        """Start where the last job of this model and size got through."""
        skipped = []
        for index, rung in enumerate(self.ladder[:position]):
            if index in self.no_ops:
                continue
            reason = self._step(rung)
            if reason is not None:
                skipped.append({"rung": rung, "reason": reason})
        self.position = position
        self.backoff.append(
            {
                "result": "remembered",
                "rung": self.taken[-1] if self.taken else None,
                "rungs": list(self.taken),
                "skipped": skipped,
                "width": self.plan.width,
                "height": self.plan.height,
                "frames": self.plan.frames,
                "savers": list(self.plan.savers),
                "note": (
                    f"an earlier job of this model and size ran out of memory on "
                    f"{self.ctx.device}; starting at the rung that worked then (delete "
                    f"{self.engine.memory.path} to start from the top)"
                ),
            }
        )
        log.info(
            "%s: starting at remembered out-of-memory rung %s (%s)",
            self.resident.source.model,
            self.taken[-1] if self.taken else None,
            ", ".join(self.taken),
        )

    def revert_savers(self) -> None:
        savers = tuple(dict.fromkeys(self.attempted_savers))
        if not savers:
            return
        try:
            revert(savers, self.resident.pipe, self.ctx.family, self.ctx.device)
        except Exception:
            # A pipeline stuck in a saver's state must not serve the next job: reload it.
            log.exception("could not switch memory savers off; unloading the model")
            self.engine._discard(self.resident)

    def _call(
        self, steps: int | None = None, checkpoint: Callable[[float], None] | None = None
    ) -> _Outcome:
        import torch

        pipe, family, plan, request = self.resident.pipe, self.ctx.family, self.plan, self.request
        params = request.params
        device = self.ctx.device
        # CPU generators on MPS: MPS random streams are not reproducible across runs.
        generator = torch.Generator(device=device if device.startswith("cuda") else "cpu")
        generator.manual_seed(self.seed)
        inputs = CallInputs(
            image=fit_image(request.image, plan.width, plan.height),
            width=plan.width,
            height=plan.height,
            frames=plan.frames,
            steps=steps or self.steps,
            fps=params.fps,
            guidance=max(family.guidance_floor, params.guidance),
            decode_chunk=plan.decode_chunk,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            motion_bucket_id=self.settings.motion_bucket_id,
            noise_aug_strength=self.settings.noise_aug_strength,
            generator=generator,
        )
        arguments = call_arguments(family, inputs)
        truncated = False
        if family.prompt == "embeds":
            embeddings = i2vgenxl_embeddings(
                pipe,
                request.prompt,
                request.negative_prompt,
                inputs.guidance,
                pipe._execution_device,
            )
            arguments["prompt_embeds"] = embeddings.prompt_embeds
            arguments["negative_prompt_embeds"] = embeddings.negative_prompt_embeds
            truncated = embeddings.truncated
        chunk = (
            (plan.decode_chunk or family.default_decode_chunk)
            if family.decode_chunk_argument
            else None
        )
        reporter = StepReporter(
            checkpoint or request.checkpoint,
            f"{self.resident.source.model} {plan.width}x{plan.height}, {plan.frames} frames",
            decode_calls(plan.frames, chunk),
        )
        with seeded(self.seed, device), reporter.installed(pipe):
            output = pipe(**arguments)
        return _Outcome(to_frames(output.frames[0]), inputs, reporter, truncated)
