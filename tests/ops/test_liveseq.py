"""The live record of a renumbered session: stores survive the process, a torn store falls
back to the one before, another key's record is never applied, and saves keep it newest."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixproxy.errors import FixProxyError
from fixproxy.ops import liveseq
from fixproxy.ops.liveseq import SIZE, LiveSequences, identity_digest
from fixproxy.ops.seqstore import SequenceStore, SessionSequences

KEY = "5f0c3a2e-8b1d-4c7e-9a6f-2d4b8e1c0f37"
ENDPOINT = "KalshiNR"


def test_stores_are_read_back_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "s.live"
    live = LiveSequences.open(path, KEY, ENDPOINT)
    for number in (1, 2, 7, 8):
        live.store(number)
        assert liveseq.load(path, KEY, ENDPOINT) == number
    live.close()
    assert liveseq.load(path, KEY, ENDPOINT) == 8
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_size == SIZE
    # Opened again, it goes on from the record it holds.
    again = LiveSequences.open(path, KEY, ENDPOINT)
    assert liveseq.load(path, KEY, ENDPOINT) == 8
    again.store(9)
    again.close()
    record = liveseq.read(path)
    assert record is not None and record.engine_next_in == 9 and record.generation == 5


def test_another_keys_record_is_not_applied_and_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.live"
    live = LiveSequences.open(path, KEY, ENDPOINT)
    live.store(40)
    live.close()
    assert liveseq.load(path, "another-key", ENDPOINT) is None
    assert liveseq.load(path, KEY, "KalshiRT") is None
    other = LiveSequences.open(path, "another-key", ENDPOINT)
    other.close()
    assert liveseq.load(path, KEY, ENDPOINT) is None
    assert liveseq.load(path, "another-key", ENDPOINT) is None  # nothing stored yet


def test_missing_empty_and_foreign_files_hold_no_record(tmp_path: Path) -> None:
    assert liveseq.read(tmp_path / "none.live") is None
    (tmp_path / "empty.live").write_bytes(b"")
    assert liveseq.read(tmp_path / "empty.live") is None
    (tmp_path / "text.live").write_bytes(b"x" * SIZE)
    assert liveseq.read(tmp_path / "text.live") is None


@given(cut=st.integers(min_value=0, max_value=24), old=st.integers(1, 2**40),
       step=st.integers(1, 1000))
def test_a_store_torn_at_any_byte_reads_as_the_old_or_the_new_number(
        cut: int, old: int, step: int) -> None:
    """A kill in the middle of a store leaves a prefix of the new slot written: the reader
    gets the number before it, or the new one once the slot is whole, never anything else."""
    before = bytearray(liveseq.MAGIC + identity_digest(KEY, ENDPOINT) + bytes(48))
    liveseq._SLOT.pack_into(before, liveseq._SLOT_OFFSETS[1], 1, old, liveseq._check(1, old))
    after = bytearray(before)
    new = old + step
    liveseq._SLOT.pack_into(after, liveseq._SLOT_OFFSETS[0], 2, new, liveseq._check(2, new))
    torn = bytearray(before)
    start = liveseq._SLOT_OFFSETS[0]
    torn[start:start + cut] = after[start:start + cut]
    record = liveseq.parse(bytes(torn))
    assert record is not None
    assert record.engine_next_in == (new if cut == 24 else old)


def test_a_record_survives_its_process_being_killed(tmp_path: Path) -> None:
    """The mapping is shared: what was stored is in the file after a SIGKILL, with no
    flush, no close and no exit handler run."""
    path = tmp_path / "s.live"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from fixproxy.ops.liveseq import LiveSequences
        live = LiveSequences.open(Path({str(path)!r}), {KEY!r}, {ENDPOINT!r})
        for number in range(1, 1001):
            live.store(number)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    repository = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repository)}
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    assert liveseq.load(path, KEY, ENDPOINT) == 1000


def test_the_store_prefers_the_live_record_and_saves_keep_it_newest(tmp_path: Path) -> None:
    store = SequenceStore(tmp_path / "state")
    assert store.load_engine_next_in("s", KEY, ENDPOINT) is None
    store.save("s", SessionSequences(KEY, ENDPOINT, engine_next_out=5, engine_next_in=10))
    assert store.load_engine_next_in("s", KEY, ENDPOINT) == \
        (10, "the state saved by the last connection")
    live = store.open_live("s", KEY, ENDPOINT)
    live.store(12)  # a connection lived on, and was killed: no save
    assert store.load_engine_next_in("s", KEY, ENDPOINT) == \
        (12, "the state kept while the last connection lived")
    live.close()
    # A later clean end saves a number of its own: the live record follows it first.
    store.save("s", SessionSequences(KEY, ENDPOINT, engine_next_out=9, engine_next_in=3))
    assert store.load_engine_next_in("s", KEY, ENDPOINT) == \
        (3, "the state kept while the last connection lived")
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_a_live_record_that_cannot_be_read_names_the_file(tmp_path: Path) -> None:
    store = SequenceStore(tmp_path / "state")
    store.ensure_directory()
    store.live_path("s").mkdir()  # not a file: reading it fails
    with pytest.raises(FixProxyError, match=r"s\.live.*remove the file"):
        store.load_engine_next_in("s", KEY, ENDPOINT)
