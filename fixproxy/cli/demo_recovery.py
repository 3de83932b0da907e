"""``fixproxy demo --recovery``: a fill missed across a dropped connection, recovered.

The simulated gateway serves KalshiNR and KalshiDC and fills each order a moment after it
arrives. A scripted engine logs on through fixproxy and places orders; the gateway drops the
connection; the orders fill while the engine is away; the engine logs on again, and fixproxy,
configured with ``[session.recovery]``, replays the missed fills from the drop copy and
delivers them (97=Y) right after the Logon answer, before live traffic. All keys and
certificates are throwaway.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio
from prometheus_client import CollectorRegistry

from fixproxy.config.model import (
    Config,
    GatewayConfig,
    MetricsConfig,
    RecoveryConfig,
    SessionConfig,
    TLSPolicy,
)
from fixproxy.errors import FixProxyError
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.kalshi import ENDPOINTS
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.server import BoundAddresses, serve_proxy
from fixproxy.signing import generate_key_pair, load_public_key
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimConfig, SimGateway

Echo = Callable[[str], object]
FILL_AFTER: Final = 1.0
"""Seconds after which the simulated gateway fills each order."""
DEMO_TIMEOUT: Final = 30.0
SYMBOLS: Final = ("KXHIGHNY-26JAN01-B40", "KXHIGHNY-26JAN01-B42", "KXHIGHNY-26JAN01-B44")


async def run_recovery_demo(*, orders: int, echo: Echo) -> None:
    """Run the recovery demo and print what the engine saw."""
    with tempfile.TemporaryDirectory(prefix="fixproxy-demo-") as tmp, \
            trio.fail_after(DEMO_TIMEOUT):
        workdir = Path(tmp)
        certs = generate_certificates("localhost")
        cert_files = certs.write(workdir / "certs")
        key_path, public_path = generate_key_pair(workdir / "keys")
        dc_key_path, dc_public_path = generate_key_pair(workdir / "keys", "drop-copy")
        api_key, dc_key = str(uuid.uuid4()), str(uuid.uuid4())
        sim = SimGateway(SimConfig(
            ports={"KalshiNR": 0, "KalshiDC": 0}, fill_after=FILL_AFTER, exchange_indexes=2,
            keys={api_key: load_public_key(public_path),
                  dc_key: load_public_key(dc_public_path)}), certs.server_context())
        async with trio.open_nursery() as nursery:
            gateways: dict[str, tuple[str, int]] = await nursery.start(sim.serve)
            tls = TLSPolicy(server_name=certs.hostname, verify="ca+pin",
                            ca_file=cert_files.ca_cert, pins=(certs.leaf_pin,),
                            pinned_cert=None)
            session = SessionConfig(
                name="demo", listen=("127.0.0.1", 0), endpoint=ENDPOINTS["KalshiNR"],
                host=gateways["KalshiNR"][0], port=gateways["KalshiNR"][1], api_key=api_key,
                private_key=key_path, tls=tls,
                recovery=RecoveryConfig(api_key=dc_key, private_key=dc_key_path,
                                        host=gateways["KalshiDC"][0],
                                        port=gateways["KalshiDC"][1], tls=tls))
            config = Config(gateway=GatewayConfig(), metrics=MetricsConfig(listen=None),
                            sessions=(session,))
            metrics = Metrics(CollectorRegistry())
            bound: BoundAddresses = await nursery.start(serve_proxy, config, metrics)
            address = bound.sessions["demo"]
            echo(f"simulated Kalshi: KalshiNR {_at(gateways['KalshiNR'])}, KalshiDC "
                 f"{_at(gateways['KalshiDC'])}; orders fill {FILL_AFTER:g} s after they "
                 f"arrive")
            echo(f"fixproxy for the engine: {_at(address)}, with [session.recovery] "
                 f"(drop-copy key {dc_key})")
            echo("")
            await _first_connection(sim, address, api_key, orders, echo)
            due = sim.venue.account.last_due()
            if due is not None:
                await trio.sleep_until(due)
            echo(f"... {orders} order(s) filled at the simulated exchange while the engine "
                 f"was away")
            await _second_connection(address, api_key, orders, echo)
            recovered = metrics.registry.get_sample_value(
                "fixproxy_recovered_reports_total", {"session": "demo"}) or 0
            echo("")
            echo(f"fixproxy_recovered_reports_total{{session=\"demo\"}} {recovered:g}: the "
                 f"fills came from KalshiDC (EventResendRequest 35=U1 per exchange index), "
                 f"marked PossResend (97=Y), numbered right after the Logon answer; the live "
                 f"acknowledgement followed without a sequence gap.")
            nursery.cancel_scope.cancel()


def _at(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


async def _connect(address: tuple[str, int], api_key: str) -> ScriptedEngine:
    engine = await ScriptedEngine.connect(*address, sender=api_key, target="KalshiNR")
    answer = await engine.logon(reset=True)
    if answer is None or answer.msg_type != tags.MT_LOGON:
        await engine.aclose()
        raise FixProxyError("demo Logon failed: " + (
            answer.get_str(tags.TEXT) or "" if answer is not None else "connection closed"))
    return engine


async def _first_connection(sim: SimGateway, address: tuple[str, int], api_key: str,
                            orders: int, echo: Echo) -> None:
    engine = await _connect(address, api_key)
    try:
        echo("engine logs on and places orders; they rest:")
        for n in range(orders):
            await engine.send(tags.MT_NEW_ORDER_SINGLE, [
                (11, f"rest-{n}"), (38, 10), (40, 2), (44, 40 + n), (54, 1),
                (55, SYMBOLS[n % len(SYMBOLS)]), (59, 1)])
        for _ in range(orders):
            _show(await engine.receive_type(tags.MT_EXECUTION_REPORT), echo)
        await sim.drop(api_key)
        logout = await engine.receive_type(tags.MT_LOGOUT)
        echo(f"the gateway drops the connection; fixproxy tells the engine: "
             f"{logout.get_str(tags.TEXT)}")
    finally:
        await engine.aclose()


async def _second_connection(address: tuple[str, int], api_key: str, orders: int,
                             echo: Echo) -> None:
    engine = await _connect(address, api_key)
    try:
        echo("engine logs on again; right after the Logon answer it receives:")
        for _ in range(orders):
            _show(await engine.receive_type(tags.MT_EXECUTION_REPORT), echo)
        await engine.send(tags.MT_NEW_ORDER_SINGLE, [
            (11, "live-1"), (38, 1), (40, 2), (44, 50), (54, 1), (55, SYMBOLS[0]), (59, 1)])
        echo("then live traffic:")
        _show(await engine.receive_type(tags.MT_EXECUTION_REPORT), echo)
        await engine.logout()
    finally:
        await engine.aclose()


def _show(report: FixMessage, echo: Echo) -> None:
    kind = {b"0": "new", b"F": "FILL", b"4": "cancelled"}.get(report.get(150) or b"", "?")
    resend = "  97=Y (recovered)" if report.get(tags.POSS_RESEND) == b"Y" else ""
    echo(f"  34={report.get_str(tags.MSG_SEQ_NUM)} {kind:<9} 11={report.get_str(11)} "
         f"17={report.get_str(17)}{resend}")
