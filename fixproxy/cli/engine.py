"""``fixproxy engine``: a scripted FIX engine on the command line, the smoke test of a running
fixproxy.

It does what a legacy engine does through fixproxy, step by step: plain TCP to a listener, an
unsigned Logon, the orders it was asked for (none unless ``--orders``: on a production host a
smoke test must not trade by accident), a TestRequest that must come back as a Heartbeat, an
optional hold while heartbeating, and a Logout that must be answered. Every message is printed
as it goes, and the first step that does not get its answer ends the run with one line saying
which and why; the command then exits 1. The messages are built by the simulator's scripted
engine (:class:`fixproxy.sim.engine.ScriptedEngine`), the one the demo and the tests use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import trio

from fixproxy.errors import FixProxyError
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, render
from fixproxy.sim.engine import MESSAGE_NAMES, ScriptedEngine, describe

Echo = Callable[[str], object]
DEFAULT_SYMBOL: Final = "HIGHNY-23DEC31"
_EXECUTION_REPORT: Final = frozenset({tags.MT_EXECUTION_REPORT})
_REJECTS: Final = frozenset({b"3", b"j"})
"""Reject and BusinessMessageReject: a message of the engine's was refused, which ends the
test."""
_HEARTBEAT: Final = frozenset({tags.MT_HEARTBEAT})
_LOGOUT: Final = frozenset({tags.MT_LOGOUT})


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """What ``fixproxy engine`` is asked to do."""

    host: str
    port: int
    sender: str
    target: str
    orders: int = 0
    hold: float = 0.0
    """Seconds to stay logged on after the TestRequest, heartbeating."""
    timeout: float = 10.0
    """Seconds each step may wait for its answer."""
    heart_bt_int: int = 30
    reset: bool = False
    """Send ResetSeqNumFlag 141=Y on the Logon."""
    symbol: str = DEFAULT_SYMBOL


class StepFailed(FixProxyError):
    """A step of the smoke test did not get the answer it needs."""


class _Transcript:
    """Prints the engine's messages as they come, with their direction."""

    def __init__(self, engine: ScriptedEngine, echo: Echo) -> None:
        self.engine = engine
        self.echo = echo
        self.printed = 0

    def flush(self) -> None:
        entries = self.engine.transcript
        for direction, raw in entries[self.printed:]:
            arrow = "engine ->" if direction == "sent" else "engine <-"
            self.echo(f"{arrow} {describe(raw)}: {render(raw, shorten_secrets=True)}")
        self.printed = len(entries)


async def run_engine(plan: EnginePlan, echo: Echo) -> str:
    """Run the smoke test; a one-line summary when every step got its answer.

    Raises:
        FixProxyError: the connection cannot be opened, or a step failed (:class:`StepFailed`
            says which); the transcript up to there has been printed.
    """
    try:
        stream = await trio.open_tcp_stream(plan.host, plan.port)
    except OSError as exc:
        raise FixProxyError(f"cannot connect to {plan.host}:{plan.port}: "
                            f"{exc.strerror or exc}; is fixproxy running, and is this a "
                            f"session's listen address?") from exc
    engine = ScriptedEngine(stream, sender=plan.sender, target=plan.target)
    transcript = _Transcript(engine, echo)
    echo(f"connected to {plan.host}:{plan.port} as {plan.sender} -> {plan.target}")
    try:
        return await _script(engine, plan, transcript)
    finally:
        transcript.flush()
        await engine.aclose()


async def _script(engine: ScriptedEngine, plan: EnginePlan, transcript: _Transcript) -> str:
    with _step("the Logon", plan.timeout):
        answer = await engine.logon(heart_bt_int=plan.heart_bt_int,
                                    reset=True if plan.reset else None)
    transcript.flush()
    if answer is None:
        raise StepFailed("the connection closed without an answer to the Logon")
    if answer.msg_type != tags.MT_LOGON:
        raise StepFailed(f"the Logon was refused: {_text(answer)}")
    for _ in range(plan.orders):
        await engine.new_order(plan.symbol)
    answered = 0
    with _step(f"{plan.orders} order(s)", plan.timeout):
        while answered < plan.orders:
            await _expect(engine, _EXECUTION_REPORT, "an order's ExecutionReport")
            answered += 1
    transcript.flush()
    test_req_id = f"fixproxy-engine-{time.time_ns()}".encode()
    await engine.send(tags.MT_TEST_REQUEST, [(tags.TEST_REQ_ID, test_req_id)])
    with _step("the TestRequest", plan.timeout):
        while (await _expect(engine, _HEARTBEAT, "the TestRequest's Heartbeat")
               ).get(tags.TEST_REQ_ID) != test_req_id:
            pass
    transcript.flush()
    if plan.hold > 0:
        await _hold(engine, plan, transcript)
    await engine.send(tags.MT_LOGOUT)
    with _step("the Logout", plan.timeout):
        logout = await _expect(engine, _LOGOUT, "the answering Logout", logout_ends=False)
    transcript.flush()
    text = logout.get_str(tags.TEXT)
    return (f"ok: Logon accepted, {answered} of {plan.orders} order(s) answered by an "
            f"ExecutionReport, TestRequest answered, held {plan.hold:g} s, Logout answered"
            f"{f' ({text})' if text else ''}")


async def _hold(engine: ScriptedEngine, plan: EnginePlan, transcript: _Transcript) -> None:
    """Stay logged on for ``plan.hold`` seconds: Heartbeats on time, TestRequests answered."""
    end = trio.current_time() + plan.hold
    next_beat = trio.current_time() + plan.heart_bt_int
    while (now := trio.current_time()) < end:
        if now >= next_beat:
            await engine.send(tags.MT_HEARTBEAT)
            next_beat = now + plan.heart_bt_int
        with trio.move_on_at(min(end, next_beat)):
            # Nothing is wanted: it returns only by raising, on a Logout or a close.
            await _expect(engine, frozenset(), "the end of the hold")
        transcript.flush()


async def _expect(engine: ScriptedEngine, wanted: frozenset[bytes], what: str,
                  *, logout_ends: bool = True) -> FixMessage:
    """The next message of a ``wanted`` type, answering TestRequests on the way.

    Raises:
        StepFailed: the peer logged out (when ``logout_ends``) or closed first.
    """
    while True:
        message = await engine.receive()
        if message is None:
            raise StepFailed(f"the connection closed while waiting for {what}")
        if message.msg_type in wanted:
            return message
        if message.msg_type in _REJECTS:
            raise StepFailed(f"{describe_type(message.msg_type)} while waiting for {what}: "
                             f"{_text(message)}")
        if message.msg_type == tags.MT_LOGOUT and logout_ends:
            raise StepFailed(f"logged out while waiting for {what}: {_text(message)}")
        if message.msg_type == tags.MT_TEST_REQUEST:
            await engine.send(tags.MT_HEARTBEAT,
                              [(tags.TEST_REQ_ID, message.get(tags.TEST_REQ_ID) or b"")])


def _text(message: FixMessage) -> str:
    return message.get_str(tags.TEXT) or f"{describe_type(message.msg_type)} without a Text (58)"


def describe_type(msg_type: bytes) -> str:
    """A MsgType by name, ``35=<code>`` where it has none here."""
    return MESSAGE_NAMES.get(msg_type, f"35={msg_type.decode('ascii', 'replace')}")


@contextmanager
def _step(what: str, timeout: float) -> Iterator[None]:
    """Bound one step in time; a timeout becomes a :class:`StepFailed` naming the step."""
    try:
        with trio.fail_after(timeout):
            yield
    except trio.TooSlowError:
        raise StepFailed(f"no answer to {what} within {timeout:g} s") from None
