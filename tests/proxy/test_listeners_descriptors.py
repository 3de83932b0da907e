"""The accept loop out of file descriptors: each waiting engine answered, no spin, one log line.

The kernel is modelled by a listener whose accept fails with EMFILE while the shortage lasts
and the spare descriptor is held (the spare holds the last free slot, as in a full process),
and works once the spare is given up; the end-to-end case, with a real limit on a real
process, is tests/faults/test_resources.py.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import cast

import pytest
import trio
import trio.testing

from fixproxy.net.listen import DescriptorReserve, open_listeners
from fixproxy.proxy.listeners import SessionListeners, _Listener
from fixproxy.proxy.runtime import SessionRuntime

RUNTIME = cast(SessionRuntime, object())
"""The accept loop only hands the runtime on; the handlers below never look into it."""


class ShortListener:
    """A real listening socket whose accept fails with EMFILE while ``short`` and the spare
    descriptor is held."""

    def __init__(self, real: trio.SocketListener, listeners: SessionListeners) -> None:
        self.real = real
        self.socket = real.socket
        self.listeners = listeners
        self.short = True
        self.accepts = 0

    async def accept(self) -> trio.SocketStream:
        self.accepts += 1
        reserve = self.listeners._reserve
        if self.short and reserve is not None and reserve.held:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return await self.real.accept()


async def test_engines_waiting_while_out_of_descriptors_are_answered_then_served(
        caplog: pytest.LogCaptureFixture) -> None:
    refused: list[SessionRuntime] = []
    served: list[SessionRuntime] = []

    async def refuse(stream: trio.SocketStream, runtime: SessionRuntime) -> None:
        refused.append(runtime)
        await stream.send_all(b"out of descriptors")

    async def serve(stream: trio.SocketStream, runtime: SessionRuntime) -> None:
        served.append(runtime)
        await stream.send_all(b"served")

    [real] = await open_listeners("127.0.0.1", 0, "test")
    host, port = real.socket.getsockname()[:2]
    listeners = SessionListeners({"s": RUNTIME}, serve, refuse)
    short = ShortListener(real, listeners)
    listener = _Listener("s", (host, port), [real])

    async def answer() -> bytes:
        stream = await trio.open_tcp_stream(host, port)
        try:
            received = b""
            while chunk := await stream.receive_some(100):
                received += chunk
            return received
        finally:
            await stream.aclose()

    reserve = DescriptorReserve()
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                listeners._connections = nursery  # what serve() sets up
                listeners._reserve = reserve
                nursery.start_soon(listeners._accept, listener,
                                   cast(trio.SocketListener, short))
                for _ in range(3):
                    assert await answer() == b"out of descriptors"
                # Idle while short: the spare is back and the loop waits for the next
                # engine; it does not spin.
                await trio.testing.wait_all_tasks_blocked()
                assert reserve.held
                accepts = short.accepts
                await trio.sleep(0.2)
                assert short.accepts == accepts
                short.short = False
                assert await answer() == b"served"
                nursery.cancel_scope.cancel()
    finally:
        reserve.close()
        await real.aclose()
    assert refused == [RUNTIME] * 3 and served == [RUNTIME]
    assert listeners.refused_for_descriptors == 3
    lines = [(record.levelno, record.getMessage()) for record in caplog.records
             if record.name == "fixproxy.reload"]
    assert len(lines) == 2, lines
    assert lines[0][0] == logging.ERROR and "out of file descriptors" in lines[0][1]
    assert lines[1][0] == logging.WARNING and "3 connections were refused" in lines[1][1]


async def test_shortages_close_together_are_said_once_unless_one_lasts(
        mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async def serve(stream: trio.SocketStream, runtime: SessionRuntime) -> None:
        raise AssertionError("nothing is accepted here")

    [real] = await open_listeners("127.0.0.1", 0, "test")
    try:
        listeners = SessionListeners({"s": RUNTIME}, serve)
        listener = _Listener("s", ("127.0.0.1", 0), [real])
        emfile = OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        def said() -> list[int]:
            return [record.levelno for record in caplog.records
                    if record.name == "fixproxy.reload"]

        listeners._shortage_began(listener, emfile)
        listeners._shortage_began(listener, emfile)
        listeners._shortage_ended()
        assert said() == [logging.ERROR, logging.WARNING]
        mock_clock.jump(10)  # a new shortage soon after: quiet, its end too
        listeners._shortage_began(listener, emfile)
        listeners._shortage_ended()
        mock_clock.jump(10)
        listeners._shortage_began(listener, emfile)
        assert said() == [logging.ERROR, logging.WARNING]
        mock_clock.jump(60)  # that one lasts: said after all, and so is its end
        listeners._shortage_began(listener, emfile)
        listeners._shortage_ended()
        assert said() == [logging.ERROR, logging.WARNING, logging.ERROR, logging.WARNING]
    finally:
        await real.aclose()
