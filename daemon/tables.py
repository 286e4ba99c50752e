"""The queue database's tables: jobs, the daemons working on them, queue-wide switches.

The schema is owned by the Alembic migrations in ``daemon/migrations``; these models
describe its newest version (a test checks that the two agree on every backend).
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, Index, String, TypeDecorator, text
from sqlmodel import Field, SQLModel

from .job_states import PENDING_SQL, RUNNABLE_SQL, JobState
from .names import from_db, to_db
from .records import DaemonFields, JobFields


class FileName(TypeDecorator[str]):
    """A path or name as text, any bytes a file system allows included: a name that is
    not valid UTF-8 is stored in the escaped form of ``names.to_db`` (same column type)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else to_db(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else from_db(value)


# A drop is queued once: the same file (inbox name, inbox-relative path, content) for
# the same rule identity and variant cannot be pending twice, whichever daemon saw it.
DROP_KEY = ("inbox", "relative", "sha256", "rule_hash", "variant")


class Job(JobFields, SQLModel, table=True):
    __table_args__ = (
        Index("ix_job_claim", "state", "not_before"),
        Index("ix_job_source", "source", "sha256"),
        Index("ix_job_identity", "sha256", "rule_name", "rule_hash"),
        Index(
            "ux_job_pending_drop",
            *DROP_KEY,
            unique=True,
            sqlite_where=text(PENDING_SQL),
            postgresql_where=text(PENDING_SQL),
        ),
        # The claim walks the runnable jobs inbox by inbox, best first (in the claim's
        # order, so taking an inbox's next job reads one index entry, not the inbox).
        Index(
            "ix_job_runnable",
            "inbox",
            text("priority DESC"),
            "not_before",
            "id",
            sqlite_where=text(RUNNABLE_SQL),
            postgresql_where=text(RUNNABLE_SQL),
        ),
        # When each inbox was last served, for the round-robin.
        Index("ix_job_served", "inbox", "claim_seq"),
        Index("ix_job_claim_seq", "claim_seq"),
        Index("ix_job_lease", "state", "lease_expires"),
        # Intake's question on every new file: which jobs had this file (any host's).
        Index("ix_job_file", "inbox", "relative", "sha256"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # Absolute path where the image was found (by the daemon that queued it).
    source: str = Field(sa_type=FileName)
    inbox_root: str = Field(sa_type=FileName)
    # The inbox's name: each host maps it to its own mount point.
    inbox: str = ""
    relative: str = Field(sa_type=FileName)  # inbox-relative, POSIX separators
    sha256: str
    size_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    rule_name: str
    rule_hash: str
    rule_file: str
    rule_json: str  # the rule as it was when queued: later edits do not change this job
    # The rule's priority: among one inbox's jobs, higher goes first.
    priority: int = 0
    # One image may make several jobs (a rule's variants): they share `drop`, and each
    # has its own `variant` name. The last of them to end takes care of the original.
    drop: str = Field(default="", index=True)
    variant: str = ""
    # Set on every job of a drop by the one job that takes care of the original.
    drop_settled: bool = False
    # The text of the image's <stem>.txt when it was queued (a template variable).
    text: str = ""
    # The <stem>.txt/.yaml files beside the image, which travel with it (JSON list).
    companions_json: str = "[]"
    engine: str
    # Routing beyond the engine: the model it loads ("" = the engine's default) and the
    # device memory it needs in GiB (0 = fits anywhere the engine runs).
    model: str = ""
    memory_gb: float = 0.0
    state: str = JobState.QUEUED
    attempts: int = 0
    max_attempts: int = 3
    # Device faults (breaker.py) this job met on a GPU that was working when the job
    # started on it: they use no attempt, but at `gpu_fault_limit` the image is to
    # blame and the job fails. A GPU already faulting counts none.
    device_faults: int = 0
    # Times are seconds since the epoch on the database's clock (see store.py).
    not_before: float = 0.0
    lease_owner: str | None = None
    lease_expires: float | None = None
    # Raised by `i2vd cancel` on a running job; its worker stops at the next step.
    cancel_requested: bool = False
    # The queue-wide count of claims when this job was last claimed: an inbox's
    # highest is when it was last served (the round-robin needs no clock).
    claim_seq: int = 0
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    hint: str | None = None
    duplicate_of: int | None = None
    # Output paths are recorded before they are written, so a retry after a crash
    # knows exactly which half-published files are its own to remove.
    video_path: str | None = Field(default=None, sa_type=FileName)
    sidecar_path: str | None = Field(default=None, sa_type=FileName)
    source_dest: str | None = Field(default=None, sa_type=FileName)
    # The published video's inode, recorded around placing it: only a file with this
    # inode is this job's to remove after a failure, or to reuse for a duplicate.
    video_inode: int | None = Field(default=None, sa_column=Column(BigInteger))
    # True when the job ended but its original stays in the inbox (it could not be
    # moved, or the rule says `source: keep`): intake must not take that file again.
    # Any other file at the path afterwards is a new drop.
    source_stuck: bool = False
    progress: float = 0.0
    timings_json: str | None = None


class DaemonState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    FAULTED = "faulted"  # its device is unhealthy: it claims no job that needs it
    STOPPING = "stopping"
    STOPPED = "stopped"


class Daemon(DaemonFields, SQLModel, table=True):
    """One running daemon: who it is, what it can run, when it last said so."""

    id: str = Field(primary_key=True)  # the lease owner name, "host:pid"
    host: str
    pid: int
    version: str = ""
    device: str = ""
    engines_json: str = "[]"
    # None: any model of its engines; a list: only these.
    models_json: str | None = None
    memory_gb: float | None = None
    # None: every inbox; a list: only jobs from these inboxes (by name).
    inboxes_json: str | None = None
    state: str = DaemonState.RUNNING
    reason: str = ""
    job_id: int | None = None
    # Both on the database's clock.
    started_at: float = 0.0
    heartbeat_at: float = 0.0


class Control(SQLModel, table=True):
    """Queue-wide switches: one row, read by every daemon on the queue."""

    id: int = Field(default=1, primary_key=True)
    paused: bool = False
    # With `paused`: also stop the running jobs at their next step (they go back to
    # the queue without using an attempt), instead of letting them finish.
    pause_now: bool = False
    paused_at: float | None = None
    paused_by: str = ""
    reason: str = ""
