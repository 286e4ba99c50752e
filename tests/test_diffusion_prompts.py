"""I2VGen-XL's prompt embeddings, computed by i2vd because the pipeline's own clip_skip=1
path reaches ``text_encoder.text_model``, which transformers 5 removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_diffusion_engine import make_engine, make_request, source_image, tiny_model

from daemon.engines.diffusion.prompts import final_layer_norm, i2vgenxl_embeddings


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(tiny_model(tmp_path_factory, "i2vgenxl"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pipeline_encode_prompt(pipe: Any, prompt: str, negative: str, guidance: float) -> Any:
    """The pipeline's own encode_prompt with its default clip_skip=1."""
    pipe._guidance_scale = guidance
    return pipe.encode_prompt(prompt, torch.device("cpu"), 1, negative, clip_skip=1)


def test_embeddings_equal_the_pipelines_own_clip_skip_path(
    pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = i2vgenxl_embeddings(pipe, "a cat dances on the table", "blurry", 9.0, "cpu")
    text_encoder = pipe.text_encoder
    if not hasattr(text_encoder, "text_model"):
        # transformers 5: the pipeline's path is broken as described...
        with pytest.raises(AttributeError, match="text_model"):
            pipeline_encode_prompt(pipe, "a cat", "", 9.0)
        # ...and runs again with the transformers 4 layout restored as an alias.
        monkeypatch.setattr(
            type(text_encoder), "text_model", property(lambda self: self), raising=False
        )
    expected, expected_negative = pipeline_encode_prompt(
        pipe, "a cat dances on the table", "blurry", 9.0
    )
    assert torch.equal(ours.prompt_embeds, expected)
    assert torch.equal(ours.negative_prompt_embeds, expected_negative)
    assert not ours.truncated


def test_embeddings_are_the_normed_penultimate_layer(pipe: Any) -> None:
    ours = i2vgenxl_embeddings(pipe, "a dog", "", 9.0, "cpu")
    ids = pipe.tokenizer(
        ["a dog"], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        output = pipe.text_encoder(ids, output_hidden_states=True)
        penultimate = final_layer_norm(pipe.text_encoder)(output.hidden_states[-2])
        last = output.last_hidden_state
    assert torch.equal(ours.prompt_embeds, penultimate)
    assert not torch.allclose(ours.prompt_embeds, last)
    assert ours.prompt_embeds.shape == (1, 77, pipe.text_encoder.config.hidden_size)


def test_no_negative_embeddings_without_guidance(pipe: Any) -> None:
    ours = i2vgenxl_embeddings(pipe, "a dog", "blurry", 1.0, "cpu")
    assert ours.negative_prompt_embeds is None


def test_pipeline_call_works_with_them_under_this_transformers(pipe: Any) -> None:
    embeddings = i2vgenxl_embeddings(pipe, "a cat", "", 9.0, "cpu")
    frames = pipe(
        image=source_image(64, 64),
        prompt_embeds=embeddings.prompt_embeds,
        negative_prompt_embeds=embeddings.negative_prompt_embeds,
        height=64,
        width=64,
        num_frames=2,
        num_inference_steps=2,
        output_type="np",
    ).frames[0]
    assert frames.shape == (2, 64, 64, 3)


def test_long_prompt_is_cut_and_the_clip_says_so(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = tiny_model(tmp_path_factory, "i2vgenxl")
    prompt = " ".join(["the cat and the dog"] * 40)
    clip = make_engine(tmp_path).render(make_request(model, 64, steps=2, prompt=prompt))
    assert any("longer than the text encoder's 77 tokens" in note for note in clip.notes)
