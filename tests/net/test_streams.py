"""The non-blocking socket streams over real sockets: socketpairs, and TCP on loopback where
the peer's address or a reset matters.

What the relay relies on: a send into a full buffer waits (without spinning) and then delivers
every byte in order; one task may send while another receives; the end of the stream is
``b""``; a peer's failure is a ``BrokenResourceError`` and our own close a
``ClosedResourceError``, including for a task already waiting; and a call that needs the other
direction retries after :data:`OTHER_DIRECTION_POLL` (timed under the autojump clock).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import pytest
import trio
import trio.testing

from fixproxy.net.streams import OTHER_DIRECTION_POLL, RECEIVE_SIZE, RawSocketStream

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

GUARD: Final = 10.0
"""Seconds any one test may take; each needs a fraction of one."""
SMALL_BUFFER: Final = 4096
PAYLOAD: Final = bytes(range(256)) * 4096
"""1 MiB: far more than a socketpair buffers, so a send must wait for the reader."""


def plain(sock: socket.socket) -> trio.SocketStream:
    """The test's end of a connection, as trio's own stream."""
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


@asynccontextmanager
async def socketpair_streams() -> AsyncIterator[tuple[RawSocketStream, trio.SocketStream]]:
    """fixproxy's stream on one end of a socketpair with small buffers, trio's on the other."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    stream, peer = RawSocketStream(ours), plain(theirs)
    with trio.fail_after(GUARD):
        async with stream, peer:
            yield stream, peer


@asynccontextmanager
async def tcp_streams(stream_class: type[RawSocketStream] = RawSocketStream
                      ) -> AsyncIterator[tuple[RawSocketStream, trio.SocketStream]]:
    """A loopback TCP connection taken over by ``stream_class``, and its accepted peer."""
    with trio.fail_after(GUARD):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listeners[0]:
            client = await trio.open_tcp_stream(*listeners[0].socket.getsockname()[:2])
            peer = await listeners[0].accept()
        stream = stream_class.take_over(client)
        assert client.socket.fileno() == -1  # trio's stream no longer owns the connection
        async with stream, peer:
            yield stream, peer


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = await stream.receive_some(RECEIVE_SIZE)
        assert chunk, f"end of stream after {len(received)} of {size} bytes"
        received += chunk
    return bytes(received)


async def test_send_all_into_a_full_buffer_waits_then_delivers_everything_in_order() -> None:
    async with socketpair_streams() as (stream, peer), trio.open_nursery() as nursery:
        sent = trio.Event()

        async def send() -> None:
            await stream.send_all(PAYLOAD)
            sent.set()

        nursery.start_soon(send)
        # Every task blocked: the sender waits for the socket, it does not spin.
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        assert await receive_exactly(peer, len(PAYLOAD)) == PAYLOAD
        await sent.wait()


async def test_one_task_sends_while_another_receives() -> None:
    async with socketpair_streams() as (stream, peer), trio.open_nursery() as nursery:
        received: list[bytes] = []

        async def receive() -> None:
            received.append(await receive_exactly(stream, len(PAYLOAD)))

        nursery.start_soon(stream.send_all, PAYLOAD)
        nursery.start_soon(receive)
        nursery.start_soon(peer.send_all, PAYLOAD[::-1])
        assert await receive_exactly(peer, len(PAYLOAD)) == PAYLOAD
    assert received == [PAYLOAD[::-1]]


async def test_receive_some_honours_max_bytes() -> None:
    async with socketpair_streams() as (stream, peer):
        await peer.send_all(b"8=FIXT.1.1\x01")
        assert await stream.receive_some(3) == b"8=F"
        assert await stream.receive_some() == b"IXT.1.1\x01"


async def test_receive_some_returns_empty_at_the_end_of_the_stream_every_time() -> None:
    async with socketpair_streams() as (stream, peer):
        await peer.send_all(b"last words")
        await peer.aclose()
        assert await stream.receive_some() == b"last words"
        assert await stream.receive_some() == b""
        assert await stream.receive_some() == b""


async def test_send_eof_ends_our_direction_and_keeps_receiving() -> None:
    async with socketpair_streams() as (stream, peer):
        await stream.send_all(b"bye")
        await stream.send_eof()
        assert await receive_exactly(peer, 3) == b"bye"
        assert await peer.receive_some() == b""
        # Half-closed: the peer may still send, and we still read it.
        await peer.send_all(b"still here")
        assert await stream.receive_some() == b"still here"
        with pytest.raises(trio.BrokenResourceError, match="send failed"):
            await stream.send_all(b"after eof")


async def test_a_send_to_a_closed_peer_is_a_broken_resource() -> None:
    async with socketpair_streams() as (stream, peer):
        await peer.aclose()
        with pytest.raises(trio.BrokenResourceError, match="send failed") as caught:
            await stream.send_all(b"x" * SMALL_BUFFER)
        assert isinstance(caught.value.__cause__, OSError)


async def test_a_reset_is_a_broken_resource_unless_the_subclass_calls_it_an_end() -> None:
    class ResetIsEnd(RawSocketStream):
        END_OF_STREAM = (ConnectionResetError,)

    for stream_class, ends in ((RawSocketStream, False), (ResetIsEnd, True)):
        async with tcp_streams(stream_class) as (stream, peer):
            assert type(stream) is stream_class
            # Linger 0: closing sends a reset instead of a FIN.
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await peer.aclose()
            if ends:
                assert await stream.receive_some() == b""
            else:
                with pytest.raises(trio.BrokenResourceError, match="receive failed"):
                    await stream.receive_some()


async def test_every_call_on_a_closed_stream_is_a_closed_resource() -> None:
    async with socketpair_streams() as (stream, _peer):
        await stream.aclose()
        await stream.aclose()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some()
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await stream.wait_send_all_might_not_block()


async def test_closing_wakes_a_task_waiting_to_receive() -> None:
    async with socketpair_streams() as (stream, _peer), trio.open_nursery() as nursery:
        outcome: list[BaseException] = []

        async def receive() -> None:
            try:
                await stream.receive_some()
            except trio.ClosedResourceError as exc:
                outcome.append(exc)

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
    assert len(outcome) == 1


async def test_a_send_cancelled_before_it_starts_sends_nothing() -> None:
    async with socketpair_streams() as (stream, peer):
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.send_all(b"never")
        assert scope.cancelled_caught
        await stream.send_all(b"sent")
        assert await receive_exactly(peer, 4) == b"sent"


async def test_peer_host_names_the_peer_until_the_stream_closes() -> None:
    async with tcp_streams() as (stream, _peer):
        assert stream.peer_host() == "127.0.0.1"
        await stream.aclose()
        assert stream.peer_host() is None


async def test_wait_send_all_might_not_block_returns_when_there_is_room() -> None:
    async with socketpair_streams() as (stream, _peer):
        await stream.wait_send_all_might_not_block()


class NeedsOtherDirection(Exception):
    """Stands in for ssl.SSLWantReadError / SSLWantWriteError."""


class OnceNeedsOtherDirection(socket.socket):
    """A socket whose first send and first receive each ask for the other direction."""

    def __init__(self, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self.send_calls = 0
        self.recv_calls = 0

    def send(self, data: ReadableBuffer, flags: int = 0, /) -> int:
        self.send_calls += 1
        if self.send_calls == 1:
            raise NeedsOtherDirection
        return super().send(data, flags)

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        self.recv_calls += 1
        if self.recv_calls == 1:
            raise NeedsOtherDirection
        return super().recv(bufsize, flags)


class TLSLikeStream(RawSocketStream):
    SEND_NEEDS_READ = (NeedsOtherDirection,)
    RECEIVE_NEEDS_WRITE = (NeedsOtherDirection,)


async def test_a_call_needing_the_other_direction_retries_after_the_poll_interval(
        autojump_clock: trio.testing.MockClock) -> None:
    ours, theirs = socket.socketpair()
    sock = OnceNeedsOtherDirection(ours.detach())
    async with TLSLikeStream(sock) as stream, plain(theirs) as peer:
        start = trio.current_time()
        await stream.send_all(b"key update")
        assert trio.current_time() - start == pytest.approx(OTHER_DIRECTION_POLL)
        assert sock.send_calls == 2
        assert await receive_exactly(peer, 10) == b"key update"

        await peer.send_all(b"answer")
        start = trio.current_time()
        assert await stream.receive_some() == b"answer"
        assert trio.current_time() - start == pytest.approx(OTHER_DIRECTION_POLL)
        assert sock.recv_calls == 2
