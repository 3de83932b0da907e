"""The rules of the simulated Kalshi venue, apart from the sockets that carry them.

What the simulated gateway checks and answers, as values and functions that never touch I/O:
the Logon rules' limits and field names, the session states, and the fields an order's answer
echoes. :mod:`fixproxy.sim.gateway` serves them over TLS.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from fixproxy.fix import tags
from fixproxy.fix.codec import parse_utc_timestamp

RESET_REQUIRED_ENDPOINTS: Final = frozenset({"KalshiNR", "KalshiDC", "KalshiRFQ", "KalshiMD"})
"""Endpoints whose every Logon must carry 141=Y (Kalshi's current error-handling page)."""
MAX_SENDING_TIME_SKEW_S: Final = 30.0
"""Kalshi rejects a SendingTime more than 30 s away from its clock."""
LOGON_TIMEOUT_S: Final = 10.0
"""A connection that sends no Logon this long after the handshake is dropped."""
LOGOUT_TIMEOUT_S: Final = 5.0
"""How long the simulator waits for the answer to a Logout it sent."""
TEST_REQUEST_GRACE: Final = 0.2
"""A TestRequest goes out after HeartBtInt * (1 + this) seconds without a message."""

_AWAIT_LOGON: Final = 0
_ACTIVE: Final = 1
_LOGOUT_SENT: Final = 2

_SENDING_TIME: Final = re.compile(rb"\d{8}-\d{2}:\d{2}:\d{2}\.\d{3}")
_ORDER_ECHO: Final = (55, 54, 38, 40, 44)
_CANCEL_ECHO: Final = (41, 55, 54, 38)
_LOGON_UNIQUE: Final = (
    tags.SENDER_COMP_ID, tags.TARGET_COMP_ID, tags.MSG_SEQ_NUM, tags.SENDING_TIME,
    tags.ENCRYPT_METHOD, tags.HEART_BT_INT, tags.RESET_SEQ_NUM_FLAG, tags.DEFAULT_APPL_VER_ID,
    tags.RAW_DATA_LENGTH, tags.RAW_DATA,
)
_FIELD_NAMES: Final = {
    tags.SENDER_COMP_ID: "SenderCompID", tags.TARGET_COMP_ID: "TargetCompID",
    tags.MSG_SEQ_NUM: "MsgSeqNum", tags.SENDING_TIME: "SendingTime",
    tags.ENCRYPT_METHOD: "EncryptMethod", tags.HEART_BT_INT: "HeartBtInt",
    tags.RESET_SEQ_NUM_FLAG: "ResetSeqNumFlag", tags.DEFAULT_APPL_VER_ID: "DefaultApplVerID",
    tags.RAW_DATA_LENGTH: "RawDataLength", tags.RAW_DATA: "RawData",
}


class _Logon(NamedTuple):
    key: str
    seq: int
    heart_bt_int: bytes
    reset: bool
    next_out: int


def _show(value: bytes | None) -> str:
    return "missing" if value is None else repr(value.decode("ascii", "replace"))


def _name(tag: int) -> str:
    return f"{_FIELD_NAMES.get(tag, 'tag')} ({tag})"


def _sending_time(value: bytes) -> float | None:
    # Stricter than FIX allows: Kalshi wants milliseconds, so the simulator does too.
    return parse_utc_timestamp(value) if _SENDING_TIME.fullmatch(value) else None
