"""Ports: what the loader needs from the exchange, the broker, the clock and the metrics."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from domain.messages import ControlCommand, TelemetryEvent
from domain.sequence import Gap
from domain.state import Status
from domain.trade import Trade


@dataclass(frozen=True, slots=True)
class Received:
    """A live trade and when its frame arrived (monotonic seconds)."""

    trade: Trade
    received_at: float


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The feed opened a new connection after losing one: trades of ``symbols`` may have been
    missed before this point."""

    reason: str
    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """The oldest and newest trade of ``symbol`` the feed dropped, and the newest one's time
    (epoch ms); every trade between them was dropped too."""

    symbol: str
    first_id: int
    last_id: int
    last_time: int

    def merged(self, other: DroppedRange) -> DroppedRange:
        newest = other if other.last_id > self.last_id else self
        return DroppedRange(
            self.symbol, min(self.first_id, other.first_id), newest.last_id, newest.last_time
        )


@dataclass(frozen=True, slots=True)
class Dropped:
    """The feed read trades and dropped them, having no room: these ranges, by symbol.

    They were received, so they are recovered from history before what follows, even at a
    stop.
    """

    ranges: tuple[DroppedRange, ...]


FeedItem = Received | Reconnected | Dropped


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """What the exchange says of a symbol."""

    symbol: str
    status: str

    @property
    def trading(self) -> bool:
        return self.status == "TRADING"


@dataclass(frozen=True, slots=True)
class LastPublished:
    """The newest trade of a symbol found in the trade topic."""

    symbol: str
    trade_id: int
    timestamp: int


class TradeFeed(Protocol):
    """Live trades of the configured symbols, in arrival order, behind a bounded buffer."""

    async def open(self) -> None:
        """Start connecting and receiving in the background; returns at once."""
        ...

    async def next_batch(self) -> Sequence[FeedItem]:
        """Wait for received items; an empty batch means the feed is closed and drained."""
        ...

    async def close(self) -> None:
        """Stop receiving; items already received stay readable through ``next_batch``."""
        ...

    def reconnect(self, reason: str, symbols: Sequence[str] | None = None) -> None:
        """Replace the connections carrying ``symbols`` (every one when None): a stream that
        went silent."""
        ...

    def backlog(self) -> int:
        """Frames received and not yet handed out by ``next_batch``."""
        ...

    def paused_until(self, symbol: str | None = None) -> float:
        """When reading ``symbol``'s connection (any, when None) last stopped being paused by a
        full buffer (monotonic seconds): now while it is paused, ``-inf`` if it never was.
        Frames the exchange sent during a pause wait unread in the socket until then."""
        ...


class SymbolDirectory(Protocol):
    """The exchange's list of symbols."""

    async def describe(self, symbols: Sequence[str]) -> Sequence[SymbolInfo]:
        """Status of each symbol; raises ``UnknownSymbolError`` naming those not listed."""
        ...


class TradeHistory(Protocol):
    """Trades the exchange already executed, for filling gaps in the live stream."""

    async def trades_from(self, symbol: str, from_id: int, limit: int) -> Sequence[Trade]:
        """Up to ``limit`` trades with id >= ``from_id`` in id order; raises ``HistoryError``."""
        ...

    async def latest_trade_id(self, symbol: str) -> int | None:
        """Id of the symbol's newest executed trade, or None when it never traded."""
        ...


class HistoryError(Exception):
    """The exchange refused or failed to return trade history."""


class TradePublisher(Protocol):
    """The trade topic: many sends in flight, each counted once the broker acknowledged it."""

    async def start(self, symbols: Sequence[str]) -> None:
        """Get ready to publish these symbols' trades; fails early on a topic the broker refuses."""
        ...

    async def publish(self, trade: Trade, received_at: float) -> None:
        """Queue one trade for the broker; waits only while the in-flight window is full."""
        ...

    def acknowledged(self) -> int:
        """How many published trades the broker has acknowledged so far in this run."""
        ...

    async def flush(self, timeout: float) -> None:
        """Wait until every published trade is acknowledged, else ``BrokerUnavailableError``."""
        ...

    def unwritten(self) -> Sequence[Gap]:
        """Trades the broker refused or dropped after they were handed over, by batch."""
        ...

    async def close(self) -> None:
        """Stop the publisher's own work; trades not flushed by then are abandoned."""
        ...


class TopicTail(Protocol):
    """What the trade topic already holds, from earlier runs."""

    async def last_published(self, symbols: Sequence[str]) -> Sequence[LastPublished]:
        """The newest trade of each symbol already in the topic (none for symbols never seen)."""
        ...


class EventPublisher(Protocol):
    """The telemetry topic."""

    async def publish(self, event: TelemetryEvent, timeout: float | None = None) -> None:
        """Send one event and wait for the broker's acknowledgement, at most ``timeout`` s.

        Without a ``timeout`` the adapter's own bound applies; raises a ``LoaderError``
        when the event was not acknowledged.
        """
        ...


class ControlChannel(Protocol):
    """The control topic, read from its earliest retained message."""

    def commands(self) -> AsyncGenerator[ControlCommand, None]:
        """Every well-formed command, oldest first, then live ones as they arrive; closing the
        generator releases what reads the topic."""
        ...

    async def caught_up(self) -> None:
        """Return once ``commands`` has delivered every command retained when it began.

        Raises a ``LoaderError`` when the retained commands cannot be read in time.
        """
        ...


class Clock(Protocol):
    """Time, so tests can drive the telemetry and bound timers."""

    def time(self) -> float:
        """Wall-clock epoch seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class LoaderMetrics(Protocol):
    """What the use case reports to monitoring."""

    def state(self, status: Status) -> None:
        """The run entered ``status``."""
        ...

    def gap(self, gap: Gap) -> None:
        """Trades were found missing from the live stream."""
        ...

    def backfilled(self, symbol: str, count: int) -> None:
        """Missing trades recovered from history."""
        ...

    def unrecoverable(self, symbol: str, count: int) -> None:
        """Missing trades that could not be recovered."""
        ...

    def duplicate(self, symbol: str) -> None:
        """A trade received again and dropped."""
        ...

    def holding(self, symbols: int, trades: int) -> None:
        """``symbols`` wait for their gaps to be filled, with ``trades`` held behind them."""
        ...
