"""The benchmark's TLS gateway, run as its own process: ``python3 -m bench.gateway CONFIG``.

Theory of operation
-------------------
The gateway stands in for Kalshi's KalshiNR endpoint at the far end of every configuration, so
it must do what Kalshi does once per connection (a TLS 1.2+ handshake, then check the Logon:
registered SenderCompID, 56=KalshiNR, 34=1 with 141=Y, 95 right before 96, and the RSA-PSS
signature over ``52|A|34|49|56`` with fixproxy's own verifier) and then be as cheap as
possible per message, because its cost lands in every measured round trip.

``fixproxy.sim.SimGateway`` was rejected for the load path: it runs under trio, whose
``SSLStream`` pumps TLS through memory BIOs in Python, and it parses every order into fields.
Here each connection is one thread doing blocking ``recv``/``sendall`` on an ``ssl.SSLSocket``
(the TLS record work stays in C), and an order costs a frame-end lookup, one ``find`` for
ClOrdID (11) and one preformatted ExecutionReport (:mod:`bench.wire`). All answers to one read
go out in one write, as a real gateway's would. In the rounds only one connection is busy at
a time, so the threads do not contend for the GIL. In the many-sessions scenario (20 API keys
registered, 20 connections at 250 orders/s each) they do, a little: an order takes a few
microseconds of the GIL, so at 5,000 orders/s a thread woken by its socket seldom finds it
taken, and when it does, the wait is the same whichever middle process is measured. Its CPU
per order is reported with the scenario.

The orchestrator talks to this process over stdin/stdout in JSON lines: the first line out is
``{"port": N}``; ``{"cmd": "stats"}`` returns the counters; ``quit`` or the end of stdin ends
the process, so it cannot outlive its parent.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from bench import BenchError
from bench.wire import (
    ENDPOINT,
    execution_report_template,
    field,
    frames,
    heartbeat,
    logon_answer,
    logout,
)
from fixproxy.errors import FixProxyError, FramingError
from fixproxy.fix import tags
from fixproxy.fix.codec import SendingTimeClock, iter_fields
from fixproxy.signing import load_public_key, verify_signature

RECEIVE_SIZE: Final = 65536
LOGON_TIMEOUT_S: Final = 10.0
"""Handshake plus Logon must arrive within this; later silence is a normal idle session."""
LINGER_S: Final = 2.0
"""After answering a Logout, how long to wait for the peer to close first (no RST on data)."""
MAX_NOTES: Final = 10
"""Refusal texts and errors kept for the report; counts are kept regardless."""


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """What the gateway process is told at start (a JSON file)."""

    cert: Path
    key: Path
    public_keys: dict[str, Path]
    """API key -> RSA public key (PEM) registered for it."""

    @classmethod
    def load(cls, path: Path) -> GatewaySpec:
        """Read the JSON written by :meth:`dump`."""
        raw = json.loads(path.read_text())
        return cls(Path(raw["cert"]), Path(raw["key"]),
                   {key: Path(value) for key, value in raw["public_keys"].items()})

    def dump(self, path: Path) -> None:
        """Write the spec for the gateway process to read."""
        path.write_text(json.dumps({
            "cert": str(self.cert), "key": str(self.key),
            "public_keys": {key: str(value) for key, value in self.public_keys.items()}}))


class _Refused(Exception):
    """Internal: answer the Logon with a Logout carrying this text."""


class _Conn:
    """Counters of one connection, read by the stats command from another thread."""

    __slots__ = ("logged_on", "orders")

    def __init__(self) -> None:
        self.logged_on = False
        self.orders = 0


class Gateway:
    """Accepts TLS connections and serves each in its own thread until its peer closes."""

    def __init__(self, spec: GatewaySpec) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            self.context.load_cert_chain(spec.cert, spec.key)
        except OSError as exc:
            raise BenchError(f"gateway certificate cannot be loaded: {exc}") from exc
        self.keys: dict[str, RSAPublicKey] = {
            api_key: load_public_key(path) for api_key, path in spec.public_keys.items()}
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self.connections = 0
        self.logons = 0
        self.refused = 0
        self.closed_before_logon = 0
        self.notes: list[str] = []

    # ----- bookkeeping (any thread) -------------------------------------------------------

    def _note(self, text: str) -> None:
        with self._lock:
            if len(self.notes) < MAX_NOTES:
                self.notes.append(text)

    def stats(self) -> dict[str, object]:
        """Counters so far (sums over every connection, live ones included)."""
        with self._lock:
            conns = list(self._conns)
            return {
                "connections": self.connections, "logons": self.logons,
                "refused": self.refused, "closed_before_logon": self.closed_before_logon,
                "orders": sum(conn.orders for conn in conns),
                "live": sum(1 for conn in conns if conn.logged_on),
                "notes": list(self.notes),
            }

    # ----- serving ------------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        """Accept forever, one daemon thread per connection."""
        while True:
            sock, _ = listener.accept()
            threading.Thread(target=self._serve_connection, args=(sock,), daemon=True).start()

    def _serve_connection(self, raw: socket.socket) -> None:
        conn = _Conn()
        with self._lock:
            self.connections += 1
            self._conns.append(conn)
        stream: socket.socket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(LOGON_TIMEOUT_S)
            stream = self.context.wrap_socket(raw, server_side=True)
            self._session(stream, conn)
        except (OSError, FixProxyError, ValueError) as exc:
            self._note(f"connection error: {type(exc).__name__}: {exc}")
        finally:
            conn.logged_on = False
            stream.close()

    def _session(self, stream: socket.socket, conn: _Conn) -> None:
        stamp = SendingTimeClock()
        data = b""
        while True:
            found, _ = frames(data)
            if found:
                break
            chunk = stream.recv(RECEIVE_SIZE)
            if not chunk:
                with self._lock:
                    self.closed_before_logon += 1
                return
            data += chunk
        start, end, msg_type = found[0]
        try:
            api_key = self._admit(data[start:end], msg_type)
        except _Refused as refused:
            with self._lock:
                self.refused += 1
            self._note(f"Logon refused: {refused}")
            sender = field(data, b"49", start, end) or b"?"
            stream.sendall(logout(ENDPOINT, sender.decode("ascii", "replace"), 1, stamp(),
                                  str(refused)))
            self._linger(stream)
            return
        stream.sendall(logon_answer(api_key, stamp()))
        with self._lock:
            self.logons += 1
        conn.logged_on = True
        stream.settimeout(None)
        self._relay(stream, conn, api_key, data[end:], stamp)

    def _admit(self, raw: bytes, msg_type: bytes) -> str:
        """Check the Logon as Kalshi would; return the API key or raise _Refused."""
        if msg_type != tags.MT_LOGON:
            raise _Refused(f"the first message must be a Logon, got 35={msg_type!r}")
        try:
            fields = list(iter_fields(raw))
        except FramingError as exc:
            raise _Refused(f"malformed Logon: {exc}") from exc
        values = dict(fields)
        sender = values.get(tags.SENDER_COMP_ID, b"").decode("ascii", "replace")
        public_key = self.keys.get(sender)
        if public_key is None:
            raise _Refused(f"49={sender!r} is not a registered API key")
        if values.get(tags.TARGET_COMP_ID) != ENDPOINT.encode():
            raise _Refused(f"56 must be {ENDPOINT}")
        if values.get(tags.RESET_SEQ_NUM_FLAG) != b"Y" or values.get(tags.MSG_SEQ_NUM) != b"1":
            raise _Refused("141=Y and 34=1 are required on KalshiNR")
        if values.get(tags.DEFAULT_APPL_VER_ID) != b"9" or values.get(tags.ENCRYPT_METHOD) != b"0":
            raise _Refused("1137=9 and 98=0 are required")
        order = [tag for tag, _ in fields]
        if tags.RAW_DATA not in values or tags.RAW_DATA_LENGTH not in values:
            raise _Refused("the Logon is not signed (95/96 missing)")
        if order[order.index(tags.RAW_DATA_LENGTH) + 1] != tags.RAW_DATA:
            raise _Refused("95 must come right before 96")
        payload = b"\x01".join((values.get(tags.SENDING_TIME, b""), tags.MT_LOGON, b"1",
                                sender.encode(), ENDPOINT.encode()))
        if not verify_signature(public_key, payload, values[tags.RAW_DATA]):
            raise _Refused("signature verification failed")
        return sender

    def _relay(self, stream: socket.socket, conn: _Conn, api_key: str, rest: bytes,
               stamp: SendingTimeClock) -> None:
        """The hot loop: answer every NewOrderSingle with an ExecutionReport, in order."""
        render = execution_report_template(api_key).render
        recv = stream.recv
        sendall = stream.sendall
        seq = 1
        orders = 0
        try:
            while True:
                chunk = recv(RECEIVE_SIZE)
                if not chunk:
                    return
                data = rest + chunk if rest else chunk
                found, tail = frames(data)
                out: list[bytes] = []
                for start, end, msg_type in found:
                    if msg_type == b"D":
                        seq += 1
                        number = b"%d" % seq
                        now = stamp()
                        cl_ord_id = field(data, b"11", start, end)
                        if cl_ord_id is None:
                            raise BenchError("a NewOrderSingle without ClOrdID (11)")
                        out.append(render(number, now, number, cl_ord_id, number, now))
                        orders += 1
                    elif msg_type == tags.MT_LOGOUT:
                        seq += 1
                        out.append(logout(ENDPOINT, api_key, seq, stamp()))
                        sendall(b"".join(out))
                        self._linger(stream)
                        return
                    elif msg_type == tags.MT_TEST_REQUEST:
                        seq += 1
                        out.append(heartbeat(ENDPOINT, api_key, seq, stamp(),
                                             field(data, b"112", start, end) or b""))
                if out:
                    conn.orders = orders
                    sendall(out[0] if len(out) == 1 else b"".join(out))
                rest = data[tail:]
        finally:
            conn.orders = orders

    @staticmethod
    def _linger(stream: socket.socket) -> None:
        stream.settimeout(LINGER_S)
        try:
            while stream.recv(RECEIVE_SIZE):
                pass
        except OSError:
            pass


def _reply(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    """Serve until told to quit or stdin ends; report the port first."""
    if len(argv) != 1:
        _reply({"error": "usage: python3 -m bench.gateway SPEC.json"})
        return 2
    try:
        gateway = Gateway(GatewaySpec.load(Path(argv[0])))
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
    except (OSError, FixProxyError, KeyError, ValueError) as exc:
        _reply({"error": f"gateway cannot start: {exc}"})
        return 1
    threading.Thread(target=gateway.serve, args=(listener,), daemon=True).start()
    _reply({"port": listener.getsockname()[1]})
    for line in sys.stdin:
        command = json.loads(line).get("cmd")
        if command == "stats":
            _reply(gateway.stats())
        elif command == "quit":
            break
        else:
            _reply({"error": f"unknown command {command!r}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
