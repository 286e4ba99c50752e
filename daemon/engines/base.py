"""What every engine takes and gives back. Engines make frames; they never write outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from ..rules import DiffusionSettings, MotionSettings, ResolvedParams
from ..video import EncoderSettings, Frame, FrameStream


class JobInterrupted(Exception):
    """The daemon is stopping; the job goes back to the queue untouched."""


@dataclass(frozen=True)
class RenderRequest:
    image: Image.Image  # RGB, orientation applied
    params: ResolvedParams
    aspect: str
    prompt: str
    negative_prompt: str
    model: str | None
    motion: MotionSettings
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    # Called between frames or steps with the fraction done; raises JobInterrupted
    # when the daemon is stopping.
    checkpoint: Callable[[float], None] = lambda done: None
    # Called with the model's name when the engine starts loading it (a job's first,
    # or the first after an idle unload): minutes may pass before the first step.
    loading: Callable[[str], None] = lambda model: None


@dataclass
class Clip:
    """Frames ready to encode (or made as they are encoded: a FrameStream), and the
    parameters actually used to make them."""

    frames: list[Frame] | FrameStream
    fps: int
    width: int
    height: int
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    backoff: list[dict[str, Any]] = field(default_factory=list)
    load_seconds: float = 0.0
    model: str | None = None
    device: str = "cpu"
    family: str | None = None
    # Engine-specific parameters actually used (e.g. motion_bucket_id), merged into the
    # sidecar's "effective" block.
    effective_extra: dict[str, Any] = field(default_factory=dict)
    # Plain-language remarks for the sidecar, e.g. "this model takes no prompt".
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)


@dataclass(frozen=True)
class EngineOptions:
    """Host-level settings an engine needs, from the daemon's Settings."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    state_dir: Path = Path("state")  # where an engine may keep what it learned
    idle_seconds: float = 600.0  # unload a warm model unused for this long


class Engine(Protocol):
    name: str

    def render(self, request: RenderRequest) -> Clip: ...

    def release_idle(self, now: float) -> None:
        """Free what has not been used for ``EngineOptions.idle_seconds`` (monotonic
        clock). Called on a timer from another thread than ``render``."""
        ...


@runtime_checkable
class Streaming(Protocol):
    """An engine that can make its frames while they are encoded (``Clip.frames`` is a
    FrameStream): the worker calls ``stream`` instead of ``render``."""

    def stream(self, request: RenderRequest) -> Clip: ...
