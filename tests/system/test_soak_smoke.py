"""A short soak, as ``python3 -m bench.soak`` runs it: orders keep flowing through gateway drops
and engine reconnects, and none is lost.

Eight seconds at 200 orders/s with a gateway drop every 3 s (at 3 s and 6 s) and an engine
Logout/Logon cycle every 5 s, so both kinds of fault happen inside the window. fixproxy runs as
its own process and the soak driver as another; the benchmark lives outside the installed
package, so it is run from the repository root as a subprocess, never imported here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120
DURATION_S = 8
RATE = 200


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                             dict[str, Any]]:
    """One short soak for the module: its process result and its JSON."""
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", str(DURATION_S), "--rate", str(RATE),
         "--drop-every", "3", "--reconnect-every", "5", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"stderr:\n{done.stderr[-4000:]}\nstdout:\n{done.stdout[-3000:]}"
    return done, json.loads(out.read_text())


def test_no_order_is_lost_through_drops_and_reconnects(
        soak: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, result = soak
    orders = result["orders"]
    assert result["ok"] is True, result["failures"]
    assert orders["lost"] == 0, result["problems"]
    assert orders["unexpected_disconnects"] == 0, result["problems"]
    assert orders["confirmed"] > 0
    # Every order is confirmed or in doubt when none is lost, and only drops cause doubt.
    assert orders["sent"] == orders["confirmed"] + orders["in_doubt"]
    assert orders["in_doubt"] == sum(orders["in_doubt_detail"].values())
    assert orders["confirmed"] <= result["gateway"]["orders_received"] <= orders["sent"]
    # Most of the schedule was kept: the rate, less the Logon gaps.
    assert orders["sent"] >= RATE * DURATION_S // 2


def test_both_faults_happened_and_were_survived(
        soak: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, result = soak
    reconnects = result["reconnects"]
    assert reconnects["total"] >= 1
    assert reconnects["after_drop"] >= 1
    assert reconnects["scheduled"] >= 1
    assert result["drops"]["connections_dropped"] >= 1
    connections = result["connections"]
    assert len(connections) == reconnects["total"] + 1
    assert connections[-1]["end"] == "final"
    for connection in connections:
        if connection["end"] == "dropped":
            assert connection["gateway_dropped"] is True, connection
        else:
            assert connection["confirmed"] == connection["sent"], connection
    # A Logon the gateway accepted may be cut off by a drop before it reaches the engine.
    assert result["gateway"]["logons"] >= len(connections)


def test_fixproxy_memory_and_cpu_are_reported(
        soak: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    done, result = soak
    rss = result["rss_kib"]
    assert rss["start"] > 0
    assert rss["end"] > 0
    assert rss["max"] >= max(rss["start"], rss["end"])
    assert isinstance(rss["flagged"], bool)
    assert result["cpu"]["fixproxy_s"] > 0
    assert result["messages"]["sent_by_type"]["D"] == result["orders"]["sent"] > 0
    assert result["messages"]["sent"] > result["orders"]["sent"]
    assert result["messages"]["received"] > 0
    assert "PASS: no accepted order lost" in done.stdout
