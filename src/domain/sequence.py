"""Trade-id sequencing: which trades are next, which were seen already, which are missing."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from domain.errors import IllegalTransitionError


@dataclass(frozen=True, slots=True)
class Gap:
    """Trade ids ``first_id..last_id`` (inclusive) of ``symbol`` that were never received."""

    symbol: str
    first_id: int
    last_id: int

    @property
    def size(self) -> int:
        return self.last_id - self.first_id + 1


class Verdict(Enum):
    """How an arriving trade id relates to what was accepted before."""

    FIRST = "first"
    """Nothing accepted yet for the symbol: the trade starts the sequence."""
    NEXT = "next"
    """Exactly one above the last accepted id."""
    DUPLICATE = "duplicate"
    """At or below the last accepted id: seen already (reconnect overlap, replays)."""
    GAP = "gap"
    """More than one above the last accepted id: trades are missing in between."""


class TradeSequencer:
    """Per-symbol last accepted trade id; trade ids of a symbol rise by exactly one per trade."""

    __slots__ = ("_floor", "_last")

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._floor: dict[str, int] = {}

    def last(self, symbol: str) -> int | None:
        return self._last.get(symbol)

    def resume(self, symbol: str, last_id: int) -> None:
        """Start from a trade id already published (found in the topic by an earlier run)."""
        self._last[symbol] = last_id

    def published_up_to(self, symbol: str, last_id: int) -> None:
        """Trades up to ``last_id`` are in the topic already, too long ago to continue from.

        The sequence starts afresh with the first live trade, but none of those comes again.
        """
        self._floor[symbol] = last_id

    def classify(self, symbol: str, trade_id: int) -> Verdict:
        last = self._last.get(symbol)
        if last is None:
            floor = self._floor.get(symbol)
            return Verdict.FIRST if floor is None or trade_id > floor else Verdict.DUPLICATE
        if trade_id == last + 1:
            return Verdict.NEXT
        if trade_id <= last:
            return Verdict.DUPLICATE
        return Verdict.GAP

    def gap_before(self, symbol: str, trade_id: int) -> Gap | None:
        """The ids missing between the last accepted id and ``trade_id``, if any."""
        last = self._last.get(symbol)
        if last is None or trade_id <= last + 1:
            return None
        return Gap(symbol, last + 1, trade_id - 1)

    def accept(self, symbol: str, trade_id: int) -> None:
        last = self._last.get(symbol)
        if last is not None and trade_id <= last:
            raise IllegalTransitionError(
                f"{symbol}: trade {trade_id} is not after the last accepted trade {last}"
            )
        self._last[symbol] = trade_id
