"""The status page of a running daemon (a real subprocess), stage by stage: waiting with
places in line, running with progress, done with links that work, failed with the
reason and the next step, and a page left behind by a killed daemon."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from conftest import DaemonProcess, Layout, make_image, wait_for
from daemon.admin_queue import AdminQueue
from tiny_pipelines import build_i2vgenxl


def slow_rule(model: Path) -> str:
    """A tiny random-weight I2VGen-XL at enough steps for a job to take a second or
    more, so each step shows on the page (progress reaches the queue once a second)."""
    return (
        "name: slow\nengine: diffusion\n"
        f"model: {json.dumps(str(model))}\n"
        "preset: quick\nparams: {resolution: 256, frames: 8, fps: 8, steps: 30, seed: 1}\n"
        'prompt: "{{ stem }} <moving>"\n'
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_i2vgenxl(tmp_path_factory.mktemp("models") / "tiny-i2vgenxl")


pytestmark = pytest.mark.slow


def status(folder: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((folder / "i2vd-status.json").read_text("utf-8"))
    except FileNotFoundError:
        return None
    return data


def page_shows(folder: Path, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    data = status(folder)
    return data if data is not None and check(data) else None


def drop(layout: Layout, name: str, data: bytes | None = None, seed: int = 0) -> None:
    """Write the file under a hidden name and rename it in, as a careful copier does."""
    staging = layout.inbox / f".{name}.part"
    if data is None:
        make_image(staging, 640, 480, fmt="JPEG", seed=seed)
    else:
        staging.write_bytes(data)
    os.rename(staging, layout.inbox / name)


def updated(data: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(data["updated"]).timestamp()


def test_the_page_follows_images_from_drop_to_done_or_failed(
    layout: Layout, daemon: Callable[..., DaemonProcess], model: Path
) -> None:
    layout.rule("motion", slow_rule(model))
    layout.write_config(status_page=True, status_page_seconds=0.5, device="cpu")
    proc = daemon()
    proc.wait_started()
    outbox, inbox = layout.outbox, layout.inbox
    first = wait_for(lambda: status(inbox))
    assert first["daemon"]["state"] == "running" and first["waiting"] == []

    drop(layout, "broken.jpg", data=b"half a picture, or none at all")
    for n in range(3):
        drop(layout, f"photo{n}.jpg", seed=n)

    # Waiting, with places in line, behind one in progress with its progress.
    busy = wait_for(
        lambda: page_shows(
            outbox,
            lambda d: (
                len(d["waiting"]) >= 1
                and len(d["running"]) == 1
                and d["running"][0]["phase"] == "generating"
                and d["running"][0]["progress"] > 0
            ),
        ),
        timeout=240,
    )
    assert [w["position"] for w in busy["waiting"]] == list(range(1, len(busy["waiting"]) + 1))
    assert all(w["source"].startswith("photo") and w["rule"] == "slow" for w in busy["waiting"])
    [running] = busy["running"]
    assert re.fullmatch(r"generating \d+%", running["step"]) and running["elapsed"] > 0
    html = (outbox / "i2vd-status.html").read_text("utf-8")
    assert running["source"] in html

    # Failed at intake: the reason and the next step, as in its report.
    failed = wait_for(lambda: page_shows(inbox, lambda d: d["failed"]))["failed"][0]
    report = json.loads((layout.failed / "broken.jpg.error.json").read_text("utf-8"))
    assert failed["source"] == "broken.jpg"
    assert (failed["error"], failed["hint"]) == (report["error"], report["hint"])
    assert "move broken.jpg from the failed folder back" in failed["retry"]

    # Once one image is done, the others wait with an estimate, said to be one.
    estimated = wait_for(
        lambda: page_shows(outbox, lambda d: d["done"] and d["waiting"]), timeout=240
    )
    assert all(w["eta"] is not None for w in estimated["waiting"])
    assert all(w["eta_how"].startswith("estimate:") for w in estimated["waiting"])

    # Done: every video linked from the outbox page, relative to it, and there.
    final = wait_for(
        lambda: page_shows(outbox, lambda d: len(d["done"]) == 3 and not d["running"]),
        timeout=480,
    )
    assert {d["source"] for d in final["done"]} == {"photo0.jpg", "photo1.jpg", "photo2.jpg"}
    assert {d["prompt"] for d in final["done"]} == {f"photo{n} <moving>" for n in range(3)}
    assert all(d["params"]["steps"] == 30 for d in final["done"])
    html = wait_for(lambda: _page_with_links(outbox, 3))
    for link in re.findall(r'href="([^"]*\.mp4)"', html):
        assert (outbox / unquote(link)).is_file()

    # Killed: nothing rewrites the page, and its time says how old it is.
    killed_at = time.time()
    proc.stop(signal.SIGKILL)
    left = status(outbox)
    assert left is not None and updated(left) <= killed_at
    before = (outbox / "i2vd-status.html").stat().st_mtime_ns
    time.sleep(1.5)
    assert (outbox / "i2vd-status.html").stat().st_mtime_ns == before
    html = (outbox / "i2vd-status.html").read_text("utf-8")
    assert "Last updated" in html and "if this time is older, i2vd" in html
    assert dt.datetime.fromisoformat(left["updated"]).strftime("%H:%M:%S") in html

    # Started again and stopped cleanly: the page says so at once.
    again = daemon()
    again.wait_started()
    assert again.stop() == 0
    assert status(outbox)["daemon"]["state"] == "stopped"  # type: ignore[index]
    assert "Stopped" in (inbox / "i2vd-status.html").read_text("utf-8")
    # The inbox never took its own page as a drop.
    assert not list(layout.failed.glob("i2vd-status*"))
    # (the hidden .i2vd-root is the share's marker: README, Shares that disappear)
    visible = sorted(p.name for p in inbox.iterdir() if not p.name.startswith("."))
    assert visible == ["i2vd-status.html", "i2vd-status.json"]


def _page_with_links(folder: Path, count: int) -> str | None:
    html = (folder / "i2vd-status.html").read_text("utf-8")
    return html if len(re.findall(r'href="[^"]*\.mp4"', html)) == count else None


def test_the_page_says_when_the_queue_is_paused(
    layout: Layout, daemon: Callable[..., DaemonProcess]
) -> None:
    layout.write_config(status_page=True, status_page_seconds=0.5)
    settings = layout.load(status_page=True)
    proc = daemon()
    proc.wait_started()
    queue = AdminQueue(settings.database_url)
    try:
        queue.pause("test")  # what `i2vd pause` does, on the queue's database
        paused = wait_for(
            lambda: page_shows(layout.inbox, lambda d: d["daemon"]["state"] == "paused")
        )
        assert "resumed" in paused["daemon"]["message"]
        drop(layout, "later.jpg")
        waiting = wait_for(lambda: page_shows(layout.inbox, lambda d: d["waiting"]))
        assert [(w["source"], w["position"]) for w in waiting["waiting"]] == [("later.jpg", 1)]
        assert "Paused" in (layout.inbox / "i2vd-status.html").read_text("utf-8")
        queue.resume()
        done = wait_for(
            lambda: page_shows(layout.outbox, lambda d: d["done"] and not d["waiting"]), 60
        )
        assert done["daemon"]["state"] == "running"
        assert (layout.outbox / done["done"][0]["video"]).is_file()
    finally:
        queue.close()
    assert proc.stop() == 0


def test_the_page_says_when_the_working_hours_start(
    layout: Layout, daemon: Callable[..., DaemonProcess]
) -> None:
    """A schedule window for motion that opens in two hours: images wait, in line."""
    opens = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    window = {
        "engine": "motion",
        "start": opens.strftime("%H:%M"),
        "end": (opens + dt.timedelta(hours=1)).strftime("%H:%M"),
        "timezone": "UTC",
    }
    # A daemon of motion only: with every engine it serves closed, it is outside hours.
    layout.write_config(
        status_page=True, status_page_seconds=0.5, windows=[window], engines=["motion"]
    )
    proc = daemon()
    proc.wait_started()
    drop(layout, "tonight.jpg")
    shown = wait_for(
        lambda: page_shows(
            layout.inbox, lambda d: d["daemon"]["state"] == "outside_window" and d["waiting"]
        )
    )
    assert [(w["source"], w["position"]) for w in shown["waiting"]] == [("tonight.jpg", 1)]
    reopens = dt.datetime.fromisoformat(shown["daemon"]["reopens_at"])
    assert abs((reopens - opens.replace(second=0, microsecond=0)).total_seconds()) < 61
    html = (layout.inbox / "i2vd-status.html").read_text("utf-8")
    assert "Outside working hours" in html and "It starts again at" in html
    assert not (layout.outbox / "tonight.motion.mp4").exists()
    assert proc.stop() == 0


def test_the_outbox_page_says_when_the_inbox_cannot_be_reached(
    layout: Layout, daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """The inbox's share goes away under a running daemon (its folder renamed, as an
    unmounted share leaves no root): the outbox page, still written, says so in words;
    when it is back the banner goes and its images are taken again."""
    layout.write_config(status_page=True, status_page_seconds=0.5)
    proc = daemon()
    proc.wait_started()
    wait_for(lambda: status(layout.outbox))
    away = tmp_path / "share-away"
    os.rename(layout.inbox, away)
    shown = wait_for(lambda: page_shows(layout.outbox, lambda d: bool(d["shares"])), 30)
    [share] = shown["shares"]
    assert share["kind"] == "inbox" and share["reason"]
    html = (layout.outbox / "i2vd-status.html").read_text("utf-8")
    assert "cannot be reached right now" in html
    assert not (layout.inbox / "i2vd-status.html").exists()  # nothing written into its place

    os.rename(away, layout.inbox)
    wait_for(lambda: page_shows(layout.outbox, lambda d: not d["shares"]), 30)
    drop(layout, "back.jpg")
    wait_for(lambda: page_shows(layout.outbox, lambda d: bool(d["done"])), 60)
    assert (layout.outbox / "back.motion.mp4").is_file()
    assert proc.stop() == 0
