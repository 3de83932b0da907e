"""Find FIX message boundaries in a byte stream, strictly.

Theory of operation
-------------------
FIX is self-delimiting: every message starts ``8=FIXT.1.1|9=<BodyLength>|35=<MsgType>|`` and ends
``10=<CheckSum>|``. BodyLength counts the bytes from just after the SOH that ends tag 9 up to and
including the SOH before ``10=``; CheckSum is the byte sum of everything before ``10=`` modulo
256, as three digits (FIXT.1.1, "Message Format"). So one ``find`` for the SOH after tag 9 tells
where the frame ends; nothing between needs parsing, and the frame leaves as the exact bytes that
arrived (design rule 6). The only other look is at ``35=`` to learn the MsgType, which the relay
needs for the Logon and for counting.

We reject, rather than resynchronise on, anything that breaks those rules: a stream that lost
its framing once cannot be trusted to find it again, and guessing would let a corrupt order
through. After the first error the framer refuses all further use.

Memory is bounded by :data:`MAX_FRAME_SIZE` plus whatever the caller hands over in one
``receive_data``: a BodyLength that announces a larger frame is refused as soon as tag 9 is
read, before its bytes arrive, and so is a tag 9 with more digits than any allowed size has.

The alternative we rejected is a general tag=value tokenizer over the stream: it allocates per
field on the hot path and still has to trust BodyLength to handle data fields that contain SOH.

Speed: the checks above are a dozen small Python operations per message, the largest cost of
the relay. An optional C scanner (``fixproxy/fix/_scan.c``, built when a compiler is present)
makes the same checks in one call and answers only "a complete valid frame ends here" or "ask
Python"; everything else, incomplete frames and every error with its wording, stays with the
Python code below, which remains the reference. :data:`SCANNER` says which one runs;
``FIXPROXY_PURE_FRAMER=1`` forces the Python one.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Final, NamedTuple

from fixproxy.errors import FramingError

_ScanFunction = Callable[[bytes | bytearray, int, int, int], tuple[int, int, int] | None]
_CountFunction = Callable[
    [bytes | bytearray, int, int, int, dict[bytes, int], frozenset[bytes], bytes,
     frozenset[bytes]],
    tuple[int, int, int, int]]


def _c_scanner() -> tuple[_ScanFunction, _CountFunction] | None:
    """The C frame scanner, unless it was not built or ``FIXPROXY_PURE_FRAMER`` is set."""
    if os.environ.get("FIXPROXY_PURE_FRAMER", "") not in ("", "0"):
        return None
    try:
        from fixproxy.fix._scan import (  # noqa: PLC0415  optional, compiled at install
            scan,
            scan_count,
        )
    except ImportError:
        return None
    return scan, scan_count


_c: Final = _c_scanner()
_scan: Final = None if _c is None else _c[0]
_scan_count: Final = None if _c is None else _c[1]
SCANNER: Final = "python" if _c is None else "c"
"""Which frame scanner this process uses: ``c`` (the accelerator) or ``python``."""

MAX_FRAME_SIZE: Final = 1 << 20
"""Largest frame accepted, in bytes. Kalshi's largest messages (market-data snapshots,
settlement reports) are a few KiB; 1 MiB leaves room and bounds memory per connection."""

_PREFIX: Final = b"8=FIXT.1.1\x019="
_PREFIX_LEN: Final = len(_PREFIX)
_TRAILER_LEN: Final = len(b"10=000\x01")
_MIN_BODY: Final = len(b"35=0\x01")
_TRAILER_BASE_SUM: Final = sum(b"10=\x01")
"""Byte sum of a trailer without its three CheckSum digits."""


_adler32: Final = zlib.adler32
_ADLER_CHUNK: Final = 256
"""Bytes per zlib.adler32 call in :func:`byte_sum`: 256 x 255 + 1 stays below 65521, the
modulus of Adler-32's first sum, so that sum is the exact byte sum (plus one)."""


def byte_sum(data: bytes | memoryview) -> int:
    """The sum of the bytes of ``data``.

    Adler-32's first component is 1 + the byte sum modulo 65521; over at most 256 bytes no
    modulo happens, so zlib computes the exact sum in C. That is about twice as fast as
    ``sum(bytes)``, which makes a Python int per byte; the CheckSum check is the largest
    per-message cost of the relay.
    """
    if len(data) <= _ADLER_CHUNK:
        return (zlib.adler32(data) & 0xFFFF) - 1
    view = memoryview(data)
    total = 0
    for start in range(0, len(view), _ADLER_CHUNK):
        total += (zlib.adler32(view[start : start + _ADLER_CHUNK]) & 0xFFFF) - 1
    return total


class Frame(NamedTuple):
    """One complete, verified FIX message."""

    raw: bytes
    """The exact bytes received, 8= through the SOH after 10=."""
    msg_type: bytes
    """The value of tag 35, e.g. ``b"D"`` or ``b"UOG"``."""


class FixFramer:
    """Incremental, strict FIX framer (sans-IO).

    Feed bytes with :meth:`receive_data` (``b""`` means end of stream) and take complete
    messages with :meth:`next_message` until it returns ``None``.
    """

    __slots__ = ("_buf", "_eof", "_error", "_max_digits", "_pos", "_scan", "_scan_count",
                 "max_frame_size")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE, *,
                 accelerated: bool = True) -> None:
        """Args:
            max_frame_size: the largest frame accepted, in bytes.
            accelerated: use the C scanner when it is built; False runs the Python
                reference alone (the differential tests compare the two).
        """
        if max_frame_size < _PREFIX_LEN + 2 + _MIN_BODY + _TRAILER_LEN:
            raise ValueError("max_frame_size is too small for any FIX message")
        self.max_frame_size = max_frame_size
        self._max_digits = len(str(max_frame_size))
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._error: FramingError | None = None
        self._scan = _scan if accelerated else None
        self._scan_count = _scan_count if accelerated else None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf) - self._pos

    @property
    def at_eof(self) -> bool:
        """True once the end of the stream was fed in."""
        return self._eof

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the stream; ``b""`` marks the end of the stream."""
        if self._error is not None:
            raise FramingError(f"framer is broken: {self._error}") from self._error
        if self._eof:
            raise self._fail("data received after end of stream")
        if not data:
            self._eof = True
            return
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            # The usual case: nothing pending. Keep the chunk itself; frames are sliced out of
            # it with one copy each (none for a chunk that is exactly one frame).
            self._buf = data if isinstance(data, bytes) else bytes(data)
        elif isinstance(buf, bytes):
            # A frame straddles reads: accumulate in a bytearray, so that a large frame
            # arriving in many pieces is not copied again with every piece.
            self._buf = bytearray(buf[pos:]) + data
        else:
            del buf[:pos]
            buf += data
        self._pos = 0

    def take_counted(self, counts: dict[bytes, int], known: frozenset[bytes], other: bytes,
                     stop: frozenset[bytes]) -> tuple[bytes | bytearray, int, int, int]:
        """Take the complete valid frames at hand in one call, counting each by MsgType.

        The relay's fast path: it stops before the first frame that is incomplete, invalid
        or of a MsgType in ``stop``, which :meth:`next_raw` then returns or refuses as
        always. Types not in ``known`` are counted under ``other``. Without the C scanner it
        takes nothing, and the caller goes on frame by frame.

        Returns:
            (buffer, start, end, last_seq): the frames taken are ``buffer[start:end]``;
            ``start == end`` when none. ``last_seq`` is the MsgSeqNum (34) of the last of
            them as :func:`~fixproxy.session.sequence.read_seq_num` reads it, -1 for none.
        Raises:
            FramingError: the framer is broken (an earlier call raised).
        """
        if self._error is not None:
            raise FramingError(f"framer is broken: {self._error}") from self._error
        buf = self._buf
        pos = self._pos
        count = self._scan_count
        if count is None or pos >= len(buf):
            return buf, pos, pos, -1
        end, _, _, last_seq = count(buf, pos, self.max_frame_size, self._max_digits, counts,
                                    known, other, stop)
        self._pos = end
        return buf, pos, end, last_seq

    def receive_counted(self, data: bytes, counts: dict[bytes, int], known: frozenset[bytes],
                        other: bytes, stop: frozenset[bytes]
                        ) -> tuple[bytes | bytearray, int, int, int]:
        """:meth:`receive_data` then :meth:`take_counted`, in one call: the relay's read.

        When nothing was pending and ``data`` is whole frames, the buffer returned is
        ``data`` itself and the frames taken are all of it.
        """
        count = self._scan_count
        if data and count is not None and self._pos >= len(self._buf) and self._error is None \
                and not self._eof:
            # The usual case, without receive_data's and take_counted's checks: nothing is
            # pending, so the chunk becomes the buffer, as receive_data would make it.
            end, _, _, last_seq = count(data, 0, self.max_frame_size, self._max_digits, counts,
                                        known, other, stop)
            self._buf = data
            self._pos = end
            return data, 0, end, last_seq
        self.receive_data(data)
        return self.take_counted(counts, known, other, stop)

    def next_message(self) -> Frame | None:
        """Return the next complete message, or ``None`` if more bytes are needed.

        Raises:
            FramingError: the stream is not valid FIX; the framer is then broken for good.
        """
        found = self.next_raw()
        return None if found is None else Frame(*found)

    def next_raw(self) -> tuple[bytes, bytes] | None:
        """:meth:`next_message` as a plain ``(raw, msg_type)`` tuple, for the relay's loop
        (building a NamedTuple costs more than finding the frame's boundaries).

        Raises:
            FramingError: the stream is not valid FIX; the framer is then broken for good.
        """
        if self._error is not None:
            raise FramingError(f"framer is broken: {self._error}") from self._error
        buf = self._buf
        pos = self._pos
        have = len(buf)
        avail = have - pos
        if avail == 0:
            return None
        scan = self._scan
        if scan is not None:
            found = scan(buf, pos, self.max_frame_size, self._max_digits)
            if found is not None:
                end, type_start, type_end = found
                self._pos = end
                if isinstance(buf, bytes):
                    return buf[pos:end], buf[type_start:type_end]
                return bytes(buf[pos:end]), bytes(buf[type_start:type_end])
        # startswith/find with offsets look at the buffer in place: no slice is made for the
        # checks of a good frame except the two numbers that are parsed.
        if not buf.startswith(_PREFIX, pos):
            if avail >= _PREFIX_LEN or not _PREFIX.startswith(buf[pos:]):
                self._bad_prefix()
            self._need_more()
            return None
        digits_at = pos + _PREFIX_LEN
        soh = buf.find(b"\x01", digits_at, digits_at + self._max_digits + 1)
        if soh < 0:
            if avail > _PREFIX_LEN + self._max_digits:
                raise self._fail(
                    f"BodyLength (9) is longer than {self._max_digits} digits; "
                    f"frames are limited to {self.max_frame_size} bytes")
            partial = buf[digits_at:]
            if partial and not partial.isdigit():
                raise self._fail(f"BodyLength (9) is not a number: {bytes(partial)!r}")
            self._need_more()
            return None
        digits = buf[digits_at:soh]
        if not digits.isdigit():  # bytes.isdigit: ASCII digits only, no sign or space
            raise self._fail(f"BodyLength (9) is not a number: {bytes(digits)!r}")
        body_len = int(digits)
        body_at = soh + 1
        checksum_at = body_at + body_len
        end = checksum_at + _TRAILER_LEN
        if end - pos > self.max_frame_size:
            raise self._fail(
                f"BodyLength (9) of {body_len} makes a frame of {end - pos} bytes, over the "
                f"limit of {self.max_frame_size}")
        if body_len < _MIN_BODY:
            raise self._fail(f"BodyLength (9) of {body_len} is too short for a message")
        if have < end:
            # Fail early on a stream that cannot be FIX, without waiting for the body.
            if have >= body_at + 3 and not buf.startswith(b"35=", body_at):
                raise self._fail("MsgType (35) is not the third field")
            self._need_more()
            return None
        if not buf.startswith(b"35=", body_at):
            raise self._fail("MsgType (35) is not the third field")
        if buf[checksum_at - 1] != 1 or not buf.startswith(b"10=", checksum_at) \
                or buf[end - 1] != 1:
            raise self._fail(
                f"BodyLength (9) of {body_len} does not end at the CheckSum (10) field")
        type_end = buf.find(b"\x01", body_at + 3, checksum_at)
        if type_end <= body_at + 3:
            raise self._fail("MsgType (35) is empty")
        checksum_digits = buf[checksum_at + 3 : end - 1]
        if not checksum_digits.isdigit():
            raise self._fail(
                f"CheckSum (10) is not three digits: {bytes(checksum_digits)!r}")
        raw = buf[pos:end] if isinstance(buf, bytes) else bytes(buf[pos:end])
        # The byte sum of the whole frame less that of its trailer "10=ddd|": one pass in C
        # over the bytes as they are, instead of a view or a copy of all but the trailer.
        trailer = _TRAILER_BASE_SUM + checksum_digits[0] + checksum_digits[1] \
            + checksum_digits[2]
        total = (_adler32(raw) & 0xFFFF) - 1 if end - pos <= _ADLER_CHUNK else byte_sum(raw)
        expected = (total - trailer) & 0xFF
        if int(checksum_digits) != expected:
            raise self._fail(
                f"CheckSum (10) is {bytes(checksum_digits).decode()}, the bytes sum to "
                f"{expected:03d}")
        self._pos = end
        return raw, raw[body_at + 3 - pos : type_end - pos]

    def _fail(self, message: str) -> FramingError:
        """Record the error that breaks this framer for good, and return it to be raised."""
        self._error = FramingError(message)
        return self._error

    def _need_more(self) -> None:
        if self._eof:
            raise self._fail(
                f"stream ended inside a message ({len(self._buf) - self._pos} bytes pending)")

    def _bad_prefix(self) -> None:
        start = bytes(self._buf[self._pos : self._pos + 16])
        raise self._fail(
            f"stream does not start a FIXT.1.1 message (expected '8=FIXT.1.1|9=', got "
            f"{start!r}); is the engine speaking FIXT.1.1 over plain TCP?")
