"""How the command line reaches a running fixproxy: the pid file (which also guards the
state_dir against a second proxy) and the ``fixproxy status`` client."""

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
from fixproxy.ops.control import PID_FILE_NAME, PidFile, fetch_status, running_pid, status_url

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
