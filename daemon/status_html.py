"""The status page as HTML: a static page a file browser opens straight from the share.

No script and no server: a refresh tag reloads it. Names, prompts and errors come
from whoever can write to the share, so every text is escaped, and a link is made
only to a file inside the page's own folder, with each part of its path encoded.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from .queue_view import Done, Failed, Running, Snapshot, Waiting
from .snapshot import Share

REFRESH_SECONDS = 10
NONE = "-"
# A page is rewritten at least this often while the daemon runs (status_page.py), so
# an older time on it means the daemon is gone.
HEARTBEAT_SECONDS = 60.0
MAX_WAITING_ROWS = 500  # a longer queue is summed up; the JSON lists all of it

STATE_TITLES = {
    "running": "Running",
    "paused": "Paused",
    "outside_window": "Outside working hours",
    "stopped": "Stopped",
}

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.6em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;vertical-align:top;
padding:.35em .6em;border-bottom:1px solid #ddd}th{background:#f4f4f4;font-weight:600}
.state{padding:.6em .9em;border-radius:4px;margin:.6em 0}.state-running{background:#e3f4e1}
.state-paused{background:#fff1cc}.state-outside_window{background:#e1ecf7}
.state-stopped{background:#f7dede}.note{color:#666;font-size:.88em}.name{font-weight:600;
min-width:10em;overflow-wrap:anywhere}.error{color:#8a1c1c}.empty{color:#666;font-style:italic}
code{background:#f4f4f4;padding:0 .25em}footer{margin-top:2em;color:#666;font-size:.88em}
"""


@dataclass(frozen=True)
class PageScope:
    """Where a page sits and what it may link to."""

    kind: str  # inbox | outbox
    title: str  # the folder's name as people know it
    json_name: str  # the JSON file beside the page
    # Whether the page sits in the outbox, where the videos are (links are relative
    # to the page's folder and never leave it).
    links_outbox: bool = False
    # Whether a file exists at a path relative to the page (checked without following
    # symlinks); a link is only made to one that does.
    exists: Callable[[str], bool] = lambda relative: False


def e(value: Any) -> str:
    """Escape any text for HTML, quotes included (it may land in an attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def href(relative: str) -> str | None:
    """A relative link to ``relative`` inside the page's folder, or None when it is not
    a plain path downwards (absolute, ``..``, empty)."""
    path = PurePosixPath(relative)
    if not relative or path.is_absolute() or any(p in ("..", ".", "") for p in path.parts):
        return None
    # Every part encoded, ':' included, so no name can read as a URL scheme.
    return "/".join(quote(part, safe="") for part in path.parts)


def clock(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 1:
        return "under 1 s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min"


def render(snapshot: Snapshot, scope: PageScope) -> str:
    daemon = snapshot.daemon
    state = STATE_TITLES.get(daemon.state, daemon.state)
    reopens = ""
    if daemon.reopens_at:
        who = "It starts" if daemon.state == "outside_window" else "They start"
        reopens = f" {who} again at {e(clock(daemon.reopens_at))}."
    counts = (
        f"{len(snapshot.waiting)} waiting · {len(snapshot.running)} in progress · "
        f"last {len(snapshot.done)} done · last {len(snapshot.failed)} failed"
    )
    several = len(snapshot.inboxes) > 1
    heading = (
        f"What happens to the images dropped in {scope.title}"
        if scope.kind == "inbox"
        else "What happens to the images dropped in i2vd's inboxes"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>i2vd status: {e(scope.title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<header><h1>{e(heading)}</h1>",
        f'<p class="updated">Last updated <time id="updated" datetime="'
        f'{e(dt.datetime.fromtimestamp(snapshot.updated).astimezone().isoformat())}">'
        f"{e(clock(snapshot.updated))}</time>. While i2vd runs, this page is rewritten "
        f"at least every {int(HEARTBEAT_SECONDS)} seconds: if this time is older, i2vd "
        "has stopped and the lists below may be out of date.</p>",
        f'<p id="daemon" class="state state-{e(daemon.state)}"><strong>{e(state)}</strong>'
        f" — {e(daemon.message)}.{reopens}</p>",
        f'<p class="counts">{counts}</p>{_shares_banner(snapshot.shares)}</header>',
        _section("running", "In progress", snapshot.running, "Nothing is being made now.",
                 ["Image", "Rule", "Step", "Running for", "Time left"],
                 lambda r: _running_row(r, several)),
        _waiting_section(snapshot.waiting, several),
        _section("done", "Done", snapshot.done, "No video finished yet.",
                 ["Image", "Video", "Rule", "Prompt", "Settings", "Took", "Finished"],
                 lambda d: _done_row(d, scope, several)),
        _section("failed", "Failed", snapshot.failed, "Nothing failed.",
                 ["Image", "Rule", "What went wrong", "What to do", "How to try again",
                  "Failed at"],
                 lambda f: _failed_row(f, several)),
        f'<footer>Made by i2vd. The same for scripts: <a href="{e(href(scope.json_name))}">'
        f"{e(scope.json_name)}</a>. Times are estimates where they say so.</footer>",
        "</body></html>",
    ]  # fmt: skip
    return "\n".join(parts) + "\n"


def _shares_banner(shares: tuple[Share, ...]) -> str:
    if not shares:
        return ""
    lines = "".join(f"<p>{e(share_words(share))}</p>" for share in shares)
    return f'<div id="shares" class="state state-paused">{lines}</div>'


def share_words(share: Share) -> str:
    """An unavailable root in plain words: what it means and whom to ask."""
    if share.kind == "inbox":
        what, wait = f"The inbox '{share.name}'", "Images there wait"
    else:
        what, wait = f"The {share.kind}", "Finished videos wait in the queue"
    return (
        f"{what} cannot be reached right now: {share.reason}. {wait}; nothing is lost. "
        "Ask whoever looks after i2vd to check the share."
    )


def _section(
    key: str,
    title: str,
    items: Iterable[Any],
    empty: str,
    headings: list[str],
    row: Callable[[Any], str],
) -> str:
    items = list(items)
    head = f'<section id="{key}"><h2>{e(title)} ({len(items)})</h2>'
    if not items:
        return f'{head}<p class="empty">{e(empty)}</p></section>'
    heads = "".join(f"<th>{e(h)}</th>" for h in headings)
    rows = "\n".join(row(item) for item in items)
    table = f"<table><thead><tr>{heads}</tr></thead><tbody>\n{rows}\n</tbody></table>"
    return f"{head}{table}</section>"


def _name(source: str, inbox: str, several: bool) -> str:
    shown = f"{inbox}: {source}" if several else source
    return f'<td class="name">{e(shown)}</td>'


def _rule(rule: str, variant: str) -> str:
    return f"<td>{e(rule)}{f' ({e(variant)})' if variant else ''}</td>"


def _running_row(item: Running, several: bool) -> str:
    attempt = f" (attempt {item.attempt} of {item.max_attempts})" if item.attempt > 1 else ""
    left = duration(item.remaining) if item.remaining is not None else "not known yet"
    return (
        f'<tr data-job="{item.job}">{_name(item.source, item.inbox, several)}'
        f"{_rule(item.rule, item.variant)}<td>{e(item.step)}{e(attempt)}</td>"
        f"<td>{e(duration(item.elapsed))}</td>"
        f'<td>{e(left)}<div class="note">{e(item.remaining_how)}</div></td></tr>'
    )


def _waiting_section(items: tuple[Waiting, ...], several: bool) -> str:
    shown = items[:MAX_WAITING_ROWS]
    section = _section(
        "waiting",
        "Waiting",
        shown,
        "Nothing is waiting.",
        ["Place in line", "Image", "Rule", "Expected done in"],
        lambda w: _waiting_row(w, several),
    )
    if len(items) > len(shown):
        more = f'<p class="note">… and {len(items) - len(shown)} more (all in the JSON).</p>'
        section = section.replace("</section>", more + "</section>")
    return section.replace(f"Waiting ({len(shown)})", f"Waiting ({len(items)})", 1)


def _waiting_row(item: Waiting, several: bool) -> str:
    retry = ""
    if item.state == "retrying":
        retry = (
            f'<div class="note">trying again (attempt {item.attempts + 1} of '
            f"{item.max_attempts}) after: {e(item.last_error)}</div>"
        )
    eta = "not known yet" if item.eta is None else duration(item.eta)
    eta = eta if eta.startswith(("under", "not")) else f"about {eta}"
    return (
        f'<tr data-job="{item.job}"><td>{item.position}</td>'
        f"{_name(item.source, item.inbox, several)}{_rule(item.rule, item.variant)}"
        f'<td>{e(eta)}<div class="note">{e(item.eta_how)}</div>{retry}</td></tr>'
    )


def _done_row(item: Done, scope: PageScope, several: bool) -> str:
    video = NONE
    if item.video:
        link = href(item.video) if scope.links_outbox and scope.exists(item.video) else None
        video = (
            f'<a href="{e(link)}">{e(item.video)}</a>'
            if link
            else f"{e(item.video)}<div class='note'>in the outbox</div>"
        )
    if item.reused:
        video += '<div class="note">the same image and rule were done before: reused</div>'
    return (
        f'<tr data-job="{item.job}">{_name(item.source, item.inbox, several)}<td>{video}</td>'
        f"{_rule(item.rule, item.variant)}<td>{e(item.prompt or NONE)}</td>"
        f"<td>{e(settings_words(item.params))}</td><td>{e(duration(item.duration))}</td>"
        f"<td>{e(clock(item.finished_at))}</td></tr>"
    )


def settings_words(params: dict[str, Any]) -> str:
    """The main parameters of a video, as one line."""
    if not params:
        return NONE
    words = []
    if "width" in params and "height" in params:
        words.append(f"{params['width']}x{params['height']}")
    if "frames" in params:
        fps = f" at {params['fps']} fps" if "fps" in params else ""
        words.append(f"{params['frames']} frames{fps}")
    for key in ("steps", "guidance", "seed"):
        if params.get(key) is not None:
            words.append(f"{key} {params[key]}")
    return ", ".join(words)


def _failed_row(item: Failed, several: bool) -> str:
    attempts = f" after {item.attempts} attempts" if item.attempts > 1 else ""
    report = (
        f'<div class="note">report: failed folder, {e(item.report)}</div>' if item.report else ""
    )
    if item.detail:
        # Folded away: for whoever looks after i2vd, not for the person who dropped it.
        report += (
            f'<details class="note"><summary>technical detail</summary>{e(item.detail)}</details>'
        )
    return (
        f'<tr data-job="{item.job}">{_name(item.source, item.inbox, several)}'
        f"{_rule(item.rule, item.variant)}"
        f'<td class="error">{e(item.error)}{e(attempts)}</td><td>{e(item.hint)}</td>'
        f"<td>{e(item.retry)}{report}</td><td>{e(clock(item.finished_at))}</td></tr>"
    )
