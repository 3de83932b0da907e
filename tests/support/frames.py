"""Building FIX messages in tests."""

from __future__ import annotations

from collections.abc import Callable

from fixproxy.fix.codec import FieldValue, encode

MakeFrame = Callable[..., bytes]
"""``make_frame(msg_type, (tag, value), ...)``: a complete message with 9 and 10 computed."""


def make_frame(msg_type: bytes | str, *fields: tuple[int, FieldValue]) -> bytes:
    """A framed FIXT.1.1 message from its MsgType and body fields."""
    return encode([(35, msg_type), *fields])
