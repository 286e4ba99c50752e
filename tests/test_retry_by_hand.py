"""Retrying by hand stays tidy: an image moved back from failed/ into the inbox takes its
stale report with it when it is taken again, fails again under the same name (no -2,
-3 copies), and once it succeeds failed/ holds nothing of it. A real daemon."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import pytest

from conftest import DaemonProcess, Layout, make_image, wait_for

pytestmark = pytest.mark.slow

NOT_A_PICTURE = b"these bytes are no picture"
BAD_NAME_RULE = """\
name: motion
engine: motion
preset: quick
params: {resolution: 256}
output: {name: "{{ stem }}/{{ rule }}"}
"""


def move_back(layout: Layout, name: str, data: bytes | None = None) -> None:
    """What a person does: take the image out of failed/ (perhaps fixed) into the inbox."""
    staging = layout.root / f"fixed-{name}"
    shutil.move(layout.failed / name, staging)
    if data is not None:
        staging.write_bytes(data)
    os.rename(staging, layout.inbox / name)


def test_an_image_moved_back_twice_then_fixed(
    layout: Layout, daemon: Callable[..., DaemonProcess]
) -> None:
    proc = daemon()
    proc.wait_started()
    (layout.inbox / "holiday.png").write_bytes(NOT_A_PICTURE)
    wait_for(lambda: layout.files(layout.failed) == ["holiday.png", "holiday.png.error.json"])
    first = json.loads((layout.failed / "holiday.png.error.json").read_text())

    # Moved back as it was: it fails again, reported under the same name.
    move_back(layout, "holiday.png")
    wait_for(lambda: _report_job(layout) not in (None, first["job"]))
    assert layout.files(layout.failed) == ["holiday.png", "holiday.png.error.json"]

    # Moved back fixed: its video is made and failed/ holds nothing of it.
    good = make_image(layout.root / "good.png", 96, 72).read_bytes()
    move_back(layout, "holiday.png", good)
    wait_for(lambda: (layout.outbox / "holiday.motion.mp4").is_file())
    wait_for(lambda: layout.files(layout.failed) == [])
    assert proc.stop() == 0


def test_a_report_stays_while_its_image_is_still_beside_it(
    layout: Layout, daemon: Callable[..., DaemonProcess]
) -> None:
    """Copied back rather than moved: the report belongs to the copy still in failed/."""
    proc = daemon()
    proc.wait_started()
    (layout.inbox / "scan.png").write_bytes(NOT_A_PICTURE)
    wait_for(lambda: layout.files(layout.failed) == ["scan.png", "scan.png.error.json"])
    make_image(layout.root / "scan.png", 96, 72)
    os.rename(layout.root / "scan.png", layout.inbox / "scan.png")
    wait_for(lambda: (layout.outbox / "scan.motion.mp4").is_file())
    assert layout.files(layout.failed) == ["scan.png", "scan.png.error.json"]
    assert proc.stop() == 0


def test_a_job_failing_twice_in_the_worker_is_reported_once(
    layout: Layout, daemon: Callable[..., DaemonProcess]
) -> None:
    """A good picture whose rule cannot name its video: it fails at its turn, not at
    intake; moved back as it is, it fails again under the same name."""
    layout.rule("motion", BAD_NAME_RULE)
    proc = daemon()
    proc.wait_started()
    make_image(layout.inbox / "holiday.png", 96, 72)
    wait_for(lambda: layout.files(layout.failed) == ["holiday.png", "holiday.png.error.json"])
    first = _report_job(layout)
    move_back(layout, "holiday.png")
    wait_for(lambda: _report_job(layout) not in (None, first))
    assert layout.files(layout.failed) == ["holiday.png", "holiday.png.error.json"]
    assert proc.stop() == 0


def _report_job(layout: Layout) -> int | None:
    try:
        job: int = json.loads((layout.failed / "holiday.png.error.json").read_text())["job"]
    except (OSError, ValueError):
        return None
    return job
