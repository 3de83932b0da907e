"""Failed writes of fixproxy's state files: counted every time, said once per run of failures.

The sequence numbers and the recovery state (``state_dir``) and the message journal
(``journal_dir``) are written beside trading, never in its way: a full or read-only disk must
not stop a session. So a failed write is logged and the session goes on; but a disk that stays
full would repeat the same ERROR at every save, so :class:`StateWriteErrors` says it once,
when a store of a session starts failing, and once more (WARNING) when a write of that store
succeeds again; every failure counts in ``fixproxy_state_write_errors_total{session,store}``,
which the alert reads.

Thread-safe: the journal fails in a session relay's thread, the state files in trio's.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from prometheus_client import Counter

STORES: Final = ("journal", "sequences", "recovery")
"""The ``store`` label: the message journal, the saved sequence numbers, the recovery state."""


class StateWriteErrors:
    """Counts failed state writes and decides which of them the log hears about."""

    def __init__(self, counter: Counter | None = None) -> None:
        """``counter``: fixproxy_state_write_errors_total; None counts nothing (tests)."""
        self._counter = counter
        self._failing: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def declare(self, session: str, stores: tuple[str, ...]) -> None:
        """Create the session's series at zero, so that ``increase()`` sees the first error."""
        if self._counter is not None:
            for store in stores:
                self._counter.labels(session=session, store=store)

    def failed(self, session: str, store: str) -> bool:
        """Count one failed write; True if it starts a run of failures (log it at ERROR)."""
        if self._counter is not None:
            self._counter.labels(session=session, store=store).inc()
        with self._lock:
            first = (session, store) not in self._failing
            self._failing.add((session, store))
        return first

    def succeeded(self, session: str, store: str) -> bool:
        """Note a write that worked; True if it ends a run of failures (log that it did)."""
        with self._lock:
            if (session, store) not in self._failing:
                return False
            self._failing.discard((session, store))
        return True

    def report(self, session: str, store: str, text: str,
               log: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
        """Count a failed write and log ``text`` at ERROR if it starts a run of failures
        (at DEBUG otherwise)."""
        if self.failed(session, store):
            log.error("%s; trading continues, and this is not logged again until a write "
                      "succeeds (fixproxy_state_write_errors_total counts each failure)", text)
        else:
            log.debug("%s", text)

    def recovered(self, session: str, store: str, what: str,
                  log: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
        """Note a write that worked, and say so if the store of the session was failing."""
        if self.succeeded(session, store):
            log.warning("%s written again after earlier failures", what)
