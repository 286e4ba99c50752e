"""Paths in the queue are host-neutral; each daemon reads and writes them as its own.

Hosts mount the shared inbox and outbox at different places, so a job row must not
hold one host's absolute paths for another to use. A job names its inbox and its
inbox-relative path (``inbox``, ``relative``); output paths under the outbox are
stored as ``@outbox/<relative path>``. The store hands every job to the daemon with
``source``, ``inbox_root`` and the output paths resolved on this host, and turns this
host's paths back into the neutral form when it writes or looks them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:  # the admin commands import this module: it stays light
    from .config import Settings
    from .queue_settings import QueueSettings

OUTBOX = "@outbox/"


class JobPaths(Protocol):
    """The path fields of a job: an ORM row (tables.Job) or a plain one (records.py)."""

    inbox: str
    relative: str
    inbox_root: str
    source: str
    video_path: str | None
    sidecar_path: str | None
    source_dest: str | None


J = TypeVar("J", bound=JobPaths)


@dataclass(frozen=True)
class HostPaths:
    """This host's folder for each inbox name, and its outbox. The default (no
    inboxes, no outbox) leaves every path as stored."""

    inboxes: dict[str, Path] = field(default_factory=dict)
    outbox: Path | None = None

    @classmethod
    def of(cls, settings: Settings | QueueSettings) -> HostPaths:
        """This host's, from its settings (the daemon's and the admin commands')."""
        return cls(settings.inbox_names, settings.outbox)

    def localize(self, job: J) -> J:
        """``job`` with its paths as this host sees them (changed in place)."""
        folder = self.inboxes.get(job.inbox)
        if folder is not None:
            job.inbox_root = str(folder)
            job.source = str(folder / PurePosixPath(job.relative))
        job.video_path = self.here(job.video_path)
        job.sidecar_path = self.here(job.sidecar_path)
        job.source_dest = self.here(job.source_dest)
        return job

    def here(self, stored: str | None) -> str | None:
        """A stored output path on this host."""
        if stored is None or self.outbox is None or not stored.startswith(OUTBOX):
            return stored
        return str(self.outbox / PurePosixPath(stored.removeprefix(OUTBOX)))

    def neutral(self, path: str | None) -> str | None:
        """This host's output path as stored: relative to the outbox when inside it."""
        if path is None or self.outbox is None:
            return path
        try:
            relative = Path(path).relative_to(self.outbox)
        except ValueError:
            return path
        return OUTBOX + relative.as_posix()

    def inbox_file(self, path: str) -> tuple[str, str] | None:
        """(inbox name, inbox-relative path) of a file in one of this host's inboxes."""
        for name, folder in self.inboxes.items():
            try:
                return name, Path(path).relative_to(folder).as_posix()
            except ValueError:
                continue
        return None
