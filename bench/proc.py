"""Child processes of the benchmark: starting, talking to, measuring and stopping them.

Every child is started with ``PR_SET_PDEATHSIG`` so that it is signalled if the orchestrator
dies without running its cleanup, and every start is paired with a stop that escalates from
SIGTERM to SIGKILL: no stunnel or fixproxy outlives a run. Readiness of a listener is read
from ``/proc/net/tcp`` rather than probed with a connection, because a probe through stunnel
would open a TLS session to the gateway and disturb its counters.

CPU time and memory come from ``/proc/<pid>/stat`` (utime + stime, in clock ticks, covering
every thread of the process, exited ones included) and ``/proc/<pid>/status`` (VmHWM, VmRSS);
``/proc/<pid>/task/*/schedstat`` gives the same CPU time in nanoseconds as a cross-check.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final, Self

from bench import BenchError

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
"""utime and stime are counted in these per second (100 on Linux)."""
PR_SET_PDEATHSIG: Final = 1
STOP_TIMEOUT_S: Final = 5.0
READY_TIMEOUT_S: Final = 30.0
"""A loaded two-core machine can take several seconds to import fixproxy and its libraries."""
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
_TCP_LISTEN: Final = "0A"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; the orchestrator starts no threads.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: this one, with the repository on the import path, and
    ``extra`` on top."""
    env = dict(os.environ)
    env.update(extra or {})
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for processes that need a number).

    Another program may take it before the child binds it; the child then fails to start and
    the run stops with that error, which is rare enough to accept.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_ports() -> set[int]:
    """TCP ports in the LISTEN state in this network namespace (IPv4)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) > 3 and parts[3] == _TCP_LISTEN:
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def cpu_ticks(pid: int) -> int:
    """utime + stime of process ``pid`` so far, in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read the CPU time of process {pid}: {exc}") from exc
    # Fields after the parenthesised command name: state is the first, utime the 12th.
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_ns(pid: int) -> int:
    """Nanoseconds process ``pid``'s live threads have run, from the scheduler's accounting.

    A cross-check of :func:`cpu_ticks` at nanosecond resolution; threads that exited are
    missing from it, so it is only read around runs during which no thread exits.
    """
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError as exc:
        raise BenchError(f"cannot list the threads of process {pid}: {exc}") from exc
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended while we read
    return total


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of process ``pid``, in KiB."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        raise BenchError(f"cannot read the memory of process {pid}: {exc}") from exc
    found = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            found[name] = int(value.split()[0])
    if len(found) != 2:
        raise BenchError(f"process {pid} reports no VmHWM/VmRSS")
    return found


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    """How many threads process ``pid`` has."""
    return len(os.listdir(f"/proc/{pid}/task"))


def thread_names(pid: int) -> list[str]:
    """The OS name of each thread of process ``pid`` (at most 15 bytes each); a thread that
    ends while they are read is left out."""
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/task/{task}/comm").read_text().strip())
    return names


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Child:
    """A started process, with its log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *,
                 pipes: bool = False, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        try:
            self.process = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else self._log_file, stderr=self._log_file,
                # The orchestrator never starts a thread, so the fork-then-run hazard
                # preexec_fn carries with threads does not arise.
                env=child_env(env), cwd=REPO_ROOT,
                preexec_fn=_die_with_parent)  # noqa: PLW1509
        except OSError as exc:
            self._log_file.close()
            raise BenchError(f"cannot start {name} ({argv[0]}): {exc}") from exc

    @property
    def pid(self) -> int:
        """The process id, for /proc."""
        return self.process.pid

    def failure(self, what: str) -> BenchError:
        """An error saying ``what`` went wrong, with the end of the child's log."""
        status = self.process.poll()
        state = f"exited with status {status}" if status is not None else "still running"
        tail = _tail(self.log)
        return BenchError(f"{self.name}: {what} ({state})" + (f"; its log ends:\n{tail}"
                                                              if tail else ""))

    def wait_listening(self, ports: Sequence[int], timeout: float = READY_TIMEOUT_S) -> None:
        """Return once every port in ``ports`` is listening.

        Raises:
            BenchError: the process exited first, or ``timeout`` passed.
        """
        deadline = time.monotonic() + timeout
        while not set(ports) <= listening_ports():
            if self.process.poll() is not None:
                raise self.failure("exited before listening")
            if time.monotonic() > deadline:
                raise self.failure(f"not listening on {list(ports)} after {timeout:g} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL; idempotent."""
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log_file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Worker(Child):
    """A Python child that answers JSON-line requests on stdin/stdout (engine, gateway)."""

    def __init__(self, name: str, module: str, args: Sequence[str], log: Path) -> None:
        super().__init__(name, [sys.executable, "-m", module, *args], log, pipes=True)
        self._buffer = b""

    def poll_line(self, wait: float) -> dict[str, Any] | None:
        """The next JSON line the child writes, or None if none is complete within ``wait``.

        Raises:
            BenchError: the child closed its output.
        """
        stdout: IO[bytes] | None = self.process.stdout
        if stdout is None:
            raise BenchError(f"{self.name} has no output pipe")
        deadline = time.monotonic() + wait
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                chunk = os.read(stdout.fileno(), 1 << 20)
                if not chunk:
                    raise self.failure("ended unexpectedly")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise self.failure(f"wrote {line[:80]!r}, not a JSON object")
        return message

    def read_line(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the child writes.

        Raises:
            BenchError: the child closed its output, or wrote nothing within ``timeout``.
        """
        message = self.poll_line(timeout)
        if message is None:
            raise self.failure(f"no answer within {timeout:g} s")
        return message

    def send(self, command: str, timeout: float, **arguments: Any) -> None:
        """Send one command without waiting; :meth:`answer` or :meth:`poll_answer` reads
        what it says. ``timeout`` bounds the command in the child.

        Raises:
            BenchError: the child cannot be written to.
        """
        stdin = self.process.stdin
        if stdin is None:
            raise BenchError(f"{self.name} has no input pipe")
        line = json.dumps({"cmd": command, "timeout": timeout, **arguments}) + "\n"
        try:
            stdin.write(line.encode())
            stdin.flush()
        except OSError as exc:
            raise self.failure(f"cannot send {command!r}: {exc}") from exc

    def poll_answer(self, command: str, wait: float) -> dict[str, Any] | None:
        """The answer to the command sent last, or None if it has not come within ``wait``.

        Raises:
            BenchError: the child reported an error or died.
        """
        answer = self.poll_line(wait)
        if answer is not None and (answer.get("ok") is False or "error" in answer):
            raise BenchError(f"{self.name}: {command} failed: {answer.get('error')}")
        return answer

    def request(self, command: str, timeout: float, **arguments: Any) -> dict[str, Any]:
        """Send one command; return its answer.

        Raises:
            BenchError: the child reported an error, died, or did not answer in time.
        """
        self.send(command, timeout, **arguments)
        answer = self.poll_answer(command, timeout + 10.0)
        if answer is None:
            raise self.failure(f"no answer to {command!r} within {timeout + 10.0:g} s")
        return answer

    def stop(self) -> None:
        """Ask politely (``quit``), then stop as any child."""
        stdin = self.process.stdin
        if self.process.poll() is None and stdin is not None:
            with contextlib.suppress(OSError):
                stdin.write(b'{"cmd": "quit"}\n')
                stdin.flush()
                stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT_S)
        super().stop()
