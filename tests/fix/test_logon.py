"""The Logon rewrite: every rule of Kalshi's Logon (kalshi-fix.md section 2), one row each."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from fixproxy.errors import FixError, LogonRefused
from fixproxy.fix import tags
from fixproxy.fix.codec import FieldValue, encode, iter_fields
from fixproxy.fix.framer import FixFramer
from fixproxy.fix.logon import LogonPolicy, RewrittenLogon, rewrite_logon, strip_forced_reset
from fixproxy.signing import LogonSigner, verify_signature

API_KEY = "0b1c6d1e-2f3a-4b5c-8d9e-0a1b2c3d4e5f"
SENDING_TIME = b"20230809-05:28:18.035"
NOW = 1691558898.0359  # 2023-08-09 05:28:18.0359 UTC
KALSHI_FLAGS: tuple[tuple[int, bytes], ...] = (
    (tags.CANCEL_ORDERS_ON_DISCONNECT, b"Y"),
    (tags.LISTENER_SESSION, b"Y"),
    (tags.SKIP_PENDING_EXEC_REPORTS, b"Y"),
    (tags.USE_DOLLARS, b"Y"),
    (tags.RECEIVE_SETTLEMENT_REPORTS, b"Y"),
    (tags.MESSAGE_RETENTION_PERIOD, b"48"),
)
NR = LogonPolicy("orders", API_KEY, "KalshiNR", force_reset=True)
NR_FLAGS = LogonPolicy("orders", API_KEY, "KalshiNR", force_reset=True,
                       kalshi_flags=KALSHI_FLAGS)
RT = LogonPolicy("resend", API_KEY, "KalshiRT", force_reset=False)

ENGINE_LOGON: tuple[tuple[int, bytes], ...] = (
    (35, b"A"), (49, API_KEY.encode()), (56, b"KalshiNR"), (34, b"1"), (52, SENDING_TIME),
    (98, b"0"), (108, b"30"), (141, b"Y"),
)
ONCE_EACH = (49, 56, 34, 52, 98, 108, 1137, 95, 96)

MakeFrame = Callable[..., bytes]
"""The ``make_frame`` fixture of conftest: MsgType and body fields in, framed message out."""


def engine_logon(changes: Mapping[int, FieldValue | None] | None = None,
                 extra: Iterable[tuple[int, FieldValue]] = (),
                 begin_string: bytes = b"FIXT.1.1") -> bytes:
    """A typical engine Logon; ``changes`` replaces (or with None drops) fields by tag."""
    changes = dict(changes or {})
    fields: list[tuple[int, FieldValue]] = []
    for tag, value in ENGINE_LOGON:
        new = changes.pop(tag, value)
        if new is not None:
            fields.append((tag, new))
    fields += [(tag, value) for tag, value in changes.items() if value is not None]
    fields += extra
    return encode(fields, begin_string)


class RecordingSigner:
    """Stands in for the key: records what it was asked to sign."""

    SIGNATURE = b"RkFLRS1TSUdOQVRVUkU="

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def __call__(self, payload: bytes) -> bytes:
        self.payloads.append(payload)
        return self.SIGNATURE


def rewrite(raw: bytes, policy: LogonPolicy = NR, now: float = NOW) -> RewrittenLogon:
    return rewrite_logon(raw, policy, RecordingSigner(), now=now)


def refusal(raw: bytes, policy: LogonPolicy = NR) -> LogonRefused:
    with pytest.raises(LogonRefused) as info:
        rewrite(raw, policy)
    return info.value


def wire(raw: bytes) -> list[tuple[int, bytes]]:
    """Every field of the rewritten Logon, 8, 9 and 10 included, after re-framing it."""
    framer = FixFramer()
    framer.receive_data(raw)
    frame = framer.next_message()
    assert frame is not None
    assert frame.raw == raw
    assert frame.msg_type == b"A"
    assert framer.next_message() is None
    return list(iter_fields(raw))


def values(raw: bytes, tag: int) -> list[bytes]:
    return [value for field_tag, value in wire(raw) if field_tag == tag]


def single(raw: bytes, tag: int) -> bytes:
    found = values(raw, tag)
    assert len(found) == 1, f"tag {tag} appears {len(found)} times"
    return found[0]


def pre_hash(raw: bytes) -> bytes:
    """Kalshi's pre-hash string built from the fields as they are on the wire."""
    return b"\x01".join((single(raw, 52), b"A", single(raw, 34), single(raw, 49),
                         single(raw, 56)))


@pytest.fixture(scope="module")
def signer(rsa_key: rsa.RSAPrivateKey) -> LogonSigner:
    return LogonSigner(rsa_key)


# --------------------------------------------------------------------------- fields set

def test_begin_string_is_fixt_even_if_the_engine_said_otherwise() -> None:
    out = rewrite(engine_logon(begin_string=b"FIX.4.4")).raw
    assert out.startswith(b"8=FIXT.1.1\x019=")
    assert single(out, 8) == b"FIXT.1.1"


@pytest.mark.parametrize(("tag", "engine_value", "expected"), [
    (1137, None, b"9"),
    (1137, b"7", b"9"),
    (98, None, b"0"),
    (98, b"1", b"0"),
])
def test_fixed_logon_fields(tag: int, engine_value: bytes | None, expected: bytes) -> None:
    out = rewrite(engine_logon({tag: engine_value})).raw
    assert single(out, tag) == expected


@pytest.mark.parametrize("heartbeat", [b"4", b"5", b"30", b"600", b"3600"])
def test_heartbeat_in_range_is_kept(heartbeat: bytes) -> None:
    result = rewrite(engine_logon({108: heartbeat}))
    assert single(result.raw, 108) == heartbeat
    assert result.heart_bt_int == int(heartbeat)


def test_heartbeat_absent_becomes_30() -> None:
    result = rewrite(engine_logon({108: None}))
    assert single(result.raw, 108) == b"30"
    assert result.heart_bt_int == 30


@pytest.mark.parametrize("heartbeat", [b"3", b"0", b"abc", b"3601", b"-5", b"", b"30.5",
                                       b" 30", b"99999999999999999999"])
def test_heartbeat_out_of_range_is_refused(heartbeat: bytes) -> None:
    error = refusal(engine_logon({108: heartbeat}))
    assert "HeartBtInt (108)" in error.text
    assert "4..3600" in error.text
    assert error.reason == "heart_bt_int"


# --------------------------------------------------------------------------- identity checks

def test_sender_comp_id_must_be_the_api_key() -> None:
    error = refusal(engine_logon({49: b"ENGINE1"}))
    assert "SenderCompID (49)" in error.text
    assert "ENGINE1" in error.text
    assert API_KEY in error.text
    assert error.reason == "sender_comp_id"


def test_sender_comp_id_missing() -> None:
    error = refusal(engine_logon({49: None}))
    assert "SenderCompID (49)" in error.text
    assert "missing" in error.text
    assert API_KEY in error.text


def test_target_comp_id_must_match_the_endpoint() -> None:
    error = refusal(engine_logon({56: b"KalshiRT"}))
    assert "TargetCompID (56)" in error.text
    assert "KalshiRT" in error.text
    assert "KalshiNR" in error.text
    assert error.reason == "target_comp_id"


def test_target_comp_id_missing() -> None:
    error = refusal(engine_logon({56: None}))
    assert "TargetCompID (56)" in error.text
    assert "missing" in error.text


@pytest.mark.parametrize("seq", [None, b"0", b"abc", b"-1", b"", b"1.0"])
def test_msg_seq_num_must_be_a_positive_integer(seq: bytes | None) -> None:
    error = refusal(engine_logon({56: b"KalshiRT", 34: seq}), RT)
    assert "MsgSeqNum (34)" in error.text
    assert error.reason == "msg_seq_num"


@pytest.mark.parametrize("tag", [49, 56, 34, 52, 108, 141])
def test_duplicate_checked_field_is_refused(tag: int) -> None:
    value = dict(ENGINE_LOGON)[tag]
    error = refusal(engine_logon(extra=[(tag, value)]))
    assert "more than once" in error.text


def test_non_logon_first_message_is_refused(make_frame: MakeFrame) -> None:
    raw = make_frame("D", (49, API_KEY), (56, "KalshiNR"), (34, 1), (52, SENDING_TIME))
    error = refusal(raw)
    assert "35=A" in error.text
    assert "35=D" in error.text


def test_malformed_logon_is_refused() -> None:
    raw = engine_logon(extra=[(95, 50), (96, b"short")])
    error = refusal(raw)
    assert "malformed" in error.text


def test_refusal_is_a_fix_error_blamed_on_the_engine() -> None:
    error = refusal(engine_logon({49: b"ENGINE1"}))
    assert isinstance(error, FixError)
    assert error.side == "engine"
    assert str(error) == error.text


# --------------------------------------------------------------------------- reset policy

def test_forced_reset_added_when_the_engine_did_not_ask() -> None:
    result = rewrite(engine_logon({141: None}))
    assert single(result.raw, 141) == b"Y"
    assert result.reset_forced
    assert not result.engine_requested_reset


def test_forced_reset_overrides_an_engine_no() -> None:
    result = rewrite(engine_logon({141: b"N"}))
    assert single(result.raw, 141) == b"Y"
    assert result.reset_forced
    assert not result.engine_requested_reset


def test_forced_reset_not_flagged_when_the_engine_asked() -> None:
    result = rewrite(engine_logon({141: b"Y"}))
    assert single(result.raw, 141) == b"Y"
    assert not result.reset_forced
    assert result.engine_requested_reset


@pytest.mark.parametrize(("engine_flag", "seq"), [(b"Y", b"1"), (b"N", b"1"), (b"N", b"57"),
                                                  (None, b"1"), (None, b"57")])
def test_engine_policy_keeps_the_engine_reset_flag(engine_flag: bytes | None,
                                                   seq: bytes) -> None:
    result = rewrite(engine_logon({56: b"KalshiRT", 141: engine_flag, 34: seq}), RT)
    assert values(result.raw, 141) == ([] if engine_flag is None else [engine_flag])
    assert not result.reset_forced
    assert result.engine_requested_reset == (engine_flag == b"Y")
    assert result.msg_seq_num == int(seq)
    assert single(result.raw, 34) == seq


@pytest.mark.parametrize("engine_flag", [b"Y", b"N", None])
def test_forced_reset_with_sequence_above_one_is_refused(engine_flag: bytes | None) -> None:
    error = refusal(engine_logon({34: b"2", 141: engine_flag}))
    assert "ResetOnLogon" in error.text
    assert "MsgSeqNum (34)" in error.text


def test_reset_flag_other_than_y_or_n_is_refused() -> None:
    error = refusal(engine_logon({141: b"X"}))
    assert "ResetSeqNumFlag (141)" in error.text


# --------------------------------------------------------------------------- Kalshi flags

def test_kalshi_flags_are_added_in_order() -> None:
    out = rewrite(engine_logon(), NR_FLAGS).raw
    fields = wire(out)
    flag_tags = [tag for tag, _ in KALSHI_FLAGS]
    found = [field for field in fields if field[0] in flag_tags]
    assert found == list(KALSHI_FLAGS)


def test_kalshi_flags_replace_engine_values() -> None:
    engine = [(8013, b"N"), (21005, b"N"), (20200, b"12"), (20126, b"N")]
    out = rewrite(engine_logon(extra=engine), NR_FLAGS).raw
    for tag, value in KALSHI_FLAGS:
        assert single(out, tag) == value


def test_engine_kalshi_flags_pass_when_the_policy_sets_none() -> None:
    out = rewrite(engine_logon(extra=[(21005, b"Y")]), NR).raw
    assert single(out, 21005) == b"Y"


# --------------------------------------------------------------------------- signature

def test_engine_signature_fields_are_replaced() -> None:
    result = rewrite(engine_logon(extra=[(95, 5), (96, b"ab\x01cd")]))
    assert single(result.raw, 95) == b"%d" % len(RecordingSigner.SIGNATURE)
    assert single(result.raw, 96) == RecordingSigner.SIGNATURE


def test_raw_data_length_sits_right_before_raw_data_at_the_end(signer: LogonSigner) -> None:
    out = rewrite_logon(engine_logon(extra=[(58, b"hello")]), NR_FLAGS, signer, now=NOW).raw
    fields = wire(out)
    assert [tag for tag, _ in fields[-3:]] == [95, 96, 10]
    assert fields[-3][1] == b"%d" % len(fields[-2][1])
    assert fields[-3][1] == b"344"  # RSA-2048


def test_signer_is_given_the_exact_pre_hash() -> None:
    signer = RecordingSigner()
    result = rewrite_logon(engine_logon(), NR, signer, now=NOW)
    assert signer.payloads == [
        b"20230809-05:28:18.035\x01A\x011\x01" + API_KEY.encode() + b"\x01KalshiNR"]
    assert signer.payloads == [pre_hash(result.raw)]


def test_signature_verifies_over_the_fields_as_sent(signer: LogonSigner) -> None:
    out = rewrite_logon(engine_logon(), NR, signer, now=NOW).raw
    public = signer.public_key()
    signature = single(out, 96)
    assert verify_signature(public, pre_hash(out), signature)
    tampered = pre_hash(out).replace(SENDING_TIME, b"20230809-05:28:18.036")
    assert tampered != pre_hash(out)
    assert not verify_signature(public, tampered, signature)
    for wrong in (b"\x01".join((SENDING_TIME, b"A", b"2", API_KEY.encode(), b"KalshiNR")),
                  b"\x01".join((SENDING_TIME, b"A", b"1", API_KEY.encode(), b"KalshiRT"))):
        assert not verify_signature(public, wrong, signature)


# --------------------------------------------------------------------------- SendingTime

@pytest.mark.parametrize(("engine", "sent"), [
    (b"20230809-05:28:18.035", b"20230809-05:28:18.035"),
    (b"20230809-05:28:18.035999", b"20230809-05:28:18.035"),
    (b"20230809-05:28:18.035999999", b"20230809-05:28:18.035"),
    (b"20230809-05:28:18", b"20230809-05:28:18.000"),
    (b"20230809-05:28:18.5", b"20230809-05:28:18.500"),
    (None, b"20230809-05:28:18.035"),  # from `now`, truncated
])
def test_sending_time(engine: bytes | None, sent: bytes) -> None:
    signer = RecordingSigner()
    result = rewrite_logon(engine_logon({52: engine}), NR, signer, now=NOW)
    assert single(result.raw, 52) == sent
    assert result.sending_time == sent
    assert signer.payloads[0].startswith(sent + b"\x01A\x01")


def test_sending_time_absent_uses_now() -> None:
    result = rewrite(engine_logon({52: None}), now=1700000000.25)
    assert single(result.raw, 52) == b"20231114-22:13:20.250"


@pytest.mark.parametrize("engine", [
    b"2023-08-09 05:28:18", b"20230809-05:28", b"20230809-05:28:18.", b"yesterday", b"",
    b"20230809-05:28:18.0351234567", b"20230809T05:28:18.035", b"20230809-05:28:18.035Z",
])
def test_malformed_sending_time_is_refused(engine: bytes) -> None:
    error = refusal(engine_logon({52: engine}))
    assert "SendingTime (52)" in error.text


# --------------------------------------------------------------------------- layout

def test_header_comes_right_after_msg_type() -> None:
    engine = encode([(35, "A"), (108, 30), (98, 0), (52, SENDING_TIME), (34, 1),
                     (56, "KalshiNR"), (49, API_KEY), (141, "Y")])
    fields = wire(rewrite(engine).raw)
    assert [tag for tag, _ in fields[:7]] == [8, 9, 35, 49, 56, 34, 52]


def test_other_header_fields_stay_before_the_body() -> None:
    engine = engine_logon(extra=[(58, b"body-1"), (1128, b"9"), (553, b"user"), (115, b"ONB"),
                                 (43, b"N")])
    fields = [tag for tag, _ in wire(rewrite(engine, NR_FLAGS).raw)]
    assert fields.index(52) < fields.index(1128) < fields.index(115) < fields.index(43) \
        < fields.index(98)
    assert fields.index(98) < fields.index(58) < fields.index(553) < fields.index(95)


def test_other_body_fields_are_kept_in_order() -> None:
    extra = [(58, b"first"), (1408, b"FIX.5.0SP2 EP999"), (58, b"again"), (464, b"N")]
    out = rewrite(engine_logon(extra=extra)).raw
    kept = [field for field in wire(out) if field[0] in {58, 1408, 464}]
    assert kept == extra


def test_output_lengths_and_checksum_are_correct() -> None:
    result = rewrite(engine_logon(extra=[(58, b"x" * 300)]), NR_FLAGS)
    fields = wire(result.raw)
    body_start = result.raw.index(b"\x0135=") + 1
    trailer = len(result.raw) - len(b"10=000\x01")
    assert fields[1] == (9, b"%d" % (trailer - body_start))
    assert fields[-1] == (10, b"%03d" % (sum(result.raw[:trailer]) % 256))


def test_result_fields_are_the_encoded_body() -> None:
    result = rewrite(engine_logon({34: b"1"}), NR_FLAGS)
    assert list(result.fields) == wire(result.raw)[2:-1]
    assert result.msg_seq_num == 1
    assert encode(result.fields) == result.raw


# --------------------------------------------------------------------------- strip_forced_reset

def test_strip_forced_reset_removes_141(make_frame: MakeFrame) -> None:
    answer = make_frame("A", (49, "KalshiNR"), (56, API_KEY), (34, 1), (52, SENDING_TIME),
                        (98, 0), (108, 30), (141, "Y"), (1137, 9))
    stripped = strip_forced_reset(answer)
    fields = wire(stripped)
    assert [field for field in fields if field[0] == 141] == []
    assert fields[2:-1] == [field for field in wire(answer)[2:-1] if field[0] != 141]


def test_strip_forced_reset_leaves_an_answer_without_141_untouched(
        make_frame: MakeFrame) -> None:
    answer = make_frame("A", (49, "KalshiNR"), (56, API_KEY), (34, 1), (52, SENDING_TIME),
                        (98, 0), (108, 30), (1137, 9))
    assert strip_forced_reset(answer) == answer


# --------------------------------------------------------------------------- property

OWNED = {8, 9, 10, 35, 49, 56, 34, 52, 98, 108, 141, 1137, 95, 96}
# Fields with rules of their own (789 must be a positive number; tested separately).
RULED = {tags.NEXT_EXPECTED_MSG_SEQ_NUM}
SPECIAL = OWNED | set(tags.HEADER_TAGS) | set(tags.LENGTH_OF) | set(tags.LENGTH_OF.values()) \
    | {tag for tag, _ in KALSHI_FLAGS} | RULED
BODY_TAGS = st.integers(min_value=1, max_value=30_000).filter(lambda tag: tag not in SPECIAL)
BODY_VALUES = st.binary(min_size=1, max_size=16).map(lambda v: v.replace(b"\x01", b"."))
SENDING_TIMES = st.sampled_from([SENDING_TIME, b"20230809-05:28:18", b"20230809-05:28:18.1",
                                 b"20230809-05:28:18.035123", None])


@dataclass(frozen=True, slots=True)
class EngineLogon:
    """A random valid engine Logon and what went into it."""

    policy: LogonPolicy
    raw: bytes
    heartbeat: int | None
    seq: int
    reset: bytes | None
    body: list[tuple[int, bytes]]
    header: list[tuple[int, bytes]]


@st.composite
def engine_logons(draw: st.DrawFn) -> EngineLogon:
    policy = draw(st.sampled_from([NR, NR_FLAGS, RT]))
    heartbeat = draw(st.none() | st.integers(min_value=4, max_value=3600))
    seq = 1 if policy.force_reset else draw(st.integers(min_value=1, max_value=10**6))
    reset = draw(st.sampled_from([b"Y", b"N", None]))
    body = draw(st.lists(st.tuples(BODY_TAGS, BODY_VALUES), max_size=6))
    header = draw(st.lists(st.sampled_from([(115, b"ONB"), (128, b"DLV"), (1128, b"9"),
                                            (50, b"desk")]), unique=True))
    # Header and body fields interleaved as an engine might send them.
    extra = draw(st.permutations([*body, *header]))
    raw = engine_logon(
        {56: policy.target_comp_id.encode(), 34: seq, 141: reset, 52: draw(SENDING_TIMES),
         108: heartbeat},
        extra=extra)
    header_order = [field for field in extra if field in header]
    body_order = [field for field in extra if field not in header]
    return EngineLogon(policy, raw, heartbeat, seq, reset, body_order, header_order)


@settings(deadline=None)
@given(case=engine_logons())
def test_property_rewritten_logon_always_frames_and_verifies(signer: LogonSigner,
                                                             case: EngineLogon) -> None:
    result = rewrite_logon(case.raw, case.policy, signer, now=NOW)
    out = result.raw
    fields = wire(out)
    for tag in ONCE_EACH:
        single(out, tag)
    assert single(out, 95) == b"%d" % len(single(out, 96))
    assert [tag for tag, _ in fields[-3:]] == [95, 96, 10]
    assert verify_signature(signer.public_key(), pre_hash(out), single(out, 96))
    assert single(out, 108) == b"%d" % (30 if case.heartbeat is None else case.heartbeat)
    assert single(out, 34) == b"%d" % case.seq
    body_tags = {tag for tag, _ in case.body}
    assert [field for field in fields if field[0] in body_tags] == case.body
    header = [field for field in fields if field in case.header]
    assert header == case.header
    tag_order = [tag for tag, _ in fields]
    for tag, _ in case.header:
        assert tag_order.index(52) < tag_order.index(tag) < tag_order.index(98)
    expected_reset = b"Y" if case.policy.force_reset or case.reset == b"Y" else case.reset
    assert values(out, 141) == ([] if expected_reset is None else [expected_reset])


def test_next_expected_seq_num_is_kept_and_reset_with_the_sequence(signer: LogonSigner) -> None:
    # 789 names the gateway's next number; after the reset fixproxy forces, that is 1.
    raw = engine_logon({56: b"KalshiNR", 34: 1}, extra=[(tags.NEXT_EXPECTED_MSG_SEQ_NUM, b"7")])
    result = rewrite_logon(raw, NR, signer, now=NOW)
    assert result.engine_next_expected == 7
    assert dict(wire(result.raw))[tags.NEXT_EXPECTED_MSG_SEQ_NUM] == b"1"


@pytest.mark.parametrize("value", [b"0", b"x", b"-3"])
def test_next_expected_seq_num_must_be_positive(signer: LogonSigner, value: bytes) -> None:
    raw = engine_logon({56: b"KalshiNR", 34: 1}, extra=[(tags.NEXT_EXPECTED_MSG_SEQ_NUM, value)])
    with pytest.raises(LogonRefused, match=r"NextExpectedMsgSeqNum \(789\)"):
        rewrite_logon(raw, NR, signer, now=NOW)


def test_forced_reset_on_an_engine_that_kept_its_numbers_is_translated(
        signer: LogonSigner) -> None:
    policy = replace(NR, translate_sequence=True)
    raw = engine_logon({56: b"KalshiNR", 34: 7, 141: None})
    result = rewrite_logon(raw, policy, signer, now=NOW)
    fields = dict(wire(result.raw))
    assert result.translated and result.reset_forced
    assert result.msg_seq_num == 7  # the engine's own number, for the renumbering
    assert fields[34] == b"1" and fields[141] == b"Y"
    # The signature binds the 34 actually sent.
    prehash = b"\x01".join([fields[52], b"A", b"1", API_KEY.encode(), b"KalshiNR"])
    assert verify_signature(signer.public_key(), prehash, fields[96])
