"""File names as file systems hold them: any bytes but ``/`` and NUL.

Python gives a name that is not valid UTF-8 (``caf\\xe9.jpg`` from an old Windows or
Samba client) as a string with "surrogate escapes" (``os.fsdecode``). Such a string
works for every file operation, but cannot be encoded as UTF-8, so it needs care in
three places, all here:

- the queue database (:func:`to_db`, :func:`from_db`): stored losslessly;
- people (:func:`readable`): logs, sidecars and reports show the bytes as ``\\xe9``;
- output names (:func:`safe_stem`): control characters replaced, long names shortened
  with a stable hash suffix, so any picture's name makes a valid output name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

# Marks a stored value that held undecodable bytes. U+FFFF is a "noncharacter": valid
# in UTF-8 text (SQLite and PostgreSQL store it), never typed, and never the first
# character of an absolute path, which is what most stored values are.
_ESCAPED = "\uffff"
_SURROGATE = re.compile("[\udc80-\udcff%]")
_PERCENT = re.compile("%([0-9A-F]{2})")

# What never goes into an output name: C0 controls, DEL and C1 controls (a newline in a
# name breaks scripts and logs), and the path separators of POSIX and Windows shares.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f/\\\\]")
# Bytes left for an output stem, so that the stem plus a rule's suffix (".motion.mp4",
# "-2") and a temporary's prefix and suffix stay within a 255-byte name.
STEM_LIMIT_BYTES = 200
_HASH_CHARS = 8


def needs_escape(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def to_db(text: str) -> str:
    """``text`` as the database stores it: unchanged when it is valid UTF-8; else the
    marker plus the name with each undecodable byte as ``%XX`` (and ``%`` as ``%25``)."""
    if not needs_escape(text) and not text.startswith(_ESCAPED):
        return text
    return _ESCAPED + _SURROGATE.sub(lambda m: f"%{_byte_of(m.group()):02X}", text)


def from_db(stored: str) -> str:
    """The inverse of :func:`to_db`."""
    if not stored.startswith(_ESCAPED):
        return stored
    return _PERCENT.sub(lambda m: _char_of(int(m.group(1), 16)), stored[1:])


def _byte_of(char: str) -> int:
    return ord("%") if char == "%" else ord(char) - 0xDC00


def _char_of(value: int) -> str:
    return "%" if value == ord("%") else chr(0xDC00 + value)


def readable(text: str) -> str:
    """``text`` for people: undecodable bytes shown as ``\\xe9``, never an error."""
    if not needs_escape(text):
        return text
    return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def safe_stem(stem: str, limit: int = STEM_LIMIT_BYTES) -> str:
    """An output stem made from any name: unsafe characters become ``_``; a stem longer
    than ``limit`` bytes is cut and ends in ``~`` and a hash of the whole name, so two
    long names that share a beginning still get different, stable outputs. Undecodable
    bytes are kept as they are (the output is named like its picture)."""
    clean = _UNSAFE.sub("_", stem)
    raw = os.fsencode(clean)
    if len(raw) <= limit:
        return clean
    digest = hashlib.sha256(os.fsencode(stem)).hexdigest()[:_HASH_CHARS]
    return f"{cut(clean, limit - _HASH_CHARS - 1)}~{digest}"


def cut(text: str, limit: int) -> str:
    """The longest start of ``text`` within ``limit`` bytes, never splitting a
    character (an undecodable byte counts as one)."""
    raw = os.fsencode(text)
    if len(raw) <= limit:
        return text
    head = raw[:limit]
    # Drop a partial UTF-8 sequence at the end; lone undecodable bytes stay.
    for back in range(1, 4):
        if len(head) < back:
            break
        lead = head[-back]
        if 0xC2 <= lead <= 0xF4:  # a lead byte: is its sequence complete?
            need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            if need > back:
                head = head[:-back]
            break
        if lead & 0xC0 != 0x80:
            break
    return os.fsdecode(head)


class ReadableNames(logging.Filter):
    """Log records with undecodable bytes of file names shown as ``\\xe9``, whatever
    the handler's format."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if needs_escape(message):
            record.msg, record.args = readable(message), None
        return True
