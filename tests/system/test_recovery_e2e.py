"""Drop-copy recovery end to end, with a scripted engine: the simulator fills resting orders
while the engine is away, and the next Logon delivers those fills (97=Y) before live traffic.

Real loopback sockets and TLS; the simulator's clock is real, so a test that needs fills to be
due waits until the simulator says they are (its next due time), never a guessed interval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import pytest
import trio
from support.e2e import E2EMaterial
from support.recovery_stack import (
    RecoveryKeys,
    RecoveryProxy,
    dead_port,
    make_drop_copy_keys,
    open_recovery_sim,
    run_recovery_proxy,
)

from fixproxy.cli.check import preflight
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.ops.recoverystore import RecoveryStore
from fixproxy.session.recovery import RECOVERY_WINDOW_S, RecoveryState, parse_exec_id
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimGateway

TIMEOUT: Final = 30.0
SYMBOLS: Final = ("KXA-26JAN01", "KXB-26JAN01", "KXC-26JAN01")


@pytest.fixture(name="dc_keys", scope="module")
def dc_keys_fixture(tmp_path_factory: pytest.TempPathFactory) -> RecoveryKeys:
    return make_drop_copy_keys(tmp_path_factory.mktemp("dc-keys"))


async def engine_for(proxy: RecoveryProxy, material: E2EMaterial) -> ScriptedEngine:
    assert proxy.address is not None
    return await ScriptedEngine.connect(*proxy.address, sender=material.api_key,
                                        target="KalshiNR")


async def place_orders(engine: ScriptedEngine, prefix: str,
                       indexes: set[int] | None = None) -> list[bytes]:
    """One order per symbol; returns the ClOrdIDs once every acknowledgement arrived (and
    adds the acknowledgements' exchange indexes to ``indexes``)."""
    ids = []
    for n, symbol in enumerate(SYMBOLS):
        cl_ord_id = f"{prefix}-{n}".encode()
        await engine.send(tags.MT_NEW_ORDER_SINGLE, [
            (11, cl_ord_id), (38, 10 + n), (40, 2), (44, 40 + n), (54, 1), (55, symbol),
            (59, 1)])
        ids.append(cl_ord_id)
    for _ in ids:
        ack = await engine.receive_type(tags.MT_EXECUTION_REPORT)
        assert ack.get(150) == b"0"
        exec_id = parse_exec_id(ack.get(17))
        assert exec_id is not None
        if indexes is not None:
            indexes.add(exec_id.index)
    return ids


async def fills_due(sim: SimGateway) -> None:
    """Wait until every resting order of the simulator is due to fill."""
    due = sim.venue.account.last_due()
    assert due is not None, "nothing rests"
    await trio.sleep_until(due + 0.01)


async def received_after_logon(engine: ScriptedEngine, count: int) -> list[FixMessage]:
    """The next ``count`` application messages (TestRequests answered on the way)."""
    out: list[FixMessage] = []
    while len(out) < count:
        message = await engine.receive()
        assert message is not None, "the proxy closed the connection"
        if message.msg_type == tags.MT_TEST_REQUEST:
            continue
        out.append(message)
    return out


async def logged_on(engine: ScriptedEngine) -> bool:
    answer = await engine.logon(reset=True)
    return answer is not None and answer.msg_type == tags.MT_LOGON


def seq(message: FixMessage) -> int:
    return int(message.get(tags.MSG_SEQ_NUM) or b"0")


async def disconnect(sim: SimGateway, engine: ScriptedEngine, api_key: str) -> None:
    """The gateway drops the NR connection; fixproxy tells the engine and closes."""
    assert await sim.drop(api_key)
    logout = await engine.receive_type(tags.MT_LOGOUT)
    assert b"closed the connection" in (logout.get(tags.TEXT) or b"")
    await engine.aclose()


async def test_fills_missed_during_a_drop_arrive_once_before_live_traffic(
        e2e_material: E2EMaterial, dc_keys: RecoveryKeys, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_recovery_sim(e2e_material, dc_keys) as (sim, addresses):
            proxy = RecoveryProxy(e2e_material, dc_keys, addresses, tmp_path / "state")
            async with run_recovery_proxy(proxy):
                first = await engine_for(proxy, e2e_material)
                assert await logged_on(first)
                indexes: set[int] = set()
                ids = await place_orders(first, "rest", indexes)
                await disconnect(sim, first, e2e_material.api_key)
                await fills_due(sim)

                second = await engine_for(proxy, e2e_material)
                answer = await second.logon(reset=True)
                assert answer is not None and answer.msg_type == tags.MT_LOGON
                fills = await received_after_logon(second, len(ids))
                await second.send(tags.MT_NEW_ORDER_SINGLE, [
                    (11, b"live-1"), (38, 1), (40, 2), (44, 50), (54, 1), (55, SYMBOLS[0]),
                    (59, 1)])
                (live,) = await received_after_logon(second, 1)
                await second.logout()
                await second.aclose()

            assert proxy.sample("fixproxy_recovery_total", result="ok") == 1
            assert proxy.sample("fixproxy_recovered_reports_total") == len(ids)

    # Every missed fill once, PossResend, the engine's CompIDs, numbered right after the
    # Logon answer; then the live acknowledgement continues the numbering without a gap.
    assert sorted(fill.get(11) or b"" for fill in fills) == sorted(ids)
    assert all(fill.get(150) == b"F" and fill.get(97) == b"Y" for fill in fills)
    assert all(fill.get(122) is not None for fill in fills)
    assert all(fill.get(49) == b"KalshiNR" and fill.get(56) == e2e_material.api_key.encode()
               for fill in fills)
    assert [seq(message) for message in (answer, *fills, live)] == \
        list(range(1, len(ids) + 3))
    assert live.get(11) == b"live-1" and live.get(97) is None
    exec_ids = [parse_exec_id(fill.get(17)) for fill in fills]
    assert all(exec_id is not None for exec_id in exec_ids)
    keys = [(e.clock, e.event, e.index) for e in exec_ids if e is not None]
    assert keys == sorted(keys)
    # The drop copy was asked once per index with a cursor (both of the simulator's are
    # used by these symbols), and logged out.
    assert indexes == {0, 1}
    dc_requests = [event for event in sim.events
                   if event.endpoint == "KalshiDC" and event.msg_type == b"U1"]
    assert len(dc_requests) == len(indexes)
    assert any(event.endpoint == "KalshiDC" and event.msg_type == tags.MT_LOGOUT
               and event.direction == "in" for event in sim.events)


async def test_fills_survive_a_fixproxy_restart(
        e2e_material: E2EMaterial, dc_keys: RecoveryKeys, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """fixproxy is cancelled (killed) while the engine is connected; the state it saved at
    its interval is enough for the next run to recover the fills."""
    saved_all = trio.Event()
    wanted = len(SYMBOLS)
    original = RecoveryStore.save

    def save(store: RecoveryStore, session: str, state: RecoveryState) -> None:
        original(store, session, state)
        if len(state.cl_ord_ids) >= wanted and len(state.cursors) == 2:
            saved_all.set()  # called in trio's thread

    monkeypatch.setattr(RecoveryStore, "save", save)
    with trio.fail_after(TIMEOUT):
        async with open_recovery_sim(e2e_material, dc_keys) as (sim, addresses):
            proxy = RecoveryProxy(e2e_material, dc_keys, addresses, tmp_path / "state")
            async with run_recovery_proxy(proxy):
                first = await engine_for(proxy, e2e_material)
                assert await logged_on(first)
                ids = await place_orders(first, "kill")
                await saved_all.wait()  # within one save interval (0.05 s)
            await first.aclose()
            await fills_due(sim)
            await sim.wait_for(lambda _: not sim.live_sessions)

            async with run_recovery_proxy(proxy):
                second = await engine_for(proxy, e2e_material)
                assert await logged_on(second)
                fills = await received_after_logon(second, len(ids))
                await second.logout()
                await second.aclose()
            assert proxy.sample("fixproxy_recovery_total", result="ok") == 1

    assert sorted(fill.get(11) or b"" for fill in fills) == sorted(ids)
    assert all(fill.get(97) == b"Y" and fill.get(150) == b"F" for fill in fills)


@pytest.mark.parametrize("case", ["not_allowlisted", "dc_unreachable", "window_exceeded"])
async def test_the_session_works_when_recovery_cannot(
        e2e_material: E2EMaterial, dc_keys: RecoveryKeys, tmp_path: Path, case: str,
        caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_recovery_sim(e2e_material, dc_keys,
                                     allowlisted=case != "not_allowlisted") as (sim, addresses):
            proxy = RecoveryProxy(e2e_material, dc_keys, addresses, tmp_path / "state",
                                  dc_port=dead_port() if case == "dc_unreachable" else None)
            async with run_recovery_proxy(proxy):
                first = await engine_for(proxy, e2e_material)
                assert await logged_on(first)
                await place_orders(first, case)
                await disconnect(sim, first, e2e_material.api_key)
            if case == "window_exceeded":
                path = tmp_path / "state" / "nr.recovery.json"
                saved = json.loads(path.read_text())
                for cursor in saved["cursors"]:
                    cursor["at"] -= RECOVERY_WINDOW_S + 60
                path.write_text(json.dumps(saved))
            await fills_due(sim)
            async with run_recovery_proxy(proxy):
                second = await engine_for(proxy, e2e_material)
                answer = await second.logon(reset=True)
                assert answer is not None and answer.msg_type == tags.MT_LOGON
                await second.send(tags.MT_NEW_ORDER_SINGLE, [
                    (11, b"after"), (38, 1), (40, 2), (44, 50), (54, 1), (55, SYMBOLS[0]),
                    (59, 1)])
                (ack,) = await received_after_logon(second, 1)
                await second.logout()
                await second.aclose()
            result = {"not_allowlisted": "not_enabled", "dc_unreachable": "connect_failed",
                      "window_exceeded": "window_exceeded"}[case]
            assert proxy.sample("fixproxy_recovery_total", result=result) == 1
            assert proxy.sample("fixproxy_recovered_reports_total") == 0

    assert ack.get(11) == b"after" and seq(ack) == seq(answer) + 1
    assert f"drop-copy recovery failed ({result})" in caplog.text
    assert f"reconcile the orders {case}-0, {case}-1, {case}-2 through Kalshi's REST API" \
        in caplog.text


@pytest.mark.parametrize("registered", [True, False], ids=["dc_key_known", "dc_key_unknown"])
async def test_check_logs_on_to_the_drop_copy(
        e2e_material: E2EMaterial, dc_keys: RecoveryKeys, tmp_path: Path,
        registered: bool) -> None:
    """``fixproxy check`` loads the drop-copy key and, online, logs on with it and out."""
    keys = dc_keys if registered else RecoveryKeys(
        "44444444-4444-4444-8444-444444444444", dc_keys.private_key, dc_keys.public_key)
    lines: list[str] = []
    with trio.fail_after(TIMEOUT):
        async with open_recovery_sim(e2e_material, dc_keys) as (sim, addresses):
            proxy = RecoveryProxy(e2e_material, keys, addresses, None)
            ok = await preflight(proxy.config(), online=True, echo=lines.append)
            dc_logouts = [event for event in sim.events if event.endpoint == "KalshiDC"
                          and event.msg_type == tags.MT_LOGOUT]
    text = "\n".join(lines)
    assert f"drop-copy key {dc_keys.private_key} loads" in text
    assert ok is registered
    if registered:
        assert "the drop copy" in text and f"accepted the Logon of key {keys.api_key}" in text
        assert [event.direction for event in dc_logouts] == ["in", "out"]
    else:
        assert "FAIL session 'nr' (KalshiNR): the drop copy" in text
        assert "refused the Logon" in text
