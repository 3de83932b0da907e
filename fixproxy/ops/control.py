"""The running fixproxy's control files, and how the command line finds, signals and asks it.

``fixproxy run`` keeps its process id in ``fixproxy.pid`` under ``[proxy] state_dir`` (which
also guards against two proxies sharing one sequence state) and writes the outcome of each
reload to ``reload.json`` there, so ``fixproxy reload`` can find the process, signal it and
report what happened. ``fixproxy status`` asks the metrics endpoint for ``/status``.

Everything here is synchronous and blocking: plain files, a signal, one HTTP request. The
server claims and releases the pid file and writes each record from its trio thread (small
local files, once per start or reload); ``fixproxy reload`` waits for the record by polling,
with ``time.sleep``, bounded by its timeout, and ``fixproxy status`` reads the answer with
urllib under a timeout of its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal

from fixproxy.errors import FixProxyError

# The name these lines have always been logged under: operators' log filters match it.
logger = logging.getLogger("fixproxy.reload")

PID_FILE_NAME: Final = "fixproxy.pid"
"""The running proxy's process id, under ``[proxy] state_dir``."""
RESULT_FILE_NAME: Final = "reload.json"
"""The outcome of the running proxy's latest reload, under ``[proxy] state_dir``."""
RESULT_POLL_INTERVAL: Final = 0.05
"""Seconds between looks at the result file while ``fixproxy reload`` waits for the answer."""

ReloadOutcome = Literal["ok", "rejected", "ignored"]


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


# --- the client side: `fixproxy status` -------------------------------------------------

STATUS_TIMEOUT: Final = 5.0
"""Seconds ``fixproxy status`` waits for the endpoint: it answers from memory at once."""
STATUS_LIMIT: Final = 16 * 1024 * 1024
"""Largest /status answer read: a few kilobytes per session."""


def status_url(listen: tuple[str, int]) -> str:
    """The /status URL of a metrics endpoint listening on ``listen``."""
    host, port = listen
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass  # a name, such as localhost
    else:
        if address.is_unspecified:  # listening on every interface: ask through loopback
            host = "::1" if address.version == 6 else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/status"


def fetch_status(listen: tuple[str, int], *, timeout: float = STATUS_TIMEOUT
                 ) -> dict[str, object]:
    """GET /status from the metrics endpoint of a running fixproxy.

    Blocking (urllib): for the command line, never for the server.

    Raises:
        FixProxyError: nothing answers, the answer is not fixproxy's, or it times out.
    """
    url = status_url(listen)
    # No proxies: the endpoint is local, and an http_proxy variable must not reroute it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read(STATUS_LIMIT + 1)
    except urllib.error.HTTPError as exc:
        raise FixProxyError(f"{url} answered {exc.code} {exc.reason}: is that fixproxy, and "
                            f"a version that serves /status?") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise FixProxyError(f"cannot reach fixproxy at {url} ({text}): is fixproxy running "
                            f"with this configuration?") from exc
    except (TimeoutError, OSError) as exc:
        raise FixProxyError(f"no answer from {url} within {timeout:g} s ({exc})") from exc
    if len(body) > STATUS_LIMIT:
        raise FixProxyError(f"the answer from {url} is larger than {STATUS_LIMIT} bytes")
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise FixProxyError(f"{url} did not answer with JSON: is that fixproxy?") from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("sessions"), list):
        raise FixProxyError(f"{url} answered JSON without a session list: is that fixproxy?")
    return answer
