"""Logon backoff: doubling from the floor to the ceiling within the jitter bounds, reset on
success, allowed() around retry_at, bounded memory, and the bounds as a property."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixproxy.errors import ConfigError
from fixproxy.session.backoff import (
    DEFAULT_CEILING,
    DEFAULT_FLOOR,
    JITTERS,
    MAX_CEILING,
    MAX_KEYS,
    Jitter,
    LogonBackoff,
)

KEY = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"


class Extreme(random.Random):
    """Always draws the top (``high=True``) or the bottom of every range."""

    def __init__(self, *, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def random(self) -> float:
        return math.nextafter(1.0, 0.0) if self.high else 0.0


def delays(backoff: LogonBackoff, count: int, key: str = KEY, start: float = 1000.0) \
        -> list[float]:
    """Record ``count`` failures, each at the moment the previous wait ends; return the waits."""
    now, found = start, []
    for _ in range(count):
        retry_at = backoff.record_failure(key, now)
        found.append(retry_at - now)
        now = retry_at
    return found


def test_defaults() -> None:
    backoff = LogonBackoff()
    assert (backoff.floor, backoff.ceiling, backoff.jitter) == (1.0, 60.0, "full")
    assert (DEFAULT_FLOOR, DEFAULT_CEILING) == (1.0, 60.0)
    assert [backoff.step(n) for n in range(10)] == [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]


@pytest.mark.parametrize("jitter", JITTERS)
def test_waits_double_from_the_floor_to_the_ceiling(jitter: Jitter) -> None:
    # Drawing the top of every range shows the unjittered schedule itself.
    top = LogonBackoff(jitter=jitter, rng=Extreme(high=True))
    assert [round(d, 9) for d in delays(top, 9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    # Drawing the bottom never goes below half the floor.
    bottom = LogonBackoff(jitter=jitter, rng=Extreme(high=False))
    assert delays(bottom, 9) == [0.5] * 9


@pytest.mark.parametrize("jitter", JITTERS)
@pytest.mark.parametrize("seed", range(5))
def test_seeded_waits_stay_within_the_step(jitter: Jitter, seed: int) -> None:
    backoff = LogonBackoff(0.25, 30.0, jitter=jitter, rng=random.Random(seed))
    found = delays(backoff, 20)
    for failures, delay in enumerate(found, start=1):
        assert 0.125 <= delay <= backoff.step(failures)
    # Jitter is real: the same seed repeats the waits, another seed does not.
    assert delays(LogonBackoff(0.25, 30.0, jitter=jitter, rng=random.Random(seed)), 20) == found
    assert delays(LogonBackoff(0.25, 30.0, jitter=jitter, rng=random.Random(seed + 100)),
                  20) != found
    assert backoff.failures(KEY) == 20


def test_waits_grow() -> None:
    # Not a bound but the point of backoff: over many runs, later waits are longer on average.
    for jitter in JITTERS:
        totals = [0.0] * 8
        for seed in range(200):
            for index, delay in enumerate(
                    delays(LogonBackoff(jitter=jitter, rng=random.Random(seed)), 8)):
                totals[index] += delay
        # Up to the first wait that can reach the ceiling; beyond it the mean stays put.
        assert totals[:7] == sorted(totals[:7]), jitter
        assert totals[6] > 8 * totals[0], jitter


def test_allowed_before_at_and_after_retry_at() -> None:
    backoff = LogonBackoff(rng=random.Random(7))
    assert backoff.allowed(KEY, 0.0)
    assert backoff.retry_at(KEY) is None
    retry_at = backoff.record_failure(KEY, 100.0)
    assert 100.5 <= retry_at <= 101.0
    assert backoff.retry_at(KEY) == retry_at
    assert not backoff.allowed(KEY, 100.0)
    assert not backoff.allowed(KEY, math.nextafter(retry_at, 0.0))
    assert backoff.allowed(KEY, retry_at)
    assert backoff.allowed(KEY, retry_at + 3600)
    # Other keys are not held.
    assert backoff.allowed(OTHER, 100.0)
    assert backoff.retry_at(OTHER) is None


def test_success_resets() -> None:
    backoff = LogonBackoff(rng=Extreme(high=True))
    delays(backoff, 6)
    assert backoff.failures(KEY) == 6
    backoff.record_success(KEY)
    assert backoff.failures(KEY) == 0
    assert backoff.retry_at(KEY) is None
    assert backoff.allowed(KEY, 0.0)
    assert len(backoff) == 0
    assert delays(backoff, 2) == pytest.approx([1.0, 2.0])  # from the floor again
    backoff.record_success(OTHER)  # a key with nothing on record is fine
    assert len(backoff) == 1


def test_keys_are_independent() -> None:
    backoff = LogonBackoff(rng=Extreme(high=True))
    delays(backoff, 5, KEY)
    assert delays(backoff, 1, OTHER) == pytest.approx([1.0])
    assert backoff.failures(KEY) == 5
    assert backoff.failures(OTHER) == 1
    assert len(backoff) == 2


def test_memory_is_bounded() -> None:
    backoff = LogonBackoff(rng=Extreme(high=True), max_keys=3)
    backoff.record_failure("a", 10.0)  # allowed again at 11
    backoff.record_failure("b", 5.0)   # at 6: the closest to being allowed
    backoff.record_failure("c", 20.0)  # at 21
    backoff.record_failure("d", 30.0)
    assert len(backoff) == 3
    assert backoff.retry_at("b") is None
    assert [backoff.retry_at(key) for key in "acd"] == pytest.approx([11.0, 21.0, 31.0])
    # A key already on record does not evict anyone.
    backoff.record_failure("a", 40.0)
    assert len(backoff) == 3
    assert backoff.failures("a") == 2
    assert MAX_KEYS >= 100


def test_many_failures_stay_finite() -> None:
    backoff = LogonBackoff(rng=Extreme(high=True))
    found = delays(backoff, 2000)
    assert found[-1] == pytest.approx(60.0)
    assert backoff.failures(KEY) == 2000
    assert backoff.step(10**9) == 60.0


@pytest.mark.parametrize(("floor", "ceiling", "message"), [
    (0.0, 60.0, "floor 0.0 is out of range"),
    (-1.0, 60.0, "floor -1.0 is out of range"),
    (math.nan, 60.0, "floor nan"),
    (math.inf, math.inf, "floor inf"),
    (10.0, 5.0, "ceiling 5.0 is out of range; expected at least the floor"),
    (1.0, MAX_CEILING + 1, "at most 3600"),
    (1.0, math.nan, "ceiling nan"),
])
def test_impossible_settings(floor: float, ceiling: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LogonBackoff(floor, ceiling)


def test_caller_bugs() -> None:
    with pytest.raises(ValueError, match="jitter"):
        LogonBackoff(jitter="equal")  # type: ignore[arg-type]  # the wrong value is the point
    with pytest.raises(ValueError, match="max_keys"):
        LogonBackoff(max_keys=0)
    backoff = LogonBackoff()
    for now in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            backoff.record_failure(KEY, now)
    assert len(backoff) == 0


def test_floor_equal_to_ceiling() -> None:
    backoff = LogonBackoff(5.0, 5.0, rng=random.Random(1))
    for failures, delay in enumerate(delays(backoff, 10), start=1):
        assert 2.5 <= delay <= 5.0
        assert backoff.step(failures) == 5.0


@settings(max_examples=300, deadline=None)
@given(floor=st.floats(min_value=1e-3, max_value=MAX_CEILING),
       spread=st.floats(min_value=1.0, max_value=1e6),
       jitter=st.sampled_from(JITTERS), seed=st.integers(0, 2**32),
       failures=st.integers(1, 80), now=st.floats(min_value=0, max_value=1e9),
       successes=st.sets(st.integers(1, 80), max_size=5))
def test_waits_always_within_half_floor_and_ceiling(
        floor: float, spread: float, jitter: Jitter, seed: int, failures: int, now: float,
        successes: set[int]) -> None:
    ceiling = min(MAX_CEILING, floor * spread)
    backoff = LogonBackoff(floor, ceiling, jitter=jitter, rng=random.Random(seed))
    streak = 0
    for attempt in range(1, failures + 1):
        if attempt in successes:
            backoff.record_success(KEY)
            streak = 0
        streak += 1
        retry_at = backoff.record_failure(KEY, now)
        delay = retry_at - now
        # Float addition may round by an ulp of `now`; the wait itself is within bounds.
        slack = 4 * math.ulp(retry_at)
        assert floor / 2 - slack <= delay <= ceiling + slack
        assert delay <= backoff.step(streak) + slack
        assert backoff.failures(KEY) == streak
        assert not backoff.allowed(KEY, now) or retry_at == now
        assert backoff.allowed(KEY, retry_at)
        now = retry_at
