"""What the operator is told about a gateway's answers, and how session ends are labelled."""

from __future__ import annotations

import pytest
from support.frames import MakeFrame

from fixproxy.fix import tags
from fixproxy.session.explain import (
    END_CAUSES,
    classify_gateway_answer,
    descriptor_shortage_log,
    descriptor_shortage_text,
)
from fixproxy.session.machine import Event


@pytest.mark.parametrize(("text", "reject_reason", "reason", "hint"), [
    ("already exists", None, "duplicate", "wait about 2 x HeartBtInt"),
    ("Invalid signature", None, "signature", "private_key is the key"),
    ("SendingTime accuracy problem", None, "other", "synchronise it (NTP)"),
    ("", "10", "other", "synchronise it (NTP)"),
    ("MsgSeqNum too low, expecting 12 but received 1", None, "other",
     "reset both sides with a Logon carrying 141=Y"),
    ("something else", None, "other", None),
], ids=["duplicate", "signature", "sendingtime", "373=10", "seqnum too low", "unknown"])
def test_gateway_answers_are_classified_with_a_hint(
        make_frame: MakeFrame, text: str, reject_reason: str | None, reason: str,
        hint: str | None) -> None:
    fields = [] if not text else [(tags.TEXT, text)]
    if reject_reason is not None:
        fields.append((tags.SESSION_REJECT_REASON, reject_reason))
    answer = classify_gateway_answer(make_frame(tags.MT_LOGOUT, *fields))
    assert answer.reason == reason
    assert answer.text == text
    if hint is None:
        assert answer.hint is None
    else:
        assert answer.hint is not None and hint in answer.hint


def test_the_seqnum_hint_names_kalshi_rt_and_the_ways_to_reset(make_frame: MakeFrame) -> None:
    answer = classify_gateway_answer(make_frame(
        tags.MT_LOGOUT, (tags.TEXT, "MsgSeqNum too low, expecting 4 but received 3")))
    assert answer.hint is not None
    for words in ("KalshiRT", "ResetOnLogon=Y", "fixproxy engine --reset", "reset_on_logon"):
        assert words in answer.hint


def test_a_clean_engine_logout_is_normal_and_faults_are_not() -> None:
    assert END_CAUSES[Event.ENGINE_LOGOUT] == ("engine", "normal")
    others = {cause for event, cause in END_CAUSES.items() if event is not Event.ENGINE_LOGOUT}
    assert ("engine", "normal") not in others
    assert END_CAUSES[Event.ENGINE_ERROR] == ("engine", "other")


def test_a_descriptor_shortage_says_the_limit_and_how_to_raise_it() -> None:
    text = descriptor_shortage_text(64, "this connection")
    assert "out of file descriptors (its limit of 64 open files)" in text
    assert "cannot open this connection" in text
    assert "LimitNOFILE=" in text and "ulimit -n" in text
    assert "its open-file limit" in descriptor_shortage_text(None, "a connection")
    assert "LimitNOFILE=" in descriptor_shortage_log(64)
