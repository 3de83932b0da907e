"""Every live session of the process: one connection per API key, and the drain on shutdown.

Theory of operation
-------------------
Kalshi allows one FIX connection per API key and answers a second one with a bare
``already exists`` Logout, which also hits the *first* session when the old TCP connection is
not yet dead on Kalshi's side. fixproxy keeps the same rule locally, across every listener
that shares a key, and refuses the newcomer before it reaches Kalshi with a Logout that names
the session holding the key and since when; the first session is not touched.

On shutdown the manager asks every logged-on session to log out (the session machine writes
the Logout upstream and waits for the answer) and waits, up to ``shutdown_timeout``, until
they have all ended; the server then cancels whatever is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import trio

from fixproxy.ops.status import StatusBoard
from fixproxy.proxy.dataplane import DataPlane
from fixproxy.session.backoff import LogonBackoff
from fixproxy.session.schedule import MaintenanceSchedule, Window

logger = logging.getLogger("fixproxy.manager")


DEFAULT_SESSION_THREADS: Final = 8
"""Relay threads allowed before the configuration says how many sessions there are."""


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """The connection that holds an API key."""

    session: str
    conn_id: int
    since: float
    """Wall-clock time (epoch seconds) the key was claimed."""

    def describe(self) -> str:
        stamp = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"session {self.session!r} (connection #{self.conn_id}) since {stamp}"


class SessionManager:
    """Knows every live connection; the only shared state between relays."""

    def __init__(self, maintenance: MaintenanceSchedule | None = None,
                 backoff: LogonBackoff | None = None) -> None:
        self.maintenance = maintenance
        self.backoff = backoff if backoff is not None else LogonBackoff()
        self._last_logon: dict[str, datetime] = {}
        self._holders: dict[str, KeyHolder] = {}
        self._shutdown_hooks: dict[int, Callable[[], None]] = {}
        self._idle = trio.Event()
        self._idle.set()
        self.draining = False
        self.status = StatusBoard()
        """What every configured session is doing, for /status and the session metrics."""
        self.session_threads = trio.CapacityLimiter(DEFAULT_SESSION_THREADS)
        self._sessions = 0
        """Threads for session relays: one per live session, sized by :meth:`size_for`
        rather than trio's default of 40 shared with every other thread use."""
        self.alone_relaying = 0
        """Logged-on sessions relayed in their own thread beside the data plane (at most
        one: the first, while no other session is live)."""
        self.data_plane: DataPlane | None = None
        """The shared thread that relays logged-on sessions, while the server runs it;
        None: each session keeps the thread it logged on in."""

    def size_for(self, sessions: int) -> None:
        """Allow a relay thread for each of ``sessions`` configured sessions (one live
        connection per API key), plus one; never fewer than the keys held right now."""
        self._sessions = sessions
        self._size_threads(sessions)

    def _size_threads(self, sessions: int) -> None:
        self.session_threads.total_tokens = max(sessions + 1, len(self._holders) + 1,
                                                DEFAULT_SESSION_THREADS)

    def claim(self, api_key: str, session: str, conn_id: int) -> KeyHolder | None:
        """Take ``api_key`` for a connection; returns the current holder if it is taken.

        Keys are compared without case (UUIDs are case-insensitive, and two sessions may
        share a key written differently): one connection per key holds across listeners.
        """
        api_key = api_key.lower()
        holder = self._holders.get(api_key)
        if holder is not None:
            return holder
        self._holders[api_key] = KeyHolder(session, conn_id, time.time())
        # Every holder may reach its session relay: a reload can replace live sessions with
        # new ones while the old still hold threads, so the limit follows the holders too.
        self._size_threads(self._sessions)
        # A connection still opening TLS is live too: a drain must wait for it to log on
        # (then out) or give up, or it would be cancelled without a word to the engine.
        if self._idle.is_set():
            self._idle = trio.Event()
        return None

    def release(self, api_key: str, conn_id: int) -> None:
        """Give the key back, if this connection holds it."""
        api_key = api_key.lower()
        holder = self._holders.get(api_key)
        if holder is not None and holder.conn_id == conn_id:
            del self._holders[api_key]
        self._set_idle_if_idle()

    def maintenance_window(self, now: datetime) -> Window | None:
        """Kalshi's maintenance window in progress at ``now``, if any."""
        return self.maintenance.active_window(now) if self.maintenance is not None else None

    def reset_due(self, api_key: str, now: datetime) -> bool:
        """True if a maintenance window ended since this key's last accepted Logon, so the
        next Logon must reset sequence numbers on every endpoint (``reset_after``)."""
        last = self._last_logon.get(api_key)
        schedule = self.maintenance
        return (schedule is not None and schedule.reset_after and last is not None
                and schedule.window_ended_between(last, now))

    def logon_accepted(self, api_key: str, now: datetime) -> None:
        self._last_logon[api_key] = now

    def register(self, conn_id: int, shutdown: Callable[[], None]) -> None:
        """Make a logged-on session reachable by :meth:`drain`; ``shutdown`` asks it to log
        out and returns at once."""
        self._shutdown_hooks[conn_id] = shutdown
        if self._idle.is_set():
            self._idle = trio.Event()

    def unregister(self, conn_id: int) -> None:
        self._shutdown_hooks.pop(conn_id, None)
        self._set_idle_if_idle()

    def _set_idle_if_idle(self) -> None:
        if not self._shutdown_hooks and not self._holders:
            self._idle.set()

    @property
    def live_sessions(self) -> int:
        return len(self._shutdown_hooks)

    async def drain(self) -> None:
        """Ask every logged-on session to log out and wait until all have ended.

        The caller bounds the wait (``shutdown_timeout``) with a cancel scope.
        """
        self.draining = True
        hooks = list(self._shutdown_hooks.values())
        logger.info("logging out %d live session(s)", len(hooks))
        for hook in hooks:
            hook()
        await self._idle.wait()
