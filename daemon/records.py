"""The queue's rows as plain records, for code that reads them without the ORM.

The admin commands (``i2vd status``, ``jobs``, ``show``, …) must answer in a fraction
of a second, and importing SQLAlchemy and SQLModel would take most of that. They read
the rows through plain DB-API (``admin_queue.py``) into these records, which carry the
same attribute names as the models in ``tables.py`` (a test checks that the two
agree column for column).

The JSON text columns are decoded in one place for both: the ``*Fields`` mixins below
are bases of the records here and of the models in ``tables.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .capabilities import Capabilities

# The job columns that hold paths or file names (``tables.FileName``): stored in the
# escaped form of ``names.to_db``, decoded with ``names.from_db`` when read.
JOB_FILE_NAME_COLUMNS = frozenset(
    {"source", "inbox_root", "relative", "video_path", "sidecar_path", "source_dest"}
)
# The boolean columns: SQLite hands them back as 0 and 1.
JOB_BOOL_COLUMNS = frozenset({"drop_settled", "cancel_requested", "source_stuck"})


class JobFields:
    """A job's JSON text columns, decoded."""

    if TYPE_CHECKING:  # the columns, declared by each class that has this one as a base

        @property
        def rule_json(self) -> str: ...
        @property
        def companions_json(self) -> str: ...

    @property
    def rule_data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.rule_json)
        return data

    @property
    def companions(self) -> list[str]:
        names: list[str] = json.loads(self.companions_json)
        return names


class DaemonFields:
    """A registered daemon's JSON text columns, decoded, and what they add up to."""

    if TYPE_CHECKING:  # the columns, declared by each class that has this one as a base

        @property
        def engines_json(self) -> str: ...
        @property
        def models_json(self) -> str | None: ...
        @property
        def inboxes_json(self) -> str | None: ...
        @property
        def memory_gb(self) -> float | None: ...

    @property
    def engines(self) -> list[str]:
        names: list[str] = json.loads(self.engines_json)
        return names

    @property
    def models(self) -> list[str] | None:
        return None if self.models_json is None else list(json.loads(self.models_json))

    @property
    def inboxes(self) -> list[str] | None:
        return None if self.inboxes_json is None else list(json.loads(self.inboxes_json))

    @property
    def capabilities(self) -> Capabilities:
        """What it said it can run, as the claim's routing takes it."""
        models, inboxes = self.models, self.inboxes
        return Capabilities(
            tuple(self.engines),
            None if models is None else tuple(models),
            self.memory_gb,
            None if inboxes is None else tuple(inboxes),
        )


@dataclass
class JobRecord(JobFields):
    """One row of ``job`` (see ``tables.Job`` for what each column means). Mutable:
    ``HostPaths.localize`` rewrites its paths as this host sees them."""

    id: int
    source: str
    inbox_root: str
    inbox: str
    relative: str
    sha256: str
    size_bytes: int
    rule_name: str
    rule_hash: str
    rule_file: str
    rule_json: str
    priority: int
    drop: str
    variant: str
    drop_settled: bool
    text: str
    companions_json: str
    engine: str
    model: str
    memory_gb: float
    state: str
    attempts: int
    max_attempts: int
    device_faults: int
    not_before: float
    lease_owner: str | None
    lease_expires: float | None
    cancel_requested: bool
    claim_seq: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    hint: str | None
    duplicate_of: int | None
    video_path: str | None
    sidecar_path: str | None
    source_dest: str | None
    video_inode: int | None
    source_stuck: bool
    progress: float
    timings_json: str | None


@dataclass(frozen=True)
class DaemonRecord(DaemonFields):
    """One row of ``daemon`` (see ``tables.Daemon``)."""

    id: str
    host: str
    pid: int
    version: str
    device: str
    engines_json: str
    models_json: str | None
    memory_gb: float | None
    inboxes_json: str | None
    state: str
    reason: str
    job_id: int | None
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class ControlRecord:
    """The ``control`` row (see ``tables.Control``); the defaults are a queue whose row
    is missing: not paused."""

    id: int = 1
    paused: bool = False
    pause_now: bool = False
    paused_at: float | None = None
    paused_by: str = ""
    reason: str = ""
