"""Webhooks: a JSON POST to each configured URL when a job fails (and, if asked, when
one is done or the queue drains).

Delivery runs on a thread of its own from a bounded in-memory queue, so a slow or
dead receiver never delays a job; each POST has a timeout and a bounded number of
retries, and a delivery that still fails is logged, never fatal. Events that arrive
while the queue is full are dropped with a warning rather than growing memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

Event = Literal["failed", "done", "drained"]
# Events waiting for delivery; beyond this the receiver is clearly not keeping up.
QUEUE_LIMIT = 1000


def _failures_only() -> list[Event]:
    return ["failed"]


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: AnyHttpUrl
    events: list[Event] = Field(default_factory=_failures_only, min_length=1)
    timeout_seconds: float = Field(5.0, gt=0, le=120)
    # Further attempts after the first, with a doubling pause from retry_seconds.
    retries: int = Field(3, ge=0, le=10)
    retry_seconds: float = Field(2.0, ge=0, le=600)
    # e.g. {Authorization: "Bearer …"} for receivers that want a token.
    headers: dict[str, str] = Field(default_factory=dict)


Post = Callable[[Webhook, bytes], None]


def _post(hook: Webhook, body: bytes) -> None:
    request = urllib.request.Request(
        str(hook.url),
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "i2vd", **hook.headers},
    )
    with urllib.request.urlopen(request, timeout=hook.timeout_seconds) as response:
        response.read()


class Webhooks:
    """Posts events to the configured hooks from one background thread."""

    def __init__(self, hooks: Sequence[Webhook], post: Post = _post) -> None:
        self.hooks = list(hooks)
        self._post = post
        self._queue: queue.Queue[tuple[Webhook, bytes] | None] = queue.Queue(QUEUE_LIMIT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.given_up = 0

    def wants(self, event: Event) -> bool:
        return any(event in hook.events for hook in self.hooks)

    def send(self, event: Event, payload: dict[str, Any]) -> None:
        """Queue ``event`` for every hook that wants it; returns at once."""
        body: bytes | None = None
        for hook in self.hooks:
            if event not in hook.events:
                continue
            if body is None:
                body = json.dumps(
                    {"event": event, "time": time.time(), **payload}, ensure_ascii=False
                ).encode()
            if self._thread is None:
                self._start()
            try:
                self._queue.put_nowait((hook, body))
            except queue.Full:
                log.warning(
                    "webhook %s: %d events waiting; dropped a %s event",
                    _where(hook),
                    QUEUE_LIMIT,
                    event,
                )

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        with contextlib.suppress(queue.Full):  # the thread then sees _stop instead
            self._queue.put_nowait(None)
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._deliver(*item)

    def _deliver(self, hook: Webhook, body: bytes) -> None:
        pause = hook.retry_seconds
        for attempt in range(hook.retries + 1):
            try:
                self._post(hook, body)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = exc
                if attempt < hook.retries and not self._stop.wait(pause):
                    pause *= 2
                    continue
                break
            else:
                self.delivered += 1
                return
        self.given_up += 1
        log.warning(
            "webhook %s: not delivered after %d attempt(s): %s", _where(hook), attempt + 1, last
        )


def _where(hook: Webhook) -> str:
    """The URL without credentials or query (tokens often ride there)."""
    url = hook.url
    return f"{url.scheme}://{url.host}{':' + str(url.port) if url.port else ''}{url.path or ''}"


def job_payload(job: Any, host: str) -> dict[str, Any]:
    """What a receiver gets about a job: no absolute paths, only the inbox-relative one."""
    return {
        "host": host,
        "job": {
            "id": job.id,
            "source": job.relative,
            "rule": job.rule_name,
            "engine": job.engine,
            "state": job.state,
            "attempts": job.attempts,
            "error": job.error,
            "hint": job.hint,
            "video": job.video_path if job.state == "done" else None,
        },
    }
