"""allow_peers on a real listener: an engine from an address not listed is refused locally."""

from __future__ import annotations

import pytest
import trio
from support.e2e import E2EMaterial, open_proxy_pair

from fixproxy.fix import tags
from fixproxy.session.peers import PeerFilter


async def test_an_engine_outside_allow_peers_gets_a_logout_and_the_gateway_nothing(
        e2e_material: E2EMaterial, caplog: pytest.LogCaptureFixture) -> None:
    peers = PeerFilter.parse(["10.0.0.0/8", "::1"])
    async with open_proxy_pair(e2e_material, session_overrides={"allow_peers": peers}) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        text = answer.get_str(tags.TEXT) or ""
        assert "connections from 127.0.0.1 are not allowed" in text and "allow_peers" in text
        assert "10.0.0.0/8" not in text  # the refused peer does not learn the allowed networks
        # The Logout mirrors the peer's own CompIDs: nothing it did not send, the key above all.
        assert answer.get(tags.TARGET_COMP_ID) == pair.api_key.encode()
        assert answer.get(tags.SENDER_COMP_ID) == b"KalshiNR"
        assert await engine.receive() is None
        assert pair.sample("fixproxy_engine_connections_total", result="peer_refused") == 1
        assert not pair.sim.events
    assert "not in allow_peers (10.0.0.0/8, ::1)" in caplog.text


async def test_a_peer_outside_allow_peers_that_sends_no_logon_is_just_closed(
        e2e_material: E2EMaterial) -> None:
    peers = PeerFilter.parse(["10.0.0.0/8"])
    async with open_proxy_pair(e2e_material, session_overrides={"allow_peers": peers}) as pair:
        stream = await trio.open_tcp_stream(*pair.proxy)
        await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
        received = b""
        while chunk := await stream.receive_some(4096):
            received += chunk
        await stream.aclose()
        assert received == b""  # no Logout: it would have to invent CompIDs, the key among them
        assert pair.sample("fixproxy_engine_connections_total", result="peer_refused") == 1


async def test_an_engine_inside_allow_peers_trades(e2e_material: E2EMaterial) -> None:
    peers = PeerFilter.parse(["127.0.0.0/8"])
    async with open_proxy_pair(e2e_material, session_overrides={"allow_peers": peers}) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        await engine.new_order()
        report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
        assert report is not None
        assert pair.sample("fixproxy_engine_connections_total", result="ok") == 1
