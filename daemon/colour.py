"""One stated colour conversion for every video: RGB to BT.709 Y'CbCr, limited range, 4:2:0.

Players pick a matrix from the stream's tags; an untagged stream gets BT.601 or BT.709
depending on its frame size, which shifts a photo's colours at some sizes and not
others. So every engine's frames are converted here, with the one matrix the encoder
then writes into the stream (``video.COLOUR_TAGS``).

An I420 picture is one ``(H*3/2) x W`` uint8 array: H rows of Y, then the U plane's
H/2 x W/2 bytes, then V's, as ffmpeg's ``yuv420p`` and OpenCV's ``YUV_I420`` lay it out.
Chroma samples sit at the centre of each 2x2 block of luma (a box average).
"""

from __future__ import annotations

import cv2
import numpy as np

KR, KB = 0.2126, 0.0722  # BT.709 luma weights of red and blue
KG = 1.0 - KR - KB

# Full-range RGB (0..255) to limited-range Y'CbCr: Y 16..235, Cb/Cr 16..240 around 128.
_Y = np.array([KR, KG, KB]) * 219 / 255
_CB = np.array([-KR, -KG, 1 - KB]) / (2 * (1 - KB)) * 224 / 255
_CR = np.array([1 - KR, -KG, -KB]) / (2 * (1 - KR)) * 224 / 255
RGB_TO_YUV = np.array(
    [[*_Y, 16.0], [*_CB, 128.0], [*_CR, 128.0]], dtype=np.float32
)  # 3x4: the last column is the offset, as cv2.transform takes it
_FORWARD = RGB_TO_YUV[:, :3].astype(np.float64)
_INVERSE = np.linalg.inv(_FORWARD)
YUV_TO_RGB = np.hstack([_INVERSE, -_INVERSE @ RGB_TO_YUV[:, 3:].astype(np.float64)]).astype(
    np.float32
)


def rgb_to_yuv444(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB to HxWx3 uint8 Y'CbCr (BT.709, limited range), full resolution."""
    return cv2.transform(np.ascontiguousarray(rgb), RGB_TO_YUV)


def half(plane: np.ndarray) -> np.ndarray:
    """A chroma plane at half the size (rounded up): the mean of each 2x2 block."""
    height, width = plane.shape[:2]
    return cv2.resize(plane, ((width + 1) // 2, (height + 1) // 2), interpolation=cv2.INTER_AREA)


def rgb_to_i420(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB (even sides) to one I420 picture, BT.709 limited range."""
    height, width = rgb.shape[:2]
    yuv = rgb_to_yuv444(rgb)
    out = np.empty((height * 3 // 2, width), np.uint8)
    y, u, v = planes(out, width, height)
    y[:] = yuv[..., 0]
    chroma = half(yuv[..., 1:])
    u[:] = chroma[..., 0]
    v[:] = chroma[..., 1]
    return out


def planes(i420: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """Views of the Y, U and V planes of an I420 buffer (writable when the buffer is)."""
    flat = i420.reshape(-1)
    luma, quarter = width * height, (width // 2) * (height // 2)
    return (
        flat[:luma].reshape(height, width),
        flat[luma : luma + quarter].reshape(height // 2, width // 2),
        flat[luma + quarter : luma + 2 * quarter].reshape(height // 2, width // 2),
    )


def i420_to_rgb(i420: np.ndarray) -> np.ndarray:
    """One I420 picture back to HxWx3 uint8 RGB, as a player shows it (chroma bilinear)."""
    height, width = i420.shape[0] * 2 // 3, i420.shape[1]
    y, u, v = planes(i420, width, height)
    size = (width, height)
    yuv = np.dstack(
        [
            y,
            cv2.resize(u, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(v, size, interpolation=cv2.INTER_LINEAR),
        ]
    )
    return cv2.transform(yuv, YUV_TO_RGB)
