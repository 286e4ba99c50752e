"""The CPU motion engine: Ken Burns zoom and pan, easing, fades, re-timing."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, picture
from daemon.engines.base import Clip, JobInterrupted, RenderRequest
from daemon.engines.motion import EASINGS, MotionEngine, apply_fades, window
from daemon.rules import MotionSettings, ResolvedParams
from daemon.sizing import frame_size

EFFECTS = ["zoom_in", "zoom_out", "pan_left", "pan_right", "pan_up", "pan_down"]


def render(
    image: Image.Image,
    effect: str = "zoom_in",
    zoom: float = 1.5,
    easing: str = "linear",
    frames: int = 8,
    fps: int = 8,
    resolution: int = 256,
    aspect: str = "square",
    checkpoint: Callable[[float], None] | None = None,
    **motion: object,
) -> Clip:
    params = ResolvedParams(resolution=resolution, frames=frames, fps=fps, steps=30, guidance=9.0)
    settings = MotionSettings(effect=effect, zoom=zoom, easing=easing, **motion)
    extra = {"checkpoint": checkpoint} if checkpoint else {}
    request = RenderRequest(
        image=image,
        params=params,
        aspect=aspect,
        prompt="p",
        negative_prompt="",
        model=None,
        motion=settings,
        **extra,
    )
    return MotionEngine().render(request)


def disc_image(size: int = 384, radius: int = 40) -> Image.Image:
    """Mid-grey with one white disc in the centre: its centroid tracks the camera."""
    y, x = np.mgrid[0:size, 0:size]
    array = np.full((size, size, 3), 120, np.uint8)
    array[(x - size / 2 + 0.5) ** 2 + (y - size / 2 + 0.5) ** 2 < radius**2] = 255
    return Image.fromarray(array)


def disc(frame: np.ndarray) -> tuple[float, float, int]:
    """(x, y) centroid and area of the white disc in a frame."""
    mask = frame.min(axis=2) > 190
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean()), int(mask.sum())


def bright_image(width: int = 320, height: int = 240) -> Image.Image:
    """Structure everywhere, but no pixel darker than 60 in any channel."""
    array = 60 + picture(width, height).astype(np.float64) * (195 / 255)
    return Image.fromarray(array.round().astype(np.uint8))


@pytest.mark.parametrize("effect", EFFECTS)
def test_every_effect_shape_and_motion(effect: str) -> None:
    clip = render(bright_image(), effect=effect, frames=8)
    assert (clip.width, clip.height, clip.fps) == (256, 256, 8)
    assert len(clip.frames) == 8
    for frame in clip.frames:
        assert frame.shape == (256, 256, 3)
        assert frame.dtype == np.uint8
    diffs = [
        np.abs(a.astype(int) - b.astype(int)).mean() for a, b in itertools.pairwise(clip.frames)
    ]
    assert all(d > 0.1 for d in diffs), diffs  # every frame moves
    total = np.abs(clip.frames[0].astype(int) - clip.frames[-1].astype(int)).mean()
    assert total > 5
    assert max(diffs) < total  # small steps, no jumps


@pytest.mark.parametrize("effect", EFFECTS)
@pytest.mark.parametrize("aspect", ["square", "source"])
def test_no_black_borders(effect: str, aspect: str) -> None:
    image = bright_image(320, 180)
    assert np.asarray(image).min() >= 60
    clip = render(image, effect=effect, zoom=2.0, aspect=aspect, frames=8, easing="ease_in")
    for index, frame in enumerate(clip.frames):
        brightest = frame.max(axis=2).astype(int)
        edges = {
            "top": brightest[0],
            "bottom": brightest[-1],
            "left": brightest[:, 0],
            "right": brightest[:, -1],
        }
        for name, line in edges.items():
            assert line.min() > 40, f"frame {index} {name} edge dips to {line.min()}"
            assert line.mean() > 60, f"frame {index} {name} edge mean {line.mean()}"


@pytest.mark.parametrize(
    ("effect", "axis", "start", "end"),
    [
        # 384 px source, zoom 1.5 -> 384 px working image, 256 px window: 128 px of travel.
        ("pan_right", 0, 192, 64),  # camera moves right: content moves left
        ("pan_left", 0, 64, 192),
        ("pan_down", 1, 192, 64),
        ("pan_up", 1, 64, 192),
    ],
)
def test_pan_direction_and_distance(effect: str, axis: int, start: float, end: float) -> None:
    clip = render(disc_image(), effect=effect, zoom=1.5, frames=8)
    first, last = disc(clip.frames[0]), disc(clip.frames[-1])
    assert first[axis] == pytest.approx(start, abs=1.5)
    assert last[axis] == pytest.approx(end, abs=1.5)
    # The other axis stays centred; the disc keeps its size.
    assert first[1 - axis] == pytest.approx(128, abs=1.5)
    assert last[1 - axis] == pytest.approx(128, abs=1.5)
    assert last[2] == pytest.approx(first[2], rel=0.05)


def test_pan_right_linear_steps_are_even() -> None:
    clip = render(disc_image(), effect="pan_right", zoom=1.5, frames=9, easing="linear")
    xs = np.array([disc(f)[0] for f in clip.frames])
    steps = np.diff(xs)
    assert np.all(steps < 0)
    assert steps == pytest.approx(np.full(8, -16.0), abs=1.0)


def test_zoom_in_magnifies_the_centre() -> None:
    clip = render(disc_image(), effect="zoom_in", zoom=1.5, frames=8)
    x0, y0, area0 = disc(clip.frames[0])
    x1, y1, area1 = disc(clip.frames[-1])
    # Scale 1.5 -> area x2.25; the disc stays centred.
    assert area1 / area0 == pytest.approx(2.25, rel=0.06)
    assert (x0, y0, x1, y1) == pytest.approx((128, 128, 128, 128), abs=1.0)
    areas = [disc(f)[2] for f in clip.frames]
    assert areas == sorted(areas)


def test_zoom_out_shrinks() -> None:
    clip = render(disc_image(), effect="zoom_out", zoom=1.5, frames=8)
    areas = [disc(f)[2] for f in clip.frames]
    assert areas == sorted(areas, reverse=True)
    assert areas[0] / areas[-1] == pytest.approx(2.25, rel=0.06)


def test_zoom_in_first_frame_is_the_whole_crop() -> None:
    source = Image.fromarray(picture(256, 256))
    clip = render(source, effect="zoom_in", zoom=1.25, frames=8)
    diff = np.abs(clip.frames[0].astype(int) - np.asarray(source).astype(int))
    assert diff.mean() < 4


def test_square_crop_is_centred() -> None:
    # 512x256 source: the square crop is its middle half; mark the outer quarters red.
    array = np.full((256, 512, 3), 150, np.uint8)
    array[:, :128] = (255, 0, 0)
    array[:, 384:] = (255, 0, 0)
    clip = render(Image.fromarray(array), effect="zoom_in", zoom=1.25, frames=8)
    first = clip.frames[0].astype(int)
    assert np.abs(first[:, 2:-2] - 150).max() <= 3
    assert np.abs(first[:, 0] - 150).max() <= 30


def test_ease_in_out_is_slow_at_the_ends() -> None:
    clip = render(disc_image(), effect="pan_right", zoom=1.5, frames=12, easing="ease_in_out")
    xs = np.array([disc(f)[0] for f in clip.frames])
    speed = np.abs(np.diff(xs))
    middle = speed[len(speed) // 2]
    assert speed[0] < middle / 3
    assert speed[-1] < middle / 3
    assert speed.max() <= 1.6 * (xs[0] - xs[-1]) / (len(xs) - 1)  # smoothstep peaks at 1.5x
    assert xs[0] == pytest.approx(192, abs=1.5) and xs[-1] == pytest.approx(64, abs=1.5)


def test_ease_in_accelerates() -> None:
    clip = render(disc_image(), effect="pan_left", zoom=1.5, frames=8, easing="ease_in")
    speed = np.diff([disc(f)[0] for f in clip.frames])
    assert np.all(np.diff(speed) > 0)


def test_easings_end_points() -> None:
    for name, ease in EASINGS.items():
        assert ease(0.0) == 0.0 and ease(1.0) == 1.0, name
        assert 0 < ease(0.5) < 1
    assert EASINGS["ease_in"](0.25) < 0.25 < EASINGS["ease_out"](0.25)


@pytest.mark.parametrize("effect", EFFECTS)
def test_window_stays_inside(effect: str) -> None:
    settings = MotionSettings(effect=effect, zoom=1.75)
    for progress in np.linspace(0, 1, 11):
        left, top, right, bottom = window(settings, float(progress), 448, 336)
        assert left >= 0 and top >= 0 and right <= 448 + 1e-9 and bottom <= 336 + 1e-9
        assert (right - left) / (bottom - top) == pytest.approx(448 / 336)


def test_fade_in_and_out() -> None:
    image = bright_image()
    plain = render(image, effect="zoom_in", frames=16, fps=8)
    faded = render(image, effect="zoom_in", frames=16, fps=8, fade_in=0.5, fade_out=0.25)
    assert faded.frames[0].mean() < 2
    assert faded.frames[-1].mean() < 2
    # fade_in 0.5 s at 8 fps = 4 frames: gains 0, 1/4, 1/2, 3/4; fade_out 2 frames: 1/2, 0.
    for index, gain in [(1, 0.25), (2, 0.5), (3, 0.75), (14, 0.5)]:
        expected = (plain.frames[index].astype(np.float32) * gain).round()
        assert np.abs(faded.frames[index] - expected).max() <= 1, index
    for index in range(4, 14):
        assert np.array_equal(faded.frames[index], plain.frames[index])
    means = [f.mean() for f in faded.frames[:5]]
    assert means == sorted(means)


def test_apply_fades_longer_than_clip() -> None:
    frames = [np.full((4, 4, 3), 200, np.uint8) for _ in range(4)]
    out = apply_fades(frames, 8, MotionSettings(fade_in=5.0))
    assert [int(f[0, 0, 0]) for f in out] == [0, 50, 100, 150]


def test_source_aspect_is_not_square() -> None:
    clip = render(Image.fromarray(picture(640, 360)), aspect="source", frames=8)
    expected = frame_size(256, "source", 640, 360)
    assert expected == (342, 192)
    assert (clip.width, clip.height) == expected
    assert all(f.shape == (192, 342, 3) for f in clip.frames)


def test_render_is_deterministic() -> None:
    image = bright_image()
    a = render(image, effect="pan_up", frames=8)
    b = render(image, effect="pan_up", frames=8)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))


def test_interpolate_fps() -> None:
    clip = render(disc_image(), effect="pan_right", frames=8, fps=8, interpolate_fps=24)
    assert clip.fps == 24
    assert len(clip.frames) > 16
    assert all(f.shape == (256, 256, 3) and f.dtype == np.uint8 for f in clip.frames)
    xs = [disc(f)[0] for f in clip.frames]
    assert xs[0] == pytest.approx(192, abs=2)
    assert xs[0] > xs[len(xs) // 2] > xs[-1]


def test_interpolate_fps_not_above_fps_is_ignored() -> None:
    clip = render(bright_image(), frames=8, fps=12, interpolate_fps=8)
    assert (clip.fps, len(clip.frames)) == (12, 8)


def test_checkpoint_fractions() -> None:
    seen: list[float] = []
    render(bright_image(), frames=8, checkpoint=seen.append)
    assert seen == [i / 8 for i in range(8)]
    seen.clear()
    # interpolate_fps renders natively: 1 s at 16 fps is 16 frames, each one checked.
    render(bright_image(), frames=8, checkpoint=seen.append, interpolate_fps=16)
    assert seen == [i / 16 for i in range(16)]
    assert all(b > a for a, b in itertools.pairwise(seen))


def test_checkpoint_interrupt_stops_the_render() -> None:
    seen: list[float] = []

    def checkpoint(done: float) -> None:
        seen.append(done)
        if done >= 0.5:
            raise JobInterrupted("stopping")

    with pytest.raises(JobInterrupted, match="stopping"):
        render(bright_image(), frames=8, checkpoint=checkpoint)
    assert seen == [0.0, 0.125, 0.25, 0.375, 0.5]


def test_motion_module_does_not_import_torch(tmp_path: Path) -> None:
    # Importable stand-ins, so the check can fail even where torch is not installed.
    for name in ("torch", "diffusers", "transformers"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    code = (
        "import sys, importlib.util\n"
        "assert importlib.util.find_spec('torch') is not None\n"
        "import daemon.engines.motion, daemon.engines\n"
        "from daemon.engines import EngineOptions, get_engine\n"
        "get_engine('motion', {}, EngineOptions())\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
