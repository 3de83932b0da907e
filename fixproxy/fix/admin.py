"""Session-level messages fixproxy writes itself: Logout, Heartbeat, TestRequest (pure)."""

from __future__ import annotations

from fixproxy.fix import tags
from fixproxy.fix.codec import encode, utc_timestamp

MAX_TEXT_LENGTH = 900
"""Longest Text (58) fixproxy writes; engines log it, and some truncate at 1 KiB."""


def _clean_text(text: str) -> bytes:
    raw = text.replace("\x01", " ").encode("utf-8", "replace")
    return raw[:MAX_TEXT_LENGTH]


def logout(text: str, *, sender: bytes, target: bytes, seq: int, now: float) -> bytes:
    """A Logout (35=5) carrying ``text`` in 58, from ``sender`` to ``target``."""
    return encode([
        (tags.MSG_TYPE, tags.MT_LOGOUT),
        (tags.SENDER_COMP_ID, sender),
        (tags.TARGET_COMP_ID, target),
        (tags.MSG_SEQ_NUM, seq),
        (tags.SENDING_TIME, utc_timestamp(now)),
        (tags.TEXT, _clean_text(text)),
    ])


def heartbeat(*, sender: bytes, target: bytes, seq: int, now: float,
              test_req_id: bytes | None = None) -> bytes:
    """A Heartbeat (35=0), answering ``test_req_id`` when given."""
    fields: list[tuple[int, bytes | int]] = [
        (tags.MSG_TYPE, tags.MT_HEARTBEAT),
        (tags.SENDER_COMP_ID, sender),
        (tags.TARGET_COMP_ID, target),
        (tags.MSG_SEQ_NUM, seq),
        (tags.SENDING_TIME, utc_timestamp(now)),
    ]
    if test_req_id is not None:
        fields.append((tags.TEST_REQ_ID, test_req_id))
    return encode(fields)


def request_heartbeat(test_req_id: bytes, *, sender: bytes, target: bytes, seq: int,
                 now: float) -> bytes:
    """A TestRequest (35=1) asking the peer to echo ``test_req_id`` in a Heartbeat."""
    return encode([
        (tags.MSG_TYPE, tags.MT_TEST_REQUEST),
        (tags.SENDER_COMP_ID, sender),
        (tags.TARGET_COMP_ID, target),
        (tags.MSG_SEQ_NUM, seq),
        (tags.SENDING_TIME, utc_timestamp(now)),
        (tags.TEST_REQ_ID, test_req_id),
    ])
