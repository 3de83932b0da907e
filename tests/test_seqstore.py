"""The per-session sequence state kept in ``state_dir`` between connections."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from fixproxy.errors import FixProxyError
from fixproxy.seqstore import SequenceStore, SessionSequences

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
