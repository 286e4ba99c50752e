"""When a crash counts as one of a job's attempts.

Claiming a job counts an attempt. A job that ends in an error keeps it. A job caught
running by a crash (``kill -9``, power loss, a segfault) keeps it only if the crash
fell during the job's real work: from the start of its picture's decode to the end
of its encode, where the picture itself can bring the daemon down (a decoder crash,
memory exhausted by its frames). A crash before that (moments after start-up, while
the job was only claimed) or after it (publishing, which recovery completes or
redoes) is not the picture's doing: the attempt is handed back when the job is
recovered.

The worker marks that window in the job row's ``progress``: ``RENDER_STARTED`` just
before decoding, the engine's fraction while rendering (kept above 0 and below 1),
``RENDER_DONE`` once the video is encoded and verified. Recovery reads the mark in
the same statement that re-queues the job. A picture that crashes the daemon every
time it is worked on still reaches ``max_attempts`` and ends in failed/.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case

RENDER_STARTED = 0.001
RENDER_DONE = 1.0


def rendering(done: float) -> float:
    """Progress to record while rendering and encoding: within (0, 1), whatever the
    engine says (its 1.0 comes before the encode)."""
    return min(max(done, RENDER_STARTED), 0.999)


def after_crash(attempts: Any, progress: Any) -> Any:
    """The SQL expression for a recovered job's attempts: kept only if the crash fell
    while its picture was being decoded, rendered or encoded."""
    charged = (progress > 0) & (progress < RENDER_DONE)
    return case((charged, attempts), (attempts > 0, attempts - 1), else_=0)
