"""fixproxy end to end: a scripted engine, fixproxy and the strict simulated gateway on loopback.

Each test starts its own simulator and proxy (:func:`e2e_support.open_proxy_pair`), drives a
plain-TCP engine through the proxy and checks three views of the same session: what the engine
received, what the simulator recorded, and fixproxy's metrics.
"""

from __future__ import annotations

import base64
import gc
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from support.e2e import (
    API_KEY,
    E2EMaterial,
    ProxyPair,
    check_frame,
    last_received,
    open_proxy_pair,
    sent_of_type,
)

from fixproxy.fix import tags
from fixproxy.fix.codec import FieldValue, FixMessage, utc_timestamp
from fixproxy.signing import verify_signature
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimFaults

OTHER_KEY = "0d9c8b7a-6f5e-4d3c-8b2a-1f0e9d8c7b6a"
"""A well-formed API key that is not the session's."""
WRONG_PIN = "sha256/" + base64.b64encode(bytes(range(32))).decode()
ORDERS = 50


def logon_fields(*, heart_bt_int: int = 30,
                 reset: bool | None = None) -> list[tuple[int, FieldValue]]:
    """The body of an unsigned engine Logon, as a legacy engine writes it."""
    fields: list[tuple[int, FieldValue]] = [(tags.ENCRYPT_METHOD, 0),
                                            (tags.HEART_BT_INT, heart_bt_int)]
    if reset is not None:
        fields.append((tags.RESET_SEQ_NUM_FLAG, b"Y" if reset else b"N"))
    fields.append((tags.DEFAULT_APPL_VER_ID, 9))
    return fields


def order_fields(cl_ord_id: str) -> list[tuple[int, FieldValue]]:
    return [(11, cl_ord_id), (38, 10), (40, 2), (44, 50), (54, 1), (55, "HIGHNY-23DEC31"),
            (59, 1), (60, utc_timestamp())]


async def log_on(pair: ProxyPair, **kwargs: Any) -> ScriptedEngine:
    """Connect an engine and log it on; fails the test unless the gateway accepts."""
    engine = await pair.connect_engine()
    answer = await engine.logon(**kwargs)
    assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
    return engine


@dataclass(frozen=True, slots=True)
class RoundTrip:
    engine: ScriptedEngine
    cl_ord_ids: list[bytes]
    reports: list[FixMessage]
    logout_answer: FixMessage | None
    after_logout: FixMessage | None


async def round_trip(pair: ProxyPair, orders: int = ORDERS) -> RoundTrip:
    """Log on, send ``orders`` NewOrderSingles back to back, read their reports, log out."""
    engine = await log_on(pair)
    cl_ord_ids = [await engine.new_order() for _ in range(orders)]
    reports = [await engine.receive_type(tags.MT_EXECUTION_REPORT) for _ in range(orders)]
    logout_answer = await engine.logout()
    after_logout = await engine.receive()
    return RoundTrip(engine, cl_ord_ids, reports, logout_answer, after_logout)


# --- 1. orders ------------------------------------------------------------------------------


async def test_orders_round_trip_in_order_byte_for_byte(e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        run = await round_trip(pair)

        assert [report.get(11) for report in run.reports] == run.cl_ord_ids
        assert all(report.get(150) == b"0" for report in run.reports)
        assert run.logout_answer is not None and run.logout_answer.msg_type == tags.MT_LOGOUT
        assert run.after_logout is None, "the connection stays open after the Logout exchange"

        conn = pair.sim_logon_conn()
        sim_orders = [e.raw for e in pair.sim_events(conn, direction="in",
                                                      msg_type=tags.MT_NEW_ORDER_SINGLE)]
        assert sim_orders == sent_of_type(run.engine, tags.MT_NEW_ORDER_SINGLE)
        assert len(sim_orders) == ORDERS
        assert pair.sim.message_count(tags.MT_LOGOUT, "in") == 1

        assert pair.sample("fixproxy_messages_total", direction="engine_to_gateway",
                           msg_type="D") == ORDERS
        assert pair.sample("fixproxy_messages_total", direction="gateway_to_engine",
                           msg_type="8") == ORDERS
        assert pair.sample("fixproxy_logons_total", result="accepted") == 1
        assert pair.sample("fixproxy_engine_connections_total", result="ok") == 1
        assert pair.sample("fixproxy_upstream_connects_total", result="ok") == 1
        # What went to the gateway is what the simulator received (the signed Logon included);
        # what went to the engine is what the engine received (the Logon answer as stripped).
        to_gateway = sum(len(e.raw) for e in pair.sim_events(conn, direction="in"))
        to_engine = sum(len(raw) for direction, raw in run.engine.transcript
                        if direction == "received")
        assert pair.sample("fixproxy_bytes_total", direction="engine_to_gateway") == to_gateway
        assert pair.sample("fixproxy_bytes_total", direction="gateway_to_engine") == to_engine
        assert pair.sample("fixproxy_session_up") == 0


# --- 2. the Logon rewrite -----------------------------------------------------------------


async def test_logon_is_signed_and_forced_reset_is_hidden_from_engine(
        e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON

        engine_logon = FixMessage.parse(sent_of_type(engine, tags.MT_LOGON)[0])
        assert engine_logon.get(tags.RESET_SEQ_NUM_FLAG) is None
        assert engine_logon.get(tags.RAW_DATA) is None

        signed = FixMessage.parse(pair.sim.last_logon[pair.api_key])
        assert signed.get(tags.RESET_SEQ_NUM_FLAG) == b"Y"
        assert signed.get(tags.DEFAULT_APPL_VER_ID) == b"9"
        assert signed.get(tags.SENDING_TIME) == engine_logon.get(tags.SENDING_TIME)
        signature = signed.get(tags.RAW_DATA)
        assert signature is not None
        assert signed.get(tags.RAW_DATA_LENGTH) == b"%d" % len(signature)
        payload = b"\x01".join(signed.get(tag) or b"" for tag in (
            tags.SENDING_TIME, tags.MSG_TYPE, tags.MSG_SEQ_NUM, tags.SENDER_COMP_ID,
            tags.TARGET_COMP_ID))
        assert payload.split(b"\x01")[1:] == [b"A", b"1", pair.api_key.encode(), b"KalshiNR"]
        assert verify_signature(e2e_material.public_key, payload, signature)

        # The simulator answered with 141=Y; fixproxy removed it because it forced the reset.
        sim_answer = pair.sim_events(pair.sim_logon_conn(), direction="out",
                                     msg_type=tags.MT_LOGON)
        assert FixMessage.parse(sim_answer[0].raw).get(tags.RESET_SEQ_NUM_FLAG) == b"Y"
        assert answer.get(tags.RESET_SEQ_NUM_FLAG) is None
        check_frame(last_received(engine))


async def test_engine_requested_reset_is_answered_with_reset(e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon(reset=True)
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        assert answer.get(tags.RESET_SEQ_NUM_FLAG) == b"Y"
        sim_answer = pair.sim_events(direction="out", msg_type=tags.MT_LOGON)[0].raw
        assert last_received(engine) == sim_answer, "an unchanged answer is relayed as sent"


# --- 3. local refusals --------------------------------------------------------------------


Act = Callable[[ProxyPair], Awaitable[ScriptedEngine]]


async def _wrong_target(pair: ProxyPair) -> ScriptedEngine:
    engine = await pair.connect_engine(target="KalshiRT")
    await engine.send(tags.MT_LOGON, logon_fields())
    return engine


async def _wrong_sender(pair: ProxyPair) -> ScriptedEngine:
    engine = await pair.connect_engine(sender=OTHER_KEY)
    await engine.send(tags.MT_LOGON, logon_fields())
    return engine


async def _short_heartbeat(pair: ProxyPair) -> ScriptedEngine:
    engine = await pair.connect_engine()
    await engine.send(tags.MT_LOGON, logon_fields(heart_bt_int=2))
    return engine


async def _sequence_not_reset(pair: ProxyPair) -> ScriptedEngine:
    engine = await pair.connect_engine(first_seq=7)
    await engine.send(tags.MT_LOGON, logon_fields())
    return engine


async def _order_first(pair: ProxyPair) -> ScriptedEngine:
    engine = await pair.connect_engine()
    await engine.new_order()
    return engine


async def _http_request(pair: ProxyPair) -> ScriptedEngine:
    engine = await pair.connect_engine()
    await engine.send_raw(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
    return engine


async def _tls_client_hello(pair: ProxyPair) -> ScriptedEngine:
    engine = await pair.connect_engine()
    # A TLS record header (handshake, TLS 1.0 record version) and a ClientHello's start.
    await engine.send_raw(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(range(32)))
    return engine


async def _silent(pair: ProxyPair) -> ScriptedEngine:
    return await pair.connect_engine()


@dataclass(frozen=True, slots=True)
class Refusal:
    act: Act
    texts: tuple[str, ...]
    """Substrings the Logout's Text (58) must contain."""
    result: str
    """The engine_connections result label."""
    logon_refused: bool
    """A Logon (or a message in its place) was refused, so logons{refused_locally} counts."""
    overrides: tuple[tuple[str, Any], ...] = ()


REFUSALS = {
    "wrong TargetCompID": Refusal(
        _wrong_target, ("TargetCompID (56)", "'KalshiRT'", "'KalshiNR'"), "invalid_logon",
        logon_refused=True),
    "wrong SenderCompID": Refusal(
        _wrong_sender, ("SenderCompID (49)", repr(OTHER_KEY), f"expected {API_KEY!r}"),
        "invalid_logon", logon_refused=True),
    "HeartBtInt 2": Refusal(
        _short_heartbeat, ("HeartBtInt (108)", "'2'", "4..3600"), "invalid_logon",
        logon_refused=True),
    "MsgSeqNum 7 without reset, translation off": Refusal(
        _sequence_not_reset, ("MsgSeqNum (34)", "is 7", "expected 1", "ResetOnLogon",
                              "translate_sequence"),
        "invalid_logon", logon_refused=True, overrides=(("translate_sequence", False),)),
    "order before Logon": Refusal(
        _order_first, ("35=A", "35=D"), "invalid_logon", logon_refused=True),
    "HTTP request": Refusal(_http_request, ("HTTP",), "framing_error", logon_refused=False),
    "TLS ClientHello": Refusal(
        _tls_client_hello, ("TLS handshake", "turn TLS off"), "framing_error",
        logon_refused=False),
    "no Logon in time": Refusal(
        _silent, ("no Logon received within 0.5 s", "35=A"), "no_logon", logon_refused=False,
        overrides=(("logon_timeout", 0.5),)),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
async def test_local_refusal_is_a_logout_and_never_reaches_the_gateway(
        e2e_material: E2EMaterial, case: Refusal) -> None:
    async with open_proxy_pair(e2e_material, session_overrides=dict(case.overrides)) as pair:
        started = trio.current_time()
        engine = await case.act(pair)
        answer = await engine.receive()
        waited = trio.current_time() - started

        assert answer is not None and answer.msg_type == tags.MT_LOGOUT, answer
        check_frame(last_received(engine))
        text = answer.get_str(tags.TEXT) or ""
        assert text.startswith("fixproxy: ")
        for expected in case.texts:
            assert expected in text, (expected, text)
        # Addressed as the engine's counterparty, so the engine accepts it as a session message.
        assert answer.get(tags.SENDER_COMP_ID) == engine.target
        assert answer.get(tags.TARGET_COMP_ID) == engine.sender
        assert answer.get(tags.MSG_SEQ_NUM) == b"1"
        assert await engine.receive() is None, "fixproxy closes after its Logout"

        if dict(case.overrides).get("logon_timeout") is not None:
            assert waited >= 0.45, "the Logon timeout was not waited out"
        assert pair.sample("fixproxy_engine_connections_total", result=case.result) == 1
        assert pair.total("fixproxy_engine_connections") == 1
        if case.logon_refused:
            assert pair.sample("fixproxy_logons_total", result="refused_locally") == 1
        assert pair.total("fixproxy_logons") == (1 if case.logon_refused else 0)
        assert pair.total("fixproxy_upstream_connects") == 0
        assert not pair.sim.events and not pair.sim.closed, "the gateway saw the connection"


# --- 4. upstream failures -----------------------------------------------------------------


async def _refused_logon(pair: ProxyPair) -> str:
    """Log on and return the Text of the local Logout that answers, after checking its form."""
    engine = await pair.connect_engine()
    answer = await engine.logon()
    assert answer is not None and answer.msg_type == tags.MT_LOGOUT, answer
    check_frame(last_received(engine))
    assert answer.get(tags.SENDER_COMP_ID) == b"KalshiNR"
    assert answer.get(tags.TARGET_COMP_ID) == pair.api_key.encode()
    assert answer.get(tags.MSG_SEQ_NUM) == b"1"
    assert await engine.receive() is None
    assert pair.sample("fixproxy_logons_total", result="refused_locally") == 1
    return answer.get_str(tags.TEXT) or ""


async def test_shutdown_closes_an_engine_connection_still_awaiting_its_logon(
        e2e_material: E2EMaterial) -> None:
    """A connection cancelled by a shutdown while its Logon is half read is closed by
    fixproxy, not left to the garbage collector (which would keep the engine waiting and
    warn about an unclosed socket)."""
    async with open_proxy_pair(e2e_material) as pair:
        stream = await trio.open_tcp_stream(*pair.proxy)
        await stream.send_all(b"8=FIXT.1.1\x019=")
        await trio.testing.wait_all_tasks_blocked()
    # The proxy is gone: the engine sees the close, and no socket was left for collection.
    with trio.fail_after(5):
        assert await stream.receive_some(1) == b""
    await stream.aclose()
    gc.collect()


async def test_gateway_port_closed(e2e_material: E2EMaterial) -> None:
    # Bound but not listening: connecting is refused, and no other process can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as dead:
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        async with open_proxy_pair(e2e_material, gateway_port=dead_port) as pair:
            text = await _refused_logon(pair)
            assert "fixproxy could not open TLS to the Kalshi gateway" in text
            assert f"127.0.0.1:{dead_port}" in text
            assert pair.sample("fixproxy_upstream_connects_total", result="refused") == 1
            assert pair.sample("fixproxy_engine_connections_total", result="refused") == 1
            assert not pair.sim.events and not pair.sim.closed


async def test_pin_mismatch_sends_no_fix_bytes(e2e_material: E2EMaterial) -> None:
    tls = e2e_material.tls_policy(pins=(WRONG_PIN,))
    async with open_proxy_pair(e2e_material, tls=tls) as pair:
        text = await _refused_logon(pair)
        assert "pins" in text
        assert f"presented: {e2e_material.certs.leaf_pin}" in text
        assert pair.sample("fixproxy_pin_mismatches_total") == 1
        assert pair.sample("fixproxy_upstream_connects_total", result="pin_mismatch") == 1
        # The handshake reached the simulator, and then the connection closed with nothing on it.
        reason = await pair.sim.wait_closed(1)
        assert not pair.sim.events, (reason, list(pair.sim.events))
        assert pair.api_key not in pair.sim.last_logon


async def test_untrusted_gateway_certificate(e2e_material: E2EMaterial,
                                             tmp_path: Path) -> None:
    other_ca = generate_certificates("localhost").write(tmp_path / "other").ca_cert
    async with open_proxy_pair(e2e_material, tls=e2e_material.tls_policy(ca_file=other_ca)
                               ) as pair:
        text = await _refused_logon(pair)
        assert "fixproxy could not open TLS to the Kalshi gateway" in text
        assert "certificate verify failed" in text
        assert pair.sample("fixproxy_upstream_connects_total", result="tls_error") == 1
        assert pair.total("fixproxy_pin_mismatches") == 0
        assert not pair.sim.events


# --- 5. and 6. gateway refusals -----------------------------------------------------------


async def test_gateway_refusal_passes_through_untouched(e2e_material: E2EMaterial) -> None:
    faults = SimFaults(refuse_logon_text="sim says no")
    async with open_proxy_pair(e2e_material, faults=faults) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        assert answer.get_str(tags.TEXT) == "sim says no"
        sent_by_sim = pair.sim_events(direction="out")
        assert [event.msg_type for event in sent_by_sim] == [tags.MT_LOGOUT]
        assert last_received(engine) == sent_by_sim[0].raw
        assert await engine.receive() is None
        assert pair.sample("fixproxy_logons_total", result="refused_by_gateway") == 1
        assert pair.sample("fixproxy_logons_total", result="accepted") == 0
        assert pair.sample("fixproxy_session_up") == 0


async def test_duplicate_key_is_refused_locally_and_first_session_survives(
        e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        first = await log_on(pair)
        second = await pair.connect_engine()
        answer = await second.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        text = answer.get_str(tags.TEXT) or ""
        # Names the session holding the key, and since when, before Kalshi sees anything.
        assert f"already in use by session {pair.session.name!r}" in text, text
        assert " since 20" in text and "UTC" in text
        assert "one FIX connection per API key" in text
        assert await second.receive() is None
        assert len(pair.sim_events(msg_type=tags.MT_LOGON, direction="in")) == 1

        cl_ord_id = await first.new_order()
        report = await first.receive_type(tags.MT_EXECUTION_REPORT)
        assert report.get(11) == cl_ord_id
        assert pair.sim.live_sessions == {pair.api_key: "KalshiNR"}
        assert pair.sample("fixproxy_logons_total", result="accepted") == 1
        assert pair.sample("fixproxy_engine_connections_total", result="duplicate_key") == 1
        assert pair.sample("fixproxy_upstream_connects_total", result="duplicate_key") == 1
        assert pair.sample("fixproxy_session_up") == 1


async def test_engine_that_kept_its_numbers_is_translated(e2e_material: E2EMaterial) -> None:
    # KalshiNR forces 141=Y; an engine logging on with 34=7 (its store kept the numbers) is
    # renumbered instead of refused: Kalshi sees 1, 2, ...; the engine keeps seeing its own.
    async with open_proxy_pair(e2e_material) as pair:
        engine = await pair.connect_engine(first_seq=7)
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
        assert answer.get(tags.RESET_SEQ_NUM_FLAG) is None
        assert answer.get(34) == b"1"  # no saved state: the engine's inbound starts at 1
        signed = FixMessage.parse(pair.sim.last_logon[pair.api_key])
        assert signed.get(34) == b"1"
        assert signed.get(tags.RESET_SEQ_NUM_FLAG) == b"Y"
        cl_ord_id = await engine.new_order()  # the engine's 34=8
        report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
        assert report.get(11) == cl_ord_id
        assert report.get(34) == b"2"
        orders = pair.sim_events(direction="in", msg_type=tags.MT_NEW_ORDER_SINGLE)
        assert FixMessage.parse(orders[0].raw).get(34) == b"2"
        check_frame(orders[0].raw)
        logout = await engine.logout()  # the engine's 34=9, Kalshi's 3
        assert logout is not None and logout.get(34) == b"3"
        logouts = pair.sim_events(direction="in", msg_type=tags.MT_LOGOUT)
        assert FixMessage.parse(logouts[0].raw).get(34) == b"3"


# --- 7. and 8. one side goes away ---------------------------------------------------------


async def test_gateway_drop_is_explained_to_the_engine(e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material, faults=SimFaults(drop_after_messages=3)) as pair:
        engine = await log_on(pair)
        for _ in range(2):
            cl_ord_id = await engine.new_order()
            report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
            assert report.get(11) == cl_ord_id
        await engine.new_order()
        logout = await engine.receive()
        assert logout is not None
        assert logout.msg_type == tags.MT_LOGOUT
        assert "gateway closed the connection without a Logout" in (logout.get_str(58) or "")
        # Numbered right after the last ExecutionReport the engine received (34=3).
        assert logout.get(34) == b"4"
        check_frame(engine.transcript[-1][1])
        assert await engine.receive() is None
        reason = await pair.sim.wait_closed(pair.sim_logon_conn())
        assert reason == "fault: dropped after 3 messages"
        assert pair.sim.message_count(tags.MT_EXECUTION_REPORT, "out") == 2
        assert pair.sample("fixproxy_session_up") == 0


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_engine_vanishing_logs_out_upstream(e2e_material: E2EMaterial, how: str) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        engine = await log_on(pair)
        cl_ord_id = await engine.new_order()
        assert (await engine.receive_type(tags.MT_EXECUTION_REPORT)).get(11) == cl_ord_id
        conn = pair.sim_logon_conn()
        assert conn not in pair.sim.closed
        stream = engine.stream
        assert isinstance(stream, trio.SocketStream)
        if how == "reset":
            # Linger 0: close sends a TCP reset instead of a FIN.
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        started = trio.current_time()
        await stream.aclose()
        reason = await pair.sim.wait_closed(conn)
        assert trio.current_time() - started < 1.5
        # fixproxy logged out for the engine, numbered after its last message (Logon 1,
        # order 2), so Kalshi sees an orderly end instead of a dropped connection.
        assert reason == "peer logged out", reason
        logouts = pair.sim_events(conn, direction="in", msg_type=tags.MT_LOGOUT)
        assert len(logouts) == 1
        assert FixMessage.parse(logouts[0].raw).get(34) == b"3"
        assert pair.sim.live_sessions == {}
        while pair.sample("fixproxy_session_up") != 0:  # the proxy's teardown, bounded by the
            await trio.testing.wait_all_tasks_blocked(0.01)  # pair's fail_after


# --- 9. pipelining --------------------------------------------------------------------------


async def test_logon_and_orders_in_one_write(e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        engine = await pair.connect_engine()
        cl_ord_ids = [b"pipe-%d" % n for n in range(5)]
        logon = engine.build(tags.MT_LOGON, logon_fields())
        orders = [engine.build(tags.MT_NEW_ORDER_SINGLE, order_fields(c.decode()))
                  for c in cl_ord_ids]
        await engine.send_raw(b"".join([logon, *orders]))

        answer = await engine.receive()
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        reports = [await engine.receive_type(tags.MT_EXECUTION_REPORT) for _ in orders]
        assert [report.get(11) for report in reports] == cl_ord_ids

        received = pair.sim_events(pair.sim_logon_conn(), direction="in")
        assert [event.msg_type for event in received] == [tags.MT_LOGON] + [b"D"] * 5
        assert [event.raw for event in received[1:]] == orders
        assert pair.sample("fixproxy_messages_total", direction="engine_to_gateway",
                           msg_type="D") == 5


# --- 10. metrics endpoint -----------------------------------------------------------------


async def http_get(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    """GET ``path`` over a raw TCP stream; returns the status code and the body."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1."), response[:200]
    return int(status_line.split()[1]), body


async def test_metrics_endpoint_serves_the_session(e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material, metrics_endpoint=True) as pair:
        assert pair.metrics_address is not None
        assert pair.metrics_address[0] == "127.0.0.1"
        await round_trip(pair, orders=3)

        status, body = await http_get(pair.metrics_address, "/metrics")
        assert status == 200
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }

        def value(name: str, **labels: str) -> float | None:
            key = (name, tuple(sorted({"session": "e2e", **labels}.items())))
            return samples.get(key)

        assert value("fixproxy_messages_total", direction="engine_to_gateway",
                     msg_type="D") == 3
        assert value("fixproxy_messages_total", direction="gateway_to_engine",
                     msg_type="8") == 3
        assert value("fixproxy_messages_total", direction="engine_to_gateway",
                     msg_type="A") == 1
        assert value("fixproxy_logons_total", result="accepted") == 1

        assert await http_get(pair.metrics_address, "/healthz") == (200, b"ok\n")
        status, _ = await http_get(pair.metrics_address, "/no-such-page")
        assert status == 404


# --- 11. secrets stay out of the logs ------------------------------------------------------


async def test_signature_is_never_logged(e2e_material: E2EMaterial,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_proxy_pair(e2e_material) as pair:
        await round_trip(pair)
        signature = FixMessage.parse(pair.sim.last_logon[pair.api_key]).get(tags.RAW_DATA)
    assert signature is not None and len(signature) > 300
    messages = [record.getMessage() for record in caplog.records]
    # The signed Logon was logged (redacted), so the absence below is not for lack of logging.
    assert any("|96=<redacted" in m for m in messages)
    secret = signature.decode()
    for fragment in (secret, secret[:40], secret[-40:]):
        assert fragment not in caplog.text
        assert not any(fragment in m for m in messages)
