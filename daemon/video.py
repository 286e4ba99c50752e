"""Frames to H.264 MP4 through the ffmpeg that imageio-ffmpeg bundles, and probing the result.

Frames are streamed: each one goes to the encoder as soon as it is made, through a
bounded queue that a feeder thread empties into ffmpeg's stdin. ffmpeg stays a separate
process (the same bundled binary that probes and re-times), so x264 runs on its own
cores outside Python's GIL, and an encoder crash fails one job, never the daemon. The
feeder thread lets rendering go on while a frame is being written: a pipe holds 64 KiB,
far less than one frame, so a direct write would make the renderer wait for x264.
Where Linux allows, the pipe is widened to 1 MiB (``PIPE_BYTES``): with 64 KiB a frame
crosses in six writes, the feeder needs the GIL back between them, and whenever the
render thread holds it, x264 waits for input (measured on 2 busy cores: i2vd's clip
took 1.1-1.3x as long as with the wider pipe).
An in-process encoder (PyAV) would save the pipe's copy, but bring a second FFmpeg
and x264 build into the daemon's process (where a crash in either ends every job),
and a second binary to keep in step with the one that probes and verifies.

Every stream is BT.709, limited range, and says so in its tags (``daemon.colour``).
"""

from __future__ import annotations

import contextlib
import fcntl
import queue
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import imageio_ffmpeg
import numpy as np

from .colour import rgb_to_i420
from .problems import RetryableProblem

PIPE_BYTES = 1 << 20  # Linux's default limit for a pipe that an unprivileged process widens

# HxWx3 uint8 RGB, or one I420 picture: a (H*3/2)xW uint8 array (see daemon.colour).
Frame = np.ndarray

# Written into every stream, and what the frames really are (daemon.colour converts).
COLOUR_TAGS = {
    "color_range": "tv",
    "colorspace": "bt709",
    "color_primaries": "bt709",
    "color_trc": "bt709",
}


class VideoError(RetryableProblem):
    """Encoding failed, or the written file is not what was asked for. Retryable: an
    encoder hiccup or a full scratch disk may be gone next time."""

    default_hint = "ask whoever looks after i2vd to check the log for the video encoder's message"


class EncoderFailed(VideoError):
    """ffmpeg stopped before it had taken every frame, or exited with an error; what it
    said is in ``detail``."""

    default_hint = (
        "nothing to do: i2vd tries again by itself; if it keeps failing, ask whoever looks "
        "after i2vd to check the log for ffmpeg's message"
    )


@dataclass(frozen=True)
class EncoderSettings:
    """x264 settings, chosen by measurement (BENCHMARKS.md, benchmarks/x264_presets.py):
    ``ultrafast`` with B-frames, mb-tree, a short lookahead and light deblocking keeps
    the PSNR of ``veryfast`` at the same CRF and encodes about twice as fast; CABAC
    makes files a fifth smaller for a little CPU; without adaptive quantisation the
    PSNR is higher at the same size."""

    crf: int = 18
    preset: str = "ultrafast"
    x264_params: str = "bframes=3:mbtree=1:rc-lookahead=10:deblock=1,0,0:aq-mode=0:cabac=1"
    threads: int = 0  # x264's own choice: about 1.5 threads a core

    def args(self) -> list[str]:
        out = ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf)]
        if self.x264_params:
            out += ["-x264-params", self.x264_params]
        return [*out, "-threads", str(self.threads)]


DEFAULT_ENCODER = EncoderSettings()


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int
    codec: str
    pix_fmt: str
    colour: str = ""  # what ffmpeg prints in the parentheses, e.g. "tv, bt709, progressive"


class FrameStream:
    """Frames made one at a time, as the encoder takes them, with their count known up
    front (the file is verified against it). Iterable once. ``seconds`` adds up the time
    spent making frames, so a job can still tell rendering from encoding."""

    def __init__(self, count: int, frames: Iterable[Frame]) -> None:
        self.count = count
        self._frames = iter(frames)
        self.seconds = 0.0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Frame]:
        while True:
            start = time.perf_counter()
            try:
                frame = next(self._frames)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield frame


def ffmpeg_exe() -> str:
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def frame_size_of(frame: Frame) -> tuple[int, int]:
    """(width, height) of an RGB frame or an I420 picture."""
    if frame.ndim == 3:
        return frame.shape[1], frame.shape[0]
    return frame.shape[1], frame.shape[0] * 2 // 3


def as_i420(frame: Frame) -> np.ndarray:
    """The frame as an I420 picture: RGB is converted (BT.709), I420 passes as it is."""
    return rgb_to_i420(frame) if frame.ndim == 3 else frame


class Mp4Writer:
    """One MP4 being written: ``write`` I420 pictures, then ``finish``; ``abort`` (or an
    exception inside ``with``) kills ffmpeg and removes the partial file."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: int,
        settings: EncoderSettings = DEFAULT_ENCODER,
        queued_frames: int = 4,
    ) -> None:
        if width % 2 or height % 2:
            raise VideoError(
                f"the video needs even sides, got {width}x{height}",
                detail="H.264 in 4:2:0 needs even width and height",
            )
        self.path, self.frames = path, 0
        self._bytes = width * height * 3 // 2
        # A file, not a pipe: nobody has to read it while ffmpeg runs. Closed by finish/abort.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        tags = [arg for key, value in COLOUR_TAGS.items() for arg in (f"-{key}", value)]
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}", "-r", str(fps),
            *tags, "-i", "pipe:0",
            *settings.args(), "-pix_fmt", "yuv420p", *tags,
            "-movflags", "+faststart", str(path),
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,  # a Ctrl-C meant for the daemon must not kill ffmpeg mid-job
        )
        assert self._proc.stdin is not None
        widen_pipe(self._proc.stdin.fileno())
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(queued_frames)
        self._broken: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, name="encoder-feed", daemon=True)
        self._feeder.start()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is not None:
            self.abort()

    def _feed(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        while (data := self._queue.get()) is not None:
            if self._broken is not None:
                continue  # keep draining, so a writer blocked on a full queue wakes up
            try:
                stdin.write(data)
            except (OSError, ValueError) as exc:  # BrokenPipeError: ffmpeg has exited
                self._broken = exc
        try:
            stdin.close()
        except OSError as exc:
            self._broken = self._broken or exc

    def write(self, frame: np.ndarray) -> None:
        """Queue one I420 picture; blocks while the queue is full (the encoder sets the pace)."""
        if self._broken is not None or self._proc.poll() is not None:
            raise EncoderFailed(
                "the video encoder stopped before it had every frame", detail=self._last_words()
            )
        data = np.ascontiguousarray(frame).data.cast("B")
        if data.nbytes != self._bytes:
            self.abort()
            raise VideoError(
                f"frame {self.frames} of the video came out the wrong size",
                detail=f"{data.nbytes} bytes, not the {self._bytes} of the video's size",
            )
        self._queue.put(data)
        self.frames += 1

    def finish(self) -> None:
        """Wait for ffmpeg to write the whole file; raise EncoderFailed if it did not."""
        self._queue.put(None)
        self._feeder.join()
        code = self._proc.wait()
        if code != 0 or self._broken is not None:
            raise EncoderFailed(
                "the video encoder failed", detail=f"exit status {code}: {self._last_words()}"
            )
        self._stderr.close()

    def abort(self) -> None:
        """Stop now: kill ffmpeg, drop what is queued, remove the partial file."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._feeder.is_alive():
            self._queue.put(None)
            self._feeder.join()
        self._stderr.close()
        self.path.unlink(missing_ok=True)

    def _last_words(self) -> str:
        """What ffmpeg said before it ended (for the detail); the writer is aborted."""
        self._proc.wait()  # the pipe broke, or it exited: it is ending; its last words matter
        try:
            self._stderr.seek(0)
            said = self._stderr.read().decode(errors="replace").strip()[-500:]
        except (OSError, ValueError):
            said = ""
        self.abort()
        return said or repr(self._broken)


def widen_pipe(fd: int) -> None:
    """Let the pipe ``fd`` hold ``PIPE_BYTES``, where the system allows it (Linux; not
    past /proc/sys/fs/pipe-max-size or a user's quota): otherwise it stays as it is."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is None:
        return
    with contextlib.suppress(OSError):  # a lower limit here: the default pipe works, slower
        fcntl.fcntl(fd, setpipe, PIPE_BYTES)


def encode_mp4(
    frames: Iterable[Frame],
    path: Path,
    fps: int,
    crf: int | None = None,
    settings: EncoderSettings = DEFAULT_ENCODER,
) -> int:
    """Write ``frames`` (RGB or I420) as H.264 yuv420p, BT.709, index up front (+faststart),
    streaming each frame to the encoder as it comes; returns how many were written.

    An exception from the frames' iterator (e.g. the job being interrupted) kills the
    encoder, removes the partial file and propagates.
    """
    if crf is not None:
        settings = EncoderSettings(
            crf=crf, preset=settings.preset, x264_params=settings.x264_params,
            threads=settings.threads,
        )  # fmt: skip
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise VideoError("no frames were made, so there is no video to save")
    width, height = frame_size_of(first)
    with Mp4Writer(path, width, height, fps, settings) as writer:
        writer.write(as_i420(first))
        for frame in iterator:
            writer.write(as_i420(frame))
        writer.finish()
    return writer.frames


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
        raise VideoError(
            "smoothing the motion between frames (frame interpolation) failed",
            detail=f"ffmpeg minterpolate: {error.strip()[-500:]}",
        )
    frame_bytes = width * height * 3
    count = len(raw) // frame_bytes
    array = np.frombuffer(raw[: count * frame_bytes], dtype=np.uint8)
    return list(array.reshape(count, height, width, 3))


_STREAM = re.compile(
    r"Stream #0:0.*?: Video: (?P<codec>\w+).*?, (?P<pix>\w+)(?:\((?P<colour>[^)]*)\))?, "
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
        raise VideoError(
            f"{path.name} is not a readable video: the finished file could not be checked",
            detail=f"ffprobe: {result.stderr.strip()[-300:]}",
        )
    return VideoInfo(
        width=int(stream["w"]),
        height=int(stream["h"]),
        fps=float(Fraction(stream["fps"])),
        frames=int(counts[-1]),
        codec=stream["codec"],
        pix_fmt=stream["pix"],
        colour=stream["colour"] or "",
    )


def verify(path: Path, width: int, height: int, fps: int, frames: int) -> VideoInfo:
    """Fail unless the written file holds exactly what the sidecar is about to claim."""
    info = probe(path)
    expected = (width, height, frames)
    found = (info.width, info.height, info.frames)
    tagged = {"tv", "bt709"} <= {part.strip() for part in info.colour.split(",")}
    if found != expected or abs(info.fps - fps) > 1e-3 or info.pix_fmt != "yuv420p" or not tagged:
        raise VideoError(
            f"{path.name} came out as {info.width}x{info.height}, {info.frames} frames at "
            f"{info.fps:g} fps; expected {width}x{height}, {frames} frames at {fps} fps",
            detail=f"pixel format {info.pix_fmt}, colours {info.colour or 'untagged'}; "
            "expected yuv420p, colours tv, bt709",
        )
    return info
