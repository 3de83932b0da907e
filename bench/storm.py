"""The connection storm: 300 engines at one listener while another session trades.

Theory of operation
-------------------
A fleet of engines restarting together (a deploy, a host reboot, a network flap) reconnects all
at once. fixproxy admits engine connections in its trio thread, while the live sessions relay
in the data plane's thread; both want the one interpreter, so a burst of admission work is
latency on every other session. The scenario makes that burst as heavy as one listener can see:
``--storm-connections`` (300) TCP connections to session S's listener at once, each sending a
Logon with S's API key. Every one of them is read, parsed, checked against the window, the
backoff and the one-connection- per-key claim, and answered: one wins (TLS to the gateway, a
signature, the gateway's answer; it holds the key until every other connection of the wave has
its answer, then logs out) and the other 299 get the duplicate-key Logout. A storm of silent
connections would cost fixproxy an accept and a timer each and nothing else until
``logon_timeout``; a Logon makes each one go the whole admission path, so that is the storm
chosen.

Meanwhile session T runs the load engine's open loop (latency from each order's scheduled
send time, so a stall is counted for every order it delays). Each round runs the open loop
twice on T, quiet and then under the storm, with the same rate and count; during the loaded
run a wave of 300 connections starts every second (the first at its start; a wave still
running when the next is due delays it, and a late wave is not made up for), so the storm's
weight per second is the same however fast fixproxy answers, and a faster admission shows as
a lower ratio rather than as more waves. The figure is T's p99 under the storm over the quiet
p99, pooled over the rounds; the target is 2x.

The storm is driven from this process (the orchestrator) with non-blocking sockets and one
selector, so it is cheap next to what it causes. Each connection's fate is recorded: the first
message answered (Logon or Logout, with its Text), and whether fixproxy then closed it. After
each round the orchestrator waits, bounded, for fixproxy's open descriptors and threads to
return to their count before the storm.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import selectors
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench import BenchError
from bench.middle import make_material, start_fixproxy, start_workers
from bench.proc import Child, Worker, open_fds, thread_count
from bench.report import Target, percentiles
from bench.wire import ENDPOINT, frames, logon, logout
from bench.wire import field as wire_field
from fixproxy.fix import tags
from fixproxy.fix.codec import SendingTimeClock

STORM_CONNECTIONS: Final = 300
STORM_EVERY_S: Final = 1.0
"""A wave starts this often during the loaded run (or as soon as the last one ends)."""
STORM_TARGET: Final = 2.0
"""T's open-loop p99 during the storm, at most this many times the quiet p99."""
WAVE_TIMEOUT_S: Final = 60.0
"""Every connection of a wave must be answered and closed within this, on a busy machine."""
SETTLE_TIMEOUT_S: Final = 20.0
"""How long fixproxy may take to return to its descriptor and thread counts after a storm."""
SETTLE_POLL_S: Final = 0.05
RECEIVE_SIZE: Final = 65536
DUPLICATE_TEXT: Final = "is already in use by"
"""Part of the Logout text fixproxy refuses a second connection with the same API key with."""


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    connected: bool = False
    data: bytes = b""
    answer: bytes | None = None
    """MsgType of the first message fixproxy sent, once it has come."""
    text: str = ""
    logout_sent: bool = False
    logout_answered: bool = False
    closed: bool = False
    """fixproxy closed its side (EOF read)."""
    error: str = ""


@dataclass(frozen=True, slots=True)
class Wave:
    """What became of one wave of connections."""

    connections: int
    logged_on: int
    """Answered with a Logon (the key was free), then logged out once every other connection
    of the wave had its answer: one, unless a connection ended before fixproxy read it."""
    refused_duplicate: int
    refused_other: int
    unanswered: int
    not_closed: int
    """Answered, but fixproxy had not closed them by the deadline."""
    errors: int
    """Connect failures or resets."""
    elapsed_s: float
    texts: dict[str, int] = field(default_factory=dict)
    """Each refusal text other than the duplicate-key one, with its count."""

    @property
    def ok(self) -> bool:
        """Every connection was answered and closed, and no refusal but the duplicate key."""
        return (self.logged_on == 1 and self.unanswered == 0 and self.not_closed == 0
                and self.errors == 0 and self.refused_other == 0
                and self.logged_on + self.refused_duplicate == self.connections)

    def as_json(self) -> dict[str, Any]:
        """The wave as stored in the JSON file."""
        return {"connections": self.connections, "logged_on": self.logged_on,
                "refused_duplicate": self.refused_duplicate,
                "refused_other": self.refused_other, "unanswered": self.unanswered,
                "not_closed": self.not_closed, "errors": self.errors,
                "elapsed_s": round(self.elapsed_s, 4), "texts": self.texts, "ok": self.ok}


def storm_wave(port: int, api_key: str, count: int,
               timeout: float = WAVE_TIMEOUT_S) -> Wave:
    """Open ``count`` connections to ``port`` at once, each sending a Logon for ``api_key``;
    read each answer; once every one has its answer, log out the one that won the key; wait
    until fixproxy has closed each."""
    stamp = SendingTimeClock()
    hello = logon(api_key, stamp(), None)
    selector = selectors.DefaultSelector()
    conns: list[_Connection] = []
    started = time.perf_counter()
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            conn = _Connection(sock)
            conns.append(conn)
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                conn.error = f"connect: {errno.errorcode.get(code, code)}"
                conn.closed = True
                sock.close()
                continue
            selector.register(sock, selectors.EVENT_WRITE, conn)
        deadline = time.monotonic() + timeout
        live = sum(1 for conn in conns if not conn.closed)
        waiting = live  # connections without an answer; the winner holds the key till 0
        while live and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                conn = key.data
                had_answer = conn.answer is not None
                if not conn.connected:
                    _on_connected(conn, selector, hello)
                else:
                    _on_readable(conn)
                if not had_answer and (conn.answer is not None or conn.closed):
                    waiting -= 1
                    if not waiting:
                        _log_out_winners(conns, api_key, stamp())
                if conn.closed:
                    selector.unregister(conn.sock)
                    conn.sock.close()
                    live -= 1
    finally:
        for conn in conns:
            if not conn.closed:
                selector.unregister(conn.sock)
                conn.sock.close()
        selector.close()
    return _summarize(conns, time.perf_counter() - started)


def _on_connected(conn: _Connection, selector: selectors.BaseSelector, hello: bytes) -> None:
    code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        conn.error = f"connect: {errno.errorcode.get(code, code)}"
        conn.closed = True
        return
    conn.connected = True
    try:
        conn.sock.send(hello)  # ~150 bytes into an empty socket buffer: one send
    except OSError as exc:
        conn.error = f"send: {exc}"
        conn.closed = True
        return
    selector.modify(conn.sock, selectors.EVENT_READ, conn)


def _on_readable(conn: _Connection) -> None:
    try:
        chunk = conn.sock.recv(RECEIVE_SIZE)
    except OSError as exc:
        conn.error = f"receive: {exc}"
        conn.closed = True
        return
    if not chunk:
        conn.closed = True
        return
    conn.data += chunk
    found, _ = frames(conn.data)
    for start, end, msg_type in found:
        if conn.answer is None:
            conn.answer = msg_type
            conn.text = (wire_field(conn.data, b"58", start, end) or b"").decode(
                "ascii", "replace")
        elif conn.logout_sent and msg_type == tags.MT_LOGOUT:
            conn.logout_answered = True
    if found:
        conn.data = conn.data[found[-1][1]:]


def _log_out_winners(conns: list[_Connection], api_key: str, sending_time: bytes) -> None:
    """Every connection of the wave has its answer: the one logged on lets the key go."""
    for conn in conns:
        if conn.answer == tags.MT_LOGON and not conn.closed and not conn.logout_sent:
            conn.logout_sent = True
            try:
                conn.sock.sendall(logout(api_key, ENDPOINT, 2, sending_time))
            except OSError as exc:
                conn.error = f"send: {exc}"


def _summarize(conns: list[_Connection], elapsed: float) -> Wave:
    texts: Counter[str] = Counter()
    logged_on = duplicate = other = unanswered = not_closed = errors = 0
    for conn in conns:
        if conn.error:
            errors += 1
            texts[conn.error] += 1
        elif conn.answer is None:
            unanswered += 1
        elif conn.answer == tags.MT_LOGON:
            logged_on += 1
            if not conn.logout_answered:
                texts["Logout not answered"] += 1
                unanswered += 1
        elif conn.answer == tags.MT_LOGOUT and DUPLICATE_TEXT in conn.text:
            duplicate += 1
        else:
            other += 1
            texts[f"35={conn.answer.decode('ascii', 'replace')}: {conn.text}"] += 1
        if not conn.error and not conn.closed:
            not_closed += 1
    return Wave(len(conns), logged_on, duplicate, other, unanswered, not_closed, errors,
                elapsed, dict(texts))


# ----- the scenario -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StormTarget:
    """The fixproxy process and the two sessions of the scenario."""

    middle: Child
    trader: str
    """The engine's name for session T's open connection."""
    storm_port: int
    storm_api_key: str


def settle(pid: int, fds: int, threads: int, timeout: float = SETTLE_TIMEOUT_S
           ) -> tuple[int, int, float]:
    """Wait until process ``pid`` holds at most ``fds`` descriptors and ``threads`` threads,
    or ``timeout`` passes; the counts last seen and the seconds it took."""
    started = time.monotonic()
    while True:
        now_fds, now_threads = open_fds(pid), thread_count(pid)
        waited = time.monotonic() - started
        if (now_fds <= fds and now_threads <= threads) or waited > timeout:
            return now_fds, now_threads, waited
        time.sleep(SETTLE_POLL_S)


def run_storm(engine: Worker, target: StormTarget, orders: int, rate: float, rounds: int,
              connections: int, every: float, progress: Callable[[str], None]
              ) -> dict[str, Any]:
    """``rounds`` rounds of T's open loop, quiet and then under a wave of ``connections``
    Logons every ``every`` seconds; the summary.

    Raises:
        BenchError: T's open loop failed (an order unanswered, answered twice or out of
            order), or fixproxy exited.
    """
    pid = target.middle.pid
    results = []
    for number in range(1, rounds + 1):
        progress(f"storm, round {number}/{rounds}: quiet open loop")
        timeout = 30.0 + 2 * orders / rate
        quiet = engine.request("open_loop", timeout=timeout, name=target.trader, count=orders,
                               rate=rate)
        fds, threads = open_fds(pid), thread_count(pid)
        progress(f"storm, round {number}/{rounds}: open loop under waves of {connections} "
                 f"connections")
        engine.send("open_loop", timeout=timeout, name=target.trader, count=orders, rate=rate)
        waves: list[Wave] = []
        peak_fds, peak_threads = fds, threads
        loaded: dict[str, Any] | None = None
        next_wave = time.monotonic()
        while loaded is None:
            if time.monotonic() >= next_wave:
                waves.append(storm_wave(target.storm_port, target.storm_api_key, connections))
                peak_fds = max(peak_fds, open_fds(pid))
                peak_threads = max(peak_threads, thread_count(pid))
                while next_wave <= time.monotonic():  # a late wave is not made up for
                    next_wave += every
            if target.middle.process.poll() is not None:
                raise target.middle.failure("exited during the storm")
            # poll_line reads only while its wait lasts: at least a moment.
            loaded = engine.poll_answer("open_loop",
                                        max(0.001, next_wave - time.monotonic()))
        end_fds, end_threads, waited = settle(pid, fds, threads)
        results.append({
            "round": number, "quiet_latency_ns": quiet["latency_ns"],
            "storm_latency_ns": loaded["latency_ns"],
            "quiet_send_lag_ns": quiet["send_lag_ns"], "storm_send_lag_ns": loaded["send_lag_ns"],
            "waves": [wave.as_json() for wave in waves],
            "fds": {"before": fds, "after": end_fds, "peak_seen": peak_fds},
            "threads": {"before": threads, "after": end_threads, "peak_seen": peak_threads},
            "settle_s": round(waited, 3),
        })
    return summarize_storm(results, orders, rate, connections, every)


def summarize_storm(results: list[dict[str, Any]], orders: int, rate: float,
                    connections: int, every: float) -> dict[str, Any]:
    """Percentiles pooled over the rounds, the ratio, the per-round figures and the checks."""
    quiet = [ns for result in results for ns in result["quiet_latency_ns"]]
    storm = [ns for result in results for ns in result["storm_latency_ns"]]
    quiet_p = percentiles(quiet)
    storm_p = percentiles(storm)
    per_round = []
    for result in results:
        q99 = percentiles(result["quiet_latency_ns"])["p99"]
        s99 = percentiles(result["storm_latency_ns"])["p99"]
        per_round.append({"round": result["round"], "quiet_p99_us": q99,
                          "storm_p99_us": s99, "ratio": s99 / q99 if q99 else None,
                          "orders_answered": {"quiet": len(result["quiet_latency_ns"]),
                                              "storm": len(result["storm_latency_ns"])},
                          "waves": len(result["waves"]), "fds": result["fds"],
                          "threads": result["threads"], "settle_s": result["settle_s"]})
    waves = [wave for result in results for wave in result["waves"]]
    failures = []
    bad = [wave for wave in waves if not wave["ok"]]
    if bad:
        failures.append(f"{len(bad)} of {len(waves)} waves had connections unanswered, not "
                        f"closed or refused for another reason: {bad[0]}")
    for result in results:
        if (result["fds"]["after"] > result["fds"]["before"]
                or result["threads"]["after"] > result["threads"]["before"]):
            failures.append(f"round {result['round']}: fixproxy did not return to its "
                            f"descriptors and threads: {result['fds']}, {result['threads']}")
    ratio = storm_p["p99"] / quiet_p["p99"] if quiet_p["p99"] else None
    return {
        "orders_per_run": orders, "rate": rate, "connections_per_wave": connections,
        "wave_every_s": every,
        "rounds": len(results), "waves": len(waves), "wave_results": waves,
        "connections": sum(wave["connections"] for wave in waves),
        "wave_seconds": [wave["elapsed_s"] for wave in waves],
        "quiet_us": quiet_p, "storm_us": storm_p,
        "p99_ratio": ratio, "per_round": per_round,
        "target": Target("storm_p99", f"open-loop p99 under a storm of {connections} Logons "
                         "at once on another session", ratio, STORM_TARGET, True).as_json(),
        "failures": failures, "ok": not failures,
    }


def format_storm(summary: dict[str, Any]) -> str:
    """The scenario's result as a few lines of text."""
    target = summary["target"]
    verdict = {True: "PASS", False: "MISS", None: "n/a"}[target["pass"]]
    lines = [
        f"connection storm: {summary['rounds']} rounds, {summary['orders_per_run']} orders "
        f"at {summary['rate']:g}/s per run; {summary['waves']} waves of "
        f"{summary['connections_per_wave']} connections, one every "
        f"{summary['wave_every_s']:g} s ({summary['connections']} in all; a wave took "
        f"{min(summary['wave_seconds']):.2f}-{max(summary['wave_seconds']):.2f} s)",
        f"  {'':8}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'max':>10}   (us)",
    ]
    for label, key in (("quiet", "quiet_us"), ("storm", "storm_us")):
        figures = summary[key]
        lines.append(f"  {label:8}" + "".join(f"{figures[name]:>10.0f}" for name in
                                              ("p50", "p90", "p99", "p99_9", "max")))
    for entry in summary["per_round"]:
        ratio = entry["ratio"]
        lines.append(f"  round {entry['round']}: p99 {entry['quiet_p99_us']:.0f} -> "
                     f"{entry['storm_p99_us']:.0f} us ({ratio:.2f}x), {entry['waves']} waves, "
                     f"fds {entry['fds']['before']}->{entry['fds']['peak_seen']}->"
                     f"{entry['fds']['after']}, threads {entry['threads']['before']}->"
                     f"{entry['threads']['peak_seen']}->{entry['threads']['after']}")
    value = target["value"]
    lines.append(f"  target: p99 under the storm <= {target['limit']:g} x quiet: "
                 f"{'n/a' if value is None else f'{value:.2f}x'} {verdict}")
    lines += [f"  FAILED: {text}" for text in summary["failures"]]
    return "\n".join(lines)



def run_scenario(orders: int, rate: float, rounds: int, connections: int, every: float,
                 switch_interval: float | None, progress: Callable[[str], None]
                 ) -> dict[str, Any]:
    """The whole scenario with processes of its own: a gateway, the load engine, and one
    fixproxy with sessions T and S; everything stopped on return.

    Raises:
        BenchError: a process failed, or T's open loop failed.
    """
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fixproxy-storm-") as tmp:
        progress("storm: generating certificates and keys")
        material = make_material(Path(tmp), 2)
        trader, stormed = material.accounts
        with start_workers(material) as (_, engine, gateway_port):
            child, config = start_fixproxy(material, gateway_port, material.accounts,
                                           "storm-fixproxy", switch_interval)
            with child:
                engine.request("open", timeout=15.0, name="storm-trader",
                               port=config.sessions[0].listen[1], tls=False, sign=False,
                               api_key=trader.api_key)
                target = StormTarget(child, "storm-trader", config.sessions[1].listen[1],
                                     stormed.api_key)
                try:
                    summary = run_storm(engine, target, orders, rate, rounds, connections,
                                        every, progress)
                except BenchError as exc:
                    raise child.failure(f"the storm scenario failed: {exc}") from exc
                engine.request("close", timeout=15.0, name="storm-trader")
    summary["started"] = dt.datetime.fromtimestamp(started, dt.UTC).isoformat()
    summary["duration_s"] = round(time.time() - started, 1)
    summary["load_average_end"] = os.getloadavg()[0]
    return summary
