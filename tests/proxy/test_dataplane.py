"""The data plane's shared thread, as production runs it: several relays between real socket
pairs in one ``poll`` loop, handed over once logged on, each ending on its own.

The peers are played by the test with blocking sockets bounded by a timeout; every wait is for a
message, a close or the loop's report of a relay's end.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import pytest
from support.relay_pair import (
    PEER_TIMEOUT,
    ManualClock,
    RecordingControl,
    RelayPair,
    answer_logon,
    open_relay_pair,
)

from fixproxy.fix import tags
from fixproxy.proxy.dataplane import DataPlane
from fixproxy.proxy.handover import RelayResult
from fixproxy.proxy.relay import SessionRelay

SESSIONS: Final = 4


@dataclass
class Plane:
    """A data plane running in its thread, and the ends it reported."""

    plane: DataPlane
    thread: threading.Thread
    ended: queue.Queue[tuple[SessionRelay, RelayResult]] = field(default_factory=queue.Queue)

    def host(self, pair: RelayPair) -> None:
        """Log ``pair`` on in a thread of its own, then hand it over, as admission does."""
        outcome: list[RelayResult | None] = []
        logon = threading.Thread(target=lambda: outcome.append(pair.relay.run_logon()))
        logon.start()
        answer_logon(pair)
        logon.join(PEER_TIMEOUT)
        assert outcome == [None], "the relay did not stop once logged on"
        relay = pair.relay
        assert self.plane.submit(relay, lambda result: self.ended.put((relay, result)))

    def next_end(self) -> tuple[SessionRelay, RelayResult]:
        return self.ended.get(timeout=PEER_TIMEOUT)


@pytest.fixture
def pairs() -> Iterator[list[RelayPair]]:
    clock = ManualClock()
    made = [open_relay_pair(clock, RecordingControl(), conn_id=n) for n in range(SESSIONS)]
    try:
        yield made
    finally:
        for pair in made:
            pair.close()


@pytest.fixture
def plane(pairs: list[RelayPair]) -> Iterator[Plane]:
    """A running data plane; at the end its relays are aborted and it is stopped (before the
    pairs close: the loop polls their descriptors until it reports their end)."""
    data_plane = DataPlane()
    thread = threading.Thread(target=data_plane.run, daemon=True)
    thread.start()
    assert data_plane.wait_started(PEER_TIMEOUT)
    try:
        yield Plane(data_plane, thread)
    finally:
        for pair in pairs:
            pair.relay.abort()
        data_plane.stop()
        thread.join(PEER_TIMEOUT)
        assert not thread.is_alive(), "the data plane did not stop"
        data_plane.close()


def trade(pair: RelayPair, number: int) -> None:
    """One order through the relay and its report back, byte for byte."""
    order = pair.engine.send(b"D", (11, f"order-{number}"), (55, "HIGHNY-23DEC31"))
    got = pair.gateway.receive()
    assert got is not None and got.encode() == order
    report = pair.gateway.send(b"8", (11, f"order-{number}"), (150, 0))
    echoed = pair.engine.receive()
    assert echoed is not None and echoed.encode() == report


def test_one_thread_relays_every_session(plane: Plane, pairs: list[RelayPair]) -> None:
    for pair in pairs:
        plane.host(pair)
    assert plane.plane.relaying == SESSIONS
    for number in range(20):
        for pair in pairs:  # interleaved: every session's turn comes in the same loop
            trade(pair, number)
    for pair in pairs:
        assert pair.relay.to_gateway.messages[b"D"] == 20
        assert pair.relay.to_engine.messages[b"8"] == 20
    assert plane.ended.empty()


def test_a_session_ends_alone_and_leaves_the_loop(plane: Plane,
                                                  pairs: list[RelayPair]) -> None:
    for pair in pairs:
        plane.host(pair)
    first, *others = pairs
    first.engine.send(tags.MT_LOGOUT)
    logout = first.gateway.receive()
    assert logout is not None and logout.msg_type == tags.MT_LOGOUT
    first.gateway.send(tags.MT_LOGOUT)
    answer = first.engine.receive()
    assert answer is not None and answer.msg_type == tags.MT_LOGOUT
    relay, result = plane.next_end()
    assert relay is first.relay and result.logged_on and result.end_cause is not None
    # Its descriptors are out of the poll set before the end is reported: the caller may
    # close them at once, and the others trade on.
    for sock in first.proxy_ends:
        sock.close()
    for number in range(5):
        for pair in others:
            trade(pair, number)
    assert plane.plane.relaying == SESSIONS - 1


def test_a_relay_that_raises_ends_only_its_session(
        plane: Plane, pairs: list[RelayPair], monkeypatch: pytest.MonkeyPatch) -> None:
    for pair in pairs:
        plane.host(pair)
    victim, *others = pairs

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in fixproxy")

    monkeypatch.setattr(victim.relay, "_read", broken)
    victim.engine.send(b"D", (11, "poison"))
    relay, result = plane.next_end()
    assert relay is victim.relay and isinstance(result.crashed, RuntimeError)
    told = victim.engine.receive()
    assert told is not None and told.msg_type == tags.MT_LOGOUT
    assert "internal error" in (told.get_str(tags.TEXT) or "")
    for number in range(5):
        for pair in others:
            trade(pair, number)


def test_commands_reach_a_hosted_relay_and_stop_waits_for_it(
        plane: Plane, pairs: list[RelayPair]) -> None:
    for pair in pairs:
        plane.host(pair)
    plane.plane.stop()
    # Stopping takes no new relays but keeps relaying the ones it has.
    assert not plane.plane.submit(pairs[0].relay, lambda result: None)
    trade(pairs[0], 1)
    for pair in pairs:
        pair.relay.shutdown()
        logout = pair.gateway.receive()
        assert logout is not None and logout.msg_type == tags.MT_LOGOUT
        pair.gateway.send(tags.MT_LOGOUT)
    ends = {plane.next_end()[0] for _ in pairs}
    assert ends == {pair.relay for pair in pairs}
    plane.thread.join(PEER_TIMEOUT)
    assert not plane.thread.is_alive(), "a stopped, empty data plane goes on"


def test_a_plane_that_is_not_running_refuses_relays(pairs: list[RelayPair]) -> None:
    idle = DataPlane()
    try:
        assert not idle.submit(pairs[0].relay, lambda result: None)
    finally:
        idle.close()


def test_a_broken_loop_fails_its_relays_and_refuses_more(
        plane: Plane, pairs: list[RelayPair], monkeypatch: pytest.MonkeyPatch) -> None:
    for pair in pairs[:2]:
        plane.host(pair)

    def broken_poll(self: object, timeout: object = None) -> list[tuple[int, int]]:
        raise RuntimeError("a bug in the loop")

    # The loop re-registers a relay after handling it: that is where it breaks.
    monkeypatch.setattr(DataPlane, "_arm", staticmethod(broken_poll))
    pairs[0].engine.send(b"D", (11, "wake"))
    ends = {plane.next_end()[0] for _ in range(2)}
    assert ends == {pairs[0].relay, pairs[1].relay}
    for pair in pairs[:2]:
        told = pair.engine.receive()
        assert told is not None and told.msg_type == tags.MT_LOGOUT
    plane.thread.join(PEER_TIMEOUT)
    assert not plane.thread.is_alive()
    assert not plane.plane.submit(pairs[2].relay, lambda result: None)
