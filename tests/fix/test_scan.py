"""The C frame scanner against the Python framer it accelerates: the same bytes, the same answers.

The Python framer is the reference. The scanner may only say "a complete valid frame ends here"
where the reference returns that frame, and otherwise defers. These properties feed both the
same streams, valid, damaged and random, chunked every way, and demand identical frames and
identical errors. Without a compiler the scanner is not built, and these tests say so.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Final

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fixproxy.errors import FramingError
from fixproxy.fix import framer as framer_module
from fixproxy.fix.codec import encode
from fixproxy.fix.framer import FixFramer
from fixproxy.session.sequence import read_seq_num

SCAN = framer_module._scan
needs_scanner = pytest.mark.skipif(
    SCAN is None, reason="the C scanner is not built here (no compiler at install, or "
                         "FIXPROXY_PURE_FRAMER is set): the Python framer runs alone")

SMALL_FRAME: Final = 4096

_values = st.binary(min_size=1, max_size=30).filter(lambda value: b"\x01" not in value)
_frames = st.builds(
    lambda msg_type, fields: encode([(35, msg_type), *fields]),
    st.sampled_from([b"0", b"5", b"8", b"D", b"UOG", b"A"]),
    st.lists(st.tuples(st.integers(11, 9999).filter(lambda tag: tag not in (95, 96)), _values),
             max_size=8))


def _damage(data: bytes, draw: st.DrawFn) -> bytes:
    """Flip, drop or insert a few bytes anywhere, or cut the end off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        kind = draw(st.sampled_from(["flip", "drop", "insert", "cut"]))
        if kind == "flip":
            out[at] = draw(st.integers(0, 255))
        elif kind == "drop":
            del out[at]
        elif kind == "insert":
            out.insert(at, draw(st.sampled_from([0x01, ord("="), ord("9"), 0x00])))
        else:
            del out[at:]
    return bytes(out)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(_frames, min_size=1, max_size=5)))
    return _damage(data, draw) if draw(st.booleans()) else data


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _run(chunks: list[bytes], *, accelerated: bool, eof: bool) -> Iterator[object]:
    """Everything a framer says about ``chunks``: frames, then the error or the end."""
    framer = FixFramer(SMALL_FRAME, accelerated=accelerated)
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            framer.receive_data(chunk)
            while (found := framer.next_raw()) is not None:
                yield found
        yield ("buffered", framer.buffered)
    except FramingError as exc:
        yield ("error", str(exc))


@needs_scanner
@settings(max_examples=400)
@given(st.data(), streams(), st.booleans())
@example(None, b"8=FIXT.1.1\x019=5\x0135=0\x0110=000\x01", False)
def test_scanner_and_reference_agree_on_every_stream(data: st.DataObject, stream: bytes,
                                                     eof: bool) -> None:
    chunks = [stream] if data is None else data.draw(chunkings(stream))
    assert list(_run(chunks, accelerated=True, eof=eof)) == \
        list(_run(chunks, accelerated=False, eof=eof))


@needs_scanner
@settings(max_examples=400)
@given(st.binary(max_size=200), st.integers(0, 40))
def test_scanner_says_yes_only_where_the_reference_finds_that_frame(junk: bytes,
                                                                     pos: int) -> None:
    assert SCAN is not None
    for buf in (junk, b"8=FIXT.1.1\x019=" + junk, encode([(35, b"D")]) + junk):
        found = SCAN(buf, pos, SMALL_FRAME, len(str(SMALL_FRAME)))
        if found is None:
            continue
        end, type_start, type_end = found
        reference = FixFramer(SMALL_FRAME, accelerated=False)
        reference.receive_data(buf[pos:])
        assert reference.next_raw() == (buf[pos:end], buf[type_start:type_end])


@needs_scanner
def test_scanner_finds_a_valid_frame_and_defers_on_a_bad_checksum() -> None:
    assert SCAN is not None
    frame = encode([(35, b"D"), (11, b"order-1")])
    assert SCAN(frame, 0, SMALL_FRAME, 4) == (len(frame), frame.index(b"35=") + 3,
                                               frame.index(b"\x01", frame.index(b"35=")))
    bad = frame[:-4] + b"%03d\x01" % ((int(frame[-4:-1]) + 1) % 256)
    assert SCAN(bad, 0, SMALL_FRAME, 4) is None
    assert SCAN(frame[:-1], 0, SMALL_FRAME, 4) is None  # incomplete: the reference decides
    assert SCAN(bytearray(frame), 0, SMALL_FRAME, 4) is not None


def test_the_framer_says_which_scanner_runs() -> None:
    expected = "python" if SCAN is None else "c"
    assert expected == framer_module.SCANNER


STOP: Final = frozenset({b"5", b"3"})
KNOWN: Final = frozenset({b"0", b"5", b"8", b"D", b"A", b"3"})


def _count_frame_by_frame(chunks: list[bytes], *, eof: bool, fast: bool
                          ) -> tuple[bytes, dict[bytes, int], list[object]]:
    """Bytes taken, counts by MsgType and the sequence of stops (noted frames, the error or
    the end) of a framer read as the relay reads it, with or without the fast path."""
    framer = FixFramer(SMALL_FRAME, accelerated=fast)
    counts: dict[bytes, int] = {}
    taken = bytearray()
    stops: list[object] = []
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            framer.receive_data(chunk)
            while True:
                buf, start, end, _ = framer.take_counted(counts, KNOWN, b"other", STOP)
                taken += buf[start:end]
                found = framer.next_raw()
                if found is None:
                    break
                raw, msg_type = found
                key = msg_type if msg_type in KNOWN else b"other"
                counts[key] = counts.get(key, 0) + 1
                taken += raw
                if msg_type in STOP:
                    stops.append(raw)
        stops.append(("buffered", framer.buffered))
    except FramingError as exc:
        stops.append(("error", str(exc)))
    return bytes(taken), counts, stops


@needs_scanner
@settings(max_examples=400)
@given(st.data(), streams(), st.booleans())
def test_taking_runs_at_once_counts_and_stops_like_frame_by_frame(
        data: st.DataObject, stream: bytes, eof: bool) -> None:
    chunks = data.draw(chunkings(stream))
    assert _count_frame_by_frame(chunks, eof=eof, fast=True) == \
        _count_frame_by_frame(chunks, eof=eof, fast=False)


@needs_scanner
def test_take_counted_stops_before_a_noted_message() -> None:
    first, second = encode([(35, b"D"), (34, 7)]), encode([(35, b"D"), (34, 8)])
    logout, order = encode([(35, b"5"), (34, 9)]), encode([(35, b"D"), (34, 10)])
    framer = FixFramer()
    framer.receive_data(first + second + logout + order)
    counts: dict[bytes, int] = {}
    buf, start, end, last_seq = framer.take_counted(counts, KNOWN, b"other", STOP)
    assert (start, end, last_seq) == (0, len(first) + len(second), 8)
    assert buf[start:end] == first + second
    assert counts == {b"D": 2}
    assert framer.next_raw() == (logout, b"5")


_seq_values = st.one_of(
    st.integers(0, 10**20).map(lambda n: str(n).encode()),
    st.text("0123456789", min_size=1, max_size=22).map(str.encode),
    _values)


_MANY_TYPES: Final = [b"D", b"8", b"F", b"G", b"H", b"9", b"AE", b"UOG", b"j", b"3", b"XY",
                      b"q"]


@needs_scanner
@settings(max_examples=400)
@given(st.lists(st.tuples(st.sampled_from(_MANY_TYPES),
                          st.none() | _seq_values, st.booleans()), min_size=1, max_size=30))
def test_the_last_msg_seq_num_taken_is_read_as_the_reference_reads_it(
        frames: list[tuple[bytes, bytes | None, bool]]) -> None:
    """Many distinct MsgTypes (more than the scanner tallies at once), a 34 that is a number,
    too long, not digits or absent, and a field ending in "34" before it."""
    raws = [encode([(35, msg_type), *([(58, b"x34")] if decoy else []),
                    *([(34, seq)] if seq is not None else [])])
            for msg_type, seq, decoy in frames]
    framer = FixFramer()
    framer.receive_data(b"".join(raws))
    counts: dict[bytes, int] = {}
    known = frozenset(_MANY_TYPES[:-2])
    buf, start, end, last_seq = framer.take_counted(counts, known, b"other", frozenset())
    assert (start, end) == (0, len(buf))
    expected = read_seq_num(raws[-1])
    assert last_seq == (-1 if expected is None else expected)
    want: dict[bytes, int] = {}
    for msg_type, _, _ in frames:
        key = msg_type if msg_type in known else b"other"
        want[key] = want.get(key, 0) + 1
    assert counts == want
