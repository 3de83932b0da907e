"""The fixproxy server: session listeners, the metrics endpoint and signal handling.

Theory of operation
-------------------
:func:`serve_proxy` builds one :class:`~fixproxy.relay.SessionRuntime` per configured session
(loading its key, building its TLS context, so a bad key or CA file fails at start, not at the
first Logon), opens every listener, and reports the bound addresses through
``task_status.started`` (tests bind port 0). Each accepted connection runs
:func:`~fixproxy.relay.relay_engine_connection` in its own task under the listener's nursery.

The metrics endpoint is a deliberately small HTTP/1.0 responder on trio rather than
prometheus-client's threaded server: running in the trio thread, a scrape reads the relay's
plain-integer counters without locks, and it binds exactly the configured loopback address.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fixproxy import tls
from fixproxy.backoff import LogonBackoff
from fixproxy.config import Config, SessionConfig
from fixproxy.errors import FixProxyError
from fixproxy.manager import SessionManager
from fixproxy.metrics import Metrics
from fixproxy.relay import SessionRuntime, declare_status, relay_engine_connection
from fixproxy.seqstore import SequenceStore
from fixproxy.signing import LogonSigner, load_private_key

logger = logging.getLogger("fixproxy.server")

HTTP_REQUEST_LIMIT: Final = 8192
"""Largest HTTP request head read by the metrics endpoint; scrapers send a few hundred bytes."""
HTTP_TIMEOUT: Final = 5.0
"""Seconds a metrics client has to send its request and read the answer."""


@dataclass(frozen=True, slots=True)
class BoundAddresses:
    """Where the server listens, as reported once it is ready."""

    sessions: dict[str, tuple[str, int]]
    metrics: tuple[str, int] | None


def build_runtime(session: SessionConfig, metrics: Metrics,
                  manager: SessionManager | None = None,
                  sequences: SequenceStore | None = None) -> SessionRuntime:
    """Load a session's key and TLS settings.

    Raises:
        FixProxyError: the key or a TLS file cannot be used.
    """
    signer = LogonSigner(load_private_key(session.private_key))
    context = tls.make_client_context(session.tls)
    trust = tls.GatewayTrust.from_policy(session.tls)
    connect = functools.partial(tls.open_gateway_stream, session.host, session.port, trust,
                                context, connect_timeout=session.connect_timeout)
    return SessionRuntime(config=session, policy=session.logon_policy(), sign=signer,
                          connect=connect, metrics=metrics,
                          manager=manager if manager is not None else SessionManager(),
                          sequences=sequences)


async def serve_proxy(config: Config, metrics: Metrics, *,
                      manager: SessionManager | None = None,
                      task_status: trio.TaskStatus[BoundAddresses] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """Run every session listener and the metrics endpoint until cancelled."""
    async with trio.open_nursery() as sessions:
        await ProxyServer(config, metrics, manager).serve(sessions, task_status=task_status)


class ProxyServer:
    """The listeners and the metrics endpoint; engine connections run in a nursery of the
    caller's, so that listening can stop while the sessions log out."""

    def __init__(self, config: Config, metrics: Metrics,
                 manager: SessionManager | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.manager = manager if manager is not None else SessionManager(
            config.maintenance, LogonBackoff(config.backoff.floor, config.backoff.ceiling))
        metrics.maintenance_active.set_function(self._maintenance_active)
        metrics.watch_status(self.manager.status, trio.current_time)
        state_dir = config.proxy.state_dir
        sequences = SequenceStore(state_dir) if state_dir is not None else None
        self.runtimes = [build_runtime(session, metrics, self.manager, sequences)
                         for session in config.sessions]
        self._listening: trio.CancelScope | None = None

    async def serve(self, sessions: trio.Nursery, *,
                    task_status: trio.TaskStatus[BoundAddresses] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Accept engines into ``sessions`` until :meth:`stop_listening` or cancellation."""
        metrics = self.metrics
        async with trio.open_nursery() as nursery:
            self._listening = nursery.cancel_scope
            bound: dict[str, tuple[str, int]] = {}
            for runtime in self.runtimes:
                metrics.declare_session(runtime.config.name)
                declare_status(runtime)
                host, port = runtime.config.listen
                listeners = await _open_listeners(host, port,
                                                  f"session {runtime.config.name!r}")
                bound[runtime.config.name] = _address_of(listeners[0])
                handler = functools.partial(relay_engine_connection, runtime=runtime)
                nursery.start_soon(functools.partial(trio.serve_listeners, handler, listeners,
                                                     handler_nursery=sessions))
                logger.info("session %s listening on %s:%d for %s at %s:%d",
                            runtime.config.name, *bound[runtime.config.name],
                            runtime.config.endpoint.target_comp_id, runtime.config.host,
                            runtime.config.port)
            metrics_address = None
            if self.config.metrics.listen is not None:
                metrics_address = await sessions.start(serve_metrics,
                                                       *self.config.metrics.listen, metrics)
            task_status.started(BoundAddresses(bound, metrics_address))

    def _maintenance_active(self) -> float:
        return 0.0 if self.manager.maintenance_window(datetime.now(UTC)) is None else 1.0

    def stop_listening(self) -> None:
        """Close the engine listeners; connections already accepted carry on."""
        if self._listening is not None:
            self._listening.cancel()


async def _open_listeners(host: str, port: int, what: str) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise FixProxyError(f"{what}: cannot listen on {host}:{port}: {exc.strerror}") from exc


def _address_of(listener: trio.SocketListener) -> tuple[str, int]:
    sockname = listener.socket.getsockname()
    return str(sockname[0]), int(sockname[1])


Route = Callable[[], tuple[int, str, bytes]]


async def serve_metrics(host: str, port: int, metrics: Metrics, *,
                        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve ``/metrics`` and ``/healthz`` over HTTP/1.0 on ``host:port``."""
    def scrape() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)

    routes: dict[str, Route] = {
        "/metrics": scrape,
        "/healthz": lambda: (200, "text/plain; charset=utf-8", b"ok\n"),
    }
    listeners = await _open_listeners(host, port, "metrics")
    logger.info("metrics on http://%s:%d/metrics", *_address_of(listeners[0]))
    task_status.started(_address_of(listeners[0]))
    await trio.serve_listeners(functools.partial(_http_connection, routes=routes), listeners)


async def _http_connection(stream: trio.SocketStream, routes: dict[str, Route]) -> None:
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
                status, content_type, body = route()
                await _http_answer(stream, status, content_type,
                                   b"" if parts[0] == b"HEAD" else body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                   431: "Request Header Fields Too Large", 503: "Service Unavailable"}


async def _http_answer(stream: trio.SocketStream, status: int, content_type: str,
                       body: bytes) -> None:
    head = (f"HTTP/1.0 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    await stream.send_all(head + body)


async def run_until_signal(config: Config, metrics: Metrics) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting, log every session out (waiting up
    to ``shutdown_timeout`` for the gateway's answers) and return. A second signal ends at
    once."""
    server = ProxyServer(config, metrics)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as sessions:
            await sessions.start(server.serve, sessions)

            async def drain() -> None:
                server.stop_listening()
                with trio.move_on_after(config.proxy.shutdown_timeout):
                    await server.manager.drain()
                sessions.cancel_scope.cancel()

            draining = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if draining:
                    logger.warning("received %s again; stopping now", name)
                    sessions.cancel_scope.cancel()
                    break
                logger.info("received %s; logging out %d session(s), then stopping (again to "
                            "stop at once)", name, server.manager.live_sessions)
                draining = True
                sessions.start_soon(drain)
