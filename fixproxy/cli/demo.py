"""``fixproxy demo``: a whole session on this machine, with no Kalshi credentials.

The simulated gateway runs with a throwaway CA and leaf certificate, fixproxy runs in front of
it pinned to that leaf, and a scripted engine logs on unsigned, trades, tests the line and logs
out. The transcript shows each message, including the Logon before and after fixproxy signed
it (with the signature shortened).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio
from prometheus_client import CollectorRegistry

from fixproxy.config.model import Config, GatewayConfig, MetricsConfig, SessionConfig, TLSPolicy
from fixproxy.errors import FixProxyError
from fixproxy.fix import tags
from fixproxy.fix.codec import render
from fixproxy.kalshi import ENDPOINTS
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.server import BoundAddresses, serve_proxy
from fixproxy.signing import generate_key_pair, load_public_key
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.engine import ScriptedEngine, describe
from fixproxy.sim.gateway import SimConfig, SimGateway

Echo = Callable[[str], object]
DEMO_ENDPOINT: Final = "KalshiNR"
SERVE_PORT: Final = 9878
"""The engine-facing port of ``fixproxy demo --serve`` (the example config's first session)."""
DEMO_TIMEOUT: Final = 30.0


async def run_demo(*, serve: bool, orders: int, echo: Echo, serve_port: int = SERVE_PORT) -> None:
    """Run the demo; with ``serve``, keep everything up for a real engine until cancelled."""
    with tempfile.TemporaryDirectory(prefix="fixproxy-demo-") as tmp:
        workdir = Path(tmp)
        certs = generate_certificates("localhost")
        cert_files = certs.write(workdir / "certs")
        key_path, public_path = generate_key_pair(workdir / "keys")
        api_key = str(uuid.uuid4())
        sim = SimGateway(
            SimConfig(ports={DEMO_ENDPOINT: 0}, keys={api_key: load_public_key(public_path)}),
            certs.server_context())
        async with trio.open_nursery() as nursery:
            gateways: dict[str, tuple[str, int]] = await nursery.start(sim.serve)
            gateway_host, gateway_port = gateways[DEMO_ENDPOINT]
            session = SessionConfig(
                name="demo", listen=("127.0.0.1", serve_port if serve else 0),
                endpoint=ENDPOINTS[DEMO_ENDPOINT], host=gateway_host, port=gateway_port,
                api_key=api_key, private_key=key_path,
                tls=TLSPolicy(server_name=certs.hostname, verify="ca+pin",
                              ca_file=cert_files.ca_cert, pins=(certs.leaf_pin,),
                              pinned_cert=None))
            config = Config(gateway=GatewayConfig(), metrics=MetricsConfig(listen=None),
                            sessions=(session,))
            metrics = Metrics(CollectorRegistry())
            bound: BoundAddresses = await nursery.start(serve_proxy, config, metrics)
            proxy_host, proxy_port = bound.sessions["demo"]
            echo(f"simulated Kalshi gateway: {gateway_host}:{gateway_port} (TLS, {DEMO_ENDPOINT}, "
                 f"certificate pinned as {certs.leaf_pin})")
            echo(f"fixproxy listening for the engine: {proxy_host}:{proxy_port} (plain TCP)")
            echo(f"API key (SenderCompID): {api_key}")
            if serve:
                echo("")
                echo("Point a FIX engine at it: plain TCP to "
                     f"{proxy_host}:{proxy_port}, BeginString=FIXT.1.1, "
                     f"DefaultApplVerID=FIX.5.0SP2, SenderCompID={api_key}, "
                     f"TargetCompID={DEMO_ENDPOINT}, unsigned Logon. Ctrl-C stops.")
                await trio.sleep_forever()
            with trio.fail_after(DEMO_TIMEOUT):
                engine = await ScriptedEngine.connect(proxy_host, proxy_port, sender=api_key,
                                                      target=DEMO_ENDPOINT)
                await _script(engine, orders)
            echo("")
            _print_transcript(engine, sim, api_key, echo)
            nursery.cancel_scope.cancel()


async def _script(engine: ScriptedEngine, orders: int) -> None:
    try:
        answer = await engine.logon(heart_bt_int=30)
        if answer is None or answer.msg_type != tags.MT_LOGON:
            text = answer.get_str(tags.TEXT) if answer is not None else "connection closed"
            raise FixProxyError(f"demo Logon failed: {text}")
        for _ in range(orders):
            await engine.new_order()
        for _ in range(orders):
            await engine.receive_type(tags.MT_EXECUTION_REPORT)
        await engine.test_peer()
        await engine.logout()
    finally:
        await engine.aclose()


def _print_transcript(engine: ScriptedEngine, sim: SimGateway, api_key: str,
                      echo: Echo) -> None:
    signed = sim.last_logon.get(api_key)
    for direction, raw in engine.transcript:
        is_logon = direction == "sent" and raw == engine.transcript[0][1]
        if is_logon:
            arrow = "engine   -> fixproxy"
        else:
            arrow = "engine   -> Kalshi  " if direction == "sent" else "Kalshi   -> engine  "
        echo(f"{arrow}  {describe(raw)}: {render(raw)}")
        if is_logon and signed is not None:
            echo(f"fixproxy -> Kalshi    Logon, signed: {render(signed, shorten_secrets=True)}")
    echo("")
    echo("The engine sent an unsigned Logon; fixproxy added 141=Y, 1137=9, 95/96 (RSA-PSS over "
         "52|35|34|49|56) and the simulated gateway verified the signature with the public key.")
