"""The session manager over real sockets: maintenance windows, Logon backoff, and the
sequence reset forced on the first Logon after a window; then on its own: one connection per
API key, when a reset is due, and the drain on shutdown."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing
from prometheus_client import generate_latest
from support.e2e import E2EMaterial, open_proxy_pair

from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, utc_timestamp
from fixproxy.proxy.manager import KeyHolder, SessionManager
from fixproxy.session.backoff import LogonBackoff
from fixproxy.session.schedule import ALL_DAYS, MaintenanceSchedule
from fixproxy.sim.gateway import SimFaults

UTC_ZONE = ZoneInfo("UTC")


def _window_around(now: datetime) -> MaintenanceSchedule:
    """A daily window from an hour before ``now`` to an hour after it."""
    return MaintenanceSchedule(days=ALL_DAYS, start=(now - timedelta(hours=1)).time(),
                               end=(now + timedelta(hours=1)).time(), timezone=UTC_ZONE)


async def test_a_connection_during_maintenance_is_told_when_it_ends(
        e2e_material: E2EMaterial) -> None:
    new_york = ZoneInfo("America/New_York")
    now = datetime.now(new_york).replace(second=0, microsecond=0)
    schedule = MaintenanceSchedule(days=ALL_DAYS, start=(now - timedelta(hours=1)).time(),
                                   end=(now + timedelta(hours=1)).time(), timezone=new_york)
    async with open_proxy_pair(e2e_material, config_overrides={"maintenance": schedule}) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        text = answer.get_str(tags.TEXT) or ""
        window = schedule.active_window(datetime.now(UTC))
        assert window is not None
        assert "maintenance window is in progress" in text
        assert window.describe_end() in text  # the end in the zone and in UTC
        assert "America/New_York" in text and "UTC" in text
        assert pair.sim.events == type(pair.sim.events)(maxlen=pair.sim.events.maxlen)
        assert pair.sample("fixproxy_engine_connections_total", result="maintenance") == 1
        assert b"fixproxy_maintenance_active 1.0" in generate_latest(pair.metrics.registry)


async def test_outside_maintenance_the_gauge_is_zero(e2e_material: E2EMaterial) -> None:
    later = datetime.now(UTC) + timedelta(hours=6)
    async with open_proxy_pair(e2e_material,
                               config_overrides={"maintenance": _window_around(later)}) as pair:
        assert b"fixproxy_maintenance_active 0.0" in generate_latest(pair.metrics.registry)


async def test_a_refused_logon_holds_the_next_attempt_locally(e2e_material: E2EMaterial) -> None:
    manager = SessionManager(None, LogonBackoff())
    async with open_proxy_pair(e2e_material, manager=manager,
                               faults=SimFaults(refuse_logon_text="sim says no")) as pair:
        first = await pair.connect_engine()
        refused = await first.logon()
        assert refused is not None and refused.get_str(tags.TEXT) == "sim says no"
        # An engine reconnecting at once is held by fixproxy: Kalshi sees one attempt.
        second = await pair.connect_engine()
        held = await second.logon()
        assert held is not None and held.msg_type == tags.MT_LOGOUT
        text = held.get_str(tags.TEXT) or ""
        assert "rate-limits" in text and "retry after" in text and "UTC" in text
        assert len(pair.sim_events(direction="in", msg_type=tags.MT_LOGON)) == 1
        assert pair.sample("fixproxy_engine_connections_total", result="backoff") == 1
        # The status board's last error is still the cause, not the hold that repeats it.
        status = manager.status.get(pair.session.name)
        assert status is not None
        assert "the gateway refused the Logon" in status.last_error
        assert "sim says no" in status.last_error


async def test_first_logon_after_a_window_resets_even_on_kalshi_rt(
        e2e_material: E2EMaterial) -> None:
    now = datetime.now(UTC)
    # A daily window that ended since the key's last Logon, two days ago.
    schedule = _window_around(now - timedelta(hours=12))
    manager = SessionManager(schedule, LogonBackoff())
    manager.logon_accepted(e2e_material.api_key, now - timedelta(days=2))
    async with open_proxy_pair(e2e_material, endpoint="KalshiRT", manager=manager,
                               config_overrides={"maintenance": schedule}) as pair:
        engine = await pair.connect_engine(first_seq=5)  # an engine that keeps its numbers
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
        assert answer.get(tags.RESET_SEQ_NUM_FLAG) is None
        signed = FixMessage.parse(pair.sim.last_logon[pair.api_key])
        assert signed.get(tags.RESET_SEQ_NUM_FLAG) == b"Y"
        assert signed.get(34) == b"1"
        cl_ord_id = await engine.new_order()
        report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
        assert report.get(11) == cl_ord_id
        # The next Logon, with no window in between, follows the engine again (RT).
        assert not manager.reset_due(pair.api_key, datetime.now(UTC))


async def test_gateway_logout_is_answered_by_the_engine_and_closes(
        e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material,
                               faults=SimFaults(logout_after_messages=2)) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        await engine.new_order()
        await engine.new_order()
        logout = await engine.receive_type(tags.MT_LOGOUT)
        assert "logout after 2 messages" in (logout.get_str(tags.TEXT) or "")
        # The gateway's Logout reached the engine byte for byte; the engine's answer goes
        # back, and then both legs close.
        sent = pair.sim_events(direction="out", msg_type=tags.MT_LOGOUT)
        assert engine.transcript[-1][1] == sent[0].raw
        await engine.send(tags.MT_LOGOUT)
        assert await engine.receive() is None
        conn = pair.sim_logon_conn()
        await pair.sim.wait_closed(conn)
        assert len(pair.sim_events(conn, direction="in", msg_type=tags.MT_LOGOUT)) == 1
        while pair.sample("fixproxy_logouts_total", initiator="gateway",
                          reason="other") != 1:
            await trio.testing.wait_all_tasks_blocked(0.01)


async def test_a_silent_gateway_is_detected_and_explained(e2e_material: E2EMaterial) -> None:
    # The shortest HeartBtInt Kalshi allows (4 s) and a small grace: 2 x 4 + 0.5 s of silence.
    async with open_proxy_pair(e2e_material, faults=SimFaults(silent_after_messages=0),
                               session_overrides={"liveness_grace": 0.5}) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon(heart_bt_int=4)
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        started = trio.current_time()
        logout = await engine.receive()
        waited = trio.current_time() - started
        assert logout is not None and logout.msg_type == tags.MT_LOGOUT
        assert "sent nothing" in (logout.get_str(tags.TEXT) or "")
        assert 8.0 <= waited < 12.0
        assert await engine.receive() is None
        # fixproxy also told the gateway, numbered after the engine's Logon.
        logouts = pair.sim_events(direction="in", msg_type=tags.MT_LOGOUT)
        assert [FixMessage.parse(event.raw).get(34) for event in logouts] == [b"2"]
        while pair.sample("fixproxy_heartbeat_timeouts_total") != 1:
            await trio.testing.wait_all_tasks_blocked(0.01)
        assert pair.sample("fixproxy_logouts_total", initiator="proxy",
                           reason="heartbeat_timeout") == 1


async def test_kalshi_duplicate_answer_is_explained_in_the_log(
        e2e_material: E2EMaterial, caplog: pytest.LogCaptureFixture) -> None:
    async with open_proxy_pair(e2e_material,
                               faults=SimFaults(refuse_logon_text="already exists")) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.get_str(tags.TEXT) == "already exists"
    hints = [r.getMessage() for r in caplog.records if "already exists" in r.getMessage()]
    assert any("wait about 2 x HeartBtInt" in hint for hint in hints), hints


async def test_engine_clock_skew_is_warned_about(e2e_material: E2EMaterial,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        engine = await pair.connect_engine()
        late = utc_timestamp(time.time() - 12)
        logon = FixMessage.parse(engine.build(tags.MT_LOGON, [
            (tags.ENCRYPT_METHOD, 0), (tags.HEART_BT_INT, 30), (tags.DEFAULT_APPL_VER_ID, 9)]))
        logon.set(tags.SENDING_TIME, late)
        await engine.send_raw(logon.encode())
        answer = await engine.receive()
        assert answer is not None and answer.msg_type == tags.MT_LOGON
    warnings = [r.getMessage() for r in caplog.records if "SendingTime (52)" in r.getMessage()]
    assert any("-12" in text or "-11" in text for text in warnings), warnings


# --- the manager itself, without sockets ----------------------------------------------------

KEY = "11111111-1111-4111-8111-111111111111"
DRAIN_GUARD = 60.0
"""Virtual seconds a drain test may take: a drain that never returns fails the test
instead of hanging it (the autojump clock would wait forever)."""
OTHER_KEY = "22222222-2222-4222-8222-222222222222"


def test_an_api_key_is_held_by_one_connection_at_a_time() -> None:
    manager = SessionManager()
    assert manager.claim(KEY, "nr", 1) is None
    holder = manager.claim(KEY, "dc", 2)
    assert holder is not None and (holder.session, holder.conn_id) == ("nr", 1)
    assert manager.claim(OTHER_KEY, "dc", 2) is None  # keys are independent
    manager.release(KEY, 2)  # not the holder's connection: nothing changes
    assert manager.claim(KEY, "dc", 3) == holder
    manager.release(KEY, 1)
    assert manager.claim(KEY, "dc", 3) is None


def test_a_key_is_one_key_whatever_its_case() -> None:
    """Two sessions (a primary and a standby listener) may spell a shared key differently."""
    manager = SessionManager()
    assert manager.claim(KEY.upper(), "primary", 1) is None
    holder = manager.claim(KEY, "standby", 2)
    assert holder is not None and holder.session == "primary"
    manager.release(KEY, 1)
    assert manager.claim(KEY.upper(), "standby", 2) is None


def test_the_holder_is_described_for_the_refused_engine() -> None:
    since = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp()
    assert KeyHolder("nr", 7, since).describe() \
        == "session 'nr' (connection #7) since 2025-03-04 05:06:07 UTC"


def test_reset_is_due_only_after_a_window_ended_since_the_last_logon() -> None:
    now = datetime(2025, 6, 5, 12, 0, tzinfo=UTC)
    daily = MaintenanceSchedule(days=ALL_DAYS, start=dt_time(3), end=dt_time(5),
                                timezone=UTC_ZONE)
    manager = SessionManager(daily)
    assert not manager.reset_due(KEY, now)  # no Logon yet: nothing to reset from
    manager.logon_accepted(KEY, now - timedelta(hours=8))  # 04:00, inside today's window
    assert manager.reset_due(KEY, now)
    assert not manager.reset_due(OTHER_KEY, now)
    manager.logon_accepted(KEY, now - timedelta(hours=2))  # 10:00, after it
    assert not manager.reset_due(KEY, now)
    for other in (SessionManager(), SessionManager(dataclasses.replace(daily, reset_after=False))):
        other.logon_accepted(KEY, now - timedelta(hours=8))
        assert not other.reset_due(KEY, now)
    assert manager.maintenance_window(now.replace(hour=4)) is not None
    assert manager.maintenance_window(now) is None
    assert SessionManager().maintenance_window(now.replace(hour=4)) is None


async def test_drain_logs_every_session_out_and_waits_for_the_last(
        autojump_clock: trio.testing.MockClock) -> None:
    manager = SessionManager()
    ended: list[int] = []
    with trio.fail_after(DRAIN_GUARD):
        async with trio.open_nursery() as nursery:

            def shutdown_hook(conn_id: int, seconds: float) -> Callable[[], None]:
                """A session that takes ``seconds`` to log out once asked (the hook returns at
                once, as a relay's shutdown does)."""
                async def log_out() -> None:
                    await trio.sleep(seconds)
                    manager.unregister(conn_id)
                    manager.release(f"key-{conn_id}", conn_id)
                    ended.append(conn_id)

                def shutdown() -> None:
                    nursery.start_soon(log_out)
                return shutdown

            for conn_id, seconds in ((1, 3.0), (2, 1.0)):
                assert manager.claim(f"key-{conn_id}", "s", conn_id) is None
                manager.register(conn_id, shutdown_hook(conn_id, seconds))
            assert manager.live_sessions == 2
            start = trio.current_time()
            await manager.drain()
            assert trio.current_time() - start == pytest.approx(3.0)
    assert manager.draining
    assert ended == [2, 1]
    assert manager.live_sessions == 0


async def test_drain_waits_for_a_connection_still_opening_tls(
        autojump_clock: trio.testing.MockClock) -> None:
    manager = SessionManager()
    with trio.fail_after(DRAIN_GUARD):
        await manager.drain()  # nothing live: returns at once
        assert manager.claim(KEY, "nr", 1) is None  # claimed, not yet logged on
        async with trio.open_nursery() as nursery:

            async def give_up_after_tls() -> None:
                await trio.sleep(2.0)
                manager.release(KEY, 1)

            nursery.start_soon(give_up_after_tls)
            start = trio.current_time()
            await manager.drain()
            assert trio.current_time() - start == pytest.approx(2.0)
    # The caller bounds the wait for a session that never ends.
    manager.register(2, lambda: None)
    with trio.move_on_after(5.0) as bounded:
        await manager.drain()
    assert bounded.cancelled_caught


_CLOSED_COUNTS = re.compile(r"this connection: engine->gateway (\d+) messages, (\d+) bytes, "
                            r"gateway->engine (\d+) messages, (\d+) bytes")


async def test_a_closed_session_reports_its_own_connections_counts(
        e2e_material: E2EMaterial, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fixproxy.relay")
    async with open_proxy_pair(e2e_material) as pair:
        for closes, orders in enumerate((2, 0), start=1):
            engine = await pair.connect_engine()
            answer = await engine.logon()
            assert answer is not None and answer.msg_type == tags.MT_LOGON
            for _ in range(orders):
                await engine.new_order()
                await engine.receive_type(tags.MT_EXECUTION_REPORT)
            await engine.logout()
            assert await engine.receive() is None
            await engine.aclose()
            # Logged as the relay's thread ends, after the engine saw the close.
            while sum("session closed" in r.getMessage() for r in caplog.records) < closes:
                await trio.testing.wait_all_tasks_blocked(0.01)
    closed = [_CLOSED_COUNTS.search(r.getMessage()) for r in caplog.records
              if "session closed" in r.getMessage()]
    assert len(closed) == 2 and all(closed)
    first, second = ([int(n) for n in match.groups()] for match in closed if match)
    # The same Logon and Logout each time: the first connection's extra counts are its two
    # orders and their two ExecutionReports, not the second's included in the session totals.
    assert first[0] - second[0] == 2 and first[2] - second[2] == 2
    assert first[1] > second[1] > 0 and first[3] > second[3] > 0
