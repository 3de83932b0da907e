"""Admission on its own (relay_engine_connection), with a gateway it must never reach: the
local refusal (a Logout whose Text (58) says why, then write, half-close, drain, close) and
the connection that ends in fixproxy itself.

The refusal's close is checked where it matters, on loopback TCP: a socket closed with unread
input sends a reset, which can destroy the Logout before the engine reads it; the engine must
see the Logout, then a clean end of stream, while it may still write. Its timing (how long the
drain waits for a silent engine) runs over memory streams under the autojump clock. The
session relay is in test_relay.py; whole sessions in test_relay_timers.py and the fault
matrices.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry
from support.config import API_KEY, LOOPBACK, session_config

from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.fix.framer import FixFramer
from fixproxy.net.tls import HandshakeInfo
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.admit import DRAIN_TIMEOUT, RECEIVE_SIZE, held_text, relay_engine_connection
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.runtime import SessionRuntime
from fixproxy.signing import LogonSigner
from fixproxy.sim.engine import ScriptedEngine

SESSION: Final = "relay"
GUARD: Final = 10.0
"""Seconds (wall or virtual) any one test may take."""
WRONG_TARGET: Final = "KalshiXX"
LOGON_FIELDS: Final = ((tags.ENCRYPT_METHOD, 0), (tags.HEART_BT_INT, 30),
                       (tags.DEFAULT_APPL_VER_ID, 9))


class GatewayNotExpected(Exception):
    """Raised by the connect callable of a test whose gateway must stay untouched."""


@dataclass(slots=True)
class Relay:
    """One relay_engine_connection running in a nursery, and what it was given."""

    runtime: SessionRuntime
    done: trio.Event = field(default_factory=trio.Event)
    connects: int = 0

    def sample(self, name: str, **labels: str) -> float | None:
        return self.runtime.metrics.registry.get_sample_value(
            name, {"session": SESSION, **labels})


def start_relay(nursery: trio.Nursery, engine_end: trio.abc.Stream, key: rsa.RSAPrivateKey,
                connect_error: Exception | None = None) -> Relay:
    """Relay ``engine_end``; opening the gateway raises ``connect_error`` (default: the test
    fails if the relay tries)."""
    config = session_config(name=SESSION)

    async def connect() -> tuple[trio.abc.Stream, HandshakeInfo]:
        relay.connects += 1
        raise connect_error if connect_error is not None else GatewayNotExpected

    relay = Relay(SessionRuntime(config=config, policy=config.logon_policy(),
                                 sign=LogonSigner(key), connect=connect,
                                 metrics=Metrics(CollectorRegistry()), manager=SessionManager()))

    async def run() -> None:
        await relay_engine_connection(engine_end, relay.runtime)
        relay.done.set()

    nursery.start_soon(run)
    return relay


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """(engine, fixproxy's end) of a loopback TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    async with listeners[0]:
        engine = await trio.open_tcp_stream(*listeners[0].socket.getsockname()[:2])
        accepted = await listeners[0].accept()
    async with engine, accepted:
        yield engine, accepted


async def read_to_end(stream: trio.abc.ReceiveStream) -> list[FixMessage]:
    """Every message until a clean end of stream; a reset fails the test."""
    framer = FixFramer()
    messages: list[FixMessage] = []
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)  # BrokenResourceError on a reset
        framer.receive_data(data)
        while (frame := framer.next_message()) is not None:
            messages.append(FixMessage.parse(frame.raw))
        if not data:
            return messages


def assert_refusal(logout: FixMessage, *, sender: str, target: str, text: str) -> None:
    """A Logout from fixproxy: numbered 1, CompIDs mirrored from the engine's Logon."""
    assert logout.msg_type == tags.MT_LOGOUT
    assert logout.get(tags.MSG_SEQ_NUM) == b"1"
    assert (logout.get(tags.SENDER_COMP_ID), logout.get(tags.TARGET_COMP_ID)) \
        == (sender.encode(), target.encode())
    assert (logout.get_str(tags.TEXT) or "").startswith(f"fixproxy: {text}")


async def test_a_refused_logon_gets_a_logout_with_58_then_a_clean_close(
        rsa_key: rsa.RSAPrivateKey) -> None:
    with trio.fail_after(GUARD):
        async with tcp_pair() as (engine_stream, accepted), trio.open_nursery() as nursery:
            relay = start_relay(nursery, accepted, rsa_key)
            engine = ScriptedEngine(engine_stream, sender=API_KEY, target=WRONG_TARGET)
            await engine.send(tags.MT_LOGON, LOGON_FIELDS)
            [logout] = await read_to_end(engine_stream)
            assert_refusal(logout, sender=WRONG_TARGET, target=API_KEY,
                           text=f"TargetCompID (56) is {WRONG_TARGET!r}; expected 'KalshiNR' "
                                f"for session {SESSION!r}")
            # Half-closed, not closed: fixproxy still reads (and discards) what the engine
            # sends, so its close cannot turn into a reset.
            await engine.send(tags.MT_HEARTBEAT)
            await trio.testing.wait_all_tasks_blocked()
            assert not relay.done.is_set()
            await engine_stream.aclose()
            await relay.done.wait()
    assert relay.connects == 0
    assert relay.sample("fixproxy_engine_connections_total", result="invalid_logon") == 1
    assert relay.sample("fixproxy_logons_total", result="refused_locally") == 1


@pytest.mark.parametrize("engine_closes", [True, False])
async def test_the_drain_after_a_refusal_is_bounded(autojump_clock: trio.testing.MockClock,
                                                    rsa_key: rsa.RSAPrivateKey,
                                                    engine_closes: bool) -> None:
    with trio.fail_after(GUARD):
        engine_end, proxy_end = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            relay = start_relay(nursery, proxy_end, rsa_key)
            engine = ScriptedEngine(engine_end, sender=API_KEY, target=WRONG_TARGET)
            await engine.send(tags.MT_LOGON, LOGON_FIELDS)
            [logout] = await read_to_end(engine_end)
            assert logout.msg_type == tags.MT_LOGOUT
            refused = trio.current_time()
            if engine_closes:
                await engine_end.aclose()
            await relay.done.wait()
            waited = trio.current_time() - refused
    # An engine that closes is let go at once; a silent one after DRAIN_TIMEOUT.
    assert waited == (0 if engine_closes else pytest.approx(DRAIN_TIMEOUT))
    if not engine_closes:
        with pytest.raises(trio.BrokenResourceError):
            await engine_end.send_all(b"too late")


async def test_an_engine_that_closes_before_its_logon_is_just_closed(
        autojump_clock: trio.testing.MockClock, rsa_key: rsa.RSAPrivateKey) -> None:
    with trio.fail_after(GUARD):
        engine_end, proxy_end = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            relay = start_relay(nursery, proxy_end, rsa_key)
            await engine_end.send_eof()
            assert await read_to_end(engine_end) == []
            await relay.done.wait()
    assert relay.connects == 0
    assert relay.sample("fixproxy_engine_connections_total", result="no_logon") == 1


async def test_a_fault_in_fixproxy_ends_only_this_connection(
        autojump_clock: trio.testing.MockClock, rsa_key: rsa.RSAPrivateKey,
        caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(GUARD):
        engine_end, proxy_end = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            relay = start_relay(nursery, proxy_end, rsa_key,
                                connect_error=RuntimeError("a bug in fixproxy"))
            engine = ScriptedEngine(engine_end, sender=API_KEY, target="KalshiNR")
            # The relay returns instead of raising: the nursery (the listener's, in the
            # server) and every other connection in it carry on.
            assert await engine.logon() is None
            await relay.done.wait()
    assert relay.connects == 1
    [record] = [r for r in caplog.records if r.name == "fixproxy.relay"
                and r.levelno == logging.ERROR]
    assert re.fullmatch(rf"\[{SESSION} #\d+\] internal error; this connection is closed, "
                        rf"others carry on", record.getMessage())
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


async def test_a_fault_while_opening_the_gateway_gives_the_key_back(
        rsa_key: rsa.RSAPrivateKey) -> None:
    """An error of fixproxy's own between the key claim and the session (here the connector
    raising what no gateway problem raises) ends that connection only, and the key is free
    again for the engine's next attempt."""
    with trio.fail_after(GUARD):
        async with tcp_pair() as (engine_stream, accepted), trio.open_nursery() as nursery:
            relay = start_relay(nursery, accepted, rsa_key,
                                connect_error=RuntimeError("a bug in the connector"))
            engine = ScriptedEngine(engine_stream, sender=API_KEY, target="KalshiNR")
            await engine.send(tags.MT_LOGON, LOGON_FIELDS)
            await relay.done.wait()
    assert relay.connects == 1
    assert relay.runtime.manager.claim(API_KEY, "again", 99) is None


@pytest.mark.parametrize(("wait", "now", "seconds", "when"), [
    # Under a second left: never "0 s more", and the time given is not already past.
    (0.3, datetime(2026, 12, 4, 20, 39, 47, 800_000, tzinfo=UTC), 1, "20:39:49"),
    (0.3, datetime(2026, 12, 4, 20, 39, 47, 500_000, tzinfo=UTC), 1, "20:39:48"),
    (2.0, datetime(2026, 12, 4, 20, 39, 47, tzinfo=UTC), 2, "20:39:49"),
    (59.2, datetime(2026, 12, 4, 23, 59, 30, tzinfo=UTC), 60, "00:00:30"),
])
def test_a_held_logon_is_told_whole_seconds_rounded_up(wait: float, now: datetime,
                                                       seconds: int, when: str) -> None:
    text = held_text(wait, now)
    assert f"holds new attempts for {seconds} s more; retry after {when} UTC" in text
