"""Summaries, ratios, targets and the printed table of one benchmark run (pure).

Latency samples of all rounds of a configuration are pooled before percentiles are taken
(nearest-rank), so p99.9 rests on every sample of the run; per-round values are kept in the
JSON to show the spread. Throughput is the median of the per-round rates, which a single
disturbed round cannot move. CPU per message is total ticks over total messages, because one
round holds too few clock ticks (10 ms each) to be read alone; the scheduler's nanosecond
count is reported beside it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

CONFIGS: Final = ("direct", "stunnel", "trio-relay", "fixproxy")
"""trio-relay is bench/floor.py: fixproxy's I/O layer copying bytes, with no FIX work."""
MIDDLES: Final = ("stunnel", "fixproxy")
PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


@dataclass(frozen=True, slots=True)
class Target:
    """One goal for fixproxy, checked on the numbers of the same run."""

    name: str
    description: str
    value: float | None
    limit: float
    at_most: bool
    """True: value <= limit passes; False: value >= limit passes."""

    @property
    def passed(self) -> bool | None:
        """None when the value could not be measured."""
        if self.value is None:
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def as_json(self) -> dict[str, Any]:
        """The target as stored in the JSON file."""
        return {"name": self.name, "description": self.description, "value": self.value,
                "limit": self.limit, "comparison": "<=" if self.at_most else ">=",
                "pass": self.passed}


def percentiles(samples_ns: Sequence[int]) -> dict[str, float]:
    """Nearest-rank percentiles, mean and extremes of nanosecond samples, in microseconds."""
    if not samples_ns:
        return {"n": 0}
    ordered = sorted(samples_ns)
    count = len(ordered)
    result: dict[str, float] = {"n": count}
    for name, percent in PERCENTILES:
        rank = max(1, math.ceil(percent / 100 * count))
        result[name] = ordered[rank - 1] / 1e3
    result["min"] = ordered[0] / 1e3
    result["max"] = ordered[-1] / 1e3
    result["mean"] = statistics.fmean(ordered) / 1e3
    return result


def _cpu(ticks: Mapping[str, int], nanoseconds: Mapping[str, int], clock_ticks: int,
         orders: int, rounds: int) -> dict[str, dict[str, float | None]]:
    """CPU per order of each process, from clock ticks and from the scheduler's nanoseconds.

    A tick reading is off by up to one tick at each end of each round, so the tick figure is
    given with that bound; the nanosecond figure has no such rounding.
    """
    result: dict[str, dict[str, float | None]] = {}
    for role, value in ticks.items():
        tick_us = 1e6 / clock_ticks
        result[role] = {
            "us_per_order": value * tick_us / orders if orders else None,
            "us_per_order_bound": rounds * tick_us / orders if orders else None,
            "us_per_order_schedstat": nanoseconds.get(role, 0) / 1e3 / orders
            if orders else None,
        }
    return result


def summarize(rounds: Sequence[Mapping[str, Any]], clock_ticks: int,
              rate: float) -> dict[str, Any]:
    """Pool one configuration's rounds into the numbers the report shows."""
    logon: list[int] = []
    rtt: list[int] = []
    late: list[int] = []
    lag: list[int] = []
    rates: list[float] = []
    orders = 0
    ticks: dict[str, int] = {}
    nanoseconds: dict[str, int] = {}
    per_round = []
    open_loop_middle_ns = 0
    open_loop_orders = 0
    for result in rounds:
        open_loop_middle_ns += result.get("open_loop_cpu_ns", {}).get("middle", 0)
        open_loop_orders += len(result["open_latency_ns"])
        logon += result["logon_ns"]
        rtt += result["rtt_ns"]
        late += result["open_latency_ns"]
        lag += result["send_lag_ns"]
        piped = result["pipelined"]
        orders += piped["orders"]
        round_rate = piped["orders"] / (piped["elapsed_ns"] / 1e9)
        rates.append(round_rate)
        for role, value in result["cpu_ticks"].items():
            ticks[role] = ticks.get(role, 0) + value
        for role, value in result["cpu_ns"].items():
            nanoseconds[role] = nanoseconds.get(role, 0) + value
        per_round.append({
            "round": result["round"],
            "logon_ms_p50": percentiles(result["logon_ns"]).get("p50", 0.0) / 1e3,
            "closed_loop_rtt_us": percentiles(result["rtt_ns"]),
            "pipelined_orders_per_s": round_rate,
            "open_loop_latency_us": percentiles(result["open_latency_ns"]),
            "cpu_ticks": result["cpu_ticks"],
            "cpu_ns": result["cpu_ns"],
        })
    logon_us = percentiles(logon)
    cpu = _cpu(ticks, nanoseconds, clock_ticks, orders, len(rounds))
    middle = cpu.get("middle", {})

    def per_message(key: str) -> float | None:
        value = middle.get(key)
        return None if value is None else value / 2

    return {
        "logon_ms": {key: value / 1e3 if key != "n" else value
                     for key, value in logon_us.items()},
        "closed_loop_rtt_us": percentiles(rtt),
        "pipelined": {
            "window": rounds[0]["pipelined"]["window"] if rounds else 0,
            "orders_per_s": statistics.median(rates) if rates else 0.0,
            "messages_per_s": 2 * statistics.median(rates) if rates else 0.0,
            "orders": orders,
        },
        "open_loop": {"rate_per_s": rate, "latency_us": percentiles(late),
                      "engine_send_lag_us": percentiles(lag)},
        "cpu_ticks": ticks,
        "cpu_ns": nanoseconds,
        "cpu": cpu,
        "ceiling_orders_per_s": {
            role: 1e6 / figures["us_per_order_schedstat"]
            if figures["us_per_order_schedstat"] else None
            for role, figures in cpu.items() if role != "middle"},
        "middle_cpu_us_per_relayed_message": per_message("us_per_order"),
        "middle_cpu_us_per_relayed_message_bound": per_message("us_per_order_bound"),
        "middle_cpu_us_per_relayed_message_schedstat": per_message("us_per_order_schedstat"),
        # At a fixed, moderate rate each message is its own wake-up: the per-message cost of
        # the event loop shows here, where the pipelined figure spreads it over a batch.
        "middle_cpu_us_per_relayed_message_open_loop": (
            open_loop_middle_ns / 1e3 / (2 * open_loop_orders)
            if open_loop_middle_ns and open_loop_orders else None),
        "rounds": per_round,
    }


def _value(summary: Mapping[str, Any], path: str) -> float | None:
    node: Any = summary
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) else None


RATIO_FIELDS: Final = (
    "logon_ms.p50", "closed_loop_rtt_us.p50", "closed_loop_rtt_us.p90",
    "closed_loop_rtt_us.p99", "closed_loop_rtt_us.p99_9", "pipelined.orders_per_s",
    "open_loop.latency_us.p50", "open_loop.latency_us.p99", "open_loop.latency_us.p99_9",
    "middle_cpu_us_per_relayed_message", "middle_cpu_us_per_relayed_message_schedstat",
    "middle_cpu_us_per_relayed_message_open_loop",
    "rss_kib.idle_1.VmHWM", "rss_kib.idle_5.VmHWM",
)


def ratios(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """fixproxy's numbers divided by stunnel's, direct's and the bare trio relay's, and the
    trio relay's divided by stunnel's, field by field."""
    result: dict[str, dict[str, float | None]] = {}
    for name, base in (("fixproxy", "stunnel"), ("fixproxy", "direct"),
                       ("fixproxy", "trio-relay"), ("trio-relay", "stunnel")):
        row: dict[str, float | None] = {}
        for path in RATIO_FIELDS:
            ours, theirs = _value(configs[name], path), _value(configs[base], path)
            if ours is not None and theirs:
                row[path] = ours / theirs
            elif base != "direct" or not path.startswith(("middle", "rss")):
                row[path] = None
        result[f"{name}/{base}"] = row
    return result


def targets(configs: Mapping[str, Mapping[str, Any]],
            ratio: Mapping[str, Mapping[str, float | None]],
            logon_rewrite: Mapping[str, Any]) -> list[Target]:
    """The goals set for fixproxy, with this run's values."""
    versus = ratio["fixproxy/stunnel"]
    rss = _value(configs["fixproxy"], "rss_kib.idle_5.VmHWM")
    return [
        Target("rtt_p50", "closed-loop RTT p50 <= 1.2x stunnel",
               versus["closed_loop_rtt_us.p50"], 1.2, at_most=True),
        Target("rtt_p99", "closed-loop RTT p99 <= 1.2x stunnel",
               versus["closed_loop_rtt_us.p99"], 1.2, at_most=True),
        Target("throughput", "pipelined throughput >= 0.9x stunnel",
               versus["pipelined.orders_per_s"], 0.9, at_most=False),
        Target("cpu_per_message", "CPU per relayed message <= 10 us",
               _value(configs["fixproxy"], "middle_cpu_us_per_relayed_message"), 10.0,
               at_most=True),
        Target("logon_rewrite", "Logon rewrite + sign <= 1.2x bare RSA-PSS sign",
               _value(logon_rewrite, "ratio"), 1.2, at_most=True),
        Target("rss_5_idle", "peak RSS with 5 idle sessions <= 60 MB",
               None if rss is None else rss * 1024 / 1e6, 60.0, at_most=True),
    ]


# ----- the table ----------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(report: Mapping[str, Any]) -> str:
    """The human-readable result."""
    configs = report["configurations"]
    ratio = report["ratios"]
    settings = report["settings"]
    machine = report["machine"]
    versions = report["versions"]
    lines = [
        "fixproxy benchmark: direct TLS vs stunnel vs a bare trio relay vs fixproxy on "
        "127.0.0.1, rounds interleaved (direct, stunnel, trio-relay, fixproxy, ...)",
        f"machine:   {machine['cpu_model']}, {machine['cores']} cores "
        f"({machine['usable_cores']} usable), Linux {machine['kernel']}, load average "
        f"{machine['load_average_start']:.2f} at start, {machine['load_average_end']:.2f} "
        f"at end",
        f"versions:  Python {versions['python']}, trio {versions['trio']}, cryptography "
        f"{versions['cryptography']} ({versions['cryptography_openssl']}), ssl "
        f"{versions['ssl_openssl']}, stunnel {versions['stunnel']} "
        f"({versions['stunnel_openssl']}), fixproxy {versions['fixproxy']}",
        f"processes: {report['processes']}",
        f"settings:  {settings['rounds']} round(s); per configuration and round: "
        f"{settings['logons']} extra Logons; {settings['messages']:,} orders closed loop (after "
        f"{settings['warmup']} warm-up), {settings['pipelined']:,} pipelined "
        f"({settings['window']} in flight), {settings['messages']:,} open loop at "
        f"{settings['rate']:,.0f}/s; orders ~200 B, ExecutionReports ~270 B; "
        + ("processes not pinned to CPUs" if settings["cpus"] is None
           else f"every process pinned to CPU(s) {settings['cpus']}"),
        "",
    ]
    header = f"{'':<44}{'direct':>11}{'stunnel':>11}{'trio-relay':>11}{'fixproxy':>11}" \
             f"{'fp/stunnel':>12}{'fp/direct':>11}{'fp/trio':>9}{'trio/stun':>11}"
    lines.append(header)
    lines.append("-" * len(header))

    def row(label: str, path: str, digits: int = 0, with_ratio: bool = True,
            scale: float = 1.0) -> None:
        def cell(name: str) -> str:
            value = _value(configs[name], path)
            return f"{_fmt(None if value is None else value * scale, digits):>11}"

        cells = "".join(cell(name) for name in CONFIGS)
        def vs(pair: str) -> float | None:
            return ratio[pair].get(path) if with_ratio else None

        lines.append(f"{label:<44}{cells}{_ratio(vs('fixproxy/stunnel')):>12}"
                     f"{_ratio(vs('fixproxy/direct')):>11}{_ratio(vs('fixproxy/trio-relay')):>9}"
                     f"{_ratio(vs('trio-relay/stunnel')):>11}")

    row("Logon, connect -> answer, p50 (ms)", "logon_ms.p50", 2)
    row("Logon p99 (ms)", "logon_ms.p99", 2)
    for name, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9")):
        row(f"closed loop RTT {label} (us)", f"closed_loop_rtt_us.{name}", 1)
    row("pipelined, 64 in flight (orders/s)", "pipelined.orders_per_s")
    rate = f"{settings['rate']:,.0f}/s"
    for name, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9"),
                        ("max", "max")):
        row(f"open loop {rate}, latency {label} (us)", f"open_loop.latency_us.{name}", 1)
    row("open loop: engine's own send lag p50 (us)", "open_loop.engine_send_lag_us.p50", 1,
        with_ratio=False)
    row("open loop: engine's own send lag p99 (us)", "open_loop.engine_send_lag_us.p99", 1,
        with_ratio=False)
    row("middle CPU per relayed message (us)", "middle_cpu_us_per_relayed_message", 2)
    row("  +/- tick rounding (us)", "middle_cpu_us_per_relayed_message_bound", 2,
        with_ratio=False)
    row("  same from schedstat, ns resolution (us)",
        "middle_cpu_us_per_relayed_message_schedstat", 2)
    row(f"middle CPU per relayed message, open loop {rate} (us)",
        "middle_cpu_us_per_relayed_message_open_loop", 2)
    megabytes = 1024 / 1e6
    row("middle peak RSS, 1 idle session (MB)", "rss_kib.idle_1.VmHWM", 1, scale=megabytes)
    row("middle peak RSS, 5 idle sessions (MB)", "rss_kib.idle_5.VmHWM", 1, scale=megabytes)
    row("middle peak RSS after the load (MB)", "rss_kib.after_load.VmHWM", 1,
        with_ratio=False, scale=megabytes)
    row("engine CPU per order, pipelined (us)", "cpu.engine.us_per_order_schedstat", 2,
        with_ratio=False)
    row("gateway CPU per order, pipelined (us)", "cpu.gateway.us_per_order_schedstat", 2,
        with_ratio=False)
    row("engine ceiling, CPU-bound (orders/s)", "ceiling_orders_per_s.engine",
        with_ratio=False)
    row("gateway ceiling, CPU-bound (orders/s)", "ceiling_orders_per_s.gateway",
        with_ratio=False)

    sign = report["logon_rewrite"]
    lines += [
        "",
        f"Logon rewrite + RSA-PSS sign, in process: {sign['rewrite_sign_us']:,.0f} us; bare "
        f"RSA-PSS-2048 sign: {sign['bare_sign_us']:,.0f} us; rewrite alone "
        f"{sign['rewrite_only_us']:,.1f} us; ratio {sign['ratio']:.3f}",
        "",
        "targets for fixproxy (a MISS does not fail the run):",
    ]
    for target in report["targets"]:
        state = {True: "PASS", False: "MISS", None: "n/a "}[target["pass"]]
        value = target["value"]
        shown = "not measured" if value is None else f"{value:.3f}"
        lines.append(f"  {state}  {target['description']:<48} measured {shown}")
    problems = report["checks"]["problems"]
    lines.append("")
    if problems:
        lines.append("correctness: FAILED")
        lines += [f"  - {problem}" for problem in problems]
    else:
        checks = report["checks"]
        lines.append(f"correctness: every order answered in order ({checks['orders']:,} "
                     f"orders), {checks['logons']} Logons verified by the gateway, every "
                     f"configuration logged on")
    return "\n".join(lines)
