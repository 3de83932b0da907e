"""Interop: a QuickFIX engine that keeps its sequence numbers, on an endpoint that resets.

KalshiNR demands 141=Y on every Logon. QuickFIX with ``ResetOnLogon=N`` and a FileStore keeps
its numbers across connections, so its second Logon carries 34 > 1 and no 141=Y. fixproxy must
force the reset on the gateway leg (the simulator sees 34=1 and 141=Y, correctly signed) and
renumber every message both ways, taking the number the engine expects next from the state it
saved when the first connection ended. Either side noticing a sequence problem fails the test:
QuickFIX would log "MsgSeqNum too low/high" and ask for a resend, the simulator would log out.

QuickFIX runs its own threads, so each run is driven from a worker thread (``trio.to_thread``)
while the trio thread serves the proxy and the simulator. Every wait in the worker is bounded
by STEP_TIMEOUT, so the thread always returns well inside the test's own deadline.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
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
    Captured,
    EngineRecord,
    EngineSettings,
    QuickFixEngine,
    event_log_text,
    quickfix_log_on_failure,
    session_registered,
)

from fixproxy.config.model import ProxyConfig, SessionConfig, TLSPolicy
from fixproxy.fix import tags
from fixproxy.fix.codec import iter_fields
from fixproxy.kalshi import ENDPOINTS
from fixproxy.ops.metrics import Metrics
from fixproxy.ops.seqstore import SequenceStore, SessionSequences
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.server import BoundAddresses, serve_proxy
from fixproxy.signing import generate_key_pair, load_public_key, verify_signature
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.gateway import SimConfig, SimEvent, SimGateway

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("quickfix_available")]

TEST_TIMEOUT: Final = 60.0
STEP_TIMEOUT: Final = 10.0
"""Longest wait for any one QuickFIX event; two runs of three waits each plus QuickFIX's own
stops stay inside TEST_TIMEOUT, so a stuck engine fails the test instead of hanging it."""
ORDERS: Final = 3
SYMBOL: Final = "KXTEST-26JAN01-T1"
ENDPOINT: Final = "KalshiNR"
SEQUENCE_TROUBLE: Final = (
    "MsgSeqNum too low", "MsgSeqNum too high", "NextExpectedMsgSeqNum too high",
    "ResendRequest", "SequenceReset", "reseting sequence numbers",
)
"""What QuickFIX writes to its event log when the numbers it receives are not the ones it
expects, when it asks for (or is sent) a resend, or when a 141=Y makes it reset (QuickFIX
spells that one "reseting")."""


class ReleaseWatcher(SessionManager):
    """A session manager that lets the test wait until a connection has fully ended.

    Releasing the API key is the last thing a relay does, after it saved the session's
    sequence numbers; the next engine connection is only admitted once the key is free.
    """

    def __init__(self) -> None:
        super().__init__()
        self.releases = 0
        self._released = trio.Event()

    def release(self, api_key: str, conn_id: int) -> None:
        """Give the key back and wake :meth:`wait_releases`."""
        super().release(api_key, conn_id)
        self.releases += 1
        self._released.set()
        self._released = trio.Event()

    async def wait_releases(self, count: int) -> None:
        """Return once :meth:`release` has run ``count`` times."""
        while self.releases < count:
            await self._released.wait()


@dataclass(frozen=True, slots=True)
class Gateway:
    """The running simulator and what a proxy needs to reach it."""

    sim: SimGateway
    api_key: str
    public_key: RSAPublicKey
    session: SessionConfig
    state_dir: Path


@dataclass(frozen=True, slots=True)
class Proxy:
    """One running fixproxy process, as far as the test can tell."""

    address: tuple[str, int]
    manager: ReleaseWatcher


@asynccontextmanager
async def running_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """Run the simulator on KalshiNR with one registered API key."""
    certs = generate_certificates("localhost")
    cert_files = certs.write(tmp_path / "certs")
    key_path, public_path = generate_key_pair(tmp_path / "keys")
    public_key = load_public_key(public_path)
    api_key = str(uuid.uuid4())
    sim = SimGateway(SimConfig(ports={ENDPOINT: 0}, keys={api_key: public_key}),
                     certs.server_context())
    async with trio.open_nursery() as nursery:
        gateways: dict[str, tuple[str, int]] = await nursery.start(sim.serve)
        host, port = gateways[ENDPOINT]
        session = session_config(
            name=ENDPOINT, endpoint=ENDPOINTS[ENDPOINT], host=host, port=port, api_key=api_key,
            private_key=key_path,
            tls=TLSPolicy(server_name=certs.hostname, verify="ca+pin",
                          ca_file=cert_files.ca_cert, pins=(certs.leaf_pin,),
                          pinned_cert=None))
        yield Gateway(sim, api_key, public_key, session, tmp_path / "state")
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_proxy(gateway: Gateway) -> AsyncIterator[Proxy]:
    """Run fixproxy (fresh manager and metrics, as a new process would have) with the
    gateway's state directory; leaving the block stops it."""
    config = config_with(gateway.session, proxy=ProxyConfig(state_dir=gateway.state_dir))
    manager = ReleaseWatcher()
    async with trio.open_nursery() as nursery:
        bound: BoundAddresses = await nursery.start(functools.partial(
            serve_proxy, config, Metrics(CollectorRegistry()), manager=manager))
        yield Proxy(bound.sessions[ENDPOINT], manager)
        nursery.cancel_scope.cancel()


def engine_settings(gateway: Gateway, proxy: Proxy, tmp_path: Path) -> EngineSettings:
    """QuickFIX keeping its numbers (ResetOnLogon=N, FileStore under ``tmp_path``)."""
    host, port = proxy.address
    return EngineSettings(sender_comp_id=gateway.api_key, target_comp_id=ENDPOINT,
                          host=host, port=port, workdir=tmp_path / "engine",
                          reset_on_logon=False)


@dataclass(frozen=True, slots=True)
class EngineRun:
    """What one initiator saw during its one connection."""

    record: EngineRecord
    events: str
    """The part of QuickFIX's event log written during this run."""

    def sent_seqs(self) -> list[int]:
        """MsgSeqNum of every message QuickFIX sent, in order."""
        return [_seq(message) for message in self.record.sent]

    def received_seqs(self) -> list[int]:
        """MsgSeqNum of every message QuickFIX received, in order."""
        return [_seq(message) for message in self.record.received]


def _seq(message: Captured) -> int:
    value = message.get(tags.MSG_SEQ_NUM)
    assert value is not None, f"no MsgSeqNum in {message.raw!r}"
    return int(value)


def trade_once(settings: EngineSettings, prefix: str) -> EngineRun:
    """Blocking: a new initiator logs on, sends ORDERS orders, waits for their reports, logs
    out and stops. The initiator is gone when this returns, so the next one may take over
    the same session and FileStore."""
    assert not session_registered(settings), "an earlier initiator still owns the session"
    log_before = len(event_log_text(settings)) if settings.log_dir.exists() else 0
    with QuickFixEngine(settings) as engine:
        assert engine.wait_logged_on(STEP_TIMEOUT), "QuickFIX never reached onLogon"
        for n in range(ORDERS):
            engine.send_limit_order(f"{prefix}-{n}", symbol=SYMBOL, side_buy=n % 2 == 0,
                                    price=0.45, quantity=5 + n)
        assert engine.record.wait_until(
            lambda r: len(r.received_of(tags.MT_EXECUTION_REPORT)) >= ORDERS, STEP_TIMEOUT), \
            "QuickFIX did not receive every ExecutionReport"
        engine.logout("end of run")
        assert engine.wait_logged_out(STEP_TIMEOUT), "QuickFIX never reached onLogout"
    record = engine.record
    del engine
    return EngineRun(record, event_log_text(settings)[log_before:])


async def run_engine(gateway: Gateway, proxy: Proxy, tmp_path: Path, prefix: str,
                     releases: int) -> EngineRun:
    """One engine connection through ``proxy``, waited for until fixproxy has saved its state
    and released the key (its ``releases``-th release)."""
    settings = engine_settings(gateway, proxy, tmp_path)
    run = await trio.to_thread.run_sync(trade_once, settings, prefix)
    await proxy.manager.wait_releases(releases)
    return run


def connections(events: list[SimEvent]) -> list[int]:
    """The simulator's connection ids, in the order their Logons arrived."""
    return [event.conn_id for event in events
            if event.direction == "in" and event.msg_type == tags.MT_LOGON]


def seqs_of(events: list[SimEvent], conn_id: int, direction: str) -> list[int]:
    """MsgSeqNum of every message of one simulator connection in one direction."""
    return [int(dict(iter_fields(event.raw))[tags.MSG_SEQ_NUM]) for event in events
            if event.conn_id == conn_id and event.direction == direction]


def check_clean_run(run: EngineRun, prefix: str) -> None:
    """One Logon each way, every report for the run's orders, no sequence trouble."""
    assert run.record.counts() == (1, 1), "QuickFIX logged on more than once (or never)"
    assert len(run.record.sent_of(tags.MT_LOGON)) == 1
    assert len(run.record.received_of(tags.MT_LOGON)) == 1
    reports = run.record.received_of(tags.MT_EXECUTION_REPORT)
    assert [report.get(11) for report in reports] == \
        [f"{prefix}-{n}".encode() for n in range(ORDERS)]
    assert not run.record.received_of(tags.MT_REJECT)
    assert not run.record.received_of(tags.MT_RESEND_REQUEST)
    assert not run.record.sent_of(tags.MT_RESEND_REQUEST)
    assert not run.record.sent_of(tags.MT_SEQUENCE_RESET)
    for trouble in SEQUENCE_TROUBLE:
        assert trouble not in run.events, f"QuickFIX logged {trouble!r}:\n{run.events}"
    assert run.events.count("Initiated logon request") == 1, run.events
    assert run.events.count("Received logon") == 1, run.events
    # Every number QuickFIX received is the one it expected: no gap, no repeat.
    received = run.received_seqs()
    assert received == list(range(received[0], received[0] + len(received)))
    sent = run.sent_seqs()
    assert sent == list(range(sent[0], sent[0] + len(sent)))


def check_gateway_connection(gateway: Gateway, conn_id: int) -> None:
    """The simulator saw a reset Logon, signed, numbers from 1, and a clean Logout."""
    sim = gateway.sim
    events = list(sim.events)
    logon = next(event for event in events if event.conn_id == conn_id
                 and event.direction == "in" and event.msg_type == tags.MT_LOGON)
    fields = dict(iter_fields(logon.raw))
    assert fields[tags.MSG_SEQ_NUM] == b"1"
    assert fields[tags.RESET_SEQ_NUM_FLAG] == b"Y"
    payload = b"\x01".join(fields[tag] for tag in (52, 35, 34, 49, 56))
    assert verify_signature(gateway.public_key, payload, fields[96])

    received = seqs_of(events, conn_id, "in")
    sent = seqs_of(events, conn_id, "out")
    # Logon, the orders, Logout: restarting at 1 on each leg.
    assert received == list(range(1, ORDERS + 3))
    assert sent == list(range(1, ORDERS + 3))
    assert [event.msg_type for event in events if event.conn_id == conn_id
            and event.direction == "out"] == \
        [tags.MT_LOGON, *[tags.MT_EXECUTION_REPORT] * ORDERS, tags.MT_LOGOUT]
    # The simulator's Logout only answered the engine's; a sequence problem would carry a 58.
    answer = [event for event in events if event.conn_id == conn_id
              and event.direction == "out" and event.msg_type == tags.MT_LOGOUT]
    assert tags.TEXT not in dict(iter_fields(answer[0].raw))
    assert sim.closed[conn_id] == "peer logged out"


def saved_state(gateway: Gateway) -> SessionSequences | None:
    """What fixproxy saved for the session, read as a restarted fixproxy would."""
    return SequenceStore(gateway.state_dir).load(ENDPOINT, gateway.api_key, ENDPOINT)


@pytest.mark.parametrize("restart_proxy", [False, True], ids=["same_proxy", "proxy_restarted"])
async def test_engine_keeping_its_numbers_trades_twice_on_kalshi_nr(
        tmp_path: Path, restart_proxy: bool) -> None:
    """The second connection of an engine with ResetOnLogon=N logs on with 34 > 1 and trades
    without a sequence error on either side, also after fixproxy itself restarted."""
    with trio.fail_after(TEST_TIMEOUT), quickfix_log_on_failure(tmp_path):
        async with running_gateway(tmp_path) as gateway:
            async with running_proxy(gateway) as proxy:
                first = await run_engine(gateway, proxy, tmp_path, "FIRST", releases=1)
                if not restart_proxy:
                    second = await run_engine(gateway, proxy, tmp_path, "SECOND", releases=2)
            if restart_proxy:
                state_between = saved_state(gateway)
                async with running_proxy(gateway) as proxy:
                    second = await run_engine(gateway, proxy, tmp_path, "SECOND", releases=1)
            events = list(gateway.sim.events)
            conn_ids = connections(events)
            assert len(conn_ids) == 2, f"the simulator saw {len(conn_ids)} Logons"
            for conn_id in conn_ids:
                await gateway.sim.wait_closed(conn_id)
                check_gateway_connection(gateway, conn_id)

    # First connection: a fresh store, so 34=1 and nothing to translate.
    check_clean_run(first, "FIRST")
    first_logon = first.record.sent_of(tags.MT_LOGON)[0]
    assert first_logon.get(tags.MSG_SEQ_NUM) == b"1"
    assert first_logon.get(tags.RESET_SEQ_NUM_FLAG) is None
    assert first.received_seqs()[0] == 1

    # Second connection: the engine's numbers continue from the first run on both legs.
    check_clean_run(second, "SECOND")
    second_logon = second.record.sent_of(tags.MT_LOGON)[0]
    assert second_logon.get(tags.RESET_SEQ_NUM_FLAG) is None
    assert second.sent_seqs()[0] == first.sent_seqs()[-1] + 1 > 1
    assert second.received_seqs()[0] == first.received_seqs()[-1] + 1 > 1
    # fixproxy forced 141=Y upstream; it must not reach QuickFIX, which would reset.
    assert second.record.received_of(tags.MT_LOGON)[0].get(tags.RESET_SEQ_NUM_FLAG) is None

    # What fixproxy saved is the engine's own view after each connection.
    if restart_proxy:
        assert state_between == SessionSequences(
            api_key=gateway.api_key, endpoint=ENDPOINT,
            engine_next_out=first.sent_seqs()[-1] + 1,
            engine_next_in=first.received_seqs()[-1] + 1)
    assert saved_state(gateway) == SessionSequences(
        api_key=gateway.api_key, endpoint=ENDPOINT,
        engine_next_out=second.sent_seqs()[-1] + 1,
        engine_next_in=second.received_seqs()[-1] + 1)


def wait_for_refusal(settings: EngineSettings) -> EngineRun:
    """Blocking: a new initiator connects; wait for a Logout in answer to its Logon, stop."""
    assert not session_registered(settings), "an earlier initiator still owns the session"
    with QuickFixEngine(settings) as engine:
        assert engine.record.wait_until(
            lambda r: bool(r.received_of(tags.MT_LOGOUT)), STEP_TIMEOUT), \
            "QuickFIX never received a Logout"
    record = engine.record
    del engine
    return EngineRun(record, event_log_text(settings))


async def test_corrupt_sequence_state_refuses_the_engine_and_spares_the_proxy(
        tmp_path: Path) -> None:
    """A state file fixproxy cannot read must not be guessed around (the engine would get
    numbers it does not expect) nor take the whole proxy down: the engine is told which file
    to remove, and fixproxy keeps serving."""
    with trio.fail_after(TEST_TIMEOUT), quickfix_log_on_failure(tmp_path):
        async with running_gateway(tmp_path) as gateway, running_proxy(gateway) as proxy:
            await run_engine(gateway, proxy, tmp_path, "FIRST", releases=1)
            state_file = gateway.state_dir / f"{ENDPOINT}.json"
            assert state_file.exists()
            state_file.write_text("{not json")
            settings = engine_settings(gateway, proxy, tmp_path)
            refused = await trio.to_thread.run_sync(wait_for_refusal, settings)

            assert refused.record.counts()[0] == 0, "QuickFIX reached onLogon"
            logout = refused.record.received_of(tags.MT_LOGOUT)[0]
            assert str(state_file).encode() in (logout.get(tags.TEXT) or b"")
            # Still serving: a new connection is accepted, and closed when it sends nothing.
            async with await trio.open_tcp_stream(*proxy.address) as stream:
                await stream.send_eof()
                assert await stream.receive_some(1) == b""
