"""Configuration: one TOML file loaded into frozen dataclasses, strictly.

Theory of operation
-------------------
The file is the operator's whole statement of intent, and several of its keys guard money or
security (``allow_remote``, ``verify``, ``pins``, ``cancel_orders_on_disconnect``). A misspelt
safety key that is silently ignored leaves the proxy running with the unsafe default, so the
loader is strict: unknown keys at any level, wrong types (a boolean where a number is wanted
included, although Python's ``bool`` is an ``int``) and impossible values are each a
:class:`~fixproxy.errors.ConfigError` naming the dotted key (``session[1].listen``, 0-based
session indices) and the line of the file (found as :mod:`fixproxy.config.tables` explains).

Nothing is opened here beyond the file itself: key files and certificates must exist (unless
``check_files=False``, used to validate a configuration away from its key store), but loading
keys and checking their permissions belongs to :mod:`fixproxy.signing` at run and check time,
certificates to :mod:`fixproxy.net.tls`. Hosts are resolved here once, from the session, then
``[gateway]``, then the Kalshi environment (:func:`fixproxy.kalshi.default_host`), so the rest
of the program never repeats that precedence.

The tables ``[maintenance]`` (Kalshi's weekly window, :mod:`fixproxy.session.schedule`),
``[backoff]`` (Logon retry waits, :mod:`fixproxy.session.backoff`) and ``[proxy]``
(process-wide settings), and the session keys for Logout, liveness and sequence translation, are
optional; their dataclass fields (:mod:`fixproxy.config.model`) have the same defaults, so code
that builds a :class:`Config` by hand (the demo, tests) needs none of them.

The values every table parses alike (listen addresses, hosts, files, pins, peers) are read by
:class:`~fixproxy.config.reader.Reader`, which the loader extends with the rules of each table.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import replace
from datetime import time
from pathlib import Path
from typing import Final, cast

from fixproxy.config.model import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_ENVIRONMENT,
    DEFAULT_JOURNAL_BACKUPS,
    DEFAULT_JOURNAL_MAX_BYTES,
    DEFAULT_LIVENESS_GRACE,
    DEFAULT_LOGON_TIMEOUT,
    DEFAULT_LOGOUT_WAIT,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_READINESS_INTERVAL,
    DEFAULT_RECOVERY_SAVE_INTERVAL,
    DEFAULT_RECOVERY_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_STATE_DIR,
    BackoffConfig,
    Config,
    GatewayConfig,
    MetricsConfig,
    ProxyConfig,
    RecoveryConfig,
    SessionConfig,
    TLSPolicy,
)
from fixproxy.config.pins import pin_conflict
from fixproxy.config.reader import Reader, is_loopback, listen_identity, or_default
from fixproxy.config.tables import MAX_TIMEOUT, Table, toml_type
from fixproxy.errors import ConfigError
from fixproxy.kalshi import (
    ENDPOINTS,
    ENVIRONMENTS,
    LISTENER_ENDPOINTS,
    MAX_MESSAGE_RETENTION_HOURS,
    ResetPolicy,
    default_host,
)
from fixproxy.session.backoff import DEFAULT_CEILING, DEFAULT_FLOOR, MAX_CEILING
from fixproxy.session.peers import (
    ANY_PEER,
    PeerFilter,
    remote_listener_warning,
    remote_metrics_warning,
)
from fixproxy.session.schedule import DEFAULT_SCHEDULE, MaintenanceSchedule, parse_day, parse_time

logger = logging.getLogger("fixproxy.config")

ENV_CONFIG: Final = "FIXPROXY_CONFIG"


# --- limits and key sets -------------------------------------------------------------------

RESET_POLICIES: Final = ("always", "engine")
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
    "allow_peers", "private_key_passphrase_env", "private_key_passphrase_file", "recovery",
})
RECOVERY_KEYS: Final = frozenset({
    "api_key", "private_key", "host", "port", "private_key_passphrase_env",
    "private_key_passphrase_file", "timeout", "after_clean_logout", "save_interval",
})
RECOVERY_ENDPOINTS: Final = frozenset({"KalshiNR"})
"""Where drop-copy recovery applies: KalshiRT resends by itself."""
MAX_RECOVERY_TIMEOUT: Final = 60.0
"""Longest recovery: the engine waits for its Logon answer meanwhile, and its own Logon
timeout is rarely longer."""
MAX_RECOVERY_SAVE_INTERVAL: Final = 3600.0
_NO_RECOVERY: Final = {"KalshiRT": "resends by itself (ResendRequest)"}
_NO_REPORTS: Final = "carries no order execution reports of its own to recover"

_SESSION_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
# SenderCompID goes on the wire verbatim, so only the canonical 8-4-4-4-12 form is accepted
# (uuid.UUID would also take braces, URNs and the unhyphenated form).
_UUID: Final = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# Names zoneinfo can load that are not a fixed zone: "localtime" is whatever this machine is
# set to (a window must not move when the host's zone changes), "Factory" has no offset rules.
_NOT_ZONES: Final = frozenset({"localtime", "Factory"})

_TOML_LINE: Final = re.compile(r"\(at line (\d+), column \d+\)")


class _Loader(Reader):
    """Turns the parsed TOML document into a :class:`Config`, checking as it goes."""

    def __init__(self, path: Path, text: str, *, check_files: bool) -> None:
        super().__init__(path, text, check_files=check_files)
        self.warnings: list[str] = []
        """What is allowed but worth an operator's attention (a shared API key)."""

    # -- tables --

    def gateway(self, data: Mapping[str, object]) -> GatewayConfig:
        table = Table(self, data, "gateway", "[gateway]")
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
        table = Table(self, data, "metrics", "[metrics]")
        table.check_keys(METRICS_KEYS)
        allow_remote = bool(table.boolean("allow_remote"))
        listen: tuple[str, int] | None
        if table.string("listen") == "":
            listen = None
        elif table.has("listen"):
            listen = self.listen(table, "listen", allow_remote=allow_remote)
        else:
            listen = DEFAULT_METRICS_LISTEN
            self.listens[listen_identity(*listen)] = "metrics.listen (the default)"
        readiness_interval = table.seconds("readiness_interval",
                                           maximum=MAX_READINESS_INTERVAL)
        return MetricsConfig(listen=listen, allow_remote=allow_remote,
                             readiness_interval=or_default(readiness_interval,
                                                          DEFAULT_READINESS_INTERVAL))

    def local_time(self, table: Table, name: str, default: time) -> time:
        text = table.string(name)
        if text is None:
            return default
        try:
            return parse_time(text)
        except ConfigError as exc:
            raise table.error(name, exc.detail) from exc

    def timezone(self, table: Table, name: str) -> zoneinfo.ZoneInfo:
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
        table = Table(self, data, "maintenance", "[maintenance]")
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
        table = Table(self, data, "backoff", "[backoff]")
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

    def directory(self, table: Table, name: str, default: str) -> Path:
        value = table.string(name)
        if value is None:
            value = default
        elif not value:
            raise table.error(name, "empty path; give a directory")
        path = self.resolve(table, name, value)
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
        table = Table(self, data, "proxy", "[proxy]")
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
            shutdown_timeout=or_default(shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT),
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
        table = Table(self, data, f"session[{index}]", label)
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
        if is_loopback(listen[0]) and not allow_peers.admits_loopback():
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
            # A primary and a standby engine, or NR and RT used at different times: allowed,
            # and at run time one connection per key holds across listeners.
            self.warnings.append(
                f"{table.label} uses the API key of {owner}; Kalshi allows one FIX connection "
                f"per API key, so only one of them can be connected at a time (the other "
                f"engine's Logon is refused, naming the session that holds the key)")
        else:
            seen_keys[api_key.lower()] = table.label

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

        recovery = self.recovery(table, endpoint.target_comp_id, api_key, host, tls,
                                 seen_keys) if table.has("recovery") else None

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
            liveness_grace=or_default(
                table.seconds("liveness_grace", maximum=MAX_LIVENESS_GRACE, allow_zero=True),
                DEFAULT_LIVENESS_GRACE),
            logout_wait=or_default(table.seconds("logout_wait", maximum=MAX_LOGOUT_WAIT),
                                  DEFAULT_LOGOUT_WAIT),
            translate_sequence=table.boolean("translate_sequence") is not False,
            allow_peers=allow_peers,
            private_key_passphrase=passphrase,
            recovery=recovery,
        )

    def recovery(self, session: Table, endpoint: str, session_key: str, session_host: str,
                 session_tls: TLSPolicy, seen_keys: dict[str, str]) -> RecoveryConfig:
        raw = session.data.get("recovery")
        if not isinstance(raw, dict):
            raise session.error("recovery", f"expected a [session.recovery] table, got "
                                            f"{toml_type(raw)}")
        table = Table(self, raw, session.key("recovery"), f"{session.label}'s recovery")
        table.check_keys(RECOVERY_KEYS)
        if endpoint not in RECOVERY_ENDPOINTS:
            raise session.error(
                "recovery", f"drop-copy recovery is for KalshiNR, which cannot resend; "
                            f"{endpoint} {_NO_RECOVERY.get(endpoint, _NO_REPORTS)}")
        api_key = table.required_string("api_key")
        if _UUID.fullmatch(api_key) is None:
            raise table.error("api_key", f"{api_key!r} is not a UUID; the drop-copy API key "
                                         f"is a Kalshi FIX API key like the session's")
        if api_key.lower() == session_key.lower():
            raise table.error(
                "api_key", "the drop copy needs an API key of its own: Kalshi allows one FIX "
                           "connection per key, and the session's key is connected while "
                           "recovery runs")
        owner = seen_keys.get(api_key.lower())
        if owner is not None:
            self.warnings.append(
                f"{table.label} uses the API key of {owner}; recovery fails while that "
                f"session is connected")
        else:
            seen_keys[api_key.lower()] = table.label
        private_key = self.existing_file(
            table, "private_key", table.required_string("private_key"), "private key")
        own_host = self.host(table, "host")
        host = own_host or session_host
        tls = session_tls if own_host is None or own_host.lower() == session_host.lower() \
            else replace(session_tls, server_name=own_host)
        return RecoveryConfig(
            api_key=api_key, private_key=private_key, host=host,
            port=table.integer("port", 1, 65535) or ENDPOINTS["KalshiDC"].port, tls=tls,
            private_key_passphrase=self.passphrase(table),
            timeout=or_default(table.seconds("timeout", maximum=MAX_RECOVERY_TIMEOUT),
                               DEFAULT_RECOVERY_TIMEOUT),
            after_clean_logout=table.boolean("after_clean_logout") is not False,
            save_interval=or_default(
                table.seconds("save_interval", maximum=MAX_RECOVERY_SAVE_INTERVAL),
                DEFAULT_RECOVERY_SAVE_INTERVAL))

    def tls_policy(self, table: Table, gateway: GatewayConfig, host: str, *,
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
        top = Table(self, document, "", "the top level")
        top.check_keys(TOP_KEYS)
        for name in TABLES:
            if not isinstance(document.get(name, {}), dict):
                raise top.error(name, f"expected a [{name}] table, got "
                                      f"{toml_type(document[name])}")
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
                raise self.error(f"expected a [[session]] table, got {toml_type(raw)}",
                                 f"session[{index}]")
            sessions.append(self.session(index, raw, gateway, seen_names, seen_keys,
                                         default_peers=proxy.allow_peers))
        return Config(gateway=gateway, metrics=metrics, sessions=tuple(sessions),
                      path=self.path, maintenance=maintenance, backoff=backoff, proxy=proxy,
                      warnings=tuple(self.warnings))


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
    for warning in (*config.warnings, *remote_warnings(config)):
        logger.warning("%s", warning)
    return config


def remote_warnings(config: Config) -> tuple[str, ...]:
    """The risks of ``config``'s listeners that face the network (``allow_remote``), one
    warning each; :func:`load_config` logs them."""
    warnings = [remote_listener_warning(one.name, *one.listen, one.allow_peers)
                for one in config.sessions if not is_loopback(one.listen[0])]
    if config.metrics.listen is not None and not is_loopback(config.metrics.listen[0]):
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
