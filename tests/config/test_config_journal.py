"""``[proxy]`` journal keys: defaults, path resolution, ranges, types and the lines of errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixproxy.config.loader import (
    MAX_JOURNAL_BACKUPS,
    MAX_JOURNAL_MAX_BYTES,
    MIN_JOURNAL_MAX_BYTES,
    PROXY_KEYS,
    load_config,
)
from fixproxy.config.model import (
    DEFAULT_JOURNAL_BACKUPS,
    DEFAULT_JOURNAL_MAX_BYTES,
    Config,
    ProxyConfig,
)
from fixproxy.errors import ConfigError

SESSION = """
[[session]]
name = "s0"
listen = "127.0.0.1:9878"
endpoint = "KalshiNR"
api_key = "11111111-1111-4111-8111-111111111111"
private_key = "k0.key"
"""


def _load(directory: Path, proxy_lines: str, *, check_files: bool = True) -> Config:
    (directory / "k0.key").write_bytes(b"")
    path = directory / "fixproxy.toml"
    path.write_text(f"[proxy]\n{proxy_lines}\n{SESSION}", encoding="utf-8")
    return load_config(path, check_files=check_files)


def test_the_journal_is_off_by_default(tmp_path: Path) -> None:
    proxy = _load(tmp_path, "").proxy
    assert proxy.journal_dir is None
    assert proxy.journal_max_bytes == DEFAULT_JOURNAL_MAX_BYTES == 64 * 1024 * 1024
    assert proxy.journal_backups == DEFAULT_JOURNAL_BACKUPS == 5
    built = ProxyConfig()
    assert (built.journal_dir, built.journal_max_bytes, built.journal_backups) == (
        None, DEFAULT_JOURNAL_MAX_BYTES, DEFAULT_JOURNAL_BACKUPS)
    assert {"journal_dir", "journal_max_bytes", "journal_backups"} <= PROXY_KEYS


def test_journal_settings_are_read_and_the_directory_resolved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    cases = [
        ('"journal"', tmp_path / "journal"),  # need not exist yet
        ('"../elsewhere/journal"', tmp_path / ".." / "elsewhere" / "journal"),
        ('"~/fixproxy-journal"', home / "fixproxy-journal"),
        (f'"{tmp_path / "absolute"}"', tmp_path / "absolute"),
    ]
    for value, expected in cases:
        proxy = _load(tmp_path, f"journal_dir = {value}\njournal_max_bytes = 65536\n"
                                "journal_backups = 0").proxy
        assert proxy.journal_dir == expected, value
        assert proxy.journal_max_bytes == MIN_JOURNAL_MAX_BYTES == 65536
        assert proxy.journal_backups == 0
    proxy = _load(tmp_path, f"journal_max_bytes = {MAX_JOURNAL_MAX_BYTES}\n"
                            f"journal_backups = {MAX_JOURNAL_BACKUPS}").proxy
    assert (proxy.journal_max_bytes, proxy.journal_backups) == (
        MAX_JOURNAL_MAX_BYTES, MAX_JOURNAL_BACKUPS)


@pytest.mark.parametrize(("line", "key", "message"), [
    ('journal_dir = ""', "journal_dir", "empty path"),
    ("journal_dir = 3", "journal_dir", "expected a string"),
    ('journal_dir = "k0.key"', "journal_dir", "is not a directory"),
    ("journal_max_bytes = 65535", "journal_max_bytes", "out of range"),
    (f"journal_max_bytes = {MAX_JOURNAL_MAX_BYTES + 1}", "journal_max_bytes", "out of range"),
    ('journal_max_bytes = "64MiB"', "journal_max_bytes", "expected an integer"),
    ("journal_max_bytes = 1048576.0", "journal_max_bytes", "expected an integer"),
    ("journal_max_bytes = true", "journal_max_bytes", "expected an integer"),
    ("journal_backups = -1", "journal_backups", "out of range"),
    (f"journal_backups = {MAX_JOURNAL_BACKUPS + 1}", "journal_backups", "out of range"),
    ("journal_backups = false", "journal_backups", "expected an integer"),
    ('journal_directory = "journal"', "journal_directory", "did you mean 'journal_dir'"),
])
def test_bad_journal_settings_name_the_key_and_line(tmp_path: Path, line: str, key: str,
                                                    message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        _load(tmp_path, f"# the journal\n{line}")
    assert caught.value.key == f"proxy.{key}"
    assert caught.value.line == 3


def test_a_journal_dir_that_is_a_file_passes_without_file_checks(tmp_path: Path) -> None:
    proxy = _load(tmp_path, 'journal_dir = "k0.key"', check_files=False).proxy
    assert proxy.journal_dir == tmp_path / "k0.key"
