"""Rewrite an engine's unsigned Logon into the signed Logon Kalshi accepts (pure).

Theory of operation
-------------------
The engine's Logon is the one message fixproxy re-encodes on the way out. Checked first, and
refused with a Text (58) that names the field, the value received and the value expected:
SenderCompID (49) must be the session's API key, TargetCompID (56) the endpoint's, MsgSeqNum
(34) a positive number, HeartBtInt (108) 4..3600. Then the Kalshi header and body are set:
``1137=9``, ``98=0``, 108 (30 when absent), 141 by the endpoint's reset policy, the session's
Kalshi flags, and last ``95=<len>|96=<base64 RSA-PSS>`` over ``52|A|34|49|56`` exactly as sent
(Kalshi, "Logon authentication"). SendingTime (52) is kept to the millisecond as the engine
stamped it (finer precision is truncated, a seconds-only stamp gets ``.000``), so the signed
value is byte-identical to the sent one.

Signing is injected as a callable so this module stays free of key material and I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from fixproxy.errors import FramingError, LogonRefused
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, parse_uint, utc_timestamp
from fixproxy.kalshi import LOGON_HEARTBEAT_DEFAULT, LOGON_HEARTBEAT_MAX, LOGON_HEARTBEAT_MIN

Signer = Callable[[bytes], bytes]
"""Takes the pre-hash bytes, returns the base64 signature."""

_SENDING_TIME: Final = re.compile(rb"(\d{8}-\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?")

FIELD_NAMES: Final[dict[int, str]] = {
    tags.SENDER_COMP_ID: "SenderCompID",
    tags.TARGET_COMP_ID: "TargetCompID",
    tags.MSG_SEQ_NUM: "MsgSeqNum",
    tags.SENDING_TIME: "SendingTime",
    tags.HEART_BT_INT: "HeartBtInt",
    tags.RESET_SEQ_NUM_FLAG: "ResetSeqNumFlag",
    tags.MSG_TYPE: "MsgType",
    tags.BEGIN_STRING: "BeginString",
}

# Tags the rewrite sets itself; engine values for them are replaced.
_OWNED_TAGS: Final = frozenset({
    tags.MSG_TYPE, tags.SENDER_COMP_ID, tags.TARGET_COMP_ID, tags.MSG_SEQ_NUM,
    tags.SENDING_TIME, tags.ENCRYPT_METHOD, tags.HEART_BT_INT, tags.RESET_SEQ_NUM_FLAG,
    tags.DEFAULT_APPL_VER_ID, tags.RAW_DATA_LENGTH, tags.RAW_DATA,
})


def field_name(tag: int) -> str:
    """``Name (tag)`` as operators see it in refusal texts."""
    name = FIELD_NAMES.get(tag)
    return f"{name} ({tag})" if name else f"tag {tag}"


@dataclass(frozen=True, slots=True)
class LogonPolicy:
    """What one configured session demands of its engine's Logon."""

    session_name: str
    api_key: str
    target_comp_id: str
    force_reset: bool
    """True when the endpoint requires 141=Y on every Logon."""
    kalshi_flags: tuple[tuple[int, bytes], ...] = ()
    """Kalshi Logon flags from the session's config, in wire order."""
    translate_sequence: bool = False
    """When forcing a reset on an engine that kept its numbers, renumber instead of refusing."""


@dataclass(frozen=True, slots=True)
class RewrittenLogon:
    """The Logon as sent to the gateway, and what the relay must remember of it."""

    raw: bytes
    fields: tuple[tuple[int, bytes], ...]
    msg_seq_num: int
    heart_bt_int: int
    sending_time: bytes
    engine_requested_reset: bool
    reset_forced: bool
    """141=Y was set by fixproxy although the engine did not ask for it."""
    translated: bool = False
    """The engine kept its numbers (34 > 1) while the gateway leg resets: fixproxy sent 34=1
    and must renumber both directions (see fixproxy.sequence)."""
    engine_next_expected: int | None = None
    """The engine's NextExpectedMsgSeqNum (789), when its Logon carried one."""


def _single(logon: FixMessage, tag: int) -> bytes | None:
    if logon.count(tag) > 1:
        raise LogonRefused(f"{field_name(tag)} appears more than once in the Logon")
    return logon.get(tag)


def _normalise_sending_time(value: bytes | None, now: float) -> bytes:
    if value is None:
        return utc_timestamp(now)
    match = _SENDING_TIME.fullmatch(value)
    if match is None:
        raise LogonRefused(
            f"{field_name(tags.SENDING_TIME)} is {value.decode('ascii', 'replace')!r}; "
            f"expected a UTC timestamp YYYYMMDD-HH:MM:SS.sss")
    fraction = (match.group(2) or b"").ljust(3, b"0")[:3]
    return match.group(1) + b"." + fraction


def rewrite_logon(raw: bytes, policy: LogonPolicy, sign: Signer, *, now: float) -> RewrittenLogon:
    """Check the engine's Logon against ``policy`` and return the signed Logon.

    Args:
        raw: the engine's framed Logon.
        policy: the session's demands.
        sign: returns the base64 RSA-PSS signature of the pre-hash bytes.
        now: the current time (seconds since the epoch), used when 52 is absent.
    Raises:
        LogonRefused: the Logon cannot be forwarded; ``text`` says why and what to change.
    """
    try:
        logon = FixMessage.parse(raw)
    except FramingError as exc:
        raise LogonRefused(f"the Logon is malformed: {exc}") from exc
    if logon.msg_type != tags.MT_LOGON:
        raise LogonRefused(
            f"the first message must be a Logon (35=A); got "
            f"35={logon.msg_type.decode('ascii', 'replace')}")

    sender = _single(logon, tags.SENDER_COMP_ID)
    if sender != policy.api_key.encode():
        raise LogonRefused(
            f"{field_name(tags.SENDER_COMP_ID)} is {_show(sender)}; expected "
            f"{policy.api_key!r}, the FIX API key of session {policy.session_name!r}. Set the "
            f"engine's SenderCompID to that key, or fix api_key in the config",
            reason="sender_comp_id")
    target = _single(logon, tags.TARGET_COMP_ID)
    if target != policy.target_comp_id.encode():
        raise LogonRefused(
            f"{field_name(tags.TARGET_COMP_ID)} is {_show(target)}; expected "
            f"{policy.target_comp_id!r} for session {policy.session_name!r}. Set the engine's "
            f"TargetCompID to {policy.target_comp_id}, or point it at the listener of the "
            f"session for that endpoint", reason="target_comp_id")

    seq_text = _single(logon, tags.MSG_SEQ_NUM)
    parsed_seq = parse_uint(seq_text)
    if parsed_seq is None or parsed_seq < 1:
        raise LogonRefused(
            f"{field_name(tags.MSG_SEQ_NUM)} is {_show(seq_text)}; expected a positive integer",
            reason="msg_seq_num")
    msg_seq_num = parsed_seq

    heartbeat = LOGON_HEARTBEAT_DEFAULT
    heartbeat_text = _single(logon, tags.HEART_BT_INT)
    if heartbeat_text is not None:
        parsed_heartbeat = parse_uint(heartbeat_text)
        if parsed_heartbeat is None or not (
                LOGON_HEARTBEAT_MIN <= parsed_heartbeat <= LOGON_HEARTBEAT_MAX):
            raise LogonRefused(
                f"{field_name(tags.HEART_BT_INT)} is {_show(heartbeat_text)}; expected "
                f"{LOGON_HEARTBEAT_MIN}..{LOGON_HEARTBEAT_MAX} seconds (Kalshi requires more "
                f"than 3). Set the engine's HeartBtInt, e.g. to {LOGON_HEARTBEAT_DEFAULT}",
                reason="heart_bt_int")
        heartbeat = parsed_heartbeat

    reset_flag = _single(logon, tags.RESET_SEQ_NUM_FLAG)
    if reset_flag not in (None, b"Y", b"N"):
        raise LogonRefused(
            f"{field_name(tags.RESET_SEQ_NUM_FLAG)} is {_show(reset_flag)}; expected Y or N",
            reason="reset_seq_num_flag")
    engine_reset = reset_flag == b"Y"
    reset = engine_reset or policy.force_reset
    translate = policy.force_reset and msg_seq_num != 1 and not engine_reset \
        and policy.translate_sequence
    if policy.force_reset and msg_seq_num != 1 and not translate:
        raise LogonRefused(
            f"{field_name(tags.MSG_SEQ_NUM)} is {msg_seq_num}; expected 1, because "
            f"{policy.target_comp_id} needs a sequence reset (141=Y) on every Logon. Enable "
            f"reset on logon in the engine (QuickFIX: ResetOnLogon=Y) or reset its sequence "
            f"store (or set translate_sequence = true for this session)", reason="msg_seq_num")

    sending_time = _normalise_sending_time(_single(logon, tags.SENDING_TIME), now)

    flag_tags = {tag for tag, _ in policy.kalshi_flags}
    passthrough = [f for f in logon.fields if f[0] not in _OWNED_TAGS and f[0] not in flag_tags]
    header = [f for f in passthrough if f[0] in tags.HEADER_TAGS]
    body = [f for f in passthrough if f[0] not in tags.HEADER_TAGS]

    api_key = policy.api_key.encode()
    target_id = policy.target_comp_id.encode()
    # Under translation the gateway leg restarts at 1; the signature binds the 34 sent.
    seq = b"1" if translate else b"%d" % msg_seq_num
    next_expected = _single(logon, tags.NEXT_EXPECTED_MSG_SEQ_NUM)
    next_expected_number = parse_uint(next_expected)
    if next_expected is not None and (next_expected_number is None or next_expected_number < 1):
        raise LogonRefused(f"NextExpectedMsgSeqNum (789) is {_show(next_expected)}; expected a "
                           f"positive integer", reason="next_expected")
    if reset:
        # After a reset the gateway's first message is 1, whatever the engine's store says.
        body = [(tag, b"1" if tag == tags.NEXT_EXPECTED_MSG_SEQ_NUM else value)
                for tag, value in body]
    signature = sign(b"\x01".join((sending_time, tags.MT_LOGON, seq, api_key, target_id)))

    fields: list[tuple[int, bytes]] = [
        (tags.MSG_TYPE, tags.MT_LOGON),
        (tags.SENDER_COMP_ID, api_key),
        (tags.TARGET_COMP_ID, target_id),
        (tags.MSG_SEQ_NUM, seq),
        (tags.SENDING_TIME, sending_time),
        *header,
        (tags.ENCRYPT_METHOD, b"0"),
        (tags.HEART_BT_INT, b"%d" % heartbeat),
    ]
    if reset:
        fields.append((tags.RESET_SEQ_NUM_FLAG, b"Y"))
    elif reset_flag is not None:
        fields.append((tags.RESET_SEQ_NUM_FLAG, reset_flag))
    fields.append((tags.DEFAULT_APPL_VER_ID, b"9"))
    fields.extend(policy.kalshi_flags)
    fields.extend(body)
    fields.append((tags.RAW_DATA_LENGTH, b"%d" % len(signature)))
    fields.append((tags.RAW_DATA, signature))
    message = FixMessage(fields)
    return RewrittenLogon(
        raw=message.encode(),
        fields=tuple(message.fields),
        msg_seq_num=msg_seq_num,
        heart_bt_int=heartbeat,
        sending_time=sending_time,
        engine_requested_reset=engine_reset,
        reset_forced=reset and not engine_reset,
        translated=translate,
        engine_next_expected=next_expected_number,
    )


def strip_forced_reset(raw: bytes) -> bytes:
    """Remove 141=Y from the gateway's Logon answer, re-encoding only if it is there.

    An engine that did not ask for a reset treats 141=Y in the answer as the gateway resetting
    and logs on a second time (QuickFIX does); when fixproxy forced the reset, the engine must
    not see it.
    """
    answer = FixMessage.parse(raw)
    if answer.get(tags.RESET_SEQ_NUM_FLAG) is None:
        return raw
    answer.remove(tags.RESET_SEQ_NUM_FLAG)
    return answer.encode()


def _show(value: bytes | None) -> str:
    return "missing" if value is None else repr(value.decode("ascii", "replace"))

