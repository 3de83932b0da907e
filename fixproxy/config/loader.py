"""Configuration: one TOML file loaded into frozen dataclasses, strictly.

Theory of operation
-------------------
The file is the operator's whole statement of intent, and several of its keys guard money or
security (``allow_remote``, ``verify``, ``pins``, ``cancel_orders_on_disconnect``). A misspelt
safety key that is silently ignored leaves the proxy running with the unsafe default, so the
loader is strict: unknown keys at any level, wrong types (a boolean where a number is wanted
included, although Python's ``bool`` is an ``int``) and impossible values are each a
:class:`~fixproxy.errors.ConfigError` naming the dotted key (``session[1].listen``, 0-based
session indices) and the line of the file.

``tomllib`` reports no positions for values, so lines are found by a second, deliberately
shallow pass over the text: it follows table headers (``[gateway]``, the n-th ``[[session]]``)
and records where each ``key =`` first appears; a key that is missing points at its table's
header. The alternative, a position-tracking TOML parser, was rejected: a second full parser
could disagree with ``tomllib`` about what the file means, while a line finder that misses only
costs the line number in a message.

Nothing is opened here beyond the file itself: key files and certificates must exist (unless
``check_files=False``, used to validate a configuration away from its key store), but loading
keys and checking their permissions belongs to :mod:`fixproxy.signing` at run and check time,
certificates to :mod:`fixproxy.tls`. Hosts are resolved here once, from the session, then
``[gateway]``, then the Kalshi environment (:func:`fixproxy.kalshi.default_host`), so the rest
of the program never repeats that precedence.

The tables ``[maintenance]`` (Kalshi's weekly window, :mod:`fixproxy.schedule`), ``[backoff]``
(Logon retry waits, :mod:`fixproxy.backoff`) and ``[proxy]`` (process-wide settings), and the
session keys for Logout, liveness and sequence translation, are optional; their dataclass fields
have the same defaults, so code that builds a :class:`Config` by hand (the demo, tests) needs
none of them.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Final, Literal, cast

from fixproxy.config.pins import canonical_pin, pin_conflict
from fixproxy.errors import ConfigError
from fixproxy.fix import tags
from fixproxy.fix.logon import LogonPolicy
from fixproxy.kalshi import (
    ENDPOINTS,
    ENVIRONMENTS,
    MAX_MESSAGE_RETENTION_HOURS,
    EndpointProfile,
    ResetPolicy,
    default_host,
)
from fixproxy.session.backoff import DEFAULT_CEILING, DEFAULT_FLOOR, MAX_CEILING
from fixproxy.session.peers import (
    ANY_PEER,
    PeerFilter,
    parse_network,
    remote_listener_warning,
    remote_metrics_warning,
)
from fixproxy.session.schedule import DEFAULT_SCHEDULE, MaintenanceSchedule, parse_day, parse_time
from fixproxy.signing import PassphraseSource

logger = logging.getLogger("fixproxy.config")

VerifyMode = Literal["ca+pin", "ca", "pin"]
VERIFY_MODES: Final = ("ca+pin", "ca", "pin")
ENV_CONFIG: Final = "FIXPROXY_CONFIG"
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
    ``[proxy]``'s, else any (:mod:`fixproxy.access`)."""
    private_key_passphrase: PassphraseSource | None = None
    """Where the passphrase of an encrypted ``private_key`` is read from, when it is one."""

    @property
    def reset_policy(self) -> ResetPolicy:
        """The 141 policy in force: the session's override, else the endpoint profile's."""
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
    """Where each session's message journal is written (:mod:`fixproxy.journal`), resolved
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
    America/New_York. None (hand-built configurations: the demo, tests) means no window."""
    """Kalshi's maintenance windows; None when ``[maintenance] enabled = false``."""
    backoff: BackoffConfig = BackoffConfig()
    proxy: ProxyConfig = ProxyConfig()


# --- limits and key sets -------------------------------------------------------------------

RESET_POLICIES: Final = ("always", "engine")
MAX_TIMEOUT: Final = 300.0
"""Longest connect or Logon timeout accepted, in seconds: beyond five minutes a stuck connect or a
silent engine is a fault to report, not something to wait out."""
MAX_SHUTDOWN_TIMEOUT: Final = MAX_TIMEOUT
MAX_LIVENESS_GRACE: Final = MAX_TIMEOUT
MAX_LOGOUT_WAIT: Final = 60.0
"""Longest wait for the gateway's answering Logout: past a minute the gateway is not answering,
and the connection is closed anyway."""
MIN_JOURNAL_MAX_BYTES: Final = 64 * 1024
"""Smallest journal file: below this a busy session would rotate several times a second."""
MAX_JOURNAL_MAX_BYTES: Final = 1024**4
"""Largest journal file (1 TiB): a bound that catches a unit mistake, not a policy."""
MAX_JOURNAL_BACKUPS: Final = 100
"""Most rotated journal files per session: rotation renames each one."""
MIN_MESSAGE_RETENTION_HOURS: Final = 1
LISTENER_ENDPOINTS: Final = frozenset({"KalshiNR", "KalshiRT"})
"""A listener is a mode of these two sessions only (Kalshi, "Listener sessions")."""

TOP_KEYS: Final = frozenset({"gateway", "metrics", "maintenance", "backoff", "proxy",
                             "session"})
TABLES: Final = ("gateway", "metrics", "maintenance", "backoff", "proxy")
"""Top-level keys that must be single tables (``[name]``)."""
GATEWAY_KEYS: Final = frozenset({
    "environment", "host", "server_name", "ca_file", "pins", "pinned_cert", "verify",
    "connect_timeout",
})
METRICS_KEYS: Final = frozenset({"listen", "allow_remote", "readiness_interval"})
MAX_READINESS_INTERVAL: Final = 3600.0
"""Longest /readyz probe interval: past an hour readiness says little about the gateway."""
MAINTENANCE_KEYS: Final = frozenset({"days", "start", "end", "timezone", "reset_after",
                                     "enabled"})
BACKOFF_KEYS: Final = frozenset({"floor", "ceiling"})
PROXY_KEYS: Final = frozenset({"state_dir", "shutdown_timeout", "journal_dir",
                               "journal_max_bytes", "journal_backups", "allow_peers"})
SESSION_REQUIRED: Final = ("name", "listen", "endpoint", "api_key", "private_key")
SESSION_KEYS: Final = frozenset({
    *SESSION_REQUIRED, "host", "port", "server_name", "ca_file", "pins", "pinned_cert", "verify",
    "allow_remote", "reset_on_logon", "cancel_orders_on_disconnect", "listener", "use_dollars",
    "receive_settlement_reports", "message_retention_hours", "connect_timeout", "logon_timeout",
    "logout_on_engine_disconnect", "liveness_grace", "logout_wait", "translate_sequence",
    "allow_peers", "private_key_passphrase_env", "private_key_passphrase_file",
})
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_SESSION_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
# SenderCompID goes on the wire verbatim, so only the canonical 8-4-4-4-12 form is accepted
# (uuid.UUID would also take braces, URNs and the unhyphenated form).
_UUID: Final = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
                              r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")
_DISABLED_VERIFY: Final = frozenset({"none", "off", "no", "false", "insecure", "disabled"})
# Names zoneinfo can load that are not a fixed zone: "localtime" is whatever this machine is
# set to (a window must not move when the host's zone changes), "Factory" has no offset rules.
_NOT_ZONES: Final = frozenset({"localtime", "Factory"})

# --- finding lines ------------------------------------------------------------------------

_KEY_PART: Final = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_KEY_PART_RE: Final = re.compile(_KEY_PART)
_KEY_LINE: Final = re.compile(rf"\s*(?P<key>{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")
_HEADER_LINE: Final = re.compile(
    rf"\s*(?P<open>\[\[?)\s*(?P<name>{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?\s*(?:#.*)?")
_TOML_LINE: Final = re.compile(r"\(at line (\d+), column \d+\)")
_TRAILING_INDEX: Final = re.compile(r"\[\d+\]$")


def _key_parts(text: str) -> list[str]:
    parts = []
    for part in _KEY_PART_RE.findall(text):
        parts.append(part[1:-1] if part[:1] in ("'", '"') else part)
    return parts


class _LineIndex:
    """Where each dotted key and table header first appears in the file text (1-based)."""

    def __init__(self, text: str) -> None:
        self.keys: dict[str, int] = {}
        self.headers: dict[str, int] = {}
        array_counts: dict[tuple[str, ...], int] = {}
        prefix = ""
        open_quote: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if open_quote is not None:
                # Inside a multi-line string nothing is a key; it ends at the next delimiter.
                if open_quote in line:
                    open_quote = None
                continue
            header = _HEADER_LINE.fullmatch(line)
            if header is not None:
                parts = _key_parts(header["name"])
                if header["open"] == "[[":
                    array_counts[tuple(parts)] = array_counts.get(tuple(parts), 0) + 1
                segments = []
                for i, part in enumerate(parts):
                    count = array_counts.get(tuple(parts[: i + 1]))
                    segments.append(part if count is None else f"{part}[{count - 1}]")
                prefix = ".".join(segments)
                self.headers.setdefault(prefix, number)
                continue
            key = _KEY_LINE.match(line)
            if key is not None:
                dotted = ".".join(_key_parts(key["key"]))
                self.keys.setdefault(f"{prefix}.{dotted}" if prefix else dotted, number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    open_quote = quote
                    break

    def line_of(self, key: str) -> int | None:
        """The line of ``key``, else of the nearest enclosing key or table header."""
        while key:
            if key in self.keys:
                return self.keys[key]
            if key in self.headers:
                return self.headers[key]
            # A table written with dotted keys (``tls.pins = ...``) has no line of its own.
            inner = [line for name, line in self.keys.items() if name.startswith(key + ".")]
            if inner:
                return min(inner)
            if _TRAILING_INDEX.search(key):
                key = _TRAILING_INDEX.sub("", key)
            else:
                key = key.rpartition(".")[0]
        return None


# --- typed access to one table ------------------------------------------------------------


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    return type(value).__name__


class _Table:
    """One TOML table with its dotted key prefix; every getter raises ConfigError on misuse."""

    def __init__(self, loader: _Loader, data: Mapping[str, object], prefix: str,
                 label: str) -> None:
        self.loader = loader
        self.data = data
        self.prefix = prefix
        self.label = label

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return self.loader.error(message, self.key(name))

    def has(self, name: str) -> bool:
        return name in self.data

    def check_keys(self, allowed: frozenset[str]) -> None:
        for name in self.data:
            if name in allowed:
                continue
            message = f"unknown key {name!r} in {self.label}"
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
            else:
                message += f"; valid keys: {', '.join(sorted(allowed))}"
            raise self.error(name, message)

    def _wrong_type(self, name: str, value: object, wanted: str) -> ConfigError:
        return self.error(name, f"expected {wanted}, got {_toml_type(value)} {value!r}")

    def string(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None or isinstance(value, str):
            return value
        raise self._wrong_type(name, value, "a string")

    def required_string(self, name: str) -> str:
        value = self.string(name)
        if value is None:
            raise self.error(name, f"missing required key {name!r} in {self.label}")
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.data.get(name)
        if value is None or isinstance(value, bool):
            return value
        raise self._wrong_type(name, value, "true or false")

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong_type(name, value, "an integer")
        if not low <= value <= high:
            raise self.error(name, f"{value} is out of range; expected {low}..{high}")
        return value

    def seconds(self, name: str, *, maximum: float = MAX_TIMEOUT,
                allow_zero: bool = False) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong_type(name, value, "a number of seconds")
        seconds = float(value)
        # Written so that NaN fails too: every comparison with NaN is false.
        if allow_zero:
            if not 0 <= seconds <= maximum:
                raise self.error(
                    name, f"{value} seconds is out of range; expected at least 0 and at most "
                          f"{maximum:g}")
        elif not 0 < seconds <= maximum:
            raise self.error(
                name, f"{value} seconds is out of range; expected more than 0 and at most "
                      f"{maximum:g}")
        return seconds

    def string_list(self, name: str) -> tuple[str, ...] | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._wrong_type(name, value, "an array of strings")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.loader.error(
                    f"expected a string, got {_toml_type(item)} {item!r}",
                    f"{self.key(name)}[{index}]")
        return tuple(cast(list[str], value))


# --- value checks -------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _default(value: float | None, default: float) -> float:
    # Not ``value or default``: 0 is a valid setting for some keys.
    return default if value is None else value


def _listen_identity(host: str, port: int) -> tuple[str, int]:
    try:
        return ipaddress.ip_address(host).compressed, port
    except ValueError:
        return host.lower(), port


class _Loader:
    """Turns the parsed TOML document into a :class:`Config`, checking as it goes."""

    def __init__(self, path: Path, text: str, *, check_files: bool) -> None:
        self.path = path
        self.base = path.absolute().parent
        self.lines = _LineIndex(text)
        self.check_files = check_files
        self.listens: dict[tuple[str, int], str] = {}

    def error(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, key=key, line=self.lines.line_of(key), path=str(self.path))

    # -- shared value parsers --

    def listen(self, table: _Table, name: str, *, allow_remote: bool) -> tuple[str, int]:
        text = table.required_string(name)
        host: str
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            valid_host = bool(sep)
            if valid_host:
                try:
                    ipaddress.IPv6Address(host)
                except ValueError:
                    valid_host = False
        else:
            host, sep, port_text = text.rpartition(":")
            valid_host = bool(sep) and ":" not in host and (
                _HOSTNAME.fullmatch(host) is not None)
        if not valid_host or not port_text.isdigit() or not port_text.isascii():
            raise table.error(
                name, f"{text!r} is not host:port (for example \"127.0.0.1:9878\"; IPv6 in "
                      f"brackets: \"[::1]:9878\")")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise table.error(name, f"port {port} in {text!r} is out of range; expected 1..65535")
        if not allow_remote and not _is_loopback(host):
            raise table.error(
                name, f"{text!r} is not a loopback address. The engine side speaks plain-TCP "
                      f"FIX with no authentication: anyone who can connect can trade as you. "
                      f"Listen on 127.0.0.1, ::1 or localhost, or set allow_remote = true in "
                      f"{table.label} if the network in between is yours alone")
        identity = _listen_identity(host, port)
        owner = self.listens.get(identity)
        if owner is not None:
            raise table.error(name, f"{text!r} is already the listen address of {owner}")
        self.listens[identity] = table.key(name)
        return host, port

    def host(self, table: _Table, name: str) -> str | None:
        value = table.string(name)
        if value is None:
            return None
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if _HOSTNAME.fullmatch(value) is None:
                raise table.error(
                    name, f"{value!r} is not a host name (give the bare name: no scheme, "
                          f"no port, no path)") from None
        return value

    def file(self, table: _Table, name: str, what: str) -> Path | None:
        value = table.string(name)
        return None if value is None else self.existing_file(table, name, value, what)

    def existing_file(self, table: _Table, name: str, value: str, what: str) -> Path:
        if not value:
            raise table.error(name, f"empty path; give the {what} file")
        try:
            path = Path(value).expanduser()
        except RuntimeError as exc:  # "~user" naming no user, or no home directory
            raise table.error(name, f"cannot expand {value!r}: {exc}") from exc
        if not path.is_absolute():
            path = self.base / path
        if self.check_files:
            try:
                state = "" if path.is_file() else (
                    "is not a regular file" if path.exists() else "does not exist")
            except OSError as exc:  # a directory on the way that we may not search
                state = f"cannot be checked ({exc.strerror or exc})"
            if state:
                raise table.error(name, f"{what} file {str(path)!r} {state}")
        return path

    def pins(self, table: _Table) -> tuple[str, ...] | None:
        pins = table.string_list("pins")
        if pins is None:
            return None
        for index, pin in enumerate(pins):
            try:
                canonical_pin(pin)
            except ConfigError as exc:
                raise self.error(
                    f"{pin!r} is not a pin; expected \"sha256/<44 characters of base64 of the "
                    f"SHA-256 of the SubjectPublicKeyInfo>\" (print them with "
                    f"`fixproxy pin HOST:PORT`)", f"{table.key('pins')}[{index}]") from exc
        return pins

    def peers(self, table: _Table) -> PeerFilter | None:
        entries = table.string_list("allow_peers")
        if entries is None:
            return None
        for index, entry in enumerate(entries):
            try:
                parse_network(entry)
            except ConfigError as exc:
                raise self.error(exc.detail, f"{table.key('allow_peers')}[{index}]") from exc
        try:
            return PeerFilter.parse(entries)
        except ConfigError as exc:  # no entry at all
            raise table.error("allow_peers", exc.detail) from exc

    def passphrase(self, table: _Table) -> PassphraseSource | None:
        env_key, file_key = "private_key_passphrase_env", "private_key_passphrase_file"
        if table.has(env_key) and table.has(file_key):
            raise table.error(file_key, f"give {env_key} or {file_key}, not both: the key has "
                                        f"one passphrase")
        env = table.string(env_key)
        if env is not None:
            if _ENV_NAME.fullmatch(env) is None:
                # The value is not repeated: it may be the passphrase itself, written by mistake.
                raise table.error(
                    env_key, "not an environment variable name; give the name of the variable "
                             "that holds the passphrase (letters, digits and '_', not starting "
                             "with a digit), never the passphrase itself")
            return PassphraseSource(env=env)
        path = self.file(table, file_key, "passphrase")
        return None if path is None else PassphraseSource(file=path)

    def verify(self, table: _Table) -> VerifyMode | None:
        value = table.data.get("verify")
        if value is None:
            return None
        if value is False or (isinstance(value, str) and value.lower() in _DISABLED_VERIFY):
            raise table.error(
                "verify", f"verify = {value!r}: fixproxy never disables certificate "
                          f"verification, because the Logon it signs would go to whoever "
                          f"answers. For a private gateway whose certificate no public CA "
                          f"signs, use verify = \"pin\" with pins (or pinned_cert)")
        if not isinstance(value, str):
            raise table.error("verify", f"expected a string, got {_toml_type(value)} {value!r}")
        if value not in VERIFY_MODES:
            raise table.error(
                "verify", f"{value!r} is not a verify mode; expected one of "
                          f"{', '.join(map(repr, VERIFY_MODES))}")
        return cast(VerifyMode, value)

    # -- tables --

    def gateway(self, data: Mapping[str, object]) -> GatewayConfig:
        table = _Table(self, data, "gateway", "[gateway]")
        table.check_keys(GATEWAY_KEYS)
        environment = table.string("environment")
        if environment is None:
            environment = DEFAULT_ENVIRONMENT
        elif environment not in ENVIRONMENTS:
            raise table.error(
                "environment", f"{environment!r} is not a Kalshi environment; expected one of "
                               f"{', '.join(map(repr, ENVIRONMENTS))}")
        return GatewayConfig(
            environment=environment,
            host=self.host(table, "host"),
            server_name=self.host(table, "server_name"),
            ca_file=self.file(table, "ca_file", "CA bundle"),
            pins=self.pins(table) or (),
            pinned_cert=self.file(table, "pinned_cert", "pinned certificate"),
            verify=self.verify(table),
            connect_timeout=table.seconds("connect_timeout") or DEFAULT_CONNECT_TIMEOUT,
        )

    def metrics(self, data: Mapping[str, object]) -> MetricsConfig:
        table = _Table(self, data, "metrics", "[metrics]")
        table.check_keys(METRICS_KEYS)
        allow_remote = bool(table.boolean("allow_remote"))
        listen: tuple[str, int] | None
        if table.string("listen") == "":
            listen = None
        elif table.has("listen"):
            listen = self.listen(table, "listen", allow_remote=allow_remote)
        else:
            listen = DEFAULT_METRICS_LISTEN
            self.listens[_listen_identity(*listen)] = "metrics.listen (the default)"
        readiness_interval = table.seconds("readiness_interval",
                                           maximum=MAX_READINESS_INTERVAL)
        return MetricsConfig(listen=listen, allow_remote=allow_remote,
                             readiness_interval=_default(readiness_interval,
                                                         DEFAULT_READINESS_INTERVAL))

    def local_time(self, table: _Table, name: str, default: time) -> time:
        text = table.string(name)
        if text is None:
            return default
        try:
            return parse_time(text)
        except ConfigError as exc:
            raise table.error(name, exc.detail) from exc

    def timezone(self, table: _Table, name: str) -> zoneinfo.ZoneInfo:
        text = table.string(name)
        if text is None:
            return DEFAULT_SCHEDULE.timezone
        # zoneinfo loads anything under its search path that parses (posix/, right/ with leap
        # seconds, "localtime"); only the zone names it lists, less _NOT_ZONES, are IANA zones.
        known = zoneinfo.available_timezones() - _NOT_ZONES
        if text in known:
            try:
                return zoneinfo.ZoneInfo(text)
            except (ValueError, OSError) as exc:  # a damaged time zone database
                raise table.error(name, f"time zone {text!r} cannot be loaded: {exc}") from exc
        message = f"{text!r} is not an IANA time zone name (for example \"America/New_York\")"
        close = difflib.get_close_matches(text, sorted(known), n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        raise table.error(name, message)

    def maintenance(self, data: Mapping[str, object]) -> MaintenanceSchedule | None:
        table = _Table(self, data, "maintenance", "[maintenance]")
        table.check_keys(MAINTENANCE_KEYS)
        days = DEFAULT_SCHEDULE.days
        names = table.string_list("days")
        if names is not None:
            if not names:
                raise table.error("days", "no day given; name at least one (\"thu\"), or "
                                          "\"daily\"; to turn maintenance handling off, set "
                                          "enabled = false")
            found: set[int] = set()
            for index, day in enumerate(names):
                try:
                    found |= parse_day(day)
                except ConfigError as exc:
                    raise self.error(exc.detail, f"{table.key('days')}[{index}]") from exc
            days = frozenset(found)
        start = self.local_time(table, "start", DEFAULT_SCHEDULE.start)
        end = self.local_time(table, "end", DEFAULT_SCHEDULE.end)
        if start == end:
            raise table.error(
                "end" if table.has("end") else "start",
                f"start and end are both {start:%H:%M}: a window needs a length (an end "
                f"earlier than the start means the next day); to turn maintenance handling "
                f"off, set enabled = false")
        timezone = self.timezone(table, "timezone")
        reset_after = table.boolean("reset_after")
        enabled = table.boolean("enabled")
        if enabled is False:
            return None
        return MaintenanceSchedule(days=days, start=start, end=end, timezone=timezone,
                                   reset_after=True if reset_after is None else reset_after)

    def backoff(self, data: Mapping[str, object]) -> BackoffConfig:
        table = _Table(self, data, "backoff", "[backoff]")
        table.check_keys(BACKOFF_KEYS)
        floor = table.seconds("floor", maximum=MAX_CEILING)
        ceiling = table.seconds("ceiling", maximum=MAX_CEILING)
        config = BackoffConfig(floor=DEFAULT_FLOOR if floor is None else floor,
                               ceiling=DEFAULT_CEILING if ceiling is None else ceiling)
        if config.ceiling < config.floor:
            raise table.error(
                "ceiling" if ceiling is not None else "floor",
                f"ceiling {config.ceiling:g} seconds is below floor {config.floor:g} seconds; "
                f"the ceiling is the longest wait and must be at least the floor")
        return config

    def directory(self, table: _Table, name: str, default: str) -> Path:
        value = table.string(name)
        if value is None:
            value = default
        elif not value:
            raise table.error(name, "empty path; give a directory")
        try:
            path = Path(value).expanduser()
        except RuntimeError as exc:  # "~user" naming no user, or no home directory
            raise table.error(name, f"cannot expand {value!r}: {exc}") from exc
        if not path.is_absolute():
            path = self.base / path
        if self.check_files:
            # Created when first needed, so it may be absent; but not something else.
            try:
                wrong = path.exists() and not path.is_dir()
            except OSError as exc:
                raise table.error(name, f"{str(path)!r} cannot be checked "
                                        f"({exc.strerror or exc})") from exc
            if wrong:
                raise table.error(name, f"{str(path)!r} exists and is not a directory")
        return path

    def proxy(self, data: Mapping[str, object]) -> ProxyConfig:
        table = _Table(self, data, "proxy", "[proxy]")
        table.check_keys(PROXY_KEYS)
        shutdown_timeout = table.seconds("shutdown_timeout", maximum=MAX_SHUTDOWN_TIMEOUT)
        # No journal unless asked for: it writes every order to disk.
        journal_dir = self.directory(table, "journal_dir", "") \
            if table.has("journal_dir") else None
        journal_max_bytes = table.integer("journal_max_bytes", MIN_JOURNAL_MAX_BYTES,
                                          MAX_JOURNAL_MAX_BYTES)
        journal_backups = table.integer("journal_backups", 0, MAX_JOURNAL_BACKUPS)
        return ProxyConfig(
            state_dir=self.directory(table, "state_dir", DEFAULT_STATE_DIR),
            shutdown_timeout=_default(shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT),
            allow_peers=self.peers(table) or ANY_PEER,
            journal_dir=journal_dir,
            journal_max_bytes=DEFAULT_JOURNAL_MAX_BYTES if journal_max_bytes is None
            else journal_max_bytes,
            journal_backups=DEFAULT_JOURNAL_BACKUPS if journal_backups is None
            else journal_backups,
        )

    def session(self, index: int, data: Mapping[str, object], gateway: GatewayConfig,
                seen_names: dict[str, str], seen_keys: dict[str, str], *,
                default_peers: PeerFilter = ANY_PEER) -> SessionConfig:
        label = f"[[session]] number {index + 1}"
        table = _Table(self, data, f"session[{index}]", label)
        table.check_keys(SESSION_KEYS)

        name = table.required_string("name")
        if _SESSION_NAME.fullmatch(name) is None:
            raise table.error(
                "name", f"{name!r} is not a session name; use letters, digits, '_', '.' and '-' "
                        f"(it becomes a metric label)")
        if name in seen_names:
            raise table.error("name", f"{name!r} is already the name of {seen_names[name]}")
        seen_names[name] = table.prefix
        table.label = f"{label} ({name})"

        allow_remote = bool(table.boolean("allow_remote"))
        listen = self.listen(table, "listen", allow_remote=allow_remote)
        own_peers = self.peers(table)
        allow_peers = default_peers if own_peers is None else own_peers
        if _is_loopback(listen[0]) and not allow_peers.admits_loopback():
            raise self.error(
                f"{table.label} listens on loopback ({listen[0]}), but allow_peers admits no "
                f"loopback address, so no engine could ever connect; add \"127.0.0.1\" (or "
                f"\"::1\") to it",
                table.key("allow_peers") if own_peers is not None else "proxy.allow_peers")

        endpoint_name = table.required_string("endpoint")
        endpoint = ENDPOINTS.get(endpoint_name)
        if endpoint is None:
            raise table.error(
                "endpoint", f"{endpoint_name!r} is not a Kalshi FIX endpoint; expected one of "
                            f"{', '.join(ENDPOINTS)}")

        api_key = table.required_string("api_key")
        if _UUID.fullmatch(api_key) is None:
            raise table.error(
                "api_key", f"{api_key!r} is not a UUID; Kalshi FIX API keys are UUIDs "
                           f"(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), sent as SenderCompID (49)")
        owner = seen_keys.get(api_key.lower())
        if owner is not None:
            raise table.error(
                "api_key", f"this API key is already used by {owner}; Kalshi allows one FIX "
                           f"connection per API key, so each session needs its own key")
        seen_keys[api_key.lower()] = table.prefix

        private_key = self.existing_file(
            table, "private_key", table.required_string("private_key"), "private key")
        passphrase = self.passphrase(table)

        session_host = self.host(table, "host")
        host = session_host or gateway.host or default_host(gateway.environment, endpoint)
        port = table.integer("port", 1, 65535) or endpoint.port
        tls = self.tls_policy(table, gateway, host, uses_session_host=session_host is not None)

        reset_on_logon = table.string("reset_on_logon")
        if reset_on_logon is not None and reset_on_logon not in RESET_POLICIES:
            raise table.error(
                "reset_on_logon", f"{reset_on_logon!r} is not a reset policy; expected "
                                  f"\"always\" (141=Y on every Logon) or \"engine\" (forward "
                                  f"the engine's choice)")

        cancel_on_disconnect = table.boolean("cancel_orders_on_disconnect")
        listener = bool(table.boolean("listener"))
        if listener and endpoint.target_comp_id not in LISTENER_ENDPOINTS:
            raise table.error(
                "listener", f"a listener session (20126=Y) exists only on "
                            f"{' and '.join(sorted(LISTENER_ENDPOINTS))}, not on "
                            f"{endpoint.target_comp_id}")
        if listener and cancel_on_disconnect:
            raise table.error(
                "cancel_orders_on_disconnect",
                "a listener session cannot send CancelOrdersOnDisconnect (8013) = Y; Kalshi "
                "requires it to be N or absent there")

        return SessionConfig(
            name=name,
            listen=listen,
            endpoint=endpoint,
            host=host,
            port=port,
            api_key=api_key,
            private_key=private_key,
            tls=tls,
            connect_timeout=table.seconds("connect_timeout") or gateway.connect_timeout,
            allow_remote=allow_remote,
            reset_on_logon=cast(ResetPolicy | None, reset_on_logon),
            cancel_orders_on_disconnect=cancel_on_disconnect,
            listener=listener,
            use_dollars=table.boolean("use_dollars"),
            receive_settlement_reports=table.boolean("receive_settlement_reports"),
            message_retention_hours=table.integer(
                "message_retention_hours", MIN_MESSAGE_RETENTION_HOURS,
                MAX_MESSAGE_RETENTION_HOURS),
            logon_timeout=table.seconds("logon_timeout") or DEFAULT_LOGON_TIMEOUT,
            logout_on_engine_disconnect=table.boolean("logout_on_engine_disconnect") is not False,
            liveness_grace=_default(
                table.seconds("liveness_grace", maximum=MAX_LIVENESS_GRACE, allow_zero=True),
                DEFAULT_LIVENESS_GRACE),
            logout_wait=_default(table.seconds("logout_wait", maximum=MAX_LOGOUT_WAIT),
                                 DEFAULT_LOGOUT_WAIT),
            translate_sequence=table.boolean("translate_sequence") is not False,
            allow_peers=allow_peers,
            private_key_passphrase=passphrase,
        )

    def tls_policy(self, table: _Table, gateway: GatewayConfig, host: str, *,
                   uses_session_host: bool) -> TLSPolicy:
        server_name = self.host(table, "server_name")
        if server_name is None:
            # The gateway's server_name names the gateway's certificate; a session that goes
            # to another host (its own, or the environment's market-data host) must not
            # inherit it, or every handshake would fail the hostname check.
            gateway_host = gateway.host or ENVIRONMENTS[gateway.environment].order_entry_host
            if (gateway.server_name is not None and not uses_session_host
                    and host.lower() == gateway_host.lower()):
                server_name = gateway.server_name
            else:
                server_name = host

        # pins and pinned_cert form one pin set: a session giving either replaces the gateway's
        # whole set, so a market-data session's pins are never mixed with the order-entry host's.
        if table.has("pins") or table.has("pinned_cert"):
            pins = self.pins(table) or ()
            pinned_cert = self.file(table, "pinned_cert", "pinned certificate")
            pin_source = table.label
        else:
            pins, pinned_cert, pin_source = gateway.pins, gateway.pinned_cert, "[gateway]"

        verify = self.verify(table)
        verify_key = table.key("verify")
        if verify is None:
            verify, verify_key = gateway.verify, "gateway.verify"
        pinned = bool(pins) or pinned_cert is not None
        if verify is None:
            verify = "ca+pin" if pinned else "ca"
        conflict = pin_conflict(verify, pinned=pinned)
        if conflict == "ignores pins":
            raise self.error(
                f"verify = \"ca\" would ignore the pins set in {pin_source} for "
                f"{table.label}; use \"ca+pin\", or remove the pins (pins = [] in the session "
                f"drops the gateway's)", verify_key)
        if conflict == "needs pins":
            raise self.error(
                f"verify = {verify!r} needs pins or pinned_cert, and none apply to "
                f"{table.label} (print pins with `fixproxy pin HOST:PORT`)", verify_key)

        ca_file = self.file(table, "ca_file", "CA bundle") if table.has("ca_file") \
            else gateway.ca_file
        return TLSPolicy(server_name=server_name, verify=verify, ca_file=ca_file, pins=pins,
                         pinned_cert=pinned_cert)

    def config(self, document: Mapping[str, object]) -> Config:
        top = _Table(self, document, "", "the top level")
        top.check_keys(TOP_KEYS)
        for name in TABLES:
            if not isinstance(document.get(name, {}), dict):
                raise top.error(name, f"expected a [{name}] table, got "
                                      f"{_toml_type(document[name])}")
        gateway = self.gateway(cast(dict[str, object], document.get("gateway", {})))
        metrics = self.metrics(cast(dict[str, object], document.get("metrics", {})))
        maintenance = self.maintenance(cast(dict[str, object], document.get("maintenance", {})))
        backoff = self.backoff(cast(dict[str, object], document.get("backoff", {})))
        proxy = self.proxy(cast(dict[str, object], document.get("proxy", {})))

        sessions_raw = document.get("session")
        if sessions_raw is None:
            raise top.error("session", "no [[session]] table; at least one session is required")
        if not isinstance(sessions_raw, list):
            raise top.error("session", "sessions are written as [[session]] tables (double "
                                       "brackets), one per session")
        if not sessions_raw:
            raise top.error("session", "at least one [[session]] is required")
        sessions = []
        seen_names: dict[str, str] = {}
        seen_keys: dict[str, str] = {}
        for index, raw in enumerate(sessions_raw):
            if not isinstance(raw, dict):
                raise self.error(f"expected a [[session]] table, got {_toml_type(raw)}",
                                 f"session[{index}]")
            sessions.append(self.session(index, raw, gateway, seen_names, seen_keys,
                                         default_peers=proxy.allow_peers))
        return Config(gateway=gateway, metrics=metrics, sessions=tuple(sessions),
                      path=self.path, maintenance=maintenance, backoff=backoff, proxy=proxy)


def load_config(path: Path, *, check_files: bool = True) -> Config:
    """Read and validate a TOML configuration file.

    Relative paths in the file are resolved against the file's directory. Each listener
    that faces the network (``allow_remote``) is logged as a warning (:func:`remote_warnings`).

    Args:
        path: the TOML file.
        check_files: require ``private_key``, ``ca_file`` and ``pinned_cert`` to exist. Set it
            False to check a configuration away from the machine holding its keys (the shipped
            example is tested this way). Key files are never opened here either way: loading
            them and checking their permissions is :mod:`fixproxy.signing`'s job.
    Raises:
        ConfigError: naming the dotted key and line of the first problem.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file: {exc.strerror or exc}",
                          path=str(path)) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("the file is not valid UTF-8 (TOML files must be)",
                          line=raw[: exc.start].count(b"\n") + 1, path=str(path)) from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_LINE.search(message)
        if match is not None:
            line: int | None = int(match[1])
        elif "end of document" in message:
            line = max(1, len(text.splitlines()))
        else:
            line = None
        message = re.sub(r"\s*\(at (?:line \d+, column \d+|end of document)\)", "", message)
        raise ConfigError(f"TOML syntax error: {message}", line=line, path=str(path)) from exc
    config = _Loader(path, text, check_files=check_files).config(document)
    for warning in remote_warnings(config):
        logger.warning("%s", warning)
    return config


def remote_warnings(config: Config) -> tuple[str, ...]:
    """The risks of ``config``'s listeners that face the network (``allow_remote``), one
    warning each; :func:`load_config` logs them."""
    warnings = [remote_listener_warning(one.name, *one.listen, one.allow_peers)
                for one in config.sessions if not _is_loopback(one.listen[0])]
    if config.metrics.listen is not None and not _is_loopback(config.metrics.listen[0]):
        warnings.append(remote_metrics_warning(*config.metrics.listen))
    return tuple(warnings)


def config_path_from(option: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The configuration file to use: ``option`` if given, else ``$FIXPROXY_CONFIG``.

    Args:
        option: the path given on the command line, or None (an empty string counts as None).
        environ: the environment to read; ``os.environ`` by default.
    Raises:
        ConfigError: neither names a file.
    """
    if option:
        return Path(option)
    value = (os.environ if environ is None else environ).get(ENV_CONFIG, "")
    if value:
        return Path(value)
    raise ConfigError(f"no configuration file given: pass its path (--config) or set "
                      f"{ENV_CONFIG}")
