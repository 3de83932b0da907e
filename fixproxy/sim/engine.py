"""A scripted FIX engine: what a legacy engine sends through fixproxy, for demos and tests.

It speaks plain TCP, stamps 49/56/34/52 like any engine, and does not sign its Logon.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Final

import trio

from fixproxy.errors import FramingError
from fixproxy.fix import tags
from fixproxy.fix.codec import FieldValue, FixMessage, encode, utc_timestamp
from fixproxy.fix.framer import FixFramer

RECEIVE_SIZE: Final = 65536
MESSAGE_NAMES: Final = {b"A": "Logon", b"5": "Logout", b"0": "Heartbeat", b"1": "TestRequest",
                        b"D": "NewOrderSingle", b"8": "ExecutionReport", b"3": "Reject",
                        b"j": "BusinessMessageReject", b"2": "ResendRequest",
                        b"4": "SequenceReset"}


def describe(raw: bytes) -> str:
    """A message's type by name (``35=<code>`` for the unnamed ones), for transcripts."""
    message = FixMessage.parse(raw)
    return MESSAGE_NAMES.get(message.msg_type, f"35={message.msg_type.decode()}")


class ScriptedEngine:
    """A minimal FIX initiator over any trio stream."""

    def __init__(self, stream: trio.abc.Stream, *, sender: str, target: str,
                 first_seq: int = 1) -> None:
        self.stream = stream
        self.sender = sender.encode()
        self.target = target.encode()
        self.next_seq = first_seq
        self.framer = FixFramer()
        self.transcript: list[tuple[str, bytes]] = []
        """(``"sent"`` | ``"received"``, raw message) in order."""
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, host: str, port: int, *, sender: str, target: str,
                      first_seq: int = 1) -> ScriptedEngine:
        stream = await trio.open_tcp_stream(host, port)
        return cls(stream, sender=sender, target=target, first_seq=first_seq)

    def build(self, msg_type: bytes, fields: Sequence[tuple[int, FieldValue]] = ()) -> bytes:
        """Encode a message with the engine's header, taking the next MsgSeqNum."""
        raw = encode([
            (tags.MSG_TYPE, msg_type),
            (tags.SENDER_COMP_ID, self.sender),
            (tags.TARGET_COMP_ID, self.target),
            (tags.MSG_SEQ_NUM, self.next_seq),
            (tags.SENDING_TIME, utc_timestamp()),
            *fields,
        ])
        self.next_seq += 1
        return raw

    async def send(self, msg_type: bytes,
                   fields: Sequence[tuple[int, FieldValue]] = ()) -> bytes:
        raw = self.build(msg_type, fields)
        await self.send_raw(raw)
        return raw

    async def send_raw(self, raw: bytes) -> None:
        self.transcript.append(("sent", raw))
        await self.stream.send_all(raw)

    async def receive(self) -> FixMessage | None:
        """The next message from the peer, or None when it closed the connection."""
        while True:
            frame = self.framer.next_message()
            if frame is not None:
                self.transcript.append(("received", frame.raw))
                return FixMessage.parse(frame.raw)
            if self.framer.at_eof:
                return None
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                data = b""
            self.framer.receive_data(data)

    async def receive_type(self, msg_type: bytes) -> FixMessage:
        """Read until a message of ``msg_type``, answering TestRequests on the way.

        Raises:
            FramingError: the peer closed before such a message arrived.
        """
        while True:
            message = await self.receive()
            if message is None:
                raise FramingError(f"connection closed while waiting for 35={msg_type.decode()}")
            if message.msg_type == msg_type:
                return message
            if message.msg_type == tags.MT_TEST_REQUEST:
                await self.send(tags.MT_HEARTBEAT,
                                [(tags.TEST_REQ_ID, message.get(tags.TEST_REQ_ID) or b"")])

    async def logon(self, *, heart_bt_int: int = 30, reset: bool | None = None,
                    extra: Sequence[tuple[int, FieldValue]] = ()) -> FixMessage | None:
        """Send an unsigned Logon and return the peer's answer (Logon, Logout, ...)."""
        fields: list[tuple[int, FieldValue]] = [(tags.ENCRYPT_METHOD, 0),
                                                (tags.HEART_BT_INT, heart_bt_int)]
        if reset is not None:
            fields.append((tags.RESET_SEQ_NUM_FLAG, b"Y" if reset else b"N"))
        fields.append((tags.DEFAULT_APPL_VER_ID, 9))
        fields.extend(extra)
        await self.send(tags.MT_LOGON, fields)
        return await self.receive()

    async def new_order(self, symbol: str = "HIGHNY-23DEC31", *, side: int = 1,
                        quantity: int = 10, price: int = 50) -> bytes:
        """Send a limit NewOrderSingle; returns its ClOrdID."""
        cl_ord_id = f"demo-{next(self._ids)}".encode()
        await self.send(tags.MT_NEW_ORDER_SINGLE, [
            (11, cl_ord_id), (38, quantity), (40, 2), (44, price), (54, side), (55, symbol),
            (59, 1), (60, utc_timestamp()),
        ])
        return cl_ord_id

    async def test_peer(self, test_req_id: bytes = b"demo-test") -> FixMessage:
        """Send a TestRequest and wait for the Heartbeat that answers it."""
        await self.send(tags.MT_TEST_REQUEST, [(tags.TEST_REQ_ID, test_req_id)])
        while True:
            answer = await self.receive_type(tags.MT_HEARTBEAT)
            if answer.get(tags.TEST_REQ_ID) == test_req_id:
                return answer

    async def logout(self, text: str | None = None) -> FixMessage | None:
        """Send a Logout and return the peer's Logout (None if it just closed)."""
        await self.send(tags.MT_LOGOUT, [(tags.TEXT, text)] if text else [])
        try:
            return await self.receive_type(tags.MT_LOGOUT)
        except FramingError:
            return None

    async def aclose(self) -> None:
        await self.stream.aclose()
