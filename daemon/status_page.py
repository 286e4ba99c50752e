"""The status page in the share: ``i2vd-status.html`` and ``i2vd-status.json`` at the
root of every inbox (that inbox's images) and of the outbox (all of them).

Written whole (a temporary name, then a rename that replaces the old page and never
writes through a symlink), at most every ``status_page_seconds``, and only when what
it shows changed, or at least every ``HEARTBEAT_SECONDS`` so that its time says
whether the daemon still runs. A share that cannot be written is logged once, and the
jobs go on.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import Settings
from .mounts import RootStatus
from .publish import TEMP_MARK, replace_file
from .queue_view import Activity, QueueView, Snapshot
from .snapshot import Share
from .status_html import HEARTBEAT_SECONDS, PageScope, render
from .store import JobStore

log = logging.getLogger(__name__)


def render_json(snapshot: Snapshot, scope: PageScope) -> bytes:
    document: dict[str, Any] = {"page": scope.kind, "folder": scope.title, **snapshot.to_json()}
    # Not indented: the indenting encoder is pure Python, ten times slower on a long queue.
    return (json.dumps(document, ensure_ascii=False) + "\n").encode()


@dataclass
class _Written:
    content: Snapshot  # what the page showed, its time left out
    at: float
    failing: bool = False


class StatusPages:
    """Keeps the pages of every inbox and of the outbox up to date."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.view = QueueView(
            store,
            settings.inbox_names,
            settings.outbox,
            settings.failed_dir,
            items=settings.status_page_items,
        )
        self._written: dict[Path, _Written] = {}
        self._last_look = float("-inf")

    def refresh(
        self,
        now: float,
        daemon: Activity,
        force: bool = False,
        workers: int = 1,
        unavailable: Sequence[RootStatus] = (),
    ) -> list[Path]:
        """Rewrite the pages that changed; the folders whose pages were written.
        ``force`` writes every page now (start, stop); ``unavailable`` are the roots
        that cannot be reached: every page says so, and none is written into them
        (that would fill an empty mountpoint)."""
        if not self.settings.status_page:
            return []
        if not force and now - self._last_look < self.settings.status_page_seconds:
            return []
        if self._last_look == float("-inf"):
            self._sweep()
        self._last_look = now
        snapshot = self.view.snapshot(now, daemon, workers)
        snapshot = replace(snapshot, shares=tuple(self._share(r) for r in unavailable))
        gone = {Path(r.path) for r in unavailable}
        written = []
        for folder, scoped, scope in self._pages(snapshot):
            if folder in gone:
                continue
            if self._write(folder, scoped, scope, now, force):
                written.append(folder)
        return written

    def _share(self, root: RootStatus) -> Share:
        """A root as the page names it: never its path on this host."""
        name = root.kind
        if root.kind == "inbox":
            names = {str(folder): n for n, folder in self.settings.inbox_names.items()}
            name = self.view.label(names.get(root.path, Path(root.path).name))
        return Share(root.kind, name, root.available, root.reason, root.since)

    def _sweep(self) -> None:
        """Temporaries of the page that a crash left (hidden, so never taken as drops;
        the start-up sweep covers the outbox but not the inboxes)."""
        names = (self.settings.status_page_name, self.settings.status_json_name)
        for folder in (*self.settings.inbox, self.settings.outbox):
            for name in names:
                for path in folder.glob(f".{glob.escape(name)}.*{TEMP_MARK}"):
                    path.unlink(missing_ok=True)

    def _pages(self, snapshot: Snapshot) -> list[tuple[Path, Snapshot, PageScope]]:
        s = self.settings
        pages = []
        for root in s.inbox:
            label = self.view.label(s.inbox_name(root))
            scoped = snapshot.for_inbox(label).newest(s.status_page_items)
            pages.append((root, scoped, self._scope(root, "inbox", label)))
        everything = snapshot.newest(s.status_page_items)
        pages.append((s.outbox, everything, self._scope(s.outbox, "outbox", s.outbox.name)))
        return pages

    def _scope(self, folder: Path, kind: str, title: str) -> PageScope:
        return PageScope(
            kind=kind,
            title=title,
            json_name=self.settings.status_json_name,
            links_outbox=kind == "outbox",
            exists=lambda relative: _plain_file_below(folder, relative),
        )

    def _write(
        self, folder: Path, snapshot: Snapshot, scope: PageScope, now: float, force: bool
    ) -> bool:
        content = replace(snapshot, updated=0.0)
        last = self._written.get(folder)
        fresh = last is not None and now - last.at < HEARTBEAT_SECONDS
        if not force and fresh and last is not None and last.content == content:
            return False
        try:
            # The JSON first: a script that sees the new page finds data as new.
            replace_file(folder / self.settings.status_json_name, render_json(snapshot, scope))
            replace_file(folder / self.settings.status_page_name, render(snapshot, scope).encode())
        except OSError as exc:
            if last is None or not last.failing:
                log.warning(
                    "cannot write the status page in %s (%s); retrying quietly until it works",
                    folder,
                    exc.strerror or exc,
                )
            self._written[folder] = _Written(content, float("-inf"), failing=True)
            return False
        if last is not None and last.failing:
            log.info("the status page in %s is written again", folder)
        self._written[folder] = _Written(content, now)
        return True


def _plain_file_below(folder: Path, relative: str) -> bool:
    """A regular file at ``folder/relative`` reached without a symlink on the way."""
    current = folder
    for part in Path(relative).parts:
        if part in ("..", "/"):
            return False
        current = current / part
        if current.is_symlink():
            return False
    return current.is_file()
