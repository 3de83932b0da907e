"""Drop-copy recovery for one Logon: decide, replay, filter, count and explain (trio).

A session relay whose session has ``[session.recovery]`` calls :func:`recover_session` (through
the control plane, from its thread) once Kalshi has accepted the NR Logon, and waits: the
engine's Logon answer is held until this returns. It returns the reports to inject, or none;
every way recovery cannot happen (no cursor yet, a cursor older than Kalshi's 3-hour window,
the drop-copy key in use, TLS or Logon failures, a reject, the deadline) is logged once with
what the operator should do and counted in ``fixproxy_recovery_total``, and the session goes on
without recovery. The conversation itself is :mod:`fixproxy.proxy.dropcopy`; which reports the
engine gets is :func:`fixproxy.session.recovery.select_reports`.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import trio

from fixproxy.errors import FixProxyError, UpstreamError
from fixproxy.proxy.dropcopy import DropCopyReplay, replay_from_drop_copy
from fixproxy.proxy.runtime import SessionRuntime
from fixproxy.session.machine import Event, SessionMachine, State
from fixproxy.session.recovery import (
    ExecId,
    RecoveryState,
    RecoveryTracker,
    plan_recovery,
    reconcile_hint,
    select_reports,
)

SUCCESS_RESULTS: Final = frozenset({"ok", "nothing_to_do"})
"""Results of fixproxy_recovery_total that leave nothing missing; the others alert."""


async def recover_session(runtime: SessionRuntime, state: RecoveryState,
                          flags: tuple[tuple[int, bytes], ...], conn_id: int,
                          log: logging.LoggerAdapter[logging.Logger]
                          ) -> tuple[tuple[ExecId, bytes], ...]:
    """Replay what the engine of ``runtime``'s session missed since ``state``.

    Never raises for a drop-copy or network fault (those are results); only cancellation
    passes through.

    Args:
        state: the session's cursors and ClOrdIDs as the relay has them.
        flags: the NR Logon's report-format flags, for the drop-copy Logon.
        conn_id: the session's connection, which holds the drop-copy key meanwhile.
    Returns:
        The reports for the engine, in ExecID order.
    """
    recovery = runtime.recovery
    if recovery is None:
        return ()
    name = runtime.config.name
    metrics = runtime.metrics
    now = time.time()
    newest = max((cursor.at for cursor in state.cursors), default=None)

    def done(result: str, text: str, kept: int = 0) -> None:
        metrics.recoveries.labels(session=name, result=result).inc()
        if kept:
            metrics.recovered_reports.labels(session=name).inc(kept)
        if result in SUCCESS_RESULTS:
            log.info("drop-copy recovery %s: %s", result, text)
        else:
            log.warning("drop-copy recovery failed (%s): %s; %s", result, text,
                        reconcile_hint(plan, newest))

    plan = plan_recovery(state, now)
    if not state.cursors:
        done("nothing_to_do", "no ExecutionReport was forwarded on this session yet, so "
             "there is no cursor to recover from")
        return ()
    if state.clean_end and not recovery.config.after_clean_logout:
        done("nothing_to_do", "the last connection ended with a completed Logout and "
             "after_clean_logout = false")
        return ()
    for cursor in plan.stale:
        log.warning("exchange index %d: the newest ExecID the engine had (%s) is older than "
                    "Kalshi's 3-hour drop-copy window; reports there cannot be replayed",
                    cursor.exec_id.index, cursor.exec_id.text.decode())
    if plan.uncovered:
        log.info("exchange indexes %s have no cursor (no report seen there yet); reports on "
                 "them are not replayed", ", ".join(map(str, plan.uncovered)))
    if not plan.requests:
        done("window_exceeded", "the engine has been away longer than the 3-hour window")
        return ()
    dc_key = recovery.config.api_key
    holder = runtime.manager.claim(dc_key, f"{name} (drop copy)", conn_id)
    if holder is not None:
        done("key_busy", f"the drop-copy API key {dc_key} is in use by {holder.describe()}")
        return ()
    replay = DropCopyReplay()
    result, detail = "ok", ""
    try:
        with trio.move_on_after(recovery.config.timeout) as scope:
            await replay_from_drop_copy(recovery.connect, dc_key, recovery.sign, flags,
                                        plan.requests, replay)
        if scope.cancelled_caught:
            result, detail = "timeout", (f"the drop copy did not finish within "
                                         f"{recovery.config.timeout:g} s (timeout)")
    except UpstreamError as exc:
        result, detail = "connect_failed", (f"cannot open TLS to the drop copy "
                                            f"{recovery.config.host}:{recovery.config.port}: "
                                            f"{exc}")
    except FixProxyError as exc:
        result, detail = "error", str(exc)
    finally:
        runtime.manager.release(dc_key, conn_id)
    if result == "ok" and replay.refused is not None:
        result, detail = "logon_failed", f"the drop copy refused the Logon: {replay.refused}"
    if result == "ok":
        for index in replay.indexes:
            if index.result != "ok":
                result = "rejected" if index.result not in (
                    "window_exceeded", "not_enabled") else index.result
                detail = f"exchange index {index.begin.index}: {index.detail}"
                break
    selection = select_reports(replay.reports, plan, plan.requests)
    kept = len(selection.kept)
    summary = (f"{kept} report(s) for the engine from {len(replay.reports)} replayed "
               f"({selection.known} already had, {selection.foreign} of other orders)")
    done(result, f"{detail}; {summary}" if detail else summary, kept)
    return selection.kept


async def check_drop_copy(runtime: SessionRuntime) -> str:
    """Log on to the session's drop copy and out again (``fixproxy check``); what happened.

    Raises:
        FixProxyError: TLS, the Logon or the deadline failed (the text says which).
    """
    recovery = runtime.recovery
    if recovery is None:
        raise FixProxyError("the session has no [session.recovery]")
    cfg = recovery.config
    peer = f"{cfg.host}:{cfg.port}"
    replay = DropCopyReplay()
    with trio.move_on_after(cfg.timeout) as scope:
        await replay_from_drop_copy(recovery.connect, cfg.api_key, recovery.sign, (), (),
                                    replay)
    if scope.cancelled_caught:
        raise FixProxyError(f"the drop copy {peer} did not answer within {cfg.timeout:g} s")
    if replay.refused is not None:
        raise FixProxyError(f"the drop copy {peer} refused the Logon of key {cfg.api_key}: "
                            f"{replay.refused}")
    return f"the drop copy {peer} accepted the Logon of key {cfg.api_key}"


def recovery_tracker(runtime: SessionRuntime, log: logging.LoggerAdapter[logging.Logger]
                     ) -> RecoveryTracker | None:
    """The session's saved recovery state, as a tracker for its relay; None without
    ``[session.recovery]``."""
    recovery = runtime.recovery
    if recovery is None:
        return None
    cfg = runtime.config
    state: RecoveryState | None = None
    if recovery.store is not None:
        try:
            state = recovery.store.load(cfg.name, cfg.api_key, cfg.endpoint.target_comp_id)
        except FixProxyError as exc:
            log.error("%s", exc)  # noqa: TRY400  the message says it all
    else:
        state = recovery.memory.get(cfg.name)
    if state is None:
        state = RecoveryState(cfg.api_key, cfg.endpoint.target_comp_id)
    return RecoveryTracker(state)


def save_recovery(runtime: SessionRuntime, state: RecoveryState,
                  log: logging.LoggerAdapter[logging.Logger]) -> None:
    recovery = runtime.recovery
    if recovery is None:
        return
    if recovery.store is None:
        recovery.memory[runtime.config.name] = state
        return
    name = runtime.config.name
    writes = runtime.metrics.state_writes
    try:
        recovery.store.save(name, state)
    except FixProxyError as exc:
        writes.report(name, "recovery", str(exc), log)
    else:
        writes.recovered(name, "recovery", f"recovery state of session {name}", log)


def ended_cleanly(machine: SessionMachine) -> bool:
    """The connection ended with a completed Logout exchange (each side sent one)."""
    if not machine.history:
        return False
    _, before, event = machine.history[-1]
    return (before, event) in {(State.ENGINE_LOGGING_OUT, Event.GATEWAY_LOGOUT),
                               (State.GATEWAY_LOGGING_OUT, Event.ENGINE_LOGOUT),
                               (State.LOGGING_OUT, Event.GATEWAY_LOGOUT)}
