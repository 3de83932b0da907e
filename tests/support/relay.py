"""The session relay driven from trio, for tests on the autojump clock; and socket pairs.

In production a :class:`~fixproxy.proxy.relay.SessionRelay` runs in a thread of its own and
waits in ``poll``. Tests that take minutes of heartbeats in no real time run the same relay,
through the same handlers, from trio instead: :func:`drive_in_trio` waits for the descriptors
the relay asks for with trio's own waits and the relay's next deadline on trio's clock, then
calls :meth:`~fixproxy.proxy.relay.SessionRelay.handle`. Pass it as a runtime's
``run_relay``. The relay needs real sockets, so the harnesses connect peers with
:func:`socket_stream_pair` instead of memory streams.
"""

from __future__ import annotations

import math
import select
import socket
from collections.abc import Awaitable, Callable

import trio

from fixproxy.net.streams import RawSocketStream
from fixproxy.proxy.handover import RelayResult
from fixproxy.proxy.relay import SessionRelay

_CREATED: list[socket.socket] = []
"""Sockets made by :func:`socket_stream_pair`; the tests' ends are often left to the close
of the test, so :func:`close_socket_pairs` closes whatever is still open."""


def close_socket_pairs() -> None:
    """Close every socket :func:`socket_stream_pair` made that is still open (a test's end)."""
    while _CREATED:
        _CREATED.pop().close()


def socket_stream_pair(*, buffer_size: int | None = None
                       ) -> tuple[RawSocketStream, RawSocketStream]:
    """Two connected stream ends over a local socket pair (fixproxy's end first).

    ``buffer_size`` shrinks both kernel buffers, so a peer that stops reading fills the
    window after a few KiB, as a hung peer does over TCP.
    """
    ours, theirs = socket.socketpair()
    _CREATED.extend((ours, theirs))
    if buffer_size is not None:
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
    return RawSocketStream(ours), RawSocketStream(theirs)


async def drive_in_trio(relay: SessionRelay) -> RelayResult:
    """Run ``relay`` to its end from trio: what its thread's ``poll`` loop does, with trio's
    waits and clock, so the autojump clock covers its deadlines."""
    relay.start()
    while not relay.done:
        ready: list[tuple[int, int]] = []
        if relay.timeout() != 0.0:
            ready = await _wait_any(relay.wanted(), relay.deadline())
        relay.handle(ready)
    return relay.result()


async def _wait_any(wanted: list[tuple[int, int]], deadline: float | None
                    ) -> list[tuple[int, int]]:
    ready: list[tuple[int, int]] = []
    with trio.move_on_at(math.inf if deadline is None else deadline):
        async with trio.open_nursery() as nursery:
            for fd, mask in wanted:
                if mask & select.POLLIN:
                    nursery.start_soon(_wait_one, fd, select.POLLIN,
                                       trio.lowlevel.wait_readable, ready, nursery)
                if mask & select.POLLOUT:
                    nursery.start_soon(_wait_one, fd, select.POLLOUT,
                                       trio.lowlevel.wait_writable, ready, nursery)
    return ready


async def _wait_one(fd: int, flag: int, wait: Callable[[int], Awaitable[None]],
                    ready: list[tuple[int, int]], nursery: trio.Nursery) -> None:
    await wait(fd)
    ready.append((fd, flag))
    nursery.cancel_scope.cancel()
