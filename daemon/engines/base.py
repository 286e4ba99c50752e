"""What every engine takes and gives back. Engines make frames; they never write outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from ..rules import MotionSettings, ResolvedParams
from ..video import Frame


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
    # Called between frames or steps with the fraction done; raises JobInterrupted
    # when the daemon is stopping.
    checkpoint: Callable[[float], None] = lambda done: None


@dataclass
class Clip:
    """Frames ready to encode, and the parameters actually used to make them."""

    frames: list[Frame]
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
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    name: str

    def render(self, request: RenderRequest) -> Clip: ...
