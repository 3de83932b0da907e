"""A ResendRequest for numbers from before the connection's reset: which ones are such, the
gap fill that answers them, and the renumbering after it (:mod:`fixproxy.session.sequence`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixproxy.errors import SessionError
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, encode, utc_timestamp
from fixproxy.fix.logout import gap_fill
from fixproxy.session.sequence import (
    SequenceTranslator,
    answer_stale_resend,
    stale_resend_gap,
)

ENGINE = b"5f0c3a2e-8b1d-4c7e-9a6f-2d4b8e1c0f37"


def resend(begin: int | bytes | None, end: int = 0, seq: int = 30) -> bytes:
    fields: list[tuple[int, int | bytes | str]] = [
        (35, "2"), (49, ENGINE), (56, "KalshiNR"), (34, seq), (52, utc_timestamp())]
    if begin is not None:
        fields.append((tags.BEGIN_SEQ_NO, begin))
    fields.append((tags.END_SEQ_NO, end))
    return encode(fields)


@pytest.mark.parametrize(("begin", "end", "first_in", "gap"), [
    (5, 0, 8, (5, 7)),     # QuickFIX: from what it expects, to infinity
    (7, 7, 8, (7, 7)),     # exactly the last number before the connection
    (5, 9, 8, (5, 7)),     # reaching into this connection: its messages are on their way
    (8, 0, 8, None),       # this connection's own numbers: renumbered and passed on
    (12, 15, 8, None),
])
def test_which_requests_ask_for_numbers_from_before_the_connection(
        begin: int, end: int, first_in: int, gap: tuple[int, int] | None) -> None:
    assert stale_resend_gap(resend(begin, end), first_in) == gap


@pytest.mark.parametrize("begin", [None, b"0", b"x"])
def test_a_request_without_a_valid_begin_is_a_session_error(begin: bytes | None) -> None:
    with pytest.raises(SessionError, match="BeginSeqNo"):
        stale_resend_gap(resend(begin), 8)


def test_the_gap_fill_is_a_possible_duplicate_numbered_where_the_request_began() -> None:
    fill = FixMessage.parse(gap_fill(sender=b"KalshiNR", target=ENGINE, seq=5, new_seq=8,
                                     now=1_800_000_000.0))
    assert fill.msg_type == tags.MT_SEQUENCE_RESET
    assert fill.get(tags.MSG_SEQ_NUM) == b"5"
    assert fill.get(tags.NEW_SEQ_NO) == b"8"
    assert fill.get(tags.GAP_FILL_FLAG) == b"Y"
    assert fill.get(tags.POSS_DUP_FLAG) == b"Y"
    assert fill.get(tags.ORIG_SENDING_TIME) == fill.get(tags.SENDING_TIME)
    assert (fill.get(tags.SENDER_COMP_ID), fill.get(tags.TARGET_COMP_ID)) == \
        (b"KalshiNR", ENGINE)


@given(logon_seq=st.integers(2, 10**6), first_in=st.integers(2, 10**6), data=st.data())
def test_the_answer_fills_to_the_first_number_and_the_gateway_sees_no_gap(
        logon_seq: int, first_in: int, data: st.DataObject) -> None:
    """After the answer, the engine's next message takes the number the request would have
    had on the gateway leg: the gateway's numbers stay 1, 2, 3... without a gap."""
    translator = SequenceTranslator.for_logon(logon_seq, first_in)
    begin = data.draw(st.integers(1, first_in - 1))
    request_seq = logon_seq + data.draw(st.integers(1, 50))
    answer = answer_stale_resend(resend(begin, seq=request_seq), translator, first_in,
                                 now=1_800_000_000.0, ids=(b"KalshiNR", ENGINE),
                                 endpoint=b"KalshiNR")
    assert answer is not None
    fill = FixMessage.parse(answer.fill)
    assert (fill.get(tags.MSG_SEQ_NUM), fill.get(tags.NEW_SEQ_NO)) == \
        (b"%d" % begin, b"%d" % first_in)
    assert f"{begin}..{first_in - 1}" in answer.warning and "KalshiNR" in answer.warning
    assert answer.translator.gateway_seq_for_engine(request_seq + 1) == \
        translator.gateway_seq_for_engine(request_seq)
    assert answer.translator.in_offset == translator.in_offset


def test_nothing_is_answered_without_renumbering_or_for_this_connections_numbers() -> None:
    translator = SequenceTranslator.for_logon(10, 8)
    ids = (b"KalshiNR", ENGINE)
    assert answer_stale_resend(resend(5), None, 8, now=0.0, ids=ids, endpoint=b"KalshiNR") \
        is None
    assert answer_stale_resend(resend(9), translator, 8, now=0.0, ids=ids,
                               endpoint=b"KalshiNR") is None
