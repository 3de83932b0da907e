"""The life of one proxied FIX session, as a table-driven state machine (pure).

Theory of operation
-------------------
The relay moves bytes; this machine decides what the proxy itself must do when something
happens to the session: which Logouts to write and to whom, and when to close. It never
awaits and never reads a clock: the relay passes ``now`` (monotonic seconds) in, asks
:meth:`SessionMachine.next_deadline` when to wake up, and executes the returned actions.

Every (state, event) pair is in :data:`TRANSITIONS` or is a :class:`SessionError`; nothing else
can happen. Who started a Logout decides what follows, so there is one state per initiator:

* ``engine_logging_out``: the engine's Logout was forwarded; the gateway's answer will be too.
* ``gateway_logging_out``: the gateway's Logout was forwarded; the engine's answer will be too.
* ``logging_out``: fixproxy wrote a Logout upstream (shutdown, engine gone or silent). The
  gateway's answer is consumed, and the engine, if still connected, gets fixproxy's own Logout
  whose Text says why.

Liveness (FIX: a peer silent for longer than HeartBtInt is probed, then dropped): either leg
silent for ``2 x HeartBtInt + grace`` ends the session; a leg fixproxy is not reading because
the other peer stopped taking its pending output counts as that other peer's silence. Only
terminal Logouts are ever injected, so a session that needs no sequence translation stays
byte-for-byte: an injected TestRequest would shift every later sequence number.

Sequence numbers: the relay notes the last MsgSeqNum seen in each direction (one ``find`` per
read, not per message), and the machine alone hands out the numbers of fixproxy's own Logouts
(:meth:`SessionMachine.next_logout_seq`), so an injected Logout takes the next number each peer
expects and nothing outside the machine writes its counters.

The rejected alternative was flags spread through the relay's pumps ("logout_sent",
"engine_gone"...), where the combinations nobody thought of are exactly the bugs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from fixproxy.errors import SessionError


class Direction(enum.StrEnum):
    """Which way a message travels; the ``direction`` label of metrics and journal lines."""

    ENGINE_TO_GATEWAY = "engine_to_gateway"
    GATEWAY_TO_ENGINE = "gateway_to_engine"
    PROXY_TO_GATEWAY = "proxy_to_gateway"
    """fixproxy's own Logout, written upstream (journal only)."""
    PROXY_TO_ENGINE = "proxy_to_engine"
    """fixproxy's own Logout, written to the engine (journal only)."""


RELAY_DIRECTIONS: Final = (Direction.ENGINE_TO_GATEWAY, Direction.GATEWAY_TO_ENGINE)
"""The directions relayed traffic is counted in."""


class State(enum.StrEnum):
    CONNECTING = "connecting"
    """Engine connected: its Logon is being read and checked, TLS being opened."""
    TLS_READY = "tls_ready"
    """TLS is up and the pins matched; the signed Logon is about to be sent."""
    LOGON_SENT = "logon_sent"
    """The signed Logon went out; waiting for the gateway's answer."""
    ACTIVE = "active"
    ENGINE_LOGGING_OUT = "engine_logging_out"
    GATEWAY_LOGGING_OUT = "gateway_logging_out"
    LOGGING_OUT = "logging_out"
    """fixproxy wrote a Logout upstream and waits for the answer."""
    CLOSED = "closed"


IDLE: Final = "idle"
"""A configured session no engine connection holds (before any machine exists)."""
STATE_NAMES: Final[tuple[str, ...]] = (IDLE, *(state.value for state in State))
"""Every state a configured session can be in, as /status and fixproxy_session_state name
them: idle, then the machine's states."""


class Event(enum.StrEnum):
    TLS_READY = "tls_ready"
    LOGON_SENT = "logon_sent"
    GATEWAY_LOGON = "gateway_logon"
    """The gateway answered the Logon with a Logon."""
    GATEWAY_LOGOUT = "gateway_logout"
    ENGINE_LOGOUT = "engine_logout"
    ENGINE_CLOSED = "engine_closed"
    GATEWAY_CLOSED = "gateway_closed"
    ENGINE_SILENT = "engine_silent"
    GATEWAY_SILENT = "gateway_silent"
    ENGINE_ERROR = "engine_error"
    """The engine broke FIX framing."""
    GATEWAY_ERROR = "gateway_error"
    LOGOUT_TIMEOUT = "logout_timeout"
    SHUTDOWN = "shutdown"


class Action(enum.StrEnum):
    LOGOUT_TO_GATEWAY = "logout_to_gateway"
    """Write fixproxy's Logout upstream, numbered after the engine's last message."""
    LOGOUT_TO_ENGINE = "logout_to_engine"
    """Write fixproxy's Logout to the engine (Text says why), numbered after the gateway's."""
    SWALLOW = "swallow"
    """Do not forward the message that caused the event."""
    STOP_ENGINE_INPUT = "stop_engine_input"
    """Read nothing more from the engine: its messages could not be numbered after ours."""
    CLOSE = "close"
    """Close both legs once what was accepted is written."""


_S = State
_E = Event
_A = Action
Transition = tuple[State, tuple[Action, ...]]

_CLOSE: Final = (_A.CLOSE,)
_TELL_ENGINE_AND_CLOSE: Final = (_A.LOGOUT_TO_ENGINE, _A.CLOSE)
_LOG_OUT_UPSTREAM: Final = (_A.LOGOUT_TO_GATEWAY, _A.STOP_ENGINE_INPUT)

TRANSITIONS: Final[dict[tuple[State, Event], Transition]] = {
    (_S.CONNECTING, _E.TLS_READY): (_S.TLS_READY, ()),
    (_S.CONNECTING, _E.ENGINE_CLOSED): (_S.CLOSED, _CLOSE),
    (_S.CONNECTING, _E.ENGINE_ERROR): (_S.CLOSED, _CLOSE),
    (_S.CONNECTING, _E.SHUTDOWN): (_S.CLOSED, _TELL_ENGINE_AND_CLOSE),

    (_S.TLS_READY, _E.LOGON_SENT): (_S.LOGON_SENT, ()),
    (_S.TLS_READY, _E.ENGINE_CLOSED): (_S.CLOSED, _CLOSE),
    (_S.TLS_READY, _E.ENGINE_ERROR): (_S.CLOSED, _CLOSE),
    (_S.TLS_READY, _E.GATEWAY_CLOSED): (_S.CLOSED, _TELL_ENGINE_AND_CLOSE),
    (_S.TLS_READY, _E.SHUTDOWN): (_S.CLOSED, _TELL_ENGINE_AND_CLOSE),

    (_S.LOGON_SENT, _E.GATEWAY_LOGON): (_S.ACTIVE, ()),
    # An engine giving up before the answer: its Logout follows the Logon to the gateway.
    (_S.LOGON_SENT, _E.ENGINE_LOGOUT): (_S.ENGINE_LOGGING_OUT, ()),
    (_S.LOGON_SENT, _E.GATEWAY_LOGOUT): (_S.CLOSED, _CLOSE),  # refused; its Logout forwarded
    (_S.LOGON_SENT, _E.GATEWAY_CLOSED): (_S.CLOSED, _TELL_ENGINE_AND_CLOSE),
    (_S.LOGON_SENT, _E.GATEWAY_SILENT): (_S.CLOSED, _TELL_ENGINE_AND_CLOSE),
    (_S.LOGON_SENT, _E.GATEWAY_ERROR): (_S.CLOSED, _TELL_ENGINE_AND_CLOSE),
    (_S.LOGON_SENT, _E.ENGINE_CLOSED): (_S.CLOSED, _CLOSE),
    (_S.LOGON_SENT, _E.ENGINE_ERROR): (_S.CLOSED, _CLOSE),
    (_S.LOGON_SENT, _E.SHUTDOWN): (_S.CLOSED, _TELL_ENGINE_AND_CLOSE),

    (_S.ACTIVE, _E.ENGINE_LOGOUT): (_S.ENGINE_LOGGING_OUT, ()),
    (_S.ACTIVE, _E.GATEWAY_LOGOUT): (_S.GATEWAY_LOGGING_OUT, ()),
    (_S.ACTIVE, _E.ENGINE_CLOSED): (_S.LOGGING_OUT, _LOG_OUT_UPSTREAM),
    (_S.ACTIVE, _E.ENGINE_SILENT): (_S.LOGGING_OUT, _LOG_OUT_UPSTREAM),
    (_S.ACTIVE, _E.ENGINE_ERROR): (_S.LOGGING_OUT, _LOG_OUT_UPSTREAM),
    (_S.ACTIVE, _E.SHUTDOWN): (_S.LOGGING_OUT, _LOG_OUT_UPSTREAM),
    (_S.ACTIVE, _E.GATEWAY_CLOSED): (_S.CLOSED, _TELL_ENGINE_AND_CLOSE),
    (_S.ACTIVE, _E.GATEWAY_ERROR): (_S.CLOSED, _TELL_ENGINE_AND_CLOSE),
    (_S.ACTIVE, _E.GATEWAY_SILENT): (_S.CLOSED,
                                     (_A.LOGOUT_TO_GATEWAY, _A.LOGOUT_TO_ENGINE, _A.CLOSE)),

    (_S.ENGINE_LOGGING_OUT, _E.GATEWAY_LOGOUT): (_S.CLOSED, _CLOSE),
    (_S.ENGINE_LOGGING_OUT, _E.GATEWAY_LOGON): (_S.ENGINE_LOGGING_OUT, ()),
    (_S.ENGINE_LOGGING_OUT, _E.ENGINE_LOGOUT): (_S.ENGINE_LOGGING_OUT, ()),
    (_S.ENGINE_LOGGING_OUT, _E.SHUTDOWN): (_S.ENGINE_LOGGING_OUT, ()),

    (_S.GATEWAY_LOGGING_OUT, _E.ENGINE_LOGOUT): (_S.CLOSED, _CLOSE),
    (_S.GATEWAY_LOGGING_OUT, _E.GATEWAY_LOGOUT): (_S.GATEWAY_LOGGING_OUT, ()),
    (_S.GATEWAY_LOGGING_OUT, _E.SHUTDOWN): (_S.GATEWAY_LOGGING_OUT, ()),

    (_S.LOGGING_OUT, _E.GATEWAY_LOGOUT): (_S.CLOSED,
                                          (_A.SWALLOW, _A.LOGOUT_TO_ENGINE, _A.CLOSE)),
    (_S.LOGGING_OUT, _E.ENGINE_LOGOUT): (_S.LOGGING_OUT, (_A.SWALLOW,)),
    (_S.LOGGING_OUT, _E.ENGINE_CLOSED): (_S.LOGGING_OUT, ()),
    (_S.LOGGING_OUT, _E.ENGINE_SILENT): (_S.LOGGING_OUT, ()),
    (_S.LOGGING_OUT, _E.ENGINE_ERROR): (_S.LOGGING_OUT, ()),
    (_S.LOGGING_OUT, _E.SHUTDOWN): (_S.LOGGING_OUT, ()),
}
# Ends common to every logging-out state: whatever else happens, the session is over.
for _state in (_S.ENGINE_LOGGING_OUT, _S.GATEWAY_LOGGING_OUT, _S.LOGGING_OUT):
    for _event in (_E.ENGINE_CLOSED, _E.GATEWAY_CLOSED, _E.ENGINE_SILENT, _E.GATEWAY_SILENT,
                   _E.ENGINE_ERROR, _E.GATEWAY_ERROR, _E.LOGOUT_TIMEOUT):
        TRANSITIONS.setdefault(
            (_state, _event),
            (_S.CLOSED, _TELL_ENGINE_AND_CLOSE if _state is _S.LOGGING_OUT else _CLOSE))
# A closed session ignores whatever still arrives.
for _event in Event:
    TRANSITIONS[(_S.CLOSED, _event)] = (_S.CLOSED, ())

ENGINE_GONE_WITHOUT_LOGOUT: Final[Transition] = (_S.CLOSED, _CLOSE)
"""(active, engine_closed) when ``logout_on_engine_disconnect`` is off."""

LIVE_STATES: Final = frozenset({_S.ACTIVE, _S.ENGINE_LOGGING_OUT, _S.GATEWAY_LOGGING_OUT,
                                _S.LOGGING_OUT})
"""States in which the gateway considers the session logged on."""


@dataclass(slots=True)
class SessionMachine:
    """One connection's session: state, timers, last sequence numbers, and why it ended."""

    now: float
    """Time of the last event or check (monotonic seconds), as passed in by the relay."""
    heart_bt_int: float = 30.0
    grace: float = 5.0
    logout_wait: float = 2.0
    logon_wait: float = 30.0
    logout_on_engine_disconnect: bool = True
    state: State = State.CONNECTING
    since: float = 0.0
    """When the current state was entered."""
    engine_seen: float = 0.0
    gateway_seen: float = 0.0
    engine_last_seq: int = 0
    """Last MsgSeqNum the engine sent, in the engine's numbering."""
    gateway_last_seq: int = 0
    """Last MsgSeqNum the gateway sent, in the gateway's numbering."""
    close_reason: str = ""
    history: list[tuple[float, State, Event]] = field(default_factory=list)
    broken: SessionError | None = None
    """Set by the first illegal event; the session then refuses all further use."""

    def __post_init__(self) -> None:
        self.since = self.engine_seen = self.gateway_seen = self.now

    def handle(self, event: Event, now: float, reason: str = "") -> tuple[Action, ...]:
        """Apply ``event`` and return what the relay must do.

        Raises:
            SessionError: the event cannot happen in this state (a relay bug, not a peer's).
        """
        if self.broken is not None:
            raise SessionError(f"session is broken: {self.broken}") from self.broken
        transition = TRANSITIONS.get((self.state, event))
        if transition is None:
            self.broken = SessionError(f"{event} cannot happen in state {self.state}")
            raise self.broken
        if (self.state, event) == (State.ACTIVE, Event.ENGINE_CLOSED) \
                and not self.logout_on_engine_disconnect:
            transition = ENGINE_GONE_WITHOUT_LOGOUT
        target, actions = transition
        self.now = max(self.now, now)
        if target is not self.state:
            self.history.append((now, self.state, event))
            self.state = target
            self.since = now
        if target is State.CLOSED and not self.close_reason:
            self.close_reason = reason or event.value
        return actions

    def engine_activity(self, now: float, last_seq: int | None) -> None:
        """Note bytes from the engine, and the MsgSeqNum of the last message among them."""
        self.engine_seen = now
        if last_seq is not None and last_seq > self.engine_last_seq:
            self.engine_last_seq = last_seq

    def gateway_activity(self, now: float, last_seq: int | None) -> None:
        """Note bytes from the gateway, and the MsgSeqNum of the last message among them."""
        self.gateway_seen = now
        if last_seq is not None and last_seq > self.gateway_last_seq:
            self.gateway_last_seq = last_seq

    def next_logout_seq(self, *, to_gateway: bool) -> int:
        """Take the MsgSeqNum of a Logout fixproxy writes itself, in the numbering of the peer
        it speaks for: after the engine's last message when it goes to the gateway, after the
        gateway's last message when it goes to the engine."""
        if to_gateway:
            self.engine_last_seq += 1
            return self.engine_last_seq
        self.gateway_last_seq += 1
        return self.gateway_last_seq

    @property
    def silence_limit(self) -> float:
        """Seconds of silence from a logged-on peer after which it is declared gone."""
        return 2 * self.heart_bt_int + self.grace

    def next_deadline(self) -> float | None:
        """When :meth:`check_timers` may next have something to say; None: nothing to wait for."""
        if self.state is State.LOGON_SENT:
            return self.since + self.logon_wait
        if self.state is State.ACTIVE:
            limit = self.silence_limit
            return min(self.engine_seen, self.gateway_seen) + limit
        if self.state in (State.ENGINE_LOGGING_OUT, State.GATEWAY_LOGGING_OUT,
                          State.LOGGING_OUT):
            return self.since + self.logout_wait
        return None

    def check_timers(self, now: float, *, engine_held: bool = False,
                     gateway_held: bool = False) -> Event | None:
        """The timer event due at ``now``, if any (the caller then passes it to handle).

        ``engine_held`` (``gateway_held``): the relay is not reading that side now because the
        other one has stopped taking what is already pending for it. The held side's silence
        is then the other side's doing, and is reported as the other side's: a gateway that
        stops reading under a pipelining engine holds the engine off, and it is the gateway
        that has gone, not the engine.
        """
        self.now = max(self.now, now)
        if self.state is State.LOGON_SENT and now >= self.since + self.logon_wait:
            return Event.GATEWAY_SILENT
        if self.state is State.ACTIVE:
            if now >= self.gateway_seen + self.silence_limit:
                return Event.ENGINE_SILENT if gateway_held and not engine_held \
                    else Event.GATEWAY_SILENT
            if now >= self.engine_seen + self.silence_limit:
                return Event.GATEWAY_SILENT if engine_held and not gateway_held \
                    else Event.ENGINE_SILENT
        if self.state in (State.ENGINE_LOGGING_OUT, State.GATEWAY_LOGGING_OUT,
                          State.LOGGING_OUT) and now >= self.since + self.logout_wait:
            return Event.LOGOUT_TIMEOUT
        return None
