"""Listeners follow the sessions across a reload: added, removed, and handed over.

Each case runs the simulator and an in-process server on real loopback sockets, rewrites
the configuration file and reloads it, then connects engines to see who listens where.
"""

from __future__ import annotations

from pathlib import Path

from support.e2e import E2EMaterial
from support.reload_harness import KEYS, Session, free_port, refused, running, trades

from fixproxy.fix import tags


async def test_an_added_session_gets_a_listener_and_logs_on(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    a = Session("a", free_port())
    async with running(e2e_material, tmp_path, [a]) as harness:
        live = await harness.logged_on("a")
        assert "b" not in harness.server.addresses

        harness.write([a, Session("b", free_port())])
        result = await harness.server.reload()
        assert result.ok, result
        assert result.changes is not None and result.changes.added == ("b",)
        assert "added: b" in result.detail

        added = await harness.logged_on("b")
        assert harness.sim.live_sessions == {KEYS["a"]: "KalshiNR", KEYS["b"]: "KalshiNR"}
        await trades(added)
        await trades(live)
        assert harness.metrics.registry.get_sample_value(
            "fixproxy_session_up", {"session": "b"}) == 1


async def test_a_removed_session_stops_listening_and_its_live_session_ends_by_logout(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    a, b = Session("a", free_port()), Session("b", free_port())
    async with running(e2e_material, tmp_path, [a, b]) as harness:
        live = await harness.logged_on("a")
        address = harness.server.addresses["a"]

        harness.write([b])
        result = await harness.server.reload()
        assert result.ok, result
        assert result.changes is not None and result.changes.removed == ("a",)
        assert "a" not in harness.server.runtimes
        assert "a" not in harness.server.addresses
        await refused(address)

        await trades(live)
        answer = await live.logout()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        assert await live.receive() is None  # closed after the Logout exchange
        assert KEYS["a"] not in harness.sim.live_sessions
        await harness.logged_on("b")


async def test_sessions_trading_listen_addresses_take_over_each_others_sockets(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    port_1, port_2 = free_port(), free_port()
    async with running(e2e_material, tmp_path,
                       [Session("a", port_1), Session("b", port_2)]) as harness:
        # Binding each new address while the other session still holds it would fail with
        # "address in use"; the listeners are handed over instead.
        harness.write([Session("a", port_2), Session("b", port_1)])
        result = await harness.server.reload()
        assert result.ok, result
        assert result.changes is not None
        assert set(result.changes.moved) == {"a", "b"}
        assert harness.server.addresses == {"a": ("127.0.0.1", port_2),
                                            "b": ("127.0.0.1", port_1)}
        await harness.logged_on("a")  # at port_2, with a's key
        await harness.logged_on("b")

        # A new port for "a": the old one is closed, the new one serves.
        port_3 = free_port()
        harness.write([Session("a", port_3), Session("b", port_1)])
        assert (await harness.server.reload()).ok
        await refused(("127.0.0.1", port_2))
        assert harness.server.addresses["a"] == ("127.0.0.1", port_3)
