"""The run's state machine: started -> loading -> finished | interrupted | error."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain.errors import IllegalTransitionError


class Status(StrEnum):
    """Telemetry status of a run."""

    STARTED = "started"
    LOADING = "loading"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    ERROR = "error"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({Status.FINISHED, Status.INTERRUPTED, Status.ERROR})

_ALLOWED: dict[Status | None, frozenset[Status]] = {
    None: frozenset({Status.STARTED}),
    Status.STARTED: frozenset({Status.LOADING, *_TERMINAL}),
    Status.LOADING: frozenset({Status.LOADING, *_TERMINAL}),
    Status.FINISHED: frozenset(),
    Status.INTERRUPTED: frozenset(),
    Status.ERROR: frozenset(),
}


@dataclass(frozen=True, slots=True)
class StateChange:
    """What one transition announces: the status, why, and the count at that moment."""

    status: Status
    message: str
    records_written: int
    finished: bool


class LoaderState:
    """Owns the run's status and its count of trades acknowledged by the broker.

    Every transition returns the ``StateChange`` to announce; an illegal one raises
    ``IllegalTransitionError`` and changes nothing.
    """

    __slots__ = ("_records_written", "_status")

    def __init__(self) -> None:
        self._status: Status | None = None
        self._records_written = 0

    @property
    def status(self) -> Status | None:
        return self._status

    @property
    def records_written(self) -> int:
        return self._records_written

    @property
    def is_terminal(self) -> bool:
        return self._status is not None and self._status.terminal

    def can_move_to(self, status: Status) -> bool:
        return status in _ALLOWED[self._status]

    def record_written(self, count: int = 1) -> None:
        """Count trades the broker acknowledged; counting stops once the run has ended."""
        if count < 0:
            raise IllegalTransitionError(f"records written cannot decrease (got {count})")
        if self._status is None or self._status.terminal:
            raise IllegalTransitionError(f"no records can be written while {self._status}")
        self._records_written += count

    def start(self, message: str) -> StateChange:
        return self._move(Status.STARTED, message)

    def loading(self, message: str) -> StateChange:
        return self._move(Status.LOADING, message)

    def finish(self, message: str) -> StateChange:
        return self._move(Status.FINISHED, message)

    def interrupt(self, message: str) -> StateChange:
        return self._move(Status.INTERRUPTED, message)

    def fail(self, message: str) -> StateChange:
        return self._move(Status.ERROR, message)

    def _move(self, status: Status, message: str) -> StateChange:
        if not self.can_move_to(status):
            raise IllegalTransitionError(f"cannot go from {self._status} to {status}")
        self._status = status
        return StateChange(
            status=status,
            message=message,
            records_written=self._records_written,
            finished=status.terminal,
        )
