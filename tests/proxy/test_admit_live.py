"""Admission opens the live sequence record for every connection a crash could leave stale:
renumbered ones, and an engine that keeps its numbers starting afresh at 34=1; never for
an engine that resets itself (real sockets, the simulator, fixproxy in this process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.e2e import SESSION_NAME, E2EMaterial, open_proxy_pair

from fixproxy.config.model import ProxyConfig
from fixproxy.fix import tags
from fixproxy.ops import liveseq


@pytest.mark.parametrize(("first_seq", "reset", "kept"), [
    (7, None, True),     # kept its numbers: renumbered
    (1, None, True),     # keeps its numbers, starting afresh: nothing to renumber yet
    (1, True, False),    # resets on every Logon: relayed as it is, nothing kept
])
async def test_the_live_record_is_current_while_the_connection_lives(
        e2e_material: E2EMaterial, tmp_path: Path, first_seq: int, reset: bool | None,
        kept: bool) -> None:
    state = tmp_path / "state"
    async with open_proxy_pair(e2e_material,
                               config_overrides={"proxy": ProxyConfig(state_dir=state)}) as pair:
        engine = await pair.connect_engine(first_seq=first_seq)
        answer = await engine.logon(reset=reset)
        assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
        cl_ord_id = await engine.new_order()
        report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
        assert report.get(11) == cl_ord_id
        # Still connected: only the live record can know the engine's next number now.
        number = liveseq.load(state / f"{SESSION_NAME}.live", e2e_material.api_key,
                              "KalshiNR")
        assert number == (int(report.get(tags.MSG_SEQ_NUM) or 0) + 1 if kept else None)
