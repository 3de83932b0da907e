"""End-to-end harness: the simulated Kalshi gateway and fixproxy, both on real loopback sockets.

:func:`open_proxy_pair` starts a :class:`~fixproxy.sim.gateway.SimGateway` on port 0 and
:func:`~fixproxy.server.serve_proxy` in front of it, pinned to the simulator's throwaway leaf,
in one nursery bounded by ``trio.fail_after``; leaving the block closes every engine the test
opened and cancels both servers. Knobs cover what the end-to-end suites vary: gateway faults,
the endpoint, the TLS policy, the gateway address (a dead port), session fields and the metrics
endpoint.

The certificates and the RSA key pair are made once per run (:func:`make_material`, exposed as
the session fixture ``e2e_material``, which ``tests/conftest.py`` registers for every test
through ``pytest_plugins``). Everything is written under pytest's temporary directory; the
private key is 0600.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from prometheus_client import CollectorRegistry

from fixproxy.config.model import MetricsConfig, SessionConfig, TLSPolicy
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, checksum
from fixproxy.kalshi import ENDPOINTS
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.server import BoundAddresses, serve_proxy
from fixproxy.signing import generate_key_pair, load_public_key
from fixproxy.sim.certs import CertificateFiles, SimCertificates, generate_certificates
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimConfig, SimEvent, SimFaults, SimGateway
from support.config import config_with, session_config

LOOPBACK: Final = "127.0.0.1"
SESSION_NAME: Final = "e2e"
DEFAULT_ENDPOINT: Final = "KalshiNR"
API_KEY: Final = "5f0c3a2e-8b1d-4c7e-9a6f-2d4b8e1c0f37"
"""A fixed UUID4: the session's FIX API key, registered with the simulator."""
GUARD_SECONDS: Final = 10.0
"""Upper bound on one end-to-end test; a healthy one takes a fraction of a second."""


@dataclass(frozen=True, slots=True)
class E2EMaterial:
    """Certificates and keys shared by every end-to-end test of a run."""

    certs: SimCertificates
    cert_files: CertificateFiles
    private_key: Path
    """RSA private key file, mode 0600."""
    public_key: RSAPublicKey
    api_key: str
    """A fixed UUID, registered with the simulator and configured as the session's key."""
    workdir: Path

    def tls_policy(self, *, pins: tuple[str, ...] | None = None,
                   ca_file: Path | None = None) -> TLSPolicy:
        """``ca+pin`` against the simulator's CA and leaf pin, either replaceable."""
        return TLSPolicy(server_name=self.certs.hostname, verify="ca+pin",
                         ca_file=ca_file if ca_file is not None else self.cert_files.ca_cert,
                         pins=pins if pins is not None else (self.certs.leaf_pin,),
                         pinned_cert=None)

    def session_config(self, **overrides: Any) -> SessionConfig:
        """:func:`~support.config.session_config` with this material's API key, private key
        and TLS policy; ``overrides`` win."""
        return session_config(**({"api_key": self.api_key, "private_key": self.private_key,
                                  "tls": self.tls_policy()} | dict(overrides)))


def make_material(directory: Path) -> E2EMaterial:
    """Generate a CA, a leaf for ``localhost`` (and 127.0.0.1) and an RSA key pair."""
    certs = generate_certificates("localhost")
    cert_files = certs.write(directory / "certs")
    key_path, public_path = generate_key_pair(directory / "keys")
    return E2EMaterial(certs=certs, cert_files=cert_files, private_key=key_path,
                       public_key=load_public_key(public_path),
                       api_key=API_KEY,
                       workdir=directory)


@pytest.fixture(scope="session", name="e2e_material")
def e2e_material_fixture(tmp_path_factory: pytest.TempPathFactory) -> E2EMaterial:
    """Certificates and an RSA key pair, made once per test run."""
    return make_material(tmp_path_factory.mktemp("e2e"))


@dataclass(slots=True)
class ProxyPair:
    """A running simulator and fixproxy, and what a test needs to drive and inspect them."""

    material: E2EMaterial
    sim: SimGateway
    metrics: Metrics
    session: SessionConfig
    proxy: tuple[str, int]
    """Where the engine connects (plain TCP)."""
    gateway: tuple[str, int]
    """Where the simulator listens for the session's endpoint (TLS)."""
    metrics_address: tuple[str, int] | None
    _streams: list[trio.abc.AsyncResource] = field(default_factory=list)

    @property
    def api_key(self) -> str:
        return self.material.api_key

    @property
    def endpoint(self) -> str:
        return self.session.endpoint.target_comp_id

    async def connect(self) -> trio.SocketStream:
        """A plain TCP connection to fixproxy, closed when the pair closes."""
        stream = await trio.open_tcp_stream(*self.proxy)
        self._streams.append(stream)
        return stream

    async def connect_engine(self, *, sender: str | None = None, target: str | None = None,
                             first_seq: int = 1) -> ScriptedEngine:
        """A scripted engine connected to fixproxy, by default with the session's CompIDs."""
        stream = await self.connect()
        return ScriptedEngine(stream, sender=sender if sender is not None else self.api_key,
                              target=target if target is not None else self.endpoint,
                              first_seq=first_seq)

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample of the session's metrics (``session`` label added), None if absent."""
        return self.metrics.registry.get_sample_value(name, {"session": self.session.name,
                                                             **labels})

    def total(self, family: str) -> float:
        """Sum of a counter family's ``_total`` samples for this session, over all labels."""
        result = 0.0
        for metric in self.metrics.registry.collect():
            if metric.name != family:
                continue
            for sample in metric.samples:
                if sample.name == f"{family}_total" \
                        and sample.labels.get("session") == self.session.name:
                    result += sample.value
        return result

    def sim_events(self, conn_id: int | None = None, *, direction: str | None = None,
                   msg_type: bytes | None = None) -> list[SimEvent]:
        """The simulator's recorded messages, filtered."""
        return [event for event in self.sim.events
                if (conn_id is None or event.conn_id == conn_id)
                and (direction is None or event.direction == direction)
                and (msg_type is None or event.msg_type == msg_type)]

    def sim_logon_conn(self) -> int:
        """The simulator's connection id of the latest Logon it received."""
        logons = self.sim_events(direction="in", msg_type=tags.MT_LOGON)
        assert logons, "the simulator received no Logon"
        return logons[-1].conn_id

    async def aclose_streams(self) -> None:
        for stream in self._streams:
            await trio.aclose_forcefully(stream)
        self._streams.clear()


@asynccontextmanager
async def open_proxy_pair(
        material: E2EMaterial, *,
        faults: SimFaults | None = None,
        endpoint: str = DEFAULT_ENDPOINT,
        tls: TLSPolicy | None = None,
        gateway_port: int | None = None,
        metrics_endpoint: bool = False,
        session_overrides: Mapping[str, Any] | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        manager: SessionManager | None = None,
        timeout: float = GUARD_SECONDS,
) -> AsyncIterator[ProxyPair]:
    """Run the simulator and fixproxy for one test, all inside ``trio.fail_after(timeout)``.

    Args:
        faults: misbehaviour of the simulated gateway.
        endpoint: the Kalshi endpoint the simulator serves and the session targets.
        tls: the session's TLS policy; default ``ca+pin`` to the simulator's CA and leaf.
        gateway_port: send the session here instead of to the simulator (a dead port).
        metrics_endpoint: also serve ``/metrics`` and ``/healthz`` on a free loopback port.
        session_overrides: further :class:`SessionConfig` fields (``logon_timeout``, ...).
        config_overrides: further :class:`Config` fields (``maintenance``, ``proxy``, ...).
        manager: the proxy's session manager, for a test that needs to reach into it.
    """
    sim = SimGateway(SimConfig(ports={endpoint: 0}, keys={material.api_key: material.public_key},
                               faults=faults or SimFaults()),
                     material.certs.server_context())
    metrics = Metrics(CollectorRegistry())
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            addresses: dict[str, tuple[str, int]] = await nursery.start(sim.serve)
            sim_host, sim_port = addresses[endpoint]
            fields: dict[str, Any] = {
                "name": SESSION_NAME, "endpoint": ENDPOINTS[endpoint], "host": sim_host,
                "port": gateway_port if gateway_port is not None else sim_port,
                "connect_timeout": 5.0}
            if tls is not None:
                fields["tls"] = tls
            session = material.session_config(**(fields | dict(session_overrides or {})))
            config = config_with(session, **(
                {"metrics": MetricsConfig(listen=(LOOPBACK, 0) if metrics_endpoint else None)}
                | dict(config_overrides or {})))
            bound: BoundAddresses = await nursery.start(
                functools.partial(serve_proxy, config, metrics, manager=manager))
            pair = ProxyPair(material=material, sim=sim, metrics=metrics, session=session,
                             proxy=bound.sessions[SESSION_NAME], gateway=(sim_host, sim_port),
                             metrics_address=bound.metrics)
            try:
                yield pair
            finally:
                await pair.aclose_streams()
                nursery.cancel_scope.cancel()


def check_frame(raw: bytes) -> FixMessage:
    """Check BodyLength (9) and CheckSum (10) of ``raw`` independently of the framer."""
    trailer = raw.rfind(b"10=")
    assert raw.endswith(b"\x01") and trailer > 0, raw
    assert raw[trailer + 3 : -1] == checksum(raw[:trailer]), raw
    head_end = raw.index(b"\x01", raw.index(b"\x019=") + 1) + 1
    body_length = int(raw[raw.index(b"\x019=") + 3 : head_end - 1])
    assert body_length == trailer - head_end, raw
    return FixMessage.parse(raw)


def last_received(engine: ScriptedEngine) -> bytes:
    """The raw bytes of the message the engine received last."""
    received = [raw for direction, raw in engine.transcript if direction == "received"]
    assert received, "the engine received nothing"
    return received[-1]


def sent_of_type(engine: ScriptedEngine, msg_type: bytes) -> list[bytes]:
    """The raw messages of ``msg_type`` the engine sent, in order."""
    return [raw for direction, raw in engine.transcript
            if direction == "sent" and FixMessage.parse(raw).msg_type == msg_type]
