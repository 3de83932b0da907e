"""Kalshi's maintenance windows as pure calendar arithmetic: which window is on, which is next,
and whether one ended between two instants.

Theory of operation
-------------------
Kalshi pauses trading every Thursday 03:00-05:00 America/New_York and may drop FIX sessions
then; the customer's older connectivity page called the window "daily". Both readings must keep
working, so the window is data: weekdays, local start and end times and an IANA zone, with
Thursday 03:00-05:00 New York as the default. Around a window the proxy labels disconnects as
expected and, by default, forces ResetSeqNumFlag 141=Y on the first Logon after a window on every
endpoint, because some of Kalshi's pages say sequence numbers restart after maintenance.

Windows are defined in local wall-clock time because that is how Kalshi states them: "03:00 ET"
is 08:00 UTC in winter and 07:00 UTC in summer. The alternative, a fixed UTC window, was
rejected: it is wrong for half the year. Local times are turned into instants with ``zoneinfo``
one local day at a time, with two rules for the days a zone changes its offset:

* a wall-clock time that does not exist (skipped when clocks spring forward, say 02:30 on
  2026-03-08 in New York) is shifted forward to the first instant after the gap (03:00 EDT);
* a wall-clock time that happens twice (when clocks fall back, say 01:30 on 2026-11-01 in New
  York) means its first occurrence (``fold=0``, 01:30 EDT).

Both rules keep local time -> instant non-decreasing, so a window never ends before it starts; a
window whose start and end both fall into the same skipped stretch is empty and does not happen
that day. Shifting a skipped time by the length of the gap (what ``fold=0`` alone would do, giving
03:30 EDT for 02:30) was rejected because it can move a start past the window's end.

A window belongs to the local day it starts; ``start > end`` means it crosses local midnight and
ends the next day. Start is inclusive and end exclusive. No function here reads the clock: the
caller passes aware datetimes, and every answer is an aware UTC datetime, so comparing it with
any other aware datetime compares instants (Python compares two datetimes that share a tzinfo
by wall clock, ignoring ``fold``, which would be wrong across a fall-back hour). Every search is
a bounded scan of local days, normally at most eight and never more than :data:`SCAN_DAYS`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from fixproxy.errors import ConfigError

DAY_NAMES: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
                    "Sunday")
"""Weekday names by ``date.weekday()`` number (0 = Monday); fixed, not the process locale's."""
ALL_DAYS: Final = frozenset(range(7))
DAILY: Final = "daily"
"""The day name meaning all seven days (the customer's connectivity page says "daily")."""

SCAN_DAYS: Final = 16
"""Most local days one search looks at. A weekly window recurs within eight days (a day back
for a window crossing midnight, today, seven ahead, and searches stop at the first hit);
doubling that covers a matching day a zone skipped entirely (Pacific/Apia had no 2011-12-30),
after which the next one is a week later."""
_MAX_BISECT_STEPS: Final = 64
"""Halvings of a skipped stretch when locating its end to the second: 2**64 s exceeds any
offset change, so the search always finishes well within this."""

_DAY_LOOKUP: Final[dict[str, frozenset[int]]] = {
    DAILY: ALL_DAYS,
    **{name.lower(): frozenset({number}) for number, name in enumerate(DAY_NAMES)},
    **{name[:3].lower(): frozenset({number}) for number, name in enumerate(DAY_NAMES)},
}
_HH_MM: Final = re.compile(r"([0-9]{1,2}):([0-9]{2})")


def parse_day(name: str) -> frozenset[int]:
    """The weekday numbers one day name stands for.

    Args:
        name: ``mon`` .. ``sun`` or ``monday`` .. ``sunday`` in any case, or ``daily`` for all
            seven days.
    Raises:
        ConfigError: not a day name (without a key: the caller knows where the name came from).
    """
    days = _DAY_LOOKUP.get(name.strip().lower())
    if days is None:
        raise ConfigError(f"{name!r} is not a day; expected one of mon, tue, wed, thu, fri, "
                          f"sat, sun (or the full name), or \"daily\"")
    return days


def parse_days(names: Iterable[str]) -> frozenset[int]:
    """Weekday numbers (0 = Monday .. 6 = Sunday) for a list of day names; see :func:`parse_day`.

    Raises:
        ConfigError: an unknown name, or no name at all.
    """
    days: set[int] = set()
    for name in names:
        days |= parse_day(name)
    if not days:
        raise ConfigError("no maintenance day given; name at least one day, or \"daily\"")
    return frozenset(days)


def parse_time(text: str) -> time:
    """A local time of day written ``HH:MM`` (24-hour clock, ``00:00`` to ``23:59``).

    Raises:
        ConfigError: anything else.
    """
    match = _HH_MM.fullmatch(text.strip()) if text.isascii() else None
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ConfigError(f"{text!r} is not a time of day; expected \"HH:MM\" on a 24-hour "
                          f"clock, for example \"03:00\"")
    return time(int(match[1]), int(match[2]))


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        # A caller bug, not an operational error: a naive time has no place in the calendar.
        raise ValueError(f"an aware datetime is required, got the naive {moment!r}")
    return moment.astimezone(UTC)


def _clock(value: time) -> str:
    return value.strftime("%H:%M" if not value.second and not value.microsecond else "%H:%M:%S")


def _zone_name(zone: ZoneInfo) -> str:
    return zone.key or str(zone)


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None, fold=0)


def resolve_local(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """The instant (aware, UTC) of the wall-clock time ``clock`` on local date ``day``.

    A time that happens twice on that day (clocks fall back) means the first occurrence; a time
    that does not exist (clocks spring forward) means the first instant after the skipped
    stretch, which local clocks show as the end of the gap.
    """
    naive = datetime.combine(day, clock)
    first = naive.replace(tzinfo=zone)  # fold=0: the earlier of two, if ambiguous
    instant = first.astimezone(UTC)
    if _wall(instant, zone) == naive:
        return instant
    # ``naive`` was skipped. fold=0 reads it with the offset before the change (an instant after
    # the gap), fold=1 with the offset after it (an instant before); the change lies between.
    low = math.floor(naive.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    high = math.ceil(instant.timestamp())
    if low > high:  # not expected from zoneinfo; order the bounds so the search stays valid
        low, high = high, low
    for _ in range(_MAX_BISECT_STEPS):
        if high - low <= 1:
            break
        middle = (low + high) // 2
        if _wall(datetime.fromtimestamp(middle, UTC), zone) >= naive:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """One occurrence of a maintenance window: ``start <= t < end``, both aware UTC datetimes."""

    start: datetime
    end: datetime
    timezone: ZoneInfo
    """The zone the schedule is written in, for describing the window to an operator."""

    @property
    def local_start(self) -> datetime:
        """``start`` in the schedule's zone."""
        return self.start.astimezone(self.timezone)

    @property
    def local_end(self) -> datetime:
        """``end`` in the schedule's zone."""
        return self.end.astimezone(self.timezone)

    @property
    def duration(self) -> timedelta:
        """Elapsed time from start to end (differs from the wall-clock span across a change)."""
        return self.end - self.start

    def contains(self, now: datetime) -> bool:
        """True if ``now`` (aware) is inside the window: start inclusive, end exclusive."""
        return self.start <= _as_utc(now) < self.end

    def describe_end(self) -> str:
        """When the window ends, for a log line: ``05:00 America/New_York (09:00 UTC)``."""
        return f"{self.local_end:%H:%M} {_zone_name(self.timezone)} ({self.end:%H:%M} UTC)"

    def describe(self) -> str:
        """The whole window, for a log line, e.g. ``Thursday 2026-01-08 03:00-05:00
        America/New_York (08:00-10:00 UTC)``; a window ending on another local day names it."""
        start, end = self.local_start, self.local_end
        head = f"{DAY_NAMES[start.weekday()]} {start:%Y-%m-%d %H:%M}"
        if end.date() == start.date():
            local = f"{head}-{end:%H:%M}"
        else:
            local = f"{head} to {DAY_NAMES[end.weekday()]} {end:%Y-%m-%d %H:%M}"
        if self.end.date() == self.start.date():
            utc = f"{self.start:%H:%M}-{self.end:%H:%M}"
        else:
            utc = f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M}"
        return f"{local} {_zone_name(self.timezone)} ({utc} UTC)"


@dataclass(frozen=True, slots=True)
class MaintenanceSchedule:
    """Weekly maintenance windows in local time.

    Windows follow the zone's offset changes (see the module docstring for skipped and repeated
    local times). Construction checks the values and raises ConfigError without a key; the
    configuration loader checks them first, naming its keys.
    """

    days: frozenset[int]
    """Weekdays a window starts on, 0 = Monday .. 6 = Sunday; any iterable is accepted."""
    start: time
    """Local start, inclusive; naive (the zone is ``timezone``)."""
    end: time
    """Local end, exclusive; earlier than ``start`` means the next day."""
    timezone: ZoneInfo
    reset_after: bool = True
    """The first Logon after a window forces ResetSeqNumFlag 141=Y on every endpoint."""

    def __post_init__(self) -> None:
        days = frozenset(self.days)
        if not days:
            raise ConfigError("a maintenance schedule needs at least one day")
        if not days <= ALL_DAYS:
            raise ConfigError(f"weekdays are numbered 0 (Monday) to 6 (Sunday), got "
                              f"{sorted(days)}")
        object.__setattr__(self, "days", days)
        for clock in (self.start, self.end):
            if clock.tzinfo is not None:
                raise ConfigError(f"maintenance times are local times in the schedule's zone; "
                                  f"got {clock!r} with its own tzinfo")
        if self.start == self.end:
            raise ConfigError(f"the maintenance window starts and ends at {_clock(self.start)}; "
                              f"a window needs a length")

    def describe(self) -> str:
        """The schedule for a log line, e.g. ``Thursday 03:00-05:00 America/New_York``."""
        if self.days == ALL_DAYS:
            days = "daily"
        else:
            days = ", ".join(DAY_NAMES[day] for day in sorted(self.days))
        crosses = " (ending the next day)" if self.start > self.end else ""
        return (f"{days} {_clock(self.start)}-{_clock(self.end)}{crosses} "
                f"{_zone_name(self.timezone)}")

    def window_on(self, day: date) -> Window | None:
        """The window starting on local date ``day``, or None (not a maintenance day, or the
        whole window fell into local time the zone skipped)."""
        if day.weekday() not in self.days:
            return None
        start = resolve_local(day, self.start, self.timezone)
        end_day = day + timedelta(days=1) if self.start > self.end else day
        end = resolve_local(end_day, self.end, self.timezone)
        if end <= start:
            return None
        return Window(start=start, end=end, timezone=self.timezone)

    def _windows(self, now: datetime, first: int, last: int) -> Iterator[Window]:
        """Windows starting on local days ``first`` .. ``last`` (inclusive, step +1 or -1)
        relative to ``now``'s local date."""
        today = now.astimezone(self.timezone).date()
        step = 1 if last >= first else -1
        for offset in range(first, last + step, step):
            window = self.window_on(today + timedelta(days=offset))
            if window is not None:
                yield window

    def active_window(self, now: datetime) -> Window | None:
        """The window containing ``now`` (aware), or None."""
        moment = _as_utc(now)
        # A window is shorter than a day of wall clock, so only one starting yesterday (crossing
        # midnight) or today can contain now.
        for window in self._windows(moment, -1, 0):
            if window.start <= moment < window.end:
                return window
        return None

    def next_window(self, now: datetime) -> Window:
        """The window containing ``now``, else the first one starting after it.

        Raises:
            ConfigError: no window in :data:`SCAN_DAYS` days, which a real zone cannot cause.
        """
        moment = _as_utc(now)
        active = self.active_window(moment)
        if active is not None:
            return active
        for window in self._windows(moment, 0, SCAN_DAYS - 2):
            if window.start > moment:
                return window
        raise ConfigError(f"no maintenance window in the {SCAN_DAYS} days after {moment} for "
                          f"{self.describe()}")

    def last_window_end_before(self, now: datetime) -> datetime | None:
        """The end (aware UTC) of the latest window that is over at ``now``: ``end <= now``.

        None only if no window ended in the last :data:`SCAN_DAYS` local days, which a schedule
        with at least one day cannot produce in a real zone.
        """
        moment = _as_utc(now)
        # Windows never overlap and are scanned newest first, so the first that is over has the
        # latest end.
        for window in self._windows(moment, 0, -(SCAN_DAYS - 1)):
            if window.end <= moment:
                return window.end
        return None

    def window_ended_between(self, earlier: datetime, later: datetime) -> bool:
        """True if a window ended in ``(earlier, later]``.

        The caller keeps the time of each key's last Logon and asks this at the next one: True
        means the coming Logon is the first after a window (see ``reset_after``). A Logon at the
        very instant a window ends is already after it. False when ``later <= earlier``.
        """
        since, until = _as_utc(earlier), _as_utc(later)
        if until <= since:
            return False
        end = self.last_window_end_before(until)
        return end is not None and end > since


DEFAULT_SCHEDULE: Final = MaintenanceSchedule(
    days=frozenset({3}), start=time(3, 0), end=time(5, 0),
    timezone=ZoneInfo("America/New_York"))
"""Kalshi's documented window: every Thursday 03:00-05:00 America/New_York (ET, DST included)."""
