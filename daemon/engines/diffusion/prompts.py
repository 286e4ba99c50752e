"""I2VGen-XL's text conditioning, computed here instead of by the pipeline.

I2VGenXLPipeline conditions on the text encoder's penultimate layer (its default
``clip_skip=1``) and reaches the final layer norm as ``text_encoder.text_model``. In
transformers 5 ``CLIPTextModel`` no longer wraps a ``text_model``, so that path raises
``AttributeError``. This module does the same computation with the layer norm found on
either layout and hands the pipeline ready ``prompt_embeds``/``negative_prompt_embeds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The layer I2VGen-XL was trained on: clip_skip=1 means the output of the layer before
# the last, passed through the final layer norm.
CLIP_SKIP = 1


@dataclass
class PromptEmbeddings:
    prompt_embeds: Any
    negative_prompt_embeds: Any  # None when guidance is off (the pipeline then ignores it)
    truncated: bool  # the prompt was longer than the tokenizer's limit


def final_layer_norm(text_encoder: Any) -> Any:
    """The text encoder's final layer norm, in the transformers 4 or 5 layout."""
    inner = getattr(text_encoder, "text_model", None)
    if inner is not None and hasattr(inner, "final_layer_norm"):
        return inner.final_layer_norm
    return text_encoder.final_layer_norm


def _encode(pipe: Any, texts: list[str], max_length: int, device: Any) -> tuple[Any, bool]:
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    inputs = tokenizer(
        texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    untruncated = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
    truncated = untruncated.shape[-1] > inputs.input_ids.shape[-1]
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = inputs.attention_mask.to(device)
    output = text_encoder(
        inputs.input_ids.to(device), attention_mask=attention_mask, output_hidden_states=True
    )
    hidden = output.hidden_states[-(CLIP_SKIP + 1)]
    return final_layer_norm(text_encoder)(hidden), truncated


def i2vgenxl_embeddings(
    pipe: Any, prompt: str, negative_prompt: str, guidance: float, device: Any
) -> PromptEmbeddings:
    """What ``I2VGenXLPipeline.encode_prompt(..., clip_skip=1)`` computes for one video."""
    import torch

    # no_grad, not inference_mode: the pipeline reshapes these tensors outside that mode.
    with torch.no_grad():
        embeds, truncated = _encode(pipe, [prompt], pipe.tokenizer.model_max_length, device)
        negative = None
        # The pipeline only uses negative embeddings with classifier-free guidance.
        if guidance > 1:
            negative, _ = _encode(pipe, [negative_prompt], embeds.shape[1], device)
    dtype = pipe.text_encoder.dtype
    return PromptEmbeddings(
        embeds.to(dtype=dtype, device=device),
        None if negative is None else negative.to(dtype=dtype, device=device),
        truncated,
    )
