"""The metrics endpoint's HTTP responder, spoken to over real loopback sockets on port 0.

Requests are written by hand, byte for byte, so the tests control exactly what the responder
reads: split heads, bare LF line ends, oversized heads and silent clients included.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import pytest
import trio
import trio.testing
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fixproxy.errors import FixProxyError
from fixproxy.net.http import (
    HTTP_REQUEST_LIMIT,
    HTTP_TIMEOUT,
    Route,
    _accept_scrapes,
    _http_connection,
    serve_metrics,
)
from fixproxy.net.listen import DescriptorReserve, open_listeners
from fixproxy.ops.metrics import Metrics

GUARD = 10.0
"""Seconds any single test may wait on the network before failing."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


@asynccontextmanager
async def endpoint(routes: Mapping[str, Route] | None = None,
                   metrics: Metrics | None = None) -> AsyncIterator[tuple[str, int]]:
    """Serve on a free loopback port; yield the bound address."""
    metrics = metrics if metrics is not None else Metrics(CollectorRegistry())
    async with trio.open_nursery() as nursery:
        address: tuple[str, int] = await nursery.start(
            functools.partial(serve_metrics, routes=routes), "127.0.0.1", 0, metrics)
        yield address
        nursery.cancel_scope.cancel()


async def exchange(address: tuple[str, int], *chunks: bytes) -> bytes:
    """Send ``chunks`` one write at a time, then read until the server closes."""
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            for chunk in chunks:
                await stream.send_all(chunk)
                await trio.sleep(0.01)  # let the server read each chunk on its own
            response = b""
            while data := await stream.receive_some(65536):
                response += data
    return response


def parse(response: bytes) -> Answer:
    head, separator, body = response.partition(b"\r\n\r\n")
    assert separator, response[:200]
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    version, status, reason = status_line.split(" ", 2)
    assert version == "HTTP/1.0"
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert int(headers["Content-Length"]) == len(body) or not body
    return Answer(int(status), reason, headers, body)


async def get(address: tuple[str, int], path: str, method: str = "GET") -> Answer:
    return parse(await exchange(address, f"{method} {path} HTTP/1.0\r\n"
                                         f"Host: localhost\r\n\r\n".encode()))


async def test_metrics_are_the_registry_in_prometheus_text() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.declare_session("s1")
    async with endpoint(metrics=metrics) as address:
        assert address[0] == "127.0.0.1"
        assert address[1] != 0
        answer = await get(address, "/metrics")
    assert (answer.status, answer.reason) == (200, "OK")
    assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert answer.headers["Connection"] == "close"
    names = {family.name for family in text_string_to_metric_families(answer.body.decode())}
    assert "fixproxy_logons" in names  # a counter family, named without _total by the parser


async def test_healthz_is_ok() -> None:
    async with endpoint() as address:
        answer = await get(address, "/healthz")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert answer.body == b"ok\n"


async def test_added_routes_are_served_and_the_query_is_ignored() -> None:
    calls: list[str] = []

    def readyz() -> tuple[int, str, bytes]:
        calls.append("readyz")
        return 503, "application/json", b'{"ready": false}\n'

    async with endpoint({"/readyz": readyz}) as address:
        answer = await get(address, "/readyz?verbose=1")
    assert (answer.status, answer.reason) == (503, "Service Unavailable")
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.body == b'{"ready": false}\n'
    assert calls == ["readyz"]


async def test_head_announces_the_length_and_sends_no_body() -> None:
    body = b"x" * 1234
    async with endpoint({"/thing": lambda: (200, "text/plain", body)}) as address:
        answer = parse(await exchange(address, b"HEAD /thing HTTP/1.0\r\n\r\n"))
    assert answer.status == 200
    assert answer.headers["Content-Length"] == "1234"
    assert answer.body == b""


async def test_unknown_path_is_404() -> None:
    async with endpoint() as address:
        answer = await get(address, "/no-such-page")
    assert (answer.status, answer.reason, answer.body) == (404, "Not Found", b"not found\n")


@pytest.mark.parametrize("request_head", [
    b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    b"DELETE /metrics HTTP/1.0\r\n\r\n",
    b"GET\r\n\r\n",
    b"\r\n\r\n",
])
async def test_anything_but_get_or_head_is_405(request_head: bytes) -> None:
    async with endpoint() as address:
        answer = parse(await exchange(address, request_head))
    assert (answer.status, answer.reason, answer.body) == (405, "Method Not Allowed",
                                                           b"only GET\n")


async def test_a_head_in_pieces_with_bare_line_feeds_is_read_whole() -> None:
    async with endpoint() as address:
        answer = parse(await exchange(address, b"GET /hea", b"lthz HTTP/1.0\n", b"Host: x\n",
                                      b"\n"))
    assert (answer.status, answer.body) == (200, b"ok\n")


async def test_an_oversized_head_is_431() -> None:
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    chunks = [b"GET /metrics HTTP/1.0\r\n"] + [filler] * (HTTP_REQUEST_LIMIT // len(filler) + 2)
    async with endpoint() as address:
        answer = parse(await exchange(address, b"".join(chunks)))
    assert (answer.status, answer.reason) == (431, "Request Header Fields Too Large")
    assert answer.body == b"request too large\n"


async def test_a_failing_route_is_500_and_the_endpoint_carries_on(
        caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> tuple[int, str, bytes]:
        raise RuntimeError("the answer could not be built")

    async with endpoint({"/status": broken}) as address:
        answer = await get(address, "/status")
        assert (answer.status, answer.reason) == (500, "Internal Server Error")
        assert answer.body == b"internal error\n"
        assert (await get(address, "/healthz")).status == 200
    records = [r for r in caplog.records if r.name == "fixproxy.server"
               and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in records] == ["the metrics endpoint failed to answer /status"]
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)


async def test_a_client_that_leaves_without_asking_gets_nothing() -> None:
    async def ask_then_leave(partial: bytes) -> bytes:
        with trio.fail_after(GUARD):
            stream = await trio.open_tcp_stream(*address)
            async with stream:
                await stream.send_all(partial)
                await stream.send_eof()  # the request ends here, unfinished
                response = b""
                while data := await stream.receive_some(65536):
                    response += data
        return response

    async with endpoint() as address:
        assert await ask_then_leave(b"") == b""
        assert await ask_then_leave(b"GET /metr") == b""
        assert (await get(address, "/healthz")).status == 200


async def test_a_silent_client_is_dropped_after_the_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    async with endpoint() as address:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            started = trio.current_time()
            await stream.send_all(b"GET /metrics HTTP/1.0\r\n")  # and never the blank line
            with trio.fail_after(HTTP_TIMEOUT + GUARD):
                assert await stream.receive_some() == b""
            assert trio.current_time() - started >= HTTP_TIMEOUT


async def test_the_bound_address_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fixproxy.server")
    async with endpoint() as (host, port):
        pass
    assert f"metrics on http://{host}:{port}/metrics" in [
        r.getMessage() for r in caplog.records if r.name == "fixproxy.server"]


async def test_a_port_in_use_is_a_fixproxy_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(FixProxyError, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
            await serve_metrics("127.0.0.1", port, Metrics(CollectorRegistry()))


class _ShortListener:
    """A real listening socket whose accept fails with EMFILE while the spare descriptor is
    held: a process at its open-file limit, as the kernel sees it."""

    def __init__(self, real: trio.SocketListener, reserve: DescriptorReserve) -> None:
        self.real = real
        self.socket = real.socket
        self.reserve = reserve
        self.accepts = 0

    async def accept(self) -> trio.SocketStream:
        self.accepts += 1
        if self.reserve.held:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return await self.real.accept()


async def test_scrapes_are_answered_with_the_spare_while_out_of_descriptors(
        caplog: pytest.LogCaptureFixture) -> None:
    [real] = await open_listeners("127.0.0.1", 0, "metrics")
    host, port = real.socket.getsockname()[:2]
    reserve = DescriptorReserve()
    short = _ShortListener(real, reserve)
    handler = functools.partial(_http_connection,
                                routes={"/healthz": lambda: (200, "text/plain", b"ok\n")})

    async def get() -> bytes:
        stream = await trio.open_tcp_stream(host, port)
        try:
            await stream.send_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            received = b""
            while chunk := await stream.receive_some(1000):
                received += chunk
            return received
        finally:
            await stream.aclose()

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_accept_scrapes, cast(trio.SocketListener, short), handler,
                                   nursery, reserve)
                for _ in range(3):
                    assert (await get()).endswith(b"\r\n\r\nok\n")
                await trio.testing.wait_all_tasks_blocked()
                assert reserve.held
                accepts = short.accepts
                await trio.sleep(0.2)  # a window in which a retrying loop would accept again
                assert short.accepts == accepts
                nursery.cancel_scope.cancel()
    finally:
        reserve.close()
        await real.aclose()
    errors = [record.getMessage() for record in caplog.records
              if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "metrics endpoint: accept failed" in errors[0]
