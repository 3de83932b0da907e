"""Maintenance windows: the default window in both halves of the year, the days clocks change,
windows across midnight, "daily", the boundaries, and properties against a brute-force scan."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixproxy.errors import ConfigError
from fixproxy.session.schedule import (
    ALL_DAYS,
    DEFAULT_SCHEDULE,
    MaintenanceSchedule,
    Window,
    parse_day,
    parse_days,
    parse_time,
    resolve_local,
)

NY = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
US = timedelta(microseconds=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def weekly(day: int, start: str, end: str, zone: ZoneInfo = NY, **kwargs: bool) -> \
        MaintenanceSchedule:
    return MaintenanceSchedule(days=frozenset({day}), start=parse_time(start),
                               end=parse_time(end), timezone=zone, **kwargs)


# --- the default window ------------------------------------------------------------------------


def test_default_schedule_is_kalshis_thursday_window() -> None:
    assert DEFAULT_SCHEDULE.days == frozenset({THU})
    assert (DEFAULT_SCHEDULE.start, DEFAULT_SCHEDULE.end) == (time(3), time(5))
    assert DEFAULT_SCHEDULE.timezone.key == "America/New_York"
    assert DEFAULT_SCHEDULE.reset_after is True
    assert DEFAULT_SCHEDULE.describe() == "Thursday 03:00-05:00 America/New_York"


@pytest.mark.parametrize(("thursday", "start", "end"), [
    # EST (UTC-5): 08:00-10:00 UTC.
    (date(2026, 1, 8), utc(2026, 1, 8, 8), utc(2026, 1, 8, 10)),
    (date(2026, 3, 5), utc(2026, 3, 5, 8), utc(2026, 3, 5, 10)),    # last before spring forward
    (date(2026, 11, 5), utc(2026, 11, 5, 8), utc(2026, 11, 5, 10)),  # first after fall back
    # EDT (UTC-4): 07:00-09:00 UTC.
    (date(2026, 7, 9), utc(2026, 7, 9, 7), utc(2026, 7, 9, 9)),
    (date(2026, 3, 12), utc(2026, 3, 12, 7), utc(2026, 3, 12, 9)),  # first after spring forward
    (date(2026, 10, 29), utc(2026, 10, 29, 7), utc(2026, 10, 29, 9)),  # last before fall back
])
def test_default_window_follows_daylight_saving(thursday: date, start: datetime,
                                                end: datetime) -> None:
    window = DEFAULT_SCHEDULE.window_on(thursday)
    assert window == Window(start=start, end=end, timezone=NY)
    # Boundaries: start inclusive, end exclusive.
    assert DEFAULT_SCHEDULE.active_window(start - US) is None
    assert DEFAULT_SCHEDULE.active_window(start) == window
    assert DEFAULT_SCHEDULE.active_window(end - US) == window
    assert DEFAULT_SCHEDULE.active_window(end) is None
    assert window.contains(start) and not window.contains(end)
    assert window.local_start == datetime(thursday.year, thursday.month, thursday.day, 3,
                                          tzinfo=NY)
    assert window.duration == timedelta(hours=2)
    assert window.describe_end() == f"05:00 America/New_York ({end:%H:%M} UTC)"
    assert window.describe() == (f"Thursday {thursday} 03:00-05:00 America/New_York "
                                 f"({start:%H:%M}-{end:%H:%M} UTC)")


def test_default_window_only_on_thursdays() -> None:
    for offset in range(7):
        day = date(2026, 1, 5) + timedelta(days=offset)  # Monday .. Sunday
        assert (DEFAULT_SCHEDULE.window_on(day) is not None) == (day.weekday() == THU)


def test_active_window_accepts_any_aware_datetime() -> None:
    # 03:30 New York time on a winter Thursday, given in three zones.
    for moment in (datetime(2026, 1, 8, 3, 30, tzinfo=NY), utc(2026, 1, 8, 8, 30),
                   datetime(2026, 1, 8, 9, 30, tzinfo=ZoneInfo("Europe/Paris"))):
        window = DEFAULT_SCHEDULE.active_window(moment)
        assert window is not None
        assert window.start == utc(2026, 1, 8, 8)
        assert window.start.tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 1, 8, 3, 30)
    with pytest.raises(ValueError, match="aware"):
        DEFAULT_SCHEDULE.active_window(naive)
    with pytest.raises(ValueError, match="aware"):
        DEFAULT_SCHEDULE.window_ended_between(utc(2026, 1, 1), naive)


# --- the days clocks change ----------------------------------------------------------------------


def test_spring_forward_end_in_the_skipped_hour_moves_to_its_end() -> None:
    # 2026-03-08: New York clocks go from 02:00 EST straight to 03:00 EDT (07:00 UTC). The window
    # 01:30-02:30 starts at 01:30 EST and its end, which does not exist, becomes 03:00 EDT.
    schedule = weekly(SUN, "01:30", "02:30")
    window = schedule.window_on(date(2026, 3, 8))
    assert window is not None
    assert (window.start, window.end) == (utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7))
    assert window.duration == timedelta(minutes=30)
    assert window.local_end.strftime("%H:%M %Z") == "03:00 EDT"
    assert schedule.active_window(utc(2026, 3, 8, 7) - US) == window
    assert schedule.active_window(utc(2026, 3, 8, 7)) is None
    assert window.describe_end() == "03:00 America/New_York (07:00 UTC)"
    # The week before and after, in EST and in EDT, the window is a plain hour.
    before, after = schedule.window_on(date(2026, 3, 1)), schedule.window_on(date(2026, 3, 15))
    assert before is not None and after is not None
    assert (before.start, before.end) == (utc(2026, 3, 1, 6, 30), utc(2026, 3, 1, 7, 30))
    assert (after.start, after.end) == (utc(2026, 3, 15, 5, 30), utc(2026, 3, 15, 6, 30))


def test_spring_forward_start_in_the_skipped_hour_moves_to_its_end() -> None:
    schedule = weekly(SUN, "02:30", "04:00")
    window = schedule.window_on(date(2026, 3, 8))
    assert window is not None
    assert (window.start, window.end) == (utc(2026, 3, 8, 7), utc(2026, 3, 8, 8))
    assert window.local_start.strftime("%H:%M %Z") == "03:00 EDT"


def test_spring_forward_window_inside_the_skipped_hour_does_not_happen() -> None:
    schedule = weekly(SUN, "02:10", "02:50")
    assert schedule.window_on(date(2026, 3, 8)) is None
    assert schedule.active_window(utc(2026, 3, 8, 7)) is None
    following = schedule.next_window(utc(2026, 3, 7))
    assert following.start == utc(2026, 3, 15, 6, 10)  # a week later, in EDT
    # The window ending just after the gap still ends after it starts.
    short = weekly(SUN, "02:30", "03:15").window_on(date(2026, 3, 8))
    assert short is not None
    assert (short.start, short.end) == (utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 15))


def test_fall_back_uses_the_first_of_a_repeated_time() -> None:
    # 2026-11-01: New York clocks go from 02:00 EDT back to 01:00 EST (06:00 UTC); 01:00-02:00
    # happens twice. The window 01:30-02:30 starts at the first 01:30 (EDT) and ends at 02:30 EST:
    # two hours of real time.
    schedule = weekly(SUN, "01:30", "02:30")
    window = schedule.window_on(date(2026, 11, 1))
    assert window is not None
    assert (window.start, window.end) == (utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 7, 30))
    assert window.duration == timedelta(hours=2)
    assert window.local_start.strftime("%H:%M %Z") == "01:30 EDT"
    # The second 01:30 (EST), given as fold=1, is inside the window; so is the first.
    second = datetime(2026, 11, 1, 1, 30, tzinfo=NY, fold=1)
    assert second.astimezone(UTC) == utc(2026, 11, 1, 6, 30)
    assert schedule.active_window(second) == window
    assert schedule.active_window(datetime(2026, 11, 1, 1, 30, tzinfo=NY)) == window
    assert schedule.active_window(utc(2026, 11, 1, 5, 30) - US) is None
    assert schedule.active_window(utc(2026, 11, 1, 7, 30)) is None


def test_fall_back_window_inside_the_repeated_hour() -> None:
    window = weekly(SUN, "01:10", "01:50").window_on(date(2026, 11, 1))
    assert window is not None
    assert (window.start, window.end) == (utc(2026, 11, 1, 5, 10), utc(2026, 11, 1, 5, 50))


@pytest.mark.parametrize(("day", "clock", "instant"), [
    (date(2026, 3, 8), time(1, 59), utc(2026, 3, 8, 6, 59)),
    (date(2026, 3, 8), time(2, 0), utc(2026, 3, 8, 7)),
    (date(2026, 3, 8), time(2, 59), utc(2026, 3, 8, 7)),
    (date(2026, 3, 8), time(3, 0), utc(2026, 3, 8, 7)),
    (date(2026, 3, 8), time(3, 1), utc(2026, 3, 8, 7, 1)),
    (date(2026, 11, 1), time(0, 59), utc(2026, 11, 1, 4, 59)),
    (date(2026, 11, 1), time(1, 0), utc(2026, 11, 1, 5)),
    (date(2026, 11, 1), time(1, 59), utc(2026, 11, 1, 5, 59)),
    (date(2026, 11, 1), time(2, 0), utc(2026, 11, 1, 7)),
])
def test_resolve_local_around_the_changes(day: date, clock: time, instant: datetime) -> None:
    assert resolve_local(day, clock, NY) == instant


def test_a_skipped_calendar_day() -> None:
    # Pacific/Apia skipped Friday 2011-12-30 when it moved across the date line: no window that
    # Friday; the next after Thursday the 29th is the Friday after.
    apia = ZoneInfo("Pacific/Apia")
    schedule = weekly(FRI, "03:00", "05:00", apia)
    assert schedule.window_on(date(2011, 12, 30)) is None
    following = schedule.next_window(datetime(2011, 12, 29, 12, tzinfo=apia))
    assert following.local_start.date() == date(2012, 1, 6)
    last_end = schedule.last_window_end_before(datetime(2012, 1, 5, 12, tzinfo=apia))
    assert last_end is not None
    assert last_end.astimezone(apia).date() == date(2011, 12, 23)


# --- windows across midnight ---------------------------------------------------------------------


def test_window_in_utc_across_midnight_belongs_to_its_start_day() -> None:
    schedule = weekly(SAT, "23:00", "01:00", UTC_ZONE)
    window = schedule.window_on(date(2026, 1, 3))  # a Saturday
    assert window is not None
    assert (window.start, window.end) == (utc(2026, 1, 3, 23), utc(2026, 1, 4, 1))
    assert schedule.active_window(utc(2026, 1, 4, 0, 30)) == window
    assert schedule.active_window(utc(2026, 1, 4, 1)) is None
    # Sunday 23:00 is not a window: only Saturday's starts one.
    assert schedule.window_on(date(2026, 1, 4)) is None
    assert schedule.active_window(utc(2026, 1, 4, 23, 30)) is None
    assert schedule.describe() == "Saturday 23:00-01:00 (ending the next day) UTC"
    assert window.describe() == ("Saturday 2026-01-03 23:00 to Sunday 2026-01-04 01:00 UTC "
                                 "(2026-01-03 23:00 to 2026-01-04 01:00 UTC)")


@pytest.mark.parametrize(("schedule", "day", "start", "end"), [
    # Crosses local midnight and sits wholly on the next UTC day.
    (weekly(FRI, "22:00", "02:00"), date(2026, 1, 9), utc(2026, 1, 10, 3), utc(2026, 1, 10, 7)),
    (weekly(FRI, "22:00", "02:00"), date(2026, 7, 10), utc(2026, 7, 11, 2), utc(2026, 7, 11, 6)),
    # Within one local day, across UTC midnight.
    (weekly(FRI, "18:00", "21:00"), date(2026, 1, 9), utc(2026, 1, 9, 23), utc(2026, 1, 10, 2)),
    # Across local midnight on the night clocks go forward (Saturday 2026-03-07 into Sunday):
    # 22:00 EST to 03:00 EDT is four hours.
    (weekly(SAT, "22:00", "03:00"), date(2026, 3, 7), utc(2026, 3, 8, 3), utc(2026, 3, 8, 7)),
    # ... and back (Saturday 2026-10-31 into Sunday): 22:00 EDT to 03:00 EST is six hours.
    (weekly(SAT, "22:00", "03:00"), date(2026, 10, 31), utc(2026, 11, 1, 2),
     utc(2026, 11, 1, 8)),
])
def test_windows_across_midnight(schedule: MaintenanceSchedule, day: date, start: datetime,
                                 end: datetime) -> None:
    window = schedule.window_on(day)
    assert window is not None
    assert (window.start, window.end) == (start, end)
    assert schedule.active_window(start) == window
    assert schedule.active_window(end - US) == window
    assert schedule.active_window(end) is None
    assert schedule.next_window(start - US) == window
    assert schedule.last_window_end_before(end) == end


# --- daily, and the other searches at their boundaries -------------------------------------------


def test_daily() -> None:
    schedule = MaintenanceSchedule(days=parse_days(["daily"]), start=time(3), end=time(5),
                                   timezone=NY)
    assert schedule.days == ALL_DAYS
    assert schedule.describe() == "daily 03:00-05:00 America/New_York"
    monday_after = utc(2026, 1, 5, 11)  # Monday 06:00 EST
    following = schedule.next_window(monday_after)
    assert following.start == utc(2026, 1, 6, 8)
    assert schedule.last_window_end_before(monday_after) == utc(2026, 1, 5, 10)
    for offset in range(7):
        assert schedule.window_on(date(2026, 1, 5) + timedelta(days=offset)) is not None


def test_next_window_at_the_boundaries() -> None:
    start, end = utc(2026, 1, 8, 8), utc(2026, 1, 8, 10)
    this_week = DEFAULT_SCHEDULE.window_on(date(2026, 1, 8))
    next_week = DEFAULT_SCHEDULE.window_on(date(2026, 1, 15))
    assert DEFAULT_SCHEDULE.next_window(start - US) == this_week
    assert DEFAULT_SCHEDULE.next_window(start) == this_week  # the current one
    assert DEFAULT_SCHEDULE.next_window(end - US) == this_week
    assert DEFAULT_SCHEDULE.next_window(end) == next_week
    assert DEFAULT_SCHEDULE.next_window(utc(2026, 1, 9)) == next_week


def test_several_days() -> None:
    schedule = MaintenanceSchedule(days=parse_days(["mon", "Thursday"]), start=time(3),
                                   end=time(5), timezone=NY)
    assert schedule.describe() == "Monday, Thursday 03:00-05:00 America/New_York"
    assert schedule.next_window(utc(2026, 1, 5, 10)).start == utc(2026, 1, 8, 8)  # Mon -> Thu
    assert schedule.next_window(utc(2026, 1, 8, 10)).start == utc(2026, 1, 12, 8)  # Thu -> Mon


def test_last_window_end_before() -> None:
    end = utc(2026, 1, 8, 10)
    assert DEFAULT_SCHEDULE.last_window_end_before(end) == end
    assert DEFAULT_SCHEDULE.last_window_end_before(end + timedelta(days=6)) == end
    # While a window is on, the last one that ended is a week earlier.
    assert DEFAULT_SCHEDULE.last_window_end_before(end - US) == utc(2026, 1, 1, 10)


@pytest.mark.parametrize(("earlier", "later", "ended"), [
    (utc(2026, 1, 8, 7), utc(2026, 1, 8, 11), True),       # Logon before, Logon after
    (utc(2026, 1, 8, 9), utc(2026, 1, 8, 11), True),       # Logon during, Logon after
    (utc(2026, 1, 8, 10) - US, utc(2026, 1, 8, 10), True),  # the window ends at `later`
    (utc(2026, 1, 8, 10), utc(2026, 1, 8, 11), False),     # a Logon at the end is after it
    (utc(2026, 1, 8, 7), utc(2026, 1, 8, 9), False),       # still in the window
    (utc(2026, 1, 8, 8), utc(2026, 1, 8, 10) - US, False),  # the whole window, not yet over
    (utc(2026, 1, 8, 11), utc(2026, 1, 15, 7), False),     # a week with no window in between
    (utc(2026, 1, 8, 11), utc(2026, 1, 15, 11), True),
    (utc(2025, 12, 1), utc(2026, 1, 9), True),             # weeks apart
    (utc(2026, 1, 8, 11), utc(2026, 1, 8, 7), False),      # backwards
    (utc(2026, 1, 8, 11), utc(2026, 1, 8, 11), False),     # empty
])
def test_window_ended_between(earlier: datetime, later: datetime, ended: bool) -> None:
    assert DEFAULT_SCHEDULE.window_ended_between(earlier, later) is ended


def test_reset_after_is_carried() -> None:
    assert weekly(THU, "03:00", "05:00", reset_after=False).reset_after is False
    assert weekly(THU, "03:00", "05:00").reset_after is True


# --- parsing and validation ----------------------------------------------------------------------


@pytest.mark.parametrize(("names", "days"), [
    (["thu"], {THU}),
    (["THU"], {THU}),
    (["Thursday"], {THU}),
    (["mon", "tue", "wed", "thu", "fri", "sat", "sun"], set(range(7))),
    (["monday", "TUESDAY", "Wednesday", "thursday", "friday", "saturday", "sunday"],
     set(range(7))),
    (["daily"], set(range(7))),
    (["Daily", "thu"], set(range(7))),
    (["sat", "sun", "sat"], {SAT, SUN}),
])
def test_parse_days(names: list[str], days: set[int]) -> None:
    assert parse_days(names) == frozenset(days)


@pytest.mark.parametrize("names", [[], ["thur"], ["th"], ["weekly"], ["thu", "every day"], [""],
                                   ["mo"], ["1"]])
def test_parse_days_rejects(names: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse_days(names)


def test_parse_day_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="mon, tue, wed, thu, fri, sat, sun"):
        parse_day("thursdy")


@pytest.mark.parametrize(("text", "clock"), [
    ("03:00", time(3)), ("3:00", time(3)), ("00:00", time(0)), ("23:59", time(23, 59)),
    ("12:30", time(12, 30)),
])
def test_parse_time(text: str, clock: time) -> None:
    assert parse_time(text) == clock


@pytest.mark.parametrize("text", ["24:00", "12:60", "3", "03:00:00", "3am", "", "03.00",
                                  "-1:00", "003:00", "03:0", "\u0663:00"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="HH:MM"):
        parse_time(text)


@pytest.mark.parametrize(("days", "start", "end", "message"), [
    (frozenset(), time(3), time(5), "at least one day"),
    (frozenset({7}), time(3), time(5), "0 \\(Monday\\) to 6"),
    (frozenset({-1}), time(3), time(5), "0 \\(Monday\\) to 6"),
    (frozenset({THU}), time(3), time(3), "needs a length"),
    (frozenset({THU}), time(3, tzinfo=UTC), time(5), "local times"),
])
def test_schedule_validation(days: frozenset[int], start: time, end: time,
                             message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MaintenanceSchedule(days=days, start=start, end=end, timezone=NY)


def test_days_accept_any_iterable() -> None:
    plain_set: Any = {MON, FRI}  # as a caller may pass, although frozenset is declared
    schedule = MaintenanceSchedule(days=plain_set, start=time(3), end=time(5), timezone=NY)
    assert schedule.days == frozenset({MON, FRI})
    assert isinstance(schedule.days, frozenset)
    assert hash(schedule) == hash(MaintenanceSchedule(frozenset({FRI, MON}), time(3), time(5), NY))


# --- properties against a brute-force scan -------------------------------------------------------

ZONES = ["America/New_York", "UTC", "Europe/London", "Europe/Dublin", "Australia/Lord_Howe",
         "Pacific/Apia", "America/St_Johns", "Asia/Kolkata", "Pacific/Chatham",
         "America/Santiago"]
"""Zones with one-hour, half-hour and negative DST, odd offsets, and a skipped calendar day."""


def all_windows(schedule: MaintenanceSchedule, around: datetime, back: int,
                ahead: int) -> list[Window]:
    """Every window starting on local days ``back`` before to ``ahead`` after ``around``'s."""
    today = around.astimezone(schedule.timezone).date()
    windows = [schedule.window_on(today + timedelta(days=offset))
               for offset in range(-back, ahead + 1)]
    return [window for window in windows if window is not None]


@st.composite
def schedules(draw: st.DrawFn) -> MaintenanceSchedule:
    days = draw(st.frozensets(st.integers(0, 6), min_size=1))
    minute = st.integers(0, 24 * 60 - 1).map(lambda m: time(m // 60, m % 60))
    start = draw(minute)
    end = draw(minute.filter(lambda clock: clock != start))
    return MaintenanceSchedule(days=days, start=start, end=end,
                               timezone=ZoneInfo(draw(st.sampled_from(ZONES))),
                               reset_after=draw(st.booleans()))


INSTANTS = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1),
                        timezones=st.just(UTC))


@st.composite
def instants_near_windows(draw: st.DrawFn, schedule: MaintenanceSchedule) -> datetime:
    """An instant; often exactly on, or a hair beside, a window's start or end."""
    moment = draw(INSTANTS)
    windows = all_windows(schedule, moment, 8, 8)
    snap = draw(st.booleans())
    if windows and snap:
        window = draw(st.sampled_from(windows))
        edge = draw(st.sampled_from([window.start, window.end]))
        moment = edge + draw(st.sampled_from([-US, timedelta(0), US, timedelta(seconds=-1)]))
    return moment


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_active_window_matches_brute_force(data: st.DataObject) -> None:
    schedule = data.draw(schedules())
    now = data.draw(instants_near_windows(schedule))
    containing = [w for w in all_windows(schedule, now, 3, 3) if w.start <= now < w.end]
    assert len(containing) <= 1  # windows never overlap
    assert schedule.active_window(now) == (containing[0] if containing else None)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_next_window_is_current_or_first_after(data: st.DataObject) -> None:
    schedule = data.draw(schedules())
    now = data.draw(instants_near_windows(schedule))
    following = schedule.next_window(now)
    assert following.start >= now or following.start <= now < following.end
    later = [w for w in all_windows(schedule, now, 3, 20) if w.end > now]
    assert following == later[0]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_ended_between_matches_brute_force(data: st.DataObject) -> None:
    schedule = data.draw(schedules())
    later = data.draw(instants_near_windows(schedule))
    earlier = later - data.draw(st.one_of(
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=9)),
        st.sampled_from([timedelta(0), US, timedelta(hours=2)])))
    windows = all_windows(schedule, later, 20, 1)
    ended = [w.end for w in windows if w.end <= later]
    assert schedule.last_window_end_before(later) == max(ended)
    assert schedule.window_ended_between(earlier, later) is any(
        earlier < end <= later for end in ended)


@settings(max_examples=300, deadline=None)
@given(day=st.dates(min_value=date(1990, 1, 1), max_value=date(2060, 1, 1)),
       minute=st.integers(0, 24 * 60 - 1), zone=st.sampled_from(ZONES))
def test_resolve_local_is_the_wall_time_or_the_end_of_a_gap(day: date, minute: int,
                                                            zone: str) -> None:
    tz = ZoneInfo(zone)
    clock = time(minute // 60, minute % 60)
    wall = datetime.combine(day, clock)
    instant = resolve_local(day, clock, tz)
    assert instant.tzinfo is UTC
    shown = instant.astimezone(tz).replace(tzinfo=None)
    exists = datetime.combine(day, clock, tzinfo=tz).astimezone(UTC).astimezone(tz) \
        .replace(tzinfo=None) == wall
    if exists:
        assert shown == wall
        # The first occurrence: the other reading of a repeated time is not earlier.
        assert datetime.combine(day, clock, tzinfo=tz).replace(fold=1).astimezone(UTC) \
            >= instant
    else:
        # The first instant after the skipped stretch: it shows a later time, the second before
        # it shows an earlier one.
        assert shown > wall
        before = (instant - timedelta(seconds=1)).astimezone(tz).replace(tzinfo=None)
        assert before < wall
