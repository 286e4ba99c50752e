"""This daemon's own row in the queue's daemon registry (what `i2vd status` lists).

``registry.py`` is the table; this is the one daemon's part in it: joining at start,
renewing the row on the heartbeat timer (joining again if it was forgotten while the
daemon was silent), and leaving at stop, or staying, faulted, when the GPU made it
stop, so that `i2vd status` says why.
"""

from __future__ import annotations

import os

from . import __version__
from .breaker import DeviceBreaker
from .config import Settings
from .store import Capabilities, Job, JobStore
from .tables import DaemonState


class Registration:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        owner: str,
        host: str,
        can_run: Capabilities,
        breaker: DeviceBreaker,
    ) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner
        self.host = host
        self.can_run = can_run
        self.breaker = breaker

    def join(self) -> None:
        """Join the queue's daemon registry."""
        state = DaemonState.FAULTED if self.breaker.faulted else queue_state(self.store)
        self.store.daemons.register(
            self.owner,
            self.host,
            os.getpid(),
            self.can_run,
            version=__version__,
            device=self.settings.device,
            state=state,
        )

    def renew(self, current: Job | None) -> None:
        """The row's heartbeat: its job and whether it is paused. Faulted is the
        worker's to set and to clear (when the GPU works again), so it is kept."""
        alive = self.store.daemons.heartbeat(
            self.owner,
            queue_state(self.store),
            job_id=current.id if current else None,
            keep=DaemonState.FAULTED,
        )
        if not alive:
            self.join()  # forgotten while it was silent

    def leave(self) -> None:
        breaker = self.breaker
        if breaker.exhausted:
            # Left in the registry, faulted, so `i2vd status` says why it stopped.
            self.store.daemons.heartbeat(self.owner, DaemonState.FAULTED, breaker.reason)
        else:
            self.store.daemons.unregister(self.owner)


def queue_state(store: JobStore) -> DaemonState:
    """What a daemon that is not faulted says it is: paused while the queue is (`i2vd
    pause`), else running. The heartbeat writes it, and the worker when a GPU that
    had faulted works again."""
    return DaemonState.PAUSED if store.control.get().paused else DaemonState.RUNNING
