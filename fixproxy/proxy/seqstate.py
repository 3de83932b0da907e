"""A connection's sequence state on disk: the live record while it lives, the saved numbers
at its end (:mod:`fixproxy.ops.liveseq`, :mod:`fixproxy.ops.seqstore`), for admission."""

from __future__ import annotations

import logging

from fixproxy.errors import FixProxyError
from fixproxy.ops.liveseq import LiveSequences
from fixproxy.ops.seqstore import SessionSequences
from fixproxy.proxy.runtime import SessionRuntime
from fixproxy.session.machine import SessionMachine
from fixproxy.session.sequence import SequenceTranslator

Log = logging.LoggerAdapter[logging.Logger]


def open_live(runtime: SessionRuntime, translator: SequenceTranslator | None,
              log: Log) -> LiveSequences | None:
    """The live record a renumbered connection keeps current (:mod:`fixproxy.ops.liveseq`);
    None for other connections, or if it cannot be opened (logged: the number is then saved
    only when the connection ends, as without it)."""
    store = runtime.sequences
    if translator is None or store is None:
        return None
    cfg = runtime.config
    try:
        live = store.open_live(cfg.name, cfg.api_key, cfg.endpoint.target_comp_id)
    except FixProxyError as exc:
        text = f"{exc}; were fixproxy killed now, the engine's next number would be stale"
        log.error("%s", text)  # noqa: TRY400  the message says it all
        return None
    live.store(translator.in_offset + 1)
    return live


def save_sequences(runtime: SessionRuntime, machine: SessionMachine,
                   translator: SequenceTranslator | None, log: Log) -> None:
    """Save the engine's numbers as the connection ended, for its next Logon (errors are
    logged: the session has ended either way)."""
    store = runtime.sequences
    cfg = runtime.config
    if store is None or not cfg.translate_sequence:
        return
    in_offset = translator.in_offset if translator is not None else 0
    sequences = SessionSequences(
        api_key=cfg.api_key, endpoint=cfg.endpoint.target_comp_id,
        engine_next_out=machine.engine_last_seq + 1,
        engine_next_in=machine.gateway_last_seq + 1 + in_offset)
    writes = runtime.metrics.state_writes
    try:
        store.save(cfg.name, sequences)
    except FixProxyError as exc:
        writes.report(cfg.name, "sequences", str(exc), log)
    else:
        writes.recovered(cfg.name, "sequences", f"sequence state of session {cfg.name}", log)
