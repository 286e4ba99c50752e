"""From a decoded image to a verified video file in the scratch folder: the engine's
render, then the encode and the check that the file is what was asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .breaker import GPU_ENGINES, DeviceFault, device_fault
from .config import Settings
from .engines import Clip, Engine, EngineOptions, RenderRequest, get_engine
from .engines.base import Streaming
from .images import decode_image
from .plan import OutputPlan, plan_frames, source_pixels_needed
from .rules import Rule
from .sidecar import params_block
from .video import FrameStream, encode_mp4, verify


def model_location(model: str | None, base_dir: Path) -> str | None:
    """A rule's ``model`` as the engine loads it. Paths are relative to the config
    file's folder, never to wherever the daemon was started: ``./x``, ``../x``, ``~/x``
    and ``a/b/c`` are always folders; ``owner/name`` is that folder when it exists
    there, else a hub id such as ``ali-vilab/i2vgen-xl``."""
    if not model:
        return model
    path = Path(model).expanduser()
    if path.is_absolute():
        return str(path)
    local = model.startswith(("./", "../", "~")) or model.count("/") > 1
    if local or (base_dir / path).is_dir():
        return str(base_dir / path)
    return model


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(
        device=settings.device,
        state_dir=settings.state_dir,
        idle_seconds=settings.model_idle_seconds,
    )


@dataclass(frozen=True)
class Rendered:
    clip: Clip
    requested: dict[str, Any]  # the sidecar's "requested" block
    generate_seconds: float
    encode_seconds: float


def render_video(
    settings: Settings,
    engines: dict[str, Engine],
    rule: Rule,
    plan: OutputPlan,
    data: bytes,
    work_file: Path,
    checkpoint: Callable[[float], None],
    loading: Callable[[str], None] = lambda model: None,
) -> Rendered:
    """Render, encode to ``work_file`` and verify it. Problems raise (EngineUnavailable,
    BadImage, VideoError, an engine's own); JobInterrupted when ``checkpoint`` stops.
    ``loading`` is told when the engine starts loading a model."""
    engine = get_engine(rule.engine, engines, engine_options(settings))
    image = decode_image(data, min_side=source_pixels_needed(rule))
    params = rule.resolved()
    # The family's rounding is the engine's at run time (it reads the loaded model);
    # "requested" is the size the rule asks for.
    frame = plan_frames(rule, image.width, image.height, None)
    assert frame.width is not None and frame.height is not None
    request = RenderRequest(
        image=image,
        params=params,
        aspect=rule.aspect,
        prompt=plan.prompt,
        negative_prompt=plan.negative_prompt,
        model=model_location(rule.model, settings.base_dir),
        motion=rule.motion,
        diffusion=rule.diffusion,
        checkpoint=checkpoint,
        loading=loading,
    )
    t_generate = time.time()
    try:
        # A streaming engine makes each frame as the encoder takes it (rendering and
        # encoding overlap); its FrameStream counts the time spent making frames.
        if isinstance(engine, Streaming):
            clip = engine.stream(request)
        else:
            clip = engine.render(request)
            checkpoint(1.0)
    except Exception as exc:
        # A broken GPU is the host's fault, not the image's (the circuit breaker).
        reason = device_fault(exc) if rule.engine in GPU_ENGINES else None
        if reason is None:
            raise
        raise DeviceFault(reason) from exc
    t_encode = time.time()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    encode_mp4(clip.frames, work_file, clip.fps, settings=clip.encoder)
    verify(work_file, clip.width, clip.height, clip.fps, len(clip.frames))
    made = clip.frames.seconds if isinstance(clip.frames, FrameStream) else 0.0
    return Rendered(
        clip,
        params_block(params, frame.width, frame.height),
        t_encode - t_generate - clip.load_seconds + made,
        time.time() - t_encode - made,
    )
