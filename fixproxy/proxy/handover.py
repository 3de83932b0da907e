"""What admission (trio) and a session relay (off trio, in threads) hand each other.

The two planes meet only here: the commands trio sends the relay, the rare events the relay
reports back through a :class:`ControlPlane`, and the relay's result when it ends (its thread's
return value, or the data plane's report).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from fixproxy.session.recovery import ExecId, RecoveryState


class ControlPlane(Protocol):
    """What the relay tells the control plane, at rare events only. Implementations hand the
    work to trio's thread and return promptly; only the Logon's outcome is waited for (once
    per session), so it is recorded before the engine can react to the answer."""

    def logon_answered(self, accepted: bool, text: str, seconds: float) -> None:
        """The gateway answered the signed Logon; ``seconds`` since the engine's Logon."""

    def logon_failed(self, result: str | None) -> None:
        """The Logon got no usable answer (counted under ``result`` if not None)."""

    def error(self, text: str) -> None:
        """Something went wrong that /status should show."""

    def skew(self, source: str, seconds: float) -> None:
        """A peer's SendingTime (52) is ``seconds`` ahead of local time."""


class RecoveryPlane(Protocol):
    """What a relay of a session with drop-copy recovery asks of the control plane."""

    def recover(self, state: RecoveryState) -> tuple[tuple[ExecId, bytes], ...]:
        """Kalshi accepted the Logon: replay what the engine missed since ``state``; the
        reports to inject, in order (none when recovery was not possible: it is logged and
        counted). Waited for: the engine's Logon answer is held meanwhile."""

    def save(self, state: RecoveryState) -> None:
        """Keep ``state`` (at a bounded interval and at the end); returns at once."""


class Command(enum.Enum):
    SHUTDOWN = "shutdown"
    """Log the session out because fixproxy is stopping."""
    ABORT = "abort"
    """Stop now: the control plane gave up waiting (a second signal, a cancelled drain)."""
    CHECK = "check"
    """Look at the clock again (it is not the wall clock: tests move it)."""
    SAVE_RECOVERY = "save_recovery"
    """Hand the drop-copy recovery state to the control plane if it changed (at an interval)."""


@dataclass(frozen=True, slots=True)
class RelayResult:
    """How the session ended, for the control plane's bookkeeping once the thread is done."""

    logged_on: bool
    """The gateway accepted the Logon (the session was up)."""
    end_cause: tuple[str, str] | None
    """(initiator, reason) of the first event that ended it, for fixproxy_logouts_total."""
    crashed: BaseException | None = None
    """An internal fault of fixproxy that ended the session (logged by the relay)."""
