"""The trio relay floor: fixproxy's own I/O layer with none of its FIX work.

It accepts plain TCP, opens TLS to the gateway with fixproxy's client context and the same
chain and hostname checks (no pins, no Logon rewrite: the engine signs, as with stunnel), and
copies bytes both ways with the same non-blocking streams and the same read size as the relay.
Nothing is framed, counted or inspected.

Its column in the benchmark splits what fixproxy adds over stunnel into two parts: what any
relay written on trio and Python's ssl costs (this process against stunnel), and what
fixproxy's FIX handling costs on top (fixproxy against this process).

Run by the benchmark as ``python3 -m bench.floor LISTEN_PORT GATEWAY_PORT CA_FILE NAME``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from fixproxy.config.model import TLSPolicy
from fixproxy.net.streams import RECEIVE_SIZE, RawSocketStream
from fixproxy.net.tls import (
    GatewayTrust,
    HandshakeInfo,
    TLSSocketStream,
    make_client_context,
    open_gateway_stream,
)

CONNECT_TIMEOUT = 10.0


async def _copy(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    try:
        while data := await source.receive_some(RECEIVE_SIZE):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


Connect = Callable[[], Awaitable[tuple[TLSSocketStream, HandshakeInfo]]]


async def _serve(connect: Connect, stream: trio.SocketStream) -> None:
    engine = RawSocketStream.take_over(stream)
    try:
        gateway, _ = await connect()
    except Exception:
        await engine.aclose()
        raise
    async with trio.open_nursery() as nursery:
        async def one_way(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
            await _copy(source, sink)
            nursery.cancel_scope.cancel()
        nursery.start_soon(one_way, engine, gateway)
        nursery.start_soon(one_way, gateway, engine)
    await trio.aclose_forcefully(gateway)
    await engine.aclose()


async def main(listen_port: int, gateway_port: int, ca_file: Path, name: str) -> None:
    policy = TLSPolicy(server_name=name, verify="ca", ca_file=ca_file, pins=(),
                       pinned_cert=None)
    connect = functools.partial(open_gateway_stream, "127.0.0.1", gateway_port,
                                GatewayTrust.from_policy(policy), make_client_context(policy),
                                connect_timeout=CONNECT_TIMEOUT)
    await trio.serve_tcp(functools.partial(_serve, connect), listen_port, host="127.0.0.1")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
