"""The run's state machine, as examples and as a hypothesis rule-based machine."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from domain.errors import IllegalTransitionError
from domain.state import LoaderState, StateChange, Status


def test_a_run_starts_loads_and_ends_once() -> None:
    sut = LoaderState()
    changes = [sut.start("up"), sut.loading("working"), sut.finish("done")]
    assert [c.status for c in changes] == [Status.STARTED, Status.LOADING, Status.FINISHED]
    assert [c.finished for c in changes] == [False, False, True]
    assert sut.is_terminal


@pytest.mark.parametrize("end", ["finish", "interrupt", "fail"])
def test_every_end_can_follow_started_directly(end: str) -> None:
    sut = LoaderState()
    sut.start("up")
    change: StateChange = getattr(sut, end)("bye")
    assert change.finished
    assert change.status.terminal


def test_nothing_before_started() -> None:
    sut = LoaderState()
    for move in (sut.loading, sut.finish, sut.interrupt, sut.fail):
        with pytest.raises(IllegalTransitionError):
            move("too early")
    with pytest.raises(IllegalTransitionError):
        sut.record_written(1)
    assert sut.status is None


def test_records_cannot_decrease() -> None:
    sut = LoaderState()
    sut.start("up")
    sut.record_written(5)
    with pytest.raises(IllegalTransitionError):
        sut.record_written(-1)
    assert sut.records_written == 5


class LoaderStateMachine(RuleBasedStateMachine):
    """Whatever the order of calls, the announced sequence obeys the contract."""

    def __init__(self) -> None:
        super().__init__()
        self.sut = LoaderState()
        self.announced: list[StateChange] = []

    def _try(self, move: str, message: str) -> None:
        before = (self.sut.status, self.sut.records_written)
        try:
            change = getattr(self.sut, move)(message)
        except IllegalTransitionError:
            assert (self.sut.status, self.sut.records_written) == before
        else:
            self.announced.append(change)

    @rule(message=st.text(max_size=20))
    def start(self, message: str) -> None:
        self._try("start", message)

    @rule(message=st.text(max_size=20))
    def loading(self, message: str) -> None:
        self._try("loading", message)

    @rule(move=st.sampled_from(["finish", "interrupt", "fail"]), message=st.text(max_size=20))
    def end(self, move: str, message: str) -> None:
        self._try(move, message)

    @rule(count=st.integers(min_value=-3, max_value=1000))
    def write(self, count: int) -> None:
        before = self.sut.records_written
        try:
            self.sut.record_written(count)
        except IllegalTransitionError:
            assert self.sut.records_written == before
        else:
            assert count >= 0
            assert self.sut.records_written == before + count

    @precondition(lambda self: self.sut.is_terminal)
    @rule()
    def terminal_is_final(self) -> None:
        for move in ("start", "loading", "finish", "interrupt", "fail"):
            with pytest.raises(IllegalTransitionError):
                getattr(self.sut, move)("again")

    @invariant()
    def started_first(self) -> None:
        if self.announced:
            assert self.announced[0].status is Status.STARTED
        assert sum(c.status is Status.STARTED for c in self.announced) <= 1

    @invariant()
    def one_terminal_event_and_it_is_last(self) -> None:
        terminal = [i for i, c in enumerate(self.announced) if c.status.terminal]
        assert len(terminal) <= 1
        if terminal:
            assert terminal[0] == len(self.announced) - 1

    @invariant()
    def finished_exactly_on_terminal_events(self) -> None:
        for change in self.announced:
            assert change.finished == change.status.terminal

    @invariant()
    def records_never_decrease(self) -> None:
        counts = [c.records_written for c in self.announced]
        assert counts == sorted(counts)
        assert self.sut.records_written >= (counts[-1] if counts else 0)


TestLoaderStateMachine = LoaderStateMachine.TestCase
