"""Connections as trio streams with no scheduler pass per successful send or receive.

trio's ``SocketStream`` yields to the scheduler after every call that succeeds at once, and
``SSLStream`` drives OpenSSL through memory BIOs in Python, with locks and a copy each way.
Here the socket (or OpenSSL on the socket) is called directly; a call that succeeds at once
only checks for cancellation, and trio is asked to wait only when the call would block.

These streams carry a connection through admission (the engine's Logon, fixproxy's refusals,
the TLS handshake and pin check). Once a session starts, its relay takes the underlying
socket (:attr:`NonBlockingSocketStream.socket`) into a thread of its own
(fixproxy.proxy.relay), and the stream is only closed afterwards.

One task may receive while another sends. TLS rarely needs the opposite direction (a TLS 1.3
KeyUpdate while writing); trio allows one waiter per direction, so that rare case polls
briefly instead of waiting on the other task's fd.
"""

from __future__ import annotations

import socket
from typing import ClassVar, Final

import trio

RECEIVE_SIZE: Final = 65536
OTHER_DIRECTION_POLL: Final = 0.001
"""Seconds between retries when a call needs the direction another task is waiting on."""

_Errors = tuple[type[Exception], ...]


class NonBlockingSocketStream(trio.abc.Stream):
    """The loops shared by plain and TLS sockets; subclasses name their exceptions."""

    __slots__ = ("_sock",)

    SEND_WOULD_BLOCK: ClassVar[_Errors] = (BlockingIOError,)
    SEND_NEEDS_READ: ClassVar[_Errors] = ()
    RECEIVE_WOULD_BLOCK: ClassVar[_Errors] = (BlockingIOError,)
    RECEIVE_NEEDS_WRITE: ClassVar[_Errors] = ()
    END_OF_STREAM: ClassVar[_Errors] = ()
    """Exceptions that mean the peer ended the stream (TLS: close_notify or a bare close)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

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
                except self.SEND_WOULD_BLOCK:
                    await trio.lowlevel.wait_writable(self._sock)
                    continue
                except self.SEND_NEEDS_READ:
                    await trio.sleep(OTHER_DIRECTION_POLL)
                    continue
                view = view[sent:]
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise trio.BrokenResourceError(f"send failed: {exc}") from exc

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self._sock)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        size = max_bytes or RECEIVE_SIZE
        while True:
            try:
                return self._sock.recv(size)
            except self.RECEIVE_WOULD_BLOCK:
                await trio.lowlevel.wait_readable(self._sock)
            except self.RECEIVE_NEEDS_WRITE:
                await trio.sleep(OTHER_DIRECTION_POLL)
            except self.END_OF_STREAM:
                return b""
            except (OSError, ValueError) as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc

    @property
    def socket(self) -> socket.socket:
        """The connected socket, for a session relay that takes it over: from then on only
        that relay's thread uses it, and this stream only closes it afterwards."""
        return self._sock

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self._sock.setsockopt(level, option, value)

    def peer_host(self) -> str | None:
        """The peer's IP address as text; None once the connection is gone."""
        try:
            return str(self._sock.getpeername()[0])
        except OSError:
            return None

    async def aclose(self) -> None:
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()


class RawSocketStream(NonBlockingSocketStream, trio.abc.HalfCloseableStream):
    """A connected TCP socket, taken over from a ``trio.SocketStream``."""

    __slots__ = ()

    @classmethod
    def take_over(cls, stream: trio.SocketStream) -> RawSocketStream:
        """Move the connection of ``stream`` into a new RawSocketStream."""
        return cls(socket.socket(fileno=stream.socket.detach()))

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(f"shutdown failed: {exc}") from exc
