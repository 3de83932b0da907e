"""The FIX codec: encoding with 9 and 10, field splitting, FixMessage, redaction, timestamps."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixproxy.errors import FramingError
from fixproxy.fix import tags
from fixproxy.fix.codec import (
    FieldValue,
    FixMessage,
    checksum,
    encode,
    header_value,
    iter_fields,
    parse_utc_timestamp,
    render,
    render_fields,
    utc_timestamp,
)
from fixproxy.fix.framer import FixFramer

SOH = b"\x01"
SIGNATURE = b"QhA8659Mhygcm+xE/wb1mSECRETSIGNATUREtail=="
PASSWORD = b"hunter2-PASSWORD-tail"


def by_hand(body: bytes, begin: bytes = b"FIXT.1.1") -> bytes:
    """The framed message for ``body``, 9 and 10 computed here rather than by the codec."""
    head = b"8=" + begin + b"\x019=" + str(len(body)).encode() + SOH
    total = sum(head + body) % 256
    return head + body + b"10=" + str(total).zfill(3).encode() + SOH


# --------------------------------------------------------------------------- encode

def test_encode_computes_body_length_and_checksum() -> None:
    raw = encode([(35, "D"), (49, b"key"), (34, 12), (44, "0.55")])
    assert raw == by_hand(b"35=D\x0149=key\x0134=12\x0144=0.55\x01")


def test_encode_with_another_begin_string() -> None:
    raw = encode([(35, b"0")], begin_string=b"FIX.4.4")
    assert raw == by_hand(b"35=0\x01", begin=b"FIX.4.4")


def test_encode_data_field_may_hold_soh() -> None:
    data = b"a\x01b=c\x01"
    raw = encode([(35, "A"), (95, len(data)), (96, data)])
    assert raw == by_hand(b"35=A\x0195=6\x0196=" + data + SOH)


def test_encode_refuses_soh_in_an_ordinary_value() -> None:
    with pytest.raises(ValueError, match="SOH"):
        encode([(35, "D"), (58, b"a\x01b")])


def test_encode_refuses_a_body_not_starting_with_msg_type() -> None:
    with pytest.raises(ValueError, match="MsgType"):
        encode([(49, "key"), (35, "D")])


@pytest.mark.parametrize(("data", "expected"), [
    (b"", b"000"),
    (b"A", b"065"),
    (b"\xff\x01", b"000"),
    (b"\xff\xff", b"254"),
    (b"8=FIXT.1.1\x01", b"%03d" % (sum(b"8=FIXT.1.1\x01") % 256)),
])
def test_checksum(data: bytes, expected: bytes) -> None:
    assert checksum(data) == expected
    assert checksum(bytearray(data)) == expected


# --------------------------------------------------------------------------- iter_fields

def test_iter_fields_splits_every_field() -> None:
    body = b"35=D\x0149=key\x0158=a=b\x01"
    raw = by_hand(body)
    assert list(iter_fields(raw)) == [
        (8, b"FIXT.1.1"), (9, b"%d" % len(body)), (35, b"D"), (49, b"key"), (58, b"a=b"),
        (10, raw[-4:-1]),
    ]


def test_iter_fields_reads_raw_data_by_its_length() -> None:
    data = b"x\x01y=z\x0110=000\x01="
    raw = by_hand(b"35=A\x0195=%d\x0196=" % len(data) + data + b"\x01108=30\x01")
    fields = list(iter_fields(raw))
    assert fields[2:6] == [(35, b"A"), (95, b"%d" % len(data)), (96, data), (108, b"30")]
    assert fields[-1][0] == 10


def test_iter_fields_reads_other_data_fields_by_length() -> None:
    signature = b"s\x01g"
    raw = b"35=A\x0193=3\x0189=" + signature + b"\x01355=bad\x01"
    assert list(iter_fields(raw)) == [(35, b"A"), (93, b"3"), (89, signature), (355, b"bad")]


def test_raw_data_without_length_ends_at_soh() -> None:
    assert list(iter_fields(b"96=abc\x0158=x\x01")) == [(96, b"abc"), (58, b"x")]


def test_a_length_that_is_not_a_number_does_not_govern_raw_data() -> None:
    assert list(iter_fields(b"95=x\x0196=abc\x01")) == [(95, b"x"), (96, b"abc")]


@pytest.mark.parametrize("raw", [
    pytest.param(b"=x\x01", id="empty tag"),
    pytest.param(b"abc=1\x01", id="tag not a number"),
    pytest.param(b"049=x\x01", id="tag with leading zero"),
    pytest.param(b"-1=x\x01", id="negative tag"),
    pytest.param("٣=x\x01".encode(), id="tag non-ASCII digit"),
    pytest.param(b"49x\x01", id="no equals sign"),
    pytest.param(b"\x01", id="lone SOH"),
    pytest.param(b"49=x", id="value without SOH"),
    pytest.param(b"35=A\x0149=x", id="last value without SOH"),
    pytest.param(b"95=10\x0196=short\x01", id="raw data shorter than its length"),
    pytest.param(b"95=2\x0196=abc\x01", id="raw data longer than its length"),
    pytest.param(b"95=3\x0196=abc", id="raw data without SOH"),
])
def test_iter_fields_refuses_malformed_fields(raw: bytes) -> None:
    with pytest.raises(FramingError):
        list(iter_fields(raw))


def test_parse_malformed_message_raises_framing_error() -> None:
    with pytest.raises(FramingError):
        FixMessage.parse(b"8=FIXT.1.1\x019=5\x0135=A")


# --------------------------------------------------------------------------- FixMessage

def test_fix_message_parse_drops_framing_fields() -> None:
    message = FixMessage.parse(by_hand(b"35=A\x0149=key\x01108=30\x01", begin=b"FIX.4.4"))
    assert message.fields == [(35, b"A"), (49, b"key"), (108, b"30")]
    assert message.begin_string == b"FIX.4.4"
    assert message.msg_type == b"A"


def test_fix_message_get_count_and_get_str() -> None:
    message = FixMessage([(35, "8"), (58, "first"), (58, b"second"), (34, 9)])
    assert message.get(58) == b"first"
    assert message.get(34) == b"9"
    assert message.get(99) is None
    assert message.get_str(58) == "first"
    assert message.get_str(99) is None
    assert message.count(58) == 2
    assert message.count(34) == 1
    assert message.count(99) == 0


def test_fix_message_without_msg_type() -> None:
    assert FixMessage([(49, "x")]).msg_type == b""


def test_fix_message_set_replaces_in_place_and_drops_repeats() -> None:
    message = FixMessage([(35, "8"), (58, "a"), (49, "key"), (58, "b"), (34, 1)])
    message.set(58, "new")
    assert message.fields == [(35, b"8"), (58, b"new"), (49, b"key"), (34, b"1")]


def test_fix_message_set_appends_when_absent() -> None:
    message = FixMessage([(35, "0")])
    message.set(112, 7)
    assert message.fields == [(35, b"0"), (112, b"7")]


def test_fix_message_remove_every_occurrence_of_several_tags() -> None:
    message = FixMessage([(35, "A"), (141, "Y"), (58, "x"), (141, "N"), (96, "sig"), (34, 1)])
    message.remove(141, 96)
    assert message.fields == [(35, b"A"), (58, b"x"), (34, b"1")]
    message.remove(999)
    assert message.fields == [(35, b"A"), (58, b"x"), (34, b"1")]


def test_fix_message_encode() -> None:
    message = FixMessage([(35, "0"), (34, 2)], begin_string=b"FIX.4.4")
    assert message.encode() == by_hand(b"35=0\x0134=2\x01", begin=b"FIX.4.4")


def test_fix_message_repr_hides_secrets() -> None:
    text = repr(FixMessage([(35, "A"), (95, len(SIGNATURE)), (96, SIGNATURE)]))
    assert SIGNATURE.decode() not in text
    assert "35=A" in text


# Tags whose values the codec reads specially (data fields and their lengths) or that frame.
SPECIAL_TAGS = set(tags.LENGTH_OF) | set(tags.LENGTH_OF.values()) | {8, 9, 10}
PLAIN_TAGS = st.integers(min_value=1, max_value=99_999).filter(lambda t: t not in SPECIAL_TAGS)
PLAIN_VALUES = st.binary(max_size=20).map(lambda v: v.replace(SOH, b""))


@st.composite
def bodies(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    fields = [(35, draw(st.sampled_from([b"A", b"0", b"D", b"8", b"UOG", b"U1", b"AI"])))]
    fields += draw(st.lists(st.tuples(PLAIN_TAGS, PLAIN_VALUES), max_size=8))
    for data_tag, length_tag in draw(st.lists(st.sampled_from(sorted(tags.LENGTH_OF.items())),
                                              max_size=2, unique=True)):
        data = draw(st.binary(max_size=20))
        at = draw(st.integers(min_value=1, max_value=len(fields)))
        fields[at:at] = [(length_tag, b"%d" % len(data)), (data_tag, data)]
    return fields


@given(fields=bodies(), begin=st.sampled_from([b"FIXT.1.1", b"FIX.4.4"]))
def test_property_encode_parse_round_trip(fields: list[tuple[int, bytes]], begin: bytes) -> None:
    raw = encode(fields, begin)
    # The encoding frames, and its 9 and 10 agree with a by-hand computation.
    body = raw[raw.index(b"\x0135=") + 1:len(raw) - len(b"10=000\x01")]
    assert raw == by_hand(body, begin)
    if begin == b"FIXT.1.1":
        framer = FixFramer()
        framer.receive_data(raw)
        frame = framer.next_message()
        assert frame is not None
        assert frame.raw == raw
    parsed = FixMessage.parse(raw)
    assert parsed.fields == fields
    assert parsed.begin_string == begin
    assert parsed.encode() == raw
    assert list(iter_fields(raw)) == [
        (8, begin), (9, b"%d" % len(body)), *fields, (10, raw[-4:-1])]


# --------------------------------------------------------------------------- render

@pytest.mark.parametrize(("tag", "secret"), [
    (96, SIGNATURE), (554, PASSWORD), (925, PASSWORD), (89, SIGNATURE), (91, SIGNATURE)])
def test_render_redacts_secrets(tag: int, secret: bytes) -> None:
    fields: list[tuple[int, FieldValue]] = [(35, "A"), (49, "key")]
    if tag in tags.LENGTH_OF:
        fields.append((tags.LENGTH_OF[tag], len(secret)))
    fields += [(tag, secret), (108, 30)]
    raw = encode(fields)
    text = render(raw)
    assert secret.decode() not in text
    assert secret[:10].decode() not in text
    assert f"{tag}=<redacted {len(secret)} bytes>" in text
    assert "49=key|" in text
    assert "108=30|" in text


def test_render_shorten_secrets_shows_only_a_prefix() -> None:
    raw = encode([(35, "A"), (95, len(SIGNATURE)), (96, SIGNATURE), (554, PASSWORD)])
    text = render(raw, shorten_secrets=True)
    for secret in (SIGNATURE, PASSWORD):
        assert secret[:10].decode() in text
        assert secret.decode() not in text
        assert secret[10:].decode() not in text


def test_render_plain_fields_in_order() -> None:
    body = b"35=D\x0149=key\x0111=ord-1\x01"
    raw = by_hand(body)
    assert render(raw) == (
        f"8=FIXT.1.1|9={len(body)}|35=D|49=key|11=ord-1|10={raw[-4:-1].decode()}|")


def test_render_fields_without_framing() -> None:
    assert render_fields([(35, b"0"), (96, b"secret")]) == "35=0|96=<redacted 6 bytes>|"


def test_render_never_raises_and_leaks_nothing_from_unparseable_bytes() -> None:
    raw = b"96=" + SIGNATURE + b"\x01garbage"
    text = render(raw)
    assert text == f"<unparseable {len(raw)} bytes>"


# --------------------------------------------------------------------------- utc_timestamp

@pytest.mark.parametrize(("now", "expected"), [
    # Kalshi's documented example instant; .0359 must truncate to .035, not round to .036.
    (1691558898.0359, b"20230809-05:28:18.035"),
    (1691558898.035, b"20230809-05:28:18.035"),
    (1691558898.9996, b"20230809-05:28:18.999"),
    (1691558898, b"20230809-05:28:18.000"),
    (0.0, b"19700101-00:00:00.000"),
    (951782400.5, b"20000229-00:00:00.500"),
])
def test_utc_timestamp_truncates_milliseconds(now: float, expected: bytes) -> None:
    assert utc_timestamp(now) == expected


@given(seconds=st.integers(min_value=0, max_value=4_102_444_799),
       millis=st.integers(min_value=0, max_value=999),
       below_a_millisecond=st.floats(min_value=0.0002, max_value=0.0008))
def test_property_utc_timestamp_matches_datetime(seconds: int, millis: int,
                                                 below_a_millisecond: float) -> None:
    stamp = utc_timestamp(seconds + millis / 1000 + below_a_millisecond)
    expected = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y%m%d-%H:%M:%S")
    assert stamp == f"{expected}.{millis:03d}".encode()


def test_utc_timestamp_defaults_to_now() -> None:
    before = int(time.time())
    stamp = utc_timestamp()
    after = int(time.time())
    assert re.fullmatch(rb"\d{8}-\d{2}:\d{2}:\d{2}\.\d{3}", stamp)
    stamped = int(datetime.strptime(stamp[:17].decode(), "%Y%m%d-%H:%M:%S")
                  .replace(tzinfo=UTC).timestamp())
    assert before <= stamped <= after


@pytest.mark.parametrize(("value", "expected"), [
    (b"20230809-05:28:18.035", 1691558898.035),
    (b"20230809-05:28:18", 1691558898.0),
    (b"20230809-05:28:18.5", 1691558898.5),
    (b"20230809-05:28:18.035123", 1691558898.035123),
    (b"20230230-05:28:18.035", None),  # no 30 February
    (b"20230809 05:28:18.035", None),
    (b"20230809-05:28:18.", None),
    (None, None),
])
def test_parse_utc_timestamp(value: bytes | None, expected: float | None) -> None:
    parsed = parse_utc_timestamp(value)
    assert parsed == pytest.approx(expected) if expected is not None else parsed is None


def test_header_value_finds_a_field_without_parsing() -> None:
    raw = encode([(35, b"0"), (49, b"KalshiNR"), (34, 12), (52, b"20230809-05:28:18.035")])
    assert header_value(raw, 34) == b"12"
    assert header_value(raw, 52) == b"20230809-05:28:18.035"
    assert header_value(raw, 112) is None
