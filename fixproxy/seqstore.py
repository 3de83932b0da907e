"""Where each session's sequence numbers are kept between connections (``state_dir``).

An engine that keeps its sequence numbers across connections (QuickFIX ``ResetOnLogon=N`` with
a FileStore) expects the gateway's first message after its next Logon to carry the number
after the last one it received. When fixproxy forces a reset on the gateway leg, it must know
that number even if the engine's Logon does not say it (789) and even if fixproxy restarted in
between, so it is written here when each connection ends: one small JSON file per session,
replaced atomically (write a temporary file, fsync, rename), in a directory created 0700 with
files 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fixproxy.errors import FixProxyError


@dataclass(frozen=True, slots=True)
class SessionSequences:
    """The engine's view of one session's numbering when its last connection ended."""

    api_key: str
    endpoint: str
    engine_next_out: int
    """The MsgSeqNum the engine will put on its next message."""
    engine_next_in: int
    """The MsgSeqNum the engine expects on the gateway's next message."""


class SequenceStore:
    """Reads and writes :class:`SessionSequences` under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, session: str) -> Path:
        return self.directory / f"{session}.json"

    def load(self, session: str, api_key: str, endpoint: str) -> SessionSequences | None:
        """The saved numbers of ``session``, or None if none are saved for this key and
        endpoint (a changed key or endpoint starts afresh)."""
        try:
            data = json.loads(self._path(session).read_text())
            saved = SessionSequences(**data)
            _check_fields(saved)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise FixProxyError(f"cannot read sequence state {self._path(session)}: {exc}; "
                                f"remove the file to start afresh") from exc
        if saved.api_key != api_key or saved.endpoint != endpoint:
            return None
        return saved

    def save(self, session: str, sequences: SessionSequences) -> None:
        """Replace the saved numbers of ``session`` atomically."""
        path = self._path(session)
        temporary = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(asdict(sequences), out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            raise FixProxyError(f"cannot write sequence state {path}: {exc.strerror}") from exc


def _check_fields(saved: SessionSequences) -> None:
    """Reject values of the wrong kind: the file may have been edited by hand."""
    if not isinstance(saved.api_key, str) or not isinstance(saved.endpoint, str):
        raise TypeError("api_key and endpoint must be strings")
    for number in (saved.engine_next_out, saved.engine_next_in):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError("sequence numbers must be integers of at least 1")
