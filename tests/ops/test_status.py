"""The status board: what each session is doing, derived from its machine when asked."""

from __future__ import annotations

from dataclasses import dataclass

from fixproxy.ops.status import STATES, Clocks, StatusBoard, iso
from fixproxy.session.machine import IDLE, State

CONNECTING = State.CONNECTING.value

WALL = 1_790_000_000.0


@dataclass
class FakeMachine:
    state: str = "active"
    since: float = 100.0
    engine_seen: float = 103.0
    gateway_seen: float = 104.5
    engine_last_seq: int = 7
    gateway_last_seq: int = 9


def board_with_session() -> StatusBoard:
    board = StatusBoard()
    board.declare("NR", endpoint="KalshiNR", gateway="gw:8228", listen="127.0.0.1:9878",
                  wall=WALL)
    return board


def test_a_declared_session_is_idle_until_a_connection_takes_it() -> None:
    board = board_with_session()
    status = board.get("NR")
    assert status is not None
    assert status.state == IDLE
    assert status.sequence_numbers() == {} and status.last_seen() == {}
    clocks = Clocks(monotonic=50.0, wall=WALL + 10)
    document = status.to_json(clocks)
    assert document["state"] == "idle" and document["since"] == iso(WALL)
    assert document["last_error"] is None and document["connection"] is None


def test_state_follows_the_live_machine_and_survives_its_end() -> None:
    status = board_with_session().get("NR")
    assert status is not None
    status.connection_started(4, WALL + 1)
    assert status.state == CONNECTING
    machine = FakeMachine()
    status.session_started(4, machine, translated=True)
    clocks = Clocks(monotonic=110.0, wall=WALL + 20)
    assert status.state == "active"
    assert status.state_since(clocks) == WALL + 10  # machine.since, 10 s before the reading
    machine.state = "logging_out"
    assert status.state == "logging_out"
    document = status.to_json(clocks)
    assert document["sequence_numbers"] == {"engine_to_gateway": 7, "gateway_to_engine": 9}
    assert document["sequence_translated"] is True
    assert document["last_message"] == {
        "engine_to_gateway": {"at": iso(WALL + 13), "age_seconds": 7.0},
        "gateway_to_engine": {"at": iso(WALL + 14.5), "age_seconds": 5.5}}

    status.connection_ended(4, WALL + 30)
    assert status.state == IDLE
    assert status.state_since(clocks) == WALL + 30
    # The last connection's numbers stay visible once it has ended.
    assert status.sequence_numbers() == {"engine_to_gateway": 7, "gateway_to_engine": 9}


def test_a_connection_that_does_not_hold_the_session_cannot_change_it() -> None:
    status = board_with_session().get("NR")
    assert status is not None
    status.connection_started(1, WALL)
    status.session_started(1, FakeMachine(), translated=False)
    status.session_started(2, FakeMachine(state="logon_sent"), translated=True)
    status.connection_ended(2, WALL + 5)
    assert status.state == "active" and status.conn_id == 1 and not status.translated


def test_errors_and_skew_are_reported() -> None:
    status = board_with_session().get("NR")
    assert status is not None
    status.error("the gateway refused the Logon", WALL + 2)
    status.skew("engine", -31.25)
    document = status.to_json(Clocks(0.0, WALL + 3))
    assert document["last_error"] == {"text": "the gateway refused the Logon",
                                      "at": iso(WALL + 2)}
    assert document["clock_skew_seconds"] == {"engine": -31.25}


def test_board_keeps_a_redeclared_session_and_forgets_a_removed_one() -> None:
    board = board_with_session()
    first = board.get("NR")
    again = board.declare("NR", endpoint="KalshiNR", gateway="gw2:8228",
                          listen="127.0.0.1:9878", wall=WALL + 50)
    assert again is first and again.gateway == "gw2:8228" and again.since_wall == WALL
    board.declare("MD", endpoint="KalshiMD", gateway="md:8228", listen="127.0.0.1:9879",
                  wall=WALL)
    assert [status.name for status in board] == ["MD", "NR"] and len(board) == 2
    board.forget("MD")
    assert board.get("MD") is None and len(board) == 1
    assert [entry["session"] for entry in board.to_json(Clocks(0.0, WALL))] == ["NR"]


def test_states_cover_the_machine() -> None:
    from fixproxy.session.machine import State
    assert set(STATES) == {IDLE, CONNECTING} | {state.value for state in State}
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"
