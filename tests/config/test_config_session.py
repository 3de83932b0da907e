"""A [[session]] resolved: its gateway host, port, server name and pins, its Logon flags and
policy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support.config_files import (
    API_KEYS,
    PIN_A,
    PIN_B,
    gateway,
    load,
    load_one,
    session,
)

from fixproxy.config.loader import SESSION_KEYS
from fixproxy.config.model import SessionConfig
from fixproxy.fix import tags
from fixproxy.kalshi import LOGON_FLAGS

# --- host, port, server name and pins -------------------------------------------------------


@pytest.mark.parametrize(("gateway_lines", "session_lines", "host", "port"), [
    ((), (), "fix.elections.kalshi.com", 8228),
    (('environment = "demo"',), ('endpoint = "KalshiRT"',), "fix.demo.kalshi.co", 8230),
    ((), ('endpoint = "KalshiMD"',), "marketdata.fix.elections.kalshi.com", 8233),
    (('environment = "demo"',), ('endpoint = "KalshiMD"',), "marketdata.fix.demo.kalshi.co",
     8233),
    (('host = "mm.fix.elections.kalshi.com"',), ('endpoint = "KalshiPT"',),
     "mm.fix.elections.kalshi.com", 8231),
    (('host = "mm.fix.elections.kalshi.com"',), ('host = "fix.private.example"',),
     "fix.private.example", 8228),
    ((), ('endpoint = "KalshiDC"', "port = 443"), "fix.elections.kalshi.com", 443),
    ((), ('host = "10.0.0.7"', 'endpoint = "KalshiRFQ"'), "10.0.0.7", 8232),
])
def test_host_and_port_resolution(confdir: Path, gateway_lines: tuple[str, ...],
                                  session_lines: tuple[str, ...], host: str, port: int) -> None:
    loaded = load_one(confdir, gateway(*gateway_lines) + session(0, *session_lines))
    assert (loaded.host, loaded.port) == (host, port)


@pytest.mark.parametrize(("gateway_lines", "session_lines", "server_name"), [
    ((), (), "fix.elections.kalshi.com"),
    (('server_name = "gw.sni"',), (), "gw.sni"),
    (('host = "10.0.0.7"', 'server_name = "mm.fix.elections.kalshi.com"'), (),
     "mm.fix.elections.kalshi.com"),
    # A session with its own host does not inherit the gateway's server name.
    (('server_name = "gw.sni"',), ('host = "fix.private.example"',), "fix.private.example"),
    # Even when it names the gateway's host: overriding host means choosing its name too.
    (('host = "mm.fix.elections.kalshi.com"', 'server_name = "gw.sni"'),
     ('host = "mm.fix.elections.kalshi.com"',), "mm.fix.elections.kalshi.com"),
    # Nor does a session that goes to the market-data host.
    (('server_name = "gw.sni"',), ('endpoint = "KalshiMD"',),
     "marketdata.fix.elections.kalshi.com"),
    # Unless the gateway's host is where the market-data session goes too.
    (('host = "10.0.0.7"', 'server_name = "gw.sni"'), ('endpoint = "KalshiMD"',), "gw.sni"),
    (('server_name = "gw.sni"',), ('host = "10.0.0.8"', 'server_name = "s.sni"'), "s.sni"),
    ((), ('server_name = "s.sni"',), "s.sni"),
])
def test_server_name_resolution(confdir: Path, gateway_lines: tuple[str, ...],
                                session_lines: tuple[str, ...], server_name: str) -> None:
    loaded = load_one(confdir, gateway(*gateway_lines) + session(0, *session_lines))
    assert loaded.tls.server_name == server_name


@pytest.mark.parametrize(
    ("gateway_lines", "session_lines", "expected"), [
        ((f'pins = ["{PIN_A}"]',), (), ((PIN_A,), None, "ca+pin")),
        (('pinned_cert = "cert.pem"',), (), ((), "cert.pem", "ca+pin")),
        ((f'pins = ["{PIN_A}"]',), (f'pins = ["{PIN_B}"]',), ((PIN_B,), None, "ca+pin")),
        # The session's pin set replaces the gateway's whole set, pinned_cert included.
        ((f'pins = ["{PIN_A}"]', 'pinned_cert = "cert.pem"'), (f'pins = ["{PIN_B}"]',),
         ((PIN_B,), None, "ca+pin")),
        (('pinned_cert = "cert.pem"',), ('pinned_cert = "other.pem"',),
         ((), "other.pem", "ca+pin")),
        ((f'pins = ["{PIN_A}"]',), ("pins = []",), ((), None, "ca")),
        ((f'pins = ["{PIN_A}", "{PIN_B}"]', 'verify = "pin"'), (),
         ((PIN_A, PIN_B), None, "pin")),
        ((f'pins = ["{PIN_A}"]',), ('verify = "pin"',), ((PIN_A,), None, "pin")),
        ((f'pins = ["{PIN_A}"]', 'verify = "pin"'), ('verify = "ca+pin"',),
         ((PIN_A,), None, "ca+pin")),
        ((), (f'pins = ["{PIN_B}"]',), ((PIN_B,), None, "ca+pin")),
        ((), ('verify = "ca"',), ((), None, "ca")),
    ])
def test_pin_resolution(confdir: Path, gateway_lines: tuple[str, ...],
                        session_lines: tuple[str, ...],
                        expected: tuple[tuple[str, ...], str | None, str]) -> None:
    pins, pinned_cert, verify = expected
    loaded = load_one(confdir, gateway(*gateway_lines) + session(0, *session_lines))
    assert loaded.tls.pins == pins
    expected_cert = None if pinned_cert is None else confdir.absolute() / pinned_cert
    assert loaded.tls.pinned_cert == expected_cert
    assert loaded.tls.verify == verify


def test_ca_file_per_session(confdir: Path) -> None:
    config = load(confdir, gateway('ca_file = "ca.pem"') + session(0)
                  + session(1, 'ca_file = "other.pem"'))
    assert [s.tls.ca_file for s in config.sessions] == [confdir.absolute() / "ca.pem",
                                                        confdir.absolute() / "other.pem"]


# --- Logon flags and policy -----------------------------------------------------------------


@pytest.mark.parametrize(("session_lines", "flags"), [
    ((), ()),
    (("cancel_orders_on_disconnect = false",), ((tags.CANCEL_ORDERS_ON_DISCONNECT, b"N"),)),
    (("listener = true",), ((tags.LISTENER_SESSION, b"Y"),
                            (tags.SKIP_PENDING_EXEC_REPORTS, b"Y"))),
    (("listener = true", "cancel_orders_on_disconnect = false"),
     ((tags.CANCEL_ORDERS_ON_DISCONNECT, b"N"), (tags.LISTENER_SESSION, b"Y"),
      (tags.SKIP_PENDING_EXEC_REPORTS, b"Y"))),
    (('endpoint = "KalshiRT"', "message_retention_hours = 72", "use_dollars = true",
      "receive_settlement_reports = false", "cancel_orders_on_disconnect = true"),
     ((tags.CANCEL_ORDERS_ON_DISCONNECT, b"Y"), (tags.USE_DOLLARS, b"Y"),
      (tags.RECEIVE_SETTLEMENT_REPORTS, b"N"), (tags.MESSAGE_RETENTION_PERIOD, b"72"))),
    (("message_retention_hours = 1",), ((tags.MESSAGE_RETENTION_PERIOD, b"1"),)),
])
def test_kalshi_flags(confdir: Path, session_lines: tuple[str, ...],
                      flags: tuple[tuple[int, bytes], ...]) -> None:
    assert load_one(confdir, session(0, *session_lines)).kalshi_flags() == flags


def test_flag_tags_are_kalshis() -> None:
    # The tag numbers the flags above are written with, as Kalshi's Logon table gives them.
    assert (tags.CANCEL_ORDERS_ON_DISCONNECT, tags.LISTENER_SESSION,
            tags.SKIP_PENDING_EXEC_REPORTS, tags.USE_DOLLARS, tags.RECEIVE_SETTLEMENT_REPORTS,
            tags.MESSAGE_RETENTION_PERIOD) == (8013, 20126, 21011, 21005, 20127, 20200)


def test_every_kalshi_logon_flag_is_a_session_option() -> None:
    # SessionConfig.kalshi_flags reads each flag's option by name.
    fields = {field.name for field in dataclasses.fields(SessionConfig)}
    for flag in LOGON_FLAGS:
        assert flag.option in fields
        assert flag.option in SESSION_KEYS


@pytest.mark.parametrize(("endpoint", "reset_on_logon", "force_reset"), [
    ("KalshiNR", None, True),
    ("KalshiDC", None, True),
    ("KalshiPT", None, True),
    ("KalshiRFQ", None, True),
    ("KalshiMD", None, True),
    ("KalshiRT", None, False),
    ("KalshiRT", "always", True),
    ("KalshiPT", "engine", False),
])
def test_logon_policy(confdir: Path, endpoint: str, reset_on_logon: str | None,
                      force_reset: bool) -> None:
    lines = [f'endpoint = "{endpoint}"', "use_dollars = true"]
    if reset_on_logon is not None:
        lines.append(f'reset_on_logon = "{reset_on_logon}"')
    loaded = load_one(confdir, session(0, *lines))
    policy = loaded.logon_policy()
    assert policy.session_name == "s0"
    assert policy.api_key == API_KEYS[0]
    assert policy.target_comp_id == endpoint
    assert policy.force_reset is force_reset
    assert loaded.reset_policy == ("always" if force_reset else "engine")
    assert policy.kalshi_flags == ((tags.USE_DOLLARS, b"Y"),)
