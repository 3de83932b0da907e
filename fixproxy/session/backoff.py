"""How long to wait before the next Logon for an API key after one failed: exponential backoff
with jitter, as a pure object.

Theory of operation
-------------------
Kalshi rate-limits Logon (35=A) since its 2026-04-04 pages, and answers a Logon for a key whose
previous connection it still believes alive with Logout ``58=already exists`` until its
dead-peer timeout passes (up to 60 s). A legacy engine that reconnects in a tight loop would
spend the key's tokens and keep meeting that refusal. So after a Logon attempt fails for a key
the proxy holds further attempts for that key until :meth:`LogonBackoff.retry_at`: whatever the
engine does meanwhile, Kalshi sees at most one Logon per backoff step. The wait doubles from
``floor`` on each consecutive failure up to ``ceiling`` and goes back to nothing on success.

Every wait is jittered, so sessions dropped together (the Thursday maintenance window drops all
of them) do not return in lock-step. Two forms, both drawn from an injected ``random.Random``
so tests are deterministic:

* ``full``: uniform between ``floor / 2`` and the exponential step ``min(ceiling, floor * 2**(n
  - 1))`` for the n-th consecutive failure. The lower bound ``floor / 2`` (rather than the
  textbook 0) keeps even the first retry from being immediate.
* ``decorrelated``: the ceiling of each draw is twice the previous wait (``floor / 2`` before the
  first), capped at ``ceiling``, and the draw is uniform in the upper half of that, so successive
  waits wander independently per key yet still never exceed the exponential step.

Either way every wait lies in ``[floor / 2, ceiling]``. A fixed delay was rejected (too slow for
a blip, a storm after maintenance), and so was exponential backoff without jitter (lock-step).

Time is float seconds on one clock the caller chooses and keeps to (``trio.current_time()`` in
the server): nothing here reads a clock. State is kept per key, and keys are the API keys of the
configured sessions only (never anything an engine sends before its key is checked), so the
table holds a handful of entries; :data:`MAX_KEYS` caps it anyway, and success removes a key.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final, Literal

from fixproxy.errors import ConfigError

Jitter = Literal["full", "decorrelated"]
JITTERS: Final = ("full", "decorrelated")
DEFAULT_FLOOR: Final = 1.0
"""Seconds: the first wait is between half this and this."""
DEFAULT_CEILING: Final = 60.0
"""Seconds: Kalshi's dead-peer timeout is "up to 60 seconds", so a wait this long outlasts a
ghost session that makes the gateway answer ``already exists``."""
MAX_CEILING: Final = 3600.0
"""Longest wait accepted: an hour without trying means the operator should look, not wait."""
MULTIPLIER: Final = 2.0
MAX_KEYS: Final = 1024
"""Most keys tracked at once. The configured sessions are far fewer (one per API key); reaching
this would be a bug, and the key closest to being allowed again is forgotten to stay bounded."""
_MAX_EXPONENT: Final = 64
"""Doublings after which the step is surely at the ceiling; keeps ``2**n`` a finite float."""


@dataclass(slots=True)
class _KeyState:
    failures: int
    delay: float
    retry_at: float


class LogonBackoff:
    """Per-API-key Logon backoff: when the next attempt for each key is allowed."""

    def __init__(self, floor: float = DEFAULT_FLOOR, ceiling: float = DEFAULT_CEILING, *,
                 jitter: Jitter = "full", rng: random.Random | None = None,
                 max_keys: int = MAX_KEYS) -> None:
        """Args:
            floor: seconds; the first wait lies in ``[floor / 2, floor]``. More than 0.
            ceiling: seconds; no wait is longer. At least ``floor``, at most ``MAX_CEILING``.
            jitter: ``full`` or ``decorrelated`` (see the module docstring).
            rng: the source of jitter; a fresh ``random.Random`` when None. Tests pass a seeded
                one.
            max_keys: most keys tracked at once.
        Raises:
            ConfigError: impossible floor or ceiling.
            ValueError: an unknown jitter or a max_keys below 1 (caller bugs).
        """
        # Written so that NaN fails too: every comparison with NaN is false.
        if not 0 < floor <= MAX_CEILING:
            raise ConfigError(f"backoff floor {floor} is out of range; expected more than 0 and "
                              f"at most {MAX_CEILING:g} seconds")
        if not floor <= ceiling <= MAX_CEILING:
            raise ConfigError(f"backoff ceiling {ceiling} is out of range; expected at least the "
                              f"floor ({floor:g}) and at most {MAX_CEILING:g} seconds")
        if jitter not in JITTERS:
            raise ValueError(f"unknown jitter {jitter!r}; expected one of {JITTERS}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.floor: Final = float(floor)
        self.ceiling: Final = float(ceiling)
        self.jitter: Final[Jitter] = jitter
        self.max_keys: Final = max_keys
        # Jitter only spreads reconnects over time; nothing secret depends on it.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._keys: dict[str, _KeyState] = {}

    def step(self, failures: int) -> float:
        """The unjittered wait after ``failures`` consecutive failures: ``floor * 2**(n - 1)``
        capped at ``ceiling`` (0 for no failure). Every jittered wait is at most this."""
        if failures < 1:
            return 0.0
        return min(self.ceiling, self.floor * MULTIPLIER ** min(failures - 1, _MAX_EXPONENT))

    def _draw(self, state: _KeyState | None, failures: int) -> float:
        low = self.floor / 2
        if self.jitter == "full":
            high = self.step(failures)
        else:
            previous = state.delay if state is not None else low
            high = min(self.ceiling, MULTIPLIER * previous)
            low = max(low, high / 2)
        # uniform() may round onto (or a hair past) an end; clamp so the bounds are exact.
        return min(high, max(low, self._rng.uniform(low, high)))

    def record_failure(self, key: str, now: float) -> float:
        """Record a failed Logon attempt for ``key`` at ``now``.

        Returns:
            When the next attempt is allowed (seconds on the caller's clock).
        Raises:
            ValueError: ``now`` is not a finite number (a caller bug).
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite time in seconds, got {now!r}")
        state = self._keys.get(key)
        if state is None and len(self._keys) >= self.max_keys:
            # Bounded memory over perfect memory: forget the key closest to being allowed
            # anyway; its next failure starts again from the floor.
            oldest = min(self._keys, key=lambda name: self._keys[name].retry_at)
            del self._keys[oldest]
        failures = (state.failures if state is not None else 0) + 1
        delay = self._draw(state, failures)
        retry_at = now + delay
        self._keys[key] = _KeyState(failures=failures, delay=delay, retry_at=retry_at)
        return retry_at

    def record_success(self, key: str) -> None:
        """A Logon for ``key`` succeeded: the next failure starts again from the floor."""
        self._keys.pop(key, None)

    def retry_at(self, key: str) -> float | None:
        """When the next attempt for ``key`` is allowed; None if it has no failure on record."""
        state = self._keys.get(key)
        return None if state is None else state.retry_at

    def allowed(self, key: str, now: float) -> bool:
        """True if a Logon for ``key`` may be attempted at ``now``: no failure on record, or
        ``now`` is at or after :meth:`retry_at`."""
        state = self._keys.get(key)
        return state is None or now >= state.retry_at

    def failures(self, key: str) -> int:
        """Consecutive failures on record for ``key`` (0 after a success)."""
        state = self._keys.get(key)
        return 0 if state is None else state.failures

    def __len__(self) -> int:
        """Keys with a failure on record."""
        return len(self._keys)
