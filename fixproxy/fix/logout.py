"""The session-level messages fixproxy writes itself: a Logout that explains, and a gap fill
(pure).

fixproxy never injects Heartbeats or TestRequests: any message of its own mid-session would
shift the sequence numbers of everything after it, and relayed sessions stay byte for byte.
A gap fill shifts nothing: it answers a ResendRequest with the numbers asked for
(:func:`fixproxy.session.sequence.stale_resend_gap`).
"""

from __future__ import annotations

from typing import Final

from fixproxy.fix import tags
from fixproxy.fix.codec import encode, utc_timestamp

MAX_TEXT_LENGTH: Final = 900
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


def gap_fill(*, sender: bytes, target: bytes, seq: int, new_seq: int, now: float) -> bytes:
    """A SequenceReset-GapFill (35=4, 123=Y) numbered ``seq`` that moves the receiver's next
    expected number to ``new_seq``: the answer to a ResendRequest for ``seq`` and on,
    sent as a possible duplicate (43=Y, with OrigSendingTime 122) as resends are."""
    stamp = utc_timestamp(now)
    return encode([
        (tags.MSG_TYPE, tags.MT_SEQUENCE_RESET),
        (tags.SENDER_COMP_ID, sender),
        (tags.TARGET_COMP_ID, target),
        (tags.MSG_SEQ_NUM, seq),
        (tags.POSS_DUP_FLAG, b"Y"),
        (tags.SENDING_TIME, stamp),
        (tags.ORIG_SENDING_TIME, stamp),
        (tags.GAP_FILL_FLAG, b"Y"),
        (tags.NEW_SEQ_NO, new_seq),
    ])
