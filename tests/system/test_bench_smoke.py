"""The benchmark's quick run, as CI runs it: every configuration and scenario must work end to
end.

``python3 -m bench --quick`` starts the gateway, the load engine, stunnel4, the two bare relays
and fixproxy as real processes, runs the rounds, the many-sessions scenario (3 sessions for
2 s) and the control-plane scenario, checks that every order is answered in order, and exits
non-zero otherwise. The benchmark lives outside the installed package, so it is run from the
repository root as a subprocess, never imported here.
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
CONFIGS = {"direct", "stunnel", "trio-relay", "python-relay", "fixproxy"}
MANY_CONFIGS = {"stunnel", "python-relay", "shared-relay", "fixproxy"}
QUICK_ORDERS = 300
"""Orders per workload in ``--quick`` (the default of ``--messages`` there)."""
QUICK_SESSIONS = 3
QUICK_MANY_ORDERS = 500
"""Orders per session in the quick many-sessions scenario: 250/s for 2 s."""


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                                   dict[str, Any]]:
    """One ``--quick`` run for the module: its process result and its JSON."""
    out = tmp_path_factory.mktemp("bench") / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)], cwd=REPO,
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"stderr:\n{done.stderr[-4000:]}\nstdout:\n{done.stdout[-3000:]}"
    return done, json.loads(out.read_text())


def test_every_configuration_logged_on_and_moved_orders(
        quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, result = quick_run
    configs = result["configurations"]
    assert set(configs) == CONFIGS
    for name, config in configs.items():
        assert config["pipelined"]["orders_per_s"] > 0, name
        assert config["pipelined"]["orders"] == 4 * QUICK_ORDERS, name
        assert config["closed_loop_rtt_us"]["n"] == QUICK_ORDERS, name
        assert config["closed_loop_rtt_us"]["p50"] > 0, name
        assert config["open_loop"]["latency_us"]["n"] == QUICK_ORDERS, name
        assert config["logon_ms"]["n"] >= 1, name
    checks = result["checks"]
    assert checks["ok"] is True, checks["problems"]
    assert checks["gateway"]["orders"] == checks["orders"] > 0
    assert checks["gateway"]["refused"] == 0


def test_ratios_and_targets_come_from_the_same_run(
        quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, result = quick_run
    configs = result["configurations"]
    for name, base in (("fixproxy", "stunnel"), ("fixproxy", "direct"),
                       ("fixproxy", "trio-relay"), ("trio-relay", "stunnel"),
                       ("fixproxy", "python-relay"), ("python-relay", "stunnel")):
        ratios = result["ratios"][f"{name}/{base}"]
        for field in ("closed_loop_rtt_us.p50", "closed_loop_rtt_us.p99",
                      "pipelined.orders_per_s"):
            section, _, key = field.partition(".")
            expected = configs[name][section][key] / configs[base][section][key]
            assert ratios[field] == pytest.approx(expected), (name, base, field)
    targets = {target["name"]: target for target in result["targets"]}
    assert set(targets) == {"rtt_p50", "rtt_p99", "throughput", "cpu_per_message",
                            "open_loop_p99", "logon_rewrite", "rss_5_idle",
                            "many_sessions_p99", "control_plane_p99_9"}
    assert targets["rtt_p50"]["value"] == result["ratios"]["fixproxy/stunnel"][
        "closed_loop_rtt_us.p50"]
    assert targets["cpu_per_message"]["value"] == configs["fixproxy"][
        "middle_cpu_us_per_relayed_message_schedstat"]
    scenarios = result["scenarios"]
    assert targets["many_sessions_p99"]["value"] == scenarios["many_sessions"]["ratios"][
        "fixproxy/stunnel"]["latency_us.p99"]
    assert targets["control_plane_p99_9"]["value"] == scenarios["control_plane"]["ratio"][
        "p99_9"]
    for target in targets.values():
        assert target["value"] is not None, target["name"]
    assert result["logon_rewrite"]["bare_sign_us"] > 0
    assert configs["fixproxy"]["rss_kib"]["idle_5"]["VmHWM"] > 0
    assert configs["stunnel"]["rss_kib"]["idle_5"]["VmHWM"] > 0


def test_the_scenarios_ran_every_part(
        quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, result = quick_run
    many = result["scenarios"]["many_sessions"]["configurations"]
    assert set(many) == MANY_CONFIGS
    for name, config in many.items():
        assert config["sessions"] == QUICK_SESSIONS, name
        assert config["orders"] == QUICK_SESSIONS * QUICK_MANY_ORDERS, name
        assert config["latency_us"]["p99"] > 0, name
        assert config["middle_cpu_us_per_relayed_message_schedstat"] > 0, name
        assert config["engine_cpu_us_per_order"] > 0, name
    control = result["scenarios"]["control_plane"]
    assert control["quiet_latency_us"]["n"] == control["loaded_latency_us"]["n"] == QUICK_ORDERS
    assert control["scrapes"]["n"] >= 1
    assert control["logon_cycles"]["n"] >= 1
    assert control["reloads"]["sent"] == control["reloads"]["answered"] >= 1
    assert control["reloads"]["results"] == ["ok"]
    assert control["ratio_p99_9_median_of_rounds"] == control["rounds"][0]["ratio"]
    assert result["settings"]["switch_interval"] > 0


def test_the_report_names_machine_and_versions(
        quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    done, result = quick_run
    assert {"python", "trio", "cryptography", "ssl_openssl", "stunnel"} <= set(
        result["versions"])
    assert result["versions"]["stunnel"] != "unknown"
    assert result["machine"]["cores"] >= 1
    for target in result["targets"]:
        assert target["description"] in done.stdout
    assert "correctness: every order answered in order" in done.stdout
