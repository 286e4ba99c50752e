"""What an earlier run of this daemon left behind, cleared once at start.

A crash (or a kill) leaves this host's jobs marked running, temporaries in the outbox
and the failed folder, and scratch encodes in ``work_dir``. Before taking anything new
the daemon puts those jobs back in the queue and removes the files, so neither a job
nor a half-written file is lost or left to look finished.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import Settings
from .publish import sweep_temporaries
from .store import JobState, JobStore

log = logging.getLogger(__name__)


def clear_leftovers(settings: Settings, store: JobStore, host: str) -> None:
    """Requeue this host's jobs whose process is gone; remove temporaries and scratch."""
    for job in store.recover(host, None, alive=_other_process_alive):
        log.warning("job %d was running when i2vd stopped; queued again (%s)", job.id, job.relative)
    for path in sweep_temporaries([settings.outbox, settings.failed_dir]):
        log.info("removed a temporary left by an earlier crash: %s", path)
    _sweep_work_dir(settings.work_dir, store)


def _sweep_work_dir(work_dir: Path, store: JobStore) -> None:
    """Delete scratch encodes of jobs that no live daemon is running any more."""
    for path in work_dir.iterdir():
        job_id = path.stem.removeprefix("job-")
        job = store.get(int(job_id)) if job_id.isdigit() else None
        if job is None or job.state != JobState.RUNNING:
            path.unlink(missing_ok=True)
            log.info("removed a scratch file left by an earlier crash: %s", path.name)


def _other_process_alive(pid: int) -> bool:
    """Whether another process with ``pid`` runs here. Our own pid counts as dead: a
    restarted daemon (pid 1 in every container start) owns nothing from before."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
