"""Encode time and file size of our 32-frame 512p clip at three x264 presets.

Run from the repository root: `.venv/bin/python benchmarks/x264_presets.py`. Why i2vd
keeps `veryfast`: the faster presets save little time for much larger files.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from conftest import picture  # noqa: E402
from daemon.engines import RenderRequest  # noqa: E402
from daemon.engines.motion import MotionEngine  # noqa: E402
from daemon.rules import MotionSettings, ResolvedParams  # noqa: E402


def main() -> None:
    request = RenderRequest(
        image=Image.fromarray(picture(1024, 768)),
        params=ResolvedParams(resolution=512, frames=32, fps=8, steps=30, guidance=9.0),
        aspect="square",
        prompt="",
        negative_prompt="",
        model=None,
        motion=MotionSettings(fade_in=0.25, fade_out=0.25),
    )
    frames = MotionEngine().render(request).frames
    print("| preset | encode ms (median of 5) | file KiB |\n| --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "clip.mp4"
        for preset in ("veryfast", "superfast", "ultrafast"):
            times = []
            for _ in range(5):
                start = time.perf_counter()
                writer = imageio_ffmpeg.write_frames(
                    str(out),
                    (512, 512),
                    fps=8,
                    codec="libx264",
                    pix_fmt_out="yuv420p",
                    macro_block_size=1,
                    quality=None,
                    ffmpeg_log_level="error",
                    output_params=["-crf", "18", "-preset", preset, "-movflags", "+faststart"],
                )
                writer.send(None)
                for frame in frames:
                    writer.send(frame)
                writer.close()
                times.append(time.perf_counter() - start)
            size = out.stat().st_size // 1024
            print(f"| {preset} | {statistics.median(times) * 1000:.0f} | {size} |")


if __name__ == "__main__":
    main()
