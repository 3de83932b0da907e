"""The benchmark's load engine, run as its own process: ``python3 -m bench.engine``.

Theory of operation
-------------------
The engine plays the trading firm's FIX engine in every configuration, with the same code
path: it connects (over TLS straight to the gateway, or over plain TCP to stunnel or fixproxy),
sends a Logon (signed by itself, or unsigned for fixproxy to sign), and then runs one workload
at a time on the open session:

* closed loop: one order in flight; the round-trip time of each is measured from just before
  ``sendall`` to the read that completes its ExecutionReport;
* pipelined: a window of orders in flight; each read's answers are replaced by as many new
  orders in one write, as a busy engine would batch them;
* open loop: orders are due at fixed times (``start + i / rate``) whether or not earlier ones
  were answered, and each latency is measured from the order's *scheduled* time, so a stall
  delays every order scheduled during it and shows up in the percentiles (measuring from the
  actual send would hide it: coordinated omission);
* open loop on many sessions at once (the many-sessions scenario): the same, with the
  sessions' schedules interleaved evenly and one ``select`` over all their sockets, in this
  one thread, so that the engine stays one cheap process however many connections it drives.

Every answer is checked: it must be an ExecutionReport whose ClOrdID (11) is the oldest order
still unanswered, so a lost, duplicated or reordered message fails the run. The hot loops use
blocking sockets and preformatted orders (:mod:`bench.wire`); the open loop waits with
``select`` (microsecond timeouts, where ``epoll`` rounds to milliseconds) after asking the TLS
layer for bytes it has already decrypted, with the process's timer slack cut from 50 us to
1 ns so that sends leave on time. How late they left anyway is returned with the latencies.

Time bounds cost nothing per message: each command arms an interval timer whose SIGALRM
handler raises, which interrupts a blocking read. The orchestrator sends JSON-line commands on
stdin and reads one JSON line per command; the end of stdin ends the process.
"""

from __future__ import annotations

import ctypes
import json
import select
import signal
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Final

from bench import BenchError
from bench.wire import (
    ENDPOINT,
    cl_ord_id_prefix,
    field,
    frames,
    heartbeat,
    logon,
    logout,
    order_template,
)
from fixproxy.errors import FixProxyError
from fixproxy.fix import tags
from fixproxy.fix.codec import SendingTimeClock
from fixproxy.signing import LogonSigner, load_private_key

RECEIVE_SIZE: Final = 65536
CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_COMMAND_TIMEOUT_S: Final = 60.0
SERVER_NAME: Final = "localhost"
PR_SET_TIMERSLACK: Final = 29
TIMER_SLACK_NS: Final = 1


class Session:
    """One logged-on connection and the orders it has in flight."""

    def __init__(self, sock: socket.socket, api_key: str, tag: str, rest: bytes) -> None:
        self.sock = sock
        self.api_key = api_key
        self.render = order_template(api_key).render
        self.stamp = SendingTimeClock()
        self.seq = 1
        self.prefix = cl_ord_id_prefix(tag)
        self.count = 0
        self.pending: deque[bytes] = deque()
        self.rest = rest
        self.buffered: Callable[[], int] = (
            sock.pending if isinstance(sock, ssl.SSLSocket) else lambda: 0)

    def order(self) -> bytes:
        """The next NewOrderSingle, remembered as awaiting its answer."""
        self.seq += 1
        self.count += 1
        cl_ord_id = self.prefix + b"%012d" % self.count
        self.pending.append(cl_ord_id)
        return self.render(b"%d" % self.seq, self.stamp(), cl_ord_id)

    def receive(self) -> int:
        """One read; returns how many ExecutionReports it completed, each checked in order.

        Raises:
            BenchError: the peer closed or logged out, or an answer is missing, extra or
                out of order.
        """
        chunk = self.sock.recv(RECEIVE_SIZE)
        if not chunk:
            raise BenchError(f"the connection closed with {len(self.pending)} orders "
                             f"unanswered")
        data = self.rest + chunk if self.rest else chunk
        found, tail = frames(data)
        self.rest = data[tail:]
        answered = 0
        pending = self.pending
        for start, end, msg_type in found:
            if msg_type == b"8":
                cl_ord_id = field(data, b"11", start, end)
                if not pending:
                    raise BenchError(f"an ExecutionReport for {cl_ord_id!r} that no order "
                                     f"asked for")
                expected = pending.popleft()
                if cl_ord_id != expected:
                    raise BenchError(f"answers out of order: expected ClOrdID {expected!r}, "
                                     f"got {cl_ord_id!r}")
                answered += 1
            elif msg_type == tags.MT_TEST_REQUEST:
                self.seq += 1
                self.sock.sendall(heartbeat(self.api_key, ENDPOINT, self.seq, self.stamp(),
                                            field(data, b"112", start, end) or b""))
            elif msg_type != tags.MT_HEARTBEAT:
                text = field(data, b"58", start, end) or b""
                raise BenchError(f"unexpected 35={msg_type.decode('ascii', 'replace')} "
                                 f"during the run: {text.decode('ascii', 'replace')}")
        return answered

    def close(self, half_close: bool) -> None:
        """Log out, wait for the answer, then close.

        With ``half_close`` (plain TCP to a middle process), send FIN and read to the end, so
        the middle has torn the session down before the next one starts.
        """
        self.seq += 1
        self.sock.sendall(logout(self.api_key, ENDPOINT, self.seq, self.stamp()))
        data = self.rest
        while True:
            found, _ = frames(data)
            if any(msg_type == tags.MT_LOGOUT for _, _, msg_type in found):
                break
            chunk = self.sock.recv(RECEIVE_SIZE)
            if not chunk:
                raise BenchError("the connection closed before the Logout answer")
            data += chunk
        if half_close:
            self.sock.shutdown(socket.SHUT_WR)
            while self.sock.recv(RECEIVE_SIZE):
                pass
        self.sock.close()


class Engine:
    """Sessions by name, and the workloads run on them."""

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None
        self.signers: dict[str, LogonSigner] = {}
        self.sessions: dict[str, Session] = {}
        self.stamp = SendingTimeClock()

    def setup(self, ca: str, keys: dict[str, str]) -> dict[str, Any]:
        """Trust ``ca`` for direct TLS and load each API key's private key."""
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context = context
        self.signers = {api_key: LogonSigner(load_private_key(Path(path)))
                        for api_key, path in keys.items()}
        return {}

    def _connect(self, port: int, tls: bool, sign: bool, api_key: str,
                 tag: str) -> tuple[Session, int]:
        started = time.perf_counter_ns()
        raw = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(None)
        sock = raw
        if tls:
            if self.context is None:
                raise BenchError("setup was not run")
            sock = self.context.wrap_socket(raw, server_hostname=SERVER_NAME)
        signer = self.signers[api_key] if sign else None
        sock.sendall(logon(api_key, self.stamp(), signer))
        data = b""
        while True:
            found, _ = frames(data)
            if found:
                break
            chunk = sock.recv(RECEIVE_SIZE)
            if not chunk:
                sock.close()
                raise BenchError(f"port {port} closed the connection before answering the "
                                 f"Logon")
            data += chunk
        elapsed = time.perf_counter_ns() - started
        start, end, msg_type = found[0]
        if msg_type != tags.MT_LOGON:
            text = (field(data, b"58", start, end) or b"").decode("ascii", "replace")
            sock.close()
            raise BenchError(f"Logon answered with 35={msg_type.decode('ascii', 'replace')}"
                             f": {text}")
        return Session(sock, api_key, tag, data[end:]), elapsed

    def open(self, name: str, port: int, tls: bool, sign: bool,
             api_key: str) -> dict[str, Any]:
        """Connect and log on; the session stays open under ``name``."""
        if name in self.sessions:
            raise BenchError(f"session {name!r} is already open")
        session, elapsed = self._connect(port, tls, sign, api_key, name)
        self.sessions[name] = session
        return {"logon_ns": elapsed}

    def logons(self, port: int, tls: bool, sign: bool, api_key: str,
               count: int) -> dict[str, Any]:
        """Connect, log on, log out ``count`` times; the Logon times."""
        times = []
        for _ in range(count):
            session, elapsed = self._connect(port, tls, sign, api_key, "logon")
            session.close(half_close=not tls)
            times.append(elapsed)
        return {"logon_ns": times}

    def close(self, name: str) -> dict[str, Any]:
        """Log out and close session ``name``."""
        session = self.sessions.pop(name)
        session.close(half_close=not isinstance(session.sock, ssl.SSLSocket))
        return {"orders": session.count}

    def closed_loop(self, name: str, count: int, warmup: int) -> dict[str, Any]:
        """One order in flight; the round-trip times of ``count`` orders after ``warmup``."""
        session = self.sessions[name]
        sendall = session.sock.sendall
        receive = session.receive
        order = session.order
        clock = time.perf_counter_ns
        rtts = []
        for index in range(warmup + count):
            message = order()
            started = clock()
            sendall(message)
            while not receive():
                pass
            if index >= warmup:
                rtts.append(clock() - started)
        return {"rtt_ns": rtts}

    def pipelined(self, name: str, count: int, window: int) -> dict[str, Any]:
        """``window`` orders in flight until ``count`` are answered; the elapsed time."""
        session = self.sessions[name]
        sendall = session.sock.sendall
        receive = session.receive
        order = session.order
        started = time.perf_counter_ns()
        sent = min(window, count)
        sendall(b"".join([order() for _ in range(sent)]))
        answered = 0
        while answered < count:
            done = receive()
            answered += done
            if done and sent < count:
                more = min(done, count - sent)
                sendall(b"".join([order() for _ in range(more)]))
                sent += more
        return {"elapsed_ns": time.perf_counter_ns() - started, "orders": count}

    def open_loop(self, name: str, count: int, rate: float) -> dict[str, Any]:
        """``count`` orders due at ``rate`` per second; latency from each scheduled time."""
        session = self.sessions[name]
        sock = session.sock
        sendall = sock.sendall
        receive = session.receive
        order = session.order
        buffered = session.buffered
        clock = time.perf_counter_ns
        interval = 1e9 / rate
        begin = clock() + 1_000_000

        def due(index: int) -> int:
            return begin + int(index * interval)

        latencies = [0] * count
        lags: list[int] = []
        sent = answered = 0
        while answered < count:
            now = clock()
            if sent < count and due(sent) <= now:
                lags.append(now - due(sent))
                batch = []
                while sent < count and due(sent) <= now:
                    batch.append(order())
                    sent += 1
                sendall(b"".join(batch))
                continue
            if not buffered():
                wait = (due(sent) - now) / 1e9 if sent < count else DEFAULT_COMMAND_TIMEOUT_S
                readable, _, _ = select.select([sock], [], [], wait)
                if not readable:
                    continue
            done = receive()
            if done:
                arrived = clock()
                for index in range(answered, answered + done):
                    latencies[index] = arrived - due(index)
                answered += done
        return {"latency_ns": latencies, "send_lag_ns": lags}

    def open_loop_many(self, names: list[str], count: int, rate: float) -> dict[str, Any]:
        """``count`` orders on each of the sessions ``names``, due at ``rate`` per second on
        each; latency from each scheduled time, in one thread.

        The sessions' schedules interleave evenly: order ``k`` of the whole run is due at
        ``start + k / (rate * len(names))`` on session ``k % len(names)``, so the process
        sends at the combined rate without bursts. Orders due at once go out in one write
        per session. One ``select`` waits on every socket; each ready one is read once.
        """
        sessions = [self.sessions[name] for name in names]
        width = len(sessions)
        total = width * count
        socks = [session.sock for session in sessions]
        index_of = {id(sock): index for index, sock in enumerate(socks)}
        waiting: list[deque[int]] = [deque() for _ in sessions]
        clock = time.perf_counter_ns
        interval = 1e9 / (rate * width)
        begin = clock() + 1_000_000

        def due(number: int) -> int:
            return begin + int(number * interval)

        latencies = [0] * total
        lags: list[int] = []
        sent = answered = 0
        while answered < total:
            now = clock()
            if sent < total and due(sent) <= now:
                lags.append(now - due(sent))
                batches: dict[int, list[bytes]] = {}
                while sent < total and due(sent) <= now:
                    index = sent % width
                    batches.setdefault(index, []).append(sessions[index].order())
                    waiting[index].append(sent)
                    sent += 1
                for index, batch in batches.items():
                    socks[index].sendall(batch[0] if len(batch) == 1 else b"".join(batch))
                continue
            ready = [index for index, session in enumerate(sessions) if session.buffered()]
            if not ready:
                wait = (due(sent) - now) / 1e9 if sent < total else DEFAULT_COMMAND_TIMEOUT_S
                readable, _, _ = select.select(socks, [], [], wait)
                if not readable:
                    continue
                ready = [index_of[id(sock)] for sock in readable]
            for index in ready:
                done = sessions[index].receive()
                if done:
                    arrived = clock()
                    queue = waiting[index]
                    for _ in range(done):
                        number = queue.popleft()
                        latencies[number] = arrived - due(number)
                    answered += done
        return {"latency_ns": latencies, "send_lag_ns": lags}

    def close_all(self) -> dict[str, Any]:
        """Log out every open session; the orders they sent."""
        return {"orders": sum(self.close(name)["orders"] for name in list(self.sessions))}


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BenchError("the command ran out of time")


def _dispatch(engine: Engine, request: dict[str, Any]) -> dict[str, Any]:
    command = request.pop("cmd")
    request.pop("timeout", None)
    handlers: dict[str, Callable[..., dict[str, Any]]] = {
        "setup": engine.setup, "open": engine.open, "logons": engine.logons,
        "close": engine.close, "close_all": engine.close_all,
        "closed_loop": engine.closed_loop, "pipelined": engine.pipelined,
        "open_loop": engine.open_loop, "open_loop_many": engine.open_loop_many,
    }
    handler = handlers.get(command)
    if handler is None:
        raise BenchError(f"unknown command {command!r}")
    return handler(**request)


def _precise_timers() -> None:
    # Linux lets a sleeping thread's timer fire up to 50 us late by default (timer slack) so
    # that wake-ups can be batched; every open-loop send waits on such a timer.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS)


def main() -> int:
    """Serve JSON-line commands from stdin until ``quit`` or the end of stdin."""
    signal.signal(signal.SIGALRM, _on_alarm)
    _precise_timers()
    engine = Engine()
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("cmd") == "quit":
            break
        signal.setitimer(signal.ITIMER_REAL, float(request.get("timeout",
                                                               DEFAULT_COMMAND_TIMEOUT_S)))
        try:
            answer = {"ok": True, **_dispatch(engine, request)}
        except (FixProxyError, OSError, KeyError, TypeError, ValueError) as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
