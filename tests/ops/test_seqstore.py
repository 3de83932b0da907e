"""The per-session sequence state kept in ``state_dir`` between connections."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from fixproxy.errors import FixProxyError
from fixproxy.ops.seqstore import DIRECTORY_MODE, FILE_MODE, SequenceStore, SessionSequences

API_KEY: Final = "0b7e6f4c-52a1-4c55-9a43-1a2b3c4d5e6f"
OTHER_KEY: Final = "5d2c1b0a-9f8e-4d7c-8b6a-0f1e2d3c4b5a"
SESSION: Final = "nr-main"
SAVED: Final = SessionSequences(api_key=API_KEY, endpoint="KalshiNR", engine_next_out=42,
                                engine_next_in=17)


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Clear the process umask, so modes seen on disk are exactly the modes asked for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    store = SequenceStore(tmp_path / "state")
    store.save(SESSION, SAVED)
    assert store.load(SESSION, API_KEY, "KalshiNR") == SAVED
    # A new store on the same directory (a restarted fixproxy) reads the same numbers.
    assert SequenceStore(tmp_path / "state").load(SESSION, API_KEY, "KalshiNR") == SAVED


def test_sessions_are_kept_apart(tmp_path: Path) -> None:
    store = SequenceStore(tmp_path)
    other = SessionSequences(api_key=OTHER_KEY, endpoint="KalshiRT", engine_next_out=3,
                             engine_next_in=9)
    store.save(SESSION, SAVED)
    store.save("rt-main", other)
    assert store.load(SESSION, API_KEY, "KalshiNR") == SAVED
    assert store.load("rt-main", OTHER_KEY, "KalshiRT") == other


@pytest.mark.parametrize(("api_key", "endpoint"), [
    (OTHER_KEY, "KalshiNR"),
    (API_KEY, "KalshiRT"),
    (OTHER_KEY, "KalshiDC"),
], ids=["other_key", "other_endpoint", "both_other"])
def test_load_ignores_state_of_another_key_or_endpoint(tmp_path: Path, api_key: str,
                                                       endpoint: str) -> None:
    """A session whose key or endpoint changed starts afresh instead of inheriting numbers."""
    store = SequenceStore(tmp_path)
    store.save(SESSION, SAVED)
    assert store.load(SESSION, api_key, endpoint) is None
    assert store.load(SESSION, API_KEY, "KalshiNR") == SAVED


def test_load_without_a_file_is_none(tmp_path: Path) -> None:
    assert SequenceStore(tmp_path / "never-created").load(SESSION, API_KEY, "KalshiNR") is None
    store = SequenceStore(tmp_path)
    store.save("another-session", SAVED)
    assert store.load(SESSION, API_KEY, "KalshiNR") is None


@pytest.mark.usefixtures("no_umask")
def test_directory_is_private_and_file_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    SequenceStore(directory).save(SESSION, SAVED)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (saved,) = directory.iterdir()
    assert stat.S_ISREG(saved.stat().st_mode)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


@pytest.mark.usefixtures("no_umask")
def test_nested_state_directory_is_created(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "lib" / "fixproxy"
    SequenceStore(directory).save(SESSION, SAVED)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert SequenceStore(directory).load(SESSION, API_KEY, "KalshiNR") == SAVED


def test_save_replaces_the_file_atomically(tmp_path: Path) -> None:
    """The new state arrives by rename: a reader of the old file still sees it whole, the path
    names a different file afterwards, and no temporary file is left behind."""
    store = SequenceStore(tmp_path)
    store.save(SESSION, SAVED)
    (path,) = tmp_path.iterdir()
    newer = SessionSequences(api_key=API_KEY, endpoint="KalshiNR", engine_next_out=43,
                             engine_next_in=18)
    with path.open() as old_reader:
        old_inode = os.fstat(old_reader.fileno()).st_ino
        store.save(SESSION, newer)
        # Written in place, the open file would now hold the new (or half-written) text.
        assert json.loads(old_reader.read())["engine_next_out"] == SAVED.engine_next_out
    assert path.stat().st_ino != old_inode
    assert store.load(SESSION, API_KEY, "KalshiNR") == newer
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_save_into_an_unwritable_place_is_a_fixproxy_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(FixProxyError, match=re.escape(str(blocker))):
        SequenceStore(blocker).save(SESSION, SAVED)


def _valid_json(**changes: object) -> str:
    data: dict[str, object] = {"api_key": API_KEY, "endpoint": "KalshiNR",
                               "engine_next_out": 42, "engine_next_in": 17}
    data.update(changes)
    return json.dumps({key: value for key, value in data.items() if value is not ...})


@pytest.mark.parametrize("content", [
    "",
    "{not json",
    '{"api_key": "' + API_KEY + '", "endpoint": "KalshiNR", "engine_next_out": 4',
    "[1, 2, 3]",
    "null",
    _valid_json(engine_next_in=...),
    _valid_json(extra=1),
], ids=["empty", "not_json", "truncated", "array", "null", "missing_field", "unknown_field"])
def test_corrupt_file_names_itself(tmp_path: Path, content: str) -> None:
    path = tmp_path / f"{SESSION}.json"
    path.write_text(content)
    with pytest.raises(FixProxyError, match=re.escape(str(path))):
        SequenceStore(tmp_path).load(SESSION, API_KEY, "KalshiNR")


def test_file_that_is_not_text_names_itself(tmp_path: Path) -> None:
    path = tmp_path / f"{SESSION}.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FixProxyError, match=re.escape(str(path))):
        SequenceStore(tmp_path).load(SESSION, API_KEY, "KalshiNR")


def test_state_path_that_is_a_directory_names_itself(tmp_path: Path) -> None:
    path = tmp_path / f"{SESSION}.json"
    path.mkdir()
    with pytest.raises(FixProxyError, match=re.escape(str(path))):
        SequenceStore(tmp_path).load(SESSION, API_KEY, "KalshiNR")


@pytest.mark.parametrize("changes", [
    {"engine_next_in": "17"},
    {"engine_next_out": 4.5},
    {"engine_next_in": None},
    {"engine_next_in": True},
    {"engine_next_in": 0},
    {"engine_next_out": -3},
    {"api_key": 7},
    {"endpoint": None},
], ids=["number_as_text", "fraction", "null_number", "boolean", "zero", "negative",
        "key_not_text", "endpoint_null"])
def test_fields_of_the_wrong_kind_are_corrupt(tmp_path: Path, changes: dict[str, object]
                                              ) -> None:
    """Sequence numbers are integers from 1 and the names are text; anything else would reach
    the translation as a value it cannot use, so the file is corrupt and says so."""
    path = tmp_path / f"{SESSION}.json"
    path.write_text(_valid_json(**changes))
    with pytest.raises(FixProxyError, match=re.escape(str(path))):
        SequenceStore(tmp_path).load(SESSION, API_KEY, "KalshiNR")


# --- modes of the directory and the files ----------------------------------------------------


@pytest.fixture
def odd_umask() -> Iterator[None]:
    """A umask that would strip the owner's own write bit from anything created."""
    previous = os.umask(0o277)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("odd_umask")
def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    SequenceStore(directory).save(SESSION, SAVED)
    assert mode_of(directory) == DIRECTORY_MODE == 0o700
    assert mode_of(directory / f"{SESSION}.json") == FILE_MODE == 0o600


@pytest.mark.usefixtures("no_umask")
def test_replacing_a_file_keeps_it_owner_only(tmp_path: Path) -> None:
    """Neither an old state file nor a stale temporary file lends the new file its mode."""
    store = SequenceStore(tmp_path)
    store.save(SESSION, SAVED)
    path = tmp_path / f"{SESSION}.json"
    path.chmod(0o644)
    stale = tmp_path / f"{SESSION}.tmp"
    stale.write_text("left over by a crash")
    stale.chmod(0o666)
    store.save(SESSION, SAVED)
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert store.load(SESSION, API_KEY, "KalshiNR") == SAVED


def test_a_planted_temporary_link_is_not_followed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    (state / f"{SESSION}.tmp").symlink_to(target)
    with pytest.raises(FixProxyError, match=re.escape(str(state / f"{SESSION}.json"))):
        SequenceStore(state).save(SESSION, SAVED)
    assert target.read_text() == "precious"


@pytest.mark.parametrize("mode", [0o770, 0o730, 0o707, 0o777, 0o720, 0o702])
@pytest.mark.parametrize("operation", ["save", "load"])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int,
                                                 operation: str) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    SequenceStore(directory).save(SESSION, SAVED)
    directory.chmod(mode)
    store = SequenceStore(directory)
    with pytest.raises(FixProxyError) as caught:
        if operation == "save":
            store.save(SESSION, SAVED)
        else:
            store.load(SESSION, API_KEY, "KalshiNR")
    message = str(caught.value)
    assert f"run: chmod 700 {directory}" in message
    assert f"{mode:04o}" in message
    assert "writable by group or others" in message
    directory.chmod(0o700)
    assert store.load(SESSION, API_KEY, "KalshiNR") == SAVED


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o705, 0o711, 0o740])
def test_a_directory_others_can_read_is_a_warning_once(tmp_path: Path, mode: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fixproxy.seqstore")
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(mode)
    store = SequenceStore(directory)
    store.save(SESSION, SAVED)
    assert store.load(SESSION, API_KEY, "KalshiNR") == SAVED
    store.save(SESSION, SAVED)
    warnings = [r.getMessage() for r in caplog.records if r.name == "fixproxy.seqstore"]
    assert len(warnings) == 1
    assert f"run: chmod 700 {directory}" in warnings[0]
    assert f"{mode:04o}" in warnings[0]
    assert mode_of(directory) == mode  # fixproxy reports, it does not chmod behind your back
    assert mode_of(directory / f"{SESSION}.json") == 0o600


def test_a_private_directory_logs_nothing(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    store = SequenceStore(directory)
    store.save(SESSION, SAVED)
    assert store.load(SESSION, API_KEY, "KalshiNR") == SAVED
    assert [r for r in caplog.records if r.name == "fixproxy.seqstore"] == []


def test_check_directory_before_creation(tmp_path: Path) -> None:
    store = SequenceStore(tmp_path / "not-yet")
    assert store.check_directory() is False
    store.save(SESSION, SAVED)
    assert store.check_directory() is True


def test_a_failed_save_keeps_the_saved_numbers_and_leaves_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SequenceStore(tmp_path / "state")
    store.save(SESSION, SAVED)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(FixProxyError, match="No space left on device"):
        store.save(SESSION, SessionSequences(API_KEY, "KalshiNR", 99, 98))
    monkeypatch.undo()
    assert store.load(SESSION, API_KEY, "KalshiNR") == SAVED
    assert sorted(path.name for path in (tmp_path / "state").iterdir()) == [f"{SESSION}.json"]
