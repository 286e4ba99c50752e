"""A sample of the fault-injection suite on every run; ``run.py`` does the long runs.

Each scenario drives a real ``i2vd run`` subprocess on real folders and mounts, then
audits every dropped picture: none lost, none doubled, none left in the inbox, no good
picture in failed/, no traceback for an expected fault.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import can_mount, mounts
from hostile import contents
from scenarios import (
    hostile_corpus,
    kill_points,
    outbox_renamed,
    outbox_unmounted,
    read_only_outbox,
)

pytestmark = pytest.mark.slow
needs_mounts = pytest.mark.skipif(not can_mount(), reason="needs root to mount tmpfs and binds")


@pytest.mark.parametrize("cross_device", [False, True], ids=["same-fs", "outbox-tmpfs"])
def test_kill_9_at_every_phase_loses_and_doubles_nothing(
    tmp_path: Path, cross_device: bool
) -> None:
    if cross_device and not can_mount():
        pytest.skip("needs root to mount a tmpfs")
    with mounts() as made:
        tally = kill_points(tmp_path, made, kills=8, seed=12, cross_device=cross_device)
    assert tally.faults == 8
    assert tally.bad() == {}, tally.notes


@needs_mounts
def test_a_read_only_outbox_recovers_when_writable_again(tmp_path: Path) -> None:
    with mounts() as made:
        tally = read_only_outbox(tmp_path, made)
    assert tally.bad() == {}, tally.notes


@needs_mounts
def test_an_unmounted_outbox_is_never_written_under_its_mountpoint(tmp_path: Path) -> None:
    with mounts() as made:
        tally = outbox_unmounted(tmp_path, made)
    assert not any("bare mountpoint" in note for note in tally.notes), tally.notes
    assert tally.bad() == {}, tally.notes


def test_an_outbox_renamed_away_is_not_made_again(tmp_path: Path) -> None:
    with mounts() as made:
        tally = outbox_renamed(tmp_path, made)
    assert not any("new outbox" in note for note in tally.notes), tally.notes
    assert tally.bad() == {}, tally.notes


def test_the_hostile_corpus_is_quarantined_or_processed(tmp_path: Path) -> None:
    assert len(contents()) >= 50
    with mounts() as made:
        tally = hostile_corpus(tmp_path, made)
    assert tally.bad() == {}, tally.notes
