"""Readiness and status: ``/readyz``, ``/status``, the probe schedule and ``fixproxy status``.

The end-to-end cases run the simulated gateway and the proxy on loopback sockets (port 0),
with the simulator in a cancel scope of its own so a test can stop it and bring it back on
the same port. They wait on the health object's probe results, never on the wall clock. The
schedule itself (intervals, retries, logged-on sessions, reloads, maintenance) is checked on
trio's autojump clock with a fake connector.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing
from click.testing import CliRunner
from cryptography import x509
from prometheus_client import CollectorRegistry
from support.config import config_with
from support.e2e import LOOPBACK, SESSION_NAME, E2EMaterial

from fixproxy.cli.main import main
from fixproxy.config.loader import load_config
from fixproxy.config.model import MetricsConfig
from fixproxy.errors import ConfigError, ConnectError, FixProxyError, PinMismatchError
from fixproxy.fix import tags
from fixproxy.kalshi import ENDPOINTS
from fixproxy.net.tls import HandshakeInfo
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.health import NOT_CHECKED, Health, Readiness
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.runtime import SessionRuntime, build_runtime
from fixproxy.proxy.server import BoundAddresses, ProxyServer
from fixproxy.session.schedule import ALL_DAYS, MaintenanceSchedule
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimConfig, SimFaults, SimGateway

ENDPOINT: Final = "KalshiNR"
INTERVAL: Final = 0.2
"""Readiness interval of the end-to-end cases (and so their retry): short, yet a handful of
TLS handshakes a second at most."""
GUARD: Final = 10.0
WRONG_PIN: Final = "sha256/" + "A" * 43 + "="


# --- harness ---------------------------------------------------------------------------------


@dataclass
class SimControl:
    """The simulated gateway, startable and stoppable on the same port."""

    material: E2EMaterial
    nursery: trio.Nursery
    faults: SimFaults = field(default_factory=SimFaults)
    sim: SimGateway | None = None
    _scope: trio.CancelScope | None = None
    _done: trio.Event | None = None

    async def start(self, port: int = 0) -> tuple[str, int]:
        self.sim = SimGateway(SimConfig(ports={ENDPOINT: port},
                                        keys={self.material.api_key: self.material.public_key},
                                        faults=self.faults),
                              self.material.certs.server_context())
        self._scope, self._done = trio.CancelScope(), trio.Event()
        addresses: dict[str, tuple[str, int]] = await self.nursery.start(
            self._serve, self.sim, self._scope, self._done)
        return addresses[ENDPOINT]

    @staticmethod
    async def _serve(sim: SimGateway, scope: trio.CancelScope, done: trio.Event, *,
                     task_status: trio.TaskStatus[dict[str, tuple[str, int]]]) -> None:
        try:
            with scope:
                await sim.serve(task_status=task_status)
        finally:
            done.set()

    async def stop(self) -> None:
        """Cancel the simulator and wait until its listener is closed."""
        assert self._scope is not None and self._done is not None
        self._scope.cancel()
        await self._done.wait()


@dataclass
class Running:
    server: ProxyServer
    bound: BoundAddresses
    sim: SimControl
    gateway: tuple[str, int]
    metrics: Metrics

    @property
    def health(self) -> Health:
        return self.server.health

    @property
    def metrics_address(self) -> tuple[str, int]:
        assert self.bound.metrics is not None
        return self.bound.metrics

    async def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        return await http(self.metrics_address, path, method)

    async def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, _, body = await self.get(path)
        return status, json.loads(body)

    async def engine(self) -> ScriptedEngine:
        stream = await trio.open_tcp_stream(*self.bound.sessions[SESSION_NAME])
        return ScriptedEngine(stream, sender=self.sim.material.api_key, target=ENDPOINT)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"session": SESSION_NAME, **labels})


@asynccontextmanager
async def open_server(material: E2EMaterial, *, start_sim: bool = True,
                      gateway_port: int | None = None, pins: tuple[str, ...] | None = None,
                      maintenance: MaintenanceSchedule | None = None,
                      faults: SimFaults | None = None) -> AsyncIterator[Running]:
    """The simulator (unless ``start_sim`` is false) and a ProxyServer with the metrics
    endpoint on a free loopback port, all inside ``trio.fail_after(GUARD)``."""
    metrics = Metrics(CollectorRegistry())
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            sim = SimControl(material, nursery, faults or SimFaults())
            gateway = await sim.start() if start_sim else (LOOPBACK, 0)
            port = gateway_port if gateway_port is not None else gateway[1]
            session = material.session_config(
                name=SESSION_NAME, endpoint=ENDPOINTS[ENDPOINT], host=LOOPBACK, port=port,
                tls=material.tls_policy(pins=pins), connect_timeout=5.0)
            config = config_with(session, metrics=MetricsConfig(listen=(LOOPBACK, 0),
                                                                readiness_interval=INTERVAL),
                                 maintenance=maintenance)
            server = ProxyServer(config, metrics)
            bound: BoundAddresses = await nursery.start(server.serve, nursery)
            try:
                yield Running(server, bound, sim, (LOOPBACK, port), metrics)
            finally:
                nursery.cancel_scope.cancel()


async def http(address: tuple[str, int], path: str, method: str = "GET"
               ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 request over a raw TCP stream: status, headers (lower-case), body."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


async def wait_readiness(health: Health, predicate: Callable[[Readiness], bool],
                         name: str = SESSION_NAME) -> Readiness:
    """The session's readiness once ``predicate`` holds, re-checked after every probe."""
    while not predicate(readiness := health.session_readiness(name)):
        await health.wait_checked()
    return readiness


def dead_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def window_around(now: datetime) -> MaintenanceSchedule:
    """A daily UTC maintenance window that contains ``now`` (an hour either side)."""
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    return MaintenanceSchedule(days=ALL_DAYS, start=time(start.hour, start.minute),
                               end=time(end.hour, end.minute), timezone=ZoneInfo("UTC"))


# --- /readyz against the simulated gateway ---------------------------------------------------


async def test_readyz_is_200_when_the_gateway_passes(e2e_material: E2EMaterial) -> None:
    async with open_server(e2e_material) as run:
        await wait_readiness(run.health, lambda r: r.reason == "ok")
        status, headers, body = await run.get("/readyz")
        assert status == 200
        assert headers["content-type"] == "application/json"
        answer = json.loads(body)
        assert answer["ready"] is True
        session = answer["sessions"][SESSION_NAME]
        assert session["ready"] is True and session["reason"] == "ok"
        assert "localhost" in session["detail"]  # the certificate's subject
        assert datetime.fromisoformat(session["checked_at"]) <= datetime.now(UTC)

        # HEAD announces the GET body's length and sends none.
        head_status, head_headers, head_body = await run.get("/readyz", "HEAD")
        assert head_status == 200 and head_body == b""
        assert int(head_headers["content-length"]) > 0
        assert (await run.get("/healthz"))[0] == 200

        # Probes are counted apart from engine sessions; the simulator saw no FIX at all.
        assert (run.sample("fixproxy_readiness_checks_total", result="ok") or 0) >= 1
        assert run.sample("fixproxy_upstream_connects_total", result="ok") is None
        assert run.sim.sim is not None and not run.sim.sim.events
        subject = x509.load_pem_x509_certificate(
            e2e_material.certs.leaf_cert_pem).subject.rfc4514_string()
        assert run.sample("fixproxy_certificate_expiry_timestamp_seconds",
                          subject=subject) is not None


async def test_not_ready_until_the_first_probe_finishes(e2e_material: E2EMaterial) -> None:
    # A gateway that accepts TCP and never answers the handshake keeps the first probe open.
    accepted = trio.Event()
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    port = int(listeners[0].socket.getsockname()[1])

    async def hold(stream: trio.SocketStream) -> None:
        accepted.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hold, listeners)
        async with open_server(e2e_material, start_sim=False, gateway_port=port) as run:
            await accepted.wait()  # the first probe starts right away
            status, answer = await run.get_json("/readyz")
            assert status == 503
            assert answer["ready"] is False
            assert answer["sessions"][SESSION_NAME] == {
                "ready": False, "reason": "not_checked_yet", "detail": NOT_CHECKED.detail,
                "checked_at": None}
        nursery.cancel_scope.cancel()


async def test_readyz_flips_to_503_when_the_gateway_stops_and_back_when_it_returns(
        e2e_material: E2EMaterial) -> None:
    async with open_server(e2e_material) as run:
        await wait_readiness(run.health, lambda r: r.ready)
        assert (await run.get("/readyz"))[0] == 200

        await run.sim.stop()
        down = await wait_readiness(run.health, lambda r: not r.ready)
        assert down.reason == "refused"
        status, answer = await run.get_json("/readyz")
        assert status == 503
        assert answer["ready"] is False
        assert answer["sessions"][SESSION_NAME]["reason"] == "refused"
        assert str(run.gateway[1]) in answer["sessions"][SESSION_NAME]["detail"]

        assert await run.sim.start(run.gateway[1]) == run.gateway
        await wait_readiness(run.health, lambda r: r.ready)
        status, answer = await run.get_json("/readyz")
        assert status == 200
        assert answer["sessions"][SESSION_NAME]["reason"] == "ok"


async def test_readyz_names_a_pin_mismatch(e2e_material: E2EMaterial) -> None:
    async with open_server(e2e_material, pins=(WRONG_PIN,)) as run:
        await wait_readiness(run.health, lambda r: r.reason != NOT_CHECKED.reason)
        status, answer = await run.get_json("/readyz")
        assert status == 503
        session = answer["sessions"][SESSION_NAME]
        assert session["ready"] is False and session["reason"] == "pin_mismatch"
        assert e2e_material.certs.leaf_pin in session["detail"]  # what the gateway presented
        assert WRONG_PIN in session["detail"]  # what is configured
        assert run.sample("fixproxy_readiness_checks_total", result="pin_mismatch") == 1
        # Engine-session counters stay untouched by probes.
        assert run.sample("fixproxy_upstream_connects_total", result="pin_mismatch") is None
        assert run.sample("fixproxy_pin_mismatches_total") in (None, 0.0)


async def test_readyz_is_200_in_a_maintenance_window_even_if_unreachable(
        e2e_material: E2EMaterial) -> None:
    schedule = window_around(datetime.now(UTC))
    async with open_server(e2e_material, start_sim=False, gateway_port=dead_port(),
                           maintenance=schedule) as run:
        readiness = await wait_readiness(run.health, lambda r: r.reason != "not_checked_yet")
        assert readiness.reason == "maintenance"
        status, answer = await run.get_json("/readyz")
        assert status == 200
        session = answer["sessions"][SESSION_NAME]
        assert session["ready"] is True and session["reason"] == "maintenance"
        assert "refused" in session["detail"]  # the failed check is still shown
        _, status_answer = await run.get_json("/status")
        assert status_answer["maintenance"]["active"] is True
        assert status_answer["maintenance"]["window"]["end"]


# --- /status ---------------------------------------------------------------------------------


async def test_status_shows_a_live_session_then_its_end(e2e_material: E2EMaterial) -> None:
    # The gateway drops the connection at the third message after the Logon.
    async with open_server(e2e_material, faults=SimFaults(drop_after_messages=3)) as run:
        engine = await run.engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        await engine.new_order()
        await engine.receive_type(tags.MT_EXECUTION_REPORT)
        await engine.new_order()
        await engine.receive_type(tags.MT_EXECUTION_REPORT)

        status, body = await run.get_json("/status")
        assert status == 200
        assert body["version"]
        assert datetime.fromisoformat(body["now"]) <= datetime.now(UTC)
        assert body["maintenance"] == {"active": False, "scheduled": False}
        [session] = body["sessions"]
        assert session["session"] == SESSION_NAME
        assert session["state"] == "active"
        assert session["endpoint"] == ENDPOINT
        assert session["gateway"] == f"{run.gateway[0]}:{run.gateway[1]}"
        assert session["sequence_numbers"] == {"engine_to_gateway": 3, "gateway_to_engine": 3}
        ages = session["last_message"]
        assert set(ages) == {"engine_to_gateway", "gateway_to_engine"}
        assert all(0 <= age["age_seconds"] < GUARD for age in ages.values())
        assert session["readiness"]["ready"] is True
        assert session["readiness"]["reason"] == "logged_on"
        assert session["last_error"] is None

        await engine.new_order()  # the third message: the gateway drops the connection
        while await engine.receive() is not None:
            pass
        _, body = await run.get_json("/status")
        [session] = body["sessions"]
        assert session["state"] == "idle"
        assert session["connection"] is None
        assert session["sequence_numbers"]["engine_to_gateway"] == 4  # the last session's
        assert "closed the connection" in session["last_error"]["text"]
        assert session["readiness"]["ready"] is True  # the gateway is still there
        await engine.aclose()


# --- the probe schedule, on the autojump clock -----------------------------------------------


@dataclass
class FakeGateway:
    """A connector that records when it was called and answers as told."""

    fail: FixProxyError | None = None
    calls: list[float] = field(default_factory=list)

    async def __call__(self) -> tuple[trio.abc.Stream, HandshakeInfo]:
        self.calls.append(trio.current_time())
        await trio.sleep(0.01)
        if self.fail is not None:
            raise self.fail
        stream, _ = trio.testing.memory_stream_pair()
        return stream, HandshakeInfo(
            tls_version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", handshake_seconds=0.01,
            connect_seconds=0.005, leaf_subject="CN=gateway",
            leaf_not_after=datetime(2030, 1, 1, tzinfo=UTC), presented_pins=())


def fake_runtime(material: E2EMaterial, name: str, connect: FakeGateway,
                 manager: SessionManager, metrics: Metrics) -> SessionRuntime:
    session = material.session_config(name=name, endpoint=ENDPOINTS[ENDPOINT],
                                      host="gateway.test", port=8228, connect_timeout=5.0)
    runtime = build_runtime(session, metrics, manager)
    return dataclasses.replace(runtime, connect=connect)


@dataclass
class FakeMachine:
    state: str = "active"
    since: float = 0.0
    engine_seen: float = 0.0
    gateway_seen: float = 0.0
    engine_last_seq: int = 1
    gateway_last_seq: int = 1


def new_health(material: E2EMaterial, names: dict[str, FakeGateway], *,
               manager: SessionManager | None = None,
               now: Callable[[], datetime] | None = None
               ) -> tuple[Health, list[SessionRuntime], SessionManager]:
    manager = manager if manager is not None else SessionManager()
    metrics = Metrics(CollectorRegistry())
    runtimes = [fake_runtime(material, name, gateway, manager, metrics)
                for name, gateway in names.items()]
    health = Health(manager, lambda: runtimes, metrics, interval=30.0, retry=2.0,
                    **({"now": now} if now is not None else {}))
    return health, runtimes, manager


async def test_probe_schedule(e2e_material: E2EMaterial,
                              autojump_clock: trio.testing.MockClock) -> None:
    good, bad = FakeGateway(), FakeGateway(fail=ConnectError("cannot connect: refused"))
    health, _, _ = new_health(e2e_material, {"good": good, "bad": bad})
    assert health.session_readiness("good") == NOT_CHECKED
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(health.run)
        await trio.sleep(61)
        # Both are probed at once; a passing gateway every 30 s, a failing one every 2 s.
        assert [round(t - start) for t in good.calls] == [0, 30, 60]
        gaps = [later - earlier for earlier, later in itertools.pairwise(bad.calls)]
        assert len(gaps) == 30 and all(round(gap, 2) == 2.01 for gap in gaps)  # probe + 2 s
        assert health.session_readiness("good").reason == "ok"
        assert health.session_readiness("bad").reason == "refused"
        assert health.ready_json()["ready"] is False

        bad.fail = None  # the gateway is back: ready within one retry
        await trio.sleep(2.1)
        assert health.session_readiness("bad").reason == "ok"
        assert health.ready_json()["ready"] is True
        nursery.cancel_scope.cancel()


async def test_a_logged_on_session_is_not_probed(e2e_material: E2EMaterial,
                                                 autojump_clock: trio.testing.MockClock
                                                 ) -> None:
    gateway = FakeGateway()
    health, [runtime], manager = new_health(e2e_material, {"live": gateway})
    status = manager.status.declare("live", endpoint=ENDPOINT, gateway="gateway.test:8228",
                                    listen="127.0.0.1:9878", wall=0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(health.run)
        await health.wait_checked()
        assert len(gateway.calls) == 1
        status.connection_started(7, 0.0)
        status.session_started(7, FakeMachine(), translated=False)
        await trio.sleep(300)
        assert len(gateway.calls) == 1, "a logged-on session proves the gateway by itself"
        assert health.session_readiness("live").reason == "logged_on"

        gateway.fail = ConnectError("cannot connect: refused")
        status.connection_ended(7, 0.0)
        ended = trio.current_time()
        await health.wait_checked()  # probed again as soon as the connection ended
        assert gateway.calls[-1] - ended <= 2.0
        assert health.session_readiness("live").reason == "refused"
        nursery.cancel_scope.cancel()
    assert runtime.config.name == "live"


async def test_health_follows_a_reload(e2e_material: E2EMaterial,
                                       autojump_clock: trio.testing.MockClock) -> None:
    first, second = FakeGateway(), FakeGateway()
    health, runtimes, manager = new_health(e2e_material, {"first": first})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(health.run)
        await health.wait_checked()
        assert set(health.readiness()) == {"first"}

        added = fake_runtime(e2e_material, "second", second, manager, health.metrics)
        runtimes[:] = [added]  # a reload: "first" removed, "second" added
        assert health.readiness() == {"second": NOT_CHECKED}  # not ready until probed
        health.refresh()
        await health.wait_checked()
        assert health.readiness()["second"].reason == "ok"
        probes_of_first = len(first.calls)
        await trio.sleep(100)
        assert len(first.calls) == probes_of_first, "a removed session is no longer probed"
        assert len(second.calls) == 4  # at once, then every 30 s

        # Replaced with other settings: not ready again until the new settings pass.
        moved = dataclasses.replace(added, config=dataclasses.replace(added.config, port=9999))
        runtimes[:] = [moved]
        health.refresh()
        await trio.testing.wait_all_tasks_blocked()
        assert health.readiness()["second"] == NOT_CHECKED
        await health.wait_checked()
        assert health.readiness()["second"].reason == "ok"
        nursery.cancel_scope.cancel()


async def test_maintenance_excuses_a_failing_gateway_without_hammering_it(
        e2e_material: E2EMaterial, autojump_clock: trio.testing.MockClock) -> None:
    inside = datetime(2025, 1, 9, 8, 30, tzinfo=UTC)  # a Thursday, 03:30 New York
    schedule = MaintenanceSchedule(days=frozenset({3}), start=time(3), end=time(5),
                                   timezone=ZoneInfo("America/New_York"))
    down = FakeGateway(fail=PinMismatchError("no pin matched", presented=("sha256/x",),
                                             expected=("sha256/y",)))
    clock = {"now": inside}
    health, _, _ = new_health(e2e_material, {"s": down}, manager=SessionManager(schedule),
                              now=lambda: clock["now"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(health.run)
        await trio.sleep(61)
        assert len(down.calls) == 3, "during maintenance a failing gateway is probed at the " \
                                     "normal interval"
        readiness = health.session_readiness("s")
        assert readiness.ready and readiness.reason == "maintenance"
        assert "pin_mismatch" in readiness.detail
        maintenance = health.status_json()["maintenance"]
        assert isinstance(maintenance, dict) and maintenance["active"] is True

        clock["now"] = inside + timedelta(hours=2)  # the window is over
        assert health.session_readiness("s").reason == "pin_mismatch"
        assert health.ready_json()["ready"] is False
        nursery.cancel_scope.cancel()


async def test_draining_is_not_ready(e2e_material: E2EMaterial,
                                     autojump_clock: trio.testing.MockClock) -> None:
    health, _, manager = new_health(e2e_material, {"s": FakeGateway()})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(health.run)
        await health.wait_checked()
        assert health.ready_json()["ready"] is True
        await manager.drain()  # no live sessions: returns at once
        answer = health.ready_json()
        assert answer["ready"] is False and answer["draining"] is True
        nursery.cancel_scope.cancel()


# --- configuration ---------------------------------------------------------------------------


def write_config(directory: Path, metrics: str, *, api_key: str) -> Path:
    path = directory / "fixproxy.toml"
    path.write_text(f"""
[metrics]
{metrics}

[[session]]
name = "{SESSION_NAME}"
listen = "127.0.0.1:1"
endpoint = "{ENDPOINT}"
api_key = "{api_key}"
private_key = "missing.key"
""")
    return path


@pytest.mark.parametrize(("line", "expected"), [
    ("", 30.0),
    ("readiness_interval = 5", 5.0),
    ("readiness_interval = 3600", 3600.0),
])
def test_readiness_interval_setting(tmp_path: Path, line: str, expected: float,
                                    e2e_material: E2EMaterial) -> None:
    path = write_config(tmp_path, line, api_key=e2e_material.api_key)
    assert load_config(path, check_files=False).metrics.readiness_interval == expected


@pytest.mark.parametrize("value", ["0", "-1", "3601", "nan", '"30"', "true"])
def test_readiness_interval_is_checked(tmp_path: Path, value: str,
                                       e2e_material: E2EMaterial) -> None:
    path = write_config(tmp_path, f"readiness_interval = {value}",
                        api_key=e2e_material.api_key)
    with pytest.raises(ConfigError) as caught:
        load_config(path, check_files=False)
    assert caught.value.key == "metrics.readiness_interval"


# --- fixproxy status -------------------------------------------------------------------------


async def invoke(args: list[str]) -> Any:
    """Run the CLI in a worker thread, so the server keeps answering in this one."""
    runner = CliRunner()
    return await trio.to_thread.run_sync(lambda: runner.invoke(main, args))


async def test_fixproxy_status_against_a_live_server(e2e_material: E2EMaterial,
                                                     tmp_path: Path) -> None:
    async with open_server(e2e_material) as run:
        await wait_readiness(run.health, lambda r: r.reason == "ok")
        host, port = run.metrics_address
        config = write_config(tmp_path, f'listen = "{host}:{port}"',
                              api_key=e2e_material.api_key)

        table = await invoke(["status", "--config", str(config)])
        assert table.exit_code == 0, table.output
        header, columns, row = table.output.splitlines()[:3]
        assert header.startswith("fixproxy ") and "no maintenance window" in header
        assert columns.split() == ["SESSION", "STATE", "SINCE", "ENDPOINT", "SEQ", "OUT/IN",
                                   "LAST", "OUT/IN", "READY", "LAST", "ERROR"]
        cells = row.split()
        assert cells[:2] == [SESSION_NAME, "idle"]
        assert ENDPOINT in cells and "yes" in cells and "(ok)" in cells
        assert "-/-" in cells  # no connection yet: no sequence numbers, no messages

        raw = await invoke(["status", "--config", str(config), "--json"])
        assert raw.exit_code == 0, raw.output
        answer = json.loads(raw.output)
        assert [s["session"] for s in answer["sessions"]] == [SESSION_NAME]
        assert answer["sessions"][0]["readiness"]["reason"] == "ok"


async def test_fixproxy_status_explains_what_is_missing(e2e_material: E2EMaterial,
                                                        tmp_path: Path) -> None:
    disabled = write_config(tmp_path, 'listen = ""', api_key=e2e_material.api_key)
    result = await invoke(["status", "--config", str(disabled)])
    assert result.exit_code == 1
    assert "metrics endpoint is disabled" in result.output

    port = dead_port()
    stopped = write_config(tmp_path, f'listen = "127.0.0.1:{port}"',
                           api_key=e2e_material.api_key)
    result = await invoke(["status", "--config", str(stopped)])
    assert result.exit_code == 1
    assert f"cannot reach fixproxy at http://127.0.0.1:{port}/status" in result.output
    assert "is fixproxy running" in result.output


def test_readiness_json() -> None:
    assert Readiness(True, "ok", "fine", 0.0).to_json() == {
        "ready": True, "reason": "ok", "detail": "fine", "checked_at": "1970-01-01T00:00:00.000Z"}
    assert NOT_CHECKED.to_json()["checked_at"] is None
