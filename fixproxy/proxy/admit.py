"""Relay one engine connection to one gateway connection.

Theory of operation
-------------------
An engine connection goes through three phases:

1. **Logon.** Read the engine's first message within ``logon_timeout``. It must be a Logon that
   :func:`fixproxy.fix.logon.rewrite_logon` accepts. Anything fixproxy refuses before Kalshi sees
   it (bad framing, wrong CompIDs, bad HeartBtInt, unreachable gateway, TLS or pin failure) is
   answered to the engine as a Logout (35=5) whose Text (58) says what is wrong and what to
   change, then a clean close: write, half-close, drain briefly, close, so the Logout is not lost
   to a TCP reset.
2. **Upstream.** Only then is the TLS connection opened (the connect callable checks CA,
   hostname and pins after an explicit handshake), and the signed Logon sent. The gateway's
   first answer passes through untouched, except that 141=Y is removed from a Logon answer when
   fixproxy forced the reset and the engine did not ask for one (QuickFIX would otherwise log on
   a second time).
3. **Relay.** Two pumps, one per direction, each reading a chunk, framing it, and writing the
   complete frames before reading again. Writing before reading is the backpressure: a slow
   reader stalls its writer's socket instead of growing a queue, so memory per connection is
   bounded by one read plus one partial frame. When a whole chunk is complete frames (the usual
   case) the chunk itself is written: the bytes that arrived, in one write. When either side
   ends, the other pump is cancelled and both streams are closed; frames read from the side
   that ended were already written to the other.

The alternative rejected is a queue between a reader and a writer task per direction: it adds
two task switches per message and needs its own bound, for no gain over the socket's buffers.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import MutableMapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import trio

from fixproxy.errors import (
    FixError,
    FixProxyError,
    FramingError,
    LogonRefused,
    PinMismatchError,
    SessionError,
    UpstreamError,
)
from fixproxy.fix import logout as admin
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, header_value, parse_utc_timestamp, render
from fixproxy.fix.framer import FixFramer, Frame
from fixproxy.fix.logon import (
    RewrittenLogon,
    rewrite_logon,
    strip_forced_reset,
)
from fixproxy.net.streams import NonBlockingSocketStream, RawSocketStream
from fixproxy.net.tls import HandshakeInfo
from fixproxy.ops.journal import (
    ENGINE_TO_GATEWAY,
    GATEWAY_TO_ENGINE,
    SessionJournal,
    open_journal,
)
from fixproxy.ops.metrics import TrafficCounters
from fixproxy.ops.seqstore import SessionSequences
from fixproxy.ops.status import SessionStatus
from fixproxy.proxy.runtime import SessionRuntime, declare_status
from fixproxy.session.machine import Action, Event, Session, State
from fixproxy.session.sequence import SequenceTranslator, read_seq_num

logger = logging.getLogger("fixproxy.relay")

RECEIVE_SIZE: Final = 65536
"""Bytes asked of the socket per read: large enough that a burst is one read and one write."""
DRAIN_TIMEOUT: Final = 2.0
"""Seconds spent reading what an engine still sends after its refusal, so close() sends FIN."""
DRAIN_LIMIT: Final = 1 << 20
"""Bytes read and discarded at most while draining a refused engine."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds allowed for a TLS close_notify before the gateway socket is closed regardless."""

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
        rewritten = _rewrite(first, runtime, force_reset=runtime.manager.reset_due(
            runtime.policy.api_key, wall))
        log.info("engine Logon accepted locally: %s", render(first.raw))
        translator = _translator_for(rewritten, runtime, log)
        _claim_key(runtime, conn_id)
        claimed = True
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

    metrics.engine_connections.labels(session=name, result="ok").inc()
    log.info("connected to gateway %s:%d (%s, %s); sending signed Logon",
             runtime.config.host, runtime.config.port, info.tls_version, info.cipher)
    try:
        await _SessionRelay(engine, engine_framer, gateway, rewritten, runtime, log,
                            logon_received, conn_id, translator, status).run()
    finally:
        runtime.manager.release(runtime.policy.api_key, conn_id)
        status.connection_ended(conn_id, time.time())
        with trio.CancelScope(shield=True):
            await _close_gateway(gateway)
            await engine.aclose()


async def _receive_logon(engine: trio.abc.Stream, framer: FixFramer) -> Frame | None:
    """Read the engine's first message; None if it closed first."""
    first_bytes: bytes | bytearray = b""
    while True:
        try:
            frame = framer.next_message()
        except FramingError as exc:
            raise _Refusal(_describe_bad_start(exc, first_bytes), "framing_error") from exc
        if frame is not None or framer.at_eof:
            return frame
        data = await engine.receive_some(RECEIVE_SIZE)
        first_bytes = first_bytes or data[:16]
        framer.receive_data(data)


async def _receive_frame(stream: trio.abc.Stream, framer: FixFramer) -> Frame | None:
    """Read until one complete frame is available; None on a clean end of stream."""
    while True:
        frame = framer.next_message()
        if frame is not None:
            return frame
        if framer.at_eof:
            return None
        framer.receive_data(await stream.receive_some(RECEIVE_SIZE))


def _describe_bad_start(exc: FramingError, first_bytes: bytes | bytearray) -> str:
    """Explain a framing error on the first bytes, recognising common wrong clients."""
    if first_bytes[:1] == b"\x16":
        return ("the engine started a TLS handshake, but this listener speaks plain TCP: turn "
                "TLS off in the engine (SocketUseSSL=N); fixproxy does the TLS to Kalshi")
    if first_bytes.split(b" ", 1)[0] in (b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"):
        return ("an HTTP request reached a FIX listener; point FIX engines here, and "
                "HTTP clients at the metrics address")
    if first_bytes.startswith(b"8=FIX.4"):
        return (f"the engine speaks {first_bytes[2:9].decode('ascii', 'replace')}; Kalshi "
                f"requires BeginString FIXT.1.1 with DefaultApplVerID FIX.5.0SP2")
    return f"the engine's data is not valid FIX: {exc}"


CLOCK_SKEW_WARNING: Final = 5.0
"""Seconds between the engine's SendingTime and local time worth a warning; Kalshi rejects
messages more than 30 s off (Reject 373=10)."""


def _note_clock_skew(status: SessionStatus, source: str, sending_time: bytes | None,
                     now: float, log: _ConnectionLog | None) -> None:
    """Record how far a peer's SendingTime (52) is from local time; warn about the engine's."""
    stamped = parse_utc_timestamp(sending_time)
    if stamped is None:
        return
    skew = stamped - now
    status.skew(source, skew)
    if log is not None and abs(skew) > CLOCK_SKEW_WARNING:
        log.warning("the %s's SendingTime (52) is %+.1f s off local time; Kalshi rejects "
                    "messages more than 30 s off (Reject 373=10): synchronise the clocks",
                    source, skew)



def _translator_for(rewritten: RewrittenLogon, runtime: SessionRuntime,
                    log: _ConnectionLog) -> SequenceTranslator | None:
    """The renumbering for an engine that kept its numbers while the gateway leg resets."""
    if not rewritten.translated:
        return None
    cfg = runtime.config
    next_in = rewritten.engine_next_expected
    source = "its Logon's NextExpectedMsgSeqNum (789)"
    try:
        if next_in is None and runtime.sequences is not None:
            saved = runtime.sequences.load(cfg.name, cfg.api_key, cfg.endpoint.target_comp_id)
            if saved is not None:
                next_in, source = saved.engine_next_in, "the state saved by the last connection"
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
        wait = retry_at - clock
        when = (now + timedelta(seconds=wait)).strftime("%H:%M:%S UTC")
        raise _Refusal(f"the last Logon attempt with this API key failed and Kalshi rate-limits "
                       f"Logons, so fixproxy holds new attempts for {wait:.0f} s more; retry "
                       f"after {when}", "backoff")


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
        log.exception("gateway %s:%d presented pins %s; configured %s", cfg.host, cfg.port,
                  list(exc.presented), list(exc.expected))
        raise _Refusal(
            f"the Kalshi gateway {cfg.host}:{cfg.port} presented a certificate that matches "
            f"none of the configured pins (presented: {', '.join(exc.presented)}). If Kalshi "
            f"rotated its certificate, verify the new one and update pins or pinned_cert "
            f"(fixproxy pin {cfg.host}:{cfg.port} prints them)", exc.result) from exc
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
    with trio.move_on_after(DRAIN_TIMEOUT):
        try:
            await engine.send_all(message)
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


class _SessionRelay:
    """The session phase: two pumps and a timer, with the state machine deciding the ends.

    Each destination stream has a lock because fixproxy's own Logouts share it with the pump
    that normally writes there; a pump holds it only while writing one batch, so a Logout
    never lands in the middle of a relayed message.
    """

    def __init__(self, engine: trio.abc.Stream, engine_framer: FixFramer,
                 gateway: trio.abc.Stream, rewritten: RewrittenLogon, runtime: SessionRuntime,
                 log: _ConnectionLog, logon_received: float, conn_id: int,
                 translator: SequenceTranslator | None, status: SessionStatus) -> None:
        cfg = runtime.config
        self.conn_id = conn_id
        self.status = status
        self.engine = engine
        self.gateway = gateway
        self.engine_framer = engine_framer
        self.gateway_framer = FixFramer()
        self.rewritten = rewritten
        self.runtime = runtime
        self.log = log
        self.logon_received = logon_received
        self.engine_lock = trio.Lock()
        self.gateway_lock = trio.Lock()
        self.to_gateway = runtime.metrics.traffic(cfg.name, "engine_to_gateway")
        self.to_engine = runtime.metrics.traffic(cfg.name, "gateway_to_engine")
        self.session = Session(
            now=trio.current_time(), heart_bt_int=rewritten.heart_bt_int,
            grace=cfg.liveness_grace, logout_wait=cfg.logout_wait,
            logon_wait=cfg.logon_timeout,
            logout_on_engine_disconnect=cfg.logout_on_engine_disconnect)
        self.session.engine_last_seq = rewritten.msg_seq_num
        self.translator = translator
        status.session_started(conn_id, self.session, translated=translator is not None)
        self.journal: SessionJournal | None = (
            None if runtime.proxy is None else open_journal(runtime.proxy, cfg.name))
        self.engine_input_open = True
        self.close_due = False
        self.logout_cause = ""
        self.end_cause: tuple[str, str] | None = None
        """(initiator, reason) of the first event that ended the session, for metrics."""
        self.state_changed = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.session_up = runtime.metrics.session_up.labels(session=cfg.name)
        self.counted_up = False

    async def run(self) -> None:
        cfg = self.runtime.config
        metrics = self.runtime.metrics
        self.session.handle(Event.TLS_READY, trio.current_time())
        try:
            await self.gateway.send_all(self.rewritten.raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            metrics.logons.labels(session=cfg.name, result="no_answer").inc()
            await self.event(Event.GATEWAY_CLOSED, "the gateway closed the connection before "
                             "the Logon could be sent")
            return
        self.session.handle(Event.LOGON_SENT, trio.current_time())
        self._journal(ENGINE_TO_GATEWAY, self.rewritten.raw)
        self.to_gateway.count(tags.MT_LOGON)
        self.to_gateway.bytes += len(self.rewritten.raw)
        self.log.info("sent Logon: %s", render(self.rewritten.raw))
        self.runtime.manager.register(self.conn_id, self.shutdown)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._timer)
                nursery.start_soon(self._gateway_pump)
                nursery.start_soon(self._engine_pump)
        finally:
            if self.journal is not None:
                self.journal.close()
            self.runtime.manager.unregister(self.conn_id)
            self._save_sequences()
            self._count_end()
            if self.counted_up:
                self.session_up.dec()
        self.log.info("session closed (%s): %s; engine->gateway %d bytes, gateway->engine %d "
                      "bytes", self.session.state, self.session.close_reason,
                      self.to_gateway.bytes, self.to_engine.bytes)

    def _save_sequences(self) -> None:
        store = self.runtime.sequences
        cfg = self.runtime.config
        if store is None or not cfg.translate_sequence or not self.counted_up:
            return
        translator = self.translator
        in_offset = translator.in_offset if translator is not None else 0
        sequences = SessionSequences(
            api_key=cfg.api_key, endpoint=cfg.endpoint.target_comp_id,
            engine_next_out=self.session.engine_last_seq + 1,
            engine_next_in=self.session.gateway_last_seq + 1 + in_offset)
        try:
            store.save(cfg.name, sequences)
        except FixProxyError as exc:
            self.log.error("%s", exc)  # noqa: TRY400  the message says it all

    def _count_end(self) -> None:
        """Count how a logged-on session ended: fixproxy_logouts_total, heartbeat timeouts."""
        if not self.counted_up:
            return
        name = self.runtime.config.name
        metrics = self.runtime.metrics
        initiator, reason = self.end_cause or ("proxy", "other")
        if reason == "heartbeat_timeout":
            metrics.heartbeat_timeouts.labels(session=name).inc()
        if self.runtime.manager.maintenance_window(datetime.now(UTC)) is not None:
            reason = "maintenance"  # expected: Kalshi disconnects during its window
            self.log.info("session ended during Kalshi's maintenance window, as expected")
        metrics.logouts.labels(session=name, initiator=initiator, reason=reason).inc()

    async def shutdown(self) -> None:
        """Log the session out because fixproxy is stopping."""
        await self.event(Event.SHUTDOWN)

    # --- events and actions -------------------------------------------------------------

    async def event(self, event: Event, reason: str = "", *, defer_close: bool = False) -> bool:
        """Feed ``event`` to the machine and carry out its actions; True: swallow the
        message that caused it.

        With ``defer_close`` the caller forwards that message first and then calls
        :meth:`close_if_due`, so a Logout answer reaches its peer before the close.
        """
        before = self.session.state
        if before is State.LOGON_SENT and event is Event.GATEWAY_SILENT:
            self._logon_failed()
        if self.end_cause is None and event in _END_CAUSES:
            self.end_cause = _END_CAUSES[event]
            if event is not Event.ENGINE_LOGOUT:
                self.status.error(f"connection #{self.conn_id} ended: "
                                  f"{reason or _EVENT_TEXT.get(event, str(event))}", time.time())
        actions = self.session.handle(event, trio.current_time(), reason)
        if self.session.state is not before:
            self.log.info("%s -> %s on %s%s", before, self.session.state, event,
                          f" ({reason})" if reason else "")
            self.state_changed.set()
            self.state_changed = trio.Event()
        text = reason or _EVENT_TEXT.get(event, str(event))
        for action in actions:
            if action is Action.LOGOUT_TO_GATEWAY:
                # The engine is later told the cause, not the gateway's answer to it.
                self.logout_cause = text
                await self._logout_to_gateway(text)
            elif action is Action.LOGOUT_TO_ENGINE:
                await self._logout_to_engine(self.logout_cause or text)
            elif action is Action.STOP_ENGINE_INPUT:
                self.engine_input_open = False
            elif action is Action.CLOSE:
                self.close_due = True
        if not defer_close:
            await self.close_if_due()
        return Action.SWALLOW in actions

    async def close_if_due(self) -> None:
        if self.close_due:
            await self._close()

    async def _logout_to_gateway(self, text: str) -> None:
        policy = self.runtime.policy
        self.session.engine_last_seq += 1
        seq = self.session.engine_last_seq
        if self.translator is not None:
            seq = self.translator.gateway_seq_for_engine(seq)
        message = admin.logout(text, sender=policy.api_key.encode(),
                               target=policy.target_comp_id.encode(), seq=seq,
                               now=time.time())
        self.log.info("sending Logout to the gateway: %s", text)
        # Bounded: a pump blocked on a full window (a dead host) may hold the lock for good.
        with trio.move_on_after(CLOSE_TIMEOUT), \
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await _send_locked(self.gateway, self.gateway_lock, message)
            self._journal("proxy_to_gateway", message)

    async def _logout_to_engine(self, text: str) -> None:
        self.session.gateway_last_seq += 1
        seq = self.session.gateway_last_seq
        if self.translator is not None:
            seq = self.translator.engine_seq_for_gateway(seq)
        sender, target = _counterparty_ids(None, self.runtime)
        message = admin.logout(f"fixproxy: {text}", sender=sender, target=target, seq=seq,
                               now=time.time())
        self.log.info("sending Logout to the engine: %s", text)
        with trio.move_on_after(CLOSE_TIMEOUT), \
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await _send_locked(self.engine, self.engine_lock, message)
            self._journal("proxy_to_engine", message)

    async def _close(self) -> None:
        # Let a batch being written finish, so the peer never gets half a message.
        with trio.move_on_after(CLOSE_TIMEOUT):
            async with self.engine_lock, self.gateway_lock:
                pass
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    # --- tasks ----------------------------------------------------------------------------

    async def _timer(self) -> None:
        session = self.session
        while True:
            deadline = session.next_deadline()
            changed = self.state_changed
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await changed.wait()
            due = session.check_timers(trio.current_time())
            if due is not None:
                await self.event(due)

    async def _gateway_pump(self) -> None:
        frame: Frame | None = None
        try:
            frame = await _receive_frame(self.gateway, self.gateway_framer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except FramingError as exc:
            self._logon_failed()
            await self.event(Event.GATEWAY_ERROR, f"the gateway sent invalid FIX: {exc}")
            return
        if frame is None:
            self._logon_failed()
            self.runtime.metrics.logons.labels(session=self.runtime.config.name,
                                               result="no_answer").inc()
            await self.event(Event.GATEWAY_CLOSED, "the Kalshi gateway closed the connection "
                             "without answering the Logon; check that the API key is enabled "
                             f"for {self.runtime.config.endpoint.target_comp_id}")
            return
        if not await self._forward_logon_answer(frame):
            return
        await self._pump(self.gateway, self.engine, self.engine_lock, self.gateway_framer,
                         self.to_engine, from_engine=False)

    def _journal(self, direction: str, data: bytes) -> None:
        """Record what was written on a leg, if the journal is on (the pumps inline this)."""
        if self.journal is not None:
            self.journal.record(direction, data, self.conn_id)

    def _logon_failed(self) -> None:
        """The Logon got no usable answer: hold the key's next attempt (Kalshi rate-limits
        Logons, and an engine reconnecting in a loop would hit the limit every time)."""
        self.runtime.manager.backoff.record_failure(self.runtime.config.api_key,
                                                    trio.current_time())

    async def _engine_pump(self) -> None:
        await self._pump(self.engine, self.gateway, self.gateway_lock, self.engine_framer,
                         self.to_gateway, from_engine=True)

    async def _forward_logon_answer(self, frame: Frame) -> bool:
        """Pass the gateway's first message to the engine; True if it was a Logon."""
        cfg = self.runtime.config
        metrics = self.runtime.metrics
        self.to_engine.count(frame.msg_type)
        self.session.gateway_activity(trio.current_time(), read_seq_num(frame.raw))
        data = frame.raw
        accepted = frame.msg_type == tags.MT_LOGON
        manager = self.runtime.manager
        _note_clock_skew(self.status, "gateway", header_value(frame.raw, tags.SENDING_TIME),
                         time.time(), None)
        if accepted:
            manager.backoff.record_success(cfg.api_key)
            manager.logon_accepted(cfg.api_key, datetime.now(UTC))
            metrics.logons.labels(session=cfg.name, result="accepted").inc()
            metrics.logon_seconds.labels(session=cfg.name).observe(
                time.monotonic() - self.logon_received)
            # Counted up and down by the connection that logged on, so a refused duplicate
            # cannot mark a live session down.
            self.session_up.inc()
            self.counted_up = True
            if self.rewritten.reset_forced:
                data = strip_forced_reset(data)
            if self.translator is not None:
                data = self.translator.to_engine(data)
            self.log.info("gateway accepted the Logon: %s", render(frame.raw))
        else:
            manager.backoff.record_failure(cfg.api_key, trio.current_time())
            metrics.logons.labels(session=cfg.name, result="refused_by_gateway").inc()
            self.log.warning("gateway answered the Logon with: %s", render(frame.raw))
            _explain_gateway_answer(frame.raw, self.log)
            self.status.error(f"the gateway refused the Logon: {render(frame.raw)}",
                              time.time())
        # The machine learns of the answer before the engine can react to it (an engine may
        # log out the instant it is logged on); a close it orders waits for the forward.
        if accepted:
            await self.event(Event.GATEWAY_LOGON, defer_close=True)
        elif frame.msg_type == tags.MT_LOGOUT:
            await self.event(Event.GATEWAY_LOGOUT, "the gateway refused the Logon",
                             defer_close=True)
        self.to_engine.bytes += len(data)
        try:
            await _send_locked(self.engine, self.engine_lock, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.event(Event.ENGINE_CLOSED, "the engine closed the connection")
            return False
        self._journal(GATEWAY_TO_ENGINE, data)
        if not accepted and frame.msg_type != tags.MT_LOGOUT:
            # Only now: fixproxy's Logout to the engine must follow the answer it explains,
            # not overtake it.
            await self.event(Event.GATEWAY_ERROR, "the gateway answered the Logon with "
                             f"35={frame.msg_type.decode('ascii', 'replace')}",
                             defer_close=True)
        await self.close_if_due()
        return accepted

    def _note(self, raw: bytes, msg_type: bytes, counters: TrafficCounters, *,
              from_engine: bool) -> None:
        """Look into a Reject, BusinessMessageReject or Heartbeat on its way through."""
        if msg_type == tags.MT_HEARTBEAT:
            _note_clock_skew(self.status, "engine" if from_engine else "gateway",
                             header_value(raw, tags.SENDING_TIME), time.time(), None)
        elif not from_engine:
            counters.count_reject(msg_type, raw)
            _explain_gateway_answer(raw, self.log)

    async def _pump(self, src: trio.abc.Stream, dst: trio.abc.Stream, dst_lock: trio.Lock,
                    framer: FixFramer, counters: TrafficCounters, *, from_engine: bool) -> None:
        """Copy complete frames from ``src`` to ``dst`` until ``src`` ends or fails.

        Logouts are the only messages looked at: each is handed to the state machine, which
        may swallow it. Everything else leaves as the bytes that arrived.
        """
        session = self.session
        translate = None
        if self.translator is not None:
            translate = self.translator.to_gateway if from_engine else self.translator.to_engine
        logout_event = Event.ENGINE_LOGOUT if from_engine else Event.GATEWAY_LOGOUT
        activity = session.engine_activity if from_engine else session.gateway_activity
        latency = counters.latency
        messages = counters.messages
        journal = self.journal
        direction = ENGINE_TO_GATEWAY if from_engine else GATEWAY_TO_ENGINE
        clock = time.perf_counter
        pending = framer.buffered
        data: bytes | bytearray = b""
        read_at = clock()
        while True:
            parts: list[bytes] = []
            error: FixError | None = None
            logout: bytes | None = None
            last = b""
            try:
                frame = framer.next_raw()
                while frame is not None:
                    raw, msg_type = frame
                    try:  # a MsgType seen before: one dict update, no call
                        messages[msg_type] += 1
                    except KeyError:
                        counters.count(msg_type)
                    if msg_type in _NOTED_TYPES:  # one set lookup for the usual message
                        if msg_type == tags.MT_LOGOUT:
                            logout = raw
                            break
                        self._note(raw, msg_type, counters, from_engine=from_engine)
                    last = raw
                    parts.append(last if translate is None else translate(last))
                    frame = framer.next_raw()
            except (FramingError, SessionError) as exc:
                exc.side = "engine" if from_engine else "gateway"
                error = exc
            if parts:
                # A chunk of exactly whole frames is written as it came, with no join.
                whole = pending == 0 and logout is None and error is None \
                    and framer.buffered == 0 and translate is None
                out = data if whole else b"".join(parts)
                counters.bytes += len(out)
                activity(trio.current_time(), read_seq_num(last))
                try:
                    await _send_locked(dst, dst_lock, out)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.event(Event.GATEWAY_CLOSED if from_engine
                                     else Event.ENGINE_CLOSED)
                    return
                latency.observe(clock() - read_at)
                if journal is not None:
                    journal.record(direction, out, self.conn_id)
            if logout is not None:
                activity(trio.current_time(), read_seq_num(logout))
                self.log.info("%s sent Logout: %s", "engine" if from_engine else "gateway",
                              render(logout))
                if not from_engine:
                    reason = _explain_gateway_answer(logout, self.log)
                    if self.end_cause is None:
                        self.end_cause = ("gateway", reason)
                        self.status.error(f"connection #{self.conn_id}: the gateway logged "
                                          f"out: {render(logout)}", time.time())
                # An answer to fixproxy's own Logout closes for the cause that started it.
                if not await self.event(logout_event, self.logout_cause, defer_close=True):
                    raw = logout if translate is None else translate(logout)
                    counters.bytes += len(raw)
                    try:
                        await _send_locked(dst, dst_lock, raw)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        await self.event(Event.GATEWAY_CLOSED if from_engine
                                         else Event.ENGINE_CLOSED)
                        return
                    if journal is not None:
                        journal.record(direction, raw, self.conn_id)
                await self.close_if_due()
                pending = framer.buffered
                data = b""
                continue
            if error is not None:
                await self.event(Event.ENGINE_ERROR if from_engine else Event.GATEWAY_ERROR,
                                 f"{'the engine' if from_engine else 'the Kalshi gateway'} "
                                 f"sent invalid FIX: {error}")
                return
            if framer.at_eof or (from_engine and not self.engine_input_open):
                break
            pending = framer.buffered
            try:
                data = await src.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            read_at = clock()
            if from_engine and not self.engine_input_open:
                return  # read after fixproxy logged out for it: the engine is told by the close
            framer.receive_data(data)
        if framer.at_eof:
            await self.event(Event.ENGINE_CLOSED if from_engine else Event.GATEWAY_CLOSED,
                             "the engine closed the connection" if from_engine else
                             "the Kalshi gateway closed the connection without a Logout")


_NOTED_TYPES: Final = frozenset({tags.MT_LOGOUT, tags.MT_REJECT, tags.MT_BUSINESS_REJECT,
                                 tags.MT_HEARTBEAT})
"""MsgTypes the pumps look into; every other message passes without a second look."""

_END_CAUSES: Final[dict[Event, tuple[str, str]]] = {
    Event.ENGINE_LOGOUT: ("engine", "other"),
    Event.ENGINE_CLOSED: ("engine", "engine_disconnect"),
    Event.ENGINE_ERROR: ("engine", "other"),
    Event.GATEWAY_CLOSED: ("gateway", "other"),
    Event.GATEWAY_ERROR: ("gateway", "other"),
    Event.GATEWAY_SILENT: ("proxy", "heartbeat_timeout"),
    Event.ENGINE_SILENT: ("proxy", "heartbeat_timeout"),
    Event.SHUTDOWN: ("proxy", "shutdown"),
}
"""(initiator, reason) labels of fixproxy_logouts_total by the event that ended a session."""

_EVENT_TEXT: Final[dict[Event, str]] = {
    Event.GATEWAY_SILENT: "the Kalshi gateway sent nothing for longer than 2 x HeartBtInt + "
                          "grace (or did not answer the Logon in time); the connection was "
                          "closed. Log on again; if it repeats, check the network path",
    Event.ENGINE_SILENT: "the engine sent nothing for longer than 2 x HeartBtInt + grace",
    Event.ENGINE_CLOSED: "the engine disconnected without a Logout",
    Event.SHUTDOWN: "fixproxy is shutting down",
    Event.LOGOUT_TIMEOUT: "the Logout was not answered in time",
}


_GATEWAY_HINTS: Final = (
    ("already exists", "duplicate",
     "Kalshi already has a connection for this API key, possibly a dead one it has not "
     "noticed yet: wait about 2 x HeartBtInt (up to 60 s) before logging on again, and make "
     "sure no other process uses the key"),
    ("signature", "signature",
     "Kalshi rejected the Logon signature: check that private_key is the key whose public "
     "half was uploaded for this API key"),
    ("sendingtime", "other",
     "Kalshi rejected SendingTime (52): the engine's clock is more than 30 s off; "
     "synchronise it (NTP)"),
)


def _explain_gateway_answer(raw: bytes, log: _ConnectionLog) -> str:
    """Log a hint for the gateway Logouts and Rejects whose Text is known to puzzle users.

    Returns:
        The reason label for fixproxy_logouts_total: duplicate, signature or other.
    """
    try:
        message = FixMessage.parse(raw)
    except FramingError:
        return "other"
    text = (message.get_str(tags.TEXT) or "").lower()
    if message.get(tags.SESSION_REJECT_REASON) == b"10":
        text += " sendingtime"
    for needle, reason, hint in _GATEWAY_HINTS:
        if needle in text:
            log.warning("gateway said %r: %s", message.get_str(tags.TEXT) or "", hint)
            return reason
    return "other"


async def _send_locked(stream: trio.abc.Stream, lock: trio.Lock, data: bytes | bytearray
                       ) -> None:
    # acquire_nowait first: ``async with lock`` always passes through the scheduler, a cost
    # paid per write on the order path although the lock is almost never contended.
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        await stream.send_all(data)
    finally:
        lock.release()


async def _close_gateway(gateway: trio.abc.Stream) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT) as scope:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await gateway.aclose()
    if scope.cancelled_caught:
        await trio.aclose_forcefully(gateway)
