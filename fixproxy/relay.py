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
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

import trio

from fixproxy.config import SessionConfig
from fixproxy.errors import (
    FixError,
    FixProxyError,
    FramingError,
    LogonRefused,
    PinMismatchError,
    UpstreamError,
)
from fixproxy.fix import admin, tags
from fixproxy.fix.codec import FixMessage, render
from fixproxy.fix.framer import FixFramer, Frame
from fixproxy.fix.logon import (
    LogonPolicy,
    RewrittenLogon,
    Signer,
    rewrite_logon,
    strip_forced_reset,
)
from fixproxy.metrics import Metrics, TrafficCounters
from fixproxy.tls import HandshakeInfo

logger = logging.getLogger("fixproxy.relay")

RECEIVE_SIZE: Final = 65536
"""Bytes asked of the socket per read: large enough that a burst is one read and one write."""
DRAIN_TIMEOUT: Final = 2.0
"""Seconds spent reading what an engine still sends after its refusal, so close() sends FIN."""
DRAIN_LIMIT: Final = 1 << 20
"""Bytes read and discarded at most while draining a refused engine."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds allowed for a TLS close_notify before the gateway socket is closed regardless."""

GatewayConnector = Callable[[], Awaitable[tuple[trio.abc.Stream, HandshakeInfo]]]
_connection_ids = itertools.count(1)


class _ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the session and connection id, so one connection's story can
    be followed through interleaved logs."""

    def process(self, msg: object, kwargs: MutableMapping[str, Any]
                ) -> tuple[object, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"[{extra.get('session')} #{extra.get('conn')}] {msg}", kwargs


@dataclass(frozen=True, slots=True)
class SessionRuntime:
    """Everything a relay needs for one configured session, built once at start."""

    config: SessionConfig
    policy: LogonPolicy
    sign: Signer
    connect: GatewayConnector
    metrics: Metrics


class _Refusal(FixProxyError):
    """Internal: end the connection with a local Logout carrying ``text``."""

    def __init__(self, text: str, result: str) -> None:
        super().__init__(text)
        self.text = text
        self.result = result


async def relay_engine_connection(engine: trio.abc.Stream, runtime: SessionRuntime) -> None:
    """Serve one engine connection until either side ends it. Never raises for peer faults."""
    conn_id = next(_connection_ids)
    name = runtime.config.name
    log = _ConnectionLog(logger, {"conn": conn_id, "session": name})
    metrics = runtime.metrics
    engine_framer = FixFramer()
    first: Frame | None = None
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
        rewritten = _rewrite(first, runtime)
        log.info("engine Logon accepted locally: %s", render(first.raw))
        gateway, info = await _open_gateway(runtime, log)
    except _Refusal as refusal:
        metrics.engine_connections.labels(session=name, result=refusal.result).inc()
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
        await _run_session(engine, engine_framer, gateway, rewritten, runtime, log,
                           logon_received)
    finally:
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


def _rewrite(first: Frame, runtime: SessionRuntime) -> RewrittenLogon:
    try:
        return rewrite_logon(first.raw, runtime.policy, runtime.sign, now=time.time())
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
    metrics.certificate_expiry.labels(session=cfg.name, subject=info.leaf_subject).set(
        info.leaf_not_after.timestamp())
    return gateway, info


async def _refuse(engine: trio.abc.Stream, runtime: SessionRuntime, first: Frame | None,
                  text: str) -> None:
    """Send a local Logout, half-close, drain briefly and close: the clean local answer."""
    sender, target = _counterparty_ids(first, runtime)
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


async def _run_session(engine: trio.abc.Stream, engine_framer: FixFramer,
                       gateway: trio.abc.Stream, rewritten: RewrittenLogon,
                       runtime: SessionRuntime, log: logging.LoggerAdapter[logging.Logger],
                       logon_received: float) -> None:
    cfg = runtime.config
    metrics = runtime.metrics
    to_gateway = metrics.traffic(cfg.name, "engine_to_gateway")
    to_engine = metrics.traffic(cfg.name, "gateway_to_engine")
    gateway_framer = FixFramer()
    try:
        await gateway.send_all(rewritten.raw)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        metrics.logons.labels(session=cfg.name, result="no_answer").inc()
        log.warning("gateway closed before the Logon could be sent")
        return
    to_gateway.count(tags.MT_LOGON)
    to_gateway.bytes += len(rewritten.raw)
    log.info("sent Logon: %s", render(rewritten.raw))

    outcome: list[str] = []

    async def engine_to_gateway() -> None:
        outcome.append(await _pump(engine, gateway, engine_framer, to_gateway, "engine"))

    async def gateway_to_engine() -> None:
        answer = await _forward_logon_answer(gateway, engine, gateway_framer, rewritten,
                                             runtime, log, logon_received, to_engine)
        if answer:
            # Counted up and down by the connection that logged on, so a refused duplicate
            # cannot mark a live session down.
            session_up = metrics.session_up.labels(session=cfg.name)
            session_up.inc()
            try:
                outcome.append(await _pump(gateway, engine, gateway_framer, to_engine,
                                           "gateway"))
            finally:
                session_up.dec()
        else:
            outcome.append("gateway ended the session at Logon")

    async with trio.open_nursery() as nursery:
        async def first_to_finish(pump: Callable[[], Awaitable[None]]) -> None:
            try:
                await pump()
            finally:
                nursery.cancel_scope.cancel()

        nursery.start_soon(first_to_finish, gateway_to_engine)
        nursery.start_soon(first_to_finish, engine_to_gateway)
    log.info("session closed: %s; engine->gateway %d bytes, gateway->engine %d bytes",
             outcome[0] if outcome else "cancelled", to_gateway.bytes, to_engine.bytes)


async def _forward_logon_answer(gateway: trio.abc.Stream, engine: trio.abc.Stream,
                                framer: FixFramer, rewritten: RewrittenLogon,
                                runtime: SessionRuntime,
                                log: logging.LoggerAdapter[logging.Logger],
                                logon_received: float, counters: TrafficCounters) -> bool:
    """Pass the gateway's first message to the engine; True if it was a Logon."""
    cfg = runtime.config
    metrics = runtime.metrics
    frame: Frame | None = None
    with trio.move_on_after(cfg.logon_timeout):
        try:
            frame = await _receive_frame(gateway, framer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, FramingError) as exc:
            log.warning("gateway connection failed before its Logon answer: %s", exc)
    if frame is None:
        metrics.logons.labels(session=cfg.name, result="no_answer").inc()
        text = (f"the Kalshi gateway {cfg.host}:{cfg.port} closed the connection or did not "
                f"answer the Logon within {cfg.logon_timeout:g} s; check the API key is enabled "
                f"for {cfg.endpoint.target_comp_id} and retry later")
        log.warning("%s", text)
        sender, target = _counterparty_ids(None, runtime)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await engine.send_all(admin.logout(f"fixproxy: {text}", sender=sender,
                                               target=target, seq=1, now=time.time()))
        return False
    counters.count(frame.msg_type)
    data = frame.raw
    if frame.msg_type == tags.MT_LOGON:
        metrics.logons.labels(session=cfg.name, result="accepted").inc()
        metrics.logon_seconds.labels(session=cfg.name).observe(time.monotonic() - logon_received)
        if rewritten.reset_forced:
            data = strip_forced_reset(data)
        log.info("gateway accepted the Logon: %s", render(frame.raw))
    else:
        metrics.logons.labels(session=cfg.name, result="refused_by_gateway").inc()
        log.warning("gateway answered the Logon with: %s", render(frame.raw))
    counters.bytes += len(data)
    try:
        await engine.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return frame.msg_type == tags.MT_LOGON


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, framer: FixFramer,
                counters: TrafficCounters, src_side: str) -> str:
    """Copy complete frames from ``src`` to ``dst`` until one side ends; return why it ended."""
    pending = framer.buffered
    data: bytes | bytearray = b""
    while True:
        parts: list[bytes] = []
        error: FixError | None = None
        try:
            frame = framer.next_message()
            while frame is not None:
                counters.count(frame.msg_type)
                parts.append(frame.raw)
                frame = framer.next_message()
        except FramingError as exc:
            exc.side = "engine" if src_side == "engine" else "gateway"
            error = exc
        if parts:
            # The chunk is exactly whole frames: write it as it came, with no join.
            out = data if pending == 0 and framer.buffered == 0 and error is None \
                else b"".join(parts)
            counters.bytes += len(out)
            try:
                await dst.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return f"{'gateway' if src_side == 'engine' else 'engine'} connection lost"
        if error is not None:
            return f"{src_side} sent invalid FIX: {error}"
        if framer.at_eof:
            return f"{src_side} closed the connection"
        pending = framer.buffered
        try:
            data = await src.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return f"{src_side} connection lost: {exc}"
        framer.receive_data(data)


async def _close_gateway(gateway: trio.abc.Stream) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT) as scope:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await gateway.aclose()
    if scope.cancelled_caught:
        await trio.aclose_forcefully(gateway)
