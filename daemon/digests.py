"""A file's identity in the queue: the SHA-256 of its bytes, as hex.

Plain ``hashlib``, apart from image decoding, so that ``i2vd retry`` can check a file
in failed/ without importing PIL or numpy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hash in chunks: a huge file costs time, never its size in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
