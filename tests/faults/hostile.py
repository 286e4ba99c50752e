"""A corpus of hostile inputs, generated: what shares and users really drop.

Each item says what the daemon must do with it: ``video`` (an odd but valid picture),
``failed`` (never a usable image: quarantined with a reason), ``either`` (a damaged
file some decoders can still show) or ``ignored`` (not a regular file: it must stay
where it is, without hanging or crashing anything).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from conftest import picture


@dataclass(frozen=True)
class Item:
    path: Path
    expect: str  # video | failed | either | ignored
    sha256: str | None  # None for things that are not regular files


def _encode(
    fmt: str, seed: int, mode: str = "RGB", size: tuple[int, int] = (200, 150), **save: Any
) -> bytes:
    image = Image.fromarray(picture(*size, seed=seed))
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(side: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def _bad_crc_png(seed: int) -> bytes:
    data = bytearray(_encode("PNG", seed))
    data[29] ^= 0xFF  # the IHDR chunk's checksum
    return bytes(data)


def _exif_jpeg(seed: int, exif: bytes) -> bytes:
    """A JPEG with an APP1 EXIF segment holding ``exif`` as it is, however broken."""
    plain = _encode("JPEG", seed)
    segment = b"Exif\0\0" + exif
    app1 = b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment
    return plain[:2] + app1 + plain[2:]


def _animated(fmt: str, seed: int) -> bytes:
    frames = [Image.fromarray(picture(160, 120, seed=seed + k)) for k in range(3)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0
    )
    return buffer.getvalue()


def _sixteen_bit(fmt: str, seed: int) -> bytes:
    grey = picture(200, 150, seed=seed)[..., 0].astype(np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format=fmt)  # mode I;16
    return buffer.getvalue()


FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF"}


def contents() -> list[tuple[bytes, str, str]]:
    """(file name as bytes, expected outcome, content) for every regular file."""
    seed = 1000
    items: list[tuple[bytes, str, bytes]] = []

    def add(name: str | bytes, expect: str, data: bytes) -> None:
        raw = name if isinstance(name, bytes) else name.encode()
        items.append((raw, expect, data))

    for ext, fmt in FORMATS.items():
        for cut in ("header", "half", "tail"):
            seed += 1
            data = _encode(fmt, seed)
            keep = {"header": 40, "half": len(data) // 2, "tail": len(data) - 24}[cut]
            # A cut tail may still decode in formats that keep pixels first.
            expect = "failed" if cut != "tail" else "either"
            add(f"truncated-{cut}.{ext}", expect, data[:keep])
    add("random.jpg", "failed", os.urandom(4096))
    add("text.png", "failed", b"this is not a picture\n" * 20)
    add("empty.jpg", "failed", b"")
    add("pdf.jpg", "failed", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"0" * 500)
    seed += 1
    add("bad-crc.png", "failed", _bad_crc_png(seed))
    seed += 1
    damaged = bytearray(_encode("JPEG", seed, size=(400, 300)))
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = os.urandom(64)
    add("garbage-in-middle.jpg", "either", bytes(damaged))
    add("bomb.png", "failed", png_bomb())
    add("bomb-wide.png", "failed", png_bomb(60_000))

    def valid(name: str | bytes, fmt: str = "JPEG", **kwargs: Any) -> None:
        nonlocal seed
        seed += 1
        add(name, "video", _encode(fmt, seed, **kwargs))

    valid(b"caf\xe9.jpg")  # Latin-1, as old Windows and Samba clients write it
    valid(b"bad\xff\xfe.png", "PNG")
    valid("a" * 251 + ".jpg")  # 255 bytes, the most a name can hold
    valid("\u00e9" * 125 + ".jpg")  # 254 bytes of two-byte characters
    valid("new\nline.jpg")
    valid("tab\there.jpg")
    valid("bell\x07.jpg")
    valid("esc\x1b[31mred.jpg")
    valid("  spaces  .jpg")
    valid("png-named.jpg", "PNG")
    valid("progressive.jpg", progressive=True)
    valid("grey.png", "PNG", mode="L")
    valid("palette.gif", "GIF", mode="P")
    valid("alpha.png", "PNG", mode="RGBA")
    valid("cmyk.jpg", mode="CMYK")
    valid("cmyk.tiff", "TIFF", mode="CMYK")
    valid("tiny.png", "PNG", size=(1, 1))
    valid("wide.png", "PNG", size=(2000, 8))
    for fmt, ext in (("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp")):
        seed += 1
        add(f"animated.{ext}", "video", _animated(fmt, seed))
    for fmt, ext in (("PNG", "png"), ("TIFF", "tiff")):
        seed += 1
        add(f"sixteen-bit.{ext}", "video", _sixteen_bit(fmt, seed))
    for name, exif in (
        ("exif-garbage.jpg", os.urandom(300)),
        ("exif-short.jpg", b"II*\0"),
        ("exif-huge-count.jpg", b"MM\0*\0\0\0\x08\xff\xff" + b"\0" * 40),
    ):
        seed += 1
        add(name, "either", _exif_jpeg(seed, exif))
    seed += 1
    add("exif-orientation-9.jpg", "video", _orientation(seed, 9))
    return items


def _orientation(seed: int, value: int) -> bytes:
    image = Image.fromarray(picture(200, 150, seed=seed))
    exif = Image.Exif()
    exif[0x0112] = value
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def build(inbox: Path) -> list[Item]:
    """Write the corpus into ``inbox``; every item with what must become of it."""
    inbox_raw = os.fsencode(inbox)
    items = []
    for name, expect, data in contents():
        path = Path(os.fsdecode(os.path.join(inbox_raw, b"hostile", name)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        items.append(Item(path, expect, hashlib.sha256(data).hexdigest()))
    odd = inbox / "odd"
    odd.mkdir()
    for name in ("fifo.jpg", "deeper/fifo.png"):
        (odd / name).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(odd / name)
        items.append(Item(odd / name, "ignored", None))
    (odd / "folder.jpg").mkdir()
    items.append(Item(odd / "folder.jpg", "ignored", None))
    inner = odd / "folder.png" / "inside.jpg"
    inner.parent.mkdir()
    inner.write_bytes(_encode("JPEG", 4242))
    items.append(Item(inner, "video", hashlib.sha256(inner.read_bytes()).hexdigest()))
    os.symlink("loop.jpg", odd / "loop.jpg")
    os.symlink("ping.png", odd / "pong.png")
    os.symlink("pong.png", odd / "ping.png")
    os.symlink(".", odd / "loopdir.jpg")
    outside = inbox.parent / "outside.jpg"
    outside.write_bytes(_encode("JPEG", 4343))
    os.symlink(outside, odd / "points-outside.jpg")
    for name in ("loop.jpg", "pong.png", "ping.png", "loopdir.jpg", "points-outside.jpg"):
        items.append(Item(odd / name, "ignored", None))
    return items
