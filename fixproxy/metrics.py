"""Prometheus metrics on a private registry.

Rare events (connections, Logons, TLS handshakes) use prometheus-client's own metric objects.
Per-message traffic is counted in plain integers on a :class:`TrafficCounters` owned by each
relay direction and turned into counters only when Prometheus scrapes, so the order path pays a
dict increment per message instead of a labelled, locked ``inc()``. The scrape runs in the same
trio thread as the relay (see server.py), so nothing is read while it is being written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from fixproxy import __version__
from fixproxy.kalshi import KNOWN_MSG_TYPES

Direction = Literal["engine_to_gateway", "gateway_to_engine"]
DIRECTIONS: Final[tuple[Direction, ...]] = ("engine_to_gateway", "gateway_to_engine")
OTHER_MSG_TYPE: Final = b"other"
_KNOWN: Final = frozenset(t.encode() for t in KNOWN_MSG_TYPES)

_SECONDS_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                           5.0, 10.0)


class TrafficCounters:
    """Messages by MsgType and bytes for one session and direction (hot path: no locks)."""

    __slots__ = ("bytes", "messages")

    def __init__(self) -> None:
        self.messages: dict[bytes, int] = {}
        self.bytes = 0

    def count(self, msg_type: bytes) -> None:
        """Count one message; unknown MsgTypes fold into ``other`` so labels stay bounded."""
        key = msg_type if msg_type in _KNOWN else OTHER_MSG_TYPE
        messages = self.messages
        messages[key] = messages.get(key, 0) + 1


class _TrafficCollector(Collector):
    def __init__(self, traffic: dict[tuple[str, Direction], TrafficCounters]) -> None:
        self._traffic = traffic

    def collect(self) -> Iterator[CounterMetricFamily]:
        messages = CounterMetricFamily(
            "fixproxy_messages", "FIX messages relayed, by session, direction and MsgType.",
            labels=["session", "direction", "msg_type"])
        size = CounterMetricFamily(
            "fixproxy_bytes", "Bytes of FIX relayed, by session and direction.",
            labels=["session", "direction"])
        for (session, direction), counters in sorted(self._traffic.items()):
            for msg_type, count in sorted(counters.messages.items()):
                messages.add_metric([session, direction, msg_type.decode()], count)
            size.add_metric([session, direction], counters.bytes)
        yield messages
        yield size

    def describe(self) -> Iterable[CounterMetricFamily]:
        return ()


class Metrics:
    """Every metric fixproxy exports, on one private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
            "fixproxy_build_info", "Always 1; the version label says which build runs.",
            ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self._traffic: dict[tuple[str, Direction], TrafficCounters] = {}
        r.register(_TrafficCollector(self._traffic))

    def traffic(self, session: str, direction: Direction) -> TrafficCounters:
        """The counters of one session and direction (created on first use, then shared)."""
        key = (session, direction)
        counters = self._traffic.get(key)
        if counters is None:
            counters = self._traffic[key] = TrafficCounters()
        return counters

    def declare_session(self, session: str) -> None:
        """Create a session's series at zero so dashboards see it before its first event."""
        self.session_up.labels(session=session).set(0)
        for direction in DIRECTIONS:
            self.traffic(session, direction)
