"""The bare thread relay: fixproxy's data-plane design with none of its FIX work.

Theory of operation
-------------------
One OS thread per engine connection, as in fixproxy's data plane (``fixproxy/proxy/relay.py``):
after accepting plain TCP, the thread connects to the gateway, completes the TLS handshake with
fixproxy's client context (TLS 1.2+, its cipher list, the chain checked against the CA file and
the name, no pins) in blocking mode with a time limit, and then relays in a synchronous
non-blocking loop: ``select.poll`` over the engine socket, the gateway's non-blocking
``ssl.SSLSocket`` and a wake-up pipe, one ``recv`` of up to 64 KiB per readable socket and one
``send`` of it, what a peer does not take kept for ``POLLOUT``, and the other side not read
while that holds more than 256 KiB. The ``SSLSocket`` may hold decrypted bytes that ``poll``
cannot see, so ``pending()`` is asked after every pass, as the relay does. Nothing is framed,
counted or inspected, and the engine signs its own Logon (as with stunnel).

Its column in the benchmark splits what fixproxy adds over stunnel into what the thread design
costs in Python (this process against stunnel) and what fixproxy's FIX work costs on top
(fixproxy against this process). The wake-up pipe is never written during a run; it is in the
poll set because the relay's is, so that the two loops wait on the same number of descriptors.
The process sets the same GIL switch interval fixproxy is run with, and ends on SIGTERM (the
default action; its threads are daemons).

With ``shared`` as the last argument the same loop runs once for every connection: one relay
thread polls all of them (each connection's handshake still has a thread of its own, which
hands the connected pair over through a queue and the wake-up pipe). Scenario 1 runs both
shapes, so the report shows what a thread per session costs once many sessions share the
interpreter lock, against one data-plane thread that takes every ready socket in one pass.

Run by the benchmark as
``python3 -m bench.pyrelay LISTEN_PORT GATEWAY_PORT CA_FILE NAME SWITCH_INTERVAL [shared]``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fixproxy.config.model import TLSPolicy
from fixproxy.net.tls import make_client_context

RECEIVE_SIZE: Final = 65536
"""Bytes asked of a socket per read, as fixproxy's relay asks."""
MAX_PENDING_BYTES: Final = 256 * 1024
"""Output waiting for a slow peer above which the other side is not read (fixproxy's bound)."""
CONNECT_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0
"""After one side ended, how long the other keeps writing what it was given."""
LISTEN_BACKLOG: Final = 64

_IN: Final = select.POLLIN
_OUT: Final = select.POLLOUT
_GONE: Final = select.POLLERR | select.POLLHUP | select.POLLNVAL
_WOULD_BLOCK: Final = (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                       ssl.SSLWantWriteError)


@dataclass(slots=True)
class _Leg:
    sock: socket.socket
    pending: bytes = b""
    readable: bool = True
    writable: bool = True


def _read(src: _Leg, dst: _Leg) -> None:
    try:
        data = src.sock.recv(RECEIVE_SIZE)
    except _WOULD_BLOCK:
        return
    except OSError:
        data = b""
    if not data:
        src.readable = False
        return
    _send(dst, data)


def _send(dst: _Leg, data: bytes) -> None:
    if not dst.writable:
        return
    if dst.pending:
        dst.pending += data
        return
    dst.pending = data
    _flush(dst)


def _flush(dst: _Leg) -> None:
    if not dst.pending or not dst.writable:
        return
    try:
        sent = dst.sock.send(dst.pending)
    except _WOULD_BLOCK:
        return
    except OSError:
        dst.writable = False
        dst.readable = False
        dst.pending = b""
        return
    dst.pending = dst.pending[sent:]


def relay(engine: socket.socket, gateway: ssl.SSLSocket, wake: int) -> None:
    """Copy bytes both ways until one side ends and the other has been given what was read."""
    engine.setblocking(False)
    gateway.setblocking(False)
    left, right = _Leg(engine), _Leg(gateway)
    engine_fd, gateway_fd = engine.fileno(), gateway.fileno()
    poller = select.poll()
    poller.register(wake, _IN)
    registered: dict[int, int] = {}
    closing_since: float | None = None
    while True:
        if closing_since is None and not (left.readable and right.readable):
            closing_since = time.monotonic()
        if closing_since is not None and (
                not (left.pending or right.pending)
                or time.monotonic() > closing_since + CLOSE_TIMEOUT_S):
            return
        open_ = closing_since is None
        engine_mask = (_OUT if left.pending else 0) | (
            _IN if open_ and len(right.pending) < MAX_PENDING_BYTES else 0)
        gateway_mask = (_OUT if right.pending else 0) | (
            _IN if open_ and len(left.pending) < MAX_PENDING_BYTES else 0)
        for fd, mask in ((engine_fd, engine_mask), (gateway_fd, gateway_mask)):
            if registered.get(fd, 0) != mask:
                # Waiting on a descriptor for nothing would report POLLHUP in a spin.
                if mask:
                    poller.register(fd, mask)
                else:
                    poller.unregister(fd)
                registered[fd] = mask
        buffered = open_ and gateway.pending() and len(left.pending) < MAX_PENDING_BYTES
        timeout = 0 if buffered else (None if open_ else int(CLOSE_TIMEOUT_S * 1000))
        for fd, mask in poller.poll(timeout):
            if fd == wake:
                return
            leg, other = (left, right) if fd == engine_fd else (right, left)
            if mask & _OUT or (mask & _GONE and leg.pending):
                _flush(leg)
            if mask & (_IN | _GONE) and open_ and leg.readable:
                _read(leg, other)
        if open_ and right.readable and gateway.pending() \
                and len(left.pending) < MAX_PENDING_BYTES:
            _read(right, left)


@dataclass(slots=True, eq=False)
class _Pair:
    """One connection of the shared relay: its two legs and what poll is asked of them."""

    left: _Leg
    right: _Leg
    gateway: ssl.SSLSocket
    engine_fd: int
    gateway_fd: int
    registered: dict[int, int]
    closing_since: float | None = None


def _pass(pair: _Pair, events: list[tuple[int, int]]) -> None:
    """One connection's share of a poll: what ``relay`` does with its events."""
    left, right = pair.left, pair.right
    open_ = pair.closing_since is None
    for fd, mask in events:
        leg, other = (left, right) if fd == pair.engine_fd else (right, left)
        if mask & _OUT or (mask & _GONE and leg.pending):
            _flush(leg)
        if mask & (_IN | _GONE) and open_ and leg.readable:
            _read(leg, other)
    if open_ and right.readable and pair.gateway.pending() \
            and len(left.pending) < MAX_PENDING_BYTES:
        _read(right, left)


def _arm(pair: _Pair, poller: select.poll) -> bool:
    """Register what ``pair`` waits for now; False once it is finished (then unregistered)."""
    left, right = pair.left, pair.right
    if pair.closing_since is None and not (left.readable and right.readable):
        pair.closing_since = time.monotonic()
    if pair.closing_since is not None and (
            not (left.pending or right.pending)
            or time.monotonic() > pair.closing_since + CLOSE_TIMEOUT_S):
        for fd in pair.registered:
            if pair.registered[fd]:
                poller.unregister(fd)
        return False
    open_ = pair.closing_since is None
    engine_mask = (_OUT if left.pending else 0) | (
        _IN if open_ and len(right.pending) < MAX_PENDING_BYTES else 0)
    gateway_mask = (_OUT if right.pending else 0) | (
        _IN if open_ and len(left.pending) < MAX_PENDING_BYTES else 0)
    for fd, mask in ((pair.engine_fd, engine_mask), (pair.gateway_fd, gateway_mask)):
        if pair.registered.get(fd, 0) != mask:
            if mask:
                poller.register(fd, mask)
            elif pair.registered.get(fd, 0):
                poller.unregister(fd)
            pair.registered[fd] = mask
    return True


def shared_relay(inbox: queue.SimpleQueue[tuple[socket.socket, ssl.SSLSocket]],
                 wake: int) -> None:
    """Relay every connection handed over through ``inbox`` in this one thread, forever.

    Only connections that had events (or a decrypted record waiting) are looked at after a
    poll, so a pass costs what is ready, not what is connected.
    """
    poller = select.poll()
    poller.register(wake, _IN)
    by_fd: dict[int, _Pair] = {}
    buffered: set[_Pair] = set()
    while True:
        timeout = 0 if buffered else (CLOSE_TIMEOUT_S * 1000 if any(
            pair.closing_since is not None for pair in by_fd.values()) else None)
        ready: dict[_Pair, list[tuple[int, int]]] = {pair: [] for pair in buffered}
        for fd, mask in poller.poll(timeout):
            if fd == wake:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 512)
                while not inbox.empty():
                    engine, gateway = inbox.get()
                    engine.setblocking(False)
                    gateway.setblocking(False)
                    pair = _Pair(_Leg(engine), _Leg(gateway), gateway, engine.fileno(),
                                 gateway.fileno(), {})
                    by_fd[pair.engine_fd] = by_fd[pair.gateway_fd] = pair
                    ready[pair] = []
                continue
            pair = by_fd[fd]
            ready.setdefault(pair, []).append((fd, mask))
        for pair, events in ready.items():
            _pass(pair, events)
        buffered.clear()
        for pair in ready:
            if not _arm(pair, poller):
                del by_fd[pair.engine_fd], by_fd[pair.gateway_fd]
                pair.gateway.close()
                pair.left.sock.close()
            elif pair.closing_since is None and pair.right.readable \
                    and pair.gateway.pending() \
                    and len(pair.left.pending) < MAX_PENDING_BYTES:
                buffered.add(pair)
        if any(pair.closing_since is not None for pair in by_fd.values()):
            # A closing connection is looked at again when its time is up, events or not.
            for pair in [p for p in set(by_fd.values()) if p.closing_since is not None]:
                if not _arm(pair, poller):
                    del by_fd[pair.engine_fd], by_fd[pair.gateway_fd]
                    pair.gateway.close()
                    pair.left.sock.close()


def _connect(engine: socket.socket, context: ssl.SSLContext, gateway_port: int,
             server_name: str) -> ssl.SSLSocket:
    """The gateway's side of a new connection, its handshake done (blocking, time-limited)."""
    engine.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw = socket.create_connection(("127.0.0.1", gateway_port), timeout=CONNECT_TIMEOUT_S)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        # The handshake runs in blocking mode under the connect timeout, and verifies the
        # chain and the name before any byte of the engine's is sent.
        return context.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def _hand_over(engine: socket.socket, context: ssl.SSLContext, gateway_port: int,
               server_name: str, inbox: queue.SimpleQueue[tuple[socket.socket, ssl.SSLSocket]],
               wake: int) -> None:
    try:
        gateway = _connect(engine, context, gateway_port, server_name)
    except OSError as exc:
        print(f"python-relay: connection failed: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        engine.close()
        return
    inbox.put((engine, gateway))
    with contextlib.suppress(BlockingIOError):
        os.write(wake, b"!")


def _serve(engine: socket.socket, context: ssl.SSLContext, gateway_port: int,
           server_name: str) -> None:
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    gateway: ssl.SSLSocket | None = None
    try:
        gateway = _connect(engine, context, gateway_port, server_name)
        relay(engine, gateway, wake_read)
    except OSError as exc:
        print(f"python-relay: connection ended: {type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)
    finally:
        if gateway is not None:
            gateway.close()
        engine.close()
        os.close(wake_read)
        os.close(wake_write)


def main(argv: list[str]) -> int:
    """Accept on 127.0.0.1 forever, one relay thread per connection (or one for all)."""
    listen_port, gateway_port, ca_file, server_name, interval, *mode = argv
    sys.setswitchinterval(float(interval))
    policy = TLSPolicy(server_name=server_name, verify="ca", ca_file=Path(ca_file), pins=(),
                       pinned_cert=None)
    context = make_client_context(policy)
    listener = socket.create_server(("127.0.0.1", int(listen_port)), backlog=LISTEN_BACKLOG)
    if mode == ["shared"]:
        inbox: queue.SimpleQueue[tuple[socket.socket, ssl.SSLSocket]] = queue.SimpleQueue()
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        threading.Thread(target=shared_relay, args=(inbox, wake_read), daemon=True).start()
        while True:
            engine, _ = listener.accept()
            threading.Thread(target=_hand_over, args=(engine, context, int(gateway_port),
                                                      server_name, inbox, wake_write),
                             daemon=True).start()
    while True:
        engine, _ = listener.accept()
        threading.Thread(target=_serve, args=(engine, context, int(gateway_port), server_name),
                         daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
