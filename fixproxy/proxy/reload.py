"""Re-reading the configuration while sessions keep trading (SIGHUP, ``fixproxy reload``).

Theory of operation
-------------------
A FIX session is a long-lived conversation: Kalshi allows one connection per API key and the
first Logon after a drop may cost a sequence reset, so a configuration change (a rotated
gateway certificate and its pins, a new key, one more session) must not cost a reconnect of
the sessions that are trading. The rule is therefore *new connections see the new
configuration, live connections keep the one they started with*:

* Every engine connection is handed a :class:`~fixproxy.relay.SessionRuntime` (key, TLS
  context, pins, Logon policy) when it is accepted, looked up by session name in
  :attr:`SessionListeners.runtimes`. A reload replaces that mapping as a whole, in one
  assignment; a relay already running holds its own runtime object and never looks again.
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
  sessions trading addresses, never meets "address in use".
* Settings of the process as a whole that are set up once at start cannot follow a reload:
  ``[metrics]`` (the endpoint's socket and probes), ``[proxy] state_dir`` (live sessions save
  their sequence numbers where they started; moving it would split one session's state across
  two directories), the ``[proxy] journal_*`` keys (files opened at start) and ``[backoff]``
  (a fresh backoff would forget the keys it is holding back, letting a reconnect loop hit
  Kalshi's Logon rate limit). A change there is logged as a warning that a restart is
  needed, and the running value is kept. Everything else applies: every ``[[session]]`` and
  ``[gateway]`` key, ``[maintenance]``, ``[proxy] shutdown_timeout`` and ``allow_peers``.
  The rule is written as the list of what applies (:data:`LIVE_SETTINGS`), so a table added
  later is treated as needing a restart until someone decides otherwise.

Reloads are serialized by a lock. A reload that finds the server stopping is ignored.

The alternative rejected was restarting the process on a configuration change (with or
without socket hand-off): every live session would log out, which is what an operator
rotating a certificate least wants.

``fixproxy run`` keeps its process id in ``fixproxy.pid`` under ``[proxy] state_dir`` (which
also guards against two proxies sharing one sequence state) and writes the outcome of each
reload to ``reload.json`` there, so ``fixproxy reload`` can find the process, signal it and
report what happened.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

import trio

from fixproxy.config.loader import load_config
from fixproxy.config.model import Config, ProxyConfig, SessionConfig
from fixproxy.errors import FixProxyError
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.runtime import SessionRuntime, declare_status

logger = logging.getLogger("fixproxy.reload")

PID_FILE_NAME: Final = "fixproxy.pid"
"""The running proxy's process id, under ``[proxy] state_dir``."""
RESULT_FILE_NAME: Final = "reload.json"
"""The outcome of the running proxy's latest reload, under ``[proxy] state_dir``."""
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                           errno.ENOBUFS})
"""accept(2) errors that mean the machine is out of resources for now, not that the listener
is broken: wait and try again rather than stop serving every session."""
ACCEPT_RETRY_DELAY: Final = 0.1
"""Seconds to wait before accepting again after one of those errors."""
RESULT_POLL_INTERVAL: Final = 0.05
"""Seconds between looks at the result file while ``fixproxy reload`` waits for the answer."""

ReloadOutcome = Literal["ok", "rejected", "ignored"]
RuntimeBuilder = Callable[[SessionConfig], SessionRuntime]
"""Builds one session's runtime (key, TLS context); raises FixProxyError if it cannot."""
ConnectionHandler = Callable[[trio.SocketStream, SessionRuntime], Awaitable[None]]
Address = tuple[str, int]


# --- what changed ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    """How a reloaded configuration's sessions differ from the running one's, by name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    """Sessions present in both whose settings differ (``moved`` ones included)."""
    moved: tuple[str, ...] = ()
    """Sessions present in both whose ``listen`` address differs."""
    restart_needed: tuple[str, ...] = ()
    """One sentence per setting that was changed but keeps its running value."""

    def summary(self) -> str:
        """One line for the log and for ``fixproxy reload``."""
        parts = [f"{label}: {', '.join(names)}" for label, names in (
            ("added", self.added), ("removed", self.removed), ("changed", self.changed),
            ("new listen address", self.moved)) if names]
        if not parts:
            return "no session changed (keys and certificates re-read)"
        return "sessions " + "; ".join(parts)


LIVE_SETTINGS: Final = frozenset({"gateway", "sessions", "path", "maintenance"})
"""Fields of :class:`Config` a reload applies. ``[gateway]`` reaches the program only through
the sessions the loader resolves from it; ``[maintenance]`` is read at every Logon. Any other
table (``[proxy]`` aside, see below), one added later included, is read once at start."""
LIVE_PROXY_SETTINGS: Final = frozenset({"shutdown_timeout", "allow_peers"})
"""``[proxy]`` keys a reload applies: the drain reads ``shutdown_timeout`` when it starts, and
``allow_peers`` reaches the program through the sessions, like ``[gateway]``."""
_RESTART_REASONS: Final = {
    "metrics": "the metrics endpoint is set up once, at start",
    "backoff": "a new backoff would forget the keys it is holding back, letting a "
               "reconnecting engine run into Kalshi's Logon rate limit",
    "state_dir": "live sessions keep their sequence state where they started, and one "
                 "session's state must not be split across two directories",
    "journal_dir": "the journal files are opened once, at start",
    "journal_max_bytes": "the journal files are opened once, at start",
    "journal_backups": "the journal files are opened once, at start",
}


def keep_restart_only_settings(current: Config, loaded: Config
                               ) -> tuple[Config, tuple[str, ...]]:
    """The loaded configuration with the settings that cannot change live put back.

    Returns:
        The configuration to serve, and one sentence per setting that was changed in the
        file but keeps its running value until the next restart.
    """
    notes: list[str] = []
    # Any: the values are the running configuration's own, field by field.
    kept: dict[str, Any] = {}
    for table in fields(Config):
        if table.name in LIVE_SETTINGS or table.name == "proxy":
            continue
        old, new = getattr(current, table.name), getattr(loaded, table.name)
        if old != new:
            notes.extend(_restart_notes(table.name, old, new, _RESTART_REASONS.get(
                table.name, "it is read once, at start")))
            kept[table.name] = old
    proxy_kept: dict[str, Any] = {}
    for key in fields(ProxyConfig):
        if key.name in LIVE_PROXY_SETTINGS:
            continue
        old, new = getattr(current.proxy, key.name), getattr(loaded.proxy, key.name)
        if old != new:
            notes.append(f"[proxy] {key.name} changed ({_show(old)} -> {_show(new)}) but "
                         f"takes effect when fixproxy restarts: "
                         f"{_RESTART_REASONS.get(key.name, 'it is read once, at start')}")
            proxy_kept[key.name] = old
    if proxy_kept:
        kept["proxy"] = replace(loaded.proxy, **proxy_kept)
    return replace(loaded, **kept), tuple(notes)


def _restart_notes(table: str, old: object, new: object, reason: str) -> list[str]:
    """One sentence per changed key of ``[table]`` (one for the table if not a dataclass)."""
    if not (is_dataclass(old) and is_dataclass(new)):
        return [f"[{table}] changed but takes effect when fixproxy restarts: {reason}"]
    return [f"[{table}] {key.name} changed ({_show(getattr(old, key.name))} -> "
            f"{_show(getattr(new, key.name))}) but takes effect when fixproxy restarts: "
            f"{reason}"
            for key in fields(old) if getattr(old, key.name) != getattr(new, key.name)]


def _show(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"  # a (host, port) address
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def compare_sessions(current: Config, new: Config,
                     restart_needed: tuple[str, ...] = ()) -> ConfigChanges:
    """Which sessions a reload from ``current`` to ``new`` adds, removes, changes or moves."""
    old = {session.name: session for session in current.sessions}
    fresh = {session.name: session for session in new.sessions}
    return ConfigChanges(
        added=tuple(name for name in fresh if name not in old),
        removed=tuple(name for name in old if name not in fresh),
        changed=tuple(name for name, session in fresh.items()
                      if name in old and old[name] != session),
        moved=tuple(name for name, session in fresh.items()
                    if name in old and old[name].listen != session.listen),
        restart_needed=restart_needed,
    )


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


# --- listeners ---------------------------------------------------------------------------


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
        self.bound = _address_of(sockets[0])
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
                 handler: ConnectionHandler) -> None:
        self.runtimes: Mapping[str, SessionRuntime] = dict(runtimes)
        """Session name -> the runtime of the configuration in force; replaced whole."""
        self._handler = handler
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
                staged.fresh[name] = ((host, port), await _open_listeners(
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
                # A traceback per retry would flood the log while the shortage lasts.
                logger.error("session %s: accept failed (%s); retrying in %g s",  # noqa: TRY400
                             listener.session, exc.strerror, ACCEPT_RETRY_DELAY)
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            # No checkpoint between the accept and this lookup: the runtime is the one in
            # force when the connection arrived, and the connection keeps it to the end.
            runtime = self.runtimes.get(listener.session)
            if runtime is None:
                await trio.aclose_forcefully(stream)
                continue
            connections.start_soon(self._run_handler, stream, runtime)

    async def _run_handler(self, stream: trio.SocketStream, runtime: SessionRuntime) -> None:
        try:
            await self._handler(stream, runtime)
        finally:
            await trio.aclose_forcefully(stream)


async def _open_listeners(host: str, port: int, what: str) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise FixProxyError(f"{what}: cannot listen on {host}:{port}: "
                            f"{exc.strerror or exc}") from exc


def _address_of(listener: trio.SocketListener) -> Address:
    sockname = listener.socket.getsockname()
    return str(sockname[0]), int(sockname[1])


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


# --- finding the running proxy -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PidFile:
    """``fixproxy.pid`` under ``state_dir``, held by this process while it runs."""

    path: Path
    pid: int

    @classmethod
    def claim(cls, state_dir: Path) -> PidFile:
        """Write this process's id (mode 0600), replacing a stale file.

        Raises:
            FixProxyError: another live fixproxy holds the file, or it cannot be written.
        """
        path = state_dir / PID_FILE_NAME
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise FixProxyError(f"cannot create state_dir {state_dir}: "
                                f"{exc.strerror or exc}") from exc
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                holder = _read_pid(path)
                if holder is not None and _is_live_fixproxy(holder):
                    raise FixProxyError(
                        f"another fixproxy (pid {holder}) is running with the state_dir "
                        f"{state_dir} (see {path}); stop it first, or give this one its own "
                        f"[proxy] state_dir") from None
                logger.warning("replacing the stale pid file %s (%s)", path,
                               "unreadable" if holder is None else f"pid {holder} is gone")
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            except OSError as exc:
                raise FixProxyError(f"cannot write the pid file {path}: "
                                    f"{exc.strerror or exc}") from exc
            pid = os.getpid()
            with os.fdopen(fd, "w") as out:
                os.fchmod(out.fileno(), 0o600)  # exactly 0600, whatever the umask allowed
                out.write(f"{pid}\n")
            return cls(path, pid)
        raise FixProxyError(f"cannot claim the pid file {path}: it keeps reappearing; is "
                            f"another fixproxy starting with the same state_dir?")

    def release(self) -> None:
        """Remove the file, if it is still this process's."""
        if _read_pid(self.path) == self.pid:
            try:
                self.path.unlink()
            except OSError as exc:
                logger.warning("cannot remove the pid file %s: %s", self.path,
                               exc.strerror or exc)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _is_live_fixproxy(pid: int) -> bool:
    """True if ``pid`` is another running fixproxy (not merely a reused process id)."""
    if pid == os.getpid():
        # Only a previous life of this process can have written it (a container's pid 1).
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, and another user's: do not guess that it is safe to replace
    try:
        return b"fixproxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        # No /proc (not Linux): trust the liveness check. Under /proc, a vanished entry
        # means it has just exited.
        return not Path("/proc/self").is_dir()


@dataclass(frozen=True, slots=True)
class ReloadRecord:
    """The outcome of one reload, as ``reload.json`` tells ``fixproxy reload``."""

    pid: int
    serial: int
    """Counts the reloads of process ``pid``, so a waiting client knows the answer is new."""
    result: ReloadOutcome
    detail: str


def write_reload_record(state_dir: Path, record: ReloadRecord) -> None:
    """Replace ``reload.json`` atomically (mode 0600); a failure is logged, not raised."""
    path = state_dir / RESULT_FILE_NAME
    temporary = path.with_suffix(".tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(record), out)
        os.replace(temporary, path)
    except OSError as exc:
        logger.warning("cannot write %s: %s", path, exc.strerror or exc)


def read_reload_record(state_dir: Path) -> ReloadRecord | None:
    """The latest reload outcome written under ``state_dir``, if any is readable."""
    try:
        data = json.loads((state_dir / RESULT_FILE_NAME).read_text())
        record = ReloadRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(record.pid, int) or not isinstance(record.serial, int):
        return None
    return record


def running_pid(state_dir: Path) -> int:
    """The process id of the fixproxy running with ``state_dir``.

    Raises:
        FixProxyError: no pid file, or the process it names is not a running fixproxy.
    """
    path = state_dir / PID_FILE_NAME
    pid = _read_pid(path)
    if pid is None:
        reason = "does not exist" if not path.exists() else "holds no process id"
        raise FixProxyError(f"no running fixproxy found: {path} {reason}; is `fixproxy run` "
                            f"running with this configuration's [proxy] state_dir?")
    if pid == os.getpid() or not _is_live_fixproxy(pid):
        raise FixProxyError(f"no running fixproxy found: {path} names pid {pid}, which is "
                            f"not running (a stale file, left by a crash)")
    return pid


def request_reload(state_dir: Path, *, timeout: float,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], object] = time.sleep
                   ) -> tuple[int, ReloadRecord | None]:
    """Send SIGHUP to the fixproxy running with ``state_dir`` and wait for its answer.

    Returns:
        The process id signalled, and the outcome it recorded (None if none came within
        ``timeout`` seconds).
    Raises:
        FixProxyError: no running fixproxy, or it may not be signalled by this user.
    """
    pid = running_pid(state_dir)
    before = read_reload_record(state_dir)
    seen = before.serial if before is not None and before.pid == pid else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise FixProxyError(f"fixproxy (pid {pid}) exited before it could be signalled"
                            ) from exc
    except PermissionError as exc:
        raise FixProxyError(f"not allowed to signal fixproxy (pid {pid}); run this as the "
                            f"user that runs it") from exc
    deadline = clock() + timeout
    while True:
        record = read_reload_record(state_dir)
        if record is not None and record.pid == pid and record.serial > seen:
            return pid, record
        if clock() >= deadline:
            return pid, None
        sleep(RESULT_POLL_INTERVAL)
