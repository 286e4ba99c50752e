"""The pipeline families the diffusion engine knows: one table entry per family.

Each entry says how a rule's parameters map onto that pipeline's call and what sizes and
frame counts it accepts. Sizes and counts that need the loaded pipeline (the VAE's scale,
the transformer's patch) are read from it, so a variant of a family with another VAE (Wan
2.2 5B: 16x spatial, 32-pixel multiple) is rounded correctly too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

# The frame-count forms live with the other pure size rules, so `rules explain` and the
# worker's plan round exactly as the engine does without importing the engine.
from ...sizing import form_of as form_of
from ...sizing import lowest_frames as lowest_frames
from ...sizing import round_frames as round_frames

# text: the pipeline encodes the prompt itself; embeds: i2vd encodes it (see prompts.py);
# none: the model takes no prompt at all.
PromptMode = Literal["text", "embeds", "none"]


def _attr(name: str, default: int) -> Callable[[Any], int]:
    def read(pipe: Any) -> int:
        value = getattr(pipe, name, None)
        return int(value) if value else default

    return read


def _wan_spatial(pipe: Any) -> int:
    # The transformer patchifies latents in (t, h, w) patches, so pixel sides must be a
    # multiple of the VAE's scale times the patch's side (the pipeline floors otherwise).
    scale = int(getattr(pipe, "vae_scale_factor_spatial", 8) or 8)
    model = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
    patch = model.config.patch_size
    return scale * int(max(patch[1], patch[2]))


def _vae_scale(pipe: Any) -> int:
    # Sides must make whole latents (the VAE's scale), and these pipelines' check_inputs
    # insists on multiples of 8 whatever the VAE.
    return max(8, int(getattr(pipe, "vae_scale_factor", 8) or 8))


@dataclass(frozen=True)
class Family:
    class_name: str
    label: str
    example: str  # a hub id of this family, for messages
    prompt: PromptMode
    # dtype on an accelerator when the rule says "auto"; bfloat16 where float16 overflows.
    accelerator_dtype: Literal["float16", "bfloat16"]
    denoiser: Literal["unet", "transformer"]
    fps_argument: str | None  # the call's frame-rate conditioning, if it has one
    guidance_argument: str
    guidance_floor: float  # below this the pipeline misbehaves or guidance means nothing
    decode_chunk_argument: str | None  # frames decoded per VAE call, where the call takes it
    spatial_multiple: Callable[[Any], int]
    # Frame counts are k * step + 1 where step > 1 (the VAE compresses time by `step`).
    frame_step: Callable[[Any], int]
    # Stable Video Diffusion's micro-conditioning from DiffusionSettings.
    svd_conditioning: bool = False
    # Components kept in float32 when the rest is half precision (the family's reference
    # code does this because those parts lose quality or overflow in half precision).
    float32_components: tuple[str, ...] = ()
    # Packages the pipeline imports only when called (checked before loading).
    requires: tuple[str, ...] = ()
    # Frames the pipeline decodes at once when the rule does not say (None: all).
    default_decode_chunk: int | None = None
    # The default ladder moves CPU offload before feed-forward chunking: the text encoder
    # (T5 / UMT5-XXL, 9-11 GB) is large next to the denoiser's activations, so moving it
    # off the GPU while the denoiser runs saves more per second than chunking does.
    offload_before_chunking: bool = False


FAMILIES: tuple[Family, ...] = (
    Family(
        class_name="I2VGenXLPipeline",
        label="I2VGen-XL",
        example="ali-vilab/i2vgen-xl",
        prompt="embeds",
        accelerator_dtype="float16",
        denoiser="unet",
        fps_argument="target_fps",
        guidance_argument="guidance_scale",
        guidance_floor=1.0,
        decode_chunk_argument="decode_chunk_size",
        spatial_multiple=_vae_scale,
        frame_step=lambda pipe: 1,
        default_decode_chunk=1,  # I2VGen-XLPipeline.__call__'s own default
    ),
    Family(
        class_name="StableVideoDiffusionPipeline",
        label="Stable Video Diffusion",
        example="stabilityai/stable-video-diffusion-img2vid-xt",
        prompt="none",
        accelerator_dtype="float16",
        denoiser="unet",
        fps_argument="fps",
        # SVD ramps guidance across frames from min_guidance_scale (1.0) up to this.
        guidance_argument="max_guidance_scale",
        guidance_floor=1.0,
        decode_chunk_argument="decode_chunk_size",
        spatial_multiple=_vae_scale,
        frame_step=lambda pipe: 1,
        svd_conditioning=True,
    ),
    Family(
        class_name="WanImageToVideoPipeline",
        label="Wan 2.x image-to-video",
        example="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        prompt="text",
        accelerator_dtype="bfloat16",
        denoiser="transformer",
        fps_argument=None,  # Wan is trained at 16 fps and takes no rate conditioning
        guidance_argument="guidance_scale",
        guidance_floor=1.0,
        decode_chunk_argument=None,
        spatial_multiple=_wan_spatial,
        frame_step=_attr("vae_scale_factor_temporal", 4),
        float32_components=("vae", "image_encoder"),
        requires=("ftfy",),  # its prompt cleaning calls ftfy without importing it safely
        offload_before_chunking=True,
    ),
    Family(
        class_name="LTXImageToVideoPipeline",
        label="LTX-Video image-to-video",
        example="Lightricks/LTX-Video",
        prompt="text",
        accelerator_dtype="bfloat16",
        denoiser="transformer",
        fps_argument="frame_rate",
        guidance_argument="guidance_scale",
        guidance_floor=1.0,
        decode_chunk_argument=None,
        spatial_multiple=lambda pipe: max(32, _attr("vae_spatial_compression_ratio", 32)(pipe)),
        frame_step=_attr("vae_temporal_compression_ratio", 8),
        offload_before_chunking=True,
    ),
)

BY_CLASS: dict[str, Family] = {family.class_name: family for family in FAMILIES}


def supported() -> str:
    return ", ".join(f"{f.class_name} ({f.label})" for f in FAMILIES)


@dataclass(frozen=True)
class CallInputs:
    """One attempt's values, already fitted to the family (sizes, frames, guidance)."""

    image: Any  # PIL image of exactly width x height
    width: int
    height: int
    frames: int
    steps: int
    fps: int
    guidance: float
    decode_chunk: int | None
    prompt: str
    negative_prompt: str
    motion_bucket_id: int
    noise_aug_strength: float
    generator: Any


def call_arguments(family: Family, inputs: CallInputs) -> dict[str, Any]:
    """The keyword arguments of the pipeline call, prompt embeddings excepted (the engine
    adds those for ``prompt == "embeds"`` families: they need the loaded text encoder)."""
    arguments: dict[str, Any] = {
        "image": inputs.image,
        "height": inputs.height,
        "width": inputs.width,
        "num_frames": inputs.frames,
        "num_inference_steps": inputs.steps,
        family.guidance_argument: inputs.guidance,
        "generator": inputs.generator,
        "output_type": "np",
    }
    if family.prompt == "text":
        arguments["prompt"] = inputs.prompt
        arguments["negative_prompt"] = inputs.negative_prompt
    if family.fps_argument is not None:
        arguments[family.fps_argument] = inputs.fps
    if family.decode_chunk_argument is not None and inputs.decode_chunk is not None:
        # Unset, the pipeline keeps its own default, exactly as in a user's script.
        arguments[family.decode_chunk_argument] = inputs.decode_chunk
    if family.svd_conditioning:
        arguments["motion_bucket_id"] = inputs.motion_bucket_id
        arguments["noise_aug_strength"] = inputs.noise_aug_strength
    return arguments


def effective_extra(family: Family, inputs: CallInputs) -> dict[str, Any]:
    """Family-specific values actually used, for the sidecar's "effective" block."""
    extra: dict[str, Any] = {}
    if family.decode_chunk_argument is not None:
        extra["decode_chunk_size"] = (
            inputs.decode_chunk or family.default_decode_chunk or inputs.frames
        )
    if family.svd_conditioning:
        extra["motion_bucket_id"] = inputs.motion_bucket_id
        extra["noise_aug_strength"] = inputs.noise_aug_strength
        extra["min_guidance_scale"] = 1.0
    return extra
