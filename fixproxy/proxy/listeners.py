"""Every session's listen sockets, and the accept loop that gives each connection its runtime.

Theory of operation
-------------------
Each configured session has one listener: the sockets ``trio.open_tcp_listeners`` opened for
its ``listen`` address, and one task per socket accepting on it. An accepted connection is
given the runtime in force when it arrived, looked up by session name in
:attr:`SessionListeners.runtimes` with no checkpoint between the accept and the lookup, and
keeps it to the end: a reload replaces that mapping as a whole and never reaches a
connection that is already running.

A new set of runtimes is put in force in two steps, so that a reload is all or nothing.
:meth:`SessionListeners.stage` binds every address the new set needs beyond the listeners
that stay, and may fail (nothing it bound stays open); :meth:`SessionListeners.commit`
swaps, synchronously, so no connection sees half of it. A retiring listener whose exact
address a new or moved session asks for is handed over rather than closed and re-bound, so
a rename, or two sessions trading addresses, never meets "address in use". A closed
listener refuses new connections; the connections it accepted carry on.

accept(2) failing for want of descriptors or memory never stops the serving, because that
would refuse every later engine of the session over a shortage that passes; any other accept
error is raised and ends the serving. For descriptors (EMFILE, ENFILE), leaving the engine in
the kernel's backlog would have it hang until its own timeout, so one descriptor is held in
reserve (:class:`~fixproxy.net.listen.DescriptorReserve`). Linux's accept(2) fails with
EMFILE before it looks at the queue, so on EMFILE the loop first waits for a connection (the
spare held, nothing spinning), tries a plain accept again (descriptors may have freed), and
only then gives the spare up, accepts the connection with it, hands it to the refusal handler
(a Logout saying fixproxy is out of descriptors, then a close, within
:data:`REFUSAL_TIMEOUT`) and takes the spare back. When the spare cannot be taken back, and
for a shortage of memory, accepting is retried after :data:`ACCEPT_RETRY_DELAY`. Either way
the log says so once when a shortage begins (at most once per
:data:`SHORTAGE_LOG_INTERVAL`) and once when accepting succeeds again; nothing is logged per
refused connection.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import trio

from fixproxy.errors import FixProxyError
from fixproxy.net.listen import (
    DESCRIPTOR_ERRNOS,
    Address,
    DescriptorReserve,
    address_of,
    open_file_limit,
    open_listeners,
)
from fixproxy.proxy.runtime import SessionRuntime
from fixproxy.session.explain import descriptor_shortage_log

# The name these lines have always been logged under: operators' log filters match it.
logger = logging.getLogger("fixproxy.reload")

ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                           errno.ENOBUFS})
"""accept(2) errors that mean the machine is out of resources for now, not that the listener
is broken: wait and try again rather than stop serving every session."""
ACCEPT_RETRY_DELAY: Final = 0.1
"""Seconds to wait before accepting again after one of those errors."""
SHORTAGE_LOG_INTERVAL: Final = 60.0
"""Seconds within which a new shortage is not logged again at ERROR (a process at its limit
may run out, recover and run out again with every connection)."""

REFUSAL_TIMEOUT: Final = 0.5
"""Seconds at most spent answering one engine while out of descriptors, its Logout included:
the spare is out meanwhile, and the next engine waits in the backlog. An engine on loopback
reads the Logout and closes well within it; one that does not is closed regardless."""

ConnectionHandler = Callable[[trio.SocketStream, SessionRuntime], Awaitable[None]]


class _Listener:
    """One session's listen sockets and the task accepting on them."""

    __slots__ = ("bound", "configured", "scope", "session", "sockets")

    def __init__(self, session: str, configured: Address,
                 sockets: list[trio.SocketListener]) -> None:
        self.session = session
        """Whose runtime an accepted connection gets; changes when the listener is handed
        over to a session that asks for the same address."""
        self.configured = configured
        self.sockets = sockets
        self.bound = address_of(sockets[0])
        self.scope = trio.CancelScope()

    def close(self) -> None:
        """Stop accepting now: a connection attempt from here on is refused."""
        self.scope.cancel()
        for listener in self.sockets:
            listener.socket.close()  # trio notifies the accept waiting on it


@dataclass(slots=True)
class _Staged:
    """Listeners ready for a new set of runtimes; nothing serves with them yet."""

    runtimes: dict[str, SessionRuntime]
    listeners: dict[str, _Listener] = field(default_factory=dict)
    """Listeners kept or handed over, by the session that will own them."""
    fresh: dict[str, tuple[Address, list[trio.SocketListener]]] = field(default_factory=dict)
    retire: list[_Listener] = field(default_factory=list)

    def discard(self) -> None:
        for _, sockets in self.fresh.values():
            for listener in sockets:
                listener.socket.close()
        self.fresh.clear()


class SessionListeners:
    """Every session's listener, and the runtime each newly accepted connection is given."""

    def __init__(self, runtimes: Mapping[str, SessionRuntime],
                 handler: ConnectionHandler,
                 refuse_for_descriptors: ConnectionHandler | None = None) -> None:
        """Args:
            runtimes: session name -> runtime, for the sessions to listen for.
            handler: serves an accepted connection with the runtime in force.
            refuse_for_descriptors: answers a connection accepted with the spare descriptor
                while the process is out of them (counts it, says why, closes); None just
                closes it.
        """
        self.runtimes: Mapping[str, SessionRuntime] = dict(runtimes)
        """Session name -> the runtime of the configuration in force; replaced whole."""
        self._handler = handler
        self._refuse_for_descriptors = refuse_for_descriptors
        self._reserve: DescriptorReserve | None = None
        self._shortage: str | None = None
        """The accept error of the shortage under way (its strerror), None when there is none."""
        self.refused_for_descriptors = 0
        """Connections answered with the spare descriptor, since start."""
        self._refused_in_shortage = 0
        self._shortage_said: float | None = None
        """When a shortage was last logged at ERROR (trio's clock)."""
        self._shortage_loud = False
        self._listeners: dict[str, _Listener] = {}
        self._nursery: trio.Nursery | None = None
        self._connections: trio.Nursery | None = None
        self.stopped = False

    @property
    def serving(self) -> bool:
        """True while listening: after :meth:`serve` started and before :meth:`stop`."""
        return self._nursery is not None and not self.stopped

    @property
    def addresses(self) -> dict[str, Address]:
        """Where each session listens now."""
        return {name: listener.bound for name, listener in self._listeners.items()}

    async def serve(self, connections: trio.Nursery, *,
                    task_status: trio.TaskStatus[dict[str, Address]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Open every session's listener, report the bound addresses, and accept into
        ``connections`` until :meth:`stop` or cancellation.

        Raises:
            FixProxyError: a listen address cannot be bound.
        """
        self._reserve = DescriptorReserve()
        staged = await self.stage(self.runtimes)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._connections = connections
                self.commit(staged)
                task_status.started(self.addresses)
                await trio.sleep_forever()
        finally:
            staged.discard()
            self.stop()
            self._nursery = None
            self._reserve.close()

    def stop(self) -> None:
        """Close every listener; connections already accepted carry on."""
        self.stopped = True
        for listener in self._listeners.values():
            listener.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def stage(self, runtimes: Mapping[str, SessionRuntime]) -> _Staged:
        """Bind what ``runtimes`` needs beyond the listeners that stay; swaps nothing.

        The caller passes the result to :meth:`commit`, or calls its ``discard()``.

        Raises:
            FixProxyError: an address cannot be bound (nothing bound here stays open).
        """
        staged = _Staged(dict(runtimes))
        retiring: dict[str, _Listener] = {}
        for name, listener in self._listeners.items():
            runtime = runtimes.get(name)
            if runtime is not None and runtime.config.listen == listener.configured:
                staged.listeners[name] = listener
            else:
                retiring[name] = listener
        # Port 0 means "any free port": two such sessions are not asking for the same socket.
        by_address = {listener.configured: listener for listener in retiring.values()
                      if listener.configured[1] != 0}
        needed: list[tuple[str, Address]] = []
        for name, runtime in runtimes.items():
            if name in staged.listeners:
                continue
            handed = by_address.pop(runtime.config.listen, None)
            if handed is not None:
                staged.listeners[name] = handed
            else:
                needed.append((name, runtime.config.listen))
        staged.retire = [listener for listener in retiring.values()
                         if listener not in staged.listeners.values()]
        try:
            for name, (host, port) in needed:
                staged.fresh[name] = ((host, port), await open_listeners(
                    host, port, f"session {name!r}"))
        except BaseException:
            staged.discard()
            raise
        return staged

    def commit(self, staged: _Staged) -> None:
        """Put ``staged`` in force: synchronous, so no connection sees half of it."""
        nursery = self._nursery
        if nursery is None or self.stopped:
            staged.discard()
            raise FixProxyError("the listeners are not serving")
        self.runtimes = staged.runtimes
        for listener in staged.retire:
            listener.close()
            logger.info("session %s no longer listens on %s:%d; its live connection, if "
                        "any, carries on", listener.session, *listener.bound)
        listeners = dict(staged.listeners)
        for name, listener in staged.listeners.items():
            if listener.session != name:
                logger.info("session %s takes over %s:%d from session %s", name,
                            *listener.bound, listener.session)
                listener.session = name
        for name, (configured, sockets) in staged.fresh.items():
            listener = listeners[name] = _Listener(name, configured, sockets)
            nursery.start_soon(self._serve_listener, listener)
            config = staged.runtimes[name].config
            logger.info("session %s listening on %s:%d for %s at %s:%d", name,
                        *listener.bound, config.endpoint.target_comp_id, config.host,
                        config.port)
        staged.fresh.clear()
        self._listeners = listeners

    async def _serve_listener(self, listener: _Listener) -> None:
        try:
            with listener.scope:
                async with trio.open_nursery() as nursery:
                    for socket_listener in listener.sockets:
                        nursery.start_soon(self._accept, listener, socket_listener)
        finally:
            for socket_listener in listener.sockets:
                socket_listener.socket.close()

    async def _accept(self, listener: _Listener, socket_listener: trio.SocketListener
                      ) -> None:
        connections = self._connections
        assert connections is not None  # set before any listener task starts
        pending = False  # a connection was seen waiting since accept last failed for want
        # of descriptors
        while True:
            try:
                stream = await socket_listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise FixProxyError(f"session {listener.session!r}: accept failed on "
                                        f"{listener.bound[0]}:{listener.bound[1]}: "
                                        f"{exc.strerror or exc}") from exc
                self._shortage_began(listener, exc)
                reserve = self._reserve
                try:
                    if exc.errno not in DESCRIPTOR_ERRNOS or reserve is None \
                            or not reserve.refill():
                        await trio.sleep(ACCEPT_RETRY_DELAY)
                    elif not pending:
                        # Linux's accept(2) fails with EMFILE before it looks at the queue:
                        # wait for a connection (the spare stays held, nothing spins), then
                        # try a plain accept again, as descriptors may have freed meanwhile.
                        await trio.lowlevel.wait_readable(socket_listener.socket)
                        pending = True
                    else:
                        pending = False
                        await self._answer_with_spare(listener, socket_listener, reserve)
                except trio.ClosedResourceError:
                    return
                continue
            pending = False
            self._shortage_ended()
            # No checkpoint between the accept and this lookup: the runtime is the one in
            # force when the connection arrived, and the connection keeps it to the end.
            runtime = self.runtimes.get(listener.session)
            if runtime is None:
                await trio.aclose_forcefully(stream)
                continue
            connections.start_soon(self._run_handler, stream, runtime)

    def _shortage_began(self, listener: _Listener, exc: OSError) -> None:
        """Note a failed accept; say what it is and what to do when a shortage begins.

        A process hovering at its limit starts one shortage after another: within
        :data:`SHORTAGE_LOG_INTERVAL` of the last ERROR a new one stays quiet (its end too),
        until it has lasted past that interval, when it is said after all.
        """
        if self._shortage is None:
            self._shortage = exc.strerror or str(exc)
            self._refused_in_shortage = 0
            self._shortage_loud = False
        if self._shortage_loud:
            return
        now = trio.current_time()
        if self._shortage_said is not None and now - self._shortage_said < \
                SHORTAGE_LOG_INTERVAL:
            return
        self._shortage_said = now
        self._shortage_loud = True
        if exc.errno in DESCRIPTOR_ERRNOS:
            logger.error("session %s: accept failed (%s): %s", listener.session,
                         self._shortage, descriptor_shortage_log(open_file_limit()))
        else:
            logger.error("session %s: accept failed (%s); engines wait in the backlog and "
                         "accepting is retried every %g s until memory frees up",
                         listener.session, self._shortage, ACCEPT_RETRY_DELAY)

    def _shortage_ended(self) -> None:
        if self._shortage is None:
            return
        if not self._shortage_loud:
            self._shortage = None
            return
        logger.warning("accepting engine connections again after a shortage (%s); %d "
                       "connections were refused meanwhile", self._shortage,
                       self._refused_in_shortage)
        self._shortage = None

    async def _answer_with_spare(self, listener: _Listener,
                                 socket_listener: trio.SocketListener,
                                 reserve: DescriptorReserve) -> None:
        """Give up the spare descriptor, accept the waiting connection with it, refuse it
        (bounded by :data:`REFUSAL_TIMEOUT`) and take the spare back."""
        reserve.release()
        try:
            try:
                stream = await socket_listener.accept()
            except OSError:
                return  # the loop's next accept says what it is
            self.refused_for_descriptors += 1
            self._refused_in_shortage += 1
            runtime = self.runtimes.get(listener.session)
            with trio.move_on_after(REFUSAL_TIMEOUT):
                if runtime is not None and self._refuse_for_descriptors is not None:
                    await self._refuse_for_descriptors(stream, runtime)
            await trio.aclose_forcefully(stream)
        finally:
            reserve.refill()

    async def _run_handler(self, stream: trio.SocketStream, runtime: SessionRuntime) -> None:
        try:
            await self._handler(stream, runtime)
        finally:
            await trio.aclose_forcefully(stream)
