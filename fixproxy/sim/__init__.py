"""The simulated Kalshi FIX gateway used by ``fixproxy demo``, the tests and the benchmark."""

from __future__ import annotations

from fixproxy.sim.certs import SimCertificates, generate_certificates, spki_pin
from fixproxy.sim.gateway import (
    SimConfig,
    SimEvent,
    SimFaults,
    SimGateway,
    load_sim_keys,
)

__all__ = [
    "SimCertificates",
    "SimConfig",
    "SimEvent",
    "SimFaults",
    "SimGateway",
    "generate_certificates",
    "load_sim_keys",
    "spki_pin",
]
