"""A job's states, and which of them are still to be done.

Plain Python (no database library), so the admin commands and ``i2vd --help`` can
name them without importing the ORM; ``tables.py`` builds its indexes from the same
SQL.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


PENDING = (JobState.QUEUED, JobState.RUNNING, JobState.RETRYING)

# SQL for "this job is still to be done" (and "waits to be claimed"), shared by the
# partial indexes in tables.py and the hand-written statements.
PENDING_SQL = "state IN ('queued', 'running', 'retrying')"
RUNNABLE_SQL = "state IN ('queued', 'retrying')"
