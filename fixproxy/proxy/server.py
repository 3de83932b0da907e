"""The fixproxy server: session listeners, the metrics endpoint and signal handling.

Theory of operation
-------------------
:func:`serve_proxy` builds one :class:`~fixproxy.proxy.runtime.SessionRuntime` per configured
session (loading its key, building its TLS context, so a bad key or CA file fails at start,
not at the first Logon), opens every listener, and reports the bound addresses through
``task_status.started`` (tests bind port 0). Each accepted connection runs
:func:`~fixproxy.proxy.admit.relay_engine_connection` in its own task under the listener's
nursery, with the runtime in force when it was accepted: SIGHUP swaps in the runtimes of a
re-read configuration for later connections only (:mod:`fixproxy.proxy.reload`). The metrics
endpoint itself is :mod:`fixproxy.net.http`; a scrape reads the session relays'
plain-integer counters without locks (each has one writer, its relay's thread; see
:mod:`fixproxy.ops.metrics`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

from fixproxy import __version__
from fixproxy.config.model import Config
from fixproxy.net.http import serve_metrics
from fixproxy.ops.control import PidFile, ReloadRecord, write_reload_record
from fixproxy.ops.metrics import Metrics
from fixproxy.ops.seqstore import SequenceStore
from fixproxy.proxy.admit import refuse_for_descriptors, relay_engine_connection
from fixproxy.proxy.dataplane import DataPlane
from fixproxy.proxy.health import Health
from fixproxy.proxy.listeners import SessionListeners
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.reload import ConfigReloader, ReloadResult
from fixproxy.proxy.runtime import SessionRuntime, build_runtime, declare_status
from fixproxy.session.backoff import LogonBackoff

logger = logging.getLogger("fixproxy.server")


@dataclass(frozen=True, slots=True)
class BoundAddresses:
    """Where the server listens, as reported once it is ready."""

    sessions: dict[str, tuple[str, int]]
    metrics: tuple[str, int] | None


async def serve_proxy(config: Config, metrics: Metrics, *,
                      manager: SessionManager | None = None,
                      task_status: trio.TaskStatus[BoundAddresses] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """Run every session listener and the metrics endpoint until cancelled."""
    async with trio.open_nursery() as sessions:
        await ProxyServer(config, metrics, manager).serve(sessions, task_status=task_status)


class ProxyServer:
    """The listeners and the metrics endpoint; engine connections run in a nursery of the
    caller's, so that listening can stop while the sessions log out.

    :meth:`reload` re-reads the configuration file: new connections get the new
    configuration, live ones keep theirs (see :mod:`fixproxy.proxy.reload`).
    """

    def __init__(self, config: Config, metrics: Metrics,
                 manager: SessionManager | None = None) -> None:
        self.metrics = metrics
        self.manager = manager if manager is not None else SessionManager(
            config.maintenance, LogonBackoff(config.backoff.floor, config.backoff.ceiling))
        self.manager.size_for(len(config.sessions))
        metrics.maintenance_active.set_function(self._maintenance_active)
        metrics.watch_status(self.manager.status, trio.current_time)
        state_dir = config.proxy.state_dir
        sequences = SequenceStore(state_dir) if state_dir is not None else None
        build = functools.partial(build_runtime, metrics=metrics, manager=self.manager,
                                  sequences=sequences, proxy=config.proxy)
        self.listeners = SessionListeners(
            {session.name: build(session) for session in config.sessions},
            relay_engine_connection, refuse_for_descriptors)
        self.reloader = ConfigReloader(config, self.listeners, build, metrics, self.manager)
        # Reads the runtimes on every pass, so it follows a reload that replaces them.
        self.health = Health(self.manager, lambda: list(self.runtimes.values()), metrics,
                             interval=config.metrics.readiness_interval)

    @property
    def config(self) -> Config:
        """The configuration in force (the latest accepted reload's)."""
        return self.reloader.config

    @property
    def runtimes(self) -> Mapping[str, SessionRuntime]:
        """Session name -> the runtime a new connection of that session gets."""
        return self.listeners.runtimes

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """Where each session listens now."""
        return self.listeners.addresses

    async def serve(self, sessions: trio.Nursery, *,
                    task_status: trio.TaskStatus[BoundAddresses] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Accept engines into ``sessions`` until :meth:`stop_listening` or cancellation."""
        metrics = self.metrics
        for runtime in self.runtimes.values():
            metrics.declare_session(runtime.config.name)
            declare_status(runtime)
        if self.manager.data_plane is None:
            # Beside the sessions: it outlives the listeners and ends once they have.
            plane = self.manager.data_plane = DataPlane()
            sessions.start_soon(_serve_data_plane, plane)
        async with trio.open_nursery() as nursery:
            bound: dict[str, tuple[str, int]] = await nursery.start(self.listeners.serve,
                                                                   sessions)
            metrics_address = None
            if self.config.metrics.listen is not None:
                # The probes only feed /readyz, so they run only where it is served.
                sessions.start_soon(self.health.run)
                metrics_address = await sessions.start(
                    functools.partial(serve_metrics, routes=self.health.routes()),
                    *self.config.metrics.listen, metrics)
            task_status.started(BoundAddresses(bound, metrics_address))

    async def reload(self) -> ReloadResult:
        """Re-read the configuration file and put it in force for new connections, or
        reject it whole (logged, counted, the old configuration kept)."""
        return await self.reloader.reload()

    def _maintenance_active(self) -> float:
        return 0.0 if self.manager.maintenance_window(datetime.now(UTC)) is None else 1.0

    def stop_listening(self) -> None:
        """Close the engine listeners; connections already accepted carry on."""
        self.listeners.stop()


async def _serve_data_plane(plane: DataPlane) -> None:
    """Run the data plane's thread until cancelled; then wait until its relays have ended
    (each session's own task aborts its relay when cancelled)."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_when_cancelled, plane)
            await trio.to_thread.run_sync(plane.run, abandon_on_cancel=False,
                                          thread_name="fixproxy data plane")
            nursery.cancel_scope.cancel()
    finally:
        plane.close()


async def _stop_when_cancelled(plane: DataPlane) -> None:
    try:
        await trio.sleep_forever()
    finally:
        plane.stop()


async def run_until_signal(config: Config, metrics: Metrics) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting, log every session out (waiting up
    to ``shutdown_timeout`` for the gateway's answers) and return. A second signal ends at
    once.

    SIGHUP re-reads the configuration file for new connections (:mod:`fixproxy.proxy.reload`);
    one received while stopping is ignored. While serving, the process id is kept in
    ``fixproxy.pid`` under ``[proxy] state_dir`` for ``fixproxy reload``, and the outcome of
    each reload in ``reload.json`` beside it.

    Raises:
        FixProxyError: another live fixproxy runs with the same state_dir, or a session
            cannot start (its key, TLS files or listen address).
    """
    state_dir = config.proxy.state_dir
    reloads = itertools.count(1)

    def record(result: ReloadResult) -> None:
        if state_dir is not None:
            write_reload_record(state_dir, ReloadRecord(os.getpid(), next(reloads),
                                                        result.result, result.detail))

    # A single slot: a SIGHUP arriving while a reload waits its turn joins that reload, which
    # reads the file after the signal anyway; a burst of signals queues nothing more.
    want_reload, reload_wanted = trio.open_memory_channel[None](1)
    # The receiver is in place before the pid file names this process: a SIGHUP sent as soon
    # as the file exists must reach this loop, not the default action (terminate).
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        pid_file = PidFile.claim(state_dir) if state_dir is not None else None
        logger.info("%s", start_banner(config))
        try:
            server = ProxyServer(config, metrics)
            async with trio.open_nursery() as sessions:
                await sessions.start(server.serve, sessions)

                async def drain() -> None:
                    server.stop_listening()
                    with trio.move_on_after(server.config.proxy.shutdown_timeout):
                        await server.manager.drain()
                    sessions.cancel_scope.cancel()

                async def reload_worker() -> None:
                    async for _ in reload_wanted:
                        record(await server.reload())

                sessions.start_soon(reload_worker)
                draining = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        if draining:
                            logger.warning("received SIGHUP while stopping; the configuration "
                                           "is not reloaded")
                            record(ReloadResult("ignored", "fixproxy is stopping; the "
                                                           "configuration was not re-read"))
                        else:
                            with contextlib.suppress(trio.WouldBlock):
                                want_reload.send_nowait(None)
                        continue
                    if draining:
                        logger.warning("received %s again; stopping now", name)
                        sessions.cancel_scope.cancel()
                        break
                    logger.info("received %s; logging out %d session(s), then stopping (again "
                                "to stop at once)", name, server.manager.live_sessions)
                    draining = True
                    sessions.start_soon(drain)
        finally:
            if pid_file is not None:
                pid_file.release()
    logger.info("fixproxy stopped (pid %d)", os.getpid())


def start_banner(config: Config) -> str:
    """The line ``run`` logs first: what runs, from which file, as which process, serving
    which sessions."""
    sessions = ", ".join(f"{s.name} ({s.endpoint.target_comp_id} on {s.listen[0]}:"
                         f"{s.listen[1]})" for s in config.sessions)
    return (f"fixproxy {__version__} starting: config {config.path}, pid {os.getpid()}, "
            f"{len(config.sessions)} session(s): {sessions or 'none'}")
