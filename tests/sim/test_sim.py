"""The simulated Kalshi gateway: Logon rules, session behaviour, faults, certificates.

End-to-end cases run over real loopback TLS with certificates from ``fixproxy.sim.certs``;
the table of Logon refusals and everything timed run over trio memory streams (timed ones on the
autojump clock), through the same per-connection code.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ssl
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.logons import API_KEY, Fields, logon_fields, replace, without

from fixproxy.errors import ConfigError, SigningError
from fixproxy.fix.codec import FixMessage, encode, utc_timestamp
from fixproxy.fix.framer import FixFramer
from fixproxy.signing import LogonSigner, public_key_pem
from fixproxy.sim import (
    SimCertificates,
    SimConfig,
    SimFaults,
    SimGateway,
    generate_certificates,
    load_sim_keys,
    spki_pin,
)

UNREGISTERED_KEY = "9e8d7c6b-5a49-4837-a261-504f3e2d1c0b"
TIMEOUT = 10.0



@pytest.fixture(scope="module")
def rogue_key() -> rsa.RSAPrivateKey:
    """A second RSA key, never registered with the simulator."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def certs() -> SimCertificates:
    return generate_certificates()


@pytest.fixture
def signer(rsa_key: rsa.RSAPrivateKey) -> LogonSigner:
    return LogonSigner(rsa_key)


class Client:
    """A tiny FIX initiator for the tests."""

    def __init__(self, stream: trio.abc.Stream, *, key: str = API_KEY,
                 target: str = "KalshiNR") -> None:
        self.stream = stream
        self.framer = FixFramer()
        self.key = key
        self.target = target
        self.next_seq = 1

    async def send_raw(self, raw: bytes) -> None:
        await self.stream.send_all(raw)

    async def logon(self, fields: Fields) -> FixMessage | None:
        await self.send_raw(encode(fields))
        self.next_seq = int(dict(fields)[34]) + 1
        return await self.receive()

    async def send(self, msg_type: bytes, *body: tuple[int, Any], seq: int | None = None,
                   extra_header: Sequence[tuple[int, bytes]] = ()) -> int:
        number = self.next_seq if seq is None else seq
        await self.send_raw(encode([(35, msg_type), (49, self.key), (56, self.target),
                                    (34, number), (52, utc_timestamp()), *extra_header, *body]))
        if seq is None:
            self.next_seq += 1
        return number

    async def logon_accepted(self, signer: LogonSigner) -> FixMessage:
        answer = await self.logon(logon_fields(signer, target=self.target))
        assert answer is not None
        assert answer.msg_type == b"A", answer
        return answer

    async def receive(self) -> FixMessage | None:
        """The next message, or None once the peer closed."""
        while True:
            frame = self.framer.next_message()
            if frame is not None:
                return FixMessage.parse(frame.raw)
            if self.framer.at_eof:
                return None
            self.framer.receive_data(await self.stream.receive_some(65536))

    async def expect(self, msg_type: bytes) -> FixMessage:
        message = await self.receive()
        assert message is not None, f"connection closed while waiting for 35={msg_type!r}"
        assert message.msg_type == msg_type, message
        return message

    async def expect_logout_and_close(self, text_part: str) -> FixMessage:
        logout = await self.expect(b"5")
        assert text_part in (logout.get_str(58) or ""), logout
        assert await self.receive() is None
        return logout


@asynccontextmanager
async def running_sim(certs: SimCertificates, keys: dict[str, rsa.RSAPublicKey],
                      **options: Any) -> AsyncIterator[tuple[SimGateway,
                                                             dict[str, tuple[str, int]]]]:
    sim = SimGateway(SimConfig(keys=keys, **options), certs.server_context())
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(sim.serve)
        yield sim, addresses
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def tls_client(certs: SimCertificates, address: tuple[str, int], *,
                     target: str = "KalshiNR") -> AsyncIterator[Client]:
    tcp = await trio.open_tcp_stream(*address)
    stream = trio.SSLStream(tcp, certs.client_context(), server_hostname=certs.hostname,
                            https_compatible=True)
    try:
        await stream.do_handshake()
        yield Client(stream, target=target)
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def memory_client(sim: SimGateway, endpoint: str = "KalshiNR") -> AsyncIterator[Client]:
    client_side, sim_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sim.handle_stream, sim_side, endpoint)
        try:
            yield Client(client_side, target=endpoint)
        finally:
            await client_side.aclose()


def memory_sim(rsa_key: rsa.RSAPrivateKey, **options: Any) -> SimGateway:
    # The TLS context is unused over memory streams; a bare server context is enough.
    return SimGateway(SimConfig(keys={API_KEY: rsa_key.public_key()}, **options),
                      ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


# ----- Logon over TLS ---------------------------------------------------------------------


async def test_good_logon_is_answered_and_recorded(
        certs: SimCertificates, rsa_key: rsa.RSAPrivateKey, signer: LogonSigner) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_sim(certs, {API_KEY: rsa_key.public_key()}) as (sim, addresses):
            assert set(addresses) == {"KalshiNR", "KalshiDC", "KalshiRT", "KalshiPT",
                                      "KalshiRFQ", "KalshiMD"}
            assert all(host == "127.0.0.1" and port > 0 for host, port in addresses.values())
            async with tls_client(certs, addresses["KalshiNR"]) as client:
                fields = logon_fields(signer, heartbeat=b"17")
                answer = await client.logon(fields)
                assert answer is not None
                assert answer.msg_type == b"A"
                assert [answer.get(tag) for tag in (49, 56, 34, 98, 108, 141, 1137)] == [
                    b"KalshiNR", API_KEY.encode(), b"1", b"0", b"17", b"Y", b"9"]
                assert answer.get(52) is not None
                assert sim.last_logon[API_KEY] == encode(fields)
                assert sim.live_sessions == {API_KEY: "KalshiNR"}
                assert [(e.direction, e.msg_type, e.api_key, e.endpoint)
                        for e in sim.events] == [("in", b"A", API_KEY, "KalshiNR"),
                                                 ("out", b"A", API_KEY, "KalshiNR")]
                assert sim.events[0].raw == encode(fields)


async def test_logout_is_answered_then_closed(
        certs: SimCertificates, rsa_key: rsa.RSAPrivateKey, signer: LogonSigner) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_sim(certs, {API_KEY: rsa_key.public_key()}) as (sim, addresses):
            async with tls_client(certs, addresses["KalshiNR"]) as client:
                await client.logon(logon_fields(signer))
                await client.send(b"5")
                logout = await client.expect(b"5")
                assert logout.get(34) == b"2"
                assert logout.get(58) is None
                assert await client.receive() is None
            conn_id = sim.events[0].conn_id
            assert await sim.wait_closed(conn_id) == "peer logged out"
            assert sim.live_sessions == {}


async def test_new_order_single_gets_an_execution_report(
        certs: SimCertificates, rsa_key: rsa.RSAPrivateKey, signer: LogonSigner) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_sim(certs, {API_KEY: rsa_key.public_key()},
                               ports={"KalshiRT": 0}) as (sim, addresses):
            assert set(addresses) == {"KalshiRT"}
            async with tls_client(certs, addresses["KalshiRT"], target="KalshiRT") as client:
                await client.logon(logon_fields(signer, target="KalshiRT"))
                await client.send(b"D", (11, b"order-1"), (55, b"HIGHNY-23DEC31"), (54, b"1"),
                                  (38, b"10"), (40, b"2"), (44, b"75"), (59, b"1"))
                report = await client.expect(b"8")
                assert report.get(11) == b"order-1"
                assert [report.get(tag) for tag in (150, 39, 55, 54, 38, 40, 44, 14, 151, 6)] == [
                    b"0", b"0", b"HIGHNY-23DEC31", b"1", b"10", b"2", b"75", b"0", b"10", b"0"]
                assert report.get(37) and report.get(17) and report.get(60)
                assert [report.get(tag) for tag in (49, 56, 34)] == [
                    b"KalshiRT", API_KEY.encode(), b"2"]
                await sim.wait_for_messages("D")
                assert sim.message_count(b"8", "out") == 1


async def test_duplicate_key_is_refused_and_the_first_session_carries_on(
        certs: SimCertificates, rsa_key: rsa.RSAPrivateKey, signer: LogonSigner) -> None:
    with trio.fail_after(TIMEOUT):
        async with (running_sim(certs, {API_KEY: rsa_key.public_key()}) as (sim, addresses),
                    tls_client(certs, addresses["KalshiNR"]) as first):
            await first.logon_accepted(signer)
            # One connection per key, whatever the endpoint.
            async with tls_client(certs, addresses["KalshiDC"], target="KalshiDC") as second:
                await second.send_raw(encode(logon_fields(signer, target="KalshiDC")))
                logout = await second.expect_logout_and_close("already exists")
                assert logout.get(58) == b"already exists"
            await sim.wait_for(lambda events: sum(
                e.msg_type == b"A" and e.direction == "in" for e in events) == 2)
            await first.send(b"1", (112, b"still-there"))
            heartbeat = await first.expect(b"0")
            assert heartbeat.get(112) == b"still-there"
            assert sim.live_sessions == {API_KEY: "KalshiNR"}


async def test_failed_tls_handshake_does_not_disturb_other_connections(
        certs: SimCertificates, rsa_key: rsa.RSAPrivateKey, signer: LogonSigner) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_sim(certs, {API_KEY: rsa_key.public_key()}) as (sim, addresses):
            plain = await trio.open_tcp_stream(*addresses["KalshiNR"])
            try:
                # A handshake left hanging, then one that fails, around a good session.
                async with tls_client(certs, addresses["KalshiNR"]) as client:
                    await client.logon_accepted(signer)
                    await plain.send_all(encode(logon_fields(signer)))
                    received = b""
                    # The simulator closes the connection (EOF or reset) without a FIX answer.
                    with contextlib.suppress(trio.BrokenResourceError):
                        while chunk := await plain.receive_some(65536):
                            received += chunk
                    assert b"35=" not in received
                    await client.send(b"1", (112, b"t"))
                    assert (await client.expect(b"0")).get(112) == b"t"
            finally:
                await plain.aclose()
            assert sim.message_count("A") == 1


async def test_expired_certificate_fails_verification() -> None:
    now = dt.datetime.now(dt.UTC)
    expired = generate_certificates(not_before=now - dt.timedelta(days=10),
                                    not_after=now - dt.timedelta(days=1))
    client_side, server_side = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_side, expired.client_context(), server_hostname="localhost")
    server = trio.SSLStream(server_side, expired.server_context(), server_side=True)
    errors: list[BaseException] = []

    async def handshake(stream: trio.SSLStream[Any]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            errors.append(exc.__cause__ or exc)
        finally:
            await trio.aclose_forcefully(stream)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake, server)
            await handshake(client)
    assert any(isinstance(error, ssl.SSLCertVerificationError) and "expired" in str(error)
               for error in errors), errors


# ----- Logon refusals (memory streams) ----------------------------------------------------

LogonCase = Callable[[LogonSigner, LogonSigner], Fields]


def _stale(signer: LogonSigner, _rogue: LogonSigner) -> Fields:
    old = utc_timestamp(dt.datetime.now(dt.UTC).timestamp() - 45)
    return logon_fields(signer, sending_time=old)


def _future(signer: LogonSigner, _rogue: LogonSigner) -> Fields:
    ahead = utc_timestamp(dt.datetime.now(dt.UTC).timestamp() + 45)
    return logon_fields(signer, sending_time=ahead)


def _signed_other_time(signer: LogonSigner, _rogue: LogonSigner) -> Fields:
    fields = logon_fields(signer)
    return replace(fields, 52, utc_timestamp(dt.datetime.now(dt.UTC).timestamp() - 1))


def _raw_data_length_apart(signer: LogonSigner, _rogue: LogonSigner) -> Fields:
    fields = logon_fields(signer)
    length = fields[-2]
    return [*fields[:-2], length, (21005, b"Y"), fields[-1]]


REFUSALS: dict[str, tuple[str, LogonCase, str]] = {
    "bad signature": ("KalshiNR", lambda s, rogue: logon_fields(rogue),
                      "signature verification failed"),
    "signed another SendingTime": ("KalshiNR", _signed_other_time,
                                   "signature verification failed"),
    "56 of another port": ("KalshiNR", lambda s, r: logon_fields(s, target="KalshiRT"),
                           "this port serves KalshiNR"),
    "no 141 on NR": ("KalshiNR", lambda s, r: logon_fields(s, reset=None), "141=Y required"),
    "141=N on DC": ("KalshiDC", lambda s, r: logon_fields(s, target="KalshiDC", reset=b"N"),
                    "141=Y required"),
    "no 141 on RFQ": ("KalshiRFQ", lambda s, r: logon_fields(s, target="KalshiRFQ", reset=None),
                      "141=Y required"),
    "no 141 on MD": ("KalshiMD", lambda s, r: logon_fields(s, target="KalshiMD", reset=None),
                     "141=Y required"),
    "141=Y with 34=2": ("KalshiNR", lambda s, r: logon_fields(s, seq=2),
                        "MsgSeqNum (34) must be 1"),
    "141=X": ("KalshiRT", lambda s, r: logon_fields(s, target="KalshiRT", reset=b"X"),
              "ResetSeqNumFlag (141) must be Y or N"),
    "stale 52": ("KalshiNR", _stale, "SendingTime accuracy problem"),
    "future 52": ("KalshiNR", _future, "SendingTime accuracy problem"),
    "52 without milliseconds": (
        "KalshiNR", lambda s, r: logon_fields(s, sending_time=utc_timestamp()[:-4]),
        "YYYYMMDD-HH:MM:SS.sss"),
    "52 not a date": ("KalshiNR", lambda s, r: logon_fields(
        s, sending_time=b"20261399-10:00:00.000"), "YYYYMMDD-HH:MM:SS.sss"),
    "no 1137": ("KalshiNR", lambda s, r: without(logon_fields(s), 1137),
                "DefaultApplVerID (1137) must be 9"),
    "98=1": ("KalshiNR", lambda s, r: replace(logon_fields(s), 98, b"1"),
             "EncryptMethod (98) must be 0"),
    "108=3": ("KalshiNR", lambda s, r: logon_fields(s, heartbeat=b"3"),
              "HeartBtInt (108) must be an integer greater than 3"),
    "no 108": ("KalshiNR", lambda s, r: without(logon_fields(s), 108), "HeartBtInt (108)"),
    "unregistered key": ("KalshiNR", lambda s, r: logon_fields(r, key=UNREGISTERED_KEY),
                         "is not a registered API key"),
    "no 34": ("KalshiNR", lambda s, r: without(logon_fields(s), 34), "MsgSeqNum (34)"),
    "no 95": ("KalshiNR", lambda s, r: without(logon_fields(s), 95),
              "RawDataLength (95) is missing"),
    "no 96": ("KalshiNR", lambda s, r: without(logon_fields(s), 96), "RawData (96) is missing"),
    "95 apart from 96": ("KalshiNR", _raw_data_length_apart, "must immediately precede"),
    "95 not a number": ("KalshiNR", lambda s, r: replace(logon_fields(s), 95, b"x"),
                        "RawDataLength (95) is 'x' but RawData (96) is 344 bytes long"),
    "95 too short": ("KalshiNR", lambda s, r: replace(logon_fields(s), 95, b"343"),
                     "malformed Logon: data field 96 is not 343 bytes long"),
    "49 twice": ("KalshiNR", lambda s, r: [*logon_fields(s)[:2], (49, API_KEY.encode()),
                                           *logon_fields(s)[2:]],
                 "SenderCompID (49) appears more than once"),
    "not a Logon first": ("KalshiNR", lambda s, r: [(35, b"0"), (49, API_KEY.encode()),
                                                    (56, b"KalshiNR"), (34, b"1"),
                                                    (52, utc_timestamp())],
                          "the first message must be a Logon (35=A), got 35=0"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_logon_refusals(case: str, rsa_key: rsa.RSAPrivateKey,
                              rogue_key: rsa.RSAPrivateKey) -> None:
    endpoint, build, text = REFUSALS[case]
    sim = memory_sim(rsa_key)
    fields = build(LogonSigner(rsa_key), LogonSigner(rogue_key))
    with trio.fail_after(TIMEOUT):
        async with memory_client(sim, endpoint) as client:
            await client.send_raw(encode(fields))
            logout = await client.expect_logout_and_close(text)
            assert logout.get(34) == b"1"
            assert logout.get(49) == endpoint.encode()
            assert logout.get(56) == dict(fields)[49]
        assert sim.live_sessions == {}
        assert (await sim.wait_closed(1)).startswith("sent Logout")


async def test_refused_logon_is_still_kept_for_inspection(rsa_key: rsa.RSAPrivateKey) -> None:
    sim = memory_sim(rsa_key, faults=SimFaults(refuse_logon_text="EXCHANGE_UNAVAILABLE"))
    fields = logon_fields(LogonSigner(rsa_key))
    with trio.fail_after(TIMEOUT):
        async with memory_client(sim) as client:
            await client.send_raw(encode(fields))
            logout = await client.expect_logout_and_close("EXCHANGE_UNAVAILABLE")
            assert logout.get(58) == b"EXCHANGE_UNAVAILABLE"
    assert sim.last_logon == {API_KEY: encode(fields)}


async def test_retransmission_endpoint_keeps_sequence_numbers_across_connections(
        rsa_key: rsa.RSAPrivateKey, signer: LogonSigner) -> None:
    sim = memory_sim(rsa_key)
    with trio.fail_after(TIMEOUT):
        async with memory_client(sim, "KalshiRT") as client:
            answer = await client.logon(logon_fields(signer, target="KalshiRT", reset=None))
            assert answer is not None and answer.msg_type == b"A"
            assert answer.get(141) is None and answer.get(34) == b"1"
            await client.send(b"0")
            await client.send(b"5")
            assert (await client.expect(b"5")).get(34) == b"2"
        for seq, text in ((7, "MsgSeqNum too high on Logon, 141=Y required"),
                          (2, "MsgSeqNum too low, expecting 4 but received 2")):
            async with memory_client(sim, "KalshiRT") as client:
                await client.send_raw(encode(logon_fields(signer, target="KalshiRT", seq=seq,
                                                          reset=b"N")))
                await client.expect_logout_and_close(text)
        async with memory_client(sim, "KalshiRT") as client:
            answer = await client.logon(logon_fields(signer, target="KalshiRT", seq=4,
                                                     reset=b"N"))
            assert answer is not None and answer.msg_type == b"A"
            assert (answer.get(34), answer.get(141)) == (b"3", None)
            await client.send(b"5")
            assert (await client.expect(b"5")).get(34) == b"4"
        async with memory_client(sim, "KalshiRT") as client:
            answer = await client.logon(logon_fields(signer, target="KalshiRT", seq=1))
            assert answer is not None and answer.msg_type == b"A"
            assert answer.get(34) == b"1" and answer.get(141) == b"Y"


# ----- the logged-on session (memory streams) ---------------------------------------------


async def test_test_request_cancel_and_unsupported_messages(
        rsa_key: rsa.RSAPrivateKey, signer: LogonSigner) -> None:
    sim = memory_sim(rsa_key)
    with trio.fail_after(TIMEOUT):
        async with memory_client(sim) as client:
            await client.logon(logon_fields(signer))
            await client.send(b"1", (112, b"ping-1"))
            assert (await client.expect(b"0")).get(112) == b"ping-1"
            await client.send(b"F", (11, b"cancel-1"), (41, b"order-1"), (37, b"SIM-9"),
                              (55, b"HIGHNY-23DEC31"), (54, b"2"))
            report = await client.expect(b"8")
            assert [report.get(tag) for tag in (11, 41, 37, 150, 39, 55, 54, 151)] == [
                b"cancel-1", b"order-1", b"SIM-9", b"4", b"4", b"HIGHNY-23DEC31", b"2", b"0"]
            seq = await client.send(b"UOG", (20131, b"1"))
            reject = await client.expect(b"j")
            assert [reject.get(tag) for tag in (380, 45, 372)] == [b"3", b"%d" % seq, b"UOG"]
            seq = await client.send(b"D", (55, b"HIGHNY-23DEC31"))
            session_reject = await client.expect(b"3")
            assert [session_reject.get(tag) for tag in (45, 372, 373, 371)] == [
                b"%d" % seq, b"D", b"1", b"11"]
            seq = await client.send(b"2", (7, b"1"), (16, b"0"))
            assert (await client.expect(b"3")).get(373) == b"11"
            await client.send(b"0")
            await client.send(b"5")
            await client.expect(b"5")
    assert sim.message_count("0") == 1
    assert [e.msg_type for e in sim.events if e.direction == "out"] == [
        b"A", b"0", b"8", b"j", b"3", b"3", b"5"]
    assert [int(FixMessage.parse(e.raw).get(34) or 0) for e in sim.events
            if e.direction == "out"] == list(range(1, 8))


@pytest.mark.parametrize(("seq_delta", "text"), [
    (-1, "MsgSeqNum too low, expecting 3 but received 2"),
    (1, "MsgSeqNum too high, expecting 3 but received 4"),
])
async def test_sequence_gap_logs_out_and_closes(rsa_key: rsa.RSAPrivateKey,
                                                signer: LogonSigner, seq_delta: int,
                                                text: str) -> None:
    sim = memory_sim(rsa_key)
    with trio.fail_after(TIMEOUT):
        async with memory_client(sim) as client:
            await client.logon(logon_fields(signer))
            await client.send(b"0")
            await client.send(b"0", seq=client.next_seq + seq_delta)
            await client.expect_logout_and_close(text)
    assert sim.closed[1].startswith(f"sent Logout: {text}")


async def test_possible_duplicate_below_the_sequence_is_ignored(
        rsa_key: rsa.RSAPrivateKey, signer: LogonSigner) -> None:
    sim = memory_sim(rsa_key)
    with trio.fail_after(TIMEOUT):
        async with memory_client(sim) as client:
            await client.logon(logon_fields(signer))
            await client.send(b"1", (112, b"a"))
            await client.expect(b"0")
            await client.send(b"1", (112, b"dup"), seq=2, extra_header=[(43, b"Y")])
            await client.send(b"1", (112, b"b"))
            assert (await client.expect(b"0")).get(112) == b"b"


async def test_wrong_comp_id_after_logon_logs_out(rsa_key: rsa.RSAPrivateKey,
                                                  signer: LogonSigner) -> None:
    sim = memory_sim(rsa_key)
    with trio.fail_after(TIMEOUT):
        async with memory_client(sim) as client:
            await client.logon(logon_fields(signer))
            client.target = "KalshiDC"
            await client.send(b"0")
            await client.expect_logout_and_close("CompID problem")


async def test_invalid_fix_logs_out_and_closes(rsa_key: rsa.RSAPrivateKey) -> None:
    sim = memory_sim(rsa_key)
    with trio.fail_after(TIMEOUT):
        async with memory_client(sim) as client:
            await client.send_raw(b"8=FIX.4.4\x019=5\x0135=0\x0110=000\x01")
            await client.expect_logout_and_close("invalid FIX message")


async def test_heartbeat_test_request_and_dead_peer(
        autojump_clock: trio.testing.MockClock, rsa_key: rsa.RSAPrivateKey,
        signer: LogonSigner) -> None:
    sim = memory_sim(rsa_key)
    with trio.fail_after(60):
        async with memory_client(sim) as client:
            start = trio.current_time()
            await client.logon(logon_fields(signer, heartbeat=b"4"))
            assert (await client.expect(b"0")).get(112) is None
            assert trio.current_time() - start == pytest.approx(4)
            test_request = await client.expect(b"1")
            assert trio.current_time() - start == pytest.approx(4.8)
            await client.send(b"0", (112, test_request.get(112)))
            await client.expect(b"0")
            assert trio.current_time() - start == pytest.approx(8.8)
            await client.expect(b"1")
            assert trio.current_time() - start == pytest.approx(9.6)
            await client.expect_logout_and_close("TestRequest went unanswered")
            assert trio.current_time() - start == pytest.approx(13.6)


async def test_no_logon_in_time_closes(autojump_clock: trio.testing.MockClock,
                                       rsa_key: rsa.RSAPrivateKey) -> None:
    sim = memory_sim(rsa_key)
    with trio.fail_after(60):
        async with memory_client(sim) as client:
            start = trio.current_time()
            assert await client.receive() is None
            assert trio.current_time() - start == pytest.approx(10)
    assert sim.closed[1] == "no Logon received in time"


# ----- faults -----------------------------------------------------------------------------


async def test_fault_drop_after_messages_closes_without_logout(
        certs: SimCertificates, rsa_key: rsa.RSAPrivateKey, signer: LogonSigner) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_sim(certs, {API_KEY: rsa_key.public_key()},
                               faults=SimFaults(drop_after_messages=2)) as (sim, addresses):
            async with tls_client(certs, addresses["KalshiNR"]) as client:
                await client.logon(logon_fields(signer))
                await client.send(b"1", (112, b"one"))
                assert (await client.expect(b"0")).get(112) == b"one"
                await client.send(b"1", (112, b"two"))
                assert await client.receive() is None
            assert await sim.wait_closed(1) == "fault: dropped after 2 messages"
            assert [e.msg_type for e in sim.events if e.direction == "out"] == [b"A", b"0"]


async def test_fault_silent_after_messages_keeps_reading(
        autojump_clock: trio.testing.MockClock, rsa_key: rsa.RSAPrivateKey,
        signer: LogonSigner) -> None:
    sim = memory_sim(rsa_key, faults=SimFaults(silent_after_messages=2))
    with trio.fail_after(120):
        async with memory_client(sim) as client:
            await client.logon(logon_fields(signer, heartbeat=b"4"))
            await client.send(b"1", (112, b"one"))
            assert (await client.expect(b"0")).get(112) == b"one"
            await client.send(b"1", (112, b"two"))
            # Keep the line alive from our side for a minute: the simulator reads everything
            # and sends nothing, not even heartbeats.
            with trio.move_on_after(60) as quiet:
                async with trio.open_nursery() as nursery:
                    async def heartbeats() -> None:
                        while True:
                            await trio.sleep(3)
                            await client.send(b"0")
                    nursery.start_soon(heartbeats)
                    message = await client.receive()
                    pytest.fail(f"the silent simulator sent {message}")
            assert quiet.cancelled_caught
            assert sim.message_count("0") >= 19
            assert sim.live_sessions == {API_KEY: "KalshiNR"}
    assert sim.message_count("0", "out") == 1
    assert sim.message_count("1", "out") == 0


async def test_fault_logout_after_messages(rsa_key: rsa.RSAPrivateKey,
                                           signer: LogonSigner) -> None:
    sim = memory_sim(rsa_key, faults=SimFaults(logout_after_messages=2))
    with trio.fail_after(TIMEOUT):
        async with memory_client(sim) as client:
            await client.logon(logon_fields(signer))
            await client.send(b"0")
            await client.send(b"1", (112, b"last"))
            assert (await client.expect(b"0")).get(112) == b"last"
            logout = await client.expect(b"5")
            assert logout.get(58) == b"sim: logout after 2 messages"
            await client.send(b"5")
            assert await client.receive() is None
    assert sim.closed[1] == "logged out at the simulator's request"


async def test_fault_logout_unanswered_closes(autojump_clock: trio.testing.MockClock,
                                              rsa_key: rsa.RSAPrivateKey,
                                              signer: LogonSigner) -> None:
    sim = memory_sim(rsa_key, faults=SimFaults(logout_after_messages=0))
    with trio.fail_after(60):
        async with memory_client(sim) as client:
            await client.logon(logon_fields(signer))
            assert (await client.expect(b"5")).get(58) == b"sim: logout after 0 messages"
            assert await client.receive() is None
    assert sim.closed[1] == "the peer did not answer our Logout"


# ----- configuration ----------------------------------------------------------------------


def test_config_and_faults_are_validated(rsa_key: rsa.RSAPrivateKey) -> None:
    keys = {API_KEY: rsa_key.public_key()}
    with pytest.raises(ConfigError, match="unknown endpoint 'Kalshi'"):
        SimConfig(keys=keys, ports={"Kalshi": 0})
    with pytest.raises(ConfigError, match="out of range"):
        SimConfig(keys=keys, ports={"KalshiNR": 70000})
    with pytest.raises(ConfigError, match="must be positive"):
        SimConfig(keys=keys, max_skew=0)
    with pytest.raises(ConfigError) as excinfo:
        SimFaults(drop_after_messages=-1)
    assert excinfo.value.key == "faults.drop_after_messages"
    with pytest.raises(ConfigError):
        SimFaults(refuse_logon_text="")


def test_load_sim_keys(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    public = tmp_path / "key.pub.pem"
    public.write_bytes(public_key_pem(rsa_key))
    keys = load_sim_keys([f"{API_KEY}={public}"])
    assert list(keys) == [API_KEY]
    assert keys[API_KEY].public_numbers() == rsa_key.public_key().public_numbers()
    for spec in (str(public), f"={public}", f"{API_KEY}="):
        with pytest.raises(ConfigError, match="APIKEY=path"):
            load_sim_keys([spec])
    with pytest.raises(ConfigError, match="given twice"):
        load_sim_keys([f"{API_KEY}={public}", f"{API_KEY}={public}"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    with pytest.raises(SigningError):
        load_sim_keys([f"{API_KEY}={garbage}"])


async def test_serve_reports_a_busy_port_as_config_error(
        certs: SimCertificates, rsa_key: rsa.RSAPrivateKey) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_sim(certs, {API_KEY: rsa_key.public_key()},
                               ports={"KalshiNR": 0}) as (_, addresses):
            busy = addresses["KalshiNR"][1]
            sim = SimGateway(SimConfig(keys={}, ports={"KalshiDC": 0, "KalshiNR": busy}),
                             certs.server_context())
            with pytest.raises(ConfigError) as excinfo:
                await sim.serve()
            assert excinfo.value.key == "ports.KalshiNR"


# ----- certificates -----------------------------------------------------------------------


def test_certificates_names_chain_and_pin(certs: SimCertificates) -> None:
    leaf = x509.load_pem_x509_certificate(certs.leaf_cert_pem)
    ca = x509.load_pem_x509_certificate(certs.ca_cert_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(certs.leaf_key_pem, password=None)
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert certs.leaf_pin == expected
    assert spki_pin(leaf.public_bytes(serialization.Encoding.DER)) == expected
    assert certs.ca_pin != expected
    with pytest.raises(ConfigError):
        spki_pin(b"-----BEGIN CERTIFICATE-----\nbm90\n-----END CERTIFICATE-----\n")


def test_certificate_validity_is_configurable() -> None:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2020, 2, 1, tzinfo=dt.UTC)
    made = generate_certificates("gateway.test", ip_addresses=(), not_before=start,
                                 not_after=end)
    leaf = x509.load_pem_x509_certificate(made.leaf_cert_pem)
    assert (leaf.not_valid_before_utc, leaf.not_valid_after_utc) == (start, end)
    ca = x509.load_pem_x509_certificate(made.ca_cert_pem)
    assert ca.not_valid_before_utc <= start and ca.not_valid_after_utc >= dt.datetime.now(dt.UTC)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gateway.test"]
    assert san.get_values_for_type(x509.IPAddress) == []
    with pytest.raises(ConfigError, match="empty"):
        generate_certificates(not_before=end, not_after=start)


def test_certificates_write_and_server_context(certs: SimCertificates, tmp_path: Path) -> None:
    files = certs.write(tmp_path / "certs")
    assert files.ca_cert.read_bytes() == certs.ca_cert_pem
    assert files.leaf_cert.read_bytes() == certs.leaf_cert_pem
    assert files.leaf_key.read_bytes() == certs.leaf_key_pem
    assert stat.S_IMODE(files.leaf_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o700
    files.leaf_key.chmod(0o644)
    certs.write(tmp_path / "certs")
    assert stat.S_IMODE(files.leaf_key.stat().st_mode) == 0o600
    context = certs.server_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
