"""Sequence translation against the table in :mod:`fixproxy.session.sequence`'s docstring,
row by row, and the rules stated beside it: offsets from the engine's Logon, byte-for-byte
passage when nothing moves, re-encoding when something does, and no number below 1.

The round trip (renumbering undone by the opposite offsets, a whole exchange renumbered both
ways) is a Hypothesis property in ``tests/fix/test_fuzz_properties.py``; here the property is
the table itself, for any offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixproxy.errors import SessionError
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, encode, iter_fields
from fixproxy.fix.framer import FixFramer
from fixproxy.session.sequence import SequenceTranslator

OUT: Final = 10
"""out_offset of the table tests: the engine logged on with 34=11."""
IN: Final = 100
"""in_offset of the table tests: the engine expects the gateway's 101 next. Different from
OUT, so a row that used the other offset fails."""
VALUE: Final = 500

Direction = Literal["engine -> gateway", "gateway -> engine"]


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the docstring's table: the tag and the value it takes each way."""

    tag: int
    names: str
    engine_to_gateway: int
    """VALUE after to_gateway with offsets (OUT, IN)."""
    gateway_to_engine: int
    """VALUE after to_engine with offsets (OUT, IN)."""


TABLE: Final = (
    #   tag   names               engine -> gateway   gateway -> engine
    Row(34,   "the sender's own", VALUE - OUT,        VALUE + IN),   # MsgSeqNum
    Row(36,   "the sender's own", VALUE - OUT,        VALUE + IN),   # NewSeqNo
    Row(45,   "the receiver's",   VALUE - IN,         VALUE + OUT),  # RefSeqNum
    Row(7,    "the receiver's",   VALUE - IN,         VALUE + OUT),  # BeginSeqNo
    Row(16,   "the receiver's",   VALUE - IN,         VALUE + OUT),  # EndSeqNo
    Row(789,  "the receiver's",   VALUE - IN,         VALUE + OUT),  # NextExpectedMsgSeqNum
)
DIRECTIONS: Final[tuple[Direction, ...]] = ("engine -> gateway", "gateway -> engine")
UNTOUCHED: Final = ((58, b"34=7 45=8"), (11, b"500"), (372, b"D"))
"""Fields around the one under test that no row names; they must leave unchanged."""


def translate(translator: SequenceTranslator, direction: Direction, raw: bytes) -> bytes:
    return translator.to_gateway(raw) if direction == "engine -> gateway" \
        else translator.to_engine(raw)


def expected(row: Row, direction: Direction) -> int:
    return row.engine_to_gateway if direction == "engine -> gateway" else row.gateway_to_engine


def reframed(raw: bytes) -> FixMessage:
    """Parse ``raw`` after the framer has checked its BodyLength (9) and CheckSum (10)."""
    framer = FixFramer()
    framer.receive_data(raw)
    frame = framer.next_message()
    assert frame is not None and frame.raw == raw
    return FixMessage.parse(raw)


def message(tag: int, value: int | bytes) -> bytes:
    return encode([(35, "2"), UNTOUCHED[0], (tag, value), *UNTOUCHED[1:]])


def body(raw: bytes) -> list[tuple[int, bytes]]:
    """The fields between BodyLength (9) and CheckSum (10)."""
    return list(iter_fields(raw))[2:-1]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("row", TABLE, ids=lambda row: f"{row.tag}-{row.names}")
def test_each_row_of_the_table(row: Row, direction: Direction) -> None:
    raw = message(row.tag, VALUE)
    moved = translate(SequenceTranslator(OUT, IN), direction, raw)
    assert moved != raw
    assert body(moved) == [(35, b"2"), UNTOUCHED[0], (row.tag, b"%d" % expected(row, direction)),
                           *UNTOUCHED[1:]]
    assert reframed(moved).get(row.tag) == b"%d" % expected(row, direction)


def test_the_table_names_every_tag_the_translator_moves() -> None:
    translator = SequenceTranslator(OUT, IN)
    for tag in range(1, 1000):
        if tag in {8, 9, 10, 35} or tag in tags.LENGTH_OF or tag in tags.LENGTH_OF.values():
            continue  # the frame's own fields, and data fields that need their length
        raw = message(tag, VALUE)
        moved = translator.to_gateway(raw)
        assert (moved != raw) == (tag in {row.tag for row in TABLE}), tag


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_end_seq_no_zero_means_infinity_and_stays_zero(direction: Direction) -> None:
    raw = encode([(35, "2"), (34, VALUE), (7, VALUE), (16, 0)])
    moved = reframed(translate(SequenceTranslator(OUT, IN), direction, raw))
    assert moved.get(16) == b"0"
    assert moved.get(7) == b"%d" % expected(TABLE[3], direction)


@pytest.mark.parametrize(("logon_seq", "next_expected", "offsets"), [
    (1, 1, (0, 0)),
    (11, 1, (10, 0)),
    (1, 101, (0, 100)),
    (11, 101, (OUT, IN)),
])
def test_offsets_come_from_the_engine_logon(logon_seq: int, next_expected: int,
                                            offsets: tuple[int, int]) -> None:
    translator = SequenceTranslator.for_logon(logon_seq, next_expected)
    assert (translator.out_offset, translator.in_offset) == offsets
    # The Logon itself becomes 34=1; the engine's expected next is the gateway's first.
    logon = encode([(35, "A"), (34, logon_seq), (789, next_expected)])
    sent = reframed(translator.to_gateway(logon))
    assert (sent.get(34), sent.get(789)) == (b"1", b"1")
    assert translator.gateway_seq_for_engine(logon_seq) == 1
    assert translator.engine_seq_for_gateway(1) == next_expected


@pytest.mark.parametrize(("logon_seq", "next_expected"), [(0, 1), (1, 0), (-3, 5)])
def test_sequence_numbers_start_at_1(logon_seq: int, next_expected: int) -> None:
    with pytest.raises(SessionError, match="start at 1"):
        SequenceTranslator.for_logon(logon_seq, next_expected)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_with_both_offsets_zero_messages_pass_byte_for_byte(direction: Direction) -> None:
    translator = SequenceTranslator.for_logon(1, 1)
    assert translator.identity
    raw = encode([(35, "2"), *((row.tag, VALUE) for row in TABLE)])
    assert translate(translator, direction, raw) is raw


@pytest.mark.parametrize(("offsets", "direction", "tag"), [
    ((0, IN), "gateway -> engine", 45),  # + out_offset = 0
    ((OUT, 0), "engine -> gateway", 7),  # - in_offset = 0
    ((0, IN), "engine -> gateway", 34),  # - out_offset = 0
])
def test_a_message_whose_fields_do_not_move_keeps_its_bytes(
        offsets: tuple[int, int], direction: Direction, tag: int) -> None:
    translator = SequenceTranslator(*offsets)
    assert not translator.identity
    raw = message(tag, VALUE)
    assert translate(translator, direction, raw) is raw


@pytest.mark.parametrize("row", TABLE, ids=lambda row: f"{row.tag}-{row.names}")
def test_a_number_from_before_the_reset_is_refused(row: Row) -> None:
    # Only engine -> gateway subtracts: the smallest number that survives becomes 1.
    translator = SequenceTranslator(OUT, IN)
    lowest = VALUE - row.engine_to_gateway + 1
    with pytest.raises(SessionError, match=f"tag {row.tag}={lowest - 1} .*before this connection"):
        translator.to_gateway(message(row.tag, lowest - 1))
    assert reframed(translator.to_gateway(message(row.tag, lowest))).get(row.tag) == b"1"
    # The other way only adds: the gateway's first message is never refused.
    assert reframed(translator.to_engine(message(row.tag, 1))).get(row.tag) \
        == b"%d" % (1 + row.gateway_to_engine - VALUE)


@pytest.mark.parametrize("value", [b"", b"x", b"0", b"-4", b"1.5"])
def test_a_value_that_is_not_a_sequence_number_is_refused(value: bytes) -> None:
    with pytest.raises(SessionError, match="is not a sequence number"):
        SequenceTranslator(OUT, IN).to_gateway(message(45, value))


@given(out=st.integers(0, 10**6), inn=st.integers(0, 10**6), value=st.integers(1, 10**7),
       row=st.sampled_from(TABLE), direction=st.sampled_from(DIRECTIONS))
def test_property_the_table_holds_for_any_offsets(out: int, inn: int, value: int, row: Row,
                                                  direction: Direction) -> None:
    own, other = (-out, -inn) if direction == "engine -> gateway" else (inn, out)
    delta = own if row.names == "the sender's own" else other
    raw = message(row.tag, value)
    translator = SequenceTranslator(out, inn)
    if value + delta < 1:
        with pytest.raises(SessionError):
            translate(translator, direction, raw)
        return
    moved = translate(translator, direction, raw)
    assert reframed(moved).get(row.tag) == b"%d" % (value + delta)
    if delta == 0:
        assert moved is raw
