"""Interop: QuickFIX on KalshiNR through fixproxy gets the fills it missed while away.

An unmodified QuickFIX 1.16 engine (FileStore, ResetOnLogon=Y) rests orders; the simulated
gateway drops the NR connection (or fixproxy is killed and started again) and fills the orders
while the engine is away; QuickFIX reconnects by itself and must receive every missed fill
exactly once, with 97=Y, in ExecID order, before live traffic, without a sequence error. Also:
two listeners sharing one API key, a QuickFIX engine on each.

QuickFIX runs in a worker thread (``trio.to_thread``) while the trio thread serves fixproxy
and the simulator; the two meet at a trio event (orders acknowledged) and a threading event
(the disconnection is done). Every wait in the worker is bounded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import pytest
import trio
from support.e2e import E2EMaterial
from support.quickfix_engine import (
    Captured,
    EngineRecord,
    EngineSettings,
    QuickFixEngine,
    event_log_text,
    quickfix_log_on_failure,
)
from support.recovery_stack import (
    RecoveryKeys,
    RecoveryProxy,
    dead_port,
    make_drop_copy_keys,
    open_recovery_sim,
    run_recovery_proxy,
)

from fixproxy.fix import tags
from fixproxy.ops.recoverystore import RecoveryStore
from fixproxy.session.recovery import RECOVERY_WINDOW_S, RecoveryState, parse_exec_id

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("quickfix_available")]

TEST_TIMEOUT: Final = 90.0
STEP_TIMEOUT: Final = 15.0
ORDERS: Final = 3
SYMBOLS: Final = ("KXA-26JAN01", "KXB-26JAN01", "KXC-26JAN01")
FILL_AFTER: Final = 2.0
"""The simulator fills each order this long after it arrives..."""
RECONNECT: Final = 6
"""...while QuickFIX waits this long before reconnecting: the fills fall in between."""


@pytest.fixture(name="dc_keys", scope="module")
def dc_keys_fixture(tmp_path_factory: pytest.TempPathFactory) -> RecoveryKeys:
    return make_drop_copy_keys(tmp_path_factory.mktemp("dc-keys"))


def reports(record: EngineRecord) -> list[Captured]:
    return record.received_of(tags.MT_EXECUTION_REPORT)


def rest_then_log_on_again(settings: EngineSettings, acked: Callable[[], None],
                           resume: threading.Event, recovered: int = ORDERS) -> EngineRecord:
    """Blocking: log on, rest ORDERS orders, let the test disconnect us, wait for QuickFIX's
    own reconnection and the ``recovered`` fills, send one live order, log out."""
    with QuickFixEngine(settings) as engine:
        assert engine.wait_logged_on(STEP_TIMEOUT), "QuickFIX never reached onLogon"
        for n, symbol in enumerate(SYMBOLS):
            engine.send_limit_order(f"REST-{n}", symbol=symbol, side_buy=True, price=0.40,
                                    quantity=5 + n)
        assert engine.record.wait_until(lambda r: len(reports(r)) >= ORDERS, STEP_TIMEOUT), \
            "QuickFIX did not receive the acknowledgements"
        acked()
        assert resume.wait(STEP_TIMEOUT), "the test did not disconnect the engine"
        assert engine.record.wait_until(lambda r: r.logons >= 2, STEP_TIMEOUT + RECONNECT), \
            "QuickFIX did not log on again"
        assert engine.record.wait_until(lambda r: len(reports(r)) >= ORDERS + recovered,
                                        STEP_TIMEOUT), "the missed fills did not arrive"
        engine.send_limit_order("LIVE-1", symbol=SYMBOLS[0], side_buy=False, price=0.60,
                                quantity=1)
        assert engine.record.wait_until(lambda r: len(reports(r)) >= ORDERS + recovered + 1,
                                        STEP_TIMEOUT), "the live order was not answered"
        engine.logout("end of test")
        assert engine.wait_logged_out(STEP_TIMEOUT), "QuickFIX never reached onLogout"
    return engine.record


class RunningProxy:
    """fixproxy in a task of its own, so that it can be killed (cancelled) and started again
    while the engine's thread carries on."""

    def __init__(self, proxy: RecoveryProxy, nursery: trio.Nursery) -> None:
        self.proxy = proxy
        self.nursery = nursery
        self.stop = trio.Event()
        self.stopped = trio.Event()

    async def start(self) -> None:
        self.stop, self.stopped = trio.Event(), trio.Event()
        await self.nursery.start(self._run)

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
        try:
            async with run_recovery_proxy(self.proxy):
                task_status.started()
                await self.stop.wait()
        finally:
            self.stopped.set()

    async def kill(self) -> None:
        self.stop.set()
        await self.stopped.wait()


async def run_scenario(proxy: RecoveryProxy, settings: EngineSettings,
                       disconnect: Callable[[RunningProxy], Awaitable[None]],
                       recovered: int = ORDERS) -> EngineRecord:
    """Run QuickFIX through ``proxy``; once its orders are acknowledged, ``disconnect``."""
    acked = trio.Event()
    resume = threading.Event()
    records: list[EngineRecord] = []
    engine_done = trio.Event()
    async with trio.open_nursery() as nursery:
        running = RunningProxy(proxy, nursery)
        await running.start()

        async def engine() -> None:
            try:
                records.append(await trio.to_thread.run_sync(
                    rest_then_log_on_again, settings,
                    lambda: trio.from_thread.run_sync(acked.set), resume, recovered))
            finally:
                acked.set()
                engine_done.set()

        nursery.start_soon(engine)
        try:
            await acked.wait()
            if records:
                raise AssertionError("QuickFIX ended before its orders were acknowledged")
            await disconnect(running)
        finally:
            resume.set()
        await engine_done.wait()
        await running.kill()
    return records[0]


def check_recovered(record: EngineRecord, settings: EngineSettings) -> None:
    """Every missed fill once, 97=Y, ExecID order, before the live report, no gap."""
    received = reports(record)
    acks, fills, live = received[:ORDERS], received[ORDERS:2 * ORDERS], received[2 * ORDERS:]
    assert [ack.get(150) for ack in acks] == [b"0"] * ORDERS
    assert all(ack.get(97) is None for ack in acks)
    assert sorted(fill.get(11) or b"" for fill in fills) == \
        sorted(f"REST-{n}".encode() for n in range(ORDERS))
    assert all(fill.get(150) == b"F" and fill.get(97) == b"Y" for fill in fills)
    exec_ids = [parse_exec_id(fill.get(17)) for fill in fills]
    keys = [(e.clock, e.event, e.index) for e in exec_ids if e is not None]
    assert len(keys) == ORDERS and keys == sorted(keys)
    assert [report.get(11) for report in live] == [b"LIVE-1"]
    assert live[0].get(97) is None
    # No sequence trouble: nothing asked to be resent, nothing rejected, and the second
    # connection's numbers run on from its Logon answer without a gap.
    assert not record.sent_of(tags.MT_RESEND_REQUEST)
    assert not record.sent_of(tags.MT_REJECT)
    assert not record.received_of(tags.MT_SEQUENCE_RESET)
    logons = record.received_of(tags.MT_LOGON)
    assert len(logons) == 2
    after = record.received[record.received.index(logons[1]):]
    numbers = [int(message.get(34) or 0) for message in after]
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    events = event_log_text(settings)
    assert "MsgSeqNum too high" not in events and "MsgSeqNum too low" not in events


def engine_settings(proxy: RecoveryProxy, tmp_path: Path, *, qualifier: str = "",
                    port: int | None = None, reconnect: int = RECONNECT) -> EngineSettings:
    assert proxy.address is not None
    return EngineSettings(
        sender_comp_id=proxy.material.api_key, target_comp_id="KalshiNR",
        host=proxy.address[0], port=port if port is not None else proxy.address[1],
        workdir=tmp_path / f"engine{qualifier}", reset_on_logon=True,
        reconnect_interval=reconnect, session_qualifier=qualifier)


async def test_quickfix_gets_the_fills_missed_while_the_gateway_dropped_it(
        e2e_material: E2EMaterial, dc_keys: RecoveryKeys, tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT), quickfix_log_on_failure(tmp_path):
        async with open_recovery_sim(e2e_material, dc_keys,
                                     fill_after=FILL_AFTER) as (sim, addresses):
            proxy = RecoveryProxy(e2e_material, dc_keys, addresses, tmp_path / "state")
            async with run_recovery_proxy(proxy):  # to learn the engine port
                settings = engine_settings(proxy, tmp_path)

            async def drop(_: RunningProxy) -> None:
                due = sim.venue.account.next_due()
                assert due is not None and due > trio.current_time(), \
                    "the fills fell due before the drop; the scenario did not happen"
                assert await sim.drop(e2e_material.api_key)

            record = await run_scenario(proxy, settings, drop)
            assert proxy.sample("fixproxy_recovery_total", result="ok") == 1
            assert proxy.sample("fixproxy_recovered_reports_total") == ORDERS
    check_recovered(record, settings)


async def test_quickfix_gets_the_fills_missed_while_fixproxy_was_killed(
        e2e_material: E2EMaterial, dc_keys: RecoveryKeys, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    saved_acks = trio.Event()
    original = RecoveryStore.save

    def save(store: RecoveryStore, session: str, state: RecoveryState) -> None:
        original(store, session, state)
        if len(state.cl_ord_ids) >= ORDERS and len(state.cursors) == 2:
            saved_acks.set()  # called in trio's thread

    monkeypatch.setattr(RecoveryStore, "save", save)
    with trio.fail_after(TEST_TIMEOUT), quickfix_log_on_failure(tmp_path):
        async with open_recovery_sim(e2e_material, dc_keys,
                                     fill_after=FILL_AFTER) as (sim, addresses):
            proxy = RecoveryProxy(e2e_material, dc_keys, addresses, tmp_path / "state")
            async with run_recovery_proxy(proxy):
                settings = engine_settings(proxy, tmp_path)

            async def kill_and_restart(running: RunningProxy) -> None:
                # The state is saved every 0.05 s: wait for the save holding the orders and
                # their acknowledgements (both exchange indexes), then kill.
                await saved_acks.wait()
                due = sim.venue.account.next_due()
                assert due is not None and due > trio.current_time(), \
                    "the fills fell due before the kill; the scenario did not happen"
                await running.kill()
                await sim.wait_for(lambda _: not sim.live_sessions)
                await running.start()

            record = await run_scenario(proxy, settings, kill_and_restart)
            assert proxy.sample("fixproxy_recovery_total", result="ok") == 1
            assert proxy.sample("fixproxy_recovered_reports_total") == ORDERS
    check_recovered(record, settings)


@pytest.mark.parametrize("case", ["not_allowlisted", "dc_unreachable", "window_exceeded"])
async def test_quickfix_session_works_when_recovery_cannot(
        e2e_material: E2EMaterial, dc_keys: RecoveryKeys, tmp_path: Path, case: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The replay is refused (21004=5), the drop copy is unreachable, or the engine's cursor
    is older than the 3-hour window: QuickFIX logs on again and trades without a sequence
    error, and the metric and the log say why nothing was recovered."""
    saved_acks = trio.Event()
    original = RecoveryStore.save

    def save(store: RecoveryStore, session: str, state: RecoveryState) -> None:
        original(store, session, state)
        if len(state.cl_ord_ids) >= ORDERS and len(state.cursors) == 2:
            saved_acks.set()

    monkeypatch.setattr(RecoveryStore, "save", save)
    with trio.fail_after(TEST_TIMEOUT), quickfix_log_on_failure(tmp_path):
        async with open_recovery_sim(e2e_material, dc_keys, fill_after=FILL_AFTER,
                                     allowlisted=case != "not_allowlisted") as (sim, addresses):
            proxy = RecoveryProxy(e2e_material, dc_keys, addresses, tmp_path / "state",
                                  dc_port=dead_port() if case == "dc_unreachable" else None)
            async with run_recovery_proxy(proxy):
                settings = engine_settings(proxy, tmp_path)
            state = tmp_path / "state" / "nr.recovery.json"

            async def disconnect(running: RunningProxy) -> None:
                await saved_acks.wait()
                if case != "window_exceeded":
                    assert await sim.drop(e2e_material.api_key)
                    return
                # Killed, and the state aged past the window before fixproxy starts again.
                await running.kill()
                saved = json.loads(state.read_text())
                for cursor in saved["cursors"]:
                    cursor["at"] -= RECOVERY_WINDOW_S + 60
                state.write_text(json.dumps(saved))
                await running.start()

            record = await run_scenario(proxy, settings, disconnect, recovered=0)
            result = {"not_allowlisted": "not_enabled", "dc_unreachable": "connect_failed",
                      "window_exceeded": "window_exceeded"}[case]
            assert proxy.sample("fixproxy_recovery_total", result=result) == 1
            assert proxy.sample("fixproxy_recovered_reports_total") == 0

    received = reports(record)
    assert [report.get(11) for report in received[ORDERS:]] == [b"LIVE-1"]
    assert all(report.get(97) is None for report in received)
    assert not record.sent_of(tags.MT_RESEND_REQUEST) and not record.sent_of(tags.MT_REJECT)
    logons = record.received_of(tags.MT_LOGON)
    after = record.received[record.received.index(logons[1]):]
    assert [int(m.get(34) or 0) for m in after] == list(range(1, len(after) + 1))
    assert f"drop-copy recovery failed ({result})" in caplog.text
    assert "REST API" in caplog.text


def primary_then_standby(primary: EngineSettings, standby: EngineSettings
                         ) -> tuple[EngineRecord, EngineRecord]:
    """Blocking: the primary logs on; the standby on the other listener is refused while the
    primary holds the key, and gets in once the primary logged out."""
    with QuickFixEngine(primary) as first:
        assert first.wait_logged_on(STEP_TIMEOUT), "the primary never logged on"
        with QuickFixEngine(standby) as second:
            assert second.record.wait_until(
                lambda r: bool(r.received_of(tags.MT_LOGOUT)), STEP_TIMEOUT), \
                "the standby was not told why it cannot log on"
            assert second.record.counts()[0] == 0
            first.logout("handing over to the standby")
            assert first.wait_logged_out(STEP_TIMEOUT)
            assert second.wait_logged_on(STEP_TIMEOUT + standby.reconnect_interval), \
                "the standby never logged on after the primary left"
            second.logout("end of test")
            assert second.wait_logged_out(STEP_TIMEOUT)
    return first.record, second.record


async def test_two_listeners_share_one_api_key(
        e2e_material: E2EMaterial, dc_keys: RecoveryKeys, tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT), quickfix_log_on_failure(tmp_path):
        async with open_recovery_sim(e2e_material, dc_keys) as (_, addresses):
            proxy = RecoveryProxy(e2e_material, dc_keys, addresses, tmp_path / "state")
            async with run_recovery_proxy(proxy, names=("nr", "standby")) as bound:
                primary = engine_settings(proxy, tmp_path, reconnect=30)
                standby = engine_settings(proxy, tmp_path, qualifier="standby",
                                          port=bound.sessions["standby"][1], reconnect=1)
                first, second = await trio.to_thread.run_sync(
                    primary_then_standby, primary, standby)

    refusal = second.received_of(tags.MT_LOGOUT)[0].get(58) or b""
    assert b"already in use by session 'nr'" in refusal
    assert b" since 20" in refusal  # and since when
    assert first.counts() == (1, 1)
    assert second.counts()[0] == 1
