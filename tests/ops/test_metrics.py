"""Every metric fixproxy exports, through a fresh registry and its text exposition."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.e2e import GUARD_SECONDS, E2EMaterial, open_proxy_pair

from fixproxy import __version__
from fixproxy.fix import tags
from fixproxy.fix.framer import SCANNER
from fixproxy.ops.metrics import RELAY_LATENCY_BUCKETS, LatencyHistogram, Metrics
from fixproxy.ops.status import STATES, StatusBoard
from fixproxy.session.machine import Direction

SESSION = "NR"


def exposition(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back from the text format Prometheus reads."""
    text = generate_latest(metrics.registry).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_declared_session_exists_at_zero_before_any_event() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.declare_session(SESSION)
    samples = exposition(metrics)
    assert value(samples, "fixproxy_session_up", session=SESSION) == 0
    for direction in ("engine_to_gateway", "gateway_to_engine"):
        assert value(samples, "fixproxy_bytes_total", session=SESSION, direction=direction) == 0
        assert value(samples, "fixproxy_relay_latency_seconds_count", session=SESSION,
                     direction=direction) == 0
    assert value(samples, "fixproxy_build_info", version=__version__, framer=SCANNER) == 1


def test_event_counters_and_histograms() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.engine_connections.labels(session=SESSION, result="ok").inc()
    metrics.upstream_connects.labels(session=SESSION, result="pin_mismatch").inc()
    metrics.logons.labels(session=SESSION, result="accepted").inc(2)
    metrics.logouts.labels(session=SESSION, initiator="gateway", reason="duplicate").inc()
    metrics.pin_mismatches.labels(session=SESSION).inc()
    metrics.heartbeat_timeouts.labels(session=SESSION).inc()
    metrics.tls_handshake_seconds.labels(session=SESSION).observe(0.004)
    metrics.logon_seconds.labels(session=SESSION).observe(0.3)
    metrics.certificate_expiry.labels(session=SESSION, subject="CN=gw").set(1.9e9)
    metrics.maintenance_active.set(1)
    samples = exposition(metrics)
    assert value(samples, "fixproxy_engine_connections_total", session=SESSION,
                 result="ok") == 1
    assert value(samples, "fixproxy_upstream_connects_total", session=SESSION,
                 result="pin_mismatch") == 1
    assert value(samples, "fixproxy_logons_total", session=SESSION, result="accepted") == 2
    assert value(samples, "fixproxy_logouts_total", session=SESSION, initiator="gateway",
                 reason="duplicate") == 1
    assert value(samples, "fixproxy_pin_mismatches_total", session=SESSION) == 1
    assert value(samples, "fixproxy_heartbeat_timeouts_total", session=SESSION) == 1
    assert value(samples, "fixproxy_tls_handshake_seconds_bucket", session=SESSION,
                 le="0.005") == 1
    assert value(samples, "fixproxy_tls_handshake_seconds_bucket", session=SESSION,
                 le="0.0025") == 0
    assert value(samples, "fixproxy_logon_seconds_count", session=SESSION) == 1
    assert value(samples, "fixproxy_certificate_expiry_timestamp_seconds", session=SESSION,
                 subject="CN=gw") == 1.9e9
    assert value(samples, "fixproxy_maintenance_active") == 1


def test_traffic_counts_messages_bytes_and_folds_unknown_types() -> None:
    metrics = Metrics(CollectorRegistry())
    counters = metrics.traffic(SESSION, Direction.ENGINE_TO_GATEWAY)
    assert metrics.traffic(SESSION, Direction.ENGINE_TO_GATEWAY) is counters
    for msg_type in (b"D", b"D", b"F", b"ZZ"):
        counters.count(msg_type)
    counters.bytes += 600
    samples = exposition(metrics)
    labels = {"session": SESSION, "direction": "engine_to_gateway"}
    assert value(samples, "fixproxy_messages_total", msg_type="D", **labels) == 2
    assert value(samples, "fixproxy_messages_total", msg_type="F", **labels) == 1
    assert value(samples, "fixproxy_messages_total", msg_type="other", **labels) == 1
    assert value(samples, "fixproxy_messages_total", msg_type="ZZ", **labels) is None
    assert value(samples, "fixproxy_bytes_total", **labels) == 600


@pytest.mark.parametrize(("msg_type", "raw", "kind", "reason"), [
    (b"3", b"8=FIXT.1.1\x019=5\x0135=3\x01373=10\x0158=SendingTime\x0110=000\x01",
     "session", "10"),
    (b"j", b"8=FIXT.1.1\x019=5\x0135=j\x01380=8\x0158=rate\x0110=000\x01", "business", "8"),
    (b"j", b"8=FIXT.1.1\x019=5\x0135=j\x0158=no reason\x0110=000\x01", "business", "none"),
    (b"3", b"8=FIXT.1.1\x019=5\x0135=3\x01373=abc\x0110=000\x01", "session", "other"),
    (b"3", b"8=FIXT.1.1\x019=5\x0135=3\x01373=123456\x0110=000\x01", "session", "other"),
])
def test_rejects_are_counted_by_their_reason_code(msg_type: bytes, raw: bytes, kind: str,
                                                 reason: str) -> None:
    metrics = Metrics(CollectorRegistry())
    counters = metrics.traffic(SESSION, Direction.GATEWAY_TO_ENGINE)
    counters.count_reject(msg_type, raw)
    counters.count_reject(b"D", raw)  # not a reject: ignored
    samples = exposition(metrics)
    assert value(samples, "fixproxy_rejects_total", session=SESSION, kind=kind,
                 reason=reason) == 1
    assert sum(v for (name, _), v in samples.items() if name == "fixproxy_rejects_total") == 1


def test_relay_latency_histogram_is_cumulative_with_sub_millisecond_buckets() -> None:
    assert RELAY_LATENCY_BUCKETS[0] < 0.0001 and sorted(RELAY_LATENCY_BUCKETS) == list(
        RELAY_LATENCY_BUCKETS)
    histogram = LatencyHistogram()
    for seconds in (0.000005, 0.00004, 0.00004, 0.0003, 2.0):
        histogram.observe(seconds)
    cumulative = dict(histogram.buckets())
    assert cumulative["1e-05"] == 1
    assert cumulative["5e-05"] == 3
    assert cumulative["0.0005"] == 4
    assert cumulative["1.0"] == 4
    assert cumulative["+Inf"] == 5 == histogram.total
    assert math.isclose(histogram.sum, 2.000385)
    # A sample exactly on a bound belongs to that bucket (Prometheus: le is inclusive).
    edge = LatencyHistogram()
    edge.observe(0.0001)
    assert dict(edge.buckets())["0.0001"] == 1

    metrics = Metrics(CollectorRegistry())
    metrics.traffic(SESSION, Direction.GATEWAY_TO_ENGINE).latency.observe(0.00004)
    samples = exposition(metrics)
    labels = {"session": SESSION, "direction": "gateway_to_engine"}
    assert value(samples, "fixproxy_relay_latency_seconds_bucket", le="5e-05", **labels) == 1
    assert value(samples, "fixproxy_relay_latency_seconds_bucket", le="1e-05", **labels) == 0
    assert value(samples, "fixproxy_relay_latency_seconds_count", **labels) == 1


class _Machine:
    state = "active"
    since = 10.0
    engine_seen = 17.0
    gateway_seen = 19.5
    engine_last_seq = 41
    gateway_last_seq = 43


def test_session_metrics_are_read_from_the_status_board_at_scrape_time() -> None:
    metrics = Metrics(CollectorRegistry())
    board = StatusBoard()
    now = [20.0]
    metrics.watch_status(board, lambda: now[0])
    metrics.watch_status(board, lambda: now[0])  # a second call must not register twice
    status = board.declare(SESSION, endpoint="KalshiNR", gateway="gw:1", listen="l:2",
                           wall=0.0)
    samples = exposition(metrics)
    assert [value(samples, "fixproxy_session_state", session=SESSION, state=state)
            for state in STATES] == [1.0] + [0.0] * (len(STATES) - 1)
    assert value(samples, "fixproxy_sequence_number", session=SESSION,
                 direction="engine_to_gateway") is None

    status.connection_started(1, 0.0)
    status.session_started(1, _Machine(), translated=True)
    status.skew("gateway", 0.25)
    samples = exposition(metrics)
    assert value(samples, "fixproxy_session_state", session=SESSION, state="active") == 1
    assert value(samples, "fixproxy_session_state", session=SESSION, state="idle") == 0
    assert value(samples, "fixproxy_sequence_number", session=SESSION,
                 direction="engine_to_gateway") == 41
    assert value(samples, "fixproxy_sequence_number", session=SESSION,
                 direction="gateway_to_engine") == 43
    assert value(samples, "fixproxy_last_message_age_seconds", session=SESSION,
                 direction="engine_to_gateway") == 3.0
    assert value(samples, "fixproxy_sequence_translated", session=SESSION) == 1
    assert value(samples, "fixproxy_clock_skew_seconds", session=SESSION,
                 source="gateway") == 0.25
    assert value(samples, "fixproxy_clock_skew_seconds", session=SESSION,
                 source="engine") is None
    now[0] = 30.0
    samples = exposition(metrics)
    assert value(samples, "fixproxy_last_message_age_seconds", session=SESSION,
                 direction="gateway_to_engine") == 10.5


# --- through a real session -----------------------------------------------------------------

async def test_a_live_session_exports_state_sequences_latency_skew_and_rejects(
        e2e_material: E2EMaterial) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        for _ in range(3):
            await engine.new_order()
            await engine.receive_type(tags.MT_EXECUTION_REPORT)
        # The strict simulator answers a ResendRequest with Reject 373=11 and an unsupported
        # MsgType with BusinessMessageReject 380=3.
        await engine.send(tags.MT_RESEND_REQUEST, [(7, 1), (16, 0)])
        await engine.receive_type(tags.MT_REJECT)
        await engine.send(b"B", [(148, "headline")])
        await engine.receive_type(tags.MT_BUSINESS_REJECT)

        assert pair.sample("fixproxy_session_state", state="active") == 1
        assert pair.sample("fixproxy_session_state", state="idle") == 0
        assert pair.sample("fixproxy_rejects_total", kind="session", reason="11") == 1
        assert pair.sample("fixproxy_rejects_total", kind="business", reason="3") == 1
        # Logon (1), three orders, the ResendRequest and the News: the engine's 34=6.
        assert pair.sample("fixproxy_sequence_number", direction="engine_to_gateway") == 6
        assert pair.sample("fixproxy_sequence_number", direction="gateway_to_engine") == 6
        assert pair.sample("fixproxy_sequence_translated") == 0
        for direction in ("engine_to_gateway", "gateway_to_engine"):
            # One sample per write: the orders and the answers, at least.
            count = pair.sample("fixproxy_relay_latency_seconds_count", direction=direction)
            assert count is not None and count >= 5
            age = pair.sample("fixproxy_last_message_age_seconds", direction=direction)
            assert age is not None and 0 <= age < GUARD_SECONDS
        for source in ("engine", "gateway"):
            skew = pair.sample("fixproxy_clock_skew_seconds", source=source)
            assert skew is not None and abs(skew) < 5  # both clocks are this machine's

        await engine.logout()
        assert await engine.receive() is None
        # fixproxy marks the session idle before it closes the engine's socket.
        assert pair.sample("fixproxy_session_state", state="idle") == 1
        assert pair.sample("fixproxy_session_state", state="active") == 0
        # The last connection's numbers stay: the engine's Logout was its 7th message.
        assert pair.sample("fixproxy_sequence_number", direction="engine_to_gateway") == 7


def test_a_renewed_leaf_replaces_the_old_expiry_series() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.set_certificate_expiry(SESSION, "CN=old", 1.8e9)
    metrics.set_certificate_expiry("other", "CN=old", 1.7e9)
    metrics.set_certificate_expiry(SESSION, "CN=new", 1.9e9)
    samples = exposition(metrics)
    name = "fixproxy_certificate_expiry_timestamp_seconds"
    assert value(samples, name, session=SESSION, subject="CN=new") == 1.9e9
    assert value(samples, name, session=SESSION, subject="CN=old") is None
    assert value(samples, name, session="other", subject="CN=old") == 1.7e9


def test_declared_event_counters_start_at_zero() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.declare_session(SESSION)
    samples = exposition(metrics)
    assert value(samples, "fixproxy_pin_mismatches_total", session=SESSION) == 0
    assert value(samples, "fixproxy_heartbeat_timeouts_total", session=SESSION) == 0
    for result in ("accepted", "refused_locally", "refused_by_gateway", "no_answer"):
        assert value(samples, "fixproxy_logons_total", session=SESSION, result=result) == 0


def test_no_created_series_are_exported() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.declare_session("s1")
    metrics.logouts.labels(session="s1", initiator="engine", reason="normal").inc()
    metrics.logon_seconds.labels(session="s1").observe(0.01)
    text = generate_latest(metrics.registry).decode()
    assert 'fixproxy_logouts_total{initiator="engine",reason="normal",session="s1"} 1.0' in text
    assert "fixproxy_logon_seconds_count" in text
    assert "_created" not in text
