"""The soak with many sessions and the operator's routine on top: ``python3 -m bench.soak_fleet``.

Theory of operation
-------------------
:mod:`bench.soak` runs one session through drops and reconnects for minutes. A production
fixproxy carries many sessions, and while they trade the operator reloads its configuration
and Prometheus scrapes it. This mode runs that life in a bounded time (about two minutes in
CI) and then asks whether anything leaked: threads, file descriptors, memory.

One fixproxy process (``python3 -m fixproxy.cli run``, a generated TOML, pinned TLS) carries
``--sessions`` (10) sessions, each with its own API key and listener; this process holds the
strict simulated gateway and one trio load engine per session, exactly those of
:mod:`bench.soak` (every order classified by one shared :class:`~bench.soak_support.Ledger`:
connection numbers, and so ClOrdIDs, are unique across the sessions). Four schedules run from
the first Logon:

* every ``--drop-every`` seconds the gateway drops every live connection at once (no Logout),
  as a failing gateway would; each engine logs on again at once;
* every ``--reconnect-every`` seconds one engine (in turn) logs out and on again;
* every ``--reload-every`` seconds the configuration file is rewritten and fixproxy is sent
  SIGHUP (to the pid its pid file names, as ``fixproxy reload`` does): each reload changes
  every session's ``logon_timeout`` and adds or removes an eleventh session (a listener opened
  or closed); its outcome is read back from ``reload.json`` and must be ``ok``;
* every ``--scrape-every`` seconds ``GET /metrics`` on the metrics address must answer 200 with
  every session's ``fixproxy_session_up``.

The faults pause twice: for ``SETTLE_S`` before the end of the warm-up and for ``--tail``
seconds before the end. With every session logged on again and the eleventh session removed,
fixproxy's threads (``/proc/<pid>/task``), descriptors (``/proc/<pid>/fd``) and RSS are read:
the baseline at the end of the warm-up, and the end, read from ``SETTLE_S`` into the tail
until threads and descriptors are back at the baseline or the run ends. ``SETTLE_S`` is 12 s
because each Logon runs in a trio worker thread, and trio keeps an idle worker for 10 s
before it exits: the threads of the Logons after a drop are gone only 10 s later. Threads
and descriptors must be back at the baseline exactly (the same sessions are logged on, and
nothing else is open), except that one session may or may not relay in a thread of its own
(:data:`SESSION_THREAD`), which is counted apart; RSS must not exceed the baseline by
``RSS_GROWTH`` plus ``RSS_SLACK_KIB``, a bound sized for the allocator's noise over a short
run, not for a leak of bytes per order (a leak of a few hundred bytes per order would still
cross it over tens of thousands of orders). Exit status 1 if any order is lost, any fault
action failed, or a figure is off its baseline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import ssl
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import trio

from bench import BenchError
from bench.middle import SERVER_NAME, Account, Material, start_fixproxy, state_dir
from bench.proc import Child, memory_kib, open_fds, thread_names
from bench.soak import _Engine, _first, _Gateway, _Live
from bench.soak_support import END_FINAL, Ledger, Tally
from bench.wire import ENDPOINT
from fixproxy.errors import FixProxyError
from fixproxy.ops.control import read_reload_record, running_pid
from fixproxy.signing import generate_key_pair, load_public_key
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.gateway import SimConfig, SimGateway

LOCALHOST: Final = "127.0.0.1"
EXIT_FAILED: Final = 1
SETTLE_S: Final = 12.0
"""Seconds without faults before a measurement: sessions log on again, sockets close, and
the trio worker threads of the last Logons exit (trio keeps an idle one for 10 s)."""
LIVE_TIMEOUT_S: Final = 60.0
"""How long the baseline waits for every session to be logged on again."""
RELOAD_ANSWER_TIMEOUT_S: Final = 15.0
SCRAPE_TIMEOUT_S: Final = 10.0
RSS_GROWTH: Final = 0.10
RSS_SLACK_KIB: Final = 4096
"""RSS may end at most 10 % plus 4 MiB above its baseline."""
SPARE_SESSION: Final = "spare"
SESSION_THREAD: Final = "fixproxy sessio"
"""The OS name (cut to 15 bytes) of a thread fixproxy runs one session's relay in: while it
logs on, and after that only while it is the one live session (proxy/admit.py); every other
logged-on session relays in the data plane's shared thread. So with every session logged on,
one such thread or none is there, depending on which session logged on first after the last
time none was live: the count of these is checked apart (at most one), the rest exactly."""


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """What one fleet soak does."""

    sessions: int
    duration: float
    rate: float
    """Orders per second on each session."""
    drop_every: float
    reconnect_every: float
    reload_every: float
    scrape_every: float
    warmup: float
    tail: float


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> tuple[FleetSettings, Path | None]:
    """Settings from the command line, and the JSON path if one was given."""
    parser = argparse.ArgumentParser(
        prog="python3 -m bench.soak_fleet",
        description="Soak fixproxy with many sessions: orders on every session, gateway "
                    "drops, engine reconnects, config reloads (SIGHUP) and metrics scrapes on "
                    "schedules; then threads, descriptors and RSS against their baseline "
                    "after the warm-up. Exits 1 if an order was lost or a figure is off.")
    parser.add_argument("--sessions", type=int, default=10, help="sessions [10]")
    parser.add_argument("--duration", type=_positive, default=120.0,
                        help="seconds from the first Logon to the final Logout [120]")
    parser.add_argument("--rate", type=_positive, default=50.0,
                        help="orders per second on each session [50]")
    parser.add_argument("--drop-every", type=_positive, default=15.0,
                        help="seconds between gateway drops of every connection [15]")
    parser.add_argument("--reconnect-every", type=_positive, default=4.0,
                        help="seconds between engine Logout/Logon cycles, one session in "
                             "turn [4]")
    parser.add_argument("--reload-every", type=_positive, default=6.0,
                        help="seconds between configuration reloads (SIGHUP) [6]")
    parser.add_argument("--scrape-every", type=_positive, default=1.0,
                        help="seconds between GET /metrics [1]")
    parser.add_argument("--warmup", type=_positive, default=30.0,
                        help="seconds before the baseline is read; the faults pause for the "
                             f"last {SETTLE_S:g} of them [30]")
    parser.add_argument("--tail", type=_positive, default=20.0,
                        help=f"seconds without faults at the end; the end is read from "
                             f"{SETTLE_S:g} s into them until threads and descriptors are "
                             f"back at the baseline [20]")
    parser.add_argument("--json", type=Path, dest="json_path",
                        help="where to write the JSON result")
    args = parser.parse_args(argv)
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    if min(args.warmup, args.tail) <= SETTLE_S or args.warmup + args.tail >= args.duration:
        parser.error(f"need {SETTLE_S:g} < --warmup, {SETTLE_S:g} < --tail and "
                     f"--warmup + --tail < --duration")
    return FleetSettings(args.sessions, args.duration, args.rate, args.drop_every,
                         args.reconnect_every, args.reload_every, args.scrape_every,
                         args.warmup, args.tail), args.json_path


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Sample:
    """fixproxy's threads, descriptors and RSS at one moment."""

    at_s: float
    threads: int
    session_threads: int
    """Of ``threads``, those relaying one session of their own (:data:`SESSION_THREAD`)."""
    fds: int
    rss_kib: int

    @property
    def other_threads(self) -> int:
        """The threads that are not one session's own."""
        return self.threads - self.session_threads

    def back_at(self, baseline: Sample) -> bool:
        """Threads and descriptors are no more than at ``baseline``."""
        return (self.other_threads <= baseline.other_threads and self.session_threads <= 1
                and self.fds <= baseline.fds)


def _sample(pid: int, at_s: float) -> Sample:
    names = thread_names(pid)
    return Sample(round(at_s, 3), len(names), names.count(SESSION_THREAD), open_fds(pid),
                  memory_kib(pid)["VmRSS"])


class _Fleet:
    """One fleet soak: the gateway, the engines, the schedules, the measurements."""

    def __init__(self, settings: FleetSettings, material: Material, context: ssl.SSLContext,
                 listener: socket.socket, child: Child, config_path: Path,
                 ports: Sequence[int], metrics_port: int) -> None:
        self.settings = settings
        self.material = material
        self.child = child
        self.listener = listener
        self.config_path = config_path
        self.base_config = config_path.read_text()
        self.metrics_port = metrics_port
        self.ledger = Ledger()
        accounts = material.accounts[:settings.sessions]
        sim = SimGateway(SimConfig(keys={account.api_key: load_public_key(account.public_key)
                                         for account in accounts},
                                   ports={ENDPOINT: 0}), context)
        self.gateway = _Gateway(sim, context, self.ledger)
        self.engines = [_Engine(port, account.api_key, settings.rate, self.ledger)
                        for port, account in zip(ports, accounts, strict=True)]
        self.spare = False
        self.reloads = 0
        self.reload_results: list[str] = []
        self.scrapes = 0
        self.drops = 0
        self.connections_dropped = 0
        self.reconnects_requested = 0
        self.samples: dict[str, Sample] = {}
        self.settle_s = 0.0
        self.started = 0.0
        self.elapsed = 0.0
        self.fatal: FixProxyError | None = None
        self._faults_on = False
        self._nursery: trio.Nursery | None = None

    def _fail(self, error: FixProxyError) -> None:
        if self.fatal is None:
            self.fatal = error
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def run(self) -> None:
        """Run the soak; the figures are left in the attributes.

        Raises:
            FixProxyError: the soak could not run to its end.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.listener))
            nursery.start_soon(self.gateway.serve, listener)
            nursery.start_soon(self.gateway.collect)
            nursery.start_soon(self._drive)
        if self.fatal is not None:
            raise self.fatal

    async def _drive(self) -> None:
        try:
            lives: dict[int, _Live] = {}

            async def log_on(index: int) -> None:
                lives[index] = await self.engines[index].log_on()

            async with trio.open_nursery() as logons:
                for index in range(len(self.engines)):
                    logons.start_soon(log_on, index)
            self.started = trio.current_time()
            settings = self.settings
            stop_at = self.started + settings.duration
            async with trio.open_nursery() as side:
                async with trio.open_nursery() as trading:
                    for index, engine in enumerate(self.engines):
                        trading.start_soon(self._trade, engine, lives[index], stop_at)
                    side.start_soon(self._phases, stop_at)
                    side.start_soon(self._every, settings.drop_every, self._drop)
                    side.start_soon(self._every, settings.reconnect_every, self._reconnect)
                    side.start_soon(self._every, settings.reload_every, self._reload)
                    side.start_soon(self._every, settings.scrape_every, self._scrape)
                side.cancel_scope.cancel()
            self.elapsed = trio.current_time() - self.started
            if self.child.process.poll() is not None:
                raise self.child.failure("exited during the soak")
        except* BenchError as group:
            self._fail(_first(group))
        self.gateway.check_records()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _trade(self, engine: _Engine, live: _Live, stop_at: float) -> None:
        while await engine.session(live, stop_at) != END_FINAL:
            live = await engine.log_on()

    async def _phases(self, stop_at: float) -> None:
        """Faults on, a pause, the baseline; faults on, a pause, the end."""
        settings = self.settings
        self._faults_on = True
        await trio.sleep_until(self.started + settings.warmup - SETTLE_S)
        await self._pause()
        await trio.sleep_until(self.started + settings.warmup)
        await self._measure("baseline", self.started + settings.warmup + LIVE_TIMEOUT_S)
        _progress(f"soak fleet: baseline {self.samples['baseline']}")
        self._faults_on = True
        await trio.sleep_until(stop_at - settings.tail)
        await self._pause()
        await trio.sleep_until(stop_at - settings.tail + SETTLE_S)
        await self._measure("end", stop_at - 0.5, self.samples["baseline"])
        _progress(f"soak fleet: end {self.samples['end']}")

    async def _pause(self) -> None:
        self._faults_on = False
        if self.spare:
            await self._reload()

    async def _measure(self, name: str, until: float, baseline: Sample | None = None) -> None:
        """Record fixproxy's figures as ``samples[name]`` once every session is logged on, and
        for the end, again until threads and descriptors are back at ``baseline`` or
        ``until`` comes; the last figures read stand."""
        pid = self.child.pid
        # Polled: the engines and /proc offer nothing to wait on.
        with trio.move_on_at(until):
            while True:
                if all(engine.live is not None for engine in self.engines):
                    break
                await trio.sleep(0.05)
        began = trio.current_time()
        while True:
            sample = _sample(pid, trio.current_time() - self.started)
            self.samples[name] = sample
            self.settle_s = trio.current_time() - began
            if baseline is None or trio.current_time() >= until or sample.back_at(baseline):
                return
            await trio.sleep(0.05)

    async def _every(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        number = 1
        while True:
            await trio.sleep_until(self.started + number * seconds)
            number += 1
            if self._faults_on:
                await action()

    async def _drop(self) -> None:
        self.drops += 1
        lives = [engine.live for engine in self.engines]
        dropped = self.gateway.drop_all()
        self.connections_dropped += dropped
        if dropped:
            for live in lives:
                if live is not None:
                    live.record.gateway_dropped = True

    async def _reconnect(self) -> None:
        engine = self.engines[self.reconnects_requested % len(self.engines)]
        self.reconnects_requested += 1
        engine.request_reconnect()

    def _config_text(self) -> str:
        """The configuration with every session's ``logon_timeout`` set from the reload count
        and, every other reload, the spare session."""
        timeout = 10.0 + self.reloads % 5
        text = self.base_config.replace("[[session]]\n",
                                        f"[[session]]\nlogon_timeout = {timeout:g}\n")
        if self.spare:
            spare = self.material.accounts[-1]
            with socket.socket() as probe:  # a free port for the spare listener
                probe.bind((LOCALHOST, 0))
                port = probe.getsockname()[1]
            text += "\n".join([
                "", "[[session]]", f'name = "{SPARE_SESSION}"',
                f'listen = "{LOCALHOST}:{port}"', f"endpoint = {json.dumps(ENDPOINT)}",
                f"port = {self.gateway_port}", f"api_key = {json.dumps(spare.api_key)}",
                f"private_key = {json.dumps(str(spare.private_key))}", ""])
        return text

    @property
    def gateway_port(self) -> int:
        """The port of the gateway's listener."""
        return int(self.listener.getsockname()[1])

    async def _reload(self) -> None:
        state = state_dir(self.material, "soak-fleet-fixproxy")
        before = read_reload_record(state)
        serial = before.serial if before is not None and before.pid == self.child.pid else 0
        self.reloads += 1
        self.spare = not self.spare
        self.config_path.write_text(self._config_text())
        try:
            pid = running_pid(state)
        except FixProxyError as exc:
            raise BenchError(f"reload: {exc}") from exc
        if pid != self.child.pid:
            raise BenchError(f"reload: the pid file names {pid}, not {self.child.pid}")
        os.kill(pid, signal.SIGHUP)
        with trio.move_on_after(RELOAD_ANSWER_TIMEOUT_S):
            while True:
                record = read_reload_record(state)
                if record is not None and record.pid == pid and record.serial > serial:
                    self.reload_results.append(record.result)
                    if record.result != "ok":
                        self.ledger.problem(f"reload {self.reloads}: {record.result}: "
                                            f"{record.detail}")
                    return
                await trio.sleep(0.02)
        self.ledger.problem(f"reload {self.reloads}: no answer within "
                            f"{RELOAD_ANSWER_TIMEOUT_S:g} s")

    async def _scrape(self) -> None:
        self.scrapes += 1
        body = b""
        with trio.move_on_after(SCRAPE_TIMEOUT_S):
            try:
                stream = await trio.open_tcp_stream(LOCALHOST, self.metrics_port)
                async with stream:
                    await stream.send_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    while chunk := await stream.receive_some(65536):
                        body += chunk
            except (OSError, trio.BrokenResourceError) as exc:
                self.ledger.problem(f"scrape {self.scrapes}: {exc}")
                return
        sessions = body.count(b"\nfixproxy_session_up{")
        if body[:12] not in (b"HTTP/1.1 200", b"HTTP/1.0 200") or sessions < len(self.engines):
            self.ledger.problem(f"scrape {self.scrapes}: {body[:60]!r}, {sessions} sessions "
                                f"in fixproxy_session_up")

    def result(self) -> dict[str, Any]:
        """The figures of a completed run, as the JSON report."""
        tally: Tally = self.ledger.tally()
        records = list(self.ledger.connections.values())
        engines = self.engines
        base, end = self.samples.get("baseline"), self.samples.get("end")
        failures = []
        if tally.lost:
            failures.append(f"{tally.lost} orders lost")
        if tally.unexpected_disconnects:
            failures.append(f"{tally.unexpected_disconnects} connections closed with no drop "
                            f"scheduled")
        if not tally.confirmed:
            failures.append("no order confirmed")
        if base is None or end is None:
            failures.append("the baseline or the end was not measured")
        else:
            if end.other_threads > base.other_threads or end.session_threads > 1:
                failures.append(f"threads {base.threads} -> {end.threads} (of which a "
                                f"session's own: {base.session_threads} -> "
                                f"{end.session_threads})")
            if end.fds > base.fds:
                failures.append(f"file descriptors {base.fds} -> {end.fds}")
            if end.rss_kib > base.rss_kib * (1 + RSS_GROWTH) + RSS_SLACK_KIB:
                failures.append(f"RSS {base.rss_kib} KiB -> {end.rss_kib} KiB")
        if self.ledger.problem_count and not failures:
            failures.append(f"{self.ledger.problem_count} problems")
        finals = sum(1 for record in records if record.end == END_FINAL)
        return {
            "schema": 1, "kind": "soak-fleet", "settings": asdict(self.settings),
            "duration_s": round(self.elapsed, 3),
            "orders": {**tally.as_json(),
                       "skipped_behind_schedule": sum(engine.skipped for engine in engines)},
            "sessions_ended_final": finals,
            "connections": len(records),
            "logon_failures": sum(engine.logon_failures for engine in engines),
            "drops": {"scheduled": self.drops, "connections_dropped": self.connections_dropped},
            "reconnects_requested": self.reconnects_requested,
            "reloads": {"sent": self.reloads, "answered": len(self.reload_results),
                        "ok": self.reload_results.count("ok")},
            "scrapes": self.scrapes,
            "gateway": {"orders_received": self.ledger.gateway_orders,
                        "reports_sent": self.ledger.gateway_reports},
            "baseline": None if base is None else asdict(base),
            "end": None if end is None else asdict(end),
            "settle_s": round(self.settle_s, 3),
            "rss_bound": {"growth": RSS_GROWTH, "slack_kib": RSS_SLACK_KIB},
            "problem_count": self.ledger.problem_count, "problems": self.ledger.problems,
            "failures": failures, "ok": not failures,
        }


def _material(workdir: Path, accounts: int) -> tuple[Material, ssl.SSLContext]:
    certs = generate_certificates(SERVER_NAME)
    files = certs.write(workdir / "certs")
    made = []
    for index in range(accounts):
        private_key, public_key = generate_key_pair(workdir / "keys", f"fleet-{index}")
        made.append(Account(str(uuid.uuid4()), private_key, public_key))
    return Material(workdir, files, certs.leaf_pin, tuple(made)), certs.server_context()


def run(settings: FleetSettings) -> dict[str, Any]:
    """Run one fleet soak; its report (also when it failed).

    Raises:
        FixProxyError: a process did not start, or the run could not reach its end.
    """
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fixproxy-soak-fleet-") as tmp, \
            socket.socket() as listener:
        _progress(f"soak fleet: generating certificates and {settings.sessions + 1} key pairs")
        material, context = _material(Path(tmp), settings.sessions + 1)
        listener.bind((LOCALHOST, 0))
        listener.listen(socket.SOMAXCONN)
        gateway_port = int(listener.getsockname()[1])
        child, config = start_fixproxy(material, gateway_port,
                                       material.accounts[:settings.sessions],
                                       "soak-fleet-fixproxy")
        with child:
            if config.metrics.listen is None:
                raise BenchError("the generated configuration has no metrics address")
            fleet = _Fleet(settings, material, context, listener, child,
                           material.workdir / "soak-fleet-fixproxy.toml",
                           [session.listen[1] for session in config.sessions],
                           config.metrics.listen[1])
            _progress(f"soak fleet: {settings.sessions} sessions, {settings.duration:g} s at "
                      f"{settings.rate:g} orders/s each, fixproxy pid {child.pid}")
            trio.run(fleet.run)
            result = fleet.result()
            if not result["ok"]:
                result["fixproxy_log_tail"] = child.failure("the soak failed").args[0]
    result["started"] = dt.datetime.fromtimestamp(started, dt.UTC).isoformat()
    return result


def format_report(result: dict[str, Any]) -> str:
    """The summary printed at the end."""
    orders = result["orders"]
    base, end = result["baseline"] or {}, result["end"] or {}
    lines = [
        f"soak fleet: {result['settings']['sessions']} sessions, {result['duration_s']:.0f} s",
        f"  orders: sent {orders['sent']:,}, confirmed {orders['confirmed']:,}, in doubt "
        f"{orders['in_doubt']:,}, lost {orders['lost']:,}",
        f"  faults: {result['drops']['scheduled']} gateway drops "
        f"({result['drops']['connections_dropped']} connections), "
        f"{result['reconnects_requested']} engine reconnects, {result['reloads']['sent']} "
        f"reloads ({result['reloads']['ok']} ok), {result['scrapes']} scrapes; "
        f"{result['connections']} engine connections",
        f"  threads {base.get('threads')} -> {end.get('threads')} (a session's own "
        f"{base.get('session_threads')} -> {end.get('session_threads')}), descriptors "
        f"{base.get('fds')} -> {end.get('fds')}, RSS {base.get('rss_kib')} -> "
        f"{end.get('rss_kib')} KiB (baseline at {base.get('at_s')} s, end at "
        f"{end.get('at_s')} s)",
    ]
    lines += [f"  FAILED: {text}" for text in result["failures"]]
    lines.append("PASS" if result["ok"] else "FAIL")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fleet soak, print the summary, write the JSON; 0 unless it failed."""
    settings, json_path = parse_args(argv)
    try:
        result = run(settings)
    except FixProxyError as exc:
        print(f"soak fleet: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            print(f"soak fleet: error: cannot write {json_path}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(format_report(result))
    if "fixproxy_log_tail" in result:
        print(result["fixproxy_log_tail"], file=sys.stderr)
    return 0 if result["ok"] else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
