"""The mount-health gate: a root is there only while it is a folder holding its marker."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "faults"))
from faultkit import can_mount, mounts

from daemon.mounts import MARKER, MountGate, read_status


def gate_for(tmp_path: Path, returned: list[Path] | None = None) -> MountGate:
    for name in ("inbox", "outbox"):
        (tmp_path / name).mkdir(exist_ok=True)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    sink = returned if returned is not None else []
    gate = MountGate(
        [("inbox", tmp_path / "inbox"), ("outbox", tmp_path / "outbox")],
        state,
        on_return=sink.append,
    )
    gate.arm()
    return gate


def test_each_root_is_marked_and_available(tmp_path: Path) -> None:
    gate = gate_for(tmp_path)
    assert (tmp_path / "inbox" / MARKER).is_dir()
    assert gate.available(tmp_path / "inbox" / "a" / "b.jpg")
    assert gate.available(tmp_path / "elsewhere.jpg")  # under no root
    assert [s.available for s in read_status(tmp_path / "state")] == [True, True]


def test_a_renamed_root_is_unavailable_until_it_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    returned: list[Path] = []
    gate = gate_for(tmp_path, returned)
    os.rename(tmp_path / "inbox", tmp_path / "away")
    with caplog.at_level(logging.ERROR):
        assert not gate.available(tmp_path / "inbox" / "x.jpg")
        assert not gate.available(tmp_path / "inbox" / "y.jpg")
        gate.check()
    said = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(said) == 1 and "mounted" in said[0]  # once, with what to check
    assert [s.kind for s in read_status(tmp_path / "state") if not s.available] == ["inbox"]
    os.rename(tmp_path / "away", tmp_path / "inbox")
    assert gate.check() == [tmp_path / "inbox"]
    assert returned == [tmp_path / "inbox"]
    assert gate.check() == []


def test_an_empty_folder_in_its_place_is_not_the_root(tmp_path: Path) -> None:
    gate = gate_for(tmp_path)
    os.rename(tmp_path / "outbox", tmp_path / "away")
    (tmp_path / "outbox").mkdir()  # what an unmounted share leaves: a bare mountpoint
    assert not gate.available(tmp_path / "outbox" / "v.mp4")
    assert "mounted" in gate.unavailable()[0].reason


def test_a_known_root_without_its_marker_at_start_is_not_marked_again(tmp_path: Path) -> None:
    gate_for(tmp_path)
    os.rename(tmp_path / "inbox", tmp_path / "away")
    (tmp_path / "inbox").mkdir()
    gate = gate_for(tmp_path)  # a restart while the share is not mounted
    assert not (tmp_path / "inbox" / MARKER).exists()
    assert not gate.available(tmp_path / "inbox")


@pytest.mark.skipif(not can_mount(), reason="needs root to mount")
def test_an_unmounted_share_and_its_return(tmp_path: Path) -> None:
    returned: list[Path] = []
    with mounts() as made:
        made.tmpfs(tmp_path / "inbox", "1m")
        gate = gate_for(tmp_path, returned)
        from faultkit import mount_tmpfs, unmount

        assert unmount(tmp_path / "inbox")
        assert not gate.available(tmp_path / "inbox" / "a.jpg")
        mount_tmpfs(tmp_path / "inbox", "1m")  # a new, empty filesystem: no marker
        assert not gate.available(tmp_path / "inbox" / "a.jpg")
        (tmp_path / "inbox" / MARKER).mkdir()
        assert gate.check() == [tmp_path / "inbox"]
