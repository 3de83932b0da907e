"""``fixproxy sim``: the simulated Kalshi gateway as a long-running command."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from fixproxy.errors import ConfigError
from fixproxy.kalshi import ENDPOINTS
from fixproxy.sim.certs import (
    CA_CERT_FILE,
    SimCertificates,
    generate_certificates,
    read_certificates,
)
from fixproxy.sim.configout import write_sim_config
from fixproxy.sim.gateway import SimConfig, SimGateway, load_sim_keys

_FIRST_PORT = min(profile.port for profile in ENDPOINTS.values())
KEPT_CERTIFICATE_LIFETIME: Final = dt.timedelta(days=365)
"""Validity of a certificate made for ``--cert-out``: it outlives any test setup."""
KEPT_CERTIFICATE_MARGIN: Final = dt.timedelta(days=1)
"""A kept certificate that expires sooner than this is replaced at start."""


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
    certs = _certificates(cert_out, echo)
    echo(f"certificate for 'localhost'; pin: {certs.leaf_pin}")
    return certs.server_context()


def _certificates(cert_out: Path | None, echo: Callable[[str], object]) -> SimCertificates:
    """The simulator's CA and leaf: those kept in ``cert_out`` if they are still good, so a
    restarted simulator presents the certificate a running fixproxy pinned; else new ones
    (written there when given)."""
    if cert_out is None:
        return generate_certificates("localhost")
    kept = read_certificates(cert_out, valid_for=KEPT_CERTIFICATE_MARGIN)
    if kept is not None:
        echo(f"certificate kept from {cert_out}; CA: {cert_out / CA_CERT_FILE} (ca_file)")
        return kept
    now = dt.datetime.now(dt.UTC)
    certs = generate_certificates("localhost", not_before=now - dt.timedelta(hours=1),
                                  not_after=now + KEPT_CERTIFICATE_LIFETIME)
    files = certs.write(cert_out)
    echo(f"new certificate written to {cert_out}, kept there for later starts; CA: "
         f"{files.ca_cert} (ca_file)")
    return certs


async def run_sim(*, host: str, base_port: int, key_specs: list[str], cert: Path | None,
                  cert_key: Path | None, cert_out: Path | None,
                  echo: Callable[[str], object], config_out: Path | None = None,
                  fill_after: float | None = None, exchange_indexes: int = 1,
                  replay_allowlisted: bool = True) -> None:
    """Serve every Kalshi endpoint until cancelled, printing where each one listens.

    With ``config_out``, also write a fixproxy configuration for the bound ports (it needs the
    certificates in ``cert_out``, whose CA it names as ca_file).
    """
    if config_out is not None and (cert_out is None or cert is not None):
        raise ConfigError("--config-out needs --cert-out (the CA the configuration trusts), "
                          "and no --cert")
    keys = load_sim_keys(key_specs)
    context = _server_context(cert, cert_key, cert_out, echo)
    gateway = SimGateway(SimConfig(host=host, ports=endpoint_ports(base_port), keys=keys,
                                   fill_after=fill_after, exchange_indexes=exchange_indexes,
                                   replay_allowlisted=replay_allowlisted), context)
    async with trio.open_nursery() as nursery:
        bound: dict[str, tuple[str, int]] = await nursery.start(gateway.serve)
        for name, (bound_host, port) in bound.items():
            echo(f"{name:<10} {bound_host}:{port}")
        if config_out is not None and cert_out is not None:
            certs = read_certificates(cert_out)
            if certs is None:
                raise ConfigError(f"the certificates in {cert_out} cannot be read back")
            write_sim_config(config_out, key_specs, bound, ca_file=cert_out / CA_CERT_FILE,
                             pin=certs.leaf_pin, server_name=certs.hostname)
            echo(f"fixproxy configuration for these ports written to {config_out}")
        echo(f"{len(keys)} API key(s) registered; Ctrl-C stops")
