"""The reconnect schedule: growing, capped, jittered, and within the exchange's attempt limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.backoff import AttemptWindow, Backoff


def test_doubles_up_to_the_cap() -> None:
    sut = Backoff(initial=0.5, cap=30, factor=2, jitter=0)
    assert [sut.ceiling(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
    initial=st.floats(min_value=0.01, max_value=5),
    cap=st.floats(min_value=5, max_value=600),
)
def test_delay_is_within_jitter_of_the_ceiling_and_never_above_the_cap(
    attempt: int, rand: float, initial: float, cap: float
) -> None:
    sut = Backoff(initial=initial, cap=cap, jitter=0.5)
    delay = sut.delay(attempt, rand)
    ceiling = sut.ceiling(attempt)
    assert ceiling <= cap
    assert ceiling * 0.5 <= delay <= ceiling


@given(st.integers(min_value=1, max_value=200))
def test_ceiling_never_decreases(attempt: int) -> None:
    sut = Backoff(initial=0.5, cap=30)
    assert sut.ceiling(attempt + 1) >= sut.ceiling(attempt)


def test_invalid_backoff_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(initial=10, cap=1)


def follow(sut: AttemptWindow, gaps: list[float]) -> list[float]:
    """When attempts are made by a client that asks ``gaps`` apart and heeds the advice."""
    now = 0.0
    made: list[float] = []
    for gap in gaps:
        now += gap
        while (wait := sut.wait_before_next(now)) > 0:
            now += wait
        sut.record(now)
        made.append(now)
    return made


@given(st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=400))
def test_attempt_window_never_allows_more_than_the_limit(gaps: list[float]) -> None:
    """Whoever asks when, following the window's advice keeps any 300 s span within the limit."""
    made = follow(AttemptWindow(limit=10, window=300), gaps)
    for index, start in enumerate(made):
        within = [t for t in made[index:] if t < start + 300]
        assert len(within) <= 10


@given(
    st.integers(min_value=1, max_value=300),
    st.integers(min_value=1, max_value=20),
    st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=400),
)
def test_attempt_window_lets_a_burst_go_then_paces_to_the_limit(
    limit: int, burst: int, gaps: list[float]
) -> None:
    """Over any span, at most the burst plus the limit's rate: two processes in turn (a pod
    that replaced another) stay within one window's limit."""
    made = follow(AttemptWindow(limit=limit, window=300, burst=burst), gaps)
    allowed_burst = min(burst, limit)
    for index, start in enumerate(made):
        for end in made[index:]:
            span = end - start
            count = sum(1 for t in made[index:] if t <= end)
            assert count <= allowed_burst + span * limit / 300 + 1e-6


def test_attempt_window_lets_every_shard_reconnect_at_once() -> None:
    sut = AttemptWindow(limit=250, window=300, burst=10)
    for _ in range(10):
        assert sut.wait_before_next(5.0) == 0
        sut.record(5.0)
    assert sut.wait_before_next(5.0) == pytest.approx(300 / 250)
