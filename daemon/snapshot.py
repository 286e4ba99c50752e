"""The queue's picture as people and scripts are shown it: what waits, runs, finished
and failed, and what the daemon is doing. Plain values only; built by ``queue_view``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Activity:
    """What the daemon is doing: ``running``, ``paused``, ``outside_window`` or
    ``stopped``, with a sentence for people and, outside the window, when it reopens."""

    state: str
    message: str
    reopens_at: float | None = None


RUNNING = Activity("running", "i2vd is running: images are taken in and made into videos")
STOPPED = Activity(
    "stopped", "i2vd is stopped: new images wait in the folder until it starts again"
)
PAUSED = Activity(
    "paused",
    "paused by an administrator: images are taken in and wait in the queue until i2vd is resumed",
)


def daemon_state(
    paused: bool, closed: Mapping[str, float | None], engines: Sequence[str]
) -> Activity:
    """The state of a running daemon from the queue's pause switch and its schedule:
    ``closed`` maps each engine whose window is closed to when it reopens (None: not
    known), ``engines`` are those it serves."""
    if paused:
        return PAUSED
    if not closed:
        return RUNNING
    reopening = [t for t in closed.values() if t is not None]
    reopens_at = min(reopening) if reopening else None
    if all(engine in closed for engine in engines):
        return Activity(
            "outside_window",
            "outside its working hours: images are taken in and wait in the queue until then",
            reopens_at,
        )
    waiting = " and ".join(sorted(closed))
    return Activity(
        "running",
        f"i2vd is running, but {waiting} rules are outside their working hours: their "
        "images wait in the queue until then",
        reopens_at,
    )


@dataclass(frozen=True)
class Waiting:
    job: int
    inbox: str
    source: str  # inbox-relative
    rule: str
    variant: str
    state: str  # queued | retrying
    position: int  # 1 = next to start, over the whole queue
    attempts: int
    max_attempts: int
    queued_at: float
    last_error: str | None  # retrying: why the previous attempt failed
    eta: float | None  # seconds from the snapshot until it should be done
    eta_how: str  # how the estimate was made, or why there is none


@dataclass(frozen=True)
class Running:
    job: int
    inbox: str
    source: str
    rule: str
    variant: str
    phase: str  # loading | generating | encoding
    step: str  # the phase in words, e.g. "generating 40%"
    progress: float
    started_at: float
    elapsed: float
    remaining: float | None
    remaining_how: str
    attempt: int
    max_attempts: int


@dataclass(frozen=True)
class Done:
    job: int
    inbox: str
    source: str
    rule: str
    variant: str
    finished_at: float
    duration: float | None  # seconds from start to finish of the last attempt
    video: str | None  # outbox-relative
    sidecar: str | None  # outbox-relative
    prompt: str | None
    params: dict[str, Any]
    reused: bool  # the same image and rule were done before: that video was reused


@dataclass(frozen=True)
class Failed:
    job: int
    inbox: str
    source: str
    rule: str
    variant: str
    finished_at: float
    error: str
    hint: str
    detail: str | None
    attempts: int
    report: str | None  # the .error.json, relative to the failed folder
    retry: str  # how to try again, in words


@dataclass(frozen=True)
class Share:
    """A root the daemon cannot reach now, named as the page names it (an inbox's
    name, "outbox" or "failed folder"; never a path on the daemon's host)."""

    kind: str  # "inbox", "outbox" or "failed folder"
    name: str
    available: bool
    reason: str
    since: float


@dataclass(frozen=True)
class Snapshot:
    updated: float
    daemon: Activity
    waiting: tuple[Waiting, ...] = ()
    running: tuple[Running, ...] = ()
    done: tuple[Done, ...] = ()
    failed: tuple[Failed, ...] = ()
    inboxes: tuple[str, ...] = ()
    shares: tuple[Share, ...] = ()  # the unavailable roots

    def for_inbox(self, inbox: str) -> Snapshot:
        """The same picture limited to one inbox's images (positions stay queue-wide)."""
        return replace(
            self,
            waiting=tuple(w for w in self.waiting if w.inbox == inbox),
            running=tuple(r for r in self.running if r.inbox == inbox),
            done=tuple(d for d in self.done if d.inbox == inbox),
            failed=tuple(f for f in self.failed if f.inbox == inbox),
            inboxes=(inbox,),
        )

    def newest(self, count: int) -> Snapshot:
        """Only the ``count`` newest finished and failed images."""
        return replace(self, done=self.done[:count], failed=self.failed[:count])

    def to_json(self) -> dict[str, Any]:
        return {
            "updated": iso(self.updated),
            "daemon": {
                **asdict(self.daemon),
                "reopens_at": iso(self.daemon.reopens_at) if self.daemon.reopens_at else None,
            },
            "inboxes": list(self.inboxes),
            "waiting": [_item_json(w, "queued_at") for w in self.waiting],
            "running": [_item_json(r, "started_at") for r in self.running],
            "done": [_item_json(d, "finished_at") for d in self.done],
            "failed": [_item_json(f, "finished_at") for f in self.failed],
            "shares": [_item_json(share, "since") for share in self.shares],
        }


def iso(timestamp: float) -> str:
    """A moment as people read it on the page: local time with its UTC offset."""
    return dt.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _item_json(item: Any, time_key: str) -> dict[str, Any]:
    # A shallow copy: items hold plain values only (asdict's deep copies cost ~0.1 ms
    # an item, which a queue of a thousand images would pay on every page).
    data: dict[str, Any] = dict(vars(item))
    data[time_key] = iso(data[time_key])
    return data
