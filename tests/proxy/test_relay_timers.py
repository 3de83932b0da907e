"""The relay's timers and Logouts, on local socket pairs and the autojump clock.

The test plays both peers: a :class:`~fixproxy.sim.engine.ScriptedEngine` on one socket pair,
and the gateway, by hand, on another (frames read with the framer, answers built with the codec),
so every byte fixproxy writes is seen. Heartbeat intervals of 30 s and Logout waits of seconds
take no real time on the autojump clock; every test is bounded by ``trio.fail_after`` in virtual
time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry
from support.config import session_config
from support.relay import drive_in_trio, socket_stream_pair

from fixproxy.config.model import SessionConfig, TLSPolicy
from fixproxy.fix import tags
from fixproxy.fix.codec import FieldValue, FixMessage, encode, utc_timestamp
from fixproxy.fix.framer import FixFramer
from fixproxy.kalshi import ENDPOINTS
from fixproxy.net.tls import HandshakeInfo
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.admit import relay_engine_connection
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.runtime import SessionRuntime
from fixproxy.signing import LogonSigner
from fixproxy.sim.engine import ScriptedEngine

API_KEY: Final = "3c9e1f0a-7b2d-4e6f-8a1c-5d0b9e2f4a7c"
ENDPOINT: Final = "KalshiNR"
HEART_BT_INT: Final = 30
GRACE: Final = 5.0
LOGOUT_WAIT: Final = 2.0
LOGON_TIMEOUT: Final = 30.0
SILENCE: Final = 2 * HEART_BT_INT + GRACE
"""Seconds of silence after which a logged-on peer counts as gone: 65."""
BOUND: Final = 900.0
"""Virtual seconds any one test may take; the longest runs ten minutes of heartbeats."""
RECEIVE_SIZE: Final = 65536

HANDSHAKE: Final = HandshakeInfo(
    tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", handshake_seconds=0.02,
    connect_seconds=0.01, leaf_subject="CN=fix.elections.kalshi.com",
    leaf_not_after=datetime(2031, 1, 1, tzinfo=UTC), presented_pins=())


class GatewayPeer:
    """The gateway's end of the upstream memory stream, played by the test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.framer = FixFramer()
        self.next_seq = 1

    async def receive_raw(self) -> bytes | None:
        """The next frame fixproxy sent, exactly as it arrived; None at end of stream."""
        while True:
            frame = self.framer.next_message()
            if frame is not None:
                return frame.raw
            if self.framer.at_eof:
                return None
            self.framer.receive_data(await self.stream.receive_some(RECEIVE_SIZE))

    async def receive(self) -> FixMessage:
        raw = await self.receive_raw()
        assert raw is not None, "fixproxy closed the gateway connection"
        return FixMessage.parse(raw)

    async def send(self, msg_type: bytes,
                   fields: Sequence[tuple[int, FieldValue]] = ()) -> bytes:
        """Send a message with the gateway's header and next MsgSeqNum; returns its bytes."""
        raw = encode([
            (tags.MSG_TYPE, msg_type),
            (tags.SENDER_COMP_ID, ENDPOINT),
            (tags.TARGET_COMP_ID, API_KEY),
            (tags.MSG_SEQ_NUM, self.next_seq),
            (tags.SENDING_TIME, utc_timestamp()),
            *fields,
        ])
        self.next_seq += 1
        await self.stream.send_all(raw)
        return raw


@dataclass(slots=True)
class Harness:
    engine: ScriptedEngine
    gateway: GatewayPeer
    started: float
    """Virtual time the relay was started."""
    relay_done: trio.Event
    connects: list[float]
    """Virtual times the relay opened the upstream."""


def make_config(**overrides: Any) -> SessionConfig:
    return session_config(**({
        "name": "timers", "endpoint": ENDPOINTS[ENDPOINT], "host": "fix.elections.kalshi.com",
        "port": ENDPOINTS[ENDPOINT].port, "api_key": API_KEY,
        "private_key": Path("unused-private-key.pem"),
        "tls": TLSPolicy(server_name="fix.elections.kalshi.com", verify="ca", ca_file=None,
                         pins=(), pinned_cert=None),
        "logon_timeout": LOGON_TIMEOUT, "liveness_grace": GRACE, "logout_wait": LOGOUT_WAIT,
    } | overrides))


def start_relay(nursery: trio.Nursery, key: rsa.RSAPrivateKey, **overrides: object) -> Harness:
    """Run one relay in ``nursery`` between a scripted engine and a hand-played gateway."""
    proxy_engine_end, engine_end = socket_stream_pair()
    proxy_gateway_end, gateway_end = socket_stream_pair()
    connects: list[float] = []

    async def connect() -> tuple[trio.abc.Stream, HandshakeInfo]:
        connects.append(trio.current_time())
        return proxy_gateway_end, HANDSHAKE

    config = make_config(**overrides)
    runtime = SessionRuntime(config=config, policy=config.logon_policy(),
                             sign=LogonSigner(key), connect=connect,
                             metrics=Metrics(CollectorRegistry()), manager=SessionManager(),
                             run_relay=drive_in_trio)
    done = trio.Event()

    async def run() -> None:
        await relay_engine_connection(proxy_engine_end, runtime)
        done.set()

    nursery.start_soon(run)
    return Harness(engine=ScriptedEngine(engine_end, sender=API_KEY, target=ENDPOINT),
                   gateway=GatewayPeer(gateway_end), started=trio.current_time(),
                   relay_done=done, connects=connects)


async def send_logon(h: Harness) -> FixMessage:
    """The engine sends its Logon; returns the signed Logon as the gateway received it."""
    await h.engine.send(tags.MT_LOGON, [(tags.ENCRYPT_METHOD, 0),
                                        (tags.HEART_BT_INT, HEART_BT_INT),
                                        (tags.DEFAULT_APPL_VER_ID, 9)])
    logon = await h.gateway.receive()
    assert logon.msg_type == tags.MT_LOGON
    assert logon.get(tags.MSG_SEQ_NUM) == b"1"
    assert logon.get(tags.RAW_DATA) is not None
    assert len(h.connects) == 1
    return logon


async def answer_logon(h: Harness) -> None:
    """The gateway accepts the Logon (its 34=1); the engine receives the answer."""
    await h.gateway.send(tags.MT_LOGON, [(tags.ENCRYPT_METHOD, 0),
                                         (tags.HEART_BT_INT, HEART_BT_INT),
                                         (tags.RESET_SEQ_NUM_FLAG, b"Y"),
                                         (tags.DEFAULT_APPL_VER_ID, 9)])
    answer = await h.engine.receive()
    assert answer is not None
    assert answer.msg_type == tags.MT_LOGON


async def log_on(h: Harness) -> None:
    """The whole Logon exchange: engine Logon, gateway's Logon answer, relayed to the engine."""
    await send_logon(h)
    await answer_logon(h)


def elapsed(h: Harness) -> float:
    return trio.current_time() - h.started


def text_of(message: FixMessage) -> str:
    return (message.get_str(tags.TEXT) or "").lower()


async def expect_logout(engine: ScriptedEngine) -> FixMessage:
    message = await engine.receive()
    assert message is not None, "the engine saw the close without a Logout first"
    assert message.msg_type == tags.MT_LOGOUT, message
    return message


async def test_gateway_silent_after_logon(autojump_clock: trio.testing.MockClock,
                                          rsa_key: rsa.RSAPrivateKey) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            h = start_relay(nursery, rsa_key)
            await send_logon(h)
            # A slow but timely answer: the silence is counted from it, not from the Logon.
            await trio.sleep(10)
            await answer_logon(h)
            answered = trio.current_time()
            # The engine stays lively, so only the gateway's silence can end the session.
            for _ in range(2):
                await trio.sleep(HEART_BT_INT)
                await h.engine.send(tags.MT_HEARTBEAT)

            logout = await expect_logout(h.engine)
            assert SILENCE - 1 <= trio.current_time() - answered <= SILENCE + 2
            # Numbered after the gateway's last message, its Logon answer (34=1).
            assert logout.get(tags.MSG_SEQ_NUM) == b"2"
            assert logout.get(tags.SENDER_COMP_ID) == ENDPOINT.encode()
            assert logout.get(tags.TARGET_COMP_ID) == API_KEY.encode()
            assert "gateway sent nothing" in text_of(logout)
            assert await h.engine.receive() is None

            # Upstream: the engine's two heartbeats, then fixproxy's Logout numbered after them.
            for seq in (b"2", b"3"):
                relayed = await h.gateway.receive()
                assert (relayed.msg_type, relayed.get(tags.MSG_SEQ_NUM)) \
                    == (tags.MT_HEARTBEAT, seq)
            upstream = await h.gateway.receive()
            assert upstream.msg_type == tags.MT_LOGOUT
            assert upstream.get(tags.MSG_SEQ_NUM) == b"4"
            assert upstream.get(tags.SENDER_COMP_ID) == API_KEY.encode()
            assert upstream.get(tags.TARGET_COMP_ID) == ENDPOINT.encode()
            assert await h.gateway.receive_raw() is None
            await h.relay_done.wait()
            assert SILENCE - 1 <= trio.current_time() - answered <= SILENCE + 2


async def test_engine_silent_is_logged_out_upstream(autojump_clock: trio.testing.MockClock,
                                                    rsa_key: rsa.RSAPrivateKey) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            h = start_relay(nursery, rsa_key)
            await log_on(h)
            # The gateway heartbeats on time; the engine never sends again.
            for _ in range(2):
                await trio.sleep(HEART_BT_INT)
                await h.gateway.send(tags.MT_HEARTBEAT)

            logout = await h.gateway.receive()
            assert logout.msg_type == tags.MT_LOGOUT
            assert SILENCE - 1 <= elapsed(h) <= SILENCE + 2
            assert logout.get(tags.MSG_SEQ_NUM) == b"2"  # after the engine's Logon, 34=1
            assert "engine" in text_of(logout)
            assert not h.relay_done.is_set()
            # The engine wakes up too late: its 34=2 would collide with fixproxy's Logout, so
            # nothing more is read from it.
            await h.engine.send(tags.MT_HEARTBEAT)
            await trio.sleep(1)
            await h.gateway.send(tags.MT_LOGOUT)  # 34=4, after the Logon and two heartbeats

            for _ in range(2):
                heartbeat = await h.engine.receive()
                assert heartbeat is not None
                assert heartbeat.msg_type == tags.MT_HEARTBEAT
            # The gateway's Logout answered fixproxy's, so the engine gets fixproxy's own,
            # numbered after everything the gateway sent, with a Text that says why.
            to_engine = await expect_logout(h.engine)
            assert to_engine.get(tags.MSG_SEQ_NUM) == b"5"
            assert text_of(to_engine).startswith("fixproxy: ")
            assert "engine sent nothing" in text_of(to_engine)
            assert await h.engine.receive() is None
            assert await h.gateway.receive_raw() is None
            await h.relay_done.wait()
            assert SILENCE <= elapsed(h) <= SILENCE + 3


async def test_gateway_never_answers_the_logon(autojump_clock: trio.testing.MockClock,
                                               rsa_key: rsa.RSAPrivateKey) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            h = start_relay(nursery, rsa_key)
            await send_logon(h)
            logout = await expect_logout(h.engine)
            assert LOGON_TIMEOUT - 1 <= elapsed(h) <= LOGON_TIMEOUT + 2
            assert logout.get(tags.MSG_SEQ_NUM) == b"1"
            assert "logon" in text_of(logout)
            assert await h.engine.receive() is None
            # The gateway never logged the session on, so it gets no Logout, only the close.
            assert await h.gateway.receive_raw() is None
            await h.relay_done.wait()


async def engine_hangs_up(h: Harness) -> None:
    """Log on, let the engine send one message (34=2), then close its stream."""
    await log_on(h)
    await h.engine.send(tags.MT_HEARTBEAT)
    await h.engine.aclose()
    relayed = await h.gateway.receive()
    assert (relayed.msg_type, relayed.get(tags.MSG_SEQ_NUM)) == (tags.MT_HEARTBEAT, b"2")


@pytest.mark.parametrize("gateway_answers", [True, False])
async def test_engine_disconnect_logs_out_upstream(autojump_clock: trio.testing.MockClock,
                                                   rsa_key: rsa.RSAPrivateKey,
                                                   gateway_answers: bool) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            h = start_relay(nursery, rsa_key)
            await engine_hangs_up(h)
            logout = await h.gateway.receive()
            assert logout.msg_type == tags.MT_LOGOUT
            assert logout.get(tags.MSG_SEQ_NUM) == b"3"
            assert "engine" in text_of(logout)
            assert elapsed(h) < 1
            if gateway_answers:
                await h.gateway.send(tags.MT_LOGOUT)
                await h.relay_done.wait()
                assert elapsed(h) < 1
            else:
                await h.relay_done.wait()
                assert LOGOUT_WAIT - 0.5 <= elapsed(h) <= LOGOUT_WAIT + 1
            assert await h.gateway.receive_raw() is None


async def test_engine_disconnect_without_logout_configured(
        autojump_clock: trio.testing.MockClock, rsa_key: rsa.RSAPrivateKey) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            h = start_relay(nursery, rsa_key, logout_on_engine_disconnect=False)
            await engine_hangs_up(h)
            # The upstream connection is just closed: no Logout follows the last message.
            assert await h.gateway.receive_raw() is None
            await h.relay_done.wait()
            assert elapsed(h) < 1


async def test_engine_logout_and_answer_pass_byte_for_byte(
        autojump_clock: trio.testing.MockClock, rsa_key: rsa.RSAPrivateKey) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            h = start_relay(nursery, rsa_key)
            await log_on(h)
            sent = await h.engine.send(tags.MT_LOGOUT, [(tags.TEXT, "end of day")])
            assert await h.gateway.receive_raw() == sent
            answer = await h.gateway.send(tags.MT_LOGOUT, [(tags.TEXT, "bye")])
            await expect_logout(h.engine)
            assert h.engine.transcript[-1] == ("received", answer)
            assert await h.engine.receive() is None
            assert await h.gateway.receive_raw() is None
            await h.relay_done.wait()
            assert elapsed(h) < 1


async def test_activity_keeps_the_session_alive(autojump_clock: trio.testing.MockClock,
                                                rsa_key: rsa.RSAPrivateKey) -> None:
    minutes = 10
    beats = minutes * 60 // HEART_BT_INT
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            h = start_relay(nursery, rsa_key)
            await log_on(h)
            for _ in range(beats):
                await trio.sleep(HEART_BT_INT)
                await h.engine.send(tags.MT_HEARTBEAT)
                await h.gateway.send(tags.MT_HEARTBEAT)
            assert minutes * 60 <= elapsed(h) < minutes * 60 + 1
            assert not h.relay_done.is_set()
            # Each side got exactly the other's heartbeats, in order, and no Logout.
            for seq in range(2, beats + 2):
                to_engine = await h.engine.receive()
                assert to_engine is not None
                assert (to_engine.msg_type, to_engine.get(tags.MSG_SEQ_NUM)) \
                    == (tags.MT_HEARTBEAT, b"%d" % seq)
                to_gateway = await h.gateway.receive()
                assert (to_gateway.msg_type, to_gateway.get(tags.MSG_SEQ_NUM)) \
                    == (tags.MT_HEARTBEAT, b"%d" % seq)
            # Still logged on: a clean Logout exchange ends it.
            sent = await h.engine.send(tags.MT_LOGOUT)
            assert await h.gateway.receive_raw() == sent
            await h.gateway.send(tags.MT_LOGOUT)
            await expect_logout(h.engine)
            assert await h.engine.receive() is None
            await h.relay_done.wait()


async def test_engine_logout_before_the_logon_answer(autojump_clock: trio.testing.MockClock,
                                                     rsa_key: rsa.RSAPrivateKey) -> None:
    # An engine may give up on a slow Logon answer and log out. Whether fixproxy answers it
    # itself or passes it on, the connection must end cleanly, well before the Logon timeout,
    # and the relay must return rather than fail (a peer cannot crash it).
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            h = start_relay(nursery, rsa_key)
            await send_logon(h)
            await trio.sleep(10)
            await h.engine.send(tags.MT_LOGOUT)
            message = await h.engine.receive()
            if message is not None:
                assert message.msg_type == tags.MT_LOGOUT
                assert await h.engine.receive() is None
            await h.relay_done.wait()
            assert elapsed(h) < LOGON_TIMEOUT
