"""A per-session journal of every FIX message relayed, both legs, in rotating text files.

Theory of operation
-------------------
When an order goes wrong the first question is what exactly crossed the proxy, in which order,
on which connection. FIX engines keep their own message logs, but only of their own leg; the
gateway's view is Kalshi's. The journal is fixproxy's: one line per message, in relay order,
``<UTC time> <connection id> <direction> <message>``, the message with SOH shown as ``|`` (as
FIX logs conventionally show it) and the Logon's secrets (RawData 96, Password 554, and the
other :data:`fixproxy.fix.tags.SECRET_TAGS`) replaced by ``<redacted>``. Secret fields are
found by walking the fields with their data lengths (RawDataLength 95 gives 96's length, which
may include SOH) when a message has one; every other message is written as it arrived, with one
byte translation.

It sits beside the relay's hot path, so its costs are bounded and mostly deferred: lines are
buffered in memory and written with one ``write`` at most every :data:`FLUSH_INTERVAL`
seconds (or when :data:`MAX_BUFFERED_BYTES` are waiting, on rotation and on close). The
alternative, a write per message, costs a system call for every relayed frame; a background
writer thread was rejected for the shared state and shutdown ordering it brings. Size-based
rotation (``<session>.log``, ``.1`` ... ``.N``) bounds the disk used to ``max_bytes`` times
``backups + 1`` per session.

A kill can cut the last line short (a write interrupted between pages); the next process
closes such a line with :data:`CUT_SHORT` before it appends, so the damage stays one line.

A journal must never stop trading: every ``OSError`` (a full disk, a removed directory, a
permission change) switches the journal off and is counted in
``fixproxy_state_write_errors_total{store="journal"}``; :meth:`SessionJournal.record` and
:meth:`SessionJournal.close` never raise. The log hears of it once per run of failures, across
the session's connections (:class:`~fixproxy.ops.statewrites.StateWriteErrors`): an ERROR
when writing starts to fail, a WARNING, with how many messages are missing, when a write works
again. A write cut short by a full disk is truncated back to the last whole line, so the file
never holds a partial line. While off, the journal tries to reopen its file every
:data:`RETRY_INTERVAL` seconds as messages come (one ``open`` per interval), so an operator
who frees the disk gets the journal back without reconnecting the engine (the alternative,
off for the rest of the connection, leaves a day-long session unjournalled after a brief
shortage). The files hold order flow, so the directory is created 0700 and the files 0600.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from fixproxy.config.model import ProxyConfig
from fixproxy.errors import FixProxyError, FramingError
from fixproxy.fix import tags
from fixproxy.fix.codec import iter_fields
from fixproxy.ops.statewrites import StateWriteErrors
from fixproxy.session.machine import Direction

logger = logging.getLogger("fixproxy.journal")

FLUSH_INTERVAL: Final = 0.2
"""Seconds between writes while messages keep coming: a burst costs one system call per
interval, and a crash loses at most this much of the journal."""
MAX_BUFFERED_BYTES: Final = 256 * 1024
"""Bytes of lines held before a write regardless of time, so a burst cannot grow memory
without bound."""
RETRY_INTERVAL: Final = 5.0
"""Seconds between attempts to reopen a journal that a write error switched off."""
DIRECTORY_MODE: Final = 0o700
FILE_MODE: Final = 0o600
SUFFIX: Final = ".log"
REDACTED: Final = b"<redacted>"
CUT_SHORT: Final = b" <cut short: fixproxy stopped while writing this line>\n"
"""Closes a last line a killed process left incomplete, before the next process appends:
only that line is lost, and the next one starts on a line of its own."""

_SOH_TO_BAR: Final = bytes.maketrans(b"\x01", b"|")
_SECRET_FIELD_START: Final = re.compile(
    b"\x01(?:" + b"|".join(b"%d" % tag for tag in sorted(tags.SECRET_TAGS)) + b")=")
_SECRET_FIELD: Final = re.compile(
    b"(?<=\x01)(" + b"|".join(b"%d" % tag for tag in sorted(tags.SECRET_TAGS))
    + b")=[^\x01]*")
_SESSION_FILE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")


def open_journal(config: ProxyConfig, session: str,
                 errors: StateWriteErrors | None = None) -> SessionJournal | None:
    """The journal of ``session`` as ``[proxy]`` configures it, or None when it is off.

    The caller closes it (:meth:`SessionJournal.close`). Never raises for file problems:
    see :class:`SessionJournal`; ``errors`` counts them.
    """
    if config.journal_dir is None:
        return None
    return SessionJournal(config.journal_dir, session, max_bytes=config.journal_max_bytes,
                          backups=config.journal_backups, errors=errors)


def render_message(frame: bytes | bytearray) -> bytes:
    """``frame`` as one journal line's message: SOH as ``|``, secret values redacted,
    line breaks inside values escaped so one message stays one line."""
    if _SECRET_FIELD_START.search(frame) is not None:
        frame = _redact(frame)
    if b"\n" in frame or b"\r" in frame:
        frame = frame.replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return bytes(frame.translate(_SOH_TO_BAR))


def _redact(frame: bytes | bytearray) -> bytes:
    """``frame`` with every secret value replaced; SOH stays SOH."""
    try:
        fields = list(iter_fields(bytes(frame)))
    except FramingError:
        # Not walkable by data lengths: cut each secret value at the next SOH instead.
        return _SECRET_FIELD.sub(rb"\1=" + REDACTED, bytes(frame))
    return b"".join(b"%d=%s\x01" % (tag, REDACTED if tag in tags.SECRET_TAGS else value)
                    for tag, value in fields)


class _Stamp:
    """RFC 3339 UTC timestamps with milliseconds; the seconds part is formatted once per
    second, since the journal stamps every relayed chunk."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def __call__(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)).encode()
        return self._prefix + b"%03dZ" % int((now - second) * 1000)


class SessionJournal:
    """The journal of one session: ``<directory>/<session>.log`` and its rotated backups.

    One object serves every connection of the session in turn (lines carry the connection
    id). It is synchronous and not thread-safe: the relay's tasks share one trio thread.
    """

    __slots__ = ("_backups", "_buffer", "_buffered", "_clock", "_closed", "_errors", "_fd",
                 "_flush_interval", "_last_flush", "_max_bytes", "_missing",
                 "_retry_at", "_retry_interval", "_size", "_stamp", "_wall", "directory",
                 "path", "session")

    def __init__(self, directory: Path, session: str, *, max_bytes: int, backups: int,
                 flush_interval: float = FLUSH_INTERVAL,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 retry_interval: float = RETRY_INTERVAL,
                 errors: StateWriteErrors | None = None) -> None:
        """Open (creating as needed) the session's journal file.

        A directory or file that cannot be created or opened is logged once at ERROR and
        leaves the journal switched off; it does not raise.

        Args:
            directory: where the files live; created with mode 0700 if absent.
            session: the session name, the file's stem.
            max_bytes: size at which the file is rotated (a single longer line still goes
                into a file of its own).
            backups: how many rotated files to keep (``.1`` newest); 0 keeps none.
            flush_interval: seconds between writes while messages keep coming.
            clock: monotonic seconds, for the flush and retry intervals.
            wall: seconds since the epoch, for the timestamps.
            retry_interval: seconds between attempts to reopen after a write error.
            errors: counts each failed write or reopen and decides what is logged; the
                process's (shared by every session and connection), or one of its own.
        Raises:
            FixProxyError: a session name that is not a plain file name, or non-positive
                ``max_bytes``, or negative ``backups`` (the configuration loader rules
                these out, so only a programming error gets here).
        """
        if _SESSION_FILE_NAME.fullmatch(session) is None or session in (".", ".."):
            raise FixProxyError(f"{session!r} cannot name a journal file")
        if max_bytes < 1 or backups < 0:
            raise FixProxyError(f"journal limits out of range: max_bytes={max_bytes}, "
                                f"backups={backups}")
        self.directory = directory
        self.session = session
        self.path = directory / f"{session}{SUFFIX}"
        self._max_bytes = max_bytes
        self._backups = backups
        self._flush_interval = flush_interval
        self._clock = clock
        self._wall = wall
        self._stamp = _Stamp()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._fd: int | None = None
        self._last_flush = clock()
        self._retry_interval = retry_interval
        self._errors = errors if errors is not None else StateWriteErrors()
        self._retry_at: float | None = None
        """When to try to reopen; None unless a write error switched the journal off."""
        self._missing = 0
        """Messages not journalled since the journal was switched off."""
        self._closed = False
        try:
            directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            self._fail("cannot open", exc)

    @property
    def enabled(self) -> bool:
        """True while the journal is writing: not closed, and no write has failed."""
        return self._fd is not None

    def record(self, direction: Direction, frames: Iterable[bytes], conn_id: int) -> None:
        """Journal ``frames``, complete FIX messages as the relay cut them; never raises.

        Args:
            direction: which way the frames went (the metrics' ``direction`` values, or
                ``proxy_to_*`` for fixproxy's own Logouts).
            frames: the messages, each one whole frame, in relay order.
            conn_id: the connection id the relay's log lines carry.
        """
        if self._fd is None and not self._resume():
            self._missing += sum(1 for _ in frames)
            return
        head = b"%s %d %s " % (self._stamp(self._wall()), conn_id, direction.value.encode())
        for frame in frames:
            line = head + render_message(frame) + b"\n"
            self._buffer.append(line)
            self._buffered += len(line)
        if (self._buffered >= MAX_BUFFERED_BYTES
                or self._clock() - self._last_flush >= self._flush_interval):
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines now, rotating as needed; never raises.

        The relay need not call it (records flush themselves at most every
        ``flush_interval``, and :meth:`close` flushes), but may, to bound how long the last
        lines of a burst wait when the session goes quiet.
        """
        self._last_flush = self._clock()
        if not self._buffer or self._fd is None:
            return
        lines = self._buffer
        self._buffer = []
        self._buffered = 0
        try:
            self._write_lines(lines)
        except OSError as exc:
            self._missing += len(lines)  # some may be in a file rotated out meanwhile
            self._fail("cannot write", exc)
            return
        if self._errors.succeeded(self.session, "journal"):
            logger.warning("journal of session %s is written again, to %s; %d messages of "
                           "this connection relayed while it was off are missing from it",
                           self.session, self.path, self._missing)
            self._missing = 0

    def close(self) -> None:
        """Flush and close the file; further records are dropped. Never raises."""
        self.flush()
        self._closed = True
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                self._fail("cannot close", exc)

    # --- file handling ---------------------------------------------------------------------

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     FILE_MODE)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                # A device or pipe would swallow the journal (or, for a device, have its
                # mode changed below): refuse it like any other unusable path.
                raise OSError(errno.EINVAL, "not a regular file")
            if stat.S_IMODE(info.st_mode) != FILE_MODE:
                # A file left by an older run or made by hand: it holds order flow.
                os.fchmod(fd, FILE_MODE)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._size = info.st_size
        if info.st_size and not self._ends_a_line():
            self._write(CUT_SHORT)

    def _ends_a_line(self) -> bool:
        """True if the file's last byte ends a line (a kill mid-write may have cut one)."""
        with self.path.open("rb") as existing:
            existing.seek(-1, os.SEEK_END)
            return existing.read(1) == b"\n"

    def _write_lines(self, lines: list[bytes]) -> None:
        pending = sum(len(line) for line in lines)
        if self._size + pending <= self._max_bytes:
            self._write(b"".join(lines))
            return
        chunk: list[bytes] = []
        chunk_size = 0
        for line in lines:
            if self._size + chunk_size + len(line) > self._max_bytes \
                    and self._size + chunk_size > 0:
                if chunk:
                    self._write(b"".join(chunk))
                chunk, chunk_size = [], 0
                self._rotate()
            chunk.append(line)
            chunk_size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None
        start = self._size
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                self._size += written
                view = view[written:]
        except OSError:
            # A full disk takes part of a write before it refuses the rest: cut the file
            # back to its last whole line, or the next line written would continue it.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                self._size = start
            raise

    def _rotate(self) -> None:
        """``<session>.log`` becomes ``.1``, ``.1`` becomes ``.2`` ... the last one is
        dropped; a fresh file follows."""
        assert self._fd is not None
        fd, self._fd = self._fd, None
        os.close(fd)
        name = str(self.path)
        if self._backups == 0:
            os.unlink(name)
        else:
            for index in range(self._backups - 1, 0, -1):
                try:
                    os.replace(f"{name}.{index}", f"{name}.{index + 1}")
                except FileNotFoundError:
                    continue  # fewer backups so far than allowed
            os.replace(name, f"{name}.1")
        self._open()

    def _fail(self, what: str, exc: OSError) -> None:
        """Switch the journal off until the next retry; say why if writing just began to
        fail."""
        if self._errors.failed(self.session, "journal"):
            logger.error("journal of session %s switched off: %s %s (%s); trading continues "
                         "without it, and fixproxy tries to reopen it every %g s",
                         self.session, what, self.path, exc.strerror or exc,
                         self._retry_interval)
        self._retry_at = self._clock() + self._retry_interval
        self._missing += len(self._buffer)
        self._buffer = []
        self._buffered = 0
        fd, self._fd = self._fd, None
        if fd is not None:
            # Already failing: the error above is the one worth reporting.
            with contextlib.suppress(OSError):
                os.close(fd)

    def _resume(self) -> bool:
        """Reopen a journal switched off by an error, once its retry time has come; True if
        it is open again (the next successful write says so in the log)."""
        if self._closed or self._retry_at is None or self._clock() < self._retry_at:
            return False
        try:
            self._open()
        except OSError as exc:
            self._fail("cannot reopen", exc)
            return False
        self._retry_at = None
        return True
