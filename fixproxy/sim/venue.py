"""The rules of the simulated Kalshi venue, without sockets, trio or a clock of its own.

Theory of operation
-------------------
The simulator is what fixproxy is run against when the real gateway is out of reach, so it
must refuse whatever Kalshi refuses: a proxy that only ever met a lenient peer would reach
production with its mistakes intact. Every Logon rule Kalshi documents is checked, each failure
answered with a Logout (35=5) whose Text (58) names the problem, and then the connection closes
(Kalshi, "Logon" and "Error handling"):

* ``1137=9``, ``98=0``, HeartBtInt (108) an integer above 3;
* SenderCompID (49) a registered API key, TargetCompID (56) the endpoint of the port;
* ResetSeqNumFlag ``141=Y`` on every session without retransmission (KalshiNR, KalshiDC,
  KalshiRFQ, KalshiMD in the current documents) and then MsgSeqNum (34) must be 1. KalshiRT and
  KalshiPT may omit it; their sequence numbers are then kept per (API key, endpoint) across
  connections, in memory;
* SendingTime (52) ``YYYYMMDD-HH:MM:SS.sss`` within 30 s of the simulator's clock;
* RawDataLength (95) right before RawData (96) and equal to its length, and 96 an RSA-PSS
  signature of ``52|A|34|49|56`` under the key registered for 49;
* one live connection per API key: a second Logon gets ``58=already exists`` and the first
  session carries on.

After the Logon every inbound MsgSeqNum must be exactly the next one. The simulator keeps no
message store, so a gap is fatal on every endpoint (a real KalshiRT or KalshiPT would ask for a
resend instead), and ResendRequest and SequenceReset are rejected.

A :class:`Venue` holds what outlives a connection: the rules, the live session of each API key,
the sequence numbers a retransmission session left behind, and the account (orders, ExecIDs,
resting orders filled later, the history KalshiDC replays: :mod:`fixproxy.sim.account`). Each
connection is a :class:`VenueSession`, a sans-IO state machine in the manner of h11: the caller
hands it one framed message at a time (:meth:`~VenueSession.receive`), tells it when bytes came
and went, wakes it at :meth:`~VenueSession.deadline` (:meth:`~VenueSession.on_timer`), and sends
the :class:`Answer` values those calls return, in order. Once :attr:`~VenueSession.ending` is
set the caller closes the connection as it says. The caller passes in its monotonic time, which
drives heartbeats and timeouts; the SendingTime check and the stamps on answers read the wall
clock through functions the :class:`Venue` is given, so tests can pin both. Only messages whose
fields matter are parsed (the Logon, TestRequest, orders); heartbeats and the sequence check read
the raw bytes, because the benchmark drives this path hard.

The faults that are venue behaviour live here too (refuse every Logon, log out, go silent, and
when a drop fires, whether the message is answered first); how a dropped connection ends on the
wire is the gateway's business.

The alternative rejected was to reuse the proxy's own session code: a simulator sharing the
proxy's understanding of FIX would agree with its bugs instead of catching them.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from fixproxy.errors import FramingError, LogonRefused
from fixproxy.fix import tags
from fixproxy.fix.codec import (
    FieldValue,
    SendingTimeClock,
    encode,
    header_value,
    iter_fields,
    parse_utc_timestamp,
    render,
)
from fixproxy.fix.framer import Frame
from fixproxy.signing import verify_signature
from fixproxy.sim.account import ORDER_ENTRY_ENDPOINTS, Account

LOG: Final = logging.getLogger("fixproxy.sim")

RESET_REQUIRED_ENDPOINTS: Final = frozenset({"KalshiNR", "KalshiDC", "KalshiRFQ", "KalshiMD"})
"""Endpoints whose every Logon must carry 141=Y (Kalshi's current error-handling page)."""
MAX_SENDING_TIME_SKEW_S: Final = 30.0
"""Kalshi rejects a SendingTime more than 30 s away from its clock."""
LOGON_TIMEOUT_S: Final = 10.0
"""A connection that sends no Logon this long after the handshake is dropped."""
LOGOUT_TIMEOUT_S: Final = 5.0
"""How long the simulator waits for the answer to a Logout it sent."""
TEST_REQUEST_GRACE: Final = 0.2
"""A TestRequest goes out after HeartBtInt * (1 + this) seconds without a message."""

_SENDING_TIME: Final = re.compile(rb"\d{8}-\d{2}:\d{2}:\d{2}\.\d{3}")
_LOGON_UNIQUE: Final = (
    tags.SENDER_COMP_ID, tags.TARGET_COMP_ID, tags.MSG_SEQ_NUM, tags.SENDING_TIME,
    tags.ENCRYPT_METHOD, tags.HEART_BT_INT, tags.RESET_SEQ_NUM_FLAG, tags.DEFAULT_APPL_VER_ID,
    tags.RAW_DATA_LENGTH, tags.RAW_DATA,
)
_FIELD_NAMES: Final = {
    tags.SENDER_COMP_ID: "SenderCompID", tags.TARGET_COMP_ID: "TargetCompID",
    tags.MSG_SEQ_NUM: "MsgSeqNum", tags.SENDING_TIME: "SendingTime",
    tags.ENCRYPT_METHOD: "EncryptMethod", tags.HEART_BT_INT: "HeartBtInt",
    tags.RESET_SEQ_NUM_FLAG: "ResetSeqNumFlag", tags.DEFAULT_APPL_VER_ID: "DefaultApplVerID",
    tags.RAW_DATA_LENGTH: "RawDataLength", tags.RAW_DATA: "RawData",
}


class _Logon(NamedTuple):
    key: str
    seq: int
    heart_bt_int: bytes
    reset: bool
    next_out: int


def _show(value: bytes | None) -> str:
    return "missing" if value is None else repr(value.decode("ascii", "replace"))


def _name(tag: int) -> str:
    return f"{_FIELD_NAMES.get(tag, 'tag')} ({tag})"


def _sending_time(value: bytes) -> float | None:
    # Stricter than FIX allows: Kalshi wants milliseconds, so the simulator does too.
    return parse_utc_timestamp(value) if _SENDING_TIME.fullmatch(value) else None


class Phase(enum.Enum):
    """Where a session stands."""

    AWAIT_LOGON = "await Logon"
    """Connected; the first message must be a good Logon."""
    ACTIVE = "active"
    """Logged on: messages are sequenced, heartbeats kept, orders answered."""
    LOGOUT_SENT = "Logout sent"
    """The venue logged out and waits for the peer's Logout."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VenueRules:
    """What the venue accepts, and the misbehaviour it is asked for that needs no socket.

    Message counts start after the Logon and include heartbeats; 0 means right after the Logon
    answer (see :class:`fixproxy.sim.gateway.SimFaults`, which is validated and carries these).
    """

    keys: Mapping[str, RSAPublicKey]
    """Registered API keys and their public keys."""
    max_skew: float = MAX_SENDING_TIME_SKEW_S
    """Largest accepted distance of a Logon's SendingTime (52) from the clock, in seconds."""
    reset_required: frozenset[str] = RESET_REQUIRED_ENDPOINTS
    """Endpoints that demand 141=Y on every Logon."""
    refuse_logon_text: str | None = None
    """Answer every Logon with a Logout carrying this Text (58)."""
    drop_after_messages: int | None = None
    """Stop on the N-th message: :attr:`VenueSession.dropped_after` is set and nothing more is
    answered; the gateway ends the connection."""
    answer_dropped_message: bool = False
    """Whether the message the drop fires on is still answered (the gateway then sends only
    part of the answer)."""
    silent_after_messages: int | None = None
    """From the N-th message on answer nothing at all, heartbeats included, but keep reading."""
    logout_after_messages: int | None = None
    """After answering the N-th message send ``Logout 58=sim: logout after N messages``."""
    fill_after: float | None = None
    """Rest every new order and fill it in full this many seconds later (connected or not);
    None: orders are only acknowledged."""
    exchange_indexes: int = 1
    """Exchange indexes orders are spread over (by symbol), each with its own ExecIDs."""
    replay_allowlisted: bool = True
    """The account may use EventResendRequest (35=U1); False: every U1 gets 21004=5."""
    replay_server_error: bool = False
    """Answer every EventResendRequest with 21004=2 (server error)."""


class Answer(NamedTuple):
    """One message the venue sends, already encoded."""

    raw: bytes
    msg_type: bytes


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a session ended and how its connection is to close."""

    reason: str
    linger: bool
    """True after a Logout: half-close and let the peer read it; False: close right away."""


class Venue:
    """The exchange behind every endpoint: what outlives one connection."""

    def __init__(self, rules: VenueRules, *, wall_clock: Callable[[], float] = time.time,
                 stamp: Callable[[], bytes] | None = None) -> None:
        """Create the venue.

        Args:
            rules: keys, clock tolerance, reset rules and venue-level faults.
            wall_clock: Unix time, read for the SendingTime (52) check of a Logon.
            stamp: the SendingTime of each answer (default: the current UTC time).
        """
        self.rules = rules
        self.live: dict[str, VenueSession] = {}
        """API key -> its logged-on session."""
        self.seqs: dict[tuple[str, str], tuple[int, int]] = {}
        """(API key, endpoint) -> (next inbound, next outbound) MsgSeqNum a session left."""
        self.last_logon: dict[str, bytes] = {}
        """The Logon last received per SenderCompID, signature included."""
        self.wall_clock = wall_clock
        self.stamp = stamp if stamp is not None else SendingTimeClock()
        self.account = Account(wall_clock, self.stamp, exchange_indexes=rules.exchange_indexes,
                               fill_after=rules.fill_after,
                               allowlisted=rules.replay_allowlisted,
                               replay_server_error=rules.replay_server_error)
        """Orders, ExecIDs and the history the drop copy replays (:mod:`fixproxy.sim.account`)."""
        self._test_ids = itertools.count(1)

    def open_session(self, conn_id: int, endpoint: str, now: float) -> VenueSession:
        """A session for a new connection to ``endpoint``, which must send its Logon in time."""
        return VenueSession(self, conn_id, endpoint, now)

    def new_order_id(self) -> bytes:
        """An OrderID (37) never given before."""
        return self.account.new_order_id()

    def new_test_req_id(self) -> bytes:
        """A TestReqID (112) never given before."""
        return b"SIM-TEST-%d" % next(self._test_ids)


class VenueSession:
    """The venue's side of one connection; see the module documentation for how to drive it."""

    __slots__ = (
        "_out", "api_key", "claimed_key", "conn_id", "dropped_after", "ending", "endpoint",
        "endpoint_b", "heart_bt_int", "key_b", "last_received", "last_sent", "logout_deadline",
        "next_in", "next_out", "phase", "received", "replays", "sender", "sender_field", "silent",
        "target_field", "test_req_at", "test_req_id", "venue",
    )

    def __init__(self, venue: Venue, conn_id: int, endpoint: str, now: float) -> None:
        self.venue = venue
        self.conn_id = conn_id
        """Names the connection in log lines."""
        self.endpoint = endpoint
        self.endpoint_b = endpoint.encode()
        self.phase = Phase.AWAIT_LOGON
        self.api_key: str | None = None
        """The API key, once logged on."""
        self.claimed_key: str | None = None
        """The SenderCompID (49) of the first message, whether or not it was let in."""
        self.sender: str | None = None
        """Who the last message came from when it arrived: the API key, or before a successful
        Logon the SenderCompID claimed."""
        self.key_b = b"UNKNOWN"
        self.sender_field = b""
        self.target_field = b"\x0156=" + self.endpoint_b + b"\x01"
        self.next_in = 1
        self.next_out = 1
        self.heart_bt_int = 0.0
        self.last_received = now
        self.last_sent = now
        self.logout_deadline = now + LOGON_TIMEOUT_S  # until the Logon: the Logon deadline
        self.test_req_id: bytes | None = None
        self.test_req_at = 0.0
        self.received = 0
        """Messages received since the Logon."""
        self.silent = False
        self.dropped_after: int | None = None
        """Set when the drop fault fired, to the message count it fired on."""
        self.replays = 0
        """EventResendRequests received (KalshiDC)."""
        self.ending: Ending | None = None
        self._out: list[Answer] = []

    # ----- driving the session ------------------------------------------------------------

    def receive(self, frame: Frame, now: float) -> list[Answer]:
        """Apply the venue's rules to one framed message that arrived at ``now``.

        Returns the answers to send, in order. Once the session has ended or dropped it ignores
        everything and answers nothing.
        """
        if self.ending is not None or self.dropped_after is not None:
            return []
        raw, msg_type = frame
        phase = self.phase
        if phase is Phase.AWAIT_LOGON:
            claimed = header_value(raw, tags.SENDER_COMP_ID)
            if claimed:
                self.claimed_key = claimed.decode("ascii", "replace")
                self.key_b = claimed
        self.sender = self.api_key or self.claimed_key
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("connection %d in: %s", self.conn_id, render(raw))
        self._settle(now)
        if phase is Phase.ACTIVE:
            self._on_message(raw, msg_type, now)
        elif phase is Phase.AWAIT_LOGON:
            self._on_logon(raw, msg_type, now)
        elif msg_type == tags.MT_LOGOUT:
            self._end("logged out at the simulator's request", linger=True)
        return self._flush()

    def framing_failed(self, error: FramingError) -> list[Answer]:
        """The byte stream is not valid FIX: log out and end (a corrupt stream is never
        resynchronised)."""
        if self.ending is not None or self.dropped_after is not None:
            return []
        LOG.info("connection %d: invalid FIX: %s", self.conn_id, error)
        self._logout(f"invalid FIX message: {error}")
        return self._flush()

    def note_received(self, now: float) -> None:
        """Bytes arrived: the peer is alive, and any TestRequest is answered."""
        self.last_received = now
        self.test_req_id = None

    def note_sent(self, now: float) -> None:
        """Bytes left: the next Heartbeat is due one interval from ``now``."""
        self.last_sent = now

    def deadline(self) -> float:
        """When :meth:`on_timer` must next be called, on the caller's clock."""
        if self.phase is Phase.ACTIVE:
            due = self.venue.account.next_due()
            return min(*self._deadlines(), math.inf if due is None else due)
        return self.logout_deadline

    def on_timer(self, now: float) -> list[Answer]:
        """Act on the deadline: a Heartbeat, a TestRequest, or giving up on a silent peer."""
        if self.ending is not None or self.dropped_after is not None:
            return []
        if self.phase is not Phase.ACTIVE:
            if now >= self.logout_deadline:
                self._end("no Logon received in time" if self.phase is Phase.AWAIT_LOGON
                          else "the peer did not answer our Logout", linger=False)
            return []
        self._settle(now)
        receive, send = self._deadlines()
        if now >= receive:
            if self.test_req_id is not None:
                self._logout(f"no message received for {now - self.last_received:.0f} s "
                             f"and the TestRequest went unanswered")
                return self._flush()
            self.test_req_id = self.venue.new_test_req_id()
            self.test_req_at = now
            self._send(tags.MT_TEST_REQUEST, [(tags.TEST_REQ_ID, self.test_req_id)])
        elif now >= send:
            self._send(tags.MT_HEARTBEAT, ())
        return self._flush()

    def close(self, reason: str) -> None:
        """The connection ends for a reason of the transport's; the first reason given stands."""
        self._end(reason, linger=False)

    def release(self) -> None:
        """The connection is gone: free its API key, and keep its sequence numbers for the
        next Logon that does not reset them."""
        if self.api_key is not None and self.venue.live.get(self.api_key) is self:
            del self.venue.live[self.api_key]
            self.venue.account.live_fills.pop(self.api_key, None)  # in the history only
            self.venue.seqs[(self.api_key, self.endpoint)] = (self.next_in, self.next_out)

    # ----- answers ------------------------------------------------------------------------

    def _flush(self) -> list[Answer]:
        out = self._out
        self._out = []
        return out

    def _settle(self, now: float) -> None:
        """Fill what is due on the account, and send this session its own fills (those of a
        key with a logged-on order-entry session wait for it in ``live_fills``)."""
        live, account = self.venue.live, self.venue.account
        account.settle(now, lambda key: key in live and live[key].phase is Phase.ACTIVE
                       and live[key].endpoint in ORDER_ENTRY_ENDPOINTS)
        if live.get(self.api_key or "") is self and self.dropped_after is None:
            for body in account.live_fills.pop(self.api_key or "", ()):
                self._send(tags.MT_EXECUTION_REPORT, body)

    def _end(self, reason: str, *, linger: bool) -> None:
        if self.ending is None:
            self.ending = Ending(reason, linger)

    def _drop(self, count: int) -> None:
        """The drop fault fires on the ``count``-th message (0: right after the Logon)."""
        if self.ending is not None or self.dropped_after is not None:
            return
        self.dropped_after = count

    def _send(self, msg_type: bytes, body: Iterable[tuple[int, FieldValue]],
              stamp: bytes | None = None) -> None:
        if self.silent:
            return
        raw = encode([
            (tags.MSG_TYPE, msg_type),
            (tags.SENDER_COMP_ID, self.endpoint_b),
            (tags.TARGET_COMP_ID, self.key_b),
            (tags.MSG_SEQ_NUM, self.next_out),
            (tags.SENDING_TIME, stamp or self.venue.stamp()),
            *body,
        ])
        self.next_out += 1
        self._out.append(Answer(raw, msg_type))
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("connection %d out: %s", self.conn_id, render(raw))

    def _logout(self, text: str, *, answer_by: float | None = None) -> None:
        """Send a Logout; end now, or (with ``answer_by``) once the peer answers it."""
        self._send(tags.MT_LOGOUT, [(tags.TEXT, text)])
        if answer_by is not None:
            self.phase = Phase.LOGOUT_SENT
            self.logout_deadline = answer_by
        else:
            self._end(f"sent Logout: {text}", linger=True)

    def _reject(self, ref_seq: int, ref_type: bytes, reason: int, text: str, *,
                ref_tag: int | None = None) -> None:
        body: list[tuple[int, FieldValue]] = [(tags.REF_SEQ_NUM, ref_seq)]
        if ref_tag is not None:
            body.append((371, ref_tag))
        body += [(tags.REF_MSG_TYPE, ref_type), (tags.SESSION_REJECT_REASON, reason),
                 (tags.TEXT, text)]
        self._send(tags.MT_REJECT, body)

    def _deadlines(self) -> tuple[float, float]:
        """(receive deadline, send deadline) of a logged-on session."""
        interval = self.heart_bt_int
        if self.test_req_id is not None:
            receive = self.test_req_at + interval
        else:
            receive = self.last_received + interval * (1 + TEST_REQUEST_GRACE)
        send = math.inf if self.silent else self.last_sent + interval
        return receive, send

    # ----- Logon --------------------------------------------------------------------------

    def _on_logon(self, raw: bytes, msg_type: bytes, now: float) -> None:
        try:
            logon = self._admit(raw, msg_type)
        except LogonRefused as refused:
            LOG.info("connection %d: Logon on %s refused: %s", self.conn_id, self.endpoint,
                     refused.text)
            self._logout(refused.text)
            return
        self.phase = Phase.ACTIVE
        self.api_key = logon.key
        self.sender_field = b"\x0149=" + self.key_b + b"\x01"
        self.heart_bt_int = float(int(logon.heart_bt_int))
        self.next_in = logon.seq + 1
        self.next_out = logon.next_out
        self.last_received = now
        self.venue.live[logon.key] = self
        body: list[tuple[int, FieldValue]] = [(tags.ENCRYPT_METHOD, b"0"),
                                              (tags.HEART_BT_INT, logon.heart_bt_int)]
        if logon.reset:
            body.append((tags.RESET_SEQ_NUM_FLAG, b"Y"))
        body.append((tags.DEFAULT_APPL_VER_ID, b"9"))
        self._send(tags.MT_LOGON, body)
        LOG.info("connection %d: %s logged on to %s (HeartBtInt %s, %s)", self.conn_id,
                 logon.key, self.endpoint, logon.heart_bt_int.decode(),
                 "reset" if logon.reset else f"continuing at {logon.seq}")
        rules = self.venue.rules
        if rules.drop_after_messages == 0:
            self._drop(0)
        if rules.silent_after_messages == 0:
            self.silent = True
        if rules.logout_after_messages == 0 and (
                self.dropped_after is None or rules.answer_dropped_message):
            self._logout("sim: logout after 0 messages", answer_by=now + LOGOUT_TIMEOUT_S)

    def _admit(self, raw: bytes, msg_type: bytes) -> _Logon:
        """Apply every Logon rule; raises LogonRefused with the Text to send."""
        venue = self.venue
        rules = venue.rules
        if msg_type != tags.MT_LOGON:
            raise LogonRefused(f"the first message must be a Logon (35=A), got "
                               f"35={msg_type.decode('ascii', 'replace')}")
        if self.claimed_key is not None:
            venue.last_logon[self.claimed_key] = raw
        if rules.refuse_logon_text is not None:
            raise LogonRefused(rules.refuse_logon_text)
        try:
            fields = list(iter_fields(raw))
        except FramingError as exc:
            raise LogonRefused(f"malformed Logon: {exc}") from exc
        values: dict[int, bytes] = {}
        order: list[int] = []
        for tag, value in fields:
            if tag in values and tag in _LOGON_UNIQUE:
                raise LogonRefused(f"{_name(tag)} appears more than once in the Logon")
            values.setdefault(tag, value)
            order.append(tag)

        if values.get(tags.BEGIN_STRING) != tags.BEGIN_STRING_FIXT11:
            raise LogonRefused(f"BeginString (8) must be FIXT.1.1, got "
                               f"{_show(values.get(tags.BEGIN_STRING))}")
        appl_ver = values.get(tags.DEFAULT_APPL_VER_ID)
        if appl_ver != b"9":
            raise LogonRefused(
                f"{_name(tags.DEFAULT_APPL_VER_ID)} must be 9 (FIX50SP2), got {_show(appl_ver)}")
        encrypt = values.get(tags.ENCRYPT_METHOD)
        if encrypt != b"0":
            raise LogonRefused(f"{_name(tags.ENCRYPT_METHOD)} must be 0, got {_show(encrypt)}")
        heartbeat = values.get(tags.HEART_BT_INT)
        if heartbeat is None or not heartbeat.isdigit() or int(heartbeat) <= 3:
            raise LogonRefused(f"{_name(tags.HEART_BT_INT)} must be an integer greater than 3, "
                               f"got {_show(heartbeat)}")

        sender = values.get(tags.SENDER_COMP_ID)
        key = sender.decode("ascii", "replace") if sender is not None else ""
        public_key = rules.keys.get(key)
        if public_key is None:
            raise LogonRefused(f"CompID problem: {_name(tags.SENDER_COMP_ID)} {_show(sender)} "
                               f"is not a registered API key")
        target = values.get(tags.TARGET_COMP_ID)
        if target != self.endpoint_b:
            raise LogonRefused(f"CompID problem: {_name(tags.TARGET_COMP_ID)} is "
                               f"{_show(target)} but this port serves {self.endpoint}")

        seq_text = values.get(tags.MSG_SEQ_NUM)
        if seq_text is None or not seq_text.isdigit() or int(seq_text) < 1:
            raise LogonRefused(f"{_name(tags.MSG_SEQ_NUM)} must be a positive integer, got "
                               f"{_show(seq_text)}")
        seq = int(seq_text)
        reset_flag = values.get(tags.RESET_SEQ_NUM_FLAG)
        if reset_flag not in (None, b"Y", b"N"):
            raise LogonRefused(f"{_name(tags.RESET_SEQ_NUM_FLAG)} must be Y or N, got "
                               f"{_show(reset_flag)}")
        reset = reset_flag == b"Y"
        if not reset and self.endpoint in rules.reset_required:
            raise LogonRefused(f"141=Y required: {self.endpoint} has no retransmission, so "
                               f"ResetSeqNumFlag (141) must be Y on every Logon")
        if reset and seq != 1:
            raise LogonRefused(f"{_name(tags.MSG_SEQ_NUM)} must be 1 with ResetSeqNumFlag "
                               f"(141) Y, got {seq}")

        sending_time = values.get(tags.SENDING_TIME)
        stamp = _sending_time(sending_time) if sending_time is not None else None
        if sending_time is None or stamp is None:
            raise LogonRefused(f"{_name(tags.SENDING_TIME)} must be a UTC timestamp "
                               f"YYYYMMDD-HH:MM:SS.sss, got {_show(sending_time)}")
        skew = stamp - venue.wall_clock()
        if abs(skew) > rules.max_skew:
            raise LogonRefused(
                f"SendingTime accuracy problem: {_name(tags.SENDING_TIME)} "
                f"{sending_time.decode()} is {skew:+.1f} s from the gateway's clock (limit "
                f"{rules.max_skew:g} s)")

        length = values.get(tags.RAW_DATA_LENGTH)
        signature = values.get(tags.RAW_DATA)
        if length is None or signature is None:
            missing = tags.RAW_DATA_LENGTH if length is None else tags.RAW_DATA
            raise LogonRefused(f"{_name(missing)} is missing; the Logon must carry the "
                               f"signature in 95/96")
        at = order.index(tags.RAW_DATA_LENGTH)
        if at + 1 >= len(order) or order[at + 1] != tags.RAW_DATA:
            raise LogonRefused(f"{_name(tags.RAW_DATA_LENGTH)} must immediately precede "
                               f"{_name(tags.RAW_DATA)}")
        if length != b"%d" % len(signature):
            raise LogonRefused(f"{_name(tags.RAW_DATA_LENGTH)} is {_show(length)} but "
                               f"{_name(tags.RAW_DATA)} is {len(signature)} bytes long")
        payload = b"\x01".join((sending_time, tags.MT_LOGON, seq_text, sender or b"", target))
        if not verify_signature(public_key, payload, signature):
            raise LogonRefused("signature verification failed")

        if key in venue.live:
            raise LogonRefused("already exists")
        next_out = 1
        if not reset:
            expected, next_out = venue.seqs.get((key, self.endpoint), (1, 1))
            if seq < expected:
                raise LogonRefused(f"MsgSeqNum too low, expecting {expected} but received {seq}")
            if seq > expected:
                raise LogonRefused(f"MsgSeqNum too high on Logon, 141=Y required: expecting "
                                   f"{expected} but received {seq}")
        return _Logon(key, seq, heartbeat, reset, next_out)

    # ----- logged-on session --------------------------------------------------------------

    def _on_message(self, raw: bytes, msg_type: bytes, now: float) -> None:
        self.received += 1
        count = self.received
        rules = self.venue.rules
        if rules.drop_after_messages is not None and count >= rules.drop_after_messages:
            self._drop(count)
            if not rules.answer_dropped_message:
                return  # the message is not answered
        if rules.silent_after_messages is not None and count >= rules.silent_after_messages \
                and not self.silent:
            LOG.info("connection %d: fault: silent after %d messages", self.conn_id, count)
            self.silent = True

        seq_text = header_value(raw, tags.MSG_SEQ_NUM)
        if seq_text is None or not seq_text.isdigit():
            self._logout(f"{_name(tags.MSG_SEQ_NUM)} missing or invalid: {_show(seq_text)}")
            return
        seq = int(seq_text)
        if seq != self.next_in:
            if seq < self.next_in:
                if b"\x0143=Y\x01" in raw:
                    return  # a possible duplicate already seen: FIX says ignore it
                self._logout(f"MsgSeqNum too low, expecting {self.next_in} but received {seq}")
            else:
                self._logout(f"MsgSeqNum too high, expecting {self.next_in} but received "
                             f"{seq}; the simulator does not resend, log on again with 141=Y")
            return
        self.next_in = seq + 1
        if self.sender_field not in raw or self.target_field not in raw:
            self._logout(f"CompID problem: expected 49={self.api_key} and 56={self.endpoint}")
            return

        if msg_type == tags.MT_HEARTBEAT:
            pass
        elif msg_type == tags.MT_TEST_REQUEST:
            test_req_id = header_value(raw, tags.TEST_REQ_ID)
            if test_req_id is None:
                self._reject(seq, msg_type, 1, "Required tag missing", ref_tag=tags.TEST_REQ_ID)
            else:
                self._send(tags.MT_HEARTBEAT, [(tags.TEST_REQ_ID, test_req_id)])
        elif msg_type in (tags.MT_NEW_ORDER_SINGLE, b"F"):
            self._order(raw, msg_type, seq, now)
        elif msg_type == b"U1" and self.endpoint == "KalshiDC":
            self._event_resend(raw, seq)
        elif msg_type == tags.MT_LOGOUT:
            self._send(tags.MT_LOGOUT, ())
            self._end("peer logged out", linger=True)
            return
        elif msg_type == tags.MT_LOGON:
            self._logout("Logon (35=A) received on a session already logged on")
            return
        elif msg_type in (tags.MT_RESEND_REQUEST, tags.MT_SEQUENCE_RESET):
            self._reject(seq, msg_type, 11,
                         "ResendRequest and SequenceReset are not supported by the simulator")
        elif msg_type == tags.MT_REJECT:
            LOG.info("connection %d: peer rejected a message: %s", self.conn_id, render(raw))
        else:
            self._send(tags.MT_BUSINESS_REJECT, [
                (tags.REF_SEQ_NUM, seq), (tags.REF_MSG_TYPE, msg_type),
                (tags.BUSINESS_REJECT_REASON, 3), (tags.TEXT, "Unsupported message type"),
            ])
        if rules.logout_after_messages is not None and count == rules.logout_after_messages:
            self._logout(f"sim: logout after {count} messages",
                         answer_by=now + LOGOUT_TIMEOUT_S)

    def _order(self, raw: bytes, msg_type: bytes, seq: int, now: float) -> None:
        """NewOrderSingle or OrderCancelRequest: the account answers with a report."""
        fields = dict(iter_fields(raw))
        if 11 not in fields:
            self._reject(seq, msg_type, 1, "Required tag missing", ref_tag=11)
            return
        account, key, stamp = self.venue.account, self.api_key or "", self.venue.stamp()
        body = account.new_order(key, fields, now, stamp) \
            if msg_type == tags.MT_NEW_ORDER_SINGLE else account.cancel(key, fields, stamp)
        self._send(tags.MT_EXECUTION_REPORT, body, stamp)

    def _event_resend(self, raw: bytes, seq: int) -> None:
        """EventResendRequest (35=U1): the replay then U2, or U3 alone."""
        fields = dict(iter_fields(raw))
        if 21001 not in fields:
            self._reject(seq, b"U1", 1, "Required tag missing", ref_tag=21001)
            return
        self.replays += 1
        for msg_type, body in self.venue.account.event_resend(fields, seq, self.replays):
            self._send(msg_type, body)
