"""The drop-copy client: one short KalshiDC conversation that replays missed reports (trio).

Theory of operation
-------------------
When Kalshi has accepted a KalshiNR Logon of a session with ``[session.recovery]``, the
session's relay thread asks the control plane to recover before it passes the Logon answer
on (:mod:`fixproxy.proxy.admit`). This module is that conversation, on a connection of its own
and under the drop-copy API key (Kalshi allows one connection per key):

1. TLS to KalshiDC with the session's trust (CA, hostname, pins), as for the session itself;
2. a signed Logon with ``141=Y`` and the NR session's report-format flags (21005, 21008,
   21012, 21007), since the replayed reports are formatted by the DC Logon's flags;
3. per exchange index with a cursor, one EventResendRequest (35=U1) from that cursor, and the
   ExecutionReports (35=8) that follow until EventResendComplete (35=U2) or EventResendReject
   (35=U3); one index at a time, so the account never has two requests in flight;
4. a Logout, waited for briefly, and the close.

TestRequests are answered; anything else is ignored. The caller bounds the whole conversation
with one deadline; this module reports what it got however it ended (a replay cut short by the
deadline keeps what it received, and says so). Which reports reach the engine is decided by
:func:`fixproxy.session.recovery.select_reports`, not here.

The alternative rejected was to keep a drop-copy connection open for the life of the session:
it would hold a second key's only connection all day for a question asked once per Logon.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from fixproxy.errors import FixProxyError, FramingError, LogonRefused
from fixproxy.fix import tags
from fixproxy.fix.codec import SendingTimeClock, encode, header_value, parse_uint, render
from fixproxy.fix.framer import FixFramer
from fixproxy.fix.logon import LogonPolicy, Signer, rewrite_logon
from fixproxy.fix.logout import logout
from fixproxy.net.tls import HandshakeInfo
from fixproxy.session.recovery import (
    MAX_RECOVERED_REPORTS,
    MT_EVENT_RESEND_COMPLETE,
    MT_EVENT_RESEND_REJECT,
    REJECT_REASONS,
    RESEND_EVENT_COUNT,
    RESEND_REJECT_REASON,
    ExecId,
    event_resend_request,
)

DropCopyConnector = Callable[[], Awaitable[tuple[trio.abc.Stream, HandshakeInfo]]]
"""Opens TLS to the drop copy, pins checked."""

DC_TARGET: Final = "KalshiDC"
DC_HEART_BT_INT: Final = 30
LOGOUT_ANSWER_WAIT: Final = 1.0
"""Seconds the drop copy gets to answer fixproxy's Logout before the connection is closed."""
RECEIVE_SIZE: Final = 65536


@dataclass(frozen=True, slots=True)
class IndexResult:
    """How one exchange index's replay ended."""

    begin: ExecId
    result: str
    """``ok`` (U2), a U3 reason's name (:data:`REJECT_REASONS`), or ``incomplete``."""
    detail: str = ""
    count: int | None = None
    """The replay count U2 announced."""


@dataclass(slots=True)
class DropCopyReplay:
    """What one drop-copy conversation brought back (filled in as it goes, so a deadline
    leaves what arrived)."""

    logged_on: bool = False
    refused: str | None = None
    """The drop copy's answer to the Logon when it was not a Logon."""
    indexes: list[IndexResult] = field(default_factory=list)
    reports: list[bytes] = field(default_factory=list)
    truncated: bool = False
    """More than MAX_RECOVERED_REPORTS arrived; the rest was not read."""


class _Conversation:
    def __init__(self, stream: trio.abc.Stream, api_key: str, replay: DropCopyReplay) -> None:
        self.stream = stream
        self.framer = FixFramer()
        self.api_key = api_key.encode()
        self.target = DC_TARGET.encode()
        self.seq = 2  # the Logon was 1
        self.stamp = SendingTimeClock()
        self.replay = replay

    async def send(self, raw: bytes) -> None:
        await self.stream.send_all(raw)

    async def receive(self) -> tuple[bytes, bytes]:
        """The next message, TestRequests answered on the way.

        Raises:
            FixProxyError: the drop copy closed the connection or broke FIX.
        """
        while True:
            frame = self.framer.next_message()
            if frame is not None:
                raw, msg_type = frame
                if msg_type == tags.MT_TEST_REQUEST:
                    test_id = header_value(raw, tags.TEST_REQ_ID) or b""
                    await self.send(self.message(tags.MT_HEARTBEAT, [(tags.TEST_REQ_ID,
                                                                      test_id)]))
                    continue
                return raw, msg_type
            if self.framer.at_eof:
                raise FixProxyError("the drop copy closed the connection")
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self.framer.receive_data(data)

    def message(self, msg_type: bytes, body: list[tuple[int, bytes]]) -> bytes:
        raw = encode([(tags.MSG_TYPE, msg_type), (tags.SENDER_COMP_ID, self.api_key),
                      (tags.TARGET_COMP_ID, self.target), (tags.MSG_SEQ_NUM, self.seq),
                      (tags.SENDING_TIME, self.stamp()), *body])
        self.seq += 1
        return raw

    async def replay_index(self, begin: ExecId) -> None:
        request = event_resend_request(begin, sender=self.api_key, target=self.target,
                                       seq=self.seq, stamp=self.stamp())
        self.seq += 1
        await self.send(request)
        replay = self.replay
        while True:
            raw, msg_type = await self.receive()
            if msg_type == tags.MT_EXECUTION_REPORT:
                if len(replay.reports) >= MAX_RECOVERED_REPORTS:
                    replay.truncated = True
                    replay.indexes.append(IndexResult(begin, "incomplete", (
                        f"more than {MAX_RECOVERED_REPORTS} reports; the rest was not read")))
                    return
                replay.reports.append(raw)
            elif msg_type == MT_EVENT_RESEND_COMPLETE:
                count = parse_uint(header_value(raw, RESEND_EVENT_COUNT))
                replay.indexes.append(IndexResult(begin, "ok", count=count))
                return
            elif msg_type == MT_EVENT_RESEND_REJECT:
                code = parse_uint(header_value(raw, RESEND_REJECT_REASON)) or 0
                name, text = REJECT_REASONS.get(code, ("rejected", f"reason {code}"))
                replay.indexes.append(IndexResult(begin, name, f"21004={code}: {text}"))
                return
            elif msg_type == tags.MT_LOGOUT:
                raise FixProxyError(f"the drop copy logged out: {render(raw)}")

    async def close(self) -> None:
        """Log out and wait briefly for the answer."""
        with trio.move_on_after(LOGOUT_ANSWER_WAIT):
            await self.send(logout("recovery complete", sender=self.api_key,
                                   target=self.target, seq=self.seq, now=time.time()))
            while True:
                _, msg_type = await self.receive()
                if msg_type == tags.MT_LOGOUT:
                    return


def drop_copy_logon(api_key: str, sign: Signer, flags: tuple[tuple[int, bytes], ...],
                    now: float) -> bytes:
    """The signed KalshiDC Logon: 141=Y, and ``flags`` so that reports come formatted as the
    NR session's do."""
    policy = LogonPolicy(session_name="drop copy", api_key=api_key, target_comp_id=DC_TARGET,
                         force_reset=True, kalshi_flags=flags)
    unsigned = encode([(tags.MSG_TYPE, tags.MT_LOGON), (tags.SENDER_COMP_ID, api_key),
                       (tags.TARGET_COMP_ID, DC_TARGET), (tags.MSG_SEQ_NUM, 1),
                       (tags.HEART_BT_INT, DC_HEART_BT_INT), (tags.RESET_SEQ_NUM_FLAG, b"Y")])
    try:
        return rewrite_logon(unsigned, policy, sign, now=now).raw
    except LogonRefused as exc:  # built here: a fault of fixproxy's own
        raise FixProxyError(f"cannot build the drop-copy Logon: {exc.text}") from exc


async def replay_from_drop_copy(connect: DropCopyConnector, api_key: str, sign: Signer,
                                flags: tuple[tuple[int, bytes], ...],
                                begins: tuple[ExecId, ...], replay: DropCopyReplay) -> None:
    """Hold one drop-copy conversation, filling ``replay`` as it goes.

    The caller bounds the time (a cancel scope) and reads ``replay`` whatever happened.

    Raises:
        UpstreamError: TLS to the drop copy failed (pins included).
        FixProxyError: the drop copy closed, broke FIX or logged out midway.
    """
    stream, _ = await connect()
    async with stream:
        conversation = _Conversation(stream, api_key, replay)
        try:
            await conversation.send(drop_copy_logon(api_key, sign, flags, time.time()))
            raw, msg_type = await conversation.receive()
            if msg_type != tags.MT_LOGON:
                replay.refused = render(raw)
                return
            replay.logged_on = True
            for begin in begins:
                await conversation.replay_index(begin)
                if replay.truncated:
                    break
            await conversation.close()
        except FramingError as exc:
            raise FixProxyError(f"the drop copy sent invalid FIX: {exc}") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise FixProxyError(f"the drop-copy connection broke: {exc}") from exc
