"""The configuration as frozen values: what one TOML file says, resolved and checked.

The loader (:mod:`fixproxy.config.loader`) builds these from a file; the demo and the tests
build them by hand. A field that a file may leave out has the loader's default here too, so both
ways give the same configuration; the two exceptions (``ProxyConfig.state_dir`` and
``Config.maintenance``, None here) say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from fixproxy.fix.logon import LogonPolicy
from fixproxy.kalshi import LOGON_FLAGS, EndpointProfile, ResetPolicy, logon_flags
from fixproxy.session.backoff import DEFAULT_CEILING, DEFAULT_FLOOR
from fixproxy.session.peers import ANY_PEER, PeerFilter
from fixproxy.session.schedule import MaintenanceSchedule
from fixproxy.signing import PassphraseSource

VerifyMode = Literal["ca+pin", "ca", "pin"]
VERIFY_MODES: Final = ("ca+pin", "ca", "pin")
DEFAULT_ENVIRONMENT: Final = "prod"
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_LOGON_TIMEOUT: Final = 30.0
DEFAULT_METRICS_LISTEN: Final = ("127.0.0.1", 9464)
DEFAULT_READINESS_INTERVAL: Final = 30.0
DEFAULT_STATE_DIR: Final = "state"
DEFAULT_SHUTDOWN_TIMEOUT: Final = 10.0
DEFAULT_LIVENESS_GRACE: Final = 5.0
DEFAULT_LOGOUT_WAIT: Final = 2.0
DEFAULT_JOURNAL_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_JOURNAL_BACKUPS: Final = 5
DEFAULT_RECOVERY_TIMEOUT: Final = 10.0
DEFAULT_RECOVERY_SAVE_INTERVAL: Final = 5.0


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

    environment: str = DEFAULT_ENVIRONMENT
    host: str | None = None
    server_name: str | None = None
    ca_file: Path | None = None
    pins: tuple[str, ...] = ()
    pinned_cert: Path | None = None
    verify: VerifyMode | None = None
    """None: ``ca+pin`` when pins or pinned_cert are set, else ``ca``."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint."""

    listen: tuple[str, int] | None = DEFAULT_METRICS_LISTEN
    """(host, port), or None when disabled with ``listen = ""``."""
    allow_remote: bool = False
    readiness_interval: float = DEFAULT_READINESS_INTERVAL
    """Seconds between the /readyz probes of a reachable gateway (failing ones are retried
    sooner)."""


@dataclass(frozen=True, slots=True)
class RecoveryConfig:
    """``[session.recovery]``: replay missed execution reports through Kalshi's drop copy
    (KalshiDC) at each Logon; needs a drop-copy API key of its own."""

    api_key: str
    private_key: Path
    host: str
    """Drop-copy host: the session's unless set."""
    port: int
    tls: TLSPolicy
    """The session's trust, with the drop-copy host's name when it has its own host."""
    private_key_passphrase: PassphraseSource | None = None
    timeout: float = DEFAULT_RECOVERY_TIMEOUT
    """Seconds the whole recovery (connect, Logon, replay, Logout) may take while the engine
    waits for its Logon answer."""
    after_clean_logout: bool = True
    """Recover after a connection that ended with a completed Logout exchange too (orders rest
    while the engine is away); False: only after drops, silences and crashes."""
    save_interval: float = DEFAULT_RECOVERY_SAVE_INTERVAL
    """Seconds between saves of the state while a connection lives (also saved at its end)."""


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
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    allow_remote: bool = False
    reset_on_logon: ResetPolicy | None = None
    """Overrides the endpoint profile's 141 policy; None keeps the profile's."""
    cancel_orders_on_disconnect: bool | None = None
    listener: bool = False
    use_dollars: bool | None = None
    receive_settlement_reports: bool | None = None
    message_retention_hours: int | None = None
    logon_timeout: float = DEFAULT_LOGON_TIMEOUT
    """Seconds an engine connection may take to send its Logon."""
    logout_on_engine_disconnect: bool = True
    """When the engine's TCP connection ends without a Logout, log out of the gateway cleanly
    rather than just dropping the TLS connection."""
    liveness_grace: float = DEFAULT_LIVENESS_GRACE
    """Seconds allowed beyond the heartbeat interval before a silent peer counts as gone."""
    logout_wait: float = DEFAULT_LOGOUT_WAIT
    """Seconds to wait for the gateway's answering Logout after fixproxy sends one."""
    translate_sequence: bool = True
    """When fixproxy forces 141=Y on an engine that did not reset, renumber MsgSeqNum (34)
    between the two sides instead of refusing the engine's Logon."""
    allow_peers: PeerFilter = ANY_PEER
    """Source addresses that may connect to ``listen``: the session's ``allow_peers``, else
    ``[proxy]``'s, else any (:mod:`fixproxy.session.peers`)."""
    private_key_passphrase: PassphraseSource | None = None
    """Where the passphrase of an encrypted ``private_key`` is read from, when it is one."""
    recovery: RecoveryConfig | None = None
    """Drop-copy recovery of missed execution reports; None (the default): off."""

    @property
    def reset_policy(self) -> ResetPolicy:
        """The 141 policy in force: the session's override, else the endpoint profile's."""
        return self.reset_on_logon or self.endpoint.reset_policy

    def kalshi_flags(self) -> tuple[tuple[int, bytes], ...]:
        """The Kalshi Logon flags this session adds, in wire order."""
        # Each flag's option is a field of this class (a test holds the two together).
        return logon_flags({flag.option: getattr(self, flag.option) for flag in LOGON_FLAGS})

    def logon_policy(self) -> LogonPolicy:
        """What this session demands of, and adds to, its engine's Logon."""
        return LogonPolicy(
            session_name=self.name,
            api_key=self.api_key,
            target_comp_id=self.endpoint.target_comp_id,
            force_reset=self.reset_policy == "always",
            kalshi_flags=self.kalshi_flags(),
            translate_sequence=self.translate_sequence,
        )


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    """``[backoff]``: the wait before retrying a failed Logon, per API key."""

    floor: float = DEFAULT_FLOOR
    """Seconds; the first wait lies between half this and this."""
    ceiling: float = DEFAULT_CEILING
    """Seconds; the longest wait."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """``[proxy]``: settings of the process as a whole."""

    state_dir: Path | None = None
    """Where per-session sequence state is kept; the loader resolves it against the file's
    directory (default ``state`` there). None, the default of hand-built configurations
    (the demo, tests), keeps nothing between connections."""
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    """Seconds live sessions get to log out when fixproxy stops."""
    allow_peers: PeerFilter = ANY_PEER
    """The ``allow_peers`` of every session that does not set its own."""
    journal_dir: Path | None = None
    """Where each session's message journal is written (:mod:`fixproxy.ops.journal`), resolved
    against the file's directory; None (the default) keeps no journal."""
    journal_max_bytes: int = DEFAULT_JOURNAL_MAX_BYTES
    """Size at which a journal file is rotated."""
    journal_backups: int = DEFAULT_JOURNAL_BACKUPS
    """Rotated journal files kept per session (``.1`` newest); 0 keeps none."""


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration file."""

    gateway: GatewayConfig
    metrics: MetricsConfig
    sessions: tuple[SessionConfig, ...]
    path: Path | None = None
    maintenance: MaintenanceSchedule | None = None
    """Kalshi's maintenance window; the loader defaults it to Thursday 03:00-05:00
    America/New_York, and gives None for ``[maintenance] enabled = false``. None (also the
    default of hand-built configurations: the demo, tests) means no window."""
    backoff: BackoffConfig = BackoffConfig()
    proxy: ProxyConfig = ProxyConfig()
    warnings: tuple[str, ...] = ()
    """What the loader allowed but an operator should know (two sessions sharing a key)."""
