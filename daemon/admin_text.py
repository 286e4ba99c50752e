"""How the admin verbs' results read in a terminal (``--json`` prints them as they are)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _short(text: str | None, width: int) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def status_text(data: dict[str, Any]) -> str:
    lines = []
    daemons = data["daemons"]
    alive = [d for d in daemons if d["alive"]]
    lines.append(
        f"daemons: {len(alive)} running"
        + (f", {len(daemons) - len(alive)} silent" if len(daemons) > len(alive) else "")
    )
    for d in daemons:
        state = d["state"] if d["alive"] else f"silent for {_age(d['silent_for'])}"
        reason = f" ({d['reason']})" if d.get("reason") else ""
        lines.append(
            f"  {d['host']} pid {d['pid']}  since {_when(d['since'])}  i2vd {d['version']}  "
            f"{d['device'] or '-'}  {','.join(d['engines'])}  {state}{reason}"
        )
    if data["paused"]:
        how = "running jobs stopped" if data["pause_now"] else "running jobs finish"
        lines.append(
            f"paused since {_when(data['paused_at'])} by {data['paused_by']} ({how}); "
            "resume with: i2vd resume"
        )
    else:
        lines.append("not paused")
    for w in data["windows"]:
        lines.append(
            f"window {w['engine']}: open"
            if w["open"]
            else f"window {w['engine']}: closed until {_when(w['reopens_at'])}"
        )
    counts = data["counts"]
    order = ("queued", "retrying", "running", "done", "failed", "cancelled")
    lines.append("jobs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in order))
    for job in data["running"]:
        eta = f", about {_age(job['eta'])} left" if job.get("eta") is not None else ""
        lines.append(
            f"  running: job {job['id']} {job['source']} (rule {job['rule']}) "
            f"{100 * job['progress']:.0f}%, {_age(job['elapsed'])} so far{eta}"
        )
    lines.extend(_trouble(data))
    last = data.get("last_failure")
    if last:
        lines.append(
            f"last failure: job {last['id']} {last['source']} at {_when(last['finished_at'])}: "
            f"{last['error']}"
        )
        if last.get("hint"):
            lines.append(f"  hint: {last['hint']}")
    return "\n".join(lines)


def _trouble(data: dict[str, Any]) -> list[str]:
    """What waits on someone: jobs no daemon can run, missing shares, files not taken."""
    lines = []
    for kind in data.get("stranded", []):
        needs = [f"model {kind['model']}"] if kind["model"] else []
        if kind["memory_gb"]:
            needs.append(f"{kind['memory_gb']:g} GiB")
        detail = f" ({', '.join(needs)})" if needs else ""
        lines.append(
            f"{kind['jobs']} waiting job{'s' if kind['jobs'] != 1 else ''} in inbox "
            f"{kind['inbox']} need engine {kind['engine']}{detail} and no running daemon "
            "can run them: start one that can (README: Several GPUs and hosts)"
        )
    for root in data.get("roots", []):
        if not root["available"]:
            lines.append(f"{root['kind']} {root['path']} is unavailable: {root['reason']}")
    not_taken = data.get("not_taken", [])
    if not_taken:
        lines.append(f"not taken from the inboxes ({len(not_taken)}; they are tried again):")
        lines.extend(f"  {item['path']}: {item['reason']}" for item in not_taken)
    return lines


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    moment = dt.datetime.fromisoformat(iso)
    today = dt.datetime.now(moment.tzinfo).date()
    return moment.strftime("%H:%M" if moment.date() == today else "%Y-%m-%d %H:%M")


def jobs_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no jobs"
    lines = [f"{'ID':>6}  {'STATE':<9}  {'SOURCE':<32}  {'RULE':<14}  TRY  PROG  {'AGE':>7}  ERROR"]
    for r in rows:
        name = r["source"] + (f" [{r['variant']}]" if r.get("variant") else "")
        progress = f"{100 * r['progress']:.0f}%" if r["state"] == "running" else ""
        lines.append(
            f"{r['id']:>6}  {r['state']:<9}  {_short(name, 32):<32}  {_short(r['rule'], 14):<14}  "
            f"{r['attempts']}/{r['max_attempts']}  {progress:>4}  {_age(r['age']):>7}  "
            f"{_short(r['error'], 60)}"
        )
    return "\n".join(lines)


def show_text(data: dict[str, Any]) -> str:
    lines = [
        f"job {data['id']}: {data['state']}",
        f"  source:    {data['source']} (inbox {data['inbox']})",
        f"  rule:      {data['rule']}"
        + (f", variant {data['variant']}" if data["variant"] else "")
        + f" ({data['engine']}; file {data['rule_file']})",
        f"  attempts:  {data['attempts']} of {data['max_attempts']}"
        + (f" (GPU faults: {data['device_faults']})" if data.get("device_faults") else ""),
        f"  queued:    {data['created_at']}",
        f"  started:   {data['started_at'] or '-'}",
        f"  finished:  {data['finished_at'] or '-'}",
    ]
    if data["not_before"] and data["state"] == "retrying":
        lines.append(f"  next try:  {data['not_before']}")
    if data["state"] == "running":
        lines.append(f"  progress:  {100 * data['progress']:.0f}% (held by {data['lease_owner']})")
    if data["timings"]:
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in data["timings"].items())
        lines.append(f"  timings:   {parts}")
    outputs = data["outputs"]
    for key in ("video", "sidecar", "original"):
        if outputs[key]:
            lines.append(f"  {key + ':':<10} {outputs[key]}")
    if data["duplicate_of"]:
        lines.append(f"  reused:    the video of job {data['duplicate_of']}")
    if data["error"]:
        lines.append(f"  error:     {data['error']}")
    if data["hint"]:
        lines.append(f"  hint:      {data['hint']}")
    lines.append("  rule as queued:")
    for key, value in data["rule_as_queued"].items():
        lines.append(f"    {key}: {value}")
    return "\n".join(lines)
