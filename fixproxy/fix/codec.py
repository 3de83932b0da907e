"""Parse and encode FIX messages (pure).

Parsing is for the few messages fixproxy must understand (the Logon, the gateway's Logon
answer, locally generated messages, the simulator); messages that pass through are never parsed.
Encoding always recomputes BodyLength (9) and CheckSum (10).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Final

from fixproxy.errors import FramingError
from fixproxy.fix import tags

Field = tuple[int, bytes]
FieldValue = bytes | str | int

_DATA_TAG_BY_LENGTH_TAG: Final = {length: data for data, length in tags.LENGTH_OF.items()}
_FRAME_TAGS: Final = frozenset({tags.BEGIN_STRING, tags.BODY_LENGTH, tags.CHECKSUM})


_MARKERS: Final[dict[int, bytes]] = {}
"""``SOH tag=`` search strings of :func:`header_value`, made once per tag."""
_UTC_TIMESTAMP: Final = re.compile(
    rb"(\d{4})(\d{2})(\d{2})-(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")


def header_value(raw: bytes, tag: int, start: int = 0, end: int | None = None) -> bytes | None:
    """The value of header field ``tag`` of a framed message, found by search, not a parse.

    Header fields come before any data field of the body, so in a well-formed message the
    first ``SOH tag=`` is the header field. ``start`` and ``end`` bound the message within a
    larger buffer (several frames back to back), so it need not be cut out first.
    """
    marker = _MARKERS.get(tag)
    if marker is None:
        marker = _MARKERS[tag] = b"\x01%d=" % tag
    if end is None:
        end = len(raw)
    at = raw.find(marker, start, end)
    if at < 0:
        return None
    value_at = at + len(marker)
    return raw[value_at : raw.find(b"\x01", value_at, end)]


def parse_utc_timestamp(value: bytes | None) -> float | None:
    """A FIX UTCTimestamp (``YYYYMMDD-HH:MM:SS`` with an optional fraction) as Unix seconds;
    None if ``value`` is not one."""
    match = _UTC_TIMESTAMP.fullmatch(value) if value is not None else None
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          tzinfo=UTC)
    except ValueError:
        return None
    return moment.timestamp() + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def checksum(data: bytes | bytearray) -> bytes:
    """FIX CheckSum (10) of ``data``: byte sum modulo 256 as three ASCII digits."""
    return b"%03d" % (sum(data) & 0xFF)


def _as_bytes(value: FieldValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return b"%d" % value
    return value.encode()


def encode(fields: Iterable[tuple[int, FieldValue]],
           begin_string: bytes = tags.BEGIN_STRING_FIXT11) -> bytes:
    """Encode body fields (35 first, no 8/9/10) into a complete message.

    Args:
        fields: (tag, value) pairs in wire order, starting with MsgType (35).
        begin_string: the value of tag 8.
    Returns:
        The message with BeginString, BodyLength and CheckSum computed.
    """
    parts: list[bytes] = []
    for tag, value in fields:
        raw = _as_bytes(value)
        if tag not in tags.LENGTH_OF and b"\x01" in raw:
            raise ValueError(f"value of tag {tag} contains SOH")
        parts.append(b"%d=%s\x01" % (tag, raw))
    body = b"".join(parts)
    if not body.startswith(b"35="):
        raise ValueError("a FIX body must start with MsgType (35)")
    head = b"8=%s\x019=%d\x01" % (begin_string, len(body))
    message = head + body
    return message + b"10=" + checksum(message) + b"\x01"


MAX_NUMBER_DIGITS: Final = 18
"""Most digits a tag, length or sequence number may have: more than any real value, and far
below the 4300 digits past which int() refuses to parse (and a 1 MiB frame could carry)."""


def parse_uint(value: bytes | None) -> int | None:
    """``value`` as a non-negative integer: ASCII digits only, at most MAX_NUMBER_DIGITS of
    them (no sign, space or underscore, which int() would accept); otherwise None."""
    if value is None or not value.isdigit() or len(value) > MAX_NUMBER_DIGITS:
        return None  # bytes.isdigit() is true for ASCII digits only
    return int(value)


def iter_fields(raw: bytes) -> Iterator[Field]:
    """Yield (tag, value) of every field of ``raw``, 8, 9 and 10 included.

    Data fields (96 RawData and friends) are read by the length given in their length field,
    because their value may contain SOH.

    Raises:
        FramingError: a field is not ``tag=value`` followed by SOH.
    """
    pos = 0
    end = len(raw)
    data_length: dict[int, int] = {}
    while pos < end:
        eq = raw.find(b"=", pos)
        if eq <= pos:
            raise FramingError(f"malformed field at byte {pos}")
        tag_bytes = raw[pos:eq]
        tag_number = parse_uint(tag_bytes)
        if tag_number is None or tag_bytes[0] == 0x30:
            raise FramingError(f"malformed tag {tag_bytes[:16]!r} at byte {pos}")
        tag = tag_number
        value_at = eq + 1
        length = data_length.pop(tag, None)
        if length is not None:
            soh = value_at + length
            if soh >= end or raw[soh] != 1:
                raise FramingError(f"data field {tag} is not {length} bytes long")
        else:
            soh = raw.find(b"\x01", value_at)
            if soh < 0:
                raise FramingError(f"field {tag} is not terminated by SOH")
        value = raw[value_at:soh]
        data_tag = _DATA_TAG_BY_LENGTH_TAG.get(tag)
        if data_tag is not None:
            declared = parse_uint(value)
            if declared is not None:
                data_length[data_tag] = declared
            elif value.isdigit():
                raise FramingError(f"length field {tag} has {len(value)} digits; at most "
                                   f"{MAX_NUMBER_DIGITS} are accepted")
        yield tag, value
        pos = soh + 1


class FixMessage:
    """An ordered, mutable list of (tag, value) fields without 8, 9 and 10."""

    __slots__ = ("begin_string", "fields")

    def __init__(self, fields: Iterable[tuple[int, FieldValue]] = (),
                 begin_string: bytes = tags.BEGIN_STRING_FIXT11) -> None:
        self.fields: list[Field] = [(tag, _as_bytes(value)) for tag, value in fields]
        self.begin_string = begin_string

    @classmethod
    def parse(cls, raw: bytes) -> FixMessage:
        """Parse a framed message (as returned by the framer)."""
        fields = list(iter_fields(raw))
        begin_string = b""
        # 8 and 9 open a frame and 10 closes it; anywhere else they would be silently lost
        # (or, for 8, replace the BeginString) when the message is encoded again.
        if fields and fields[0][0] == tags.BEGIN_STRING:
            begin_string = fields.pop(0)[1]
        if fields and fields[0][0] == tags.BODY_LENGTH:
            fields.pop(0)
        if fields and fields[-1][0] == tags.CHECKSUM:
            fields.pop()
        for tag, _ in fields:
            if tag in _FRAME_TAGS:
                raise FramingError(f"tag {tag} inside the body of the message")
        return cls(fields, begin_string or tags.BEGIN_STRING_FIXT11)

    @property
    def msg_type(self) -> bytes:
        return self.get(tags.MSG_TYPE) or b""

    def get(self, tag: int) -> bytes | None:
        """The value of the first ``tag``, or None."""
        for field_tag, value in self.fields:
            if field_tag == tag:
                return value
        return None

    def get_str(self, tag: int) -> str | None:
        value = self.get(tag)
        return None if value is None else value.decode("ascii", "replace")

    def count(self, tag: int) -> int:
        return sum(1 for field_tag, _ in self.fields if field_tag == tag)

    def set(self, tag: int, value: FieldValue) -> None:
        """Replace the first ``tag`` in place (dropping repeats), or append it."""
        raw = _as_bytes(value)
        for index, (field_tag, _) in enumerate(self.fields):
            if field_tag == tag:
                self.fields[index] = (tag, raw)
                self.fields[index + 1 :] = [f for f in self.fields[index + 1 :] if f[0] != tag]
                return
        self.fields.append((tag, raw))

    def remove(self, *tags_to_remove: int) -> None:
        """Drop every occurrence of the given tags."""
        drop = set(tags_to_remove)
        self.fields = [field for field in self.fields if field[0] not in drop]

    def encode(self) -> bytes:
        return encode(self.fields, self.begin_string)

    def __repr__(self) -> str:
        return f"FixMessage({render_fields(self.fields)})"


def render_fields(fields: Iterable[Field], *, shorten_secrets: bool = False) -> str:
    """Human-readable ``tag=value|...`` with secrets (96, 554, ...) hidden.

    Args:
        shorten_secrets: show the first characters of secret values (for a demo transcript
            with throwaway keys) instead of hiding them entirely.
    """
    out: list[str] = []
    for tag, value in fields:
        text = value.decode("ascii", "replace")
        if tag in tags.SECRET_TAGS:
            text = f"{text[:10]}...({len(value)} bytes)" if shorten_secrets \
                else f"<redacted {len(value)} bytes>"
        out.append(f"{tag}={text}")
    return "|".join(out) + "|"


def render(raw: bytes, *, shorten_secrets: bool = False) -> str:
    """Human-readable form of a framed message, secrets redacted; never raises."""
    try:
        return render_fields(iter_fields(raw), shorten_secrets=shorten_secrets)
    except FramingError:
        return f"<unparseable {len(raw)} bytes>"


def utc_timestamp(now: float | None = None) -> bytes:
    """A FIX UTCTimestamp with milliseconds, truncated: ``YYYYMMDD-HH:MM:SS.mmm``."""
    if now is None:
        now = time.time()
    whole = int(now)
    millis = int((now - whole) * 1000)
    return time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(whole)).encode() + b".%03d" % millis


class SendingTimeClock:
    """``utc_timestamp()`` for hot loops: the seconds part is formatted once per second.

    Calling it returns the current UTC ``YYYYMMDD-HH:MM:SS.mmm``, milliseconds truncated.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def __call__(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y%m%d-%H:%M:%S.", time.gmtime(second)).encode()
        return self._prefix + b"%03d" % int((now - second) * 1000)
