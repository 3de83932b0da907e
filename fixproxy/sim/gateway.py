"""A strict simulation of Kalshi's FIX gateway, for the demo, the tests and the benchmark.

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

Each connection is one trio task running a single loop: receive with a deadline, feed the
strict :class:`~fixproxy.fix.framer.FixFramer`, let the synchronous handlers append answers to an
outbox, send the outbox in one write. The deadline is the earliest of the heartbeat, TestRequest
and dead-peer timers, so no second task and no send lock are needed. Only messages whose fields
matter are parsed (the Logon, TestRequest, orders); heartbeats and the sequence check read the
raw bytes, because the benchmark drives this loop hard.

Faults (:class:`SimFaults`) let tests provoke what the real gateway does on a bad day: drop the
TCP connection, go silent, log out, refuse every Logon. A drop can take each form a connection
really ends in (``drop_style``): a bare TCP close, a TLS close_notify first, a TCP reset, or an
answer cut off in the middle, because a proxy must tell its engine the same story for each.

The alternative rejected was to reuse the proxy's own session code: a simulator sharing the
proxy's understanding of FIX would agree with its bugs instead of catching them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Literal

import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from fixproxy.errors import ConfigError, FramingError, LogonRefused
from fixproxy.fix import tags
from fixproxy.fix.codec import (
    FieldValue,
    SendingTimeClock,
    encode,
    header_value,
    iter_fields,
    render,
)
from fixproxy.fix.framer import FixFramer, Frame
from fixproxy.kalshi import ENDPOINTS
from fixproxy.signing import load_public_key, verify_signature
from fixproxy.sim.venue import (
    _ACTIVE,
    _AWAIT_LOGON,
    _CANCEL_ECHO,
    _LOGON_UNIQUE,
    _LOGOUT_SENT,
    _ORDER_ECHO,
    LOGON_TIMEOUT_S,
    LOGOUT_TIMEOUT_S,
    MAX_SENDING_TIME_SKEW_S,
    RESET_REQUIRED_ENDPOINTS,
    TEST_REQUEST_GRACE,
    _Logon,
    _name,
    _sending_time,
    _show,
)

LOG: Final = logging.getLogger("fixproxy.sim")

HANDSHAKE_TIMEOUT_S: Final = 10.0
SEND_TIMEOUT_S: Final = 10.0
"""A peer that stops reading for this long is dropped, so a send never blocks forever."""
LINGER_S: Final = 2.0
"""After a Logout, how long to wait for the peer to close before closing anyway. Closing a TCP
socket with unread input sends a reset, which can destroy the Logout still in the peer's
buffer; half-closing first and draining avoids that."""
RECEIVE_SIZE: Final = 65536
MAX_EVENTS: Final = 100_000
"""Events kept for inspection; older ones are discarded (counts are kept regardless)."""

Direction = Literal["in", "out"]
DropStyle = Literal["close", "close_notify", "reset", "truncate"]
DROP_STYLES: Final[tuple[DropStyle, ...]] = ("close", "close_notify", "reset", "truncate")


def _check_count(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"must be 0 or more, got {value}", key=f"faults.{name}")


@dataclass(frozen=True, slots=True)
class SimFaults:
    """Misbehaviour to inject; message counts start after the Logon and include heartbeats.

    ``drop_after_messages`` and ``silent_after_messages`` take effect on the N-th message before
    it is answered; ``logout_after_messages`` answers the N-th message, then logs out. With 0
    they take effect right after the Logon answer.
    """

    drop_after_messages: int | None = None
    """Close the TCP connection abruptly, with no Logout, on the N-th message."""
    silent_after_messages: int | None = None
    """From the N-th message on send nothing at all, heartbeats included, but keep reading."""
    logout_after_messages: int | None = None
    """After the N-th message send ``Logout 58=sim: logout after N messages``."""
    refuse_logon_text: str | None = None
    """Answer every Logon with a Logout carrying this Text (58)."""
    drop_style: DropStyle = "close"
    """How ``drop_after_messages`` ends the connection. ``close``: close TCP (a FIN) without a
    TLS close_notify; ``close_notify``: send a TLS close_notify, then close; ``reset``: a TCP
    reset (SO_LINGER 0), which also discards whatever the simulator had not yet sent;
    ``truncate``: answer the N-th message, but send only the first half of the answer's bytes
    (recorded in :attr:`SimGateway.events` as sent in full), then close."""

    def __post_init__(self) -> None:
        _check_count("drop_after_messages", self.drop_after_messages)
        if self.drop_style not in DROP_STYLES:
            raise ConfigError(f"must be one of {', '.join(DROP_STYLES)}, got "
                              f"{self.drop_style!r}", key="faults.drop_style")
        _check_count("silent_after_messages", self.silent_after_messages)
        _check_count("logout_after_messages", self.logout_after_messages)
        if self.refuse_logon_text is not None and (
                not self.refuse_logon_text or "\x01" in self.refuse_logon_text):
            raise ConfigError("must be non-empty text without SOH",
                              key="faults.refuse_logon_text")


def _all_endpoints() -> dict[str, int]:
    return dict.fromkeys(ENDPOINTS, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """What the simulated gateway listens on and whom it lets in."""

    keys: Mapping[str, RSAPublicKey]
    """Registered API keys and their public keys."""
    host: str = "127.0.0.1"
    ports: Mapping[str, int] = field(default_factory=_all_endpoints)
    """TargetCompID -> port (0: any free port); every endpoint by default."""
    max_skew: float = MAX_SENDING_TIME_SKEW_S
    """Largest accepted distance of a Logon's SendingTime (52) from the clock, in seconds."""
    faults: SimFaults = field(default_factory=SimFaults)
    reset_required: frozenset[str] = RESET_REQUIRED_ENDPOINTS
    """Endpoints that demand 141=Y on every Logon."""
    max_events: int = MAX_EVENTS

    def __post_init__(self) -> None:
        if not self.ports:
            raise ConfigError("at least one endpoint is needed", key="ports")
        for endpoint, port in self.ports.items():
            if endpoint not in ENDPOINTS:
                raise ConfigError(f"unknown endpoint {endpoint!r}; expected one of "
                                  f"{', '.join(ENDPOINTS)}", key="ports")
            if not 0 <= port <= 65535:
                raise ConfigError(f"port {port} is out of range", key=f"ports.{endpoint}")
        unknown = self.reset_required - ENDPOINTS.keys()
        if unknown:
            raise ConfigError(f"unknown endpoints {sorted(unknown)}", key="reset_required")
        if not self.max_skew > 0:
            raise ConfigError(f"must be positive, got {self.max_skew}", key="max_skew")
        if self.max_events < 0:
            raise ConfigError(f"must be 0 or more, got {self.max_events}", key="max_events")


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One message the simulator received or sent."""

    conn_id: int
    api_key: str | None
    """The API key of the session, or before a successful Logon the SenderCompID it claimed."""
    endpoint: str
    direction: Direction
    raw: bytes
    msg_type: bytes




class _Conn:
    """The state of one connection; changed only by the synchronous handlers."""

    __slots__ = (
        "api_key", "claimed_key", "conn_id", "done", "dropped", "endpoint", "endpoint_b",
        "heart_bt_int", "key_b", "last_received", "last_sent", "linger", "logout_deadline",
        "next_in", "next_out", "outbox", "reason", "received", "sender_field", "silent",
        "state", "target_field", "test_req_at", "test_req_id",
    )

    def __init__(self, conn_id: int, endpoint: str, now: float) -> None:
        self.conn_id = conn_id
        self.endpoint = endpoint
        self.endpoint_b = endpoint.encode()
        self.state = _AWAIT_LOGON
        self.api_key: str | None = None
        self.claimed_key: str | None = None
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
        self.silent = False
        self.outbox: list[bytes] = []
        self.done = False
        self.linger = False
        self.reason = ""
        self.dropped: DropStyle | None = None
        """Set when the drop fault fired: how the connection is to end."""




async def _close_gracefully(stream: trio.abc.Stream) -> None:
    transport: trio.abc.Stream = (
        stream.transport_stream if isinstance(stream, trio.SSLStream) else stream)
    try:
        if isinstance(transport, trio.SocketStream):
            with trio.move_on_after(LINGER_S):
                await transport.send_eof()
                while await transport.receive_some(RECEIVE_SIZE):
                    pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def _drop_reason(count: int, style: DropStyle) -> str:
    return f"fault: dropped after {count} messages" + ("" if style == "close" else f" ({style})")


def _tcp_of(stream: trio.abc.Stream) -> trio.SocketStream | None:
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    return transport if isinstance(transport, trio.SocketStream) else None


async def _close_dropped(stream: trio.abc.Stream, style: DropStyle) -> None:
    """End a connection the way the drop fault asks (see :attr:`SimFaults.drop_style`)."""
    tcp = _tcp_of(stream)
    if style == "reset" and tcp is not None:
        # Linger on with a zero timeout: close() sends RST and drops unsent data.
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif style == "close_notify" and isinstance(stream, trio.SSLStream):
        # unwrap() sends close_notify, then waits for the peer's (which most clients never
        # send; they just close): bounded, and whatever it ends in, TCP is closed below.
        transport = stream.transport_stream
        with trio.move_on_after(LINGER_S), contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.unwrap()
        await trio.aclose_forcefully(transport)
    await trio.aclose_forcefully(stream)


class SimGateway:
    """The simulated gateway: serves every configured endpoint until cancelled.

    Inspection for tests: :attr:`events` (what was received and sent), :attr:`last_logon`
    (the Logon last received per SenderCompID, signature included), :attr:`closed` (connection
    id -> why it ended), :attr:`live_sessions`, and the ``wait_*`` methods.
    """

    def __init__(self, config: SimConfig, ssl_context: ssl.SSLContext) -> None:
        """Create the gateway; nothing listens until :meth:`serve`.

        Args:
            config: endpoints, registered keys, clock tolerance and faults.
            ssl_context: the server side of TLS (e.g.
                :meth:`fixproxy.sim.certs.SimCertificates.server_context`).
        """
        self.config = config
        self.ssl_context = ssl_context
        self.events: deque[SimEvent] = deque(maxlen=config.max_events)
        self.last_logon: dict[str, bytes] = {}
        self.closed: dict[int, str] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self._counts: dict[tuple[Direction, bytes], int] = {}
        self._live: dict[str, _Conn] = {}
        self._seqs: dict[tuple[str, str], tuple[int, int]] = {}
        self._conn_ids = itertools.count(1)
        self._order_ids = itertools.count(1)
        self._exec_ids = itertools.count(1)
        self._test_ids = itertools.count(1)
        self._changed: trio.Event | None = None
        self._stamp = SendingTimeClock()

    # ----- inspection ---------------------------------------------------------------------

    @property
    def live_sessions(self) -> dict[str, str]:
        """API key -> endpoint of every logged-on session."""
        return {key: conn.endpoint for key, conn in self._live.items()}

    def message_count(self, msg_type: bytes | str, direction: Direction = "in") -> int:
        """How many messages of ``msg_type`` were received (or sent) so far."""
        kind = msg_type.encode() if isinstance(msg_type, str) else msg_type
        return self._counts.get((direction, kind), 0)

    async def wait_for(self, predicate: Callable[[Sequence[SimEvent]], bool]) -> None:
        """Return once ``predicate(events)`` is true; it is re-checked after every change."""
        while not predicate(self.events):
            await self._wait_change()
        await trio.lowlevel.checkpoint()

    async def wait_for_messages(self, msg_type: bytes | str, count: int = 1, *,
                                direction: Direction = "in") -> None:
        """Return once at least ``count`` messages of ``msg_type`` went in (or out)."""
        while self.message_count(msg_type, direction) < count:
            await self._wait_change()
        await trio.lowlevel.checkpoint()

    async def wait_closed(self, conn_id: int) -> str:
        """Wait until connection ``conn_id`` has ended; returns why it ended."""
        while conn_id not in self.closed:
            await self._wait_change()
        await trio.lowlevel.checkpoint()
        return self.closed[conn_id]

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _record(self, conn: _Conn, direction: Direction, raw: bytes, msg_type: bytes) -> None:
        self.events.append(SimEvent(conn.conn_id, conn.api_key or conn.claimed_key,
                                    conn.endpoint, direction, raw, msg_type))
        counter = (direction, msg_type)
        self._counts[counter] = self._counts.get(counter, 0) + 1
        if self._changed is not None:
            self._notify()

    # ----- I/O ----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[dict[str, tuple[str, int]]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on every configured endpoint until cancelled.

        Reports ``{TargetCompID: (host, port)}`` of the bound listeners through
        ``task_status.started``.

        Raises:
            ConfigError: a port cannot be bound.
        """
        listeners: dict[str, trio.SocketListener] = {}
        try:
            for endpoint, port in self.config.ports.items():
                listeners[endpoint] = await self._listen(endpoint, port)
        except BaseException:
            for listener in listeners.values():
                await trio.aclose_forcefully(listener)
            raise
        addresses = {endpoint: (str(listener.socket.getsockname()[0]),
                                int(listener.socket.getsockname()[1]))
                     for endpoint, listener in listeners.items()}
        self.addresses = addresses
        async with trio.open_nursery() as nursery:
            for endpoint, listener in listeners.items():
                nursery.start_soon(trio.serve_listeners, partial(self._serve_tls, endpoint),
                                   [listener])
            LOG.info("simulated gateway listening: %s", ", ".join(
                f"{endpoint} {host}:{port}" for endpoint, (host, port) in addresses.items()))
            task_status.started(dict(addresses))

    async def _listen(self, endpoint: str, port: int) -> trio.SocketListener:
        try:
            found = await trio.open_tcp_listeners(port, host=self.config.host)
        except OSError as exc:
            raise ConfigError(
                f"the simulator cannot listen on {self.config.host}:{port} for {endpoint}: "
                f"{exc.strerror or exc}", key=f"ports.{endpoint}") from exc
        # A name that resolves to several addresses would get a different free port on each;
        # one listener per endpoint keeps the reported address the only one.
        for extra in found[1:]:
            await extra.aclose()
        return found[0]

    async def _serve_tls(self, endpoint: str, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.ssl_context, server_side=True,
                                https_compatible=True)
        handshaken = False
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            try:
                await stream.do_handshake()
                handshaken = True
            except trio.BrokenResourceError as exc:
                LOG.info("TLS handshake on %s failed: %s", endpoint, exc.__cause__ or exc)
        if not handshaken:
            await trio.aclose_forcefully(tcp)
            return
        await self.handle_stream(stream, endpoint)

    async def handle_stream(self, stream: trio.abc.Stream, endpoint: str) -> None:
        """Serve one connection (already through TLS) as ``endpoint``; closes the stream.

        ``serve`` calls this per accepted connection; tests may call it with memory streams.
        """
        if endpoint not in ENDPOINTS:
            raise ConfigError(f"unknown endpoint {endpoint!r}", key="endpoint")
        conn = _Conn(next(self._conn_ids), endpoint, trio.current_time())
        LOG.debug("connection %d opened on %s", conn.conn_id, endpoint)
        try:
            await self._converse(conn, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(conn, f"transport failed: {exc.__cause__ or exc}", linger=False)
        finally:
            self._forget(conn)
            if conn.linger:
                await _close_gracefully(stream)
            elif conn.dropped is not None:
                await _close_dropped(stream, conn.dropped)
            else:
                await trio.aclose_forcefully(stream)

    async def _converse(self, conn: _Conn, stream: trio.abc.Stream) -> None:
        framer = FixFramer()
        while not conn.done:
            data: bytes | bytearray | None = None
            with trio.move_on_at(self._deadline(conn)):
                data = await stream.receive_some(RECEIVE_SIZE)
            now = trio.current_time()
            if data is None:
                self._on_timer(conn, now)
            elif not data:
                self._end(conn, "peer closed the connection" + (
                    f" inside a message ({framer.buffered} bytes)" if framer.buffered else ""),
                    linger=False)
            else:
                conn.last_received = now
                conn.test_req_id = None
                try:
                    framer.receive_data(data)
                    while not conn.done and conn.dropped is None:
                        frame = framer.next_message()
                        if frame is None:
                            break
                        self._on_frame(conn, frame, now)
                except FramingError as exc:
                    LOG.info("connection %d: invalid FIX: %s", conn.conn_id, exc)
                    self._logout(conn, f"invalid FIX message: {exc}")
            if conn.outbox:
                out = b"".join(conn.outbox)
                conn.outbox.clear()
                if conn.dropped == "truncate":
                    out = out[: len(out) // 2]
                with trio.move_on_after(SEND_TIMEOUT_S) as scope:
                    await stream.send_all(out)
                if scope.cancelled_caught:
                    self._end(conn, "peer stopped reading", linger=False)
                conn.last_sent = trio.current_time()
            if conn.dropped == "truncate":
                self._end(conn, _drop_reason(conn.received, "truncate"), linger=False)

    def _forget(self, conn: _Conn) -> None:
        if conn.api_key is not None and self._live.get(conn.api_key) is conn:
            del self._live[conn.api_key]
            self._seqs[(conn.api_key, conn.endpoint)] = (conn.next_in, conn.next_out)
        reason = conn.reason or "closed"
        self.closed[conn.conn_id] = reason
        LOG.info("connection %d (%s on %s) ended: %s", conn.conn_id,
                 conn.api_key or conn.claimed_key or "no Logon", conn.endpoint, reason)
        self._notify()

    # ----- protocol (synchronous) ---------------------------------------------------------

    def _end(self, conn: _Conn, reason: str, *, linger: bool) -> None:
        if not conn.done:
            conn.done = True
            conn.linger = linger
            conn.reason = reason

    def _drop(self, conn: _Conn, count: int) -> None:
        """The drop fault fires on the ``count``-th message (0: right after the Logon)."""
        style = self.config.faults.drop_style
        if conn.done or conn.dropped is not None:
            return
        conn.dropped = style
        if style != "truncate":  # a truncated answer is written first; _converse ends it
            self._end(conn, _drop_reason(count, style), linger=False)

    def _send(self, conn: _Conn, msg_type: bytes, body: Iterable[tuple[int, FieldValue]],
              stamp: bytes | None = None) -> None:
        if conn.silent:
            return
        raw = encode([
            (tags.MSG_TYPE, msg_type),
            (tags.SENDER_COMP_ID, conn.endpoint_b),
            (tags.TARGET_COMP_ID, conn.key_b),
            (tags.MSG_SEQ_NUM, conn.next_out),
            (tags.SENDING_TIME, stamp or self._stamp()),
            *body,
        ])
        conn.next_out += 1
        conn.outbox.append(raw)
        self._record(conn, "out", raw, msg_type)
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("connection %d out: %s", conn.conn_id, render(raw))

    def _logout(self, conn: _Conn, text: str, *, wait_answer: bool = False) -> None:
        """Send a Logout; close now, or once the peer answers it."""
        self._send(conn, tags.MT_LOGOUT, [(tags.TEXT, text)])
        if wait_answer:
            conn.state = _LOGOUT_SENT
            conn.logout_deadline = trio.current_time() + LOGOUT_TIMEOUT_S
        else:
            self._end(conn, f"sent Logout: {text}", linger=True)

    def _reject(self, conn: _Conn, ref_seq: int, ref_type: bytes, reason: int, text: str, *,
                ref_tag: int | None = None) -> None:
        body: list[tuple[int, FieldValue]] = [(tags.REF_SEQ_NUM, ref_seq)]
        if ref_tag is not None:
            body.append((371, ref_tag))
        body += [(tags.REF_MSG_TYPE, ref_type), (tags.SESSION_REJECT_REASON, reason),
                 (tags.TEXT, text)]
        self._send(conn, tags.MT_REJECT, body)

    def _deadlines(self, conn: _Conn) -> tuple[float, float]:
        """(receive deadline, send deadline) of a logged-on session."""
        interval = conn.heart_bt_int
        if conn.test_req_id is not None:
            receive = conn.test_req_at + interval
        else:
            receive = conn.last_received + interval * (1 + TEST_REQUEST_GRACE)
        send = math.inf if conn.silent else conn.last_sent + interval
        return receive, send

    def _deadline(self, conn: _Conn) -> float:
        if conn.state == _ACTIVE:
            return min(self._deadlines(conn))
        return conn.logout_deadline

    def _on_timer(self, conn: _Conn, now: float) -> None:
        if conn.state != _ACTIVE:
            if now >= conn.logout_deadline:
                self._end(conn, "no Logon received in time" if conn.state == _AWAIT_LOGON
                          else "the peer did not answer our Logout", linger=False)
            return
        receive, send = self._deadlines(conn)
        if now >= receive:
            if conn.test_req_id is not None:
                self._logout(conn, f"no message received for {now - conn.last_received:.0f} s "
                                   f"and the TestRequest went unanswered")
                return
            conn.test_req_id = b"SIM-TEST-%d" % next(self._test_ids)
            conn.test_req_at = now
            self._send(conn, tags.MT_TEST_REQUEST, [(tags.TEST_REQ_ID, conn.test_req_id)])
        elif now >= send:
            self._send(conn, tags.MT_HEARTBEAT, ())

    def _on_frame(self, conn: _Conn, frame: Frame, now: float) -> None:
        raw, msg_type = frame
        state = conn.state
        if state == _AWAIT_LOGON:
            claimed = header_value(raw, tags.SENDER_COMP_ID)
            if claimed:
                conn.claimed_key = claimed.decode("ascii", "replace")
                conn.key_b = claimed
        self._record(conn, "in", raw, msg_type)
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("connection %d in: %s", conn.conn_id, render(raw))
        if state == _ACTIVE:
            self._on_message(conn, raw, msg_type)
        elif state == _AWAIT_LOGON:
            self._on_logon(conn, raw, msg_type, now)
        elif msg_type == tags.MT_LOGOUT:
            self._end(conn, "logged out at the simulator's request", linger=True)

    # ----- Logon --------------------------------------------------------------------------

    def _on_logon(self, conn: _Conn, raw: bytes, msg_type: bytes, now: float) -> None:
        try:
            logon = self._admit(conn, raw, msg_type)
        except LogonRefused as refused:
            LOG.info("connection %d: Logon on %s refused: %s", conn.conn_id, conn.endpoint,
                     refused.text)
            self._logout(conn, refused.text)
            return
        conn.state = _ACTIVE
        conn.api_key = logon.key
        conn.sender_field = b"\x0149=" + conn.key_b + b"\x01"
        conn.heart_bt_int = float(int(logon.heart_bt_int))
        conn.next_in = logon.seq + 1
        conn.next_out = logon.next_out
        conn.last_received = now
        self._live[logon.key] = conn
        body: list[tuple[int, FieldValue]] = [(tags.ENCRYPT_METHOD, b"0"),
                                              (tags.HEART_BT_INT, logon.heart_bt_int)]
        if logon.reset:
            body.append((tags.RESET_SEQ_NUM_FLAG, b"Y"))
        body.append((tags.DEFAULT_APPL_VER_ID, b"9"))
        self._send(conn, tags.MT_LOGON, body)
        LOG.info("connection %d: %s logged on to %s (HeartBtInt %s, %s)", conn.conn_id,
                 logon.key, conn.endpoint, logon.heart_bt_int.decode(),
                 "reset" if logon.reset else f"continuing at {logon.seq}")
        faults = self.config.faults
        if faults.drop_after_messages == 0:
            self._drop(conn, 0)
        if faults.silent_after_messages == 0:
            conn.silent = True
        if faults.logout_after_messages == 0 and not conn.done:
            self._logout(conn, "sim: logout after 0 messages", wait_answer=True)

    def _admit(self, conn: _Conn, raw: bytes, msg_type: bytes) -> _Logon:
        """Apply every Logon rule; raises LogonRefused with the Text to send."""
        if msg_type != tags.MT_LOGON:
            raise LogonRefused(f"the first message must be a Logon (35=A), got "
                               f"35={msg_type.decode('ascii', 'replace')}")
        if conn.claimed_key is not None:
            self.last_logon[conn.claimed_key] = raw
        if self.config.faults.refuse_logon_text is not None:
            raise LogonRefused(self.config.faults.refuse_logon_text)
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
        public_key = self.config.keys.get(key)
        if public_key is None:
            raise LogonRefused(f"CompID problem: {_name(tags.SENDER_COMP_ID)} {_show(sender)} "
                               f"is not a registered API key")
        target = values.get(tags.TARGET_COMP_ID)
        if target != conn.endpoint_b:
            raise LogonRefused(f"CompID problem: {_name(tags.TARGET_COMP_ID)} is "
                               f"{_show(target)} but this port serves {conn.endpoint}")

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
        if not reset and conn.endpoint in self.config.reset_required:
            raise LogonRefused(f"141=Y required: {conn.endpoint} has no retransmission, so "
                               f"ResetSeqNumFlag (141) must be Y on every Logon")
        if reset and seq != 1:
            raise LogonRefused(f"{_name(tags.MSG_SEQ_NUM)} must be 1 with ResetSeqNumFlag "
                               f"(141) Y, got {seq}")

        sending_time = values.get(tags.SENDING_TIME)
        stamp = _sending_time(sending_time) if sending_time is not None else None
        if sending_time is None or stamp is None:
            raise LogonRefused(f"{_name(tags.SENDING_TIME)} must be a UTC timestamp "
                               f"YYYYMMDD-HH:MM:SS.sss, got {_show(sending_time)}")
        skew = stamp - time.time()
        if abs(skew) > self.config.max_skew:
            raise LogonRefused(
                f"SendingTime accuracy problem: {_name(tags.SENDING_TIME)} "
                f"{sending_time.decode()} is {skew:+.1f} s from the gateway's clock (limit "
                f"{self.config.max_skew:g} s)")

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

        if key in self._live:
            raise LogonRefused("already exists")
        next_out = 1
        if not reset:
            expected, next_out = self._seqs.get((key, conn.endpoint), (1, 1))
            if seq < expected:
                raise LogonRefused(f"MsgSeqNum too low, expecting {expected} but received {seq}")
            if seq > expected:
                raise LogonRefused(f"MsgSeqNum too high on Logon, 141=Y required: expecting "
                                   f"{expected} but received {seq}")
        return _Logon(key, seq, heartbeat, reset, next_out)

    # ----- logged-on session --------------------------------------------------------------

    def _on_message(self, conn: _Conn, raw: bytes, msg_type: bytes) -> None:
        conn.received += 1
        count = conn.received
        faults = self.config.faults
        if faults.drop_after_messages is not None and count >= faults.drop_after_messages:
            self._drop(conn, count)
            if faults.drop_style != "truncate":
                return  # the message is not answered
        if faults.silent_after_messages is not None and count >= faults.silent_after_messages \
                and not conn.silent:
            LOG.info("connection %d: fault: silent after %d messages", conn.conn_id, count)
            conn.silent = True

        seq_text = header_value(raw, tags.MSG_SEQ_NUM)
        if seq_text is None or not seq_text.isdigit():
            self._logout(conn, f"{_name(tags.MSG_SEQ_NUM)} missing or invalid: "
                               f"{_show(seq_text)}")
            return
        seq = int(seq_text)
        if seq != conn.next_in:
            if seq < conn.next_in:
                if b"\x0143=Y\x01" in raw:
                    return  # a possible duplicate already seen: FIX says ignore it
                self._logout(conn, f"MsgSeqNum too low, expecting {conn.next_in} but received "
                                   f"{seq}")
            else:
                self._logout(conn, f"MsgSeqNum too high, expecting {conn.next_in} but received "
                                   f"{seq}; the simulator does not resend, log on again with "
                                   f"141=Y")
            return
        conn.next_in = seq + 1
        if conn.sender_field not in raw or conn.target_field not in raw:
            self._logout(conn, f"CompID problem: expected 49={conn.api_key} and "
                               f"56={conn.endpoint}")
            return

        if msg_type == tags.MT_HEARTBEAT:
            pass
        elif msg_type == tags.MT_TEST_REQUEST:
            test_req_id = header_value(raw, tags.TEST_REQ_ID)
            if test_req_id is None:
                self._reject(conn, seq, msg_type, 1, "Required tag missing",
                             ref_tag=tags.TEST_REQ_ID)
            else:
                self._send(conn, tags.MT_HEARTBEAT, [(tags.TEST_REQ_ID, test_req_id)])
        elif msg_type == tags.MT_NEW_ORDER_SINGLE:
            self._new_order(conn, raw, seq)
        elif msg_type == b"F":
            self._cancel_order(conn, raw, seq)
        elif msg_type == tags.MT_LOGOUT:
            self._send(conn, tags.MT_LOGOUT, ())
            self._end(conn, "peer logged out", linger=True)
            return
        elif msg_type == tags.MT_LOGON:
            self._logout(conn, "Logon (35=A) received on a session already logged on")
            return
        elif msg_type in (tags.MT_RESEND_REQUEST, tags.MT_SEQUENCE_RESET):
            self._reject(conn, seq, msg_type, 11,
                         "ResendRequest and SequenceReset are not supported by the simulator")
        elif msg_type == tags.MT_REJECT:
            LOG.info("connection %d: peer rejected a message: %s", conn.conn_id, render(raw))
        else:
            self._send(conn, tags.MT_BUSINESS_REJECT, [
                (tags.REF_SEQ_NUM, seq), (tags.REF_MSG_TYPE, msg_type),
                (tags.BUSINESS_REJECT_REASON, 3), (tags.TEXT, "Unsupported message type"),
            ])
        if faults.logout_after_messages is not None and count == faults.logout_after_messages:
            self._logout(conn, f"sim: logout after {count} messages", wait_answer=True)

    def _new_order(self, conn: _Conn, raw: bytes, seq: int) -> None:
        order = dict(iter_fields(raw))
        cl_ord_id = order.get(11)
        if cl_ord_id is None:
            self._reject(conn, seq, tags.MT_NEW_ORDER_SINGLE, 1, "Required tag missing",
                         ref_tag=11)
            return
        stamp = self._stamp()
        body: list[tuple[int, FieldValue]] = [
            (37, b"SIM-%d" % next(self._order_ids)), (11, cl_ord_id),
            (17, b"SIM-E-%d" % next(self._exec_ids)), (150, b"0"), (39, b"0"),
        ]
        body += [(tag, order[tag]) for tag in _ORDER_ECHO if tag in order]
        body += [(14, b"0"), (151, order.get(38, b"0")), (6, b"0"), (60, stamp)]
        self._send(conn, tags.MT_EXECUTION_REPORT, body, stamp)

    def _cancel_order(self, conn: _Conn, raw: bytes, seq: int) -> None:
        request = dict(iter_fields(raw))
        cl_ord_id = request.get(11)
        if cl_ord_id is None:
            self._reject(conn, seq, b"F", 1, "Required tag missing",
                         ref_tag=11)
            return
        stamp = self._stamp()
        body: list[tuple[int, FieldValue]] = [
            (37, request.get(37) or b"SIM-%d" % next(self._order_ids)), (11, cl_ord_id),
            (17, b"SIM-E-%d" % next(self._exec_ids)), (150, b"4"), (39, b"4"),
        ]
        body += [(tag, request[tag]) for tag in _CANCEL_ECHO if tag in request]
        body += [(14, b"0"), (151, b"0"), (6, b"0"), (60, stamp)]
        self._send(conn, tags.MT_EXECUTION_REPORT, body, stamp)


def load_sim_keys(specs: Iterable[str]) -> dict[str, RSAPublicKey]:
    """Parse ``APIKEY=path.pem`` specifications into registered keys for :class:`SimConfig`.

    Raises:
        ConfigError: a specification is malformed or names a key twice.
        SigningError: a file is not a PEM RSA public key.
    """
    keys: dict[str, RSAPublicKey] = {}
    for spec in specs:
        api_key, sep, path = spec.partition("=")
        api_key = api_key.strip()
        path = path.strip()
        if not sep or not api_key or not path:
            raise ConfigError(f"expected APIKEY=path/to/public.pem, got {spec!r}", key="keys")
        if api_key in keys:
            raise ConfigError(f"API key {api_key!r} is given twice", key="keys")
        keys[api_key] = load_public_key(Path(path))
    return keys
