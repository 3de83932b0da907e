"""A simulator serving KalshiNR and KalshiDC, and fixproxy with drop-copy recovery in front of it.

:func:`open_recovery_sim` starts the simulated gateway with resting orders that fill
``fill_after`` seconds later, two registered keys (the session's and the drop copy's) and the
allowlist switch; :func:`run_recovery_proxy` runs fixproxy with one KalshiNR session whose
``[session.recovery]`` points at the simulator's drop copy (or at a dead port), and can be
cancelled and started again over the same state directory, as a killed and restarted fixproxy.
Both are used by the scripted end-to-end tests and the QuickFIX interop tests of recovery.
"""

from __future__ import annotations

import functools
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from prometheus_client import CollectorRegistry

from fixproxy.config.model import Config, ProxyConfig, RecoveryConfig
from fixproxy.kalshi import ENDPOINTS
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.server import BoundAddresses, serve_proxy
from fixproxy.signing import generate_key_pair, load_public_key
from fixproxy.sim.gateway import SimConfig, SimGateway
from support.config import config_with, session_config
from support.e2e import E2EMaterial

SESSION: Final = "nr"
FILL_AFTER: Final = 0.5
"""Seconds after which the simulator fills a resting order."""


@dataclass(frozen=True, slots=True)
class RecoveryKeys:
    """The drop copy's own API key and its key files."""

    api_key: str
    private_key: Path
    public_key: RSAPublicKey


def make_drop_copy_keys(directory: Path) -> RecoveryKeys:
    private, public = generate_key_pair(directory, "drop-copy")
    return RecoveryKeys(str(uuid.uuid4()), private, load_public_key(public))


@asynccontextmanager
async def open_recovery_sim(material: E2EMaterial, keys: RecoveryKeys, *,
                            fill_after: float | None = FILL_AFTER, exchange_indexes: int = 2,
                            allowlisted: bool = True
                            ) -> AsyncIterator[tuple[SimGateway, dict[str, tuple[str, int]]]]:
    """The simulator on KalshiNR and KalshiDC (free ports); yields it and its addresses."""
    sim = SimGateway(SimConfig(
        ports={"KalshiNR": 0, "KalshiDC": 0},
        keys={material.api_key: material.public_key, keys.api_key: keys.public_key},
        fill_after=fill_after, exchange_indexes=exchange_indexes,
        replay_allowlisted=allowlisted), material.certs.server_context())
    async with trio.open_nursery() as nursery:
        addresses: dict[str, tuple[str, int]] = await nursery.start(sim.serve)
        yield sim, addresses
        nursery.cancel_scope.cancel()


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(slots=True)
class RecoveryProxy:
    """fixproxy with one recovering KalshiNR session; restartable over its state dir."""

    material: E2EMaterial
    keys: RecoveryKeys
    addresses: dict[str, tuple[str, int]]
    state_dir: Path | None
    dc_port: int | None = None
    """Send the drop copy here instead of to the simulator (a dead port)."""
    listen_port: int = 0
    metrics: Metrics | None = None
    address: tuple[str, int] | None = None

    def config(self, *, names: tuple[str, ...] = (SESSION,)) -> Config:
        """The configuration: one session per name, all with the session's key (a second
        name is a standby engine's listener)."""
        nr_host, nr_port = self.addresses["KalshiNR"]
        dc_host, dc_port = self.addresses["KalshiDC"]
        tls = self.material.tls_policy()
        recovery = RecoveryConfig(
            api_key=self.keys.api_key, private_key=self.keys.private_key, host=dc_host,
            port=self.dc_port if self.dc_port is not None else dc_port, tls=tls,
            timeout=5.0, save_interval=0.05)
        sessions = tuple(
            session_config(name=name, endpoint=ENDPOINTS["KalshiNR"], host=nr_host,
                           port=nr_port, api_key=self.material.api_key,
                           private_key=self.material.private_key, tls=tls,
                           connect_timeout=5.0,
                           listen=("127.0.0.1", self.listen_port if index == 0 else 0),
                           recovery=recovery)
            for index, name in enumerate(names))
        return config_with(*sessions, proxy=ProxyConfig(state_dir=self.state_dir))

    def sample(self, name: str, **labels: str) -> float:
        assert self.metrics is not None
        value = self.metrics.registry.get_sample_value(name, {"session": SESSION, **labels})
        return 0.0 if value is None else value


@asynccontextmanager
async def run_recovery_proxy(proxy: RecoveryProxy, *, names: tuple[str, ...] = (SESSION,)
                             ) -> AsyncIterator[BoundAddresses]:
    """Run fixproxy until the block ends, then cancel it (no clean shutdown: a kill, as far
    as the state on disk is concerned). The engine port stays the same across runs."""
    proxy.metrics = Metrics(CollectorRegistry())
    async with trio.open_nursery() as nursery:
        bound: BoundAddresses = await nursery.start(functools.partial(
            serve_proxy, proxy.config(names=names), proxy.metrics))
        proxy.address = bound.sessions[SESSION]
        proxy.listen_port = proxy.address[1]
        yield bound
        nursery.cancel_scope.cancel()

