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

CONFIGS: Final = ("direct", "stunnel", "trio-relay", "python-relay", "fixproxy")
"""trio-relay is bench/floor.py: trio and fixproxy's streams copying bytes, with no FIX work;
python-relay is bench/pyrelay.py: fixproxy's data-plane design (a thread per session, poll over
a non-blocking SSLSocket) copying bytes, with no FIX work."""
MIDDLES: Final = ("stunnel", "fixproxy")
PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))
RATIO_PAIRS: Final = (("fixproxy", "stunnel"), ("fixproxy", "direct"),
                      ("fixproxy", "trio-relay"), ("trio-relay", "stunnel"),
                      ("fixproxy", "python-relay"), ("python-relay", "stunnel"))
"""What each ratio tells: fixproxy against the usual sidecar and against the floor; what the
FIX work costs in the thread design (fixproxy/python-relay); what Python's thread loop costs
(python-relay/stunnel) and what an event loop costs (trio-relay/stunnel)."""
MANY_PAIRS: Final = (("fixproxy", "stunnel"), ("fixproxy", "python-relay"),
                     ("python-relay", "stunnel"), ("shared-relay", "stunnel"),
                     ("shared-relay", "python-relay"))
"""Scenario 1 adds the bare relay with one thread for every connection (``shared-relay``):
against the thread per connection, what many threads sharing the interpreter lock cost."""


@dataclass(frozen=True, slots=True)
class Target:
    """One goal for fixproxy, checked on the numbers of the same run."""

    name: str
    description: str
    value: float | None
    limit: float
    at_most: bool
    """True: value <= limit passes; False: value >= limit passes."""
    aim: float | None = None
    """A stricter value aimed at beyond the limit, if any."""

    def _meets(self, bound: float | None) -> bool | None:
        if self.value is None or bound is None:
            return None
        return self.value <= bound if self.at_most else self.value >= bound

    @property
    def passed(self) -> bool | None:
        """None when the value could not be measured."""
        return self._meets(self.limit)

    @property
    def aim_met(self) -> bool | None:
        """None when there is no aim or no value."""
        return self._meets(self.aim)

    def as_json(self) -> dict[str, Any]:
        """The target as stored in the JSON file."""
        return {"name": self.name, "description": self.description, "value": self.value,
                "limit": self.limit, "comparison": "<=" if self.at_most else ">=",
                "pass": self.passed, "aim": self.aim, "aim_met": self.aim_met}


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
    """The numbers of one configuration divided by another's, field by field, for each pair
    of :data:`RATIO_PAIRS`."""
    result: dict[str, dict[str, float | None]] = {}
    for name, base in RATIO_PAIRS:
        row: dict[str, float | None] = {}
        for path in RATIO_FIELDS:
            ours, theirs = _value(configs[name], path), _value(configs[base], path)
            if ours is not None and theirs:
                row[path] = ours / theirs
            elif base != "direct" or not path.startswith(("middle", "rss")):
                row[path] = None
        result[f"{name}/{base}"] = row
    return result


def summarize_many(rounds: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Pool the many-sessions rounds of each configuration; ratios between them."""
    configs: dict[str, Any] = {}
    for name, results in rounds.items():
        latency: list[int] = []
        lag: list[int] = []
        logon: list[int] = []
        nanoseconds: dict[str, int] = {}
        per_round = []
        for result in results:
            latency += result["latency_ns"]
            lag += result["send_lag_ns"]
            logon += result["logon_ns"]
            for role, value in result["cpu_ns"].items():
                nanoseconds[role] = nanoseconds.get(role, 0) + value
            per_round.append({"round": result["round"],
                              "latency_us": percentiles(result["latency_ns"]),
                              "cpu_ns": result["cpu_ns"],
                              "elapsed_s": result["elapsed_ns"] / 1e9})
        orders = len(latency)
        configs[name] = {
            "sessions": results[0]["sessions"] if results else 0,
            "orders": orders,
            "latency_us": percentiles(latency),
            "engine_send_lag_us": percentiles(lag),
            "logon_ms_p50": percentiles(logon).get("p50", 0.0) / 1e3,
            "cpu_ns": nanoseconds,
            "middle_cpu_us_per_relayed_message_schedstat": _per(nanoseconds, "middle",
                                                                2 * orders),
            "engine_cpu_us_per_order": _per(nanoseconds, "engine", orders),
            "gateway_cpu_us_per_order": _per(nanoseconds, "gateway", orders),
            "rounds": per_round,
        }
    fields = ("latency_us.p50", "latency_us.p90", "latency_us.p99", "latency_us.p99_9",
              "latency_us.max", "middle_cpu_us_per_relayed_message_schedstat")
    pairs: dict[str, dict[str, float | None]] = {}
    for name, base in MANY_PAIRS:
        if name in configs and base in configs:
            pairs[f"{name}/{base}"] = {
                path: _divide(_value(configs[name], path), _value(configs[base], path))
                for path in fields}
    return {"configurations": configs, "ratios": pairs}


def summarize_control(quiet: Sequence[Mapping[str, Any]],
                      loaded: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """fixproxy's quiet open loops against the loaded ones of the same rounds."""
    quiet_ns = [sample for result in quiet for sample in result["open_latency_ns"]]
    loaded_ns = [sample for result in loaded for sample in result["latency_ns"]]
    quiet_us, loaded_us = percentiles(quiet_ns), percentiles(loaded_ns)
    per_round = []
    for before, during in zip(quiet, loaded, strict=True):
        calm = percentiles(before["open_latency_ns"]).get("p99_9")
        busy = percentiles(during["latency_ns"]).get("p99_9")
        per_round.append({"round": before["round"], "quiet_p99_9_us": calm,
                          "loaded_p99_9_us": busy, "ratio": _divide(busy, calm)})
    ratios = [item["ratio"] for item in per_round if item["ratio"] is not None]
    scrapes = [ns for result in loaded for ns in result["scrape_ns"]]
    logons = [ns for result in loaded for ns in result["logon_ns"]]
    results = [result["reload_result"] for result in loaded if result["reloads"]]
    return {
        "quiet_latency_us": quiet_us,
        "loaded_latency_us": loaded_us,
        "loaded_engine_send_lag_us": percentiles(
            [lag for result in loaded for lag in result["send_lag_ns"]]),
        "ratio": {key: _divide(loaded_us.get(key), quiet_us.get(key))
                  for key in ("p50", "p90", "p99", "p99_9", "max")},
        # One disturbed quiet round moves the pooled quiet p99.9; the median of the rounds'
        # own ratios does not.
        "ratio_p99_9_median_of_rounds": statistics.median(ratios) if ratios else None,
        "scrapes": {"n": len(scrapes), "ms": {key: value / 1e3 for key, value in
                                              percentiles(scrapes).items() if key != "n"}},
        "logon_cycles": {"n": len(logons), "logon_ms": {
            key: value / 1e3 for key, value in percentiles(logons).items() if key != "n"}},
        "reloads": {"sent": sum(result["reloads"] for result in loaded),
                    "answered": sum(result["reloads_answered"] for result in loaded),
                    "results": sorted({str(result) for result in results}),
                    "last_detail": loaded[-1]["reload_detail"] if loaded else ""},
        "rounds": per_round,
    }


def _per(nanoseconds: Mapping[str, int], role: str, count: int) -> float | None:
    """Microseconds of ``role``'s CPU per one of ``count`` things."""
    value = nanoseconds.get(role)
    return None if value is None or not count else value / 1e3 / count


def _divide(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours is not None and theirs else None


def targets(configs: Mapping[str, Mapping[str, Any]],
            ratio: Mapping[str, Mapping[str, float | None]],
            logon_rewrite: Mapping[str, Any], many: Mapping[str, Any],
            control: Mapping[str, Any], settings: Mapping[str, Any]) -> list[Target]:
    """The goals set for fixproxy, with this run's values."""
    versus = ratio["fixproxy/stunnel"]
    rss = _value(configs["fixproxy"], "rss_kib.idle_5.VmHWM")
    rate = f"{settings['rate']:,.0f}/s"
    sessions = settings["many_sessions"]
    return [
        Target("rtt_p50", "closed-loop RTT p50 <= 1.05x stunnel (aim 1.0x)",
               versus["closed_loop_rtt_us.p50"], 1.05, at_most=True, aim=1.0),
        Target("rtt_p99", "closed-loop RTT p99 <= 1.1x stunnel (aim 1.0x)",
               versus["closed_loop_rtt_us.p99"], 1.1, at_most=True, aim=1.0),
        Target("throughput", "pipelined throughput >= 1.0x stunnel",
               versus["pipelined.orders_per_s"], 1.0, at_most=False),
        Target("cpu_per_message", "middle CPU per relayed message, pipelined, schedstat "
               "<= 1.0 us",
               _value(configs["fixproxy"], "middle_cpu_us_per_relayed_message_schedstat"),
               1.0, at_most=True),
        Target("open_loop_p99", f"open loop {rate} p99 <= 1.0x stunnel",
               versus["open_loop.latency_us.p99"], 1.0, at_most=True),
        Target("logon_rewrite", "Logon rewrite + sign <= 1.2x bare RSA-PSS sign",
               _value(logon_rewrite, "ratio"), 1.2, at_most=True),
        Target("rss_5_idle", "peak RSS with 5 idle sessions <= 60 MB",
               None if rss is None else rss * 1024 / 1e6, 60.0, at_most=True),
        Target("many_sessions_p99", f"{sessions} sessions at once: p99 <= 1.2x stunnel with "
               f"{sessions} connections (aim 1.0x)",
               many["ratios"].get("fixproxy/stunnel", {}).get("latency_us.p99"), 1.2,
               at_most=True,
               aim=1.0),
        Target("control_plane_p99_9", "open loop p99.9 under control-plane load <= 1.5x the "
               "quiet run", _value(control, "ratio.p99_9"), 1.5, at_most=True),
    ]


# ----- the table ----------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


_PRINTED_PAIRS: Final = (("fixproxy/stunnel", "fp/stun"), ("fixproxy/python-relay", "fp/py"),
                         ("python-relay/stunnel", "py/stun"), ("trio-relay/stunnel", "trio/stun"),
                         ("fixproxy/direct", "fp/direct"))
"""Ratio columns of the printed table (the JSON has every pair of :data:`RATIO_PAIRS`)."""
_LABEL: Final = 46
_CELL: Final = 13
_RATIO_CELL: Final = 10


def format_table(report: Mapping[str, Any]) -> str:
    """The human-readable result."""
    configs = report["configurations"]
    ratio = report["ratios"]
    settings = report["settings"]
    machine = report["machine"]
    versions = report["versions"]
    lines = [
        "fixproxy benchmark: direct TLS vs stunnel vs a bare trio relay vs a bare thread relay "
        "vs fixproxy on 127.0.0.1, rounds interleaved (" + ", ".join(CONFIGS) + ", ...)",
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
        f"GIL switch interval of fixproxy and python-relay: {settings['switch_interval']:g} s "
        f"({settings['switch_interval_source']})",
        "",
    ]
    header = f"{'':<{_LABEL}}" + "".join(f"{name:>{_CELL}}" for name in CONFIGS) \
        + "".join(f"{label:>{_RATIO_CELL}}" for _, label in _PRINTED_PAIRS)
    lines.append(header)
    lines.append("-" * len(header))

    def row(label: str, path: str, digits: int = 0, with_ratio: bool = True,
            scale: float = 1.0) -> None:
        def cell(name: str) -> str:
            value = _value(configs[name], path)
            return f"{_fmt(None if value is None else value * scale, digits):>{_CELL}}"

        cells = "".join(cell(name) for name in CONFIGS)
        shown = "".join(
            f"{_ratio(ratio[pair].get(path) if with_ratio else None):>{_RATIO_CELL}}"
            for pair, _ in _PRINTED_PAIRS)
        lines.append(f"{label:<{_LABEL}}{cells}{shown}")

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
    row("middle CPU per relayed message, ticks (us)", "middle_cpu_us_per_relayed_message", 2)
    row("  +/- tick rounding (us)", "middle_cpu_us_per_relayed_message_bound", 2,
        with_ratio=False)
    row("  same from schedstat, ns resolution (us)",
        "middle_cpu_us_per_relayed_message_schedstat", 2)
    row(f"middle CPU per message, open loop {rate} (us)",
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
    ]
    lines += _many_table(report["scenarios"]["many_sessions"], settings)
    lines.append("")
    lines += _control_table(report["scenarios"]["control_plane"], settings)
    lines += ["", "targets for fixproxy (a MISS does not fail the run):"]
    for target in report["targets"]:
        state = {True: "PASS", False: "MISS", None: "n/a "}[target["pass"]]
        value = target["value"]
        shown = "not measured" if value is None else f"{value:.3f}"
        aim = {True: "; aim met", False: "; aim not met", None: ""}[target.get("aim_met")]
        lines.append(f"  {state}  {target['description']:<78} measured {shown}{aim}")
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


def _many_table(many: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    configs = many["configurations"]
    names = [name for name in ("stunnel", "python-relay", "shared-relay", "fixproxy")
             if name in configs]
    pairs = [(f"{name}/{base}", label) for (name, base), label in
             zip(MANY_PAIRS, ("fp/stun", "fp/py", "py/stun", "sh/stun", "sh/py"), strict=True)
             if f"{name}/{base}" in many["ratios"]]
    sessions = settings["many_sessions"]
    rate = settings["many_rate"]
    lines = [
        f"scenario 1, many sessions: {sessions} sessions through one middle process "
        f"(fixproxy: {sessions} [[session]] tables and listeners; stunnel: one service), each "
        f"in an open loop at {rate:,.0f} orders/s ({sessions * rate:,.0f}/s in all); "
        f"{settings['many_rounds']} interleaved round(s) of {settings['many_seconds']:g} s per "
        f"configuration; one engine thread drives every session",
        f"{'':<{_LABEL}}" + "".join(f"{name:>{_CELL}}" for name in names)
        + "".join(f"{label:>{_RATIO_CELL}}" for _, label in pairs),
    ]
    lines.append("-" * len(lines[-1]))

    def row(label: str, path: str, digits: int, with_ratio: bool = True) -> None:
        cells = "".join(f"{_fmt(_value(configs[name], path), digits):>{_CELL}}"
                        for name in names)
        shown = "".join(
            f"{_ratio(many['ratios'][pair].get(path) if with_ratio else None):>{_RATIO_CELL}}"
            for pair, _ in pairs)
        lines.append(f"{label:<{_LABEL}}{cells}{shown}")

    row("orders answered", "orders", 0, with_ratio=False)
    for name, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9"),
                        ("max", "max")):
        row(f"latency over all orders, {label} (us)", f"latency_us.{name}", 1)
    row("engine's own send lag p99 (us)", "engine_send_lag_us.p99", 1, with_ratio=False)
    row("middle CPU per relayed message, schedstat (us)",
        "middle_cpu_us_per_relayed_message_schedstat", 2)
    row("engine CPU per order (us)", "engine_cpu_us_per_order", 2, with_ratio=False)
    row("gateway CPU per order (us)", "gateway_cpu_us_per_order", 2, with_ratio=False)
    return lines


def _control_table(control: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    quiet, loaded = control["quiet_latency_us"], control["loaded_latency_us"]
    scrapes, logons, reloads = control["scrapes"], control["logon_cycles"], control["reloads"]
    lines = [
        f"scenario 2, control plane under load: fixproxy, one session in the open loop at "
        f"{settings['rate']:,.0f}/s, {settings['messages']:,} orders per round, quiet and then "
        f"loaded in each round; loaded: GET /metrics every 100 ms, SIGHUP reload every 2 s, "
        f"a second session logs on and out every 1 s",
        f"{'':<{_LABEL}}{'quiet':>{_CELL}}{'loaded':>{_CELL}}{'loaded/quiet':>{_CELL}}",
    ]
    lines.append("-" * len(lines[-1]))
    for name, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9"),
                        ("max", "max")):
        lines.append(f"{'open loop latency ' + label + ' (us)':<{_LABEL}}"
                     f"{_fmt(quiet.get(name), 1):>{_CELL}}{_fmt(loaded.get(name), 1):>{_CELL}}"
                     f"{_ratio(control['ratio'].get(name)):>{_CELL}}")
    lines.append(f"{'loaded: engine send lag p99 (us)':<{_LABEL}}{'':>{_CELL}}"
                 f"{_fmt(control['loaded_engine_send_lag_us'].get('p99'), 1):>{_CELL}}")
    per_round = ", ".join(_ratio(item["ratio"]) for item in control["rounds"])
    lines += [
        f"p99.9 loaded/quiet per round: {per_round} (median "
        f"{_ratio(control['ratio_p99_9_median_of_rounds'])})",
        f"during the loaded runs: {scrapes['n']} scrapes (p50 {_fmt(scrapes['ms'].get('p50'), 1)}"
        f" ms, max {_fmt(scrapes['ms'].get('max'), 1)} ms); {reloads['sent']} reloads sent, "
        f"{reloads['answered']} answered ({', '.join(reloads['results']) or 'none'}); "
        f"{logons['n']} Logon/Logout cycles of the second session (Logon p50 "
        f"{_fmt(logons['logon_ms'].get('p50'), 1)} ms, max "
        f"{_fmt(logons['logon_ms'].get('max'), 1)} ms)",
    ]
    return lines
