"""The server on real loopback sockets, without a gateway: what it reports once ready and when
it stops accepting. The metrics endpoint's HTTP responder is tested in tests/net/test_http.py.

No session here reaches a gateway (each points at loopback port 1), so an engine that gets as
far as its Logon is answered by fixproxy's own refusal: enough to show that its connection
was accepted and served. Whole sessions through the server are in tests/system/test_e2e.py,
the readiness probes in tests/proxy/test_health.py.
"""

from __future__ import annotations

from typing import Any, Final

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from support.config import API_KEY, LOOPBACK, config_with
from support.e2e import E2EMaterial

from fixproxy.config.model import Config, MetricsConfig
from fixproxy.errors import FixProxyError
from fixproxy.fix import tags
from fixproxy.kalshi import ENDPOINTS
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.server import BoundAddresses, ProxyServer, serve_proxy
from fixproxy.sim.engine import ScriptedEngine

GUARD: Final = 10.0
"""Seconds any one test may take; each needs a fraction of one."""


def two_sessions(material: E2EMaterial, **overrides: Any) -> Config:
    """Sessions ``nr`` and ``dc`` on free loopback ports, gateways unreachable; each its own
    API key, so that one's failed Logon does not hold the other's back."""
    return config_with(material.session_config(name="nr"),
                       material.session_config(name="dc", endpoint=ENDPOINTS["KalshiDC"],
                                               api_key=API_KEY),
                       **overrides)


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """``exc`` itself, or every exception inside it if it is a group (however nested)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


async def refused(address: tuple[str, int]) -> bool:
    """True if nothing accepts connections at ``address``."""
    try:
        stream = await trio.open_tcp_stream(*address)
    except OSError:
        return True
    await stream.aclose()
    return False


async def request(address: tuple[str, int], raw: bytes) -> bytes:
    """Send ``raw`` to an HTTP server and read its answer until it closes."""
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(raw)
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    return response


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def refusal_text(address: tuple[str, int], sender: str, target: str) -> str:
    """Log on at ``address``; the Text (58) of fixproxy's Logout that answers."""
    async with await trio.open_tcp_stream(*address) as stream:
        engine = ScriptedEngine(stream, sender=sender, target=target)
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT, answer
        return answer.get_str(tags.TEXT) or ""


# --- serve_proxy ---------------------------------------------------------------------------


@pytest.mark.parametrize("metrics_endpoint", [True, False])
async def test_serve_proxy_reports_the_ports_it_bound(e2e_material: E2EMaterial,
                                                      metrics_endpoint: bool) -> None:
    metrics_config = MetricsConfig(listen=(LOOPBACK, 0) if metrics_endpoint else None)
    config = two_sessions(e2e_material, metrics=metrics_config)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            bound: BoundAddresses = await nursery.start(
                serve_proxy, config, Metrics(CollectorRegistry()))
            assert set(bound.sessions) == {"nr", "dc"}
            ports = {port for _, port in bound.sessions.values()}
            assert len(ports) == 2 and 0 not in ports
            assert {host for host, _ in bound.sessions.values()} == {LOOPBACK}
            # Each listener serves its own session.
            for name, sender, target in (("nr", e2e_material.api_key, "KalshiNR"),
                                         ("dc", API_KEY, "KalshiDC")):
                text = await refusal_text(bound.sessions[name], sender, target)
                assert "could not open TLS" in text
            if metrics_endpoint:
                assert bound.metrics is not None and bound.metrics[1] not in (0, *ports)
                assert status_of(await request(bound.metrics, b"GET /healthz HTTP/1.0\r\n\r\n")) \
                    == 200
            else:
                assert bound.metrics is None
            nursery.cancel_scope.cancel()


async def test_serve_proxy_stops_accepting_when_cancelled(e2e_material: E2EMaterial) -> None:
    config = two_sessions(e2e_material, metrics=MetricsConfig(listen=(LOOPBACK, 0)))
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            bound: BoundAddresses = await nursery.start(
                serve_proxy, config, Metrics(CollectorRegistry()))
            addresses = [*bound.sessions.values(), bound.metrics]
            for address in addresses:
                assert address is not None and not await refused(address)
            nursery.cancel_scope.cancel()
        for address in addresses:
            assert address is not None and await refused(address)


async def test_serve_proxy_fails_at_start_on_an_address_in_use(
        e2e_material: E2EMaterial) -> None:
    with trio.fail_after(GUARD):
        taken = (await trio.open_tcp_listeners(0, host=LOOPBACK))[0]
        async with taken:
            port = taken.socket.getsockname()[1]
            config = config_with(e2e_material.session_config(name="nr"),
                                 metrics=MetricsConfig(listen=(LOOPBACK, port)))
            with pytest.raises((FixProxyError, BaseExceptionGroup)) as caught:
                async with trio.open_nursery() as nursery:
                    await nursery.start(serve_proxy, config, Metrics(CollectorRegistry()))
    [error] = leaf_errors(caught.value)
    assert isinstance(error, FixProxyError)
    assert str(error).startswith(f"metrics: cannot listen on {LOOPBACK}:{port}: ")


async def test_stop_listening_refuses_new_engines_and_serves_accepted_ones(
        e2e_material: E2EMaterial) -> None:
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as sessions:
            server = ProxyServer(two_sessions(e2e_material), Metrics(CollectorRegistry()))
            bound: BoundAddresses = await sessions.start(server.serve, sessions)
            address = bound.sessions["nr"]
            accepted = await trio.open_tcp_stream(*address)
            await trio.testing.wait_all_tasks_blocked()  # the listener took it
            server.stop_listening()
            assert await refused(address)
            assert await refused(bound.sessions["dc"])
            engine = ScriptedEngine(accepted, sender=e2e_material.api_key, target="KalshiNR")
            answer = await engine.logon()
            assert answer is not None and answer.msg_type == tags.MT_LOGOUT
            assert "could not open TLS" in (answer.get_str(tags.TEXT) or "")
            await accepted.aclose()
            sessions.cancel_scope.cancel()
