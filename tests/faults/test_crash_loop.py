"""Real faults: fixproxy killed with SIGKILL at random instants under a trading QuickFIX engine.

The engine is the one sequence translation exists for: QuickFIX 1.16 with a FileStore and
ResetOnLogon=N on KalshiNR, so fixproxy forces 141=Y upstream and renumbers both directions
for the life of each connection. One initiator lives through the whole loop and reconnects by
itself every second; fixproxy runs as a real process and is killed (SIGKILL) at an instant
drawn uniformly from the first :data:`KILL_WINDOW` seconds after the engine sent its Logon,
so some kills land during the Logon (signature, TLS, the gateway's answer, a drop-copy
recovery) and most while orders flow. Then it is started again over the same state directory.

After every kill, each state file parses as a restarted fixproxy reads it (sequence numbers,
the live record, the recovery cursors) and the journal is whole up to at most its last line.
After the loop the engine logs on once more and trades, and the run must show:

* no sequence error on the engine's side: QuickFIX never logged "MsgSeqNum too low", never
  logged out or was logged out for a sequence reason, and every ResendRequest it sent (its
  answer to a number higher than expected) was answered with a SequenceReset-GapFill;
* no refusal on the gateway's side: the simulator sent no Reject and no Logout but the answer
  to the engine's last one, and on every connection it received 34=1, 2, 3... without a gap;
* no order silently lost: every order QuickFIX sent has its ExecutionReport, or was in flight
  when the connection it was sent on was cut by a kill (recorded per kill).

The seed is printed; set FIXPROXY_CRASH_SEED to replay a run's kill instants, and
FIXPROXY_CRASH_ITERATIONS to change the plain loop's length (50). A kill "during the Logon" is
one before QuickFIX had its Logon answer; the printed summary says how many there were, and
how many orders each kill cut off.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
import trio
from support.crash_loop import OrderFlow, ProxyProcess, check_journal, check_state_files
from support.e2e import E2EMaterial
from support.quickfix_engine import (
    EngineRecord,
    EngineSettings,
    QuickFixEngine,
    event_log_text,
    quickfix_log_on_failure,
)
from support.recovery_stack import RecoveryKeys, make_drop_copy_keys
from support.reload_harness import Session, config_text, free_fixed_port

from fixproxy.fix import tags
from fixproxy.fix.codec import iter_fields
from fixproxy.ops import liveseq
from fixproxy.ops.liveseq import LiveSequences
from fixproxy.sim.gateway import SimConfig, SimGateway

pytestmark = [pytest.mark.faults, pytest.mark.interop,
              pytest.mark.usefixtures("quickfix_available")]

ENDPOINT: Final = "KalshiNR"
SESSION: Final = "crash"
KILL_WINDOW: Final = 1.2
"""Seconds after the engine's Logon within which the kill falls, uniformly."""
STEP_TIMEOUT: Final = 15.0
"""Longest wait for one event (fixproxy listening, QuickFIX reconnecting, seeing a close)."""
FINAL_ORDERS: Final = 5
"""Orders answered on the last connection before the engine logs out."""
SEED: Final = int(os.environ.get("FIXPROXY_CRASH_SEED") or random.SystemRandom().randrange(2**32))


@dataclass(frozen=True, slots=True)
class Kill:
    """One kill and what the engine had of its connection."""

    iteration: int
    after_logon: float
    """Seconds between the engine's Logon and the kill."""
    logged_on: bool
    """The engine received the Logon answer before the close: the kill fell while trading."""
    in_flight: frozenset[str]
    """Orders sent on this connection and not answered when the engine saw it close."""


@dataclass(slots=True)
class LoopRun:
    """What one crash loop did, for the assertions and the printed figures."""

    kills: list[Kill] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    journal_lines: int = 0
    seconds: float = 0.0
    reached_gateway: set[str] = field(default_factory=set)
    """ClOrdIDs the simulator received."""

    def summary(self, variant: str) -> str:
        logon = sum(1 for kill in self.kills if not kill.logged_on)
        in_flight = sum(len(kill.in_flight) for kill in self.kills)
        cut: set[str] = set().union(*(kill.in_flight for kill in self.kills))
        return (f"crash loop [{variant}] seed={SEED}: {len(self.kills)} kills ({logon} during "
                f"the Logon, {len(self.kills) - logon} while trading) in {self.seconds:.1f} s; "
                f"orders sent {len(self.sent)}, answered {len(self.answered)}, in flight at a "
                f"kill {in_flight} (of which reached the gateway {len(cut & self.reached_gateway)}"
                f", answered later {len(cut & self.answered)}); journal lines "
                f"{self.journal_lines}; cut off after reaching the gateway: "
                f"{sorted(cut & self.reached_gateway)}")


@dataclass(frozen=True, slots=True)
class Variant:
    """How many kills, and which optional state fixproxy keeps meanwhile."""

    iterations: int
    journal: bool = False
    recovery: bool = False


VARIANTS: Final = {
    "plain": Variant(int(os.environ.get("FIXPROXY_CRASH_ITERATIONS") or 50)),
    "journal": Variant(15, journal=True),
    "recovery": Variant(15, journal=True, recovery=True),
}


def config_file(material: E2EMaterial, tmp_path: Path, ports: dict[str, tuple[str, int]],
                listen: int, variant: Variant, dc_keys: RecoveryKeys | None) -> Path:
    extra = f'journal_dir = "{tmp_path / "journal"}"' if variant.journal else ""
    session_extra = "translate_sequence = true\n"
    if dc_keys is not None:
        session_extra += (f'\n[session.recovery]\napi_key = "{dc_keys.api_key}"\n'
                          f'private_key = "{dc_keys.private_key}"\n'
                          f"port = {ports['KalshiDC'][1]}\nsave_interval = 0.05\n")
    text = config_text(material, ports[ENDPOINT][1], tmp_path / "state",
                       [Session(SESSION, listen, key=material.api_key)], extra=extra,
                       session_extra=session_extra)
    path = tmp_path / "fixproxy.toml"
    path.write_text(text)
    return path


def logons_sent(record: EngineRecord) -> int:
    return len(record.sent_of(tags.MT_LOGON))


def logons_sent_above(count: int, record: EngineRecord) -> bool:
    return logons_sent(record) > count


def crash_loop(proxy: ProxyProcess, settings: EngineSettings, variant: Variant,
               material: E2EMaterial, tmp_path: Path) -> tuple[LoopRun, EngineRecord]:
    """Blocking: the loop of kills, then a last clean connection; what it did and what
    QuickFIX saw."""
    rng = random.Random(SEED)
    run = LoopRun()
    started = time.monotonic()
    state_dir, journal_dir = tmp_path / "state", tmp_path / "journal"
    # Listening before the engine starts: its first Logon is 34=1 from a fresh store, a
    # connection with nothing to renumber yet, and the first kill falls in it.
    proxy.start(STEP_TIMEOUT)
    with QuickFixEngine(settings) as engine:
        record = engine.record
        flow = OrderFlow(engine)
        flow.start()
        try:
            for iteration in range(variant.iterations):
                before = logons_sent(record) if iteration else 0
                logons_before = record.counts()[0]
                if iteration:
                    proxy.start(STEP_TIMEOUT)
                assert record.wait_until(functools.partial(logons_sent_above, before),
                                         STEP_TIMEOUT), "QuickFIX did not reconnect"
                logon_at = time.monotonic()
                delay = rng.uniform(0.0, KILL_WINDOW)
                time.sleep(delay)  # the kill instant itself, not a wait for anything
                proxy.kill()
                # QuickFIX calls onLogout once per connection it sent a Logon on, when it
                # sees the close: after that nothing more arrives from this connection.
                assert record.wait_until(lambda r: r.logouts >= logons_sent(r), STEP_TIMEOUT), \
                    "QuickFIX did not notice the kill"
                logons = record.counts()[0]
                logged_on = logons > logons_before
                in_flight = flow.in_flight(logons) if logged_on else set()
                run.kills.append(Kill(iteration, time.monotonic() - logon_at, logged_on,
                                      frozenset(in_flight)))
                check_state_files(state_dir, SESSION, material.api_key, ENDPOINT,
                                  recovery=variant.recovery)
                if variant.journal and journal_dir.exists():
                    check_journal(journal_dir)
            # The last connection: it logs on, trades, and logs out cleanly.
            logons_before = record.counts()[0]
            proxy.start(STEP_TIMEOUT)
            assert record.wait_until(lambda r: r.logons > logons_before, STEP_TIMEOUT), \
                "QuickFIX did not log on after the last restart"
            final = logons_before + 1
            assert record.wait_until(
                lambda r: sum(1 for order, conn in list(flow.sent.items())
                              if conn == final and order in flow.answered()) >= FINAL_ORDERS,
                STEP_TIMEOUT), "the last connection did not trade"
        finally:
            flow.close()
        assert record.wait_until(lambda r: not flow.in_flight(final), STEP_TIMEOUT), \
            f"the last connection left orders unanswered: {flow.in_flight(final)}"
        engine.logout("end of the crash loop")
        assert record.wait_until(lambda r: r.logouts >= logons_sent(r), STEP_TIMEOUT)
    proxy.kill()
    run.seconds = time.monotonic() - started
    run.sent = dict(flow.sent)
    run.answered = flow.answered()
    if variant.journal:
        run.journal_lines = check_journal(journal_dir)
    check_state_files(state_dir, SESSION, material.api_key, ENDPOINT, recovery=variant.recovery)
    return run, record


def check_engine(record: EngineRecord, events: str, run: LoopRun) -> None:
    """No sequence error on the engine's side (see the module)."""
    assert "MsgSeqNum too low" not in events, events
    resends = record.sent_of(tags.MT_RESEND_REQUEST)
    fills = record.received_of(tags.MT_SEQUENCE_RESET)
    # Each ResendRequest follows a number higher than expected and is answered with a gap
    # fill starting where it asked, to a number beyond.
    assert events.count("MsgSeqNum too high") == len(resends), events
    filled = {(fill.get(tags.MSG_SEQ_NUM), fill.get(tags.GAP_FILL_FLAG)) for fill in fills}
    for resend in resends:
        assert (resend.get(tags.BEGIN_SEQ_NO), b"Y") in filled, (resend.raw, fills)
    for fill in fills:
        assert int(fill.get(tags.NEW_SEQ_NO) or 0) > int(fill.get(tags.MSG_SEQ_NUM) or 0)
    assert not record.received_of(tags.MT_RESEND_REQUEST)
    assert not record.received_of(tags.MT_REJECT) and not record.sent_of(tags.MT_REJECT)
    # One Logout each way: the engine's last one and its answer; fixproxy sent none of its
    # own and neither side logged out over numbers.
    assert [m.get(tags.TEXT) for m in record.sent_of(tags.MT_LOGOUT)] == \
        [b"end of the crash loop"], events
    received = record.received_of(tags.MT_LOGOUT)
    assert len(received) == 1 and received[0].get(tags.TEXT) is None, received
    # Every order is answered, or was in flight when a kill cut its connection.
    lost = set(run.sent) - run.answered
    cut = set().union(*(kill.in_flight for kill in run.kills))
    assert lost <= cut, f"orders lost without a kill to explain them: {sorted(lost - cut)}"


def check_gateway(sim: SimGateway) -> None:
    """The simulator refused nothing and saw every connection numbered from 1 without a gap."""
    events = list(sim.events)
    out = [event for event in events if event.direction == "out"
           and event.endpoint == ENDPOINT]
    assert not [event.raw for event in out if event.msg_type in (tags.MT_REJECT, b"j")]
    logouts = [event.raw for event in out if event.msg_type == tags.MT_LOGOUT]
    assert len(logouts) == 1 and tags.TEXT not in dict(iter_fields(logouts[0])), logouts
    seqs: dict[int, list[int]] = {}
    for event in events:
        if event.direction == "in" and event.endpoint == ENDPOINT:
            number = dict(iter_fields(event.raw))[tags.MSG_SEQ_NUM]
            seqs.setdefault(event.conn_id, []).append(int(number))
    for conn_id, numbers in seqs.items():
        assert numbers == list(range(1, len(numbers) + 1)), (conn_id, numbers)


@pytest.fixture(name="proxy_process")
def proxy_process_fixture(tmp_path: Path) -> Iterator[ProxyProcess]:
    """A restartable fixproxy process, killed at the end whatever happened."""
    proxy = ProxyProcess(tmp_path / "fixproxy.toml", tmp_path / "fixproxy.log")
    try:
        yield proxy
    finally:
        if proxy.process is not None:
            proxy.process.kill()
            proxy.process.wait()


@pytest.mark.parametrize("name", list(VARIANTS))
async def test_kill_at_any_instant_loses_no_sequence_and_no_order(
        tmp_path: Path, e2e_material: E2EMaterial, proxy_process: ProxyProcess,
        name: str) -> None:
    """SIGKILL fixproxy at random instants of a renumbered QuickFIX session, many times over:
    the engine always logs on again and trades without a sequence error, no state file is
    ever torn, and no order disappears without a kill to explain it."""
    variant = VARIANTS[name]
    dc_keys = make_drop_copy_keys(tmp_path / "dc-keys") if variant.recovery else None
    keys = {e2e_material.api_key: e2e_material.public_key}
    ports = {ENDPOINT: 0}
    if dc_keys is not None:
        keys[dc_keys.api_key] = dc_keys.public_key
        ports["KalshiDC"] = 0
    sim = SimGateway(SimConfig(ports=ports, keys=keys), e2e_material.certs.server_context())
    print(f"crash loop [{name}]: seed {SEED} (FIXPROXY_CRASH_SEED={SEED} replays it)")
    guard = 30.0 + variant.iterations * (KILL_WINDOW + 2 * STEP_TIMEOUT)
    with trio.fail_after(guard), quickfix_log_on_failure(tmp_path / "engine"):
        async with trio.open_nursery() as nursery:
            addresses: dict[str, tuple[str, int]] = await nursery.start(sim.serve)
            listen = free_fixed_port()
            config_file(e2e_material, tmp_path, addresses, listen, variant, dc_keys)
            settings = EngineSettings(sender_comp_id=e2e_material.api_key,
                                      target_comp_id=ENDPOINT, port=listen,
                                      workdir=tmp_path / "engine", reset_on_logon=False,
                                      reconnect_interval=1)
            try:
                run, engine_record = await trio.to_thread.run_sync(
                    crash_loop, proxy_process, settings, variant, e2e_material, tmp_path)
            finally:
                proxy_process.kill()
            nursery.cancel_scope.cancel()
        run.reached_gateway = {(dict(iter_fields(event.raw)).get(11) or b"").decode()
                               for event in sim.events if event.direction == "in"
                               and event.msg_type == b"D"}
        print(run.summary(name))
        check_gateway(sim)
        assert len(run.kills) == variant.iterations
        assert any(kill.logged_on for kill in run.kills)
        check_engine(engine_record, event_log_text(settings), run)


def logged_on_times(count: int, record: EngineRecord) -> bool:
    return record.counts()[0] >= count


def reports_at_least(count: int, record: EngineRecord) -> bool:
    return len(record.received_of(tags.MT_EXECUTION_REPORT)) >= count


def ahead_of_the_engine(proxy: ProxyProcess, settings: EngineSettings,
                        material: E2EMaterial, state_dir: Path, lost: int) -> EngineRecord:
    """Blocking: trade, kill, move the live record ``lost`` numbers past what the engine has
    (messages stored but lost with the process), restart, trade again, log out."""
    with QuickFixEngine(settings) as engine:
        record = engine.record
        proxy.start(STEP_TIMEOUT)
        for connection, prefix in ((1, "BEFORE"), (2, "AFTER")):
            assert record.wait_until(functools.partial(logged_on_times, connection),
                                     STEP_TIMEOUT), f"QuickFIX did not log on ({connection})"
            for n in range(3):
                engine.send_limit_order(f"{prefix}-{n}", symbol="KXAHEAD-26JAN01",
                                        side_buy=True, price=0.45, quantity=1)
            assert record.wait_until(functools.partial(reports_at_least, 3 * connection),
                                     STEP_TIMEOUT), "QuickFIX did not receive its reports"
            if connection == 1:
                proxy.kill()
                assert record.wait_until(lambda r: r.logouts >= 1, STEP_TIMEOUT)
                path = state_dir / f"{SESSION}.live"
                number = liveseq.load(path, material.api_key, ENDPOINT)
                assert number is not None
                live = LiveSequences.open(path, material.api_key, ENDPOINT)
                live.store(number + lost)
                live.close()
                proxy.start(STEP_TIMEOUT)
        engine.logout("end of the crash loop")
        assert record.wait_until(lambda r: r.logouts >= 2, STEP_TIMEOUT)
    proxy.kill()
    return record


async def test_a_record_ahead_of_the_engine_is_gap_filled_and_quickfix_trades_on(
        tmp_path: Path, e2e_material: E2EMaterial, proxy_process: ProxyProcess) -> None:
    """What a kill leaves when reports were stored but never reached the engine: the next
    Logon answer carries a 34 higher than QuickFIX expects. QuickFIX logs "MsgSeqNum too
    high" and asks for the missing numbers; fixproxy answers with a gap fill (Kalshi's NR
    cannot retransmit) and QuickFIX trades on, with no Logout and no gap upstream."""
    lost = 3
    sim = SimGateway(SimConfig(ports={ENDPOINT: 0},
                               keys={e2e_material.api_key: e2e_material.public_key}),
                     e2e_material.certs.server_context())
    with trio.fail_after(120), quickfix_log_on_failure(tmp_path / "engine"):
        async with trio.open_nursery() as nursery:
            addresses: dict[str, tuple[str, int]] = await nursery.start(sim.serve)
            listen = free_fixed_port()
            config_file(e2e_material, tmp_path, addresses, listen, Variant(1), None)
            settings = EngineSettings(sender_comp_id=e2e_material.api_key,
                                      target_comp_id=ENDPOINT, port=listen,
                                      workdir=tmp_path / "engine", reset_on_logon=False,
                                      reconnect_interval=1)
            try:
                record = await trio.to_thread.run_sync(
                    ahead_of_the_engine, proxy_process, settings, e2e_material,
                    tmp_path / "state", lost)
            finally:
                proxy_process.kill()
            nursery.cancel_scope.cancel()
        check_gateway(sim)
        events = event_log_text(settings)
        assert events.count("MsgSeqNum too high") == 1, events
        [resend] = record.sent_of(tags.MT_RESEND_REQUEST)
        [fill] = record.received_of(tags.MT_SEQUENCE_RESET)
        begin = int(resend.get(tags.BEGIN_SEQ_NO) or 0)
        assert int(fill.get(tags.MSG_SEQ_NUM) or 0) == begin
        assert int(fill.get(tags.NEW_SEQ_NO) or 0) == begin + lost
        run = LoopRun(sent={f"{p}-{n}": 0 for p in ("BEFORE", "AFTER") for n in range(3)},
                      answered={(m.get(11) or b"").decode()
                                for m in record.received_of(tags.MT_EXECUTION_REPORT)})
        check_engine(record, events, run)
        assert "answers with a gap fill" in (tmp_path / "fixproxy.log").read_text()
