"""Re-reading the configuration while sessions keep trading (SIGHUP, ``fixproxy reload``).

Theory of operation
-------------------
A FIX session is a long-lived conversation: Kalshi allows one connection per API key and the
first Logon after a drop may cost a sequence reset, so a configuration change (a rotated
gateway certificate and its pins, a new key, one more session) must not cost a reconnect of
the sessions that are trading. The rule is therefore *new connections see the new
configuration, live connections keep the one they started with*:

* Every engine connection is handed a :class:`~fixproxy.proxy.runtime.SessionRuntime` (key,
  TLS context, pins, Logon policy) when it is accepted, looked up by session name in
  :attr:`~fixproxy.proxy.listeners.SessionListeners.runtimes`. A reload replaces that
  mapping as a whole, in one assignment; a relay already running holds its own runtime
  object and never looks again.
* A reload is all or nothing. The file is loaded and validated, every session's key is loaded
  and every TLS context and trust set is built (in a worker thread, so relaying is not held up
  by file and key I/O), and every new listen socket is bound, *before* anything is swapped.
  Any failure, a syntax error or an unreadable key or a port in use alike, rejects the whole
  file with one ERROR line naming the reason, and the previous configuration stays in force.
  The swap itself is synchronous: no other task runs between its first and last step.
* Listeners follow the sessions: a session that is added gets a listener, a removed one has
  its listener closed (its live connection carries on until it logs out), and a session whose
  ``listen`` changed gets a new listener. A retiring listener whose exact address a new or
  moved session asks for is handed over rather than closed and re-bound, so a rename, or two
  sessions trading addresses, never meets "address in use" (:mod:`fixproxy.proxy.listeners`).
* Settings of the process as a whole that are set up once at start (``[metrics]``,
  ``[backoff]``, ``[proxy] state_dir`` and the ``[proxy] journal_*`` keys) cannot follow a
  reload: a change there is logged as a warning that a restart is needed, and the running
  value is kept. Everything else applies. :mod:`fixproxy.config.diff` says why for each, and
  compares the two configurations.

Reloads are serialized by a lock. A reload that finds the server stopping is ignored.

The alternative rejected was restarting the process on a configuration change (with or
without socket hand-off): every live session would log out, which is what an operator
rotating a certificate least wants.

The pid file through which ``fixproxy reload`` finds the process, and the ``reload.json``
from which it reads the answer, are :mod:`fixproxy.ops.control`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from fixproxy.config.diff import ConfigChanges, compare_sessions, keep_restart_only_settings
from fixproxy.config.loader import load_config
from fixproxy.config.model import Config, SessionConfig
from fixproxy.errors import FixProxyError
from fixproxy.ops.control import ReloadOutcome
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.listeners import SessionListeners
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.runtime import SessionRuntime, declare_status

logger = logging.getLogger("fixproxy.reload")

RuntimeBuilder = Callable[[SessionConfig], SessionRuntime]
"""Builds one session's runtime (key, TLS context); raises FixProxyError if it cannot."""


@dataclass(frozen=True, slots=True)
class PreparedReload:
    """A validated configuration with every session's runtime built, not yet in force."""

    config: Config
    runtimes: dict[str, SessionRuntime]
    changes: ConfigChanges


def prepare_reload(current: Config, path: Path, build: RuntimeBuilder) -> PreparedReload:
    """Load ``path`` and build every session's runtime; swaps nothing.

    Every session is rebuilt, changed or not, because a key file or certificate may have been
    replaced under the same name.

    Raises:
        FixProxyError: the file is invalid or a session's key or TLS files cannot be used.
    """
    config, restart_needed = keep_restart_only_settings(current, load_config(path))
    runtimes: dict[str, SessionRuntime] = {}
    for session in config.sessions:
        try:
            runtimes[session.name] = build(session)
        except FixProxyError as exc:
            raise FixProxyError(f"session {session.name!r}: {exc}") from exc
    return PreparedReload(config, runtimes, compare_sessions(current, config, restart_needed))


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What became of one reload."""

    result: ReloadOutcome
    detail: str
    """The summary of what changed, or why the file was rejected or the reload ignored."""
    changes: ConfigChanges | None = None

    @property
    def ok(self) -> bool:
        return self.result == "ok"


# --- the reload itself -------------------------------------------------------------------


class ConfigReloader:
    """Holds the configuration in force and replaces it, all or nothing, on request."""

    def __init__(self, config: Config, listeners: SessionListeners, build: RuntimeBuilder,
                 metrics: Metrics, manager: SessionManager) -> None:
        self.config = config
        """The configuration in force (restart-only settings as the process started)."""
        self._listeners = listeners
        self._build = build
        self._metrics = metrics
        self._manager = manager
        self._lock = trio.Lock()

    async def reload(self) -> ReloadResult:
        """Re-read the file the configuration came from and put it in force.

        Never raises for a bad file: the result says it was rejected, an ERROR line says
        why, and ``fixproxy_config_reload_total{result="rejected"}`` counts it.
        """
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> ReloadResult:
        if not self._listeners.serving:
            return _ignored()
        current = self.config
        path = current.path
        if path is None:
            return self._reject("the configuration was not read from a file, so there is "
                                "nothing to re-read")
        logger.info("reloading the configuration from %s", path)
        try:
            prepared = await trio.to_thread.run_sync(prepare_reload, current, path,
                                                     self._build)
            if not self._listeners.serving:
                return _ignored()
            staged = await self._listeners.stage(prepared.runtimes)
        except FixProxyError as exc:
            return self._reject(str(exc))
        except Exception as exc:
            # A fault of fixproxy itself must not take the running sessions down with it.
            logger.exception("internal error while reloading the configuration")
            return self._reject(f"internal error: {exc!r}")
        if not self._listeners.serving:
            staged.discard()
            return _ignored()
        # From here to the end nothing awaits: the swap is seen whole or not at all.
        changes = prepared.changes
        for name in changes.added:
            self._metrics.declare_session(name)
        self._listeners.commit(staged)
        self._update_status_board(prepared.runtimes)
        if prepared.config.maintenance != current.maintenance:
            self._manager.maintenance = prepared.config.maintenance
        self._manager.size_for(len(prepared.config.sessions))
        self.config = prepared.config
        self._metrics.config_reload.labels(result="ok").inc()
        for note in changes.restart_needed:
            logger.warning("configuration reload: %s", note)
        detail = changes.summary()
        logger.info("configuration reloaded from %s: %s", path, detail)
        return ReloadResult("ok", detail, changes)

    def _update_status_board(self, runtimes: Mapping[str, SessionRuntime]) -> None:
        """Show the configured sessions, with their new addresses, on the status board.

        A removed session still held by a live connection stays on the board while that
        connection runs (it is trading, and /status should say so); it is dropped by the
        first reload that finds it idle.
        """
        for runtime in runtimes.values():
            declare_status(runtime)
        board = self._manager.status
        for status in list(board):
            if status.name not in runtimes and status.conn_id is None:
                board.forget(status.name)

    def _reject(self, reason: str) -> ReloadResult:
        self._metrics.config_reload.labels(result="rejected").inc()
        logger.error("configuration reload rejected, the previous configuration stays in "
                     "force: %s", reason)
        return ReloadResult("rejected", reason)


def _ignored() -> ReloadResult:
    logger.warning("configuration reload ignored: fixproxy is not serving (stopping)")
    return ReloadResult("ignored", "fixproxy is not serving (it is stopping); the "
                                   "configuration was not re-read")
