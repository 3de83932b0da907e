"""What each configured session is doing now: for ``/status``, ``fixproxy status`` and the
scrape-time session metrics.

Theory of operation
-------------------
The relay's session machine already knows the state and when it was entered, when each side
last sent bytes and the last MsgSeqNum seen each way. Copying those into Prometheus gauges on
every message would put label lookups and locks on the order path. Instead each configured
session has one :class:`SessionStatus` that points at the machine of its current (or last)
connection, and readers derive everything when they ask: a scrape, a ``/status`` request.
Writers touch it only at rare events: a connection takes or gives back the session, the
gateway answers the Logon, something fails.

Writers and readers run in trio's thread: the session relays' rare events reach it through the
control plane (fixproxy.proxy.admit). The one thing read across threads is the machine of a
live session, which its relay's thread updates: readers take single attributes (a state, a
time, a number), each read whole under the GIL. Times from the machine are on trio's monotonic
clock and are turned into wall time with the (monotonic, wall) pair the reader passes in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

from fixproxy.session.machine import IDLE, STATE_NAMES, State

STATES: Final = STATE_NAMES
"""Every value of the ``state`` label of fixproxy_session_state (idle, then the machine's
states)."""
SKEW_SOURCES: Final = ("engine", "gateway")


class MachineView(Protocol):
    """What status reads of a connection's session machine
    (:class:`fixproxy.session.machine.SessionMachine`)."""

    @property
    def state(self) -> str: ...
    @property
    def since(self) -> float: ...
    @property
    def engine_seen(self) -> float: ...
    @property
    def gateway_seen(self) -> float: ...
    @property
    def engine_last_seq(self) -> int: ...
    @property
    def gateway_last_seq(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Clocks:
    """A reading of the relay's monotonic clock and of wall time taken together."""

    monotonic: float
    wall: float

    def wall_of(self, monotonic: float) -> float:
        """Wall time of an earlier reading of the monotonic clock."""
        return self.wall - (self.monotonic - monotonic)


def iso(wall: float) -> str:
    """RFC 3339 UTC with milliseconds, as /status shows times."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(slots=True)
class SessionStatus:
    """One configured session, as the last events left it."""

    name: str
    endpoint: str
    gateway: str
    """host:port the session's TLS goes to."""
    listen: str
    """host:port engines connect to."""
    since_wall: float = 0.0
    """When the session became idle or connecting (the machine keeps its own after that)."""
    conn_id: int | None = None
    """The engine connection holding the session, if any."""
    connecting: bool = False
    machine: MachineView | None = None
    """The session machine of the current connection, or of the last one once it ended."""
    live: bool = False
    """True while ``machine`` belongs to a connection that is still running."""
    translated: bool = False
    clock_skew: dict[str, float] = field(default_factory=dict)
    """Seconds the peer's SendingTime (52) was ahead of local time, by source."""
    last_error: str = ""
    last_error_wall: float | None = None

    # --- writers (the relay, at rare events) ----------------------------------------------

    def connection_started(self, conn_id: int, wall: float) -> None:
        """An engine connection took the session (its API key) and is opening TLS."""
        self.conn_id = conn_id
        self.connecting = True
        self.live = False
        self.since_wall = wall
        self.translated = False

    def session_started(self, conn_id: int, machine: MachineView, *, translated: bool) -> None:
        """The connection's session machine exists: state comes from it from now on."""
        if conn_id != self.conn_id:
            return
        self.machine = machine
        self.live = True
        self.connecting = False
        self.translated = translated

    def connection_ended(self, conn_id: int, wall: float) -> None:
        """The connection holding the session ended; the session is idle again."""
        if conn_id != self.conn_id:
            return
        self.conn_id = None
        self.connecting = False
        self.live = False
        self.since_wall = wall

    def error(self, text: str, wall: float) -> None:
        """Remember the latest thing that went wrong, for /status."""
        self.last_error = text
        self.last_error_wall = wall

    def skew(self, source: str, seconds: float) -> None:
        self.clock_skew[source] = seconds

    # --- readers (scrape, /status) ---------------------------------------------------------

    @property
    def state(self) -> str:
        if self.live and self.machine is not None:
            return str(self.machine.state)
        return State.CONNECTING.value if self.connecting else IDLE

    def state_since(self, clocks: Clocks) -> float:
        if self.live and self.machine is not None:
            return clocks.wall_of(self.machine.since)
        return self.since_wall

    def last_seen(self) -> dict[str, float]:
        """Monotonic time of the last bytes in each direction, once a session ran."""
        machine = self.machine
        if machine is None:
            return {}
        return {"engine_to_gateway": machine.engine_seen,
                "gateway_to_engine": machine.gateway_seen}

    def sequence_numbers(self) -> dict[str, int]:
        """Last MsgSeqNum seen in each direction, each in its sender's numbering."""
        machine = self.machine
        if machine is None:
            return {}
        return {"engine_to_gateway": machine.engine_last_seq,
                "gateway_to_engine": machine.gateway_last_seq}

    def to_json(self, clocks: Clocks) -> dict[str, object]:
        """This session for /status: plain JSON types only."""
        return {
            "session": self.name,
            "state": self.state,
            "since": iso(self.state_since(clocks)),
            "connection": self.conn_id,
            "endpoint": self.endpoint,
            "gateway": self.gateway,
            "listen": self.listen,
            "sequence_numbers": self.sequence_numbers(),
            "sequence_translated": self.translated,
            "last_message": {
                direction: {"at": iso(clocks.wall_of(seen)),
                            "age_seconds": round(clocks.monotonic - seen, 3)}
                for direction, seen in self.last_seen().items()},
            "clock_skew_seconds": {source: round(seconds, 3)
                                   for source, seconds in self.clock_skew.items()},
            "last_error": None if self.last_error_wall is None else {
                "text": self.last_error, "at": iso(self.last_error_wall)},
        }


class StatusBoard:
    """The :class:`SessionStatus` of every configured session, by name."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionStatus] = {}

    def declare(self, name: str, *, endpoint: str, gateway: str, listen: str,
                wall: float) -> SessionStatus:
        """The status of session ``name``, created idle on first use and kept after (a
        reload that keeps a session keeps its status; its addresses are updated)."""
        status = self._sessions.get(name)
        if status is None:
            status = self._sessions[name] = SessionStatus(
                name=name, endpoint=endpoint, gateway=gateway, listen=listen, since_wall=wall)
        else:
            status.endpoint, status.gateway, status.listen = endpoint, gateway, listen
        return status

    def forget(self, name: str) -> None:
        """Drop a session that is no longer configured."""
        self._sessions.pop(name, None)

    def get(self, name: str) -> SessionStatus | None:
        return self._sessions.get(name)

    def __iter__(self) -> Iterator[SessionStatus]:
        return iter(sorted(self._sessions.values(), key=lambda status: status.name))

    def __len__(self) -> int:
        return len(self._sessions)

    def to_json(self, clocks: Clocks) -> list[dict[str, object]]:
        return [status.to_json(clocks) for status in self]
