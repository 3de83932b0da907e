"""How the command line reaches a running fixproxy: the pid file (which also guards the
state_dir against a second proxy), reload records and SIGHUP, and the ``fixproxy status``
client. Stand-in processes play the running fixproxy."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
import trio
from support.e2e import LOOPBACK

from fixproxy.errors import FixProxyError
from fixproxy.ops.control import (
    PID_FILE_NAME,
    RESULT_FILE_NAME,
    RESULT_POLL_INTERVAL,
    PidFile,
    ReloadRecord,
    fetch_status,
    read_reload_record,
    request_reload,
    running_pid,
    status_url,
    write_reload_record,
)

GUARD: Final = 10.0
"""Seconds a test with a local HTTP server may take; a healthy one takes milliseconds."""

# --- the pid file ---------------------------------------------------------------------------


def _holder(*marker: str) -> subprocess.Popen[bytes]:
    """A live process with ``marker`` on its command line; it says when it runs (while it
    is being exec'd its command line still reads empty) and ends when its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()", *marker],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"\n"
    return process


def test_the_pid_file_is_private_and_removed_on_release(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pid_file = PidFile.claim(state)
    path = state / PID_FILE_NAME
    assert path.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    pid_file.release()
    assert not path.exists()
    with pytest.raises(FixProxyError, match="does not exist"):
        running_pid(state)


def test_a_live_fixproxy_holding_the_pid_file_blocks_a_second_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / PID_FILE_NAME
    holder = _holder("fixproxy")
    try:
        path.write_text(f"{holder.pid}\n")
        with pytest.raises(FixProxyError, match=f"another fixproxy \\(pid {holder.pid}\\)"):
            PidFile.claim(state)
        assert running_pid(state) == holder.pid
    finally:
        holder.communicate(timeout=10)
    # It has exited: the file is stale and replaced.
    pid_file = PidFile.claim(state)
    assert path.read_text() == f"{os.getpid()}\n"
    pid_file.release()


def test_stale_pid_files_are_replaced_and_others_files_are_not_removed(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / PID_FILE_NAME
    for stale in ("not a pid\n", f"{os.getpid()}\n"):  # garbage; this very process's id
        path.write_text(stale)
        pid_file = PidFile.claim(state)
        assert path.read_text() == f"{os.getpid()}\n"
        pid_file.release()
    # Not a fixproxy: a live process whose command line does not name it.
    other = _holder()
    try:
        path.write_text(f"{other.pid}\n")
        with pytest.raises(FixProxyError, match="not running"):
            running_pid(state)
        pid_file = PidFile.claim(state)
    finally:
        other.communicate(timeout=10)
    path.write_text("12345678\n")  # someone else's by now: release leaves it alone
    pid_file.release()
    assert path.read_text() == "12345678\n"


# --- reload records and SIGHUP -------------------------------------------------------------

ANSWERING: Final = """
import json, os, signal, sys
def answer(*_):
    with open(os.path.join(sys.argv[1], "reload.json"), "w") as out:
        json.dump({"pid": os.getpid(), "serial": 1, "result": "ok", "detail": "reloaded"}, out)
signal.signal(signal.SIGHUP, answer)
print(flush=True)
sys.stdin.read()
"""
"""A stand-in for ``fixproxy run``: answers SIGHUP with its first reload record."""
SILENT: Final = """
import signal, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN)
print(flush=True)
sys.stdin.read()
"""
"""A stand-in for ``fixproxy run`` that never answers SIGHUP."""


def _stand_in(script: str, state: Path) -> subprocess.Popen[bytes]:
    """Run ``script`` as a process that looks like fixproxy, named in ``state``'s pid file."""
    process = subprocess.Popen([sys.executable, "-c", script, str(state), "fixproxy"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"\n"  # its SIGHUP handler is in place
    (state / PID_FILE_NAME).write_text(f"{process.pid}\n")
    return process


class _FakeClock:
    """A monotonic clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_reload_record_is_replaced_whole_and_private(tmp_path: Path) -> None:
    record = ReloadRecord(pid=4321, serial=2, result="rejected", detail="proxy.colour")
    write_reload_record(tmp_path, record)
    path = tmp_path / RESULT_FILE_NAME
    assert read_reload_record(tmp_path) == record
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [child.name for child in tmp_path.iterdir()] == [RESULT_FILE_NAME]  # no .tmp left


@pytest.mark.parametrize("text", [
    None, "", "not json", "[1, 2]", '{"pid": 1}',
    '{"pid": "1", "serial": 1, "result": "ok", "detail": ""}',
    '{"pid": 1, "serial": 1, "result": "ok", "detail": "", "extra": 1}',
])
def test_an_unreadable_reload_record_reads_as_none(tmp_path: Path, text: str | None) -> None:
    if text is not None:
        (tmp_path / RESULT_FILE_NAME).write_text(text)
    assert read_reload_record(tmp_path) is None


def test_a_reload_record_that_cannot_be_written_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_reload_record(tmp_path / "missing", ReloadRecord(1, 1, "ok", ""))
    assert [(r.name, r.levelname) for r in caplog.records] == [("fixproxy.reload", "WARNING")]
    assert "cannot write" in caplog.records[0].getMessage()


def test_request_reload_signals_and_returns_the_new_record(tmp_path: Path) -> None:
    process = _stand_in(ANSWERING, tmp_path)
    try:
        pid, record = request_reload(tmp_path, timeout=GUARD)
    finally:
        process.communicate(timeout=10)
    assert pid == process.pid
    assert record == ReloadRecord(process.pid, 1, "ok", "reloaded")


def test_request_reload_ignores_an_old_record_and_gives_up_at_its_timeout(
        tmp_path: Path) -> None:
    process = _stand_in(SILENT, tmp_path)
    clock = _FakeClock()
    try:
        # The answer to an earlier reload of the same process is not this one's.
        write_reload_record(tmp_path, ReloadRecord(process.pid, 3, "ok", "earlier"))
        pid, record = request_reload(tmp_path, timeout=1.0, clock=clock, sleep=clock.sleep)
        assert process.poll() is None  # SIGHUP reached it and did not end it
    finally:
        process.communicate(timeout=10)
    assert (pid, record) == (process.pid, None)
    assert clock.sleeps == [RESULT_POLL_INTERVAL] * len(clock.sleeps)
    assert clock.now >= 1.0 and clock.now - RESULT_POLL_INTERVAL < 1.0


# --- the client side: `fixproxy status` -------------------------------------------------


async def test_fetch_status_refuses_what_is_not_fixproxy() -> None:
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nhello\r\n")

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    port = int(listeners[0].socket.getsockname()[1])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, answer, listeners)
            with pytest.raises(FixProxyError, match="did not answer with JSON"):
                await trio.to_thread.run_sync(lambda: fetch_status((LOOPBACK, port)))
            nursery.cancel_scope.cancel()


def test_status_url_reaches_wildcards_through_loopback() -> None:
    assert status_url(("127.0.0.1", 9464)) == "http://127.0.0.1:9464/status"
    assert status_url(("0.0.0.0", 9464)) == "http://127.0.0.1:9464/status"
    assert status_url(("::", 9464)) == "http://[::1]:9464/status"
    assert status_url(("::1", 9464)) == "http://[::1]:9464/status"
    assert status_url(("localhost", 1)) == "http://localhost:1/status"
