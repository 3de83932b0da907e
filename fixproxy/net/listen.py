"""Listening sockets: open every address a listen setting names, and say where they are bound.

Shared by the session listeners (fixproxy.proxy.listeners) and the metrics endpoint
(fixproxy.net.http), so both report a busy or forbidden address the same way. Also the
descriptor held in reserve, so that a process at its open-file limit can still accept a
connection long enough to say why it cannot serve it.
"""

from __future__ import annotations

import errno
import os
import resource
from typing import Final

import trio

from fixproxy.errors import FixProxyError

Address = tuple[str, int]
"""A bound (host, port)."""


async def open_listeners(host: str, port: int, what: str) -> list[trio.SocketListener]:
    """Listen on ``host:port`` (every address the name resolves to); the caller closes them.

    Raises:
        FixProxyError: the address cannot be bound; ``what`` names the listener in the text.
    """
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise FixProxyError(f"{what}: cannot listen on {host}:{port}: "
                            f"{exc.strerror or exc}") from exc


def address_of(listener: trio.SocketListener) -> Address:
    """The (host, port) a listener is bound to: the port chosen when port 0 was asked for."""
    sockname = listener.socket.getsockname()
    return str(sockname[0]), int(sockname[1])


DESCRIPTOR_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE})
"""The process (EMFILE) or the machine (ENFILE) has no file descriptor left to give."""


def out_of_descriptors(exc: BaseException) -> bool:
    """True if ``exc``, its cause or context, or any exception in a group among them, is
    EMFILE or ENFILE: trio wraps a failed connect in a group of each attempt's error."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DESCRIPTOR_ERRNOS:
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return False


def open_file_limit() -> int | None:
    """The process's soft limit on open files (``ulimit -n``), None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class DescriptorReserve:
    """One file descriptor (``/dev/null``) kept open so it can be given up when accept(2)
    fails with EMFILE: closing it lets one pending connection be accepted and answered
    rather than left hanging in the kernel's backlog. Not thread-safe: trio's thread only."""

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        self._fd: int | None = None
        self.refill()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def refill(self) -> bool:
        """Take the spare descriptor again if it is not held; False if none is free."""
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def release(self) -> bool:
        """Give the spare back to the process; False if it was not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        os.close(fd)
        return True

    def close(self) -> None:
        self.release()
