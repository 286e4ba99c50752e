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

from typing import Any

from sqlalchemy import TextClause, text

from .capabilities import Capabilities
from .dbapi import now_sql
from .job_states import RUNNABLE_SQL, JobState

RUNNABLE_WHERE = RUNNABLE_SQL + " AND not_before <= {now}"


def claim_statement(
    dialect: str, can_run: Capabilities | None, now: float | None
) -> tuple[TextClause, dict[str, Any]]:
    """The claim as SQL text and its parameters; it returns the claimed job's id."""
    clock = ":now" if now is not None else now_sql(dialect)
    params: dict[str, Any] = {"running": JobState.RUNNING.value}
    if now is not None:
        params["now"] = now
    runnable = RUNNABLE_WHERE.format(now=clock) + _routing(can_run, params)
    # SQLite's planner would rather walk another index here: held to the one made for it.
    by_runnable = " INDEXED BY ix_job_runnable" if dialect == "sqlite" else ""
    # The inboxes with waiting jobs, one index probe each (a skip scan), not a pass
    # over every waiting job.
    boxes = (
        "WITH RECURSIVE box(inbox) AS ("
        f"SELECT min(inbox) FROM job{by_runnable} WHERE {RUNNABLE_SQL} "
        f"UNION ALL SELECT (SELECT min(j.inbox) FROM job AS j{by_runnable} "
        f"WHERE j.{RUNNABLE_SQL} AND j.inbox > box.inbox) FROM box WHERE box.inbox IS NOT NULL) "
    )
    served = (
        "(SELECT s.claim_seq FROM job AS s WHERE s.inbox = box.inbox "
        "ORDER BY s.claim_seq DESC LIMIT 1)"
    )
    order = "priority DESC, not_before, id"
    if dialect == "postgresql":
        pick = (
            "SELECT pick.id FROM box CROSS JOIN LATERAL (SELECT id, priority FROM job "
            f"WHERE job.inbox = box.inbox AND {runnable} ORDER BY {order} LIMIT 1 "
            f"FOR UPDATE SKIP LOCKED) AS pick ORDER BY {served}, pick.priority DESC, pick.id "
            "LIMIT 1"
        )
    else:
        best = (
            f"(SELECT id FROM job{by_runnable} WHERE job.inbox = box.inbox AND {runnable} "
            f"ORDER BY {order} LIMIT 1)"
        )
        pick = (
            f"SELECT p.id FROM (SELECT {best} AS id, {served} AS served FROM box "
            "WHERE box.inbox IS NOT NULL) AS p "
            "JOIN job AS j ON j.id = p.id ORDER BY p.served, j.priority DESC, p.id LIMIT 1"
        )
    statement = text(
        f"{boxes}UPDATE job SET state = :running, attempts = attempts + 1, "
        f"lease_owner = :owner, lease_expires = {clock} + :lease, started_at = {clock}, "
        "progress = 0, cancel_requested = false, "
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
    if can_run.inboxes is not None:
        terms.append(_in_list("inbox", "inbox", can_run.inboxes, params))
    return "".join(f" AND {term}" for term in terms)


def _in_list(column: str, prefix: str, values: tuple[str, ...], params: dict[str, Any]) -> str:
    if not values:
        return "1 = 0"  # can run nothing of this kind
    names = []
    for index, value in enumerate(values):
        params[f"{prefix}{index}"] = value
        names.append(f":{prefix}{index}")
    return f"{column} IN ({', '.join(names)})"
