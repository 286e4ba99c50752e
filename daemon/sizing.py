"""What ``resolution`` and ``aspect`` mean in pixels, for every engine.

``resolution`` N is a pixel budget of NxN. ``square`` centre-crops to NxN; ``source``
keeps the image's aspect ratio at about NxN pixels. Sides are rounded to ``multiple``
(2 for H.264's 4:2:0 chroma; diffusion families need 8, 16 or 32). Frame counts of
diffusion families take a form ``k * step + 1`` where the VAE compresses time.
"""

from __future__ import annotations

import math

# Keep extreme panoramas from producing a 1-pixel-high video.
MAX_ASPECT = 4.0


def frame_size(
    resolution: int, aspect: str, source_width: int, source_height: int, multiple: int = 2
) -> tuple[int, int]:
    """(width, height) of the output frames."""
    if aspect == "square":
        side = _round_to(resolution, multiple)
        return side, side
    ratio = min(max(source_width / source_height, 1 / MAX_ASPECT), MAX_ASPECT)
    width = resolution * math.sqrt(ratio)
    height = resolution / math.sqrt(ratio)
    return _round_to(width, multiple), _round_to(height, multiple)


def crop_box(
    source_width: int, source_height: int, width: int, height: int
) -> tuple[float, float, float, float]:
    """The largest centred box of the source with the output's aspect ratio."""
    target = width / height
    if source_width / source_height > target:
        crop_w, crop_h = source_height * target, float(source_height)
    else:
        crop_w, crop_h = float(source_width), source_width / target
    left = (source_width - crop_w) / 2
    top = (source_height - crop_h) / 2
    return left, top, left + crop_w, top + crop_h


def round_frames(frames: int, step: int) -> int:
    """The nearest count of the form k * step + 1 (any count where step is 1)."""
    if step <= 1:
        return max(1, frames)
    return max(1, round((frames - 1) / step)) * step + 1


def lowest_frames(minimum: int, step: int) -> int:
    """The smallest count of the family's form that is at least ``minimum``."""
    if step <= 1:
        return max(1, minimum)
    return max(1, -(-(minimum - 1) // step)) * step + 1


def form_of(step: int) -> str:
    return "any count" if step <= 1 else f"{step}k+1"


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)
