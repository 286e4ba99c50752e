"""Publishing: atomic JSON, placing files, free names, quarantine, temp sweeps, OS errors."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from conftest import NEEDS_PERMISSIONS
from daemon.publish import (
    TEMP_MARK,
    PublishError,
    describe_os_error,
    free_path,
    free_stem,
    place,
    quarantine,
    sweep_temporaries,
    temp_name,
    write_json,
)


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_temp_name_is_a_hidden_marked_sibling(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "a.mp4"
    tmp = temp_name(dest)
    assert tmp.parent == dest.parent
    assert tmp.name.startswith(".a.mp4.")
    assert tmp.name.endswith(TEMP_MARK)
    assert temp_name(dest) != tmp


def test_write_json_round_trips_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "deep" / "a.json"
    data = {"prompt": "café 照片 🎞", "n": 3, "list": [1.5, None, True], "nested": {"k": "v"}}
    write_json(dest, data)
    assert json.loads(dest.read_text(encoding="utf-8")) == data
    raw = dest.read_bytes()
    assert "café 照片 🎞".encode() in raw  # unicode kept, not \\u-escaped
    assert raw.endswith(b"}\n")
    assert listing(tmp_path / "out") == ["deep/a.json"]


def test_write_json_never_replaces_an_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "a.json"
    write_json(dest, {"v": 1})
    with pytest.raises(FileExistsError):
        write_json(dest, {"v": 2})
    assert json.loads(dest.read_text(encoding="utf-8")) == {"v": 1}
    assert listing(tmp_path) == ["a.json"]  # and no temporary left behind


def test_without_hard_links_a_move_still_never_replaces(tmp_path: Path) -> None:
    """Where os.link is refused (SMB/CIFS, FAT), the checked rename keeps the guarantee.
    ``no_links`` is a fake at the OS edge: this filesystem does support hard links."""
    src, dest = tmp_path / "src.jpg", tmp_path / "dest.jpg"
    src.write_bytes(b"new")
    dest.write_bytes(b"old")

    def no_links(*_args: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "link", no_links)
        with pytest.raises(FileExistsError):
            place(src, dest)
        dest.unlink()
        place(src, dest)
    assert dest.read_bytes() == b"new" and not src.exists()


def test_write_json_failure_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "a.json"
    with pytest.raises(TypeError):
        write_json(dest, {"bad": object()})
    assert listing(tmp_path) == []
    # Fails at rename time: the destination is a directory.
    (tmp_path / "b.json").mkdir()
    with pytest.raises(OSError):
        write_json(tmp_path / "b.json", {"v": 1})
    assert listing(tmp_path) == []


def test_place_moves(tmp_path: Path) -> None:
    src = tmp_path / "in" / "a.jpg"
    src.parent.mkdir()
    src.write_bytes(b"image-bytes")
    dest = tmp_path / "out" / "x" / "a.jpg"
    place(src, dest)
    assert not src.exists()
    assert dest.read_bytes() == b"image-bytes"
    assert listing(tmp_path) == ["out/x/a.jpg"]


def test_place_copies_with_keep_src(tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(b"abc" * 1000)
    dest = tmp_path / "out" / "a.jpg"
    place(src, dest, keep_src=True)
    assert src.read_bytes() == dest.read_bytes() == b"abc" * 1000
    assert src.stat().st_ino != dest.stat().st_ino
    assert listing(tmp_path) == ["a.jpg", "out/a.jpg"]


def test_place_hard_links(tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(b"xyz")
    dest = tmp_path / "out" / "a.jpg"
    place(src, dest, link=True)
    assert src.exists()
    assert dest.stat().st_ino == src.stat().st_ino
    assert src.stat().st_nlink == 2
    assert dest.read_bytes() == b"xyz"


def test_place_missing_source_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        place(tmp_path / "nope.jpg", tmp_path / "out" / "nope.jpg")
    assert listing(tmp_path) == []


def test_free_stem(tmp_path: Path) -> None:
    assert free_stem(tmp_path, "a", [".mp4", ".json"]) == "a"
    (tmp_path / "a.mp4").write_bytes(b"")
    assert free_stem(tmp_path, "a", [".mp4", ".json"]) == "a-2"
    # The sidecar counts too: a-2.json alone blocks a-2.
    (tmp_path / "a-2.json").write_text("{}", encoding="utf-8")
    assert free_stem(tmp_path, "a", [".mp4", ".json"]) == "a-3"
    (tmp_path / "a-3.mp4").write_bytes(b"")
    (tmp_path / "a-3.json").write_bytes(b"")
    assert free_stem(tmp_path, "a", [".mp4", ".json"]) == "a-4"
    # Other names do not interfere.
    assert free_stem(tmp_path, "b", [".mp4", ".json"]) == "b"
    assert free_stem(tmp_path, "a", [".webm"]) == "a"


def test_free_path(tmp_path: Path) -> None:
    assert free_path(tmp_path, "photo.jpg") == tmp_path / "photo.jpg"
    (tmp_path / "photo.jpg").write_bytes(b"")
    assert free_path(tmp_path, "photo.jpg") == tmp_path / "photo-2.jpg"
    (tmp_path / "photo-2.jpg").write_bytes(b"")
    assert free_path(tmp_path, "photo.jpg") == tmp_path / "photo-3.jpg"
    (tmp_path / "README").write_bytes(b"")
    assert free_path(tmp_path, "README") == tmp_path / "README-2"
    assert free_path(tmp_path / "missing", "x.jpg") == tmp_path / "missing" / "x.jpg"


def test_free_names_make_place_never_overwrite(tmp_path: Path) -> None:
    # place() requires a free dest; callers get one from free_path, so nothing is overwritten.
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.jpg").write_bytes(b"first")
    src = tmp_path / "a.jpg"
    src.write_bytes(b"second")
    dest = free_path(out, src.name)
    place(src, dest)
    assert (out / "a.jpg").read_bytes() == b"first"
    assert (out / "a-2.jpg").read_bytes() == b"second"


def test_quarantine(tmp_path: Path) -> None:
    source = tmp_path / "inbox" / "people" / "bad.jpg"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"not really a jpeg")
    failed = tmp_path / "failed" / "people"
    report = {"error": "not an image", "hint": "save it again", "attempts": 1, "rule": "motion"}
    dest = quarantine(source, failed, report)
    assert dest == failed / "bad.jpg"
    assert not source.exists()
    assert dest.read_bytes() == b"not really a jpeg"
    assert json.loads((failed / "bad.jpg.error.json").read_text(encoding="utf-8")) == report
    assert listing(tmp_path / "failed") == ["people/bad.jpg", "people/bad.jpg.error.json"]


def test_quarantine_suffixes_when_taken(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "bad.jpg").write_bytes(b"older")
    (failed / "bad.jpg.error.json").write_text('{"error": "older"}', encoding="utf-8")
    source = tmp_path / "bad.jpg"
    source.write_bytes(b"newer")
    dest = quarantine(source, failed, {"error": "newer", "hint": "h", "attempts": 3, "rule": "r"})
    assert dest == failed / "bad-2.jpg"
    assert dest.read_bytes() == b"newer"
    assert (failed / "bad.jpg").read_bytes() == b"older"
    assert json.loads((failed / "bad.jpg.error.json").read_text(encoding="utf-8")) == {
        "error": "older"
    }
    assert (
        json.loads((failed / "bad-2.jpg.error.json").read_text(encoding="utf-8"))["error"]
        == "newer"
    )


def test_quarantine_of_a_vanished_source_still_reports(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    dest = quarantine(tmp_path / "gone.png", failed, {"error": "vanished"})
    assert dest == failed / "gone.png"
    assert listing(failed) == ["gone.png.error.json"]


def test_quarantine_never_overwrites_an_error_report(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    quarantine(tmp_path / "gone.png", failed, {"error": "first"})
    source = tmp_path / "gone.png"
    source.write_bytes(b"again")
    dest = quarantine(source, failed, {"error": "second"})
    reports = sorted(p.name for p in failed.glob("*.error.json"))
    assert len(reports) == 2, reports
    assert json.loads((failed / "gone.png.error.json").read_text(encoding="utf-8")) == {
        "error": "first"
    }
    assert dest.read_bytes() == b"again"


def test_sweep_temporaries_removes_only_ours(tmp_path: Path) -> None:
    out, failed = tmp_path / "out", tmp_path / "failed"
    (out / "sub").mkdir(parents=True)
    failed.mkdir()
    ours = [
        temp_name(out / "a.mp4"),
        temp_name(out / "sub" / "a.json"),
        failed / f".x.jpg.deadbeef{TEMP_MARK}",
    ]
    users = [
        out / "a.mp4",
        out / ".hidden-user-file",
        out / f"visible{TEMP_MARK}",  # not hidden: not ours
        out / "sub" / f".{TEMP_MARK}.bak",  # mark not at the end
        out / "sub" / ".a.mp4.tmp",
    ]
    for path in ours + users:
        path.write_bytes(b"x")
    elsewhere = tmp_path / "inbox" / f".c.jpg.0000{TEMP_MARK}"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"x")

    removed = sweep_temporaries([out, failed, tmp_path / "missing"])
    assert sorted(removed) == sorted(ours)
    assert all(not p.exists() for p in ours)
    assert all(p.exists() for p in users)
    assert elsewhere.exists()  # only the given roots are swept
    assert sweep_temporaries([out, failed]) == []


@pytest.mark.parametrize(
    ("code", "strerror", "message", "hint"),
    [
        (
            errno.ENOSPC,
            "No space left on device",
            "no space left on the device holding",
            "free disk space",
        ),
        (errno.EACCES, "Permission denied", "permission denied for", "read and write access"),
        (errno.EPERM, "Operation not permitted", "permission denied for", "read and write access"),
        (errno.EROFS, "Read-only file system", "read-only filesystem", "mount it writable"),
        (errno.EIO, "Input/output error", "could not access", "share is mounted"),
    ],
)
def test_describe_os_error(
    tmp_path: Path, code: int, strerror: str, message: str, hint: str
) -> None:
    target = tmp_path / "out" / "a.mp4"
    result = describe_os_error(OSError(code, strerror), target)
    assert isinstance(result, PublishError)
    assert message in str(result)
    assert str(target) in str(result)
    assert hint in result.hint
    # The system's own words are for admins: in the detail, not the message.
    assert strerror not in str(result)
    assert strerror in (result.detail or "")


@NEEDS_PERMISSIONS
def test_real_permission_error_is_described(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError) as err:
            write_json(locked / "a.json", {"v": 1})
        described = describe_os_error(err.value, locked / "a.json")
        assert "permission denied for" in str(described)
        assert "read and write access" in described.hint
    finally:
        locked.chmod(0o700)


def test_long_names_are_shortened_to_fit_with_suffix_and_counter(tmp_path: Path) -> None:
    name = "é" * 120 + ".jpg"  # 244 bytes: with ".error.json" it would not fit in 255
    source = tmp_path / "in" / name
    source.parent.mkdir()
    source.write_bytes(b"x")
    dest = quarantine(source, tmp_path / "failed", {"error": "e"})
    report = dest.with_name(dest.name + ".error.json")
    assert dest.read_bytes() == b"x" and report.exists()
    assert len(report.name.encode()) <= 255
    assert dest.name.endswith(".jpg") and dest.name.startswith("é" * 100)
