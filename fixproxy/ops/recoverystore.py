"""Where each session's recovery state is kept between connections (``state_dir``).

The state (:class:`~fixproxy.session.recovery.RecoveryState`: the newest ExecID the engine had
per exchange index, and the ClOrdIDs it sent in the last three hours) decides which execution
reports a later Logon replays into a live trading session, so it is kept the way the sequence
numbers are (:mod:`fixproxy.ops.seqstore`, whose directory checks it shares): one JSON file per
session, ``<session>.recovery.json``, replaced atomically (temporary file, fsync, rename) with
mode 0600 in a directory that group and others cannot write. It is written when a connection
ends and at a bounded interval while it lives, never per message, so a killed fixproxy loses at
most one interval of cursor movement; after such a crash the next replay may deliver again
reports the engine already had, marked 97=Y (PossResend) so that it checks them against its
own order state.
"""

from __future__ import annotations

import json
from pathlib import Path

from fixproxy.errors import FixProxyError
from fixproxy.ops.seqstore import SequenceStore, replace_json
from fixproxy.session.recovery import RecoveryState


class RecoveryStore:
    """Reads and writes :class:`RecoveryState` under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._checks = SequenceStore(directory)

    def path(self, session: str) -> Path:
        return self.directory / f"{session}.recovery.json"

    def load(self, session: str, api_key: str, endpoint: str) -> RecoveryState | None:
        """The saved state of ``session``; None if there is none for this key and endpoint.

        Raises:
            FixProxyError: the directory is unsafe, or the file cannot be read or parsed
                (with what to do).
        """
        if not self._checks.check_directory():
            return None
        path = self.path(session)
        try:
            state = RecoveryState.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise FixProxyError(f"cannot read recovery state {path}: {exc}; remove the file "
                                f"to start afresh (the next Logon then recovers nothing)"
                                ) from exc
        if state.api_key != api_key or state.endpoint != endpoint:
            return None
        return state

    def save(self, session: str, state: RecoveryState) -> None:
        """Replace the saved state of ``session`` atomically.

        Raises:
            FixProxyError: it cannot be written.
        """
        path = self.path(session)
        try:
            self._checks.ensure_directory()
            replace_json(path, state.to_json())
        except OSError as exc:
            raise FixProxyError(f"cannot write recovery state {path}: {exc.strerror}") from exc
