"""The message journal of a real session: both legs, in order, secrets redacted."""

from __future__ import annotations

import base64
from pathlib import Path

from support.e2e import E2EMaterial, open_proxy_pair

from fixproxy.config.model import ProxyConfig
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage


async def test_journal_records_both_legs_with_the_signature_redacted(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    async with open_proxy_pair(e2e_material,
                               config_overrides={"proxy": ProxyConfig(journal_dir=journal_dir)}
                               ) as pair:
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON
        cl_ord_ids = [await engine.new_order() for _ in range(3)]
        for _ in cl_ord_ids:
            await engine.receive_type(tags.MT_EXECUTION_REPORT)
        await engine.logout()
        assert await engine.receive() is None
        signed = FixMessage.parse(pair.sim.last_logon[pair.api_key])
    lines = (journal_dir / f"{pair.session.name}.log").read_text().splitlines()
    directions = [line.split(" ")[2] for line in lines]
    messages = [line.split(" ", 3)[3] for line in lines]
    # The signed Logon, its answer, three orders and their reports, the Logouts.
    assert directions[:2] == ["engine_to_gateway", "gateway_to_engine"]
    assert "|35=A|" in messages[0] and "|35=A|" in messages[1]
    assert [m for m, d in zip(messages, directions, strict=True)
            if d == "engine_to_gateway" and "|35=D|" in m] == [
        m for m in messages if "|35=D|" in m]
    for cl_ord_id in cl_ord_ids:
        assert sum(f"|11={cl_ord_id.decode()}|" in m for m in messages) == 2  # order, report
    assert sum("|35=5|" in m for m in messages) == 2
    text = "\n".join(lines)
    signature = signed.get(tags.RAW_DATA)
    assert signature  # the sim saw a real signature: the grep below can find it
    assert signature.decode() not in text
    assert base64.b64encode(signature).decode() not in text
    assert "|96=<redacted" in messages[0]
    assert (journal_dir.stat().st_mode & 0o777) == 0o700
