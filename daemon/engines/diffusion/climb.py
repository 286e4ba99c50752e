"""One job's climb down the out-of-memory ladder: the remembered start, the attempts,
a rung per out-of-memory, and the savers switched off again afterwards. The ladder's
rungs themselves are ``ladder.py``; the engine around the climb is ``engine.py``.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from ...rules import DiffusionSettings
from ...sizing import crop_box
from ...video import Frame
from ..base import RenderRequest
from .families import CallInputs, call_arguments
from .ladder import (
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
from .progress import StepReporter, decode_calls
from .prompts import i2vgenxl_embeddings
from .speed import mark_warm

if TYPE_CHECKING:
    from .engine import Resident

log = logging.getLogger(__name__)

OOM_HINT = (
    "ask whoever looks after i2vd to make the rule ask for less (a smaller preset, "
    "resolution or number of frames), to allow smaller outputs (diffusion.min_frames, "
    "diffusion.min_resolution, more rungs in diffusion.ladder), to free GPU memory held by "
    "other processes (see nvidia-smi), or to use a GPU with more memory"
)


@dataclass
class Outcome:
    frames: list[Frame]
    inputs: CallInputs
    reporter: StepReporter
    prompt_truncated: bool


def first_line(exc: BaseException) -> str:
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


class Climb:
    """One job's attempts: the remembered start, then one rung per out-of-memory."""

    def __init__(
        self,
        memory: RungMemory,
        discard: Callable[[], None],
        request: RenderRequest,
        resident: Resident,
        ctx: LadderContext,
        plan: Plan,
        seed: int,
        dtype: str,
        steps: int,
    ) -> None:
        self.memory = memory
        self._discard = discard  # unloads the resident pipeline
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
        try:
            with seeded(self.seed, self.ctx.device):
                self._call(steps=2, checkpoint=lambda fraction: None)
        except Exception as exc:
            # Not the job's failure: the job itself compiles on its first step instead,
            # and runs out of memory (if that was it) where the ladder can help.
            traceback.clear_frames(exc.__traceback__)
            log.warning("compile warm-up failed (%s); the first job compiles", first_line(exc))
            release_memory(self.ctx.device)
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

    def run(self) -> Outcome:
        remembered = self.memory.lookup(self.memory_key, self.ladder)
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
                error = first_line(exc)
                # The traceback's frames hold the attempt's tensors: drop them so the
                # memory is really free for the next rung.
                traceback.clear_frames(exc.__traceback__)
            if error is None:
                self.backoff.append({**record, "result": "ok"})
                if self.position and self.position != remembered:
                    self.memory.store(self.memory_key, self.ladder, self.position, self.taken)
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
                    f"even at {self.plan.width}x{self.plan.height}, {self.plan.frames} frames, "
                    "the smallest this rule allows",
                    OOM_HINT,
                    self.backoff,
                    detail=f"after {attempt} attempt(s); rungs taken: "
                    f"{', '.join(self.taken) or 'none'}; last error: {error}",
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
                    f"{self.memory.path} to start from the top)"
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
            self._discard()

    def _call(
        self, steps: int | None = None, checkpoint: Callable[[float], None] | None = None
    ) -> Outcome:
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
        return Outcome(to_frames(output.frames[0]), inputs, reporter, truncated)
