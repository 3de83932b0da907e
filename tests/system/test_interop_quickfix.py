"""Interop: an unmodified QuickFIX 1.16 engine logs on and trades through fixproxy.

QuickFIX speaks plain TCP and signs nothing; fixproxy signs its Logon and carries it over pinned
TLS to the simulated Kalshi gateway, which checks every Logon rule Kalshi documents. QuickFIX
runs its own threads, so each test drives it from a worker thread (``trio.to_thread``) while
the trio thread serves the proxy and the simulator. Every wait in the worker is bounded by
STEP_TIMEOUT, so the thread always returns well inside the test's own deadline.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from prometheus_client import CollectorRegistry
from support.config import config_with, session_config
from support.quickfix_engine import (
    EngineSettings,
    QuickFixEngine,
    quickfix_log_on_failure,
)

from fixproxy.config.model import TLSPolicy
from fixproxy.fix import tags
from fixproxy.fix.codec import iter_fields
from fixproxy.kalshi import ENDPOINTS
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.server import BoundAddresses, serve_proxy
from fixproxy.signing import generate_key_pair, load_public_key, verify_signature
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.gateway import SimConfig, SimEvent, SimGateway

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("quickfix_available")]

TEST_TIMEOUT: Final = 60.0
STEP_TIMEOUT: Final = 10.0
"""Longest wait for any one QuickFIX event; three of them plus QuickFIX's own stop (at most
10 s) stay inside TEST_TIMEOUT, so a stuck engine fails the test instead of hanging it."""
ORDERS: Final = 5
SYMBOL: Final = "KXTEST-26JAN01-T1"


@dataclass(frozen=True, slots=True)
class Stack:
    """The simulated gateway and fixproxy in front of it, both running."""

    sim: SimGateway
    api_key: str
    public_key: RSAPublicKey
    proxies: dict[str, tuple[str, int]]
    """Endpoint (TargetCompID) -> the proxy's engine-facing (host, port)."""


@asynccontextmanager
async def running_stack(tmp_path: Path, endpoints: tuple[str, ...]) -> AsyncIterator[Stack]:
    """Run the simulator on ``endpoints`` and one fixproxy session per endpoint, one API key."""
    certs = generate_certificates("localhost")
    cert_files = certs.write(tmp_path / "certs")
    key_path, public_path = generate_key_pair(tmp_path / "keys")
    public_key = load_public_key(public_path)
    api_key = str(uuid.uuid4())
    sim = SimGateway(SimConfig(ports=dict.fromkeys(endpoints, 0), keys={api_key: public_key}),
                     certs.server_context())
    async with trio.open_nursery() as nursery:
        gateways: dict[str, tuple[str, int]] = await nursery.start(sim.serve)
        sessions = tuple(
            session_config(
                name=endpoint, endpoint=ENDPOINTS[endpoint], host=gateways[endpoint][0],
                port=gateways[endpoint][1], api_key=api_key, private_key=key_path,
                tls=TLSPolicy(server_name=certs.hostname, verify="ca+pin",
                              ca_file=cert_files.ca_cert, pins=(certs.leaf_pin,),
                              pinned_cert=None))
            for endpoint in endpoints)
        config = config_with(*sessions)
        bound: BoundAddresses = await nursery.start(
            serve_proxy, config, Metrics(CollectorRegistry()))
        yield Stack(sim, api_key, public_key, dict(bound.sessions))
        nursery.cancel_scope.cancel()


def engine_settings(stack: Stack, tmp_path: Path, *, target: str, listener: str,
                    reset_on_logon: bool) -> EngineSettings:
    """A QuickFIX initiator with TargetCompID ``target`` pointed at ``listener``'s proxy port."""
    host, port = stack.proxies[listener]
    return EngineSettings(
        sender_comp_id=stack.api_key, target_comp_id=target, host=host, port=port,
        workdir=tmp_path / "engine", reset_on_logon=reset_on_logon)


def logons_from(events: Iterable[SimEvent], api_key: str) -> list[SimEvent]:
    """The Logons the simulator received that claimed ``api_key``."""
    return [event for event in events
            if event.direction == "in" and event.msg_type == tags.MT_LOGON
            and event.api_key == api_key]


def trade_and_log_out(settings: EngineSettings) -> QuickFixEngine:
    """Blocking: log on, send the orders, wait for their reports, log out, stop.

    The engine is built here, off the trio thread: QuickFIX parses its data dictionaries
    (about a second) when the initiator is created.
    """
    with QuickFixEngine(settings) as engine:
        assert engine.wait_logged_on(STEP_TIMEOUT), "QuickFIX never reached onLogon"
        for n in range(ORDERS):
            engine.send_limit_order(f"ORD-{n}", symbol=SYMBOL, side_buy=n % 2 == 0,
                                    price=0.55, quantity=10 + n)
        assert engine.record.wait_until(
            lambda r: len(r.received_of(tags.MT_EXECUTION_REPORT)) >= ORDERS, STEP_TIMEOUT), \
            "QuickFIX did not receive every ExecutionReport"
        engine.logout("end of test")
        assert engine.wait_logged_out(STEP_TIMEOUT), "QuickFIX never reached onLogout"
    return engine


async def run_trading_session(stack: Stack, settings: EngineSettings
                              ) -> tuple[QuickFixEngine, dict[int, bytes]]:
    """Trade through the proxy and check what both ends saw.

    Returns the engine (stopped) and the fields of the Logon the simulator received.
    """
    engine = await trio.to_thread.run_sync(trade_and_log_out, settings)
    reports = engine.record.received_of(tags.MT_EXECUTION_REPORT)
    assert [report.get(11) for report in reports] == \
        [f"ORD-{n}".encode() for n in range(ORDERS)]

    # The engine's Logout reached the gateway (the sim answers it, so QuickFIX saw onLogout).
    await stack.sim.wait_for(lambda events: any(
        event.direction == "in" and event.msg_type == tags.MT_LOGOUT
        and event.api_key == stack.api_key for event in events))
    assert stack.sim.message_count(tags.MT_NEW_ORDER_SINGLE) == ORDERS

    # Exactly one Logon each way: no second Logon provoked by a 141=Y the engine did not ask for.
    assert engine.record.counts() == (1, 1)
    assert len(engine.record.sent_of(tags.MT_LOGON)) == 1
    assert len(engine.record.received_of(tags.MT_LOGON)) == 1
    assert len(logons_from(stack.sim.events, stack.api_key)) == 1

    signed = stack.sim.last_logon[stack.api_key]
    fields = dict(iter_fields(signed))
    payload = b"\x01".join(fields[tag] for tag in (52, 35, 34, 49, 56))
    assert fields[35] == tags.MT_LOGON
    assert verify_signature(stack.public_key, payload, fields[96])
    assert fields[1137] == b"9"
    assert fields[95] == b"%d" % len(fields[96])
    return engine, fields


@pytest.mark.parametrize("reset_on_logon", [True, False],
                         ids=["engine_resets", "proxy_forces_reset"])
async def test_quickfix_trades_on_kalshi_nr(tmp_path: Path, reset_on_logon: bool) -> None:
    """KalshiNR demands 141=Y: the engine that asks for it and the one fixproxy forces it for
    both log on exactly once, trade and log out."""
    with trio.fail_after(TEST_TIMEOUT), quickfix_log_on_failure(tmp_path):
        async with running_stack(tmp_path, ("KalshiNR",)) as stack:
            settings = engine_settings(stack, tmp_path, target="KalshiNR", listener="KalshiNR",
                                       reset_on_logon=reset_on_logon)
            engine, signed = await run_trading_session(stack, settings)

    assert signed[141] == b"Y"
    assert engine.record.sent_of(tags.MT_LOGON)[0].get(141) == \
        (b"Y" if reset_on_logon else None)
    answer = engine.record.received_of(tags.MT_LOGON)[0]
    # Forced on the engine's behalf, 141=Y must not come back, or QuickFIX would log on again.
    assert answer.get(141) == (b"Y" if reset_on_logon else None)


async def test_quickfix_without_reset_on_kalshi_rt(tmp_path: Path) -> None:
    """KalshiRT keeps sequence numbers: an engine that asks for no reset gets none."""
    with trio.fail_after(TEST_TIMEOUT), quickfix_log_on_failure(tmp_path):
        async with running_stack(tmp_path, ("KalshiNR", "KalshiRT")) as stack:
            settings = engine_settings(stack, tmp_path, target="KalshiRT", listener="KalshiRT",
                                       reset_on_logon=False)
            engine, signed = await run_trading_session(stack, settings)
            assert [e.endpoint for e in logons_from(stack.sim.events, stack.api_key)] == \
                ["KalshiRT"]

    assert engine.record.sent_of(tags.MT_LOGON)[0].get(141) is None
    assert signed.get(141, b"N") == b"N"
    assert signed[56] == b"KalshiRT"


def wait_for_refusal(settings: EngineSettings) -> QuickFixEngine:
    """Blocking: start the engine, wait for a Logout in answer to its Logon, stop."""
    with QuickFixEngine(settings) as engine:
        assert engine.record.wait_until(
            lambda r: bool(r.received_of(tags.MT_LOGOUT)), STEP_TIMEOUT), \
            "QuickFIX never received a Logout"
    return engine


async def test_quickfix_with_wrong_target_is_told_why(tmp_path: Path) -> None:
    """TargetCompID KalshiXX on the KalshiNR listener: refused by fixproxy, Kalshi never asked."""
    with trio.fail_after(TEST_TIMEOUT), quickfix_log_on_failure(tmp_path):
        async with running_stack(tmp_path, ("KalshiNR",)) as stack:
            settings = engine_settings(stack, tmp_path, target="KalshiXX", listener="KalshiNR",
                                       reset_on_logon=True)
            engine = await trio.to_thread.run_sync(wait_for_refusal, settings)

            assert engine.record.counts()[0] == 0, "QuickFIX reached onLogon"
            assert not engine.record.received_of(tags.MT_LOGON)
            logout = engine.record.received_of(tags.MT_LOGOUT)[0]
            assert logout.admin
            assert b"TargetCompID (56)" in (logout.get(58) or b"")
            assert stack.api_key not in stack.sim.last_logon
            assert not logons_from(stack.sim.events, stack.api_key)
            assert not stack.sim.events

    # Where the operator finds fixproxy's words (README): the session's messages log holds the
    # Logout with its Text; the event log only says a Logout came.
    stem = f"FIXT.1.1-{stack.api_key}-KalshiXX"
    messages = (settings.log_dir / f"{stem}.messages.current.log").read_text(encoding="ascii")
    assert "\x0135=5\x01" in messages and "\x0158=fixproxy: TargetCompID (56)" in messages
    events = (settings.log_dir / f"{stem}.event.current.log").read_text(encoding="ascii")
    assert "Received logout request" in events
