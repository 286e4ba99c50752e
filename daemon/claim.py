"""Taking the next job: one statement, fair across inboxes, only what this daemon can run.

Order: the inbox served longest ago first (round-robin, so 500 images dropped into one
inbox do not starve another), then within it the highest rule priority, the earliest
due (a retry waiting since earlier), the oldest. "Served" counts claims, not clock time.

PostgreSQL takes the row with ``FOR UPDATE SKIP LOCKED``, which cannot be combined with
a window function: a ``LATERAL`` subquery picks each inbox's best unlocked job, and the
outer query picks among those. SQLite runs one writer at a time, so the same choice
inside one ``UPDATE`` is already atomic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, text

from .database import now_sql
from .tables import JobState

RUNNABLE_WHERE = "state IN ('queued', 'retrying') AND not_before <= {now}"


@dataclass(frozen=True)
class Capabilities:
    """What a daemon can run. ``models`` None: any model of its engines; ``memory_gb``
    None: no limit known (a job's ``memory_gb`` 0 fits anywhere)."""

    engines: tuple[str, ...]
    models: tuple[str, ...] | None = None
    memory_gb: float | None = None


def claim_statement(
    dialect: str, can_run: Capabilities | None, now: float | None
) -> tuple[TextClause, dict[str, Any]]:
    """The claim as SQL text and its parameters; it returns the claimed job's id."""
    clock = ":now" if now is not None else now_sql(dialect)
    params: dict[str, Any] = {"running": JobState.RUNNING.value}
    if now is not None:
        params["now"] = now
    route = _routing(can_run, params)
    runnable = RUNNABLE_WHERE.format(now=clock) + route
    served = "(SELECT max(claim_seq) FROM job AS s WHERE s.inbox = box.inbox)"
    order = "priority DESC, not_before, id"
    if dialect == "postgresql":
        pick = (
            f"SELECT pick.id FROM (SELECT DISTINCT inbox FROM job WHERE {runnable}) AS box "
            f"CROSS JOIN LATERAL (SELECT id, priority FROM job WHERE job.inbox = box.inbox "
            f"AND {runnable} ORDER BY {order} LIMIT 1 FOR UPDATE SKIP LOCKED) AS pick "
            f"ORDER BY {served}, pick.priority DESC, pick.id LIMIT 1"
        )
    else:
        best = (
            f"(SELECT id FROM job WHERE job.inbox = box.inbox AND {runnable} "
            f"ORDER BY {order} LIMIT 1)"
        )
        pick = (
            f"SELECT p.id FROM (SELECT {best} AS id, {served} AS served "
            f"FROM (SELECT DISTINCT inbox FROM job WHERE {runnable}) AS box) AS p "
            "JOIN job AS j ON j.id = p.id ORDER BY p.served, j.priority DESC, p.id LIMIT 1"
        )
    statement = text(
        "UPDATE job SET state = :running, attempts = attempts + 1, lease_owner = :owner, "
        f"lease_expires = {clock} + :lease, started_at = {clock}, progress = 0, "
        "cancel_requested = false, "
        "claim_seq = (SELECT coalesce(max(claim_seq), 0) + 1 FROM job) "
        f"WHERE id = ({pick}) RETURNING id"
    )
    return statement, params


def _routing(can_run: Capabilities | None, params: dict[str, Any]) -> str:
    """Extra WHERE terms: only jobs whose engine (model, memory) this daemon has."""
    if can_run is None:
        return ""
    terms = [_in_list("engine", "engine", can_run.engines, params)]
    if can_run.models is not None:
        terms.append(f"(model = '' OR {_in_list('model', 'model', can_run.models, params)})")
    if can_run.memory_gb is not None:
        params["memory_gb"] = can_run.memory_gb
        terms.append("memory_gb <= :memory_gb")
    return "".join(f" AND {term}" for term in terms)


def _in_list(column: str, prefix: str, values: tuple[str, ...], params: dict[str, Any]) -> str:
    if not values:
        return "1 = 0"  # can run nothing of this kind
    names = []
    for index, value in enumerate(values):
        params[f"{prefix}{index}"] = value
        names.append(f":{prefix}{index}")
    return f"{column} IN ({', '.join(names)})"
