"""Rule files' models: rules, presets, variants and an image's overrides.

Pure data with their own validation; reading files is ``loading``'s job. The README's
rules reference is generated from these models (``daemon.rules_reference``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

DEFAULT_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.webp", "*.bmp", "*.tif", "*.tiff")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preset(_Strict):
    resolution: Literal[256, 512, 768, 1024] = Field(description="N: a pixel budget of N*N")
    frames: int = Field(ge=8, le=32, description="frames generated")
    fps: int = Field(ge=4, le=24, description="frames per second of the video")
    steps: int = Field(ge=10, le=100, description="denoising steps (diffusion)")
    guidance: float = Field(ge=1.0, le=20.0, description="classifier-free guidance scale")


# The reference I2VGen-XL tool's presets.
BUILTIN_PRESETS: dict[str, Preset] = {
    "quick": Preset(resolution=512, frames=8, fps=8, steps=30, guidance=9.0),
    "standard": Preset(resolution=512, frames=16, fps=8, steps=50, guidance=9.0),
    "high": Preset(resolution=768, frames=24, fps=8, steps=80, guidance=9.0),
}


PRESET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ParamOverrides(_Strict):
    resolution: Literal[256, 512, 768, 1024] | None = Field(
        None, description="N: a pixel budget of N*N"
    )
    frames: int | None = Field(None, ge=8, le=32, description="frames generated")
    fps: int | None = Field(None, ge=4, le=24, description="frames per second of the video")
    steps: int | None = Field(None, ge=10, le=100, description="denoising steps (diffusion)")
    guidance: float | None = Field(
        None, ge=1.0, le=20.0, description="classifier-free guidance scale (diffusion)"
    )
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="fixed seed; absent: drawn and recorded"
    )


class Match(_Strict):
    folders: list[str] = Field(
        default_factory=lambda: ["**"],
        min_length=1,
        description="inbox-relative folder globs; ** spans any number of folders, none included",
    )
    patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PATTERNS),
        min_length=1,
        description="file-name globs, case-insensitive",
    )


Effect = Literal["zoom_in", "zoom_out", "pan_left", "pan_right", "pan_up", "pan_down"]
Easing = Literal["linear", "ease_in", "ease_out", "ease_in_out"]


class MotionSettings(_Strict):
    """How the CPU motion engine moves the camera over the still."""

    effect: Effect = Field("zoom_in", description="the camera's movement")
    zoom: float = Field(1.25, ge=1.0, le=4.0, description="how far it zooms; pans need > 1.0")
    easing: Easing = Field("ease_in_out", description="how the movement speeds up and slows")
    fade_in: float = Field(0.0, ge=0.0, le=10.0, description="seconds")
    fade_out: float = Field(0.0, ge=0.0, le=10.0, description="seconds")
    interpolate_fps: int | None = Field(
        None,
        ge=8,
        le=60,
        description="older setting: render at this rate, keeping the "
        "preset's length (every frame is rendered, none interpolated); fps wins",
    )
    duration: float | None = Field(
        None,
        ge=0.25,
        le=60.0,
        description="seconds of video (default: the preset's frames at its fps)",
    )
    fps: int | None = Field(
        None,
        ge=4,
        le=60,
        description="frames per second, every one rendered (default: the "
        "preset's, or interpolate_fps)",
    )
    crf: int = Field(
        18,
        ge=0,
        le=35,
        description="H.264 quality: lower is better and larger (18: no "
        "visible loss on most photos)",
    )

    @model_validator(mode="after")
    def _pan_needs_room(self) -> MotionSettings:
        if self.effect.startswith("pan_") and self.zoom <= 1.0:
            raise ValueError("a pan needs zoom > 1.0 so the window has room to move")
        return self

    def timing(self, frames: int, fps: int) -> tuple[int, int]:
        """(frames, fps) of the clip, given the preset's: ``fps``, else ``interpolate_fps``
        above the preset's rate, else the preset's rate; ``duration``, else the preset's
        length. At least two frames, so the camera moves."""
        rate = self.fps or max(fps, self.interpolate_fps or 0)
        seconds = self.duration if self.duration is not None else frames / fps
        return max(2, round(seconds * rate)), rate


Rung = Literal[
    "vae_slicing",
    "vae_tiling",
    "decode_chunk_1",
    "forward_chunking",
    "cpu_offload",
    "fewer_frames",
    "lower_resolution",
]

# Memory savers that keep the output first, ordered by memory saved per second of cost
# (README, "What each rung costs"), then smaller outputs. Each rung adds to the ones
# before it; "fewer_frames" halves the frames and "lower_resolution" steps down one
# resolution. Rungs that change nothing for the family and size are skipped up front.
DEFAULT_LADDER: tuple[Rung, ...] = (
    "decode_chunk_1",
    "vae_slicing",
    "vae_tiling",
    "forward_chunking",
    "cpu_offload",
    "fewer_frames",
    "fewer_frames",
    "lower_resolution",
    "lower_resolution",
)


class DiffusionSettings(_Strict):
    """How the diffusion engine loads and calls the model; ignored by ``motion``."""

    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto",
        description="auto: float16 on CUDA (bfloat16 where the family needs it), float32 on CPU",
    )
    variant: str | None = Field(
        "auto", description="weights variant; auto: fp16 where the checkpoint has it"
    )
    decode_chunk_size: int | None = Field(
        None,
        ge=1,
        le=64,
        description="frames the VAE decodes at once (default: the model's own: "
        "1 for I2VGen-XL, all for the others)",
    )
    motion_bucket_id: int = Field(
        127, ge=1, le=255, description="Stable Video Diffusion: how much motion"
    )
    noise_aug_strength: float = Field(
        0.02, ge=0.0, le=1.0, description="Stable Video Diffusion: noise added to the image"
    )
    ladder: list[Rung] = Field(
        default_factory=lambda: list(DEFAULT_LADDER),
        max_length=20,
        description="out-of-memory back-off, tried in order (unset: Wan and LTX try "
        "cpu_offload before forward_chunking)",
    )
    min_frames: int = Field(8, ge=2, le=32, description="floor for fewer_frames")
    min_resolution: Literal[256, 512, 768, 1024] = Field(
        256, description="floor for lower_resolution"
    )
    # Speed switches (README, "Speed switches"). On by default only where the output
    # cannot change and nothing is paid up front; the rest wait for a GPU measurement
    # (layout, fused projections) or a quality check on real weights (scheduler, cache).
    compile: bool = Field(
        False,
        description="torch.compile the denoiser; its warm-up (a minute or more per "
        "size) runs when the model loads",
    )
    channels_last: bool = Field(
        False, description="channels-last memory layout for the denoiser and VAE"
    )
    cudnn_benchmark: bool = Field(
        True, description="let cuDNN time its convolution algorithms once per size (CUDA)"
    )
    fused_qkv: bool = Field(
        False, description="one matrix product for each attention's query, key and value"
    )
    scheduler: Literal["default", "dpm++"] = Field(
        "default",
        description="dpm++: DPM-Solver++ (2nd order), configured for the model's "
        "prediction type, trailing spacing and zero-SNR; changes the output",
    )
    scheduler_steps: int | None = Field(
        None, ge=1, le=200, description="steps with scheduler dpm++ (default: the rule's steps)"
    )
    step_cache: bool = Field(
        False,
        description="reuse deep features between steps (UNets: DeepCache-style; Wan, "
        "LTX: diffusers' first-block cache); changes the output",
    )


class OutputSettings(_Strict):
    name: str = Field(
        "{{ stem }}.{{ rule }}",
        description="template for the video's file name, without extension; with "
        "variants, '.{{ variant }}' is added unless the template uses it",
    )
    format: Literal["mp4"] = Field("mp4", description="container of the video")


class Variant(_Strict):
    """One extra output of a rule: its own job, video and sidecar."""

    name: str | None = Field(
        None,
        max_length=40,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="used in output names (default: v1, v2, …)",
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="this variant's seed")
    prompt: str | None = Field(None, description="replaces the rule's prompt template")
    negative_prompt: str | None = Field(None, description="replaces the rule's negative prompt")
    params: ParamOverrides = Field(
        default_factory=ParamOverrides, description="laid over the rule's params"
    )


class ImageOverrides(_Strict):
    """What a ``<stem>.yaml`` beside an image may change for that image alone."""

    prompt: str | None = Field(None, description="replaces the rule's prompt template")
    negative_prompt: str | None = Field(None, description="replaces the rule's negative prompt")
    params: ParamOverrides = Field(
        default_factory=ParamOverrides, description="laid over the rule's params"
    )
    aspect: Literal["square", "source"] | None = Field(None, description="replaces the rule's")


class Rule(_Strict):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="default: the file's stem",
    )
    match: Match = Field(default_factory=Match, description="which images the rule takes")
    priority: int = Field(0, description="the highest-priority matching rule wins; ties: name")
    engine: Literal["diffusion", "motion"] = Field(
        "motion", description="motion: CPU camera moves; diffusion: an image-to-video model"
    )
    model: str | None = Field(None, description="diffusion: a local folder or hub id")
    preset: str = Field(
        "standard", description="quick, standard, high, or a preset in <rules_dir>/presets/"
    )
    prompt: str = Field("", description="template (README: Templates)")
    negative_prompt: str = Field("", description="template; what the model should avoid")
    params: ParamOverrides = Field(
        default_factory=ParamOverrides, description="laid over the preset"
    )
    aspect: Literal["square", "source"] = Field(
        "square", description="square: centre crop to NxN; source: the image's aspect at ~NxN"
    )
    output: OutputSettings = Field(default_factory=OutputSettings, description="output naming")
    source: Literal["move", "keep", "delete"] = Field(
        "move", description="what happens to the original once its video is published"
    )
    variants: list[Variant] = Field(
        default_factory=list, max_length=16, description="several outputs per image"
    )
    motion: MotionSettings = Field(
        default_factory=MotionSettings, description="engine: motion only"
    )
    diffusion: DiffusionSettings = Field(
        default_factory=DiffusionSettings, description="engine: diffusion only"
    )
    # The preset's values, filled in at load time so that a queued job keeps them even
    # if the preset file changes; not written in rule files.
    preset_values: Preset | None = Field(None, exclude=False, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _attach_preset(cls, data: Any, info: ValidationInfo) -> Any:
        """Look the preset up among the built-in and the user's presets (passed as
        validation context by the loader) and keep its values in the rule."""
        if not isinstance(data, dict) or data.get("preset_values") is not None:
            return data
        presets = (info.context or {}).get("presets", BUILTIN_PRESETS)
        name = data.get("preset", "standard")
        if isinstance(name, str) and name in presets:
            return {**data, "preset_values": presets[name]}
        return data

    @model_validator(mode="after")
    def _engine_needs(self) -> Rule:
        if self.engine == "diffusion" and not self.model:
            raise ValueError("engine 'diffusion' needs 'model' (a local folder or hub id)")
        if self.preset_values is None:
            raise ValueError(
                f"preset {self.preset!r} is not one of {', '.join(BUILTIN_PRESETS)} "
                "or a file in the rules folder's presets/"
            )
        names = [v.name for v in self.variants if v.name]
        if len(names) != len(set(names)):
            raise ValueError("variants need different names")
        return self

    def resolved(self) -> ResolvedParams:
        """The preset with this rule's ``params`` laid over it."""
        assert self.preset_values is not None  # the validator guarantees it
        base = self.preset_values.model_dump()
        base.update(self.params.model_dump(exclude_none=True))
        return ResolvedParams(**base)

    def expand_variants(self) -> list[tuple[str, Rule]]:
        """One (variant name, rule) per output: the rule itself when it has no variants,
        else one rule per variant with its seed, prompts and params laid over."""
        if not self.variants:
            return [("", self)]
        out = []
        for index, variant in enumerate(self.variants, start=1):
            name = variant.name or f"v{index}"
            params = self.params.model_dump(exclude_none=True)
            params.update(variant.params.model_dump(exclude_none=True))
            if variant.seed is not None:
                params["seed"] = variant.seed
            output = self.output
            if "variant" not in output.name:
                output = output.model_copy(update={"name": output.name + ".{{ variant }}"})
            changes: dict[str, Any] = {
                "params": ParamOverrides(**params),
                "output": output,
                "variants": [],
            }
            if variant.prompt is not None:
                changes["prompt"] = variant.prompt
            if variant.negative_prompt is not None:
                changes["negative_prompt"] = variant.negative_prompt
            out.append((name, self.model_copy(update=changes)))
        return out

    def with_overrides(self, overrides: ImageOverrides) -> Rule:
        """This rule with an image's ``<stem>.yaml`` laid over it."""
        params = self.params.model_dump(exclude_none=True)
        params.update(overrides.params.model_dump(exclude_none=True))
        changes: dict[str, Any] = {"params": ParamOverrides(**params)}
        for key in ("prompt", "negative_prompt", "aspect"):
            value = getattr(overrides, key)
            if value is not None:
                changes[key] = value
        return self.model_copy(update=changes)

    def content_hash(self) -> str:
        """Changes whenever anything that shapes the output changes: part of job identity."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ResolvedParams(_Strict):
    resolution: int
    frames: int
    fps: int
    steps: int
    guidance: float
    seed: int | None = None


@dataclass(frozen=True)
class LoadedRule:
    rule: Rule
    file: Path
