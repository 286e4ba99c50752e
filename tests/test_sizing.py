"""What resolution and aspect mean in pixels."""

from __future__ import annotations

import pytest

from daemon.sizing import MAX_ASPECT, crop_box, frame_size


@pytest.mark.parametrize("resolution", [256, 512, 768, 1024])
def test_square_is_n_by_n(resolution: int) -> None:
    assert frame_size(resolution, "square", 640, 480) == (resolution, resolution)
    assert frame_size(resolution, "square", 100, 3000) == (resolution, resolution)


@pytest.mark.parametrize(
    ("src_w", "src_h", "resolution"),
    [
        (640, 480, 512),
        (480, 640, 512),
        (1920, 1080, 768),
        (640, 360, 256),
        (1000, 1000, 512),
        (3000, 2000, 1024),
    ],
)
def test_source_aspect_keeps_ratio_at_the_pixel_budget(
    src_w: int, src_h: int, resolution: int
) -> None:
    width, height = frame_size(resolution, "source", src_w, src_h)
    assert width % 2 == 0 and height % 2 == 0
    assert abs(width * height / resolution**2 - 1) < 0.02
    assert abs((width / height) / (src_w / src_h) - 1) < 0.02


def test_source_640x480_at_512_exact() -> None:
    assert frame_size(512, "source", 640, 480) == (592, 444)
    assert frame_size(512, "source", 480, 640) == (444, 592)


def test_multiple_of_16() -> None:
    width, height = frame_size(512, "source", 640, 480, multiple=16)
    assert (width, height) == (592, 448)
    for src in ((1920, 1080), (333, 777), (1000, 999)):
        w, h = frame_size(768, "source", *src, multiple=16)
        assert w % 16 == 0 and h % 16 == 0
        assert abs(w * h / 768**2 - 1) < 0.06
    assert frame_size(500, "square", 10, 10, multiple=16) == (496, 496)


@pytest.mark.parametrize(("src_w", "src_h"), [(10000, 100), (100, 10000), (40000, 10)])
def test_extreme_panorama_is_clamped(src_w: int, src_h: int) -> None:
    width, height = frame_size(512, "source", src_w, src_h)
    long_side, short_side = max(width, height), min(width, height)
    assert long_side / short_side == pytest.approx(MAX_ASPECT, rel=0.01)
    assert (long_side, short_side) == (1024, 256)
    assert (width > height) == (src_w > src_h)


def test_never_below_the_multiple() -> None:
    width, height = frame_size(2, "source", 4000, 1000)
    assert width >= 2 and height >= 2


@pytest.mark.parametrize(
    ("src", "out", "expected"),
    [
        ((640, 480), (256, 256), (80.0, 0.0, 560.0, 480.0)),
        ((480, 640), (256, 256), (0.0, 80.0, 480.0, 560.0)),
        ((640, 480), (592, 444), None),
        ((1000, 500), (400, 300), None),
        ((300, 600), (160, 90), None),
        ((512, 512), (512, 512), (0.0, 0.0, 512.0, 512.0)),
    ],
)
def test_crop_box_is_centred_with_output_aspect(
    src: tuple[int, int], out: tuple[int, int], expected: tuple | None
) -> None:
    left, top, right, bottom = crop_box(*src, *out)
    if expected is not None:
        assert (left, top, right, bottom) == pytest.approx(expected)
    crop_w, crop_h = right - left, bottom - top
    assert crop_w / crop_h == pytest.approx(out[0] / out[1], rel=1e-9)
    # Inside the source, centred, and as large as possible (touches two opposite edges).
    assert left >= 0 and top >= 0 and right <= src[0] + 1e-9 and bottom <= src[1] + 1e-9
    assert left == pytest.approx(src[0] - right)
    assert top == pytest.approx(src[1] - bottom)
    assert crop_w == pytest.approx(src[0]) or crop_h == pytest.approx(src[1])
