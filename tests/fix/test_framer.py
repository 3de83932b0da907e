"""The FIX framer: tables of valid and invalid streams, and Hypothesis properties.

Frames are checked against an independent re-implementation of the FIXT.1.1 framing rules
(:func:`verify_independently`), not against the framer's own arithmetic.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixproxy.errors import FramingError
from fixproxy.fix.codec import FieldValue, encode
from fixproxy.fix.framer import MAX_FRAME_SIZE, FixFramer, Frame, byte_sum
from fixproxy.kalshi import KNOWN_MSG_TYPES

SOH = b"\x01"
HEAD = b"8=FIXT.1.1\x019="
BODY = (b"35=D\x0149=0b1c-key\x0156=KalshiNR\x0134=2\x0152=20230809-05:28:18.035\x01"
        b"11=order-1\x0155=KXBTC\x0154=1\x0138=10\x0144=0.55\x01")
SMALLEST_ALLOWED_MAX = 27  # "8=FIXT.1.1|9=" + 2 digits + "35=0|" + "10=000|"


def raw_frame(body: bytes, *, begin: bytes = b"FIXT.1.1", length: int | bytes | None = None,
              checksum: bytes | None = None) -> bytes:
    """Build a frame by hand (not through the codec), optionally with a wrong 9 or 10."""
    if length is None:
        length = len(body)
    length_text = length if isinstance(length, bytes) else str(length).encode()
    message = b"8=" + begin + b"\x019=" + length_text + SOH + body
    if checksum is None:
        checksum = b"%03d" % (sum(message) % 256)
    return message + b"10=" + checksum + SOH


def verify_independently(raw: bytes) -> None:
    """Assert that ``raw`` is one well-formed FIXT.1.1 message, re-deriving 9 and 10."""
    assert raw.startswith(HEAD)
    length_end = raw.index(SOH, len(HEAD))
    length_text = raw[len(HEAD):length_end]
    assert length_text.isdigit()
    body_start = length_end + 1
    trailer_start = body_start + int(length_text)
    assert raw[body_start:body_start + 3] == b"35="
    assert raw[trailer_start - 1:trailer_start] == SOH
    assert raw[trailer_start:trailer_start + 3] == b"10="
    assert len(raw) == trailer_start + 7
    assert raw.endswith(SOH)
    assert raw[trailer_start + 3:-1].isdigit()
    assert int(raw[trailer_start + 3:-1]) == sum(raw[:trailer_start]) % 256


VALID = raw_frame(BODY)


def drain(framer: FixFramer) -> list[Frame]:
    """Every message the framer can give right now."""
    frames: list[Frame] = []
    while (frame := framer.next_message()) is not None:
        frames.append(frame)
    return frames


def feed(framer: FixFramer, chunks: Sequence[bytes], *,
         eof: bool = True) -> tuple[list[Frame], FramingError | None]:
    """Feed ``chunks`` draining after each, then EOF; stop at the first FramingError.

    Checks the memory bound on the way: what the framer holds is at most one partial frame
    (under ``max_frame_size``) plus the chunk just handed over.
    """
    frames: list[Frame] = []
    try:
        for chunk in chunks:
            framer.receive_data(chunk)
            assert framer.buffered <= framer.max_frame_size + len(chunk)
            frames.extend(drain(framer))
            assert framer.buffered < framer.max_frame_size
        if eof:
            framer.receive_data(b"")
            frames.extend(drain(framer))
            assert framer.buffered == 0
    except FramingError as exc:
        return frames, exc
    return frames, None


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (out-of-range and repeated offsets ignored)."""
    if not data:
        return []  # an empty chunk would mean end of stream
    points = sorted({cut for cut in cuts if 0 < cut < len(data)})
    edges = [0, *points, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges)]


def one_byte_chunks(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# --------------------------------------------------------------------------- valid streams

def test_valid_message() -> None:
    framer = FixFramer()
    framer.receive_data(VALID)
    frame = framer.next_message()
    assert frame is not None
    assert frame.raw == VALID
    assert type(frame.raw) is bytes
    assert frame.msg_type == b"D"
    assert framer.next_message() is None
    assert framer.buffered == 0


def test_several_messages_in_one_chunk() -> None:
    messages = [raw_frame(b"35=0\x0134=%d\x01" % seq) for seq in range(1, 6)]
    framer = FixFramer()
    framer.receive_data(b"".join(messages))
    assert [frame.raw for frame in drain(framer)] == messages


def test_message_fed_one_byte_at_a_time() -> None:
    framer = FixFramer()
    frames: list[Frame] = []
    for chunk in one_byte_chunks(VALID):
        assert frames == []
        framer.receive_data(chunk)
        frames.extend(drain(framer))
    assert [frame.raw for frame in frames] == [VALID]


def test_partial_message_is_held_until_complete() -> None:
    framer = FixFramer()
    framer.receive_data(VALID[:-1])
    assert framer.next_message() is None
    assert framer.buffered == len(VALID) - 1
    framer.receive_data(VALID[-1:])
    frame = framer.next_message()
    assert frame is not None
    assert frame.raw == VALID


@pytest.mark.parametrize("body", [
    # Fields in an unusual order, a repeated tag, '=' inside a value, bytes above 0x7f.
    b"35=8\x0158=a=b==c\x0158=again\x0156=X\x0149=Y\x01",
    b"35=B\x01148=caf\xc3\xa9 \xff\x80\x01",
    # A data field holding SOH and '=': the framer trusts 9, never splits on SOH.
    b"35=A\x0195=7\x0196=ab\x01c=d\x01\x01108=30\x01",
])
def test_frame_is_the_exact_input_slice(body: bytes) -> None:
    message = raw_frame(body)
    stream = VALID + message + VALID
    framer = FixFramer()
    framer.receive_data(stream)
    frames = drain(framer)
    assert [frame.raw for frame in frames] == [VALID, message, VALID]
    assert b"".join(frame.raw for frame in frames) == stream


@pytest.mark.parametrize("msg_type", [b"0", b"A", b"D", b"8", b"j", b"UOG", b"U1", b"AI", b"UMS"])
def test_msg_type(msg_type: bytes) -> None:
    message = raw_frame(b"35=" + msg_type + b"\x0134=7\x01")
    framer = FixFramer()
    framer.receive_data(message)
    frame = framer.next_message()
    assert frame == Frame(message, msg_type)


def test_clean_eof_returns_none() -> None:
    framer = FixFramer()
    framer.receive_data(VALID)
    framer.receive_data(b"")
    assert framer.at_eof
    frame = framer.next_message()
    assert frame is not None
    assert frame.raw == VALID
    assert framer.next_message() is None
    assert framer.next_message() is None


def test_eof_on_empty_stream_returns_none() -> None:
    framer = FixFramer()
    assert not framer.at_eof
    framer.receive_data(b"")
    assert framer.at_eof
    assert framer.next_message() is None


def test_data_after_eof_is_refused() -> None:
    framer = FixFramer()
    framer.receive_data(b"")
    with pytest.raises(FramingError):
        framer.receive_data(VALID)


@pytest.mark.parametrize("cut", range(1, len(VALID)))
def test_eof_inside_a_frame(cut: int) -> None:
    framer = FixFramer()
    framer.receive_data(VALID[:cut])
    assert framer.next_message() is None
    framer.receive_data(b"")
    with pytest.raises(FramingError, match="stream ended inside a message"):
        framer.next_message()


def test_default_limit_is_max_frame_size() -> None:
    assert FixFramer().max_frame_size == MAX_FRAME_SIZE == 1 << 20


def test_frame_of_exactly_the_limit_is_accepted_and_one_more_byte_is_not() -> None:
    limit = 100
    body = b"35=0\x01"
    # 9 grows from one digit to two along the way, so search rather than subtract.
    padding = next(n for n in range(limit)
                   if len(raw_frame(body + b"58=" + b"x" * n + SOH)) == limit)
    exact = raw_frame(body + b"58=" + b"x" * padding + SOH)
    framer = FixFramer(max_frame_size=limit)
    framer.receive_data(exact)
    frame = framer.next_message()
    assert frame is not None
    assert frame.raw == exact

    over = raw_frame(body + b"58=" + b"x" * (padding + 1) + SOH)
    assert len(over) == limit + 1
    framer = FixFramer(max_frame_size=limit)
    # Only the header: the refusal must not wait for the body.
    framer.receive_data(over[:over.index(b"35=")])
    with pytest.raises(FramingError, match="over the limit"):
        framer.next_message()


def test_limit_below_any_message_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        FixFramer(max_frame_size=SMALLEST_ALLOWED_MAX - 1)
    assert FixFramer(max_frame_size=SMALLEST_ALLOWED_MAX).max_frame_size == SMALLEST_ALLOWED_MAX


# --------------------------------------------------------------------------- invalid streams

INVALID: list[tuple[str, bytes, str]] = [
    ("begin string FIX.4.4", raw_frame(BODY, begin=b"FIX.4.4"), "FIXT.1.1"),
    ("begin string lower case", raw_frame(BODY, begin=b"fixt.1.1"), "FIXT.1.1"),
    ("9 not second", b"8=FIXT.1.1\x0135=D\x019=5\x0110=000\x01", "FIXT.1.1"),
    ("9 missing", b"8=FIXT.1.1\x0110=000\x01", "FIXT.1.1"),
    ("35 not third", raw_frame(b"49=0b1c-key\x0135=D\x01"), "MsgType (35) is not the third"),
    ("35 not third, seen before the body is complete",
     b"8=FIXT.1.1\x019=500\x0149=0b1c-key\x01", "MsgType (35) is not the third"),
    ("BodyLength not a number", raw_frame(BODY, length=b"6x"), "BodyLength (9) is not a number"),
    ("BodyLength negative", raw_frame(BODY, length=b"-5"), "BodyLength (9) is not a number"),
    ("BodyLength empty", raw_frame(BODY, length=b""), "BodyLength (9) is not a number"),
    ("BodyLength non-ASCII digit", raw_frame(BODY, length="٣".encode()),
     "BodyLength (9) is not a number"),
    ("BodyLength one too short", raw_frame(BODY, length=len(BODY) - 1),
     "does not end at the CheckSum"),
    ("BodyLength one too long", raw_frame(BODY, length=len(BODY) + 1) + VALID,
     "does not end at the CheckSum"),
    ("BodyLength far too long", raw_frame(BODY, length=len(BODY) + 40) + VALID + VALID,
     "does not end at the CheckSum"),
    ("BodyLength too short for any message", HEAD + b"4\x0135=\x0110=000\x01", "too short"),
    ("checksum off by one", raw_frame(BODY, checksum=b"%03d" % ((int(VALID[-4:-1]) + 1) % 256)),
     "CheckSum (10) is"),
    ("checksum zero", raw_frame(BODY, checksum=b"000"), "CheckSum (10) is"),
    ("checksum with a letter", raw_frame(BODY, checksum=b"1a3"), "not three digits"),
    ("checksum with a sign", raw_frame(BODY, checksum=b"+12"), "not three digits"),
    ("checksum with a space", raw_frame(BODY, checksum=b" 12"), "not three digits"),
    ("checksum two digits", raw_frame(BODY, checksum=b"12") + VALID, "CheckSum"),
    ("checksum four digits", raw_frame(BODY, checksum=b"0123"), "CheckSum"),
    ("no SOH before 10", raw_frame(BODY[:-1] + b"X"), "does not end at the CheckSum"),
    ("empty MsgType", raw_frame(b"35=\x0149=0b1c-key\x01"), "MsgType (35) is empty"),
    ("frame over the limit announced by 9, body not sent",
     HEAD + str(MAX_FRAME_SIZE).encode() + SOH, "over the limit"),
    ("2 GB BodyLength", HEAD + b"2147483648\x01", "longer than"),
    ("never-ending 9 field", HEAD + b"1" * 8, "longer than"),
    ("never-ending 9 field of zeros", HEAD + b"0" * 64, "longer than"),
    ("HTTP request", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "FIXT.1.1"),
    ("HTTP request, first byte only", b"G", "FIXT.1.1"),
    ("TLS ClientHello", bytes.fromhex("160301020001000 1fc0303".replace(" ", "")), "FIXT.1.1"),
    ("TLS ClientHello, first byte only", b"\x16", "FIXT.1.1"),
    ("garbage after a valid message", VALID + b"\x00\x00\x00", "FIXT.1.1"),
]


def _expect_error(framer: FixFramer, data: bytes, fragment: str) -> FramingError:
    """Feed ``data`` without EOF: the error must come from the bytes alone."""
    framer.receive_data(data)
    with pytest.raises(FramingError, match=re.escape(fragment)) as info:
        drain(framer)
    return info.value


@pytest.mark.parametrize(("data", "fragment"), [(d, f) for _, d, f in INVALID],
                         ids=[name for name, _, _ in INVALID])
def test_invalid_stream_is_refused(data: bytes, fragment: str) -> None:
    error = _expect_error(FixFramer(), data, fragment)
    # Pure code does not know which peer sent the bytes; the relay labels the side.
    assert error.side is None


@pytest.mark.parametrize(("data", "fragment"), [(d, f) for _, d, f in INVALID],
                         ids=[name for name, _, _ in INVALID])
def test_invalid_stream_fed_one_byte_at_a_time_is_refused(data: bytes, fragment: str) -> None:
    framer = FixFramer()
    frames, error = feed(framer, one_byte_chunks(data), eof=True)
    assert isinstance(error, FramingError)
    assert all(frame.raw == VALID for frame in frames)


@pytest.mark.parametrize(("data", "fragment"), [(d, f) for _, d, f in INVALID],
                         ids=[name for name, _, _ in INVALID])
def test_framer_stays_broken_after_an_error(data: bytes, fragment: str) -> None:
    framer = FixFramer()
    first = _expect_error(framer, data, fragment)
    for _ in range(2):
        with pytest.raises(FramingError, match="broken") as info:
            framer.next_message()
        assert info.value.__cause__ is first
        with pytest.raises(FramingError, match="broken"):
            framer.receive_data(VALID)
        with pytest.raises(FramingError, match="broken"):
            framer.receive_data(b"")


def test_framer_stays_broken_after_eof_inside_a_frame() -> None:
    framer = FixFramer()
    framer.receive_data(VALID[:20])
    framer.receive_data(b"")
    with pytest.raises(FramingError):
        framer.next_message()
    with pytest.raises(FramingError, match="broken"):
        framer.next_message()


def test_oversize_frame_refused_by_a_small_limit_without_the_body() -> None:
    framer = FixFramer(max_frame_size=64)
    framer.receive_data(HEAD + b"50\x01")
    with pytest.raises(FramingError, match="over the limit of 64"):
        framer.next_message()


# --------------------------------------------------------------------------- properties

MSG_TYPES = st.one_of(
    st.sampled_from(sorted(KNOWN_MSG_TYPES)),
    st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=4),
)
VALUES = st.binary(max_size=24).map(lambda value: value.replace(SOH, b""))
ANY_TAG = st.integers(min_value=1, max_value=99_999).filter(lambda tag: tag not in (95, 96))
# Without 8, 9 and 10 in the body no field can look like the start of a trailer or a header.
NON_FRAMING_TAG = ANY_TAG.filter(lambda tag: tag not in (8, 9, 10))


@st.composite
def fix_messages(draw: st.DrawFn, tags: st.SearchStrategy[int] = ANY_TAG,
                 data_field: bool = True) -> bytes:
    """A valid message: random MsgType, random fields, maybe a 95/96 holding SOH and '='."""
    fields: list[tuple[int, FieldValue]] = [(35, draw(MSG_TYPES))]
    fields += draw(st.lists(st.tuples(tags, VALUES), max_size=6))
    if data_field and draw(st.booleans()):
        data = draw(st.binary(max_size=24) | st.just(b"\x01=\x0110=123\x01"))
        at = draw(st.integers(min_value=1, max_value=len(fields)))
        fields[at:at] = [(95, len(data)), (96, data)]
    return encode(fields)


@given(messages=st.lists(fix_messages(), min_size=1, max_size=5), data=st.data())
def test_property_any_chunking_yields_the_same_messages(messages: list[bytes],
                                                         data: st.DataObject) -> None:
    stream = b"".join(messages)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=12))
    for chunks in (split(stream, cuts), one_byte_chunks(stream), [stream]):
        frames, error = feed(FixFramer(), chunks)
        assert error is None
        assert [frame.raw for frame in frames] == messages
        for frame, message in zip(frames, messages, strict=True):
            assert frame.msg_type == message.split(b"\x0135=", 1)[1].split(SOH, 1)[0]


PREFIXES = st.one_of(
    st.just(b""),
    st.just(HEAD),
    fix_messages(),
    st.lists(fix_messages(), max_size=3).map(b"".join),
    fix_messages().flatmap(lambda m: st.integers(0, len(m)).map(lambda cut: m[:cut])),
)


@given(prefix=PREFIXES, garbage=st.binary(max_size=300), data=st.data(),
       limit=st.integers(min_value=SMALLEST_ALLOWED_MAX, max_value=400))
def test_property_garbage_yields_messages_then_none_or_error(
        prefix: bytes, garbage: bytes, data: st.DataObject, limit: int) -> None:
    stream = prefix + garbage
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=12))
    framer = FixFramer(max_frame_size=limit)
    # feed() lets only FramingError through; anything else fails the test here.
    frames, error = feed(framer, split(stream, cuts), eof=data.draw(st.booleans()))
    # Frames are contiguous slices from the start of the stream, each valid on its own.
    assert stream.startswith(b"".join(frame.raw for frame in frames))
    for frame in frames:
        verify_independently(frame.raw)
        assert len(frame.raw) <= limit
    if error is not None:
        with pytest.raises(FramingError):
            framer.next_message()


@given(message=fix_messages(tags=NON_FRAMING_TAG, data_field=False), data=st.data())
def test_property_one_changed_byte_is_always_refused(message: bytes,
                                                     data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(message) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    mutated = bytearray(message)
    mutated[at] ^= flip
    frames, error = feed(FixFramer(), [bytes(mutated)])
    assert frames == []
    assert isinstance(error, FramingError)


@given(message=fix_messages(), follower=fix_messages(), data=st.data())
def test_property_one_changed_byte_never_passes_silently(message: bytes, follower: bytes,
                                                         data: st.DataObject) -> None:
    # With any tags (10 and data fields included) and a message after it, a changed 9 may
    # point at another trailer; whatever comes out must still be a genuinely valid frame.
    at = data.draw(st.integers(min_value=0, max_value=len(message) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    mutated = bytearray(message)
    mutated[at] ^= flip
    stream = bytes(mutated) + follower
    frames, _ = feed(FixFramer(), one_byte_chunks(stream) if len(stream) < 200 else [stream])
    assert stream.startswith(b"".join(frame.raw for frame in frames))
    for frame in frames:
        verify_independently(frame.raw)
        assert frame.raw != bytes(mutated)


@given(st.binary(max_size=3000))
def test_byte_sum_is_the_exact_sum_of_the_bytes(data: bytes) -> None:
    assert byte_sum(memoryview(data)) == sum(data)


def test_byte_sum_at_the_adler_chunk_edges() -> None:
    for size in (0, 1, 255, 256, 257, 512, 513):
        data = b"\xff" * size
        assert byte_sum(memoryview(data)) == 255 * size
