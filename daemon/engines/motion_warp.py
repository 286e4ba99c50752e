"""The motion engine's renderer: a moving window of the still, straight into I420 frames.

The crop is resampled once (Pillow's Lanczos) to ``zoom`` x the output size and converted
once to BT.709 planes. A frame is then one resampling of each plane to the window:
Y with cubic interpolation, the half-size U/V bilinearly (the eye resolves chroma far
less), borders replicated (never black).

Two resamplers, chosen per clip: OpenCV's affine warp, fast, for clips whose window
never shrinks by more than ``FAST_SHRINK`` (every pan, and zooms up to that much; the
default rule's 1.25 is one); Pillow's antialiasing resize of each plane for larger zooms,
where an unfiltered warp would alias fine detail into a crawling moiré (measured on a
zone plate in tests/test_motion_quality.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..colour import RGB_TO_YUV, half, planes, rgb_to_yuv444

Box = tuple[float, float, float, float]

FAST_SHRINK = 1.25
BLACK_Y, GREY_UV = 16.0, 128.0  # limited range: a fade goes towards Y 16, chroma 128


LUMA_SCALE = 256.0  # the level's Y is kept as Y x 256 in 16 bits: no rounding before the warp


@dataclass(frozen=True)
class Level:
    """The crop at ``zoom`` x the output size, as planes: Y at 16 bits (Y x 256), so the
    frame's luma is rounded once, after the warp, as a resize of the RGB picture would
    be (an 8-bit Y here costs 0.2-0.3 dB of PSNR); U and V at 8 bits, half size."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    # Y, and U and V as two channels, with PAD replicated pixels on every side (resize_window)
    y_padded: np.ndarray
    uv_padded: np.ndarray

    @property
    def width(self) -> int:
        return int(self.y.shape[1])

    @property
    def height(self) -> int:
        return int(self.y.shape[0])


def make_level(image: Image.Image, crop: Box, width: int, height: int, zoom: float) -> Level:
    size = (round(width * zoom), round(height * zoom))
    resized = image.resize(size, Image.Resampling.LANCZOS, box=crop)
    rgb = np.asarray(resized)
    luma = cv2.transform(rgb.astype(np.float32), RGB_TO_YUV[:1] * LUMA_SCALE)
    chroma = half(rgb_to_yuv444(rgb)[..., 1:])
    y = np.ascontiguousarray(np.clip(luma, 0, 65535).round().astype(np.uint16))
    return Level(
        y,
        np.ascontiguousarray(chroma[..., 0]),
        np.ascontiguousarray(chroma[..., 1]),
        cv2.copyMakeBorder(y, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE),
        cv2.copyMakeBorder(chroma, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE),
    )


def warp_frame(level: Level, box: Box, width: int, height: int) -> np.ndarray:
    """One I420 frame showing ``box`` (in ``level``'s pixels): OpenCV affine warps."""
    left, top = box[0], box[1]
    sx, sy = (box[2] - left) / width, (box[3] - top) / height
    out = np.empty((height * 3 // 2, width), np.uint8)
    y, u, v = planes(out, width, height)
    flags = cv2.WARP_INVERSE_MAP
    border = cv2.BORDER_REPLICATE
    if abs(sx - 1) < 1e-9 and abs(sy - 1) < 1e-9:
        shift_luma(level.y, left, top, y)
    else:
        wide = resize_window(level.y_padded, left, top, sx, sy, width, height, cv2.INTER_CUBIC)
        if wide is None:
            # Inverse map, pixel centres at +0.5: output x shows x' = left + (x+0.5)*sx - 0.5.
            luma = np.array([[sx, 0, left + 0.5 * sx - 0.5], [0, sy, top + 0.5 * sy - 0.5]])
            wide = cv2.warpAffine(
                level.y, luma, (width, height), None, flags | cv2.INTER_CUBIC, border
            )
        cv2.convertScaleAbs(wide, y, 1 / LUMA_SCALE)
    # A chroma sample sits at the centre of a 2x2 luma block, in the output and in the level.
    fx, fy = level.u.shape[1] / level.width, level.u.shape[0] / level.height
    csx, csy = 2 * sx * fx, 2 * sy * fy
    size = (width // 2, height // 2)
    both = resize_window(level.uv_padded, left * fx, top * fy, csx, csy, *size, cv2.INTER_LINEAR)
    if both is not None:
        u[:], v[:] = both[..., 0], both[..., 1]
        return out
    chroma = np.array([[csx, 0, (left + sx) * fx - 0.5], [0, csy, (top + sy) * fy - 0.5]])
    cv2.warpAffine(level.u, chroma, size, u, flags | cv2.INTER_LINEAR, border)
    cv2.warpAffine(level.v, chroma, size, v, flags | cv2.INTER_LINEAR, border)
    return out


MAX_LEAD = 160  # output pixels resize_window may make and throw away before the window
ALIGN_TOLERANCE = 0.01  # pixels: how far its window may start from the asked position
PAD = MAX_LEAD * 2 + 8  # covers MAX_LEAD pixels at the largest shrink the fast path takes


def resize_window(
    padded: np.ndarray,
    left: float,
    top: float,
    sx: float,
    sy: float,
    width: int,
    height: int,
    interpolation: int,
) -> np.ndarray | None:
    """The window at (left, top), ``sx`` x ``sy`` source pixels an output pixel, by
    cv2.resize: separable, several times as fast as warpAffine. None when its grid
    cannot be lined up with the window (warpAffine does that frame).

    cv2.resize samples pixel x at ``start + (x + 0.5) * s - 0.5`` from a whole-pixel
    ``start``. Making ``lead`` extra output pixels before the window and dropping them
    moves the first kept sample to ``start + lead * s``: the lead is chosen so that this
    lands within ALIGN_TOLERANCE of the window's sub-pixel origin, on each axis."""
    found_x, found_y = _lead(left, sx), _lead(top, sy)
    if found_x is None or found_y is None:
        return None
    (lead_x, col), (lead_y, row) = found_x, found_y
    cols = math.ceil((lead_x + width + 3) * sx) + 2
    rows = math.ceil((lead_y + height + 3) * sy) + 2
    roi = padded[PAD + row : PAD + row + rows, PAD + col : PAD + col + cols]
    big = cv2.resize(roi, None, fx=1 / sx, fy=1 / sy, interpolation=interpolation)
    return big[lead_y : lead_y + height, lead_x : lead_x + width]


def _lead(origin: float, scale: float) -> tuple[int, int] | None:
    """(lead, whole-pixel start) with ``start + lead * scale`` within ALIGN_TOLERANCE of
    ``origin``; at least two pixels of lead, so the filter's taps stay inside."""
    for lead in range(2, MAX_LEAD):
        start = origin - lead * scale
        if abs(start - round(start)) <= ALIGN_TOLERANCE:
            return lead, round(start)
    return None


def cubic_taps(fraction: float) -> np.ndarray:
    """Weights of the 4 pixels around a point ``fraction`` past a pixel: Keys' cubic with
    a = -0.5 (Pillow's bicubic), which reproduces straight ramps exactly, so a dot moves
    by exactly the fraction asked (a 6-tap Lanczos misplaces it by up to 0.02 px)."""
    a = -0.5
    x = np.abs(np.arange(-1, 3) - fraction)
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    taps: np.ndarray = np.where(x < 1, near, far).astype(np.float32)
    return taps


def shift_luma(plane: np.ndarray, left: float, top: float, out: np.ndarray) -> None:
    """A same-size window at a sub-pixel position (every pan): one separable 4-tap cubic
    filter with exact weights. warpAffine rounds positions to 1/32 pixel and uses a
    sharper cubic (a = -0.75) that does not keep ramps straight: together a judder of a
    few hundredths of a pixel in a slow pan."""
    height, width = out.shape
    col, row = math.floor(left), math.floor(top)
    before, after = 1, 2  # the taps reach one pixel before and two after; replicated
    rows = np.s_[max(0, row - before) : row + height + after]
    cols = np.s_[max(0, col - before) : col + width + after]
    padded = cv2.copyMakeBorder(
        plane[rows, cols],
        max(0, before - row), max(0, row + height + after - plane.shape[0]),
        max(0, before - col), max(0, col + width + after - plane.shape[1]),
        cv2.BORDER_REPLICATE,
    )  # fmt: skip
    taps_x, taps_y = cubic_taps(left - col), cubic_taps(top - row)
    # In floating point: OpenCV's 8-bit filter rounds the weights to 1/256.
    filtered = cv2.sepFilter2D(padded, cv2.CV_32F, taps_x, taps_y, anchor=(before, before))
    cv2.convertScaleAbs(
        filtered[before : before + height, before : before + width], out, 1 / LUMA_SCALE
    )


def resample_frame(level: Level, box: Box, width: int, height: int) -> np.ndarray:
    """The same frame through Pillow's resize, which widens its filter as the window
    shrinks (antialiasing): slower, for zooms beyond FAST_SHRINK."""
    out = np.empty((height * 3 // 2, width), np.uint8)
    y, u, v = planes(out, width, height)
    fx, fy = level.u.shape[1] / level.width, level.u.shape[0] / level.height
    chroma_box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    luma = Image.fromarray(level.y.astype(np.float32) * (1 / LUMA_SCALE), mode="F")
    resized = np.asarray(luma.resize((width, height), Image.Resampling.BICUBIC, box=box))
    cv2.convertScaleAbs(resized, y)
    for plane, source in ((u, level.u), (v, level.v)):
        half_size = (width // 2, height // 2)
        chroma = Image.fromarray(source).resize(
            half_size, Image.Resampling.BILINEAR, box=chroma_box
        )
        plane[:] = np.asarray(chroma)
    return out


def fade(frame: np.ndarray, height: int, gain: float) -> np.ndarray:
    """Fade an I420 frame in place: an affine map of each plane towards limited-range black."""
    if gain < 1.0:
        luma, chroma = frame[:height], frame[height:]
        cv2.convertScaleAbs(luma, luma, gain, BLACK_Y * (1 - gain))
        cv2.convertScaleAbs(chroma, chroma, gain, GREY_UV * (1 - gain))
    return frame
