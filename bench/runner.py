"""The orchestrator: what ``python3 -m bench`` runs.

Theory of operation
-------------------
The question is what fixproxy adds to a trading firm's order path, so it is measured against
the two alternatives on the same machine in the same run: the floor (the engine speaking TLS
and signing its own Logon, straight to the gateway) and the usual sidecar (stunnel4 in client
mode, the engine still signing). Two bare relays copy bytes with no FIX work, the engine
signing: ``trio-relay`` (bench/floor.py, trio and fixproxy's streams) and ``python-relay``
(bench/pyrelay.py, a thread per connection polling a non-blocking SSLSocket, fixproxy's
data-plane design); fixproxy against python-relay is what the FIX work costs in that design,
python-relay against stunnel what the design costs in Python. One gateway process and one
engine process serve every configuration; rounds are interleaved (direct, stunnel, trio-relay,
python-relay, fixproxy, direct, ...) so that a change in the machine's load over the run falls
on all alike instead of on whichever ran last.

Per configuration and round: ``--logons`` connect/Logon/Logout cycles, then one session that
runs the closed loop, the pipelined run (CPU of engine, gateway and middle process read from
/proc around it) and the open loop, and logs out; fixproxy's session then runs the open loop
once more under control-plane load (scenario 2, bench/scenarios.py). After the rounds, the
many-sessions scenario (scenario 1) runs 20 sessions through fresh stunnel, python-relay,
shared-relay (the bare relay with one thread for all connections) and fixproxy processes,
then fresh stunnel and fixproxy processes hold 1 and then 5 idle logged-on sessions for the
memory figures. The Logon rewrite is timed in process before any child starts.

The orchestrator only waits while the engine measures. The machine has two cores; engine,
gateway and middle process each get their own process, which oversubscribes the cores in the
stunnel and fixproxy configurations of the pipelined run: that is reported with the numbers.
Every child is stopped in ``finally`` (context managers), on errors and on SIGTERM alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import cryptography
import trio
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend

import fixproxy
from bench import BenchError, report, signbench
from bench.middle import (
    Account,
    Material,
    fixproxy_config,
    make_material,
    start_fixproxy,
    start_python_relay,
    start_stunnel,
    start_trio_relay,
    start_workers,
    state_dir,
    stunnel_binary,
    stunnel_version,
)
from bench.proc import CLOCK_TICKS, Child, Worker, cpu_ns, cpu_ticks, memory_kib
from bench.scenarios import (
    MANY_CONFIGS,
    ControlSchedule,
    ControlTarget,
    ManyRoute,
    run_many_sessions,
    run_under_control_load,
)
from bench.storm import STORM_CONNECTIONS, STORM_EVERY_S, format_storm, run_scenario
from fixproxy.cli.main import DEFAULT_SWITCH_INTERVAL, ENV_SWITCH_INTERVAL
from fixproxy.errors import FixProxyError
from fixproxy.fix.logon import LogonPolicy

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
MIN_ACCOUNTS: Final = 5
"""Key pairs made per run at least: the idle-session memory figure needs five sessions; the
many-sessions scenario needs one per session."""
IDLE_SESSIONS: Final = (1, 5)
MANY_SESSIONS: Final = 20
MANY_RATE: Final = 250.0
MANY_SECONDS: Final = 10.0
MANY_ROUNDS: Final = 2
WINDOW: Final = 64
PIPELINED_FACTOR: Final = 4
EXIT_FAILED: Final = 1
PROCESS_NOTE: Final = (
    "4 processes: this orchestrator (idle while measuring, except that it drives the "
    "control-plane load of scenario 2), the load engine, the gateway, and in every "
    "configuration but direct the middle process; on 2 cores the pipelined run of those has "
    "3 busy processes for 2 cores, the direct one 2 for 2")


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run does."""

    rounds: int
    messages: int
    """Orders per round in the closed and open loops."""
    pipelined: int
    """Orders per round in the pipelined run: more, as it is fast and its CPU is read in
    10 ms clock ticks."""
    rate: float
    warmup: int
    logons: int
    window: int
    sign_repeats: int
    sign_calls: int
    quick: bool
    cpus: tuple[int, ...] | None
    """CPUs every process of the run is pinned to; None: wherever the scheduler puts them."""
    many_sessions: int
    many_rate: float
    """Orders per second on each session of the many-sessions scenario."""
    many_seconds: float
    """Seconds of load per configuration and round of the many-sessions scenario."""
    many_rounds: int
    switch_interval: float
    """The GIL switch interval fixproxy and python-relay run with, in seconds."""
    switch_interval_source: str
    scenario: str = "all"
    """``all``: everything above; ``storm``: only the connection storm (bench/storm.py)."""
    storm_connections: int = STORM_CONNECTIONS


@dataclass(frozen=True, slots=True)
class Route:
    """How the engine reaches the gateway in one configuration."""

    name: str
    port: int
    tls: bool
    sign: bool
    middle: Child | None
    control: ControlTarget | None = None
    """Where the control-plane load goes, for the configuration that runs scenario 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _cpu_list(text: str) -> tuple[int, ...]:
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected CPU numbers like 0 or 0,1 or 0-1, got "
                                         f"{text!r}") from exc
    unknown = cpus - os.sched_getaffinity(0)
    if not cpus or unknown:
        raise argparse.ArgumentTypeError(f"CPUs {sorted(unknown) or text} are not available "
                                         f"here (usable: {sorted(os.sched_getaffinity(0))})")
    return tuple(sorted(cpus))


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path | None]:
    """Settings from the command line, and the JSON path if one was given."""
    parser = argparse.ArgumentParser(
        prog="python3 -m bench",
        description="Benchmark fixproxy against stunnel4 and direct TLS on 127.0.0.1: Logon "
                    "time, closed-loop RTT, pipelined throughput, open-loop latency, CPU and "
                    "memory of the middle process. Prints a table and writes a JSON file.")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run of everything (1 round, a few hundred orders) that "
                             "checks correctness; exits non-zero if a configuration fails")
    parser.add_argument("--rounds", type=_positive_int,
                        help="interleaved rounds of the five configurations [10; quick: 1]")
    parser.add_argument("--messages", type=_positive_int,
                        help="orders per configuration and round in the closed loop and in "
                             f"the open loop; the pipelined run sends {PIPELINED_FACTOR} times "
                             "as many [5000; quick: 300]")
    parser.add_argument("--rate", type=_positive_float, default=2000.0,
                        help="open-loop rate in orders per second [2000]")
    parser.add_argument("--sessions", type=_positive_int, dest="many_sessions",
                        help="sessions at once in the many-sessions scenario "
                             f"[{MANY_SESSIONS}; quick: 3]")
    parser.add_argument("--session-rate", type=_positive_float, dest="many_rate",
                        default=MANY_RATE,
                        help="orders per second on each of those sessions "
                             f"[{MANY_RATE:g}]")
    parser.add_argument("--many-seconds", type=_positive_float,
                        help="seconds of load per configuration in the many-sessions "
                             f"scenario, in {MANY_ROUNDS} interleaved rounds "
                             f"[{MANY_SECONDS:g}; quick: 2, in one round]")
    parser.add_argument("--switch-interval", type=_positive_float, metavar="S",
                        help="GIL switch interval of fixproxy (passed as "
                             f"${ENV_SWITCH_INTERVAL}) and python-relay, in seconds "
                             f"[${ENV_SWITCH_INTERVAL} if set, else fixproxy's default "
                             f"{DEFAULT_SWITCH_INTERVAL:g}; CPython's own is 0.005]")
    parser.add_argument("--cpus", type=_cpu_list,
                        help="pin every process of the run to these CPUs (e.g. 0, or 0-1); by "
                             "default the scheduler places them, which on some virtual "
                             "machines makes closed-loop RTTs bimodal (see bench/README.md)")
    parser.add_argument("--scenario", choices=("all", "storm"), default="all",
                        help="all: the whole benchmark; storm: only the connection storm "
                             "(session T's open loop, quiet and while waves of "
                             "--storm-connections Logons hit session S's listener; "
                             "--rounds [3; quick: 1], --messages and --rate apply) [all]")
    parser.add_argument("--storm-connections", type=_positive_int, default=STORM_CONNECTIONS,
                        help=f"connections per wave of the storm [{STORM_CONNECTIONS}]")
    parser.add_argument("--json", type=Path, dest="json_path",
                        help="where to write the JSON result [bench/results/<timestamp>.json]")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    messages = args.messages or (300 if quick else 5_000)
    many_rounds = 1 if quick else MANY_ROUNDS
    many_seconds = args.many_seconds or (2.0 if quick else MANY_SECONDS)
    switch_interval, source = _switch_interval(args.switch_interval, parser)
    default_rounds = (1 if quick else 3) if args.scenario == "storm" else (1 if quick else 10)
    settings = Settings(
        rounds=args.rounds or default_rounds,
        messages=messages,
        pipelined=PIPELINED_FACTOR * messages,
        rate=args.rate,
        warmup=min(500, max(10, messages // 10)),
        logons=2 if quick else 10,
        window=WINDOW,
        sign_repeats=3 if quick else 7,
        sign_calls=5 if quick else 50,
        quick=quick,
        cpus=args.cpus,
        many_sessions=args.many_sessions or (3 if quick else MANY_SESSIONS),
        many_rate=args.many_rate,
        many_seconds=many_seconds / many_rounds,
        many_rounds=many_rounds,
        switch_interval=switch_interval,
        switch_interval_source=source,
        scenario=args.scenario,
        storm_connections=args.storm_connections,
    )
    return settings, args.json_path


def _switch_interval(flag: float | None, parser: argparse.ArgumentParser
                     ) -> tuple[float, str]:
    """The switch interval the middles run with, and where it came from."""
    if flag is not None:
        return flag, "--switch-interval"
    text = os.environ.get(ENV_SWITCH_INTERVAL)
    if text is None:
        return DEFAULT_SWITCH_INTERVAL, "fixproxy's default"
    try:
        return _positive_float(text), f"${ENV_SWITCH_INTERVAL}"
    except (ValueError, argparse.ArgumentTypeError):
        parser.error(f"${ENV_SWITCH_INTERVAL} must be a positive number of seconds, got "
                     f"{text!r}")


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# ----- one round of one configuration -------------------------------------------------------


def _run_round(engine: Worker, route: Route, account: Account, settings: Settings,
               pids: Mapping[str, int], number: int) -> dict[str, Any]:
    common = {"port": route.port, "tls": route.tls, "sign": route.sign,
              "api_key": account.api_key}
    logons = engine.request("logons", timeout=10.0 + 5.0 * settings.logons,
                            count=settings.logons, **common)["logon_ns"]
    opened = engine.request("open", timeout=15.0, name=route.name, **common)
    rtt = engine.request("closed_loop", timeout=30.0 + settings.messages * 0.01,
                         name=route.name, count=settings.messages,
                         warmup=settings.warmup)["rtt_ns"]
    ticks = {role: cpu_ticks(pid) for role, pid in pids.items()}
    nanoseconds = {role: cpu_ns(pid) for role, pid in pids.items()}
    piped = engine.request("pipelined", timeout=30.0 + settings.pipelined * 0.005,
                           name=route.name, count=settings.pipelined, window=settings.window)
    nanoseconds = {role: cpu_ns(pid) - nanoseconds[role] for role, pid in pids.items()}
    ticks = {role: cpu_ticks(pid) - ticks[role] for role, pid in pids.items()}
    open_ns = {role: cpu_ns(pid) for role, pid in pids.items()}
    late = engine.request("open_loop", timeout=30.0 + 2 * settings.messages / settings.rate,
                          name=route.name, count=settings.messages, rate=settings.rate)
    open_ns = {role: cpu_ns(pid) - open_ns[role] for role, pid in pids.items()}
    control = None
    if route.control is not None:
        control = run_under_control_load(engine, route.name, settings.messages, settings.rate,
                                         route.control)
    closed = engine.request("close", timeout=15.0, name=route.name)
    return {
        "round": number,
        "logon_ns": [*logons, opened["logon_ns"]],
        "rtt_ns": rtt,
        "pipelined": {"elapsed_ns": piped["elapsed_ns"], "orders": piped["orders"],
                      "window": settings.window},
        "cpu_ticks": ticks,
        "cpu_ns": nanoseconds,
        "open_latency_ns": late["latency_ns"],
        "send_lag_ns": late["send_lag_ns"],
        "open_loop_cpu_ns": open_ns,
        "control": control,
        "orders": closed["orders"],
    }


def _idle_memory(kind: str, material: Material, gateway_port: int, engine: Worker,
                 settings: Settings) -> dict[str, dict[str, int]]:
    """Peak and current RSS of a fresh middle process holding 1, then 5 idle sessions."""
    result = {}
    for count in IDLE_SESSIONS:
        accounts = material.accounts[:count]
        name = f"{kind}-idle-{count}"
        if kind == "fixproxy":
            child, config = start_fixproxy(material, gateway_port, accounts, name,
                                           settings.switch_interval)
            ports = [session.listen[1] for session in config.sessions]
        else:
            child, port = start_stunnel(material, gateway_port, name)
            ports = [port] * count
        with child:
            for index, (account, port) in enumerate(zip(accounts, ports, strict=True)):
                engine.request("open", timeout=15.0, name=f"idle-{index}", port=port,
                               tls=False, sign=kind == "stunnel", api_key=account.api_key)
            result[f"idle_{count}"] = memory_kib(child.pid)
            engine.request("close_all", timeout=30.0)
    return result


# ----- the whole run ------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {"cpu_model": model, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)), "kernel": platform.release(),
            "machine": platform.machine(), "load_average_start": os.getloadavg()[0]}


def _versions(stunnel: str) -> dict[str, str]:
    return {"python": platform.python_version(), "trio": trio.__version__,
            "cryptography": cryptography.__version__,
            "cryptography_openssl": openssl_backend.openssl_version_text(),
            "ssl_openssl": ssl.OPENSSL_VERSION, "fixproxy": fixproxy.__version__,
            **stunnel_version(stunnel)}


def _check(configs: Mapping[str, Any], rounds: Mapping[str, Sequence[Mapping[str, Any]]],
           many: Mapping[str, Sequence[Mapping[str, Any]]], gateway: Mapping[str, Any],
           settings: Settings) -> dict[str, Any]:
    problems = []
    sent = sum(result["orders"] for results in rounds.values() for result in results)
    sent += sum(result["orders"] for results in many.values() for result in results)
    per_session = max(1, round(settings.many_rate * settings.many_seconds))
    expected_orders = (len(report.CONFIGS) * settings.rounds * (
        settings.warmup + 2 * settings.messages + settings.pipelined)
        + settings.rounds * settings.messages  # fixproxy's open loop under control load
        + len(MANY_CONFIGS) * settings.many_rounds * settings.many_sessions * per_session)
    if sent != expected_orders:
        problems.append(f"the engine sent {sent} orders, {expected_orders} were planned")
    if gateway["orders"] != sent:
        problems.append(f"the gateway answered {gateway['orders']} orders, the engine sent "
                        f"{sent}")
    controls = [result["control"] for result in rounds["fixproxy"]]
    churn = sum(len(control["logon_ns"]) for control in controls)
    expected_logons = (len(report.CONFIGS) * settings.rounds * (settings.logons + 1)
                       + len(report.MIDDLES) * sum(IDLE_SESSIONS)
                       + len(MANY_CONFIGS) * settings.many_rounds * settings.many_sessions
                       + churn)
    if gateway["logons"] != expected_logons:
        problems.append(f"the gateway verified {gateway['logons']} Logons, "
                        f"{expected_logons} were made")
    if gateway["refused"]:
        problems.append(f"the gateway refused {gateway['refused']} Logons: "
                        f"{gateway['notes']}")
    for name in report.CONFIGS:
        config = configs[name]
        if not config["pipelined"]["orders_per_s"] > 0:
            problems.append(f"{name}: no pipelined throughput")
        if config["logon_ms"].get("n", 0) == 0:
            problems.append(f"{name}: never logged on")
    scrapes = sum(len(control["scrape_ns"]) for control in controls)
    reloads = sum(control["reloads"] for control in controls)
    if not (scrapes and reloads and churn):
        problems.append(f"control-plane load: not every action ran ({scrapes} scrapes, "
                        f"{reloads} reloads, {churn} Logons)")
    for number, control in enumerate(controls, 1):
        if control["reloads_answered"] != control["reloads"] or (
                control["reloads"] and control["reload_result"] != "ok"):
            problems.append(f"control-plane load, round {number}: {control['reloads']} "
                            f"reloads sent, {control['reloads_answered']} answered, the last "
                            f"{control['reload_result']}: {control['reload_detail']}")
    return {"ok": not problems, "problems": problems, "orders": sent,
            "logons": gateway["logons"], "gateway": dict(gateway)}


def _measure_rounds(material: Material, gateway: Worker, engine: Worker, gateway_port: int,
                    settings: Settings, rounds: dict[str, list[dict[str, Any]]]
                    ) -> dict[str, dict[str, int]]:
    """Run the interleaved rounds into ``rounds``; the middles' memory after the load."""
    account, churn = material.accounts[:2]
    interval = settings.switch_interval
    with contextlib.ExitStack() as stack:
        stunnel_child, stunnel_port = start_stunnel(material, gateway_port, "stunnel")
        stack.enter_context(stunnel_child)
        relay_child, relay_port = start_trio_relay(material, gateway_port, "trio-relay")
        stack.enter_context(relay_child)
        thread_child, thread_port = start_python_relay(material, gateway_port, "python-relay",
                                                       interval)
        stack.enter_context(thread_child)
        # The second session is the one logged on and out under control-plane load.
        fixproxy_child, config = start_fixproxy(material, gateway_port, [account, churn],
                                                "fixproxy", interval)
        stack.enter_context(fixproxy_child)
        metrics = config.metrics.listen
        if metrics is None:
            raise BenchError("the generated fixproxy configuration has no metrics endpoint")
        control = ControlTarget(fixproxy_child.pid, state_dir(material, "fixproxy"),
                                metrics[1], config.sessions[1].listen[1], churn.api_key,
                                ControlSchedule())
        routes = [
            Route("direct", gateway_port, tls=True, sign=True, middle=None),
            Route("stunnel", stunnel_port, tls=False, sign=True, middle=stunnel_child),
            Route("trio-relay", relay_port, tls=False, sign=True, middle=relay_child),
            Route("python-relay", thread_port, tls=False, sign=True, middle=thread_child),
            Route("fixproxy", config.sessions[0].listen[1], tls=False, sign=False,
                  middle=fixproxy_child, control=control),
        ]
        for number in range(1, settings.rounds + 1):
            for route in routes:
                _progress(f"round {number}/{settings.rounds}: {route.name}")
                pids = {"engine": engine.pid, "gateway": gateway.pid}
                if route.middle is not None:
                    pids["middle"] = route.middle.pid
                try:
                    rounds[route.name].append(
                        _run_round(engine, route, account, settings, pids, number))
                except BenchError as exc:
                    if route.middle is None:
                        raise
                    raise route.middle.failure(
                        f"{route.name} round {number} failed: {exc}") from exc
        return {"stunnel": memory_kib(stunnel_child.pid),
                "fixproxy": memory_kib(fixproxy_child.pid)}


def _many_sessions(material: Material, gateway: Worker, engine: Worker, gateway_port: int,
                   settings: Settings) -> tuple[dict[str, list[dict[str, Any]]],
                                                dict[str, dict[str, int]]]:
    """Scenario 1 through fresh middle processes; the rounds, and their memory afterwards."""
    count = settings.many_sessions
    accounts = material.accounts[:count]
    with contextlib.ExitStack() as stack:
        stunnel_child, stunnel_port = start_stunnel(material, gateway_port, "many-stunnel")
        stack.enter_context(stunnel_child)
        relay_child, relay_port = start_python_relay(material, gateway_port,
                                                     "many-python-relay",
                                                     settings.switch_interval)
        stack.enter_context(relay_child)
        shared_child, shared_port = start_python_relay(material, gateway_port,
                                                       "many-shared-relay",
                                                       settings.switch_interval, shared=True)
        stack.enter_context(shared_child)
        fixproxy_child, config = start_fixproxy(material, gateway_port, accounts,
                                                "many-fixproxy", settings.switch_interval)
        stack.enter_context(fixproxy_child)
        routes = [
            ManyRoute("stunnel", (stunnel_port,) * count, sign=True, middle=stunnel_child),
            ManyRoute("python-relay", (relay_port,) * count, sign=True, middle=relay_child),
            ManyRoute("shared-relay", (shared_port,) * count, sign=True, middle=shared_child),
            ManyRoute("fixproxy", tuple(session.listen[1] for session in config.sessions),
                      sign=False, middle=fixproxy_child),
        ]
        results = run_many_sessions(engine, gateway.pid, routes, accounts, settings.many_rate,
                                    settings.many_seconds, settings.many_rounds, _progress)
        memory = {route.name: memory_kib(route.middle.pid) for route in routes}
    return results, memory


def run(settings: Settings) -> dict[str, Any]:
    """Run everything; the report (also when targets are missed).

    Raises:
        BenchError: a process failed to start or a configuration failed to work.
    """
    started = time.time()
    machine = _machine()
    stunnel = stunnel_binary()
    versions = _versions(stunnel)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in report.CONFIGS}
    memory: dict[str, dict[str, Any]] = {name: {} for name in report.MIDDLES}
    with tempfile.TemporaryDirectory(prefix="fixproxy-bench-") as tmp:
        _progress("generating certificates and keys")
        material = make_material(Path(tmp), max(MIN_ACCOUNTS, settings.many_sessions))
        account = material.accounts[0]
        _progress("timing the Logon rewrite in process")
        logon_rewrite = signbench.measure(account, _logon_policy(material, account),
                                          settings.sign_repeats, settings.sign_calls)
        with start_workers(material) as (gateway, engine, gateway_port):
            after_load = _measure_rounds(material, gateway, engine, gateway_port, settings,
                                         rounds)
            for kind, figures in after_load.items():
                memory[kind]["after_load"] = figures
            many_rounds, many_memory = _many_sessions(material, gateway, engine, gateway_port,
                                                      settings)
            for kind in report.MIDDLES:
                _progress(f"memory of {kind} with idle sessions")
                memory[kind].update(_idle_memory(kind, material, gateway_port, engine,
                                                 settings))
            gateway_stats = gateway.request("stats", timeout=10.0)
    configs = {name: report.summarize(rounds[name], CLOCK_TICKS, settings.rate)
               for name in report.CONFIGS}
    for kind in report.MIDDLES:
        configs[kind]["rss_kib"] = memory[kind]
    ratio = report.ratios(configs)
    many = report.summarize_many(many_rounds)
    for name, figures in many_memory.items():
        many["configurations"][name]["rss_kib_after"] = figures
    control = report.summarize_control(
        rounds["fixproxy"], [result["control"] for result in rounds["fixproxy"]])
    machine["load_average_end"] = os.getloadavg()[0]
    return {
        "schema": 1,
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "duration_s": time.time() - started,
        "quick": settings.quick,
        "settings": asdict(settings),
        "machine": machine,
        "versions": versions,
        "processes": PROCESS_NOTE,
        "configurations": configs,
        "logon_rewrite": logon_rewrite,
        "ratios": ratio,
        "scenarios": {"many_sessions": many, "control_plane": control},
        "targets": [target.as_json() for target in
                    report.targets(configs, ratio, logon_rewrite, many, control,
                                   asdict(settings))],
        "checks": _check(configs, rounds, many_rounds, gateway_stats, settings),
    }


def _logon_policy(material: Material, account: Account) -> LogonPolicy:
    """The Logon policy fixproxy applies to ``account``'s session, from a real config file.

    The gateway is not started yet; its port does not enter the policy, so any valid port
    stands in for it.
    """
    _, config = fixproxy_config(material, 1, [account], "policy")
    return config.sessions[0].logon_policy()


def _default_json_path(started: float, prefix: str = "") -> Path:
    stamp = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS_DIR / f"{prefix}{stamp}.json"


def _storm(settings: Settings, path: Path) -> int:
    """Only the connection storm; 0 unless something did not work (a MISS is not a failure).

    Raises:
        FixProxyError: a process failed or T's open loop failed.
    """
    result = run_scenario(settings.messages, settings.rate, settings.rounds,
                          settings.storm_connections, STORM_EVERY_S, settings.switch_interval,
                          _progress)
    result["settings"] = asdict(settings)
    result["machine"] = _machine()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        print(f"bench: error: cannot write {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_storm(result))
    print(f"\nJSON: {path}")
    return 0 if result["ok"] else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON; 0 unless something did not work."""
    settings, json_path = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if settings.cpus is not None:
        # Children inherit the affinity, and so do the threads they start.
        os.sched_setaffinity(0, settings.cpus)
    started = time.time()
    try:
        if settings.scenario == "storm":
            return _storm(settings, json_path or _default_json_path(started, "storm-"))
        result = run(settings)
    except FixProxyError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    path = json_path or _default_json_path(started)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        print(f"bench: error: cannot write {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.format_table(result))
    print(f"\nJSON: {path}")
    return 0 if result["checks"]["ok"] else EXIT_FAILED
