"""A bounded soak of fixproxy with faults on a schedule: ``python3 -m bench.soak``.

Theory of operation
-------------------
The benchmark measures minutes of clean traffic; a sidecar in production lives for weeks
through gateway disconnects (Kalshi drops every session in its weekly maintenance window, and
networks drop TCP connections whenever they like) and engine restarts. The soak runs that life
in miniature: orders at a fixed rate for a fixed time, while the gateway drops the connection
on one schedule and the engine logs out and on again on another, and then says whether any
accepted order went missing and whether fixproxy's memory stayed flat.

Three parties, two processes:

* **fixproxy** runs as its own process, ``python3 -m fixproxy.cli run`` with a generated TOML
  file (pinned TLS to the gateway, one KalshiNR session), exactly as an operator runs it, so
  its RSS and CPU time are read from ``/proc/<pid>`` and are its own.
* **The gateway** is the strict simulator (:class:`fixproxy.sim.gateway.SimGateway`, which
  verifies every Logon signature and every inbound MsgSeqNum), in this process, with throwaway
  certificates. This driver accepts the TCP connections and does the TLS handshake itself and
  then hands each connection to :meth:`SimGateway.handle_stream` inside a cancel scope of its
  own: cancelling that scope is a drop (no Logout, the socket closed under the session), which
  the simulator's public interface offers no other way to do on a clock. The simulator's
  event records are drained as they arrive and feed the gateway's half of the accounting.
* **The engine** is a trio task here: plain TCP to fixproxy, an unsigned Logon with 141=Y so
  each connection starts at MsgSeqNum 1, NewOrderSingles (encoded by
  :func:`fixproxy.fix.codec.encode`) due at ``start + i / rate``, and every inbound frame
  checked by fixproxy's strict framer. Orders due while the engine is reconnecting are not sent
  in a burst afterwards: the schedule restarts from the new Logon, and the achieved rate is
  reported.

How each order is classified (confirmed, in doubt, lost) is explained in
:mod:`bench.soak_support`. The run exits 1 if any order is lost, if fixproxy closed a
connection when no drop was scheduled, if nothing was confirmed, or if a process failed; RSS
growth above 10 % between the end of the warm-up and the end is flagged in the report but does
not change the exit status, as a short run's allocator noise would make it flaky.

The alternative rejected for the gateway was ``fixproxy sim`` as a third process: it has no
way to drop a connection on a schedule, and its records would have to cross a pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import ssl
import stat
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import trio

import fixproxy
from bench import BenchError, wire
from bench.middle import SERVER_NAME, Account, Material, start_fixproxy
from bench.proc import CLOCK_TICKS, Child, cpu_ticks, memory_kib
from bench.soak_support import (
    END_BROKEN,
    END_DROPPED,
    END_FINAL,
    END_LOGOUT,
    END_LOGOUT_UNANSWERED,
    END_STALLED,
    LatencyHistogram,
    Ledger,
    RssTrack,
    Tally,
    field,
    format_report,
)
from bench.wire import ENDPOINT, HEART_BT_INT, SYMBOL
from fixproxy.errors import FixProxyError, FramingError
from fixproxy.fix import tags
from fixproxy.fix.codec import SendingTimeClock, encode
from fixproxy.fix.framer import FixFramer, Frame
from fixproxy.signing import generate_key_pair, load_public_key
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.gateway import SimConfig, SimGateway

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
LOCALHOST: Final = "127.0.0.1"
RECEIVE_SIZE: Final = 65536
EXIT_FAILED: Final = 1
EXIT_INTERRUPTED: Final = 130

LOGON_TIMEOUT_S: Final = 15.0
"""Longest wait for the answer to one Logon: TLS, a signature and its check on a busy box."""
LOGON_RETRY_S: Final = 0.5
"""Pause before the next Logon after one was refused (fixproxy may still hold the key)."""
LOGON_GIVE_UP_S: Final = 90.0
"""Give up after this long without a Logon; fixproxy's Logon backoff caps at 60 s."""
REPORT_TIMEOUT_S: Final = 10.0
"""An order unanswered this long on a live connection is lost: the round trip is ~1 ms."""
LOGOUT_TIMEOUT_S: Final = 10.0
"""The engine's Logout must be answered within this."""
FINISH_TIMEOUT_S: Final = 3.0
"""After a session ends, how long to read until fixproxy closes, so it has released the key."""
WATCHDOG_S: Final = 1.0
HANDSHAKE_TIMEOUT_S: Final = 10.0
COLLECT_S: Final = 0.05
"""How often the simulator's event records are drained; its buffer holds 100,000 events,
about 50 s at 1,000 orders/s, so this is far from the limit."""
RSS_SAMPLE_S: Final = 1.0
RSS_KEEP_S: Final = 5.0
"""One RSS sample per this many seconds goes into the JSON."""
PROGRESS_S: Final = 30.0
MAX_BURST_S: Final = 1.0
"""Orders overdue by more than this much of the schedule are skipped, not sent in a burst."""
FIXPROXY_TEXT: Final = b"fixproxy:"
"""fixproxy's own Logouts to the engine carry Text (58) starting with this."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What one soak does."""

    duration: float
    rate: float
    drop_every: float
    """Seconds between gateway drops; 0: never."""
    reconnect_every: float
    """Seconds between scheduled engine Logout/Logon cycles; 0: never."""
    warmup: float
    """Seconds after the first Logon before the starting RSS is read."""


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _not_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path | None]:
    """Settings from the command line, and the JSON path if one was given."""
    parser = argparse.ArgumentParser(
        prog="python3 -m bench.soak",
        description="Soak fixproxy: orders at a fixed rate through a real fixproxy process to "
                    "the strict simulated gateway, with gateway drops and engine reconnects "
                    "on a schedule. Reports messages sent and received, orders confirmed, in "
                    "doubt and lost (must be 0), reconnects, fixproxy's RSS and CPU. Exits 1 "
                    "if an order was lost.")
    parser.add_argument("--duration", type=_positive, default=600.0,
                        help="seconds of load [600]")
    parser.add_argument("--rate", type=_positive, default=1000.0,
                        help="NewOrderSingles per second [1000]")
    parser.add_argument("--drop-every", type=_not_negative, default=60.0,
                        help="seconds between gateway drops of the connection; 0: none [60]")
    parser.add_argument("--reconnect-every", type=_not_negative, default=45.0,
                        help="seconds between engine Logout/Logon cycles; 0: none [45]")
    parser.add_argument("--warmup", type=_not_negative,
                        help="seconds before the starting RSS is read [the first drop and "
                             "reconnect plus 5 s, at most a quarter of the duration]")
    parser.add_argument("--json", type=Path, dest="json_path",
                        help="where to write the JSON result "
                             "[bench/results/soak-<timestamp>.json]")
    args = parser.parse_args(argv)
    warmup = args.warmup
    if warmup is None:
        warmup = min(args.duration / 4, max(args.drop_every, args.reconnect_every) + 5.0)
    return Settings(duration=args.duration, rate=args.rate, drop_every=args.drop_every,
                    reconnect_every=args.reconnect_every, warmup=warmup), args.json_path


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----- the gateway ------------------------------------------------------------------------


class _Gateway:
    """The simulator behind a listener of our own, so its connections can be dropped."""

    def __init__(self, sim: SimGateway, context: ssl.SSLContext, ledger: Ledger) -> None:
        self.sim = sim
        self.context = context
        self.ledger = ledger
        self._live: set[trio.CancelScope] = set()

    async def serve(self, listener: trio.SocketListener) -> None:
        """Accept connections until cancelled."""
        await trio.serve_listeners(self._connection, [listener])

    async def _connection(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.context, server_side=True, https_compatible=True)
        handshaken = False
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            try:
                await stream.do_handshake()
                handshaken = True
            except trio.BrokenResourceError:
                pass
        if not handshaken:
            await trio.aclose_forcefully(tcp)
            return
        with trio.CancelScope() as scope:
            self._live.add(scope)
            try:
                await self.sim.handle_stream(stream, ENDPOINT)
            finally:
                self._live.discard(scope)

    def drop_all(self) -> int:
        """Drop every live connection at once, as a failing gateway would; how many."""
        for scope in self._live:
            scope.cancel()
        return len(self._live)

    async def collect(self) -> None:
        """Drain the simulator's records into the ledger until cancelled."""
        while True:
            self.collect_now()
            await trio.sleep(COLLECT_S)

    def collect_now(self) -> None:
        """Drain the simulator's records into the ledger once."""
        events = self.sim.events
        ledger = self.ledger
        while events:
            event = events.popleft()
            if event.direction == "in" and event.msg_type == tags.MT_NEW_ORDER_SINGLE:
                ledger.gateway_order(field(event.raw, b"\x0111="))
            elif event.direction == "out" and event.msg_type == tags.MT_EXECUTION_REPORT:
                ledger.gateway_report(field(event.raw, b"\x0111="))

    def check_records(self) -> None:
        """Every order and report the simulator counted went through the ledger."""
        self.collect_now()
        counted = (self.sim.message_count(tags.MT_NEW_ORDER_SINGLE),
                   self.sim.message_count(tags.MT_EXECUTION_REPORT, "out"))
        seen = (self.ledger.gateway_orders, self.ledger.gateway_reports)
        if counted != seen:
            self.ledger.problem(f"the simulator counted {counted[0]} orders and {counted[1]} "
                                f"reports but its records held {seen[0]} and {seen[1]}")


# ----- the engine -------------------------------------------------------------------------


class _Live:
    """One logged-on engine connection."""

    def __init__(self, stream: trio.SocketStream, framer: FixFramer, ledger: Ledger,
                 now: float) -> None:
        self.stream = stream
        self.framer = framer
        self.record = ledger.open(now)
        self.seq = 1
        """MsgSeqNum of the last message sent; the Logon was 1."""
        self.next_in = 2
        """MsgSeqNum expected next from fixproxy; its Logon answer was 1."""
        self.pending: deque[float] = deque()
        """Send times of the orders not yet answered, oldest first."""
        self.lock = trio.Lock()
        self.last_sent = now
        self.logout_kind = ""
        self.logout_sent_at: float | None = None
        self.nursery: trio.Nursery | None = None


class _Engine:
    """The load engine: logs on, sends orders at a fixed rate, reconnects, keeps count."""

    def __init__(self, port: int, api_key: str, rate: float, ledger: Ledger) -> None:
        self.port = port
        self.api_key = api_key
        self.key_b = api_key.encode()
        self.rate = rate
        self.ledger = ledger
        self.latency = LatencyHistogram()
        self.stamp = SendingTimeClock()
        self.sent: Counter[bytes] = Counter()
        self.received: Counter[bytes] = Counter()
        self.live: _Live | None = None
        self.logon_failures = 0
        self.last_logon_failure = ""
        self.skipped = 0
        """Orders the schedule skipped because the engine fell more than a second behind."""
        self._reconnect = False
        self._wake = trio.Event()

    def request_reconnect(self) -> None:
        """Log out and on again at the next chance."""
        self._reconnect = True
        self._wake.set()

    # ----- Logon ------------------------------------------------------------------------

    async def log_on(self) -> _Live:
        """A logged-on connection, retrying refused Logons.

        Raises:
            BenchError: no Logon succeeded for :data:`LOGON_GIVE_UP_S`.
        """
        give_up = trio.current_time() + LOGON_GIVE_UP_S
        while True:
            live = await self._try_log_on()
            if live is not None:
                return live
            self.logon_failures += 1
            if trio.current_time() > give_up:
                raise BenchError(f"no Logon through fixproxy for {LOGON_GIVE_UP_S:g} s; the "
                                 f"last attempt: {self.last_logon_failure}")
            await trio.sleep(LOGON_RETRY_S)

    async def _try_log_on(self) -> _Live | None:
        self.last_logon_failure = ""
        try:
            stream = await trio.open_tcp_stream(LOCALHOST, self.port)
        except OSError as exc:
            self.last_logon_failure = f"cannot connect to fixproxy: {exc}"
            return None
        framer = FixFramer()
        frame: Frame | None = None
        try:
            with trio.move_on_after(LOGON_TIMEOUT_S):
                await stream.send_all(wire.logon(self.api_key, self.stamp(), None))
                self.sent[tags.MT_LOGON] += 1
                while frame is None and not framer.at_eof:
                    frame = framer.next_message()
                    if frame is None:
                        framer.receive_data(await stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, FramingError) as exc:
            self.last_logon_failure = f"the connection failed: {exc}"
            frame = None
        if frame is not None:
            self.received[frame.msg_type] += 1
        if frame is None or frame.msg_type != tags.MT_LOGON:
            if frame is not None:
                text = field(frame.raw, b"\x0158=") or b""
                self.last_logon_failure = (f"answered 35={frame.msg_type.decode()}: "
                                           f"{text.decode('ascii', 'replace')}")
            elif not self.last_logon_failure:
                self.last_logon_failure = "no answer to the Logon"
            await _finish(stream)
            return None
        return _Live(stream, framer, self.ledger, trio.current_time())

    # ----- one session ------------------------------------------------------------------

    async def session(self, live: _Live, stop_at: float) -> str:
        """Trade on ``live`` until it ends; how it ended."""
        self.live = live
        try:
            async with trio.open_nursery() as nursery:
                live.nursery = nursery
                nursery.start_soon(self._reader, live)
                nursery.start_soon(self._writer, live, stop_at)
                nursery.start_soon(self._watchdog, live)
        finally:
            self.live = None
            with trio.CancelScope(shield=True):
                await _finish(live.stream)
        record = live.record
        self.ledger.close(record, record.end, record.text, trio.current_time())
        return record.end

    def _end(self, live: _Live, end: str, text: str = "") -> None:
        record = live.record
        if not record.end:
            record.end = end
            record.text = text
        if live.nursery is not None:
            live.nursery.cancel_scope.cancel()

    async def _send(self, live: _Live, data: bytes, msg_type: bytes, count: int = 1) -> bool:
        # Counted as written before the write, like the orders in the ledger: a write that the
        # close cuts short may still have delivered them.
        self.sent[msg_type] += count
        try:
            async with live.lock:
                await live.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False  # the reader sees the close and ends the session
        live.last_sent = trio.current_time()
        return True

    def _order(self, live: _Live, now: float) -> bytes:
        live.seq += 1
        cl_ord_id = self.ledger.next_order(live.record)
        live.pending.append(now)
        stamp = self.stamp()
        return encode([
            (tags.MSG_TYPE, tags.MT_NEW_ORDER_SINGLE), (tags.SENDER_COMP_ID, self.key_b),
            (tags.TARGET_COMP_ID, ENDPOINT), (tags.MSG_SEQ_NUM, live.seq),
            (tags.SENDING_TIME, stamp), (11, cl_ord_id), (38, 10), (40, 2), (44, 50),
            (54, 1), (55, SYMBOL), (59, 1), (60, stamp)])

    async def _writer(self, live: _Live, stop_at: float) -> None:
        interval = 1.0 / self.rate
        max_burst = max(1, int(self.rate * MAX_BURST_S))
        next_due = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= stop_at or self._reconnect:
                # A request made while the engine was logging on is served by this session.
                self._reconnect = False
                await self._log_out(live, END_FINAL if now >= stop_at else END_LOGOUT)
                return
            if now >= next_due:
                due = int((now - next_due) / interval) + 1
                if due > max_burst:
                    self.skipped += due - max_burst
                    due = max_burst
                    next_due = now + interval
                else:
                    next_due += due * interval
                batch = b"".join([self._order(live, now) for _ in range(due)])
                if not await self._send(live, batch, tags.MT_NEW_ORDER_SINGLE, due):
                    await trio.sleep_forever()
                continue
            if now - live.last_sent >= HEART_BT_INT:
                live.seq += 1
                beat = encode([(tags.MSG_TYPE, tags.MT_HEARTBEAT),
                               (tags.SENDER_COMP_ID, self.key_b), (tags.TARGET_COMP_ID, ENDPOINT),
                               (tags.MSG_SEQ_NUM, live.seq), (tags.SENDING_TIME, self.stamp())])
                await self._send(live, beat, tags.MT_HEARTBEAT)
            with trio.move_on_at(min(next_due, stop_at, live.last_sent + HEART_BT_INT)):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = trio.Event()

    async def _log_out(self, live: _Live, kind: str) -> None:
        live.logout_kind = kind
        live.logout_sent_at = trio.current_time()
        live.seq += 1
        await self._send(live, wire.logout(self.api_key, ENDPOINT, live.seq, self.stamp()),
                         tags.MT_LOGOUT)
        await trio.sleep_forever()  # the reader ends the session on the answer

    async def _reader(self, live: _Live) -> None:
        framer = live.framer
        while not live.record.end:
            try:
                frame = framer.next_message()
            except FramingError as exc:
                self.ledger.problem(f"connection {live.record.number}: invalid FIX from "
                                    f"fixproxy: {exc}")
                self._end(live, END_BROKEN, str(exc))
                return
            if frame is not None:
                reply = self._on_frame(live, frame)
                if reply is not None:
                    await self._send(live, reply, tags.MT_HEARTBEAT)
                continue
            if framer.at_eof:
                self._end(live, END_DROPPED, "fixproxy closed the connection without a Logout")
                return
            try:
                data = await live.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            framer.receive_data(data)

    def _on_frame(self, live: _Live, frame: Frame) -> bytes | None:
        """Check and count one inbound message; the answer to send, if any."""
        raw, msg_type = frame
        record = live.record
        self.received[msg_type] += 1
        seq_text = field(raw, b"\x0134=")
        seq = int(seq_text) if seq_text is not None and seq_text.isdigit() else None
        if seq != live.next_in:
            self.ledger.sequence_gap(record, live.next_in, seq)
        live.next_in = (seq if seq is not None else live.next_in) + 1
        if msg_type == tags.MT_EXECUTION_REPORT:
            settled = self.ledger.report(record, field(raw, b"\x0111="))
            if settled:
                for _ in range(settled - 1):
                    live.pending.popleft()
                self.latency.add(trio.current_time() - live.pending.popleft())
        elif msg_type == tags.MT_TEST_REQUEST:
            live.seq += 1
            return wire.heartbeat(self.api_key, ENDPOINT, live.seq, self.stamp(),
                                  field(raw, b"\x01112=") or b"")
        elif msg_type == tags.MT_LOGOUT:
            text = field(raw, b"\x0158=") or b""
            shown = text.decode("ascii", "replace")
            if live.logout_sent_at is not None and not text.startswith(FIXPROXY_TEXT):
                self._end(live, live.logout_kind, shown)
            else:
                self._end(live, END_DROPPED, shown)
        elif msg_type != tags.MT_HEARTBEAT:
            about = (field(raw, b"\x0158=") or b"").decode("ascii", "replace")
            self.ledger.problem(f"connection {record.number}: unexpected "
                                f"35={msg_type.decode('ascii', 'replace')}: {about}")
        return None

    async def _watchdog(self, live: _Live) -> None:
        while True:
            await trio.sleep(WATCHDOG_S)
            now = trio.current_time()
            if live.pending and now - live.pending[0] > REPORT_TIMEOUT_S:
                self.ledger.problem(f"connection {live.record.number}: an order waited more "
                                    f"than {REPORT_TIMEOUT_S:g} s for its report")
                self._end(live, END_STALLED)
            elif live.logout_sent_at is not None and \
                    now - live.logout_sent_at > LOGOUT_TIMEOUT_S:
                self.ledger.problem(f"connection {live.record.number}: the Logout was not "
                                    f"answered within {LOGOUT_TIMEOUT_S:g} s")
                self._end(live, END_LOGOUT_UNANSWERED)


async def _finish(stream: trio.SocketStream) -> None:
    """Half-close, read until fixproxy closes (briefly), close."""
    with trio.move_on_after(FINISH_TIMEOUT_S):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                 trio.BusyResourceError):
            await stream.send_eof()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await stream.receive_some(RECEIVE_SIZE):
                pass
    await trio.aclose_forcefully(stream)


# ----- the run ----------------------------------------------------------------------------


class _Soak:
    """One soak: the gateway, the engine, the fault schedules and the measurements."""

    def __init__(self, settings: Settings, material: Material, context: ssl.SSLContext,
                 listener: socket.socket, fixproxy_child: Child, fixproxy_port: int) -> None:
        self.settings = settings
        self.child = fixproxy_child
        self.listener = listener
        self.ledger = Ledger()
        account = material.accounts[0]
        sim = SimGateway(SimConfig(keys={account.api_key: load_public_key(account.public_key)},
                                   ports={ENDPOINT: 0}), context)
        self.gateway = _Gateway(sim, context, self.ledger)
        self.engine = _Engine(fixproxy_port, account.api_key, settings.rate, self.ledger)
        self.rss = RssTrack(settings.warmup, RSS_KEEP_S)
        self.fatal: FixProxyError | None = None
        self.drops_scheduled = 0
        self.drops_done = 0
        self.reconnects_requested = 0
        self.started = 0.0
        self.elapsed = 0.0
        self.cpu_ticks = 0
        """fixproxy's CPU from the first Logon to the end of the final Logout."""
        self.cpu_ticks_total = 0
        """fixproxy's CPU since it started, its start-up included."""
        self.driver_cpu = 0.0
        self.rss_after_close: int | None = None
        self._nursery: trio.Nursery | None = None

    def _fail(self, error: FixProxyError) -> None:
        if self.fatal is None:
            self.fatal = error
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def run(self) -> None:
        """Run the soak; the figures are left in the attributes.

        Raises:
            FixProxyError: the soak could not run to its end.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.listener))
            nursery.start_soon(self.gateway.serve, listener)
            nursery.start_soon(self.gateway.collect)
            nursery.start_soon(self._signals)
            nursery.start_soon(self._drive)
        if self.fatal is not None:
            raise self.fatal

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as received:
            async for signum in received:
                self._fail(BenchError(f"stopped by signal {signum}"))

    async def _drive(self) -> None:
        engine = self.engine
        try:
            live = await engine.log_on()
            self.started = trio.current_time()
            stop_at = self.started + self.settings.duration
            ticks = cpu_ticks(self.child.pid)
            driver_cpu = time.process_time()
            async with trio.open_nursery() as side:
                side.start_soon(self._sample_rss, stop_at)
                side.start_soon(self._report_progress)
                side.start_soon(self._every, self.settings.drop_every, stop_at, self._drop)
                side.start_soon(self._every, self.settings.reconnect_every, stop_at,
                                self._reconnect)
                while await engine.session(live, stop_at) != END_FINAL:
                    live = await engine.log_on()
                side.cancel_scope.cancel()
            self.elapsed = trio.current_time() - self.started
            self.cpu_ticks_total = cpu_ticks(self.child.pid)
            self.cpu_ticks = self.cpu_ticks_total - ticks
            self.driver_cpu = time.process_time() - driver_cpu
            self._check_alive()
            self.rss_after_close = memory_kib(self.child.pid)["VmRSS"]
        except* BenchError as group:
            self._fail(self._with_log(_first(group)))
        self.gateway.check_records()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _with_log(self, exc: BenchError) -> BenchError:
        if self.child.process.poll() is not None:
            return self.child.failure(f"exited during the soak ({exc})")
        return exc

    def _check_alive(self) -> None:
        if self.child.process.poll() is not None:
            raise self.child.failure("exited during the soak")

    async def _sample_rss(self, stop_at: float) -> None:
        # Up to the final Logout: "end" is read under load, like "start".
        while trio.current_time() < stop_at:
            self._check_alive()
            self.rss.add(trio.current_time() - self.started,
                         memory_kib(self.child.pid)["VmRSS"])
            await trio.sleep(RSS_SAMPLE_S)

    async def _report_progress(self) -> None:
        every = min(PROGRESS_S, max(1.0, self.settings.duration / 4))
        while True:
            await trio.sleep(every)
            sent, confirmed = self.ledger.totals()
            _progress(f"soak: {trio.current_time() - self.started:6.0f} s  sent {sent:,}  "
                      f"confirmed {confirmed:,}  connections {len(self.ledger.connections)}  "
                      f"drops {self.drops_done}  fixproxy RSS "
                      f"{memory_kib(self.child.pid)['VmRSS'] / 1024:.1f} MiB")

    async def _every(self, seconds: float, stop_at: float, action: Callable[[], None]) -> None:
        """Run ``action`` every ``seconds`` from the start until ``stop_at``; 0: never."""
        if seconds <= 0:
            return
        number = 1
        while (when := self.started + number * seconds) < stop_at:
            await trio.sleep_until(when)
            number += 1
            action()

    def _drop(self) -> None:
        self.drops_scheduled += 1
        live = self.engine.live
        dropped = self.gateway.drop_all()
        self.drops_done += dropped
        if dropped and live is not None:
            live.record.gateway_dropped = True

    def _reconnect(self) -> None:
        self.reconnects_requested += 1
        self.engine.request_reconnect()

    def result(self) -> dict[str, Any]:
        """The figures of a completed run, as the JSON report."""
        tally: Tally = self.ledger.tally()
        engine = self.engine
        records = list(self.ledger.connections.values())
        after = Counter(record.end for record in records[:-1])
        reconnects = {
            "total": max(0, len(records) - 1),
            "after_drop": after[END_DROPPED],
            "scheduled": after[END_LOGOUT],
            "other": sum(count for end, count in after.items()
                         if end not in (END_DROPPED, END_LOGOUT)),
            "requested": self.reconnects_requested,
            "logon_failures": engine.logon_failures,
        }
        cpu_s = self.cpu_ticks / CLOCK_TICKS
        sent_messages = sum(engine.sent.values())
        received_messages = sum(engine.received.values())
        relayed = sent_messages + received_messages
        rss = self.rss.as_json()
        rss["after_close"] = self.rss_after_close
        failures = []
        if tally.lost:
            failures.append(f"{tally.lost} orders lost")
        if tally.unexpected_disconnects:
            failures.append(f"{tally.unexpected_disconnects} connections closed with no drop "
                            f"scheduled")
        if not tally.confirmed:
            failures.append("no order confirmed")
        if self.ledger.problem_count and not failures:
            failures.append(f"{self.ledger.problem_count} problems")
        return {
            "schema": 1,
            "kind": "soak",
            "settings": asdict(self.settings),
            "duration_s": round(self.elapsed, 3),
            "orders": {**tally.as_json(),
                       "orders_per_s": tally.sent / self.elapsed if self.elapsed else 0.0,
                       "skipped_behind_schedule": engine.skipped},
            "messages": {"sent": sent_messages, "received": received_messages,
                         "sent_by_type": _by_type(engine.sent),
                         "received_by_type": _by_type(engine.received)},
            "reconnects": reconnects,
            "drops": {"scheduled": self.drops_scheduled,
                      "connections_dropped": self.drops_done},
            "latency_ms": engine.latency.as_json(),
            "rss_kib": rss,
            "cpu": {"fixproxy_s": cpu_s,
                    "fixproxy_total_s": self.cpu_ticks_total / CLOCK_TICKS,
                    "fixproxy_pct_of_core": 100.0 * cpu_s / self.elapsed if self.elapsed
                    else 0.0,
                    "fixproxy_us_per_message": 1e6 * cpu_s / relayed if relayed else 0.0,
                    "clock_tick_s": 1 / CLOCK_TICKS,
                    "driver_s": round(self.driver_cpu, 3)},
            "gateway": {"orders_received": self.ledger.gateway_orders,
                        "reports_sent": self.ledger.gateway_reports,
                        "logons": self.gateway.sim.message_count(tags.MT_LOGON, "out")},
            "connections": [record.as_json(self.started) for record in records],
            "problem_count": self.ledger.problem_count,
            "problems": self.ledger.problems,
            "failures": failures,
            "ok": not failures,
        }


def _first(group: BaseExceptionGroup[BenchError]) -> BenchError:
    """The first error in ``group``, however deeply nested."""
    first = group.exceptions[0]
    return first if isinstance(first, BenchError) else _first(first)


def _by_type(counts: Counter[bytes]) -> dict[str, int]:
    return {msg_type.decode("ascii", "replace"): count
            for msg_type, count in sorted(counts.items())}


def _material(workdir: Path) -> tuple[Material, ssl.SSLContext]:
    """Throwaway certificates and one RSA key pair; the gateway's TLS context."""
    certs = generate_certificates(SERVER_NAME)
    files = certs.write(workdir / "certs")
    private_key, public_key = generate_key_pair(workdir / "keys", "soak")
    mode = stat.S_IMODE(private_key.stat().st_mode)
    if mode != 0o600:
        raise BenchError(f"the private key {private_key} has mode {mode:o}, not 600")
    account = Account(str(uuid.uuid4()), private_key, public_key)
    return Material(workdir, files, certs.leaf_pin, (account,)), certs.server_context()


def _environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "trio": trio.__version__,
            "fixproxy": fixproxy.__version__, "kernel": platform.release(),
            "cores": os.cpu_count(), "load_average_start": os.getloadavg()[0]}


def run(settings: Settings) -> dict[str, Any]:
    """Run one soak; its report (also when orders were lost).

    Raises:
        FixProxyError: a process did not start, or the run could not reach its end.
    """
    started = time.time()
    environment = _environment()
    with tempfile.TemporaryDirectory(prefix="fixproxy-soak-") as tmp, \
            socket.socket() as listener:
        _progress("soak: generating certificates and a key pair")
        material, context = _material(Path(tmp))
        # Bound before fixproxy starts, so its configuration names a port that is ours.
        listener.bind((LOCALHOST, 0))
        listener.listen(socket.SOMAXCONN)
        gateway_port = int(listener.getsockname()[1])
        _progress("soak: starting fixproxy")
        child, config = start_fixproxy(material, gateway_port, material.accounts,
                                       "soak-fixproxy")
        with child:
            soak = _Soak(settings, material, context, listener, child,
                         config.sessions[0].listen[1])
            _progress(f"soak: {settings.duration:g} s at {settings.rate:g} orders/s, fixproxy "
                      f"pid {child.pid}")
            trio.run(soak.run)
            result = soak.result()
            if not result["ok"]:
                result["fixproxy_log_tail"] = child.failure("the soak failed").args[0]
    environment["load_average_end"] = os.getloadavg()[0]
    result["started"] = dt.datetime.fromtimestamp(started, dt.UTC).isoformat()
    result["environment"] = environment
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak, print the summary, write the JSON; 0 unless an order was lost or the run
    failed."""
    settings, json_path = parse_args(argv)
    started = time.time()
    try:
        result = run(settings)
    except FixProxyError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    stamp = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = json_path or RESULTS_DIR / f"soak-{stamp}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        print(f"soak: error: cannot write {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_report(result))
    print(f"\nJSON: {path}")
    if "fixproxy_log_tail" in result:
        print(result["fixproxy_log_tail"], file=sys.stderr)
    return 0 if result["ok"] else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
