"""Kalshi's Logon flags as data: the tags each session option sets, and how its value is written."""

from __future__ import annotations

import pytest

from fixproxy.fix import tags
from fixproxy.kalshi import LOGON_FLAGS, logon_flags

UNSET: dict[str, bool | int | None] = {flag.option: None for flag in LOGON_FLAGS}


def options(**values: bool | int | None) -> dict[str, bool | int | None]:
    return {**UNSET, **values}


@pytest.mark.parametrize(("values", "fields"), [
    ({}, ()),
    ({"cancel_orders_on_disconnect": True}, ((8013, b"Y"),)),
    ({"cancel_orders_on_disconnect": False}, ((8013, b"N"),)),
    ({"listener": True}, ((20126, b"Y"), (21011, b"Y"))),
    ({"listener": False}, ()),
    ({"use_dollars": False}, ((21005, b"N"),)),
    ({"receive_settlement_reports": True}, ((20127, b"Y"),)),
    ({"message_retention_hours": 72}, ((20200, b"72"),)),
    ({"message_retention_hours": 1}, ((20200, b"1"),)),
    ({"message_retention_hours": 24, "receive_settlement_reports": False, "use_dollars": True,
      "listener": True, "cancel_orders_on_disconnect": False},
     ((8013, b"N"), (20126, b"Y"), (21011, b"Y"), (21005, b"Y"), (20127, b"N"),
      (20200, b"24"))),
])
def test_logon_flags(values: dict[str, bool | int | None],
                     fields: tuple[tuple[int, bytes], ...]) -> None:
    assert logon_flags(options(**values)) == fields


def test_a_missing_option_is_an_error_not_an_absent_flag() -> None:
    given = options(cancel_orders_on_disconnect=True)
    del given["cancel_orders_on_disconnect"]
    with pytest.raises(KeyError):
        logon_flags(given)


def test_the_flag_tags_are_the_ones_fix_names() -> None:
    assert [flag.tags for flag in LOGON_FLAGS] == [
        (tags.CANCEL_ORDERS_ON_DISCONNECT,),
        (tags.LISTENER_SESSION, tags.SKIP_PENDING_EXEC_REPORTS),
        (tags.USE_DOLLARS,),
        (tags.RECEIVE_SETTLEMENT_REPORTS,),
        (tags.MESSAGE_RETENTION_PERIOD,),
    ]


def test_each_option_and_tag_appears_once() -> None:
    names = [flag.option for flag in LOGON_FLAGS]
    numbers = [tag for flag in LOGON_FLAGS for tag in flag.tags]
    assert len(set(names)) == len(names)
    assert len(set(numbers)) == len(numbers)
