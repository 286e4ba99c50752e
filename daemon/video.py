"""Frames to H.264 MP4 through the ffmpeg that imageio-ffmpeg bundles, and probing the result."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from .problems import RetryableProblem

Frame = np.ndarray  # HxWx3 uint8, RGB


class VideoError(RetryableProblem):
    """Encoding failed, or the written file is not what was asked for. Retryable: an
    encoder hiccup or a full scratch disk may be gone next time."""

    default_hint = "ffmpeg failed; its message is above and in the log"


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int
    codec: str
    pix_fmt: str


def ffmpeg_exe() -> str:
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def encode_mp4(frames: Sequence[Frame], path: Path, fps: int, crf: int = 18) -> None:
    """Write ``frames`` as H.264 yuv420p with the index up front (+faststart) for streaming."""
    if not frames:
        raise VideoError("no frames to encode")
    height, width = frames[0].shape[:2]
    if width % 2 or height % 2:
        raise VideoError(f"H.264 4:2:0 needs even sides, got {width}x{height}")
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,  # sizes are already even; never let imageio rescale
        quality=None,
        output_params=["-crf", str(crf), "-preset", "veryfast", "-movflags", "+faststart"],
        ffmpeg_log_level="error",
    )
    try:
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    except (OSError, RuntimeError) as exc:
        writer.close()
        raise VideoError(f"ffmpeg could not write {path.name}: {exc}") from exc


def interpolate(frames: Sequence[Frame], fps: int, target_fps: int) -> list[Frame]:
    """Motion-compensated re-timing with ffmpeg's ``minterpolate``; returns the new frames.

    The output count is whatever ffmpeg produces (it trims the tail differently across
    versions), so callers count the frames they get instead of predicting them.
    """
    height, width = frames[0].shape[:2]
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "pipe:0",
        "-vf",
        f"minterpolate=fps={target_fps}:mi_mode=mci:mc_mode=aobmc:vsbmc=1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:1",
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C meant for the daemon must not kill ffmpeg mid-job
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def feed() -> None:
        try:
            for frame in frames:
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())  # type: ignore[union-attr]
        except BrokenPipeError:
            pass  # ffmpeg failed; its stderr says why
        finally:
            proc.stdin.close()  # type: ignore[union-attr]

    # Feeding from a thread keeps both pipes moving: ffmpeg blocks on a full stdout.
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    raw = proc.stdout.read()
    error = proc.stderr.read().decode(errors="replace")
    feeder.join()
    if proc.wait() != 0:
        raise VideoError(f"frame interpolation failed: {error.strip()[-500:]}")
    frame_bytes = width * height * 3
    count = len(raw) // frame_bytes
    array = np.frombuffer(raw[: count * frame_bytes], dtype=np.uint8)
    return list(array.reshape(count, height, width, 3))


_STREAM = re.compile(
    r"Stream #0:0.*?: Video: (?P<codec>\w+).*?, (?P<pix>\w+)(?:\([^)]*\))?, "
    r"(?P<w>\d+)x(?P<h>\d+)[^,]*,.*?(?P<fps>[\d.]+(?:k)?) fps"
)
_FRAMES = re.compile(r"frame=\s*(\d+)")


def probe(path: Path) -> VideoInfo:
    """Read size, rate and frame count of the first video stream (stream copy: no decode)."""
    result = subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            # Fail on damaged data: a stream copy alone counts a clipped last packet
            # as a whole frame, so a truncated file would pass the frame count.
            "-xerror",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-c",
            "copy",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        start_new_session=True,
        text=True,
        errors="replace",
        check=False,
    )
    stream = _STREAM.search(result.stderr)
    counts = _FRAMES.findall(result.stderr)
    if result.returncode != 0 or not stream or not counts:
        raise VideoError(f"{path.name} is not a readable video: {result.stderr.strip()[-300:]}")
    return VideoInfo(
        width=int(stream["w"]),
        height=int(stream["h"]),
        fps=float(Fraction(stream["fps"])),
        frames=int(counts[-1]),
        codec=stream["codec"],
        pix_fmt=stream["pix"],
    )


def verify(path: Path, width: int, height: int, fps: int, frames: int) -> VideoInfo:
    """Fail unless the written file holds exactly what the sidecar is about to claim."""
    info = probe(path)
    expected = (width, height, frames)
    found = (info.width, info.height, info.frames)
    if found != expected or abs(info.fps - fps) > 1e-3 or info.pix_fmt != "yuv420p":
        raise VideoError(
            f"{path.name} came out as {info.width}x{info.height}, {info.frames} frames at "
            f"{info.fps:g} fps ({info.pix_fmt}); expected {width}x{height}, {frames} frames "
            f"at {fps} fps (yuv420p)"
        )
    return info
