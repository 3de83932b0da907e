"""Failed state writes: every one counted, the log told once per run of failures."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from fixproxy.ops.metrics import Metrics
from fixproxy.ops.statewrites import StateWriteErrors

LOG = logging.getLogger("test.statewrites")


def _count(metrics: Metrics, session: str, store: str) -> float | None:
    return metrics.registry.get_sample_value("fixproxy_state_write_errors_total",
                                             {"session": session, "store": store})


def test_declared_series_start_at_zero() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.state_writes.declare("s1", ("journal", "sequences"))
    assert _count(metrics, "s1", "journal") == 0
    assert _count(metrics, "s1", "sequences") == 0
    assert _count(metrics, "s1", "recovery") is None


def test_a_run_of_failures_is_logged_once_and_its_end_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOG.name)
    metrics = Metrics(CollectorRegistry())
    writes = metrics.state_writes
    for _ in range(3):
        writes.report("s1", "sequences", "cannot write sequence state x: No space", LOG)
    writes.report("s2", "sequences", "cannot write sequence state y: No space", LOG)
    writes.recovered("s1", "sequences", "sequence state of session s1", LOG)
    writes.recovered("s1", "sequences", "sequence state of session s1", LOG)
    writes.report("s1", "sequences", "cannot write sequence state x: No space", LOG)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [e.split(";")[0] for e in errors] == ["cannot write sequence state x: No space",
                                                 "cannot write sequence state y: No space",
                                                 "cannot write sequence state x: No space"]
    assert "not logged again until a write succeeds" in errors[0]
    assert warnings == ["sequence state of session s1 written again after earlier failures"]
    assert _count(metrics, "s1", "sequences") == 4
    assert _count(metrics, "s2", "sequences") == 1


def test_without_a_counter_it_still_decides_what_is_logged() -> None:
    writes = StateWriteErrors()
    assert writes.failed("s", "journal")
    assert not writes.failed("s", "journal")
    assert writes.succeeded("s", "journal")
    assert not writes.succeeded("s", "journal")
