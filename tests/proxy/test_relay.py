"""The session relay in a thread of its own, as production runs it: real socket pairs, its
``poll`` loop, the wake-up pipe, and a clock the test moves by hand.

Each test plays both peers with blocking sockets (bounded by a socket timeout) and records
what the relay reports to the control plane.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import pytest

from fixproxy.fix import tags
from fixproxy.fix.codec import FieldValue, FixMessage, encode, utc_timestamp
from fixproxy.fix.framer import FixFramer
from fixproxy.ops.metrics import TrafficCounters
from fixproxy.proxy.handover import RelayResult
from fixproxy.proxy.legs import MAX_PENDING_BYTES
from fixproxy.proxy.relay import SessionRelay
from fixproxy.session.machine import Event, SessionMachine, State

API_KEY: Final = "3c9e1f0a-7b2d-4e6f-8a1c-5d0b9e2f4a7c"
HEART_BT_INT: Final = 30
SILENCE: Final = 2 * HEART_BT_INT + 5.0
PEER_TIMEOUT: Final = 20.0
"""Seconds a test peer waits for a byte before the test fails."""
T0: Final = 1000.0
HELD_BACK: Final = 0.5
"""Seconds an engine's window stays full before the test calls it held back."""


class ManualClock:
    """The relay's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class RecordingControl:
    """The control plane's side, as a list of what the relay told it."""

    calls: list[tuple[str, object]] = field(default_factory=list)

    def logon_answered(self, accepted: bool, text: str, seconds: float) -> None:
        self.calls.append(("logon_answered", accepted))

    def logon_failed(self, result: str | None) -> None:
        self.calls.append(("logon_failed", result))

    def error(self, text: str) -> None:
        self.calls.append(("error", text))

    def skew(self, source: str, seconds: float) -> None:
        self.calls.append(("skew", source))


class Peer:
    """One side's far end: a blocking socket with a framer."""

    def __init__(self, sock: socket.socket, sender: str, target: str) -> None:
        sock.settimeout(PEER_TIMEOUT)
        self.sock = sock
        self.framer = FixFramer()
        self.sender, self.target = sender, target
        self.seq = 0

    def send(self, msg_type: bytes, *fields: tuple[int, FieldValue]) -> bytes:
        self.seq += 1
        raw = encode([(35, msg_type), (49, self.sender), (56, self.target), (34, self.seq),
                      (52, utc_timestamp()), *fields])
        self.sock.sendall(raw)
        return raw

    def receive(self) -> FixMessage | None:
        """The next message, or None at the end of the stream."""
        while (frame := self.framer.next_message()) is None:
            if self.framer.at_eof:
                return None
            self.framer.receive_data(self.sock.recv(65536))
        return FixMessage.parse(frame.raw)


@dataclass
class Harness:
    relay: SessionRelay
    engine: Peer
    gateway: Peer
    clock: ManualClock
    control: RecordingControl
    thread: threading.Thread
    results: list[RelayResult]
    proxy_ends: tuple[socket.socket, socket.socket]

    def finish(self) -> RelayResult:
        """Wait for the relay's thread; then close fixproxy's ends, as admission does."""
        self.thread.join(PEER_TIMEOUT)
        assert not self.thread.is_alive(), "the relay thread did not end"
        for sock in self.proxy_ends:
            sock.close()
        return self.results[0]


@pytest.fixture
def harness() -> Iterator[Harness]:
    proxy_engine, engine_end = socket.socketpair()
    proxy_gateway, gateway_end = socket.socketpair()
    for sock in (proxy_engine, proxy_gateway):
        sock.setblocking(False)
    clock = ManualClock()
    machine = SessionMachine(now=clock(), heart_bt_int=HEART_BT_INT)
    machine.engine_activity(clock(), 1)  # as admission does: the Logon was the engine's 34=1
    machine.handle(Event.TLS_READY, clock())
    control = RecordingControl()
    logon = encode([(35, "A"), (49, API_KEY), (56, "KalshiNR"), (34, 1),
                    (52, utc_timestamp()), (98, 0), (108, HEART_BT_INT), (141, "Y")])
    relay = SessionRelay(
        engine=proxy_engine, gateway=proxy_gateway, logon=logon, engine_framer=FixFramer(),
        machine=machine, translator=None, reset_forced=False, journal=None,
        to_gateway=TrafficCounters(), to_engine=TrafficCounters(), control=control,
        log=logging.LoggerAdapter(logging.getLogger("fixproxy.relay"), {}), conn_id=1,
        gateway_ids=(API_KEY.encode(), b"KalshiNR"), engine_ids=(b"KalshiNR", API_KEY.encode()),
        logon_received=0.0, clock=clock)
    results: list[RelayResult] = []
    thread = threading.Thread(target=lambda: results.append(relay.run()), daemon=True)
    thread.start()
    h = Harness(relay, Peer(engine_end, API_KEY, "KalshiNR"),
                Peer(gateway_end, "KalshiNR", API_KEY), clock, control, thread, results,
                (proxy_engine, proxy_gateway))
    try:
        yield h
    finally:
        relay.abort()
        thread.join(PEER_TIMEOUT)
        relay.close()
        for sock in (proxy_engine, proxy_gateway, engine_end, gateway_end):
            sock.close()


def log_on(h: Harness) -> None:
    logon = h.gateway.receive()
    assert logon is not None and logon.msg_type == tags.MT_LOGON
    h.gateway.send(tags.MT_LOGON, (98, 0), (108, HEART_BT_INT), (141, "Y"))
    answer = h.engine.receive()
    assert answer is not None and answer.msg_type == tags.MT_LOGON
    h.engine.seq = 1  # the engine's Logon was the one fixproxy signed


def test_relays_both_ways_byte_for_byte(harness: Harness) -> None:
    log_on(harness)
    for number in range(50):
        order = harness.engine.send(b"D", (11, f"order-{number}"), (55, "HIGHNY-23DEC31"))
        got = harness.gateway.receive()
        assert got is not None and got.encode() == order
        report = harness.gateway.send(b"8", (11, f"order-{number}"), (150, 0))
        echoed = harness.engine.receive()
        assert echoed is not None and echoed.encode() == report
    assert ("logon_answered", True) in harness.control.calls
    assert harness.relay.to_gateway.messages[b"D"] == 50
    assert harness.relay.to_engine.messages[b"8"] == 50
    assert harness.relay.to_engine.latency.total >= 50


def test_shutdown_logs_out_both_sides_and_ends_the_thread(harness: Harness) -> None:
    log_on(harness)
    harness.relay.shutdown()
    upstream = harness.gateway.receive()
    assert upstream is not None and upstream.msg_type == tags.MT_LOGOUT
    assert upstream.get(tags.MSG_SEQ_NUM) == b"2"  # after the engine's Logon
    harness.gateway.send(tags.MT_LOGOUT)
    downstream = harness.engine.receive()
    assert downstream is not None and downstream.msg_type == tags.MT_LOGOUT
    assert (downstream.get_str(tags.TEXT) or "") == "fixproxy: fixproxy is shutting down"
    result = harness.finish()
    assert harness.engine.receive() is None  # then the close
    assert result.logged_on
    assert result.end_cause == ("proxy", "shutdown")


def test_gateway_silence_on_the_injected_clock(harness: Harness) -> None:
    log_on(harness)
    harness.clock.now += SILENCE + 1
    harness.relay.check_timers()
    downstream = harness.engine.receive()
    assert downstream is not None and downstream.msg_type == tags.MT_LOGOUT
    assert "sent nothing" in (downstream.get_str(tags.TEXT) or "")
    upstream = harness.gateway.receive()
    assert upstream is not None and upstream.msg_type == tags.MT_LOGOUT
    assert harness.finish().end_cause == ("proxy", "heartbeat_timeout")
    assert harness.relay.machine.state is State.CLOSED


def test_abort_ends_the_thread_at_once(harness: Harness) -> None:
    log_on(harness)
    harness.relay.abort()
    assert harness.finish().logged_on


def test_an_internal_fault_tells_the_engine_and_ends_only_this_session(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    log_on(harness)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in fixproxy")

    monkeypatch.setattr(harness.relay, "_relay_chunk", broken)
    harness.engine.send(b"D", (11, "trigger"))
    downstream = harness.engine.receive()
    assert downstream is not None and downstream.msg_type == tags.MT_LOGOUT
    assert "internal error" in (downstream.get_str(tags.TEXT) or "")
    result = harness.finish()
    assert isinstance(result.crashed, RuntimeError)
    assert result.end_cause == ("proxy", "internal_error")


def test_a_gateway_that_stops_reading_stops_the_engine_being_read(harness: Harness) -> None:
    log_on(harness)
    # The gateway reads nothing more; the engine writes until its own window is full.
    harness.engine.sock.setblocking(False)
    order = encode([(35, "D"), (49, API_KEY), (56, "KalshiNR"), (34, 2),
                    (52, utc_timestamp()), (58, "x" * 1000)])
    sent = 0
    view = memoryview(order * 64)
    for _ in range(100_000):
        # Held back: the window stays full for a while, because fixproxy stopped reading.
        _, writable, _ = select.select([], [harness.engine.sock], [], HELD_BACK)
        if not writable:
            break
        try:
            sent += harness.engine.sock.send(view)
        except BlockingIOError:
            continue
    else:
        pytest.fail("the engine was never held back")
    # What fixproxy holds for the gateway stays within its bound plus one read.
    assert len(harness.relay.gateway.pending) <= MAX_PENDING_BYTES + 65536 + len(order)
    assert sent > MAX_PENDING_BYTES


def test_the_first_gateway_message_answers_the_logon_even_after_an_engine_logout(
        harness: Harness) -> None:
    logon = harness.gateway.receive()
    assert logon is not None and logon.msg_type == tags.MT_LOGON
    harness.engine.seq = 1
    harness.engine.send(tags.MT_LOGOUT)  # gives up before the answer
    upstream = harness.gateway.receive()
    assert upstream is not None and upstream.msg_type == tags.MT_LOGOUT
    harness.gateway.send(tags.MT_LOGON, (98, 0), (108, HEART_BT_INT))
    harness.gateway.send(tags.MT_LOGOUT)
    for expected in (tags.MT_LOGON, tags.MT_LOGOUT):
        message = harness.engine.receive()
        assert message is not None and message.msg_type == expected
    result = harness.finish()
    assert ("logon_answered", True) in harness.control.calls
    assert result.logged_on
    assert result.end_cause == ("engine", "normal")
