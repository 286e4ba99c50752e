"""Names a file system can hold: stored losslessly, shown readably, made safe as outputs."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from daemon.names import STEM_LIMIT_BYTES, cut, from_db, readable, safe_stem, to_db

# Any bytes a Linux file name can hold.
NAME_BYTES = st.binary(min_size=1, max_size=300).filter(lambda b: b"/" not in b and b"\0" not in b)


@given(NAME_BYTES)
def test_any_name_round_trips_through_the_database_form(raw: bytes) -> None:
    name = os.fsdecode(raw)
    stored = to_db(name)
    stored.encode("utf-8")  # what SQLite and PostgreSQL need
    assert from_db(stored) == name


def test_valid_utf8_is_stored_as_it_is() -> None:
    for name in ("/inbox/beach.jpg", "50%.jpg", "caf\u00e9.jpg"):
        assert to_db(name) == name
    assert from_db(to_db("\uffff50%")) == "\uffff50%"  # the marker itself, escaped


def test_undecodable_bytes_are_shown_as_escapes() -> None:
    assert readable(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert readable("caf\u00e9.jpg") == "caf\u00e9.jpg"


@given(NAME_BYTES)
def test_any_stem_makes_a_safe_output_stem(raw: bytes) -> None:
    stem = safe_stem(os.fsdecode(raw))
    encoded = os.fsencode(stem)
    assert len(encoded) <= STEM_LIMIT_BYTES
    assert not any(b < 32 or b == 127 for b in encoded)
    assert b"/" not in encoded and b"\\" not in encoded
    assert safe_stem(os.fsdecode(raw)) == stem  # stable


def test_long_names_sharing_a_beginning_stay_apart() -> None:
    first, second = safe_stem("a" * 300 + "1"), safe_stem("a" * 300 + "2")
    assert first != second
    assert first.startswith("a" * 100) and "~" in first


def test_control_characters_become_underscores() -> None:
    assert safe_stem("new\nline\ttab\x1b[31m") == "new_line_tab_[31m"


def test_cutting_never_splits_a_character() -> None:
    assert cut("\u00e9\u00e9", 3) == "\u00e9"
    assert cut(os.fsdecode(b"ab\xff\xfe"), 3) == os.fsdecode(b"ab\xff")
