"""A session relay over socket pairs, both of its peers played by the test.

Tests of the data plane run a real :class:`~fixproxy.proxy.relay.SessionRelay` (in a thread of
its own, or in the shared :class:`~fixproxy.proxy.dataplane.DataPlane`) between two local
socket pairs: the test holds the far ends as blocking :class:`Peer` sockets, moves the relay's
clock by hand, and reads what the relay told the control plane from a
:class:`RecordingControl`.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Final

from fixproxy.fix import tags
from fixproxy.fix.codec import FieldValue, FixMessage, encode, utc_timestamp
from fixproxy.fix.framer import FixFramer
from fixproxy.ops.liveseq import LiveSequences
from fixproxy.ops.metrics import TrafficCounters
from fixproxy.proxy.relay import SessionRelay
from fixproxy.session.machine import Event, SessionMachine
from fixproxy.session.sequence import SequenceTranslator

API_KEY: Final = "3c9e1f0a-7b2d-4e6f-8a1c-5d0b9e2f4a7c"
HEART_BT_INT: Final = 30
PEER_TIMEOUT: Final = 20.0
"""Seconds a test peer waits for a byte before the test fails."""
T0: Final = 1000.0


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
class RelayPair:
    """A relay between two socket pairs, not yet running, and the test's ends of them."""

    relay: SessionRelay
    engine: Peer
    gateway: Peer
    proxy_ends: tuple[socket.socket, socket.socket]
    """fixproxy's ends (engine, gateway), which admission would close after the relay."""

    def close(self) -> None:
        self.relay.close()
        for sock in (*self.proxy_ends, self.engine.sock, self.gateway.sock):
            sock.close()


def open_relay_pair(clock: ManualClock, control: RecordingControl, *,
                    conn_id: int = 1, translator: SequenceTranslator | None = None,
                    live: LiveSequences | None = None) -> RelayPair:
    """A relay in ``tls_ready`` between fresh socket pairs, as admission hands it over
    (renumbering with ``translator``, keeping ``live`` current, when given)."""
    proxy_engine, engine_end = socket.socketpair()
    proxy_gateway, gateway_end = socket.socketpair()
    for sock in (proxy_engine, proxy_gateway):
        sock.setblocking(False)
    machine = SessionMachine(now=clock(), heart_bt_int=HEART_BT_INT)
    # As admission does: the Logon was the engine's 34=1 (or 34=N when renumbered).
    machine.engine_activity(clock(), 1 if translator is None else translator.out_offset + 1)
    machine.handle(Event.TLS_READY, clock())
    logon = encode([(35, "A"), (49, API_KEY), (56, "KalshiNR"), (34, 1),
                    (52, utc_timestamp()), (98, 0), (108, HEART_BT_INT), (141, "Y")])
    relay = SessionRelay(
        engine=proxy_engine, gateway=proxy_gateway, logon=logon, engine_framer=FixFramer(),
        machine=machine, translator=translator, reset_forced=False, journal=None,
        to_gateway=TrafficCounters(), to_engine=TrafficCounters(), control=control,
        log=logging.LoggerAdapter(logging.getLogger("fixproxy.relay"), {}), conn_id=conn_id,
        gateway_ids=(API_KEY.encode(), b"KalshiNR"), engine_ids=(b"KalshiNR", API_KEY.encode()),
        logon_received=0.0, clock=clock, live=live)
    return RelayPair(relay, Peer(engine_end, API_KEY, "KalshiNR"),
                     Peer(gateway_end, "KalshiNR", API_KEY), (proxy_engine, proxy_gateway))


def answer_logon(pair: RelayPair) -> None:
    """Play the gateway accepting the signed Logon and the engine reading the answer."""
    logon = pair.gateway.receive()
    assert logon is not None and logon.msg_type == tags.MT_LOGON
    pair.gateway.send(tags.MT_LOGON, (98, 0), (108, HEART_BT_INT), (141, "Y"))
    answer = pair.engine.receive()
    assert answer is not None and answer.msg_type == tags.MT_LOGON
    pair.engine.seq = 1  # the engine's Logon was the one fixproxy signed
