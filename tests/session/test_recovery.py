"""The pure side of drop-copy recovery: ExecIDs and their order, the cursor state and its file
format, the filter and dedup of replayed reports, and their renumbering into the engine's
stream (tables plus Hypothesis)."""

from __future__ import annotations

from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, encode
from fixproxy.fix.framer import FixFramer
from fixproxy.session.recovery import (
    MAX_CLORDIDS,
    RECOVERY_WINDOW_S,
    Cursor,
    ExecId,
    RecoveryState,
    RecoveryTracker,
    deliver_recovered,
    event_resend_request,
    injected_reports,
    parse_exec_id,
    plan_recovery,
    reconcile_hint,
    report_format_flags,
    select_reports,
)
from fixproxy.session.sequence import SequenceTranslator

API_KEY: Final = "3c9e1f0a-7b2d-4e6f-8a1c-5d0b9e2f4a7c"
NOW: Final = 1_800_000_000.0
STAMP: Final = b"20270115-08:00:00.000"

# ----- ExecIDs -------------------------------------------------------------------------------

PARSED = [
    (b"12345;67890", ExecId(0, 12345, 67890)),
    (b"12345;67890;2", ExecId(2, 12345, 67890)),
    (b"1;1;3", ExecId(3, 1, 1)),
    (b"-1;-1", None),  # a pending report: never a cursor
    (b"12345;67890;0", None),  # index 0 is written without its index
    (b"12345", None),
    (b"1;2;3;4", None),
    (b"a;b", None),
    (b"SIM-E-1", None),
    (b"", None),
    (None, None),
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse_exec_id(text: bytes | None, expected: ExecId | None) -> None:
    assert parse_exec_id(text) == expected


def test_exec_ids_compare_as_integers_not_as_strings() -> None:
    older, newer = b"9;5", b"10;1"
    nine, ten = parse_exec_id(older), parse_exec_id(newer)
    assert nine is not None and ten is not None
    assert older > newer  # as strings the older one would win
    assert ten.after(nine) and not nine.after(ten)


def test_exec_ids_of_different_indexes_never_compare() -> None:
    a, b = ExecId(0, 5, 5), ExecId(1, 1, 1)
    assert not a.after(b) and not b.after(a)


exec_ids = st.builds(ExecId, st.integers(0, 7), st.integers(0, 10**12), st.integers(0, 10**9))


@given(exec_ids)
def test_exec_id_text_round_trips(exec_id: ExecId) -> None:
    assert parse_exec_id(exec_id.text) == exec_id


@given(exec_ids, exec_ids)
def test_after_is_the_tuple_order_within_an_index(a: ExecId, b: ExecId) -> None:
    if a.index == b.index:
        assert a.after(b) == ((a.clock, a.event) > (b.clock, b.event))
    else:
        assert not a.after(b)


# ----- the tracker and the state -------------------------------------------------------------


def report(exec_id: bytes, cl_ord_id: bytes = b"mine", *, orig: bytes | None = None,
           seq: int = 7, sender: bytes = b"KalshiDC") -> bytes:
    fields: list[tuple[int, bytes | int]] = [
        (35, b"8"), (49, sender), (56, API_KEY.encode()), (34, seq),
        (52, b"20270115-07:59:00.000"), (369, 3), (37, b"SIM-1"), (11, cl_ord_id)]
    if orig is not None:
        fields.append((41, orig))
    fields += [(17, exec_id), (150, b"F"), (39, b"2"), (55, b"KXA"), (32, 10), (31, 55)]
    return encode(fields)


def order(msg_type: bytes, cl_ord_id: bytes, orig: bytes | None = None) -> bytes:
    fields: list[tuple[int, bytes | int]] = [
        (35, msg_type), (49, API_KEY.encode()), (56, b"KalshiNR"), (34, 2),
        (52, STAMP), (11, cl_ord_id)]
    if orig is not None:
        fields.append((41, orig))
    return encode(fields)


def empty() -> RecoveryState:
    return RecoveryState(API_KEY, "KalshiNR")


def test_the_cursor_follows_the_newest_report_per_index() -> None:
    tracker = RecoveryTracker(empty())
    for text in (b"9;5", b"10;1", b"3;3", b"-1;-1", b"1;1;2", b"7;2"):
        assert not tracker.report(report(text), NOW)
    state = tracker.snapshot(NOW)
    assert [cursor.exec_id for cursor in state.cursors] == [ExecId(0, 10, 1), ExecId(2, 1, 1)]


@given(st.one_of(
    st.builds(lambda e: e.text, exec_ids),
    st.lists(st.sampled_from([b"0", b"1", b"-1", b"12", b"", b"a", b" 1", b"1_0", b"+2",
                              b"\xd9\xa3", b"9" * 19]), min_size=1, max_size=4).map(b";".join)))
def test_the_tracker_reads_exec_ids_as_parse_exec_id_does(text: bytes) -> None:
    tracker = RecoveryTracker(empty())
    tracker.report(report(text), NOW)
    cursors = [cursor.exec_id for cursor in tracker.snapshot(NOW).cursors]
    parsed = parse_exec_id(text)
    assert cursors == ([] if parsed is None else [parsed])


def test_orders_record_their_clordids_and_cancels_their_originals() -> None:
    tracker = RecoveryTracker(empty())
    tracker.order(order(b"D", b"a"), NOW)
    tracker.order(order(b"F", b"b", orig=b"a"), NOW + 1)
    tracker.order(order(b"G", b"c", orig=b"b"), NOW + 2)
    kept = dict(tracker.snapshot(NOW + 3).cl_ord_ids)
    # An original named by a cancel or replace is kept alive as long as the new id.
    assert kept == {"a": NOW + 1, "b": NOW + 2, "c": NOW + 2}


def test_clordids_older_than_the_window_are_left_out() -> None:
    tracker = RecoveryTracker(empty())
    tracker.order(order(b"D", b"old"), NOW - RECOVERY_WINDOW_S - 1)
    tracker.order(order(b"D", b"new"), NOW)
    assert [cl for cl, _ in tracker.snapshot(NOW).cl_ord_ids] == ["new"]


def test_clordids_are_bounded() -> None:
    ids = tuple((f"id-{n}", NOW) for n in range(MAX_CLORDIDS))
    tracker = RecoveryTracker(RecoveryState(API_KEY, "KalshiNR", cl_ord_ids=ids))
    tracker.order(order(b"D", b"one-more"), NOW)
    kept = [cl for cl, _ in tracker.snapshot(NOW).cl_ord_ids]
    assert len(kept) == MAX_CLORDIDS
    assert kept[-1] == "one-more" and "id-0" not in kept


states = st.builds(
    RecoveryState, st.just(API_KEY), st.sampled_from(["KalshiNR", "KalshiRT"]),
    st.lists(st.builds(Cursor, exec_ids, st.floats(0, 4e9)), max_size=4,
             unique_by=lambda cursor: cursor.exec_id.index).map(
        lambda cursors: tuple(sorted(cursors, key=lambda c: c.exec_id.index))),
    st.lists(st.tuples(st.text(min_size=1, max_size=20), st.floats(0, 4e9)), max_size=20,
             unique_by=lambda item: item[0]).map(tuple),
    st.booleans())


@given(states)
def test_state_round_trips_through_json(state: RecoveryState) -> None:
    assert RecoveryState.from_json(state.to_json()) == state


BAD_FILES = [
    [],
    {"api_key": 1, "endpoint": "KalshiNR"},
    {"api_key": API_KEY, "endpoint": "KalshiNR", "cursors": [{"exec_id": "x", "at": 1}]},
    {"api_key": API_KEY, "endpoint": "KalshiNR", "cursors": [{"exec_id": "1;1", "at": -1}]},
    {"api_key": API_KEY, "endpoint": "KalshiNR", "cursors": "1;1"},
    {"api_key": API_KEY, "endpoint": "KalshiNR", "cl_ord_ids": [["a"]]},
    {"api_key": API_KEY, "endpoint": "KalshiNR", "cl_ord_ids": [["a", True]]},
    {"api_key": API_KEY, "endpoint": "KalshiNR", "clean_end": "yes"},
]


@pytest.mark.parametrize("data", BAD_FILES)
def test_a_hand_edited_state_of_the_wrong_kind_is_refused(data: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        RecoveryState.from_json(data)


# ----- the plan --------------------------------------------------------------------------------


def test_plan_asks_from_each_cursor_inside_the_window() -> None:
    fresh, stale = ExecId(0, 10, 1), ExecId(1, 3, 3)
    state = RecoveryState(API_KEY, "KalshiNR", (
        Cursor(fresh, NOW - 60), Cursor(stale, NOW - RECOVERY_WINDOW_S - 1)),
        (("a", NOW - 60), ("gone", NOW - RECOVERY_WINDOW_S - 5)))
    plan = plan_recovery(state, NOW)
    assert plan.requests == (fresh,)
    assert [cursor.exec_id for cursor in plan.stale] == [stale]
    assert plan.uncovered == (2, 3)
    assert plan.cl_ord_ids == frozenset({"a"})


# ----- the filter and the dedup ----------------------------------------------------------------

CURSORS: Final = (ExecId(0, 10, 5), ExecId(2, 4, 4))
STATE: Final = RecoveryState(API_KEY, "KalshiNR", tuple(Cursor(c, NOW) for c in CURSORS),
                             (("mine", NOW), ("replaced", NOW)))

SELECTION_CASES = [
    ("newer, mine", [report(b"10;6")], [b"10;6"]),
    ("at the cursor: the engine had it", [report(b"10;5")], []),
    ("below the cursor", [report(b"9;9")], []),
    ("another session's order", [report(b"11;1", b"theirs")], []),
    ("a cancel of mine, by 41", [report(b"11;1", b"c-9", orig=b"mine")], [b"11;1"]),
    ("an index without a cursor", [report(b"99;1;1")], []),
    ("pending: never used", [report(b"-1;-1")], []),
    ("a repeat", [report(b"10;7"), report(b"10;7")], [b"10;7"]),
    ("sorted by ExecID, integers not text",
     [report(b"100;9"), report(b"11;1"), report(b"5;5;2")], [b"5;5;2", b"11;1", b"100;9"]),
]


@pytest.mark.parametrize(("reports", "kept"), [case[1:] for case in SELECTION_CASES],
                         ids=[case[0] for case in SELECTION_CASES])
def test_select_reports(reports: list[bytes], kept: list[bytes]) -> None:
    selection = select_reports(reports, STATE, CURSORS)
    assert [exec_id.text for exec_id, _ in selection.kept] == kept


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 30), st.integers(1, 30),
                          st.sampled_from([b"mine", b"theirs"])), max_size=30))
def test_selection_is_each_new_report_of_mine_once_in_order(
        events: list[tuple[int, int, int, bytes]]) -> None:
    reports = [report(ExecId(index, clock, event).text, cl_ord_id)
               for index, clock, event, cl_ord_id in events]
    selection = select_reports(reports, STATE, CURSORS)
    kept = [exec_id for exec_id, _ in selection.kept]
    assert len(kept) == len(set(kept))
    assert kept == sorted(kept, key=lambda e: (e.clock, e.event, e.index))
    by_index = {cursor.index: cursor for cursor in CURSORS}
    expected = {ExecId(index, clock, event) for index, clock, event, cl in events
                if cl == b"mine" and index in by_index
                and ExecId(index, clock, event).after(by_index[index])}
    assert set(kept) == expected
    assert len(kept) + selection.known + selection.foreign + selection.unreadable == \
        len(reports)


def test_a_live_report_repeating_an_injected_one_is_recognised_once() -> None:
    tracker = RecoveryTracker(STATE)
    tracker.recovered([(ExecId(0, 11, 1), report(b"11;1"))], NOW)
    assert tracker.report(report(b"11;1", sender=b"KalshiNR"), NOW)
    assert not tracker.report(report(b"11;1", sender=b"KalshiNR"), NOW)  # once only
    assert tracker.snapshot(NOW).cursor(0) == Cursor(ExecId(0, 11, 1), NOW)


# ----- renumbering ------------------------------------------------------------------------------


def test_injected_reports_speak_the_engine_session_with_possresend() -> None:
    (out,) = injected_reports([report(b"11;1")], sender=b"KalshiNR",
                              target=API_KEY.encode(), first_seq=2, stamp=STAMP)
    message = FixMessage.parse(out)
    head = [tag for tag, _ in message.fields[:7]]
    assert head == [35, 49, 56, 34, 52, 97, 122]
    assert message.get(34) == b"2" and message.get(97) == b"Y"
    assert message.get(52) == STAMP and message.get(122) == b"20270115-07:59:00.000"
    assert message.get(49) == b"KalshiNR" and message.get(56) == API_KEY.encode()
    assert message.get(369) is None  # the drop copy's numbering does not leak
    assert message.get(17) == b"11;1" and message.get(11) == b"mine"
    framer = FixFramer()
    framer.receive_data(out)
    assert framer.next_message() is not None  # BodyLength and CheckSum hold


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 5), st.integers(0, 8))
def test_recovered_reports_fill_the_gap_the_translation_leaves(
        out_offset: int, in_offset: int, answer_seq: int, count: int) -> None:
    kept = [(ExecId(0, 20 + n, 1), report(b"%d;1" % (20 + n))) for n in range(count)]
    translator = SequenceTranslator(out_offset, in_offset)
    reports, after = deliver_recovered(kept, translator, answer_seq=answer_seq,
                                       sender=b"KalshiNR", target=API_KEY.encode(),
                                       stamp=STAMP)
    answer = translator.engine_seq_for_gateway(answer_seq)
    numbers = [int(FixMessage.parse(raw).get(34) or 0) for raw in reports]
    assert numbers == list(range(answer + 1, answer + 1 + count))
    # The gateway's next message follows the last injected one, with no gap.
    assert after.engine_seq_for_gateway(answer_seq + 1) == answer + count + 1
    assert after.out_offset == out_offset


def test_without_a_translator_the_engine_numbering_starts_at_the_answer() -> None:
    reports, after = deliver_recovered([(ExecId(0, 1, 1), report(b"1;1"))], None,
                                       answer_seq=1, sender=b"KalshiNR",
                                       target=API_KEY.encode(), stamp=STAMP)
    assert FixMessage.parse(reports[0]).get(34) == b"2"
    assert after == SequenceTranslator(0, 1)


def test_event_resend_request_and_logon_flags() -> None:
    raw = event_resend_request(ExecId(2, 7, 8), sender=b"dc", target=b"KalshiDC", seq=2,
                               stamp=STAMP)
    message = FixMessage.parse(raw)
    assert message.msg_type == b"U1" and message.get(21001) == b"7;8;2"
    assert message.get(21002) is None
    logon = encode([(35, b"A"), (49, b"k"), (56, b"KalshiNR"), (34, 1), (52, STAMP),
                    (21005, b"Y"), (8013, b"Y"), (21012, b"Y")])
    assert report_format_flags(logon) == ((21005, b"Y"), (21012, b"Y"))
    assert tags.MT_EXECUTION_REPORT == b"8"


def test_the_reconciliation_hint_names_the_orders_and_the_span() -> None:
    ids = tuple((f"o-{n:02d}", NOW) for n in range(12))
    plan = plan_recovery(RecoveryState(API_KEY, "KalshiNR", cl_ord_ids=ids), NOW)
    hint = reconcile_hint(plan, 1_700_000_000.0)
    assert "the orders o-00, o-01," in hint and "o-09 and 2 more" in hint
    assert "since 2023-11-14 22:13:20 UTC" in hint
    assert "REST API" in hint
    empty_plan = plan_recovery(RecoveryState(API_KEY, "KalshiNR"), NOW)
    assert "this session's orders" in reconcile_hint(empty_plan, None)
