"""The fault matrix, engine side: bad input, hostile clients, floods and shutdown
(docs/faults.md).

For each fault: what the engine sees (a Logout whose Text names the problem, then a close),
what the gateway sees (nothing at all for a refusal before the Logon; otherwise every message
the engine sent before the fault, in order, then fixproxy's Logout), what the metrics count,
and the bound on time and memory, tested rather than assumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import tracemalloc
from dataclasses import dataclass
from typing import Final

import pytest
import trio
import trio.testing
from support.e2e import E2EMaterial, check_frame, open_proxy_pair
from support.faults import (
    STALL_BUFFER,
    EndlessEngine,
    StallableStream,
    client_hello,
    fd_count,
    log_on,
    logon_fields,
    open_memory_proxy,
    read_to_close,
    received_raw,
    sent_raw,
    text_of,
    wait_for_sample,
)
from support.relay import socket_stream_pair

from fixproxy.config.model import DEFAULT_LOGOUT_WAIT, DEFAULT_SHUTDOWN_TIMEOUT
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, encode, utc_timestamp
from fixproxy.fix.framer import MAX_FRAME_SIZE, FixFramer
from fixproxy.net.tls import HandshakeInfo
from fixproxy.proxy.admit import DRAIN_LIMIT, DRAIN_TIMEOUT, RECEIVE_SIZE
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.relay import CLOSE_TIMEOUT
from fixproxy.session.backoff import LogonBackoff
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimFaults

QUICK: Final = 1.5
"""Wall seconds within which fixproxy must answer input it can judge at once."""
VIRTUAL_BOUND: Final = 600.0
HEART_BT_INT: Final = 30
SILENCE: Final = 2 * HEART_BT_INT + 5.0
"""2 x HeartBtInt + the default liveness grace."""
LOGON_TIMEOUT: Final = 30.0
"""The default logon_timeout, which the memory harness keeps."""
LOGOUT_WAIT: Final = DEFAULT_LOGOUT_WAIT
MEMORY_BOUND: Final = 2 * MAX_FRAME_SIZE + 8 * RECEIVE_SIZE
"""Most a hostile connection may make the process allocate at once: the framer's buffer of one
frame (grown in place, so briefly twice) plus a few reads in flight."""


def order(engine: ScriptedEngine, cl_ord_id: str) -> bytes:
    return engine.build(b"D", [(11, cl_ord_id), (38, 1), (40, 2), (44, 50), (54, 1),
                               (55, "HIGHNY-23DEC31"), (59, 1), (60, utc_timestamp())])


# --- bad input ----------------------------------------------------------------------------------


def _logon(seq: int = 1) -> bytes:
    return encode([(35, "A"), (49, "KEY"), (56, "KalshiNR"), (34, seq),
                   (52, utc_timestamp()), *logon_fields()])


def _bad_checksum() -> bytes:
    good = _logon()
    digits = good[-4:-1]
    return good[:-4] + b"%03d" % ((int(digits) + 1) % 256) + b"\x01"


def _short_body_length() -> bytes:
    good = _logon()
    head, rest = good.split(b"\x019=", 1)
    length, body = rest.split(b"\x01", 1)
    return head + b"\x019=%d\x01" % (int(length) - 1) + body


@dataclass(frozen=True, slots=True)
class BadInput:
    data: bytes
    detail: str
    """What the Text (58) must say about it."""


BAD_INPUTS: Final = {
    "garbage": BadInput(b"\x00\xffhello, is this FIX?\r\n",
                        "stream does not start a FIXT.1.1 message"),
    "bad CheckSum": BadInput(_bad_checksum(), "CheckSum (10) is "),
    "BodyLength not a number": BadInput(b"8=FIXT.1.1\x019=12a\x0135=A\x01",
                                        "BodyLength (9) is not a number: b'12a'"),
    "BodyLength one short": BadInput(_short_body_length(),
                                     "does not end at the CheckSum (10) field"),
    "BodyLength of 2 GB": BadInput(b"8=FIXT.1.1\x019=2147483648\x0135=A\x01",
                                   "BodyLength (9) is longer than 7 digits; frames are "
                                   f"limited to {MAX_FRAME_SIZE} bytes"),
    "frame over the size limit": BadInput(
        b"8=FIXT.1.1\x019=%d\x0135=A\x01" % MAX_FRAME_SIZE,
        f"BodyLength (9) of {MAX_FRAME_SIZE} makes a frame of {MAX_FRAME_SIZE + 28} bytes, "
        f"over the limit of {MAX_FRAME_SIZE}"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
async def test_bad_input_before_the_logon(e2e_material: E2EMaterial, case: BadInput) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        stream = await pair.connect()
        engine = ScriptedEngine(stream, sender=pair.api_key, target=pair.endpoint)
        started = trio.current_time()
        await engine.send_raw(case.data)
        messages = await read_to_close(engine)
        assert trio.current_time() - started < QUICK  # judged on arrival, not at a timeout

        assert [m.msg_type for m in messages] == [tags.MT_LOGOUT]
        check_frame(received_raw(engine)[0])
        assert text_of(messages[0]).startswith("fixproxy: the engine's data is not valid FIX: ")
        assert case.detail in text_of(messages[0])
        assert messages[0].get(tags.MSG_SEQ_NUM) == b"1"
        assert pair.sample("fixproxy_engine_connections_total", result="framing_error") == 1
        assert pair.total("fixproxy_logons") == 0
        assert pair.total("fixproxy_upstream_connects") == 0
        assert not pair.sim.events and not pair.sim.closed  # the gateway saw nothing


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
async def test_bad_input_after_the_logon(e2e_material: E2EMaterial, case: BadInput) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        engine = await log_on(pair)
        good = order(engine, "before-the-fault")  # 34=2, in the same write as the bad bytes
        started = trio.current_time()
        await engine.send_raw(good + case.data)
        messages = await read_to_close(engine)
        assert trio.current_time() - started < QUICK

        # The order ahead of the bad bytes was delivered; then fixproxy logged out upstream,
        # numbered after it, and told the engine why once the gateway had answered.
        conn = pair.sim_logon_conn()
        assert await pair.sim.wait_closed(conn) == "peer logged out"
        received = pair.sim_events(conn, direction="in")
        assert [e.msg_type for e in received] == [tags.MT_LOGON, b"D", tags.MT_LOGOUT]
        assert received[1].raw == good
        upstream = FixMessage.parse(received[2].raw)
        assert upstream.get(tags.MSG_SEQ_NUM) == b"3"
        assert text_of(upstream).startswith("the engine sent invalid FIX: ")
        assert case.detail in text_of(upstream)

        assert [m.msg_type for m in messages] == [b"8", tags.MT_LOGOUT]
        assert messages[0].get(11) == b"before-the-fault"
        assert text_of(messages[1]) == f"fixproxy: {text_of(upstream)}"
        assert messages[1].get(tags.MSG_SEQ_NUM) == b"4"  # after the gateway's Logout (3)
        await wait_for_sample(pair, 1, "fixproxy_logouts_total", initiator="engine",
                              reason="other")
        assert pair.sample("fixproxy_session_up") == 0


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_engine_closes_abruptly_mid_message(e2e_material: E2EMaterial, how: str) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        engine = await log_on(pair)
        first = order(engine, "whole")
        await engine.send_raw(first)
        assert (await engine.receive_type(b"8")).get(11) == b"whole"
        half = order(engine, "half")
        await engine.send_raw(half[: len(half) // 2])
        stream = engine.stream
        assert isinstance(stream, trio.SocketStream)
        if how == "reset":
            stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                              b"\x01\x00\x00\x00\x00\x00\x00\x00")
        started = trio.current_time()
        await stream.aclose()

        conn = pair.sim_logon_conn()
        assert await pair.sim.wait_closed(conn) == "peer logged out"
        assert trio.current_time() - started < QUICK
        received = pair.sim_events(conn, direction="in")
        # The half message never reached the gateway; fixproxy's Logout took the next number.
        assert [e.msg_type for e in received] == [tags.MT_LOGON, b"D", tags.MT_LOGOUT]
        assert received[1].raw == first
        upstream = FixMessage.parse(received[2].raw)
        assert upstream.get(tags.MSG_SEQ_NUM) == b"3"
        assert text_of(upstream).startswith(
            "the engine sent invalid FIX: stream ended inside a message (")
        await wait_for_sample(pair, 1, "fixproxy_logouts_total", initiator="engine",
                              reason="other")
        assert pair.sample("fixproxy_session_up") == 0
        assert pair.sim.live_sessions == {}


@pytest.mark.parametrize("what", ["HTTP request", "TLS ClientHello"])
async def test_wrong_protocol_on_the_plain_listener(e2e_material: E2EMaterial,
                                                    what: str) -> None:
    data = client_hello() if what == "TLS ClientHello" else (
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\n\r\n")
    async with open_proxy_pair(e2e_material) as pair:
        stream = await pair.connect()
        started = trio.current_time()
        await stream.send_all(data)
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        assert trio.current_time() - started < QUICK
        # Plain FIX comes back, whatever the client expected: a TLS library reports a record
        # error, and someone reading the bytes finds what to change.
        logout = check_frame(answer)
        assert logout.msg_type == tags.MT_LOGOUT
        hint = ("turn TLS off in the engine (SocketUseSSL=N)" if what == "TLS ClientHello"
                else "an HTTP request reached a FIX listener")
        assert hint in text_of(logout)
        assert pair.sample("fixproxy_engine_connections_total", result="framing_error") == 1
        assert not pair.sim.events and not pair.sim.closed
        await log_on(pair)  # and the listener carries on


# --- hostile engines: bounds on memory and time -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endless:
    prefix: bytes
    filler: bytes
    detail: str
    decided_within: int
    """Most bytes fixproxy may read before it refuses."""


ENDLESS: Final = {
    "never-ending field": Endless(
        b"8=FIXT.1.1\x019=1048000\x0135=A\x0158=", b"x",
        "BodyLength (9) of 1048000 does not end at the CheckSum (10) field",
        1048000 + 64 + RECEIVE_SIZE),
    "never-ending BodyLength": Endless(
        b"8=FIXT.1.1\x019=", b"9", "BodyLength (9) is longer than 7 digits",
        13 + RECEIVE_SIZE),
    "BodyLength of 2 GB": Endless(
        b"8=FIXT.1.1\x019=2147483648\x01", b"x", "BodyLength (9) is longer than 7 digits",
        24 + RECEIVE_SIZE),
    "never-ending garbage": Endless(
        b"", b"\x00", "stream does not start a FIXT.1.1 message", RECEIVE_SIZE),
}


@pytest.mark.parametrize("case", ENDLESS.values(), ids=ENDLESS.keys())
async def test_endless_input_before_the_logon_is_bounded(e2e_material: E2EMaterial,
                                                         case: Endless) -> None:
    with trio.fail_after(10):
        async with open_memory_proxy(e2e_material) as proxy:
            engine = EndlessEngine(case.prefix, case.filler)
            tracemalloc.start()
            try:
                await proxy.start_relay(engine).wait()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()

            assert peak <= MEMORY_BOUND, peak
            assert engine.served_before_answer is not None
            assert engine.served_before_answer <= case.decided_within
            # After its Logout fixproxy reads at most DRAIN_LIMIT more, then closes.
            assert engine.served <= engine.served_before_answer + DRAIN_LIMIT + RECEIVE_SIZE
            assert engine.eof_received and engine.closed
            framer = FixFramer()
            framer.receive_data(engine.written)
            frame = framer.next_message()
            assert frame is not None
            logout = FixMessage.parse(frame.raw)
            assert logout.msg_type == tags.MT_LOGOUT
            assert case.detail in text_of(logout)
            assert framer.next_message() is None and framer.buffered == 0
            assert proxy.gateway_connects == []
            assert proxy.sample("fixproxy_engine_connections_total",
                                result="framing_error") == 1


async def test_endless_field_after_the_logon_is_bounded(e2e_material: E2EMaterial) -> None:
    with trio.fail_after(10):
        async with open_memory_proxy(e2e_material) as proxy:
            engine_logon = encode([(35, "A"), (49, proxy.api_key), (56, "KalshiNR"), (34, 1),
                                   (52, utc_timestamp()), *logon_fields()])
            endless = b"8=FIXT.1.1\x019=1048000\x0135=D\x0158="
            # A real connection this time: after the Logon the session relay owns the socket.
            proxy_end, engine_end = socket_stream_pair(buffer_size=STALL_BUFFER)
            sent = 0
            written = bytearray()

            async def feed() -> None:
                nonlocal sent
                filler = b"x" * 4096
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await engine_end.send_all(engine_logon + endless)
                    sent += len(engine_logon) + len(endless)
                    while True:
                        await engine_end.send_all(filler)
                        sent += len(filler)

            async def drain() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await engine_end.receive_some(65536):
                        written.extend(data)

            tracemalloc.start()
            try:
                async with trio.open_nursery() as peer:
                    peer.start_soon(feed)
                    peer.start_soon(drain)
                    await proxy.start_relay(proxy_end).wait()
                    with trio.move_on_after(1):
                        await proxy.sim.wait_for_messages(tags.MT_LOGOUT)
                    peer.cancel_scope.cancel()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()

            assert peak <= MEMORY_BOUND, peak
            # What the engine got through: the frame limit, one read, and the socket buffers.
            assert sent <= len(engine_logon) + len(endless) + 1048000 + 4 * RECEIVE_SIZE
            assert len(proxy.sim_in(tags.MT_LOGON)) == 1
            assert proxy.sim_in(b"D") == []
            (upstream,) = [FixMessage.parse(raw) for raw in proxy.sim_in(tags.MT_LOGOUT)]
            assert "BodyLength (9) of 1048000 does not end at the CheckSum (10) field" \
                in text_of(upstream)
            framer = FixFramer()
            framer.receive_data(bytes(written))
            types = []
            while (frame := framer.next_message()) is not None:
                types.append(frame.msg_type)
            assert types == [tags.MT_LOGON, tags.MT_LOGOUT]
            assert proxy.sample("fixproxy_logouts_total", initiator="engine",
                                reason="other") == 1


async def test_slowloris_before_the_logon(autojump_clock: trio.testing.MockClock,
                                          e2e_material: E2EMaterial) -> None:
    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material) as proxy:
            proxy_end, engine_end = socket_stream_pair()
            started = trio.current_time()
            relay_done = proxy.start_relay(proxy_end)
            logon = encode([(35, "A"), (49, proxy.api_key), (56, "KalshiNR"), (34, 1),
                            (52, utc_timestamp()), *logon_fields()])
            dripped = 0

            async def drip() -> None:  # one byte per second, forever if allowed
                nonlocal dripped
                try:
                    for byte in logon:
                        await engine_end.send_all(bytes([byte]))
                        dripped += 1
                        await trio.sleep(1)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            engine = ScriptedEngine(engine_end, sender=proxy.api_key, target="KalshiNR")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip)
                messages = await read_to_close(engine)
                answered = trio.current_time() - started
                await relay_done.wait()
                finished = trio.current_time() - started
                nursery.cancel_scope.cancel()

            assert len(logon) > LOGON_TIMEOUT + DRAIN_TIMEOUT  # it really was too slow
            assert LOGON_TIMEOUT <= answered <= LOGON_TIMEOUT + 1
            assert finished <= LOGON_TIMEOUT + DRAIN_TIMEOUT + 1
            assert dripped <= LOGON_TIMEOUT + DRAIN_TIMEOUT + 1
            assert [m.msg_type for m in messages] == [tags.MT_LOGOUT]
            assert "no Logon received within 30 s of connecting" in text_of(messages[0])
            assert proxy.gateway_connects == []
            assert proxy.sample("fixproxy_engine_connections_total", result="no_logon") == 1


async def test_slowloris_after_the_logon(autojump_clock: trio.testing.MockClock,
                                         e2e_material: E2EMaterial) -> None:
    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material) as proxy:
            engine, relay_done = proxy.connect_engine()
            answer = await engine.logon(heart_bt_int=HEART_BT_INT)
            assert answer is not None and answer.msg_type == tags.MT_LOGON
            logged_on = trio.current_time()
            slow = order(engine, "slow")

            async def drip() -> None:
                try:
                    for byte in slow:
                        await engine.stream.send_all(bytes([byte]))
                        await trio.sleep(1)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip)
                messages = await read_to_close(engine)
                ended = trio.current_time() - logged_on
                nursery.cancel_scope.cancel()

            # Bytes are not messages: only a complete message counts as the engine being alive.
            assert len(slow) > SILENCE
            assert SILENCE <= ended <= SILENCE + 1
            assert messages[-1].msg_type == tags.MT_LOGOUT
            assert "the engine sent nothing for longer than 2 x HeartBtInt + grace" \
                in text_of(messages[-1])
            assert {m.msg_type for m in messages[:-1]} <= {tags.MT_HEARTBEAT,
                                                           tags.MT_TEST_REQUEST}
            assert proxy.sim_in(b"D") == []
            (upstream,) = proxy.sim_in(tags.MT_LOGOUT)
            assert FixMessage.parse(upstream).get(tags.MSG_SEQ_NUM) == b"2"
            await relay_done.wait()
            assert proxy.sample("fixproxy_heartbeat_timeouts_total") == 1
            assert proxy.sample("fixproxy_logouts_total", initiator="proxy",
                                reason="heartbeat_timeout") == 1


async def test_five_hundred_connections_at_once(e2e_material: E2EMaterial) -> None:
    connections = 500
    logon_timeout = 1.0
    async with open_proxy_pair(e2e_material, timeout=30.0,
                               session_overrides={"logon_timeout": logon_timeout}) as pair:
        baseline = fd_count()
        answers: list[bytes] = []

        async def one(index: int) -> None:
            stream = await trio.open_tcp_stream(*pair.proxy)
            try:
                if index % 2:  # half send something wrong, half nothing at all
                    await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
                answers.append(data)
            finally:
                await stream.aclose()

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for index in range(connections):
                nursery.start_soon(one, index)
        assert trio.current_time() - started < logon_timeout + DRAIN_TIMEOUT + 5

        # Every connection got a Logout and a close.
        texts = [text_of(check_frame(answer)) for answer in answers]
        assert len(texts) == connections
        assert sum("no Logon received within 1 s" in t for t in texts) == connections // 2
        assert sum("an HTTP request reached a FIX listener" in t for t in texts) \
            == connections // 2
        assert pair.sample("fixproxy_engine_connections_total", result="no_logon") \
            == connections // 2
        assert pair.sample("fixproxy_engine_connections_total", result="framing_error") \
            == connections // 2
        assert not pair.sim.events

        # The proxy keeps serving.
        engine = await log_on(pair)
        await engine.new_order()
        await engine.receive_type(b"8")
        assert await engine.logout() is not None
        await engine.aclose()
        await pair.sim.wait_closed(pair.sim_logon_conn())
        # And nothing leaked: every descriptor opened since the baseline is closed again.
        while fd_count() != baseline:
            await trio.testing.wait_all_tasks_blocked(0.01)


# --- one key, many engines ---------------------------------------------------------------------


async def test_duplicate_key(e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        first = await log_on(pair)
        second = await pair.connect_engine()
        answer = await second.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        assert f"the API key {pair.api_key} is already in use by session 'e2e'" in text_of(answer)
        assert await second.receive() is None
        # The first session never noticed; the gateway saw one Logon.
        await first.new_order()
        assert (await first.receive_type(b"8")).get(11) == b"demo-1"
        assert len(pair.sim_events(direction="in", msg_type=tags.MT_LOGON)) == 1
        assert pair.sample("fixproxy_engine_connections_total", result="duplicate_key") == 1
        assert pair.sample("fixproxy_logons_total", result="refused_locally") == 1
        assert pair.sample("fixproxy_session_up") == 1
        # Once the first logs out, the key is free again.
        assert await first.logout() is not None
        await wait_for_sample(pair, 0, "fixproxy_session_up")
        third = await pair.connect_engine()
        while (answer := await third.logon()) is not None and \
                "already in use" in text_of(answer):  # the first relay is still tearing down
            await trio.testing.wait_all_tasks_blocked(0.01)
            third = await pair.connect_engine()
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        assert len(pair.sim_events(direction="in", msg_type=tags.MT_LOGON)) == 2


async def test_logon_storm(e2e_material: E2EMaterial) -> None:
    engines_count = 20
    async with open_proxy_pair(e2e_material) as pair:
        engines = [await pair.connect_engine() for _ in range(engines_count)]
        answers: dict[int, FixMessage | None] = {}

        async def log_in(index: int) -> None:
            answers[index] = await engines[index].logon()

        async with trio.open_nursery() as nursery:
            for index in range(engines_count):
                nursery.start_soon(log_in, index)

        won = [i for i, a in answers.items() if a is not None and a.msg_type == tags.MT_LOGON]
        lost = [a for a in answers.values() if a is not None and a.msg_type == tags.MT_LOGOUT]
        assert len(won) == 1 and len(lost) == engines_count - 1
        assert all("is already in use by session 'e2e'" in text_of(a) for a in lost)
        assert len(pair.sim_events(direction="in", msg_type=tags.MT_LOGON)) == 1
        assert pair.sample("fixproxy_engine_connections_total", result="ok") == 1
        assert pair.sample("fixproxy_engine_connections_total", result="duplicate_key") \
            == engines_count - 1
        winner = engines[won[0]]
        await winner.new_order()
        assert (await winner.receive_type(b"8")).get(11) == b"demo-1"


async def test_logon_storm_refused_by_the_gateway_then_backoff(
        autojump_clock: trio.testing.MockClock, e2e_material: E2EMaterial) -> None:
    floor, ceiling = 2.0, 16.0
    backoff = LogonBackoff(floor, ceiling, rng=random.Random(7))
    manager = SessionManager(None, backoff)
    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material, manager=manager,
                                     faults=SimFaults(refuse_logon_text="sim says no")) as proxy:
            engines = [proxy.connect_engine()[0] for _ in range(10)]
            answers: list[str] = []

            async def log_in(engine: ScriptedEngine) -> None:
                answer = await engine.logon()
                assert answer is not None and answer.msg_type == tags.MT_LOGOUT
                answers.append(text_of(answer))

            storm_at = trio.current_time()
            async with trio.open_nursery() as nursery:
                for engine in engines:
                    nursery.start_soon(log_in, engine)

            # One Logon reached Kalshi; its refusal passed through; the rest stayed local.
            assert len(proxy.sim_in(tags.MT_LOGON)) == 1
            assert answers.count("sim says no") == 1
            assert all("already in use" in t or "rate-limits Logons" in t
                       for t in answers if t != "sim says no")
            first_retry = backoff.retry_at(proxy.api_key)
            assert first_retry is not None
            assert floor / 2 <= first_retry - storm_at <= floor

            async def attempt() -> str:
                engine, _ = proxy.connect_engine()
                answer = await engine.logon()
                assert answer is not None
                return text_of(answer)

            await trio.sleep_until(first_retry - 0.1)
            assert "rate-limits Logons" in await attempt()
            assert len(proxy.sim_in(tags.MT_LOGON)) == 1
            await trio.sleep_until(first_retry)
            assert await attempt() == "sim says no"
            assert len(proxy.sim_in(tags.MT_LOGON)) == 2
            # The second refusal in a row waits longer, up to twice the floor.
            second_retry = backoff.retry_at(proxy.api_key)
            assert second_retry is not None
            assert floor / 2 <= second_retry - first_retry <= 2 * floor
            assert backoff.failures(proxy.api_key) == 2
            assert proxy.sample("fixproxy_logons_total", result="refused_by_gateway") == 2


# --- shutdown -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["reads along", "reads after the close"])
async def test_shutdown_under_load(e2e_material: E2EMaterial, reader: str) -> None:
    manager = SessionManager()
    async with open_proxy_pair(e2e_material, manager=manager) as pair:
        engine = await log_on(pair)
        messages: list[FixMessage] = []
        drained = trio.Event()
        flood_ended = trio.Event()

        async def flood() -> None:  # orders as fast as the connection takes them
            try:
                for index in range(100_000):
                    await engine.send_raw(order(engine, f"load-{index}"))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            flood_ended.set()

        async def drain() -> None:
            # What run_until_signal does on SIGTERM, bounded by shutdown_timeout likewise.
            with trio.move_on_after(DEFAULT_SHUTDOWN_TIMEOUT) as scope:
                await manager.drain()
            assert not scope.cancelled_caught
            drained.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            if reader == "reads along":
                while (message := await engine.receive()) is not None:
                    messages.append(message)
                    if len(messages) == 20:
                        nursery.start_soon(drain)
            else:
                # The engine reads nothing until fixproxy has closed on it (unread orders in
                # fixproxy's buffer make that close a reset): what it was sent must survive.
                await pair.sim.wait_for_messages(b"D", 20)
                nursery.start_soon(drain)
                await flood_ended.wait()
                await drained.wait()
                messages = await read_to_close(engine)
            nursery.cancel_scope.cancel()
        with trio.fail_after(DEFAULT_SHUTDOWN_TIMEOUT):
            await drained.wait()

        # The engine: every report the gateway sent, in order, then the reason, then the close.
        assert messages[-1].msg_type == tags.MT_LOGOUT
        assert text_of(messages[-1]) == "fixproxy: fixproxy is shutting down"
        sim_reports = [e.raw for e in pair.sim_events(direction="out", msg_type=b"8")]
        assert received_raw(engine, b"8") == sim_reports
        assert len(sim_reports) >= 20
        # The gateway: the orders in the order sent, a prefix of what the engine wrote (the
        # rest was refused by the close), then fixproxy's Logout with the next number.
        conn = pair.sim_logon_conn()
        assert await pair.sim.wait_closed(conn) == "peer logged out"
        orders = [e.raw for e in pair.sim_events(conn, direction="in", msg_type=b"D")]
        assert orders == sent_raw(engine, b"D")[: len(orders)]
        (upstream,) = pair.sim_events(conn, direction="in", msg_type=tags.MT_LOGOUT)
        assert FixMessage.parse(upstream.raw).get(tags.MSG_SEQ_NUM) == b"%d" % (len(orders) + 2)
        assert manager.live_sessions == 0
        await wait_for_sample(pair, 1, "fixproxy_logouts_total", initiator="proxy",
                              reason="shutdown")
        # While draining, new engines are turned away.
        late = await pair.connect_engine()
        answer = await late.logon()
        assert answer is not None and "fixproxy is shutting down" in text_of(answer)
        assert pair.sample("fixproxy_engine_connections_total", result="shutdown") == 1


async def test_engine_stops_reading(autojump_clock: trio.testing.MockClock,
                                    e2e_material: E2EMaterial) -> None:
    """An engine that hangs without closing: it neither reads (fixproxy's writes to it block
    on a full window) nor writes. The session must still end within the silence limit, the
    Logout wait and the close bound, with the gateway logged out cleanly."""
    downstream: list[StallableStream] = []

    def stallable(stream: trio.abc.Stream) -> trio.abc.Stream:
        downstream.append(StallableStream(stream))
        return downstream[-1]

    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material) as proxy:
            engine, relay_done = proxy.connect_engine(engine_end_wrapper=stallable)
            assert (await engine.logon(heart_bt_int=HEART_BT_INT)) is not None
            hung = trio.current_time()
            downstream[0].stalled = True  # the engine reads nothing fixproxy writes to it
            await engine.new_order()  # its ExecutionReport is the write that blocks
            await proxy.sim.wait_for_messages(b"8", direction="out")
            await relay_done.wait()
            assert trio.current_time() - hung <= SILENCE + LOGOUT_WAIT + 2 * CLOSE_TIMEOUT + 1
            assert received_raw(engine, b"8") == []  # the report never reached the engine
            (upstream,) = proxy.sim_in(tags.MT_LOGOUT)
            assert FixMessage.parse(upstream).get(tags.MSG_SEQ_NUM) == b"3"
            assert proxy.sample("fixproxy_heartbeat_timeouts_total") == 1


async def test_shutdown_while_a_logon_is_in_flight(autojump_clock: trio.testing.MockClock,
                                                   e2e_material: E2EMaterial) -> None:
    """SIGTERM while an engine's Logon waits for the TLS connection: the engine is told that
    fixproxy is shutting down, no session is left logged on at the gateway, and the drain
    does not report completion while that connection is still open."""
    with trio.fail_after(VIRTUAL_BOUND):
        async with open_memory_proxy(e2e_material) as proxy:
            entered, release = trio.Event(), trio.Event()

            async def slow_connect() -> tuple[trio.abc.Stream, HandshakeInfo]:
                entered.set()
                await release.wait()
                return await proxy.runtime.connect()

            runtime = dataclasses.replace(proxy.runtime, connect=slow_connect)
            proxy_end, engine_end = socket_stream_pair()
            relay_done = proxy.start_relay(proxy_end, runtime)
            engine = ScriptedEngine(engine_end, sender=proxy.api_key, target="KalshiNR")
            await engine.send(tags.MT_LOGON, logon_fields())
            await entered.wait()

            drained_at: list[float] = []

            async def drain() -> None:  # as run_until_signal does on SIGTERM
                with trio.move_on_after(DEFAULT_SHUTDOWN_TIMEOUT):
                    await proxy.manager.drain()
                drained_at.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await trio.sleep(1)
                connected_at = trio.current_time()
                release.set()  # the TLS connection completes a second into the drain
                messages = await read_to_close(engine)
                await relay_done.wait()
            assert [m.msg_type for m in messages] == [tags.MT_LOGOUT]
            assert "fixproxy is shutting down" in text_of(messages[0])
            assert proxy.sim.live_sessions == {}
            assert proxy.sim_in(tags.MT_LOGON) == []
            # The drain waited for that connection instead of declaring the process idle.
            assert drained_at and drained_at[0] >= connected_at
