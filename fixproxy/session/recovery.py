"""Recovering execution reports missed while an engine was away, through Kalshi's drop copy
(pure).

Theory of operation
-------------------
KalshiNR has no ResendRequest: an ExecutionReport (35=8) sent while the engine's connection was
down is lost to it. Kalshi's drop copy (KalshiDC) replays reports on request: an
EventResendRequest (35=U1) names a BeginExecID (21001, inclusive) and optionally an EndExecID
(21002), on one exchange index, and the replay is 35=8 only, then EventResendComplete (35=U2)
or EventResendReject (35=U3). ExecIDs (17) are sequenced per exchange index, written
``clock;event`` on index 0 and ``clock;event;index`` elsewhere; they compare as integer tuples
within an index and never across indexes, nor as strings (``9;1`` is older than ``10;1``).
Pending reports carry ``17=-1;-1`` and are never replayed; the look-back is three hours.

So fixproxy keeps, per session, a :class:`RecoveryState`: the newest ExecID forwarded to the
engine on each index (the cursor) and the ClOrdIDs (11, and 41 of cancels and replaces) the
engine sent in the last three hours. A :class:`RecoveryTracker`, owned by the session's relay
thread, updates it from the 35=8 the gateway sends and the 35=D/F/G the engine sends; nothing
else is looked at. At the next Logon, :func:`plan_recovery` says which indexes to ask for and
which cannot be (no cursor, a cursor older than the window); :func:`select_reports` keeps the
replayed reports that belong to this engine's orders and that it has not had (ExecID above the
cursor), in ExecID order, each once; :func:`injected_reports` renumbers them into the engine's
stream as PossResend (97=Y), right after the Logon answer. A live report that repeats an
injected one is recognised by the tracker and not passed twice.

The alternative rejected was to replay everything on the account since the cursor: a replay is
account-wide (other sessions, REST, the UI), and an engine handed reports for orders it never
sent would take them for its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from fixproxy.fix import tags
from fixproxy.fix.codec import (
    MAX_NUMBER_DIGITS,
    FieldValue,
    FixMessage,
    encode,
    header_value,
    parse_uint,
)
from fixproxy.session.sequence import SequenceTranslator

RECOVERY_WINDOW_S: Final = 3 * 3600.0
"""Kalshi's drop-copy look-back: a BeginExecID older than this is refused (21004=3)."""
MAX_CLORDIDS: Final = 100_000
"""ClOrdIDs kept per session, newest first. An engine sending more than this in three hours
(about nine orders a second, all day) loses the oldest: their replayed reports are not
recognised as its own and are left to REST reconciliation."""
MAX_RECOVERED_REPORTS: Final = 10_000
"""Reports accepted from one replay; past this the replay is cut short (and the operator told),
so one recovery holds a bounded amount of memory while the engine waits."""
KNOWN_EXCHANGE_INDEXES: Final = (0, 1, 2, 3)
"""The exchange indexes Kalshi used when this was written; an index among them without a
cursor is named in the recovery log as not covered."""

MT_EVENT_RESEND_REQUEST: Final = b"U1"
MT_EVENT_RESEND_COMPLETE: Final = b"U2"
MT_EVENT_RESEND_REJECT: Final = b"U3"
EXEC_ID: Final = 17
CL_ORD_ID: Final = 11
ORIG_CL_ORD_ID: Final = 41
BEGIN_EXEC_ID: Final = 21001
END_EXEC_ID: Final = 21002
RESEND_EVENT_COUNT: Final = 21003
RESEND_REJECT_REASON: Final = 21004
ORDER_MSG_TYPES: Final = frozenset({b"D", b"F", b"G"})
"""NewOrderSingle, OrderCancelRequest, OrderCancelReplaceRequest: their 11 (and 41) are
recorded as this engine's."""
REPORT_FORMAT_FLAGS: Final = (21005, 21008, 21012, 21007)
"""Logon flags that shape ExecutionReports (UseDollars, PreserveOriginalOrderQty,
UseExpiredOrdStatus, EnableIocCancelReport): the drop-copy Logon must carry the NR session's."""
REJECT_REASONS: Final[Mapping[int, tuple[str, str]]] = {
    1: ("too_many_requests", "too many requests"),
    2: ("server_error", "server error"),
    3: ("window_exceeded", "BeginExecID outside the 3-hour window"),
    4: ("end_too_large", "EndExecID too large"),
    5: ("not_enabled", "replay is not enabled for this account (ask Kalshi to allowlist it on "
                       "KalshiNR and KalshiDC; allowlisting does not backfill earlier events)"),
}
"""EventResendReject (35=U3) reasons (21004): the metric's result and the log's wording."""

# Header fields of a replayed report that the injected copy carries in its header (QuickFIX
# rejects a header field after a body field); 369 names the drop copy's numbering and goes.
_OWN_HEADER: Final = frozenset({
    tags.MSG_TYPE, tags.SENDER_COMP_ID, tags.TARGET_COMP_ID, tags.MSG_SEQ_NUM,
    tags.SENDING_TIME, tags.POSS_DUP_FLAG, tags.POSS_RESEND, tags.ORIG_SENDING_TIME, 369,
})
_OTHER_HEADER: Final = frozenset({50, 57, 115, 116, 128, 129, 142, 143, 144, 145, 347, 627,
                                  1128, 1129})


@dataclass(frozen=True, slots=True, order=True)
class ExecId:
    """One ExecID (17), ordered within its exchange index by (clock, event)."""

    index: int
    clock: int
    event: int

    @property
    def text(self) -> bytes:
        """The ExecID as Kalshi writes it."""
        if self.index == 0:
            return b"%d;%d" % (self.clock, self.event)
        return b"%d;%d;%d" % (self.clock, self.event, self.index)

    def after(self, other: ExecId) -> bool:
        """True when this ExecID is newer than ``other`` on the same index."""
        return self.index == other.index and (self.clock, self.event) > (other.clock,
                                                                          other.event)


def parse_exec_id(value: bytes | None) -> ExecId | None:
    """``value`` as an ExecID; None for a pending report's ``-1;-1`` or anything else that is
    not Kalshi's format (such a report is forwarded, never used as a cursor)."""
    if value is None:
        return None
    parts = value.split(b";")
    if len(parts) == 2:
        parts.append(b"0")
    elif len(parts) != 3 or parts[2] == b"0":
        return None  # index 0 is written without the index
    numbers = [parse_uint(part) for part in parts]
    if None in numbers:
        return None
    clock, event, index = (number or 0 for number in numbers)
    return ExecId(index, clock, event)


@dataclass(frozen=True, slots=True)
class Cursor:
    """The newest ExecID forwarded to the engine on one exchange index, and when."""

    exec_id: ExecId
    at: float
    """Unix time it was forwarded."""


@dataclass(frozen=True, slots=True)
class RecoveryState:
    """What one session's next Logon recovers from; saved between connections and restarts."""

    api_key: str
    endpoint: str
    cursors: tuple[Cursor, ...] = ()
    """At most one per exchange index, by index."""
    cl_ord_ids: tuple[tuple[str, float], ...] = ()
    """(ClOrdID, Unix time sent), oldest first, within the window and the bound."""
    clean_end: bool = False
    """The last connection ended with a completed Logout exchange."""

    def cursor(self, index: int) -> Cursor | None:
        for cursor in self.cursors:
            if cursor.exec_id.index == index:
                return cursor
        return None

    def to_json(self) -> dict[str, object]:
        """The state as JSON values."""
        return {
            "api_key": self.api_key, "endpoint": self.endpoint, "clean_end": self.clean_end,
            "cursors": [{"exec_id": cursor.exec_id.text.decode(), "at": cursor.at}
                        for cursor in self.cursors],
            "cl_ord_ids": [[cl_ord_id, at] for cl_ord_id, at in self.cl_ord_ids],
        }

    @classmethod
    def from_json(cls, data: object) -> RecoveryState:
        """Read :meth:`to_json`'s values back.

        Raises:
            TypeError, ValueError: a value of the wrong kind or range (the file may have been
                edited by hand).
        """
        if not isinstance(data, dict):
            raise TypeError("expected a JSON object")
        api_key, endpoint = data.get("api_key"), data.get("endpoint")
        clean_end = data.get("clean_end", False)
        if not isinstance(api_key, str) or not isinstance(endpoint, str) \
                or not isinstance(clean_end, bool):
            raise TypeError("api_key and endpoint must be strings, clean_end a boolean")
        cursors: dict[int, Cursor] = {}
        for item in _list(data.get("cursors", [])):
            if not isinstance(item, dict):
                raise TypeError("a cursor must be an object")
            text, at = item.get("exec_id"), _time(item.get("at"))
            exec_id = parse_exec_id(text.encode()) if isinstance(text, str) else None
            if exec_id is None:
                raise ValueError(f"not an ExecID: {text!r}")
            cursors[exec_id.index] = Cursor(exec_id, at)
        ids: list[tuple[str, float]] = []
        for item in _list(data.get("cl_ord_ids", [])):
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str):
                raise ValueError("a ClOrdID entry must be [id, time]")
            ids.append((item[0], _time(item[1])))
        return cls(api_key, endpoint, tuple(cursors[index] for index in sorted(cursors)),
                   tuple(ids[-MAX_CLORDIDS:]), clean_end)


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value


def _time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"not a time: {value!r}")
    return float(value)


class RecoveryTracker:
    """A session's :class:`RecoveryState` as its relay thread keeps it up to date.

    Only the relay thread calls it; :meth:`snapshot` makes the frozen value that other threads
    may read and save.
    """

    __slots__ = ("_cursors", "_ids", "_injected", "api_key", "endpoint", "window")

    def __init__(self, state: RecoveryState, *, window: float = RECOVERY_WINDOW_S) -> None:
        self.api_key = state.api_key
        self.endpoint = state.endpoint
        self.window = window
        # index -> ((clock, event), Unix time): plain tuples, since every report moves one
        # (a Cursor is made only for a snapshot).
        self._cursors: dict[int, tuple[tuple[int, int], float]] = {
            cursor.exec_id.index: ((cursor.exec_id.clock, cursor.exec_id.event), cursor.at)
            for cursor in state.cursors}
        self._ids: dict[str, float] = dict(state.cl_ord_ids)
        self._injected: set[bytes] = set()

    def report(self, raw: bytes, now: float) -> bool:
        """An ExecutionReport from the gateway at Unix time ``now``; True when it repeats a
        report already injected (the caller does not pass it on), else the cursor moves."""
        value = header_value(raw, EXEC_ID)
        if value is None:
            return False
        injected = self._injected
        if injected and value in injected:
            injected.discard(value)
            return True
        # parse_exec_id's rules, without building an ExecId per report.
        parts = value.split(b";")
        if len(parts) == 2:
            clock, event = parts
            index = 0
        elif len(parts) == 3 and parts[2] != b"0" and parts[2].isdigit() \
                and len(parts[2]) <= MAX_NUMBER_DIGITS:
            clock, event = parts[0], parts[1]
            index = int(parts[2])
        else:
            return False
        if not (clock.isdigit() and event.isdigit()) \
                or len(clock) > MAX_NUMBER_DIGITS or len(event) > MAX_NUMBER_DIGITS:
            return False  # pending (-1;-1), or not Kalshi's format: never a cursor
        key = (int(clock), int(event))
        current = self._cursors.get(index)
        if current is None or key > current[0]:
            self._cursors[index] = (key, now)
        return False

    def order(self, raw: bytes, now: float) -> None:
        """An order message (35=D/F/G) from the engine at Unix time ``now``."""
        ids = self._ids
        for tag in (CL_ORD_ID, ORIG_CL_ORD_ID):
            value = header_value(raw, tag)
            if value:
                text = value.decode("ascii", "replace")
                ids.pop(text, None)
                ids[text] = now
        if len(ids) > MAX_CLORDIDS:
            self._prune(now)

    def _prune(self, now: float) -> None:
        ids = self._ids
        horizon = now - self.window
        stale = [key for key, at in ids.items() if at < horizon]
        for key in stale:
            del ids[key]
        while len(ids) > MAX_CLORDIDS:
            del ids[next(iter(ids))]

    def recovered(self, reports: Iterable[tuple[ExecId, bytes]], now: float) -> None:
        """Reports injected into the engine's stream: the cursors move past them, and the same
        ExecIDs arriving live are recognised as repeats."""
        for exec_id, _ in reports:
            self._injected.add(exec_id.text)
            key = (exec_id.clock, exec_id.event)
            current = self._cursors.get(exec_id.index)
            if current is None or key > current[0]:
                self._cursors[exec_id.index] = (key, now)

    def snapshot(self, now: float, *, clean_end: bool = False) -> RecoveryState:
        """The state now, ClOrdIDs older than the window left out."""
        horizon = now - self.window
        return RecoveryState(
            self.api_key, self.endpoint,
            tuple(Cursor(ExecId(index, *self._cursors[index][0]), self._cursors[index][1])
                  for index in sorted(self._cursors)),
            tuple((key, at) for key, at in self._ids.items() if at >= horizon),
            clean_end)


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """What a Logon's recovery asks the drop copy for, and what it cannot cover."""

    requests: tuple[ExecId, ...]
    """BeginExecID of each U1, one per index whose cursor is within the window."""
    stale: tuple[Cursor, ...] = ()
    """Cursors older than the window: those indexes cannot be recovered."""
    uncovered: tuple[int, ...] = ()
    """Known exchange indexes without a cursor."""
    cl_ord_ids: frozenset[str] = field(default_factory=frozenset)


def plan_recovery(state: RecoveryState, now: float, *,
                  window: float = RECOVERY_WINDOW_S) -> RecoveryPlan:
    """Which indexes to replay from which ExecID, for a Logon at Unix time ``now``.

    A cursor is asked from itself (BeginExecID is inclusive; the report at the cursor is then
    dropped as known), so the request is valid as long as the cursor is inside the window.
    """
    requests, stale = [], []
    for cursor in state.cursors:
        if now - cursor.at >= window:
            stale.append(cursor)
        else:
            requests.append(cursor.exec_id)
    have = {cursor.exec_id.index for cursor in state.cursors}
    return RecoveryPlan(tuple(requests), tuple(stale),
                        tuple(index for index in KNOWN_EXCHANGE_INDEXES if index not in have),
                        frozenset(cl_ord_id for cl_ord_id, at in state.cl_ord_ids
                                  if now - at < window))


@dataclass(frozen=True, slots=True)
class Selection:
    """The replayed reports sorted into what the engine gets and what it does not."""

    kept: tuple[tuple[ExecId, bytes], ...]
    """For the engine, in ExecID order, each ExecID once."""
    known: int = 0
    """At or below the cursor: the engine had them."""
    foreign: int = 0
    """Another session's, REST's or the UI's orders."""
    unreadable: int = 0
    """Without a usable ExecID (pending reports are never replayed; this counts oddities)."""


def select_reports(reports: Iterable[bytes], state: RecoveryState | RecoveryPlan,
                   cursors: Sequence[ExecId]) -> Selection:
    """Keep the replayed reports that belong to this engine and are newer than its cursors.

    Args:
        reports: the replayed ExecutionReports, in any order, repeats allowed.
        state: whose ClOrdIDs (11 or 41) mark a report as this engine's.
        cursors: the newest ExecID the engine had, per index.
    """
    ids = state.cl_ord_ids if isinstance(state, RecoveryPlan) else \
        frozenset(cl_ord_id for cl_ord_id, _ in state.cl_ord_ids)
    by_index = {cursor.index: cursor for cursor in cursors}
    kept: dict[ExecId, bytes] = {}
    known = foreign = unreadable = 0
    for raw in reports:
        exec_id = parse_exec_id(header_value(raw, EXEC_ID))
        if exec_id is None:
            unreadable += 1
            continue
        cursor = by_index.get(exec_id.index)
        if cursor is None or not exec_id.after(cursor):
            known += 1
            continue
        mine = False
        for tag in (CL_ORD_ID, ORIG_CL_ORD_ID):
            value = header_value(raw, tag)
            if value and value.decode("ascii", "replace") in ids:
                mine = True
                break
        if not mine:
            foreign += 1
            continue
        if exec_id in kept:
            known += 1
            continue
        kept[exec_id] = raw
    ordered = sorted(kept.items(), key=lambda item: (item[0].clock, item[0].event,
                                                     item[0].index))
    return Selection(tuple(ordered), known, foreign, unreadable)


def injected_reports(reports: Sequence[bytes], *, sender: bytes, target: bytes,
                     first_seq: int, stamp: bytes) -> list[bytes]:
    """The replayed reports as the engine receives them: its CompIDs, numbered from
    ``first_seq`` on in its stream, ``97=Y`` (PossResend) with the original SendingTime in
    ``122``, and ``stamp`` as the new SendingTime. Body fields are kept as they came."""
    out: list[bytes] = []
    for seq, raw in enumerate(reports, first_seq):
        message = FixMessage.parse(raw)
        original = message.get(tags.SENDING_TIME) or stamp
        head: list[tuple[int, FieldValue]] = [
            (tags.MSG_TYPE, message.msg_type), (tags.SENDER_COMP_ID, sender),
            (tags.TARGET_COMP_ID, target), (tags.MSG_SEQ_NUM, seq),
            (tags.SENDING_TIME, stamp), (tags.POSS_RESEND, b"Y"),
            (tags.ORIG_SENDING_TIME, original)]
        head += [item for item in message.fields if item[0] in _OTHER_HEADER]
        body = [item for item in message.fields
                if item[0] not in _OWN_HEADER and item[0] not in _OTHER_HEADER]
        out.append(encode([*head, *body], message.begin_string))
    return out


def deliver_recovered(kept: Sequence[tuple[ExecId, bytes]],
                      translator: SequenceTranslator | None, *, answer_seq: int,
                      sender: bytes, target: bytes, stamp: bytes
                      ) -> tuple[list[bytes], SequenceTranslator]:
    """The recovered reports numbered right after the Logon answer (the gateway's
    ``answer_seq``, as the engine sees it through ``translator``), and the translation for
    the rest of the connection: the gateway's later numbers shift by their count."""
    translator = translator or SequenceTranslator(0, 0)
    reports = injected_reports(
        [raw for _, raw in kept], sender=sender, target=target,
        first_seq=translator.engine_seq_for_gateway(answer_seq) + 1, stamp=stamp)
    return reports, translator.shifted_in(len(reports))


def event_resend_request(begin: ExecId, *, sender: bytes, target: bytes, seq: int,
                         stamp: bytes) -> bytes:
    """An EventResendRequest (35=U1) from ``begin`` (inclusive) to the newest on its index."""
    return encode([
        (tags.MSG_TYPE, MT_EVENT_RESEND_REQUEST), (tags.SENDER_COMP_ID, sender),
        (tags.TARGET_COMP_ID, target), (tags.MSG_SEQ_NUM, seq), (tags.SENDING_TIME, stamp),
        (BEGIN_EXEC_ID, begin.text),
    ])


def report_format_flags(logon: bytes) -> tuple[tuple[int, bytes], ...]:
    """The flags of a signed Logon that shape ExecutionReports, for the drop-copy Logon."""
    message = FixMessage.parse(logon)
    return tuple((tag, value) for tag in REPORT_FORMAT_FLAGS
                 if (value := message.get(tag)) is not None)


HINT_ORDERS: Final = 10
"""ClOrdIDs named in a reconciliation hint; the rest are counted."""


def reconcile_hint(plan: RecoveryPlan, since: float | None) -> str:
    """What an operator should do when some reports could not be recovered: which orders to
    look up through Kalshi's REST API, and from when."""
    span = "since the engine's last connection" if since is None else \
        f"since {_iso(since)} (the last report the engine had)"
    ids = sorted(plan.cl_ord_ids)
    named = ", ".join(ids[:HINT_ORDERS]) + (f" and {len(ids) - HINT_ORDERS} more"
                                            if len(ids) > HINT_ORDERS else "")
    orders = f"the orders {named}" if ids else "this session's orders"
    return (f"reconcile {orders} through Kalshi's REST API (GET /portfolio/fills and "
            f"/portfolio/orders) {span}")


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
