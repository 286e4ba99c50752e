"""Tools of the fault-injection suite: real mounts, a daemon folder layout spread over
them, and an audit of where every dropped image ended up.

Mounts need root (tmpfs and bind mounts); every helper that mounts unmounts in a
``finally``, lazily when a busy daemon still holds the mount.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FAST_RULE = """\
name: motion
match: {patterns: ["*.jpg", "*.jpeg", "*.png", "*.webp", "*.bmp", "*.tif", "*.tiff", "*.gif"]}
engine: motion
preset: quick
params: {resolution: 256, frames: 8}
motion: {effect: zoom_in, zoom: 1.2}
"""

# Several seconds per job (8 s of 1024p video at 24 fps): long enough to stop it
# while it renders.
SLOW_RULE = """\
name: motion
engine: motion
preset: quick
params: {resolution: 1024}
motion: {effect: zoom_in, zoom: 1.2, duration: 8, fps: 24}
"""


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root, outside a locked-down container)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as folder:
        if (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder], capture_output=True
            ).returncode
            != 0
        ):
            return False
        subprocess.run(["umount", folder], check=True)
    return True


def mount_tmpfs(target: Path, size: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], check=True)


def mount_bind(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def remount(target: Path, mode: str) -> None:
    """``mode`` is "ro" or "rw"; works on bind mounts and tmpfs alike."""
    subprocess.run(["mount", "-o", f"remount,{mode},bind", str(target)], check=True)


def unmount(target: Path, lazy: bool = False) -> bool:
    """Unmount ``target``; False when it was not mounted (or stays busy)."""
    args = ["umount", "-l", str(target)] if lazy else ["umount", str(target)]
    return subprocess.run(args, capture_output=True).returncode == 0


def is_mount(target: Path) -> bool:
    """From the mount table: ``os.path.ismount`` misses a bind mount of a folder on the
    same filesystem (same device on both sides)."""
    wanted = os.fsencode(os.path.realpath(target))
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            point = line.split()[4].replace(b"\\040", b" ")
            if point == wanted:
                return True
    return False


class Mounts:
    """Every mount made in one scenario, undone in reverse order however it ends."""

    def __init__(self) -> None:
        self._targets: list[Path] = []

    def tmpfs(self, target: Path, size: str) -> Path:
        mount_tmpfs(target, size)
        self._targets.append(target)
        return target

    def bind(self, source: Path, target: Path) -> Path:
        mount_bind(source, target)
        self._targets.append(target)
        return target

    def close(self) -> None:
        for target in reversed(self._targets):
            # A target may be mounted more than once (re-mounted after a fault).
            for _ in range(4):
                if not is_mount(target) or not (unmount(target) or unmount(target, lazy=True)):
                    break
        self._targets.clear()


@contextlib.contextmanager
def mounts() -> Iterator[Mounts]:
    made = Mounts()
    try:
        yield made
    finally:
        made.close()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Tally:
    """The figures of one fault run. Every count but ``faults`` and ``dropped`` must be 0."""

    kind: str
    faults: int = 0
    dropped: int = 0
    lost: int = 0  # a good image's content is nowhere any more
    unfinished: int = 0  # a good image with no video (after the final drain)
    doubled: int = 0  # a second video, or a second copy of an original
    left_in_inbox: int = 0
    good_in_failed: int = 0
    tracebacks: int = 0
    hostile_unhandled: int = 0  # a hostile input neither processed nor quarantined
    wrong_failures: int = 0  # job records of good images that say failed or cancelled
    killed_by_signal: int = 0  # a stop request that ended the process by a signal
    notes: list[str] = field(default_factory=list)

    def bad(self) -> dict[str, int]:
        figures = {
            "lost": self.lost,
            "unfinished": self.unfinished,
            "doubled": self.doubled,
            "left_in_inbox": self.left_in_inbox,
            "good_in_failed": self.good_in_failed,
            "tracebacks": self.tracebacks,
            "hostile_unhandled": self.hostile_unhandled,
            "wrong_failures": self.wrong_failures,
            "killed_by_signal": self.killed_by_signal,
        }
        return {name: count for name, count in figures.items() if count}

    def row(self) -> str:
        return (
            f"| {self.kind} | {self.faults} | {self.dropped} | {self.lost} | {self.unfinished} "
            f"| {self.doubled} | {self.left_in_inbox} | {self.good_in_failed} "
            f"| {self.tracebacks} | {self.wrong_failures} |"
        )

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__}


TABLE_HEADER = (
    "| fault kind | faults | dropped | lost | no video | doubled | left in inbox "
    "| good in failed/ | tracebacks | failed records |\n|---|---|---|---|---|---|---|---|---|---|"
)


def files_under(folder: Path) -> list[Path]:
    """Regular files only: a FIFO would block a reader, a symlink is not a drop."""
    if not folder.is_dir():
        return []
    found = []
    for base, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(base, name)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(path.lstat().st_mode):
                    found.append(path)
    return found


def count_tracebacks(logs: list[str]) -> int:
    return sum(text.count("Traceback (most recent call last)") for text in logs)


def audit(
    kind: str,
    inbox: Path,
    outbox: Path,
    failed: Path,
    good: dict[str, str],
    logs: list[str],
    hostile: dict[str, str] | None = None,
    faults: int = 0,
) -> Tally:
    """Where did every image go? ``good`` and ``hostile`` map content hash -> name.

    A good image must end as exactly one video (its sidecar names its hash) with its
    original beside it, nowhere else. A hostile one must be quarantined in ``failed``
    or, when it is a valid if odd picture, processed like a good one.
    """
    hostile = hostile or {}
    tally = Tally(kind, faults=faults, dropped=len(good) + len(hostile))
    videos: Counter[str] = Counter()
    copies: Counter[str] = Counter()
    in_failed: Counter[str] = Counter()
    in_inbox: Counter[str] = Counter()
    for path in files_under(outbox):
        if path.name.endswith(".i2vd-tmp"):
            continue
        if path.suffix == ".json":
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))
                if path.with_suffix(".mp4").is_file() and isinstance(doc, dict):
                    videos[str(doc.get("sha256"))] += 1
        elif path.suffix != ".mp4":
            copies[sha256_file(path)] += 1
    for path in files_under(failed):
        if not path.name.endswith((".error.json", ".i2vd-tmp")):
            in_failed[sha256_file(path)] += 1
    for path in files_under(inbox):
        with contextlib.suppress(OSError):
            in_inbox[sha256_file(path)] += 1
    for sha in good:
        places = copies[sha] + in_failed[sha] + in_inbox[sha]
        tally.lost += places == 0
        tally.unfinished += videos[sha] == 0
        tally.doubled += max(0, videos[sha] - 1) + max(0, places - 1)
        tally.left_in_inbox += in_inbox[sha] > 0
        tally.good_in_failed += in_failed[sha] > 0
    for sha in hostile:
        handled = videos[sha] == 1 or in_failed[sha] == 1
        tally.hostile_unhandled += not handled
        tally.doubled += max(0, videos[sha] - 1) + max(0, copies[sha] + in_failed[sha] - 1)
    tally.tracebacks = count_tracebacks(logs)
    for sha, name in good.items():
        if videos[sha] != 1 or in_failed[sha] or in_inbox[sha]:
            tally.notes.append(
                f"{name}: videos={videos[sha]} outbox={copies[sha]} failed={in_failed[sha]} "
                f"inbox={in_inbox[sha]}"
            )
    return tally


_JOB_LINE = re.compile(r"job (\d+) (failed|cancelled)")


def failure_lines(logs: list[str]) -> list[str]:
    """Log lines that record a job as failed or cancelled."""
    return [line for text in logs for line in text.splitlines() if _JOB_LINE.search(line)]
