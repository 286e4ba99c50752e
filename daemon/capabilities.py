"""What a daemon can run: the claim's routing, and what the daemon registry records."""

from __future__ import annotations

from dataclasses import dataclass, replace

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

    def without(self, engines: frozenset[str]) -> Capabilities:
        """The same, less ``engines`` (a daemon whose GPU failed stops taking GPU jobs)."""
        return replace(self, engines=tuple(e for e in self.engines if e not in engines))
