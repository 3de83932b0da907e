"""fixproxy, as a real process, short of file descriptors and of disk space.

Each test runs ``fixproxy run`` in front of the in-process simulator
(:mod:`support.resources`) with one session logged on and trading, takes a resource away, and
checks what the engines, the operator's log and the metrics see, that the live session keeps
trading, and that fixproxy recovers once the resource is back.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path
from typing import Final

import pytest
import trio
from support.e2e import E2EMaterial
from support.resources import (
    SECOND,
    SESSION,
    LimitedProxy,
    mounted_tmpfs,
    open_fds,
    open_limited_proxy,
    wait_for_fds,
)

from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.fix.framer import FixFramer
from fixproxy.sim.engine import ScriptedEngine

pytestmark = [pytest.mark.faults]

NOFILE: Final = 64
"""fixproxy's open-file limit in the descriptor test: start-up and one live session take
about 20 (measured), leaving room for some 40 idle connections before accept fails."""
GUARD: Final = 60.0
CPU_WINDOW: Final = 2.0
"""Seconds of shortage over which fixproxy's CPU time is measured."""
CPU_BOUND: Final = 0.3
"""Share of one core fixproxy may use during the shortage: generous, only a busy loop (or a
log line per retry) comes near it."""
FD_TEXT: Final = "out of file descriptors"
DISK_SIZE: Final = "512k"
"""The tmpfs holding state_dir and journal_dir: room for some thousand journal lines."""
JOURNAL_LINE: Final = re.compile(r"\S+Z \d+ \S+ 8=FIXT\.1\.1\|.*\|10=\d{3}\|")
"""A whole journal line: time, connection, direction, and a message up to its CheckSum."""


async def trade(engine: ScriptedEngine, count: int) -> list[bytes]:
    """Send ``count`` orders; return the ClOrdIDs of the ExecutionReports in arrival order,
    first report of each order only."""
    sent = [await engine.new_order() for _ in range(count)]
    seen: list[bytes] = []
    while len(seen) < count:
        report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
        cl_ord_id = report.get(11)
        if cl_ord_id is not None and cl_ord_id not in seen:
            seen.append(cl_ord_id)
    assert seen == sent, "the orders were not answered in the order sent"
    return seen


async def first_message(stream: trio.SocketStream) -> FixMessage | None:
    """The first FIX message fixproxy writes on ``stream``, None if it closes first."""
    framer = FixFramer()
    while True:
        frame = framer.next_message()
        if frame is not None:
            return FixMessage.parse(frame.raw)
        data = await stream.receive_some(65536)
        if not data:
            return None
        framer.receive_data(data)


async def hog(proxy: LimitedProxy) -> tuple[trio.SocketStream, FixMessage | None]:
    """One idle connection: (stream, None) once fixproxy holds it open, or (stream, the
    Logout it answered with) when it had no descriptor left for it."""
    before = open_fds(proxy.pid)
    stream = await proxy.connect()
    answered: list[FixMessage | None] = []
    async with trio.open_nursery() as nursery:
        async def read() -> None:
            answered.append(await first_message(stream))
            nursery.cancel_scope.cancel()

        nursery.start_soon(read)
        await wait_for_fds(proxy.pid, lambda count: count > before)
        nursery.cancel_scope.cancel()
    return stream, (answered[0] if answered else None)


async def fill_descriptors(proxy: LimitedProxy) -> tuple[list[trio.SocketStream], FixMessage]:
    """Open idle connections until fixproxy has no descriptor left; the ones it holds, and
    the Logout the first one past the limit got."""
    held: list[trio.SocketStream] = []
    for _ in range(NOFILE):
        stream, logout = await hog(proxy)
        if logout is not None:
            await trio.aclose_forcefully(stream)
            # Settled: the answered connection closed and the spare taken back.
            await wait_for_fds(proxy.pid, lambda count: count == NOFILE)
            return held, logout
        held.append(stream)
    raise AssertionError(f"fixproxy accepted {len(held)} connections under a limit of {NOFILE}")


def text_of(message: FixMessage | None) -> str:
    assert message is not None, "fixproxy closed without a Logout"
    assert message.msg_type == tags.MT_LOGOUT, message
    return message.get_str(tags.TEXT) or ""


async def test_out_of_file_descriptors(e2e_material: E2EMaterial, tmp_path: Path) -> None:
    async with open_limited_proxy(
            e2e_material, tmp_path, guard=GUARD, nofile=NOFILE,
            session_extra="logon_timeout = 120\n",
            tables="\n[backoff]\nfloor = 0.1\nceiling = 0.2\n") as proxy:
        trader = await proxy.logged_on(reset=True)
        await trade(trader, 5)
        baseline = open_fds(proxy.pid)

        # 1. Fill every descriptor; the connection past the limit gets a Logout at once.
        held, logout = await fill_descriptors(proxy)
        assert FD_TEXT in text_of(logout) and "LimitNOFILE" in text_of(logout)
        # An engine with a Logon gets the same answer, and the live session trades on.
        engine = await proxy.engine()
        await engine.send(tags.MT_LOGON, [(98, 0), (108, 30), (1137, 9)])
        assert FD_TEXT in text_of(await engine.receive())
        await trio.aclose_forcefully(engine.stream)
        await trade(trader, 5)

        # 2. While it lasts: engines keep being answered, with no busy loop and no log flood.
        refused = 2
        answer_times = []
        cpu_before, started = proxy.cpu_seconds(), time.monotonic()
        while time.monotonic() - started < CPU_WINDOW:
            connected = time.monotonic()
            stream = await proxy.connect()
            assert FD_TEXT in text_of(await first_message(stream))
            answer_times.append(time.monotonic() - connected)
            await trio.aclose_forcefully(stream)
            refused += 1
            await trio.sleep(0.1)
        cpu_share = (proxy.cpu_seconds() - cpu_before) / (time.monotonic() - started)
        assert cpu_share < CPU_BOUND, f"fixproxy used {cpu_share:.0%} of a core while short"
        await trade(trader, 5)
        # Prometheus still gets its scrape, answered with the metrics endpoint's spare.
        during = await proxy.sample("fixproxy_engine_connections_total", session=SESSION,
                                    result="fd_limit")
        assert during == refused, (during, refused)
        assert proxy.output.text.count("out of file descriptors (its limit") == 1, \
            proxy.output.text
        assert len(error_lines(proxy.output.text)) == 2, error_lines(proxy.output.text)

        # 3. A Logon that fixproxy cannot open the gateway connection for: one idle
        # connection closes, so that exactly one descriptor is free, and an engine of the
        # second session (its key is free) takes it with its connection: none is left for
        # the gateway's socket.
        await trio.aclose_forcefully(held.pop())
        await wait_for_fds(proxy.pid, lambda count: count == NOFILE - 1)
        engine = await proxy.engine(SECOND)
        upstream = text_of(await engine.logon(reset=True))
        assert FD_TEXT in upstream and "connection to the Kalshi gateway" in upstream, upstream
        await trio.aclose_forcefully(engine.stream)
        await trade(trader, 5)

        # 4. Descriptors free up: accepting resumes and a new engine logs on and trades.
        freed = time.monotonic()
        for stream in held:
            await trio.aclose_forcefully(stream)
        await wait_for_fds(proxy.pid, lambda count: count <= baseline)
        while True:
            engine = await proxy.engine(SECOND)
            answer = await engine.logon(reset=True)
            assert answer is not None
            if answer.msg_type == tags.MT_LOGON:
                break
            assert "rate-limits" in text_of(answer), text_of(answer)  # the held retry
            await trio.aclose_forcefully(engine.stream)
            await trio.sleep(0.1)
        resumed = time.monotonic() - freed
        await trade(engine, 5)
        await trade(trader, 5)
        assert "accepting engine connections again" in proxy.output.text
        assert len(error_lines(proxy.output.text)) == 2, error_lines(proxy.output.text)

        connections = await proxy.sample("fixproxy_engine_connections_total", session=SESSION,
                                         result="fd_limit")
        assert connections == refused
        upstream_count = await proxy.sample("fixproxy_upstream_connects_total",
                                            session=SECOND, result="fd_limit")
        assert upstream_count == 1
        print(f"limit {NOFILE}, baseline {baseline} descriptors, {len(held) + 1} idle "
              f"connections held, {connections:.0f} answered with a Logout, CPU "
              f"{cpu_share:.1%} of a core during the shortage, answered in at most "
              f"{max(answer_times):.3f} s, resumed in {resumed:.2f} s")


def fill(disk: Path) -> int:
    """Append to a filler file on ``disk`` until not one more byte fits; its size."""
    filler = disk / "filler"
    with filler.open("ab", buffering=0) as out:
        for chunk in (65536, 4096, 1):
            while True:
                try:
                    out.write(b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return filler.stat().st_size


async def session(proxy: LimitedProxy, orders: int) -> None:
    """One connection: log on, trade ``orders`` orders (answered in order), log out."""
    engine = await proxy.logged_on(reset=True)
    await trade(engine, orders)
    assert await engine.logout() is not None
    await trio.aclose_forcefully(engine.stream)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line]


async def test_full_filesystem(e2e_material: E2EMaterial, tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", DISK_SIZE) as disk:
        state, journal_dir = disk / "state", disk / "journal"
        async with open_limited_proxy(e2e_material, tmp_path, guard=GUARD, state_dir=state,
                                      journal_dir=journal_dir) as proxy:
            saved = state / f"{SESSION}.json"
            journal = journal_dir / f"{SESSION}.log"
            output = proxy.output
            # A connection with room to spare: the state is saved, the journal written.
            await session(proxy, 5)
            await output.wait_for("session closed")
            good = json.loads(saved.read_text())

            # The disk fills while a session trades: it goes on, every order answered.
            engine = await proxy.logged_on(reset=True)
            await trade(engine, 5)
            filler = fill(disk)
            await trade(engine, 20)
            assert await engine.logout() is not None
            await trio.aclose_forcefully(engine.stream)
            await output.wait_for("cannot write sequence state")
            await output.wait_for(f"journal of session {SESSION} switched off")
            # Nothing written before is damaged, and nothing half-written is left.
            assert json.loads(saved.read_text()) == good
            assert not [path.name for path in state.iterdir() if ".tmp" in path.name]
            lines = journal.read_text().splitlines(keepends=True)
            assert lines and all(line.endswith("\n") and JOURNAL_LINE.fullmatch(line[:-1])
                                 for line in lines), lines[-3:]
            journalled = len(lines)

            # Still full: the next connection trades too, and the log does not repeat itself.
            fill(disk)
            await session(proxy, 5)
            await output.wait_for("cannot write sequence state")
            await output.wait_for("session closed", 3)
            errors = error_lines(output.text)
            assert len(errors) == 2, errors
            assert "No space left on device" in errors[0]
            assert {"journal", "sequence state"} <= {
                word for line in errors for word in ("journal", "sequence state")
                if word in line}
            failed = {store: await proxy.sample("fixproxy_state_write_errors_total",
                                                session=SESSION, store=store)
                      for store in ("journal", "sequences")}
            assert failed["sequences"] == 2, failed
            assert failed["journal"] is not None and failed["journal"] >= 2, failed
            assert json.loads(saved.read_text()) == good
            assert not [path.name for path in state.iterdir() if ".tmp" in path.name]

            # Space freed: the next connection is journalled and its numbers saved again.
            freed = time.monotonic()
            (disk / "filler").unlink()
            await session(proxy, 7)  # two orders more: numbers the saved state never held
            await output.wait_for("sequence state of session res written again")
            await output.wait_for(f"journal of session {SESSION} is written again")
            recovered = time.monotonic() - freed
            assert json.loads(saved.read_text()) != good
            lines = journal.read_text().splitlines(keepends=True)
            assert len(lines) > journalled
            assert all(JOURNAL_LINE.fullmatch(line[:-1]) for line in lines)
            assert len(error_lines(output.text)) == 2
            print(f"tmpfs {DISK_SIZE}, filler {filler} bytes, {journalled} journal lines kept "
                  f"whole, errors counted {failed}, recovered in {recovered:.2f} s")
            assert not [name for name in os.listdir(state) if ".tmp" in name]
