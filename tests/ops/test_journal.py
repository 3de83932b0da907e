"""The per-session message journal: lines, redaction, framing, buffering, rotation, modes and
failure handling."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.frames import MakeFrame

from fixproxy.config.model import ProxyConfig
from fixproxy.errors import FixProxyError
from fixproxy.fix import tags
from fixproxy.fix.codec import encode
from fixproxy.ops.journal import (
    CUT_SHORT,
    MAX_BUFFERED_BYTES,
    RETRY_INTERVAL,
    SessionJournal,
    open_journal,
    render_message,
)
from fixproxy.ops.statewrites import StateWriteErrors
from fixproxy.session.machine import Direction

EPOCH = 1_700_000_000.25
"""2023-11-14T22:13:20.250Z"""
SIGNATURE = b"c2lnbmF0dXJl\x01with|SOH-and-bar\x0110=123\x01"
"""A RawData (96) value holding SOH, "|" and what looks like a CheckSum field: only its
length (95) says where it ends."""
LINE = re.compile(r"(?P<ts>\S+) (?P<conn>\d+) (?P<direction>\S+) (?P<message>\S.*)")


class FakeClock:
    """Monotonic seconds under the test's control."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _journal(directory: Path, *, max_bytes: int = 1 << 20, backups: int = 3,
             clock: Callable[[], float] | None = None,
             flush_interval: float = 0.0,
             errors: StateWriteErrors | None = None) -> SessionJournal:
    return SessionJournal(directory, "s1", max_bytes=max_bytes, backups=backups,
                          flush_interval=flush_interval, clock=clock or FakeClock(),
                          wall=lambda: EPOCH, errors=errors)


def _order(make_frame: MakeFrame, number: int) -> bytes:
    return make_frame("D", (49, "api-key"), (56, "KalshiNR"), (34, number),
                      (11, f"order-{number:06d}"), (55, "HIGHNY-23DEC31"))


def _logon(make_frame: MakeFrame) -> bytes:
    return make_frame("A", (49, "api-key"), (56, "KalshiNR"), (34, 1),
                      (95, len(SIGNATURE)), (96, SIGNATURE), (554, "hunter2"), (108, 30))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --------------------------------------------------------------------------- lines

def test_each_message_is_one_line_with_time_connection_and_direction(
        tmp_path: Path, make_frame: MakeFrame) -> None:
    journal = _journal(tmp_path)
    first, second, third = (_order(make_frame, n) for n in (1, 2, 3))
    journal.record(Direction.ENGINE_TO_GATEWAY, [first, second], 4)  # relayed in one write
    journal.record(Direction.GATEWAY_TO_ENGINE, [third], 5)
    journal.close()
    lines = _lines(journal.path)
    assert journal.path == tmp_path / "s1.log"
    parsed = [LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [(m["ts"], m["conn"], m["direction"]) for m in parsed if m] == [
        ("2023-11-14T22:13:20.250Z", "4", "engine_to_gateway"),
        ("2023-11-14T22:13:20.250Z", "4", "engine_to_gateway"),
        ("2023-11-14T22:13:20.250Z", "5", "gateway_to_engine"),
    ]
    assert [m["message"] for m in parsed if m] == [
        frame.replace(b"\x01", b"|").decode() for frame in (first, second, third)]


def test_frames_written_together_or_apart_make_the_same_lines(tmp_path: Path,
                                                               make_frame: MakeFrame) -> None:
    journal = _journal(tmp_path)
    order, logon = _order(make_frame, 1), _logon(make_frame)
    journal.record(Direction.ENGINE_TO_GATEWAY, [order, logon], 1)
    journal.record(Direction.ENGINE_TO_GATEWAY, [order], 1)
    journal.record(Direction.ENGINE_TO_GATEWAY, [logon], 1)
    journal.close()
    first, second, third, fourth = _lines(journal.path)
    assert (first, second) == (third, fourth)
    assert "96=<redacted>" in second


def test_open_journal_follows_the_proxy_configuration(tmp_path: Path,
                                                      make_frame: MakeFrame) -> None:
    assert open_journal(ProxyConfig(), "s1") is None
    journal = open_journal(ProxyConfig(journal_dir=tmp_path / "j", journal_max_bytes=200,
                                       journal_backups=1), "s1")
    assert journal is not None
    assert journal.enabled
    for number in range(1, 5):
        journal.record(Direction.GATEWAY_TO_ENGINE, [_order(make_frame, number)], 9)
    journal.close()
    assert sorted(path.name for path in (tmp_path / "j").iterdir()) == ["s1.log", "s1.log.1"]


def test_secrets_are_redacted_even_when_they_hold_soh(tmp_path: Path,
                                                      make_frame: MakeFrame) -> None:
    journal = _journal(tmp_path)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_logon(make_frame)], 1)
    journal.close()
    [line] = _lines(journal.path)
    assert f"|95={len(SIGNATURE)}|96=<redacted>|554=<redacted>|108=30|10=" in line
    assert "c2lnbmF0dXJl" not in line
    assert "SOH-and-bar" not in line
    assert "hunter2" not in line


def test_an_unwalkable_message_is_still_redacted() -> None:
    # RawDataLength says 50 but the value is shorter: the length walk fails.
    broken = b"8=FIXT.1.1\x019=40\x0135=A\x0195=50\x0196=secret-signature\x01554=pw\x0110=000\x01"
    out = render_message(broken)
    assert out == b"8=FIXT.1.1|9=40|35=A|95=50|96=<redacted>|554=<redacted>|10=000|"


def test_line_breaks_inside_values_stay_on_one_line(make_frame: MakeFrame) -> None:
    out = render_message(make_frame("3", (45, 2), (58, "first\nsecond\rthird")))
    assert b"\n" not in out
    assert b"\r" not in out
    assert b"|58=first\\nsecond\\rthird|" in out


def test_a_frame_holding_a_lookalike_checksum_stays_one_line(tmp_path: Path,
                                                             make_frame: MakeFrame) -> None:
    logon, order = _logon(make_frame), _order(make_frame, 2)
    assert b"\x0110=123\x01" in logon[: logon.rindex(b"\x0110=")]  # a lookalike inside 96
    journal = _journal(tmp_path)
    journal.record(Direction.ENGINE_TO_GATEWAY, [logon, order], 1)
    journal.record(Direction.ENGINE_TO_GATEWAY, [], 1)
    journal.close()
    first, second = _lines(journal.path)
    assert "|96=<redacted>|" in first
    assert second.endswith(order.replace(b"\x01", b"|").decode())


_FIELD_VALUE = st.binary(min_size=1, max_size=20).filter(
    lambda value: b"\x01" not in value and b"\n" not in value and b"\r" not in value)


@given(st.lists(st.lists(st.tuples(st.integers(11, 9999).filter(
    lambda tag: tag not in (95, 96) and tag not in tags.SECRET_TAGS),
                                   _FIELD_VALUE), max_size=6),
                min_size=1, max_size=5))
def test_every_frame_recorded_is_one_line_in_order(
        bodies: list[list[tuple[int, bytes]]]) -> None:
    frames = [encode([(35, b"8"), *fields]) for fields in bodies]
    with tempfile.TemporaryDirectory() as directory:
        journal = _journal(Path(directory))
        journal.record(Direction.ENGINE_TO_GATEWAY, frames, 1)
        journal.close()
        lines = journal.path.read_bytes().split(b"\n")[:-1]
    assert [line.split(b" ", 3)[3] for line in lines] == [
        frame.replace(b"\x01", b"|") for frame in frames]


# --------------------------------------------------------------------------- buffering

def test_writes_wait_for_the_flush_interval_then_close(tmp_path: Path,
                                                      make_frame: MakeFrame) -> None:
    clock = FakeClock()
    journal = _journal(tmp_path, clock=clock, flush_interval=0.2)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], 1)
    clock.now = 0.1
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 2)], 1)
    assert journal.path.read_bytes() == b""
    clock.now = 0.2
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 3)], 1)
    assert len(_lines(journal.path)) == 3
    clock.now = 0.3
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 4)], 1)
    assert len(_lines(journal.path)) == 3
    journal.flush()
    assert len(_lines(journal.path)) == 4
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 5)], 1)
    journal.close()
    assert len(_lines(journal.path)) == 5
    assert not journal.enabled
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 6)], 1)  # after close: dropped
    journal.close()
    assert len(_lines(journal.path)) == 5


def test_a_burst_is_written_once_the_buffer_bound_is_reached(tmp_path: Path,
                                                            make_frame: MakeFrame) -> None:
    journal = _journal(tmp_path, clock=FakeClock(), flush_interval=60.0)
    order = _order(make_frame, 1)
    count = 0
    while journal.path.stat().st_size == 0:
        journal.record(Direction.ENGINE_TO_GATEWAY, [order], 1)
        count += 1
        assert count * len(order) <= 2 * MAX_BUFFERED_BYTES
    assert journal.path.stat().st_size >= MAX_BUFFERED_BYTES
    journal.close()


# --------------------------------------------------------------------------- rotation

@pytest.mark.parametrize("backups", [0, 1, 3])
def test_rotation_keeps_max_bytes_per_file_and_n_backups(tmp_path: Path, make_frame: MakeFrame,
                                                         backups: int) -> None:
    journal = _journal(tmp_path, max_bytes=1000, backups=backups)
    total = 60
    for number in range(1, total + 1):
        journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, number)], 1)
    journal.close()
    expected = {"s1.log", *(f"s1.log.{index}" for index in range(1, backups + 1))}
    assert {path.name for path in tmp_path.iterdir()} == expected
    files = [tmp_path / "s1.log", *(tmp_path / f"s1.log.{i}" for i in range(1, backups + 1))]
    for path in files:
        assert 0 < path.stat().st_size <= 1000
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Oldest file first: the orders are consecutive and end with the last one relayed.
    numbers = [int(re.search(r"\|11=order-(\d+)\|", line)[1])  # type: ignore[index]  # present
               for path in reversed(files) for line in _lines(path)]
    assert numbers == list(range(numbers[0], total + 1))
    assert numbers[0] > 1  # the oldest lines were rotated away


def test_a_line_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path,
                                                            make_frame: MakeFrame) -> None:
    journal = _journal(tmp_path, max_bytes=100, backups=2)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], 1)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 2)], 1)
    journal.close()
    assert len(_lines(tmp_path / "s1.log")) == 1
    assert len(_lines(tmp_path / "s1.log.1")) == 1
    assert "order-000002" in _lines(tmp_path / "s1.log")[0]


def test_an_existing_journal_is_appended_to_and_counted(tmp_path: Path,
                                                       make_frame: MakeFrame) -> None:
    head = b"2023-11-14T22:13:20.250Z 1 engine_to_gateway "
    line_length = len(head + render_message(_order(make_frame, 1)) + b"\n")
    first = _journal(tmp_path, max_bytes=line_length * 3, backups=1)
    first.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], 1)
    first.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 2)], 1)
    first.close()
    second = _journal(tmp_path, max_bytes=line_length * 3, backups=1)
    second.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 3)], 2)
    second.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 4)], 2)
    second.close()
    assert len(_lines(tmp_path / "s1.log.1")) == 3
    assert len(_lines(tmp_path / "s1.log")) == 1


def test_a_line_a_kill_cut_short_is_closed_before_the_next_process_appends(
        tmp_path: Path, make_frame: MakeFrame) -> None:
    """A process killed in the middle of a write leaves an incomplete last line; the next
    one closes it with a marker, so its own first line is whole and on a line of its own."""
    first = _journal(tmp_path)
    first.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], 1)
    first.close()
    path = tmp_path / "s1.log"
    whole = path.read_bytes()
    path.write_bytes(whole + whole[:30])  # the kill's: part of a second line
    second = _journal(tmp_path)
    second.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 2)], 2)
    second.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[0] + b"\n" == whole
    assert lines[1] == whole[:30] + CUT_SHORT.rstrip(b"\n")
    assert lines[2].endswith(render_message(_order(make_frame, 2)))
    assert lines[3:] == [b""]
    # A file that ends a line is appended to as it is.
    third = _journal(tmp_path)
    third.close()
    assert path.read_bytes().count(CUT_SHORT) == 1


# --------------------------------------------------------------------------- modes

def test_directory_is_created_0700_and_files_0600(tmp_path: Path, make_frame: MakeFrame) -> None:
    directory = tmp_path / "journal" / "nested"
    old_umask = os.umask(0o022)
    try:
        journal = _journal(directory)
    finally:
        os.umask(old_umask)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], 1)
    journal.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600


def test_an_existing_file_readable_by_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "s1.log"
    path.write_bytes(b"")
    path.chmod(0o644)
    _journal(tmp_path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_journal_path_that_is_not_a_regular_file_is_not_used(
        tmp_path: Path, make_frame: MakeFrame, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "s1.log").symlink_to(os.devnull)
    before = stat.S_IMODE(os.stat(os.devnull).st_mode)
    journal = _journal(tmp_path)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], 1)
    journal.close()
    assert not journal.enabled
    assert stat.S_IMODE(os.stat(os.devnull).st_mode) == before
    [error] = _errors(caplog)
    assert "not a regular file" in error.getMessage()


# --------------------------------------------------------------------------- failures

def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records
            if record.name == "fixproxy.journal" and record.levelno >= logging.ERROR]


def test_an_unusable_directory_switches_the_journal_off_with_one_error(
        tmp_path: Path, make_frame: MakeFrame, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    journal = _journal(blocker / "journal")
    assert not journal.enabled
    for number in range(1, 4):
        journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, number)], 1)
    journal.flush()
    journal.close()
    [error] = _errors(caplog)
    assert "journal of session s1 switched off" in error.getMessage()
    assert str(blocker / "journal") in error.getMessage()


def test_a_failing_write_switches_the_journal_off_with_one_error(
        tmp_path: Path, make_frame: MakeFrame, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    journal = _journal(tmp_path)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], 1)

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    for number in range(2, 5):
        journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, number)], 1)
    journal.close()
    monkeypatch.undo()
    assert not journal.enabled
    [error] = _errors(caplog)
    assert "No space left on device" in error.getMessage()
    assert len(_lines(journal.path)) == 1


def test_a_failing_rotation_switches_the_journal_off_with_one_error(
        tmp_path: Path, make_frame: MakeFrame, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    journal = _journal(tmp_path, max_bytes=1000, backups=2)

    def refuse(source: object, target: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "replace", refuse)
    for number in range(1, 30):
        journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, number)], 1)
    journal.close()
    monkeypatch.undo()
    assert not journal.enabled
    [error] = _errors(caplog)
    assert "Permission denied" in error.getMessage()
    assert (tmp_path / "s1.log").stat().st_size <= 1000


@pytest.mark.parametrize(("session", "max_bytes", "backups"),
                         [("../escape", 100, 1), ("..", 100, 1), ("", 100, 1),
                          ("s1", 0, 1), ("s1", 100, -1)])
def test_impossible_arguments_are_refused(tmp_path: Path, session: str, max_bytes: int,
                                          backups: int) -> None:
    with pytest.raises(FixProxyError):
        SessionJournal(tmp_path, session, max_bytes=max_bytes, backups=backups)
    assert list(tmp_path.iterdir()) == []


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "fixproxy.journal" and record.levelno == logging.WARNING]


def test_a_write_cut_short_by_a_full_disk_leaves_no_partial_line(
        tmp_path: Path, make_frame: MakeFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = _journal(tmp_path)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], 1)
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 10:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 2), _order(make_frame, 3)],
                   1)
    monkeypatch.undo()
    assert not journal.enabled
    raw = journal.path.read_text()
    assert raw.endswith("\n")
    assert all(LINE.fullmatch(line) for line in raw.splitlines())
    assert [line.split("|11=")[1][:12] for line in raw.splitlines()] == ["order-000001"]


def test_the_journal_reopens_after_the_retry_interval_and_says_what_is_missing(
        tmp_path: Path, make_frame: MakeFrame, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    errors = StateWriteErrors()
    journal = _journal(tmp_path, clock=clock, errors=errors)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], 1)

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 2)], 1)
    clock.now += RETRY_INTERVAL  # the disk is still full at the first retry: silent
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 3)], 1)
    monkeypatch.undo()
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 4)], 1)  # not yet due
    assert not journal.enabled
    clock.now += RETRY_INTERVAL
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 5)], 1)
    assert journal.enabled
    journal.close()
    numbers = [int(line.split("|11=order-")[1][:6]) for line in _lines(journal.path)]
    assert numbers == [1, 5]
    [error] = _errors(caplog)
    assert "tries to reopen it every" in error.getMessage()
    [warning] = _warnings(caplog)
    assert "written again" in warning and "3 messages" in warning


def test_journals_of_one_session_share_one_error_per_run_of_failures(
        tmp_path: Path, make_frame: MakeFrame, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    errors = StateWriteErrors()

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    for connection in (1, 2, 3):  # one journal per connection, as the relay opens them
        journal = _journal(tmp_path, errors=errors)
        journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 1)], connection)
        journal.close()
    monkeypatch.undo()
    assert len(_errors(caplog)) == 1
    journal = _journal(tmp_path, errors=errors)
    journal.record(Direction.ENGINE_TO_GATEWAY, [_order(make_frame, 2)], 4)
    journal.close()
    assert len(_warnings(caplog)) == 1
    assert len(_lines(journal.path)) == 1
