"""Admission: an engine connection from accept to a session relay, or to a clear refusal.

Theory of operation
-------------------
An engine connection goes through two phases here, in trio, and a third in a thread:

1. **Logon.** Read the engine's first message within ``logon_timeout``. It must be a Logon that
   :func:`fixproxy.fix.logon.rewrite_logon` accepts; the peer filter, the maintenance window,
   the Logon backoff and the one-connection-per-key claim come first. Anything fixproxy refuses
   before Kalshi sees it (bad framing, wrong CompIDs, bad HeartBtInt, unreachable gateway, TLS
   or pin failure) is answered to the engine as a Logout (35=5) whose Text (58) says what is
   wrong and what to change, then a clean close: write, half-close, drain briefly, close, so
   the Logout is not lost to a TCP reset.
2. **Upstream.** Only then is the TLS connection opened (the connect callable checks CA,
   hostname and pins after an explicit handshake, before any FIX byte).
3. **Session.** Both sockets, the framer that read the Logon (and whatever the engine sent
   after it) and a fresh session machine are handed to a
   :class:`~fixproxy.proxy.relay.SessionRelay`, which writes the signed Logon, passes the
   gateway's answer on and relays until the session ends: in a thread of its own until the
   Logon is answered, then in the data plane's shared thread (:mod:`fixproxy.proxy.dataplane`).
   This task waits for the relay's end, so the listener's nursery and the shutdown drain stay
   structured; a cancellation aborts the relay. The relay's rare events (the Logon's answer,
   errors, clock skew) come back through :class:`_TrioControl` and are carried out in trio's
   thread; its end is its return value, after which this task counts the end, saves sequence
   numbers and closes both sockets.

The alternative rejected for phase 3 is relaying on trio: measured, the event loop's pass per
wake-up cost more than everything stunnel does per message.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import trio

from fixproxy.errors import (
    FixProxyError,
    FramingError,
    LogonRefused,
    OutOfDescriptors,
    PinMismatchError,
    UpstreamError,
)
from fixproxy.fix import logout as admin
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, parse_utc_timestamp, render
from fixproxy.fix.framer import FixFramer, Frame
from fixproxy.fix.logon import RewrittenLogon, rewrite_logon
from fixproxy.net.listen import open_file_limit
from fixproxy.net.streams import NonBlockingSocketStream, RawSocketStream
from fixproxy.net.tls import HandshakeInfo
from fixproxy.ops.journal import open_journal
from fixproxy.ops.status import SessionStatus
from fixproxy.proxy.handover import RelayResult
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.recovery import ended_cleanly, recover_session, recovery_tracker, save_recovery
from fixproxy.proxy.relay import CLOSE_TIMEOUT, SessionRelay
from fixproxy.proxy.runtime import SessionRuntime, declare_status
from fixproxy.proxy.seqstate import open_live, save_sequences
from fixproxy.session.explain import (
    clock_skew_warning,
    describe_bad_start,
    descriptor_shortage_text,
)
from fixproxy.session.machine import Direction, Event, SessionMachine
from fixproxy.session.recovery import ExecId, RecoveryState, report_format_flags
from fixproxy.session.sequence import SequenceTranslator

logger = logging.getLogger("fixproxy.relay")

RECEIVE_SIZE: Final = 65536
"""Bytes asked of the socket per read: large enough that a burst is one read and one write."""
DRAIN_TIMEOUT: Final = 2.0
"""Seconds spent reading what an engine still sends after its refusal, so close() sends FIN."""
DRAIN_LIMIT: Final = 1 << 20
"""Bytes read and discarded at most while draining a refused engine."""

_connection_ids = itertools.count(1)


class _ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the session and connection id, so one connection's story can
    be followed through interleaved logs."""

    def process(self, msg: object, kwargs: MutableMapping[str, Any]
                ) -> tuple[object, MutableMapping[str, Any]]:
        extra = self.extra or {}
        # As record attributes too, for the JSON log format's session and conn fields.
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{extra.get('session')} #{extra.get('conn')}] {msg}", kwargs


_UPSTREAM_NOT_TRIED: Final = frozenset({"duplicate_key", "maintenance", "backoff"})
"""Refusals that stand for a gateway connection fixproxy chose not to open; they are counted
in fixproxy_upstream_connects_total too, beside the attempts that failed."""


class _Refusal(FixProxyError):
    """Internal: end the connection with a local Logout carrying ``text``."""

    def __init__(self, text: str, result: str) -> None:
        super().__init__(text)
        self.text = text
        self.result = result


async def relay_engine_connection(engine: trio.abc.Stream, runtime: SessionRuntime) -> None:
    """Serve one engine connection until either side ends it. Never raises for peer faults.

    A fault in fixproxy itself while serving this connection is logged and ends this
    connection only: every other session keeps trading.
    """
    conn_id = next(_connection_ids)
    if isinstance(engine, trio.SocketStream):
        engine = RawSocketStream.take_over(engine)
    try:
        await _serve_connection(engine, runtime, conn_id)
    except Exception:
        logger.exception("[%s #%d] internal error; this connection is closed, others carry on",
                         runtime.config.name, conn_id)
    finally:
        # This task owns the socket whatever ends it, a shutdown's cancellation included;
        # closing is idempotent, so the orderly paths' own closes are not repeated work.
        await trio.aclose_forcefully(engine)


async def _serve_connection(engine: trio.abc.Stream, runtime: SessionRuntime,
                            conn_id: int) -> None:
    name = runtime.config.name
    log = _ConnectionLog(logger, {"conn": conn_id, "session": name})
    metrics = runtime.metrics
    status = declare_status(runtime)
    peers = runtime.config.allow_peers
    if not peers.unrestricted and isinstance(engine, NonBlockingSocketStream):
        host = engine.peer_host() or "an unknown address"
        if not peers.allows(host):
            metrics.engine_connections.labels(session=name, result="peer_refused").inc()
            log.warning("%s", peers.log_text(host, name))
            await _refuse_peer(engine, runtime, peers.refusal_text(host))
            return
    engine_framer = FixFramer()
    first: Frame | None = None
    claimed = False
    try:
        with trio.move_on_after(runtime.config.logon_timeout) as logon_wait:
            first = await _receive_logon(engine, engine_framer)
        if logon_wait.cancelled_caught:
            raise _Refusal(f"no Logon received within {runtime.config.logon_timeout:g} s of "
                           f"connecting; the engine must send a Logon (35=A) first", "no_logon")
        if first is None:
            metrics.engine_connections.labels(session=name, result="no_logon").inc()
            log.info("engine closed before sending a Logon")
            await engine.aclose()
            return
        logon_received = time.monotonic()
        wall = datetime.now(UTC)
        _check_window_and_backoff(runtime, wall)
        # The claim comes before the rewrite, which signs: a duplicate connection is refused
        # for the cost of a dictionary look-up, not of an RSA signature in trio's thread,
        # which a storm of reconnecting engines would turn into data-plane latency. Nothing
        # awaits until the key is released or the session starts, so a Logon refused below
        # never makes another connection see the key as held.
        _claim_key(runtime, conn_id)
        claimed = True
        rewritten = _rewrite(first, runtime, force_reset=runtime.manager.reset_due(
            runtime.policy.api_key, wall))
        log.info("engine Logon accepted locally: %s", render(first.raw))
        translator = _translator_for(rewritten, runtime, log)
        status.connection_started(conn_id, time.time())
        _note_clock_skew(status, "engine", rewritten.sending_time, wall.timestamp(), log)
        try:
            gateway, info = await _open_gateway(runtime, log)
        except _Refusal:
            runtime.manager.backoff.record_failure(runtime.policy.api_key, trio.current_time())
            raise
        if runtime.manager.draining:
            # Stopping began while TLS was being opened: no Logon may start now.
            await _close_gateway(gateway)
            raise _Refusal("fixproxy is shutting down; reconnect once it is back", "shutdown")
    except _Refusal as refusal:
        if claimed:
            runtime.manager.release(runtime.policy.api_key, conn_id)
            status.connection_ended(conn_id, time.time())
        if refusal.result != "backoff":
            # A backoff only repeats an earlier failure: the last error stays its cause.
            status.error(f"refused engine connection #{conn_id}: {refusal.text}", time.time())
        metrics.engine_connections.labels(session=name, result=refusal.result).inc()
        if refusal.result in _UPSTREAM_NOT_TRIED:
            metrics.upstream_connects.labels(session=name, result=refusal.result).inc()
        if refusal.result not in ("no_logon", "framing_error"):
            metrics.logons.labels(session=name, result="refused_locally").inc()
        log.warning("refused engine connection: %s", refusal.text)
        await _refuse(engine, runtime, first, refusal.text)
        return
    except trio.BrokenResourceError:
        metrics.engine_connections.labels(session=name, result="no_logon").inc()
        log.info("engine connection broke before its Logon")
        await engine.aclose()
        return
    except BaseException:
        # A fault of fixproxy's own, or a cancellation, while the key was held: give it back,
        # or every later connection with this key would be refused as a duplicate.
        if claimed:
            runtime.manager.release(runtime.policy.api_key, conn_id)
            status.connection_ended(conn_id, time.time())
        raise

    metrics.engine_connections.labels(session=name, result="ok").inc()
    log.info("connected to gateway %s:%d (%s, %s); sending signed Logon",
             runtime.config.host, runtime.config.port, info.tls_version, info.cipher)
    result: RelayResult | None = None
    try:
        result = await _run_session(engine, engine_framer, gateway, rewritten, runtime, log,
                                    logon_received, conn_id, translator, status)
    finally:
        runtime.manager.release(runtime.policy.api_key, conn_id)
        status.connection_ended(conn_id, time.time())
        with trio.CancelScope(shield=True):
            await _close_gateway(gateway)
            # An engine that ended the session itself needs no careful close (and one that
            # floods would be read on); otherwise fixproxy's last messages must not be lost
            # to a reset.
            if result is not None and (result.end_cause or ("", ""))[0] != "engine":
                await _close_engine(engine)
            else:
                await engine.aclose()


async def _receive_logon(engine: trio.abc.Stream, framer: FixFramer) -> Frame | None:
    """Read the engine's first message; None if it closed first."""
    first_bytes: bytes | bytearray = b""
    while True:
        try:
            frame = framer.next_message()
        except FramingError as exc:
            raise _Refusal(describe_bad_start(exc, first_bytes), "framing_error") from exc
        if frame is not None or framer.at_eof:
            return frame
        data = await engine.receive_some(RECEIVE_SIZE)
        first_bytes = first_bytes or data[:16]
        framer.receive_data(data)


def _note_clock_skew(status: SessionStatus, source: str, sending_time: bytes | None,
                     now: float, log: _ConnectionLog | None) -> None:
    """Record how far a peer's SendingTime (52) is from local time; warn about the engine's."""
    stamped = parse_utc_timestamp(sending_time)
    if stamped is None:
        return
    skew = stamped - now
    status.skew(source, skew)
    warning = clock_skew_warning(source, skew) if log is not None else None
    if warning is not None and log is not None:
        log.warning("%s", warning)


def _translator_for(rewritten: RewrittenLogon, runtime: SessionRuntime,
                    log: _ConnectionLog) -> SequenceTranslator | None:
    """The renumbering for an engine that kept its numbers while the gateway leg resets."""
    cfg = runtime.config
    if not rewritten.translated:
        if rewritten.reset_forced and rewritten.msg_seq_num == 1 and cfg.translate_sequence \
                and runtime.sequences is not None:
            # An engine that keeps its numbers, starting afresh: nothing to renumber yet, but
            # its inbound count is kept as for any renumbered connection, or a crash now
            # would leave its next Logon nothing (or an older connection's number) to go on.
            log.info("engine started its sequence numbers afresh (34=1) without asking for "
                     "a reset; keeping count of them for its next Logon")
            return SequenceTranslator(0, 0)
        return None
    next_in = rewritten.engine_next_expected
    source = "its Logon's NextExpectedMsgSeqNum (789)"
    try:
        if next_in is None and runtime.sequences is not None:
            found = runtime.sequences.load_engine_next_in(cfg.name, cfg.api_key,
                                                          cfg.endpoint.target_comp_id)
            if found is not None:
                next_in, source = found
        if next_in is None:
            next_in, source = 1, "no saved state: assuming it reset its inbound numbers"
        translator = SequenceTranslator.for_logon(rewritten.msg_seq_num, next_in)
    except FixProxyError as exc:
        raise _Refusal(f"cannot renumber this session: {exc}", "sequence_state") from exc
    log.info("engine kept its sequence numbers (34=%d) while %s resets: renumbering both "
             "directions; the engine expects %d next, from %s", rewritten.msg_seq_num,
             cfg.endpoint.target_comp_id, next_in, source)
    return translator


def _claim_key(runtime: SessionRuntime, conn_id: int) -> None:
    """Take the session's API key, or refuse: Kalshi allows one connection per key."""
    manager = runtime.manager
    if manager.draining:
        raise _Refusal("fixproxy is shutting down; reconnect once it is back", "shutdown")
    holder = manager.claim(runtime.policy.api_key, runtime.config.name, conn_id)
    if holder is not None:
        raise _Refusal(
            f"the API key {runtime.policy.api_key} is already in use by {holder.describe()}; "
            f"Kalshi allows one FIX connection per API key. Close that connection first, or "
            f"give this session its own key", "duplicate_key")


def _check_window_and_backoff(runtime: SessionRuntime, now: datetime) -> None:
    """Refuse locally what Kalshi would refuse or count against the key's Logon limit."""
    manager = runtime.manager
    window = manager.maintenance_window(now)
    if window is not None:
        raise _Refusal(f"Kalshi's maintenance window is in progress until "
                       f"{window.describe_end()}; reconnect after that", "maintenance")
    api_key = runtime.policy.api_key
    clock = trio.current_time()
    if not manager.backoff.allowed(api_key, clock):
        retry_at = manager.backoff.retry_at(api_key) or clock
        raise _Refusal(held_text(retry_at - clock, now), "backoff")


def held_text(wait: float, now: datetime) -> str:
    """What an engine held by the backoff is told: whole seconds, rounded up, so an engine
    that retries at the time it is given is not held again."""
    seconds = max(1, math.ceil(wait))
    when = now + timedelta(seconds=wait)
    if when.microsecond:
        when = when.replace(microsecond=0) + timedelta(seconds=1)
    return (f"the last Logon attempt with this API key failed and Kalshi rate-limits Logons, "
            f"so fixproxy holds new attempts for {seconds} s more; retry after "
            f"{when.strftime('%H:%M:%S UTC')}")


def _rewrite(first: Frame, runtime: SessionRuntime, *, force_reset: bool) -> RewrittenLogon:
    policy = runtime.policy
    if force_reset and not policy.force_reset:
        # The first Logon after a maintenance window resets on every endpoint.
        policy = replace(policy, force_reset=True)
    try:
        return rewrite_logon(first.raw, policy, runtime.sign, now=time.time())
    except LogonRefused as exc:
        raise _Refusal(exc.text, "invalid_logon") from exc


async def _open_gateway(runtime: SessionRuntime,
                        log: logging.LoggerAdapter[logging.Logger]
                        ) -> tuple[trio.abc.Stream, HandshakeInfo]:
    cfg = runtime.config
    metrics = runtime.metrics
    try:
        gateway, info = await runtime.connect()
    except PinMismatchError as exc:
        metrics.upstream_connects.labels(session=cfg.name, result=exc.result).inc()
        metrics.pin_mismatches.labels(session=cfg.name).inc()
        # An operator's condition, not a fault: one line (the traceback at debug only).
        log.error("gateway %s:%d presented pins %s; configured %s", cfg.host,  # noqa: TRY400
                  cfg.port, list(exc.presented), list(exc.expected))
        log.debug("the pin mismatch in full", exc_info=exc)
        raise _Refusal(
            f"the Kalshi gateway {cfg.host}:{cfg.port} presented a certificate that matches "
            f"none of the configured pins (presented: {', '.join(exc.presented)}). If Kalshi "
            f"rotated its certificate, verify the new one and update pins or pinned_cert "
            f"(fixproxy pin {cfg.host}:{cfg.port} prints them)", exc.result) from exc
    except OutOfDescriptors as exc:
        metrics.upstream_connects.labels(session=cfg.name, result=exc.result).inc()
        raise _Refusal(descriptor_shortage_text(
            open_file_limit(), f"a connection to the Kalshi gateway {cfg.host}:{cfg.port}"),
            exc.result) from exc
    except UpstreamError as exc:
        metrics.upstream_connects.labels(session=cfg.name, result=exc.result).inc()
        raise _Refusal(
            f"fixproxy could not open TLS to the Kalshi gateway {cfg.host}:{cfg.port}: {exc}. "
            f"Check the network and the session's host, port, server_name and ca_file; "
            f"'fixproxy check' tests the connection", exc.result) from exc
    metrics.upstream_connects.labels(session=cfg.name, result="ok").inc()
    metrics.tls_handshake_seconds.labels(session=cfg.name).observe(info.handshake_seconds)
    metrics.set_certificate_expiry(cfg.name, info.leaf_subject,
                                   info.leaf_not_after.timestamp())
    return gateway, info


async def refuse_for_descriptors(engine: trio.SocketStream, runtime: SessionRuntime) -> None:
    """Answer an engine accepted with the spare descriptor while fixproxy has none left:
    counted as ``fixproxy_engine_connections_total{result="fd_limit"}``, a Logout saying so
    (its CompIDs the session's, since its Logon is not read), then a clean close."""
    name = runtime.config.name
    runtime.metrics.engine_connections.labels(session=name, result="fd_limit").inc()
    peers = runtime.config.allow_peers
    if not peers.unrestricted:
        try:
            host = str(engine.socket.getpeername()[0])
        except OSError:
            host = ""
        if not peers.allows(host):
            # Its Logon is not read, so there is nothing to mirror: a peer not allowed must
            # not learn the session's CompIDs (the API key).
            await engine.aclose()
            return
    text = descriptor_shortage_text(open_file_limit(), "this connection")
    await _refuse(engine, runtime, None, text)


async def _refuse_peer(engine: trio.abc.Stream, runtime: SessionRuntime, text: str) -> None:
    """Refuse an engine whose address is not in allow_peers.

    The Logout only mirrors the CompIDs of the peer's own Logon: the session's defaults would
    tell an unknown party the API key. A peer that sends no readable Logon is just closed.
    """
    first: Frame | None = None
    with trio.move_on_after(runtime.config.logon_timeout):
        with contextlib.suppress(_Refusal, trio.BrokenResourceError, trio.ClosedResourceError):
            first = await _receive_logon(engine, FixFramer())
    ids = _mirrored_ids(first)
    if ids is None:
        await engine.aclose()
        return
    await _refuse(engine, runtime, first, text, ids=ids)


async def _refuse(engine: trio.abc.Stream, runtime: SessionRuntime, first: Frame | None,
                  text: str, *, ids: tuple[bytes, bytes] | None = None) -> None:
    """Send a local Logout, half-close, drain briefly and close: the clean local answer."""
    sender, target = ids if ids is not None else _counterparty_ids(first, runtime)
    message = admin.logout(f"fixproxy: {text}", sender=sender, target=target, seq=1,
                           now=time.time())
    await _close_engine(engine, last=message)


async def _close_engine(engine: trio.abc.Stream, *, last: bytes = b"") -> None:
    """Write ``last``, half-close, read and discard what the engine still sends (bounded),
    then close: the order that makes the close a FIN.

    Closing a socket with unread input makes the kernel send a reset, and a reset discards
    what is still in the send buffer: fixproxy's last messages and its Logout.
    """
    with trio.move_on_after(DRAIN_TIMEOUT):
        try:
            if last:
                await engine.send_all(last)
            if isinstance(engine, trio.abc.HalfCloseableStream):
                await engine.send_eof()
            drained = 0
            while drained < DRAIN_LIMIT:
                chunk = await engine.receive_some(RECEIVE_SIZE)
                if not chunk:
                    break
                drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await engine.aclose()


def _mirrored_ids(first: Frame | None) -> tuple[bytes, bytes] | None:
    """(sender, target) for an answer to ``first``: its own 56 and 49; None if it has none."""
    if first is None:
        return None
    try:
        logon = FixMessage.parse(first.raw)
    except FramingError:
        return None
    sender, target = logon.get(tags.TARGET_COMP_ID), logon.get(tags.SENDER_COMP_ID)
    return None if not sender or not target else (sender, target)


def _counterparty_ids(first: Frame | None, runtime: SessionRuntime) -> tuple[bytes, bytes]:
    """CompIDs for a local answer: mirror the engine's Logon so the engine accepts it."""
    sender = runtime.policy.target_comp_id.encode()
    target = runtime.policy.api_key.encode()
    if first is not None:
        try:
            logon = FixMessage.parse(first.raw)
        except FramingError:
            return sender, target
        sender = logon.get(tags.TARGET_COMP_ID) or sender
        target = logon.get(tags.SENDER_COMP_ID) or target
    return sender, target


class _TrioControl:
    """The relay's rare events, carried out in trio's thread (see relay.ControlPlane), so that
    the manager, the status board and the prometheus-client metrics are written by trio's
    thread alone.

    The Logon's outcome is carried out before the relay goes on (``trio.from_thread``: one
    round trip per session), so an engine that sees a refusal and reconnects at once finds the
    backoff already recorded. Errors and clock skew only schedule their update
    (``TrioToken.run_sync_soon``): the session thread never waits for them.
    """

    def __init__(self, runtime: SessionRuntime, status: SessionStatus, conn_id: int,
                 log: _ConnectionLog, logon: bytes = b"") -> None:
        self.runtime = runtime
        self.logon = logon
        """The signed Logon: the drop-copy Logon copies its report-format flags."""
        self.status = status
        self.conn_id = conn_id
        self.log = log
        self.token = trio.lowlevel.current_trio_token()
        self.trio_thread = threading.get_ident()
        self.session_up = runtime.metrics.session_up.labels(session=runtime.config.name)
        self.counted_up = False
        self.ended = False

    def logon_answered(self, accepted: bool, text: str, seconds: float) -> None:
        self._now(self._logon_answered, accepted, text, seconds)

    def logon_failed(self, result: str | None) -> None:
        self._now(self._logon_failed, result)

    def _now(self, work: Callable[..., None], *args: object) -> None:
        """Run ``work`` in trio's thread and wait for it (at once when already there)."""
        if threading.get_ident() == self.trio_thread:
            work(*args)
        else:
            trio.from_thread.run_sync(work, *args, trio_token=self.token)

    def error(self, text: str) -> None:
        self.token.run_sync_soon(self.status.error, text, time.time())

    def recover(self, state: RecoveryState) -> tuple[tuple[ExecId, bytes], ...]:
        """Run the drop-copy recovery in trio and wait for it (the relay holds the Logon
        answer meanwhile); a fault of fixproxy's own recovers nothing, never the session."""
        try:
            return trio.from_thread.run(
                recover_session, self.runtime, state, report_format_flags(self.logon),
                self.conn_id, self.log, trio_token=self.token)
        except Exception:
            self.log.exception("internal error in drop-copy recovery; the session goes on "
                               "without it")
            return ()

    def save(self, state: RecoveryState) -> None:
        self.token.run_sync_soon(save_recovery, self.runtime, state, self.log)

    def skew(self, source: str, seconds: float) -> None:
        self.token.run_sync_soon(self.status.skew, source, seconds)

    def _logon_answered(self, accepted: bool, text: str, seconds: float) -> None:
        cfg = self.runtime.config
        metrics = self.runtime.metrics
        manager = self.runtime.manager
        if accepted:
            manager.backoff.record_success(cfg.api_key)
            manager.logon_accepted(cfg.api_key, datetime.now(UTC))
            metrics.logons.labels(session=cfg.name, result="accepted").inc()
            metrics.logon_seconds.labels(session=cfg.name).observe(seconds)
            if not self.ended:
                # Counted up and down by the connection that logged on, so a refused
                # duplicate cannot mark a live session down.
                self.session_up.inc()
                self.counted_up = True
        else:
            manager.backoff.record_failure(cfg.api_key, trio.current_time())
            metrics.logons.labels(session=cfg.name, result="refused_by_gateway").inc()
            self.status.error(f"the gateway refused the Logon: {text}", time.time())

    def _logon_failed(self, result: str | None) -> None:
        """The Logon got no usable answer: hold the key's next attempt (Kalshi rate-limits
        Logons, and an engine reconnecting in a loop would hit the limit every time)."""
        cfg = self.runtime.config
        self.runtime.manager.backoff.record_failure(cfg.api_key, trio.current_time())
        if result is not None:
            self.runtime.metrics.logons.labels(session=cfg.name, result=result).inc()

    def finish(self) -> None:
        """The session's thread is done: count the session down if it was counted up."""
        self.ended = True
        if self.counted_up:
            self.session_up.dec()
            self.counted_up = False


async def _run_session(engine: trio.abc.Stream, engine_framer: FixFramer,
                       gateway: trio.abc.Stream, rewritten: RewrittenLogon,
                       runtime: SessionRuntime, log: _ConnectionLog, logon_received: float,
                       conn_id: int, translator: SequenceTranslator | None,
                       status: SessionStatus) -> RelayResult | None:
    """Hand the connection pair to a session relay and wait for it to end; its result.

    The relay runs off trio (:func:`_relay_in_threads`; ``runtime.run_relay`` replaces that in
    tests); trio waits for it inside this task, so the nursery and the drain stay structured.
    A cancellation (a second signal, a drain that timed out) aborts the relay, which then
    ends promptly.
    """
    cfg = runtime.config
    # trio's clock, read from the relay's thread through the clock object (its current_time is
    # a plain read of the monotonic counter), so the machine's times and /status agree.
    clock = trio.lowlevel.current_clock().current_time
    machine = SessionMachine(
        now=clock(), heart_bt_int=rewritten.heart_bt_int,
        grace=cfg.liveness_grace, logout_wait=cfg.logout_wait, logon_wait=cfg.logon_timeout,
        logout_on_engine_disconnect=cfg.logout_on_engine_disconnect)
    machine.engine_activity(machine.now, rewritten.msg_seq_num)
    machine.handle(Event.TLS_READY, machine.now)
    status.session_started(conn_id, machine, translated=translator is not None)
    control = _TrioControl(runtime, status, conn_id, log, rewritten.raw)
    tracker = recovery_tracker(runtime, log)
    live = open_live(runtime, translator, log)
    relay = SessionRelay(
        engine=_socket_of(engine), gateway=_socket_of(gateway), logon=rewritten.raw,
        engine_framer=engine_framer, machine=machine, translator=translator,
        reset_forced=rewritten.reset_forced,
        journal=None if runtime.proxy is None else open_journal(
            runtime.proxy, cfg.name, runtime.metrics.state_writes),
        to_gateway=runtime.metrics.traffic(cfg.name, Direction.ENGINE_TO_GATEWAY),
        to_engine=runtime.metrics.traffic(cfg.name, Direction.GATEWAY_TO_ENGINE),
        control=control, log=log, conn_id=conn_id,
        gateway_ids=(runtime.policy.api_key.encode(), runtime.policy.target_comp_id.encode()),
        engine_ids=_counterparty_ids(None, runtime), logon_received=logon_received,
        clock=clock, recovery=tracker, recovery_plane=control if tracker is not None else None,
        live=live)
    runtime.manager.register(conn_id, relay.shutdown)
    # The counters are the session's, across its connections: this one's are the difference.
    counted_before = _traffic_totals(relay)
    result: RelayResult | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_abort_when_cancelled, relay)
            if runtime.recovery is not None:
                nursery.start_soon(_save_recovery_every, relay,
                                   runtime.recovery.config.save_interval)
            if runtime.run_relay is not None:
                result = await runtime.run_relay(relay)
            else:
                result = await _relay_in_threads(relay, runtime.manager,
                                                 f"fixproxy session {cfg.name} #{conn_id}")
            nursery.cancel_scope.cancel()
    finally:
        relay.close()
        if live is not None:
            live.close()
        control.finish()
        runtime.manager.unregister(conn_id)
        if result is not None and result.logged_on:
            # The relay's translator: recovery shifts the gateway's numbers past its reports.
            save_sequences(runtime, machine, relay.translator, log)
            if tracker is not None:
                save_recovery(runtime, tracker.snapshot(
                    time.time(), clean_end=ended_cleanly(machine)), log)
        if result is not None and (result.logged_on or result.crashed is not None):
            # A fault before the Logon's answer still sent the engine a Logout: counted.
            _count_end(runtime, result, log)
        counted = [now - before for now, before in zip(_traffic_totals(relay), counted_before,
                                                       strict=True)]
        log.info("session closed (%s): %s; this connection: engine->gateway %d messages, %d "
                 "bytes, gateway->engine %d messages, %d bytes", machine.state,
                 machine.close_reason, *counted)
    return result


async def _relay_in_threads(relay: SessionRelay, manager: SessionManager,
                            thread_name: str) -> RelayResult:
    """Run ``relay`` to its end: in a thread of its own until logged on; then on in that
    thread while it is the only live session, else in the data plane's shared thread
    (:mod:`fixproxy.proxy.dataplane`), where the sessions do not take turns at the
    interpreter lock. Where no data plane runs, a session keeps its thread."""
    plane = manager.data_plane
    result = await trio.to_thread.run_sync(
        relay.run if plane is None else relay.run_logon, abandon_on_cancel=False,
        limiter=manager.session_threads, thread_name=thread_name)
    if result is not None:
        return result
    assert plane is not None  # only run_logon stops before the end
    if manager.alone_relaying == 0 and plane.relaying == 0:
        # Alone, a thread of its own costs no turns at the lock and saves the shared loop's
        # bookkeeping on every wake-up; sessions that log on meanwhile join the data plane.
        manager.alone_relaying += 1
        try:
            return await trio.to_thread.run_sync(
                relay.run_rest, abandon_on_cancel=False, limiter=manager.session_threads,
                thread_name=thread_name)
        finally:
            manager.alone_relaying -= 1
    token = trio.lowlevel.current_trio_token()
    ended = trio.Event()
    results: list[RelayResult] = []

    def done(outcome: RelayResult) -> None:  # in the data plane's thread
        results.append(outcome)
        token.run_sync_soon(ended.set)

    if not plane.submit(relay, done):
        return await trio.to_thread.run_sync(
            relay.run_rest, abandon_on_cancel=False, limiter=manager.session_threads,
            thread_name=thread_name)
    # The relay owns the sockets until it reports its end, cancelled or not: a cancellation
    # aborts it (_abort_when_cancelled) and this waits for the report.
    with trio.CancelScope(shield=True):
        await ended.wait()
    return results[0]


def _traffic_totals(relay: SessionRelay) -> tuple[int, int, int, int]:
    """(messages, bytes) engine to gateway, then gateway to engine, as counted so far."""
    up, down = relay.to_gateway, relay.to_engine
    return sum(up.messages.values()), up.bytes, sum(down.messages.values()), down.bytes


async def _abort_when_cancelled(relay: SessionRelay) -> None:
    try:
        await trio.sleep_forever()
    finally:
        relay.abort()


async def _save_recovery_every(relay: SessionRelay, interval: float) -> None:
    """Bound what a killed fixproxy loses of the recovery state to one interval."""
    while True:
        await trio.sleep(interval)
        relay.save_recovery()


def _socket_of(stream: trio.abc.Stream) -> socket.socket:
    if not isinstance(stream, NonBlockingSocketStream):
        raise FixProxyError(f"the session relay needs socket streams, not {stream!r}")
    return stream.socket


def _count_end(runtime: SessionRuntime, result: RelayResult, log: _ConnectionLog) -> None:
    """Count how a logged-on session ended: fixproxy_logouts_total, heartbeat timeouts."""
    name = runtime.config.name
    metrics = runtime.metrics
    initiator, reason = result.end_cause or ("proxy", "other")
    if reason == "heartbeat_timeout":
        metrics.heartbeat_timeouts.labels(session=name).inc()
    if runtime.manager.maintenance_window(datetime.now(UTC)) is not None:
        reason = "maintenance"  # expected: Kalshi disconnects during its window
        log.info("session ended during Kalshi's maintenance window, as expected")
    metrics.logouts.labels(session=name, initiator=initiator, reason=reason).inc()


async def _close_gateway(gateway: trio.abc.Stream) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT) as scope:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await gateway.aclose()
    if scope.cancelled_caught:
        await trio.aclose_forcefully(gateway)
