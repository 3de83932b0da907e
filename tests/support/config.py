"""Configurations built in code: a valid :class:`SessionConfig` or :class:`Config` from the
values a test cares about.

A test passes, as keyword overrides, every value it depends on (a session name that labels its
metrics, the simulator's port, a timer); the rest are defaults no test relies on. They point
nowhere real: the gateway is loopback port 1 and the key file does not exist, so a test that
connects or signs by mistake fails at once instead of reaching Kalshi. A whole
:class:`Config` has no metrics endpoint unless the test asks for one (the loader's default
would bind a fixed port).

Unknown field names raise ``TypeError``, as the dataclass constructors do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from fixproxy.config.model import Config, GatewayConfig, MetricsConfig, SessionConfig, TLSPolicy
from fixproxy.kalshi import ENDPOINTS

LOOPBACK: Final = "127.0.0.1"
API_KEY: Final = "9d7b2c4e-1f3a-4b6c-8e0d-7a5f3c1b2e94"
"""A fixed UUID4 for sessions whose key no gateway checks."""
UNUSED_PRIVATE_KEY: Final = Path("unused-private-key.pem")
"""A key file that does not exist: building a runtime from the defaults fails loudly."""


def session_config(**overrides: Any) -> SessionConfig:
    """A KalshiNR session listening on a free loopback port, with ``overrides`` applied.

    Args:
        overrides: :class:`SessionConfig` fields, by name; they win over the defaults.
    """
    fields: dict[str, Any] = {
        "name": "test",
        "listen": (LOOPBACK, 0),
        "endpoint": ENDPOINTS["KalshiNR"],
        "host": LOOPBACK,
        "port": 1,
        "api_key": API_KEY,
        "private_key": UNUSED_PRIVATE_KEY,
        "tls": TLSPolicy(server_name="localhost", verify="ca", ca_file=None, pins=(),
                         pinned_cert=None),
    }
    return SessionConfig(**(fields | overrides))


def config_with(*sessions: SessionConfig, **overrides: Any) -> Config:
    """A whole configuration serving ``sessions``, without a metrics endpoint unless
    ``metrics`` is among ``overrides``.

    Args:
        overrides: :class:`Config` fields, by name (``metrics``, ``maintenance``, ``proxy``).
    """
    fields: dict[str, Any] = {
        "gateway": GatewayConfig(),
        "metrics": MetricsConfig(listen=None),
        "sessions": sessions,
    }
    return Config(**(fields | overrides))
