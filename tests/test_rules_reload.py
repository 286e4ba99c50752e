"""Live rule reload: RuleSet on real rule files, RulesWatcher with real watchdog observers,
and the daemon as a subprocess picking up edits, keeping the last good rule and reloading
on SIGHUP."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.observers import Observer

import daemon.ruleset
from conftest import MOTION_RULE, DaemonProcess, Layout, make_image, wait_for
from daemon.engines import Clip, RenderRequest
from daemon.rules import LoadedRule
from daemon.ruleset import ReloadResult, RuleSet, RulesWatcher
from daemon.store import JobStore
from daemon.worker import Worker
from daemon.worker_pool import release_idle
from test_daemon_e2e import jobs

pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

WAVE = "engine: motion\npreset: quick\nmotion: {effect: zoom_in, zoom: 1.3}\n"
SCHEMA_ERROR = MOTION_RULE.replace("params: {resolution: 256}", "params: {frames: 999}")
YAML_ERROR = MOTION_RULE.replace("params: {resolution: 256}", "params: {resolution: 256")
PRESET = "resolution: 256\nframes: {frames}\nfps: 8\nsteps: 20\nguidance: 5.0\n"
OLD = (time.time() - 3600, time.time() - 3600)  # an mtime too old to be racy


class Folder:
    """A rules folder in tmp_path and a RuleSet reading it, with its log captured."""

    def __init__(self, root: Path, caplog: pytest.LogCaptureFixture) -> None:
        self.dir = root / "rules"
        (self.dir / "presets").mkdir(parents=True)
        self.set = RuleSet(self.dir)
        self.caplog = caplog

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text, encoding="utf-8")
        return path

    def names(self) -> list[str]:
        return [loaded.rule.name for loaded in self.set.rules()]

    def rule(self, name: str) -> LoadedRule:
        [loaded] = [r for r in self.set.rules() if r.rule.name == name]
        return loaded

    def lines(self, level: int = logging.INFO) -> list[str]:
        """Messages the RuleSet logged at ``level`` since the last ``take``."""
        return [
            r.getMessage()
            for r in self.caplog.records
            if r.name == "daemon.ruleset" and r.levelno == level
        ]

    def take(self) -> tuple[list[str], list[str]]:
        """(info, error) lines logged since the last take."""
        info, errors = self.lines(logging.INFO), self.lines(logging.ERROR)
        self.caplog.clear()
        return info, errors


@pytest.fixture
def folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Folder:
    caplog.set_level(logging.INFO, logger="daemon.ruleset")
    return Folder(tmp_path, caplog)


# --- RuleSet -----------------------------------------------------------------------


def test_added_edited_and_removed_rule_files_take_effect(folder: Folder) -> None:
    motion = folder.write("motion.yaml", MOTION_RULE)
    first = folder.set.reload()
    assert [r.rule.name for r in first.added] == ["motion"]
    assert folder.take() == ([f"rule motion loaded from {motion}"], [])
    before = folder.set.rules()

    wave = folder.write("wave.yaml", WAVE)
    result = folder.set.reload()
    assert [r.rule.name for r in result.added] == ["wave"] and not result.updated
    assert folder.names() == ["motion", "wave"]
    assert folder.take() == ([f"rule wave loaded from {wave}"], [])

    folder.write("wave.yaml", WAVE.replace("zoom_in", "pan_right"))
    result = folder.set.reload()
    assert [r.rule.name for r in result.updated] == ["wave"] and not result.added
    assert folder.rule("wave").rule.motion.effect == "pan_right"
    assert folder.take() == (["rule wave updated: motion.effect 'zoom_in' -> 'pan_right'"], [])

    wave.unlink()
    result = folder.set.reload()
    assert result.removed == ("wave",)
    assert folder.names() == ["motion"]
    assert folder.take() == ([f"rule wave removed ({wave} was removed)"], [])
    # A snapshot taken earlier is never changed by a reload.
    assert [r.rule.name for r in before] == ["motion"]
    assert before[0].rule.motion.effect == "zoom_in"


def test_a_broken_edit_keeps_the_last_good_rule_and_is_reported_once(folder: Folder) -> None:
    path = folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    good = folder.rule("motion")
    folder.take()

    folder.write("motion.yaml", SCHEMA_ERROR)
    result = folder.set.reload()
    assert not result.changed
    assert folder.rule("motion") == good
    expected = (
        f"{path}:4:18: params.frames: Input should be less than or equal to 32 (got 999); "
        "keeping the last good version"
    )
    assert folder.take() == ([], [expected])
    assert [str(p) for p in result.problems] == [expected.rsplit("; ", 1)[0]]
    for _ in range(3):  # rescans of an unchanged broken file stay quiet
        assert not folder.set.reload().problems
    assert folder.take() == ([], [])

    folder.write("motion.yaml", YAML_ERROR)
    folder.set.reload()
    assert folder.rule("motion") == good
    assert folder.take() == (
        [],
        [f"{path}:5:7: (yaml): expected ',' or '}}', but got ':'; keeping the last good version"],
    )

    folder.write("motion.yaml", MOTION_RULE)
    result = folder.set.reload()
    assert not result.changed
    assert folder.take() == (
        ["rule motion: fixed, now in force (the same as before the broken edit)"],
        [],
    )

    folder.write("motion.yaml", SCHEMA_ERROR)
    folder.set.reload()
    folder.write("motion.yaml", MOTION_RULE.replace("zoom: 1.2", "zoom: 1.5"))
    result = folder.set.reload()
    assert [r.rule.name for r in result.updated] == ["motion"]
    assert folder.take()[0] == ["rule motion: fixed, now in force (motion.zoom 1.2 -> 1.5)"]


def test_a_value_the_yaml_library_chokes_on_keeps_the_last_good_rule(folder: Folder) -> None:
    """PyYAML raises plain LookupErrors for some tagged scalars: still a problem of that
    one file, never a failed reload."""
    path = folder.write("motion.yaml", MOTION_RULE)
    folder.write("presets/p.yaml", PRESET.format(frames=8))
    folder.set.reload()
    folder.take()
    folder.write("motion.yaml", MOTION_RULE + "priority: !!int\n")
    folder.write("presets/p.yaml", PRESET.format(frames="!!int"))
    assert not folder.set.reload().changed
    assert folder.names() == ["motion"]
    errors = folder.take()[1]
    assert len(errors) == 2
    assert errors[0].startswith(f"{folder.dir / 'presets' / 'p.yaml'}:")
    assert errors[1].startswith(f"{path}:")
    assert all(e.endswith("; keeping the last good version") for e in errors)


def test_an_emptied_file_is_a_save_caught_half_way_not_a_rule_of_defaults(
    folder: Folder,
) -> None:
    path = folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    good = folder.rule("motion")
    folder.take()
    folder.write("motion.yaml", "")  # truncated by a non-atomic save, not yet written
    assert not folder.set.reload().changed
    assert folder.rule("motion") == good
    message = "the file is empty; write the rule's fields or remove it"
    assert folder.take() == ([], [f"{path}:1:1: (file): {message}; keeping the last good version"])
    new = folder.write("new.yaml", "\n")
    folder.set.reload()
    assert folder.names() == ["motion"]
    assert folder.take()[1] == [f"{new}:1:1: (file): {message}; rule not loaded"]


def test_a_file_broken_from_the_start_is_not_loaded_until_fixed(folder: Folder) -> None:
    folder.write("motion.yaml", MOTION_RULE)
    bad = folder.write("wave.yaml", WAVE + "params: {fps: 2}\n")
    folder.set.reload()
    assert folder.names() == ["motion"]
    assert folder.take()[1] == [
        f"{bad}:4:15: params.fps: Input should be greater than or equal to 4 (got 2); "
        "rule not loaded"
    ]
    folder.set.reload()
    assert folder.take() == ([], [])

    folder.write("wave.yaml", WAVE)
    result = folder.set.reload()
    assert [r.rule.name for r in result.added] == ["wave"]
    assert folder.take() == ([f"rule wave: fixed, now in force (loaded from {bad})"], [])


def test_a_name_used_twice_goes_to_the_first_file_in_sorted_order(folder: Folder) -> None:
    first = folder.write("a.yaml", "name: same\n" + WAVE)
    second = folder.write("b.yaml", "name: same\n" + MOTION_RULE.replace("name: motion\n", ""))
    folder.set.reload()
    assert [r.file for r in folder.set.rules()] == [first]
    conflict = (
        f"{second}:1:1: name: rule name 'same' is already used by {first}; rule not loaded "
        "(the first file in sorted order keeps the name)"
    )
    assert folder.take() == ([f"rule same loaded from {first}"], [conflict])
    folder.set.reload()
    assert folder.take() == ([], [])  # once, not on every reload

    first.unlink()
    result = folder.set.reload()
    assert [r.file for r in result.updated] == [second]
    info, errors = folder.take()
    assert errors == []
    assert info[0].startswith(f"rule same updated: now from {second}, ")


def test_a_preset_edit_revalidates_the_rules_that_use_it(folder: Folder) -> None:
    preset = folder.write("presets/gentle.yaml", PRESET.format(frames=16))
    folder.write("motion.yaml", MOTION_RULE)
    folder.write("wave.yaml", WAVE.replace("preset: quick", "preset: gentle"))
    folder.set.reload()
    assert folder.rule("wave").rule.resolved().frames == 16
    assert folder.take()[0][0] == f"preset gentle loaded from {preset}"

    preset.write_text(preset.read_text().replace("frames: 16", "frames: 24"))
    result = folder.set.reload()
    assert [r.rule.name for r in result.updated] == ["wave"]
    assert folder.rule("wave").rule.resolved().frames == 24
    assert folder.take() == (
        [
            "preset gentle updated: frames 16 -> 24",
            "rule wave updated: preset_values.frames 16 -> 24",
        ],
        [],
    )

    # A broken preset keeps its last good version, and so the rule stays as it was.
    preset.write_text(preset.read_text().replace("frames: 24", "frames: many"))
    result = folder.set.reload()
    assert not result.changed
    assert folder.rule("wave").rule.resolved().frames == 24
    info, errors = folder.take()
    assert info == []
    assert errors == [
        f"{preset}:2:9: frames: Input should be a valid integer, unable to parse string as "
        "an integer (got 'many'); keeping the last good version"
    ]

    # Without its preset the rule does not validate: its last good version stays.
    preset.unlink()
    result = folder.set.reload()
    assert not result.changed
    assert folder.rule("wave").rule.resolved().frames == 24
    info, errors = folder.take()
    assert info == [f"preset gentle removed ({preset} was removed)"]
    assert len(errors) == 1
    assert errors[0].startswith(f"{folder.dir / 'wave.yaml'}:1:1: (rule): preset 'gentle' is not")
    assert errors[0].endswith("; keeping the last good version")


def test_an_editors_atomic_rename_save_is_picked_up(folder: Folder) -> None:
    path = folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    folder.take()
    temp = folder.write(".motion.yaml.tmp", MOTION_RULE.replace("zoom_in", "zoom_out"))
    folder.write(".#motion.yaml", "not: [a rule")  # an editor's lock file: never read
    folder.write("._motion.yaml", "\x00\x05binary")  # macOS metadata on a share
    assert not folder.set.reload().changed
    os.replace(temp, path)
    result = folder.set.reload()
    assert [r.rule.name for r in result.updated] == ["motion"]
    assert folder.take() == (["rule motion updated: motion.effect 'zoom_in' -> 'zoom_out'"], [])


class Spy:
    """Counts the calls the RuleSet makes to the shared loader's read and parse steps."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = self.parses = 0
        for name in ("read_file", "parse_rule", "parse_preset"):
            live = daemon.ruleset
            monkeypatch.setattr(live, name, self._counting(name, getattr(live, name)))

    def _counting(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if name == "read_file":
                self.reads += 1
            else:
                self.parses += 1
            return function(*args, **kwargs)

        return counted


def test_an_unchanged_folder_is_neither_read_nor_parsed(
    folder: Folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    for name, text in (("motion.yaml", MOTION_RULE), ("wave.yml", WAVE)):
        os.utime(folder.write(name, text), OLD)
    os.utime(folder.write("presets/p.yaml", PRESET.format(frames=8)), OLD)
    folder.set.reload()
    reads, parses = spy.reads, spy.parses
    assert (reads, parses) == (3, 3)
    for _ in range(5):
        assert folder.set.reload() == ReloadResult()
    assert (spy.reads, spy.parses) == (reads, parses)

    # Touched but the same bytes: read again, not parsed again.
    os.utime(folder.dir / "motion.yaml", (time.time() - 60, time.time() - 60))
    folder.set.reload()
    assert (spy.reads, spy.parses) == (reads + 1, parses)


def test_an_edit_keeping_size_and_mtime_is_still_noticed(folder: Folder) -> None:
    """Coarse share timestamps: same size, same mtime, new bytes. The ctime (and a
    recent mtime, which is never trusted) still give it away."""
    path = folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    stat = path.stat()
    path.write_text(MOTION_RULE.replace("zoom: 1.2", "zoom: 1.4"), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    result = folder.set.reload()
    assert [r.rule.name for r in result.updated] == ["motion"]


def test_a_vanished_rules_folder_keeps_the_rules_in_force(folder: Folder) -> None:
    folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    folder.take()
    away = folder.dir.with_name("away")
    folder.dir.rename(away)
    result = folder.set.reload()
    assert result.folder_missing and not result.changed
    assert folder.names() == ["motion"]
    folder.set.reload()
    warnings = folder.lines(logging.WARNING)
    assert len(warnings) == 1 and "keeping the 1 rule(s) in force" in warnings[0]
    away.rename(folder.dir)
    assert not folder.set.reload().changed
    assert folder.names() == ["motion"]


def test_a_rules_folder_made_after_start_is_read_and_watched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.ruleset")
    rules_dir = tmp_path / "later"
    ruleset = RuleSet(rules_dir)
    assert ruleset.reload().folder_missing
    watcher = RulesWatcher(rules_dir, ruleset.reload, interval=0.2, debounce=0.1)
    watcher.start()
    try:
        rules_dir.mkdir()
        (rules_dir / "motion.yaml").write_text(MOTION_RULE, encoding="utf-8")
        wait_for(lambda: [r.rule.name for r in ruleset.rules()] == ["motion"], 5)
        wait_for(lambda: rules_dir in watcher.watched, 5)
    finally:
        watcher.stop()
    assert f"rules folder {rules_dir} can be read now" in caplog.text


def test_readers_always_see_a_whole_snapshot(folder: Folder) -> None:
    """Intake reads the rules on another thread while reloads replace them."""
    folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    seen: set[tuple[str, ...]] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(tuple(sorted(r.rule.name for r in folder.set.rules())))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for index in range(30):
            if index % 2:
                (folder.dir / "a.yaml").unlink()
                (folder.dir / "b.yaml").unlink()
            else:
                folder.write("a.yaml", WAVE)
                folder.write("b.yaml", WAVE)
            folder.set.reload()
    finally:
        stop.set()
        reader.join()
    assert seen <= {("motion",), ("a", "b", "motion")}


# --- RulesWatcher ------------------------------------------------------------------


class Reloads:
    """A RulesWatcher calling a real RuleSet reload, with every call recorded."""

    def __init__(self, folder: Folder, **options: object) -> None:
        self.folder = folder
        self.times: list[float] = []
        self.watcher = RulesWatcher(folder.dir, self._reload, **options)  # type: ignore[arg-type]

    def _reload(self) -> None:
        self.times.append(time.monotonic())
        self.folder.set.reload()

    @property
    def count(self) -> int:
        return len(self.times)

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 10.0) -> int:
        """Until no reload has happened for ``quiet`` seconds; the count then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.times[-1] if self.times else 0.0
            if time.monotonic() - last >= quiet:
                return self.count
            time.sleep(0.05)
        raise AssertionError(f"reloads never stopped: {self.count}")


@pytest.fixture
def reloads(folder: Folder) -> Iterator[Callable[..., Reloads]]:
    made: list[Reloads] = []

    def make(**options: object) -> Reloads:
        options.setdefault("debounce", 0.3)
        options.setdefault("interval", None)
        item = Reloads(folder, **options)
        made.append(item)
        item.watcher.start()
        return item

    yield make
    for item in made:
        item.watcher.stop()


def test_a_burst_of_writes_is_one_reload(folder: Folder, reloads: Callable[..., Reloads]) -> None:
    folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    watch = reloads()
    assert watch.watcher.kind == "events"
    time.sleep(0.2)
    for zoom in range(10):  # an editor's save in many small writes
        folder.write("motion.yaml", MOTION_RULE.replace("zoom: 1.2", f"zoom: 1.{zoom}"))
        time.sleep(0.02)
    wait_for(lambda: watch.count >= 1, 5)
    # The reload's own reads of the files cause no further reloads.
    assert watch.wait_quiet(1.0) == 1
    assert folder.rule("motion").rule.motion.zoom == 1.9


def test_a_rename_and_a_new_presets_folder_are_seen(
    folder: Folder, reloads: Callable[..., Reloads]
) -> None:
    (folder.dir / "presets").rmdir()
    folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    watch = reloads()
    temp = folder.write(".motion.yaml.swp", MOTION_RULE.replace("zoom_in", "zoom_out"))
    time.sleep(0.6)
    assert watch.count == 0  # hidden temporaries are not rule files
    os.replace(temp, folder.dir / "motion.yaml")
    wait_for(lambda: folder.rule("motion").rule.motion.effect == "zoom_out", 5)

    # presets/ made after the watch started: watched from the next reload on.
    (folder.dir / "presets").mkdir()
    wait_for(lambda: watch.count >= 2, 5)
    watch.wait_quiet(0.5)
    folder.write("presets/gentle.yaml", PRESET.format(frames=8))
    folder.write("wave.yaml", WAVE.replace("preset: quick", "preset: gentle"))
    wait_for(lambda: "wave" in folder.names(), 5)
    count = watch.wait_quiet(0.5)
    folder.write("presets/gentle.yaml", PRESET.format(frames=12))
    wait_for(lambda: watch.count > count, 5)
    wait_for(lambda: folder.rule("wave").rule.resolved().frames == 12, 5)


def test_polling_mode_notices_an_edit(folder: Folder, reloads: Callable[..., Reloads]) -> None:
    folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    watch = reloads(mode="polling", poll_interval=0.2)
    assert watch.watcher.kind == "polling"
    folder.write("motion.yaml", MOTION_RULE.replace("zoom: 1.2", "zoom: 1.25"))
    wait_for(lambda: folder.rule("motion").rule.motion.zoom == 1.25, 5)


def test_the_periodic_rescan_and_a_request_reload(
    folder: Folder, reloads: Callable[..., Reloads]
) -> None:
    """Where no event ever comes (a share): the timer; and SIGHUP's request(0)."""
    folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    timer = reloads(observe=False, interval=0.3)
    wait_for(lambda: timer.count >= 3, 5)
    timer.watcher.stop()

    asked = reloads(observe=False, interval=None, debounce=5.0)
    time.sleep(0.3)
    assert asked.count == 0
    started = time.monotonic()
    asked.watcher.request(0.0)
    wait_for(lambda: asked.count == 1, 5)
    assert asked.times[0] - started < 0.5


class NoWatchesLeft(Observer):  # type: ignore[misc,valid-type]
    """Fake: a real inotify observer refusing new watches the way the kernel does when
    fs.inotify.max_user_watches is reached (host-wide, so not provoked for real)."""

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


def test_without_inotify_watches_auto_mode_polls(
    folder: Folder, reloads: Callable[..., Reloads], caplog: pytest.LogCaptureFixture
) -> None:
    folder.write("motion.yaml", MOTION_RULE)
    folder.set.reload()
    watch = reloads(event_observer=NoWatchesLeft, poll_interval=0.2)
    assert watch.watcher.kind == "polling"
    assert "file events unavailable for the rules folder" in caplog.text
    folder.write("motion.yaml", MOTION_RULE.replace("zoom: 1.2", "zoom: 1.25"))
    wait_for(lambda: folder.rule("motion").rule.motion.zoom == 1.25, 5)

    events_only = reloads(mode="events", event_observer=NoWatchesLeft, interval=0.3)
    assert events_only.watcher.kind == ""
    assert "rules are re-read every 0.3s and on SIGHUP" in caplog.text
    wait_for(lambda: events_only.count >= 1, 5)


class Unloader:
    """An engine that records release_idle calls; ``fails`` makes it raise instead."""

    def __init__(self, name: str, fails: bool = False) -> None:
        self.name = name
        self.fails = fails
        self.calls: list[float] = []

    def render(self, request: RenderRequest) -> Clip:
        raise NotImplementedError

    def release_idle(self, now: float) -> None:
        self.calls.append(now)
        if self.fails:
            raise RuntimeError("CUDA error: unspecified launch failure")


def test_the_idle_timer_asks_every_engine_and_survives_a_failure(
    layout: Layout, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker pool's 30-second timer body: one engine failing does not stop the
    others (nor the timer, which only sees the function return)."""
    settings = layout.load()
    store = JobStore(settings.database_url)
    try:
        worker = Worker(settings, store, "test:1")
        broken, fine = Unloader("diffusion", fails=True), Unloader("motion")
        worker.engines.update({"diffusion": broken, "motion": fine})
        before = time.monotonic()
        release_idle(worker.engines)
        release_idle(worker.engines)
    finally:
        store.close()
    assert len(broken.calls) == len(fine.calls) == 2
    assert before <= fine.calls[0] <= time.monotonic()  # the monotonic clock
    assert caplog.text.count("engine diffusion: releasing idle resources failed") == 2
    assert "unspecified launch failure" in caplog.text


# --- the daemon --------------------------------------------------------------------

DaemonFactory = Callable[..., DaemonProcess]


def sidecar(layout: Layout, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout.outbox / name).read_text(encoding="utf-8"))
    return doc


def wait_log(proc: DaemonProcess, text: str, timeout: float = 10.0) -> None:
    wait_for(lambda: text in proc.log, timeout)


@pytest.mark.slow
def test_an_edited_rule_is_used_for_the_next_drop_without_a_restart(
    layout: Layout, daemon: DaemonFactory
) -> None:
    proc = daemon()
    proc.wait_started()
    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: (layout.outbox / "a.motion.mp4").exists())

    layout.rule(
        "motion",
        MOTION_RULE.replace("zoom_in", "pan_right") + 'output: {name: "{{ stem }}.edited"}\n',
    )
    wait_log(proc, "rule motion updated: ")
    make_image(layout.inbox / "b.jpg", seed=1)
    wait_for(lambda: (layout.outbox / "b.edited.mp4").exists())
    assert proc.stop() == 0

    assert sidecar(layout, "a.motion.json")["motion"]["effect"] == "zoom_in"
    assert sidecar(layout, "b.edited.json")["motion"]["effect"] == "pan_right"
    log = proc.log
    assert re.search(
        r"rule motion updated: motion\.effect 'zoom_in' -> 'pan_right', "
        r"output\.name '\{\{ stem \}\}\.\{\{ rule \}\}' -> '\{\{ stem \}\}\.edited'",
        log,
    ), log
    assert "i2vd started" in log and log.count("rule motion updated") == 1


@pytest.mark.slow
def test_a_broken_edit_keeps_the_last_good_rule_in_the_daemon(
    layout: Layout, daemon: DaemonFactory
) -> None:
    layout.write_config(rescan_seconds=0.5)  # rescans must not repeat the errors
    proc = daemon()
    proc.wait_started()
    path = layout.rules / "motion.yaml"

    layout.rule("motion", YAML_ERROR)
    wait_log(proc, f"{path}:5:7: (yaml): expected ',' or '}}', but got ':'; keeping the last good")
    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: (layout.outbox / "a.motion.mp4").exists())

    layout.rule("motion", SCHEMA_ERROR)
    schema = (
        f"{path}:4:18: params.frames: Input should be less than or equal to 32 (got 999); "
        "keeping the last good version"
    )
    wait_log(proc, schema)
    make_image(layout.inbox / "b.jpg", seed=1)
    wait_for(lambda: (layout.outbox / "b.motion.mp4").exists())
    time.sleep(1.2)  # two more rescans

    layout.rule("motion", MOTION_RULE)
    wait_log(proc, "rule motion: fixed, now in force")
    assert proc.stop() == 0

    log = proc.log
    assert log.count(schema) == 1 and log.count("(yaml): expected") == 1, log
    assert re.search(r"ERROR +daemon\.ruleset: " + re.escape(schema), log)
    for name in ("a", "b"):  # the last good rule: quick preset, 256 px
        doc = sidecar(layout, f"{name}.motion.json")
        assert doc["effective"]["frames"] == 8
        assert doc["effective"]["width"] == 256


@pytest.mark.slow
def test_sighup_reloads_the_rules(layout: Layout, daemon: DaemonFactory) -> None:
    """With polling, an edit that keeps the file's size and mtime is invisible to the
    watcher (and the rescan is far off): only SIGHUP makes the daemon read it."""
    layout.write_config(watch_mode="polling", rescan_seconds=60)
    proc = daemon()
    proc.wait_started()
    path = layout.rules / "motion.yaml"
    stat = path.stat()
    path.write_text(MOTION_RULE.replace("zoom: 1.2", "zoom: 1.5"), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    time.sleep(2.5)  # longer than a polling round
    assert "rule motion updated" not in proc.log

    proc.proc.send_signal(signal.SIGHUP)
    wait_log(proc, "rule motion updated: motion.zoom 1.2 -> 1.5", 5)
    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: (layout.outbox / "a.motion.json").exists())
    assert proc.stop() == 0
    assert "received SIGHUP: reloading the rules" in proc.log
    assert sidecar(layout, "a.motion.json")["motion"]["zoom"] == 1.5


@pytest.mark.slow
def test_a_job_queued_before_an_edit_keeps_its_rule(layout: Layout, daemon: DaemonFactory) -> None:
    layout.rule(
        "slow",
        'match: {patterns: ["big*"]}\npriority: 10\npreset: quick\n'
        "params: {resolution: 512}\nmotion: {duration: 30, fps: 60}\n",  # several seconds
    )
    make_image(layout.inbox / "big.jpg", 640, 480)
    proc = daemon()
    proc.wait_started()
    wait_log(proc, "job 1 running")
    make_image(layout.inbox / "small.jpg", seed=1)
    wait_log(proc, "job 2 queued")

    layout.rule("motion", MOTION_RULE + 'output: {name: "{{ stem }}.edited"}\n')
    wait_log(proc, "rule motion updated")
    make_image(layout.inbox / "later.jpg", seed=2)
    wait_for(lambda: (layout.outbox / "later.edited.mp4").exists(), 60)
    assert proc.stop() == 0

    log = proc.log
    assert log.index("rule motion updated") < log.index("job 2 running"), log
    assert (layout.outbox / "small.motion.mp4").exists()
    queued, later = [job for job in jobs(layout) if job.rule_name == "motion"]
    assert queued.rule_data["output"]["name"] == "{{ stem }}.{{ rule }}"
    assert later.rule_data["output"]["name"] == "{{ stem }}.edited"
    assert queued.rule_hash != later.rule_hash


@pytest.mark.slow
def test_an_image_no_rule_matched_is_taken_once_a_rule_does(
    layout: Layout, daemon: DaemonFactory
) -> None:
    layout.rule("motion", MOTION_RULE + 'match: {folders: ["people/**"]}\n')
    proc = daemon()  # rescan_seconds 30: only the reload can bring the image back
    proc.wait_started()
    make_image(layout.inbox / "places" / "a.jpg")
    wait_log(proc, "no rule matches places/a.jpg")

    layout.rule("places", MOTION_RULE.replace("name: motion", "name: places"))
    wait_for(lambda: (layout.outbox / "places" / "a.places.mp4").exists(), 15)
    assert proc.stop() == 0
    assert "rule places loaded from" in proc.log
