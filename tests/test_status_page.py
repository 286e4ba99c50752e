"""The status page and its JSON, built from a real queue: real intake, real worker, real
files, and a real browser (headless Chromium) reading the page as a person would."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from conftest import REPO, Layout, make_image
from daemon.config import Settings
from daemon.estimates import claim_order, phase_of, remaining_time, size_of
from daemon.host_paths import HostPaths
from daemon.intake import Intake
from daemon.mounts import RootStatus
from daemon.queue_view import PAUSED, RUNNING, STOPPED, QueueView, Snapshot, daemon_state
from daemon.rules import load_rules
from daemon.status_html import href
from daemon.status_page import StatusPages
from daemon.store import Job, JobState, JobStore
from daemon.watch import SettleTracker, scan
from daemon.worker import Worker

XSS = "<img src=x onerror=alert(1)>.png"
CATCH_ALL = """\
name: everything
engine: motion
preset: quick
params: {resolution: 256, frames: 8, fps: 8}
prompt: "{{ stem }} <b>moving</b>"
match: {patterns: ["*"]}
"""


class Share:
    """A daemon's folders and queue, driven a step at a time (no timers)."""

    def __init__(self, layout: Layout, **settings: Any) -> None:
        self.layout = layout
        values = {"retry_delay_seconds": 0, "status_page": True, **settings}
        self.settings: Settings = layout.load(**values)
        self.store = JobStore(self.settings.database_url)
        # As the daemon has it: the queue stores host-neutral paths (inbox names, outputs
        # relative to the outbox), which the page must map back to this host's folders.
        self.store.host_paths = HostPaths(self.settings.inbox_names, self.settings.outbox)
        rules, problems = load_rules(self.settings.rules_dir)
        assert problems == []
        self.intake = Intake(
            self.store,
            lambda: rules,
            self.settings.failed_dir,
            self.settings.max_attempts,
            inbox_name=self.settings.inbox_name,
        )
        self.worker = Worker(self.settings, self.store, owner="test-host:1")
        self.pages = StatusPages(self.settings, self.store)

    def drop(self, relative: str, seed: int = 0, data: bytes | None = None) -> list[Job]:
        path = self.settings.inbox[0] / relative
        if data is None:
            make_image(path, 96, 72, seed=seed)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        result = self.intake.take(self.settings.inbox[0], path)
        return list(result.jobs) or ([result.job] if result.job else [])

    def run(self) -> Job:
        job = self.worker.run_once(time.time())
        assert job is not None
        return job

    def snapshot(self) -> Snapshot:
        view = QueueView(
            self.store, self.settings.inbox_names, self.settings.outbox, self.settings.failed_dir
        )
        return view.snapshot(time.time(), RUNNING)

    def page(self, folder: Path) -> tuple[str, dict[str, Any]]:
        html = (folder / "i2vd-status.html").read_text(encoding="utf-8")
        return html, json.loads((folder / "i2vd-status.json").read_text(encoding="utf-8"))


def populated(layout: Layout) -> Share:
    """Every state at once: two done (one with a hostile name), one failed (not a
    picture), one running at 40% (claimed by another daemon), two waiting."""
    layout.rule("motion", CATCH_ALL)
    share = Share(layout)
    share.drop("first.jpg", seed=1)
    share.drop(f"people/{XSS}", seed=2)
    share.run()
    share.run()
    share.drop("broken.png", data=b"this is not a picture at all")
    share.drop("people/anna.jpg", seed=3)
    share.drop("people/ben.jpg", seed=4)
    share.drop("zoe.jpg", seed=5)
    claimed = share.store.claim("other-host:7", time.time(), 120)
    assert claimed is not None and claimed.relative == "people/anna.jpg"
    share.store.heartbeat(claimed.id or 0, "other-host:7", time.time(), 120, progress=0.4)
    return share


# --- what the page says --------------------------------------------------------------


def test_every_state_with_positions_estimates_links_and_reasons(layout: Layout) -> None:
    share = populated(layout)
    assert share.pages.refresh(time.time(), RUNNING) == [
        share.settings.inbox[0],
        share.settings.outbox,
    ]
    html, data = share.page(share.settings.outbox)
    assert set(data) >= {"updated", "daemon", "waiting", "running", "done", "failed"}
    assert data["daemon"]["state"] == "running"

    waiting = [(w["source"], w["position"], w["rule"]) for w in data["waiting"]]
    assert waiting == [("people/ben.jpg", 1, "everything"), ("zoe.jpg", 2, "everything")]
    for item in data["waiting"]:
        # Two finished jobs of this rule and size measured: an estimate, said so.
        assert item["eta"] > 0
        assert item["eta_how"].startswith("estimate: the median time of the last 2 image(s)")

    [running] = data["running"]
    assert (running["source"], running["phase"], running["step"]) == (
        "people/anna.jpg",
        "generating",
        "generating 40%",
    )
    assert running["remaining"] is not None and running["elapsed"] >= 0

    done = {d["source"]: d for d in data["done"]}
    assert set(done) == {"first.jpg", f"people/{XSS}"}
    for item in done.values():
        assert (share.settings.outbox / item["video"]).is_file()
        assert item["prompt"].endswith("<b>moving</b>")
        assert item["params"]["frames"] == 8 and item["duration"] > 0

    [failed] = data["failed"]
    assert failed["source"] == "broken.png"
    report = json.loads((share.settings.failed_dir / failed["report"]).read_text())
    assert (failed["error"], failed["hint"]) == (report["error"], report["hint"])
    assert failed["detail"] == report["detail"] and failed["detail"]
    assert "move broken.png from the failed folder back" in failed["retry"]
    assert f"<summary>technical detail</summary>{escape(failed['detail'])}" in html

    # Everything hostile is text: no element came from a name or a prompt.
    assert XSS not in html and "<b>moving" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html
    assert html.count("<img") == 0 and "<script" not in html


def test_no_estimate_before_anything_finished(layout: Layout) -> None:
    share = Share(layout)
    share.drop("a.jpg", seed=1)
    share.drop("b.jpg", seed=2)
    [first, second] = share.snapshot().waiting
    assert (first.position, second.position) == (1, 2)
    assert first.eta is None and second.eta is None
    assert first.eta_how.startswith("no estimate yet: no image of rule motion at 256p")


def test_inbox_pages_show_their_own_images_and_link_only_inside(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for folder in ("north", "south", "outbox", "failed", "rules", "state"):
        (tmp_path / folder).mkdir()
    layout.rule("motion", CATCH_ALL)
    layout.settings["inbox"] = ["north", "south"]
    share = Share(layout)
    north, south = share.settings.inbox
    for root, name in ((north, "n.jpg"), (south, "s.jpg")):
        make_image(root / name, 96, 72)
        share.intake.take(root, root / name)
    share.run()
    share.pages.refresh(time.time(), RUNNING)
    north_html, north_data = share.page(north)
    _, south_data = share.page(south)
    _, all_data = share.page(share.settings.outbox)
    assert [d["source"] for d in north_data["done"]] == ["n.jpg"]
    assert north_data["waiting"] == [] and south_data["done"] == []
    assert [w["source"] for w in south_data["waiting"]] == ["s.jpg"]
    assert south_data["waiting"][0]["inbox"] == "south"
    assert {i["source"] for i in all_data["done"] + all_data["waiting"]} == {"n.jpg", "s.jpg"}
    # The video is in the outbox, outside the inbox: named there, never linked.
    assert "n.everything.mp4" in north_html and 'href="n.everything' not in north_html
    assert all(h.startswith("i2vd-status.json") for h in _hrefs(north_html))


def test_an_unreachable_inbox_is_shown_on_the_pages_still_written(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for folder in ("north", "south", "outbox", "failed", "rules", "state"):
        (tmp_path / folder).mkdir()
    layout.rule("motion", CATCH_ALL)
    layout.settings["inbox"] = ["north", "south"]
    share = Share(layout)
    north, south = share.settings.inbox
    now = time.time()
    assert north in share.pages.refresh(now, RUNNING)
    reason = "the folder <holds no marker> & is empty"
    gone = RootStatus("inbox", str(north), False, reason, now)
    # The change alone rewrites the pages, even before the heartbeat is due.
    later = now + share.settings.status_page_seconds
    written = share.pages.refresh(later, RUNNING, unavailable=[gone])
    assert north not in written and {south, share.settings.outbox} <= set(written)
    for folder in (south, share.settings.outbox):
        html, data = share.page(folder)
        assert data["shares"] == [
            {"kind": "inbox", "name": "north", "available": False, "reason": reason,
             "since": data["shares"][0]["since"]}
        ]  # fmt: skip
        assert escape(reason) in html and reason not in html
        assert "The inbox &#x27;north&#x27; cannot be reached right now" in html
        assert "nothing is lost" in html
        assert str(tmp_path) not in html and str(tmp_path) not in json.dumps(data)
    # North's own page was not written into what may be an empty mountpoint.
    assert json.loads((north / "i2vd-status.json").read_text())["shares"] == []
    # Back again: the banner goes at the next look, heartbeat or not.
    share.pages.refresh(later + share.settings.status_page_seconds, RUNNING)
    html, data = share.page(south)
    assert data["shares"] == [] and "cannot be reached" not in html


def test_links_are_encoded_and_never_climb_out() -> None:
    assert href("people/a b#c?.mp4") == "people/a%20b%23c%3F.mp4"
    assert href("javascript:alert(1).mp4") == "javascript%3Aalert%281%29.mp4"
    assert href("../secret.mp4") is None and href("/etc/passwd") is None
    assert href("a/../../b") is None and href("") is None


# --- how it is written ---------------------------------------------------------------


def test_rewritten_only_when_something_changed_and_at_least_every_minute(
    layout: Layout,
) -> None:
    share = Share(layout, status_page_seconds=0.5)
    outbox = share.settings.outbox
    now = time.time()
    assert share.pages.refresh(now, RUNNING) != []
    first = (outbox / "i2vd-status.html").stat().st_ino
    assert share.pages.refresh(now + 0.1, RUNNING) == []  # too soon
    assert share.pages.refresh(now + 5, RUNNING) == []  # nothing changed
    assert (outbox / "i2vd-status.html").stat().st_ino == first
    share.drop("new.jpg")
    assert outbox in share.pages.refresh(now + 10, RUNNING)
    assert (outbox / "i2vd-status.html").stat().st_ino != first  # replaced, not edited
    assert share.pages.refresh(now + 70, RUNNING) != []  # the heartbeat rewrite
    assert share.pages.refresh(now + 71, STOPPED) != []  # the daemon's state is news
    html, data = share.page(outbox)
    assert data["daemon"]["state"] == "stopped" and "Stopped" in html
    assert [p.name for p in outbox.iterdir() if p.name.startswith(".")] == []  # no temporaries


def test_a_symlink_in_place_of_the_page_is_replaced_not_followed(layout: Layout) -> None:
    share = Share(layout)
    target = layout.root / "precious.txt"
    target.write_text("keep me")
    (share.settings.outbox / "i2vd-status.html").symlink_to(target)
    share.pages.refresh(time.time(), RUNNING)
    assert target.read_text() == "keep me"
    assert not (share.settings.outbox / "i2vd-status.html").is_symlink()


def test_page_off_writes_nothing(layout: Layout) -> None:
    share = Share(layout, status_page=False)
    assert share.pages.refresh(time.time(), RUNNING, force=True) == []
    assert not (share.settings.outbox / "i2vd-status.html").exists()


def test_intake_never_takes_the_status_files_even_with_a_rule_for_everything(
    layout: Layout,
) -> None:
    share = populated(layout)
    inbox = share.settings.inbox[0]
    share.pages.refresh(time.time(), RUNNING)
    assert (inbox / "i2vd-status.html").is_file()
    reserved = share.settings.status_files
    assert [p.name for p in scan(inbox, reserved) if p.name.startswith("i2vd-status")] == []
    tracker = SettleTracker([inbox], 0.0, reserved)
    tracker.note(inbox / "i2vd-status.html")
    tracker.note(inbox / "i2vd-status.json")
    assert tracker.poll(time.time()) == []


def test_lists_only_the_newest_finished_images(layout: Layout) -> None:
    share = Share(layout, status_page_items=1)
    share.drop("older.jpg", seed=1)
    share.run()
    share.drop("newer.jpg", seed=2)
    share.run()
    share.pages.refresh(time.time(), RUNNING)
    for folder in (share.settings.inbox[0], share.settings.outbox):
        assert [d["source"] for d in share.page(folder)[1]["done"]] == ["newer.jpg"]


def test_custom_names(layout: Layout) -> None:
    share = Share(layout, status_page_name="queue.html", status_json_name="queue.json")
    share.pages.refresh(time.time(), RUNNING)
    html = (share.settings.outbox / "queue.html").read_text()
    assert 'href="queue.json"' in html
    assert json.loads((share.settings.outbox / "queue.json").read_text())["page"] == "outbox"
    assert share.settings.status_files == {"queue.html", "queue.json"}


# --- in a real browser ---------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _hrefs(html: str) -> list[str]:
    return re.findall(r'href="([^"]*)"', html)


def _browser(*args: str) -> subprocess.CompletedProcess[str]:
    chromium = _chromium()
    assert chromium is not None
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", "--allow-file-access-from-files", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("I2VD_REQUIRE_BROWSER"),
    reason="chromium is not installed (.ci/run installs it: apt-get install chromium)",
)
def test_a_person_opening_the_page_in_a_browser(layout: Layout, tmp_path: Path) -> None:
    share = populated(layout)
    share.pages.refresh(time.time(), RUNNING)
    page = share.settings.outbox / "i2vd-status.html"

    dom = _browser("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    text = dom.stdout
    # What a person sees: the names as text, each state, the reason and the next step.
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in text
    assert "<img" not in text  # the hostile name made no element, even once parsed
    for heading in ("In progress (1)", "Waiting (2)", "Done (2)", "Failed (1)"):
        assert heading in text
    assert "generating 40%" in text and "people/ben.jpg" in text
    [failed] = json.loads(page.with_name("i2vd-status.json").read_text())["failed"]
    assert html.escape(failed["error"]) in text and html.escape(failed["hint"]) in text
    assert "move broken.png from the failed folder back" in text
    assert "Last updated" in text and "Running" in text
    links = _hrefs(text)
    assert len(links) == 3  # two videos and the JSON
    for link in links:
        target = (page.parent / unquote(link)).resolve()
        assert target.is_file() and target.is_relative_to(share.settings.outbox), link

    shot = tmp_path / "status.png"
    result = _browser(f"--screenshot={shot}", "--window-size=1200,1150", page.as_uri())
    assert result.returncode == 0 and shot.stat().st_size > 10_000, result.stderr
    if os.environ.get("I2VD_SCREENSHOT"):  # how docs/status-page.png is made
        shutil.copyfile(shot, os.environ["I2VD_SCREENSHOT"])


def test_the_committed_screenshot_is_referenced_in_the_readme() -> None:
    assert (REPO / "docs" / "status-page.png").stat().st_size > 10_000
    assert "docs/status-page.png" in (REPO / "README.md").read_text(encoding="utf-8")


def test_failed_image_taken_again_leaves_the_failed_list(layout: Layout) -> None:
    share = Share(layout)
    [job] = share.drop("broken.png", data=b"not a picture")
    assert job.state == JobState.FAILED
    assert [f.source for f in share.snapshot().failed] == ["broken.png"]
    report = share.settings.failed_dir / "broken.png.error.json"
    assert report.is_file()
    shutil.move(share.settings.failed_dir / "broken.png", share.settings.inbox[0] / "broken.png")
    make_image(share.settings.inbox[0] / "broken.png", 96, 72)
    share.intake.take(share.settings.inbox[0], share.settings.inbox[0] / "broken.png")
    snapshot = share.snapshot()
    assert snapshot.failed == () and [w.source for w in snapshot.waiting] == ["broken.png"]


def test_steps_and_time_left_of_a_running_job() -> None:
    assert phase_of(0.0, "diffusion") == ("loading", "loading the model")
    assert phase_of(0.0, "motion") == ("loading", "preparing")
    assert phase_of(0.4, "motion") == ("generating", "generating 40%")
    assert phase_of(1.0, "diffusion") == ("encoding", "encoding the video")
    # Measured jobs first; past their median, the job's own progress; else nothing.
    assert remaining_time(10, 0.5, "generating", (30.0, 4))[0] == 20
    assert remaining_time(40, 0.8, "generating", (30.0, 4)) == (
        10.0,
        "estimate: from its progress so far",
    )
    assert remaining_time(5, 0.01, "generating", None) == (None, "no estimate yet")
    assert remaining_time(50, 1.0, "encoding", (30.0, 4)) == (None, "no estimate yet")


def test_size_is_the_preset_with_the_rules_params_over_it() -> None:
    rule = {
        "engine": "diffusion",
        "model": "m",
        "preset_values": {"resolution": 512, "frames": 16, "steps": 50},
        "params": {"resolution": None, "frames": 8, "steps": None},
    }
    size = size_of("wave", rule)
    assert size.words == "512p, 8 frames, 50 steps"
    assert size.key == ("wave", "diffusion", "m", 512, 8, 50)
    assert size_of("wave", {**rule, "model": "other"}).key != size.key


def test_paused_and_outside_working_hours_in_words(layout: Layout) -> None:
    share = Share(layout)
    reopens = time.time() + 3600
    assert daemon_state(True, {"motion": reopens}, ["motion"]).state == "paused"
    assert daemon_state(False, {}, ["motion"]) == RUNNING
    closed = daemon_state(False, {"motion": reopens}, ["motion"])
    assert (closed.state, closed.reopens_at) == ("outside_window", reopens)
    partly = daemon_state(False, {"diffusion": reopens}, ["motion", "diffusion"])
    assert partly.state == "running" and "diffusion rules" in partly.message

    share.pages.refresh(time.time(), closed, force=True)
    html, data = share.page(share.settings.outbox)
    assert data["daemon"]["state"] == "outside_window" and data["daemon"]["reopens_at"]
    assert "Outside working hours" in html and "It starts again at" in html
    share.pages.refresh(time.time() + 10, PAUSED, force=True)
    html, data = share.page(share.settings.inbox[0])
    assert data["daemon"]["state"] == "paused" and "Paused" in html


def test_places_in_line_follow_the_claims_round_robin() -> None:
    waiting = [
        ("a", 0, 0.0, 1), ("a", 0, 0.0, 2), ("a", 5, 0.0, 3),  # priority 5 first in a
        ("b", 0, 0.0, 4), ("c", 0, 9.0, 6), ("c", 0, 1.0, 5),  # c: earliest due first
    ]  # fmt: skip
    # b was never served, then c (claim 3) before a (claim 7); each inbox in turn.
    assert claim_order(waiting, {"a": 7, "c": 3}) == [4, 5, 3, 6, 1, 2]
    assert claim_order([], {}) == []


def test_a_crash_mid_write_leaves_nothing_after_the_next_start(layout: Layout) -> None:
    share = Share(layout)
    inbox = share.settings.inbox[0]
    left = inbox / ".i2vd-status.html.0badc0de.i2vd-tmp"
    left.write_text("half a page")
    mine = inbox / ".notes.i2vd-tmp"  # not the page's: left alone
    mine.write_text("x")
    share.pages.refresh(time.time(), RUNNING)
    assert not left.exists() and mine.exists()


def test_named_inboxes_take_turns_in_the_line(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for folder in ("north", "south", "outbox", "failed", "rules", "state"):
        (tmp_path / folder).mkdir()
    layout.rule("motion", CATCH_ALL)
    layout.settings["inbox"] = {"photos": "north", "scans": "south"}
    share = Share(layout)
    north, south = share.settings.inbox
    for root, name in ((north, "n1.jpg"), (north, "n2.jpg"), (south, "s1.jpg")):
        make_image(root / name, 96, 72)
        share.intake.take(root, root / name)
    share.pages.refresh(time.time(), RUNNING)
    _, data = share.page(share.settings.outbox)
    line = [(w["position"], w["inbox"], w["source"]) for w in data["waiting"]]
    # The claim serves each inbox in turn: 500 photos never starve one scan.
    assert line == [(1, "photos", "n1.jpg"), (2, "scans", "s1.jpg"), (3, "photos", "n2.jpg")]
    assert [w["source"] for w in share.page(south)[1]["waiting"]] == ["s1.jpg"]
    assert share.run().relative == "n1.jpg" and share.run().relative == "s1.jpg"
