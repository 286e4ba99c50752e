"""What a daemon can run: the claim's routing, and what the daemon registry records."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    """What a daemon can run. ``models`` None: any model of its engines; ``memory_gb``
    None: no limit known (a job's ``memory_gb`` 0 fits anywhere); ``inboxes`` None:
    every inbox, else only jobs from the inboxes (by name) this host can reach."""

    engines: tuple[str, ...]
    models: tuple[str, ...] | None = None
    memory_gb: float | None = None
    inboxes: tuple[str, ...] | None = None
