"""Frames to H.264 MP4 with the bundled ffmpeg, probing, verifying, and re-timing."""

from __future__ import annotations

import fcntl
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from conftest import picture
from daemon.video import PIPE_BYTES, Mp4Writer, VideoError, encode_mp4, interpolate, probe, verify


def moving_frames(count: int = 16, width: int = 128, height: int = 96) -> list[np.ndarray]:
    """A textured picture sliding right 2 px per frame, plus a brightness ramp."""
    base = picture(width + 2 * count, height)
    return [
        np.clip(base[:, 2 * i : 2 * i + width].astype(int) + i * 4 - 30, 0, 255).astype(np.uint8)
        for i in range(count)
    ]


def decode(path: Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    return [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]


@pytest.fixture(scope="module")
def clip16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    frames = moving_frames(16)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    encode_mp4(frames, path, fps=8)
    return path, frames


def test_encode_and_probe(clip16: tuple[Path, list[np.ndarray]]) -> None:
    path, _ = clip16
    info = probe(path)
    assert (info.width, info.height, info.frames) == (128, 96, 16)
    assert info.fps == 8.0
    assert info.codec == "h264"
    assert info.pix_fmt == "yuv420p"


def test_encoded_frames_round_trip(clip16: tuple[Path, list[np.ndarray]]) -> None:
    path, frames = clip16
    decoded = decode(path)
    assert len(decoded) == 16
    for original, back in zip(frames, decoded, strict=True):
        assert back.shape == (96, 128, 3)
        assert np.abs(back.astype(int) - original.astype(int)).mean() < 4
    # Order is kept: the brightness ramp rises frame by frame.
    means = [f.mean() for f in decoded]
    assert means == sorted(means)


def test_faststart_puts_moov_before_mdat(clip16: tuple[Path, list[np.ndarray]]) -> None:
    data = clip16[0].read_bytes()
    moov, mdat = data.find(b"moov"), data.find(b"mdat")
    assert moov != -1 and mdat != -1
    assert moov < mdat


@pytest.mark.parametrize(
    ("fps", "count", "size"), [(24, 10, (64, 48)), (12, 9, (256, 144)), (5, 8, (2, 2))]
)
def test_other_rates_and_sizes(tmp_path: Path, fps: int, count: int, size: tuple[int, int]) -> None:
    width, height = size
    frames = [np.full((height, width, 3), 20 * i, np.uint8) for i in range(count)]
    path = tmp_path / "x.mp4"
    encode_mp4(frames, path, fps=fps)
    info = verify(path, width, height, fps, count)
    assert (info.width, info.height, info.frames, info.fps) == (width, height, count, fps)


@pytest.mark.parametrize("size", [(95, 64), (96, 63), (33, 33)])
def test_odd_dimensions_are_refused(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    path = tmp_path / "odd.mp4"
    with pytest.raises(VideoError, match=f"even sides, got {width}x{height}"):
        encode_mp4([np.zeros((height, width, 3), np.uint8)] * 4, path, fps=8)
    assert not path.exists()


def test_no_frames_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="no frames"):
        encode_mp4([], tmp_path / "none.mp4", fps=8)


def test_verify_accepts_the_truth(clip16: tuple[Path, list[np.ndarray]]) -> None:
    info = verify(clip16[0], 128, 96, 8, 16)
    assert info.frames == 16


@pytest.mark.parametrize(
    "claim",
    [(128, 96, 8, 17), (128, 96, 8, 15), (128, 98, 8, 16), (130, 96, 8, 16), (128, 96, 24, 16)],
)
def test_verify_refuses_a_mismatch(
    clip16: tuple[Path, list[np.ndarray]], claim: tuple[int, int, int, int]
) -> None:
    width, height, fps, frames = claim
    with pytest.raises(VideoError) as err:
        verify(clip16[0], width, height, fps, frames)
    message = str(err.value)
    assert "came out as 128x96, 16 frames at 8 fps;" in message
    assert "pixel format yuv420p" in (err.value.detail or "")
    assert f"expected {width}x{height}, {frames} frames at {fps} fps" in message


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.02])
def test_verify_refuses_a_truncated_file(
    tmp_path: Path, clip16: tuple[Path, list[np.ndarray]], keep: float
) -> None:
    data = clip16[0].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VideoError):
        verify(cut, 128, 96, 8, 16)


def test_probe_non_video(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n", encoding="utf-8")
    with pytest.raises(VideoError, match=r"notes\.mp4 is not a readable video"):
        probe(text)
    image = tmp_path / "still.mp4"
    image.write_bytes(b"")
    with pytest.raises(VideoError, match=r"still\.mp4 is not a readable video"):
        probe(image)


def test_probe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"missing\.mp4 is not a readable video"):
        probe(tmp_path / "missing.mp4")


def test_interpolate_keeps_size_and_adds_frames() -> None:
    frames = moving_frames(8, 96, 64)
    out = interpolate(frames, 8, 24)
    assert len(out) > 2 * len(frames)
    assert len(out) <= 3 * len(frames)
    assert all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in out)
    assert np.abs(out[0].astype(int) - frames[0].astype(int)).mean() < 3
    # Every third output frame lands on an input frame.
    for index in (1, 2, 5):
        assert np.abs(out[3 * index].astype(int) - frames[index].astype(int)).mean() < 4
    # The in-between frames really are in between (brightness ramp: 4 per input frame).
    assert frames[1].mean() < out[4].mean() < frames[2].mean()


def test_interpolated_frames_encode(tmp_path: Path) -> None:
    out = interpolate(moving_frames(8, 64, 48), 8, 16)
    path = tmp_path / "i.mp4"
    encode_mp4(out, path, fps=16)
    info = verify(path, 64, 48, 16, len(out))
    assert info.frames == len(out) > 8


@pytest.mark.parametrize("cut", [1, 100])
def test_verify_refuses_a_file_missing_its_last_bytes(
    tmp_path: Path, clip16: tuple[Path, list[np.ndarray]], cut: int
) -> None:
    data = clip16[0].read_bytes()
    short = tmp_path / "short.mp4"
    short.write_bytes(data[:-cut])
    with pytest.raises(VideoError):
        verify(short, 128, 96, 8, 16)


@pytest.mark.skipif(
    not hasattr(fcntl, "F_GETPIPE_SZ")
    or int(Path("/proc/sys/fs/pipe-max-size").read_text()) < PIPE_BYTES,
    reason="pipes cannot be widened to PIPE_BYTES here",
)
def test_the_encoder_pipe_holds_whole_frames(tmp_path: Path) -> None:
    """A 512x512 frame crosses to ffmpeg in one write, not six (BENCHMARKS.md: motion)."""
    with Mp4Writer(tmp_path / "pipe.mp4", 512, 512, 24) as writer:
        assert writer._proc.stdin is not None
        held = fcntl.fcntl(writer._proc.stdin.fileno(), fcntl.F_GETPIPE_SZ)
        writer.write(np.zeros((768, 512), np.uint8))
        writer.finish()
    assert held >= PIPE_BYTES > 512 * 768
    assert probe(tmp_path / "pipe.mp4").frames == 1
