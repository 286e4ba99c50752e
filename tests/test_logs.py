"""Log output under journald (priorities, no timestamps), piped, and in a terminal."""

from __future__ import annotations

import logging
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import Layout, make_image
from daemon.logs import JournalFormatter, under_journald

STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def run_once(layout: Layout, stderr: int, env: dict[str, str]) -> int:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "run", "--once", "--config", str(layout.config_file)],
        cwd=layout.root,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        timeout=120,
        check=False,
    ).returncode


def test_under_journald_lines_carry_priorities_and_no_timestamps(layout: Layout) -> None:
    make_image(layout.inbox / "a.jpg")
    log_path = layout.root / "journal.log"
    with open(log_path, "wb") as out:
        st = os.fstat(out.fileno())
        code = run_once(layout, out.fileno(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert code == 0
    lines = log_path.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert not any(STAMP.search(line) for line in lines)
    assert any(line.startswith("<6>daemon.service: i2vd started") for line in lines)
    assert any(line.startswith("<7>") for line in lines)  # the test config logs DEBUG


def test_a_journal_stream_that_is_not_ours_is_ignored(layout: Layout) -> None:
    log_path = layout.root / "redirected.log"
    with open(log_path, "wb") as out:
        code = run_once(layout, out.fileno(), {"JOURNAL_STREAM": "1:2"})
    assert code == 0
    text = log_path.read_text()
    assert "<6>" not in text and STAMP.search(text)


def test_priorities_follow_syslog_and_tracebacks_keep_theirs() -> None:
    fmt = JournalFormatter()
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful", None, None)
    assert fmt.format(record) == "<4>x: careful"
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    lines = fmt.format(record).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_under_journald_needs_our_own_stream(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as out:
        st = os.fstat(out.fileno())
        assert under_journald(out, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not under_journald(out, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not under_journald(out, {})


def test_run_once_in_a_terminal_shows_a_live_progress_line(layout: Layout) -> None:
    for i in range(3):
        make_image(layout.inbox / f"p{i}.jpg", seed=i)
    layout.write_config(log_level="INFO")
    master, slave = pty.openpty()
    chunks: list[bytes] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--once", "--config", str(layout.config_file)],
        cwd=layout.root,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed: the process exited
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(30) == 0
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "\r\x1b[K" in text
    # This run's jobs, done of total: the total grows as intake queues the images (a
    # drop's files settle one by one) and never counts one twice.
    lines = re.findall(r"\r\x1b\[K(\d+) of (\d+) done([^\r\n]*)", text)
    counts = [(int(done), int(total)) for done, total, _ in lines]
    assert counts and all(done <= total <= 3 for done, total in counts), counts
    assert any(total == 3 for _, total in counts), counts
    assert not any("queued" in rest for _, _, rest in lines), lines


def test_piped_output_has_no_progress_line(layout: Layout) -> None:
    make_image(layout.inbox / "a.jpg")
    log_path = layout.root / "piped.log"
    with open(log_path, "wb") as out:
        assert run_once(layout, out.fileno(), {}) == 0
    assert "\r" not in log_path.read_text()


def test_a_first_start_logs_the_upgrade_but_not_alembics_plugins(layout: Layout, daemon) -> None:
    """The queue's upgrades are worth a line each; Alembic naming its plugins is not."""
    layout.write_config(log_level="INFO")
    proc = daemon()
    proc.wait_started()
    assert "Running upgrade" in proc.log
    assert "alembic.runtime.plugins" not in proc.log
    assert proc.stop() == 0
