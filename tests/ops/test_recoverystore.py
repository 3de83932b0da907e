"""The recovery state on disk: atomic, owner-only, refused when edited into nonsense."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fixproxy.errors import FixProxyError
from fixproxy.ops.recoverystore import RecoveryStore
from fixproxy.session.recovery import Cursor, ExecId, RecoveryState

API_KEY = "3c9e1f0a-7b2d-4e6f-8a1c-5d0b9e2f4a7c"
STATE = RecoveryState(API_KEY, "KalshiNR", (Cursor(ExecId(0, 5, 6), 1.5e9),
                                            Cursor(ExecId(2, 1, 1), 1.5e9)),
                      (("o-1", 1.5e9),), clean_end=True)


def test_round_trip_owner_only(tmp_path: Path) -> None:
    store = RecoveryStore(tmp_path / "state")
    assert store.load("nr", API_KEY, "KalshiNR") is None
    store.save("nr", STATE)
    assert store.load("nr", API_KEY, "KalshiNR") == STATE
    path = store.path("nr")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not list(path.parent.glob("*.tmp"))


def test_another_key_or_endpoint_starts_afresh(tmp_path: Path) -> None:
    store = RecoveryStore(tmp_path)
    store.save("nr", STATE)
    assert store.load("nr", "11111111-1111-4111-8111-111111111111", "KalshiNR") is None
    assert store.load("nr", API_KEY, "KalshiRT") is None


def test_a_broken_file_says_what_to_do(tmp_path: Path) -> None:
    store = RecoveryStore(tmp_path)
    store.path("nr").write_text('{"api_key": 1}')
    with pytest.raises(FixProxyError, match="remove the file to start afresh"):
        store.load("nr", API_KEY, "KalshiNR")


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)
    with pytest.raises(FixProxyError, match="chmod 700"):
        RecoveryStore(directory).save("nr", STATE)


def test_a_failed_save_keeps_the_saved_state_and_leaves_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RecoveryStore(tmp_path)
    store.save("s", STATE)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(FixProxyError, match="No space left on device"):
        store.save("s", RecoveryState(API_KEY, "KalshiNR", clean_end=False))
    monkeypatch.undo()
    assert store.load("s", API_KEY, "KalshiNR") == STATE
    assert [path.name for path in tmp_path.iterdir()] == ["s.recovery.json"]
