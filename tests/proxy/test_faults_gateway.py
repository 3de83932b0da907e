"""The fault matrix, gateway side: what the engine, the gateway and the metrics see when Kalshi's
end fails (docs/faults.md).

Each test drives one fault and checks the three views: the engine's (a Logout whose Text says
what happened, or the gateway's own Logout passed through, then a close), the simulator's (what
reached it, and how its connection ended) and fixproxy's metrics; and that what either side sent
before the fault was delivered, in order, or its sender saw the connection end. Real sockets and
TLS where the fault lives in the transport; memory streams on the autojump clock where it takes
time (silence, unanswered Logouts, backoff).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing
from cryptography import x509
from prometheus_client import generate_latest
from support.e2e import E2EMaterial, ProxyPair, check_frame, open_proxy_pair
from support.faults import (
    FakeBehaviour,
    GatewayByHand,
    StallableStream,
    full_backlog_listener,
    log_on,
    logon_fields,
    open_fake_gateway,
    open_memory_proxy,
    pin_only,
    read_to_close,
    received_raw,
    sent_raw,
    serving,
    text_of,
    wait_for_sample,
)
from support.relay import socket_stream_pair

from fixproxy.errors import ConfigError
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, utc_timestamp
from fixproxy.proxy.admit import relay_engine_connection
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.relay import CLOSE_TIMEOUT
from fixproxy.session.backoff import LogonBackoff
from fixproxy.session.schedule import ALL_DAYS, MaintenanceSchedule
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import DropStyle, SimFaults

HEART_BT_INT: Final = 30
GRACE: Final = 5.0
SILENCE: Final = 2 * HEART_BT_INT + GRACE
"""Seconds of gateway silence after which fixproxy gives up: 2 x HeartBtInt + grace."""
VIRTUAL_BOUND: Final = 600.0
"""Virtual seconds any autojump test may take."""
QUICK: Final = 1.5
"""Wall seconds within which fixproxy must react to a transport event (it is immediate)."""


async def order_and_report(engine: ScriptedEngine) -> None:
    cl_ord_id = await engine.new_order()
    report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
    assert report.get(11) == cl_ord_id


# --- the gateway ends the connection mid-stream -------------------------------------------------


@pytest.mark.parametrize("style", ["close", "close_notify", "reset"])
async def test_gateway_closes_mid_stream(e2e_material: E2EMaterial, style: DropStyle) -> None:
    faults = SimFaults(drop_after_messages=3, drop_style=style)
    async with open_proxy_pair(e2e_material, faults=faults) as pair:
        engine = await log_on(pair)
        await order_and_report(engine)
        await order_and_report(engine)
        await engine.new_order()  # the simulator drops the connection on this one
        started = trio.current_time()
        messages = await read_to_close(engine)
        assert trio.current_time() - started < QUICK

        # The engine: one Logout saying why, numbered after the gateway's last message (the
        # Logon answer 1 and two reports), then the close.
        assert [m.msg_type for m in messages] == [tags.MT_LOGOUT]
        logout = messages[0]
        assert text_of(logout) == ("fixproxy: the Kalshi gateway closed the connection without "
                                "a Logout")
        assert logout.get(tags.MSG_SEQ_NUM) == b"4"
        check_frame(received_raw(engine)[-1])

        # The gateway: every order the engine sent, in order, byte for byte; the third one was
        # the last thing it read before dropping the connection.
        conn = pair.sim_logon_conn()
        reason = await pair.sim.wait_closed(conn)
        assert reason.startswith("fault: dropped after 3 messages")
        assert [e.raw for e in pair.sim_events(conn, direction="in", msg_type=b"D")] \
            == sent_raw(engine, b"D")
        assert pair.sim_events(conn, direction="in", msg_type=tags.MT_LOGOUT) == []

        await wait_for_sample(pair, 1, "fixproxy_logouts_total", initiator="gateway",
                              reason="other")
        assert pair.sample("fixproxy_session_up") == 0
        assert pair.sample("fixproxy_logons_total", result="accepted") == 1
        assert pair.sample("fixproxy_messages_total", direction="engine_to_gateway",
                           msg_type="D") == 3
        assert pair.sample("fixproxy_messages_total", direction="gateway_to_engine",
                           msg_type="8") == 2


@pytest.mark.parametrize("style", ["close", "close_notify", "reset"])
async def test_gateway_answers_sent_before_its_close_reach_the_engine(
        e2e_material: E2EMaterial, style: DropStyle) -> None:
    # Five orders in one write; the simulator answers four and drops on the fifth, writing the
    # four reports and closing at once. Each report must reach the engine before the Logout.
    faults = SimFaults(drop_after_messages=5, drop_style=style)
    async with open_proxy_pair(e2e_material, faults=faults) as pair:
        engine = await log_on(pair)
        orders = [engine.build(b"D", [(11, f"burst-{n}"), (38, 1), (40, 2), (44, 50),
                                      (54, 1), (55, "HIGHNY-23DEC31"), (59, 1),
                                      (60, utc_timestamp())]) for n in range(5)]
        started = trio.current_time()
        await engine.send_raw(b"".join(orders))
        messages = await read_to_close(engine)
        assert trio.current_time() - started < QUICK

        assert [m.msg_type for m in messages] == [b"8"] * 4 + [tags.MT_LOGOUT]
        assert [m.get(11) for m in messages[:4]] == [b"burst-%d" % n for n in range(4)]
        sim_reports = [e.raw for e in pair.sim_events(direction="out", msg_type=b"8")]
        assert received_raw(engine, b"8") == sim_reports  # byte for byte
        assert "closed the connection without a Logout" in text_of(messages[-1])
        assert messages[-1].get(tags.MSG_SEQ_NUM) == b"6"
        assert [e.raw for e in pair.sim_events(direction="in", msg_type=b"D")] == orders


async def test_gateway_cuts_a_message_in_half_then_closes(e2e_material: E2EMaterial) -> None:
    faults = SimFaults(drop_after_messages=2, drop_style="truncate")
    async with open_proxy_pair(e2e_material, faults=faults) as pair:
        engine = await log_on(pair)
        await order_and_report(engine)
        started = trio.current_time()
        await engine.new_order()  # answered with half an ExecutionReport, then the close
        messages = await read_to_close(engine)
        assert trio.current_time() - started < QUICK

        # The half message is never forwarded: the engine's strict framer would have failed.
        assert [m.msg_type for m in messages] == [tags.MT_LOGOUT]
        assert text_of(messages[0]).startswith(
            "fixproxy: the Kalshi gateway sent invalid FIX: stream ended inside a message (")
        assert messages[0].get(tags.MSG_SEQ_NUM) == b"3"  # after the one whole report (34=2)
        assert len(received_raw(engine, b"8")) == 1
        conn = pair.sim_logon_conn()
        assert await pair.sim.wait_closed(conn) == "fault: dropped after 2 messages (truncate)"
        assert len(pair.sim_events(conn, direction="out", msg_type=b"8")) == 2
        await wait_for_sample(pair, 1, "fixproxy_logouts_total", initiator="gateway",
                              reason="other")
        assert pair.sample("fixproxy_session_up") == 0


# --- the gateway goes silent, or logs out -----------------------------------------------------


async def test_gateway_goes_silent(autojump_clock: trio.testing.MockClock,
                                   e2e_material: E2EMaterial) -> None:
    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material, faults=SimFaults(silent_after_messages=1),
                                     session_overrides={"liveness_grace": GRACE}) as proxy:
            engine, relay_done = proxy.connect_engine()
            answer = await engine.logon(heart_bt_int=HEART_BT_INT)
            assert answer is not None and answer.msg_type == tags.MT_LOGON
            await engine.new_order()  # the simulator reads it and never answers anything again
            last_heard = trio.current_time()

            async def heartbeat() -> None:  # the engine stays lively: only the gateway is silent
                while True:
                    await trio.sleep(HEART_BT_INT)
                    await engine.send(tags.MT_HEARTBEAT)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(heartbeat)
                messages = await read_to_close(engine)
                nursery.cancel_scope.cancel()
            waited = trio.current_time() - last_heard

            assert SILENCE - 1 <= waited <= SILENCE + 1
            assert [m.msg_type for m in messages] == [tags.MT_LOGOUT]
            assert "gateway sent nothing for longer than 2 x HeartBtInt + grace" \
                in text_of(messages[0])
            assert messages[0].get(tags.MSG_SEQ_NUM) == b"2"
            # The gateway was told too, numbered after the engine's order and two heartbeats.
            logouts = proxy.sim_in(tags.MT_LOGOUT)
            assert [FixMessage.parse(raw).get(tags.MSG_SEQ_NUM) for raw in logouts] == [b"5"]
            assert len(proxy.sim_in(b"D")) == 1 and len(proxy.sim_in(tags.MT_HEARTBEAT)) == 2
            await relay_done.wait()
            assert await proxy.sim.wait_closed(1) == "peer logged out"
            assert proxy.sample("fixproxy_heartbeat_timeouts_total") == 1
            assert proxy.sample("fixproxy_logouts_total", initiator="proxy",
                                reason="heartbeat_timeout") == 1
            assert proxy.sample("fixproxy_session_up") == 0


async def test_gateway_logout_is_passed_through_and_answered(e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material, faults=SimFaults(logout_after_messages=1)) as pair:
        engine = await log_on(pair)
        await engine.new_order()
        report = await engine.receive_type(b"8")
        logout = await engine.receive_type(tags.MT_LOGOUT)
        assert report.get(11) == b"demo-1"
        assert text_of(logout) == "sim: logout after 1 messages"
        conn = pair.sim_logon_conn()
        sim_logout = pair.sim_events(conn, direction="out", msg_type=tags.MT_LOGOUT)
        assert received_raw(engine)[-1] == sim_logout[0].raw  # byte for byte
        started = trio.current_time()
        answer = await engine.send(tags.MT_LOGOUT)
        assert await engine.receive() is None
        assert trio.current_time() - started < QUICK
        assert await pair.sim.wait_closed(conn) == "logged out at the simulator's request"
        assert [e.raw for e in pair.sim_events(conn, direction="in",
                                               msg_type=tags.MT_LOGOUT)] == [answer]
        await wait_for_sample(pair, 1, "fixproxy_logouts_total", initiator="gateway",
                              reason="other")


async def test_gateway_logout_unanswered_by_the_engine(autojump_clock: trio.testing.MockClock,
                                                       e2e_material: E2EMaterial) -> None:
    logout_wait = 2.0
    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material, faults=SimFaults(logout_after_messages=1),
                                     session_overrides={"logout_wait": logout_wait}) as proxy:
            engine, relay_done = proxy.connect_engine()
            assert (await engine.logon()) is not None
            await engine.new_order()
            started = trio.current_time()
            messages = await read_to_close(engine)  # the engine never answers the Logout
            assert logout_wait - 0.1 <= trio.current_time() - started <= logout_wait + 0.5
            assert [m.msg_type for m in messages] == [b"8", tags.MT_LOGOUT]
            assert text_of(messages[1]) == "sim: logout after 1 messages"
            await relay_done.wait()
            assert await proxy.sim.wait_closed(1) == "peer closed the connection"
            assert proxy.sim_in(tags.MT_LOGOUT) == []
            assert proxy.sample("fixproxy_logouts_total", initiator="gateway",
                                reason="other") == 1


# --- TLS and TCP: the connection to the gateway cannot be made ---------------------------------


async def refused_logon(pair: ProxyPair) -> tuple[ScriptedEngine, FixMessage, float]:
    """Log on through a session whose upstream fails; returns the engine, the local Logout and
    the seconds it took."""
    engine = await pair.connect_engine()
    started = trio.current_time()
    answer = await engine.logon()
    waited = trio.current_time() - started
    assert answer is not None and answer.msg_type == tags.MT_LOGOUT, answer
    check_frame(received_raw(engine)[-1])
    assert answer.get(tags.MSG_SEQ_NUM) == b"1"
    assert answer.get(tags.SENDER_COMP_ID) == b"KalshiNR"
    assert await engine.receive() is None
    assert pair.sample("fixproxy_logons_total", result="refused_locally") == 1
    assert pair.sample("fixproxy_session_up") == 0
    return engine, answer, waited


async def assert_next_attempt_held(pair: ProxyPair) -> None:
    """A refusal upstream counts against the key: an immediate retry is held locally."""
    engine = await pair.connect_engine()
    held = await engine.logon()
    assert held is not None and held.msg_type == tags.MT_LOGOUT
    assert "rate-limits Logons" in text_of(held)
    assert pair.sample("fixproxy_engine_connections_total", result="backoff") == 1


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("close", "the gateway closed the connection during the handshake"),
    ("not_tls", "wrong version number (the port does not seem to speak TLS)"),
], ids=["closes after the ClientHello", "answers in plain text"])
async def test_tls_handshake_fails(e2e_material: E2EMaterial, behaviour: FakeBehaviour,
                                   reason: str) -> None:
    async with open_fake_gateway(behaviour) as fake, \
            open_proxy_pair(e2e_material, gateway_port=fake.address[1]) as pair:
        _, logout, waited = await refused_logon(pair)
        assert waited < QUICK
        assert text_of(logout).startswith(
            f"fixproxy: fixproxy could not open TLS to the Kalshi gateway 127.0.0.1:"
            f"{fake.address[1]}: TLS handshake with 127.0.0.1:{fake.address[1]} (server_name "
            f"localhost) failed: ")
        assert reason in text_of(logout)
        assert pair.sample("fixproxy_upstream_connects_total", result="tls_error") == 1
        assert pair.sample("fixproxy_engine_connections_total", result="tls_error") == 1
        # The gateway saw at most a ClientHello: no FIX byte left fixproxy.
        await fake.wait_ended(1)
        assert len(fake.received) == 1
        assert fake.received[0][:1] == b"\x16"  # a TLS handshake record: the ClientHello
        assert b"8=FIXT" not in fake.received[0]
        await assert_next_attempt_held(pair)
        assert len(fake.received) == 1


@pytest.mark.parametrize("case", ["unrelated CA, pin mode", "unrelated CA, ca+pin",
                                  "same CA, other key"])
async def test_gateway_certificate_does_not_match(e2e_material: E2EMaterial, case: str) -> None:
    issuer = e2e_material.certs if case == "same CA, other key" else None
    impostor = generate_certificates("localhost", issuer=issuer)
    tls = pin_only(e2e_material) if case.endswith("pin mode") else e2e_material.tls_policy()
    async with open_proxy_pair(serving(e2e_material, impostor), tls=tls) as pair:
        _, logout, waited = await refused_logon(pair)
        assert waited < QUICK
        if case == "unrelated CA, ca+pin":
            # The chain fails before any pin is looked at.
            assert "certificate verify failed: unable to get local issuer certificate" \
                in text_of(logout)
            assert pair.sample("fixproxy_upstream_connects_total", result="tls_error") == 1
            assert pair.total("fixproxy_pin_mismatches") == 0
        else:
            assert "presented a certificate that matches none of the configured pins " \
                   f"(presented: {impostor.leaf_pin}" in text_of(logout)
            assert "fixproxy pin 127.0.0.1:" in text_of(logout)
            assert pair.sample("fixproxy_pin_mismatches_total") == 1
            assert pair.sample("fixproxy_upstream_connects_total", result="pin_mismatch") == 1
        # The handshake may have reached the simulator; no FIX byte did.
        assert not pair.sim.events
        assert pair.api_key not in pair.sim.last_logon


@pytest.mark.parametrize("verify", ["ca+pin", "pin"])
async def test_expired_gateway_certificate(e2e_material: E2EMaterial, verify: str) -> None:
    now = datetime.now(UTC)
    expired = generate_certificates("localhost", issuer=e2e_material.certs,
                                    not_before=now - timedelta(days=30),
                                    not_after=now - timedelta(days=1))
    served = serving(e2e_material, expired)
    tls = served.tls_policy() if verify == "ca+pin" else pin_only(served)
    async with open_proxy_pair(served, tls=tls) as pair:
        if verify == "ca+pin":
            _, logout, waited = await refused_logon(pair)
            assert waited < QUICK
            assert "certificate verify failed: certificate has expired" in text_of(logout)
            assert pair.sample("fixproxy_upstream_connects_total", result="tls_error") == 1
            assert not pair.sim.events
        else:
            # Pin mode trusts the pin, not dates (net/pins.py): the session works, and the expiry
            # metric, already in the past, is what alerts the operator.
            engine = await log_on(pair)
            await order_and_report(engine)
            leaf = x509.load_pem_x509_certificate(expired.leaf_cert_pem)
            expiry = pair.sample("fixproxy_certificate_expiry_timestamp_seconds",
                                 subject=leaf.subject.rfc4514_string())
            assert expiry == leaf.not_valid_after_utc.timestamp() < time.time()


@pytest.mark.parametrize("where", ["port closed", "backlog full", "handshake never answered"])
async def test_gateway_unreachable_or_slow_to_accept(e2e_material: E2EMaterial,
                                                     where: str) -> None:
    connect_timeout = 0.5
    overrides = {"connect_timeout": connect_timeout}
    async with open_fake_gateway("stall") as fake:
        with full_backlog_listener() as (backlog_port, _), trio.socket.socket() as closed:
            await closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
            port = {"port closed": closed.getsockname()[1], "backlog full": backlog_port,
                    "handshake never answered": fake.address[1]}[where]
            async with open_proxy_pair(e2e_material, gateway_port=port,
                                       session_overrides=overrides) as pair:
                _, logout, waited = await refused_logon(pair)
                peer = f"127.0.0.1:{port}"
                if where == "port closed":
                    assert waited < QUICK
                    assert f"cannot connect to {peer}: " in text_of(logout)
                    assert "Connection refused" in text_of(logout)
                    assert pair.sample("fixproxy_upstream_connects_total",
                                       result="refused") == 1
                else:
                    # Bounded by connect_timeout, whichever step stalls.
                    assert connect_timeout - 0.05 <= waited <= connect_timeout + QUICK
                    phase = "TCP connect" if where == "backlog full" else "TLS handshake"
                    assert f"no TLS session with {peer} within 0.5 s (stalled in the " \
                               f"{phase})" in text_of(logout)
                    assert pair.sample("fixproxy_upstream_connects_total",
                                       result="timeout") == 1
                await assert_next_attempt_held(pair)
    if where == "handshake never answered":
        assert len(fake.received) == 1 and fake.received[0][:1] == b"\x16"
        assert b"8=FIXT" not in fake.received[0]
    else:
        assert fake.received == []


# --- the gateway refuses the Logon ------------------------------------------------------------


@pytest.mark.parametrize("skew", [-40, 40])
async def test_engine_clock_skew_beyond_30_s(e2e_material: E2EMaterial,
                                            caplog: pytest.LogCaptureFixture, skew: int) -> None:
    caplog.set_level(logging.WARNING, logger="fixproxy.relay")
    async with open_proxy_pair(e2e_material) as pair:
        engine = await pair.connect_engine()
        logon = FixMessage.parse(engine.build(tags.MT_LOGON, logon_fields()))
        stamp = utc_timestamp(time.time() + skew)
        logon.set(tags.SENDING_TIME, stamp)
        started = trio.current_time()
        await engine.send_raw(logon.encode())
        messages = await read_to_close(engine)
        assert trio.current_time() - started < QUICK

        # fixproxy keeps (and signs) the engine's SendingTime; the simulator refuses it with a
        # Logout, which reaches the engine untouched.
        assert FixMessage.parse(pair.sim.last_logon[pair.api_key]).get(52) == stamp
        assert [m.msg_type for m in messages] == [tags.MT_LOGOUT]
        assert "SendingTime accuracy problem" in text_of(messages[0])
        assert "(limit 30 s)" in text_of(messages[0])
        refusal = pair.sim_events(direction="out", msg_type=tags.MT_LOGOUT)
        assert received_raw(engine) == [refusal[0].raw]
        assert pair.sample("fixproxy_logons_total", result="refused_by_gateway") == 1
        assert pair.sample("fixproxy_session_up") == 0
        await assert_next_attempt_held(pair)
        assert len(pair.sim_events(direction="in", msg_type=tags.MT_LOGON)) == 1
    logged = [r.getMessage() for r in caplog.records]
    warned = [float(match[1]) for m in logged
              if (match := re.search(r"SendingTime \(52\) is ([+-][0-9.]+) s off", m))]
    assert len(warned) == 1 and abs(warned[0] - skew) < 2, logged
    assert any("synchronise it (NTP)" in m for m in logged), logged


async def test_clock_skew_answered_with_reject_373_10(autojump_clock: trio.testing.MockClock,
                                                      e2e_material: E2EMaterial,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Kalshi documents a Reject (35=3, 373=10) for a SendingTime over 30 s off. A Logon
    answered that way: the Reject reaches the engine, then fixproxy's Logout, then the close."""
    caplog.set_level(logging.WARNING, logger="fixproxy.relay")
    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material) as proxy:
            gateway = GatewayByHand(proxy.api_key)
            runtime = dataclasses.replace(proxy.runtime, connect=gateway.connect)
            proxy_end, engine_end = socket_stream_pair()
            relay_done = trio.Event()

            async def relay() -> None:
                await relay_engine_connection(proxy_end, runtime)
                relay_done.set()

            proxy.nursery.start_soon(relay)
            engine = ScriptedEngine(engine_end, sender=proxy.api_key, target="KalshiNR")
            logon = FixMessage.parse(engine.build(tags.MT_LOGON, logon_fields()))
            logon.set(tags.SENDING_TIME, utc_timestamp(time.time() - 40))
            await engine.send_raw(logon.encode())
            signed = await gateway.receive()
            assert signed.msg_type == tags.MT_LOGON
            reject = await gateway.send(b"3", [(45, 1), (372, "A"), (373, 10),
                                               (58, "SendingTime accuracy problem")])
            messages = await read_to_close(engine)
            assert [m.msg_type for m in messages] == [b"3", tags.MT_LOGOUT]
            assert received_raw(engine)[0] == reject  # byte for byte
            assert text_of(messages[1]) == "fixproxy: the gateway answered the Logon with 35=3"
            assert messages[1].get(tags.MSG_SEQ_NUM) == b"2"
            # Never logged on, so the gateway gets no Logout: only the close.
            assert await gateway.receive_raw() is None
            await relay_done.wait()
            assert proxy.sample("fixproxy_logons_total", result="refused_by_gateway") == 1
            assert proxy.sample("fixproxy_session_up") == 0
    assert any("synchronise it (NTP)" in r.getMessage() for r in caplog.records)


# --- Kalshi's maintenance window -------------------------------------------------------------


async def test_maintenance_window_starts_mid_session(e2e_material: E2EMaterial) -> None:
    manager = SessionManager(None, LogonBackoff())
    # Kalshi drops sessions during its window; here on the third order.
    async with open_proxy_pair(e2e_material, manager=manager,
                               faults=SimFaults(drop_after_messages=3)) as pair:
        engine = await log_on(pair)
        await order_and_report(engine)
        assert b"fixproxy_maintenance_active 0.0" in generate_latest(pair.metrics.registry)

        now = datetime.now(UTC)
        manager.maintenance = MaintenanceSchedule(
            days=ALL_DAYS, start=(now - timedelta(minutes=1)).time(),
            end=(now + timedelta(hours=1)).time(), timezone=ZoneInfo("UTC"))
        assert b"fixproxy_maintenance_active 1.0" in generate_latest(pair.metrics.registry)
        # fixproxy does not end a session at the window's start: cancels still work during a
        # trading pause, so the session is Kalshi's to drop.
        await order_and_report(engine)
        await engine.new_order()
        messages = await read_to_close(engine)
        assert [m.msg_type for m in messages] == [tags.MT_LOGOUT]
        assert "closed the connection without a Logout" in text_of(messages[0])
        # The disconnect is labelled as expected.
        await wait_for_sample(pair, 1, "fixproxy_logouts_total", initiator="gateway",
                              reason="maintenance")
        assert pair.sample("fixproxy_logouts_total", initiator="gateway", reason="other") \
            is None

        # Reconnecting during the window is answered locally, with the window's end.
        again = await pair.connect_engine()
        answer = await again.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        assert "maintenance window is in progress until" in text_of(answer)
        assert pair.sample("fixproxy_engine_connections_total", result="maintenance") == 1
        assert len(pair.sim_events(direction="in", msg_type=tags.MT_LOGON)) == 1


# --- a gateway that neither reads nor writes --------------------------------------------------


async def test_gateway_dead_with_a_full_window(autojump_clock: trio.testing.MockClock,
                                               e2e_material: E2EMaterial) -> None:
    """The gateway's host vanished: nothing comes back and nothing more can be written (the TCP
    window is full). Silence must still end the session within 2 x HeartBtInt + grace, plus
    the close bound, however many writes are stuck."""
    upstream: list[StallableStream] = []

    def stall_later(stream: trio.abc.Stream) -> trio.abc.Stream:
        upstream.append(StallableStream(stream))
        return upstream[-1]

    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material, faults=SimFaults(silent_after_messages=1),
                                     gateway_wrapper=stall_later) as proxy:
            engine, relay_done = proxy.connect_engine()
            assert (await engine.logon(heart_bt_int=HEART_BT_INT)) is not None
            answered = trio.current_time()
            await engine.new_order()
            await proxy.sim.wait_for_messages(b"D")
            upstream[0].stalled = True  # from here on, writes to the gateway never complete
            await engine.new_order()
            messages = await read_to_close(engine)
            # Silence, then at most one bounded write of fixproxy's Logout and the bounded close.
            assert trio.current_time() - answered <= SILENCE + 2 * CLOSE_TIMEOUT + 1
            assert messages[-1].msg_type == tags.MT_LOGOUT
            assert "gateway sent nothing" in text_of(messages[-1])
            await relay_done.wait()
            assert upstream[0].stalled_reads >= 1  # the second order never got out
            assert proxy.sample("fixproxy_heartbeat_timeouts_total") == 1


async def test_gateway_closes_without_answering_the_logon(
        autojump_clock: trio.testing.MockClock, e2e_material: E2EMaterial) -> None:
    """Kalshi dropping the connection instead of answering a Logon (a key not enabled for the
    endpoint, a rate limit) is a failed attempt: the engine is told, and an immediate retry is
    held locally like any other refusal."""
    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material) as proxy:
            gateway = GatewayByHand(proxy.api_key)
            runtime = dataclasses.replace(proxy.runtime, connect=gateway.connect)
            attempts = 0

            async def attempt() -> FixMessage | None:
                nonlocal attempts
                attempts += 1
                proxy_end, engine_end = socket_stream_pair()
                proxy.start_relay(proxy_end, runtime)
                engine = ScriptedEngine(engine_end, sender=proxy.api_key, target="KalshiNR")
                return await engine.logon()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(gateway.close_after_logon)
                first = await attempt()
            assert first is not None and first.msg_type == tags.MT_LOGOUT
            assert "closed the connection without answering the Logon" in text_of(first)
            assert proxy.sample("fixproxy_logons_total", result="no_answer") == 1
            second = await attempt()
            assert second is not None and "rate-limits Logons" in text_of(second)
            assert gateway.connects == 1


# --- the simulator's fault knobs themselves ------------------------------------------------------


def test_fault_knobs_refuse_nonsense(e2e_material: E2EMaterial) -> None:
    with pytest.raises(ConfigError, match=r"faults\.drop_style"):
        SimFaults(drop_style="vanish")  # type: ignore[arg-type]  # the point of the test
    no_key = dataclasses.replace(e2e_material.certs, ca_key_pem=None)
    with pytest.raises(ConfigError, match="carries no CA key"):
        generate_certificates("localhost", issuer=no_key)
    sibling = generate_certificates("localhost", issuer=e2e_material.certs)
    assert sibling.ca_cert_pem == e2e_material.certs.ca_cert_pem
    assert sibling.leaf_pin != e2e_material.certs.leaf_pin


def test_the_matrix_names_every_fault_test() -> None:
    """docs/faults.md and the fault tests stay in step: every test named there exists, and
    every fault test is in the table."""
    tests_dir = Path(__file__).parent.parent
    doc = (tests_dir.parent / "docs" / "faults.md").read_text()
    ours = ("proxy/test_faults_gateway.py", "proxy/test_faults_engine.py")
    defined = {name: re.findall(r"^(?:async )?def (test_\w+)\(", (tests_dir / name).read_text(),
                                re.MULTILINE) for name in ours}
    for module, test in re.findall(r"tests/((?:\w+/)*test_\w+\.py)::(test_\w+)", doc):
        assert re.search(rf"^(?:async )?def {test}\(", (tests_dir / module).read_text(),
                         re.MULTILINE), f"{module}::{test}"
    named = set(re.findall(r"`(test_\w+)", doc))
    mine = {test for tests in defined.values() for test in tests}
    assert named - mine <= {test for _, test in re.findall(r"(test_\w+\.py)::(test_\w+)", doc)}
    not_faults = {"test_fault_knobs_refuse_nonsense", "test_the_matrix_names_every_fault_test"}
    assert mine - not_faults <= named, sorted(mine - not_faults - named)
