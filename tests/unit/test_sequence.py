"""Gap detection and de-duplication by trade id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import IllegalTransitionError
from domain.sequence import Gap, TradeSequencer, Verdict


def test_first_next_duplicate_gap() -> None:
    sut = TradeSequencer()
    assert sut.classify("X", 10) is Verdict.FIRST
    sut.accept("X", 10)
    assert sut.classify("X", 11) is Verdict.NEXT
    assert sut.classify("X", 10) is Verdict.DUPLICATE
    assert sut.classify("X", 9) is Verdict.DUPLICATE
    assert sut.classify("X", 15) is Verdict.GAP
    assert sut.gap_before("X", 15) == Gap("X", 11, 14)
    assert sut.gap_before("X", 11) is None


def test_symbols_are_independent() -> None:
    sut = TradeSequencer()
    sut.accept("A", 100)
    assert sut.classify("B", 5) is Verdict.FIRST
    assert sut.last("B") is None


def test_accepting_backwards_is_refused() -> None:
    sut = TradeSequencer()
    sut.accept("X", 10)
    with pytest.raises(IllegalTransitionError):
        sut.accept("X", 10)


def test_resume_starts_from_the_topic() -> None:
    sut = TradeSequencer()
    sut.resume("X", 41)
    assert sut.classify("X", 42) is Verdict.NEXT
    assert sut.gap_before("X", 50) == Gap("X", 42, 49)


arrivals = st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=200)


@given(arrivals)
def test_any_arrival_order_yields_each_id_once_ascending_with_gaps_accounted(
    ids: list[int],
) -> None:
    """Accept what is new, fill gaps: the output is every id from the first to the max, once."""
    sut = TradeSequencer()
    out: list[int] = []
    for trade_id in ids:
        verdict = sut.classify("X", trade_id)
        if verdict is Verdict.DUPLICATE:
            assert trade_id in out or trade_id < out[0]  # older than where the run began
            continue
        if verdict is Verdict.GAP:
            gap = sut.gap_before("X", trade_id)
            assert gap is not None
            assert gap.size == trade_id - out[-1] - 1
            for missing in range(gap.first_id, gap.last_id + 1):
                sut.accept("X", missing)
                out.append(missing)
        sut.accept("X", trade_id)
        out.append(trade_id)
    assert out == list(range(ids[0], max(ids) + 1))


def test_a_topic_tail_too_old_to_resume_from_still_keeps_its_trades_from_coming_again() -> None:
    sut = TradeSequencer()
    sut.published_up_to("X", 100)
    assert sut.classify("X", 100) is Verdict.DUPLICATE
    assert sut.classify("X", 57) is Verdict.DUPLICATE
    assert sut.classify("X", 500) is Verdict.FIRST
    assert sut.last("X") is None
    sut.accept("X", 500)
    assert sut.classify("X", 501) is Verdict.NEXT
