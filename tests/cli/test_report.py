"""The reports the command line prints, from answers written out by hand."""

from __future__ import annotations

from fixproxy.cli.report import format_status

# --- fixproxy status --------------------------------------------------------------------


def test_format_status_table() -> None:
    answer = {
        "version": "1.2.3", "now": "2025-01-09T12:00:00.000Z", "draining": False,
        "maintenance": {"active": False, "scheduled": True,
                        "window": {"start": "2025-01-16T08:00:00.000Z",
                                   "end": "2025-01-16T10:00:00.000Z"}},
        "sessions": [
            {"session": "orders", "state": "active", "since": "2025-01-09T11:54:57.000Z",
             "endpoint": "KalshiNR",
             "sequence_numbers": {"engine_to_gateway": 12, "gateway_to_engine": 34},
             "last_message": {"engine_to_gateway": {"age_seconds": 0.25},
                              "gateway_to_engine": {"age_seconds": 75.0}},
             "readiness": {"ready": True, "reason": "logged_on", "detail": ""},
             "last_error": None},
            {"session": "dropcopy", "state": "idle", "since": "2025-01-08T09:00:00.000Z",
             "endpoint": "KalshiDC", "sequence_numbers": {}, "last_message": {},
             "readiness": {"ready": False, "reason": "pin_mismatch",
                           "detail": "presented sha256/x"},
             "last_error": {"text": "refused engine connection #3: " + "x" * 100,
                            "at": "2025-01-09T11:00:00.000Z"}},
        ],
    }
    lines = format_status(answer).splitlines()
    assert lines[0] == ("fixproxy 1.2.3 at 2025-01-09T12:00:00.000Z; next maintenance window "
                        "2025-01-16T08:00:00.000Z")
    orders, dropcopy = lines[2], lines[3]
    assert orders.split() == ["orders", "active", "11:54:57Z", "(5m03s)", "KalshiNR", "12/34",
                              "0.2s/1m15s", "yes", "(logged_on)", "-"]
    assert "2025-01-08 09:00Z (1d03h)" in dropcopy
    assert "NO (pin_mismatch)" in dropcopy
    error = dropcopy.split("(pin_mismatch)")[1].strip()
    assert len(error) == 60 and error.endswith("...")
    assert lines[4] == "dropcopy: not ready (pin_mismatch): presented sha256/x"
    # Every row lines its columns up under the header.
    assert lines[2].index("KalshiNR") == lines[1].index("ENDPOINT")
    assert lines[3].index("KalshiDC") == lines[1].index("ENDPOINT")
