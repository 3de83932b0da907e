"""One side of a session as its relay sees it: a non-blocking socket, a framer, and the output
waiting for the peer.

The relay reads and writes through a :class:`Leg` so that the details of a non-blocking socket
stay in one place: which exceptions mean "not now", "the other direction first" (TLS), "the end
of the stream" or "gone"; a write that the peer takes only in part; and, for TLS, a record that
OpenSSL has decrypted but poll cannot see.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from fixproxy.fix.framer import FixFramer

RECEIVE_SIZE: Final = 65536
"""Bytes asked of a socket per read: large enough that a burst is one read and one write."""
MAX_PENDING_BYTES: Final = 256 * 1024
"""Output waiting for a slow peer above which the other side is not read. A read adds at most
RECEIVE_SIZE plus a Logout past it, so memory per direction stays under about 330 KiB."""
_WOULD_BLOCK: Final = (BlockingIOError, ssl.SSLWantWriteError, InterruptedError)


class _OpenSSLSession(Protocol):
    """The C object beneath every ``ssl.SSLSocket`` (``_sslobj``), as the relay uses it."""

    def read(self, size: int, /) -> bytes: ...
    def write(self, data: bytes, /) -> int: ...
    def pending(self) -> int: ...


@dataclass(slots=True)
class Leg:
    """One side of the session: its socket, its framer and its output waiting to be written."""

    sock: socket.socket
    framer: FixFramer
    name: str
    """``engine`` or ``gateway``, for texts."""
    receive: Callable[[int], bytes]
    """The socket's non-blocking read (for TLS, OpenSSL's own, under ssl.SSLSocket's
    Python-level checks: the relay calls it with the socket known open)."""
    send: Callable[[bytes], int]
    """The socket's non-blocking write, likewise."""
    tls_pending: Callable[[], int] | None = None
    """TLS: bytes of a record OpenSSL decrypted and holds, which poll cannot see."""
    pending: bytes = b""
    """Bytes accepted for this peer and not yet written, oldest first."""
    pending_read_at: float = 0.0
    """When the oldest pending bytes were read, for the relay latency."""
    readable: bool = True
    """Still read from: false after end of stream, an error, or fixproxy's own Logout."""
    writable: bool = True
    """Still written to: false once a write failed."""
    wants_read_for_write: bool = False
    """TLS: a write is waiting for the peer's bytes (a renegotiation or key update)."""
    wants_write_for_read: bool = False
    """TLS: a read is waiting to write (the mirror case)."""

    def fileno(self) -> int:
        return self.sock.fileno()

    @classmethod
    def over(cls, sock: socket.socket, framer: FixFramer, name: str) -> Leg:
        """A leg over ``sock``: a plain socket, or an ``ssl.SSLSocket`` after its handshake."""
        if isinstance(sock, ssl.SSLSocket):
            # SSLSocket.recv and .send are Python wrappers around these: the same calls and
            # exceptions (a bare close surfaces as SSLEOFError, which the relay takes as an
            # end of stream), without two Python frames per message.
            tls: _OpenSSLSession | None = getattr(sock, "_sslobj", None)
            if tls is None:
                raise ValueError("the gateway socket has no TLS session")
            return cls(sock, framer, name, receive=tls.read, send=tls.write,
                       tls_pending=tls.pending)
        return cls(sock, framer, name, receive=sock.recv, send=sock.send)

    def read(self) -> bytes | None:
        """One non-blocking read: the bytes, ``b""`` at the end of the stream (a reset
        included: for FIX, an end without Logout like any other), None when nothing is there
        yet."""
        try:
            data = self.receive(RECEIVE_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, InterruptedError):
            return None
        except ssl.SSLWantWriteError:
            self.wants_write_for_read = True
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except OSError:
            data = b""
        self.wants_write_for_read = False
        return data

    def write_pending(self) -> bool | None:
        """Write what is pending as far as the peer takes it.

        Returns:
            True when this write emptied the pending output; None otherwise (nothing was
            pending, the peer took part or none of it, or the write failed: then the leg is
            no longer readable nor writable and its output is dropped).
        """
        data = self.pending
        if not data or not self.writable:
            return None
        try:
            sent = self.send(data)
        except _WOULD_BLOCK:
            return None
        except ssl.SSLWantReadError:
            self.wants_read_for_write = True
            return None
        except OSError:
            self.writable = False
            self.readable = False
            self.pending = b""
            return None
        self.pending = data[sent:]
        return not self.pending
