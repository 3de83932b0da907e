"""``fixproxy sim``: the simulated Kalshi gateway as a long-running command."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import trio

from fixproxy.errors import ConfigError
from fixproxy.kalshi import ENDPOINTS
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.gateway import SimConfig, SimGateway, load_sim_keys

_FIRST_PORT = min(profile.port for profile in ENDPOINTS.values())


def endpoint_ports(base_port: int) -> dict[str, int]:
    """Kalshi's port layout moved to start at ``base_port`` (0: every port ephemeral)."""
    return {name: 0 if base_port == 0 else base_port + profile.port - _FIRST_PORT
            for name, profile in ENDPOINTS.items()}


def _server_context(cert: Path | None, cert_key: Path | None, cert_out: Path | None,
                    echo: Callable[[str], object]) -> ssl.SSLContext:
    if cert is not None:
        if cert_key is None:
            raise ConfigError("--cert needs --cert-key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cert, cert_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load {cert} / {cert_key}: {exc}") from exc
        return context
    certs = generate_certificates("localhost")
    if cert_out is not None:
        files = certs.write(cert_out)
        echo(f"throwaway CA written to {files.ca_cert}; use it as ca_file")
    echo(f"throwaway certificate for 'localhost'; pin: {certs.leaf_pin}")
    return certs.server_context()


async def run_sim(*, host: str, base_port: int, key_specs: list[str], cert: Path | None,
                  cert_key: Path | None, cert_out: Path | None,
                  echo: Callable[[str], object], fill_after: float | None = None,
                  exchange_indexes: int = 1, replay_allowlisted: bool = True) -> None:
    """Serve every Kalshi endpoint until cancelled, printing where each one listens."""
    keys = load_sim_keys(key_specs)
    context = _server_context(cert, cert_key, cert_out, echo)
    gateway = SimGateway(SimConfig(host=host, ports=endpoint_ports(base_port), keys=keys,
                                   fill_after=fill_after, exchange_indexes=exchange_indexes,
                                   replay_allowlisted=replay_allowlisted), context)
    async with trio.open_nursery() as nursery:
        bound: dict[str, tuple[str, int]] = await nursery.start(gateway.serve)
        for name, (bound_host, port) in bound.items():
            echo(f"{name:<10} {bound_host}:{port}")
        echo(f"{len(keys)} API key(s) registered; Ctrl-C stops")
