"""The shipped example, conf/fixproxy.toml: it loads, and it documents every key and default."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from support.config_files import EXAMPLE

from fixproxy.config.loader import BACKOFF_KEYS, MAINTENANCE_KEYS, PROXY_KEYS, load_config
from fixproxy.config.model import BackoffConfig, ProxyConfig
from fixproxy.errors import ConfigError
from fixproxy.fix import tags
from fixproxy.session.schedule import DEFAULT_SCHEDULE

LIFECYCLE_KEYS = ("logout_on_engine_disconnect", "liveness_grace", "logout_wait",
                  "translate_sequence")


# --- the shipped example --------------------------------------------------------------------


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, check_files=False)
    assert config.path == EXAMPLE
    assert config.gateway.environment == "prod"
    assert config.metrics.listen == ("127.0.0.1", 9464)
    summary = [(s.endpoint.target_comp_id, s.listen, s.host, s.port) for s in config.sessions]
    assert summary == [
        ("KalshiNR", ("127.0.0.1", 9878), "fix.elections.kalshi.com", 8228),
        ("KalshiRT", ("127.0.0.1", 9879), "fix.elections.kalshi.com", 8230),
        ("KalshiDC", ("127.0.0.1", 9880), "fix.elections.kalshi.com", 8229),
        ("KalshiPT", ("127.0.0.1", 9881), "fix.elections.kalshi.com", 8231),
        ("KalshiRFQ", ("127.0.0.1", 9882), "fix.elections.kalshi.com", 8232),
    ]
    assert len({s.api_key for s in config.sessions}) == 5
    assert len({s.name for s in config.sessions}) == 5
    for one in config.sessions:
        # The file `fixproxy keygen --out keys --name <session name>` writes.
        assert one.private_key == EXAMPLE.parent / "keys" / f"{one.name}.key"
        assert one.tls.server_name == one.host
        assert not one.listener
    flags = {s.endpoint.target_comp_id: s.kalshi_flags() for s in config.sessions}
    assert flags["KalshiNR"] == ((tags.CANCEL_ORDERS_ON_DISCONNECT, b"Y"),
                                 (tags.USE_DOLLARS, b"Y"))
    assert flags["KalshiRT"] == ((tags.USE_DOLLARS, b"Y"), (tags.RECEIVE_SETTLEMENT_REPORTS, b"Y"),
                                 (tags.MESSAGE_RETENTION_PERIOD, b"72"))
    assert flags["KalshiDC"] == ()
    assert flags["KalshiPT"] == ((tags.MESSAGE_RETENTION_PERIOD, b"24"),)
    assert flags["KalshiRFQ"] == ((tags.USE_DOLLARS, b"Y"),)


def test_example_config_with_its_keys_in_place(tmp_path: Path) -> None:
    # Installed as the README does (fixproxy.toml beside keys/), the example passes the file
    # checks too; a missing key says which keygen command makes it.
    (tmp_path / "keys").mkdir()
    path = Path(shutil.copy(EXAMPLE, tmp_path / "fixproxy.toml"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "session[0].private_key"
    assert info.value.line is not None
    assert 'private_key = "keys/' in path.read_text().splitlines()[info.value.line - 1]
    assert (f"create one with `fixproxy keygen --out {tmp_path / 'keys'} --name order-entry`"
            in str(info.value))
    for name in ("order-entry", "order-entry-rt", "drop-copy", "post-trade", "rfq"):
        (tmp_path / "keys" / f"{name}.key").write_bytes(b"")
    assert len(load_config(path).sessions) == 5


def test_example_documents_every_newer_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in MAINTENANCE_KEYS | BACKOFF_KEYS | PROXY_KEYS:
        assert f"\n# {key} = " in text, key
    for key in LIFECYCLE_KEYS:
        assert f"\n#   {key} " in text, key


def test_example_defaults_are_the_defaults(tmp_path: Path) -> None:
    # Uncommenting every "# key = value" of the [proxy], [maintenance] and [backoff] tables must
    # change nothing: the values shown are the real defaults.
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("[proxy]")
    end = next(i for i, line in enumerate(lines) if i > start and "[[session]]" in line)
    uncommented = 0
    for index in range(start, end):
        if re.fullmatch(r"# [a-z_]+ = .+", lines[index]):
            lines[index] = lines[index][2:]
            uncommented += 1
    assert uncommented == len(MAINTENANCE_KEYS | BACKOFF_KEYS | PROXY_KEYS)
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "fixproxy.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shown = load_config(path, check_files=False)
    default = load_config(Path(shutil.copy(EXAMPLE, conf / "plain.toml")), check_files=False)
    assert shown.maintenance == default.maintenance == DEFAULT_SCHEDULE
    assert shown.backoff == default.backoff == BackoffConfig()
    # Except journal_dir, which has no default (no journal): the example names a directory.
    assert shown.proxy.journal_dir == conf / "journal"
    assert default.proxy.journal_dir is None
    assert replace(shown.proxy, journal_dir=None) == default.proxy \
        == ProxyConfig(state_dir=conf / "state")
    assert shown.sessions == default.sessions


def test_example_mentions_both_production_hosts_and_pinning() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "fix.elections.kalshi.com" in text
    assert "mm.fix.elections.kalshi.com" in text
    assert "fixproxy pin " in text
