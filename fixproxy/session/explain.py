"""Every text about a session that the engine or the operator reads, and the classifiers that
choose them (pure).

The relay and admission decide *when* something is said; this module decides *what*: the Text
(58) of fixproxy's own Logouts for the events that end a session, the explanation of a first
chunk that is not FIX, the hints for gateway answers that are known to puzzle users, and the
(initiator, reason) labels of ``fixproxy_logouts_total``. Nothing here logs: callers log what
it returns, so the words are tested as tables and the I/O code stays free of prose.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from fixproxy.errors import FramingError
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.session.machine import Event

CLOCK_SKEW_WARNING: Final = 5.0
"""Seconds between the engine's SendingTime and local time worth a warning; Kalshi rejects
messages more than 30 s off (Reject 373=10)."""

END_CAUSES: Final[dict[Event, tuple[str, str]]] = {
    Event.ENGINE_LOGOUT: ("engine", "normal"),
    Event.ENGINE_CLOSED: ("engine", "engine_disconnect"),
    Event.ENGINE_ERROR: ("engine", "other"),
    Event.GATEWAY_CLOSED: ("gateway", "other"),
    Event.GATEWAY_ERROR: ("gateway", "other"),
    Event.GATEWAY_SILENT: ("proxy", "heartbeat_timeout"),
    Event.ENGINE_SILENT: ("proxy", "heartbeat_timeout"),
    Event.SHUTDOWN: ("proxy", "shutdown"),
}
"""(initiator, reason) labels of fixproxy_logouts_total by the event that ended a session. A
clean Logout from the engine is ``normal``: the session ended as sessions should."""

EVENT_TEXT: Final[dict[Event, str]] = {
    Event.GATEWAY_SILENT: "the Kalshi gateway sent nothing for longer than 2 x HeartBtInt + "
                          "grace (or did not answer the Logon in time); the connection was "
                          "closed. Log on again; if it repeats, check the network path",
    Event.ENGINE_SILENT: "the engine sent nothing for longer than 2 x HeartBtInt + grace",
    Event.ENGINE_CLOSED: "the engine disconnected without a Logout",
    Event.SHUTDOWN: "fixproxy is shutting down",
    Event.LOGOUT_TIMEOUT: "the Logout was not answered in time",
}
"""The Text of fixproxy's Logouts (and of /status's last error) by the event that caused them,
where the caller has no more specific reason."""


def event_text(event: Event, reason: str = "") -> str:
    """What to tell a peer about ``event``: the caller's reason, else the standard text."""
    return reason or EVENT_TEXT.get(event, str(event))


def describe_bad_start(exc: FramingError, first_bytes: bytes | bytearray) -> str:
    """Explain a framing error on an engine's first bytes, recognising common wrong clients."""
    if first_bytes[:1] == b"\x16":
        return ("the engine started a TLS handshake, but this listener speaks plain TCP: turn "
                "TLS off in the engine (SocketUseSSL=N); fixproxy does the TLS to Kalshi")
    if first_bytes.split(b" ", 1)[0] in (b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"):
        return ("an HTTP request reached a FIX listener; point FIX engines here, and "
                "HTTP clients at the metrics address")
    if first_bytes.startswith(b"8=FIX.4"):
        return (f"the engine speaks {first_bytes[2:9].decode('ascii', 'replace')}; Kalshi "
                f"requires BeginString FIXT.1.1 with DefaultApplVerID FIX.5.0SP2")
    return f"the engine's data is not valid FIX: {exc}"


def clock_skew_warning(source: str, skew: float) -> str | None:
    """The warning for a peer whose SendingTime is ``skew`` seconds off, if it deserves one."""
    if abs(skew) <= CLOCK_SKEW_WARNING:
        return None
    return (f"the {source}'s SendingTime (52) is {skew:+.1f} s off local time; Kalshi rejects "
            f"messages more than 30 s off (Reject 373=10): synchronise the clocks")


class GatewayAnswer(NamedTuple):
    """What a gateway Logout or Reject means for the operator."""

    reason: str
    """The reason label of fixproxy_logouts_total: duplicate, signature or other."""
    text: str
    """The gateway's own Text (58), as sent."""
    hint: str | None
    """What the operator should do, for the answers known to puzzle users."""


_GATEWAY_HINTS: Final = (
    ("already exists", "duplicate",
     "Kalshi already has a connection for this API key, possibly a dead one it has not "
     "noticed yet: wait about 2 x HeartBtInt (up to 60 s) before logging on again, and make "
     "sure no other process uses the key"),
    ("signature", "signature",
     "Kalshi rejected the Logon signature: check that private_key is the key whose public "
     "half was uploaded for this API key"),
    ("sendingtime", "other",
     "Kalshi rejected SendingTime (52): the engine's clock is more than 30 s off; "
     "synchronise it (NTP)"),
    ("msgseqnum too low", "other",
     "Kalshi expected a higher MsgSeqNum (34) than the engine sent. KalshiRT keeps sequence "
     "numbers across connections, so an engine that lost its store (or a test engine that "
     "starts at 1) is behind: restore the engine's store, or reset both sides with a Logon "
     "carrying 141=Y (QuickFIX ResetOnLogon=Y, `fixproxy engine --reset`, or "
     "reset_on_logon = \"always\" for this session); other endpoints reset on every Logon"),
)


def classify_gateway_answer(raw: bytes) -> GatewayAnswer:
    """Classify a gateway Logout or Reject by its Text (58) and SessionRejectReason (373)."""
    try:
        message = FixMessage.parse(raw)
    except FramingError:
        return GatewayAnswer("other", "", None)
    own = message.get_str(tags.TEXT) or ""
    text = own.lower()
    if message.get(tags.SESSION_REJECT_REASON) == b"10":
        text += " sendingtime"
    for needle, reason, hint in _GATEWAY_HINTS:
        if needle in text:
            return GatewayAnswer(reason, own, hint)
    return GatewayAnswer("other", own, None)


def stale_resend_text(begin: int, end: int, endpoint: str, first_in: int) -> str:
    """The warning when fixproxy answers the engine's ResendRequest for numbers from before
    this connection with a gap fill (:func:`fixproxy.session.sequence.stale_resend_gap`)."""
    return (f"the engine asked for a resend of {begin}..{end}, numbers from before this "
            f"connection (fixproxy was likely stopped abruptly while they were on the way); "
            f"{endpoint} cannot retransmit, so fixproxy answers with a gap fill to {first_in}. "
            f"Reports among them come back through drop-copy recovery ([session.recovery]) "
            f"or Kalshi's REST API")


def descriptor_shortage_text(limit: int | None, what: str) -> str:
    """What an engine is told when fixproxy has no file descriptor left for ``what`` (this
    connection, or the connection to the gateway); ``limit`` is the open-file limit, if any.
    """
    where = f"its limit of {limit} open files" if limit is not None else "its open-file limit"
    return (f"fixproxy is out of file descriptors ({where}) and cannot open {what}; raise "
            f"the limit (LimitNOFILE= in fixproxy's systemd unit, ulimit -n in the shell that "
            f"starts it, or the container's nofile ulimit), or find what holds the "
            f"descriptors (ls /proc/<fixproxy pid>/fd), then reconnect")


def descriptor_shortage_log(limit: int | None) -> str:
    """The one log line that opens a shortage of descriptors at accept(2)."""
    where = f"its limit of {limit} open files" if limit is not None else "its open-file limit"
    return (f"fixproxy is out of file descriptors ({where}): engines connecting now are "
            f"answered with a Logout saying so and closed, until descriptors free up. Raise "
            f"the limit (LimitNOFILE= in the systemd unit, ulimit -n) or find what holds them "
            f"(ls /proc/<pid>/fd)")
