"""``fixproxy sim --cert-out`` and ``--config-out``: the certificate kept across starts, and
a configuration for the simulator's ports that fixproxy loads as it is."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fixproxy.config.loader import load_config
from fixproxy.errors import ConfigError
from fixproxy.signing import generate_key_pair
from fixproxy.sim.certs import (
    CA_CERT_FILE,
    LEAF_KEY_FILE,
    generate_certificates,
    read_certificates,
)
from fixproxy.sim.configout import EXAMPLE_SESSIONS, render_sim_config, write_sim_config
from fixproxy.sim.run import endpoint_ports

KEYS = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
        "33333333-3333-4333-8333-333333333333")


def test_written_certificates_read_back_as_the_same_set(tmp_path: Path) -> None:
    certs = generate_certificates("localhost")
    certs.write(tmp_path)
    again = read_certificates(tmp_path)
    assert again is not None
    assert again.leaf_pin == certs.leaf_pin
    assert again.ca_cert_pem == certs.ca_cert_pem
    assert again.hostname == "localhost"
    assert again.ca_key_pem is None  # never written


def test_missing_or_expiring_certificates_are_not_kept(tmp_path: Path) -> None:
    assert read_certificates(tmp_path / "nothing") is None
    now = dt.datetime.now(dt.UTC)
    generate_certificates(not_before=now - dt.timedelta(days=2),
                          not_after=now + dt.timedelta(hours=2)).write(tmp_path)
    assert read_certificates(tmp_path) is not None
    assert read_certificates(tmp_path, valid_for=dt.timedelta(days=1)) is None
    (tmp_path / LEAF_KEY_FILE).unlink()
    assert read_certificates(tmp_path) is None


def test_files_that_are_not_certificates_are_an_error(tmp_path: Path) -> None:
    generate_certificates().write(tmp_path)
    (tmp_path / CA_CERT_FILE).write_text("not a certificate")
    with pytest.raises(ConfigError, match="remove them to make new ones"):
        read_certificates(tmp_path)


def _specs(tmp_path: Path, names: list[str]) -> list[str]:
    specs = []
    for api_key, name in zip(KEYS, names, strict=False):
        _, public = generate_key_pair(tmp_path / "keys", name)
        specs.append(f"{api_key}={public}")
    return specs


def test_the_written_configuration_loads_and_points_at_the_simulator(tmp_path: Path) -> None:
    certs = generate_certificates("localhost")
    files = certs.write(tmp_path / "sim-certs")
    bound = {name: ("127.0.0.1", port) for name, port in endpoint_ports(18228).items()}
    config_path = tmp_path / "sim.toml"
    # One key named after a session of the example, one not: it takes the next endpoint.
    write_sim_config(config_path, _specs(tmp_path, ["drop-copy", "mine"]), bound,
                     ca_file=files.ca_cert, pin=certs.leaf_pin, server_name="localhost")
    text = config_path.read_text()
    assert 'ca_file = "sim-certs/ca.pem"' in text
    assert 'private_key = "keys/drop-copy.key"' in text
    config = load_config(config_path)  # the keys and the CA file exist: every check runs
    assert config.gateway.host == "127.0.0.1"
    sessions = {s.name: s for s in config.sessions}
    assert set(sessions) == {"drop-copy", "order-entry"}
    assert sessions["drop-copy"].endpoint.target_comp_id == "KalshiDC"
    assert sessions["drop-copy"].listen == ("127.0.0.1", 9880)
    assert sessions["drop-copy"].port == bound["KalshiDC"][1]
    assert sessions["drop-copy"].api_key == KEYS[0]
    assert sessions["order-entry"].endpoint.target_comp_id == "KalshiNR"
    assert sessions["order-entry"].private_key == tmp_path / "keys" / "mine.key"
    for session in config.sessions:
        assert session.tls.pins == (certs.leaf_pin,)
        assert session.tls.ca_file == files.ca_cert
        assert session.tls.server_name == "localhost"
        assert session.tls.verify == "ca+pin"


def test_paths_outside_the_configuration_folder_are_absolute(tmp_path: Path) -> None:
    bound = {name: ("0.0.0.0", port) for name, port in endpoint_ports(8228).items()}
    text = render_sim_config([f"{KEYS[0]}=/elsewhere/order-entry.pub.pem"], bound,
                             ca_file=Path("/elsewhere/ca.pem"), pin="sha256/x",
                             server_name="localhost", base=tmp_path)
    assert 'ca_file = "/elsewhere/ca.pem"' in text
    assert 'private_key = "/elsewhere/order-entry.key"' in text
    assert 'host = "127.0.0.1"' in text  # a simulator on every address is reached locally


def test_more_keys_than_endpoints_are_refused() -> None:
    specs = [f"{n:08d}-0000-4000-8000-000000000000=k{n}.pub.pem"
             for n in range(len(EXAMPLE_SESSIONS) + 1)]
    bound = {name: ("127.0.0.1", port) for name, port in endpoint_ports(8228).items()}
    with pytest.raises(ConfigError, match="at most 6 sessions"):
        render_sim_config(specs, bound, ca_file=Path("ca.pem"), pin="sha256/x",
                          server_name="localhost", base=Path())
