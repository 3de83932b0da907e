"""``[session.recovery]`` (drop-copy recovery) and two sessions sharing an API key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.config_files import API_KEYS, MARK, Case, expected_line, load, load_one, session, write

from fixproxy.config.diff import keep_restart_only_settings
from fixproxy.config.loader import load_config
from fixproxy.config.model import DEFAULT_RECOVERY_SAVE_INTERVAL, DEFAULT_RECOVERY_TIMEOUT
from fixproxy.errors import ConfigError

DC_KEY = API_KEYS[2]


def recovery(*lines: str, header: str = "") -> str:
    """A [session.recovery] table for the session just written."""
    return "\n".join([f"[session.recovery] {header}".rstrip(), *lines]) + "\n"


GOOD = (f'api_key = "{DC_KEY}"', 'private_key = "k2.key"')


def test_recovery_is_off_by_default(confdir: Path) -> None:
    assert load_one(confdir, session(0)).recovery is None


def test_recovery_defaults_to_the_session_host_and_the_drop_copy_port(confdir: Path) -> None:
    loaded = load_one(confdir, session(0) + recovery(*GOOD))
    assert loaded.recovery is not None
    rec = loaded.recovery
    assert (rec.api_key, rec.private_key) == (DC_KEY, confdir / "k2.key")
    assert (rec.host, rec.port) == (loaded.host, 8229)
    assert rec.tls == loaded.tls
    assert rec.timeout == DEFAULT_RECOVERY_TIMEOUT
    assert rec.save_interval == DEFAULT_RECOVERY_SAVE_INTERVAL
    assert rec.after_clean_logout is True
    assert rec.private_key_passphrase is None


def test_recovery_settings(confdir: Path) -> None:
    rec = load_one(confdir, session(0) + recovery(
        *GOOD, 'host = "dc.example.com"', "port = 18229", "timeout = 5",
        "after_clean_logout = false", "save_interval = 30",
        'private_key_passphrase_env = "DC_PASSPHRASE"')).recovery
    assert rec is not None
    assert (rec.host, rec.port, rec.timeout, rec.save_interval) == \
        ("dc.example.com", 18229, 5.0, 30.0)
    assert rec.tls.server_name == "dc.example.com"  # its own host: its own name
    assert rec.after_clean_logout is False
    assert rec.private_key_passphrase is not None
    assert rec.private_key_passphrase.env == "DC_PASSPHRASE"


RECOVERY_ERRORS = [
    Case("unknown-key", session(0) + recovery(*GOOD, "colour = 1 #<"),
         "session[0].recovery.colour", "unknown key"),
    Case("missing-api-key", session(0) + recovery('private_key = "k2.key"', header=MARK),
         "session[0].recovery.api_key", "missing required key"),
    Case("not-a-uuid", session(0) + recovery('api_key = "dc" #<', 'private_key = "k2.key"'),
         "session[0].recovery.api_key", "not a UUID"),
    Case("the-session-key", session(0) + recovery(f'api_key = "{API_KEYS[0]}" #<',
                                                  'private_key = "k2.key"'),
         "session[0].recovery.api_key", "an API key of its own"),
    Case("absent-private-key", session(0) + recovery(f'api_key = "{DC_KEY}"',
                                                     'private_key = "nope.key" #<'),
         "session[0].recovery.private_key", "nope.key"),
    Case("timeout-too-long", session(0) + recovery(*GOOD, "timeout = 600 #<"),
         "session[0].recovery.timeout", "out of range"),
    Case("not-a-table", session(0, "recovery = true #<"), "session[0].recovery",
         "expected a [session.recovery] table"),
    Case("on-kalshi-rt", session(0, 'endpoint = "KalshiRT"') + recovery(*GOOD, header=MARK),
         "session[0].recovery", "resends by itself"),
]


@pytest.mark.parametrize("case", RECOVERY_ERRORS, ids=[case.id for case in RECOVERY_ERRORS])
def test_recovery_errors_name_key_and_line(confdir: Path, case: Case) -> None:
    path = write(confdir, case.text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == case.key
    assert case.message in info.value.detail
    assert info.value.line == expected_line(case.text)


def test_two_sessions_may_share_an_api_key_with_a_warning(
        confdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A primary and a standby engine on two listeners: loaded, with a warning naming both."""
    with caplog.at_level(logging.WARNING, logger="fixproxy.config"):
        config = load(confdir, session(0) + session(1, f'api_key = "{API_KEYS[0].upper()}"'))
    assert [one.name for one in config.sessions] == ["s0", "s1"]
    (warning,) = config.warnings
    assert "(s1)" in warning and "(s0)" in warning
    assert "one FIX connection per API key" in warning
    assert warning in caplog.text


def test_a_drop_copy_key_shared_with_a_session_warns(confdir: Path) -> None:
    (later,) = load(confdir, session(0) + recovery(*GOOD) + session(2)).warnings
    assert "uses the API key of [[session]] number 1 (s0)'s recovery" in later
    (earlier,) = load(confdir, session(2) + session(0) + recovery(*GOOD)).warnings
    assert "recovery fails while that session is connected" in earlier


def test_a_reload_that_changes_only_warnings_needs_no_restart(confdir: Path) -> None:
    alone = load(confdir, session(0) + session(1))
    shared = load(confdir, session(0) + session(1, f'api_key = "{API_KEYS[0]}"'))
    served, notes = keep_restart_only_settings(alone, shared)
    assert notes == ()
    assert served.warnings == shared.warnings
