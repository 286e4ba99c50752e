"""The settings an admin command needs to reach the queue, without the full validation.

``i2vd status``, ``jobs``, ``show``, ``retry``, ``cancel``, ``pause`` and ``resume``
need only the queue's database, the folders and the schedule windows. They are meant
to answer in a fraction of a second; importing pydantic to validate every setting
would take most of that. This is the light view those commands use: the same config
file and ``I2VD_*`` variables, read for these keys only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings
    from .windows import Window


@dataclass(frozen=True)
class QueueSettings:
    """Where the queue and the folders are, as this host sees them."""

    database_url: str
    # Each inbox's name and its folder on this host, in the order of `inbox`.
    inbox_names: dict[str, Path]
    outbox: Path
    failed_dir: Path
    state_dir: Path
    windows: tuple[Window, ...] = field(default=())

    @property
    def inbox(self) -> list[Path]:
        return list(self.inbox_names.values())

    @classmethod
    def of(cls, settings: Settings) -> QueueSettings:
        """The same view of fully validated settings."""
        return cls(
            database_url=settings.database_url,
            inbox_names=settings.inbox_names,
            outbox=settings.outbox,
            failed_dir=settings.failed_dir,
            state_dir=settings.state_dir,
            windows=tuple(settings.windows),
        )
