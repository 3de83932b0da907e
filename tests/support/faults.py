"""Tools for the fault matrix (docs/faults.md): peers that misbehave on purpose, and probes.

Two harnesses run fixproxy against a peer that fails:

* :func:`e2e_support.open_proxy_pair` for everything that needs real sockets and real TLS (a
  gateway that resets, a handshake that fails, a listener flooded with connections);
* :func:`open_memory_proxy` for everything timed: the relay and the strict simulator
  (:meth:`~fixproxy.sim.gateway.SimGateway.handle_stream`) in one process, joined by local
  socket pairs with no TLS, the relay driven from trio, so a test runs on the autojump clock
  and sixty seconds of silence take no real time.

Gateways that are not gateways (:func:`open_fake_gateway`, :func:`full_backlog_listener`) stand
for a port that closes, speaks something else, or never finishes the handshake. An
:class:`EndlessEngine` feeds the relay bytes forever and counts what it read, so a test can
state the most a hostile engine makes fixproxy read and hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import trio
import trio.testing
from prometheus_client import CollectorRegistry

from fixproxy.config.model import TLSPolicy
from fixproxy.fix import tags
from fixproxy.fix.codec import FieldValue, FixMessage, encode, utc_timestamp
from fixproxy.fix.framer import FixFramer
from fixproxy.kalshi import ENDPOINTS
from fixproxy.net.tls import HandshakeInfo
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.admit import relay_engine_connection
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.runtime import SessionRuntime
from fixproxy.signing import LogonSigner, load_private_key
from fixproxy.sim.certs import SimCertificates
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimConfig, SimFaults, SimGateway
from support.e2e import LOOPBACK, E2EMaterial, ProxyPair
from support.relay import drive_in_trio, socket_stream_pair

MEMORY_SESSION: Final = "faults"
ENDPOINT: Final = "KalshiNR"
HANDSHAKE: Final = HandshakeInfo(
    tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", handshake_seconds=0.01,
    connect_seconds=0.005, leaf_subject="CN=localhost",
    leaf_not_after=datetime(2031, 1, 1, tzinfo=UTC), presented_pins=())
"""What the memory harness reports for its (imaginary) TLS handshake."""


def fd_count() -> int:
    """Open file descriptors of this process (the proxy, the simulator and the test share it)."""
    return len(os.listdir("/proc/self/fd"))


def logon_fields(*, heart_bt_int: int = 30) -> list[tuple[int, FieldValue]]:
    """The body of an unsigned engine Logon, as a legacy engine writes it."""
    return [(tags.ENCRYPT_METHOD, 0), (tags.HEART_BT_INT, heart_bt_int),
            (tags.DEFAULT_APPL_VER_ID, 9)]


def text_of(message: FixMessage) -> str:
    """The Text (58) of a message, empty when absent."""
    return message.get_str(tags.TEXT) or ""


async def log_on(pair: ProxyPair) -> ScriptedEngine:
    """Connect an engine through the pair and log it on; fails unless the gateway accepts."""
    engine = await pair.connect_engine()
    answer = await engine.logon()
    assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
    return engine


async def wait_for_sample(pair: ProxyPair, expected: float, name: str, **labels: str) -> None:
    """Wait until a metric of the pair's session reaches ``expected``: the relay counts some
    things in its teardown, after the peers have seen the close. Bounded by the pair's
    ``fail_after``."""
    while pair.sample(name, **labels) != expected:
        await trio.testing.wait_all_tasks_blocked(0.01)


async def read_to_close(engine: ScriptedEngine) -> list[FixMessage]:
    """Every message the engine receives until the connection closes."""
    messages = []
    while (message := await engine.receive()) is not None:
        messages.append(message)
    return messages


def sent_raw(engine: ScriptedEngine, msg_type: bytes) -> list[bytes]:
    """The raw messages of ``msg_type`` the engine sent, in order."""
    return [raw for direction, raw in engine.transcript
            if direction == "sent" and FixMessage.parse(raw).msg_type == msg_type]


def received_raw(engine: ScriptedEngine, msg_type: bytes | None = None) -> list[bytes]:
    """The raw messages (of ``msg_type``, or all) the engine received, in order."""
    return [raw for direction, raw in engine.transcript
            if direction == "received"
            and (msg_type is None or FixMessage.parse(raw).msg_type == msg_type)]


def client_hello() -> bytes:
    """The first flight of a real TLS client: a ClientHello, as a TLS engine would send it."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --- the memory harness ---------------------------------------------------------------------


@dataclass(slots=True)
class MemoryProxy:
    """fixproxy's relay and the simulator in one process; see :func:`open_memory_proxy`."""

    sim: SimGateway
    runtime: SessionRuntime
    nursery: trio.Nursery
    gateway_connects: list[float] = field(default_factory=list)
    """Times (trio clock) the relay opened the upstream."""

    @property
    def metrics(self) -> Metrics:
        return self.runtime.metrics

    @property
    def manager(self) -> SessionManager:
        return self.runtime.manager

    @property
    def api_key(self) -> str:
        return self.runtime.config.api_key

    def start_relay(self, proxy_end: trio.abc.Stream,
                    runtime: SessionRuntime | None = None) -> trio.Event:
        """Serve ``proxy_end`` as an accepted engine connection (with ``runtime``, by default
        the harness's); the event is set when the relay returns."""
        done = trio.Event()

        async def run() -> None:
            await relay_engine_connection(proxy_end, runtime or self.runtime)
            done.set()

        self.nursery.start_soon(run)
        return done

    def connect_engine(self, *, first_seq: int = 1, engine_end_wrapper: StreamWrapper | None
                       = None) -> tuple[ScriptedEngine, trio.Event]:
        """A scripted engine on a new connection, and the event set when its relay returns.

        ``engine_end_wrapper`` wraps the engine's end of the connection (to stop its reads);
        the connection's buffers are then small, so a stopped engine fills its window soon.
        """
        engine_end: trio.abc.Stream
        proxy_end, engine_end = socket_stream_pair(
            buffer_size=None if engine_end_wrapper is None else STALL_BUFFER)
        if engine_end_wrapper is not None:
            engine_end = engine_end_wrapper(engine_end)
        done = self.start_relay(proxy_end)
        engine = ScriptedEngine(engine_end, sender=self.api_key, target=ENDPOINT,
                                first_seq=first_seq)
        return engine, done

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"session": MEMORY_SESSION,
                                                             **labels})

    def sim_in(self, msg_type: bytes) -> list[bytes]:
        """Raw messages of ``msg_type`` the simulator received, in order."""
        return [event.raw for event in self.sim.events
                if event.direction == "in" and event.msg_type == msg_type]


StreamWrapper = Callable[[trio.abc.Stream], trio.abc.Stream]


@asynccontextmanager
async def open_memory_proxy(material: E2EMaterial, *, faults: SimFaults | None = None,
                            manager: SessionManager | None = None,
                            session_overrides: Mapping[str, Any] | None = None,
                            gateway_wrapper: StreamWrapper | None = None,
                            ) -> AsyncIterator[MemoryProxy]:
    """The relay of one KalshiNR session and a strict simulator, joined by local socket pairs,
    the relay driven from trio (:func:`support.relay.drive_in_trio`).

    ``gateway_wrapper`` wraps the simulator's end of each gateway connection (to stop its
    reads; the buffers are then small). The caller bounds the
    block with ``trio.fail_after`` (in virtual time under the autojump clock); leaving it
    cancels every relay and simulator connection still running.
    """
    sim = SimGateway(SimConfig(ports={ENDPOINT: 0}, keys={material.api_key: material.public_key},
                               faults=faults or SimFaults()),
                     ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    config = material.session_config(name=MEMORY_SESSION, endpoint=ENDPOINTS[ENDPOINT],
                                     host=LOOPBACK, port=1, **dict(session_overrides or {}))
    async with trio.open_nursery() as nursery:
        connects: list[float] = []

        async def connect() -> tuple[trio.abc.Stream, HandshakeInfo]:
            connects.append(trio.current_time())
            sim_end: trio.abc.Stream
            proxy_end, sim_end = socket_stream_pair(
                buffer_size=None if gateway_wrapper is None else STALL_BUFFER)
            if gateway_wrapper is not None:
                sim_end = gateway_wrapper(sim_end)
            nursery.start_soon(sim.handle_stream, sim_end, ENDPOINT)
            return proxy_end, HANDSHAKE

        runtime = SessionRuntime(
            config=config, policy=config.logon_policy(),
            sign=LogonSigner(load_private_key(material.private_key)), connect=connect,
            metrics=Metrics(CollectorRegistry()),
            manager=manager if manager is not None else SessionManager(),
            run_relay=drive_in_trio)
        runtime.metrics.declare_session(MEMORY_SESSION)
        proxy = MemoryProxy(sim=sim, runtime=runtime, nursery=nursery, gateway_connects=connects)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()


STALL_BUFFER: Final = 4096
"""Kernel buffer size of a connection whose peer may stop reading: a few orders fill it."""


class StallableStream(trio.abc.HalfCloseableStream):
    """A peer's end of a connection whose reads can be made to stop: a peer that hangs, so
    what fixproxy writes to it piles up in a window that fills. Writes pass through; a
    stalled read waits until cancelled."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.stalled = False
        self.stalled_reads = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.stalled:
            self.stalled_reads += 1
            await trio.sleep_forever()
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        if isinstance(self.inner, trio.abc.HalfCloseableStream):
            await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class GatewayByHand:
    """A gateway the test plays itself, for answers the simulator never gives.

    Pass :meth:`connect` as a runtime's ``connect``; it serves one connection.
    """

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.framer = FixFramer()
        self.next_seq = 1
        self.connects = 0
        self._stream: trio.abc.Stream | None = None
        self._connected = trio.Event()

    async def connect(self) -> tuple[trio.abc.Stream, HandshakeInfo]:
        self.connects += 1
        proxy_end, peer = socket_stream_pair()
        self._stream = peer
        self._connected.set()
        return proxy_end, HANDSHAKE

    async def _peer(self) -> trio.abc.Stream:
        await self._connected.wait()
        assert self._stream is not None
        return self._stream

    async def receive_raw(self) -> bytes | None:
        """The next frame fixproxy sent upstream; None once it closed the connection."""
        stream = await self._peer()
        while (frame := self.framer.next_message()) is None:
            if self.framer.at_eof:
                return None
            self.framer.receive_data(await stream.receive_some(65536))
        return frame.raw

    async def receive(self) -> FixMessage:
        raw = await self.receive_raw()
        assert raw is not None, "fixproxy closed the gateway connection"
        return FixMessage.parse(raw)

    async def close_after_logon(self) -> None:
        """Read the Logon, then close without a word."""
        assert (await self.receive()).msg_type == tags.MT_LOGON
        await (await self._peer()).aclose()

    async def send(self, msg_type: bytes,
                   fields: Sequence[tuple[int, FieldValue]] = ()) -> bytes:
        """Send a message with the gateway's header and next MsgSeqNum; returns its bytes."""
        raw = encode([(tags.MSG_TYPE, msg_type), (tags.SENDER_COMP_ID, ENDPOINT),
                      (tags.TARGET_COMP_ID, self.api_key), (tags.MSG_SEQ_NUM, self.next_seq),
                      (tags.SENDING_TIME, utc_timestamp()), *fields])
        self.next_seq += 1
        await (await self._peer()).send_all(raw)
        return raw


class EndlessEngine(trio.abc.HalfCloseableStream):
    """The proxy's end of an engine connection that sends ``prefix`` and then ``filler`` forever.

    Every read is answered at once (after a checkpoint) with at most ``chunk`` bytes, so the
    relay can only stop reading by deciding to. What the proxy writes is kept in
    :attr:`written`; :attr:`served_before_answer` is how much the proxy had read when it wrote
    its first byte, i.e. how much it needed to see before refusing.
    """

    def __init__(self, prefix: bytes, filler: bytes, *, chunk: int = 65536) -> None:
        self._pending = memoryview(prefix)
        self._filler = (filler * (chunk // len(filler) + 1))[:chunk]
        self.chunk = chunk
        self.served = 0
        self.served_before_answer: int | None = None
        self.written = bytearray()
        self.eof_received = False
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError("closed")
        size = min(max_bytes or self.chunk, self.chunk)
        if self._pending:
            data = bytes(self._pending[:size])
            self._pending = self._pending[size:]
        else:
            data = self._filler if size == len(self._filler) else self._filler[:size]
        self.served += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError("closed")
        if self.served_before_answer is None:
            self.served_before_answer = self.served
        self.written += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self.eof_received = True

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


# --- gateways that are not gateways ----------------------------------------------------------

FakeBehaviour = Literal["close", "not_tls", "stall"]


@dataclass(slots=True)
class FakeGateway:
    """A TCP listener standing where the gateway should be; records what reached it."""

    address: tuple[str, int]
    behaviour: FakeBehaviour
    received: list[bytearray] = field(default_factory=list)
    """Bytes received, per accepted connection, in accept order."""
    ended: int = 0
    """Connections that have ended."""
    _changed: trio.Event = field(default_factory=trio.Event)

    async def wait_ended(self, count: int) -> None:
        while self.ended < count:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        data = bytearray()
        self.received.append(data)
        self._notify()
        try:
            # The whole first TLS record (the ClientHello) is read before anything else, so a
            # close never finds unread input (which would turn it into a reset).
            while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            if self.behaviour == "close":
                return
            if self.behaviour == "not_tls":
                await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                return
            while chunk := await stream.receive_some(65536):
                data += chunk  # stall: read and discard, never answer, until the client leaves
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self.ended += 1
            self._notify()


@asynccontextmanager
async def open_fake_gateway(behaviour: FakeBehaviour) -> AsyncIterator[FakeGateway]:
    """Listen on a free loopback port. Each behaviour reads the client's first TLS record,
    then: ``close`` closes, ``not_tls`` answers with an HTTP error and closes, ``stall``
    reads on and never answers."""
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    sockname = listeners[0].socket.getsockname()
    fake = FakeGateway((str(sockname[0]), int(sockname[1])), behaviour)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, fake.handle, listeners)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()


@contextlib.contextmanager
def full_backlog_listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port whose accept queue is full: listen(0), never accept, one connection queued.

    Linux then drops further SYNs, so a client's connect neither succeeds nor fails: exactly
    a gateway too busy to accept. Yields the port and the queued client sockets.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind((LOOPBACK, 0))
        server.listen(0)
        port = int(server.getsockname()[1])
        queued = socket.create_connection((LOOPBACK, port), timeout=5)
        try:
            yield port, [queued]
        finally:
            queued.close()


def pin_only(material: E2EMaterial) -> TLSPolicy:
    """``verify = "pin"`` with the material's leaf pin: no CA, no hostname, only the pin."""
    return TLSPolicy(server_name=material.certs.hostname, verify="pin", ca_file=None,
                     pins=(material.certs.leaf_pin,), pinned_cert=None)


def serving(material: E2EMaterial, certs: SimCertificates) -> E2EMaterial:
    """The same keys, with the simulator presenting ``certs`` instead of the material's own."""
    return dataclasses.replace(material, certs=certs)
