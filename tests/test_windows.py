"""Schedule windows: a pure function of now, checked across both DST changes of Berlin."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import yaml

from daemon.windows import Window, closed_engines, closing, is_open, parse_days

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC


def night(**extra: object) -> Window:
    values = {
        "engine": "diffusion",
        "start": "22:00",
        "end": "06:00",
        "days": "mon-fri",
        "timezone": "Europe/Berlin",
    }
    values.update(extra)
    return Window.from_mapping(values)


def berlin(*args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_an_overnight_window_opens_on_listed_days_and_runs_into_the_next_morning() -> None:
    w = [night()]
    # 2026-11-27 is a Friday.
    friday = berlin(2026, 11, 27, 22)
    assert is_open(w, "diffusion", berlin(2026, 11, 27, 21, 59)) == (False, friday)
    assert is_open(w, "diffusion", berlin(2026, 11, 27, 22, 0)).open
    assert is_open(w, "diffusion", berlin(2026, 11, 28, 5, 59)).open  # Saturday morning
    state = is_open(w, "diffusion", berlin(2026, 11, 28, 6, 0))
    assert not state.open
    assert state.reopens_at == berlin(2026, 11, 30, 22, 0)  # Monday evening
    assert state.reopens_at is not None and state.reopens_at.tzinfo is UTC


def test_engines_without_a_window_are_always_open() -> None:
    w = [night()]
    now = berlin(2026, 11, 28, 12, 0)
    assert is_open(w, "motion", now) == (True, None)
    assert closed_engines(w, ["motion", "diffusion"], now) == {"diffusion"}


def test_several_windows_of_one_engine_are_open_while_any_is() -> None:
    w = [night(), night(start="10:00", end="12:00", days="sat,sun")]
    assert is_open(w, "diffusion", berlin(2026, 11, 28, 11, 0)).open
    state = is_open(w, "diffusion", berlin(2026, 11, 28, 13, 0))
    assert state == (False, berlin(2026, 11, 29, 10, 0))


def test_spring_forward_closes_at_the_wall_clock_time_not_a_fixed_offset() -> None:
    # Berlin skips 02:00-03:00 on 2026-03-29: the night from Saturday is one hour
    # shorter, and 06:00 CEST is 04:00 UTC (a fixed +1 offset would say 05:00).
    w = [night(days="*")]
    assert is_open(w, "diffusion", utc(2026, 3, 29, 3, 59)).open
    state = is_open(w, "diffusion", utc(2026, 3, 29, 4, 0))
    assert not state.open
    assert state.reopens_at == utc(2026, 3, 29, 20, 0)  # 22:00 CEST


def test_a_window_starting_in_the_skipped_hour_opens_when_the_clocks_jump() -> None:
    w = [night(start="02:30", end="04:00", days="*")]
    # The clocks leap from 02:00 CET (01:00 UTC) to 03:00 CEST.
    assert is_open(w, "diffusion", utc(2026, 3, 29, 0, 45)) == (False, utc(2026, 3, 29, 1, 0))
    assert is_open(w, "diffusion", utc(2026, 3, 29, 1, 0)).open
    assert not is_open(w, "diffusion", utc(2026, 3, 29, 2, 0)).open  # 04:00 CEST


def test_fall_back_closes_at_the_wall_clock_time_not_a_fixed_offset() -> None:
    # Berlin repeats 02:00-03:00 on 2026-10-25: the night is one hour longer, and
    # 06:00 CET is 05:00 UTC (a fixed +2 offset would say 04:00).
    w = [night(days="*")]
    assert is_open(w, "diffusion", utc(2026, 10, 25, 4, 30)).open
    state = is_open(w, "diffusion", utc(2026, 10, 25, 5, 0))
    assert not state.open
    assert state.reopens_at == utc(2026, 10, 25, 21, 0)  # 22:00 CET


def test_a_window_in_the_repeated_hour_counts_its_first_occurrence() -> None:
    w = [night(start="02:00", end="02:45", days="*")]
    assert is_open(w, "diffusion", berlin(2026, 10, 25, 2, 15, fold=0)).open
    assert not is_open(w, "diffusion", berlin(2026, 10, 25, 2, 15, fold=1)).open


@pytest.mark.parametrize("day", [dt.date(2026, 3, 28), dt.date(2026, 10, 24)])
@pytest.mark.parametrize("start,end", [("22:00", "06:00"), ("02:30", "03:15"), ("01:00", "02:30")])
def test_every_minute_across_a_dst_change_gives_an_answer_that_holds(
    day: dt.date, start: str, end: str
) -> None:
    """Minute by minute over two days around each change: a closed engine's reopening
    lies in the future and is open then; nothing loops or throws (older APScheduler
    CronTriggers loop forever at a fall-back)."""
    w = [night(start=start, end=end, days="*")]
    now = dt.datetime.combine(day, dt.time(0), tzinfo=BERLIN).astimezone(UTC)
    end_at = now + dt.timedelta(days=2)
    while now < end_at:
        state = is_open(w, "diffusion", now)
        if not state.open:
            assert state.reopens_at is not None and state.reopens_at > now
            assert state.reopens_at - now <= dt.timedelta(days=1, hours=1)
            assert is_open(w, "diffusion", state.reopens_at).open
        now += dt.timedelta(minutes=1)


def test_stop_at_close_now_is_reported_only_once_every_window_is_closed() -> None:
    w = [night(stop_at_close="now")]
    assert closing(w, "diffusion", berlin(2026, 11, 27, 23, 0)) is None  # open
    assert closing(w, "diffusion", berlin(2026, 11, 28, 6, 1)) == w[0]
    assert closing([night()], "diffusion", berlin(2026, 11, 28, 6, 1)) is None
    assert closing(w, "motion", berlin(2026, 11, 28, 6, 1)) is None


def test_an_end_equal_to_the_start_is_a_whole_day() -> None:
    w = [night(start="00:00", end="00:00", days="sat,sun")]
    assert is_open(w, "diffusion", berlin(2026, 11, 28, 0, 0)).open
    assert is_open(w, "diffusion", berlin(2026, 11, 29, 23, 59)).open
    assert is_open(w, "diffusion", berlin(2026, 11, 30, 0, 0)) == (False, berlin(2026, 12, 5))


def test_days_are_parsed_with_ranges_lists_and_wrapping() -> None:
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("sat,sun") == frozenset({5, 6})
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days("Monday-Wednesday, fri") == frozenset({0, 1, 2, 4})
    assert parse_days("*") == frozenset(range(7))


def test_an_unquoted_yaml_time_is_read_as_a_clock_time() -> None:
    # YAML 1.1 reads 22:00 as 1320 (minutes in base 60).
    data = yaml.safe_load("engine: diffusion\nstart: 22:00\nend: 6:30\n")
    window = Window.from_mapping(data)
    assert (window.start, window.end) == (dt.time(22), dt.time(6, 30))


@pytest.mark.parametrize("written", ["22:00:30", "25:00", "24:00", "-1", "99999"])
def test_an_unquoted_number_that_is_no_minute_of_the_day_is_refused(written: str) -> None:
    """YAML reads an unquoted 22:00:30 as 79230 and 25:00 as 1500: no guessing."""
    data = yaml.safe_load(f"engine: diffusion\nstart: {written}\nend: '06:00'\n")
    assert isinstance(data["start"], int)
    with pytest.raises(ValueError) as caught:
        Window.from_mapping(data)
    assert f"start {data['start']}: not a time of day" in str(caught.value)
    assert 'write it as HH:MM in quotes, e.g. "22:00"' in str(caught.value)


def test_every_minute_of_the_day_written_unquoted_is_that_time() -> None:
    for minute in (0, 1, 359, 1320, 1439):
        text = f"{minute // 60}:{minute % 60:02d}"
        value = yaml.safe_load(f"start: {text}")["start"]
        window = Window.from_mapping({"engine": "motion", "start": value, "end": "23:00"})
        assert window.start == dt.time(*divmod(minute, 60)), text


def test_clock_times_are_read_from_text_or_a_time() -> None:
    window = night(start="22:00:30", end=dt.time(6, 15))
    assert (window.start, window.end) == (dt.time(22, 0, 30), dt.time(6, 15))
    assert night(start="6:30", end=" 07:00 ").start == dt.time(6, 30)
    assert night().stop_at_close == "finish" and night(days="*").timezone == "Europe/Berlin"
    assert Window.from_mapping({"engine": "motion", "start": "1:00", "end": "2:00"}) == Window(
        engine="motion", start=dt.time(1), end=dt.time(2), days="*", timezone="UTC"
    )


@pytest.mark.parametrize(
    "bad,words",
    [
        ({"days": "mon-fry"}, "days 'mon-fry': 'fry' is not a day"),
        ({"days": 5}, "days 5: write the days as text"),
        ({"timezone": "Europe/Berlim"}, "unknown time zone 'Europe/Berlim'"),
        ({"timezone": "Europe"}, "unknown time zone 'Europe'"),
        ({"engine": "difusion"}, "engine 'difusion': must be diffusion or motion"),
        ({"start": "25:00"}, "start '25:00': not a time of day"),
        ({"end": "06:61"}, "end '06:61': not a time of day"),
        # A zone on the time itself would contradict the window's timezone.
        ({"start": "22:00+01:00"}, "start '22:00+01:00': not a time of day"),
        ({"start": 22.5}, "start 22.5: not a time of day"),
        ({"end": None}, "end None: not a time of day"),
        ({"stop_at_close": "later"}, "stop_at_close 'later': must be finish or now"),
        ({"colour": "red"}, "'colour' is not a window setting"),
    ],
)
def test_bad_windows_are_refused_with_words_that_say_what_to_write(
    bad: dict[str, object], words: str
) -> None:
    with pytest.raises(ValueError) as caught:
        night(**bad)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"engine": "motion", "start": "22:00"}, "end is missing"),
        ({"start": "22:00", "end": "06:00"}, "engine is missing"),
        ("22:00-06:00", "a window must be a mapping of engine, start, end"),
    ],
)
def test_incomplete_windows_are_refused(data: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Window.from_mapping(data)


def test_a_window_built_directly_is_checked_too() -> None:
    with pytest.raises(ValueError, match="engine 'gpu'"):
        Window(engine="gpu", start=dt.time(1), end=dt.time(2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start 60: must be a time of day"):
        Window(engine="motion", start=60, end=dt.time(2))  # type: ignore[arg-type]
