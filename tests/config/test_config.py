"""The configuration loader: every rule and the line it reports, accepted values, the optional
tables and session lifecycle keys, and choosing the file."""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from support.config_files import (
    API_KEYS,
    MARK,
    PIN_A,
    PIN_B,
    Case,
    backoff,
    expected_line,
    gateway,
    load,
    load_one,
    maintenance,
    metrics,
    proxy,
    session,
    write,
)

from fixproxy.config.loader import ENV_CONFIG, config_path_from, load_config
from fixproxy.config.model import (
    BackoffConfig,
    Config,
    GatewayConfig,
    MetricsConfig,
    ProxyConfig,
    SessionConfig,
)
from fixproxy.errors import ConfigError, FixProxyError
from fixproxy.kalshi import ENDPOINTS
from fixproxy.session.schedule import DEFAULT_SCHEDULE

ERROR_CASES = [
    # --- TOML syntax ---
    Case("syntax-unterminated-string", session(0, 'name = "s0 #<'), "", "TOML syntax error"),
    Case("syntax-bare-value", gateway('environment = prod #<') + session(0), "",
         "TOML syntax error"),
    # --- unknown keys at every level ---
    Case("unknown-top-level-key", "colour = 1 #<\n" + session(0), "colour", "unknown key"),
    Case("unknown-table", "[logging] #<\nlevel = 1\n" + session(0), "logging", "unknown key"),
    Case("unknown-gateway-key", gateway('hots = "x" #<') + session(0), "gateway.hots",
         "did you mean 'host'"),
    Case("unknown-metrics-key", metrics("port = 9464 #<") + session(0), "metrics.port",
         "unknown key"),
    Case("unknown-session-key", session(0, f'apikey = "{API_KEYS[0]}" #<'), "session[0].apikey",
         "did you mean 'api_key'"),
    Case("unknown-key-second-session", session(0) + session(1, 'colour = "red" #<'),
         "session[1].colour", "unknown key"),
    Case("unknown-subtable", session(0) + "[session.tls] #<\npins = []\n", "session[0].tls",
         "unknown key"),
    Case("unknown-dotted-key", session(0, "tls.pins = [] #<"), "session[0].tls", "unknown key"),
    # --- wrong types ---
    Case("bool-for-timeout", gateway("connect_timeout = true #<") + session(0),
         "gateway.connect_timeout", "got a boolean"),
    Case("bool-for-port", session(0, "port = true #<"), "session[0].port", "got a boolean"),
    Case("float-for-hours", session(0, "message_retention_hours = 24.0 #<"),
         "session[0].message_retention_hours", "expected an integer"),
    Case("string-for-bool", session(0, 'use_dollars = "yes" #<'), "session[0].use_dollars",
         "expected true or false"),
    Case("int-for-string", session(0, "name = 5 #<"), "session[0].name", "expected a string"),
    Case("datetime-for-timeout", session(0, "logon_timeout = 1979-05-27T07:32:00Z #<"),
         "session[0].logon_timeout", "got a date-time"),
    Case("string-for-pins", gateway(f'pins = "{PIN_A}" #<') + session(0), "gateway.pins",
         "expected an array of strings"),
    Case("int-in-pins", gateway(f'pins = ["{PIN_A}", 1] #<') + session(0), "gateway.pins[1]",
         "expected a string"),
    Case("gateway-not-a-table", "gateway = 3 #<\n" + session(0), "gateway", "expected a [gateway]"),
    Case("session-single-brackets",
         f'[session] #<\nname = "s0"\nlisten = "127.0.0.1:9878"\napi_key = "{API_KEYS[0]}"\n',
         "session", "[[session]]"),
    Case("session-empty-array", "session = [] #<\n", "session", "at least one"),
    # --- environment and endpoint ---
    Case("unknown-environment", gateway('environment = "staging" #<') + session(0),
         "gateway.environment", "'prod', 'demo'"),
    Case("unknown-endpoint", session(0, 'endpoint = "KalshiXX" #<'), "session[0].endpoint",
         ", ".join(ENDPOINTS)),
    # --- listen addresses ---
    Case("listen-no-port", session(0, 'listen = "127.0.0.1" #<'), "session[0].listen",
         "not host:port"),
    Case("listen-port-zero", session(0, 'listen = "127.0.0.1:0" #<'), "session[0].listen",
         "out of range"),
    Case("listen-port-too-big", session(0, 'listen = "127.0.0.1:65536" #<'),
         "session[0].listen", "out of range"),
    Case("listen-ipv6-unbracketed", session(0, 'listen = "::1:9878" #<'), "session[0].listen",
         "not host:port"),
    Case("listen-bad-ipv6", session(0, 'listen = "[::g]:9878" #<'), "session[0].listen",
         "not host:port"),
    Case("listen-wildcard", session(0, 'listen = "0.0.0.0:9878" #<'), "session[0].listen",
         "anyone who can connect can trade as you"),
    Case("listen-lan-address", session(0, 'listen = "10.1.2.3:9878" #<'), "session[0].listen",
         "allow_remote = true"),
    Case("listen-remote-allowed-elsewhere",
         session(0, "allow_remote = true") + session(1, 'listen = "0.0.0.0:9900" #<'),
         "session[1].listen", "not a loopback address"),
    Case("listen-on-second-session-line", session(0) + session(1, 'listen = "bad" #<'),
         "session[1].listen", "not host:port"),
    Case("metrics-remote", metrics('listen = "0.0.0.0:9464" #<') + session(0), "metrics.listen",
         "plain-TCP FIX"),
    Case("listen-duplicate", session(0) + session(1, 'listen = "127.0.0.1:9878" #<'),
         "session[1].listen", "session[0].listen"),
    Case("listen-duplicate-ipv6-spelling",
         session(0, 'listen = "[::1]:9878"') + session(1, 'listen = "[0::1]:9878" #<'),
         "session[1].listen", "session[0].listen"),
    Case("listen-on-default-metrics", session(0, 'listen = "127.0.0.1:9464" #<'),
         "session[0].listen", "metrics.listen"),
    Case("listen-on-metrics", metrics('listen = "127.0.0.1:9999"')
         + session(0, 'listen = "127.0.0.1:9999" #<'), "session[0].listen", "metrics.listen"),
    # --- names and keys ---
    Case("name-duplicate", session(0) + session(1, 'name = "s0" #<'), "session[1].name",
         "already the name of session[0]"),
    Case("name-empty", session(0, 'name = "" #<'), "session[0].name", "not a session name"),
    Case("name-with-space", session(0, 'name = "order entry" #<'), "session[0].name",
         "metric label"),
    Case("api-key-not-uuid", session(0, 'api_key = "my-key" #<'), "session[0].api_key",
         "not a UUID"),
    Case("api-key-braced-uuid", session(0, f'api_key = "{{{API_KEYS[0]}}}" #<'),
         "session[0].api_key", "not a UUID"),
    Case("missing-api-key", session(0, drop=("api_key",), header=MARK), "session[0].api_key",
         "missing required key"),
    Case("missing-name-second-session", session(0) + session(1, drop=("name",), header=MARK),
         "session[1].name", "missing required key"),
    Case("missing-private-key", session(0, drop=("private_key",), header=MARK),
         "session[0].private_key", "missing required key"),
    Case("private-key-absent", session(0, 'private_key = "nope.key" #<'),
         "session[0].private_key", "does not exist"),
    Case("private-key-is-directory", session(0, 'private_key = "." #<'),
         "session[0].private_key", "not a regular file"),
    Case("private-key-unknown-user", session(0, 'private_key = "~no-such-user-fx/k.key" #<'),
         "session[0].private_key", "cannot expand"),
    Case("private-key-empty", session(0, 'private_key = "" #<'), "session[0].private_key",
         "empty path"),
    # --- hosts and ports ---
    Case("host-with-scheme", session(0, 'host = "https://fix.example" #<'), "session[0].host",
         "not a host name"),
    Case("gateway-host-with-port", gateway('host = "fix.elections.kalshi.com:8228" #<')
         + session(0), "gateway.host", "not a host name"),
    Case("server-name-with-space", gateway('server_name = "a b" #<') + session(0),
         "gateway.server_name", "not a host name"),
    Case("port-out-of-range", session(0, "port = 70000 #<"), "session[0].port", "1..65535"),
    # --- TLS verification ---
    Case("pin-wrong-algorithm", gateway('pins = ["sha1/abc"] #<') + session(0),
         "gateway.pins[0]", "fixproxy pin HOST:PORT"),
    Case("pin-too-short", gateway(f'pins = ["{PIN_A}", "{PIN_B[:-2]}="] #<') + session(0),
         "gateway.pins[1]", "not a pin"),
    Case("pin-sha384-length", gateway(f'pins = ["sha256/{"A" * 64}"] #<') + session(0),
         "gateway.pins[0]", "not a pin"),
    Case("pin-in-session", session(0, 'pins = ["sha256/xyz"] #<'), "session[0].pins[0]",
         "not a pin"),
    Case("pinned-cert-absent", gateway('pinned_cert = "missing.pem" #<') + session(0),
         "gateway.pinned_cert", "does not exist"),
    Case("ca-file-absent", gateway('ca_file = "missing.pem" #<') + session(0),
         "gateway.ca_file", "does not exist"),
    Case("session-ca-file-absent", session(0, 'ca_file = "missing.pem" #<'),
         "session[0].ca_file", "does not exist"),
    Case("verify-none", gateway('verify = "none" #<') + session(0), "gateway.verify",
         "never disables certificate verification"),
    Case("verify-none-suggests-pin", gateway('verify = "none" #<') + session(0),
         "gateway.verify", 'verify = "pin" with pins'),
    Case("verify-false", session(0, "verify = false #<"), "session[0].verify",
         "never disables"),
    Case("verify-unknown", gateway('verify = "strict" #<') + session(0), "gateway.verify",
         "not a verify mode"),
    Case("verify-int", gateway("verify = 1 #<") + session(0), "gateway.verify",
         "expected a string"),
    Case("verify-pin-without-pins", gateway('verify = "pin" #<') + session(0), "gateway.verify",
         "needs pins or pinned_cert"),
    Case("verify-ca-pin-without-pins", session(0, 'verify = "ca+pin" #<'), "session[0].verify",
         "needs pins or pinned_cert"),
    Case("verify-pin-session-drops-pins",
         gateway('verify = "pin" #<', f'pins = ["{PIN_A}"]') + session(0, "pins = []"),
         "gateway.verify", "needs pins"),
    Case("verify-ca-ignores-pins", gateway('verify = "ca" #<', f'pins = ["{PIN_A}"]')
         + session(0), "gateway.verify", "would ignore the pins"),
    Case("verify-ca-ignores-session-cert", session(0, 'verify = "ca" #<',
                                                   'pinned_cert = "cert.pem"'),
         "session[0].verify", "would ignore the pins"),
    # --- timeouts and flags ---
    Case("connect-timeout-zero", gateway("connect_timeout = 0 #<") + session(0),
         "gateway.connect_timeout", "out of range"),
    Case("connect-timeout-too-long", session(0, "connect_timeout = 300.5 #<"),
         "session[0].connect_timeout", "at most 300"),
    Case("connect-timeout-nan", session(0, "connect_timeout = nan #<"),
         "session[0].connect_timeout", "out of range"),
    Case("logon-timeout-negative", session(0, "logon_timeout = -1 #<"),
         "session[0].logon_timeout", "out of range"),
    Case("retention-zero", session(0, "message_retention_hours = 0 #<"),
         "session[0].message_retention_hours", "1..72"),
    Case("retention-too-long", session(0, "message_retention_hours = 73 #<"),
         "session[0].message_retention_hours", "1..72"),
    Case("reset-policy-unknown", session(0, 'reset_on_logon = "never" #<'),
         "session[0].reset_on_logon", "not a reset policy"),
    Case("listener-on-drop-copy", session(0, 'endpoint = "KalshiDC"', "listener = true #<"),
         "session[0].listener", "KalshiNR and KalshiRT"),
    Case("listener-with-cancel-on-disconnect",
         session(0, "listener = true", "cancel_orders_on_disconnect = true #<"),
         "session[0].cancel_orders_on_disconnect", "N or absent"),
    # --- [maintenance] ---
    Case("maintenance-not-a-table", "maintenance = true #<\n" + session(0), "maintenance",
         "expected a [maintenance] table"),
    Case("maintenance-unknown-key", maintenance('day = ["thu"] #<') + session(0),
         "maintenance.day", "did you mean 'days'"),
    Case("maintenance-days-string", maintenance('days = "thu" #<') + session(0),
         "maintenance.days", "expected an array of strings"),
    Case("maintenance-days-empty", maintenance("days = [] #<") + session(0), "maintenance.days",
         "no day given"),
    Case("maintenance-day-misspelt", maintenance('days = ["mon", "thursdy"] #<') + session(0),
         "maintenance.days[1]", "not a day"),
    Case("maintenance-day-number", maintenance("days = [3] #<") + session(0),
         "maintenance.days[0]", "expected a string"),
    Case("maintenance-start-am", maintenance('start = "3am" #<') + session(0),
         "maintenance.start", "HH:MM"),
    Case("maintenance-end-24", maintenance('end = "24:00" #<') + session(0), "maintenance.end",
         "not a time of day"),
    Case("maintenance-end-minute-60", maintenance('end = "05:60" #<') + session(0),
         "maintenance.end", "not a time of day"),
    Case("maintenance-start-toml-time", maintenance("start = 03:00:00 #<") + session(0),
         "maintenance.start", "got a time"),
    Case("maintenance-start-equals-default-end", maintenance('start = "05:00" #<') + session(0),
         "maintenance.start", "a window needs a length"),
    Case("maintenance-end-equals-start",
         maintenance('start = "04:00"', 'end = "4:00" #<') + session(0), "maintenance.end",
         "enabled = false"),
    Case("maintenance-timezone-misspelt", maintenance('timezone = "America/NewYork" #<')
         + session(0), "maintenance.timezone", "did you mean 'America/New_York'"),
    Case("maintenance-timezone-offset", maintenance('timezone = "-05:00" #<') + session(0),
         "maintenance.timezone", "not an IANA time zone"),
    Case("maintenance-timezone-localtime", maintenance('timezone = "localtime" #<')
         + session(0), "maintenance.timezone", "not an IANA time zone"),
    Case("maintenance-timezone-leap-seconds", maintenance('timezone = "right/UTC" #<')
         + session(0), "maintenance.timezone", "not an IANA time zone"),
    Case("maintenance-timezone-directory", maintenance('timezone = "America" #<')
         + session(0), "maintenance.timezone", "not an IANA time zone"),
    Case("maintenance-timezone-path", maintenance('timezone = "../../etc/passwd" #<')
         + session(0), "maintenance.timezone", "not an IANA time zone"),
    Case("maintenance-timezone-number", maintenance("timezone = -5 #<") + session(0),
         "maintenance.timezone", "expected a string"),
    Case("maintenance-reset-after-string", maintenance('reset_after = "yes" #<') + session(0),
         "maintenance.reset_after", "expected true or false"),
    Case("maintenance-enabled-number", maintenance("enabled = 0 #<") + session(0),
         "maintenance.enabled", "expected true or false"),
    Case("maintenance-disabled-still-checked",
         maintenance("enabled = false", 'timezone = "Mars/Olympus" #<') + session(0),
         "maintenance.timezone", "not an IANA time zone"),
    # --- [backoff] ---
    Case("backoff-unknown-key", backoff("max = 30 #<") + session(0), "backoff.max",
         "unknown key"),
    Case("backoff-floor-zero", backoff("floor = 0 #<") + session(0), "backoff.floor",
         "more than 0"),
    Case("backoff-floor-negative", backoff("floor = -1.0 #<") + session(0), "backoff.floor",
         "out of range"),
    Case("backoff-floor-bool", backoff("floor = true #<") + session(0), "backoff.floor",
         "got a boolean"),
    Case("backoff-ceiling-too-long", backoff("ceiling = 3601 #<") + session(0),
         "backoff.ceiling", "at most 3600"),
    Case("backoff-ceiling-below-floor", backoff("floor = 10", "ceiling = 5 #<") + session(0),
         "backoff.ceiling", "below floor"),
    Case("backoff-floor-above-default-ceiling", backoff("floor = 120 #<") + session(0),
         "backoff.floor", "ceiling 60 seconds is below floor 120"),
    # --- [proxy] ---
    Case("proxy-not-a-table", 'proxy = "x" #<\n' + session(0), "proxy",
         "expected a [proxy] table"),
    Case("proxy-unknown-key", proxy('statedir = "s" #<') + session(0), "proxy.statedir",
         "did you mean 'state_dir'"),
    Case("proxy-state-dir-empty", proxy('state_dir = "" #<') + session(0), "proxy.state_dir",
         "empty path"),
    Case("proxy-state-dir-number", proxy("state_dir = 1 #<") + session(0), "proxy.state_dir",
         "expected a string"),
    Case("proxy-state-dir-is-a-file", proxy('state_dir = "k0.key" #<') + session(0),
         "proxy.state_dir", "is not a directory"),
    Case("proxy-shutdown-timeout-zero", proxy("shutdown_timeout = 0 #<") + session(0),
         "proxy.shutdown_timeout", "more than 0"),
    Case("proxy-shutdown-timeout-too-long", proxy("shutdown_timeout = 301 #<") + session(0),
         "proxy.shutdown_timeout", "at most 300"),
    Case("proxy-shutdown-timeout-string", proxy('shutdown_timeout = "10" #<') + session(0),
         "proxy.shutdown_timeout", "a number of seconds"),
    # --- session lifecycle keys ---
    Case("liveness-grace-negative", session(0, "liveness_grace = -0.5 #<"),
         "session[0].liveness_grace", "at least 0 and at most 300"),
    Case("liveness-grace-too-long", session(0, "liveness_grace = 301 #<"),
         "session[0].liveness_grace", "out of range"),
    Case("liveness-grace-nan", session(0, "liveness_grace = nan #<"),
         "session[0].liveness_grace", "out of range"),
    Case("logout-wait-zero", session(0, "logout_wait = 0 #<"), "session[0].logout_wait",
         "more than 0 and at most 60"),
    Case("logout-wait-too-long", session(0, "logout_wait = 61 #<"), "session[0].logout_wait",
         "at most 60"),
    Case("translate-sequence-string", session(0, 'translate_sequence = "no" #<'),
         "session[0].translate_sequence", "expected true or false"),
    Case("logout-on-disconnect-number", session(0, "logout_on_engine_disconnect = 1 #<"),
         "session[0].logout_on_engine_disconnect", "expected true or false"),
    Case("lifecycle-key-misspelt", session(0, "logout_wiat = 2 #<"), "session[0].logout_wiat",
         "did you mean 'logout_wait'"),
    # --- the line finder is not fooled by key-like text inside a multi-line string ---
    Case("key-text-inside-multiline-string",
         session(0, 'host = """\nlisten = "x"\n"""', 'listen = "bad" #<'),
         "session[0].listen", "not host:port"),
]



@pytest.mark.parametrize("case", ERROR_CASES, ids=[case.id for case in ERROR_CASES])
def test_rejects_with_key_and_line(confdir: Path, case: Case) -> None:
    path = write(confdir, case.text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.key == case.key
    assert error.line == expected_line(case.text)
    assert error.path == str(path)
    assert case.message in error.detail
    assert str(error).startswith(f"{path}:{error.line}: ")


def test_no_session_at_all(confdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(confdir, gateway('environment = "demo"'))
    assert info.value.key == "session"
    assert info.value.line is None
    assert "at least one session" in info.value.detail


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert info.value.line is None
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "fixproxy.toml"
    path.write_bytes(session(0).encode() + b'# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == len(session(0).splitlines()) + 1


def test_syntax_error_at_end_of_document(tmp_path: Path) -> None:
    text = session(0) + "pins = ["
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert info.value.line == len(text.splitlines())
    assert isinstance(info.value, FixProxyError)


# --- accepted values ------------------------------------------------------------------------


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:9878", ("127.0.0.1", 9878)),
    ("127.8.9.10:1", ("127.8.9.10", 1)),
    ("localhost:65535", ("localhost", 65535)),
    ("LocalHost:9878", ("LocalHost", 9878)),
    ("[::1]:9878", ("::1", 9878)),
])
def test_loopback_listen_addresses(confdir: Path, listen: str,
                                   expected: tuple[str, int]) -> None:
    assert load_one(confdir, session(0, f'listen = "{listen}"')).listen == expected


@pytest.mark.parametrize("listen", ["0.0.0.0:9878", "[::]:9878", "10.1.2.3:9878",
                                    "fixhost.internal:9878"])
def test_remote_listen_needs_allow_remote(confdir: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        load(confdir, session(0, f'listen = "{listen}"'))
    loaded = load_one(confdir, session(0, f'listen = "{listen}"', "allow_remote = true"))
    assert loaded.allow_remote is True
    assert loaded.listen[1] == 9878


def test_metrics_settings(confdir: Path) -> None:
    assert load(confdir, session(0)).metrics.listen == ("127.0.0.1", 9464)
    assert load(confdir, metrics('listen = ""') + session(0)).metrics.listen is None
    # Disabled metrics free the default port for a session.
    disabled = load(confdir, metrics('listen = ""') + session(0, 'listen = "127.0.0.1:9464"'))
    assert disabled.sessions[0].listen == ("127.0.0.1", 9464)
    remote = load(confdir, metrics('listen = "0.0.0.0:9100"', "allow_remote = true")
                  + session(0))
    assert remote.metrics.listen == ("0.0.0.0", 9100)
    assert remote.metrics.allow_remote is True


def test_paths_resolve_against_the_config_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc"
    (conf / "keys").mkdir(parents=True)
    (conf / "keys" / "a.key").write_bytes(b"")
    (tmp_path / "ca.pem").write_bytes(b"")
    absolute = tmp_path / "abs.pem"
    absolute.write_bytes(b"")
    home = tmp_path / "home"
    home.mkdir()
    (home / "b.key").write_bytes(b"")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)  # the working directory must not matter
    path = conf / "fixproxy.toml"
    path.write_text(
        gateway('ca_file = "../ca.pem"', f'pinned_cert = "{absolute}"')
        + session(0, 'private_key = "keys/a.key"')
        + session(1, 'private_key = "~/b.key"'), encoding="utf-8")
    config = load_config(path)
    assert config.path == path
    first, second = config.sessions
    assert first.private_key.samefile(conf / "keys" / "a.key")
    assert first.private_key.is_absolute()
    assert second.private_key.samefile(home / "b.key")
    assert config.gateway.ca_file is not None
    assert config.gateway.ca_file.samefile(tmp_path / "ca.pem")
    assert first.tls.ca_file == config.gateway.ca_file
    assert first.tls.pinned_cert == absolute


def test_check_files_false_skips_existence_only(tmp_path: Path) -> None:
    text = gateway('pinned_cert = "gone.pem"') + session(0, 'private_key = "gone.key"')
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path, text)
    config = load_config(write(tmp_path, text), check_files=False)
    assert config.sessions[0].private_key == tmp_path.absolute() / "gone.key"
    # Everything else is still checked.
    with pytest.raises(ConfigError, match="not a UUID"):
        load_config(write(tmp_path, session(0, 'api_key = "x"')), check_files=False)


def test_defaults(confdir: Path) -> None:
    config = load(confdir, session(0))
    assert config.gateway.environment == "prod"
    assert config.gateway.verify is None
    one = config.sessions[0]
    assert one.connect_timeout == 10.0
    assert one.logon_timeout == 30.0
    assert one.allow_remote is False
    assert one.listener is False
    assert one.reset_on_logon is None
    assert one.cancel_orders_on_disconnect is None
    assert one.use_dollars is None
    assert one.receive_settlement_reports is None
    assert one.message_retention_hours is None
    assert one.tls.verify == "ca"
    assert one.tls.pins == ()
    assert one.tls.pinned_cert is None
    assert one.tls.ca_file is None


def test_timeouts(confdir: Path) -> None:
    config = load(confdir, gateway("connect_timeout = 5") + session(0)
                  + session(1, "connect_timeout = 2.5", "logon_timeout = 300"))
    first, second = config.sessions
    assert config.gateway.connect_timeout == 5.0
    assert first.connect_timeout == 5.0
    assert isinstance(first.connect_timeout, float)
    assert second.connect_timeout == 2.5
    assert second.logon_timeout == 300.0


# --- maintenance, backoff, proxy and session lifecycle ------------------------------------------

def test_lifecycle_defaults(confdir: Path) -> None:
    config = load(confdir, session(0))
    assert config.maintenance == DEFAULT_SCHEDULE
    assert config.backoff == BackoffConfig(floor=1.0, ceiling=60.0)
    assert config.proxy == ProxyConfig(state_dir=confdir.absolute() / "state",
                                       shutdown_timeout=10.0)
    one = config.sessions[0]
    assert one.logout_on_engine_disconnect is True
    assert one.liveness_grace == 5.0
    assert one.logout_wait == 2.0
    assert one.translate_sequence is True


def test_hand_built_configuration_gets_the_same_defaults(confdir: Path) -> None:
    # The demo and the tests build Config and SessionConfig directly, without the newer keys.
    loaded = load(confdir, session(0))
    built = Config(gateway=GatewayConfig(), metrics=MetricsConfig(), sessions=())
    assert loaded.maintenance == DEFAULT_SCHEDULE
    assert built.maintenance is None  # a hand-built configuration has no window
    assert built.backoff == loaded.backoff
    # Hand-built configurations persist nothing unless they name a state_dir.
    assert built.proxy == ProxyConfig(state_dir=None, shutdown_timeout=10.0)
    one = loaded.sessions[0]
    hand = SessionConfig(name=one.name, listen=one.listen, endpoint=one.endpoint, host=one.host,
                         port=one.port, api_key=one.api_key, private_key=one.private_key,
                         tls=one.tls)
    assert hand == one


def test_maintenance_settings(confdir: Path) -> None:
    config = load(confdir, maintenance('days = ["Mon", "friday"]', 'start = "23:00"',
                                       'end = "1:30"', 'timezone = "UTC"', "reset_after = false",
                                       "enabled = true") + session(0))
    schedule = config.maintenance
    assert schedule is not None
    assert schedule.days == frozenset({0, 4})
    assert (schedule.start, schedule.end) == (time(23), time(1, 30))
    assert schedule.timezone == ZoneInfo("UTC")
    assert schedule.reset_after is False
    window = schedule.active_window(datetime(2026, 1, 10, 1, tzinfo=UTC))  # Saturday 01:00
    assert window is not None
    assert window.start == datetime(2026, 1, 9, 23, tzinfo=UTC)


@pytest.mark.parametrize(("lines", "days"), [
    (('days = ["daily"]',), frozenset(range(7))),
    (('days = ["THU", "thursday"]',), frozenset({3})),
    (('days = ["sat", "sun"]',), frozenset({5, 6})),
    ((), frozenset({3})),
])
def test_maintenance_days(confdir: Path, lines: tuple[str, ...], days: frozenset[int]) -> None:
    schedule = load(confdir, maintenance(*lines) + session(0)).maintenance
    assert schedule is not None
    assert schedule.days == days
    assert schedule.timezone.key == "America/New_York"


@pytest.mark.parametrize("zone", ["Europe/London", "Asia/Tokyo", "US/Eastern", "EST5EDT",
                                  "Etc/GMT+5"])
def test_maintenance_time_zones(confdir: Path, zone: str) -> None:
    schedule = load(confdir, maintenance(f'timezone = "{zone}"') + session(0)).maintenance
    assert schedule is not None
    assert schedule.timezone == ZoneInfo(zone)


def test_maintenance_disabled(confdir: Path) -> None:
    assert load(confdir, maintenance("enabled = false") + session(0)).maintenance is None
    # Disabled with every other key set: they are still parsed, and ignored.
    text = maintenance("enabled = false", 'days = ["daily"]', 'start = "01:00"',
                       'end = "02:00"', 'timezone = "UTC"', "reset_after = false")
    assert load(confdir, text + session(0)).maintenance is None


def test_backoff_settings(confdir: Path) -> None:
    config = load(confdir, backoff("floor = 2", "ceiling = 300") + session(0))
    assert config.backoff == BackoffConfig(floor=2.0, ceiling=300.0)
    assert isinstance(config.backoff.floor, float)
    assert load(confdir, backoff("floor = 0.5", "ceiling = 0.5") + session(0)).backoff == \
        BackoffConfig(floor=0.5, ceiling=0.5)
    assert load(confdir, backoff("ceiling = 3600") + session(0)).backoff.ceiling == 3600.0
    assert load(confdir, backoff("floor = 0.01") + session(0)).backoff.floor == 0.01


def test_proxy_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "k0.key").write_bytes(b"")
    (conf / "existing").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)  # the working directory must not matter
    cases = [
        ('state_dir = "existing"', conf / "existing"),
        ('state_dir = "../var/state"', conf / ".." / "var" / "state"),  # need not exist yet
        ('state_dir = "~/fixproxy"', home / "fixproxy"),
        (f'state_dir = "{tmp_path / "abs"}"', tmp_path / "abs"),
    ]
    for line, expected in cases:
        config = load_config(write(conf, proxy(line, "shutdown_timeout = 300") + session(0)))
        assert config.proxy == ProxyConfig(state_dir=expected, shutdown_timeout=300.0)
    # Without the file checks, a state_dir that is a file is not noticed either.
    text = proxy('state_dir = "k0.key"') + session(0)
    assert load_config(write(conf, text), check_files=False).proxy.state_dir == conf / "k0.key"


def test_session_lifecycle_settings(confdir: Path) -> None:
    config = load(confdir, session(0, "logout_on_engine_disconnect = false",
                                   "liveness_grace = 0", "logout_wait = 60",
                                   "translate_sequence = false")
                  + session(1, "liveness_grace = 300", "logout_wait = 0.25"))
    first, second = config.sessions
    assert first.logout_on_engine_disconnect is False
    assert first.liveness_grace == 0.0
    assert isinstance(first.liveness_grace, float)
    assert first.logout_wait == 60.0
    assert first.translate_sequence is False
    assert (second.liveness_grace, second.logout_wait) == (300.0, 0.25)
    assert second.logout_on_engine_disconnect is True
    assert second.translate_sequence is True


# --- choosing the file ----------------------------------------------------------------------


def test_config_path_from_option_wins() -> None:
    assert config_path_from("a.toml", {ENV_CONFIG: "b.toml"}) == Path("a.toml")


def test_config_path_from_environment() -> None:
    assert config_path_from(None, {ENV_CONFIG: "b.toml"}) == Path("b.toml")
    assert config_path_from("", {ENV_CONFIG: "b.toml"}) == Path("b.toml")


def test_config_path_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CONFIG, "/etc/fixproxy/fixproxy.toml")
    assert config_path_from(None) == Path("/etc/fixproxy/fixproxy.toml")
    monkeypatch.delenv(ENV_CONFIG)
    with pytest.raises(ConfigError, match=ENV_CONFIG):
        config_path_from(None)


@pytest.mark.parametrize("environ", [{}, {ENV_CONFIG: ""}])
def test_config_path_from_nothing(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=ENV_CONFIG):
        config_path_from(None, environ)
