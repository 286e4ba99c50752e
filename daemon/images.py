"""Reading a dropped still: facts from its header, one full decode, EXIF orientation, and every
mode to plain RGB."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .problems import Problem
from .prompts import ImageFacts, clean_text

# Decompression bombs are refused rather than allowed to eat the host's memory.
Image.MAX_IMAGE_PIXELS = 200_000_000


class BadImage(Problem):
    """The file is not a usable image. ``hint`` tells the user what to do about it.
    Permanent: the same bytes fail the same way."""


def check_image(source: bytes | Path) -> None:
    """Raise BadImage unless ``source`` decodes completely (intake's test).

    JPEGs are decoded at 1/8 scale: the decoder still reads every byte of the entropy-
    coded data, so a cut-short file is caught, at 1/64 of the memory of a full decode.
    Given a path, Pillow reads the header first, so a large non-image is refused cheaply.
    """
    _load(source, min_side=1).close()


def decode_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode to RGB with EXIF orientation applied; raise BadImage if unusable.

    With ``min_side``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose
    shorter side still has ``min_side`` pixels: a 12 MP photo for a 512p video then
    costs a sixteenth of the memory and a third of the time.
    """
    image = _load(data, min_side)
    ImageOps.exif_transpose(image, in_place=True)
    return to_rgb(image)


_EXIF_IFD = 0x8769
_IMAGE_DESCRIPTION = 0x010E
_USER_COMMENT = 0x9286
_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the picture a quarter


def read_facts(source: bytes | Path) -> ImageFacts:
    """Size as displayed (EXIF orientation applied) and the EXIF description and user
    comment, from the header alone. Never raises for a readable image: a damaged EXIF
    block just gives empty texts."""
    opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    with opened as image:
        width, height = image.size
        try:
            exif = _header_exif(image, source)
            if exif.get(_ORIENTATION) in _SWAPS_SIDES:
                width, height = height, width
            description = _exif_text(exif.get(_IMAGE_DESCRIPTION))
            comment = _user_comment(exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT))
        except Exception:  # EXIF in the wild is often malformed; it is only a hint
            description = comment = ""
    return ImageFacts(width, height, description, comment)


def _header_exif(image: Image.Image, source: bytes | Path) -> Image.Exif:
    """The image's EXIF without decoding its pixels. Pillow's PNG reader decodes the whole
    picture when no eXIf chunk comes before the pixel data (most PNGs have none at all):
    ~0.4 s for 12 MP. Here the chunks after the pixel data are walked instead."""
    if image.format != "PNG" or "exif" in image.info:
        return image.getexif()
    exif = Image.Exif()
    raw = _png_trailing_exif(source)
    if raw:
        exif.load(b"Exif\x00\x00" + raw)
    return exif


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_PNG_CHUNKS = 100_000  # a real PNG has tens; anything past this is not worth reading


def _png_trailing_exif(source: bytes | Path) -> bytes | None:
    """The payload of a PNG's eXIf chunk, found by reading chunk headers and seeking
    past their data (pixel data is skipped, never inflated); None if there is none."""
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as handle:
        if handle.read(8) != _PNG_SIGNATURE:
            return None
        for _ in range(_MAX_PNG_CHUNKS):
            header = handle.read(8)
            if len(header) < 8:
                return None
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"eXIf":
                data = handle.read(length)
                return data if len(data) == length else None
            if kind == b"IEND":
                return None
            handle.seek(length + 4, io.SEEK_CUR)  # the data and its CRC
    return None


def _exif_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return clean_text(value) if isinstance(value, str) else ""


def _user_comment(value: object) -> str:
    """EXIF UserComment starts with an 8-byte character-code header."""
    if not isinstance(value, bytes):
        return _exif_text(value)
    code, body = value[:8], value[8:]
    if code.startswith(b"UNICODE"):
        # UCS-2 in the file's byte order, which writers often get wrong: guess by the
        # position of the zero bytes in ASCII-range text.
        little = body[1:2] == b"\x00" if len(body) > 1 else True
        text = body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    elif code.startswith(b"ASCII") or code == b"\x00" * 8:
        text = body.decode("utf-8", errors="replace")
    else:
        text = value.decode("utf-8", errors="replace")  # no header: written raw
    return clean_text(text)


def _load(source: bytes | Path, min_side: int | None = None) -> Image.Image:
    empty = not source if isinstance(source, bytes) else source.stat().st_size == 0
    if empty:
        raise BadImage(
            "the file is empty: nothing of the picture arrived",
            "copy the image into the folder again",
            detail="0 bytes",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # No `with`: the image is returned. A BytesIO holds no file descriptor, and
            # Pillow closes a file it opened itself once the single frame is loaded.
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if min_side:
                image.draft(None, (min_side, min_side))
            image.load()  # a full decode is the only reliable truncation check
            return image
    except FileNotFoundError:
        raise  # gone, not bad: the caller decides
    except UnidentifiedImageError:
        if _has_image_signature(source):
            # Pillow says "cannot identify" also for a known format whose header is
            # broken (a PNG with a bad checksum): that is damage, not a wrong extension.
            raise BadImage(
                "the image data is damaged (its header cannot be read)",
                "export or copy the image again; the file on disk is incomplete or corrupt",
            ) from None
        raise BadImage(
            "this file is not an image i2vd can open: it may be another kind of file, or damaged",
            "open it on your computer to check it, save it as JPEG, PNG, WebP, BMP or TIFF, "
            "and drop it again",
            detail="Pillow cannot identify the image format (wrong extension, or no image)",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(
            "the picture is too large: more than 200 megapixels",
            "make it smaller (below 200 megapixels) and drop it again",
            detail=str(exc),
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(
            "the image data is damaged or cut short: perhaps it was only half-copied",
            "copy or export the image again and drop it into the folder",
            detail=f"{type(exc).__name__}: {exc}",
        ) from None


_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\0", b"MM\0*")


def _has_image_signature(source: bytes | Path) -> bool:
    """Whether ``source`` starts like a PNG, JPEG, GIF, BMP, TIFF or WebP file."""
    try:
        if isinstance(source, bytes):
            head = source[:16]
        else:
            with open(source, "rb") as handle:
                head = handle.read(16)
    except OSError:
        return False
    webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return webp or head.startswith(_SIGNATURES)


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any Pillow mode (CMYK, P, LA, RGBA, I;16, F, …) to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray(_grey_to_8bit(image), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent areas become white, as most viewers show them, not black.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _grey_to_8bit(image: Image.Image) -> np.ndarray:
    """Map high-depth greys onto 0-255 by their nominal range, never by the image's own
    darkest and brightest pixel (which would turn flat grey black and stretch dim images)."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        # Float images are 0-1 by convention; anything larger is taken as 0-255.
        full_scale = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
    elif image.mode == "I" and array.max(initial=0.0) <= 255:
        full_scale = 255.0  # 8-bit values that happen to be stored as 32-bit integers
    else:
        full_scale = 65535.0  # I;16 and 16-bit data decoded as I
    return np.clip(array * (255.0 / full_scale), 0, 255).round().astype(np.uint8)
