"""A plain TCP connection as a trio stream with no scheduler pass per successful call.

trio's ``SocketStream`` yields to the scheduler after every send and receive that succeeds
at once, so that one busy connection cannot starve the others. On the relay that is two
extra scheduler passes per message per direction, a large part of fixproxy's latency. Here a
call that succeeds at once only checks for cancellation; a call that would block waits on
trio as usual. Fairness is kept by the relay itself: each pump writes what it read before
reading again, and a write to a slower peer blocks.
"""

from __future__ import annotations

import socket
from typing import Final

import trio

RECEIVE_SIZE: Final = 65536


class RawSocketStream(trio.abc.HalfCloseableStream):
    """A connected, non-blocking TCP socket (taken over from a ``trio.SocketStream``)."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    @classmethod
    def take_over(cls, stream: trio.SocketStream) -> RawSocketStream:
        """Move the connection of ``stream`` into a new RawSocketStream."""
        return cls(socket.socket(fileno=stream.socket.detach()))

    def _check_open(self) -> None:
        if self._sock.fileno() < 0:
            raise trio.ClosedResourceError("the stream is closed")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        view = memoryview(data)
        try:
            while view:
                try:
                    sent = self._sock.send(view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._sock)
                    continue
                view = view[sent:]
        except OSError as exc:
            raise trio.BrokenResourceError(f"send failed: {exc}") from exc

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self._sock)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(f"shutdown failed: {exc}") from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        size = max_bytes or RECEIVE_SIZE
        while True:
            try:
                return self._sock.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self._sock.setsockopt(level, option, value)

    async def aclose(self) -> None:
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()
