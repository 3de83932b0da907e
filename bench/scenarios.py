"""The two scenarios beside the rounds: many sessions through one process, and the control plane
under load.

Theory of operation
-------------------
*Many sessions.* A trading firm runs one fixproxy for all its API keys, so the data plane has as
many threads as live sessions, all wanting one interpreter. The scenario logs 20 sessions on
(20 API keys: fixproxy with 20 ``[[session]]`` tables and 20 listeners; stunnel with one
service and 20 connections; the bare thread relay with 20 connections) and runs one open loop
over all of them in the load engine's single thread (each session at 250 orders/s, schedules
interleaved), so the orders of different sessions meet in the middle process as they would in
production. Configurations take turns, round by round, each with fresh sessions; the middle's
CPU is read from the scheduler's nanosecond count around the load (no thread ends meanwhile).

*Control plane under load.* The rare work that fixproxy's trio thread does (a Prometheus
scrape, a reload, a Logon: parsing, RSA-PSS signing, a TLS handshake) holds the same
interpreter a session thread needs, so it shows up as latency in the data plane. In each
round, right after fixproxy's quiet open loop, the same open loop runs again on the same
session while this process (the orchestrator, otherwise idle) scrapes ``/metrics`` every
100 ms, sends SIGHUP to the pid in the ``[proxy] state_dir`` pid file every 2 s (as
``fixproxy reload`` does) and logs a second configured session on and out every second. The
schedule runs on loaded time only and carries over from one round's loaded run to the next, so
over the run the actions come exactly that often, however long a round is; the first reload and
Logon come 20 and 60 ms into the first loaded run, so that even a short one (``--quick``) sees
each once. The orchestrator starts no thread: it sends the engine its command, does each action
when it is due, and waits for the engine's answer in between. The p99.9 of the loaded runs is
compared with the quiet ones of the same rounds.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import BenchError
from bench.middle import Account
from bench.proc import Child, Worker, cpu_ns
from bench.wire import ENDPOINT, field, frames, logon, logout
from fixproxy.errors import FixProxyError
from fixproxy.fix import tags
from fixproxy.fix.codec import SendingTimeClock
from fixproxy.ops.control import read_reload_record, running_pid

MANY_CONFIGS: Final = ("stunnel", "python-relay", "shared-relay", "fixproxy")
SCRAPE_EVERY_S: Final = 0.1
RELOAD_EVERY_S: Final = 2.0
LOGON_EVERY_S: Final = 1.0
FIRST_RELOAD_S: Final = 0.02
FIRST_LOGON_S: Final = 0.06
ACTION_TIMEOUT_S: Final = 5.0
"""A scrape or a Logon/Logout cycle taking longer than this fails the run."""
RELOAD_ANSWER_TIMEOUT_S: Final = 10.0
RECEIVE_SIZE: Final = 65536


# ----- many sessions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManyRoute:
    """One configuration of the many-sessions scenario."""

    name: str
    ports: tuple[int, ...]
    """The port each session connects to (one per session, or the same one repeated)."""
    sign: bool
    middle: Child


def run_many_sessions(engine: Worker, gateway_pid: int, routes: Sequence[ManyRoute],
                      accounts: Sequence[Account], rate: float, seconds: float, rounds: int,
                      progress: Callable[[str], None]) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` interleaved rounds of ``seconds`` of load per configuration; raw results."""
    count = max(1, round(rate * seconds))
    results: dict[str, list[dict[str, Any]]] = {route.name: [] for route in routes}
    for number in range(1, rounds + 1):
        for route in routes:
            progress(f"many sessions, round {number}/{rounds}: {route.name}, "
                     f"{len(accounts)} sessions")
            try:
                results[route.name].append(_many_round(engine, gateway_pid, route, accounts,
                                                       count, rate, seconds, number))
            except BenchError as exc:
                raise route.middle.failure(
                    f"many sessions, round {number} failed: {exc}") from exc
    return results


def _many_round(engine: Worker, gateway_pid: int, route: ManyRoute,
                accounts: Sequence[Account], count: int, rate: float, seconds: float,
                number: int) -> dict[str, Any]:
    names = [f"many-{route.name}-{index}" for index in range(len(accounts))]
    logon_ns = []
    for name, port, account in zip(names, route.ports, accounts, strict=True):
        opened = engine.request("open", timeout=15.0, name=name, port=port, tls=False,
                                sign=route.sign, api_key=account.api_key)
        logon_ns.append(opened["logon_ns"])
    pids = {"engine": engine.pid, "gateway": gateway_pid, "middle": route.middle.pid}
    before = {role: cpu_ns(pid) for role, pid in pids.items()}
    started = time.perf_counter_ns()
    load = engine.request("open_loop_many", timeout=30.0 + 2 * seconds, names=names,
                          count=count, rate=rate)
    elapsed = time.perf_counter_ns() - started
    used = {role: cpu_ns(pid) - before[role] for role, pid in pids.items()}
    closed = engine.request("close_all", timeout=30.0 + len(names))
    return {"round": number, "sessions": len(names), "orders_per_session": count,
            "logon_ns": logon_ns, "latency_ns": load["latency_ns"],
            "send_lag_ns": load["send_lag_ns"], "cpu_ns": used, "elapsed_ns": elapsed,
            "orders": closed["orders"]}


# ----- the control plane under load ---------------------------------------------------------


@dataclass(slots=True)
class ControlSchedule:
    """When each action is next due, in seconds of loaded time from the next loaded run's
    start; carried from one run to the next."""

    scrape: float = 0.0
    reload: float = FIRST_RELOAD_S
    logon: float = FIRST_LOGON_S


@dataclass(frozen=True, slots=True)
class ControlTarget:
    """The fixproxy process the control-plane load is aimed at, and the schedule of it."""

    pid: int
    state_dir: Path
    metrics_port: int
    churn_port: int
    """The listener of the second configured session, logged on and out every second."""
    churn_api_key: str
    schedule: ControlSchedule


def run_under_control_load(engine: Worker, name: str, count: int, rate: float,
                           target: ControlTarget) -> dict[str, Any]:
    """The open loop of session ``name`` while scrapes, reloads and Logons come on schedule.

    Raises:
        BenchError: the engine failed, an action failed, or fixproxy is not the process its
            pid file names.
    """
    before = read_reload_record(target.state_dir)
    serial = before.serial if before is not None and before.pid == target.pid else 0
    timeout = 30.0 + 2 * count / rate
    engine.send("open_loop", timeout=timeout, name=name, count=count, rate=rate)
    start = time.monotonic()
    schedule = target.schedule
    next_scrape = start + schedule.scrape
    next_reload = start + schedule.reload
    next_logon = start + schedule.logon
    scrape_ns: list[int] = []
    logon_ns: list[int] = []
    reloads = 0
    while True:
        now = time.monotonic()
        if now >= next_scrape:
            scrape_ns.append(_scrape(target.metrics_port))
            next_scrape = _next(next_scrape, SCRAPE_EVERY_S, time.monotonic())
        if now >= next_reload:
            _reload(target)
            reloads += 1
            next_reload = _next(next_reload, RELOAD_EVERY_S, time.monotonic())
        if now >= next_logon:
            logon_ns.append(_logon_cycle(target.churn_port, target.churn_api_key))
            next_logon = _next(next_logon, LOGON_EVERY_S, time.monotonic())
        wait = min(next_scrape, next_reload, next_logon) - time.monotonic()
        answer = engine.poll_answer("open_loop", max(0.0, wait))
        if answer is not None:
            break
        if time.monotonic() > start + timeout + 10.0:
            raise engine.failure(f"no answer to the loaded open loop within {timeout:g} s")
    end = time.monotonic()
    schedule.scrape = max(0.0, next_scrape - end)
    schedule.reload = max(0.0, next_reload - end)
    schedule.logon = max(0.0, next_logon - end)
    answered, result, detail = _reload_answers(target, serial, reloads)
    return {"latency_ns": answer["latency_ns"], "send_lag_ns": answer["send_lag_ns"],
            "scrape_ns": scrape_ns, "logon_ns": logon_ns, "reloads": reloads,
            "reloads_answered": answered, "reload_result": result, "reload_detail": detail}


def _next(due: float, every: float, now: float) -> float:
    """The next due time after ``now`` on the schedule ``due + k * every``: an action that ran
    late is not repeated in a burst."""
    while due <= now:
        due += every
    return due


def _scrape(port: int) -> int:
    """GET /metrics as Prometheus does; the nanoseconds it took."""
    started = time.perf_counter_ns()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ACTION_TIMEOUT_S)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"scraping /metrics on port {port} failed: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200 or b"fixproxy_" not in body:
        raise BenchError(f"/metrics answered {response.status} with {len(body)} bytes")
    return time.perf_counter_ns() - started


def _reload(target: ControlTarget) -> None:
    """SIGHUP to the pid the pid file names, as ``fixproxy reload`` finds it."""
    try:
        pid = running_pid(target.state_dir)
    except FixProxyError as exc:
        raise BenchError(f"reload: {exc}") from exc
    if pid != target.pid:
        raise BenchError(f"reload: the pid file names {pid}, but fixproxy runs as "
                         f"{target.pid}")
    os.kill(pid, signal.SIGHUP)


def _reload_answers(target: ControlTarget, serial: int, reloads: int
                    ) -> tuple[int, str | None, str]:
    """How many of ``reloads`` fixproxy answered (after ``serial``), and the last outcome."""
    deadline = time.monotonic() + RELOAD_ANSWER_TIMEOUT_S
    while True:
        record = read_reload_record(target.state_dir)
        answered = record.serial - serial if record is not None \
            and record.pid == target.pid else 0
        if answered >= reloads or time.monotonic() > deadline:
            if record is None or answered <= 0:
                return 0, None, ""
            return answered, record.result, record.detail
        time.sleep(0.02)


def _read_until(sock: socket.socket, data: bytes, msg_type: bytes | None) -> bytes:
    """Read until a frame (of ``msg_type``, if given) is complete; all bytes read."""
    while True:
        found, _ = frames(data)
        if any(msg_type is None or kind == msg_type for _, _, kind in found):
            return data
        chunk = sock.recv(RECEIVE_SIZE)
        if not chunk:
            raise BenchError("the connection closed in the middle of a Logon/Logout cycle")
        data += chunk


def _logon_cycle(port: int, api_key: str) -> int:
    """Log on (unsigned: fixproxy signs), log out, close; the nanoseconds until the Logon's
    answer."""
    stamp = SendingTimeClock()
    started = time.perf_counter_ns()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ACTION_TIMEOUT_S) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(logon(api_key, stamp(), None))
            data = _read_until(sock, b"", None)
            elapsed = time.perf_counter_ns() - started
            found, tail = frames(data)
            start, end, msg_type = found[0]
            if msg_type != tags.MT_LOGON:
                text = (field(data, b"58", start, end) or b"").decode("ascii", "replace")
                raise BenchError(f"the second session's Logon was answered with "
                                 f"35={msg_type.decode('ascii', 'replace')}: {text}")
            sock.sendall(logout(api_key, ENDPOINT, 2, stamp()))
            _read_until(sock, data[tail:], tags.MT_LOGOUT)
            # As the engine does: fixproxy has ended the session before the next Logon.
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(RECEIVE_SIZE):
                pass
    except OSError as exc:
        raise BenchError(f"Logon/Logout cycle on port {port} failed: {exc}") from exc
    return elapsed
