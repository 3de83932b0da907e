"""A strict simulation of Kalshi's FIX gateway, for the demo, the tests and the benchmark.

Theory of operation
-------------------
The rules of the venue (the Logon checks, sequence numbers, the answers) live in
:mod:`fixproxy.sim.venue`, without I/O; this module serves them. It listens on one port per
endpoint, completes the TLS handshake and hands each connection to a
:class:`~fixproxy.sim.venue.VenueSession`.

Each connection is one trio task running a single loop: receive with a deadline, feed the
strict :class:`~fixproxy.fix.framer.FixFramer`, pass each message to the session, send the
answers it returns in one write. The deadline is the session's (the earliest of the heartbeat,
TestRequest and dead-peer timers), so no second task and no send lock are needed.

Faults (:class:`SimFaults`) let tests provoke what the real gateway does on a bad day: drop the
TCP connection, go silent, log out, refuse every Logon. The venue decides when a fault fires; a
drop can take each form a connection really ends in (``drop_style``): a bare TCP close, a TLS
close_notify first, a TCP reset, or an answer cut off in the middle, because a proxy must tell
its engine the same story for each.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Literal

import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from fixproxy.errors import ConfigError, FramingError
from fixproxy.fix.framer import FixFramer
from fixproxy.kalshi import ENDPOINTS
from fixproxy.signing import load_public_key
from fixproxy.sim.venue import (
    MAX_SENDING_TIME_SKEW_S,
    RESET_REQUIRED_ENDPOINTS,
    Answer,
    Venue,
    VenueRules,
    VenueSession,
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
    fill_after: float | None = None
    """Rest every new order and fill it this many seconds later, connected or not."""
    exchange_indexes: int = 1
    """Exchange indexes orders are spread over by symbol, each with its own ExecIDs."""
    replay_allowlisted: bool = True
    """The account may replay through KalshiDC (False: every EventResendRequest gets 21004=5)."""
    replay_server_error: bool = False
    """Answer every EventResendRequest with 21004=2."""

    def __post_init__(self) -> None:
        if self.fill_after is not None and not self.fill_after >= 0:
            raise ConfigError(f"must be 0 or more, got {self.fill_after}", key="fill_after")
        if not 1 <= self.exchange_indexes <= 16:
            raise ConfigError(f"must be 1..16, got {self.exchange_indexes}",
                              key="exchange_indexes")
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
        faults = config.faults
        self.venue = Venue(VenueRules(
            keys=config.keys, max_skew=config.max_skew, reset_required=config.reset_required,
            refuse_logon_text=faults.refuse_logon_text,
            drop_after_messages=faults.drop_after_messages,
            answer_dropped_message=faults.drop_style == "truncate",
            silent_after_messages=faults.silent_after_messages,
            logout_after_messages=faults.logout_after_messages,
            fill_after=config.fill_after, exchange_indexes=config.exchange_indexes,
            replay_allowlisted=config.replay_allowlisted,
            replay_server_error=config.replay_server_error))
        self._streams: dict[int, tuple[VenueSession, trio.abc.Stream]] = {}
        self.events: deque[SimEvent] = deque(maxlen=config.max_events)
        self.closed: dict[int, str] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self._counts: dict[tuple[Direction, bytes], int] = {}
        self._conn_ids = itertools.count(1)
        self._changed: trio.Event | None = None

    # ----- inspection ---------------------------------------------------------------------

    @property
    def last_logon(self) -> dict[str, bytes]:
        """SenderCompID -> the Logon last received from it, signature included."""
        return self.venue.last_logon

    @property
    def live_sessions(self) -> dict[str, str]:
        """API key -> endpoint of every logged-on session."""
        return {key: session.endpoint for key, session in self.venue.live.items()}

    async def drop(self, api_key: str) -> bool:
        """Drop the live connection of ``api_key`` at once, as a gateway that loses it would
        (a bare close: no Logout, no TLS close_notify); False if it has none."""
        for session, stream in list(self._streams.values()):
            if session.api_key == api_key and self.venue.live.get(api_key) is session:
                session.close("dropped at the test's request")
                tcp = _tcp_of(stream)
                await trio.aclose_forcefully(tcp if tcp is not None else stream)
                return True
        return False

    def set_replay_allowlisted(self, allowlisted: bool) -> None:
        """Switch the account's drop-copy allowlisting (tests of 21004=5)."""
        self.venue.account.allowlisted = allowlisted

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

    def _record(self, session: VenueSession, direction: Direction, raw: bytes, msg_type: bytes,
                api_key: str | None) -> None:
        self.events.append(SimEvent(session.conn_id, api_key, session.endpoint, direction, raw,
                                    msg_type))
        counter = (direction, msg_type)
        self._counts[counter] = self._counts.get(counter, 0) + 1
        if self._changed is not None:
            self._notify()

    def _queue(self, session: VenueSession, answers: list[Answer], outbox: list[bytes]) -> None:
        """Record the session's answers and queue their bytes for the next write."""
        api_key = session.api_key or session.claimed_key
        for raw, msg_type in answers:
            outbox.append(raw)
            self._record(session, "out", raw, msg_type, api_key)

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
        session = self.venue.open_session(next(self._conn_ids), endpoint, trio.current_time())
        LOG.debug("connection %d opened on %s", session.conn_id, endpoint)
        self._streams[session.conn_id] = (session, stream)
        try:
            await self._converse(session, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            session.close(f"transport failed: {exc.__cause__ or exc}")
        finally:
            self._streams.pop(session.conn_id, None)
            self._forget(session)
            if session.ending is not None and session.ending.linger:
                await _close_gracefully(stream)
            elif session.dropped_after is not None:
                await _close_dropped(stream, self.config.faults.drop_style)
            else:
                await trio.aclose_forcefully(stream)

    async def _converse(self, session: VenueSession, stream: trio.abc.Stream) -> None:
        framer = FixFramer()
        style = self.config.faults.drop_style
        truncate = style == "truncate"  # the dropped message is answered, in part
        outbox: list[bytes] = []
        while session.ending is None:
            data: bytes | bytearray | None = None
            with trio.move_on_at(session.deadline()):
                data = await stream.receive_some(RECEIVE_SIZE)
            now = trio.current_time()
            if data is None:
                self._queue(session, session.on_timer(now), outbox)
            elif not data:
                session.close("peer closed the connection" + (
                    f" inside a message ({framer.buffered} bytes)" if framer.buffered else ""))
            else:
                session.note_received(now)
                try:
                    framer.receive_data(data)
                    while session.ending is None and session.dropped_after is None:
                        frame = framer.next_message()
                        if frame is None:
                            break
                        answers = session.receive(frame, now)
                        self._record(session, "in", frame.raw, frame.msg_type, session.sender)
                        self._queue(session, answers, outbox)
                except FramingError as exc:
                    self._queue(session, session.framing_failed(exc), outbox)
            dropped = session.dropped_after
            if dropped is not None and not truncate:
                session.close(_drop_reason(dropped, style))
            if outbox:
                out = b"".join(outbox)
                outbox.clear()
                if dropped is not None and truncate:
                    out = out[: len(out) // 2]
                with trio.move_on_after(SEND_TIMEOUT_S) as scope:
                    await stream.send_all(out)
                if scope.cancelled_caught:
                    session.close("peer stopped reading")
                session.note_sent(trio.current_time())
            if dropped is not None and truncate:
                session.close(_drop_reason(dropped, "truncate"))

    def _forget(self, session: VenueSession) -> None:
        session.release()
        reason = session.ending.reason if session.ending is not None else "closed"
        self.closed[session.conn_id] = reason
        LOG.info("connection %d (%s on %s) ended: %s", session.conn_id,
                 session.api_key or session.claimed_key or "no Logon", session.endpoint, reason)
        self._notify()


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
