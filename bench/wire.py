"""FIX bytes for the load engine and the benchmark gateway, built for speed (pure, no I/O).

Theory of operation
-------------------
The engine and the gateway are the measuring instrument, so their per-message work must be
small next to what is measured. Messages are therefore never encoded field by field on the hot
path: a :class:`Template` is one preformatted body with a few ``%s`` slots (MsgSeqNum 34,
SendingTime 52, ClOrdID 11 and, in the gateway's answer, the ids derived from them). BodyLength
(9) is the body's length, and CheckSum (10) is the byte sum of the constant parts, computed
once, plus the byte sum of the slot values, so a message costs one ``%`` format and a sum over
about 60 bytes instead of 200 (FIXT.1.1 "Message Format" defines both fields).

Reading is limited to finding frame ends from BodyLength and reading MsgType (35) and, where
needed, ClOrdID (11) with ``bytes.find``; nothing is parsed into fields. CheckSums are not
verified here: fixproxy's framer verifies every frame it relays, and a corrupt frame would
surface as a wrong ClOrdID or a framing error anyway.

Logons and Logouts are rare and use fixproxy's own encoder.
"""

from __future__ import annotations

from typing import Final

from bench import BenchError
from fixproxy.fix import tags
from fixproxy.fix.codec import FieldValue, encode
from fixproxy.fix.logon import Signer

PREFIX: Final = b"8=FIXT.1.1\x019="
PREFIX_LEN: Final = len(PREFIX)
TRAILER_LEN: Final = len(b"10=000\x01")
ENDPOINT: Final = "KalshiNR"
"""The session type measured: order entry without retransmission, 141=Y on every Logon."""
SYMBOL: Final = b"KXHIGHNY-25JAN01-B45.5"
HEART_BT_INT: Final = 30
"""Seconds; every measured connection lives for less, so no heartbeat is ever due."""
CL_ORD_ID_DIGITS: Final = 12


class Template:
    """A message body with ``%s`` slots; :meth:`render` adds 8, 9 and a correct 10."""

    __slots__ = ("_body", "_fixed_sum")

    def __init__(self, body: bytes) -> None:
        if not body.startswith(b"35=") or not body.endswith(b"\x01"):
            raise BenchError("a template body starts with 35= and ends with SOH")
        self._body = body
        constant = body.replace(b"%s", b"")
        # The header "8=FIXT.1.1|9=" and the SOH after the length are constant too.
        self._fixed_sum = sum(constant) + sum(PREFIX) + 1

    def render(self, *values: bytes) -> bytes:
        """The complete message with ``values`` in the slots, in order."""
        body = self._body % values
        length = b"%d" % len(body)
        check = (self._fixed_sum + sum(length) + sum(map(sum, values))) & 0xFF
        return b"%s%s\x01%s10=%03d\x01" % (PREFIX, length, body, check)


def order_template(api_key: str) -> Template:
    """A limit NewOrderSingle of about 200 bytes; slots: 34, 52, 11."""
    return Template(
        b"35=D\x0149=" + api_key.encode() + b"\x0156=" + ENDPOINT.encode()
        + b"\x0134=%s\x0152=%s\x0111=%s\x0138=10\x0140=2\x0144=50\x0154=1\x0155=" + SYMBOL
        + b"\x0159=1\x01")


def execution_report_template(api_key: str) -> Template:
    """The gateway's ExecutionReport (new order acknowledged); slots: 34, 52, 37, 11, 17, 60."""
    return Template(
        b"35=8\x0149=" + ENDPOINT.encode() + b"\x0156=" + api_key.encode()
        + b"\x0134=%s\x0152=%s\x0137=%s\x0111=%s\x0117=%s\x01150=0\x0139=0\x0155=" + SYMBOL
        + b"\x0154=1\x0138=10\x0140=2\x0144=50\x0114=0\x01151=10\x016=0\x0160=%s\x01")


def cl_ord_id_prefix(tag: str) -> bytes:
    """A ClOrdID prefix padding ids to 36 bytes, the length of the UUIDs Kalshi shows."""
    prefix = f"bench-{tag}-".encode()
    width = 36 - CL_ORD_ID_DIGITS
    return prefix[:width].ljust(width, b"x")


def cl_ord_id(prefix: bytes, number: int) -> bytes:
    """The ClOrdID of order ``number`` under ``prefix``."""
    return prefix + b"%012d" % number


def frames(data: bytes) -> tuple[list[tuple[int, int, bytes]], int]:
    """Find the complete frames in ``data``.

    Returns:
        ``(start, end, msg_type)`` of each complete frame, and the offset where the
        incomplete remainder starts (``len(data)`` when there is none).
    Raises:
        BenchError: the bytes are not a FIXT.1.1 frame.
    """
    found: list[tuple[int, int, bytes]] = []
    pos = 0
    size = len(data)
    while size - pos > PREFIX_LEN:
        if not data.startswith(PREFIX, pos):
            raise BenchError(f"not a FIXT.1.1 frame at byte {pos}: {data[pos:pos + 24]!r}")
        soh = data.find(b"\x01", pos + PREFIX_LEN)
        if soh < 0:
            break
        end = soh + 1 + int(data[pos + PREFIX_LEN:soh]) + TRAILER_LEN
        if end > size:
            break
        type_end = data.find(b"\x01", soh + 4, end)
        found.append((pos, end, data[soh + 4:type_end]))
        pos = end
    return found, pos


def field(data: bytes, tag: bytes, start: int, end: int) -> bytes | None:
    """The value of the first ``tag`` (e.g. ``b"11"``) in ``data[start:end]``, else None."""
    marker = b"\x01" + tag + b"="
    at = data.find(marker, start, end)
    if at < 0:
        return None
    first = at + len(marker)
    return data[first:data.find(b"\x01", first, end)]


def _header(msg_type: bytes, sender: str, target: str, seq: int,
            sending_time: bytes) -> list[tuple[int, FieldValue]]:
    return [(tags.MSG_TYPE, msg_type), (tags.SENDER_COMP_ID, sender),
            (tags.TARGET_COMP_ID, target), (tags.MSG_SEQ_NUM, seq),
            (tags.SENDING_TIME, sending_time)]


def logon(api_key: str, sending_time: bytes, sign: Signer | None) -> bytes:
    """The engine's Logon (34=1, 141=Y): signed as Kalshi wants it, or unsigned for fixproxy.

    The signed form carries what fixproxy's rewrite would add (98=0, 1137=9, 95/96 over
    ``52|A|34|49|56``), so the gateway sees the same Logon whoever signed it.
    """
    fields = _header(tags.MT_LOGON, api_key, ENDPOINT, 1, sending_time)
    fields += [(tags.ENCRYPT_METHOD, 0), (tags.HEART_BT_INT, HEART_BT_INT),
               (tags.RESET_SEQ_NUM_FLAG, b"Y"), (tags.DEFAULT_APPL_VER_ID, 9)]
    if sign is not None:
        signature = sign(b"\x01".join(
            (sending_time, tags.MT_LOGON, b"1", api_key.encode(), ENDPOINT.encode())))
        fields += [(tags.RAW_DATA_LENGTH, len(signature)), (tags.RAW_DATA, signature)]
    return encode(fields)


def logon_answer(api_key: str, sending_time: bytes) -> bytes:
    """The gateway's Logon answer (34=1, 141=Y)."""
    return encode([
        *_header(tags.MT_LOGON, ENDPOINT, api_key, 1, sending_time),
        (tags.ENCRYPT_METHOD, 0), (tags.HEART_BT_INT, HEART_BT_INT),
        (tags.RESET_SEQ_NUM_FLAG, b"Y"), (tags.DEFAULT_APPL_VER_ID, 9)])


def logout(sender: str, target: str, seq: int, sending_time: bytes, text: str = "") -> bytes:
    """A Logout (35=5), with Text (58) when given."""
    fields = _header(tags.MT_LOGOUT, sender, target, seq, sending_time)
    if text:
        fields.append((tags.TEXT, text.replace("\x01", " ")))
    return encode(fields)


def heartbeat(sender: str, target: str, seq: int, sending_time: bytes,
              test_req_id: bytes) -> bytes:
    """A Heartbeat (35=0) answering a TestRequest."""
    return encode([*_header(tags.MT_HEARTBEAT, sender, target, seq, sending_time),
                   (tags.TEST_REQ_ID, test_req_id)])
