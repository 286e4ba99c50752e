"""Random-weight diffusers image-to-video pipelines, built offline, for tests and benchmarks.

The tiny builders (`build_i2vgenxl`, `build_svd`, `build_wan_i2v`) use the component configs
of diffusers' own fast tests (tests/pipelines/{i2vgen_xl,stable_video_diffusion,wan}), seeded
with ``torch.manual_seed(0)``. Nothing is downloaded: the tokenizers are made here from a
small hand-written vocabulary. Each builder saves the pipeline with ``save_pretrained``
(safetensors), so a test loads it back with ``DiffusionPipeline.from_pretrained(folder)``
exactly as a user loads a real model. The weights are random, so the frames are noise.

`build_full_i2vgenxl` writes the full-size I2VGen-XL architecture (the configs of
ali-vilab/i2vgen-xl, by hand) with random weights, for a GPU speed benchmark; it is far
too big for CPU tests. ``python tests/tiny_pipelines.py --smoke`` checks it on the meta
device without allocating any weights.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# Imported from their modules, not from the lazy top-level `diffusers` namespace, whose
# names mypy resolves to untyped placeholder classes.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import (
    AutoencoderKLTemporalDecoder,
)
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.models.unets.unet_i2vgen_xl import I2VGenXLUNet
from diffusers.models.unets.unet_spatio_temporal_condition import (
    UNetSpatioTemporalConditionModel,
)
from diffusers.pipelines.deprecated.i2vgen_xl.pipeline_i2vgen_xl import I2VGenXLPipeline
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    StableVideoDiffusionPipeline,
)
from diffusers.pipelines.wan.pipeline_wan_i2v import WanImageToVideoPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteScheduler,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

CLIP_MODEL_MAX_LENGTH = 77
T5_MODEL_MAX_LENGTH = 512

# ---------------------------------------------------------------------------- tokenizers


def _byte_level_chars() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for the bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = [chr(b) for b in printable]
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


# A few merges so the BPE is not purely per-character: "the", "and", "a", "of".
_CLIP_MERGES = ("t h", "th e</w>", "a n", "an d</w>", "o f</w>")


def write_clip_vocab(folder: Path) -> tuple[Path, Path]:
    """Write a tiny CLIP BPE vocabulary (vocab.json, merges.txt) into `folder`.

    Laid out like the real one: the 256 byte-level characters, the same with the
    end-of-word suffix, the merged tokens, then ``<|startoftext|>`` and ``<|endoftext|>``.
    """
    chars = _byte_level_chars()
    tokens = [*chars, *(c + "</w>" for c in chars)]
    tokens += ["".join(merge.split()) for merge in _CLIP_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(_CLIP_MERGES) + "\n")
    return vocab_file, merges_file


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer (516 tokens, model_max_length 77) built from a hand-written vocab."""
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = write_clip_vocab(Path(scratch))
        return CLIPTokenizer(
            str(vocab_file), str(merges_file), model_max_length=CLIP_MODEL_MAX_LENGTH
        )


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A T5-style Unigram tokenizer (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; single characters
    and a few words), standing in for the umt5 tokenizer of Wan; under 256 tokens."""
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for char in string.ascii_letters + string.digits + string.punctuation:
        vocab += [(char, -5.0), ("▁" + char, -5.5)]
    for word in ("the", "a", "of", "and", "in", "on", "cat", "dog", "dance", "monkey"):
        vocab.append(("▁" + word, -3.0))
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MODEL_MAX_LENGTH)


def _clip_image_processor(size: int) -> CLIPImageProcessor:
    return CLIPImageProcessor(crop_size=size, size=size)


# ---------------------------------------------------------------------------- saving


def _save(pipe: DiffusionPipeline, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    _fix_image_processor_class(folder)
    return folder


def _fix_image_processor_class(folder: Path) -> None:
    """Record ``CLIPImageProcessor`` (what real checkpoints record) in model_index.json.

    Without torchvision, transformers 5 hands out its PIL fallback class for
    ``CLIPImageProcessor``, and diffusers would record that fallback's name instead.
    """
    index_file = folder / "model_index.json"
    index: dict[str, Any] = json.loads(index_file.read_text())
    changed = False
    for name, entry in index.items():
        if isinstance(entry, list) and entry == ["transformers", "CLIPImageProcessorPil"]:
            index[name] = ["transformers", "CLIPImageProcessor"]
            changed = True
    if changed:
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------- I2VGen-XL


def i2vgenxl_components() -> dict[str, Any]:
    """The components of diffusers' I2VGenXLPipeline fast test."""
    torch.manual_seed(0)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    torch.manual_seed(0)
    unet = I2VGenXLUNet(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=4,
        attention_head_dim=4,
        num_attention_heads=None,
        norm_num_groups=2,
    )
    torch.manual_seed(0)
    # Six blocks: a 32x scale, so the smallest video a rule allows (256x256) has 8x8
    # latents and a CPU test takes seconds. The fast test's single block (scale 1)
    # makes attention over 65,536 positions at 256.
    vae = AutoencoderKL(
        block_out_channels=(8,) * 6,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 6,
        up_block_types=("UpDecoderBlock2D",) * 6,
        latent_channels=4,
        sample_size=32,
        norm_num_groups=2,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=4,
            intermediate_size=16,
            layer_norm_eps=1e-05,
            num_attention_heads=2,
            num_hidden_layers=2,
            pad_token_id=1,
            vocab_size=1000,
            hidden_act="gelu",
            projection_dim=32,
        )
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=1,
        )
    )
    return {
        "unet": unet,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "image_encoder": image_encoder,
        "tokenizer": tiny_clip_tokenizer(),
        "feature_extractor": _clip_image_processor(32),
    }


def build_i2vgenxl(folder: Path) -> Path:
    """Save a tiny random I2VGenXLPipeline (VAE scale 32, UNet 2x) to `folder`."""
    return _save(I2VGenXLPipeline(**i2vgenxl_components()), folder)


# ---------------------------------------------------------------------------- SVD


def svd_components() -> dict[str, Any]:
    """The components of diffusers' StableVideoDiffusionPipeline fast test."""
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=8,
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        trained_betas=None,
        use_karras_sigmas=True,
    )
    torch.manual_seed(0)
    # Six blocks for a 32x scale (see the I2VGen-XL VAE above).
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32,) * 6,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 6,
        latent_channels=4,
    )
    torch.manual_seed(0)
    # The fast test feeds tensors and uses 32x32 patch-1 images here. The pipeline resizes
    # every PIL image to 224x224 for CLIP, so this encoder takes 224x224 in 14x14 patches
    # (the real ViT-H/14 geometry: 257 tokens) and keeps the test's widths and depth.
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=5,
            num_attention_heads=4,
            image_size=224,
            intermediate_size=37,
            patch_size=14,
        )
    )
    return {
        "unet": unet,
        "image_encoder": image_encoder,
        "scheduler": scheduler,
        "vae": vae,
        "feature_extractor": _clip_image_processor(224),
    }


def build_svd(folder: Path) -> Path:
    """Save a tiny random StableVideoDiffusionPipeline (VAE scale 2) to `folder`."""
    return _save(StableVideoDiffusionPipeline(**svd_components()), folder)


# ---------------------------------------------------------------------------- Wan 2.1 I2V


def wan_i2v_components() -> dict[str, Any]:
    """The components of diffusers' WanImageToVideoPipeline fast test.

    The test downloads hf-internal-testing/tiny-random-t5; here a UMT5 encoder (the class
    real Wan checkpoints use) with that model's sizes is made from a config instead.
    """
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    torch.manual_seed(0)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(**tiny_t5_sizes(len(tokenizer)), num_layers=5, is_encoder_decoder=True)
    )
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=4,
    )
    torch.manual_seed(0)
    # The fast test's config; the class real Wan 2.1 I2V checkpoints use (the pipeline reads
    # the penultimate hidden state, so no projection head is needed).
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=1,
        )
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "image_encoder": image_encoder,
        "image_processor": _clip_image_processor(32),
        "transformer_2": None,
    }


def build_wan_i2v(folder: Path) -> Path:
    """Save a tiny random WanImageToVideoPipeline (VAE 8x spatial, 4x temporal) to `folder`."""
    return _save(WanImageToVideoPipeline(**wan_i2v_components()), folder)


def tiny_t5_sizes(vocab_size: int) -> dict[str, Any]:
    """The sizes of hf-internal-testing/tiny-random-t5, which cannot be downloaded here."""
    return {
        "vocab_size": vocab_size,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 37,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "feed_forward_proj": "relu",
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def build_ltx_i2v(folder: Path) -> Path:
    """A tiny random LTXImageToVideoPipeline (diffusers' fast-test configs; a T5 encoder
    made from a config and the hand-written tokenizer, so nothing is downloaded)."""
    from diffusers.models.autoencoders.autoencoder_kl_ltx import AutoencoderKLLTXVideo
    from diffusers.models.transformers.transformer_ltx import LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.pipeline_ltx_image2video import LTXImageToVideoPipeline
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(**tiny_t5_sizes(len(tokenizer)), num_layers=2))
    pipe = LTXImageToVideoPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )
    return _save(pipe, folder)


TINY_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "i2vgenxl": build_i2vgenxl,
    "svd": build_svd,
    "wan_i2v": build_wan_i2v,
    "ltx_i2v": build_ltx_i2v,
}


# ---------------------------------------------------------------------------- full I2VGen-XL


def _full_i2vgenxl_unet() -> I2VGenXLUNet:
    unet: I2VGenXLUNet = I2VGenXLUNet(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types=(
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        norm_num_groups=32,
        cross_attention_dim=1024,
        attention_head_dim=64,
        num_attention_heads=64,
    )
    return unet


def _full_i2vgenxl_vae() -> AutoencoderKL:
    vae: AutoencoderKL = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=768,
        scaling_factor=0.18125,
        force_upcast=True,
    )
    return vae


def _full_i2vgenxl_text_encoder() -> CLIPTextModel:
    # The OpenCLIP ViT-H/14 text tower as i2vgen-xl stores it: 24 layers (Stable Diffusion 2
    # stores 23); the pipeline's default clip_skip=1 reads the 23rd layer's output.
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            max_position_embeddings=77,
            hidden_act="gelu",
            layer_norm_eps=1e-05,
            projection_dim=1024,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )


def _full_i2vgenxl_image_encoder() -> CLIPVisionModelWithProjection:
    # OpenCLIP ViT-H/14 image tower.
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=1280,
            intermediate_size=5120,
            projection_dim=1024,
            num_hidden_layers=32,
            num_attention_heads=16,
            num_channels=3,
            image_size=224,
            patch_size=14,
            hidden_act="gelu",
            layer_norm_eps=1e-05,
        )
    )


_FULL_I2VGENXL_MODULES: dict[str, Callable[[], torch.nn.Module]] = {
    "unet": _full_i2vgenxl_unet,
    "vae": _full_i2vgenxl_vae,
    "text_encoder": _full_i2vgenxl_text_encoder,
    "image_encoder": _full_i2vgenxl_image_encoder,
}


def full_i2vgenxl_components(
    dtype: torch.dtype = torch.float16, device: str | torch.device | None = None
) -> dict[str, Any]:
    """The full-size components of ali-vilab/i2vgen-xl (its configs, written out here) with
    random weights: about 2.5 G parameters, 4.9 GB in fp16.

    The weights are made directly on `device` (CUDA when there is one, else the CPU; "meta"
    allocates nothing) and cast to `dtype` one model at a time.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    components: dict[str, Any] = {
        "scheduler": DDIMScheduler(
            num_train_timesteps=1000,
            beta_start=0.0001,
            beta_end=0.02,
            beta_schedule="squaredcos_cap_v2",
            clip_sample=False,
            set_alpha_to_one=True,
            steps_offset=1,
            prediction_type="v_prediction",
            timestep_spacing="leading",
            rescale_betas_zero_snr=True,
        ),
        # The real 49408-token BPE vocabulary cannot be had offline. The tiny one pads to
        # the same 77 tokens, so the text encoder does the same work.
        "tokenizer": tiny_clip_tokenizer(),
        "feature_extractor": _clip_image_processor(224),
    }
    for name, make in _FULL_I2VGENXL_MODULES.items():
        with torch.device(device):
            module = make()
        components[name] = module.to(dtype=dtype)
    return components


def full_i2vgenxl_pipeline(
    dtype: torch.dtype = torch.float16, device: str | torch.device | None = None
) -> I2VGenXLPipeline:
    """The full-size random I2VGen-XL pipeline in memory (see `full_i2vgenxl_components`)."""
    return I2VGenXLPipeline(**full_i2vgenxl_components(dtype=dtype, device=device))


def build_full_i2vgenxl(
    folder: Path, dtype: torch.dtype = torch.float16, device: str | torch.device | None = None
) -> Path:
    """Save the full-size random I2VGen-XL pipeline to `folder` (fp16 by default: 4.9 GB).

    Load it with ``DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float16)``.
    """
    return _save(full_i2vgenxl_pipeline(dtype=dtype, device=device), folder)


# ---------------------------------------------------------------------------- I2VGen-XL prompts


def i2vgenxl_prompt_embeds(
    pipe: I2VGenXLPipeline, prompt: str, negative_prompt: str = "", clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, negative_prompt_embeds)`` as I2VGenXLPipeline.encode_prompt makes
    them with its default ``clip_skip=1``, for transformers 5, where that code path fails.

    encode_prompt calls ``text_encoder.text_model.final_layer_norm``; transformers 5 folded
    CLIPTextTransformer into CLIPTextModel, so the norm is ``text_encoder.final_layer_norm``.
    Pass both tensors to the call (with ``prompt=None``).
    """
    text_encoder = pipe.text_encoder
    tokenizer = pipe.tokenizer
    device = pipe._execution_device
    final_layer_norm = (
        text_encoder.text_model.final_layer_norm
        if hasattr(text_encoder, "text_model")
        else text_encoder.final_layer_norm
    )

    def encode(text: str) -> torch.Tensor:
        ids = tokenizer(
            [text],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        output = text_encoder(ids, output_hidden_states=True)
        hidden: torch.Tensor = final_layer_norm(output.hidden_states[-(clip_skip + 1)])
        return hidden.to(dtype=text_encoder.dtype)

    with torch.no_grad():
        return encode(prompt), encode(negative_prompt)


# ---------------------------------------------------------------------------- smoke check


@contextmanager
def _timed(label: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    print(f"{label}: {time.perf_counter() - start:.2f} s")


def smoke() -> None:
    """Build the full-size I2VGen-XL in fp16 on the meta device (nothing is allocated) and
    run its UNet and encoders once there, which checks that the configs fit together; then
    build, save and load each tiny pipeline."""
    with _timed("full i2vgen-xl on meta"):
        pipe = full_i2vgenxl_pipeline(dtype=torch.float16, device="meta")
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            count = sum(p.numel() for p in component.parameters())
            dtypes = sorted({str(p.dtype) for p in component.parameters()})
            print(f"  {name}: {count / 1e6:.0f} M parameters, {dtypes}")
    with torch.no_grad(), torch.device("meta"):
        ids = torch.zeros(1, CLIP_MODEL_MAX_LENGTH, dtype=torch.long)
        text = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        text = pipe.text_encoder.final_layer_norm(text)
        pixels = torch.zeros(1, 3, 224, 224, dtype=torch.float16)
        image_embeds = pipe.image_encoder(pixels).image_embeds.unsqueeze(1)
        # 2 frames at 704x1280 (the pipeline's default size): latents of 88x160.
        latents = torch.zeros(1, 4, 2, 88, 160, dtype=torch.float16)
        out = pipe.unet(
            latents,
            torch.tensor(999),
            encoder_hidden_states=text,
            fps=torch.tensor([16]),
            image_latents=latents,
            image_embeddings=image_embeds,
            return_dict=False,
        )[0]
    if out.shape != latents.shape:
        raise AssertionError(f"UNet output {tuple(out.shape)} != input {tuple(latents.shape)}")
    print(f"  unet forward on meta: {tuple(out.shape)} {out.dtype}")
    with tempfile.TemporaryDirectory() as scratch:
        for family, builder in TINY_BUILDERS.items():
            with _timed(f"tiny {family}: build, save, load"):
                loaded = DiffusionPipeline.from_pretrained(builder(Path(scratch) / family))
            print(f"  {type(loaded).__name__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="check every builder quickly")
    parser.add_argument("family", nargs="?", choices=[*TINY_BUILDERS, "full_i2vgenxl"])
    parser.add_argument("folder", nargs="?", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        smoke()
        return 0
    if args.family is None or args.folder is None:
        parser.error("give a family and a folder, or --smoke")
    builder = build_full_i2vgenxl if args.family == "full_i2vgenxl" else TINY_BUILDERS[args.family]
    print(builder(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
