"""The session state machine: the lives the relay relies on, every (state, event) pair, timers.

Pure tests, no trio: times are plain floats passed in, as the relay passes trio's clock.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixproxy.errors import FixProxyError, SessionError
from fixproxy.session.machine import (
    ENGINE_GONE_WITHOUT_LOGOUT,
    LIVE_STATES,
    TRANSITIONS,
    Action,
    Event,
    SessionMachine,
    State,
    Transition,
)

A = Action
E = Event
S = State

T0 = 1000.0
LOGGING_OUT_STATES = (S.ENGINE_LOGGING_OUT, S.GATEWAY_LOGGING_OUT, S.LOGGING_OUT)
MESSAGE_EVENTS = frozenset({E.ENGINE_LOGOUT, E.GATEWAY_LOGOUT})
"""Events caused by a message the relay holds in hand, the only ones it can swallow."""

Step = tuple[Event, tuple[Action, ...], State]


def session_in(state: State, *, now: float = T0, heart_bt_int: float = 30.0,
               grace: float = 5.0, logout_on_engine_disconnect: bool = True) -> SessionMachine:
    """A session put straight into ``state`` at ``now``, as if it had just entered it."""
    session = SessionMachine(now=now, heart_bt_int=heart_bt_int, grace=grace,
                      logout_on_engine_disconnect=logout_on_engine_disconnect)
    session.state = state
    return session


def walk(session: SessionMachine, steps: list[Step], *, start: float = T0) -> None:
    """Feed each step's event one second apart, checking its actions and the state reached."""
    for offset, (event, actions, state) in enumerate(steps, start=1):
        assert session.handle(event, start + offset) == actions, (event, session.state)
        assert session.state is state, event


# --- the lives the relay depends on --------------------------------------------------------

NORMAL_LIFE: list[Step] = [
    (E.TLS_READY, (), S.TLS_READY),
    (E.LOGON_SENT, (), S.LOGON_SENT),
    (E.GATEWAY_LOGON, (), S.ACTIVE),
    (E.ENGINE_LOGOUT, (), S.ENGINE_LOGGING_OUT),
    (E.GATEWAY_LOGOUT, (A.CLOSE,), S.CLOSED),
]
LOGGED_ON: list[Step] = NORMAL_LIFE[:3]

LIVES: dict[str, tuple[bool, list[Step]]] = {
    "normal life: engine logs out, gateway answers": (True, NORMAL_LIFE),
    "gateway logs out, engine answers": (True, [
        *LOGGED_ON,
        (E.GATEWAY_LOGOUT, (), S.GATEWAY_LOGGING_OUT),
        (E.ENGINE_LOGOUT, (A.CLOSE,), S.CLOSED),
    ]),
    "gateway refuses the Logon (its Logout is forwarded)": (True, [
        *LOGGED_ON[:2],
        (E.GATEWAY_LOGOUT, (A.CLOSE,), S.CLOSED),
    ]),
    "gateway never answers the Logon": (True, [
        *LOGGED_ON[:2],
        (E.GATEWAY_SILENT, (A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
    "gateway silent while active": (True, [
        *LOGGED_ON,
        (E.GATEWAY_SILENT, (A.LOGOUT_TO_GATEWAY, A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
    "engine closed while active, gateway answers fixproxy's Logout": (True, [
        *LOGGED_ON,
        (E.ENGINE_CLOSED, (A.LOGOUT_TO_GATEWAY, A.STOP_ENGINE_INPUT), S.LOGGING_OUT),
        (E.GATEWAY_LOGOUT, (A.SWALLOW, A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
    "engine closed while active, no Logout configured": (False, [
        *LOGGED_ON,
        (E.ENGINE_CLOSED, (A.CLOSE,), S.CLOSED),
    ]),
    "engine silent while active": (True, [
        *LOGGED_ON,
        (E.ENGINE_SILENT, (A.LOGOUT_TO_GATEWAY, A.STOP_ENGINE_INPUT), S.LOGGING_OUT),
        (E.GATEWAY_LOGOUT, (A.SWALLOW, A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
    "shutdown while active, gateway answers": (True, [
        *LOGGED_ON,
        (E.SHUTDOWN, (A.LOGOUT_TO_GATEWAY, A.STOP_ENGINE_INPUT), S.LOGGING_OUT),
        (E.ENGINE_LOGOUT, (A.SWALLOW,), S.LOGGING_OUT),
        (E.SHUTDOWN, (), S.LOGGING_OUT),
        (E.GATEWAY_LOGOUT, (A.SWALLOW, A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
    "shutdown while active, Logout unanswered": (True, [
        *LOGGED_ON,
        (E.SHUTDOWN, (A.LOGOUT_TO_GATEWAY, A.STOP_ENGINE_INPUT), S.LOGGING_OUT),
        (E.LOGOUT_TIMEOUT, (A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
    "engine's Logout unanswered": (True, [
        *LOGGED_ON,
        (E.ENGINE_LOGOUT, (), S.ENGINE_LOGGING_OUT),
        (E.SHUTDOWN, (), S.ENGINE_LOGGING_OUT),
        (E.LOGOUT_TIMEOUT, (A.CLOSE,), S.CLOSED),
    ]),
    "gateway's Logout unanswered": (True, [
        *LOGGED_ON,
        (E.GATEWAY_LOGOUT, (), S.GATEWAY_LOGGING_OUT),
        (E.LOGOUT_TIMEOUT, (A.CLOSE,), S.CLOSED),
    ]),
    "shutdown before TLS is up": (True, [
        (E.SHUTDOWN, (A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
    "gateway drops TLS before the Logon": (True, [
        (E.TLS_READY, (), S.TLS_READY),
        (E.GATEWAY_CLOSED, (A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
    "gateway drops the connection while active": (True, [
        *LOGGED_ON,
        (E.GATEWAY_CLOSED, (A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
    "engine breaks framing while active": (True, [
        *LOGGED_ON,
        (E.ENGINE_ERROR, (A.LOGOUT_TO_GATEWAY, A.STOP_ENGINE_INPUT), S.LOGGING_OUT),
        (E.GATEWAY_CLOSED, (A.LOGOUT_TO_ENGINE, A.CLOSE), S.CLOSED),
    ]),
}


@pytest.mark.parametrize("name", list(LIVES))
def test_lives(name: str) -> None:
    logout_on_engine_disconnect, steps = LIVES[name]
    session = SessionMachine(now=T0, logout_on_engine_disconnect=logout_on_engine_disconnect)
    assert (session.state, session.history) == (S.CONNECTING, [])
    walk(session, steps)
    # Every life listed ends closed, and a closed session ignores whatever still arrives.
    assert session.state is S.CLOSED
    for event in Event:
        assert session.handle(event, T0 + 100) == ()
        assert session.state is S.CLOSED


def test_history_since_and_close_reason_are_recorded() -> None:
    session = SessionMachine(now=T0)
    assert (session.since, session.history, session.close_reason) == (T0, [], "")
    session.handle(E.TLS_READY, T0 + 1)
    session.handle(E.LOGON_SENT, T0 + 2)
    assert session.since == T0 + 2
    session.handle(E.GATEWAY_LOGON, T0 + 3)
    session.handle(E.SHUTDOWN, T0 + 4, "fixproxy is shutting down")
    assert session.since == T0 + 4
    # A self-transition is not a new state: the Logout wait keeps counting from its start.
    session.handle(E.SHUTDOWN, T0 + 5)
    assert session.since == T0 + 4
    assert session.close_reason == ""
    session.handle(E.LOGOUT_TIMEOUT, T0 + 6, "the Logout was not answered in time")
    assert session.since == T0 + 6
    assert session.now == T0 + 6
    assert session.history == [
        (T0 + 1, S.CONNECTING, E.TLS_READY),
        (T0 + 2, S.TLS_READY, E.LOGON_SENT),
        (T0 + 3, S.LOGON_SENT, E.GATEWAY_LOGON),
        (T0 + 4, S.ACTIVE, E.SHUTDOWN),
        (T0 + 6, S.LOGGING_OUT, E.LOGOUT_TIMEOUT),
    ]
    assert session.close_reason == "the Logout was not answered in time"
    # The first reason stays: what arrives after the close does not rewrite why it closed.
    session.handle(E.GATEWAY_CLOSED, T0 + 7, "the gateway closed the connection")
    assert session.close_reason == "the Logout was not answered in time"
    assert len(session.history) == 5


def test_close_reason_defaults_to_the_event() -> None:
    session = session_in(S.ACTIVE)
    session.handle(E.GATEWAY_CLOSED, T0 + 1)
    assert session.close_reason == "gateway_closed"


def test_illegal_event_raises_and_changes_nothing() -> None:
    session = session_in(S.CONNECTING)
    with pytest.raises(SessionError) as caught:
        session.handle(E.GATEWAY_LOGON, T0 + 1)
    assert isinstance(caught.value, FixProxyError)
    assert "gateway_logon" in str(caught.value)
    assert (session.state, session.since, session.history) == (S.CONNECTING, T0, [])


def test_engine_disconnect_without_logout_only_changes_the_active_case() -> None:
    session = session_in(S.LOGGING_OUT, logout_on_engine_disconnect=False)
    assert session.handle(E.ENGINE_CLOSED, T0 + 1) == ()
    assert session.state is S.LOGGING_OUT
    session = session_in(S.ACTIVE, logout_on_engine_disconnect=False)
    assert session.handle(E.ENGINE_CLOSED, T0 + 1) == (A.CLOSE,)
    assert session.state is S.CLOSED
    assert session.close_reason == "engine_closed"


# --- every (state, event) pair --------------------------------------------------------------

def expected_transition(state: State, event: Event,
                        logout_on_engine_disconnect: bool) -> Transition | None:
    if (state, event) == (S.ACTIVE, E.ENGINE_CLOSED) and not logout_on_engine_disconnect:
        return ENGINE_GONE_WITHOUT_LOGOUT
    return TRANSITIONS.get((state, event))


def check_one_step(state: State, event: Event, logout_on_engine_disconnect: bool,
                   now: float) -> None:
    """handle() gives actions and a legal state, or SessionError and no change; nothing else."""
    session = session_in(state, logout_on_engine_disconnect=logout_on_engine_disconnect)
    expected = expected_transition(state, event, logout_on_engine_disconnect)
    try:
        actions = session.handle(event, now)
    except SessionError:
        assert expected is None, (state, event)
        assert (session.state, session.since, session.history) == (state, T0, [])
        return
    assert expected is not None, (state, event)
    assert isinstance(actions, tuple)
    assert all(isinstance(action, Action) for action in actions)
    assert len(set(actions)) == len(actions), "an action repeated"
    assert (session.state, actions) == expected
    target = session.state
    if state is S.CLOSED:
        assert (target, actions) == (S.CLOSED, ()), "a closed session must stay closed, inert"
    # Closing is always asked for exactly when the session closes, so the relay never leaves
    # a pair of sockets open after the machine gave up, nor closes one it still needs.
    if target is S.CLOSED and state in LIVE_STATES:
        assert A.CLOSE in actions, (state, event)
    assert (A.CLOSE in actions) == (target is S.CLOSED and state is not S.CLOSED), (state, event)
    # Only a message in the relay's hand can be swallowed.
    if A.SWALLOW in actions:
        assert event in MESSAGE_EVENTS, (state, event)
    # Engine input stops only because fixproxy numbered a Logout after the engine's messages.
    if A.STOP_ENGINE_INPUT in actions:
        assert A.LOGOUT_TO_GATEWAY in actions, (state, event)
    # A Logout goes upstream only to a gateway that accepted the Logon.
    if A.LOGOUT_TO_GATEWAY in actions:
        assert state in LIVE_STATES, (state, event)
    # fixproxy's Logout to the engine is its last word: the close follows.
    if A.LOGOUT_TO_ENGINE in actions:
        assert A.CLOSE in actions, (state, event)
    if target is not state:
        assert session.since == now
        assert session.history == [(now, state, event)]
    else:
        assert (session.since, session.history) == (T0, [])


@pytest.mark.parametrize("logout_on_engine_disconnect", [True, False])
def test_every_state_event_pair_exhaustively(logout_on_engine_disconnect: bool) -> None:
    for state, event in itertools.product(State, Event):
        check_one_step(state, event, logout_on_engine_disconnect, T0 + 1)


@given(state=st.sampled_from(list(State)), event=st.sampled_from(list(Event)),
       logout_on_engine_disconnect=st.booleans(),
       delay=st.floats(min_value=0.0, max_value=1e6, allow_nan=False))
def test_any_state_event_pair(state: State, event: Event, logout_on_engine_disconnect: bool,
                              delay: float) -> None:
    check_one_step(state, event, logout_on_engine_disconnect, T0 + delay)


PEER_EVENTS = frozenset({E.ENGINE_LOGOUT, E.GATEWAY_LOGOUT, E.ENGINE_CLOSED, E.GATEWAY_CLOSED,
                         E.ENGINE_ERROR, E.GATEWAY_ERROR, E.SHUTDOWN})
"""What the peers (and an operator stopping fixproxy) can cause at any moment, unlike the
relay's own steps (TLS up, Logon sent, the Logon answer) and the timers (checked below)."""


@pytest.mark.parametrize("state", [S.LOGON_SENT, *sorted(LIVE_STATES)])
def test_the_table_answers_everything_peers_can_do(state: State) -> None:
    # From the moment the signed Logon is out, both pumps run: whatever either peer sends or
    # does must have an answer in the table. SessionError is for relay bugs, and the relay
    # lets it escape, so a missing pair here is a peer able to crash its connection's relay.
    missing = sorted(event for event in PEER_EVENTS if (state, event) not in TRANSITIONS)
    assert missing == [], f"{state} has no transition for {missing}"


def test_shutdown_and_engine_hang_up_are_answered_in_every_state() -> None:
    for state in State:
        assert (state, E.SHUTDOWN) in TRANSITIONS, state
        assert (state, E.ENGINE_CLOSED) in TRANSITIONS, state


events_with_delays = st.lists(
    st.tuples(st.sampled_from(list(Event)), st.floats(min_value=0.0, max_value=100.0)),
    max_size=40)


@given(steps=events_with_delays, logout_on_engine_disconnect=st.booleans())
def test_random_event_sequences(steps: list[tuple[Event, float]],
                                logout_on_engine_disconnect: bool) -> None:
    session = SessionMachine(now=T0, logout_on_engine_disconnect=logout_on_engine_disconnect)
    now = T0
    changes: list[tuple[float, State, Event]] = []
    sent: dict[Action, int] = dict.fromkeys(Action, 0)
    for event, delay in steps:
        now += delay
        before = session.state
        try:
            actions = session.handle(event, now)
        except SessionError:
            # An event the state does not allow changes nothing; the walk goes on from there.
            assert session.state is before
            continue
        for action in actions:
            sent[action] += 1
        after = session.state
        if before is S.CLOSED:
            assert (after, actions) == (S.CLOSED, ())
        if after is S.CLOSED and before in LIVE_STATES:
            assert A.CLOSE in actions
        if after is not before:
            changes.append((now, before, event))
            assert session.since == now
        assert session.now == now
    assert session.history == changes
    # fixproxy writes at most one Logout to each peer, and asks for one close at most.
    assert sent[A.LOGOUT_TO_GATEWAY] <= 1
    assert sent[A.LOGOUT_TO_ENGINE] <= 1
    assert sent[A.CLOSE] == (1 if session.state is S.CLOSED else 0)
    assert bool(session.close_reason) == (session.state is S.CLOSED)


# --- timers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("state", [S.CONNECTING, S.TLS_READY, S.CLOSED])
def test_no_timer_outside_logon_and_live_states(state: State) -> None:
    session = session_in(state)
    assert session.next_deadline() is None
    assert session.check_timers(T0 + 1e6) is None


def test_logon_answer_is_awaited_for_logon_wait() -> None:
    session = SessionMachine(now=T0, logon_wait=30.0)
    session.handle(E.TLS_READY, T0 + 1)
    session.handle(E.LOGON_SENT, T0 + 2)
    assert session.next_deadline() == T0 + 32
    assert session.check_timers(T0 + 31.999) is None
    assert session.check_timers(T0 + 32) is E.GATEWAY_SILENT
    assert session.handle(E.GATEWAY_SILENT, T0 + 32) == (A.LOGOUT_TO_ENGINE, A.CLOSE)
    assert session.next_deadline() is None


def test_active_deadline_is_twice_heartbeat_plus_grace_from_the_older_peer() -> None:
    session = session_in(S.ACTIVE, heart_bt_int=30.0, grace=5.0)
    assert session.silence_limit == 65.0
    session.engine_activity(T0 + 10, 2)
    session.gateway_activity(T0 + 20, 2)
    # The engine was heard from longer ago, so it is the first that can fall silent.
    assert session.next_deadline() == T0 + 75
    assert session.check_timers(T0 + 74.9) is None
    assert session.check_timers(T0 + 75) is E.ENGINE_SILENT
    session.engine_activity(T0 + 50, 3)
    assert session.next_deadline() == T0 + 85
    assert session.check_timers(T0 + 84.9) is None
    assert session.check_timers(T0 + 85) is E.GATEWAY_SILENT


def test_gateway_silence_is_checked_first() -> None:
    # Both silent: the gateway's silence wins, because its end tells both peers (the engine's
    # only tells the gateway, which is no longer listening).
    session = session_in(S.ACTIVE, heart_bt_int=30.0, grace=5.0)
    session.gateway_activity(T0 + 1, 1)
    assert session.check_timers(T0 + 200) is E.GATEWAY_SILENT
    assert session.next_deadline() == T0 + 65


def test_activity_pushes_the_deadline_out() -> None:
    session = session_in(S.ACTIVE, heart_bt_int=10.0, grace=1.0)
    now = T0
    for _ in range(50):
        now += 10.0
        session.engine_activity(now, None)
        session.gateway_activity(now, None)
        assert session.check_timers(now) is None
        assert session.next_deadline() == now + 21.0
    assert session.check_timers(now + 20.9) is None
    assert session.check_timers(now + 21.0) is E.GATEWAY_SILENT


@pytest.mark.parametrize("state", LOGGING_OUT_STATES)
def test_logging_out_waits_logout_wait(state: State) -> None:
    session = SessionMachine(now=T0, logout_wait=2.0)
    session.handle(E.TLS_READY, T0)
    session.handle(E.LOGON_SENT, T0)
    session.handle(E.GATEWAY_LOGON, T0)
    entering = {S.ENGINE_LOGGING_OUT: E.ENGINE_LOGOUT, S.GATEWAY_LOGGING_OUT: E.GATEWAY_LOGOUT,
                S.LOGGING_OUT: E.SHUTDOWN}[state]
    session.handle(entering, T0 + 100)
    assert session.state is state
    assert session.next_deadline() == T0 + 102
    # Activity does not extend a Logout wait, and neither do repeated shutdowns.
    session.engine_activity(T0 + 101, 7)
    session.gateway_activity(T0 + 101, 7)
    session.handle(E.SHUTDOWN, T0 + 101.5)
    assert session.next_deadline() == T0 + 102
    assert session.check_timers(T0 + 101.99) is None
    assert session.check_timers(T0 + 102) is E.LOGOUT_TIMEOUT
    assert E.LOGOUT_TIMEOUT in {event for (s, event) in TRANSITIONS if s is state}
    assert session.handle(E.LOGOUT_TIMEOUT, T0 + 102)[-1] is A.CLOSE


@given(state=st.sampled_from(list(State)),
       engine_seen=st.floats(min_value=0.0, max_value=1e5),
       gateway_seen=st.floats(min_value=0.0, max_value=1e5),
       since=st.floats(min_value=0.0, max_value=1e5),
       later=st.floats(min_value=0.0, max_value=1e5))
def test_check_timers_agrees_with_next_deadline(state: State, engine_seen: float,
                                                gateway_seen: float, since: float,
                                                later: float) -> None:
    session = session_in(state, now=0.0)
    session.engine_seen, session.gateway_seen, session.since = engine_seen, gateway_seen, since
    deadline = session.next_deadline()
    now = since + later
    due = session.check_timers(now)
    if deadline is None:
        assert due is None
        return
    # Nothing is due before the deadline; something is due from it on, and the machine
    # accepts what is due in the state it is in.
    assert (due is not None) == (now >= deadline)
    if due is not None:
        assert (state, due) in TRANSITIONS


def test_activity_keeps_the_highest_seq_num() -> None:
    session = session_in(S.ACTIVE)
    session.engine_activity(T0 + 1, 5)
    session.engine_activity(T0 + 2, 3)
    session.engine_activity(T0 + 3, None)
    assert (session.engine_last_seq, session.engine_seen) == (5, T0 + 3)
    session.gateway_activity(T0 + 4, 9)
    session.gateway_activity(T0 + 5, 2)
    session.gateway_activity(T0 + 6, None)
    assert (session.gateway_last_seq, session.gateway_seen) == (9, T0 + 6)
    session.engine_activity(T0 + 7, 6)
    assert session.engine_last_seq == 6
    # The two directions are counted apart.
    assert session.gateway_last_seq == 9


def test_the_machine_numbers_fixproxys_own_logouts() -> None:
    machine = SessionMachine(now=T0)
    machine.engine_activity(T0, 7)
    machine.gateway_activity(T0, 3)
    assert machine.next_logout_seq(to_gateway=True) == 8
    assert machine.next_logout_seq(to_gateway=True) == 9
    assert machine.next_logout_seq(to_gateway=False) == 4
    # A later message from the peer never goes back below a number already handed out.
    machine.engine_activity(T0, 8)
    assert machine.engine_last_seq == 9


def test_a_held_engine_is_the_stopped_gateway_silence() -> None:
    # The gateway stopped reading: fixproxy holds the engine off, so the engine is heard from
    # last; its silence is reported as the gateway's, which is the side that went away.
    session = session_in(S.ACTIVE, heart_bt_int=4.0, grace=0.5)
    session.gateway_activity(T0 + 2, 5)
    session.engine_activity(T0 + 1, 5)
    assert session.check_timers(T0 + 9.5, engine_held=True) is E.GATEWAY_SILENT
    assert session.check_timers(T0 + 9.5) is E.ENGINE_SILENT
    assert session.check_timers(T0 + 9.4, engine_held=True) is None


def test_a_held_gateway_is_the_stopped_engine_silence() -> None:
    session = session_in(S.ACTIVE, heart_bt_int=4.0, grace=0.5)
    session.engine_activity(T0 + 2, 5)
    session.gateway_activity(T0 + 1, 5)
    assert session.check_timers(T0 + 9.5, gateway_held=True) is E.ENGINE_SILENT
    assert session.check_timers(T0 + 9.5) is E.GATEWAY_SILENT
    # Both held off: nobody to blame but the side that is silent.
    assert session.check_timers(T0 + 9.5, engine_held=True, gateway_held=True) \
        is E.GATEWAY_SILENT
