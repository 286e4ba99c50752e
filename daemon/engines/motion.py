"""The CPU engine: Ken Burns zoom and pan with easing and fades, rendered at any frame rate.

Every frame is a float-precise window of the source (no rounding to whole pixels, so
motion is smooth at sub-pixel speeds), and the window never leaves the picture (no
black borders). Frames are made one at a time as the encoder takes them
(``stream``), as BT.709 I420 pictures (``motion_warp``). No torch here: this engine
must start fast.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import cv2
import numpy as np

from ..colour import i420_to_rgb
from ..rules import MotionSettings
from ..sizing import crop_box, frame_size
from ..video import EncoderSettings, Frame, FrameStream
from .base import Clip, RenderRequest
from .motion_warp import FAST_SHRINK, Box, fade, make_level, resample_frame, warp_frame

EASINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "ease_in": lambda t: t * t,
    "ease_out": lambda t: 1 - (1 - t) * (1 - t),
    "ease_in_out": lambda t: t * t * (3 - 2 * t),  # smoothstep: zero speed at both ends
}


def render_threads() -> int:
    """Threads that render frames of one clip: one per four cores this process may use,
    at least two and at most four (x264 takes the rest: it runs about 1.5 threads a
    core). Two even on two cores: the scheduler shares a busy core between threads, and
    x264's three or four threads would leave a single render thread a fifth of the
    machine, too little to keep them fed (measured on 2 busy cores: 0.64x the frames/s
    of x264 alone with one render thread, 0.85x with two, for the same CPU time)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(2, min(4, (cores or 1) // 4))


def in_order(
    make: Callable[[int], Frame], count: int, threads: int, before: Callable[[int], None]
) -> Iterator[Frame]:
    """``make(0) .. make(count - 1)`` in order, ``threads`` at a time (OpenCV and Pillow
    release the GIL), at most two frames a thread ahead of the consumer. ``before(i)``
    runs before frame i is started: an exception there (the job being stopped) stops
    the clip after the frames already started."""
    if threads <= 1:
        for index in range(count):
            before(index)
            yield make(index)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="motion-render") as pool:
        pending: deque[Future[Frame]] = deque()
        for index in range(count):
            before(index)
            pending.append(pool.submit(make, index))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class MotionEngine:
    name = "motion"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = render_threads() if threads is None else threads
        # OpenCV's own pool would split each resize across the cores and spin while it
        # waits: where x264 keeps every core busy that only takes CPU from the encoder
        # (0.3 ms a 512x512 frame on 2 cores, a quarter of the rendering), and on larger
        # hosts the render threads above already spread the frames over cores.
        cv2.setNumThreads(1)

    def release_idle(self, now: float) -> None:
        """Nothing to release: the motion engine holds no model."""

    def stream(self, request: RenderRequest) -> Clip:
        """The clip, its frames made one by one as they are iterated (by the encoder).
        The crop is resampled here, once; each frame costs three plane warps."""
        params, motion = request.params, request.motion
        width, height = frame_size(
            params.resolution, request.aspect, request.image.width, request.image.height
        )
        count, fps = motion.timing(params.frames, params.fps)
        crop = crop_box(request.image.width, request.image.height, width, height)
        level = make_level(request.image, crop, width, height, motion.zoom)
        # A pan's window keeps the output's size; a zoom's shrinks by up to `zoom`.
        shrinks = motion.zoom if motion.effect.startswith("zoom") else 1.0
        resample = warp_frame if shrinks <= FAST_SHRINK + 1e-9 else resample_frame
        gains = fade_gains(count, fps, motion)

        def frame(index: int) -> Frame:
            t = EASINGS[motion.easing](index / (count - 1))
            box = window(motion, t, level.width, level.height)
            return fade(resample(level, box, width, height), height, float(gains[index]))

        def checkpoint(index: int) -> None:
            request.checkpoint(index / count)

        frames = in_order(frame, count, self.threads, checkpoint)
        return Clip(
            frames=FrameStream(count, frames),
            fps=fps,
            width=width,
            height=height,
            encoder=EncoderSettings(crf=motion.crf),
        )

    def render(self, request: RenderRequest) -> Clip:
        """Every frame at once, as RGB pictures (as a player decodes them): for callers
        that want pictures, not a video. The same renderer as ``stream``; the fades are
        the same gains, applied to the RGB values."""
        unfaded = request.motion.model_copy(update={"fade_in": 0.0, "fade_out": 0.0})
        clip = self.stream(replace(request, motion=unfaded))
        frames = [i420_to_rgb(frame) for frame in clip.frames]
        return replace(clip, frames=apply_fades(frames, clip.fps, request.motion))


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


def fade_gains(count: int, fps: int, motion: MotionSettings) -> np.ndarray:
    """Each frame's brightness (0..1): ramps from and to black over the first and last
    ``fade_in``/``fade_out`` seconds."""
    gains = np.ones(count)
    fade_in = min(count, round(motion.fade_in * fps))
    fade_out = min(count, round(motion.fade_out * fps))
    if fade_in:
        gains[:fade_in] = np.minimum(gains[:fade_in], np.arange(fade_in) / fade_in)
    if fade_out:
        ramp = np.arange(fade_out)[::-1] / fade_out
        gains[count - fade_out :] = np.minimum(gains[count - fade_out :], ramp)
    return gains


def apply_fades(frames: list[Frame], fps: int, motion: MotionSettings) -> list[Frame]:
    """Fade RGB frames from and to black over the first/last ``fade_in``/``fade_out`` seconds."""
    gains = fade_gains(len(frames), fps, motion)
    return [
        frame if gain == 1 else (frame.astype(np.float32) * gain).round().astype(np.uint8)
        for frame, gain in zip(frames, gains, strict=True)
    ]
