"""Wake-ups between daemons on PostgreSQL: LISTEN/NOTIFY as a hint to claim at once.

A daemon that queues or re-queues a job notifies ``i2vd_queue`` in the same
transaction; every listening daemon wakes its worker instead of waiting for its next
poll. Only a hint: notifications sent while a listener reconnects are lost, so the
worker's polling stays the truth. SQLite queues (one host) have no listener: the
daemons there poll, as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .database_url import pg_conninfo

log = logging.getLogger(__name__)

CHANNEL = "i2vd_queue"
NOTIFY_SQL = f"SELECT pg_notify('{CHANNEL}', '')"


class QueueListener:
    """Calls ``on_wake`` for each notification, on a thread of its own."""

    def __init__(self, url: str, on_wake: Callable[[], None], retry_seconds: float = 5.0) -> None:
        self._conninfo = pg_conninfo(url)
        self._on_wake = on_wake
        self._retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-listener", daemon=True)
        self.listening = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        warned = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    warned = False
                    # Whatever was queued while not listening: the worker looks now.
                    self._on_wake()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._on_wake()
            except psycopg.Error as exc:
                self.listening.clear()
                # Polling carries on meanwhile; said once per outage, not per retry.
                if not warned:
                    log.warning("queue wake-ups paused (%s); polling meanwhile", exc)
                    warned = True
                self._stop.wait(self._retry_seconds)
