"""Configuration: one TOML file loaded into frozen dataclasses, strictly.

Unknown keys, wrong types and impossible values are ConfigErrors naming the dotted key
(``session[1].listen``) and, where it can be found, the line of the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from fixproxy.errors import ConfigError
from fixproxy.fix import tags
from fixproxy.fix.logon import LogonPolicy
from fixproxy.kalshi import EndpointProfile, ResetPolicy

VerifyMode = Literal["ca+pin", "ca", "pin"]
VERIFY_MODES: Final = ("ca+pin", "ca", "pin")
ENV_CONFIG: Final = "FIXPROXY_CONFIG"


@dataclass(frozen=True, slots=True)
class TLSPolicy:
    """How one session's gateway certificate is checked."""

    server_name: str
    """SNI and the name verified in the certificate."""
    verify: VerifyMode
    ca_file: Path | None
    """PEM trust anchors; None means the system store."""
    pins: tuple[str, ...]
    """``sha256/<base64>`` SPKI pins; any one must match a certificate of the chain."""
    pinned_cert: Path | None
    """The exact leaf certificate (PEM) the gateway must present."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """``[gateway]``: defaults shared by every session."""

    environment: str = "prod"
    host: str | None = None
    server_name: str | None = None
    ca_file: Path | None = None
    pins: tuple[str, ...] = ()
    pinned_cert: Path | None = None
    verify: VerifyMode | None = None
    """None: ``ca+pin`` when pins or pinned_cert are set, else ``ca``."""
    connect_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint."""

    listen: tuple[str, int] | None = ("127.0.0.1", 9464)
    """(host, port), or None when disabled with ``listen = ""``."""
    allow_remote: bool = False


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """One ``[[session]]``: a local listener bound to one Kalshi endpoint and API key."""

    name: str
    listen: tuple[str, int]
    endpoint: EndpointProfile
    host: str
    """Gateway host, resolved from the session, ``[gateway]`` or the environment."""
    port: int
    api_key: str
    private_key: Path
    tls: TLSPolicy
    connect_timeout: float = 10.0
    allow_remote: bool = False
    reset_on_logon: ResetPolicy | None = None
    """Overrides the endpoint profile's 141 policy; None keeps the profile's."""
    cancel_orders_on_disconnect: bool | None = None
    listener: bool = False
    use_dollars: bool | None = None
    receive_settlement_reports: bool | None = None
    message_retention_hours: int | None = None
    logon_timeout: float = 30.0
    """Seconds an engine connection may take to send its Logon."""

    @property
    def reset_policy(self) -> ResetPolicy:
        return self.reset_on_logon or self.endpoint.reset_policy

    def kalshi_flags(self) -> tuple[tuple[int, bytes], ...]:
        """The Kalshi Logon flags this session adds, in wire order."""
        flags: list[tuple[int, bytes]] = []

        def yn(value: bool) -> bytes:
            return b"Y" if value else b"N"

        if self.cancel_orders_on_disconnect is not None:
            flags.append((tags.CANCEL_ORDERS_ON_DISCONNECT, yn(self.cancel_orders_on_disconnect)))
        if self.listener:
            flags.append((tags.LISTENER_SESSION, b"Y"))
            flags.append((tags.SKIP_PENDING_EXEC_REPORTS, b"Y"))
        if self.use_dollars is not None:
            flags.append((tags.USE_DOLLARS, yn(self.use_dollars)))
        if self.receive_settlement_reports is not None:
            flags.append((tags.RECEIVE_SETTLEMENT_REPORTS, yn(self.receive_settlement_reports)))
        if self.message_retention_hours is not None:
            flags.append((tags.MESSAGE_RETENTION_PERIOD, b"%d" % self.message_retention_hours))
        return tuple(flags)

    def logon_policy(self) -> LogonPolicy:
        return LogonPolicy(
            session_name=self.name,
            api_key=self.api_key,
            target_comp_id=self.endpoint.target_comp_id,
            force_reset=self.reset_policy == "always",
            kalshi_flags=self.kalshi_flags(),
        )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration file."""

    gateway: GatewayConfig
    metrics: MetricsConfig
    sessions: tuple[SessionConfig, ...]
    path: Path | None = None


def load_config(path: Path) -> Config:
    """Read and validate a TOML configuration file.

    Relative paths in the file are resolved against the file's directory.

    Raises:
        ConfigError: naming the dotted key and line of the first problem.
    """
    raise ConfigError("not implemented yet", path=str(path))
