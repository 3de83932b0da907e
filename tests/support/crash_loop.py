"""A fixproxy process killed and restarted under a trading QuickFIX engine, for the crash loop.

Theory of operation
-------------------
The crash tests need three parties that fail independently: the simulated Kalshi gateway
(trio, in the test's process, so its events can be inspected), fixproxy as a real process
(``python3 -m fixproxy.cli run``, so SIGKILL is a real kill and the kernel, not Python, closes
its sockets and keeps what it wrote), and one QuickFIX initiator that lives through every kill
and reconnects by itself every ``ReconnectInterval`` seconds, as a production engine would.

:class:`ProxyProcess` starts fixproxy and reads its stderr in a thread, so a test can wait for
a log line (the listener up) instead of guessing a delay. :class:`OrderFlow` sends limit orders
from a thread of its own while the engine is logged on, keeping a few unanswered, and tags
each with the connection it was sent on (QuickFIX's onLogon count). A kill cuts some orders
off before their answer: after the engine has seen the close (onLogout), the test takes a
:meth:`OrderFlow.in_flight` snapshot under the flow's lock, so no order can be tagged with a
connection that is already gone. At the end every order must have its ExecutionReport or be
in the snapshot of the kill that cut it off: nothing else may be lost.

The state fixproxy keeps on disk is read after every kill exactly as a restarted fixproxy would
read it (:func:`check_state_files`), and journals line by line (:func:`check_journal`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fixproxy.fix import tags
from fixproxy.ops import liveseq
from fixproxy.ops.journal import CUT_SHORT
from fixproxy.ops.recoverystore import RecoveryStore
from fixproxy.ops.seqstore import SequenceStore
from fixproxy.session.machine import Direction
from support.quickfix_engine import QuickFixEngine

REPOSITORY: Final = Path(__file__).resolve().parents[2]
ORDER_WINDOW: Final = 4
"""Orders the flow keeps unanswered at most: a kill finds a few in flight."""
ORDER_GAP: Final = 0.02
"""Seconds between two orders: about 50 a second, enough for a kill to cut some off without
loading the shared cores with QuickFIX's logging."""
JOURNAL_DIRECTIONS: Final = frozenset(direction.value for direction in Direction)


class ProxyProcess:
    """``python3 -m fixproxy.cli run --config CONFIG`` as a child process; restartable."""

    def __init__(self, config: Path, log_file: Path) -> None:
        self.config = config
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.text = ""
        self.starts = 0
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float) -> None:
        """Start fixproxy and return once it listens (``listening on`` in its log)."""
        assert self.process is None, "fixproxy is already running"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPOSITORY), env.get("PYTHONPATH", "")]))
        with self._changed:
            self.text = ""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fixproxy.cli", "run", "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env)
        self.starts += 1
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True,
                                        name="fixproxy stderr")
        self._reader.start()
        assert self.wait_for("listening on", timeout), \
            f"fixproxy did not listen within {timeout} s:\n{self.text}"

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        with self.log_file.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            for line in process.stderr:
                log.write(line)
                with self._changed:
                    self.text += line.decode(errors="replace")
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, marker: str, timeout: float) -> bool:
        """True once ``marker`` appeared in this run's log; False after ``timeout``."""
        with self._changed:
            return self._changed.wait_for(lambda: marker in self.text, timeout)

    def kill(self) -> None:
        """SIGKILL, then reap: what fixproxy did not write is lost, as in a real crash."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        if self._reader is not None:
            self._reader.join()
        if process.stderr is not None:
            process.stderr.close()
        assert process.returncode == -signal.SIGKILL, \
            f"fixproxy ended by itself ({process.returncode}) before the kill:\n{self.text}"


@dataclass(slots=True)
class OrderFlow:
    """Limit orders sent from a thread while the engine is logged on (see the module)."""

    engine: QuickFixEngine
    symbol: str = "KXCRASH-26JAN01"
    sent: dict[str, int] = field(default_factory=dict)
    """ClOrdID -> the connection it was sent on (QuickFIX's onLogon count then)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    failure: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True, name="orders")
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if self.failure is not None:
            raise self.failure

    def answered(self) -> set[str]:
        """ClOrdIDs with at least one ExecutionReport received."""
        return {(report.get(11) or b"").decode()
                for report in self.engine.record.received_of(tags.MT_EXECUTION_REPORT)}

    def in_flight(self, connection: int) -> set[str]:
        """Orders of ``connection`` not answered: call once the engine saw it close."""
        with self.lock:
            answered = self.answered()
            return {order for order, sent_on in self.sent.items()
                    if sent_on == connection and order not in answered}

    def _unanswered_now(self, connection: int) -> int:
        answered = self.answered()
        return sum(1 for order, sent_on in self.sent.items()
                   if sent_on == connection and order not in answered)

    def _run(self) -> None:
        import quickfix

        record = self.engine.record
        try:
            session = quickfix.Session.lookupSession(self.engine.session_id)
            while not self.stop.is_set():
                with self.lock:
                    logons = record.counts()[0]
                    if session.isLoggedOn() and self._unanswered_now(logons) < ORDER_WINDOW:
                        order = f"C{len(self.sent) + 1}"
                        self.sent[order] = logons
                        self.engine.send_limit_order(order, symbol=self.symbol,
                                                     side_buy=len(self.sent) % 2 == 0,
                                                     price=0.45, quantity=1)
                # Pacing, not synchronisation: the next look comes at once on a stop.
                self.stop.wait(ORDER_GAP)
        except BaseException as exc:  # reported by close(), in the test's thread
            self.failure = exc


def check_state_files(state_dir: Path, session: str, api_key: str, endpoint: str, *,
                      recovery: bool) -> None:
    """Read every state file of ``session`` as a restarted fixproxy would; raises if any is
    torn (a FixProxyError from the stores, or no valid slot in the live record)."""
    if not state_dir.exists():
        return
    SequenceStore(state_dir).load(session, api_key, endpoint)
    live = state_dir / f"{session}.live"
    if live.exists():
        assert liveseq.read(live) is not None, f"{live} has no valid slot"
    if recovery:
        RecoveryStore(state_dir).load(session, api_key, endpoint)
    leftovers = sorted(path.name for path in state_dir.iterdir()
                       if path.name.endswith(".tmp"))
    # A temporary file may be left by a kill mid-write; it is never read, only replaced.
    assert all(name.startswith(session) for name in leftovers), leftovers


def journal_lines(journal_dir: Path) -> Iterator[tuple[Path, int, bytes, bool]]:
    """(file, line number, line, complete) for every line of every journal file."""
    for path in sorted(journal_dir.glob("*.log*")):
        data = path.read_bytes()
        lines = data.split(b"\n")
        for number, line in enumerate(lines[:-1], 1):
            yield path, number, line, True
        if lines[-1]:
            yield path, len(lines), lines[-1], False


def check_journal(journal_dir: Path) -> int:
    """Every journal line up to the last is whole and well formed; the number of lines.

    A line is ``<UTC time> <connection id> <direction> <message>``; the message ends with its
    CheckSum field. The very last line of a file may be cut short by the kill; a line an
    earlier kill cut short was closed by the next process with the journal's marker.
    """
    count = 0
    for path, number, line, complete in journal_lines(journal_dir):
        if not complete or line.endswith(CUT_SHORT.rstrip(b"\n")):
            continue  # the kill's: nothing follows it, or the next process closed it
        text = line.decode("ascii")
        stamp, conn_id, direction, message = text.split(" ", 3)
        assert stamp.endswith("Z") or "T" in stamp, f"{path}:{number}: {text!r}"
        assert conn_id.isdigit(), f"{path}:{number}: {text!r}"
        assert direction in JOURNAL_DIRECTIONS, f"{path}:{number}: {text!r}"
        assert message.startswith("8=FIXT.1.1|") and "|10=" in message \
            and message.endswith("|"), f"{path}:{number}: {text!r}"
        count += 1
    return count
