"""The session relay in a thread of its own, as production runs it: real socket pairs, its
``poll`` loop, the wake-up pipe, and a clock the test moves by hand.

Each test plays both peers with blocking sockets (bounded by a socket timeout) and records
what the relay reports to the control plane.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import pytest
from support.relay_pair import (
    API_KEY,
    HEART_BT_INT,
    PEER_TIMEOUT,
    ManualClock,
    Peer,
    RecordingControl,
    open_relay_pair,
)

from fixproxy.fix import tags
from fixproxy.fix.codec import encode, utc_timestamp
from fixproxy.proxy.handover import RelayResult
from fixproxy.proxy.legs import MAX_PENDING_BYTES
from fixproxy.proxy.relay import SessionRelay
from fixproxy.session.machine import State

SILENCE: Final = 2 * HEART_BT_INT + 5.0
HELD_BACK: Final = 0.5
"""Seconds an engine's window stays full before the test calls it held back."""


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
    clock = ManualClock()
    control = RecordingControl()
    pair = open_relay_pair(clock, control)
    relay = pair.relay
    results: list[RelayResult] = []
    thread = threading.Thread(target=lambda: results.append(relay.run()), daemon=True)
    thread.start()
    h = Harness(relay, pair.engine, pair.gateway, clock, control, thread, results,
                pair.proxy_ends)
    try:
        yield h
    finally:
        relay.abort()
        thread.join(PEER_TIMEOUT)
        pair.close()


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


def assert_ended(peer: Peer) -> None:
    """Nothing but the end of the stream comes (a reset too: fixproxy's end of a test pair is
    closed with input unread, which admission's drain would have read)."""
    try:
        end = peer.receive()
    except ConnectionResetError:
        return
    assert end is None, f"unexpected {end}"


def _break_reads(relay: SessionRelay, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in fixproxy")

    monkeypatch.setattr(relay, "_read", broken)


def test_an_internal_fault_tells_both_peers_and_ends_only_this_session(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    log_on(harness)
    _break_reads(harness.relay, monkeypatch)
    harness.engine.send(b"D", (11, "trigger"))
    downstream = harness.engine.receive()
    assert downstream is not None and downstream.msg_type == tags.MT_LOGOUT
    assert downstream.get(tags.MSG_SEQ_NUM) == b"2"  # after the gateway's Logon answer
    assert "internal error" in (downstream.get_str(tags.TEXT) or "")
    upstream = harness.gateway.receive()
    assert upstream is not None and upstream.msg_type == tags.MT_LOGOUT
    assert upstream.get(tags.MSG_SEQ_NUM) == b"2"  # after the signed Logon
    assert (upstream.get_str(tags.TEXT) or "").startswith("internal error in fixproxy")
    result = harness.finish()
    assert_ended(harness.engine)
    assert_ended(harness.gateway)
    assert isinstance(result.crashed, RuntimeError)
    assert result.end_cause == ("proxy", "internal_error")
    assert ("logon_failed", None) not in harness.control.calls


def test_an_internal_fault_before_the_logon_answer_holds_the_next_logon(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    logon = harness.gateway.receive()
    assert logon is not None and logon.msg_type == tags.MT_LOGON
    _break_reads(harness.relay, monkeypatch)
    harness.gateway.send(tags.MT_LOGON, (98, 0), (108, HEART_BT_INT), (141, "Y"))
    downstream = harness.engine.receive()
    assert downstream is not None and downstream.msg_type == tags.MT_LOGOUT
    result = harness.finish()
    assert_ended(harness.gateway)  # never logged on: the close says it all
    assert not result.logged_on and isinstance(result.crashed, RuntimeError)
    assert harness.control.calls == [("logon_failed", None)]


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


def test_an_engine_held_off_by_a_stopped_gateway_is_not_the_one_blamed(
        harness: Harness) -> None:
    log_on(harness)
    harness.engine.sock.setblocking(False)
    order = encode([(35, "D"), (49, API_KEY), (56, "KalshiNR"), (34, 2),
                    (52, utc_timestamp()), (58, "x" * 1000)])
    view = memoryview(order * 64)
    for _ in range(100_000):
        _, writable, _ = select.select([], [harness.engine.sock], [], HELD_BACK)
        if not writable:
            break
        try:
            harness.engine.sock.send(view)
        except BlockingIOError:
            continue
    else:
        pytest.fail("the engine was never held back")
    harness.engine.sock.settimeout(PEER_TIMEOUT)
    # The gateway's last word comes after fixproxy stopped reading the engine, so the engine
    # is the side fixproxy heard from longest ago; but it is held off, not silent.
    harness.clock.now += 10
    beat = harness.gateway.send(tags.MT_HEARTBEAT)
    relayed = harness.engine.receive()
    assert relayed is not None and relayed.encode() == beat
    harness.clock.now += SILENCE - 5
    harness.relay.check_timers()
    downstream = harness.engine.receive()
    assert downstream is not None and downstream.msg_type == tags.MT_LOGOUT
    assert "gateway sent nothing" in (downstream.get_str(tags.TEXT) or "")
    # The session is over (the relay only waits, bounded, to close a gateway that reads
    # nothing; the fixture aborts that wait).
    assert harness.relay.machine.state is State.CLOSED
    assert harness.relay.machine.close_reason == "gateway_silent"


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
