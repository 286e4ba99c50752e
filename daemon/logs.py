"""Log output for the three places i2vd runs: journald, a terminal, a pipe or file.

Under systemd (``JOURNAL_STREAM`` names our stderr) journald adds its own timestamps,
so lines carry none, and each starts with ``<N>``, the syslog priority journald reads
(``journalctl -p warning`` then works). Elsewhere lines are as they always were. In a
terminal, ``run --once`` keeps one live progress line under the log (this run's jobs,
``3 of 10 done``, and the running one's progress); piped or under systemd there is
none, so log files never fill with carriage returns.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
# syslog priorities (sd-daemon.h): what journald files each line under.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def under_journald(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to journald: ``JOURNAL_STREAM`` is
    ``device:inode`` of the stream systemd gave us, and a redirect changes it."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 3 if record.levelno > logging.WARNING else 6)
        # Continuation lines (tracebacks) get the same priority, so `journalctl -p err`
        # shows the whole of an error, not only its first line.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class ProgressLine:
    """One line at the bottom of a terminal, redrawn in place; log lines print above it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self.lock = threading.RLock()

    def update(self, text: str) -> None:
        with self.lock:
            width = _columns() - 1
            self.text = text[:width]
            self.stream.write("\r\x1b[K" + self.text)
            self.stream.flush()

    def clear(self) -> None:
        with self.lock:
            if self.text:
                self.stream.write("\r\x1b[K")
                self.stream.flush()


class _ProgressAwareHandler(logging.StreamHandler[TextIO]):
    """Prints each record above the progress line, then draws the line again."""

    def __init__(self, stream: TextIO, progress: ProgressLine) -> None:
        super().__init__(stream)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        with self.progress.lock:
            self.progress.clear()
            super().emit(record)
            if self.progress.text:
                self.stream.write(self.progress.text)
                self.stream.flush()


def _columns() -> int:
    try:
        # 0 from a terminal whose size nobody set (a fresh pty): take the usual 80.
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


def setup(level: str, *, live: bool = False, stream: TextIO | None = None) -> ProgressLine | None:
    """Configure the root logger for where the output goes. With ``live`` and a
    terminal, return the progress line to keep current (None otherwise)."""
    out = stream if stream is not None else sys.stderr
    progress: ProgressLine | None = None
    handler: logging.StreamHandler[TextIO]
    if under_journald(out):
        handler = logging.StreamHandler(out)
        handler.setFormatter(JournalFormatter())
    elif live and out.isatty():
        progress = ProgressLine(out)
        handler = _ProgressAwareHandler(out, progress)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler logs every timer tick at INFO and skipped overlaps at WARNING.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # At DEBUG, watchdog logs every raw inotify event, the daemon's own reads included.
    logging.getLogger("watchdog").setLevel(max(logging.INFO, logging.getLevelName(level)))
    # Alembic names each of its plugins at INFO when it loads (the upgrades themselves
    # are still logged).
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    return progress
