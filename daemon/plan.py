"""What one job will produce, decided before anything runs: the one answer both the
worker and ``i2vd rules explain`` use, so explain cannot drift from what happens.

From a rule (already laid over with the image's overrides and its variant), the image's
facts, its companion text, the variant's name and which names are taken, it says: the
video's and sidecar's names, the rendered prompts, the frame size and count after the
model family's rounding (where that is known before loading the model), and the
original's fate. Nothing here reads the image or writes a file; names are checked
against ``taken``, a question the caller answers (the worker and explain ask the disk).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from .engines.diffusion.families import BY_CLASS, FAMILIES, Family
from .prompts import ImageFacts, render, safe_output_name, template_context
from .publish import Taken, free_path, free_stem
from .rules import Rule
from .sizing import form_of, frame_size, round_frames

OUTPUT_SUFFIXES = (".mp4", ".json")
# H.264's 4:2:0 chroma: every engine's sides are even at least.
EVEN = 2


class SourceAction(StrEnum):
    """What happens to the original once a job is done."""

    MOVE = "move"  # beside its video in the outbox
    KEEP = "keep"  # stays in the inbox, remembered so it is not taken again
    DELETE = "delete"  # removed once the video is published
    LEAVE = "leave"  # untouched: other variants of the same drop still need it


def source_action(rule: Rule, variant: str) -> SourceAction:
    """A variant leaves the original alone; the drop's last job applies the rule's
    ``source`` (see ``original.py``)."""
    return SourceAction.LEAVE if variant else SourceAction(rule.source)


# --- frames -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rounding:
    """What a diffusion family does to sizes and frame counts, as far as it is known
    without loading the model (None: only the loaded model can say)."""

    pipeline: str | None
    label: str | None
    size_multiple: int | None
    frame_step: int | None

    @property
    def frame_form(self) -> str | None:
        return form_of(self.frame_step) if self.frame_step is not None else None


class _Unloaded:
    """Stands in for a pipeline that is not loaded: it has no attributes at all."""


def family_rounding(pipeline: str | None) -> Rounding:
    """The rounding of the family whose pipeline class is ``pipeline``. The table's
    rules read the loaded pipeline; given none, a rule that falls back to the family's
    usual value answers, and one that needs the model says so by failing to read it."""
    family: Family | None = BY_CLASS.get(pipeline or "")
    if family is None:
        return Rounding(pipeline, None, None, None)
    found: list[int | None] = []
    for read in (family.spatial_multiple, family.frame_step):
        try:
            found.append(int(read(_Unloaded())))
        except AttributeError:
            found.append(None)
    return Rounding(pipeline, family.label, found[0], found[1])


def pipeline_of_hub_id(model: str) -> str | None:
    """The pipeline class of a family's reference model, known by its hub id alone."""
    return next((f.class_name for f in FAMILIES if f.example == model), None)


@dataclass(frozen=True)
class FramePlan:
    width: int | None  # None: aspect "source" for an image not there yet
    height: int | None
    frames: int
    fps: int
    notes: tuple[str, ...] = ()


def plan_frames(
    rule: Rule, width: int | None, height: int | None, rounding: Rounding | None
) -> FramePlan:
    """The video's frame size and count for an image of ``width`` x ``height``.

    ``rounding`` is the diffusion family's, where known (None for the motion engine, or
    a diffusion model not known before loading: its engine rounds at run time)."""
    params = rule.resolved()
    frames, fps = params.frames, params.fps
    notes: list[str] = []
    multiple = rounding.size_multiple if rounding and rounding.size_multiple else EVEN
    size: tuple[int, int] | None
    if rule.aspect == "source" and (width is None or height is None):
        size = None
        notes.append(
            f"aspect: source: the size depends on the image (about {params.resolution}x"
            f"{params.resolution} pixels in its aspect ratio)"
        )
    else:
        size = frame_size(params.resolution, rule.aspect, width or 1, height or 1, multiple)
    if rule.engine == "motion":
        notes.append(
            f"motion: {rule.motion.effect}, zoom {rule.motion.zoom} (steps, "
            "guidance and seed are for diffusion only)"
        )
        timed = rule.motion.timing(frames, fps)
        if timed != (frames, fps):
            notes.append(f"{timed[0]} frames at {timed[1]} fps, each one rendered")
            frames, fps = timed
    elif rounding is None or rounding.label is None:
        known = f" ({rounding.pipeline})" if rounding and rounding.pipeline else ""
        notes.append(
            f"the model family{known} is not known here: its rounding of size and "
            "frames is applied at run time"
        )
    else:
        label = rounding.label
        if rounding.size_multiple:
            notes.append(f"sides rounded to multiples of {multiple} for {label}")
        else:
            notes.append(f"{label} rounds the sides once the model is loaded")
        if rounding.frame_step:
            rounded = round_frames(frames, rounding.frame_step)
            if rounded != frames:
                notes.append(
                    f"frames rounded from {frames} to {rounded} ({label} takes "
                    f"{rounding.frame_form} frames)"
                )
            frames = rounded
        else:
            notes.append(f"{label} rounds the frame count once the model is loaded")
    width_out, height_out = size if size else (None, None)
    return FramePlan(width_out, height_out, frames, fps, tuple(notes))


def source_pixels_needed(rule: Rule) -> int:
    """The shorter source side that still gives every output pixel a source pixel (the
    motion engine's tightest window is 1/zoom of the frame). Larger JPEGs are decoded
    at a reduced scale down to this."""
    params = rule.resolved()
    longest = max(frame_size(params.resolution, rule.aspect, 4, 1))  # widest aspect allowed
    zoom = rule.motion.zoom if rule.engine == "motion" else 1.0
    return math.ceil(longest * zoom)


# --- one output --------------------------------------------------------------------


def context_for(
    rule: Rule,
    relative: PurePosixPath,
    now: dt.datetime,
    facts: ImageFacts | None,
    text: str,
    variant: str,
) -> dict[str, Any]:
    """The template variables for this image and variant."""
    return template_context(relative, rule.name, now, facts, text, variant)


def prompt_of(rule: Rule, context: dict[str, Any]) -> str:
    """The rendered prompt; TemplateProblem when it cannot be rendered."""
    return render(rule.prompt, context, "prompt")


def negative_prompt_of(rule: Rule, context: dict[str, Any]) -> str:
    return render(rule.negative_prompt, context, "negative_prompt")


def output_stem(rule: Rule, context: dict[str, Any]) -> str:
    """The rendered ``output.name``, made safe as a file name; TemplateProblem if not."""
    return safe_output_name(render(rule.output.name, context, "output.name"))


def output_files(folder: Path, stem: str, taken: Taken) -> tuple[Path, Path]:
    """(video, sidecar) under the first free numbering of ``stem``."""
    free = free_stem(folder, stem, OUTPUT_SUFFIXES, taken)
    return folder / f"{free}.mp4", folder / f"{free}.json"


@dataclass(frozen=True)
class Fate:
    """What becomes of the original: ``dest`` is where ``move`` puts it."""

    action: SourceAction
    dest: Path | None


def original_fate(rule: Rule, variant: str, folder: Path, name: str, taken: Taken) -> Fate:
    action = source_action(rule, variant)
    dest = free_path(folder, name, taken) if action == SourceAction.MOVE else None
    return Fate(action, dest)


@dataclass(frozen=True)
class OutputPlan:
    """Everything a job decides before rendering."""

    folder: Path
    video: Path
    sidecar: Path
    prompt: str
    negative_prompt: str
    fate: Fate

    @property
    def outputs(self) -> list[str]:
        """The file names the sidecar lists as this job's outputs."""
        names = [self.video.name, self.sidecar.name]
        return [*names, self.fate.dest.name] if self.fate.dest else names


def plan_output(
    rule: Rule,
    relative: PurePosixPath,
    outbox: Path,
    context: dict[str, Any],
    variant: str,
    taken: Taken,
) -> OutputPlan:
    """The names, prompts and original's fate of one job; TemplateProblem when a
    template cannot be rendered for this image."""
    folder = outbox / relative.parent
    video, sidecar = output_files(folder, output_stem(rule, context), taken)
    prompt, negative = prompt_of(rule, context), negative_prompt_of(rule, context)
    fate = original_fate(rule, variant, folder, relative.name, taken)
    return OutputPlan(folder, video, sidecar, prompt, negative, fate)
