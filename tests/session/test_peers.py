"""Engine access control: ``allow_peers`` parsing and matching, and the warnings for listeners
that face the network."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Final

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fixproxy.config.loader import load_config, remote_warnings
from fixproxy.errors import ConfigError, FixProxyError
from fixproxy.session.peers import (
    ANY_PEER,
    PeerFilter,
    parse_network,
    peer_address,
    remote_listener_warning,
    remote_metrics_warning,
)

API_KEY: Final = "11111111-1111-4111-8111-111111111111"
OFFICE: Final = PeerFilter.parse(["10.1.0.0/16", "fd00:1::/32", "192.168.5.7"])


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("10.1.2.3", ipaddress.IPv4Network("10.1.2.3/32")),
    ("10.1.0.0/16", ipaddress.IPv4Network("10.1.0.0/16")),
    ("10.1.0.0/255.255.0.0", ipaddress.IPv4Network("10.1.0.0/16")),
    ("fd00::7", ipaddress.IPv6Network("fd00::7/128")),
    ("fd00::/8", ipaddress.IPv6Network("fd00::/8")),
    ("::1", ipaddress.IPv6Network("::1/128")),
    # IPv4-mapped entries are stored as IPv4, the form peers are matched in.
    ("::ffff:10.1.2.3", ipaddress.IPv4Network("10.1.2.3/32")),
    ("::ffff:10.1.0.0/112", ipaddress.IPv4Network("10.1.0.0/16")),
])
def test_parse_network_accepts(text: str, expected: ipaddress.IPv4Network) -> None:
    assert parse_network(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("10.1.2.3/24", 'write the network as "10.1.2.0/24"'),
    ("fd00::7/64", '"fd00::/64"'),
    ("fixhost.internal", "host names are not accepted"),
    ("10.1.2.3/33", "not an IP address or network"),
    ("10.1.2.256", "not an IP address or network"),
    ("", "not an IP address or network"),
    (" 10.1.2.3", "not an IP address or network"),
    ("10.1.2.3:9878", "not an IP address or network"),
    ("fe80::1%eth0", "zone"),
])
def test_parse_network_refuses(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_network(text)
    assert message in caught.value.detail
    assert isinstance(caught.value, FixProxyError)


def test_an_empty_filter_is_refused() -> None:
    with pytest.raises(ConfigError, match="refuse every engine"):
        PeerFilter.parse([])


def test_duplicates_are_dropped_in_order() -> None:
    peers = PeerFilter.parse(["10.0.0.1", "fd00::/8", "10.0.0.1", "::ffff:10.0.0.1"])
    assert peers.describe() == "10.0.0.1, fd00::/8"


# --- matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "allowed"), [
    ("10.1.0.0", True),
    ("10.1.255.255", True),
    ("10.2.0.1", False),
    ("10.0.255.255", False),
    ("192.168.5.7", True),
    ("192.168.5.8", False),
    ("::ffff:10.1.2.3", True),  # an IPv4 engine on a dual-stack listener
    ("::ffff:10.9.2.3", False),
    ("fd00:1::99", True),
    ("fd00:1:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("fd00:2::1", False),
    ("fd00:1::5%eth0", True),  # the zone plays no part
    ("127.0.0.1", False),
    ("::1", False),
    ("localhost", False),  # not an address: refused
    ("", False),
    ("garbage", False),
])
def test_allows(host: str, allowed: bool) -> None:
    assert OFFICE.allows(host) is allowed


@pytest.mark.parametrize("host", ["127.0.0.1", "10.9.8.7", "::1", "2001:db8::1",
                                  "::ffff:203.0.113.9"])
def test_any_peer_allows_every_address(host: str) -> None:
    assert ANY_PEER.allows(host)
    assert ANY_PEER.unrestricted
    assert not ANY_PEER.allows("not-an-address")


def test_unrestricted_needs_both_families() -> None:
    assert not OFFICE.unrestricted
    assert not PeerFilter((ipaddress.IPv4Network((0, 0)),)).unrestricted
    assert not PeerFilter((ipaddress.IPv6Network((0, 0)),)).unrestricted
    assert PeerFilter.parse(["::/0", "10.0.0.1", "0.0.0.0/0"]).unrestricted


@pytest.mark.parametrize(("entries", "admits"), [
    (["127.0.0.1"], True),
    (["127.9.9.9"], True),
    (["::1"], True),
    (["::/0"], True),
    (["10.0.0.0/8", "127.0.0.0/16"], True),
    (["10.0.0.0/8"], False),
    (["fd00::/8", "192.168.0.0/16"], False),
    (["::2"], False),
])
def test_admits_loopback(entries: list[str], admits: bool) -> None:
    assert PeerFilter.parse(entries).admits_loopback() is admits


def test_peer_address_normalises() -> None:
    assert peer_address("::ffff:10.1.2.3") == ipaddress.IPv4Address("10.1.2.3")
    assert peer_address("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert peer_address("10.1.2.3") == ipaddress.IPv4Address("10.1.2.3")
    assert peer_address("host.example") is None


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_ipv4_matching_agrees_with_the_prefix(address: int, prefix: int, other: int) -> None:
    network = ipaddress.IPv4Network((address, prefix), strict=False)
    peers = PeerFilter((network,))
    host = ipaddress.IPv4Address(address)
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | address)
    assert peers.allows(str(host))
    assert peers.allows(str(mapped))
    # Another address is allowed exactly when it shares the first ``prefix`` bits.
    same = prefix == 0 or (other >> (32 - prefix)) == (address >> (32 - prefix))
    assert peers.allows(str(ipaddress.IPv4Address(other))) is same


@given(st.integers(0, 2**128 - 1), st.integers(0, 128), st.integers(0, 2**128 - 1))
def test_ipv6_matching_agrees_with_the_prefix(address: int, prefix: int, other: int) -> None:
    peers = PeerFilter((ipaddress.IPv6Network((address, prefix), strict=False),))
    candidate = ipaddress.IPv6Address(other)
    assume(candidate.ipv4_mapped is None)  # matched as IPv4 by design (test_allows)
    same = prefix == 0 or (other >> (128 - prefix)) == (address >> (128 - prefix))
    assert peers.allows(str(candidate)) is same


# --- texts --------------------------------------------------------------------------------


def test_refusal_text_names_the_setting_not_the_allowed_networks() -> None:
    text = OFFICE.refusal_text("10.9.8.7")
    assert "10.9.8.7" in text
    assert "allow_peers" in text
    assert "not allowed" in text
    # It goes to the refused peer: the operator's networks are none of its business.
    for network in ("10.1.0.0/16", "fd00:1::/32", "192.168.5.7"):
        assert network not in text


def test_log_text_tells_the_operator_what_to_change() -> None:
    text = OFFICE.log_text("10.9.8.7", "order-entry")
    assert "10.9.8.7" in text
    assert "'order-entry'" in text
    assert "10.1.0.0/16, fd00:1::/32, 192.168.5.7" in text
    assert "allow_peers" in text
    assert "[proxy]" in text


def test_remote_listener_warning_explains_the_risk() -> None:
    text = remote_listener_warning("order-entry", "10.1.2.3", 9878, ANY_PEER)
    assert "'order-entry'" in text
    assert "10.1.2.3:9878" in text
    assert "plain-TCP FIX without authentication" in text
    assert "anyone who can reach this port can log on and trade" in text
    assert "set allow_peers" in text
    assert "firewall" in text


def test_remote_listener_warning_with_peers_names_them() -> None:
    text = remote_listener_warning("rt", "fd00::5", 9879, OFFICE)
    assert "[fd00::5]:9879" in text
    assert "Only 10.1.0.0/16, fd00:1::/32, 192.168.5.7 may connect" in text
    assert "firewall" in text
    assert "Every source address" not in text


def test_remote_metrics_warning() -> None:
    text = remote_metrics_warning("10.1.2.3", 9464)
    assert "10.1.2.3:9464" in text
    assert "no authentication" in text
    assert "firewall" in text


# --- the warnings are logged when the configuration is loaded -----------------------------


def write_config(directory: Path, *, listen: str, metrics_listen: str = "127.0.0.1:9464",
                 extra: str = "") -> Path:
    (directory / "k.key").write_bytes(b"")
    remote = "allow_remote = true\n" if not listen.startswith("127.") else ""
    metrics_remote = "allow_remote = true\n" if not metrics_listen.startswith("127.") else ""
    path = directory / "fixproxy.toml"
    path.write_text(
        f'[metrics]\nlisten = "{metrics_listen}"\n{metrics_remote}'
        f'[[session]]\nname = "s0"\nlisten = "{listen}"\nendpoint = "KalshiNR"\n'
        f'api_key = "{API_KEY}"\nprivate_key = "k.key"\n{remote}{extra}', encoding="utf-8")
    return path


def config_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "fixproxy.config" and record.levelno == logging.WARNING]


def test_remote_listener_is_logged_as_a_warning(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = load_config(write_config(tmp_path, listen="10.1.2.3:9878"))
    (warning,) = config_warnings(caplog)
    assert warning == remote_listener_warning("s0", "10.1.2.3", 9878, ANY_PEER)
    assert remote_warnings(config) == (warning,)


def test_remote_listener_warning_mentions_the_configured_peers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    load_config(write_config(tmp_path, listen="[fd00::5]:9878",
                             extra='allow_peers = ["fd00::/64"]\n'))
    (warning,) = config_warnings(caplog)
    assert "Only fd00::/64 may connect" in warning
    assert "[fd00::5]:9878" in warning


def test_remote_metrics_is_logged_as_a_warning(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    load_config(write_config(tmp_path, listen="127.0.0.1:9878",
                             metrics_listen="10.1.2.3:9464"))
    assert config_warnings(caplog) == [remote_metrics_warning("10.1.2.3", 9464)]


def test_loopback_listeners_log_no_warning(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = load_config(write_config(tmp_path, listen="127.0.0.1:9878"))
    assert config_warnings(caplog) == []
    assert remote_warnings(config) == ()


def test_a_refused_configuration_logs_no_warning(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(ConfigError):
        load_config(write_config(tmp_path, listen="10.1.2.3:9878", extra="colour = 1\n"))
    assert config_warnings(caplog) == []
