"""Where each session's sequence numbers are kept between connections (``state_dir``).

An engine that keeps its sequence numbers across connections (QuickFIX ``ResetOnLogon=N`` with
a FileStore) expects the gateway's first message after its next Logon to carry the number
after the last one it received. When fixproxy forces a reset on the gateway leg, it must know
that number even if the engine's Logon does not say it (789) and even if fixproxy restarted in
between, so it is written here when each connection ends: one small JSON file per session,
replaced atomically (write a temporary file, fsync, rename), in a directory created 0700 with
files 0600. A connection that is renumbered also keeps the number current while it lives, in
``<session>.live`` (:mod:`fixproxy.ops.liveseq`), so a killed fixproxy resumes from it; every
save stores the same number there before the JSON file is replaced, so the live record is
never older than the JSON file and is the one read when it is valid.

The files hold no secret (an API key ID and two numbers), but fixproxy acts on them: a saved
number decides how a live trading session is renumbered. So the directory's mode is checked
before each use. Write access for group or others lets another local user replace a file,
whatever the file's own mode, since replacing a file needs only the directory (the very rename
that makes saving atomic): that is refused, with the chmod to run. Read or search access alone
shows no more than the file names, the files themselves being 0600: a warning, once, rather
than a stopped session over a directory a package manager created 0755. The temporary file is
opened without following symbolic links and set to 0600 explicitly, so a stale or planted file
cannot lend the new state its mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from fixproxy.errors import FixProxyError
from fixproxy.ops import liveseq
from fixproxy.ops.liveseq import LiveSequences

logger = logging.getLogger("fixproxy.seqstore")

DIRECTORY_MODE: Final = 0o700
FILE_MODE: Final = 0o600
_OTHERS_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH
"""Bits that let group or others create, rename or remove files in the directory."""
_OTHERS_SEE: Final = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH



def replace_json(path: Path, data: object) -> None:
    """Replace ``path`` with ``data`` as JSON, whole or not at all, 0600.

    Written to ``<path>.tmp``, flushed to disk, renamed over ``path``, and the rename made
    durable by syncing the directory: a process killed at any instant leaves the old file or
    the new one, never a part, and a failure (a full disk) leaves the old file and no
    temporary behind.

    Raises:
        OSError: it could not be written; ``path`` is untouched.
    """
    temporary = path.with_suffix(".tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                     FILE_MODE)
        with os.fdopen(fd, "w") as out:
            # O_CREAT's mode applies only to a new file, and through the umask.
            os.fchmod(out.fileno(), FILE_MODE)
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

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
        self._warned = False

    def check_directory(self) -> bool:
        """Check the directory's mode; False when it does not exist yet.

        Raises:
            FixProxyError: group or others may write to it (with the chmod to run), it is not
                a directory, or it cannot be examined.
        """
        try:
            found = self.directory.stat().st_mode
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise FixProxyError(f"cannot examine state directory {self.directory}: "
                                f"{exc.strerror}") from exc
        if not stat.S_ISDIR(found):
            raise FixProxyError(f"state directory {self.directory} is not a directory")
        mode = stat.S_IMODE(found)
        if mode & _OTHERS_WRITE:
            raise FixProxyError(
                f"state directory {self.directory} is writable by group or others (mode "
                f"{mode:04o}), so another user could replace the sequence numbers fixproxy "
                f"resumes from; run: chmod 700 {self.directory}")
        if mode & _OTHERS_SEE and not self._warned:
            self._warned = True
            logger.warning("state directory %s is open to group or others (mode %04o): they "
                           "can list its files; run: chmod 700 %s", self.directory, mode,
                           self.directory)
        return True

    def _path(self, session: str) -> Path:
        return self.directory / f"{session}.json"

    def live_path(self, session: str) -> Path:
        """Where the live record of ``session`` is kept."""
        return self.directory / f"{session}.live"

    def open_live(self, session: str, api_key: str, endpoint: str) -> LiveSequences:
        """Map the live record of ``session`` for a renumbered connection.

        Raises:
            FixProxyError: the directory is unsafe, or the file cannot be created or mapped.
        """
        path = self.live_path(session)
        try:
            self.ensure_directory()
            return LiveSequences.open(path, api_key, endpoint)
        except OSError as exc:
            raise FixProxyError(f"cannot open sequence state {path}: {exc.strerror}") from exc

    def load_engine_next_in(self, session: str, api_key: str,
                            endpoint: str) -> tuple[int, str] | None:
        """The number the engine expects next from the gateway, and where it was found: the
        live record when it holds one for this key and endpoint (never older than the JSON
        file), else the numbers saved when the last connection ended; None if neither.

        Raises:
            FixProxyError: as :meth:`load`, or the live record cannot be read.
        """
        saved = self.load(session, api_key, endpoint)  # checks the directory too
        path = self.live_path(session)
        try:
            live = liveseq.load(path, api_key, endpoint)
        except OSError as exc:
            raise FixProxyError(f"cannot read sequence state {path}: {exc.strerror}; remove "
                                f"the file to start afresh") from exc
        if live is not None:
            return live, "the state kept while the last connection lived"
        if saved is not None:
            return saved.engine_next_in, "the state saved by the last connection"
        return None

    def load(self, session: str, api_key: str, endpoint: str) -> SessionSequences | None:
        """The saved numbers of ``session``, or None if none are saved for this key and
        endpoint (a changed key or endpoint starts afresh)."""
        if not self.check_directory():
            return None
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
        try:
            if not self.check_directory():
                self._create_directory()
            if self.live_path(session).exists():
                # First the live record: a kill between the two leaves it the newer one.
                live = LiveSequences.open(self.live_path(session), sequences.api_key,
                                          sequences.endpoint)
                try:
                    live.store(sequences.engine_next_in)
                finally:
                    live.close()
            replace_json(path, asdict(sequences))
        except OSError as exc:
            raise FixProxyError(f"cannot write sequence state {path}: {exc.strerror}") from exc

    def ensure_directory(self) -> None:
        """Create the directory 0700 if it is missing, else check its mode as found.

        Raises:
            FixProxyError: as :meth:`check_directory`.
            OSError: it cannot be created.
        """
        if not self.check_directory():
            self._create_directory()

    def _create_directory(self) -> None:
        """Create the directory 0700 whatever the umask; missing parents get the usual mode."""
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.directory.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            self.check_directory()  # created meanwhile by someone else: check it as found
            return
        os.chmod(self.directory, DIRECTORY_MODE)


def _check_fields(saved: SessionSequences) -> None:
    """Reject values of the wrong kind: the file may have been edited by hand."""
    if not isinstance(saved.api_key, str) or not isinstance(saved.endpoint, str):
        raise TypeError("api_key and endpoint must be strings")
    for number in (saved.engine_next_out, saved.engine_next_in):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError("sequence numbers must be integers of at least 1")
