"""x264 settings for i2vd's clips: encode speed, file size and PSNR, measured side by side.

Run from the repository root: `.venv/bin/python benchmarks/x264_presets.py [--rounds N]`.
The frames are rendered once (the shipped motion rule's zoom on a 1024x768 test photo,
512x512, 96 frames: 4 s at 24 fps) and kept as I420 pictures, so only x264 is timed: each
candidate encodes them through ffmpeg's stdin in alternating rounds; the table gives the
median frames/s, its ratio to the first row, the file size and the PSNR of the decoded
luma against the frames sent. The chosen settings are ``daemon.video.EncoderSettings``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from conftest import picture  # noqa: E402
from daemon.engines import RenderRequest  # noqa: E402
from daemon.engines.motion import MotionEngine  # noqa: E402
from daemon.rules import MotionSettings, ResolvedParams  # noqa: E402
from daemon.video import EncoderSettings, encode_mp4, ffmpeg_exe  # noqa: E402

TUNED = "bframes=3:mbtree=1:rc-lookahead=10:deblock=1,0,0:aq-mode=1"
CANDIDATES = {
    "veryfast (before)": EncoderSettings(preset="veryfast", x264_params=""),
    "superfast": EncoderSettings(preset="superfast", x264_params=""),
    "ultrafast": EncoderSettings(preset="ultrafast", x264_params=""),
    "ultrafast tuned": EncoderSettings(preset="ultrafast", x264_params=TUNED),
    "ultrafast tuned + cabac": EncoderSettings(preset="ultrafast", x264_params=TUNED + ":cabac=1"),
    "ultrafast tuned + cabac, aq-mode=0": EncoderSettings(
        preset="ultrafast", x264_params=TUNED.replace("aq-mode=1", "aq-mode=0") + ":cabac=1"
    ),
    "ultrafast tuned + cabac, subme=2": EncoderSettings(
        preset="ultrafast", x264_params=TUNED + ":cabac=1:subme=2"
    ),
}


def frames_i420(side: int, count: int, fps: int) -> list[np.ndarray]:
    request = RenderRequest(
        image=Image.fromarray(picture(1024, 768, seed=7)),
        params=ResolvedParams(resolution=side, frames=16, fps=8, steps=30, guidance=9.0),
        aspect="square",
        prompt="",
        negative_prompt="",
        model=None,
        motion=MotionSettings(fps=fps, duration=count / fps, fade_out=0.5),
    )
    return list(MotionEngine().stream(request).frames)


def luma_psnr(path: Path, sent: list[np.ndarray], side: int) -> float:
    raw = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "yuv420p",
         "pipe:1"], capture_output=True, check=True,
    ).stdout  # fmt: skip
    decoded = np.frombuffer(raw, np.uint8).reshape(len(sent), side * 3 // 2, side)
    errors = [
        np.mean((d[:side].astype(np.float64) - s[:side]) ** 2)
        for d, s in zip(decoded, sent, strict=True)
    ]
    return float(10 * np.log10(255**2 / np.mean(errors)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    fps, count = 24, 96
    sent = frames_i420(args.side, count, fps)
    times: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "clip.mp4"
        encode_mp4(sent, out, fps)  # warm: first ffmpeg start, page cache
        for index in range(args.rounds):
            names = list(CANDIDATES)
            for name in names if index % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                encode_mp4(sent, out, fps, settings=CANDIDATES[name])
                times[name].append(time.perf_counter() - start)
        base = count / statistics.median(next(iter(times.values())))
        print(f"{args.side}x{args.side}, {count} frames, {args.rounds} alternating rounds, CRF 18")
        print("\n| settings | frames/s | vs first | KiB | luma PSNR dB |")
        print("| --- | --- | --- | --- | --- |")
        for name, settings in CANDIDATES.items():
            encode_mp4(sent, out, fps, settings=settings)
            speed = count / statistics.median(times[name])
            print(
                f"| {name} | {speed:.0f} | {speed / base:.2f} | {out.stat().st_size // 1024} "
                f"| {luma_psnr(out, sent, args.side):.2f} |"
            )


if __name__ == "__main__":
    main()
