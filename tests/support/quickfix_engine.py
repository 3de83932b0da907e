"""A real, unmodified QuickFIX initiator driven from the interop tests.

Theory of operation
-------------------
fixproxy exists for engines that cannot sign Kalshi's Logon themselves, so the interop tests run
QuickFIX exactly as such a firm would: its stock session layer, a settings file, and an
Application that signs nothing and changes nothing. The Application only records what QuickFIX
reports (session created, logged on and off, every admin and application message in either
direction) into :class:`EngineRecord`, which is guarded by one condition variable because
QuickFIX calls it from its own threads.

Every call here blocks the calling thread, so tests run it through ``trio.to_thread`` while the
trio thread serves the proxy and the simulated gateway. Waiting is on the condition variable
with a timeout, never on the wall clock: a test proceeds the moment QuickFIX reports the event.

``quickfix`` is imported lazily, inside the functions that need it, so the module imports (and
type-checks) where the engine is not installed; the tests decide whether that skips or fails.

The alternative rejected was a scripted FIX client: it would only repeat fixproxy's own reading
of FIX, while QuickFIX has its own opinions (it resets on an unexpected 141=Y, it validates
incoming messages against its data dictionary) that the proxy must survive.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from fixproxy.fix.codec import iter_fields

BEGIN_STRING: Final = "FIXT.1.1"
DEFAULT_APPL_VER_ID: Final = "FIX.5.0SP2"
TRANSPORT_DICTIONARY: Final = "FIXT11.xml"
APP_DICTIONARY: Final = "FIX50SP2.xml"
SOH: Final = "\x01"


def dictionary_path(name: str) -> Path:
    """Where the QuickFIX package installed data dictionary ``name``: under the prefix it was
    installed into, which is the base prefix when it comes from outside a virtualenv."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        path = Path(prefix, "share", "quickfix", name)
        if path.exists():
            return path
    return Path(sys.prefix, "share", "quickfix", name)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """One QuickFIX initiator session, as an operator would configure it."""

    sender_comp_id: str
    target_comp_id: str
    port: int
    workdir: Path
    """Holds the settings file, the FileStore and the FileLog."""
    reset_on_logon: bool = True
    host: str = "127.0.0.1"
    heart_bt_int: int = 30
    reconnect_interval: int = 1
    session_qualifier: str = ""
    """Tells apart two sessions of one process with the same CompIDs (a primary and a
    standby engine on two listeners); QuickFIX registers sessions by SessionID."""

    @property
    def store_dir(self) -> Path:
        """QuickFIX's FileStorePath (sequence numbers and sent messages)."""
        return self.workdir / "store"

    @property
    def log_dir(self) -> Path:
        """QuickFIX's FileLogPath (messages and event log)."""
        return self.workdir / "log"

    @property
    def settings_file(self) -> Path:
        """Where :func:`write_settings` puts the settings."""
        return self.workdir / "quickfix.cfg"


SHIPPED_SETTINGS: Final = Path(__file__).resolve().parents[2] / "conf" / "quickfix"
"""The initiator settings fixproxy ships, one file per kind of endpoint."""
RESETTING_SETTINGS: Final = SHIPPED_SETTINGS / "order-entry.cfg"
"""For endpoints that reset sequence numbers on every Logon (ResetOnLogon=Y)."""
KEEPING_SETTINGS: Final = SHIPPED_SETTINGS / "order-entry-rt.cfg"
"""For KalshiRT, which keeps them (ResetOnLogon=N)."""
TEST_OWN_KEYS: Final = frozenset({
    "SenderCompID", "TargetCompID", "SocketConnectHost", "SocketConnectPort",
    "FileStorePath", "FileLogPath", "TransportDataDictionary", "AppDataDictionary",
    "HeartBtInt", "ReconnectInterval", "SessionQualifier"})
"""What a test sets itself: where to connect, as whom, where files go, and its timers.
Everything else (versions, reset, validation) is the shipped file's."""


def read_settings(path: Path) -> dict[str, dict[str, str]]:
    """A QuickFIX settings file as ``section -> key -> value`` (one [SESSION] here)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in path.read_text(encoding="ascii").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not key=value"
        current[key.strip()] = value.strip()
    return sections


def render_settings(settings: EngineSettings) -> str:
    """The QuickFIX 1.16 settings text for ``settings``: the shipped file for its kind of
    endpoint (conf/quickfix), with the test's own connection, CompIDs, paths and timers.

    Validation is relaxed there only where Kalshi's own tags need it (user-defined fields such
    as 8013 or 21005 and fields the dictionary does not list); checksums, lengths and required
    fields stay checked, so a malformed message through the proxy still fails the test.
    """
    shipped = read_settings(RESETTING_SETTINGS if settings.reset_on_logon else KEEPING_SETTINGS)
    default = {**shipped["DEFAULT"],
               "TransportDataDictionary": str(dictionary_path(TRANSPORT_DICTIONARY)),
               "AppDataDictionary": str(dictionary_path(APP_DICTIONARY)),
               "HeartBtInt": str(settings.heart_bt_int),
               "ReconnectInterval": str(settings.reconnect_interval),
               "FileStorePath": str(settings.store_dir),
               "FileLogPath": str(settings.log_dir),
               "SocketConnectHost": settings.host,
               "SocketConnectPort": str(settings.port)}
    session = {**shipped["SESSION"],
               "SenderCompID": settings.sender_comp_id,
               "TargetCompID": settings.target_comp_id}
    if settings.session_qualifier:
        session["SessionQualifier"] = settings.session_qualifier
    lines = ["[DEFAULT]", *(f"{key}={value}" for key, value in default.items()), "",
             "[SESSION]", *(f"{key}={value}" for key, value in session.items()), ""]
    return "\n".join(lines)


def write_settings(settings: EngineSettings) -> Path:
    """Write the settings file and create the store and log directories; returns its path."""
    settings.workdir.mkdir(parents=True, exist_ok=True)
    settings.store_dir.mkdir(exist_ok=True)
    settings.log_dir.mkdir(exist_ok=True)
    settings.settings_file.write_text(render_settings(settings), encoding="ascii")
    return settings.settings_file


@dataclass(frozen=True, slots=True)
class Captured:
    """One message QuickFIX showed the Application, as it appears on the wire."""

    admin: bool
    """True for session-level messages (toAdmin, fromAdmin), False for application ones."""
    raw: bytes

    def get(self, tag: int) -> bytes | None:
        """The first value of ``tag``, or None."""
        return next((value for t, value in iter_fields(self.raw) if t == tag), None)

    @property
    def msg_type(self) -> bytes:
        """MsgType (35)."""
        return self.get(35) or b""


class EngineRecord:
    """What QuickFIX reported to the Application; safe to use from any thread."""

    def __init__(self) -> None:
        """Start empty."""
        self._changed = threading.Condition()
        self.sessions: list[str] = []
        self.logons = 0
        self.logouts = 0
        self.received: list[Captured] = []
        self.sent: list[Captured] = []

    def note(self, update: Callable[[EngineRecord], None]) -> None:
        """Apply ``update`` under the lock and wake every waiter."""
        with self._changed:
            update(self)
            self._changed.notify_all()

    def wait_until(self, predicate: Callable[[EngineRecord], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (True) or ``timeout`` seconds pass (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def counts(self) -> tuple[int, int]:
        """How often (onLogon, onLogout) fired so far."""
        with self._changed:
            return self.logons, self.logouts

    def received_of(self, msg_type: bytes) -> list[Captured]:
        """Every received message of ``msg_type``, in order."""
        with self._changed:
            return [message for message in self.received if message.msg_type == msg_type]

    def sent_of(self, msg_type: bytes) -> list[Captured]:
        """Every message of ``msg_type`` QuickFIX sent, in order."""
        with self._changed:
            return [message for message in self.sent if message.msg_type == msg_type]


def _capture(message: Any, *, admin: bool) -> Captured:
    text: str = message.toString()
    return Captured(admin=admin, raw=text.encode("ascii", "replace"))


@functools.cache
def _application_class() -> type[Any]:
    import quickfix

    # quickfix has no type information, so its Application is Any to mypy.
    class RecordingApplication(quickfix.Application):  # type: ignore[misc]
        """Records every callback; never changes a message (no signing in toAdmin)."""

        def __init__(self, record: EngineRecord) -> None:
            super().__init__()
            self.record = record

        def onCreate(self, session_id: Any) -> None:
            name = session_id.toString()
            self.record.note(lambda r: r.sessions.append(name))

        def onLogon(self, session_id: Any) -> None:
            def bump(r: EngineRecord) -> None:
                r.logons += 1
            self.record.note(bump)

        def onLogout(self, session_id: Any) -> None:
            def bump(r: EngineRecord) -> None:
                r.logouts += 1
            self.record.note(bump)

        def toAdmin(self, message: Any, session_id: Any) -> None:
            sent = _capture(message, admin=True)
            self.record.note(lambda r: r.sent.append(sent))

        def toApp(self, message: Any, session_id: Any) -> None:
            sent = _capture(message, admin=False)
            self.record.note(lambda r: r.sent.append(sent))

        def fromAdmin(self, message: Any, session_id: Any) -> None:
            received = _capture(message, admin=True)
            self.record.note(lambda r: r.received.append(received))

        def fromApp(self, message: Any, session_id: Any) -> None:
            received = _capture(message, admin=False)
            self.record.note(lambda r: r.received.append(received))

    return RecordingApplication


class QuickFixEngine:
    """One QuickFIX SocketInitiator with a recording Application.

    Use as a context manager: the initiator is stopped on exit, whatever happened.
    """

    def __init__(self, settings: EngineSettings) -> None:
        """Write the settings file and build (but do not start) the initiator."""
        import quickfix

        self.settings = settings
        self.record = EngineRecord()
        self._quickfix_settings = quickfix.SessionSettings(str(write_settings(settings)))
        self._application = _application_class()(self.record)
        self._store = quickfix.FileStoreFactory(self._quickfix_settings)
        self._log = quickfix.FileLogFactory(self._quickfix_settings)
        self._initiator = quickfix.SocketInitiator(self._application, self._store,
                                                   self._quickfix_settings, self._log)
        self.session_id = quickfix.SessionID(BEGIN_STRING, settings.sender_comp_id,
                                             settings.target_comp_id,
                                             settings.session_qualifier)
        self._started = False

    def __enter__(self) -> QuickFixEngine:
        """Start the initiator: QuickFIX connects and logs on by itself."""
        self._initiator.start()
        self._started = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the initiator (QuickFIX logs out first if it is still logged on)."""
        self.stop()

    def stop(self) -> None:
        """Stop the initiator once; later calls do nothing."""
        if self._started:
            self._started = False
            self._initiator.stop()

    def wait_logged_on(self, timeout: float) -> bool:
        """True once onLogon has fired."""
        return self.record.wait_until(lambda r: r.logons >= 1, timeout)

    def wait_logged_out(self, timeout: float) -> bool:
        """True once onLogout has fired."""
        return self.record.wait_until(lambda r: r.logouts >= 1, timeout)

    def send_limit_order(self, cl_ord_id: str, *, symbol: str, side_buy: bool, price: float,
                         quantity: int) -> None:
        """Send a limit NewOrderSingle (35=D) through QuickFIX's normal application path.

        Raises:
            AssertionError: QuickFIX refused to send it (the session is not logged on).
        """
        import quickfix

        # Kalshi speaks FIX50SP2, so the message class is the one stamping ApplVerID 9; it is
        # looked up by name because the package ships no type information.
        messages = importlib.import_module("quickfix50sp2")
        order = messages.NewOrderSingle()
        order.setField(quickfix.ClOrdID(cl_ord_id))
        order.setField(quickfix.Side(quickfix.Side_BUY if side_buy else quickfix.Side_SELL))
        order.setField(quickfix.TransactTime())
        order.setField(quickfix.OrdType(quickfix.OrdType_LIMIT))
        order.setField(quickfix.Price(price))
        order.setField(quickfix.OrderQty(quantity))
        order.setField(quickfix.Symbol(symbol))
        sent = quickfix.Session.sendToTarget(order, self.session_id)
        assert sent, f"QuickFIX did not send order {cl_ord_id}"

    def logout(self, text: str = "") -> None:
        """Ask QuickFIX to log out; it sends the Logout and waits for the answer itself."""
        import quickfix

        session = quickfix.Session.lookupSession(self.session_id)
        assert session is not None, "QuickFIX has no such session"
        session.logout(text)


def iter_log_text(workdir: Path) -> Iterator[str]:
    """QuickFIX's log files under ``workdir``, one string per file with SOH shown as ``|``."""
    for path in sorted(workdir.rglob("*.log")):
        text = path.read_text(encoding="ascii", errors="replace").replace(SOH, "|")
        yield f"--- {path.relative_to(workdir)}\n{text}"


def event_log_text(settings: EngineSettings) -> str:
    """QuickFIX's event log (``*.event.current.log``) for ``settings``, SOH shown as ``|``.

    QuickFIX's FileLog appends across runs of the same session, so a caller that wants one
    run's events remembers the length before the run and slices the text after it.
    """
    parts = [path.read_text(encoding="ascii", errors="replace")
             for path in sorted(settings.log_dir.glob("*.event.current.log"))]
    return "".join(parts).replace(SOH, "|")


def session_registered(settings: EngineSettings) -> bool:
    """True while some initiator in this process still owns the QuickFIX session of
    ``settings``.

    QuickFIX keeps one global registry of sessions by SessionID; a second initiator for the
    same session is only usable once the first initiator object is gone.
    """
    import quickfix

    session_id = quickfix.SessionID(BEGIN_STRING, settings.sender_comp_id,
                                    settings.target_comp_id, settings.session_qualifier)
    return quickfix.Session.lookupSession(session_id) is not None


@pytest.fixture
def quickfix_available() -> None:
    """Skip without QuickFIX, except in CI, which installs it: there its absence is a failure.
    Interop modules ask for it with ``pytest.mark.usefixtures("quickfix_available")``."""
    try:
        import quickfix  # noqa: F401  optional: the interop extra
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"QuickFIX must be installed in CI (pip install '.[interop]'): {exc}")
        pytest.skip("QuickFIX is not installed: pip install '.[interop]'")


@contextmanager
def quickfix_log_on_failure(workdir: Path) -> Iterator[None]:
    """Print QuickFIX's own logs if the block fails: that is where it says what it disliked."""
    try:
        yield
    except BaseException:
        for text in iter_log_text(workdir):
            print(text)
        raise
