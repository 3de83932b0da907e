"""The simulated venue's rules without sockets: Logon checks, sequence rules, answers, timers.

Every case drives a :class:`~fixproxy.sim.venue.VenueSession` directly with framed messages
and a time passed in; the wall clock and the answers' SendingTime are pinned, so every Text is
compared whole. ``tests/sim/test_sim.py`` runs the same rules through the trio server.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from support.logons import API_KEY, Fields, replace, without
from support.logons import logon_fields as signed_logon

from fixproxy.errors import FramingError
from fixproxy.fix.codec import FixMessage, encode, utc_timestamp
from fixproxy.fix.framer import FixFramer, Frame
from fixproxy.signing import LogonSigner
from fixproxy.sim.venue import (
    LOGON_TIMEOUT_S,
    LOGOUT_TIMEOUT_S,
    Answer,
    Ending,
    Phase,
    Venue,
    VenueRules,
    VenueSession,
)

OTHER_KEY = "9e8d7c6b-5a49-4837-a261-504f3e2d1c0b"
WALL = 1_788_264_000.0
"""The venue's wall clock in these tests: 2026-09-01 12:00:00 UTC."""
NOW = utc_timestamp(WALL)
STAMP = b"20260901-12:00:00.500"
"""The SendingTime the venue puts on every answer here."""



@pytest.fixture(scope="module")
def rogue_key() -> rsa.RSAPrivateKey:
    """A second RSA key, never registered with the venue."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_venue(rsa_key: rsa.RSAPrivateKey, **rules: Any) -> Venue:
    """A venue that knows API_KEY and OTHER_KEY (same key pair), with both clocks pinned."""
    keys = {API_KEY: rsa_key.public_key(), OTHER_KEY: rsa_key.public_key()}
    return Venue(VenueRules(keys=keys, **rules), wall_clock=lambda: WALL, stamp=lambda: STAMP)


logon_fields = functools.partial(signed_logon, sending_time=NOW)
"""A signed Logon stamped with the venue's pinned clock unless a test says otherwise."""


def frame(fields: Fields, begin_string: bytes = b"FIXT.1.1") -> Frame:
    return Frame(encode(fields, begin_string), dict(fields)[35])


def parsed(answers: list[Answer]) -> list[FixMessage]:
    messages = [FixMessage.parse(answer.raw) for answer in answers]
    assert [m.msg_type for m in messages] == [answer.msg_type for answer in answers]
    return messages


class Peer:
    """The engine's side of one session: numbers its messages, parses the answers."""

    def __init__(self, venue: Venue, endpoint: str = "KalshiNR", *, key: str = API_KEY,
                 now: float = 0.0) -> None:
        self.session: VenueSession = venue.open_session(1, endpoint, now)
        self.key = key
        self.endpoint = endpoint
        self.next_seq = 1

    def logon(self, fields: Fields, now: float = 0.0) -> list[FixMessage]:
        self.next_seq = int(dict(fields).get(34, b"1")) + 1
        return parsed(self.session.receive(frame(fields), now))

    def send(self, msg_type: bytes, *body: tuple[int, bytes], seq: int | None = None,
             header: Sequence[tuple[int, bytes]] = (), now: float = 0.0) -> list[FixMessage]:
        number = self.next_seq if seq is None else seq
        if seq is None:
            self.next_seq += 1
        fields: Fields = [(35, msg_type), (49, self.key.encode()),
                          (56, self.endpoint.encode()), (34, b"%d" % number), (52, NOW),
                          *header, *body]
        return parsed(self.session.receive(frame(fields), now))


def logged_on(venue: Venue, signer: LogonSigner, endpoint: str = "KalshiNR",
              **logon: Any) -> Peer:
    peer = Peer(venue, endpoint)
    (answer,) = peer.logon(logon_fields(signer, target=endpoint, **logon))
    assert answer.msg_type == b"A", answer
    return peer


# ----- Logon: each rule, the message that breaks it, the Text the venue answers -------------

LogonCase = Callable[[LogonSigner, LogonSigner], Fields]


def _raw_data_length_apart(signer: LogonSigner, _rogue: LogonSigner) -> Fields:
    fields = logon_fields(signer)
    return [*fields[:-2], fields[-2], (21005, b"Y"), fields[-1]]


def _sent_at(offset: float) -> LogonCase:
    return lambda s, _r: logon_fields(s, sending_time=utc_timestamp(WALL + offset))


def _without_reset(endpoint: str) -> LogonCase:
    return lambda s, _r: logon_fields(s, target=endpoint, reset=None)


REFUSALS: dict[str, tuple[str, LogonCase, str]] = {
    "not a Logon first": (
        "KalshiNR", lambda s, r: [(35, b"0"), (49, API_KEY.encode()), (56, b"KalshiNR"),
                                  (34, b"1"), (52, NOW)],
        "the first message must be a Logon (35=A), got 35=0"),
    "49 twice": (
        "KalshiNR", lambda s, r: [*logon_fields(s)[:2], (49, API_KEY.encode()),
                                  *logon_fields(s)[2:]],
        "SenderCompID (49) appears more than once in the Logon"),
    "108 twice": (
        "KalshiNR", lambda s, r: [*logon_fields(s), (108, b"30")],
        "HeartBtInt (108) appears more than once in the Logon"),
    "no 1137": ("KalshiNR", lambda s, r: without(logon_fields(s), 1137),
                "DefaultApplVerID (1137) must be 9 (FIX50SP2), got missing"),
    "1137=7": ("KalshiNR", lambda s, r: replace(logon_fields(s), 1137, b"7"),
               "DefaultApplVerID (1137) must be 9 (FIX50SP2), got '7'"),
    "98=1": ("KalshiNR", lambda s, r: replace(logon_fields(s), 98, b"1"),
             "EncryptMethod (98) must be 0, got '1'"),
    "no 108": ("KalshiNR", lambda s, r: without(logon_fields(s), 108),
               "HeartBtInt (108) must be an integer greater than 3, got missing"),
    "108=3": ("KalshiNR", lambda s, r: logon_fields(s, heartbeat=b"3"),
              "HeartBtInt (108) must be an integer greater than 3, got '3'"),
    "108=-5": ("KalshiNR", lambda s, r: logon_fields(s, heartbeat=b"-5"),
               "HeartBtInt (108) must be an integer greater than 3, got '-5'"),
    "unregistered key": (
        "KalshiNR", lambda s, r: logon_fields(r, key="not-a-key"),
        "CompID problem: SenderCompID (49) 'not-a-key' is not a registered API key"),
    "no 49": ("KalshiNR", lambda s, r: without(logon_fields(s), 49),
              "CompID problem: SenderCompID (49) missing is not a registered API key"),
    "56 of another port": (
        "KalshiNR", lambda s, r: logon_fields(s, target="KalshiRT"),
        "CompID problem: TargetCompID (56) is 'KalshiRT' but this port serves KalshiNR"),
    "34=0": ("KalshiNR", lambda s, r: logon_fields(s, seq=0),
             "MsgSeqNum (34) must be a positive integer, got '0'"),
    "no 34": ("KalshiNR", lambda s, r: without(logon_fields(s), 34),
              "MsgSeqNum (34) must be a positive integer, got missing"),
    "141=X": ("KalshiRT", lambda s, r: logon_fields(s, target="KalshiRT", reset=b"X"),
              "ResetSeqNumFlag (141) must be Y or N, got 'X'"),
    **{f"no 141 on {endpoint}": (
        endpoint, _without_reset(endpoint),
        f"141=Y required: {endpoint} has no retransmission, so ResetSeqNumFlag (141) must be "
        f"Y on every Logon") for endpoint in ("KalshiNR", "KalshiDC", "KalshiRFQ", "KalshiMD")},
    "141=N on DC": (
        "KalshiDC", lambda s, r: logon_fields(s, target="KalshiDC", reset=b"N"),
        "141=Y required: KalshiDC has no retransmission, so ResetSeqNumFlag (141) must be Y "
        "on every Logon"),
    "141=Y with 34=2": ("KalshiNR", lambda s, r: logon_fields(s, seq=2),
                        "MsgSeqNum (34) must be 1 with ResetSeqNumFlag (141) Y, got 2"),
    "52 without milliseconds": (
        "KalshiNR", lambda s, r: logon_fields(s, sending_time=NOW[:-4]),
        "SendingTime (52) must be a UTC timestamp YYYYMMDD-HH:MM:SS.sss, got "
        "'20260901-12:00:00'"),
    "52 not a date": (
        "KalshiNR", lambda s, r: logon_fields(s, sending_time=b"20261399-10:00:00.000"),
        "SendingTime (52) must be a UTC timestamp YYYYMMDD-HH:MM:SS.sss, got "
        "'20261399-10:00:00.000'"),
    "52 30.001 s late": (
        "KalshiNR", _sent_at(-30.001),
        "SendingTime accuracy problem: SendingTime (52) 20260901-11:59:29.999 is -30.0 s from "
        "the gateway's clock (limit 30 s)"),
    "52 45 s ahead": (
        "KalshiNR", _sent_at(45),
        "SendingTime accuracy problem: SendingTime (52) 20260901-12:00:45.000 is +45.0 s from "
        "the gateway's clock (limit 30 s)"),
    "no 95": ("KalshiNR", lambda s, r: without(logon_fields(s), 95),
              "RawDataLength (95) is missing; the Logon must carry the signature in 95/96"),
    "95 apart from 96": ("KalshiNR", _raw_data_length_apart,
                         "RawDataLength (95) must immediately precede RawData (96)"),
    "95 not a number": ("KalshiNR", lambda s, r: replace(logon_fields(s), 95, b"x"),
                        "RawDataLength (95) is 'x' but RawData (96) is 344 bytes long"),
    "95 too short": ("KalshiNR", lambda s, r: replace(logon_fields(s), 95, b"343"),
                     "malformed Logon: data field 96 is not 343 bytes long"),
    "signed by another key": ("KalshiNR", lambda s, r: logon_fields(r),
                              "signature verification failed"),
    "signed another SendingTime": (
        "KalshiNR", lambda s, r: replace(logon_fields(s), 52, utc_timestamp(WALL - 1)),
        "signature verification failed"),
    "signed another MsgSeqNum": (
        "KalshiRT", lambda s, r: replace(logon_fields(s, target="KalshiRT", reset=None), 34,
                                         b"01"),
        "signature verification failed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_logon_rule_refuses_with_its_text(case: str, rsa_key: rsa.RSAPrivateKey,
                                               rogue_key: rsa.RSAPrivateKey) -> None:
    endpoint, build, text = REFUSALS[case]
    venue = make_venue(rsa_key)
    fields = build(LogonSigner(rsa_key), LogonSigner(rogue_key))
    peer = Peer(venue, endpoint)
    (logout,) = peer.logon(fields)
    assert logout.msg_type == b"5"
    assert logout.get_str(58) == text
    assert [logout.get(tag) for tag in (49, 56, 34, 52)] == [
        endpoint.encode(), dict(fields).get(49, b"UNKNOWN"), b"1", STAMP]
    assert peer.session.ending == Ending(f"sent Logout: {text}", linger=True)
    assert peer.session.phase is Phase.AWAIT_LOGON
    assert peer.session.api_key is None
    assert venue.live == {}


def test_begin_string_must_be_fixt(rsa_key: rsa.RSAPrivateKey) -> None:
    peer = Peer(make_venue(rsa_key))
    answers = parsed(peer.session.receive(frame(logon_fields(LogonSigner(rsa_key)),
                                                b"FIX.4.4"), 0.0))
    assert [a.get_str(58) for a in answers] == ["BeginString (8) must be FIXT.1.1, got 'FIX.4.4'"]


@pytest.mark.parametrize(("endpoint", "reset", "heartbeat", "offset"), [
    ("KalshiNR", b"Y", b"4", 30.0),
    ("KalshiNR", b"Y", b"3600", -30.0),
    ("KalshiRT", None, b"30", 0.0),
    ("KalshiRT", b"N", b"30", 0.0),
    ("KalshiPT", None, b"30", 0.0),
    ("KalshiMD", b"Y", b"30", 0.0),
])
def test_logon_at_the_limits_is_accepted(rsa_key: rsa.RSAPrivateKey, endpoint: str,
                                         reset: bytes | None, heartbeat: bytes,
                                         offset: float) -> None:
    venue = make_venue(rsa_key)
    fields = logon_fields(LogonSigner(rsa_key), target=endpoint, reset=reset,
                          heartbeat=heartbeat, sending_time=utc_timestamp(WALL + offset))
    peer = Peer(venue, endpoint)
    (answer,) = peer.logon(fields, now=5.0)
    assert answer.fields == [(35, b"A"), (49, endpoint.encode()), (56, API_KEY.encode()),
                             (34, b"1"), (52, STAMP), (98, b"0"), (108, heartbeat),
                             *([(141, b"Y")] if reset == b"Y" else []), (1137, b"9")]
    session = peer.session
    assert (session.phase, session.api_key, session.next_in, session.next_out) == (
        Phase.ACTIVE, API_KEY, 2, 2)
    assert session.ending is None
    assert venue.live == {API_KEY: session}
    assert venue.last_logon == {API_KEY: encode(fields)}
    session.note_sent(5.0)  # the gateway wrote the answer
    assert session.deadline() == 5.0 + int(heartbeat)


def test_refuse_logon_fault_answers_every_logon_but_keeps_it(rsa_key: rsa.RSAPrivateKey) -> None:
    venue = make_venue(rsa_key, refuse_logon_text="EXCHANGE_UNAVAILABLE")
    fields = logon_fields(LogonSigner(rsa_key))
    (logout,) = Peer(venue).logon(fields)
    assert logout.get(58) == b"EXCHANGE_UNAVAILABLE"
    assert venue.last_logon == {API_KEY: encode(fields)}


def test_second_logon_of_a_key_gets_already_exists(rsa_key: rsa.RSAPrivateKey) -> None:
    venue = make_venue(rsa_key)
    signer = LogonSigner(rsa_key)
    first = logged_on(venue, signer)
    (logout,) = Peer(venue, "KalshiDC").logon(logon_fields(signer, target="KalshiDC"))
    assert logout.get(58) == b"already exists"
    assert venue.live == {API_KEY: first.session}
    first.session.release()
    assert venue.live == {}
    logged_on(venue, signer, "KalshiDC")


def test_retransmission_endpoint_keeps_sequence_numbers(rsa_key: rsa.RSAPrivateKey) -> None:
    venue = make_venue(rsa_key)
    signer = LogonSigner(rsa_key)
    peer = logged_on(venue, signer, "KalshiRT", reset=None)
    peer.send(b"0")
    peer.send(b"1", (112, b"x"))
    peer.session.release()
    assert venue.seqs == {(API_KEY, "KalshiRT"): (4, 3)}
    for seq, text in ((3, "MsgSeqNum too low, expecting 4 but received 3"),
                      (5, "MsgSeqNum too high on Logon, 141=Y required: expecting 4 but "
                          "received 5")):
        (logout,) = Peer(venue, "KalshiRT").logon(
            logon_fields(signer, target="KalshiRT", seq=seq, reset=b"N"))
        assert logout.get_str(58) == text
        assert logout.get(34) == b"1"  # a refused Logon does not touch the kept numbers
    again = Peer(venue, "KalshiRT")
    (answer,) = again.logon(logon_fields(signer, target="KalshiRT", seq=4, reset=None))
    assert (answer.get(34), answer.get(141)) == (b"3", None)
    again.session.release()
    (answer,) = Peer(venue, "KalshiRT").logon(logon_fields(signer, target="KalshiRT"))
    assert (answer.get(34), answer.get(141)) == (b"1", b"Y")


# ----- the logged-on session: sequence rules -----------------------------------------------

SEQUENCE_RULES: dict[str, tuple[bytes, str, str, str | None]] = {
    # case: (34, 49, 56, the Logout's Text or None when the message is taken)
    "next number": (b"3", API_KEY, "KalshiNR", None),
    "too low": (b"2", API_KEY, "KalshiNR", "MsgSeqNum too low, expecting 3 but received 2"),
    "too high": (b"4", API_KEY, "KalshiNR", "MsgSeqNum too high, expecting 3 but received 4; "
                                            "the simulator does not resend, log on again with "
                                            "141=Y"),
    "not a number": (b"x", API_KEY, "KalshiNR", "MsgSeqNum (34) missing or invalid: 'x'"),
    "other 56": (b"3", API_KEY, "KalshiDC",
                 f"CompID problem: expected 49={API_KEY} and 56=KalshiNR"),
    "other 49": (b"3", OTHER_KEY, "KalshiNR",
                 f"CompID problem: expected 49={API_KEY} and 56=KalshiNR"),
}


@pytest.mark.parametrize("case", list(SEQUENCE_RULES))
def test_sequence_and_comp_id_rules(case: str, rsa_key: rsa.RSAPrivateKey) -> None:
    seq, key, target, text = SEQUENCE_RULES[case]
    peer = logged_on(make_venue(rsa_key), LogonSigner(rsa_key))
    assert peer.send(b"0") == []
    raw = encode([(35, b"0"), (49, key), (56, target), (34, seq), (52, NOW)])
    answers = parsed(peer.session.receive(Frame(raw, b"0"), 0.0))
    if text is None:
        assert answers == []
        assert peer.session.ending is None and peer.session.next_in == 4
    else:
        assert [(a.msg_type, a.get_str(58)) for a in answers] == [(b"5", text)]
        assert peer.session.ending == Ending(f"sent Logout: {text}", linger=True)


def test_possible_duplicate_below_the_sequence_is_ignored(rsa_key: rsa.RSAPrivateKey) -> None:
    peer = logged_on(make_venue(rsa_key), LogonSigner(rsa_key))
    peer.send(b"0")
    assert peer.send(b"1", (112, b"dup"), seq=2, header=[(43, b"Y")]) == []
    assert peer.session.next_in == 3 and peer.session.ending is None
    (heartbeat,) = peer.send(b"1", (112, b"b"))
    assert heartbeat.get(112) == b"b"


# ----- the logged-on session: answers ------------------------------------------------------

ANSWERS: dict[str, tuple[bytes, Fields, list[tuple[int, bytes]]]] = {
    "Heartbeat": (b"0", [], []),
    "TestRequest": (b"1", [(112, b"ping")], [(35, b"0"), (112, b"ping")]),
    "TestRequest without 112": (b"1", [], [
        (35, b"3"), (45, b"2"), (371, b"112"), (372, b"1"), (373, b"1"),
        (58, b"Required tag missing")]),
    "NewOrderSingle": (b"D", [(11, b"order-1"), (55, b"HIGHNY-23DEC31"), (54, b"1"),
                              (38, b"10"), (40, b"2"), (44, b"55"), (59, b"1")], [
        (35, b"8"), (37, b"SIM-1"), (11, b"order-1"), (17, b"1;1"), (150, b"0"),
        (39, b"0"), (55, b"HIGHNY-23DEC31"), (54, b"1"), (38, b"10"), (40, b"2"), (44, b"55"),
        (14, b"0"), (151, b"10"), (6, b"0"), (60, STAMP)]),
    "NewOrderSingle without 11": (b"D", [(55, b"HIGHNY-23DEC31")], [
        (35, b"3"), (45, b"2"), (371, b"11"), (372, b"D"), (373, b"1"),
        (58, b"Required tag missing")]),
    "OrderCancelRequest": (b"F", [(11, b"c-1"), (41, b"order-1"), (37, b"SIM-9"),
                                  (55, b"HIGHNY-23DEC31"), (54, b"2")], [
        (35, b"8"), (37, b"SIM-9"), (11, b"c-1"), (17, b"1;1"), (150, b"4"), (39, b"4"),
        (41, b"order-1"), (55, b"HIGHNY-23DEC31"), (54, b"2"), (14, b"0"), (151, b"0"),
        (6, b"0"), (60, STAMP)]),
    "OrderCancelRequest without 37": (b"F", [(11, b"c-1"), (41, b"order-1")], [
        (35, b"8"), (37, b"SIM-1"), (11, b"c-1"), (17, b"1;1"), (150, b"4"), (39, b"4"),
        (41, b"order-1"), (14, b"0"), (151, b"0"), (6, b"0"), (60, STAMP)]),
    "ResendRequest": (b"2", [(7, b"1"), (16, b"0")], [
        (35, b"3"), (45, b"2"), (372, b"2"), (373, b"11"),
        (58, b"ResendRequest and SequenceReset are not supported by the simulator")]),
    "SequenceReset": (b"4", [(36, b"9")], [
        (35, b"3"), (45, b"2"), (372, b"4"), (373, b"11"),
        (58, b"ResendRequest and SequenceReset are not supported by the simulator")]),
    "Reject": (b"3", [(45, b"1")], []),
    "unsupported": (b"UOG", [(20131, b"1")], [
        (35, b"j"), (45, b"2"), (372, b"UOG"), (380, b"3"), (58, b"Unsupported message type")]),
}


@pytest.mark.parametrize("case", list(ANSWERS))
def test_answers_of_a_logged_on_session(case: str, rsa_key: rsa.RSAPrivateKey) -> None:
    msg_type, body, expected = ANSWERS[case]
    peer = logged_on(make_venue(rsa_key), LogonSigner(rsa_key))
    answers = peer.send(msg_type, *body)
    header = [(49, b"KalshiNR"), (56, API_KEY.encode()), (34, b"2"), (52, STAMP)]
    assert [answer.fields for answer in answers] == (
        [[expected[0], *header, *expected[1:]]] if expected else [])
    assert peer.session.ending is None


@pytest.mark.parametrize(("msg_type", "answer", "ending"), [
    (b"5", (b"5", None), Ending("peer logged out", linger=True)),
    (b"A", (b"5", "Logon (35=A) received on a session already logged on"),
     Ending("sent Logout: Logon (35=A) received on a session already logged on", linger=True)),
])
def test_logout_and_second_logon_end_the_session(
        rsa_key: rsa.RSAPrivateKey, msg_type: bytes, answer: tuple[bytes, str | None],
        ending: Ending) -> None:
    peer = logged_on(make_venue(rsa_key), LogonSigner(rsa_key))
    (logout,) = peer.send(msg_type)
    assert (logout.msg_type, logout.get_str(58)) == answer
    assert peer.session.ending == ending
    assert peer.send(b"1", (112, b"late")) == []


def test_invalid_fix_logs_out(rsa_key: rsa.RSAPrivateKey) -> None:
    peer = logged_on(make_venue(rsa_key), LogonSigner(rsa_key))
    (logout,) = parsed(peer.session.framing_failed(FramingError("bad CheckSum")))
    assert logout.get_str(58) == "invalid FIX message: bad CheckSum"
    assert peer.session.ending == Ending("sent Logout: invalid FIX message: bad CheckSum",
                                         linger=True)


# ----- timers ------------------------------------------------------------------------------

def test_heartbeat_test_request_and_dead_peer(rsa_key: rsa.RSAPrivateKey) -> None:
    peer = logged_on(make_venue(rsa_key), LogonSigner(rsa_key), heartbeat=b"10")
    session = peer.session
    session.note_sent(0.0)
    assert session.deadline() == 10.0
    assert [m.msg_type for m in parsed(session.on_timer(10.0))] == [b"0"]
    session.note_sent(10.0)
    assert session.deadline() == 12.0  # 10 s * (1 + grace) without a message
    (test_request,) = parsed(session.on_timer(12.0))
    assert (test_request.msg_type, test_request.get(112)) == (b"1", b"SIM-TEST-1")
    session.note_sent(12.0)
    assert session.deadline() == 22.0  # one HeartBtInt for the TestRequest's answer
    (logout,) = parsed(session.on_timer(22.0))
    assert logout.get_str(58) == ("no message received for 22 s and the TestRequest went "
                                  "unanswered")
    assert session.ending is not None and session.ending.linger
    assert session.on_timer(40.0) == []


def test_any_bytes_answer_a_test_request(rsa_key: rsa.RSAPrivateKey) -> None:
    peer = logged_on(make_venue(rsa_key), LogonSigner(rsa_key), heartbeat=b"10")
    session = peer.session
    session.note_sent(100.0)
    parsed(session.on_timer(12.0))
    session.note_received(15.0)
    assert session.test_req_id is None
    assert session.deadline() == 27.0


def test_no_logon_in_time(rsa_key: rsa.RSAPrivateKey) -> None:
    session = make_venue(rsa_key).open_session(7, "KalshiNR", 100.0)
    assert session.deadline() == 100.0 + LOGON_TIMEOUT_S
    assert session.on_timer(109.0) == [] and session.ending is None
    assert session.on_timer(110.0) == []
    assert session.ending == Ending("no Logon received in time", linger=False)


def test_the_first_reason_to_end_stands(rsa_key: rsa.RSAPrivateKey) -> None:
    session = make_venue(rsa_key).open_session(1, "KalshiNR", 0.0)
    session.close("peer closed the connection")
    session.close("peer stopped reading")
    assert session.ending == Ending("peer closed the connection", linger=False)
    assert session.receive(frame(logon_fields(LogonSigner(rsa_key))), 0.0) == []


# ----- faults the venue owns ---------------------------------------------------------------

def test_logout_after_messages_then_waits_for_the_answer(rsa_key: rsa.RSAPrivateKey) -> None:
    peer = logged_on(make_venue(rsa_key, logout_after_messages=2), LogonSigner(rsa_key))
    assert peer.send(b"0") == []
    heartbeat, logout = peer.send(b"1", (112, b"last"), now=50.0)
    assert (heartbeat.get(112), logout.get_str(58)) == (b"last", "sim: logout after 2 messages")
    assert peer.session.phase is Phase.LOGOUT_SENT
    assert peer.session.deadline() == 50.0 + LOGOUT_TIMEOUT_S
    assert peer.send(b"5") == []
    assert peer.session.ending == Ending("logged out at the simulator's request", linger=True)


def test_logout_after_zero_messages_unanswered(rsa_key: rsa.RSAPrivateKey) -> None:
    peer = Peer(make_venue(rsa_key, logout_after_messages=0), now=0.0)
    answer, logout = peer.logon(logon_fields(LogonSigner(rsa_key)), now=3.0)
    assert (answer.msg_type, logout.get_str(58)) == (b"A", "sim: logout after 0 messages")
    assert peer.session.on_timer(3.0 + LOGOUT_TIMEOUT_S) == []
    assert peer.session.ending == Ending("the peer did not answer our Logout", linger=False)


def test_silent_after_messages_reads_but_never_answers(rsa_key: rsa.RSAPrivateKey) -> None:
    peer = logged_on(make_venue(rsa_key, silent_after_messages=2), LogonSigner(rsa_key),
                     heartbeat=b"10")
    assert [m.get(112) for m in peer.send(b"1", (112, b"one"))] == [b"one"]
    assert peer.send(b"1", (112, b"two")) == []
    assert peer.send(b"D", (11, b"o")) == []
    assert (peer.session.next_in, peer.session.next_out) == (5, 3)
    peer.session.note_received(0.0)
    assert peer.session.deadline() == 12.0  # the send deadline is gone
    assert peer.session.on_timer(12.0) == [] and peer.session.next_out == 3


@pytest.mark.parametrize(("answered", "expected"), [(False, []), (True, [b"0"])])
def test_drop_after_messages(rsa_key: rsa.RSAPrivateKey, answered: bool,
                             expected: list[bytes]) -> None:
    venue = make_venue(rsa_key, drop_after_messages=2, answer_dropped_message=answered)
    peer = logged_on(venue, LogonSigner(rsa_key))
    assert [m.msg_type for m in peer.send(b"1", (112, b"one"))] == [b"0"]
    assert peer.session.dropped_after is None
    assert [m.msg_type for m in peer.send(b"1", (112, b"two"))] == expected
    assert peer.session.dropped_after == 2
    assert peer.session.ending is None  # how the connection ends is the gateway's
    assert peer.send(b"1", (112, b"three")) == []
    assert peer.session.on_timer(1000.0) == []
    peer.session.release()
    assert venue.seqs[(API_KEY, "KalshiNR")] == ((4, 4) if answered else (3, 3))


@pytest.mark.parametrize(("answered", "expected"), [(False, [b"A"]), (True, [b"A", b"5"])])
def test_drop_at_zero_preempts_logout_at_zero_unless_answered(
        rsa_key: rsa.RSAPrivateKey, answered: bool, expected: list[bytes]) -> None:
    venue = make_venue(rsa_key, drop_after_messages=0, answer_dropped_message=answered,
                       logout_after_messages=0)
    peer = Peer(venue)
    assert [m.msg_type for m in peer.logon(logon_fields(LogonSigner(rsa_key)))] == expected
    assert peer.session.dropped_after == 0


# ----- properties --------------------------------------------------------------------------

steps = st.lists(st.tuples(
    st.sampled_from([b"0", b"1", b"D", b"F", b"2", b"4", b"3", b"5", b"A", b"UOG"]),
    st.sampled_from([0, 0, 0, 0, -1, 1]),
    st.booleans(),
), max_size=12)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(steps=steps, silent_after=st.none() | st.integers(0, 6))
def test_outbound_numbers_never_skip_and_an_ended_session_stays_quiet(
        rsa_key: rsa.RSAPrivateKey, steps: list[tuple[bytes, int, bool]],
        silent_after: int | None) -> None:
    """Whatever a logged-on peer sends, the venue's MsgSeqNums run 1, 2, 3... to the peer, the
    session ends only through a Logout, and once ended it answers nothing."""
    venue = make_venue(rsa_key, silent_after_messages=silent_after)
    peer = Peer(venue)
    answers = peer.logon(logon_fields(LogonSigner(rsa_key)))
    for msg_type, offset, possdup in steps:
        ended = peer.session.ending is not None
        got = peer.send(msg_type, (112, b"t"), (11, b"o"), seq=peer.next_seq + offset,
                        header=[(43, b"Y")] if possdup else [])
        if offset == 0:
            peer.next_seq += 1
        if ended:
            assert got == []
        answers += got
        if peer.session.ending is None:
            answers += parsed(peer.session.on_timer(math.inf))
    assert [int(m.get(34) or 0) for m in answers] == list(range(1, len(answers) + 1))
    assert all((m.get(49), m.get(56)) == (b"KalshiNR", API_KEY.encode()) for m in answers)
    assert peer.session.next_out == len(answers) + 1
    if peer.session.ending is not None:
        assert peer.session.ending.linger
        assert silent_after is not None or answers[-1].msg_type == b"5"


logon_tags = st.sampled_from([35, 49, 56, 34, 52, 98, 108, 141, 1137, 95, 96])
values = st.binary(min_size=0, max_size=6).filter(lambda v: b"\x01" not in v) | st.sampled_from(
    [b"A", b"Y", b"N", b"0", b"1", b"9", b"30", API_KEY.encode(), b"KalshiNR", NOW])


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(changes=st.lists(st.tuples(logon_tags, st.none() | values), max_size=3))
def test_any_first_message_gets_exactly_one_answer(
        rsa_key: rsa.RSAPrivateKey, changes: list[tuple[int, bytes | None]]) -> None:
    """A good Logon with fields removed or changed gets a Logon answer if it is still good,
    otherwise one Logout with a Text, and never an exception."""
    fields = logon_fields(LogonSigner(rsa_key))
    for tag, value in changes:
        fields = without(fields, tag) if value is None else replace(fields, tag, value)
    framer = FixFramer()
    try:
        framer.receive_data(encode(fields))
        first = framer.next_message()
    except (ValueError, FramingError):
        first = None  # not a message the framer would hand over
    assume(first is not None)
    assert first is not None
    venue = make_venue(rsa_key)
    peer = Peer(venue)
    answers = parsed(peer.session.receive(first, 0.0))
    assert len(answers) == 1
    (answer,) = answers
    event(f"answered 35={answer.msg_type.decode()}")
    if answer.msg_type == b"A":
        assert peer.session.phase is Phase.ACTIVE and venue.live == {API_KEY: peer.session}
    else:
        assert answer.msg_type == b"5" and answer.get_str(58)
        assert peer.session.ending is not None and peer.session.ending.linger
        assert venue.live == {}
