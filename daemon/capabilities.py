"""What a daemon can run: the claim's routing, and what the daemon registry records;
what a daemon's settings make it claim (``Capabilities.of``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the admin commands import this module: it stays without pydantic
    from .config import Settings

# Every engine i2vd has: what a daemon claims unless its `engines` setting says less.
ALL_ENGINES = ("motion", "diffusion")


@dataclass(frozen=True)
class Capabilities:
    """What a daemon can run. ``models`` None: any model of its engines; ``memory_gb``
    None: no limit known (a job's ``memory_gb`` 0 fits anywhere); ``inboxes`` None:
    every inbox, else only jobs from the inboxes (by name) this host can reach."""

    engines: tuple[str, ...]
    models: tuple[str, ...] | None = None
    memory_gb: float | None = None
    inboxes: tuple[str, ...] | None = None

    @classmethod
    def of(cls, settings: Settings) -> Capabilities:
        """What this daemon claims: jobs of its engines (every engine unless `engines`
        says), from the inboxes this host has, by name or, for jobs queued before
        inboxes had names, by folder."""
        engines = tuple(settings.engines) if settings.engines is not None else ALL_ENGINES
        names = (*settings.inbox_names, *(str(folder) for folder in settings.inbox))
        return cls(engines, inboxes=tuple(dict.fromkeys(names)))

    def without(self, engines: frozenset[str]) -> Capabilities:
        """The same, less ``engines`` (a daemon whose GPU failed stops taking GPU jobs)."""
        return replace(self, engines=tuple(e for e in self.engines if e not in engines))
