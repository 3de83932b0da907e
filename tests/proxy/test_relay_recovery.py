"""The session relay's recovery hooks, in a thread of its own over socket pairs: the Logon
answer held until the replay is in, the recovered reports right after it, live traffic
renumbered after them, a live repeat of a recovered report held back without a gap, the
cursor and ClOrdIDs tracked, and the state handed over when asked."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import pytest

from fixproxy.fix import tags
from fixproxy.fix.codec import FieldValue, FixMessage, encode, utc_timestamp
from fixproxy.fix.framer import FixFramer
from fixproxy.ops.metrics import TrafficCounters
from fixproxy.proxy.handover import RelayResult
from fixproxy.proxy.relay import SessionRelay
from fixproxy.session.machine import Event, SessionMachine
from fixproxy.session.recovery import (
    Cursor,
    ExecId,
    RecoveryState,
    RecoveryTracker,
    parse_exec_id,
)
from fixproxy.session.sequence import SequenceTranslator

API_KEY: Final = "3c9e1f0a-7b2d-4e6f-8a1c-5d0b9e2f4a7c"
PEER_TIMEOUT: Final = 20.0
CURSOR: Final = ExecId(0, 10, 1)


def dc_report(exec_id: bytes, cl_ord_id: bytes = b"mine") -> bytes:
    return encode([(35, b"8"), (49, b"KalshiDC"), (56, b"dc-key"), (34, 3),
                   (52, b"20270115-07:59:00.000"), (37, b"SIM-1"), (11, cl_ord_id),
                   (17, exec_id), (150, b"F"), (39, b"2")])


@dataclass
class RecordingPlane:
    """The control plane's recovery side: hands out ``kept``, records what it was given."""

    kept: tuple[tuple[ExecId, bytes], ...]
    asked: list[RecoveryState] = field(default_factory=list)
    saved: list[RecoveryState] = field(default_factory=list)
    saved_event: threading.Event = field(default_factory=threading.Event)

    def recover(self, state: RecoveryState) -> tuple[tuple[ExecId, bytes], ...]:
        self.asked.append(state)
        return self.kept

    def save(self, state: RecoveryState) -> None:
        self.saved.append(state)
        self.saved_event.set()


@dataclass
class Control:
    calls: list[str] = field(default_factory=list)

    def logon_answered(self, accepted: bool, text: str, seconds: float) -> None:
        self.calls.append("logon_answered")

    def logon_failed(self, result: str | None) -> None:
        self.calls.append("logon_failed")

    def error(self, text: str) -> None:
        self.calls.append("error")

    def skew(self, source: str, seconds: float) -> None:
        pass


class Peer:
    def __init__(self, sock: socket.socket, sender: str, target: str) -> None:
        sock.settimeout(PEER_TIMEOUT)
        self.sock, self.framer, self.sender, self.target, self.seq = \
            sock, FixFramer(), sender, target, 0

    def send(self, msg_type: bytes, *fields: tuple[int, FieldValue]) -> bytes:
        self.seq += 1
        raw = encode([(35, msg_type), (49, self.sender), (56, self.target), (34, self.seq),
                      (52, utc_timestamp()), *fields])
        self.sock.sendall(raw)
        return raw

    def receive(self) -> FixMessage:
        while (frame := self.framer.next_message()) is None:
            assert not self.framer.at_eof, "the relay closed the connection"
            self.framer.receive_data(self.sock.recv(65536))
        return FixMessage.parse(frame.raw)


@dataclass
class Harness:
    relay: SessionRelay
    engine: Peer
    gateway: Peer
    plane: RecordingPlane
    tracker: RecoveryTracker
    results: list[RelayResult]


@pytest.fixture(params=[0, 41], ids=["engine_resets", "engine_keeps_numbers"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A relay whose drop copy hands back two fills; the engine either reset or expects the
    gateway's 42nd message next (the translation recovery must extend)."""
    in_offset: int = request.param
    proxy_engine, engine_end = socket.socketpair()
    proxy_gateway, gateway_end = socket.socketpair()
    for sock in (proxy_engine, proxy_gateway):
        sock.setblocking(False)
    machine = SessionMachine(now=1000.0, heart_bt_int=30)
    machine.engine_activity(1000.0, 1)
    machine.handle(Event.TLS_READY, 1000.0)
    now = time.time()
    state = RecoveryState(API_KEY, "KalshiNR", (Cursor(CURSOR, now),), (("mine", now),))
    tracker = RecoveryTracker(state)
    plane = RecordingPlane(((ExecId(0, 11, 1), dc_report(b"11;1")),
                            (ExecId(0, 12, 2), dc_report(b"12;2"))))
    logon = encode([(35, "A"), (49, API_KEY), (56, "KalshiNR"), (34, 1),
                    (52, utc_timestamp()), (98, 0), (108, 30), (141, "Y")])
    relay = SessionRelay(
        engine=proxy_engine, gateway=proxy_gateway, logon=logon, engine_framer=FixFramer(),
        machine=machine,
        translator=SequenceTranslator(0, in_offset) if in_offset else None,
        reset_forced=False, journal=None, to_gateway=TrafficCounters(),
        to_engine=TrafficCounters(), control=Control(),
        log=logging.LoggerAdapter(logging.getLogger("fixproxy.relay"), {}), conn_id=1,
        gateway_ids=(API_KEY.encode(), b"KalshiNR"), engine_ids=(b"KalshiNR", API_KEY.encode()),
        logon_received=0.0, clock=lambda: 1000.0, recovery=tracker, recovery_plane=plane)
    results: list[RelayResult] = []
    thread = threading.Thread(target=lambda: results.append(relay.run()), daemon=True)
    thread.start()
    try:
        yield Harness(relay, Peer(engine_end, API_KEY, "KalshiNR"),
                      Peer(gateway_end, "KalshiNR", API_KEY), plane, tracker, results)
    finally:
        relay.abort()
        thread.join(PEER_TIMEOUT)
        relay.close()
        for sock in (proxy_engine, proxy_gateway, engine_end, gateway_end):
            sock.close()


def seq(message: FixMessage) -> int:
    return int(message.get(tags.MSG_SEQ_NUM) or b"0")


def test_recovered_reports_follow_the_answer_and_live_traffic_follows_them(
        harness: Harness) -> None:
    h = harness
    assert h.gateway.receive().msg_type == tags.MT_LOGON
    h.gateway.send(tags.MT_LOGON, (98, 0), (108, 30), (141, "Y"))
    # A live report in the same breath as the answer: it waits until the replay is in.
    h.gateway.send(b"8", (11, b"mine"), (17, b"13;3"), (150, b"0"))
    answer = h.engine.receive()
    first, second, live = h.engine.receive(), h.engine.receive(), h.engine.receive()
    assert answer.msg_type == tags.MT_LOGON
    assert len(h.plane.asked) == 1
    asked = h.plane.asked[0].cursor(0)
    assert asked is not None and asked.exec_id == CURSOR
    assert [m.get(17) for m in (first, second, live)] == [b"11;1", b"12;2", b"13;3"]
    assert [m.get(97) for m in (first, second, live)] == [b"Y", b"Y", None]
    assert [seq(m) for m in (answer, first, second, live)] == \
        list(range(seq(answer), seq(answer) + 4))
    assert h.relay.recovered == 2
    assert h.relay.to_engine.messages[b"8"] == 3


def test_a_live_repeat_of_a_recovered_report_is_held_back_without_a_gap(
        harness: Harness) -> None:
    h = harness
    h.gateway.receive()
    h.gateway.send(tags.MT_LOGON, (98, 0), (108, 30), (141, "Y"))
    answer = h.engine.receive()
    recovered = [h.engine.receive(), h.engine.receive()]
    h.gateway.send(b"8", (11, b"mine"), (17, b"12;2"), (150, b"F"))  # the drop copy had it
    h.gateway.send(b"0")
    h.gateway.send(b"8", (11, b"mine"), (17, b"14;4"), (150, b"4"))
    heartbeat, live = h.engine.receive(), h.engine.receive()
    assert heartbeat.msg_type == tags.MT_HEARTBEAT and live.get(17) == b"14;4"
    assert [seq(m) for m in (answer, *recovered, heartbeat, live)] == \
        list(range(seq(answer), seq(answer) + 5))
    # The engine's numbers still reach the gateway as the gateway's own.
    h.engine.seq = 1
    h.engine.send(b"D", (11, b"next"), (55, b"KXA"))
    order = h.gateway.receive()
    assert order.get(11) == b"next" and seq(order) == 2


def test_orders_and_reports_move_the_state_handed_over_on_request(harness: Harness) -> None:
    h = harness
    h.gateway.receive()
    h.gateway.send(tags.MT_LOGON, (98, 0), (108, 30), (141, "Y"))
    for _ in range(3):
        h.engine.receive()
    h.engine.seq = 1
    h.engine.send(b"D", (11, b"new-order"), (55, b"KXA"))
    h.engine.send(b"F", (11, b"cancel"), (41, b"new-order"))
    h.gateway.receive()
    h.gateway.receive()
    h.gateway.send(b"8", (11, b"new-order"), (17, b"20;5;2"), (150, b"0"))
    h.engine.receive()
    h.relay.save_recovery()
    assert h.plane.saved_event.wait(PEER_TIMEOUT)
    saved = h.plane.saved[-1]
    assert {cl for cl, _ in saved.cl_ord_ids} >= {"mine", "new-order", "cancel"}
    index_zero = saved.cursor(0)
    assert index_zero is not None and index_zero.exec_id == parse_exec_id(b"12;2")
    index_two = saved.cursor(2)
    assert index_two is not None and index_two.exec_id == ExecId(2, 20, 5)
