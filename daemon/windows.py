"""Schedule windows: when an engine may take new jobs, as a pure function of ``now``.

A window such as ``{engine: diffusion, start: "22:00", end: "06:00", days: mon-fri,
timezone: Europe/Berlin}`` opens at 22:00 local time on each listed day and closes at
06:00 the next morning; an end equal to the start means a whole day. Engines without
a window are always open; an engine with several windows is open while any of them is.

"Open" is judged from the wall clock before each claim, never by timers at the
boundaries: a delayed boundary timer would be skipped silently, and a daemon started
mid-window would never see its start. All comparisons are made in UTC, because two
aware datetimes in one zone compare by their wall time, which repeats at a DST
fall-back.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Far enough to find the next opening of a window open on one day a week.
_LOOKAHEAD_DAYS = 8
Engine = Literal["diffusion", "motion"]
StopAtClose = Literal["finish", "now"]
_KEYS = ("engine", "start", "end", "days", "timezone", "stop_at_close")
_REQUIRED = ("engine", "start", "end")
# A clock time as people write it: 22:00, 6:30, 22:00:30.
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


@dataclass(frozen=True)
class Window:
    """One recurring window for one engine (times are the zone's wall-clock times).

    A plain dataclass rather than a pydantic model, so that the admin commands can
    read the windows without importing pydantic; ``from_mapping`` is the one
    validator, which ``Settings`` uses too. Building a ``Window`` directly checks
    the same rules (``__post_init__``), so no invalid window exists.
    """

    # The engines a rule may name (rules.Rule.engine); a typo must not pass silently.
    engine: Engine
    start: dt.time
    end: dt.time
    # The days the window *opens* on: "mon-fri", "sat,sun", "mon-wed,fri", "*".
    days: str = "*"
    timezone: str = "UTC"
    # At the close: let the running job finish, or stop it at its next step and
    # put it back in the queue.
    stop_at_close: StopAtClose = "finish"

    def __post_init__(self) -> None:
        _engine(self.engine)
        for key in ("start", "end"):
            value = getattr(self, key)
            if not isinstance(value, dt.time) or value.tzinfo is not None:
                raise ValueError(f"{key} {value!r}: must be a time of day without a zone")
        _days(self.days)
        _zone(self.timezone)
        _stop_at_close(self.stop_at_close)

    @classmethod
    def from_mapping(cls, data: object) -> Window:
        """A window from its settings (a mapping, as in YAML or JSON). Raises
        ``ValueError`` naming the key and the bad value; unknown keys are refused."""
        if isinstance(data, Window):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"a window must be a mapping of {', '.join(_KEYS)}, not {data!r}")
        unknown = [key for key in data if key not in _KEYS]
        if unknown:
            raise ValueError(
                f"{unknown[0]!r} is not a window setting; a window has {', '.join(_KEYS)}"
            )
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ValueError(f"{missing[0]} is missing; every window needs engine, start and end")
        return cls(
            engine=_engine(data["engine"]),
            start=_clock_time("start", data["start"]),
            end=_clock_time("end", data["end"]),
            days=_days(data.get("days", "*")),
            timezone=_zone(data.get("timezone", "UTC")),
            stop_at_close=_stop_at_close(data.get("stop_at_close", "finish")),
        )

    @property
    def day_set(self) -> frozenset[int]:
        return parse_days(self.days)

    def openings(self, around: dt.datetime) -> Iterable[tuple[dt.datetime, dt.datetime]]:
        """(opens, closes) in UTC for each listed day from the day before ``around``
        onwards: an overnight window opened yesterday may still be open."""
        zone = ZoneInfo(self.timezone)
        today = around.astimezone(zone).date()
        days = self.day_set
        for offset in range(-1, _LOOKAHEAD_DAYS):
            day = today + dt.timedelta(days=offset)
            if day.weekday() not in days:
                continue
            end_day = day if self.end > self.start else day + dt.timedelta(days=1)
            yield _utc(day, self.start, zone), _utc(end_day, self.end, zone)


class WindowState(NamedTuple):
    open: bool
    # When a closed engine may take jobs again (UTC); None while open, or when no
    # window of this engine ever opens (impossible for a validated window).
    reopens_at: dt.datetime | None


def parse_days(text: str) -> frozenset[int]:
    """Weekday numbers (Monday 0) from "mon-fri", "sat,sun", "fri-mon", "*"."""
    spec = text.strip().lower()
    if spec in ("*", "", "daily", "every day"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        a, b = _day(first, text), _day(last or first, text)
        span = (b - a) % 7
        days.update((a + i) % 7 for i in range(span + 1))
    return frozenset(days)


def _day(name: str, text: str) -> int:
    key = name.strip()[:3]
    if key not in DAY_NAMES or not name.strip():
        raise ValueError(
            f"days {text!r}: {name.strip()!r} is not a day; write e.g. mon-fri, sat,sun or *"
        )
    return DAY_NAMES.index(key)


def _engine(value: object) -> Engine:
    if value == "diffusion":
        return "diffusion"
    if value == "motion":
        return "motion"
    raise ValueError(f"engine {value!r}: must be diffusion or motion")


def _stop_at_close(value: object) -> StopAtClose:
    if value == "finish":
        return "finish"
    if value == "now":
        return "now"
    raise ValueError(f"stop_at_close {value!r}: must be finish or now")


def _days(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"days {value!r}: write the days as text, e.g. mon-fri, sat,sun or *")
    parse_days(value)
    return value


def _clock_time(key: str, value: object) -> dt.time:
    """A wall-clock time from "HH:MM[:SS]", a ``datetime.time``, or YAML's reading of
    an unquoted 22:00: YAML 1.1 counts in base 60, so that is the integer 1320, read
    here as minutes after midnight (0 to 1439). Any other integer is refused: an
    unquoted 22:00:30 is 79230 (seconds), 25:00 is 1500, and neither is a time to
    guess at. A fraction of a second or a zone ("22:00:00.5", "22:00Z") is refused."""
    if isinstance(value, dt.time) and value.tzinfo is None:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < 24 * 60:
            return dt.time(*divmod(value, 60))
        raise ValueError(
            f"{key} {value!r}: not a time of day (YAML reads an unquoted time with seconds, "
            f'or past 23:59, as a number); write it as HH:MM in quotes, e.g. "22:00"'
        )
    if isinstance(value, str):
        match = _CLOCK.fullmatch(value.strip())
        if match:
            hours, minutes, seconds = (int(part or 0) for part in match.groups())
            if hours < 24 and minutes < 60 and seconds < 60:
                return dt.time(hours, minutes, seconds)
    raise ValueError(
        f'{key} {value!r}: not a time of day; write it as HH:MM in quotes, e.g. "22:00"'
    )


def _zone(value: object) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name that is a folder of the zone database ("Europe").
        raise ValueError(
            f"unknown time zone {value!r}; use a name such as Europe/Berlin or UTC"
        ) from None
    return value


def _utc(day: dt.date, time: dt.time, zone: ZoneInfo) -> dt.datetime:
    """The instant the zone's clocks show ``time`` on ``day``. A repeated wall time
    (fall-back) is its first occurrence; a skipped one (spring-forward) is the moment
    of the jump: a window from 02:30 opens when the clocks leap from 02:00 to 03:00."""
    naive = dt.datetime.combine(day, time)
    late = naive.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    if late.astimezone(zone).replace(tzinfo=None) == naive:
        return late
    # Skipped: the jump lies between the two readings; find it to the second.
    early = naive.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)
    low, high = min(early, late), max(early, late)
    while high - low > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def is_open(windows: Sequence[Window], engine: str, now: dt.datetime) -> WindowState:
    """Whether ``engine`` may take a new job at ``now`` (an aware datetime), and if
    not, when it may again."""
    mine = [w for w in windows if w.engine == engine]
    if not mine:
        return WindowState(True, None)
    now = now.astimezone(dt.UTC)
    reopens: dt.datetime | None = None
    for window in mine:
        for opens, closes in window.openings(now):
            if opens <= now < closes:
                return WindowState(True, None)
            if opens > now and (reopens is None or opens < reopens):
                reopens = opens
    return WindowState(False, reopens)


def closing(windows: Sequence[Window], engine: str, now: dt.datetime) -> Window | None:
    """The window of ``engine`` whose close should stop a running job now: set only
    when every window of the engine is closed and the latest one to close asks for
    ``stop_at_close: now``."""
    mine = [w for w in windows if w.engine == engine]
    if not mine or is_open(mine, engine, now).open:
        return None
    now = now.astimezone(dt.UTC)
    latest: tuple[dt.datetime, Window] | None = None
    for window in mine:
        for _opens, closes in window.openings(now):
            if closes <= now and (latest is None or closes > latest[0]):
                latest = (closes, window)
    if latest is not None and latest[1].stop_at_close == "now":
        return latest[1]
    return None


def closed_engines(windows: Sequence[Window], engines: Iterable[str], now: dt.datetime) -> set[str]:
    """The engines among ``engines`` whose windows are all closed at ``now``."""
    return {engine for engine in engines if not is_open(windows, engine, now).open}
