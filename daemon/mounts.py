"""Is a folder root (an inbox, the outbox, the failed folder) really there?

A share that is unmounted leaves an empty mountpoint; one that is renamed away
leaves nothing. Either way its files look deleted, and writing into it would put
outputs where nobody sees them. So, as sync tools do, each root carries a marker,
an empty hidden folder ``.i2vd-root`` (a folder, so listings of files never show it),
made the first time i2vd uses the root: a root is available only while it is a folder
holding its marker. A change of its device id while it is available means it was
mounted again.

While a root is unavailable nothing is concluded from what is missing under it: no
job fails or is cancelled for it, its intake pauses, jobs needing it wait (without
counting an attempt), and the log says so once, with what to check. When it comes
back, ``on_return`` re-arms its watch and rescans it at once.

The roots seen before are remembered in ``state_dir/roots.json``, so a root whose
share is not mounted when i2vd starts is not mistaken for a new, empty folder; the
same file carries each root's current state for ``i2vd status`` (:func:`read_status`).
A root where the marker cannot be written (a read-only share) is judged by its
device id alone.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .names import readable
from .problems import RetryableProblem

if TYPE_CHECKING:  # `i2vd status` reads roots.json through this module: it stays light
    from .config import Settings
    from .store import Job

log = logging.getLogger(__name__)

MARKER = ".i2vd-root"
STATE_FILE = "roots.json"


class ShareUnavailable(RetryableProblem):
    """A folder a job needs is unavailable: the job waits for it, no attempt counted."""

    default_hint = "check that the share is mounted and reachable"


@dataclass
class RootStatus:
    kind: str  # "inbox", "outbox" or "failed folder"
    path: str
    available: bool
    reason: str  # why not, in plain words; "" while available
    since: float  # when it last changed


@dataclass
class _Root:
    status: RootStatus
    device: int | None  # st_dev when last seen available
    marked: bool  # judged by its marker (False: a read-only root, by device id only)


class MountGate:
    """Every root's availability. Thread-safe: the worker, intake and timers ask."""

    def __init__(
        self,
        roots: Iterable[tuple[str, Path]],
        state_dir: Path,
        on_return: Callable[[Path], None] = lambda root: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_file = state_dir / STATE_FILE
        self.on_return = on_return
        self.clock = clock
        self._lock = threading.Lock()
        self._roots: dict[Path, _Root] = {}
        self._kinds = list(roots)
        self._returned: list[Path] = []

    # --- start-up ---------------------------------------------------------------------

    def arm(self) -> None:
        """Mark each root on first use; a root known from before whose marker is gone is
        unavailable from the start (its share is probably not mounted)."""
        known = set(self._read_state().get("known", []))
        now = self.clock()
        for kind, root in self._kinds:
            marked = True
            if not (root / MARKER).exists() and str(root) not in known and root.is_dir():
                marked = _write_marker(root)
                if not marked:
                    log.info(
                        "cannot write %s in the %s %s (read-only?); it is judged by its "
                        "device id alone",
                        MARKER,
                        kind,
                        readable(str(root)),
                    )
            self._roots[root] = _Root(RootStatus(kind, str(root), True, "", now), None, marked)
            known.add(str(root))
        with self._lock:
            for root in self._roots:
                self._evaluate(root, now, at_start=True)
            self._returned.clear()
        self._write_state(sorted(known))

    # --- asking ---------------------------------------------------------------------

    def available(self, path: Path) -> bool:
        """Whether the root holding ``path`` is there now (a fresh look: two stats).
        Paths under no root count as available."""
        root = self.root_of(path)
        if root is None:
            return True
        with self._lock:
            return self._evaluate(root, self.clock())

    def all_available(self, paths: Iterable[Path]) -> bool:
        return all([self.available(p) for p in paths])  # every root looked at

    def root_of(self, path: Path) -> Path | None:
        for root in sorted(self._roots, key=lambda r: len(r.parts), reverse=True):
            if path == root or path.is_relative_to(root):
                return root
        return None

    def status(self) -> list[RootStatus]:
        with self._lock:
            return [RootStatus(**asdict(r.status)) for r in self._roots.values()]

    def unavailable(self) -> list[RootStatus]:
        return [s for s in self.status() if not s.available]

    # --- the timer --------------------------------------------------------------------

    def check(self) -> list[Path]:
        """Look at every root; run ``on_return`` for each that came back. Those roots."""
        now = self.clock()
        with self._lock:
            for root in self._roots:
                self._evaluate(root, now)
            returned, self._returned = self._returned, []
        for root in returned:
            self.on_return(root)
        return returned

    # --- inside -----------------------------------------------------------------------

    def _evaluate(self, root: Path, now: float, at_start: bool = False) -> bool:
        entry = self._roots[root]
        reason, device = self._look(root, entry)
        was = entry.status.available
        if reason:
            if was or at_start:
                entry.status = RootStatus(entry.status.kind, str(root), False, reason, now)
                self._say_gone(entry.status)
                self._write_state()
            return False
        remounted = entry.device is not None and device != entry.device
        entry.device = device
        if not was or remounted:
            entry.status = RootStatus(entry.status.kind, str(root), True, "", now)
            self._returned.append(root)
            log.warning(
                "the %s %s is back%s; its watch is re-armed and it is scanned now",
                entry.status.kind,
                readable(str(root)),
                " (mounted again)" if remounted and was else "",
            )
            self._write_state()
        return True

    @staticmethod
    def _look(root: Path, entry: _Root) -> tuple[str, int | None]:
        """("", device id) when ``root`` is available, else (why not, None)."""
        try:
            info = os.stat(root)
        except FileNotFoundError:
            return "the folder does not exist (renamed, deleted, or its share is not mounted)", None
        except OSError as exc:
            return f"the folder cannot be reached ({exc.strerror})", None
        if not stat.S_ISDIR(info.st_mode):
            return "it is not a folder", None
        if entry.marked:
            try:
                os.stat(root / MARKER)
            except FileNotFoundError:
                return (
                    f"the folder is there but its marker {MARKER} is not: the share "
                    "is probably not mounted (an empty mountpoint)",
                    None,
                )
            except OSError as exc:
                return f"the folder cannot be read ({exc.strerror})", None
        elif entry.device is not None and info.st_dev != entry.device:
            return "the folder is now on another filesystem (is its share unmounted?)", None
        return "", info.st_dev

    @staticmethod
    def _say_gone(status: RootStatus) -> None:
        log.error(
            "the %s %s is unavailable: %s. Nothing is failed because of it: its jobs wait "
            "without counting an attempt and new files in it are taken once it is back. "
            "Check that the share is mounted and reachable; if the folder is there and "
            "mounted, restore its marker with: mkdir %s",
            status.kind,
            readable(status.path),
            status.reason,
            readable(str(Path(status.path) / MARKER)),
        )

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self, known: list[str] | None = None) -> None:
        """Best effort: a full state disk must not stop the gate itself."""
        if known is None:
            known = self._read_state().get("known", [str(r) for r in self._roots])
        data = {
            "known": known,
            "roots": [asdict(r.status) for r in self._roots.values()],
        }
        tmp = self.state_file.with_name(f".{STATE_FILE}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.state_file)
        except OSError:
            tmp.unlink(missing_ok=True)


def _write_marker(root: Path) -> bool:
    try:
        (root / MARKER).mkdir(exist_ok=True)
    except OSError:
        return False
    return True


def job_roots(job: Job, settings: Settings) -> list[Path]:
    """What a job needs to be there: its picture (so its inbox), the outbox and the
    failed folder."""
    return [Path(job.source), settings.outbox, settings.failed_dir]


def read_status(state_dir: Path) -> list[RootStatus]:
    """Each root's state as the running daemon last wrote it (for ``i2vd status``)."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
        return [RootStatus(**item) for item in data.get("roots", [])]
    except (OSError, ValueError, TypeError):
        return []
