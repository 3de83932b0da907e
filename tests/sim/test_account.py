"""The simulated account: Kalshi-format ExecIDs per exchange index, resting orders filled
later, and KalshiDC's replay with every reject reason."""

from __future__ import annotations

import ssl
from typing import Final

import pytest

from fixproxy.errors import ConfigError
from fixproxy.fix.codec import FieldValue
from fixproxy.sim.account import REPLAY_WINDOW_S, Account, exec_id_text, parse_exec_id
from fixproxy.sim.gateway import SimConfig, SimGateway

STAMP: Final = b"20270115-08:00:00.000"
WALL: Final = 1_800_000_000.0


class Wall:
    def __init__(self) -> None:
        self.now = WALL

    def __call__(self) -> float:
        return self.now


def account(**kwargs: object) -> tuple[Account, Wall]:
    wall = Wall()
    return Account(wall, lambda: STAMP, **kwargs), wall  # type: ignore[arg-type]


def order(cl_ord_id: bytes, symbol: bytes = b"KXA") -> dict[int, bytes]:
    return {11: cl_ord_id, 55: symbol, 54: b"1", 38: b"10", 40: b"2", 44: b"55"}


def field(body: list[tuple[int, FieldValue]], tag: int) -> FieldValue | None:
    return dict(body).get(tag)


def test_exec_ids_follow_kalshis_format_per_index() -> None:
    assert exec_id_text(0, (12345, 67890)) == b"12345;67890"
    assert exec_id_text(2, (12345, 67890)) == b"12345;67890;2"
    assert parse_exec_id(b"12345;67890;2") == (2, (12345, 67890))
    assert parse_exec_id(b"1;1;0") is None and parse_exec_id(b"-1;-1") is None


def test_events_are_numbered_per_index_and_the_clock_grows() -> None:
    acct, _ = account(exchange_indexes=2)
    symbols = [b"KXA-26JAN01", b"KXB-26JAN01", b"KXC-26JAN01"]
    assert [acct.index_of(symbol) for symbol in symbols] == [0, 1, 0]
    ids = [field(acct.new_order("k", order(b"o%d" % n, symbol), 0.0, STAMP), 17)
           for n, symbol in enumerate(symbols)]
    assert ids == [b"1;1", b"2;1;1", b"3;2"]
    assert field(acct.history[1][0].body, 30) == b"1"  # LastMkt names the index


def test_a_resting_order_fills_later_whether_or_not_its_session_is_connected() -> None:
    acct, wall = account(fill_after=5.0)
    acct.new_order("k", order(b"o1"), 100.0, STAMP)
    assert acct.next_due() == 105.0
    acct.settle(104.9, lambda key: True)
    assert len(acct.history[0]) == 1
    wall.now += 20
    acct.settle(120.0, lambda key: False)  # the engine is away: history only
    fill = acct.history[0][-1]
    assert field(fill.body, 150) == b"F" and field(fill.body, 11) == b"o1"
    assert fill.wall == WALL + 20 - 15  # dated when it was due
    assert acct.live_fills == {} and acct.next_due() is None


def test_a_fill_of_a_connected_key_is_queued_for_its_session() -> None:
    acct, _ = account(fill_after=0.0)
    acct.new_order("k", order(b"o1"), 0.0, STAMP)
    acct.settle(0.0, lambda key: key == "k")
    assert [field(body, 11) for body in acct.live_fills["k"]] == [b"o1"]


def test_a_cancelled_order_stops_resting() -> None:
    acct, _ = account(fill_after=1.0)
    acct.new_order("k", order(b"o1"), 0.0, STAMP)
    acct.cancel("k", {11: b"c1", 41: b"o1"}, STAMP)
    acct.settle(10.0, lambda key: True)
    assert [field(event.body, 150) for event in acct.history[0]] == [b"0", b"4"]


def filled(**kwargs: object) -> tuple[Account, Wall]:
    acct, wall = account(fill_after=1.0, **kwargs)
    for n in range(12):  # the clock reaches two digits: 10;... sorts before 9;... as text
        acct.new_order("k", order(b"o%d" % n), 0.0, STAMP)
    acct.settle(2.0, lambda key: False)
    return acct, wall


def test_replay_from_an_exec_id_inclusive_to_the_newest() -> None:
    acct, _ = filled()
    answers = acct.event_resend({21001: b"9;9"}, seq=2, requests=1)
    types = [msg_type for msg_type, _ in answers]
    assert types == [b"8"] * 16 + [b"U2"]
    ids = [field(body, 17) for _, body in answers[:-1]]
    assert ids[0] == b"9;9" and ids[-1] == b"24;24"
    assert dict(answers[-1][1]) == {45: 2, 21003: 16}


def test_replay_up_to_an_end_exec_id() -> None:
    acct, _ = filled()
    replay = acct.replay(b"1;1", b"3;3", 1)
    assert [field(body, 17) for body in replay.bodies] == [b"1;1", b"2;2", b"3;3"]


REJECTS = [
    ("not allowlisted", {"allowlisted": False}, b"1;1", None, 1, 5),
    ("too many requests", {}, b"1;1", None, 11, 1),
    ("server error", {"replay_server_error": True}, b"1;1", None, 1, 2),
    ("begin before the history", {}, b"0;0", None, 1, 3),
    ("begin not an ExecID", {}, b"x", None, 1, 3),
    ("end beyond the newest", {}, b"1;1", b"99;99", 1, 4),
    ("end on another index", {}, b"1;1", b"2;2;1", 1, 4),
]


@pytest.mark.parametrize(("rules", "begin", "end", "requests", "reason"),
                         [case[1:] for case in REJECTS], ids=[case[0] for case in REJECTS])
def test_replay_rejects(rules: dict[str, object], begin: bytes, end: bytes | None,
                        requests: int, reason: int) -> None:
    acct, _ = filled(**rules)
    request = {21001: begin} | ({21002: end} if end is not None else {})
    ((msg_type, body),) = acct.event_resend(request, seq=3, requests=requests)
    assert msg_type == b"U3"
    assert dict(body)[45] == 3 and dict(body)[21004] == reason


def test_replay_refuses_a_begin_older_than_three_hours_and_skips_old_events() -> None:
    acct, wall = filled()
    wall.now += REPLAY_WINDOW_S + 1
    assert acct.replay(b"1;1", None, 1).reject == 3
    acct.new_order("k", order(b"late"), 10.0, STAMP)
    newest = acct.history[0][-1]
    assert acct.replay(b"%d;%d" % newest.key, None, 1).bodies == (newest.body,)


@pytest.mark.parametrize(("field_name", "value", "key"), [
    ("fill_after", -1.0, "fill_after"), ("exchange_indexes", 0, "exchange_indexes"),
    ("exchange_indexes", 17, "exchange_indexes")])
def test_the_simulator_refuses_account_settings_out_of_range(
        field_name: str, value: float, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SimConfig(keys={}, **{field_name: value})  # type: ignore[arg-type]
    assert info.value.key == key


def test_the_simulator_passes_its_account_settings_on() -> None:
    gateway = SimGateway(SimConfig(keys={}, fill_after=2.5, exchange_indexes=3,
                                   replay_allowlisted=False), ssl.create_default_context())
    account = gateway.venue.account
    assert (account.fill_after, account.exchange_indexes, account.allowlisted) == \
        (2.5, 3, False)
    gateway.set_replay_allowlisted(True)
    assert account.allowlisted
