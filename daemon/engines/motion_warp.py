"""The motion engine's renderer: a moving window of the still, straight into I420 frames.

The crop is resampled once (Pillow's Lanczos) into a short ladder of *levels*, each
converted once to BT.709 planes. A frame is then one affine warp of each plane of the
level nearest above the window's size: Y with cubic interpolation, the half-size U/V
bilinearly (the eye resolves chroma far less), borders replicated (never black). The
ladder's steps are at most ``LEVEL_STEP``, so a warp never shrinks by more than that:
cubic interpolation does not filter, and larger shrinks would alias (a shimmer on fine
detail). A pan needs one level (its window keeps the output's size); the first frame
of a zoom-in is the level at the output's own size, i.e. the picture itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..colour import half, planes, rgb_to_yuv444

Box = tuple[float, float, float, float]

LEVEL_STEP = 1.25
BLACK_Y, GREY_UV = 16.0, 128.0  # limited range: a fade goes towards Y 16, chroma 128


@dataclass(frozen=True)
class Level:
    """The crop at ``scale`` x the output size, as planes."""

    scale: float
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @property
    def width(self) -> int:
        return int(self.y.shape[1])

    @property
    def height(self) -> int:
        return int(self.y.shape[0])


def level_scales(zoom: float, zooms: bool) -> list[float]:
    """Scales of the ladder: the output's size up to ``zoom`` x, in even geometric steps of
    at most LEVEL_STEP; a pan only needs ``zoom`` itself."""
    if not zooms or zoom <= 1.0:
        return [zoom]
    steps = math.ceil(math.log(zoom) / math.log(LEVEL_STEP) - 1e-9)
    return [zoom ** (k / steps) for k in range(steps + 1)]


def make_levels(
    image: Image.Image, crop: Box, width: int, height: int, scales: list[float]
) -> list[Level]:
    levels = []
    for scale in scales:
        size = (round(width * scale), round(height * scale))
        resized = image.resize(size, Image.Resampling.LANCZOS, box=crop)
        yuv = rgb_to_yuv444(np.asarray(resized))
        chroma = half(yuv[..., 1:])
        levels.append(
            Level(
                scale,
                np.ascontiguousarray(yuv[..., 0]),
                np.ascontiguousarray(chroma[..., 0]),
                np.ascontiguousarray(chroma[..., 1]),
            )
        )
    return levels


def pick_level(levels: list[Level], box: Box, width: int) -> tuple[Level, Box]:
    """The smallest level in which the window (``box``, in the top level's pixels) is at
    least the output's size, and the window in that level's pixels."""
    top = levels[-1]
    fraction = (box[2] - box[0]) / top.width  # of the crop's width
    chosen = next((lv for lv in levels if lv.width * fraction >= width - 1e-6), top)
    rx, ry = chosen.width / top.width, chosen.height / top.height
    return chosen, (box[0] * rx, box[1] * ry, box[2] * rx, box[3] * ry)


def warp_frame(level: Level, box: Box, width: int, height: int, gain: float) -> np.ndarray:
    """One I420 frame showing ``box`` (in ``level``'s pixels), faded by ``gain``."""
    left, top = box[0], box[1]
    sx, sy = (box[2] - left) / width, (box[3] - top) / height
    out = np.empty((height * 3 // 2, width), np.uint8)
    y, u, v = planes(out, width, height)
    # Inverse maps, pixel centres at +0.5: output x shows level x' = left + (x+0.5)*sx - 0.5.
    luma = np.array([[sx, 0, left + 0.5 * sx - 0.5], [0, sy, top + 0.5 * sy - 0.5]])
    flags = cv2.WARP_INVERSE_MAP
    border = cv2.BORDER_REPLICATE
    cv2.warpAffine(level.y, luma, (width, height), y, flags | cv2.INTER_CUBIC, border)
    # A chroma sample sits at the centre of a 2x2 luma block, in the output and in the level.
    fx, fy = level.u.shape[1] / level.width, level.u.shape[0] / level.height
    chroma = np.array(
        [[2 * sx * fx, 0, (left + sx) * fx - 0.5], [0, 2 * sy * fy, (top + sy) * fy - 0.5]]
    )
    size = (width // 2, height // 2)
    cv2.warpAffine(level.u, chroma, size, u, flags | cv2.INTER_LINEAR, border)
    cv2.warpAffine(level.v, chroma, size, v, flags | cv2.INTER_LINEAR, border)
    if gain < 1.0:
        # A fade is an affine map of each plane towards limited-range black.
        cv2.convertScaleAbs(y, y, gain, BLACK_Y * (1 - gain))
        chroma_planes = out[height:]
        cv2.convertScaleAbs(chroma_planes, chroma_planes, gain, GREY_UV * (1 - gain))
    return out

