"""Noticing files: SettleTracker and InboxWatcher with real watchdog observers on temp folders."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from conftest import make_image, wait_for
from daemon.observer import FolderObserver
from daemon.watch import InboxWatcher, SettleTracker, is_candidate_name, scan

# watchdog's own inotify bookkeeping warns when nested folders appear quickly; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

SETTLE = 0.3  # the slow-write test sets its own
TICK = 0.05


class Pump:
    """The service's settle tick on a thread (folder rescans, then a tracker poll), minus
    intake. Records every path reported stable, when, and its size at that moment."""

    def __init__(self, watcher: InboxWatcher) -> None:
        self.watcher = watcher
        self.tracker = watcher.tracker
        self.reports: list[tuple[float, Path, int]] = []
        self.last_poll = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            for folder in self.watcher.take_folder_rescans():
                for path in scan(folder):
                    self.tracker.note(path)
            now = time.time()
            for _root, path in self.tracker.poll(now):
                try:
                    size = path.stat().st_size
                except OSError:
                    size = -1
                with self._lock:
                    self.reports.append((now, path, size))
            self.last_poll = now

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def reported(self) -> list[Path]:
        with self._lock:
            return [path for _, path, _ in self.reports]

    def wait_reported(self, *paths: Path, timeout: float = 10.0) -> None:
        wait_for(lambda: all(p in self.reported() for p in paths), timeout)

    def wait_quiet(self) -> None:
        """Until nothing is waiting to settle and one more settle window has been polled."""
        wait_for(lambda: self.tracker.pending() == 0, 10)
        target = time.time() + self.tracker.settle_seconds + 2 * TICK
        wait_for(lambda: self.last_poll >= target, 10)


class FakeInotifyLimitObserver(Observer):  # type: ignore[misc,valid-type]
    """Fake: stands in for inotify hitting max_user_watches, which cannot be provoked safely
    here (the limit is host-wide). A real inotify observer whose start() fails the way the
    kernel makes it fail: OSError(ENOSPC)."""

    def start(self) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.fixture
def watch(inbox: Path) -> Iterator[Callable[..., Pump]]:
    """Start an InboxWatcher over ``inbox`` plus its pump; both are stopped afterwards."""
    running: list[tuple[InboxWatcher, Pump]] = []

    def start(mode: str = "events", settle: float = SETTLE, **kwargs: object) -> Pump:
        watcher = InboxWatcher(SettleTracker([inbox], settle), mode, poll_interval=0.1, **kwargs)
        watcher.start()
        pump = Pump(watcher)
        running.append((watcher, pump))
        return pump

    yield start
    for watcher, pump in running:
        pump.close()
        watcher.stop()


def test_slow_write_is_reported_once_after_the_last_chunk(watch, inbox: Path) -> None:
    settle = 0.5
    pump = watch("events", settle=settle)
    path = inbox / "slow.jpg"
    chunks = [os.urandom(4096) for _ in range(6)]
    with open(path, "wb") as handle:
        for index, chunk in enumerate(chunks):
            handle.write(chunk)
            handle.flush()
            last_write = time.time()
            if index < len(chunks) - 1:
                time.sleep(0.25)  # the writer's pace, longer than the settle window in total
    assert pump.reported() == [], "reported while it was still being written"
    pump.wait_reported(path)
    pump.wait_quiet()

    assert pump.reported() == [path]
    reported_at, _, size = pump.reports[0]
    assert size == sum(len(c) for c in chunks)
    assert reported_at - last_write >= settle - 0.01


def test_hidden_and_partial_names_wait_until_renamed(watch, inbox: Path) -> None:
    pump = watch("events")
    names = [
        "a.jpg.part",
        "b.jpg.crdownload",
        "c.jpg.tmp",
        "~$x.jpg",
        ".hidden.jpg",
        "Thumbs.db",
        ".DS_Store",
    ]
    for name in names:
        make_image(inbox / name, 64, 48, fmt="JPEG")
    sentinel = make_image(inbox / "sentinel.jpg", 64, 48)
    pump.wait_reported(sentinel)
    pump.wait_quiet()
    assert pump.reported() == [sentinel]
    assert sorted(p.name for p in scan(inbox)) == ["sentinel.jpg"]

    renamed = []
    for index, name in enumerate(names):
        target = inbox / f"renamed-{index}.jpg"
        os.rename(inbox / name, target)
        renamed.append(target)
    pump.wait_reported(*renamed)
    pump.wait_quiet()
    assert sorted(pump.reported()) == sorted([sentinel, *renamed])


@pytest.mark.parametrize("mode", ["events", "polling"])
def test_files_and_folders_moved_in_from_outside_are_noticed(
    watch, inbox: Path, outside: Path, mode: str
) -> None:
    pump = watch(mode)
    assert pump.watcher.kind == mode
    single = make_image(outside / "moved.jpg", 64, 48)
    batch = outside / "batch"
    make_image(batch / "one.jpg", 64, 48)
    make_image(batch / "deep" / "two.png", 64, 48)
    make_image(batch / ".skip.jpg", 64, 48)

    os.rename(single, inbox / "moved.jpg")
    os.rename(batch, inbox / "batch")
    expected = [inbox / "moved.jpg", inbox / "batch" / "one.jpg", inbox / "batch/deep/two.png"]
    pump.wait_reported(*expected)
    pump.wait_quiet()
    assert sorted(pump.reported()) == sorted(expected)


def test_polling_mode_uses_a_polling_observer(watch, inbox: Path) -> None:
    pump = watch("polling")
    assert isinstance(pump.watcher.observer, PollingObserver)
    dropped = make_image(inbox / "sub" / "p.jpg", 64, 48)
    pump.wait_reported(dropped)
    pump.wait_quiet()
    assert pump.reported() == [dropped]


def test_auto_uses_file_events_when_they_work(watch, inbox: Path) -> None:
    pump = watch("auto")
    assert pump.watcher.kind == "events"
    assert not isinstance(pump.watcher.observer, PollingObserver)
    dropped = make_image(inbox / "e.jpg", 64, 48)
    pump.wait_reported(dropped)


def test_auto_falls_back_to_polling_when_inotify_is_exhausted(
    watch, inbox: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pump = watch("auto", event_observer=FakeInotifyLimitObserver)
    assert pump.watcher.kind == "polling"
    assert isinstance(pump.watcher.observer, PollingObserver)
    assert "max_user_watches" in caplog.text
    dropped = make_image(inbox / "f.jpg", 64, 48)
    pump.wait_reported(dropped)
    pump.wait_quiet()
    assert pump.reported() == [dropped]


def test_events_mode_does_not_hide_an_inotify_failure(inbox: Path) -> None:
    watcher = InboxWatcher(
        SettleTracker([inbox], SETTLE), "events", event_observer=FakeInotifyLimitObserver
    )
    with pytest.raises(OSError) as raised:
        watcher.start()
    assert raised.value.errno == errno.ENOSPC
    watcher.stop()


class FakeRefusingSchedules(Observer):  # type: ignore[misc,valid-type]
    """Fake: a real inotify observer that starts, then refuses every watch the way the
    kernel does once fs.inotify.max_user_watches is reached."""

    def schedule(self, *args: object, **kwargs: object) -> object:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


def test_the_observer_falls_back_once_and_keeps_watching_new_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The helper both watchers use: called again after every rules reload, it warns
    once, polls from then on, and picks up a folder made later."""
    seen: list[str] = []

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            seen.append(os.fsdecode(event.src_path))

    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    observer = FolderObserver(
        Handler(),
        "auto",
        recursive=False,
        subject="the test folders",
        otherwise="nothing else",
        poll_interval=0.1,
        event_observer=FakeRefusingSchedules,
    )
    try:
        for _ in range(3):
            observer.watch([first, later])
        assert (observer.kind, observer.watched) == ("polling", [first])
        later.mkdir()
        observer.watch([first, later])
        assert observer.watched == [first, later]
        (later / "a.yaml").write_text("x", encoding="utf-8")
        wait_for(lambda: str(later / "a.yaml") in seen, 5)
    finally:
        observer.stop()
    assert caplog.text.count("file events unavailable for the test folders") == 1


@pytest.mark.parametrize("mode", ["events", "polling"])
def test_symlinks_into_the_inbox_are_never_reported(
    watch, inbox: Path, outside: Path, mode: str
) -> None:
    real = make_image(outside / "real.jpg", 64, 48)
    album = outside / "album"
    make_image(album / "in-album.jpg", 64, 48)
    pump = watch(mode)

    (inbox / "link.jpg").symlink_to(real)
    (inbox / "linked-album").symlink_to(album, target_is_directory=True)
    make_image(album / "added-later.jpg", 64, 48)
    with open(real, "ab") as handle:
        handle.write(b"\0")  # the target changes: still not ours
    sentinel = make_image(inbox / "sentinel.jpg", 64, 48)

    pump.wait_reported(sentinel)
    pump.wait_quiet()
    assert pump.reported() == [sentinel]
    assert list(scan(inbox)) == [sentinel]


def test_a_symlinked_path_noted_directly_is_refused(inbox: Path, outside: Path) -> None:
    """Even if something hands the tracker a path through a symlinked folder, it is refused."""
    album = outside / "album"
    target = make_image(album / "x.jpg", 64, 48)
    (inbox / "linked").symlink_to(album, target_is_directory=True)
    (inbox / "x.jpg").symlink_to(target)
    tracker = SettleTracker([inbox], 0.0)
    tracker.note(inbox / "linked" / "x.jpg")
    tracker.note(inbox / "x.jpg")
    tracker.note(outside / "album" / "x.jpg")  # outside every root
    assert tracker.poll(time.time()) == []
    assert tracker.poll(time.time() + 1) == []
    assert tracker.pending() == 0


def test_scan_finds_nested_files_and_skips_hidden_and_linked_ones(
    inbox: Path, outside: Path
) -> None:
    for relative in ["a.jpg", "sub/b.png", "sub/deeper/c.jpg", "sub/notes.txt"]:
        make_image(inbox / relative, 32, 24, fmt="PNG")
    for relative in [".hidden.jpg", "sub/.x.jpg", ".trash/d.jpg", "sub/e.jpg.part", "~$f.jpg"]:
        make_image(inbox / relative, 32, 24, fmt="PNG")
    make_image(outside / "g.jpg", 32, 24)
    (inbox / "sub" / "g.jpg").symlink_to(outside / "g.jpg")
    (inbox / "linked").symlink_to(outside, target_is_directory=True)

    found = sorted(p.relative_to(inbox).as_posix() for p in scan(inbox))
    assert found == ["a.jpg", "sub/b.png", "sub/deeper/c.jpg", "sub/notes.txt"]


def test_files_inside_hidden_folders_are_not_reported(watch, inbox: Path) -> None:
    pump = watch("events")
    make_image(inbox / ".Trash-1000" / "files" / "deleted.jpg", 64, 48)
    sentinel = make_image(inbox / "sentinel.jpg", 64, 48)
    pump.wait_reported(sentinel)
    pump.wait_quiet()
    assert pump.reported() == [sentinel]


@pytest.mark.parametrize(
    ("name", "candidate"),
    [
        ("photo.jpg", True),
        ("IMG_0001.JPG", True),
        ("café crème.png", True),
        ("照片.png", True),
        ('it\'s "quoted".jpg', True),
        ("a.jpg.part", False),
        ("a.jpg.partial", False),
        ("a.jpg.crdownload", False),
        ("a.jpg.download", False),
        ("a.jpg.tmp", False),
        ("a.jpg.TMP", False),
        ("a.jpg.temp", False),
        (".a.jpg.swp", False),
        ("~$x.jpg", False),
        ("~x.jpg", True),  # only Office lock files (~$) and backups (x~) wait
        ("beach.jpg~", False),
        (".hidden.jpg", False),
        ("Thumbs.db", False),
        ("thumbs.db", False),
        ("desktop.ini", False),
        (".DS_Store", False),
    ],
)
def test_is_candidate_name(name: str, candidate: bool) -> None:
    assert is_candidate_name(name) is candidate
