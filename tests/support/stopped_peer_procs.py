"""The two peers of the stopped-peer tests, each run as a process of its own so that a test can
SIGSTOP it: ``python3 -m support.stopped_peer_procs engine|gateway ...``.

``gateway`` serves KalshiNR with the strict simulator (:class:`~fixproxy.sim.gateway.SimGateway`,
what ``fixproxy sim`` runs) on an ephemeral port, with a given certificate. ``fixproxy sim``
itself prints nothing about the messages it exchanges, so this runner drains the simulator's
records every few milliseconds into a JSON-lines file: the bound port first, then one line per
message (connection, direction, MsgType, and the Text (58) of a Logout) and one per connection
that ended, with its reason.

``engine`` is a load engine: plain TCP to a fixproxy listener, an unsigned Logon with HeartBtInt
4 and ResetSeqNumFlag, then NewOrderSingles pipelined as fast as the socket takes them (or with
at most ``--window`` unanswered), while another task reads: each ExecutionReport, the Logout
and the end of the connection are written to its JSON-lines file, each line stamped with
``time.monotonic()`` (one clock for every process of the machine, so the test can set the
lines against its own moments). TestRequests are answered. It runs one session and exits when
the connection ends; an engine that reconnects is a new process.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from pathlib import Path
from typing import IO, Any, Final

import trio

from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimConfig, SimGateway, load_sim_keys

HEART_BT_INT: Final = 4
"""The smallest HeartBtInt the simulator accepts (it wants more than 3)."""
ENDPOINT: Final = "KalshiNR"
DRAIN_INTERVAL_S: Final = 0.02
ORDER_PREFIX: Final = b"demo-"
""":meth:`ScriptedEngine.new_order` numbers its ClOrdIDs ``demo-1``, ``demo-2``, ..."""


class _Lines:
    """A JSON-lines file, each line stamped with ``time.monotonic()``."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("w", encoding="utf-8")

    def note(self, **fields: Any) -> None:
        self._file.write(json.dumps({"t": time.monotonic(), **fields}) + "\n")

    def flush(self) -> None:
        self._file.flush()


# ----- gateway ------------------------------------------------------------------------------

async def run_gateway(out: _Lines, keys: list[str], cert: Path, key: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    sim = SimGateway(SimConfig(ports={ENDPOINT: 0}, keys=load_sim_keys(keys)), context)
    async with trio.open_nursery() as nursery:
        bound: dict[str, tuple[str, int]] = await nursery.start(sim.serve)
        out.note(port=bound[ENDPOINT][1])
        out.flush()
        reported: set[int] = set()
        while True:
            await trio.sleep(DRAIN_INTERVAL_S)
            while sim.events:
                event = sim.events.popleft()
                line: dict[str, Any] = {"conn": event.conn_id, "dir": event.direction,
                                        "type": event.msg_type.decode()}
                if event.msg_type == tags.MT_LOGOUT:
                    line["text"] = FixMessage.parse(event.raw).get_str(tags.TEXT)
                out.note(**line)
            for conn_id, reason in list(sim.closed.items()):
                if conn_id not in reported:
                    reported.add(conn_id)
                    out.note(closed=conn_id, reason=reason)
            out.flush()


# ----- engine -------------------------------------------------------------------------------

class _Load:
    """One logged-on session of the load engine."""

    def __init__(self, engine: ScriptedEngine, out: _Lines, window: int) -> None:
        self.engine = engine
        self.out = out
        self.window = window
        self.sent = 0
        self.answered = 0
        self.lock = trio.Lock()
        self.answered_changed = trio.Event()

    async def send(self) -> None:
        try:
            while True:
                while self.window and self.sent - self.answered >= self.window:
                    await self.answered_changed.wait()
                async with self.lock:
                    await self.engine.new_order()
                self.sent += 1
                # The scripted engine keeps a transcript; a load engine has no use for it.
                self.engine.transcript.clear()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.out.note(e="send_failed", error=str(exc.__cause__ or exc), sent=self.sent)

    async def receive(self, cancel: trio.CancelScope) -> None:
        while True:
            message = await self.engine.receive()
            if message is None:
                self.out.note(e="eof", sent=self.sent, answered=self.answered)
                self.out.flush()
                cancel.cancel()
                return
            kind = message.msg_type
            if kind == tags.MT_EXECUTION_REPORT:
                cl_ord_id = message.get(11) or b""
                self.answered += 1
                self.answered_changed.set()
                self.answered_changed = trio.Event()
                self.out.note(e="er", n=int(cl_ord_id.removeprefix(ORDER_PREFIX) or 0))
            elif kind == tags.MT_TEST_REQUEST:
                async with self.lock:
                    await self.engine.send(tags.MT_HEARTBEAT, [
                        (tags.TEST_REQ_ID, message.get(tags.TEST_REQ_ID) or b"")])
            elif kind == tags.MT_LOGOUT:
                self.out.note(e="logout", text=message.get_str(tags.TEXT))
            elif kind != tags.MT_HEARTBEAT:
                self.out.note(e="other", type=kind.decode(), text=message.get_str(tags.TEXT))
            if not self.framer_pending():
                self.out.flush()

    def framer_pending(self) -> bool:
        return self.engine.framer.buffered > 0


async def run_engine(out: _Lines, host: str, port: int, sender: str, window: int) -> None:
    stream = await trio.open_tcp_stream(host, port)
    engine = ScriptedEngine(stream, sender=sender, target=ENDPOINT)
    try:
        answer = await engine.logon(heart_bt_int=HEART_BT_INT, reset=True)
        if answer is None or answer.msg_type != tags.MT_LOGON:
            out.note(e="refused", text=None if answer is None else answer.get_str(tags.TEXT))
            return
        out.note(e="logon")
        out.flush()
        load = _Load(engine, out, window)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load.send)
            nursery.start_soon(load.receive, nursery.cancel_scope)
    finally:
        await trio.aclose_forcefully(stream)
        out.flush()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m support.stopped_peer_procs")
    commands = parser.add_subparsers(dest="command", required=True)
    gateway = commands.add_parser("gateway")
    gateway.add_argument("--out", type=Path, required=True)
    gateway.add_argument("--cert", type=Path, required=True)
    gateway.add_argument("--cert-key", type=Path, required=True)
    gateway.add_argument("--key", action="append", required=True, metavar="APIKEY=PUBLIC.pem")
    engine = commands.add_parser("engine")
    engine.add_argument("--out", type=Path, required=True)
    engine.add_argument("--port", type=int, required=True)
    engine.add_argument("--sender", required=True)
    engine.add_argument("--window", type=int, default=0)
    args = parser.parse_args(argv)
    out = _Lines(args.out)
    if args.command == "gateway":
        trio.run(run_gateway, out, args.key, args.cert, args.cert_key)
    else:
        trio.run(run_engine, out, "127.0.0.1", args.port, args.sender, args.window)


if __name__ == "__main__":
    main(sys.argv[1:])
