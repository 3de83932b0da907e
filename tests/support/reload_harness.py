"""A fixproxy reloading a real configuration file, against the simulated gateway.

:func:`running` starts the simulator and an in-process
:class:`~fixproxy.proxy.server.ProxyServer` reading a file that the test rewrites
(:meth:`Harness.write`) before it calls ``server.reload()``. Every session's API key is
registered with the simulator (:data:`KEYS`). The subprocess tests write the same file
(:func:`config_text`).
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
import trio
from prometheus_client import CollectorRegistry

from fixproxy.config.loader import load_config
from fixproxy.fix import tags
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.server import ProxyServer
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimConfig, SimGateway
from support.e2e import E2EMaterial

GUARD: Final = 20.0
"""Seconds one in-process test may take; a healthy one takes well under one."""
KEYS: Final = {
    "a": "0b6c1f5e-2a43-4d8e-9c71-5e3f2a1b7d40",
    "b": "1c7d2a6f-3b54-4e9f-8d82-6f4a3b2c8e51",
    "c": "2d8e3b7a-4c65-4fa0-9e93-7a5b4c3d9f62",
}
"""Session name -> its API key, each registered with the simulator."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_fixed_port() -> int:
    """A free port below the kernel's ephemeral range, for a process that binds it while it
    also binds port 0 elsewhere: an ephemeral port just released could be handed to that
    process's own bind(0) first, and its fixed bind would then fail."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 8000), low), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@dataclass(frozen=True)
class Session:
    name: str
    port: int
    key: str = ""
    private_key: Path | None = None

    @property
    def api_key(self) -> str:
        return self.key or KEYS[self.name]


def config_text(material: E2EMaterial, sim_port: int, state_dir: Path,
                sessions: Sequence[Session], *, pins: Sequence[str] | None = None,
                extra: str = "", session_extra: str = "") -> str:
    """A configuration file's text: ``extra`` goes into ``[proxy]``, ``session_extra`` into
    every ``[[session]]``."""
    pin_list = ", ".join(f'"{pin}"' for pin in (pins or [material.certs.leaf_pin]))
    text = f"""
[gateway]
host = "127.0.0.1"
server_name = "localhost"
ca_file = "{material.cert_files.ca_cert}"
pins = [{pin_list}]
connect_timeout = 5.0

[metrics]
listen = ""

[maintenance]
enabled = false

[proxy]
state_dir = "{state_dir}"
{extra}
"""
    for session in sessions:
        text += f"""
[[session]]
name = "{session.name}"
listen = "127.0.0.1:{session.port}"
endpoint = "KalshiNR"
port = {sim_port}
api_key = "{session.api_key}"
private_key = "{session.private_key or material.private_key}"
{session_extra}"""
    return text


def simulator(material: E2EMaterial) -> SimGateway:
    return SimGateway(SimConfig(ports={"KalshiNR": 0},
                                keys=dict.fromkeys(KEYS.values(), material.public_key)),
                      material.certs.server_context())


@dataclass
class Harness:
    """The simulator and an in-process ProxyServer reading a real configuration file."""

    material: E2EMaterial
    sim: SimGateway
    sim_port: int
    path: Path
    state_dir: Path
    metrics: Metrics
    server: ProxyServer = field(init=False)
    streams: list[trio.abc.AsyncResource] = field(default_factory=list)

    def write(self, sessions: Sequence[Session], *, pins: Sequence[str] | None = None,
              extra: str = "") -> None:
        self.path.write_text(config_text(self.material, self.sim_port, self.state_dir,
                                         sessions, pins=pins, extra=extra))

    async def engine(self, name: str, *, key: str = "") -> ScriptedEngine:
        stream = await trio.open_tcp_stream(*self.server.addresses[name])
        self.streams.append(stream)
        return ScriptedEngine(stream, sender=key or KEYS[name], target="KalshiNR")

    async def logged_on(self, name: str) -> ScriptedEngine:
        engine = await self.engine(name)
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
        return engine

    def reloads(self, result: str) -> float | None:
        return self.metrics.registry.get_sample_value("fixproxy_config_reload_total",
                                                      {"result": result})


@asynccontextmanager
async def running(material: E2EMaterial, tmp_path: Path,
                  sessions: Sequence[Session]) -> AsyncIterator[Harness]:
    sim = simulator(material)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(sim.serve)
            harness = Harness(material, sim, addresses["KalshiNR"][1],
                              tmp_path / "fixproxy.toml", tmp_path / "state",
                              Metrics(CollectorRegistry()))
            harness.write(sessions)
            harness.server = ProxyServer(load_config(harness.path), harness.metrics)
            await nursery.start(harness.server.serve, nursery)
            try:
                yield harness
            finally:
                for stream in harness.streams:
                    await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()


async def trades(engine: ScriptedEngine) -> None:
    """The engine's session is alive end to end: an order gets its ExecutionReport."""
    cl_ord_id = await engine.new_order()
    report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
    assert report.get(11) == cl_ord_id


async def refused(address: tuple[str, int]) -> None:
    with pytest.raises(OSError):
        stream = await trio.open_tcp_stream(*address)
        await stream.aclose()
