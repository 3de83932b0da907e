"""A renumbered session's relay keeps the live record current and gap-fills resends from
before the reset: real socket pairs, the relay in a thread of its own, both peers played by
the test (:mod:`support.relay_pair`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from support.relay_pair import (
    API_KEY,
    HEART_BT_INT,
    PEER_TIMEOUT,
    ManualClock,
    RecordingControl,
    RelayPair,
    open_relay_pair,
)

from fixproxy.fix import tags
from fixproxy.ops import liveseq
from fixproxy.ops.liveseq import LiveSequences
from fixproxy.proxy.handover import RelayResult
from fixproxy.session.sequence import SequenceTranslator

ENGINE_LOGON_SEQ: Final = 41
"""The engine kept its numbers: its Logon carried 34=41..."""
ENGINE_NEXT_IN: Final = 17
"""...and it expects the gateway's next message to carry 17."""


@dataclass
class Renumbered:
    pair: RelayPair
    path: Path
    live: LiveSequences
    results: list[RelayResult]
    thread: threading.Thread

    def live_number(self) -> int | None:
        return liveseq.load(self.path, API_KEY, "KalshiNR")


@pytest.fixture
def renumbered(tmp_path: Path) -> Iterator[Renumbered]:
    path = tmp_path / "s.live"
    live = LiveSequences.open(path, API_KEY, "KalshiNR")
    translator = SequenceTranslator.for_logon(ENGINE_LOGON_SEQ, ENGINE_NEXT_IN)
    pair = open_relay_pair(ManualClock(), RecordingControl(), translator=translator,
                           live=live)
    results: list[RelayResult] = []
    thread = threading.Thread(target=lambda: results.append(pair.relay.run()), daemon=True)
    thread.start()
    try:
        yield Renumbered(pair, path, live, results, thread)
    finally:
        pair.relay.abort()
        thread.join(PEER_TIMEOUT)
        pair.close()
        live.close()


def log_on(r: Renumbered) -> None:
    engine, gateway = r.pair.engine, r.pair.gateway
    logon = gateway.receive()
    assert logon is not None and logon.msg_type == tags.MT_LOGON
    gateway.send(tags.MT_LOGON, (98, 0), (108, HEART_BT_INT))
    answer = engine.receive()
    assert answer is not None and answer.get(tags.MSG_SEQ_NUM) == b"%d" % ENGINE_NEXT_IN
    engine.seq = ENGINE_LOGON_SEQ


def test_the_record_counts_every_message_written_to_the_engine(
        renumbered: Renumbered) -> None:
    log_on(renumbered)
    assert renumbered.live_number() == ENGINE_NEXT_IN + 1
    engine, gateway = renumbered.pair.engine, renumbered.pair.gateway
    for number in range(1, 6):
        gateway.send(b"8", (11, f"order-{number}"), (150, 0))
        report = engine.receive()
        assert report is not None
        seq = int(report.get(tags.MSG_SEQ_NUM) or 0)
        assert seq == ENGINE_NEXT_IN + number
        # Stored before the write: by the time the engine reads it, the record is past it.
        assert renumbered.live_number() == seq + 1
    # The gateway's Logout and its answer: the record ends where the engine's numbers do.
    engine.send(tags.MT_LOGOUT)
    assert (got := gateway.receive()) is not None and got.msg_type == tags.MT_LOGOUT
    gateway.send(tags.MT_LOGOUT)
    last = engine.receive()
    assert last is not None and last.msg_type == tags.MT_LOGOUT
    assert renumbered.live_number() == int(last.get(tags.MSG_SEQ_NUM) or 0) + 1


def test_a_resend_from_before_the_reset_is_gap_filled_and_not_passed_on(
        renumbered: Renumbered) -> None:
    """The engine, given 34=17 when it expected 15 (the record was ahead after a kill),
    asks for 15 on: fixproxy answers with a gap fill to 17, the gateway never sees the
    request, and the engine's next message takes the request's number upstream."""
    log_on(renumbered)
    engine, gateway = renumbered.pair.engine, renumbered.pair.gateway
    engine.send(tags.MT_RESEND_REQUEST, (tags.BEGIN_SEQ_NO, ENGINE_NEXT_IN - 2),
                (tags.END_SEQ_NO, 0))
    fill = engine.receive()
    assert fill is not None and fill.msg_type == tags.MT_SEQUENCE_RESET
    assert fill.get(tags.MSG_SEQ_NUM) == b"%d" % (ENGINE_NEXT_IN - 2)
    assert fill.get(tags.NEW_SEQ_NO) == b"%d" % ENGINE_NEXT_IN
    assert fill.get(tags.GAP_FILL_FLAG) == b"Y" and fill.get(tags.POSS_DUP_FLAG) == b"Y"
    engine.send(b"D", (11, "after"), (55, "KXTEST"))
    order = gateway.receive()
    assert order is not None and order.msg_type == b"D"
    assert order.get(tags.MSG_SEQ_NUM) == b"2"  # the Logon was 1: no gap upstream
    assert not renumbered.pair.relay.done
    # A resend of this connection's own numbers is renumbered and passed on as before.
    engine.send(tags.MT_RESEND_REQUEST, (tags.BEGIN_SEQ_NO, ENGINE_NEXT_IN),
                (tags.END_SEQ_NO, 0))
    passed = gateway.receive()
    assert passed is not None and passed.msg_type == tags.MT_RESEND_REQUEST
    assert passed.get(tags.BEGIN_SEQ_NO) == b"1"
    assert passed.get(tags.MSG_SEQ_NUM) == b"3"
    assert renumbered.live_number() == ENGINE_NEXT_IN + 1  # the fill moved nothing
