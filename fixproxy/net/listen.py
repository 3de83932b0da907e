"""Listening sockets: open every address a listen setting names, and say where they are bound.

Shared by the session listeners (fixproxy.proxy.listeners) and the metrics endpoint
(fixproxy.net.http), so both report a busy or forbidden address the same way.
"""

from __future__ import annotations

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
