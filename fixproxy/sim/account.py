"""The simulated Kalshi account behind every API key: orders, ExecIDs, the execution history,
and the drop copy's replay of it (sans-IO, like :mod:`fixproxy.sim.venue`).

Theory of operation
-------------------
Every ExecutionReport (35=8) the venue makes is an event of the account, whichever session
(or none) it is delivered on. Each gets an ExecID (17) in Kalshi's format, sequenced per
exchange index: ``clock;event`` on index 0 and ``clock;event;index`` elsewhere, where ``clock``
is the venue's matching cycle (one per order message or fill) and ``event`` counts the index's
events. Both grow, so ExecIDs order as integer tuples within an index, and ``clock`` reaches
two digits soon enough that comparing them as strings would go wrong (``10;...`` < ``9;...``).
An order goes to the index its symbol hashes to (``exchange_indexes`` of them).

With ``fill_after`` set, a new order rests and is filled in full that many seconds later,
whether or not its session is still connected: the fill is an event of the account. Fills are
applied when anything touches the account at or after their time (:meth:`Account.settle`), each
dated at its due time, in due order; the venue wakes live sessions at :meth:`Account.next_due`,
and a fill is delivered live only to a connected order-entry session of the key that placed the
order; it is in the history either way.

KalshiDC's EventResendRequest (35=U1) replays the history of one index from BeginExecID (21001,
inclusive) to EndExecID (21002, default the newest), with the refusals Kalshi documents
(EventResendReject 35=U3, ``21004``): 1 too many requests (more than ``replay_limit`` per
connection), 2 server error (a fault switch), 3 BeginExecID outside the 3-hour window, 4
EndExecID beyond the newest, 5 not enabled (the allowlist switch off). Pending reports are
never replayed: the simulator makes none.
"""

from __future__ import annotations

import itertools
import logging
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from fixproxy.fix.codec import FieldValue

LOG: Final = logging.getLogger("fixproxy.sim")
REPLAY_WINDOW_S: Final = 3 * 3600.0
"""Kalshi's drop-copy look-back."""
MAX_HISTORY: Final = 100_000
"""Events kept per exchange index; older ones are forgotten (a real window is 3 hours)."""
_ORDER_ECHO: Final = (55, 54, 38, 40, 44)
_CANCEL_ECHO: Final = (41, 55, 54, 38)
ORDER_ENTRY_ENDPOINTS: Final = frozenset({"KalshiNR", "KalshiRT"})

Body = list[tuple[int, FieldValue]]


@dataclass(frozen=True, slots=True)
class Event:
    """One ExecutionReport of the account."""

    key: tuple[int, int]
    """(clock, event): the ExecID's order within its index."""
    index: int
    wall: float
    """Unix time it happened."""
    api_key: str
    body: Body


@dataclass(slots=True)
class _Resting:
    api_key: str
    order_id: bytes
    cl_ord_id: bytes
    index: int
    due: float
    """When it fills, on the venue's monotonic clock."""
    fields: Mapping[int, bytes]


@dataclass(frozen=True, slots=True)
class Replay:
    """The answer to one EventResendRequest: the reports' bodies, or a reject reason."""

    bodies: tuple[Body, ...] = ()
    reject: int | None = None
    text: str = ""


def exec_id_text(index: int, key: tuple[int, int]) -> bytes:
    clock, event = key
    return b"%d;%d" % key if index == 0 else b"%d;%d;%d" % (clock, event, index)


def parse_exec_id(value: bytes) -> tuple[int, tuple[int, int]] | None:
    """(index, (clock, event)) of an ExecID in Kalshi's format, else None."""
    parts = value.split(b";")
    if len(parts) not in (2, 3) or not all(part.isdigit() for part in parts):
        return None
    if len(parts) == 3 and int(parts[2]) == 0:
        return None
    index = int(parts[2]) if len(parts) == 3 else 0
    return index, (int(parts[0]), int(parts[1]))


@dataclass(slots=True)
class Account:
    """Orders and events of every key of the venue (the simulator has one account)."""

    wall_clock: Callable[[], float]
    stamp: Callable[[], bytes]
    exchange_indexes: int = 1
    fill_after: float | None = None
    allowlisted: bool = True
    replay_server_error: bool = False
    replay_limit: int = 10
    window: float = REPLAY_WINDOW_S
    history: dict[int, list[Event]] = field(default_factory=dict)
    live_fills: dict[str, list[Body]] = field(default_factory=dict)
    """Fills waiting for their key's connected order-entry session to send them."""
    _resting: list[_Resting] = field(default_factory=list)
    _clock: int = 0
    _events: dict[int, int] = field(default_factory=dict)
    _order_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_order_id(self) -> bytes:
        return b"SIM-%d" % next(self._order_ids)

    def index_of(self, symbol: bytes | None) -> int:
        return zlib.crc32(symbol or b"") % max(1, self.exchange_indexes)

    def _record(self, api_key: str, index: int, body: Body, wall: float) -> bytes:
        """Give ``body`` the next ExecID of ``index`` and keep it in the history."""
        self._clock += 1
        event = self._events.get(index, 0) + 1
        self._events[index] = event
        key = (self._clock, event)
        exec_id = exec_id_text(index, key)
        body.insert(2, (17, exec_id))
        events = self.history.setdefault(index, [])
        events.append(Event(key, index, wall, api_key, body))
        if len(events) > MAX_HISTORY:
            del events[0]
        return exec_id

    def new_order(self, api_key: str, order: Mapping[int, bytes], now: float,
                  stamp: bytes) -> Body:
        """The acknowledgement (150=0) of a NewOrderSingle; with ``fill_after`` it rests."""
        order_id = self.new_order_id()
        index = self.index_of(order.get(55))
        body: Body = [(37, order_id), (11, order[11]), (150, b"0"), (39, b"0")]
        body += [(tag, order[tag]) for tag in _ORDER_ECHO if tag in order]
        body += [(14, b"0"), (151, order.get(38, b"0")), (6, b"0"), (60, stamp)]
        if index:
            body.append((30, b"%d" % index))
        self._record(api_key, index, body, self.wall_clock())
        if self.fill_after is not None:
            self._resting.append(_Resting(api_key, order_id, order[11], index,
                                          now + self.fill_after, dict(order)))
        return body

    def cancel(self, api_key: str, request: Mapping[int, bytes], stamp: bytes) -> Body:
        """The answer (150=4) to an OrderCancelRequest; a resting order stops resting."""
        orig = request.get(41)
        index = 0
        for resting in self._resting:
            if resting.cl_ord_id == orig and resting.api_key == api_key:
                self._resting.remove(resting)
                index = resting.index
                break
        body: Body = [(37, request.get(37) or self.new_order_id()), (11, request[11]),
                      (150, b"4"), (39, b"4")]
        body += [(tag, request[tag]) for tag in _CANCEL_ECHO if tag in request]
        body += [(14, b"0"), (151, b"0"), (6, b"0"), (60, stamp)]
        if index:
            body.append((30, b"%d" % index))
        self._record(api_key, index, body, self.wall_clock())
        return body

    def next_due(self) -> float | None:
        """When the next resting order fills (monotonic), if any rests."""
        return min((resting.due for resting in self._resting), default=None)

    def last_due(self) -> float | None:
        """When the last resting order fills (monotonic), if any rests."""
        return max((resting.due for resting in self._resting), default=None)

    def settle(self, now: float, connected: Callable[[str], bool]) -> None:
        """Fill every resting order due by ``now``, in due order, each dated at its due time;
        a fill goes to :attr:`live_fills` when ``connected(api_key)``."""
        due = sorted((r for r in self._resting if r.due <= now), key=lambda r: r.due)
        if not due:
            return
        wall_now = self.wall_clock()
        for resting in due:
            self._resting.remove(resting)
            fields = resting.fields
            qty = fields.get(38, b"0")
            price = fields.get(44, b"0")
            body: Body = [(37, resting.order_id), (11, resting.cl_ord_id), (150, b"F"),
                          (39, b"2")]
            body += [(tag, fields[tag]) for tag in _ORDER_ECHO if tag in fields]
            body += [(32, qty), (31, price), (14, qty), (151, b"0"), (6, price),
                     (60, self.stamp())]
            if resting.index:
                body.append((30, b"%d" % resting.index))
            self._record(resting.api_key, resting.index, body,
                         wall_now - max(0.0, now - resting.due))
            if connected(resting.api_key):
                self.live_fills.setdefault(resting.api_key, []).append(body)

    def event_resend(self, request: Mapping[int, bytes], seq: int, requests: int
                     ) -> list[tuple[bytes, Body]]:
        """The answers to an EventResendRequest (35=U1) with MsgSeqNum ``seq``, the
        ``requests``-th of its connection: the reports then U2, or U3 alone."""
        replay = self.replay(request[21001], request.get(21002), requests)
        if replay.reject is not None:
            LOG.info("EventResendRequest from %s refused: %s",
                     request[21001].decode("ascii", "replace"), replay.text)
            return [(b"U3", [(45, seq), (21004, replay.reject), (58, replay.text)])]
        return [*((b"8", body) for body in replay.bodies),
                (b"U2", [(45, seq), (21003, len(replay.bodies))])]

    def replay(self, begin: bytes, end: bytes | None, requests: int) -> Replay:
        """The events an EventResendRequest asks for, or why not (see the module)."""
        if not self.allowlisted:
            return Replay(reject=5, text="EventResendRequest is not enabled for this account")
        if requests > self.replay_limit:
            return Replay(reject=1, text="too many requests")
        if self.replay_server_error:
            return Replay(reject=2, text="server error")
        first = parse_exec_id(begin)
        if first is None:
            return Replay(reject=3, text=f"BeginExecID {begin.decode('ascii', 'replace')} "
                                         f"is not an ExecID")
        index, begin_key = first
        events = self.history.get(index, [])
        horizon = self.wall_clock() - self.window
        if not events or begin_key < events[0].key or any(
                event.key == begin_key and event.wall < horizon for event in events):
            return Replay(reject=3, text="BeginExecID outside the window")
        last_key = events[-1].key
        if end is not None:
            last = parse_exec_id(end)
            if last is None or last[0] != index:
                return Replay(reject=4, text="EndExecID is not on the BeginExecID's index")
            if last[1] > events[-1].key:
                return Replay(reject=4, text="EndExecID too large")
            last_key = last[1]
        return Replay(tuple(event.body for event in events
                            if begin_key <= event.key <= last_key and event.wall >= horizon))
