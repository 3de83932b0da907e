#!/usr/bin/env python3
"""Coverage-guided fuzzing of the engine-facing input path: framer, Logon rewrite, renumbering.

Theory of operation
-------------------
Everything an engine sends crosses the same pure code before anything reaches Kalshi: the
framer cuts the byte stream into messages, the first message goes to the Logon rewrite (the
relay hands it over whatever its MsgType), and later messages may be renumbered when the
session translates sequence numbers, with ``read_seq_num`` looking at every read. That code
may only ever fail with our own errors: a :class:`FramingError` from the framer, a
:class:`LogonRefused` carrying the Text (58) the engine will read, or a :class:`FixProxyError`
from the renumbering. Anything else (``ValueError``, ``UnicodeDecodeError``, an ``IndexError``)
escapes the relay's handling and drops the connection without telling the engine why.

:func:`check` turns one fuzz input into one engine stream and asserts those contracts plus the
properties the design promises:

* the same frames and the same verdict from the Python framer and the C scanner (when built),
  and however the stream is chunked (one chunk is the
  reference); each frame is the exact input slice and passes an independent re-derivation of
  BodyLength (9) and CheckSum (10); the buffer never holds more than one partial frame plus the
  chunk just handed over; after an error the framer stays broken;
* a Logon is either refused with a non-empty text, or rewritten into a message that the framer
  accepts as one frame and whose RSA-PSS signature verifies over ``52|A|34|49|56`` as sent;
* ``read_seq_num`` never raises, and renumbering either fails with a FixProxyError or yields a
  frame that the inverse renumbering turns back into the original numbers.

Input layout (so that seeds can be written by hand, see make_corpus.py): byte 0 picks the
session policy (bits 0-1), whether frames are repaired (bit 2: BodyLength and CheckSum
recomputed, so that mutations inside a message reach the Logon rewrite instead of dying at the
CheckSum), a small frame limit (bit 3) and the chunk shape (bits 4-7); byte 1 parametrises the
chunk sizes; the rest is the stream. Keeping the decoding here, without atheris'
FuzzedDataProvider, lets the test suite replay inputs in-process without atheris installed.

The alternative rejected was one fuzz target per function: the bugs worth finding live where
the framer's idea of a message meets the codec's and the rewrite's.
"""

from __future__ import annotations

import functools
import gc
import sys
import types
from collections.abc import Iterator
from typing import Final

from cryptography.hazmat.primitives.asymmetric import rsa

from fixproxy.errors import FixProxyError, FramingError, LogonRefused
from fixproxy.fix import tags
from fixproxy.fix.codec import iter_fields
from fixproxy.fix.framer import MAX_FRAME_SIZE, FixFramer, Frame
from fixproxy.fix.logon import LogonPolicy, rewrite_logon
from fixproxy.session.sequence import SequenceTranslator, read_seq_num
from fixproxy.signing import LogonSigner, verify_signature

API_KEY: Final = "0b1c6d1e-2f3a-4b5c-8d9e-0a1b2c3d4e5f"
NOW: Final = 1691558898.0359
"""The clock passed to the rewrite, fixed so that a replayed input behaves the same."""
SMALL_LIMIT: Final = 256
"""The frame limit selected by bit 3: small enough that the fuzzer reaches the oversize paths."""
KALSHI_FLAGS: Final[tuple[tuple[int, bytes], ...]] = (
    (tags.CANCEL_ORDERS_ON_DISCONNECT, b"Y"),
    (tags.USE_DOLLARS, b"Y"),
    (tags.MESSAGE_RETENTION_PERIOD, b"48"),
)
POLICIES: Final[tuple[LogonPolicy, ...]] = (
    LogonPolicy("orders", API_KEY, "KalshiNR", force_reset=True),
    LogonPolicy("orders", API_KEY, "KalshiNR", force_reset=True, kalshi_flags=KALSHI_FLAGS),
    LogonPolicy("orders", API_KEY, "KalshiNR", force_reset=True, translate_sequence=True),
    LogonPolicy("resend", API_KEY, "KalshiRT", force_reset=False),
)
TRANSLATOR: Final = SequenceTranslator(out_offset=4, in_offset=6)
INVERSE: Final = SequenceTranslator(out_offset=-4, in_offset=-6)
"""Undoes :data:`TRANSLATOR` in the same direction (its offsets are never valid for a real
session, which is why it is built directly rather than through ``for_logon``)."""

PREFIX: Final = b"8=FIXT.1.1\x019="
_TRAILER_LEN: Final = len(b"10=000\x01")
_ONCE_IN_A_LOGON: Final = (tags.SENDER_COMP_ID, tags.TARGET_COMP_ID, tags.MSG_SEQ_NUM,
                           tags.SENDING_TIME, tags.ENCRYPT_METHOD, tags.HEART_BT_INT,
                           tags.DEFAULT_APPL_VER_ID, tags.RAW_DATA_LENGTH, tags.RAW_DATA)
_SEQ_TAGS: Final = frozenset({tags.MSG_SEQ_NUM, tags.NEW_SEQ_NO, tags.REF_SEQ_NUM,
                              tags.BEGIN_SEQ_NO, tags.END_SEQ_NO,
                              tags.NEXT_EXPECTED_MSG_SEQ_NUM})

REPAIR: Final = 0x04
SMALL: Final = 0x08


def control_byte(policy: int, *, repair: bool = False, small_limit: bool = False,
                 shape: int = 0) -> int:
    """Byte 0 of an input: ``policy`` indexes :data:`POLICIES`, ``shape`` picks the chunking."""
    if not (0 <= policy < len(POLICIES) and 0 <= shape < 16):
        raise ValueError("policy is 0..3 and shape 0..15")
    return policy | (REPAIR if repair else 0) | (SMALL if small_limit else 0) | shape << 4


def make_input(stream: bytes, *, policy: int = 0, repair: bool = False,
               small_limit: bool = False, shape: int = 0, param: int = 0) -> bytes:
    """A fuzz input that feeds ``stream`` with the given policy and chunking."""
    return bytes([control_byte(policy, repair=repair, small_limit=small_limit, shape=shape),
                  param & 0xFF]) + stream


@functools.cache
def _signer() -> LogonSigner:
    # One key per process: generating RSA-2048 costs far more than a fuzz iteration.
    return LogonSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def repair_frames(stream: bytes) -> bytes:
    """Recompute BodyLength (9) and CheckSum (10) of everything that starts like a message.

    Bytes before the first ``8=FIXT.1.1|9=`` stay as they are; each message keeps its body up to
    and including the SOH before its last ``10=`` (the whole rest if there is none).
    """
    parts = stream.split(PREFIX)
    out = [parts[0]]
    for part in parts[1:]:
        soh = part.find(b"\x01")
        body = part[soh + 1:] if soh >= 0 else b""
        trailer = body.rfind(b"\x0110=")
        if trailer >= 0:
            body = body[:trailer + 1]
        message = PREFIX + b"%d\x01" % len(body) + body
        out.append(message + b"10=%03d\x01" % (sum(message) & 0xFF))
    return b"".join(out)


def chunks(stream: bytes, shape: int, param: int) -> Iterator[bytes]:
    """Cut ``stream`` into non-empty reads: shape 0 is one read, 1 is byte by byte, the rest
    cycle through four sizes derived from ``shape`` and ``param``."""
    if shape == 0:
        if stream:
            yield stream
        return
    sizes: tuple[int, ...]
    if shape == 1:
        sizes = (1,)
    else:
        sizes = (1 + param % 7, 1 + param, 1 + (param * shape) % 61, shape * shape * 16)
    pos = 0
    turn = 0
    while pos < len(stream):
        size = sizes[turn % len(sizes)]
        yield stream[pos:pos + size]
        pos += size
        turn += 1


def verify_frame(raw: bytes, limit: int) -> None:
    """Assert that ``raw`` is one FIXT.1.1 message, re-deriving 9 and 10 without the framer."""
    assert raw.startswith(PREFIX), raw[:16]
    length_end = raw.index(b"\x01", len(PREFIX))
    digits = raw[len(PREFIX):length_end]
    assert digits.isdigit() and digits.isascii(), digits
    body_at = length_end + 1
    trailer_at = body_at + int(digits)
    assert len(raw) == trailer_at + _TRAILER_LEN <= limit
    assert raw[body_at:body_at + 3] == b"35="
    assert raw[trailer_at - 1] == 1 and raw[trailer_at:trailer_at + 3] == b"10="
    assert raw[-1] == 1
    assert raw[trailer_at + 3:-1] == b"%03d" % (sum(raw[:trailer_at]) % 256)


def frame_stream(reads: Iterator[bytes], limit: int, *, accelerated: bool = True
                 ) -> tuple[list[Frame], FramingError | None]:
    """Feed ``reads`` then end of stream, draining after each; only FramingError may escape."""
    framer = FixFramer(max_frame_size=limit, accelerated=accelerated)
    frames: list[Frame] = []
    try:
        for data in reads:
            framer.receive_data(data)
            # At most one partial frame (under the limit) plus the read just handed over.
            assert framer.buffered <= limit + len(data)
            while (frame := framer.next_message()) is not None:
                frames.append(frame)
            assert framer.buffered < limit
        framer.receive_data(b"")
        while (frame := framer.next_message()) is not None:
            frames.append(frame)
        assert framer.buffered == 0
    except FramingError as exc:
        # Broken means broken: every later use fails too, pointing at the first error.
        for use in (framer.next_message, lambda: framer.receive_data(b"x")):
            try:
                use()
            except FramingError as again:
                assert again.__cause__ is exc
            else:
                raise AssertionError("a broken framer accepted further use") from exc
        return frames, exc
    return frames, None


def check_logon(raw: bytes, policy: LogonPolicy) -> None:
    """Rewrite ``raw``: refused with a text, or signed, framed and verifiable; nothing else."""
    signer = _signer()
    try:
        result = rewrite_logon(raw, policy, signer, now=NOW)
    except LogonRefused as refused:
        assert refused.text.strip(), "a refusal must tell the engine why"
        assert str(refused) == refused.text
        assert refused.side == "engine"
        return
    out = result.raw
    framer = FixFramer()
    framer.receive_data(out)
    framer.receive_data(b"")
    assert framer.next_message() == Frame(out, tags.MT_LOGON)
    assert framer.next_message() is None
    verify_frame(out, MAX_FRAME_SIZE)
    fields = list(iter_fields(out))
    assert [tag for tag, _ in fields[:3]] == [tags.BEGIN_STRING, tags.BODY_LENGTH, tags.MSG_TYPE]
    assert [tag for tag, _ in fields[-3:]] == [tags.RAW_DATA_LENGTH, tags.RAW_DATA,
                                                tags.CHECKSUM]
    assert list(result.fields) == fields[2:-1]
    wire: dict[int, bytes] = {}
    for tag in _ONCE_IN_A_LOGON:
        found = [value for field_tag, value in fields if field_tag == tag]
        assert len(found) == 1, (tag, len(found))
        wire[tag] = found[0]
    assert wire[tags.SENDER_COMP_ID] == policy.api_key.encode()
    assert wire[tags.TARGET_COMP_ID] == policy.target_comp_id.encode()
    assert wire[tags.MSG_SEQ_NUM] == (b"1" if result.translated else b"%d" % result.msg_seq_num)
    assert wire[tags.RAW_DATA_LENGTH] == b"%d" % len(wire[tags.RAW_DATA])
    if policy.force_reset:
        assert [v for t, v in fields if t == tags.RESET_SEQ_NUM_FLAG] == [b"Y"]
    pre_hash = b"\x01".join((wire[tags.SENDING_TIME], tags.MT_LOGON, wire[tags.MSG_SEQ_NUM],
                             wire[tags.SENDER_COMP_ID], wire[tags.TARGET_COMP_ID]))
    assert verify_signature(signer.public_key(), pre_hash, wire[tags.RAW_DATA])


def _seq_fields(raw: bytes) -> list[tuple[int, bytes | int]]:
    """Every field of ``raw`` but its own 9 and 10, sequence numbers as ints (re-encoding
    drops leading zeros); a field in the body that merely carries tag 8, 9 or 10 counts."""
    fields: list[tuple[int, bytes | int]] = []
    for tag, value in list(iter_fields(raw))[2:-1]:
        digits = tag in _SEQ_TAGS and value.isdigit() and value.isascii()
        fields.append((tag, int(value) if digits else value))
    return [(tags.BEGIN_STRING, raw[2:raw.index(b"\x01")]), *fields]


def check_translation(raw: bytes) -> None:
    """``read_seq_num`` never raises; renumbering fails cleanly or round-trips."""
    seq = read_seq_num(raw)
    assert seq is None or seq >= 0
    for forward, backward in ((TRANSLATOR.to_gateway, INVERSE.to_gateway),
                              (TRANSLATOR.to_engine, INVERSE.to_engine)):
        try:
            moved = forward(raw)
        except FixProxyError:
            continue
        verify_frame(moved, MAX_FRAME_SIZE)
        try:
            back = backward(moved)
        except FixProxyError as exc:
            raise AssertionError(f"the renumbering made a number its inverse refuses: {exc}; "
                                 f"was a number below 1 shifted into range?") from exc
        verify_frame(back, MAX_FRAME_SIZE)
        assert _seq_fields(back) == _seq_fields(raw), "renumbering changed another field"


def check(data: bytes) -> None:
    """Run one fuzz input through framer, Logon rewrite and renumbering, asserting contracts.

    Raises:
        AssertionError: a promised property does not hold.
        Exception: whatever the code under test let escape other than its own errors.
    """
    if len(data) < 2:
        return
    control, param, stream = data[0], data[1], data[2:]
    policy = POLICIES[control & 0x03]
    if control & REPAIR:
        stream = repair_frames(stream)
    limit = SMALL_LIMIT if control & SMALL else MAX_FRAME_SIZE
    reference, reference_error = frame_stream(iter((stream,) if stream else ()), limit,
                                              accelerated=False)
    frames, error = frame_stream(chunks(stream, control >> 4, param), limit)
    assert frames == reference, "chunking (or the C scanner) changed the frames"
    assert (error is None) == (reference_error is None), \
        "chunking (or the C scanner) changed the verdict"
    whole, whole_error = frame_stream(iter((stream,) if stream else ()), limit)
    assert whole == reference, "the C scanner changed the frames"
    assert str(whole_error) == str(reference_error), "the C scanner changed the error"
    assert stream.startswith(b"".join(frame.raw for frame in frames))
    for index, frame in enumerate(frames):
        verify_frame(frame.raw, limit)
        value_end = frame.raw.index(b"\x01", frame.raw.index(b"\x0135=") + 1)
        assert frame.msg_type == frame.raw[frame.raw.index(b"\x0135=") + 4:value_end]
        # The relay hands the first message to the rewrite whatever its type.
        if index == 0 or frame.msg_type == tags.MT_LOGON:
            check_logon(frame.raw, policy)
        if index > 0:
            check_translation(frame.raw)


def main(argv: list[str]) -> None:
    """Run libFuzzer over :func:`check`; ``argv`` takes libFuzzer's flags and corpus dirs."""
    import atheris  # noqa: PLC0415  (only the fuzzing run needs it; the tests replay without)

    # Coverage of fixproxy and of this file only: instrumenting everything loaded
    # (atheris.instrument_all) takes about 20 s per start, which -fork pays for every job,
    # and the coverage of cryptography's wrappers steers the fuzzer nowhere useful.
    own = [obj for obj in gc.get_objects()
           if isinstance(obj, types.FunctionType)
           and str(obj.__module__).partition(".")[0] in (__name__, "fixproxy")]
    for function in own:
        atheris.instrument_func(function)
    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
