"""Prometheus metrics on a private registry.

Rare events (connections, Logons, TLS handshakes) use prometheus-client's own metric objects.
Per-message traffic is counted in plain integers on a :class:`TrafficCounters` owned by each
relay direction (messages by MsgType, bytes, Rejects, and a plain-integer latency histogram)
and turned into metric families only when Prometheus scrapes, so the order path pays a dict
increment per message instead of a labelled, locked ``inc()``. What a session is doing (state,
sequence numbers, last message age, clock skew) is read at scrape time from the
:class:`~fixproxy.ops.status.StatusBoard`.

Threads: a :class:`TrafficCounters` is written only by its session's relay thread, and read by
the scrape in trio's thread. The scrape copies each dict in one C-level operation (``dict``,
never iterating a live one), so a MsgType counted for the first time mid-scrape cannot break
it; an integer read is never torn under the GIL. A scrape may see one direction's counters a
message ahead of another's, which a monotonic counter tolerates.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fixproxy import __version__
from fixproxy.fix.framer import SCANNER
from fixproxy.kalshi import KNOWN_MSG_TYPES
from fixproxy.ops.statewrites import StateWriteErrors
from fixproxy.ops.status import SKEW_SOURCES, STATES, Clocks, StatusBoard
from fixproxy.session.machine import RELAY_DIRECTIONS, Direction

OTHER_MSG_TYPE: Final = b"other"
KNOWN_TYPES: Final = frozenset(t.encode() for t in KNOWN_MSG_TYPES)
"""MsgTypes counted under their own label; the rest count as ``other`` (bounded labels)."""

_SECONDS_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                           5.0, 10.0)
RELAY_LATENCY_BUCKETS: Final = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
                                0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
"""Upper bounds (seconds) of fixproxy_relay_latency_seconds: mostly below a millisecond,
where a relay's cost lives; a slow peer's backpressure shows in the top buckets."""
REJECT_KINDS: Final = {b"3": "session", b"j": "business"}
"""The ``kind`` label of fixproxy_rejects_total by MsgType: Reject (373) and
BusinessMessageReject (380)."""


class LatencyHistogram:
    """Cumulative-on-read histogram in plain integers: one bisect and two adds per sample."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(RELAY_LATENCY_BUCKETS) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(RELAY_LATENCY_BUCKETS, seconds)] += 1
        self.total += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs, ending with +Inf, as Prometheus wants them."""
        cumulative = 0
        out = []
        for bound, count in zip((*RELAY_LATENCY_BUCKETS, float("inf")), self.counts,
                                strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return out


class TrafficCounters:
    """What one session relayed in one direction (hot path: plain integers, no locks)."""

    __slots__ = ("bytes", "latency", "messages", "rejects")

    def __init__(self) -> None:
        self.messages: dict[bytes, int] = {}
        self.bytes = 0
        self.latency = LatencyHistogram()
        """Seconds from reading a chunk to having written its frames on."""
        self.rejects: dict[tuple[str, str], int] = {}
        """(kind, reason) -> count of Rejects and BusinessMessageRejects."""

    def count(self, msg_type: bytes) -> None:
        """Count one message; unknown MsgTypes fold into ``other`` so labels stay bounded."""
        key = msg_type if msg_type in KNOWN_TYPES else OTHER_MSG_TYPE
        messages = self.messages
        messages[key] = messages.get(key, 0) + 1

    def count_reject(self, msg_type: bytes, raw: bytes) -> None:
        """Count a Reject (by 373) or BusinessMessageReject (by 380) read from ``raw``."""
        kind = REJECT_KINDS.get(msg_type)
        if kind is None:
            return
        tag = b"\x01373=" if kind == "session" else b"\x01380="
        reason = "none"
        start = raw.find(tag)
        if start >= 0:
            start += len(tag)
            end = raw.find(b"\x01", start)
            code = raw[start:end]
            # Codes are small integers; anything else folds into one value (bounded labels).
            reason = code.decode() if code.isdigit() and len(code) <= 4 else "other"
        key = (kind, reason)
        self.rejects[key] = self.rejects.get(key, 0) + 1


class _TrafficCollector(Collector):
    def __init__(self, traffic: dict[tuple[str, Direction], TrafficCounters]) -> None:
        self._traffic = traffic

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "fixproxy_messages", "FIX messages relayed, by session, direction and MsgType.",
            labels=["session", "direction", "msg_type"])
        size = CounterMetricFamily(
            "fixproxy_bytes", "Bytes of FIX relayed, by session and direction.",
            labels=["session", "direction"])
        latency = HistogramMetricFamily(
            "fixproxy_relay_latency_seconds", "Time a message spends inside fixproxy, from "
            "the read that completed it to the end of the write that passed it on.",
            labels=["session", "direction"])
        rejects = CounterMetricFamily(
            "fixproxy_rejects", "Rejects (kind session, reason = 373) and "
            "BusinessMessageRejects (kind business, reason = 380) sent by the gateway.",
            labels=["session", "kind", "reason"])
        for (session, direction), counters in sorted(self._traffic.items()):
            for msg_type, count in sorted(dict(counters.messages).items()):
                messages.add_metric([session, direction, msg_type.decode()], count)
            size.add_metric([session, direction], counters.bytes)
            histogram = counters.latency
            latency.add_metric([session, direction], histogram.buckets(), histogram.sum)
            for (kind, reason), count in sorted(dict(counters.rejects).items()):
                rejects.add_metric([session, kind, reason], count)
        yield messages
        yield size
        yield latency
        yield rejects

    def describe(self) -> Iterable[CounterMetricFamily]:
        return ()


class _StatusCollector(Collector):
    """Session state, sequence numbers, message age and clock skew, read at scrape time."""

    def __init__(self, board: StatusBoard, monotonic: Callable[[], float]) -> None:
        self._board = board
        self._monotonic = monotonic

    def collect(self) -> Iterator[Metric]:
        clocks = Clocks(self._monotonic(), time.time())
        state = GaugeMetricFamily(
            "fixproxy_session_state", "1 for the state the session is in, 0 for the others.",
            labels=["session", "state"])
        age = GaugeMetricFamily(
            "fixproxy_last_message_age_seconds", "Seconds since the last bytes in each "
            "direction of the session's current or last connection.",
            labels=["session", "direction"])
        sequence = GaugeMetricFamily(
            "fixproxy_sequence_number", "Last MsgSeqNum seen in each direction, in the "
            "sender's numbering.", labels=["session", "direction"])
        translated = GaugeMetricFamily(
            "fixproxy_sequence_translated", "1 while fixproxy renumbers the session (the "
            "engine kept its numbers while the gateway leg reset).", labels=["session"])
        skew = GaugeMetricFamily(
            "fixproxy_clock_skew_seconds", "How far the peer's SendingTime (52) was ahead of "
            "local time, at its Logon and last Heartbeat.", labels=["session", "source"])
        for status in self._board:
            current = status.state
            for name in STATES:
                state.add_metric([status.name, name], 1.0 if name == current else 0.0)
            for direction, seen in status.last_seen().items():
                age.add_metric([status.name, direction], clocks.monotonic - seen)
            for direction, number in status.sequence_numbers().items():
                sequence.add_metric([status.name, direction], number)
            translated.add_metric([status.name], 1.0 if status.translated else 0.0)
            for source in SKEW_SOURCES:
                if source in status.clock_skew:
                    skew.add_metric([status.name, source], status.clock_skew[source])
        yield from (state, age, sequence, translated, skew)

    def describe(self) -> Iterable[Metric]:
        return ()


class Metrics:
    """Every metric fixproxy exports, on one private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No <counter>_created series: one more sample per label set that no dashboard or
        # alert reads. The switch is prometheus_client's and process-wide; fixproxy is the
        # process.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.engine_connections = Counter(
            "fixproxy_engine_connections", "Engine connections accepted, by outcome.",
            ["session", "result"], registry=r)
        self.upstream_connects = Counter(
            "fixproxy_upstream_connects", "Connections opened to the gateway, by outcome.",
            ["session", "result"], registry=r)
        self.logons = Counter(
            "fixproxy_logons", "Logons, by outcome (accepted, refused_locally, "
            "refused_by_gateway, no_answer).", ["session", "result"], registry=r)
        self.logouts = Counter(
            "fixproxy_logouts", "Logouts seen, by who started them and why.",
            ["session", "initiator", "reason"], registry=r)
        self.tls_handshake_seconds = Histogram(
            "fixproxy_tls_handshake_seconds", "TCP connect plus TLS handshake to the gateway.",
            ["session"], buckets=_SECONDS_BUCKETS, registry=r)
        self.logon_seconds = Histogram(
            "fixproxy_logon_seconds", "Engine Logon received to the gateway's Logon answer.",
            ["session"], buckets=_SECONDS_BUCKETS, registry=r)
        self.pin_mismatches = Counter(
            "fixproxy_pin_mismatches", "Gateway certificate chains that matched no pin.",
            ["session"], registry=r)
        self.session_up = Gauge(
            "fixproxy_session_up", "1 while the session is logged on at the gateway.",
            ["session"], registry=r)
        self.certificate_expiry = Gauge(
            "fixproxy_certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of the gateway's leaf certificate, as last presented.",
            ["session", "subject"], registry=r)
        self.heartbeat_timeouts = Counter(
            "fixproxy_heartbeat_timeouts", "Sessions ended because a peer was silent for "
            "2 x HeartBtInt + grace.", ["session"], registry=r)
        self.maintenance_active = Gauge(
            "fixproxy_maintenance_active", "1 during Kalshi's configured maintenance window.",
            registry=r)
        self.build_info = Gauge(
            "fixproxy_build_info", "Always 1; the labels say which build runs: its version, "
            "and its frame scanner (c: the accelerator, python: the reference).",
            ["version", "framer"], registry=r)
        self.build_info.labels(version=__version__, framer=SCANNER).set(1)
        self.config_reload = Counter(
            "fixproxy_config_reload", "Configuration reloads, by result (ok, rejected).",
            ["result"], registry=r)
        for result in ("ok", "rejected"):
            self.config_reload.labels(result=result)  # both series exist from the start
        self.recoveries = Counter(
            "fixproxy_recovery", "Drop-copy recoveries at Logon, by result (ok, nothing_to_do, "
            "window_exceeded, not_enabled, rejected, timeout, connect_failed, logon_failed, "
            "key_busy, error; all but the first two mean reports may be missing).",
            ["session", "result"], registry=r)
        self.recovered_reports = Counter(
            "fixproxy_recovered_reports", "Execution reports recovered through the drop copy "
            "and delivered to the engine (97=Y).", ["session"], registry=r)
        self.state_write_errors = Counter(
            "fixproxy_state_write_errors", "Failed writes of fixproxy's own files, by store: "
            "journal (the message journal), sequences and recovery (the state kept in "
            "state_dir); trading goes on without them.", ["session", "store"], registry=r)
        self.state_writes = StateWriteErrors(self.state_write_errors)
        self._traffic: dict[tuple[str, Direction], TrafficCounters] = {}
        r.register(_TrafficCollector(self._traffic))
        self._status_watched = False
        self._leaf_subjects: dict[str, set[str]] = {}

    def traffic(self, session: str, direction: Direction) -> TrafficCounters:
        """The counters of one session and direction (created on first use, then shared)."""
        key = (session, direction)
        counters = self._traffic.get(key)
        if counters is None:
            counters = self._traffic[key] = TrafficCounters()
        return counters

    def watch_status(self, board: StatusBoard, monotonic: Callable[[], float]) -> None:
        """Export the sessions of ``board``; ``monotonic`` is the clock of its machines."""
        if self._status_watched:
            return
        self._status_watched = True
        self.registry.register(_StatusCollector(board, monotonic))

    def set_certificate_expiry(self, session: str, subject: str, not_after: float) -> None:
        """Record the gateway leaf's expiry, dropping the series of an earlier leaf of the
        session: after a renewal under a new subject, an alert must not fire for a
        certificate no longer presented."""
        self._leaf_subjects.setdefault(session, set())
        for old in self._leaf_subjects[session] - {subject}:
            self.certificate_expiry.remove(session, old)
        self._leaf_subjects[session] = {subject}
        self.certificate_expiry.labels(session=session, subject=subject).set(not_after)

    def declare_session(self, session: str) -> None:
        """Create a session's series at zero so dashboards see it before its first event,
        and so that ``increase()`` over a counter sees its first event too."""
        self.session_up.labels(session=session).set(0)
        self.pin_mismatches.labels(session=session)
        self.heartbeat_timeouts.labels(session=session)
        for result in ("accepted", "refused_locally", "refused_by_gateway", "no_answer"):
            self.logons.labels(session=session, result=result)
        for direction in RELAY_DIRECTIONS:
            self.traffic(session, direction)

    def declare_recovery(self, session: str) -> None:
        """Create a recovering session's series at zero, so that ``increase()`` and the
        failed-recovery alert see the first event."""
        self.recovered_reports.labels(session=session)
        for result in ("ok", "nothing_to_do"):
            self.recoveries.labels(session=session, result=result)
