"""Estimates of how long jobs take (medians of measured jobs of the same rule and size,
or a running job's own progress) and of the order the queue will take them in. Pure
functions; ``queue_view`` feeds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Below this progress an extrapolation from progress is mostly noise.
MIN_PROGRESS = 0.05


@dataclass(frozen=True)
class Size:
    """The part of a rule that decides how long a job takes, with its words."""

    key: tuple[Any, ...]
    words: str


def size_of(rule_name: str, rule: dict[str, Any]) -> Size:
    """A rule snapshot's effective size: its preset with its own params laid over."""
    params = dict(rule.get("preset_values") or {})
    params.update({k: v for k, v in (rule.get("params") or {}).items() if v is not None})
    resolution, frames, steps = params.get("resolution"), params.get("frames"), params.get("steps")
    words = f"{resolution}p, {frames} frames"
    if rule.get("engine") == "diffusion":
        words += f", {steps} steps"
    key = (rule_name, rule.get("engine"), rule.get("model"), resolution, frames, steps)
    return Size(key, words)


def phase_of(progress: float, engine: str) -> tuple[str, str]:
    """The step a running job is at, from the progress its engine reports (the worker
    marks 100% when the frames are done and the encoder starts)."""
    if progress <= 0.0:
        words = "loading the model" if engine == "diffusion" else "preparing"
        return "loading", words
    if progress < 1.0:
        return "generating", f"generating {progress:.0%}"
    return "encoding", "encoding the video"


def remaining_time(
    elapsed: float,
    progress: float,
    phase: str,
    measured: tuple[float, int] | None,
    size_words: str = "this size",
) -> tuple[float | None, str]:
    """Seconds a running job still needs, and how that was estimated."""
    if measured is not None and elapsed < measured[0]:
        return (
            round(measured[0] - elapsed, 1),
            f"estimate: the median time of the last {measured[1]} image(s) of this rule at "
            f"{size_words}, less the time so far",
        )
    if phase == "generating" and progress >= MIN_PROGRESS:
        return (
            round(elapsed * (1 - progress) / progress, 1),
            "estimate: from its progress so far",
        )
    return None, "no estimate yet"


def claim_order(
    waiting: Iterable[tuple[str, int, float, int]], served: Mapping[str, int]
) -> list[int]:
    """Waiting job ids in the order the claim takes them (store's claim statement):
    the inbox served longest ago first, round-robin, so each inbox in turn; within an
    inbox the highest priority, then the earliest due, then the oldest. ``waiting``
    holds (inbox, priority, not_before, id); ``served`` each inbox's last claim number
    (an inbox never served goes first)."""
    queues: dict[str, list[tuple[int, float, int]]] = {}
    for inbox, priority, not_before, job_id in waiting:
        queues.setdefault(inbox, []).append((-priority, not_before, job_id))
    for queue in queues.values():
        queue.sort()
    turn = sorted(queues, key=lambda inbox: (served.get(inbox, -1), inbox))
    order: list[int] = []
    for depth in range(max((len(q) for q in queues.values()), default=0)):
        order.extend(queues[inbox][depth][2] for inbox in turn if depth < len(queues[inbox]))
    return order
