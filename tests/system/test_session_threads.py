"""The boundary between the planes: trio admits, threads relay.

Admission (trio) hands each session to a :class:`~fixproxy.proxy.relay.SessionRelay`, which
logs on in a thread of its own and is then relayed, with every other logged-on session, by the
data plane's shared thread; shutdown reaches a relay as a command and a byte on its wake-up
pipe, rare events come back through ``_TrioControl``, and the end of the session is reported
back to its task. These tests cross that boundary with many sessions at once, on
real loopback sockets and real TLS (:mod:`support.fleet`), in the moments where it matters: a
shutdown and a reload under heavy traffic, the end of many sessions at once, the resources a
session gives back, and a thread that fails.

Every wait is for an event (a message, a close, the server returning), bounded by the
fleet's ``fail_after``; nothing asserts how fast anything is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Final

import pytest
import trio
from support.e2e import (  # e2e_material_fixture: a pytest fixture, found by its name
    E2EMaterial,
    e2e_material_fixture,  # noqa: F401
)
from support.faults import fd_count, read_to_close, text_of
from support.fleet import (
    DATA_PLANE_THREAD,
    Fleet,
    SessionsView,
    Trader,
    data_plane_threads,
    open_fleet,
    open_fleet_process,
    relay_threads,
    wait_until,
)

from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.fix.framer import FixFramer
from fixproxy.proxy.dataplane import DataPlane
from fixproxy.proxy.relay import SessionRelay
from fixproxy.sim.gateway import SimFaults

GUARD: Final = 180.0
"""Seconds one test may take at most on a loaded machine; a healthy run takes a few."""
TRADERS: Final = 5
"""Sessions trading at once in the heavy-traffic tests."""
MANY: Final = 20
"""Sessions in the tests of many sessions."""
WARM_UP: Final = 500
"""ExecutionReports each trader receives before the event under test, and again after it."""
LOGOUT_WAIT: Final = 60.0
"""The sessions' logout_wait for the shutdown test: the gateway answers fixproxy's Logout
after the orders queued ahead of it, which on a loaded machine can take longer than the
2 s default; this test is about delivery, not that timer."""
SHUTDOWN_TIMEOUT: Final = 120.0
WRONG_PIN: Final = "sha256/" + "A" * 43 + "="
"""A well-formed pin that no certificate has."""
SHUTTING_DOWN: Final = "fixproxy: fixproxy is shutting down"
GATEWAY_CLOSED: Final = "fixproxy: the Kalshi gateway closed the connection without a Logout"
INTERNAL_ERROR: Final = ("fixproxy: internal error in fixproxy; the connection is closed, "
                         "log on again")


def seq_of(raw: bytes) -> int:
    return int(FixMessage.parse(raw).get(tags.MSG_SEQ_NUM) or b"0")


def ids_of(raws: list[bytes]) -> list[bytes | None]:
    return [FixMessage.parse(raw).get(11) for raw in raws]


async def start_traders(fleet: SessionsView, names: list[str],
                        nursery: trio.Nursery) -> dict[str, Trader]:
    """Log an engine on to each session, then start them all trading."""
    traders = {name: Trader(await fleet.logged_on(name), name) for name in names}
    for trader in traders.values():
        nursery.start_soon(trader.trade)
    return traders


async def trade_on(traders: dict[str, Trader], count: int = WARM_UP) -> None:
    """Wait until every trader has ``count`` more ExecutionReports than now."""
    targets = {name: trader.reports + count for name, trader in traders.items()}
    for name, trader in traders.items():
        await trader.wait_reports(targets[name])


def check_clean_trading(fleet: SessionsView, name: str, trader: Trader) -> None:
    """Every order reached the gateway once, in order, and every report came back in order,
    byte for byte as the gateway sent it."""
    conn = fleet.sim_conn(name)
    assert trader.reports == len(trader.sent)
    assert trader.report_ids() == trader.sent
    assert ids_of(fleet.sim_raw(conn, "in", tags.MT_NEW_ORDER_SINGLE)) == trader.sent
    assert trader.received_raw(tags.MT_EXECUTION_REPORT) == fleet.sim_raw(
        conn, "out", tags.MT_EXECUTION_REPORT)


async def check_logged_out_by_shutdown(fleet: SessionsView, name: str, trader: Trader) -> None:
    """The engine got every report the gateway sent, in order and byte for byte, then
    fixproxy's Logout saying why, then the close; the gateway got a prefix of the engine's
    orders, in order, answered every one, then fixproxy's Logout numbered right after the
    last, and answered that too."""
    conn = fleet.sim_conn(name)
    assert trader.closed
    assert trader.received_raw(tags.MT_EXECUTION_REPORT) == fleet.sim_raw(
        conn, "out", tags.MT_EXECUTION_REPORT)
    assert [m.msg_type for m in trader.received
            if m.msg_type != tags.MT_EXECUTION_REPORT] == [tags.MT_LOGOUT]
    assert text_of(trader.received[-1]) == SHUTTING_DOWN
    assert trader.report_ids() == trader.sent[:trader.reports]
    orders = fleet.sim_raw(conn, "in", tags.MT_NEW_ORDER_SINGLE)
    assert ids_of(orders) == trader.sent[:len(orders)]
    assert len(orders) == trader.reports
    (logout,) = fleet.sim_raw(conn, "in", tags.MT_LOGOUT)
    assert seq_of(logout) == len(orders) + 2
    assert await fleet.sim.wait_closed(conn) == "peer logged out"


# --- 1. shutdown under heavy traffic ----------------------------------------------------------


async def test_shutdown_under_heavy_traffic_delivers_every_report_then_the_logout(
        e2e_material: E2EMaterial) -> None:
    async with open_fleet(e2e_material, TRADERS, guard=GUARD,
                          session_overrides={"logout_wait": LOGOUT_WAIT},
                          shutdown_timeout=SHUTDOWN_TIMEOUT) as fleet:
        async with trio.open_nursery() as nursery:
            traders = await start_traders(fleet, fleet.names, nursery)
            await trade_on(traders)
            assert_in_data_plane(fleet, TRADERS)
            # SIGTERM, in-process: stop listening, log every session out, wait, return.
            await fleet.stop()
            # The traders return at their connection's close.
        assert fleet.drained == [True], "a session outlived shutdown_timeout"
        assert relay_threads() == []
        assert fleet.server.manager.live_sessions == 0
        # The shared thread ended with the server, once its sessions had.
        await wait_until(lambda: data_plane_threads() == [])

        for name, trader in traders.items():
            await check_logged_out_by_shutdown(fleet, name, trader)
            assert fleet.sample("fixproxy_logouts_total", name, initiator="proxy",
                                reason="shutdown") == 1
            assert fleet.sample("fixproxy_session_up", name) == 0
        assert fleet.sim.live_sessions == {}


BUSY_ORDERS: Final = 100
"""Orders a busy engine has answered before the shutdown: some 22 KB of ExecutionReports,
more than its receive buffer holds, so part of them waits in fixproxy's send buffer."""
ENGINE_RCVBUF: Final = 4096


async def test_shutdown_delivers_everything_to_an_engine_that_reads_late(
        e2e_material: E2EMaterial) -> None:
    """An engine busy elsewhere reads nothing for a moment and, unaware of the shutdown,
    writes a few more orders: what fixproxy already wrote to it must still arrive."""
    async with open_fleet(e2e_material, 1, guard=GUARD) as fleet:
        (name,) = fleet.names
        engine = await fleet.connect(name)
        assert isinstance(engine.stream, trio.SocketStream)
        engine.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ENGINE_RCVBUF)
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        trader = Trader(engine, name)
        orders = [trader.order() for _ in range(BUSY_ORDERS)]
        await engine.send_raw(b"".join(orders))
        await fleet.sim.wait_for_messages(tags.MT_EXECUTION_REPORT, BUSY_ORDERS,
                                          direction="out")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fleet.stop)
            await fleet.sim.wait_for_messages(tags.MT_LOGOUT, direction="in")
            # fixproxy no longer reads the engine; these orders stay unread in its socket.
            with contextlib.suppress(trio.BrokenResourceError):
                await engine.send_raw(b"".join(trader.order() for _ in range(10)))
        messages = await read_to_close(engine)
        assert [m.get(11) for m in messages[:-1]] == trader.sent[:BUSY_ORDERS]
        assert messages[-1].msg_type == tags.MT_LOGOUT
        assert text_of(messages[-1]) == SHUTTING_DOWN


# --- 2. reload under heavy traffic --------------------------------------------------------------


async def test_reload_under_heavy_traffic_loses_and_reorders_nothing(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    live, added = ["s00", "s01"], "s02"
    async with open_fleet(e2e_material, 3, configured=2, guard=GUARD,
                          config_dir=tmp_path) as fleet:
        assert fleet.files is not None
        server = fleet.server
        async with trio.open_nursery() as nursery:
            traders = await start_traders(fleet, live, nursery)
            await trade_on(traders)
            before = dict(server.runtimes)

            # Reload 1, while the orders flow: one more session.
            fleet.files.write(3)
            result = await server.reload()
            assert result.ok, result
            assert result.changes is not None and result.changes.added == (added,)
            await trade_on(traders)
            newcomer = await fleet.logged_on(added)  # the new configuration's session
            cl_ord_id = await newcomer.new_order()
            assert (await newcomer.receive_type(tags.MT_EXECUTION_REPORT)).get(11) == cl_ord_id
            answer = await newcomer.logout()
            assert answer is not None and answer.msg_type == tags.MT_LOGOUT
            assert await newcomer.receive() is None

            # Reload 2, while the orders flow: pins no certificate matches.
            fleet.files.write(3, pins=[WRONG_PIN])
            result = await server.reload()
            assert result.ok, result
            assert all(server.runtimes[name] is not before[name] for name in live)
            await trade_on(traders)
            refused = await fleet.connect(added)  # a new connection gets the new pins
            answer = await refused.logon()
            assert answer is not None and answer.msg_type == tags.MT_LOGOUT
            assert "matches none of the configured pins" in text_of(answer)
            assert await refused.receive() is None
            await trade_on(traders)  # the live sessions keep the pins they connected with

            for trader in traders.values():
                trader.finish()
        assert fleet.metrics.registry.get_sample_value(
            "fixproxy_config_reload_total", {"result": "ok"}) == 2
        assert fleet.sample("fixproxy_pin_mismatches_total", added) == 1
        for name, trader in traders.items():
            await log_out_after_clean_trading(fleet, name, trader)
            assert fleet.sample("fixproxy_logouts_total", name, initiator="engine",
                                reason="normal") == 1


@pytest.mark.slow
async def test_fixproxy_run_reloads_and_stops_under_heavy_traffic(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    """The same as a real process: SIGHUP, then SIGTERM, reach the trio loop while the
    relay threads are busy, and the process exits 0 once every session logged out."""
    live, added = ["s00", "s01", "s02"], "s03"
    async with open_fleet_process(e2e_material, 4, configured=3, guard=GUARD,
                                  config_dir=tmp_path, shutdown_timeout=SHUTDOWN_TIMEOUT,
                                  logout_wait=LOGOUT_WAIT) as fleet:
        async with trio.open_nursery() as nursery:
            traders = await start_traders(fleet, live, nursery)
            await trade_on(traders)
            fleet.files.write(4)
            fleet.process.send_signal(signal.SIGHUP)
            await fleet.output.wait_for("configuration reloaded")
            await trade_on(traders)
            newcomer = await fleet.logged_on(added)
            cl_ord_id = await newcomer.new_order()
            assert (await newcomer.receive_type(tags.MT_EXECUTION_REPORT)).get(11) == cl_ord_id
            answer = await newcomer.logout()
            assert answer is not None and answer.msg_type == tags.MT_LOGOUT
            await trade_on(traders)
            fleet.process.send_signal(signal.SIGTERM)
            # The traders return at their connection's close.
        assert await fleet.process.wait() == 0
        for name, trader in traders.items():
            await check_logged_out_by_shutdown(fleet, name, trader)
        assert fleet.sim.live_sessions == {}
        assert "Traceback" not in fleet.output.text
        assert "rejected" not in fleet.output.text


REPLACED: Final = 9
"""Sessions a reload replaces at once: more than the manager's minimum of 8 relay threads."""


async def test_a_reload_that_replaces_every_live_session_leaves_no_logon_waiting(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    async with open_fleet(e2e_material, 2 * REPLACED, configured=REPLACED, guard=GUARD,
                          config_dir=tmp_path) as fleet:
        assert fleet.files is not None
        old, new = fleet.names[:REPLACED], fleet.names[REPLACED:]
        live = [await fleet.logged_on(name) for name in old]
        # New keys on new sessions, the old ones removed: their engines trade on meanwhile.
        fleet.files.write(new)
        result = await fleet.server.reload()
        assert result.ok, result
        assert result.changes is not None and result.changes.removed == tuple(old)

        answers: dict[str, FixMessage | None] = {}

        async def log_on(name: str) -> None:
            engine = await fleet.connect(name)
            answers[name] = await engine.logon()

        limiter = fleet.server.manager.session_threads
        async with trio.open_nursery() as nursery:
            for name in new:
                nursery.start_soon(log_on, name)
            # Every Logon is answered, or a connection waits for a relay thread that only
            # the end of an old session would free (none will end: they are trading).
            await wait_until(lambda: len(answers) == len(new)
                             or limiter.statistics().tasks_waiting > 0)
            waiting = limiter.statistics().tasks_waiting
            nursery.cancel_scope.cancel()
        assert waiting == 0, (f"{waiting} of {len(new)} new connections wait for a relay "
                              f"thread ({limiter.total_tokens} for {len(old)} live sessions "
                              f"and {len(new)} new ones)")
        assert all(answer is not None and answer.msg_type == tags.MT_LOGON
                   for answer in answers.values())
        for engine in live:
            cl_ord_id = await engine.new_order()
            assert (await engine.receive_type(tags.MT_EXECUTION_REPORT)).get(11) == cl_ord_id


# --- 3. resources given back ------------------------------------------------------------------


def _new_threads(baseline: set[threading.Thread]) -> list[str]:
    return sorted(thread.name for thread in threading.enumerate() if thread not in baseline)


def _fds() -> list[str]:
    """What each open descriptor is, for a failure message."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            found.append(f"{fd} (gone)")
    return found


async def _returned_to(fleet: Fleet, baseline_fds: int, baseline: set[threading.Thread],
                       phase: str) -> None:
    """Every relay thread has ended and every descriptor of the sessions is closed.

    Threads: trio runs each relay on a worker of its thread cache, names it ``fixproxy
    session <name> #<conn>`` while the relay runs, and puts the worker's own name back when
    the relay returns; an idle worker then stays in the cache (IDLE_TIMEOUT, 10 s) for the
    next ``to_thread`` call. So the honest count is of threads *running a relay*, which
    must be none; every other new thread must be an idle trio worker, and there are never
    more of those than relays could run at once (the manager's CapacityLimiter), however
    many sessions came and went. ``threading.active_count()`` alone would count the cache.
    """
    with trio.move_on_after(30):  # then the assertions below say what is left
        await wait_until(lambda: not relay_threads() and fd_count() <= baseline_fds
                         and _plane(fleet).relaying == 0
                         and fleet.server.manager.live_sessions == 0)
    assert relay_threads() == [], phase
    assert _plane(fleet).relaying == 0, phase
    assert fd_count() == baseline_fds, (phase, _fds())
    # Idle workers that were already cached at the baseline may expire meanwhile, so the
    # new threads are counted, not compared with the total.
    idle_workers = _new_threads(baseline)
    assert all(name.startswith("Trio thread ") for name in idle_workers), idle_workers
    tokens = fleet.server.manager.session_threads.total_tokens
    assert len(idle_workers) <= tokens
    assert threading.active_count() <= len(baseline) + tokens


async def log_out_after_clean_trading(fleet: Fleet, name: str, trader: Trader) -> None:
    """``trader`` is still connected and traded cleanly; its Logout is answered, then the
    connection closes."""
    assert not trader.closed
    check_clean_trading(fleet, name, trader)
    answer = await trader.engine.logout()
    assert answer is not None and answer.msg_type == tags.MT_LOGOUT
    assert await trader.engine.receive() is None


def _plane(fleet: Fleet) -> DataPlane:
    plane = fleet.server.manager.data_plane
    assert plane is not None, "the server runs no data plane"
    return plane


def assert_in_data_plane(fleet: Fleet, sessions: int) -> None:
    """The first session to log on kept its own thread (it was alone); every other one is
    relayed by the one shared thread."""
    assert len(relay_threads()) == 1
    assert fleet.server.manager.alone_relaying == 1
    assert data_plane_threads() == [DATA_PLANE_THREAD]
    assert _plane(fleet).relaying == sessions - 1


DROP_AFTER: Final = 4
"""The simulator drops a connection on its 4th message after the Logon: a session that sends
two orders and a Logout is never dropped, one that sends four orders is."""


async def _trade_and_log_out(fleet: Fleet, name: str) -> None:
    engine = await fleet.logged_on(name)
    for _ in range(2):
        cl_ord_id = await engine.new_order()
        assert (await engine.receive_type(tags.MT_EXECUTION_REPORT)).get(11) == cl_ord_id
    answer = await engine.logout()
    assert answer is not None and answer.msg_type == tags.MT_LOGOUT
    assert await engine.receive() is None
    await engine.aclose()


async def _trade_until_dropped(fleet: Fleet, name: str) -> None:
    engine = await fleet.logged_on(name)
    cl_ord_ids = [await engine.new_order() for _ in range(DROP_AFTER)]
    messages = await read_to_close(engine)
    # The gateway answered all but the order it dropped the connection on.
    assert [m.get(11) for m in messages[:-1]] == cl_ord_ids[:-1]
    assert messages[-1].msg_type == tags.MT_LOGOUT
    assert text_of(messages[-1]) == GATEWAY_CLOSED
    await engine.aclose()


async def test_every_session_gives_back_its_thread_and_descriptors(
        e2e_material: E2EMaterial) -> None:
    async with open_fleet(e2e_material, MANY, guard=GUARD,
                          faults=SimFaults(drop_after_messages=DROP_AFTER)) as fleet:
        # Measured with the simulator and every listener up: what the sessions add.
        baseline = set(threading.enumerate())
        baseline_fds = fd_count()
        assert relay_threads() == []

        async with trio.open_nursery() as nursery:
            for name in fleet.names:
                nursery.start_soon(_trade_and_log_out, fleet, name)
        await _returned_to(fleet, baseline_fds, baseline, "sessions logged out")

        async with trio.open_nursery() as nursery:
            for name in fleet.names:
                nursery.start_soon(_trade_until_dropped, fleet, name)
        await _returned_to(fleet, baseline_fds, baseline, "sessions dropped by the gateway")

        for name in fleet.names:
            assert fleet.sample("fixproxy_logouts_total", name, initiator="engine",
                                reason="normal") == 1
            assert fleet.sample("fixproxy_logouts_total", name, initiator="gateway",
                                reason="other") == 1
            assert fleet.sample("fixproxy_session_up", name) == 0


# --- 4. many sessions ending at once ------------------------------------------------------------


async def test_the_gateway_dropping_every_session_at_once(
        e2e_material: E2EMaterial, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fixproxy")
    async with open_fleet(e2e_material, MANY, guard=GUARD) as fleet:
        async with trio.open_nursery() as nursery:
            traders = await start_traders(fleet, fleet.names, nursery)
            await trade_on(traders, 20)
            for trader in traders.values():
                trader.finish()  # all answered: nothing is in flight when the gateway goes
        assert_in_data_plane(fleet, MANY)
        assert all(fleet.sample("fixproxy_session_up", name) == 1 for name in fleet.names)
        fleet.drop_gateway()
        for name, trader in traders.items():
            messages = await read_to_close(trader.engine)
            assert [m.msg_type for m in messages] == [tags.MT_LOGOUT], name
            assert text_of(messages[0]) == GATEWAY_CLOSED
            check_clean_trading(fleet, name, trader)
        await wait_until(lambda: not relay_threads() and _plane(fleet).relaying == 0
                         and fleet.server.manager.live_sessions == 0)
        for name in fleet.names:
            assert fleet.sample("fixproxy_session_up", name) == 0
            assert fleet.sample("fixproxy_logouts_total", name, initiator="gateway",
                                reason="other") == 1
    # Nothing escaped: the fleet's nursery ended without an exception, and nothing was
    # logged as a fault of fixproxy.
    faults = [record for record in caplog.records
              if record.exc_info is not None or "internal error" in record.getMessage()]
    assert faults == []


# --- 5. a relay thread that fails ------------------------------------------------------------


POISON: Final = b"poison"
"""The ClOrdID (11) of the order whose relaying fails inside fixproxy."""


async def test_a_failing_relay_thread_ends_its_session_only(
        e2e_material: E2EMaterial, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    failed: list[bytes] = []
    receive_counted = FixFramer.receive_counted

    def failing_once(framer: FixFramer, data: bytes, *args: Any) -> Any:
        # Called by the relay, in the session's thread, for every chunk it reads: fails once,
        # for the chunk that carries the poison ClOrdID.
        if not failed and b"\x0111=" + POISON + b"\x01" in data:
            failed.append(bytes(data))
            raise RuntimeError("injected fault in the session relay")
        return receive_counted(framer, data, *args)

    monkeypatch.setattr(FixFramer, "receive_counted", failing_once)
    victim, others = "s00", ["s01", "s02", "s03", "s04"]
    async with open_fleet(e2e_material, TRADERS, guard=GUARD) as fleet:
        baseline, baseline_fds = set(threading.enumerate()), fd_count()
        async with trio.open_nursery() as nursery:
            traders = await start_traders(fleet, others, nursery)
            engine = await fleet.logged_on(victim)
            cl_ord_id = await engine.new_order()
            assert (await engine.receive_type(tags.MT_EXECUTION_REPORT)).get(11) == cl_ord_id
            await trade_on(traders)
            conn = fleet.sim_conn(victim)
            await engine.send(tags.MT_NEW_ORDER_SINGLE, [
                (11, POISON), (38, 1), (40, 2), (44, 50), (54, 1), (55, "HIGHNY-23DEC31"),
                (59, 1)])
            messages = await read_to_close(engine)
            assert failed, "the fault was not injected"
            # Both peers are told, then closed; the order never reached the gateway.
            assert [m.msg_type for m in messages] == [tags.MT_LOGOUT]
            assert text_of(messages[0]) == INTERNAL_ERROR
            assert await fleet.sim.wait_closed(conn) == "peer logged out"
            [gateway_logout] = fleet.sim_raw(conn, "in", tags.MT_LOGOUT)
            assert b"\x0158=internal error in fixproxy" in gateway_logout
            assert ids_of(fleet.sim_raw(conn, "in", tags.MT_NEW_ORDER_SINGLE)) == [cl_ord_id]

            # Every other session trades on, and the process takes the victim back.
            await trade_on(traders)
            await wait_until(lambda: fleet.sample("fixproxy_session_up", victim) == 0)
            again = await fleet.logged_on(victim)
            cl_ord_id = await again.new_order()
            assert (await again.receive_type(tags.MT_EXECUTION_REPORT)).get(11) == cl_ord_id
            answer = await again.logout()
            assert answer is not None and answer.msg_type == tags.MT_LOGOUT
            assert await again.receive() is None
            for trader in traders.values():
                trader.finish()
        for name, trader in traders.items():
            await log_out_after_clean_trading(fleet, name, trader)
            assert fleet.sample("fixproxy_logouts_total", name, initiator="proxy",
                                reason="internal_error") == 0
        # The failed thread gave back what it held, like every other.
        for stream in (engine, again, *(trader.engine for trader in traders.values())):
            await stream.aclose()
        await _returned_to(fleet, baseline_fds, baseline, "after the fault")
        # What records the fault: the session's logouts by fixproxy for an internal error,
        # and the relay's log line with the traceback.
        assert fleet.sample("fixproxy_logouts_total", victim, initiator="proxy",
                            reason="internal_error") == 1
        assert fleet.sample("fixproxy_session_up", victim) == 0  # the reconnect logged out
    crashes = [record for record in caplog.records
               if record.name == "fixproxy.relay" and record.exc_info is not None]
    assert len(crashes) == 1
    assert "internal error in the session relay" in crashes[0].getMessage()
    assert crashes[0].exc_info is not None and crashes[0].exc_info[0] is RuntimeError


async def test_a_relay_fault_before_the_logon_answer_is_counted_and_backs_off(
        e2e_material: E2EMaterial, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object) -> bool:
        raise RuntimeError("injected fault in the session relay")

    monkeypatch.setattr(SessionRelay, "_logon_answer", failing)
    async with open_fleet(e2e_material, 1, guard=GUARD) as fleet:
        engine = await fleet.connect("s00")
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        assert text_of(answer) == INTERNAL_ERROR
        assert await engine.receive() is None
        await wait_until(lambda: fleet.sample("fixproxy_logouts_total", "s00",
                                              initiator="proxy", reason="internal_error") == 1)
        assert fleet.sample("fixproxy_session_up", "s00") == 0
        # The Logon's outcome is unknown: the key's next attempt waits out the backoff,
        # refused locally before anything reaches Kalshi.
        monkeypatch.undo()
        again = await fleet.connect("s00")
        refused = await again.logon()
        assert refused is not None and refused.msg_type == tags.MT_LOGOUT
        assert "fixproxy holds new attempts" in (text_of(refused) or "")
