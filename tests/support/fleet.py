"""Many sessions at once through one in-process fixproxy, on real loopback sockets and real TLS.

:func:`open_fleet` starts the simulated gateway with ``count`` registered API keys and a
:class:`~fixproxy.proxy.server.ProxyServer` serving one session per key, each on its own
loopback port, pinned to the simulator's leaf: the production path, where every logged-on
session is relayed by a thread of its own. The server is stopped the way
:func:`~fixproxy.proxy.server.run_until_signal` stops it on SIGTERM (:meth:`Fleet.stop`), and
the simulator can be taken away under every session at once (:meth:`Fleet.drop_gateway`).

:func:`open_fleet_process` runs the same sessions in ``fixproxy run`` as a real process, for
real signals.

A :class:`Trader` is an engine that pipelines orders from one task while another reads the
answers, with a bounded window of orders in flight: heavy traffic whose backlog, and so the
test's duration and the simulator's event record, stays bounded.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio
import trio.testing
from prometheus_client import CollectorRegistry

from fixproxy.config.loader import load_config
from fixproxy.config.model import Config, GatewayConfig, MetricsConfig, ProxyConfig, SessionConfig
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, utc_timestamp
from fixproxy.kalshi import ENDPOINTS
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.server import ProxyServer
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimConfig, SimFaults, SimGateway
from support.e2e import LOOPBACK, E2EMaterial
from support.reload_harness import Session, config_text, free_port

ENDPOINT: Final = "KalshiNR"
RELAY_THREAD_PREFIX: Final = "fixproxy session "
DATA_PLANE_THREAD: Final = "fixproxy data plane"
"""What admission names a thread while it runs a session relay (trio puts the thread's own
name back once the relay returns, so the name marks a relay in progress, not a cached idle
worker)."""
SIM_EVENTS: Final = 1_000_000
"""Messages the simulator records: every message of a heavy-traffic test, so a test can
compare what each engine received with what the gateway sent."""
WINDOW: Final = 400
"""Orders a :class:`Trader` keeps in flight: some 80 KB of orders, so the relay's buffers and
the kernel's are busy, while the backlog stays a fraction of a second of the simulator's work."""
BATCH: Final = 20
"""Orders a :class:`Trader` writes at most in one write, as a pipelining engine does."""


def fleet_key(index: int) -> str:
    """A fixed, well-formed UUID4 API key per session index."""
    return str(uuid.UUID(int=0x5EED_0000 + index, version=4))


def session_name(index: int) -> str:
    return f"s{index:02d}"


def relay_threads() -> list[str]:
    """Names of the threads running a session relay of its own now (a session logging on,
    or one the data plane could not take)."""
    return sorted(thread.name for thread in threading.enumerate()
                  if thread.name.startswith(RELAY_THREAD_PREFIX))


def data_plane_threads() -> list[str]:
    """Names of the threads running the data plane's shared loop now."""
    return [thread.name for thread in threading.enumerate()
            if thread.name == DATA_PLANE_THREAD]


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Return once ``predicate()`` holds; re-checked whenever trio's tasks are all idle (the
    relay threads end on their own time). Bounded by the caller's ``fail_after``."""
    while not predicate():
        await trio.testing.wait_all_tasks_blocked(0.01)


class SessionsView:
    """What a test does with the fleet's sessions, whichever process serves them."""

    sim: SimGateway
    keys: dict[str, str]
    """Session name -> its API key."""
    _streams: list[trio.abc.AsyncResource]

    def address(self, name: str) -> tuple[str, int]:
        """Where session ``name`` listens for engines."""
        raise NotImplementedError

    @property
    def names(self) -> list[str]:
        return list(self.keys)

    async def connect(self, name: str) -> ScriptedEngine:
        """An engine connected to session ``name`` (closed when the fleet closes)."""
        stream = await trio.open_tcp_stream(*self.address(name))
        self._streams.append(stream)
        return ScriptedEngine(stream, sender=self.keys[name], target=ENDPOINT)

    async def logged_on(self, name: str) -> ScriptedEngine:
        engine = await self.connect(name)
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON, (name, answer)
        return engine

    def sim_conn(self, name: str) -> int:
        """The simulator's connection id of the latest Logon with session ``name``'s key."""
        key = self.keys[name]
        conns = [event.conn_id for event in self.sim.events
                 if event.direction == "in" and event.msg_type == tags.MT_LOGON
                 and event.api_key == key]
        assert conns, f"the simulator received no Logon for {name}"
        return conns[-1]

    def sim_raw(self, conn: int, direction: str, msg_type: bytes) -> list[bytes]:
        """What the simulator received (``in``) or sent (``out``) on ``conn``, in order."""
        return [event.raw for event in self.sim.events
                if event.conn_id == conn and event.direction == direction
                and event.msg_type == msg_type]

    async def aclose_streams(self) -> None:
        for stream in self._streams:
            await trio.aclose_forcefully(stream)
        self._streams.clear()


@dataclass(slots=True, kw_only=True)
class Fleet(SessionsView):
    """A running simulator and an in-process fixproxy with one session per API key."""

    material: E2EMaterial
    sim: SimGateway
    server: ProxyServer
    metrics: Metrics
    keys: dict[str, str]
    _stop: trio.Event
    stopped: trio.Event
    """Set once the server's nursery has returned after :meth:`stop`."""
    _sim_scope: trio.CancelScope
    drained: list[bool] = field(default_factory=list)
    """After :meth:`stop`: [True] if every session ended within shutdown_timeout."""
    files: ConfigFile | None = None
    """The configuration file, when the fleet reads one (see :func:`open_fleet`)."""
    _streams: list[trio.abc.AsyncResource] = field(default_factory=list)

    def address(self, name: str) -> tuple[str, int]:
        return self.server.addresses[name]

    def sample(self, metric: str, name: str, **labels: str) -> float:
        """A sample of session ``name``'s metrics; 0 when it was never counted."""
        value = self.metrics.registry.get_sample_value(metric, {"session": name, **labels})
        return 0.0 if value is None else value

    async def stop(self) -> None:
        """Stop the server as SIGTERM does, and wait until it has returned."""
        self._stop.set()
        await self.stopped.wait()

    def drop_gateway(self) -> None:
        """Take the simulator away: every connection it holds closes in the same trio pass,
        with no Logout and no TLS close_notify."""
        self._sim_scope.cancel()


async def _run_sim(sim: SimGateway, *,
                   task_status: trio.TaskStatus[tuple[dict[str, tuple[str, int]],
                                                      trio.CancelScope]]) -> None:
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(sim.serve)
        task_status.started((addresses, nursery.cancel_scope))


async def _run_proxy(config: Config, metrics: Metrics, stop: trio.Event, stopped: trio.Event,
                     drained: list[bool], *,
                     task_status: trio.TaskStatus[ProxyServer]) -> None:
    """Serve until ``stop``; then what run_until_signal does on SIGTERM: stop listening, ask
    every session to log out, wait up to shutdown_timeout, cancel what is left, return."""
    server = ProxyServer(config, metrics)
    async with trio.open_nursery() as sessions:
        await sessions.start(server.serve, sessions)
        task_status.started(server)
        await stop.wait()
        server.stop_listening()
        with trio.move_on_after(server.config.proxy.shutdown_timeout) as scope:
            await server.manager.drain()
        drained.append(not scope.cancelled_caught)
        sessions.cancel_scope.cancel()
    stopped.set()


@asynccontextmanager
async def open_fleet(material: E2EMaterial, count: int, *, guard: float,
                     faults: SimFaults | None = None,
                     session_overrides: Mapping[str, Any] | None = None,
                     shutdown_timeout: float = 10.0,
                     config_dir: Path | None = None,
                     configured: int | None = None) -> AsyncIterator[Fleet]:
    """The simulator and fixproxy with ``count`` sessions, all inside ``fail_after(guard)``.

    Args:
        faults: misbehaviour of the simulated gateway, for every connection.
        session_overrides: further :class:`SessionConfig` fields for every session.
        shutdown_timeout: ``[proxy] shutdown_timeout``, the bound :meth:`Fleet.stop` waits.
        config_dir: read the configuration from a file written there (listening on free
            ports), so that a test can rewrite it (:attr:`Fleet.files`) and call the
            server's ``reload()``; ``session_overrides`` do not apply then.
        configured: how many of the ``count`` sessions the first configuration has (the
            simulator knows every key, so a reload can add the others).
    """
    keys = {session_name(index): fleet_key(index) for index in range(count)}
    sim = SimGateway(SimConfig(ports={ENDPOINT: 0},
                               keys=dict.fromkeys(keys.values(), material.public_key),
                               faults=faults or SimFaults(), max_events=SIM_EVENTS),
                     material.certs.server_context())
    metrics = Metrics(CollectorRegistry())
    stop, stopped = trio.Event(), trio.Event()
    drained: list[bool] = []
    first = count if configured is None else configured
    with trio.fail_after(guard):
        async with trio.open_nursery() as nursery:
            addresses, sim_scope = await nursery.start(_run_sim, sim)
            sim_host, sim_port = addresses[ENDPOINT]
            files = None
            if config_dir is not None:
                files = ConfigFile(material, config_dir / "fixproxy.toml", config_dir / "state",
                                   sim_port, keys, shutdown_timeout)
                files.write(first)
                config = load_config(files.path)
            else:
                sessions = []
                for name, key in list(keys.items())[:first]:
                    session = SessionConfig(
                        name=name, listen=(LOOPBACK, 0), endpoint=ENDPOINTS[ENDPOINT],
                        host=sim_host, port=sim_port, api_key=key,
                        private_key=material.private_key, tls=material.tls_policy(),
                        connect_timeout=5.0)
                    if session_overrides:
                        session = dataclasses.replace(session, **session_overrides)
                    sessions.append(session)
                config = Config(gateway=GatewayConfig(), metrics=MetricsConfig(listen=None),
                                sessions=tuple(sessions),
                                proxy=ProxyConfig(shutdown_timeout=shutdown_timeout))
            server = await nursery.start(_run_proxy, config, metrics, stop, stopped, drained)
            fleet = Fleet(material=material, sim=sim, server=server, metrics=metrics,
                          keys=keys, _stop=stop, stopped=stopped, _sim_scope=sim_scope,
                          drained=drained, files=files)
            try:
                yield fleet
            finally:
                await fleet.aclose_streams()
                nursery.cancel_scope.cancel()


@dataclass(slots=True)
class ConfigFile:
    """The fleet's configuration as a file, rewritten by a test before a reload."""

    material: E2EMaterial
    path: Path
    state_dir: Path
    sim_port: int
    keys: Mapping[str, str]
    shutdown_timeout: float
    logout_wait: float | None = None
    ports: dict[str, int] = field(default_factory=dict)
    """Session name -> its listen port, kept from one version of the file to the next."""

    def write(self, count: int | Sequence[str], *, pins: Sequence[str] | None = None) -> None:
        """Write the first ``count`` sessions (or those named), with ``pins`` (default: the
        simulator's)."""
        names = list(self.keys)[:count] if isinstance(count, int) else list(count)
        sessions = [Session(name, self.ports.setdefault(name, free_port()), key=self.keys[name])
                    for name in names]
        text = config_text(
            self.material, self.sim_port, self.state_dir, sessions, pins=pins,
            extra=f"shutdown_timeout = {self.shutdown_timeout}",
            session_extra="" if self.logout_wait is None
            else f"logout_wait = {self.logout_wait}\n")
        self.path.write_text(text)


# --- as a real process ------------------------------------------------------------------


FIXPROXY: Final = [sys.executable, "-m", "fixproxy.cli"]


class ProcessOutput:
    """A subprocess's stderr, read as it comes so a test can wait for log lines (and so the
    process never blocks on a full pipe)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.text = ""
        self.ended = False
        self._changed = trio.Event()

    async def pump(self) -> None:
        while chunk := await self.stream.receive_some(65536):
            self.text += chunk.decode(errors="replace")
            self._changed.set()
            self._changed = trio.Event()
        self.ended = True
        self._changed.set()

    async def wait_for(self, marker: str, count: int = 1) -> None:
        while self.text.count(marker) < count:
            assert not self.ended, f"the output ended before {marker!r}:\n{self.text}"
            await self._changed.wait()


@dataclass(slots=True, kw_only=True)
class FleetProcess(SessionsView):
    """The simulator in this process and ``fixproxy run`` as a real one, reading a file."""

    sim: SimGateway
    keys: dict[str, str]
    files: ConfigFile
    process: trio.Process
    output: ProcessOutput
    _streams: list[trio.abc.AsyncResource] = field(default_factory=list)

    def address(self, name: str) -> tuple[str, int]:
        return LOOPBACK, self.files.ports[name]


@asynccontextmanager
async def open_fleet_process(material: E2EMaterial, count: int, *, guard: float,
                             config_dir: Path, configured: int | None = None,
                             shutdown_timeout: float = 10.0,
                             logout_wait: float | None = None) -> AsyncIterator[FleetProcess]:
    """Like :func:`open_fleet`, with ``fixproxy run`` as a subprocess: signals are real, and
    so is the process's exit. Returns once every configured session listens."""
    keys = {session_name(index): fleet_key(index) for index in range(count)}
    sim = SimGateway(SimConfig(ports={ENDPOINT: 0},
                               keys=dict.fromkeys(keys.values(), material.public_key),
                               max_events=SIM_EVENTS),
                     material.certs.server_context())
    first = count if configured is None else configured
    with trio.fail_after(guard):
        async with trio.open_nursery() as nursery:
            addresses, _ = await nursery.start(_run_sim, sim)
            files = ConfigFile(material, config_dir / "fixproxy.toml", config_dir / "state",
                               addresses[ENDPOINT][1], keys, shutdown_timeout, logout_wait)
            files.write(first)
            process = await trio.lowlevel.open_process(
                [*FIXPROXY, "run", "--config", str(files.path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert process.stderr is not None
            output = ProcessOutput(process.stderr)
            nursery.start_soon(output.pump)
            fleet = FleetProcess(sim=sim, keys=keys, files=files, process=process,
                                 output=output)
            try:
                await output.wait_for("listening on", first)
                yield fleet
            finally:
                await fleet.aclose_streams()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                nursery.cancel_scope.cancel()


# --- traffic --------------------------------------------------------------------------------


@dataclass(slots=True)
class Trader:
    """An engine that pipelines orders while it reads their ExecutionReports.

    :meth:`trade` writes orders in batches, keeping at most ``window`` unanswered, until
    :meth:`finish` (then returns once every order written is answered, leaving the engine
    free to log out) or until the connection ends (then returns at the close). Everything
    received is kept, in order.
    """

    engine: ScriptedEngine
    prefix: str
    window: int = WINDOW
    sent: list[bytes] = field(default_factory=list)
    """ClOrdIDs (11) of the orders written, in order (a write cut short by the close included)."""
    received: list[FixMessage] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    """The raw bytes of each message in :attr:`received`."""
    reports: int = 0
    closed: bool = False
    """The connection ended (fixproxy closed it)."""
    _finishing: bool = False
    _changed: trio.Event = field(default_factory=trio.Event)
    _scope: trio.CancelScope | None = None

    def report_ids(self) -> list[bytes | None]:
        return [message.get(11) for message in self.received
                if message.msg_type == tags.MT_EXECUTION_REPORT]

    def received_raw(self, msg_type: bytes) -> list[bytes]:
        return [raw for raw, message in zip(self.raws, self.received, strict=True)
                if message.msg_type == msg_type]

    async def trade(self) -> None:
        credit = trio.Semaphore(self.window)
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._write, credit)
            await self._read(credit)
            nursery.cancel_scope.cancel()

    def finish(self) -> None:
        """Write no more orders; :meth:`trade` returns once the last is answered."""
        self._finishing = True
        self._check_done()

    async def wait_reports(self, count: int) -> None:
        """Return once ``count`` ExecutionReports have arrived."""
        while self.reports < count:
            assert not self.closed, f"{self.prefix}: closed after {self.reports} reports"
            changed = self._changed
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _check_done(self) -> None:
        # Every order written is answered, so no write is under way: stopping the reader
        # and the writer here cuts no message in two.
        if self._finishing and self.reports == len(self.sent) and self._scope is not None:
            self._scope.cancel()

    async def _write(self, credit: trio.Semaphore) -> None:
        engine = self.engine
        try:
            while True:
                await credit.acquire()
                if self._finishing:
                    return
                batch = [self.order()]
                while len(batch) < BATCH:
                    try:
                        credit.acquire_nowait()
                    except trio.WouldBlock:
                        break
                    batch.append(self.order())
                await engine.send_raw(b"".join(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # fixproxy closed the connection (a shutdown, a dropped gateway)

    def order(self) -> bytes:
        """A NewOrderSingle with the next ClOrdID (noted in :attr:`sent`), to write."""
        cl_ord_id = f"{self.prefix}-{len(self.sent)}".encode()
        self.sent.append(cl_ord_id)
        return self.engine.build(tags.MT_NEW_ORDER_SINGLE, [
            (11, cl_ord_id), (38, 1), (40, 2), (44, 50), (54, 1), (55, "HIGHNY-23DEC31"),
            (59, 1), (60, utc_timestamp())])

    async def _read(self, credit: trio.Semaphore) -> None:
        while True:
            message = await self.engine.receive()
            if message is None:
                self.closed = True
                self._notify()
                return
            self.received.append(message)
            self.raws.append(self.engine.transcript[-1][1])
            if message.msg_type == tags.MT_EXECUTION_REPORT:
                self.reports += 1
                credit.release()
                self._notify()
                self._check_done()
