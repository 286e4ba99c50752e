"""Reading dropped stills: formats, modes, EXIF orientation, and damaged files."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from conftest import make_image, picture
from daemon.digests import sha256_of
from daemon.images import BadImage, check_image, decode_image, read_facts, to_rgb


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def marked(width: int = 64, height: int = 32) -> Image.Image:
    """Mid-grey with a red block in the top-left corner and a blue one in the bottom-left."""
    array = np.full((height, width, 3), 128, np.uint8)
    array[:8, :8] = (255, 0, 0)
    array[-8:, :8] = (0, 0, 255)
    return Image.fromarray(array)


def close(actual: np.ndarray, expected: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, dtype=int) - expected) <= tol))


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.jpg", "JPEG"), ("a.png", "PNG"), ("a.webp", "WEBP"), ("a.bmp", "BMP"), ("a.tif", "TIFF")],
)
def test_read_common_formats(tmp_path: Path, name: str, fmt: str) -> None:
    path = make_image(tmp_path / name, 96, 64, fmt=fmt)
    data = path.read_bytes()
    assert sha256_of(data) == hashlib.sha256(data).hexdigest()
    check_image(data)
    image = decode_image(data)
    assert (image.width, image.height) == (96, 64)
    assert image.mode == "RGB"
    source = picture(96, 64).astype(int)
    lossless = fmt in ("PNG", "BMP", "TIFF")
    assert np.abs(pixels(image) - source).mean() < (0.01 if lossless else 8)


def test_png_is_lossless(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.png", 40, 30)
    assert np.array_equal(pixels(decode_image(path.read_bytes())), picture(40, 30).astype(int))


@pytest.mark.parametrize(
    ("orientation", "corner_red", "corner_blue"),
    [
        # 6: rotate 90° clockwise to display: top-left goes to top-right.
        (6, (0, -1), (0, 0)),
        # 8: rotate 90° counter-clockwise: top-left goes to bottom-left.
        (8, (-1, 0), (-1, -1)),
        # 3: rotate 180°: top-left goes to bottom-right.
        (3, (-1, -1), (0, -1)),
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, corner_red: tuple[int, int], corner_blue: tuple[int, int]
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(marked(64, 32), "JPEG", exif=exif, quality=95)
    image = decode_image(data)
    expected_size = (64, 32) if orientation == 3 else (32, 64)
    assert image.size == expected_size
    array = pixels(image)

    def corner(where: tuple[int, int]) -> np.ndarray:
        rows = slice(0, 4) if where[0] == 0 else slice(-4, None)
        cols = slice(0, 4) if where[1] == 0 else slice(-4, None)
        return array[rows, cols].reshape(-1, 3).mean(axis=0)

    assert close(corner(corner_red), (255, 0, 0), 30)
    assert close(corner(corner_blue), (0, 0, 255), 30)
    if corner_red != (0, 0):
        assert not close(corner((0, 0)), (255, 0, 0), 60)  # red really moved


def test_no_exif_keeps_orientation() -> None:
    image = decode_image(encode(marked(64, 32), "JPEG", quality=95))
    assert image.size == (64, 32)
    assert close(pixels(image)[:4, :4].reshape(-1, 3).mean(axis=0), (255, 0, 0), 30)


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (48, 24), (0, 0, 0, 0))
    cmyk.paste((255, 0, 0, 0), (0, 0, 24, 24))  # pure cyan on the left, white on the right
    image = decode_image(encode(cmyk, "JPEG", quality=95))
    assert image.size == (48, 24)
    array = pixels(image)
    assert close(array[12, 6], (0, 255, 255))
    assert close(array[12, 40], (255, 255, 255))


def test_palette_png() -> None:
    rgb = Image.fromarray(picture(40, 30))
    pal = rgb.quantize(colors=16)
    assert pal.mode == "P"
    image = decode_image(encode(pal, "PNG"))
    assert image.size == (40, 30)
    assert np.array_equal(pixels(image), np.asarray(pal.convert("RGB")).astype(int))


def test_palette_png_with_transparency_becomes_white() -> None:
    pal = Image.new("P", (20, 10), 0)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * (254 * 3))
    pal.paste(1, (10, 0, 20, 10))  # right half: index 1, reddish
    data = encode(pal, "PNG", transparency=0)  # index 0 (black) is transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    array = pixels(decode_image(data))
    assert array.shape == (10, 20, 3)
    assert np.all(array[:, :10] == 255)  # transparent black shows white, not black
    assert np.all(array[:, 10:] == (200, 30, 30))


def test_rgb_png_with_transparency_key_becomes_white() -> None:
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, 10:] = (10, 200, 10)
    data = encode(Image.fromarray(array), "PNG", transparency=(0, 0, 0))
    out = pixels(decode_image(data))
    assert np.all(out[:, :10] == 255)
    assert np.all(out[:, 10:] == (10, 200, 10))


def test_16bit_grey_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (8, 1))
    source = Image.fromarray(ramp)
    data = encode(source, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = decode_image(data)
    assert image.size == (64, 8)
    array = pixels(image)
    assert np.all(array[..., 0] == array[..., 1]) and np.all(array[..., 1] == array[..., 2])
    row = array[0, :, 0]
    assert row[0] == 0
    assert row[-1] == 255
    assert 120 <= row[32] <= 135
    assert np.all(np.diff(row) >= 0)
    assert len(np.unique(row)) > 50  # a real gradient, not a few clipped levels
    assert np.mean(row == 255) < 0.05


def test_16bit_flat_grey_keeps_its_level() -> None:
    flat = Image.fromarray(np.full((8, 8), 128 * 257, np.uint16))
    array = pixels(decode_image(encode(flat, "PNG")))
    assert np.all(np.abs(array - 128) <= 1)


def test_rgba_png_transparent_becomes_white() -> None:
    array = np.zeros((10, 30, 4), np.uint8)
    array[:, :10] = (0, 0, 0, 0)  # fully transparent black
    array[:, 10:20] = (255, 0, 0, 128)  # half-transparent red
    array[:, 20:] = (0, 0, 255, 255)  # opaque blue
    image = decode_image(encode(Image.fromarray(array, "RGBA"), "PNG"))
    out = pixels(image)
    assert out.shape == (10, 30, 3)
    assert np.all(out[:, :10] == 255)
    assert close(out[5, 15], (255, 127, 127), 2)
    assert np.all(out[:, 20:] == (0, 0, 255))


def test_la_png() -> None:
    array = np.zeros((6, 12, 2), np.uint8)
    array[:, :6] = (0, 0)  # transparent
    array[:, 6:] = (40, 255)  # opaque dark grey
    image = decode_image(encode(Image.fromarray(array, "LA"), "PNG"))
    out = pixels(image)
    assert out.shape == (6, 12, 3)
    assert np.all(out[:, :6] == 255)
    assert np.all(out[:, 6:] == 40)


@pytest.mark.parametrize("mode", ["L", "1", "I", "F", "RGB", "YCbCr", "HSV"])
def test_to_rgb_handles_modes(mode: str) -> None:
    base = Image.fromarray(picture(16, 8))
    image = base.convert(mode) if mode != "HSV" else base.convert("HSV")
    out = to_rgb(image)
    assert out.mode == "RGB"
    assert out.size == (16, 8)


def test_truncated_jpeg(tmp_path: Path) -> None:
    full = make_image(tmp_path / "full.jpg", 200, 150, quality=90).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(BadImage) as err:
        decode_image(cut.read_bytes())
    assert "damaged or cut short" in str(err.value)
    assert "again" in err.value.hint


def test_truncated_png(tmp_path: Path) -> None:
    full = make_image(tmp_path / "full.png", 200, 150).read_bytes()
    with pytest.raises(BadImage) as err:
        decode_image(full[: len(full) // 2])
    assert "damaged or cut short" in str(err.value)
    assert err.value.hint


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImage) as err:
        check_image(path.read_bytes())
    assert "empty" in str(err.value)
    assert err.value.hint.strip()


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n", encoding="utf-8")
    with pytest.raises(BadImage) as err:
        check_image(path.read_bytes())
    assert "not an image" in str(err.value)
    assert "JPEG, PNG" in err.value.hint


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused() -> None:
    with pytest.raises(BadImage) as err:
        decode_image(_png_header_only(30000, 30000))
    assert "too large" in str(err.value)
    assert "200 megapixels" in err.value.hint


def test_bomb_warning_zone_is_refused_too() -> None:
    # Between 1x and 2x the limit Pillow only warns; i2vd refuses.
    with pytest.raises(BadImage, match="too large"):
        decode_image(_png_header_only(15000, 15000))


def test_min_side_decodes_a_large_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    data = make_image(tmp_path / "big.jpg", 2400, 1600).read_bytes()
    full = decode_image(data)
    reduced = decode_image(data, min_side=300)
    assert full.size == (2400, 1600)
    # 1/4 is the smallest DCT scale whose shorter side (400) still reaches 300.
    assert reduced.size == (600, 400)
    assert reduced.mode == "RGB"
    # Same picture: the reduced decode matches a downscale of the full one.
    expected = np.asarray(full.resize(reduced.size, Image.Resampling.BOX)).astype(int)
    assert np.abs(pixels(reduced) - expected).mean() < 6


def test_min_side_never_goes_below_the_request(tmp_path: Path) -> None:
    data = make_image(tmp_path / "small.jpg", 500, 400).read_bytes()
    assert decode_image(data, min_side=300).size == (500, 400)  # 1/2 would give 200 < 300


def test_rgb_input_is_returned_without_a_copy_and_stays_usable(tmp_path: Path) -> None:
    data = make_image(tmp_path / "a.png", 64, 48).read_bytes()
    image = decode_image(data)
    assert image.mode == "RGB"
    assert np.asarray(image).shape == (48, 64, 3)  # still open: no "closed image" error


@pytest.mark.parametrize("missing", [10, 1000, "half"])
def test_check_image_catches_a_cut_short_jpeg_at_reduced_scale(
    tmp_path: Path, missing: int | str
) -> None:
    full = make_image(tmp_path / "big.jpg", 2400, 1600).read_bytes()
    check_image(full)  # the whole file passes
    keep = len(full) // 2 if missing == "half" else len(full) - int(missing)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full[:keep])
    with pytest.raises(BadImage, match="damaged or cut short"):
        check_image(cut)


def _png_with_late_exif(array: np.ndarray, exif: Image.Exif) -> bytes:
    """A PNG whose eXIf chunk comes after the pixel data (allowed, and what some tools write)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", compress_level=1)
    plain = buffer.getvalue()
    raw = exif.tobytes().removeprefix(b"Exif\x00\x00")
    chunk = struct.pack(">I", len(raw)) + b"eXIf" + raw
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + raw))
    return plain[:-12] + chunk + plain[-12:]  # the last 12 bytes are the IEND chunk


@pytest.fixture
def png_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records calls of Pillow's PNG pixel loader (a spy: it still decodes)."""
    calls: list[int] = []
    original = PngImagePlugin.PngImageFile.load

    def load(self: PngImagePlugin.PngImageFile) -> Any:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load)
    return calls


def test_read_facts_of_a_png_without_exif_decodes_no_pixels(png_loads: list[int]) -> None:
    buffer = io.BytesIO()
    Image.fromarray(picture(400, 300)).save(buffer, "PNG")
    facts = read_facts(buffer.getvalue())
    assert (facts.width, facts.height, facts.description, facts.comment) == (400, 300, "", "")
    assert png_loads == []
    decode_image(buffer.getvalue())  # the one decode, for the engine (load() is re-entered)
    assert png_loads


def test_read_facts_finds_exif_after_the_pixels_without_decoding(
    png_loads: list[int], tmp_path: Path
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # turned a quarter: displayed 300 wide, 400 high
    exif[0x010E] = "written after the pixels"
    data = _png_with_late_exif(picture(400, 300), exif)
    path = tmp_path / "late.png"
    path.write_bytes(data)
    for source in (data, path):
        facts = read_facts(source)
        assert (facts.width, facts.height) == (300, 400)
        assert facts.description == "written after the pixels"
    assert png_loads == []
    # The full decode finds the same chunk and turns the picture the same way.
    assert decode_image(data).size == (300, 400)


def test_read_facts_of_a_png_cut_short_in_its_chunks() -> None:
    buffer = io.BytesIO()
    Image.fromarray(picture(64, 48)).save(buffer, "PNG")
    data = buffer.getvalue()
    facts = read_facts(data[: len(data) - 20])  # IEND and the end of the pixel data lost
    assert (facts.width, facts.height, facts.description) == (64, 48, "")
