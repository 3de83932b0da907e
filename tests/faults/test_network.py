"""Real network faults: a link that goes dark, a gateway that reboots behind it, a small MTU.

The simulated gateway (``fixproxy sim``) runs in one network namespace, fixproxy (``fixproxy
run``) in another, joined by a veth link (``tests/support/netns.py``); the engine is this
test, talking to fixproxy on the proxy namespace's own 127.0.0.1 through sockets made in that
namespace. Nothing here touches an address outside the two namespaces.

The engine logs on with HeartBtInt 4 (the simulator takes nothing lower), so fixproxy's
liveness bound is 2 x 4 s + ``liveness_grace`` (1 s here) = 9 s of silence from a peer.
Before each fault the engine sends a TestRequest and waits for its Heartbeat, so the gateway's
last message is known to within a round trip and the detection time can be held to the bound
from both sides. Those tolerances are about correctness (the rule fires, not early and not
minutes late), not speed.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
import trio
from support.netns import NetPair, veth_pair

from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.sim.engine import ScriptedEngine

pytestmark = [pytest.mark.faults]

API_KEY: Final = "0f6c1f7e-1b1a-4c55-9d0e-6a0c3f3c8b21"
HEART_BT_INT: Final = 4
GRACE: Final = 1
LIVENESS_BOUND: Final = 2 * HEART_BT_INT + GRACE
CONNECT_TIMEOUT: Final = 2
BACKOFF_FLOOR: Final = 1
GATEWAY_PORT: Final = 8228
LISTEN_PORT: Final = 9878
START_TIMEOUT: Final = 20
SILENCE_TEXT: Final = "the Kalshi gateway sent nothing for longer than 2 x HeartBtInt"


@dataclass
class Stack:
    """The gateway and fixproxy of one test, each a process in its namespace."""

    net: NetPair
    workdir: Path
    sim: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    sims_started: int = 0
    figures: dict[str, float] = field(default_factory=dict)

    def start_sim(self) -> None:
        """Start (or restart, with the same certificate and port) the simulated gateway."""
        self.sims_started += 1
        log = f"sim-{self.sims_started}.log"
        self.sim = self.net.start(self.net.gw, [
            sys.executable, "-m", "fixproxy.cli", "sim", "--host", self.net.gw_address,
            "--base-port", str(GATEWAY_PORT), "--key", f"{API_KEY}=keys/engine.pub.pem",
            "--cert-out", "certs", "--config-out", "fixproxy.toml"], log)
        _wait_for(lambda: "simulated gateway listening" in self.net.log_text(log),
                  self.sim, f"the simulator ({log})", self.net, log)

    def start_proxy(self) -> None:
        config = self.workdir / "fixproxy.toml"
        text = config.read_text()
        text = text.replace('private_key = "keys/engine.key"',
                            'private_key = "keys/engine.key"\n'
                            f"liveness_grace = {GRACE}\nconnect_timeout = {CONNECT_TIMEOUT}")
        text += f"\n[backoff]\nfloor = {BACKOFF_FLOOR}\nceiling = 4\n"
        config.write_text(text)
        self.proxy = self.net.start(self.net.px, [
            sys.executable, "-m", "fixproxy.cli", "run", "--config", "fixproxy.toml"],
            "fixproxy.log")
        _wait_for(lambda: " listening on 127.0.0.1" in self.net.log_text("fixproxy.log"),
                  self.proxy, "fixproxy", self.net, "fixproxy.log")

    def sim_log(self) -> str:
        return "".join(self.net.log_text(f"sim-{n}.log")
                       for n in range(1, self.sims_started + 1))

    def logs(self) -> str:
        return (f"--- fixproxy.log\n{self.net.log_text('fixproxy.log')[-6000:]}\n"
                f"--- simulator logs\n{self.sim_log()[-4000:]}")


def _wait_for(ready: object, process: subprocess.Popen[bytes], what: str, net: NetPair,
              log: str) -> None:
    assert callable(ready)
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{net.log_text(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready within {START_TIMEOUT} s:\n{net.log_text(log)}")
        time.sleep(0.05)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with veth_pair(tmp_path) as net:
        keys = tmp_path / "keys"
        subprocess.run([sys.executable, "-m", "fixproxy.cli", "keygen", "--out", str(keys),
                        "--name", "engine"], check=True, capture_output=True, timeout=60)
        built = Stack(net, tmp_path)
        built.start_sim()
        built.start_proxy()
        yield built
        if built.figures:
            print(f"\nfigures: {built.figures}")


class Engine:
    """The test's FIX engine inside the proxy namespace: heartbeats kept, TestRequests
    answered, every message it receives kept in order."""

    def __init__(self, scripted: ScriptedEngine) -> None:
        self.scripted = scripted
        self.send_lock = trio.Lock()
        self.received: list[FixMessage] = []
        self.arrived = trio.Condition()
        self.closed = False
        self.done = trio.Event()

    async def send(self, msg_type: bytes, fields: list[tuple[int, bytes | int | str]]
                   ) -> bytes:
        async with self.send_lock:
            return await self.scripted.send(msg_type, fields)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Heartbeat and read until the connection closes."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            nursery.start_soon(self._heartbeats)
            try:
                while True:
                    message = await self.scripted.receive()
                    if message is None:
                        break
                    if message.msg_type == tags.MT_TEST_REQUEST:
                        await self.send(tags.MT_HEARTBEAT, [
                            (tags.TEST_REQ_ID, message.get(tags.TEST_REQ_ID) or b"")])
                    async with self.arrived:
                        self.received.append(message)
                        self.arrived.notify_all()
            finally:
                self.closed = True
                self.done.set()
                async with self.arrived:
                    self.arrived.notify_all()
                nursery.cancel_scope.cancel()

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(HEART_BT_INT)
            try:
                await self.send(tags.MT_HEARTBEAT, [])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def wait_for(self, msg_type: bytes, timeout: float, *,
                       start: int = 0) -> FixMessage:
        """The first message of ``msg_type`` received at index ``start`` or later."""
        with trio.fail_after(timeout):
            async with self.arrived:
                while True:
                    for message in self.received[start:]:
                        if message.msg_type == msg_type:
                            return message
                    if self.closed:
                        raise AssertionError(f"closed before 35={msg_type.decode()}: "
                                             f"{[m.msg_type for m in self.received]}")
                    await self.arrived.wait()

    async def sync(self, test_req_id: str) -> None:
        """A TestRequest answered: the gateway's last message is now."""
        start = len(self.received)
        await self.send(tags.MT_TEST_REQUEST, [(tags.TEST_REQ_ID, test_req_id)])
        with trio.fail_after(5):
            while True:
                heartbeat = await self.wait_for(tags.MT_HEARTBEAT, 5, start=start)
                if heartbeat.get(tags.TEST_REQ_ID) == test_req_id.encode():
                    return
                start = self.received.index(heartbeat) + 1


async def _connect(stack: Stack) -> ScriptedEngine:
    sock = trio.socket.from_stdlib_socket(stack.net.socket(stack.net.px))
    try:
        await sock.connect(("127.0.0.1", LISTEN_PORT))
    except OSError:
        sock.close()
        raise
    return ScriptedEngine(trio.SocketStream(sock), sender=API_KEY, target="KalshiNR")


async def _log_on(stack: Stack) -> tuple[ScriptedEngine, FixMessage | None]:
    scripted = await _connect(stack)
    with trio.fail_after(CONNECT_TIMEOUT + 10):
        answer = await scripted.logon(heart_bt_int=HEART_BT_INT, reset=True)
    return scripted, answer


@asynccontextmanager
async def _session(stack: Stack) -> AsyncIterator[Engine]:
    """A logged-on engine, heartbeating and reading in the background."""
    scripted, answer = await _log_on(stack)
    assert answer is not None and answer.msg_type == tags.MT_LOGON, stack.logs()
    engine = Engine(scripted)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            yield engine
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(scripted.stream)


@pytest.fixture
async def engine_session(stack: Stack) -> AsyncIterator[Engine]:
    async with _session(stack) as engine:
        yield engine


@dataclass(frozen=True, slots=True)
class Attempt:
    at: float
    answer: bytes
    text: str


async def _reconnect_until_logged_on(stack: Stack, deadline: float
                                     ) -> tuple[list[Attempt], ScriptedEngine]:
    """Reconnect the way an engine does (every 0.5 s) until a Logon is answered."""
    attempts: list[Attempt] = []
    while time.monotonic() < deadline:
        try:
            scripted, answer = await _log_on(stack)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            attempts.append(Attempt(time.monotonic(), b"", f"no answer: {exc}"))
            await trio.sleep(0.5)
            continue
        kind = answer.msg_type if answer is not None else b""
        text = (answer.get_str(tags.TEXT) or "") if answer is not None else "closed"
        attempts.append(Attempt(time.monotonic(), kind, text))
        if kind == tags.MT_LOGON:
            return attempts, scripted
        await trio.aclose_forcefully(scripted.stream)
        await trio.sleep(0.5)
    raise AssertionError(f"no Logon answered before the deadline: {attempts}\n{stack.logs()}")


def _established_to_gateway(stack: Stack) -> list[str]:
    out = stack.net.run(stack.net.px, ["ss", "-tnH", "state", "established", "dst",
                                       stack.net.gw_address])
    return [line for line in out.splitlines() if line.strip()]


async def test_blackholed_link_is_detected_within_the_liveness_bound_then_recovers(
        stack: Stack, engine_session: Engine) -> None:
    """The link stops carrying packets (no FIN, no RST) for 3 x HeartBtInt."""
    engine = engine_session
    await engine.sync("before-blackhole")
    marker = len(engine.received)
    down_at = time.monotonic()
    stack.net.link(up=False)
    logout = await engine.wait_for(tags.MT_LOGOUT, LIVENESS_BOUND + 10, start=marker)
    detected = time.monotonic() - down_at
    text = logout.get_str(tags.TEXT) or ""
    assert SILENCE_TEXT in text, text
    # The gateway's last message came just before the link went down: the rule fires at the
    # bound, never before it, and not much after (its timer is checked on every wake-up).
    assert LIVENESS_BOUND - 0.5 <= detected <= LIVENESS_BOUND + 2, (detected, stack.logs())
    stack.figures["blackhole_detection_s"] = round(detected, 2)

    # The engine reconnects at once, while the link is still down: fixproxy cannot reach
    # Kalshi and says so, then holds the key's next Logon for its backoff.
    up_at = down_at + 3 * HEART_BT_INT
    async with trio.open_nursery() as nursery:
        async def link_up() -> None:
            await trio.sleep(max(0.0, up_at - time.monotonic()))
            stack.net.link(up=True)
        nursery.start_soon(link_up)
        attempts, scripted = await _reconnect_until_logged_on(stack, up_at + 30)
    await trio.aclose_forcefully(scripted.stream)
    refused = attempts[:-1]
    assert attempts[-1].at >= up_at, attempts
    assert refused, "no attempt was made while the link was down"
    upstream = [a for a in refused if "could not open TLS" in a.text]
    held = [a for a in refused if "holds new attempts" in a.text]
    assert upstream, [a.text for a in refused]
    assert len(upstream) + len(held) == len(refused), [a.text for a in refused]
    assert all(a.answer == tags.MT_LOGOUT for a in refused), refused
    for earlier, later in itertools.pairwise(upstream):
        # A failed connect starts a wait of at least floor / 2 before the next one.
        assert later.at - earlier.at >= BACKOFF_FLOOR / 2, attempts
    stack.figures["blackhole_relogon_after_link_up_s"] = round(attempts[-1].at - up_at, 2)
    stack.figures["blackhole_refused_attempts"] = len(refused)
    print(f"\nthe engine's Logout: {text}\nrefused: {[a.text for a in refused]}")


async def test_gateway_rebooted_behind_a_dark_link_answers_the_old_connection_with_a_reset(
        stack: Stack, engine_session: Engine) -> None:
    """The gateway host dies and comes back while the link is down; the link returns."""
    engine = engine_session
    await engine.sync("before-reboot")
    marker = len(engine.received)
    stack.net.link(up=False)
    assert stack.sim is not None
    stack.net.stop(stack.sim, signal.SIGKILL)
    stack.start_sim()
    stack.net.link(up=True)
    up_at = time.monotonic()
    # The next segment on the old connection (here the engine's order) reaches a kernel that
    # has no such connection, which answers with an RST.
    await engine.send(tags.MT_NEW_ORDER_SINGLE, [
        (11, "after-reboot"), (38, 1), (40, 2), (44, 50), (54, 1), (55, "HIGHNY-23DEC31"),
        (59, 1)])
    logout = await engine.wait_for(tags.MT_LOGOUT, LIVENESS_BOUND, start=marker)
    ended = time.monotonic() - up_at
    text = logout.get_str(tags.TEXT) or ""
    assert "closed the connection" in text or "reset" in text, text
    assert SILENCE_TEXT not in text, "ended by the liveness rule, not by the reset"
    assert ended < LIVENESS_BOUND - HEART_BT_INT, (ended, stack.logs())
    stack.figures["reboot_logout_after_link_up_s"] = round(ended, 2)
    with trio.fail_after(5):
        await engine.done.wait()
    assert _established_to_gateway(stack) == [], "the old connection lingers"
    attempts, scripted = await _reconnect_until_logged_on(stack, time.monotonic() + 20)
    await trio.aclose_forcefully(scripted.stream)
    stack.figures["reboot_relogon_attempts"] = len(attempts)
    print(f"\nthe engine's Logout: {text}")


ORDERS: Final = 10_000


async def test_ten_thousand_orders_cross_a_576_byte_mtu_in_order(stack: Stack) -> None:
    """Every message spans several TCP segments, every TLS record many."""
    stack.net.set_mtu(576)
    link = stack.net.run(stack.net.px, ["ip", "-o", "link", "show", stack.net.px_link])
    assert re.search(r"\bmtu 576\b", link), link
    async with _session(stack) as engine:
        # The connection to the gateway was opened over the small link: its segments carry
        # at most 536 bytes (less the TCP options).
        info = stack.net.run(stack.net.px, ["ss", "-tniH", "state", "established", "dst",
                                            stack.net.gw_address])
        mss = re.search(r"\bmss:(\d+)", info)
        assert mss is not None and int(mss.group(1)) <= 536, info
        stack.figures["mtu_576_mss"] = int(mss.group(1))
        await _pipeline_orders(stack, engine)


async def _pipeline_orders(stack: Stack, engine: Engine) -> None:
    marker = len(engine.received)
    started = time.monotonic()
    sent: list[bytes] = []
    for n in range(ORDERS):
        cl_ord_id = f"mtu-{n:05d}".encode()
        await engine.send(tags.MT_NEW_ORDER_SINGLE, [
            (11, cl_ord_id), (38, 1), (40, 2), (44, 50), (54, 1 + n % 2),
            (55, "HIGHNY-23DEC31"), (59, 1)])
        sent.append(cl_ord_id)
    with trio.fail_after(120):
        async with engine.arrived:
            while sum(1 for m in engine.received[marker:]
                      if m.msg_type == tags.MT_EXECUTION_REPORT) < ORDERS:
                assert not engine.closed, stack.logs()
                await engine.arrived.wait()
    elapsed = time.monotonic() - started
    reports = [m for m in engine.received[marker:] if m.msg_type == tags.MT_EXECUTION_REPORT]
    # Each report passed the strict framer (BodyLength and CheckSum), names the orders in the
    # order they were sent, and the gateway's numbers have no gap: nothing was lost, doubled
    # or reordered either way (the simulator logs out on any gap in the orders' numbers).
    assert [r.get(11) for r in reports] == sent
    numbers = [int(r.get(tags.MSG_SEQ_NUM) or b"0") for r in engine.received[marker:]]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    await engine.sync("after-mtu")
    assert not any(m.msg_type == tags.MT_LOGOUT for m in engine.received), stack.logs()
    stack.figures["mtu_576_orders"] = ORDERS
    stack.figures["mtu_576_seconds"] = round(elapsed, 2)
