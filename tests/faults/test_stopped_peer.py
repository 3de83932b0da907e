"""A peer that stops reading (SIGSTOP) under pipelined load, with real processes on 127.0.0.1.

fixproxy runs as ``python3 -m fixproxy.cli run``; the simulated gateway and the load engine
are processes of their own (:mod:`support.stopped_peer_procs`), so either can be frozen with
SIGSTOP while the other keeps pushing. A frozen peer reads nothing and sends nothing: fixproxy
must keep what it holds for it bounded (``MAX_PENDING_BYTES`` per direction, then it stops
reading the other side), end the session by the liveness rule (``2 x HeartBtInt +
liveness_grace``, HeartBtInt 4, the smallest the simulator takes), leave nothing behind that a
thawed peer could mistake for a live session, and keep every other session of the shared
data-plane thread trading meanwhile.

Every wait polls the peers' report files and is bounded; nothing asserts how fast anything is.
The bounds on fixproxy's resident set size are stated from the code: the baseline measured
under the same load before the stop, plus what fixproxy may hold per direction of the stuck
session, plus a margin for the allocator.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from support.stopped_peer import Peer, Stack, first, open_stack
from support.stopped_peer_procs import HEART_BT_INT

from fixproxy.proxy.legs import MAX_PENDING_BYTES, RECEIVE_SIZE

pytestmark = [pytest.mark.faults]

GRACE: Final = 0.5
LIVENESS_S: Final = 2 * HEART_BT_INT + GRACE
"""When fixproxy gives up on a silent peer."""
DETECTION_SLACK_S: Final = 6.0
"""How late past :data:`LIVENESS_S` the end may come on a loaded machine before the test calls
it missed (fixproxy checks its timers at least once a second)."""
PER_DIRECTION_KIB: Final = (MAX_PENDING_BYTES + RECEIVE_SIZE) // 1024 + 64
"""What one direction of a session may hold: the pending output, one read, a partial frame."""
ALLOCATOR_MARGIN_KIB: Final = 8 * 1024
"""Growth of a Python process that is not buffering: the allocator's arenas, TLS records,
parsed messages in flight. Unbounded buffering of a pipelined engine grows by megabytes a
second, far past it in the seconds of a stop."""
WARM_UP_ORDERS: Final = 300
ENGINE_WINDOW: Final = 300
"""Unanswered orders of the engine frozen alone: about 100 KiB of reports, under the 128 KiB a
loopback socket's receive buffer starts with."""
LOGOUT_WAIT_S: Final = 2.0
"""``logout_wait``'s default: how long fixproxy waits for the answer to its Logout."""
LOGOUT_SENT_FOR_ENGINE: Final = ("sending Logout to the gateway: the engine sent nothing for "
                                 "longer than 2 x HeartBtInt + grace")
GAP_LIMIT_S: Final = 1.0
"""The longest the healthy session of the shared plane may go without an ExecutionReport."""


def _rss_bound(baseline_kib: int, stuck_sessions: int = 1) -> int:
    return baseline_kib + stuck_sessions * 2 * PER_DIRECTION_KIB + ALLOCATOR_MARGIN_KIB


def _count(peer: Peer, **match: Any) -> int:
    return sum(1 for line in peer.lines() if all(line.get(k) == v for k, v in match.items()))


def _logon_conn(gateway: Peer) -> int:
    logons = [line for line in gateway.lines() if line.get("type") == "A"
              and line.get("dir") == "in"]
    assert logons, "the gateway received no Logon"
    return int(logons[-1]["conn"])


def _warm_up(stack: Stack, *engines: Peer) -> int:
    """Wait until each engine's orders are being answered; fixproxy's RSS under that load."""
    stack.wait(lambda: all(_count(engine, e="er") >= WARM_UP_ORDERS for engine in engines),
               30.0, f"{WARM_UP_ORDERS} orders answered")
    return stack.sample_rss(1.0)


@pytest.fixture(name="stack")
def stack_fixture(tmp_path: Path) -> Iterator[Stack]:
    with open_stack(tmp_path, 3) as stack:
        yield stack


def test_gateway_stopped_under_load(stack: Stack) -> None:
    account = stack.material.accounts[0]
    gateway, gateway_port = stack.gateway("gateway", [account])
    [port] = stack.start_fixproxy([(account, gateway_port)], liveness_grace=GRACE)
    engine = stack.engine("engine", port, account)
    baseline = _warm_up(stack, engine)
    conn = _logon_conn(gateway)

    stopped = time.monotonic()
    gateway.stop_signal()
    stack.wait(lambda: first(engine.lines(), e="eof") is not None, LIVENESS_S + 20,
               "end of the session")
    logout = first(engine.lines(), e="logout")
    assert logout is not None, "fixproxy closed the engine's connection without a Logout"
    assert "gateway sent nothing" in logout["text"], logout
    detection = logout["t"] - stopped
    assert LIVENESS_S - 1.0 <= detection <= LIVENESS_S + DETECTION_SLACK_S, detection
    peak = stack.rss_peak_kib
    assert peak <= _rss_bound(baseline), (peak, baseline)
    eof = first(engine.lines(), e="eof")
    assert eof is not None
    seen_before = len(gateway.lines())

    gateway.cont_signal()
    stack.wait(lambda: first(gateway.lines(), closed=conn) is not None, 20.0,
               "the gateway's end of the old connection")
    after = gateway.lines()
    closed = first(after, closed=conn)
    assert closed is not None
    old_in = [line for line in after if line.get("conn") == conn and line.get("dir") == "in"]
    assert [line["type"] for line in old_in].count("A") == 1, "a second Logon on the old one"
    assert sum(1 for line in old_in if line["type"] == "D") <= eof["sent"]
    # Nothing reached the old connection once the gateway saw it end.
    assert after.index(closed) > max(after.index(line) for line in old_in)
    print(f"gateway stop: baseline {baseline} KiB, peak {peak} KiB, bound "
          f"{_rss_bound(baseline)} KiB; Logout after {detection:.2f} s (rule {LIVENESS_S} s); "
          f"{len(after) - seen_before} records after SIGCONT; old connection: {closed['reason']}")

    again = stack.engine("engine-again", port, account)
    stack.wait(lambda: _count(again, e="er") >= 50, 30.0, "orders answered after reconnecting")
    assert _logon_conn(gateway) != conn


def test_engine_stopped_under_load(stack: Stack) -> None:
    account = stack.material.accounts[0]
    gateway, gateway_port = stack.gateway("gateway", [account])
    [port] = stack.start_fixproxy([(account, gateway_port)], liveness_grace=GRACE)
    # At most ENGINE_WINDOW orders in flight: their reports fit in the frozen engine's socket
    # buffers, so fixproxy keeps reading the gateway and gets the answer to its Logout. The
    # shared-plane test below freezes an engine with no such limit, whose reports back up
    # into fixproxy and hold the gateway off.
    engine = stack.engine("engine", port, account, window=ENGINE_WINDOW)
    baseline = _warm_up(stack, engine)
    conn = _logon_conn(gateway)

    stopped = time.monotonic()
    engine.stop_signal()
    stack.wait(lambda: first(gateway.lines(), closed=conn) is not None, LIVENESS_S + 20,
               "the end of the gateway's connection")
    lines = gateway.lines()
    logout = first(lines, conn=conn, dir="in", type="5")
    assert logout is not None, "fixproxy closed the gateway's connection without a Logout"
    assert "engine sent nothing" in (logout["text"] or ""), logout
    assert first(lines, conn=conn, dir="out", type="5") is not None, "the Logout went unanswered"
    assert "logging_out -> closed on gateway_logout" in stack.fixproxy_log(), stack.logs()
    detection = logout["t"] - stopped
    assert LIVENESS_S - 1.0 <= detection <= LIVENESS_S + DETECTION_SLACK_S, detection
    # The gateway kept answering the orders in flight and heartbeating until then.
    answers = [line for line in lines if line.get("conn") == conn and line.get("dir") == "out"
               and line["t"] > stopped]
    assert answers, "the gateway sent nothing while the engine was stopped"
    peak = stack.rss_peak_kib
    assert peak <= _rss_bound(baseline), (peak, baseline)
    # Nothing of the engine's reached the gateway after fixproxy's Logout.
    assert all(line.get("type") != "D" for line in lines[lines.index(logout) + 1:]
               if line.get("conn") == conn)

    engine.cont_signal()
    stack.wait(lambda: first(engine.lines(), e="eof") is not None, 20.0,
               "the thawed engine to read to the end of its connection")
    eof = first(engine.lines(), e="eof")
    assert eof is not None
    assert eof["t"] > stopped
    late = gateway.lines()
    assert all(line.get("type") != "D" for line in late[late.index(logout) + 1:]
               if line.get("conn") == conn), "orders reached the gateway after the Logout"
    print(f"engine stop: baseline {baseline} KiB, peak {peak} KiB, bound "
          f"{_rss_bound(baseline)} KiB; Logout to the gateway after {detection:.2f} s (rule "
          f"{LIVENESS_S} s); {len(answers)} gateway messages while stopped; engine read "
          f"{eof['answered']} reports, then the end")


def _reports(engine: Peer) -> list[dict[str, Any]]:
    return [line for line in engine.lines() if line.get("e") == "er"]


@pytest.mark.parametrize("stopped_peer", ["gateway", "engine"])
def test_a_stopped_peer_does_not_hold_up_the_shared_plane(stack: Stack,
                                                          stopped_peer: str) -> None:
    alone, stuck, healthy = stack.material.accounts
    # One gateway process for the stuck session alone, so stopping it stops nothing else.
    shared_gateway, shared_port = stack.gateway("gateway-shared", [alone, healthy])
    stuck_gateway, stuck_port = stack.gateway("gateway-stuck", [stuck])
    ports = stack.start_fixproxy([(alone, shared_port), (stuck, stuck_port),
                                  (healthy, shared_port)], liveness_grace=GRACE)
    # The first session to log on relays in a thread of its own; the two after it share the
    # data plane's thread. The first keeps trading one order at a time (that is its
    # heartbeat).
    first_engine = stack.engine("engine-alone", ports[0], alone, window=1)
    stuck_engine = stack.engine("engine-stuck", ports[1], stuck)
    healthy_engine = stack.engine("engine-healthy", ports[2], healthy, window=50)
    baseline = _warm_up(stack, stuck_engine, healthy_engine)
    stuck_conn = _logon_conn(stuck_gateway)

    victim = stuck_gateway if stopped_peer == "gateway" else stuck_engine
    stopped = time.monotonic()
    victim.stop_signal()
    if stopped_peer == "gateway":
        ended = stack.wait(lambda: first(stuck_engine.lines(), e="eof") is not None,
                           LIVENESS_S + 20, "the end of the stuck session")
        logout = first(stuck_engine.lines(), e="logout")
        assert logout is not None and "gateway sent nothing" in logout["text"], logout
        detection = logout["t"] - stopped
    else:
        ended = stack.wait(lambda: first(stuck_gateway.lines(), closed=stuck_conn) is not None,
                           LIVENESS_S + 20, "the end of the stuck session's connection")
        # Its gateway may not read the Logout: the simulator reads nothing while it waits to
        # write, and fixproxy does not read a gateway while the engine's output is full, so
        # fixproxy waits logout_wait for the answer and closes. Its log says what it sent.
        assert LOGOUT_SENT_FOR_ENGINE in stack.fixproxy_log(), stack.logs()
        logout = first(stuck_gateway.lines(), conn=stuck_conn, dir="in", type="5")
        assert logout is None or "engine sent nothing" in (logout["text"] or ""), logout
        detection = (logout["t"] if logout is not None else ended - LOGOUT_WAIT_S) - stopped
    assert LIVENESS_S - 1.0 <= detection <= LIVENESS_S + DETECTION_SLACK_S, detection
    peak = stack.rss_peak_kib
    assert peak <= _rss_bound(baseline), (peak, baseline)
    victim.cont_signal()

    # The healthy session traded throughout, in order, with no long pause.
    during = [line for line in _reports(healthy_engine) if stopped <= line["t"] <= ended]
    assert len(during) > 10, "the healthy session stalled while the other one was stuck"
    numbers = [line["n"] for line in during]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), \
        "the healthy session's reports came out of order"
    moments = [stopped, *(line["t"] for line in during), ended]
    longest = max(later - earlier for earlier, later in itertools.pairwise(moments))
    assert longest <= GAP_LIMIT_S, longest
    # It still trades after the end of the stuck one, and the first session never stopped.
    count = len(_reports(healthy_engine))
    stack.wait(lambda: len(_reports(healthy_engine)) > count + 50, 10.0,
               "orders answered after the stuck session ended")
    assert first(healthy_engine.lines(), e="eof") is None
    assert first(first_engine.lines(), e="eof") is None
    assert len(_reports(first_engine)) > 0
    print(f"shared plane, {stopped_peer} stopped: healthy session answered {len(during)} "
          f"orders in the {ended - stopped:.2f} s stop, longest pause {longest * 1000:.0f} ms; "
          f"stuck session ended after {detection:.2f} s (rule {LIVENESS_S} s); RSS baseline "
          f"{baseline} KiB, peak {peak} KiB, bound {_rss_bound(baseline)} KiB; shared "
          f"gateway took {sum(1 for x in shared_gateway.lines() if x.get('type') == 'D')} "
          f"orders; the stuck session's Logout read by its peer: {logout is not None}")
