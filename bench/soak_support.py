"""Bookkeeping of the soak run (pure, no I/O): which orders were confirmed, in doubt or lost.

Theory of operation
-------------------
A soak shows two things over a long run with faults injected on purpose: no accepted order
goes missing, and fixproxy's memory stays flat. "Missing" needs a precise meaning once
connections are cut deliberately. On a session without retransmission (KalshiNR, where every
Logon carries ResetSeqNumFlag 141=Y and the sequence starts again at 1) the only signal a
sender gets that a message may not have been processed is the end of the session: nothing sent
before a disconnect is ever resent. So every order ends up as exactly one of:

* **confirmed**: its ExecutionReport (35=8) came back once, in the order the orders were sent;
* **in doubt**: it was written on a connection that then ended at the other side's initiative
  (a gateway drop, relayed by fixproxy as its Logout and a close) before its report came back.
  The engine was told by the close, which FIX allows. The gateway's own records split these by
  what happened to the order: never received, received but not answered, answered but the
  report cut off on its way back;
* **lost**: anything else. An order still unanswered when the engine's own Logout was answered
  (the gateway answers in order, so every report must precede the Logout answer); an order
  unanswered for longer than the report timeout while its connection stayed up; an order whose
  report was passed over by the report of a later order. Bad messages count too: a report that
  is duplicated, late or for an order never sent, a gap in the inbound MsgSeqNum (34), an
  order the gateway saw twice or out of order. Lost must be 0.

ClOrdIDs (11) are ``soak-<connection>-<n>``, with n counting from 1 on each engine connection,
so both ends keep one counter per connection instead of a set of every id: the engine expects
report n + 1 after report n, and the gateway's records must show the orders and the reports of
each connection in that same sequence. The alternative, a set of outstanding ids, would grow
with any leak in the instrument itself and would not notice reordering.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

CL_ORD_ID_PREFIX: Final = b"soak-"
_CONN_DIGITS: Final = 6
_ORDER_DIGITS: Final = 9
MAX_PROBLEMS_KEPT: Final = 50
"""Problem descriptions kept for the report; all are counted."""

# How an engine connection ended.
END_LOGOUT: Final = "logout"
"""A scheduled reconnect: the engine logged out and the gateway answered."""
END_FINAL: Final = "final"
"""The end of the run: the engine logged out and the gateway answered."""
END_DROPPED: Final = "dropped"
"""Closed by the other side (fixproxy's Logout after a gateway drop, or a bare close)."""
END_STALLED: Final = "stalled"
"""An order waited longer than the report timeout on a live connection; the engine hung up."""
END_LOGOUT_UNANSWERED: Final = "logout_unanswered"
"""The engine's Logout got no answer in time on a live connection."""
END_BROKEN: Final = "broken"
"""fixproxy sent bytes that are not valid FIX."""
END_ABORTED: Final = "aborted"
"""Still open when the run was aborted by an error."""
GRACEFUL_ENDS: Final = frozenset({END_LOGOUT, END_FINAL})
LOSING_ENDS: Final = frozenset({END_LOGOUT, END_FINAL, END_STALLED, END_LOGOUT_UNANSWERED,
                                END_BROKEN})
"""Ends after which an unanswered order counts as lost: the connection did not fail on the
far side, so its report should have come back."""

RSS_GROWTH_LIMIT_PCT: Final = 10.0


def cl_ord_id(connection: int, number: int) -> bytes:
    """The ClOrdID of order ``number`` (from 1) on engine connection ``connection``."""
    return b"%s%0*d-%0*d" % (CL_ORD_ID_PREFIX, _CONN_DIGITS, connection, _ORDER_DIGITS,
                             number)


def parse_cl_ord_id(value: bytes | None) -> tuple[int, int] | None:
    """``(connection, number)`` of a soak ClOrdID, or None for anything else."""
    if value is None or not value.startswith(CL_ORD_ID_PREFIX):
        return None
    conn, sep, number = value[len(CL_ORD_ID_PREFIX):].partition(b"-")
    if not sep or not conn.isdigit() or not number.isdigit():
        return None
    return int(conn), int(number)


def field(raw: bytes, marker: bytes) -> bytes | None:
    """The value of the first field ``marker`` (e.g. ``b"\\x0111="``) in ``raw``, else None."""
    at = raw.find(marker)
    if at < 0:
        return None
    start = at + len(marker)
    end = raw.find(b"\x01", start)
    return raw[start:end] if end >= 0 else None


@dataclass(slots=True)
class Connection:
    """One logged-on engine connection: what the engine and the gateway saw of its orders."""

    number: int
    opened_s: float
    sent: int = 0
    """Orders written; order n has ClOrdID ``cl_ord_id(number, n)``."""
    confirmed: int = 0
    """Reports accepted: each answered the oldest order then unanswered."""
    answered_up_to: int = 0
    """The highest order number answered; orders above it are unanswered."""
    skipped: int = 0
    """Orders whose report never came although a report for a later order did."""
    gateway_received: int = 0
    """Orders 1..gateway_received reached the gateway, by its records."""
    gateway_answered: int = 0
    """Reports 1..gateway_answered were produced by the gateway, by its records."""
    gateway_dropped: bool = False
    """The gateway connection was dropped on schedule while this connection was live."""
    end: str = ""
    text: str = ""
    """The Text (58) of the Logout that ended the connection, if any."""
    closed_s: float | None = None

    def as_json(self, origin: float) -> dict[str, Any]:
        """The record for the JSON report, times in seconds since ``origin``."""
        return {"number": self.number, "opened_s": round(self.opened_s - origin, 3),
                "closed_s": None if self.closed_s is None else round(self.closed_s - origin, 3),
                "end": self.end, "text": self.text, "sent": self.sent,
                "confirmed": self.confirmed, "skipped": self.skipped,
                "gateway_received": self.gateway_received,
                "gateway_answered": self.gateway_answered,
                "gateway_dropped": self.gateway_dropped}


@dataclass(frozen=True, slots=True)
class Tally:
    """The final classification of every order of the run."""

    sent: int
    confirmed: int
    in_doubt: int
    in_doubt_not_received: int
    """Written by the engine, never seen by the gateway."""
    in_doubt_unanswered: int
    """Seen by the gateway, no report produced before the drop."""
    in_doubt_undelivered: int
    """Report produced by the gateway, cut off before it reached the engine."""
    lost: int
    lost_unanswered: int
    """Orders unanswered on a connection that did not fail on the far side."""
    lost_skipped: int
    """Orders whose report was passed over by the report of a later order."""
    bad_messages: int
    """Duplicated, late or unknown reports, inbound sequence gaps, gateway-side duplicates
    or reordering."""
    unexpected_disconnects: int
    """Connections closed by fixproxy although no gateway drop was scheduled then."""
    ends: Mapping[str, int]

    def as_json(self) -> dict[str, Any]:
        """The figures for the JSON report."""
        return {"sent": self.sent, "confirmed": self.confirmed, "in_doubt": self.in_doubt,
                "in_doubt_detail": {"not_received_by_gateway": self.in_doubt_not_received,
                                    "received_not_answered": self.in_doubt_unanswered,
                                    "answered_not_delivered": self.in_doubt_undelivered},
                "lost": self.lost, "lost_detail": {"unanswered": self.lost_unanswered,
                                                   "skipped": self.lost_skipped,
                                                   "bad_messages": self.bad_messages},
                "unexpected_disconnects": self.unexpected_disconnects,
                "connection_ends": dict(self.ends)}


class Ledger:
    """Every engine connection of the run and what both ends recorded of its orders."""

    def __init__(self) -> None:
        self.connections: dict[int, Connection] = {}
        self.problems: list[str] = []
        self.problem_count = 0
        self.bad_messages = 0
        self.gateway_orders = 0
        self.gateway_reports = 0

    def problem(self, text: str) -> None:
        """Note something that went wrong; the first :data:`MAX_PROBLEMS_KEPT` are kept."""
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(text)

    def _bad(self, text: str) -> None:
        self.bad_messages += 1
        self.problem(text)

    # ----- the engine's side --------------------------------------------------------------

    def open(self, now: float) -> Connection:
        """A new logged-on engine connection, numbered from 1."""
        record = Connection(len(self.connections) + 1, now)
        self.connections[record.number] = record
        return record

    @staticmethod
    def next_order(record: Connection) -> bytes:
        """Count one more order written on ``record``; its ClOrdID."""
        record.sent += 1
        return cl_ord_id(record.number, record.sent)

    def report(self, record: Connection, value: bytes | None) -> int:
        """An ExecutionReport for ClOrdID ``value`` arrived on ``record``.

        Returns:
            How many of the oldest unanswered orders it settles: 1 if it answers the oldest
            one; more if it answers a later one (the orders passed over are counted lost,
            once: their reports, should they come later, are counted as bad); 0 if it is a
            duplicate, late or for an order never sent on this connection (a bad message).
        """
        expected = record.answered_up_to + 1
        if expected <= record.sent and value == cl_ord_id(record.number, expected):
            record.answered_up_to = expected
            record.confirmed += 1
            return 1
        parsed = parse_cl_ord_id(value)
        shown = value.decode("ascii", "replace") if value is not None else "missing"
        if parsed is not None and parsed[0] == record.number and \
                expected < parsed[1] <= record.sent:
            passed = parsed[1] - expected
            record.skipped += passed
            self.problem(f"connection {record.number}: report for ClOrdID {shown} came before "
                         f"any for the {passed} orders sent ahead of it")
            record.answered_up_to = parsed[1]
            record.confirmed += 1
            return passed + 1
        if parsed is None or parsed[0] != record.number:
            why = "for an order not sent on this connection"
        elif parsed[1] < expected:
            why = "duplicated or late"
        else:
            why = "for an order never sent"
        self._bad(f"connection {record.number}: report for ClOrdID {shown} {why}")
        return 0

    def sequence_gap(self, record: Connection, expected: int, got: int | None) -> None:
        """An inbound MsgSeqNum (34) other than the next one: a message went missing."""
        self._bad(f"connection {record.number}: inbound MsgSeqNum {got}, expected {expected}")

    def close(self, record: Connection, end: str, text: str, now: float) -> None:
        """Record how ``record`` ended."""
        record.end = end
        record.text = text
        record.closed_s = now

    # ----- the gateway's side -------------------------------------------------------------

    def _gateway_record(self, value: bytes | None, what: str) -> tuple[Connection, int] | None:
        parsed = parse_cl_ord_id(value)
        record = self.connections.get(parsed[0]) if parsed is not None else None
        if parsed is None or record is None or parsed[1] < 1:
            shown = value.decode("ascii", "replace") if value is not None else "missing"
            self._bad(f"the gateway {what} ClOrdID {shown}, which no engine connection sent")
            return None
        return record, parsed[1]

    def gateway_order(self, value: bytes | None) -> None:
        """The gateway received a NewOrderSingle with ClOrdID ``value``."""
        self.gateway_orders += 1
        found = self._gateway_record(value, "received")
        if found is None:
            return
        record, number = found
        if number != record.gateway_received + 1:
            self._bad(f"connection {record.number}: the gateway received order {number} after "
                      f"order {record.gateway_received}")
        record.gateway_received = max(record.gateway_received, number)

    def gateway_report(self, value: bytes | None) -> None:
        """The gateway produced an ExecutionReport for ClOrdID ``value``."""
        self.gateway_reports += 1
        found = self._gateway_record(value, "answered")
        if found is None:
            return
        record, number = found
        if number != record.gateway_answered + 1:
            self._bad(f"connection {record.number}: the gateway answered order {number} after "
                      f"order {record.gateway_answered}")
        record.gateway_answered = max(record.gateway_answered, number)

    # ----- the result ---------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """Orders sent and confirmed so far, for progress lines."""
        records = self.connections.values()
        return (sum(record.sent for record in records),
                sum(record.confirmed for record in records))

    def tally(self) -> Tally:
        """Classify every order of every connection (call once the run is over)."""
        sent = confirmed = lost_unanswered = skipped = unexpected = 0
        not_received = unanswered = undelivered = 0
        ends: dict[str, int] = {}
        for record in self.connections.values():
            end = record.end or END_ABORTED
            ends[end] = ends.get(end, 0) + 1
            sent += record.sent
            confirmed += record.confirmed
            skipped += record.skipped
            answered_up_to = record.answered_up_to
            open_orders = record.sent - answered_up_to
            if not (answered_up_to <= record.gateway_answered <= record.gateway_received
                    <= record.sent):
                self.problem(f"connection {record.number}: counts disagree: sent {record.sent}"
                             f", gateway received {record.gateway_received}, gateway answered "
                             f"{record.gateway_answered}, answered up to {answered_up_to}")
            if end in LOSING_ENDS:
                if open_orders:
                    lost_unanswered += open_orders
                    self.problem(f"connection {record.number} ({end}): {open_orders} orders "
                                 f"unanswered although the connection did not fail")
                continue
            if end == END_DROPPED and not record.gateway_dropped:
                unexpected += 1
                self.problem(f"connection {record.number} was closed with no gateway drop "
                             f"scheduled: {record.text or 'no Logout'}")
            # In doubt: split by the gateway's records, clamped so that a disagreement
            # (already reported above) cannot make a share negative.
            received = min(max(record.gateway_received, answered_up_to), record.sent)
            answered = min(max(record.gateway_answered, answered_up_to), received)
            not_received += record.sent - received
            unanswered += received - answered
            undelivered += answered - answered_up_to
        in_doubt = not_received + unanswered + undelivered
        return Tally(sent=sent, confirmed=confirmed, in_doubt=in_doubt,
                     in_doubt_not_received=not_received, in_doubt_unanswered=unanswered,
                     in_doubt_undelivered=undelivered,
                     lost=lost_unanswered + skipped + self.bad_messages,
                     lost_unanswered=lost_unanswered, lost_skipped=skipped,
                     bad_messages=self.bad_messages,
                     unexpected_disconnects=unexpected, ends=ends)


class LatencyHistogram:
    """Round-trip times in log-spaced buckets: bounded memory however long the run."""

    __slots__ = ("_counts", "count", "maximum")

    BUCKETS_PER_DECADE: Final = 20
    FLOOR_S: Final = 1e-5
    DECADES: Final = 7
    """From 10 us to 100 s; slower answers land in the last bucket (and in ``maximum``)."""

    def __init__(self) -> None:
        self._counts = [0] * (self.BUCKETS_PER_DECADE * self.DECADES + 1)
        self.count = 0
        self.maximum = 0.0

    def add(self, seconds: float) -> None:
        """Count one round trip of ``seconds``."""
        self.count += 1
        self.maximum = max(self.maximum, seconds)
        if seconds <= self.FLOOR_S:
            index = 0
        else:
            index = min(len(self._counts) - 1, math.ceil(
                math.log10(seconds / self.FLOOR_S) * self.BUCKETS_PER_DECADE))
        self._counts[index] += 1

    def quantile(self, q: float) -> float:
        """The upper edge of the bucket holding quantile ``q`` (0..1), in seconds; 0 if empty."""
        if not self.count:
            return 0.0
        rank = math.ceil(q * self.count)
        seen = 0
        for index, count in enumerate(self._counts):
            seen += count
            if seen >= rank:
                edge = self.FLOOR_S * 10 ** (index / self.BUCKETS_PER_DECADE)
                return min(edge, self.maximum)
        return self.maximum

    def as_json(self) -> dict[str, Any]:
        """Count, p50, p99, p99.9 and maximum in milliseconds (bucket edges, about 12 %)."""
        return {"n": self.count, "p50": round(self.quantile(0.5) * 1e3, 3),
                "p99": round(self.quantile(0.99) * 1e3, 3),
                "p999": round(self.quantile(0.999) * 1e3, 3),
                "max": round(self.maximum * 1e3, 3)}


class RssTrack:
    """fixproxy's resident set over the run: start after warm-up, end, maximum."""

    def __init__(self, warmup_s: float, keep_every_s: float) -> None:
        self.warmup_s = warmup_s
        self.keep_every_s = keep_every_s
        self.samples: list[tuple[float, int]] = []
        """(seconds since the first Logon, KiB), one per ``keep_every_s``, for the JSON."""
        self.start: int | None = None
        self.end: int | None = None
        self.maximum = 0
        self._last_kept = -math.inf

    def add(self, elapsed: float, kib: int) -> None:
        """One reading of VmRSS, ``elapsed`` seconds into the run."""
        if elapsed >= self.warmup_s:
            if self.start is None:
                self.start = kib
            self.end = kib
            self.maximum = max(self.maximum, kib)
        if elapsed - self._last_kept >= self.keep_every_s:
            self.samples.append((round(elapsed, 1), kib))
            self._last_kept = elapsed

    def as_json(self) -> dict[str, Any]:
        """Start, end, max (KiB, after warm-up), growth in percent and whether it is flagged."""
        growth = max_growth = None
        if self.start and self.end is not None:
            growth = round(100.0 * (self.end - self.start) / self.start, 2)
            max_growth = round(100.0 * (self.maximum - self.start) / self.start, 2)
        return {"warmup_s": self.warmup_s, "start": self.start, "end": self.end,
                "max": self.maximum or None, "growth_pct": growth,
                "max_growth_pct": max_growth, "limit_pct": RSS_GROWTH_LIMIT_PCT,
                "flagged": growth is None or growth > RSS_GROWTH_LIMIT_PCT,
                "samples": self.samples}


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def format_report(result: Mapping[str, Any]) -> str:
    """The human-readable summary of a soak result (the JSON's content, abridged)."""
    settings = result["settings"]
    orders = result["orders"]
    detail = orders["in_doubt_detail"]
    messages = result["messages"]
    reconnects = result["reconnects"]
    rss = result["rss_kib"]
    verdict = (f"FLAG: grew more than {rss['limit_pct']:g} %" if rss["flagged"] else "flat")
    cpu = result["cpu"]
    latency = result["latency_ms"]
    lines = [
        f"soak: {result['duration_s']:.0f} s at {settings['rate']:g} orders/s; gateway drop "
        f"every {settings['drop_every']:g} s, engine reconnect every "
        f"{settings['reconnect_every']:g} s",
        f"messages     sent {messages['sent']:,}, received {messages['received']:,} "
        f"(engine side, all types)",
        f"orders       sent {orders['sent']:,} ({orders['orders_per_s']:.0f}/s), confirmed "
        f"{orders['confirmed']:,}",
        f"in doubt     {orders['in_doubt']:,} (cut off by a drop: "
        f"{detail['not_received_by_gateway']} never reached the gateway, "
        f"{detail['received_not_answered']} received but unanswered, "
        f"{detail['answered_not_delivered']} answered but not delivered)",
        f"LOST         {orders['lost']} (unanswered on a live connection "
        f"{orders['lost_detail']['unanswered']}, report passed over "
        f"{orders['lost_detail']['skipped']}, bad or missing messages "
        f"{orders['lost_detail']['bad_messages']})",
        f"reconnects   {reconnects['total']} ({reconnects['after_drop']} after a gateway "
        f"drop, {reconnects['scheduled']} scheduled, {reconnects['other']} other); "
        f"gateway drops {result['drops']['connections_dropped']}; Logon attempts refused "
        f"{reconnects['logon_failures']}",
        f"latency      p50 {latency['p50']:.2f} ms, p99 {latency['p99']:.2f} ms, p99.9 "
        f"{latency['p999']:.2f} ms, max {latency['max']:.2f} ms ({latency['n']:,} reports)",
        f"fixproxy RSS start {_mib(rss['start'])} (after {rss['warmup_s']:g} s warm-up), end "
        f"{_mib(rss['end'])}, max {_mib(rss['max'])}: growth {rss['growth_pct']} % "
        f"(max {rss['max_growth_pct']} %) -> {verdict}",
        f"fixproxy CPU {cpu['fixproxy_s']:.2f} s over the run ({cpu['fixproxy_pct_of_core']:.1f} "
        f"% of one core, {cpu['fixproxy_us_per_message']:.1f} us per relayed message); this "
        f"driver (engine + gateway) {cpu['driver_s']:.2f} s",
    ]
    if result["problems"]:
        lines.append(f"problems     {result['problem_count']}:")
        lines += [f"  - {text}" for text in result["problems"]]
    lines.append("result: " + ("PASS: no accepted order lost" if result["ok"] else
                               "FAIL: " + "; ".join(result["failures"])))
    return "\n".join(lines)
