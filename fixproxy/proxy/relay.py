"""The session data plane: a relay of one FIX session, from its signed Logon on, off trio.

Theory of operation
-------------------
Admission (trio, :mod:`fixproxy.proxy.admit`) reads and signs the engine's Logon and opens TLS
with pins checked. From the signed Logon on, a :class:`SessionRelay` owns everything
of the session: the engine's plain socket, the gateway's non-blocking ``ssl.SSLSocket``, both
framers, the :class:`~fixproxy.session.machine.SessionMachine`, the sequence translator, the
journal and the traffic counters. It is driven by a synchronous loop: ``poll`` over the two
sockets and a wake-up pipe, with the machine's next deadline as the timeout. Measured, trio's
scheduler pass per wake-up cost more than everything stunnel does per message; a plain loop in
a thread does not. Until the gateway has answered the Logon, the loop is the relay's own
(:meth:`SessionRelay.run_logon`, in a thread of its own, because the answer's outcome is
waited for); after that the relay is :attr:`~SessionRelay.settled` and the data plane's shared
thread drives it with every other session (:mod:`fixproxy.proxy.dataplane`), through the
same :meth:`~SessionRelay.handle`. :meth:`SessionRelay.run` is the whole session in one thread
(where no shared thread runs).

Per chunk read: frame it, count each message by MsgType, look into the few MsgTypes that matter
(Logout, Reject, Heartbeat), and write the chunk itself when it is whole frames and nothing needs
renumbering (design rule 6: the bytes that arrived leave). Writes are non-blocking; what a peer
does not take waits in that direction's pending output, and while that holds more than
:data:`MAX_PENDING_BYTES` the other side is not read: the backpressure reaches the sender
through TCP instead of growing a buffer. The gateway's ``SSLSocket`` may hold a decrypted record
that ``poll`` cannot see; ``pending()`` is asked after every read.

A session with drop-copy recovery (``[session.recovery]``) also looks at the gateway's
ExecutionReports and the engine's orders (35=D/F/G), which update its
:class:`~fixproxy.session.recovery.RecoveryTracker` and then pass with the rest of their chunk;
once Kalshi accepts the Logon, the relay waits for the control plane's replay before it writes
the answer, then writes the recovered reports and renumbers the gateway's after them. Other
sessions look at nothing more. A renumbered session also stores the engine's next inbound
number in its live record before each write to the engine (:mod:`fixproxy.ops.liveseq`), and
answers a ResendRequest for numbers from before the reset with a gap fill itself.

The planes meet at a named rule each (the types are in :mod:`fixproxy.proxy.handover`).
trio -> thread: :meth:`SessionRelay.shutdown` and :meth:`SessionRelay.abort` put a command on a
deque and write one byte to the wake-up pipe. thread -> trio: rare events (the Logon's answer,
an error for /status, clock skew) go through the ``ControlPlane`` the caller passes in, which
carries them out in trio's thread; the end of the session is :meth:`run`'s return value.
Traffic counters are plain integers written only by this thread and read at scrape time. The
``SSLSocket`` is used by this thread alone from the hand-over until :meth:`run` returns;
closing the sockets is the caller's, afterwards. This module never calls trio: tests drive the
same handlers from a trio loop (:meth:`wanted` and :meth:`handle`) with the autojump clock,
through real sockets.

Per wake-up the loop does little besides the I/O: the poll masks change registrations only
when they change, and the machine's next deadline is cached between events (traffic only moves
it later, so a stale one wakes the relay early, once).

The alternatives rejected: keeping the relay on trio (its per-wake-up pass is the cost this
module removes), and a reader and a writer thread per direction (four threads and locks per
session to do what one ``poll`` does).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Final

from fixproxy.errors import FixError, FramingError, SessionError
from fixproxy.fix import tags
from fixproxy.fix.codec import header_value, parse_utc_timestamp, render, utc_timestamp
from fixproxy.fix.framer import FixFramer
from fixproxy.fix.logon import strip_forced_reset
from fixproxy.fix.logout import logout
from fixproxy.ops.journal import SessionJournal
from fixproxy.ops.liveseq import LiveSequences
from fixproxy.ops.metrics import KNOWN_TYPES, OTHER_MSG_TYPE, TrafficCounters
from fixproxy.proxy.handover import Command, ControlPlane, RecoveryPlane, RelayResult
from fixproxy.proxy.legs import MAX_PENDING_BYTES, Leg
from fixproxy.session.explain import END_CAUSES, classify_gateway_answer, event_text
from fixproxy.session.machine import Action, Direction, Event, SessionMachine, State
from fixproxy.session.recovery import ORDER_MSG_TYPES, RecoveryTracker, deliver_recovered
from fixproxy.session.sequence import SequenceTranslator, answer_stale_resend, read_seq_num

CLOSE_TIMEOUT: Final = 2.0
"""Seconds a closing session keeps writing what it accepted before the sockets are closed."""

_IN: Final = select.POLLIN
_OUT: Final = select.POLLOUT
_GONE: Final = select.POLLERR | select.POLLHUP | select.POLLNVAL
_NOTED_TYPES: Final = frozenset({tags.MT_LOGOUT, tags.MT_REJECT, tags.MT_BUSINESS_REJECT,
                                 tags.MT_HEARTBEAT})
"""MsgTypes the relay looks into; every other message passes without a second look."""
_TRACKED_TYPES: Final = ORDER_MSG_TYPES | {tags.MT_EXECUTION_REPORT}
"""MsgTypes looked into for drop-copy recovery only."""


class _EveryType:
    """Contains every MsgType: before the Logon's answer, each message is looked into."""

    def __contains__(self, msg_type: object) -> bool:
        return True


_EVERY_TYPE: Final = _EveryType()


class SessionRelay:
    """One session's data plane; :meth:`run` (or :meth:`run_logon` then the data plane's
    shared loop) in a thread, or :meth:`wanted` and :meth:`handle` from a loop that waits for
    the sockets itself (the data plane, tests)."""

    def __init__(self, *, engine: socket.socket, gateway: socket.socket, logon: bytes,
                 engine_framer: FixFramer,
                 machine: SessionMachine, translator: SequenceTranslator | None,
                 reset_forced: bool, journal: SessionJournal | None,
                 to_gateway: TrafficCounters, to_engine: TrafficCounters,
                 control: ControlPlane, log: logging.LoggerAdapter[logging.Logger],
                 conn_id: int, gateway_ids: tuple[bytes, bytes],
                 engine_ids: tuple[bytes, bytes], logon_received: float,
                 clock: Callable[[], float], wall: Callable[[], float] = time.time,
                 recovery: RecoveryTracker | None = None,
                 recovery_plane: RecoveryPlane | None = None,
                 live: LiveSequences | None = None) -> None:
        """Take over a session whose TLS to the gateway is open and pinned; the relay writes
        the signed Logon first.

        Args:
            engine: the engine's connected socket (plain TCP), non-blocking.
            logon: the signed Logon, written first.
            gateway: the gateway's socket, an ``ssl.SSLSocket`` after its handshake (a plain
                socket in tests), non-blocking.
            engine_framer: the framer admission read the Logon with; bytes the engine sent
                after its Logon may wait in it.
            machine: the session machine, in ``tls_ready``.
            translator: the renumbering, when the engine kept its numbers.
            reset_forced: fixproxy forced 141=Y, so it is removed from the Logon answer.
            gateway_ids, engine_ids: (sender, target) of fixproxy's own Logouts to each peer.
            logon_received: ``time.monotonic()`` when the engine's Logon arrived.
            clock: the machine's monotonic clock (trio's, so deadlines agree).
            recovery: the session's drop-copy state, for a session with recovery configured
                (with the ``recovery_plane`` it reports to); None: nothing more is looked into.
            live: where a renumbered session keeps the engine's next inbound number current,
                stored before each write to the engine (:mod:`fixproxy.ops.liveseq`).
        """
        self.engine = Leg.over(engine, engine_framer, "engine")
        self._engine_fd = engine.fileno()
        self.gateway = Leg.over(gateway, FixFramer(), "gateway")
        self.logon = logon
        self.machine = machine
        self.translator = translator
        self.reset_forced = reset_forced
        self.journal = journal
        self.to_gateway = to_gateway
        self.to_engine = to_engine
        self.control = control
        self.log = log
        self.conn_id = conn_id
        self.gateway_ids = gateway_ids
        self.engine_ids = engine_ids
        self.logon_received = logon_received
        self.clock = clock
        self.wall = wall
        self.logged_on = False
        self.end_cause: tuple[str, str] | None = None
        self.logout_cause = ""
        self.closing_since: float | None = None
        self._deadline: float | None = None
        """The next deadline, cached between events; None: to be computed."""
        self.awaiting_answer = True
        """The gateway's first message is the answer to the signed Logon."""
        self.done = False
        self._runs_pass = translator is None and journal is None
        """Runs of plain frames pass as blocks (nothing to renumber or record per frame)."""
        self._commands: collections.deque[Command] = collections.deque()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._finished = False
        self.recovery = recovery if recovery_plane is not None else None
        self.recovery_plane = recovery_plane
        self._recovery_changed = False
        self.recovered = 0
        """Reports injected after the Logon answer."""
        # The MsgTypes looked into, per direction: more only with recovery (others pay nothing).
        self._noted_from_engine: frozenset[bytes] = _NOTED_TYPES
        self._noted_from_gateway: frozenset[bytes] = _NOTED_TYPES
        if self.recovery is not None:
            self._noted_from_engine = _NOTED_TYPES | ORDER_MSG_TYPES
            self._noted_from_gateway = _NOTED_TYPES | {tags.MT_EXECUTION_REPORT}
        self.live = live if translator is not None else None
        self.first_in = 1 if translator is None else translator.in_offset + 1
        """The engine's number of the gateway's first message on this connection."""
        if translator is not None:
            # A ResendRequest may ask for numbers from before the reset: answered here.
            self._noted_from_engine = self._noted_from_engine | {tags.MT_RESEND_REQUEST}

    # --- the control plane's side ---------------------------------------------------------

    def shutdown(self) -> None:
        """Ask for a Logout because fixproxy stops (thread-safe, returns at once)."""
        self._command(Command.SHUTDOWN)

    def abort(self) -> None:
        """Ask the relay to stop now, dropping what is unwritten (thread-safe)."""
        self._command(Command.ABORT)

    def check_timers(self) -> None:
        """Ask the relay to read its clock again now (thread-safe)."""
        self._command(Command.CHECK)

    def save_recovery(self) -> None:
        """Ask the relay to hand its recovery state over if it changed (thread-safe)."""
        self._command(Command.SAVE_RECOVERY)

    def _command(self, command: Command) -> None:
        if self._finished:
            return
        self._commands.append(command)
        with contextlib.suppress(BlockingIOError):  # full of wake-ups: the relay will look
            os.write(self._wake_write, b"!")

    def close(self) -> None:
        """Release the wake-up pipe; the caller's, after :meth:`run` returned."""
        if not self._finished:
            self._finished = True
            os.close(self._wake_read)
            os.close(self._wake_write)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> RelayResult:
        """Relay until the session ends; the body of the session's thread. Never raises."""
        try:
            self._start()
        except Exception as exc:
            return self.fail(exc)
        return self.run_rest()

    def run_logon(self) -> RelayResult | None:
        """:meth:`run` until the gateway's answer to the Logon has been dealt with.

        Returns:
            None when the session is then logged on and going on: it no longer waits for
            the control plane, so the data plane's shared thread takes it over
            (:class:`~fixproxy.proxy.dataplane.DataPlane`, or :meth:`run_rest` in a thread of
            its own); otherwise how it ended. Never raises.
        """
        try:
            self._start()
        except Exception as exc:
            return self.fail(exc)
        return self._loop(until_settled=True)

    def run_rest(self) -> RelayResult:
        """The rest of :meth:`run` after :meth:`run_logon` returned None. Never raises."""
        result = self._loop(until_settled=False)
        if result is None:  # cannot be: only a loop until settled stops without a result
            raise AssertionError("the relay loop stopped before the session ended")
        return result

    @property
    def settled(self) -> bool:
        """Logged on and past the Logon's answer: from here on the relay only relays, and
        never waits for the control plane (its reports are fire-and-forget)."""
        return self.logged_on and not self.awaiting_answer

    def _loop(self, *, until_settled: bool) -> RelayResult | None:
        """``poll`` and :meth:`handle` until done (its result) or, when asked, settled (None)."""
        poller = select.poll()
        wake, engine_fd, gateway_fd = self._wake_read, self._engine_fd, self.gateway.fileno()
        poller.register(wake, _IN)
        engine_mask = gateway_mask = 0
        try:
            while not self.done:
                if until_settled and self.settled:
                    return None
                # A descriptor waited on for nothing is taken out: poll reports POLLHUP
                # whether asked or not, and would spin the loop.
                wanted_engine, wanted_gateway = self.masks()
                if wanted_engine != engine_mask:
                    engine_mask = self._register(poller, engine_fd, engine_mask, wanted_engine)
                if wanted_gateway != gateway_mask:
                    gateway_mask = self._register(poller, gateway_fd, gateway_mask,
                                                  wanted_gateway)
                timeout = self.timeout()
                self.handle(poller.poll(None if timeout is None
                                        else math.ceil(timeout * 1000)))
        except Exception as exc:
            return self.fail(exc)
        return self.result()

    @staticmethod
    def _register(poller: select.poll, fd: int, old: int, new: int) -> int:
        if new:
            poller.register(fd, new)
        elif old:
            poller.unregister(fd)
        return new

    def _start(self) -> None:
        """Write the signed Logon, then relay what the engine sent meanwhile."""
        logon = self.logon
        self.to_gateway.count(tags.MT_LOGON)
        self.to_gateway.bytes += len(logon)
        if not self._send(self.gateway, logon, time.perf_counter()):
            return
        self._event(Event.LOGON_SENT)
        if self.journal is not None:
            self.journal.record(Direction.ENGINE_TO_GATEWAY, [logon], self.conn_id)
        self.log.info("sent Logon: %s", render(logon))
        if self.engine.framer.buffered:
            self._relay_chunk(self.engine, self.gateway, None, self.clock(), time.perf_counter())

    def start(self) -> None:
        """:meth:`run`'s first step, for loops that drive :meth:`handle` themselves."""
        self._start()

    def descriptors(self) -> tuple[int, int, int]:
        """The wake-up pipe's, the engine's and the gateway's file descriptors."""
        return self._wake_read, self._engine_fd, self.gateway.fileno()

    def masks(self) -> tuple[int, int]:
        """The poll masks of the engine and the gateway socket now (the wake-up pipe's is
        always POLLIN)."""
        engine, gateway = self.engine, self.gateway
        engine_mask = _OUT if engine.pending and engine.writable else 0
        gateway_mask = _OUT if (gateway.pending and gateway.writable) \
            or gateway.wants_write_for_read else 0
        if self.closing_since is None:
            if engine.readable and len(gateway.pending) < MAX_PENDING_BYTES:
                engine_mask |= _IN
            if (gateway.readable and len(engine.pending) < MAX_PENDING_BYTES) \
                    or gateway.wants_read_for_write:
                gateway_mask |= _IN
        return engine_mask, gateway_mask

    def wanted(self) -> list[tuple[int, int]]:
        """(fd, poll mask) for each descriptor the relay waits on now."""
        engine_mask, gateway_mask = self.masks()
        return [(self._wake_read, _IN), (self.engine.fileno(), engine_mask),
                (self.gateway.fileno(), gateway_mask)]

    def timeout(self) -> float | None:
        """Seconds until something is due without any I/O; None: nothing is."""
        gateway = self.gateway
        if gateway.tls_pending is not None and gateway.readable and self.closing_since is None \
                and gateway.tls_pending() and len(self.engine.pending) < MAX_PENDING_BYTES:
            return 0.0  # a decrypted record waits inside OpenSSL, invisible to poll
        deadline = self.deadline()
        return None if deadline is None else max(0.0, deadline - self.clock())

    def deadline(self) -> float | None:
        """When the relay must look again even if nothing arrives (the machine's clock).

        Cached until the next event: traffic only moves the machine's deadlines later, so a
        stale one wakes the relay early, once, and it looks again.
        """
        deadline = self._deadline
        if deadline is None:
            if self.closing_since is not None:
                deadline = self.closing_since + CLOSE_TIMEOUT
            else:
                deadline = self.machine.next_deadline()
                if deadline is None:
                    deadline = math.inf
            self._deadline = deadline
        return None if deadline == math.inf else deadline

    def handle(self, events: list[tuple[int, int]]) -> None:
        """Act on ready descriptors (as ``poll`` reports them), then on due timers."""
        engine, gateway = self.engine, self.gateway
        now = self.clock()
        for fd, mask in events:
            if fd == self._wake_read:
                self._take_commands()
            elif fd == self._engine_fd:
                if mask & _OUT or (mask & _GONE and engine.pending):
                    self._flush(engine)
                if mask & (_IN | _GONE) and engine.readable and self.closing_since is None:
                    self._read(engine, gateway, now)
            else:
                if mask & _OUT or (mask & _GONE and gateway.pending):
                    self._flush(gateway)
                    if gateway.wants_write_for_read and gateway.readable:
                        self._read(gateway, engine, now)
                if mask & (_IN | _GONE) and self.closing_since is None:
                    if gateway.wants_read_for_write:
                        gateway.wants_read_for_write = False
                        self._flush(gateway)
                    if gateway.readable:
                        self._read(gateway, engine, now)
        if gateway.tls_pending is not None and gateway.readable and self.closing_since is None \
                and gateway.tls_pending() and len(engine.pending) < MAX_PENDING_BYTES:
            self._read(gateway, engine, now)
        deadline = self._deadline
        if deadline is None or now >= deadline:
            self._deadline = None
            if self.closing_since is None:
                # A side is held off while the other one takes none of its pending output;
                # its silence is then the other side's (see SessionMachine.check_timers).
                due = self.machine.check_timers(
                    now, engine_held=engine.readable and len(gateway.pending) >= MAX_PENDING_BYTES,
                    gateway_held=gateway.readable and len(engine.pending) >= MAX_PENDING_BYTES)
                if due is not None:
                    self._event(due)
            self._check_closed(now)
        elif self.closing_since is not None:
            self._check_closed(now)

    def result(self) -> RelayResult:
        """How the session ended; closes the journal (the relay's last act)."""
        if self.journal is not None:
            self.journal.close()
        return RelayResult(logged_on=self.logged_on, end_cause=self.end_cause)

    # --- reading and relaying ----------------------------------------------------------------

    def _read(self, src: Leg, dst: Leg, now: float) -> None:
        """Read once from ``src`` and pass on what came.

        The usual case costs one C call besides the I/O: when nothing needs renumbering or
        recording and the Logon's answer is not awaited from ``src``, the leading run of
        complete frames that need no second look is framed, checked and counted at once
        (the C scanner) and written on as one block, the chunk itself when it is whole frames
        (design rule 6). Whatever follows that run goes through :meth:`_relay_chunk`.
        """
        data = src.read()
        if data is None:
            return
        read_at = time.perf_counter()
        if not data or not self._runs_pass or (self.awaiting_answer and src is self.gateway):
            self._relay_chunk(src, dst, data, now, read_at)
            return
        from_engine = src is self.engine
        counters = self.to_gateway if from_engine else self.to_engine
        try:
            buf, start, end, seq = src.framer.receive_counted(
                data, counters.messages, KNOWN_TYPES, OTHER_MSG_TYPE,
                self._noted_from_engine if from_engine else self._noted_from_gateway)
        except FramingError as exc:
            self._invalid(src, exc)
            return
        if end > start:
            counters.bytes += end - start
            if from_engine:
                self.machine.engine_activity(now, seq)
            else:
                self.machine.gateway_activity(now, seq)
            if buf is data and start == 0 and end == len(buf):
                self._send(dst, data, read_at)
                return
            self._send(dst, bytes(buf[start:end]), read_at)
        if end < len(buf):
            self._relay_chunk(src, dst, None, now, read_at)

    def _relay_chunk(self, src: Leg, dst: Leg, data: bytes | None, now: float,
                     read_at: float) -> None:
        """Frame ``data`` (b"" at end of stream; None: only what the framer holds) and pass
        its messages on; Logouts and the Logon's answer go through the machine."""
        framer = src.framer
        from_engine = src is self.engine
        whole_chunk = framer.buffered == 0 and bool(data)
        if data is not None:
            try:
                framer.receive_data(data)
            except FramingError as exc:
                self._invalid(src, exc)
                return
        translate: Callable[[bytes], bytes] | None = None
        if self.translator is not None:
            translate = self.translator.to_gateway if from_engine \
                else self.translator.to_engine
        counters = self.to_gateway if from_engine else self.to_engine
        messages = counters.messages
        next_raw = framer.next_raw
        # Every message is looked into while the Logon's answer is awaited; after that, only
        # the few noted types (one set lookup per message).
        plain = self._noted_from_engine if from_engine else self._noted_from_gateway
        noted = _EVERY_TYPE if self.awaiting_answer and not from_engine else plain
        # The fast path: runs of messages that need nothing but counting are framed and
        # counted in one call (the C scanner), and pass as one block of the bytes that came.
        fast = self._runs_pass and noted is plain
        parts: list[bytes] = []
        last: bytes | int = -1
        """The last message in ``parts``, or its MsgSeqNum when the scanner read it."""
        while True:
            if fast:
                buf, start, end, seq = framer.take_counted(
                    messages, KNOWN_TYPES, OTHER_MSG_TYPE, plain)
                if end > start:
                    parts.append(bytes(buf[start:end]))
                    last = seq
            try:
                found = next_raw()
            except FramingError as exc:
                self._forward(src, dst, parts, last, now, read_at, counters, whole=False)
                self._invalid(src, exc)
                return
            if found is None:
                break
            raw, msg_type = found
            try:  # a MsgType seen before: one dict update, no call
                messages[msg_type] += 1
            except KeyError:
                counters.count(msg_type)
            if msg_type in noted:
                # Recovery only (35=8 in, 35=D/F/G out): recorded, then relayed with the rest
                # of the chunk, unless a live report repeats a recovered one: held back.
                tracked = noted is plain and msg_type in _TRACKED_TYPES
                if not tracked or self._recovery_note(now, raw, order=from_engine):
                    self._forward(src, dst, parts, last, now, read_at, counters, whole=False)
                    parts, last, whole_chunk = [], -1, False
                    if not tracked and not self._noted(src, dst, raw, msg_type, now, counters):
                        return
                    if not src.readable or self.closing_since is not None:
                        return  # fixproxy logged out for this side, or the session is closing
                    noted = _EVERY_TYPE if self.awaiting_answer and not from_engine else plain
                    if self.translator is not None:
                        # Recovery renumbers from the Logon answer on, and again per repeat;
                        # a gap fill answered for the engine shifts its numbers.
                        translate = self.translator.to_gateway if from_engine \
                            else self.translator.to_engine
                    fast = self._runs_pass and noted is plain
                    continue
            last = raw
            if translate is not None:
                try:
                    raw = translate(raw)
                except SessionError as exc:
                    self._forward(src, dst, parts, last, now, read_at, counters, whole=False)
                    self._invalid(src, exc)
                    return
            parts.append(raw)
        whole = whole_chunk and framer.buffered == 0 and self.translator is None
        self._forward(src, dst, parts, last, now, read_at, counters, whole=whole,
                      chunk=data or b"")
        if framer.at_eof and src.readable:
            src.readable = False
            if from_engine:
                self._event(Event.ENGINE_CLOSED, "the engine closed the connection")
            elif self.awaiting_answer:
                self.control.logon_failed("no_answer")
                self._event(Event.GATEWAY_CLOSED, "the Kalshi gateway closed the connection "
                            "without answering the Logon; check that the API key is enabled "
                            "for this endpoint")
            else:
                self._event(Event.GATEWAY_CLOSED,
                            "the Kalshi gateway closed the connection without a Logout")

    def _forward(self, src: Leg, dst: Leg, parts: list[bytes], last: bytes | int, now: float,
                 read_at: float, counters: TrafficCounters, *, whole: bool,
                 chunk: bytes = b"") -> None:
        """Queue relayed frames for ``dst`` and note the sender's activity; ``last`` is the
        last of them, or its MsgSeqNum (-1: none) when the scanner read it."""
        if not parts:
            return
        out = chunk if whole else b"".join(parts)
        counters.bytes += len(out)
        seq = last if isinstance(last, int) else read_seq_num(last)
        if src is self.engine:
            self.machine.engine_activity(now, seq)
            direction = Direction.ENGINE_TO_GATEWAY
        else:
            self.machine.gateway_activity(now, seq)
            direction = Direction.GATEWAY_TO_ENGINE
            if self.live is not None:
                self._store_engine_next()
        if self._send(dst, out, read_at) and self.journal is not None:
            self.journal.record(direction, parts, self.conn_id)

    def _noted(self, src: Leg, dst: Leg, raw: bytes, msg_type: bytes, now: float,
               counters: TrafficCounters) -> bool:
        """Handle a message the relay looks into; False: stop relaying this chunk."""
        from_engine = src is self.engine
        if not from_engine and self.awaiting_answer:
            return self._logon_answer(raw, msg_type, now, counters)
        if msg_type == tags.MT_LOGOUT:
            return self._logout(src, dst, raw, now, counters)
        if msg_type == tags.MT_RESEND_REQUEST and from_engine and self._fill_stale(raw, now):
            return True
        if msg_type == tags.MT_HEARTBEAT:
            self._note_skew("engine" if from_engine else "gateway", raw)
        elif not from_engine:
            counters.count_reject(msg_type, raw)
            self._explain(raw)
        self._forward(src, dst, [self._translated(raw, from_engine)], raw, now,
                      time.perf_counter(), counters, whole=False)
        return True

    def _logout(self, src: Leg, dst: Leg, raw: bytes, now: float,
                counters: TrafficCounters) -> bool:
        from_engine = src is self.engine
        seq = read_seq_num(raw)
        if from_engine:
            self.machine.engine_activity(now, seq)
        else:
            self.machine.gateway_activity(now, seq)
        self.log.info("%s sent Logout: %s", src.name, render(raw))
        if not from_engine:
            answer = self._explain(raw)
            if self.end_cause is None:
                self.end_cause = ("gateway", answer)
                self.control.error(f"connection #{self.conn_id}: the gateway logged out: "
                                   f"{render(raw)}")
        event = Event.ENGINE_LOGOUT if from_engine else Event.GATEWAY_LOGOUT
        # An answer to fixproxy's own Logout closes for the cause that started it.
        if not self._event(event, self.logout_cause):
            data = self._translated(raw, from_engine)
            counters.bytes += len(data)
            if self.live is not None and not from_engine:
                self._store_engine_next()
            if self._send(dst, data, time.perf_counter()) and self.journal is not None:
                self.journal.record(Direction.ENGINE_TO_GATEWAY if from_engine
                                    else Direction.GATEWAY_TO_ENGINE, [data], self.conn_id)
        return True

    def _logon_answer(self, raw: bytes, msg_type: bytes, now: float,
                      counters: TrafficCounters) -> bool:
        """Pass the gateway's first message to the engine; True if it was a Logon."""
        self.awaiting_answer = False
        self.machine.gateway_activity(now, read_seq_num(raw))
        self._note_skew("gateway", raw)
        accepted = msg_type == tags.MT_LOGON
        data = raw
        if accepted:
            self.logged_on = True
            if self.reset_forced:
                data = strip_forced_reset(data)
            if self.translator is not None:
                data = self.translator.to_engine(data)
                self.first_in = self.translator.engine_seq_for_gateway(read_seq_num(raw) or 1)
            self.log.info("gateway accepted the Logon: %s", render(raw))
        else:
            self.log.warning("gateway answered the Logon with: %s", render(raw))
            self._explain(raw)
        self.control.logon_answered(accepted, render(raw),
                                    time.monotonic() - self.logon_received)
        recovered: list[bytes] = []
        if accepted and self.recovery is not None and self.recovery_plane is not None:
            recovered = self._recover(read_seq_num(raw) or 1)
        # The machine learns of the answer before the engine can react to it (an engine may
        # log out the instant it is logged on).
        if accepted:
            self._event(Event.GATEWAY_LOGON)
        elif msg_type == tags.MT_LOGOUT:
            self._event(Event.GATEWAY_LOGOUT, "the gateway refused the Logon")
        counters.bytes += len(data) + sum(map(len, recovered))
        if accepted and self.live is not None:
            self._store_engine_next()
        if self._send(self.engine, b"".join([data, *recovered]), time.perf_counter()) \
                and self.journal is not None:
            self.journal.record(Direction.GATEWAY_TO_ENGINE, [data], self.conn_id)
            if recovered:  # fixproxy's own messages, from the drop copy's
                self.journal.record(Direction.PROXY_TO_ENGINE, recovered, self.conn_id)
        if not accepted and msg_type != tags.MT_LOGOUT:
            # Only now: fixproxy's Logout to the engine must follow the answer it explains.
            self._event(Event.GATEWAY_ERROR, "the gateway answered the Logon with "
                        f"35={msg_type.decode('ascii', 'replace')}")
        return accepted

    # --- drop-copy recovery (sessions with [session.recovery] only) -------------------------

    def _recover(self, answer_seq: int) -> list[bytes]:
        """Wait for the control plane's replay of what the engine missed, holding all else:
        the engine waits for its Logon answer, the gateway is not read (its bytes wait in
        the kernel, TCP holds the rest back, and those of the answer's chunk in its framer).
        Returns the reports to write after the answer, numbered in the engine's stream."""
        tracker, plane = self.recovery, self.recovery_plane
        assert tracker is not None and plane is not None
        kept = plane.recover(tracker.snapshot(self.wall()))
        if not kept:
            return []
        reports, self.translator = deliver_recovered(
            kept, self.translator, answer_seq=answer_seq, sender=self.engine_ids[0],
            target=self.engine_ids[1], stamp=utc_timestamp(self.wall()))
        tracker.recovered(kept, self.wall())
        self._runs_pass = False  # renumbered from now on
        self.recovered = len(reports)
        for _ in reports:
            self.to_engine.count(tags.MT_EXECUTION_REPORT)
        self.log.info("delivering %d recovered ExecutionReports (97=Y) after the Logon "
                      "answer", len(reports))
        return reports

    def _recovery_note(self, now: float, raw: bytes, *, order: bool) -> bool:
        """Record an order's ClOrdIDs or a report's ExecID; True: the report repeats one
        delivered from the drop copy and is held back (the gateway's later numbers shift
        back by one, so the engine sees no gap)."""
        tracker = self.recovery
        assert tracker is not None
        self._recovery_changed = True
        if order:
            tracker.order(raw, self.wall())
            return False
        if not tracker.report(raw, self.wall()):
            return False
        self.machine.gateway_activity(now, read_seq_num(raw))
        if self.translator is not None:
            self.translator = self.translator.shifted_in(-1)
        self.log.info("held back a live report already recovered: %s", render(raw))
        return True

    # --- renumbered sessions only ---------------------------------------------------------

    def _store_engine_next(self) -> None:
        """Record the engine's next inbound number before the bytes it counts are written."""
        assert self.live is not None and self.translator is not None
        self.live.store(self.machine.gateway_last_seq + 1 + self.translator.in_offset)

    def _fill_stale(self, raw: bytes, now: float) -> bool:
        """Answer the engine's ResendRequest for numbers from before this connection with a
        gap fill, instead of passing it on; True if it was one (or broke FIX)."""
        try:
            answer = answer_stale_resend(raw, self.translator, self.first_in, now=self.wall(),
                                         ids=self.engine_ids, endpoint=self.gateway_ids[1])
        except SessionError as exc:
            self._invalid(self.engine, exc)
            return True
        if answer is None:
            return False
        self.machine.engine_activity(now, read_seq_num(raw))
        self.translator = answer.translator
        self.log.warning("%s", answer.warning)
        self.to_engine.count(tags.MT_SEQUENCE_RESET)
        self.to_engine.bytes += len(answer.fill)
        if self._send(self.engine, answer.fill, time.perf_counter()) and self.journal:
            self.journal.record(Direction.PROXY_TO_ENGINE, [answer.fill], self.conn_id)
        return True

    def _translated(self, raw: bytes, from_engine: bool) -> bytes:
        if self.translator is None:
            return raw
        return self.translator.to_gateway(raw) if from_engine else self.translator.to_engine(raw)

    def _invalid(self, src: Leg, exc: FixError) -> None:
        """``src`` broke FIX (or sent a number that cannot be renumbered): end the session."""
        from_engine = src is self.engine
        exc.side = "engine" if from_engine else "gateway"
        src.readable = False
        if not from_engine and self.awaiting_answer:
            self.control.logon_failed(None)
        self._event(Event.ENGINE_ERROR if from_engine else Event.GATEWAY_ERROR,
                    f"{'the engine' if from_engine else 'the Kalshi gateway'} sent invalid "
                    f"FIX: {exc}")

    def _note_skew(self, source: str, raw: bytes) -> None:
        stamped = parse_utc_timestamp(header_value(raw, tags.SENDING_TIME))
        if stamped is not None:
            self.control.skew(source, stamped - self.wall())

    def _explain(self, raw: bytes) -> str:
        answer = classify_gateway_answer(raw)
        if answer.hint is not None:
            self.log.warning("gateway said %r: %s", answer.text, answer.hint)
        return answer.reason

    # --- writing ----------------------------------------------------------------------------

    def _send(self, dst: Leg, data: bytes, read_at: float) -> bool:
        """Write ``data`` to ``dst`` after what is pending; False if ``dst`` is gone."""
        if not dst.writable:
            return False
        if dst.pending:
            dst.pending += data
            return True
        dst.pending = data
        dst.pending_read_at = read_at
        if dst.write_pending():  # _flush, inline: this is every relayed chunk's write
            counters = self.to_gateway if dst is self.gateway else self.to_engine
            counters.latency.observe(time.perf_counter() - read_at)
        elif not dst.writable:
            self._write_failed(dst)
        return dst.writable

    def _flush(self, dst: Leg) -> None:
        if not dst.pending or not dst.writable:
            return
        if dst.write_pending():
            counters = self.to_gateway if dst is self.gateway else self.to_engine
            counters.latency.observe(time.perf_counter() - dst.pending_read_at)
        elif not dst.writable:
            self._write_failed(dst)

    def _write_failed(self, dst: Leg) -> None:
        if dst is self.engine:
            self._event(Event.ENGINE_CLOSED, "the engine closed the connection")
        elif self.machine.state is State.TLS_READY:
            self.control.logon_failed("no_answer")
            self._event(Event.GATEWAY_CLOSED, "the gateway closed the connection before the "
                        "Logon could be sent")
        else:
            self._event(Event.GATEWAY_CLOSED)

    # --- events and actions -----------------------------------------------------------------

    def _event(self, event: Event, reason: str = "") -> bool:
        """Feed ``event`` to the machine and carry out its actions; True: swallow the message
        that caused it."""
        machine = self.machine
        before = machine.state
        if before is State.LOGON_SENT and event is Event.GATEWAY_SILENT:
            self.control.logon_failed(None)
        if self.end_cause is None and event in END_CAUSES:
            self.end_cause = END_CAUSES[event]
            if event is not Event.ENGINE_LOGOUT:
                self.control.error(f"connection #{self.conn_id} ended: "
                                   f"{event_text(event, reason)}")
        actions = machine.handle(event, self.clock(), reason)
        self._deadline = None
        if machine.state is not before:
            self.log.info("%s -> %s on %s%s", before, machine.state, event,
                          f" ({reason})" if reason else "")
        text = event_text(event, reason)
        for action in actions:
            if action is Action.LOGOUT_TO_GATEWAY:
                # The engine is later told the cause, not the gateway's answer to it.
                self.logout_cause = text
                self._own_logout(self.gateway, text)
            elif action is Action.LOGOUT_TO_ENGINE:
                self._own_logout(self.engine, self.logout_cause or text)
            elif action is Action.STOP_ENGINE_INPUT:
                self.engine.readable = False
            elif action is Action.CLOSE and self.closing_since is None:
                self.closing_since = self.clock()
                self._deadline = None
        return Action.SWALLOW in actions

    def _logout_to(self, dst: Leg, text: str) -> bytes:
        """A Logout of fixproxy's own for ``dst``, numbered in the stream of the peer it
        speaks for (and renumbered for the engine when sequences are translated)."""
        to_gateway = dst is self.gateway
        seq = self.machine.next_logout_seq(to_gateway=to_gateway)
        if self.translator is not None:
            seq = self.translator.gateway_seq_for_engine(seq) if to_gateway \
                else self.translator.engine_seq_for_gateway(seq)
        sender, target = self.gateway_ids if to_gateway else self.engine_ids
        return logout(text, sender=sender, target=target, seq=seq, now=self.wall())

    def _own_logout(self, dst: Leg, text: str) -> None:
        to_gateway = dst is self.gateway
        message = self._logout_to(dst, text if to_gateway else f"fixproxy: {text}")
        if self.live is not None and not to_gateway:
            self._store_engine_next()
        self.log.info("sending Logout to the %s: %s", dst.name, text)
        if self._send(dst, message, time.perf_counter()) and self.journal is not None:
            self.journal.record(Direction.PROXY_TO_GATEWAY if to_gateway
                                else Direction.PROXY_TO_ENGINE, [message], self.conn_id)

    def _take_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 512):
                pass
        while self._commands:
            command = self._commands.popleft()
            if command is Command.ABORT:
                self.done = True
                return
            if command is Command.SHUTDOWN and self.closing_since is None:
                self._event(Event.SHUTDOWN)
            elif command is Command.SAVE_RECOVERY and self._recovery_changed \
                    and self.recovery is not None and self.recovery_plane is not None:
                self._recovery_changed = False
                self.recovery_plane.save(self.recovery.snapshot(self.wall()))

    def _check_closed(self, now: float) -> None:
        """A closing session is done once its output is written or the close time is up."""
        since = self.closing_since
        if since is None or self.done:
            return
        unwritten = any(leg.pending and leg.writable for leg in (self.engine, self.gateway))
        if not unwritten or now >= since + CLOSE_TIMEOUT:
            self.done = True

    def fail(self, exc: BaseException) -> RelayResult:
        """An internal fault: tell both peers in a Logout (best effort) and end the session.

        A Logon still unanswered counts as one that got no answer (the key's next attempt
        waits out the backoff, as after silence).
        """
        self.log.exception("internal error in the session relay; this connection is closed, "
                           "others carry on")
        self.done = True
        if self.end_cause is None:
            self.end_cause = ("proxy", "internal_error")
        text = "internal error in fixproxy; the connection is closed, log on again"
        if self.logged_on and self.closing_since is None:
            self._last_words(self.gateway, text)
        self._last_words(self.engine, f"fixproxy: {text}")
        if self.awaiting_answer and self.machine.state is State.LOGON_SENT:
            with contextlib.suppress(Exception):  # the crash may have come from there
                self.control.logon_failed(None)
        if self.journal is not None:
            self.journal.close()
        return RelayResult(logged_on=self.logged_on, end_cause=self.end_cause, crashed=exc)

    def _last_words(self, dst: Leg, text: str) -> None:
        """Write what ``dst`` is owed and a Logout, in one try, without waiting (the close
        that follows tells the peer if this does not reach it)."""
        if not dst.writable:
            return
        message = self._logout_to(dst, text)
        if self.live is not None and dst is self.engine:
            self._store_engine_next()
        with contextlib.suppress(OSError):  # TLS's want-read/want-write are OSErrors too
            dst.send(dst.pending + message)
