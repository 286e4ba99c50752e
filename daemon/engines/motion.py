"""The CPU engine: Ken Burns zoom and pan with easing and fades, optional minterpolate.

Every frame is a float-precise window of the source resampled with Pillow's
antialiasing resize, so motion is smooth at sub-pixel speeds and the window never
leaves the picture (no black borders). No torch here: this engine must start fast.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from ..rules import MotionSettings
from ..sizing import crop_box, frame_size
from ..video import Frame, interpolate
from .base import Clip, RenderRequest

Box = tuple[float, float, float, float]

EASINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "ease_in": lambda t: t * t,
    "ease_out": lambda t: 1 - (1 - t) * (1 - t),
    "ease_in_out": lambda t: t * t * (3 - 2 * t),  # smoothstep: zero speed at both ends
}


class MotionEngine:
    name = "motion"

    def release_idle(self, now: float) -> None:
        """Nothing to release: the motion engine holds no model."""

    def render(self, request: RenderRequest) -> Clip:
        params, motion = request.params, request.motion
        width, height = frame_size(
            params.resolution, request.aspect, request.image.width, request.image.height
        )
        # Resample the crop once to `zoom`x the output size: every window is then at
        # least output-sized, so frames are never upscaled from a tiny region.
        work_w, work_h = round(width * motion.zoom), round(height * motion.zoom)
        base = crop_box(request.image.width, request.image.height, width, height)
        working = request.image.resize((work_w, work_h), Image.Resampling.LANCZOS, box=base)

        frames: list[Frame] = []
        for index in range(params.frames):
            request.checkpoint(index / params.frames)
            t = index / (params.frames - 1) if params.frames > 1 else 0.0
            box = window(motion, EASINGS[motion.easing](t), work_w, work_h)
            frame = working.resize((width, height), Image.Resampling.BICUBIC, box=box)
            frames.append(np.asarray(frame))
        frames = apply_fades(frames, params.fps, motion)

        fps = params.fps
        if motion.interpolate_fps and motion.interpolate_fps > fps:
            request.checkpoint(1.0)
            frames = interpolate(frames, fps, motion.interpolate_fps)
            fps = motion.interpolate_fps
        return Clip(frames=frames, fps=fps, width=width, height=height)


def window(motion: MotionSettings, progress: float, work_w: int, work_h: int) -> Box:
    """The source window shown at ``progress`` (0..1, eased) of the clip."""
    zoom = motion.zoom
    if motion.effect in ("zoom_in", "zoom_out"):
        amount = progress if motion.effect == "zoom_in" else 1 - progress
        scale = 1 + (zoom - 1) * amount
        win_w, win_h = work_w / scale, work_h / scale
        left, top = (work_w - win_w) / 2, (work_h - win_h) / 2
        return left, top, left + win_w, top + win_h
    win_w, win_h = work_w / zoom, work_h / zoom
    room_x, room_y = work_w - win_w, work_h - win_h
    left, top = room_x / 2, room_y / 2
    # "pan_right" moves the camera right: the window travels from the left edge.
    if motion.effect == "pan_right":
        left = room_x * progress
    elif motion.effect == "pan_left":
        left = room_x * (1 - progress)
    elif motion.effect == "pan_down":
        top = room_y * progress
    elif motion.effect == "pan_up":
        top = room_y * (1 - progress)
    return left, top, left + win_w, top + win_h


def apply_fades(frames: list[Frame], fps: int, motion: MotionSettings) -> list[Frame]:
    """Fade from and to black over the first/last ``fade_in``/``fade_out`` seconds."""
    count = len(frames)
    gains = np.ones(count)
    fade_in = min(count, round(motion.fade_in * fps))
    fade_out = min(count, round(motion.fade_out * fps))
    if fade_in:
        gains[:fade_in] = np.minimum(gains[:fade_in], np.arange(fade_in) / fade_in)
    if fade_out:
        ramp = np.arange(fade_out)[::-1] / fade_out
        gains[count - fade_out :] = np.minimum(gains[count - fade_out :], ramp)
    return [
        frame if gain == 1 else (frame.astype(np.float32) * gain).round().astype(np.uint8)
        for frame, gain in zip(frames, gains, strict=True)
    ]
