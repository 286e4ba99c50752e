"""What every step of a job works with: the settings, the queue and the lease holder.

The worker's loop hands one of these to the modules that own a part of a job (outputs,
the original, failure reports, recovery), so each is a set of plain functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .store import JobStore


@dataclass(frozen=True)
class Scope:
    settings: Settings
    store: JobStore
    owner: str  # "host:pid", the lease holder's name
