"""The metrics endpoint: a deliberately small HTTP/1.0 responder for /metrics, /healthz and
whatever routes its caller adds (the server adds /readyz and /status).

Theory of operation
-------------------
The endpoint is a small HTTP/1.0 responder on trio rather than prometheus-client's threaded
server: running in the trio thread, a scrape reads the relay's plain-integer counters without
locks, and it binds exactly the configured loopback address.

It answers one request per connection and closes (``Connection: close``), which is all that
Prometheus, orchestrators' probes and ``fixproxy status`` need. Only the request line is
looked at: GET or HEAD, a path (the query is ignored), nothing else; a HEAD answer announces
the length the GET body would have. What a client can make it hold is bounded: a request head
longer than :data:`HTTP_REQUEST_LIMIT` bytes is refused (431), and the whole exchange gets
:data:`HTTP_TIMEOUT` seconds. Routes are plain synchronous callables that read values already
in memory (the registry, the status board), so an answer never waits on I/O; one that raises
answers 500 and is logged, and the endpoint carries on.

Out of file descriptors, Linux's accept(2) fails before it looks at the queue, and trio's
``serve_listeners`` would log a traceback every 0.1 s for as long as the shortage lasts once
one scrape arrived. The accept loop here logs it once and answers each waiting scrape with a
descriptor held in reserve (:class:`~fixproxy.net.listen.DescriptorReserve`), one at a time:
the metrics are most wanted while something is wrong.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fixproxy.errors import FixProxyError
from fixproxy.net.listen import (
    DESCRIPTOR_ERRNOS,
    DescriptorReserve,
    address_of,
    open_listeners,
)
from fixproxy.ops.metrics import Metrics

# The server's logger: operators' log filters select the endpoint's lines by this name.
logger = logging.getLogger("fixproxy.server")

HTTP_REQUEST_LIMIT: Final = 8192
"""Largest HTTP request head read by the metrics endpoint; scrapers send a few hundred bytes."""
HTTP_TIMEOUT: Final = 5.0
"""Seconds a metrics client has to send its request and read the answer."""
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({*DESCRIPTOR_ERRNOS, errno.ENOMEM, errno.ENOBUFS})
"""accept(2) errors that mean "out of resources for now": wait, never stop serving."""
ACCEPT_RETRY_DELAY: Final = 0.1
"""Seconds between accepts while memory is short (or no descriptor is in reserve)."""


Route = Callable[[], tuple[int, str, bytes]]
"""One path of the endpoint: returns (status, content type, body)."""


async def serve_metrics(host: str, port: int, metrics: Metrics, *,
                        routes: Mapping[str, Route] | None = None,
                        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve ``/metrics`` and ``/healthz`` over HTTP/1.0 on ``host:port``, plus ``routes``
    (path -> answer; the server adds ``/readyz`` and ``/status``)."""
    def scrape() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)

    all_routes: dict[str, Route] = {
        "/metrics": scrape,
        "/healthz": lambda: (200, "text/plain; charset=utf-8", b"ok\n"),
    }
    all_routes.update(routes or {})
    listeners = await open_listeners(host, port, "metrics")
    logger.info("metrics on http://%s:%d/metrics", *address_of(listeners[0]))
    task_status.started(address_of(listeners[0]))
    handler = functools.partial(_http_connection, routes=all_routes)
    reserve = DescriptorReserve()
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept_scrapes, listener, handler, nursery, reserve)
    finally:
        reserve.close()
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def _accept_scrapes(listener: trio.SocketListener,
                          handler: Callable[[trio.SocketStream], Awaitable[None]],
                          nursery: trio.Nursery, reserve: DescriptorReserve) -> None:
    """Accept scrapes into ``nursery``; through a shortage of descriptors, one at a time
    with the one in ``reserve``."""
    shortage: str | None = None
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise FixProxyError(f"metrics: accept failed: {exc.strerror or exc}") from exc
            if shortage is None:
                shortage = exc.strerror or str(exc)
                # An operator's condition, said once: a traceback would add nothing.
                logger.error("metrics endpoint: accept failed (%s); scrapes are answered "  # noqa: TRY400
                             "one at a time until resources free up", shortage)
            if exc.errno not in DESCRIPTOR_ERRNOS or not reserve.refill():
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            await trio.lowlevel.wait_readable(listener.socket)
            reserve.release()
            try:
                try:
                    stream = await listener.accept()
                except OSError:
                    continue  # the next accept says what it is
                await handler(stream)
            finally:
                reserve.refill()
            continue
        if shortage is not None:
            logger.warning("metrics endpoint: accepting again after a shortage (%s)", shortage)
            shortage = None
        nursery.start_soon(handler, stream)


async def _http_connection(stream: trio.SocketStream, routes: Mapping[str, Route]) -> None:
    async with stream:
        with trio.move_on_after(HTTP_TIMEOUT):
            head = b""
            try:
                while b"\r\n\r\n" not in head and b"\n\n" not in head:
                    chunk = await stream.receive_some(HTTP_REQUEST_LIMIT)
                    if not chunk:
                        return
                    head += chunk
                    if len(head) > HTTP_REQUEST_LIMIT:
                        await _http_answer(stream, 431, "text/plain", b"request too large\n")
                        return
                parts = head.split(b"\r\n", 1)[0].split()
                if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
                    await _http_answer(stream, 405, "text/plain", b"only GET\n")
                    return
                path = parts[1].split(b"?", 1)[0].decode("ascii", "replace")
                route = routes.get(path)
                if route is None:
                    await _http_answer(stream, 404, "text/plain", b"not found\n")
                    return
                try:
                    status, content_type, body = route()
                except Exception:
                    # A fault in one answer must not take the endpoint (and the server) down.
                    logger.exception("the metrics endpoint failed to answer %s", path)
                    status, content_type, body = 500, "text/plain", b"internal error\n"
                await _http_answer(stream, status, content_type, body,
                                   head_only=parts[0] == b"HEAD")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                   431: "Request Header Fields Too Large", 500: "Internal Server Error",
                   503: "Service Unavailable"}


async def _http_answer(stream: trio.SocketStream, status: int, content_type: str,
                       body: bytes, *, head_only: bool = False) -> None:
    # A HEAD answer announces the length the GET body would have, and sends none.
    head = (f"HTTP/1.0 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    await stream.send_all(head if head_only else head + body)
