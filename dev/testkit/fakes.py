"""In-memory adapters for every port: they record what happened, for tests and dry runs."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence

from application.ports import (
    Clock,
    ControlChannel,
    Dropped,
    DroppedRange,
    EventPublisher,
    FeedItem,
    HistoryError,
    LastPublished,
    Received,
    Reconnected,
    SymbolDirectory,
    SymbolInfo,
    TopicTail,
    TradeFeed,
    TradeHistory,
    TradePublisher,
)
from domain.errors import BrokerUnavailableError, LoaderError, UnknownSymbolError
from domain.messages import ControlCommand, TelemetryEvent
from domain.sequence import Gap
from domain.trade import Trade


class _Signal:
    """Wakes every waiter whenever something recorded changes."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(predicate)


class InMemoryTradeFeed(TradeFeed):
    """A feed the test pushes trades, reconnects, failures and the end into."""

    def __init__(self, clock: Clock | None = None, symbols: Sequence[str] = ()) -> None:
        self.symbols = list(symbols)
        """The run's symbols: what a reconnection names when the test does not say (the
        symbols of the trades pushed are added)."""
        self._items: deque[FeedItem | LoaderError] = deque()
        self._arrived = asyncio.Event()
        self.opened = False
        self.closed = False
        self.reconnect_requests: list[str] = []
        self.reconnected_symbols: list[tuple[str, ...] | None] = []
        self._clock_now: Callable[[], float] = clock.monotonic if clock else (lambda: 0.0)
        self.paused_at = -math.inf
        """What ``paused_until`` answers: set it to pretend the reader was paused."""
        self._reading = False
        self._drained = _Signal()

    def push(self, *trades: Trade) -> None:
        for trade in trades:
            if trade.symbol not in self.symbols:
                self.symbols.append(trade.symbol)
            self._items.append(Received(trade, self._clock_now()))
        self._arrived.set()

    def push_reconnected(self, reason: str = "test", symbols: Sequence[str] | None = None) -> None:
        """A reconnection of the connection of ``symbols`` (of every one, by default)."""
        named = tuple(symbols) if symbols is not None else tuple(self.symbols)
        self._items.append(Reconnected(reason, named))
        self._arrived.set()

    def push_dropped(self, *ranges: DroppedRange) -> None:
        """The feed read these trades and dropped them, having no room."""
        self._items.append(Dropped(ranges))
        self._arrived.set()

    def fail(self, error: LoaderError) -> None:
        self._items.append(error)
        self._arrived.set()

    async def open(self) -> None:
        self.opened = True

    async def next_batch(self) -> Sequence[FeedItem]:
        while not self._items:
            if self.closed:
                return []
            self._arrived.clear()
            self._reading = True
            await self._drained.notify()
            await self._arrived.wait()
            self._reading = False
        batch: list[FeedItem] = []
        while self._items:
            item = self._items[0]
            if isinstance(item, LoaderError):
                if batch:
                    break
                self._items.popleft()
                raise item
            self._items.popleft()
            batch.append(item)
        return batch

    async def close(self) -> None:
        self.closed = True
        self._arrived.set()

    def reconnect(self, reason: str, symbols: Sequence[str] | None = None) -> None:
        self.reconnect_requests.append(reason)
        self.reconnected_symbols.append(None if symbols is None else tuple(symbols))

    def backlog(self) -> int:
        return len(self._items)

    async def drained(self) -> None:
        """Until everything pushed was taken and the reader waits for more."""
        await self._drained.wait_until(lambda: self._reading and not self._items)

    def paused_until(self, symbol: str | None = None) -> float:
        return self.paused_at


class InMemoryExchange(SymbolDirectory, TradeHistory):
    """Symbols and trade history of a pretend exchange."""

    def __init__(self, symbols: dict[str, str] | None = None) -> None:
        self.symbols = dict(symbols or {})
        self.history: dict[str, list[Trade]] = {}
        self.history_requests: list[tuple[str, int, int]] = []
        self.latest_requests: list[str] = []
        """Symbols whose newest trade id was asked for (the cheap probe)."""
        self.refuse_history: str | None = None
        self.hold: asyncio.Event | None = None
        """While set to an unset event, history requests wait for it."""
        self.hold_describe: asyncio.Event | None = None
        """While set to an unset event, symbol lookups wait for it (REST retrying)."""
        self.described = False
        self._signal = _Signal()

    def record(self, *trades: Trade) -> None:
        for trade in trades:
            self.history.setdefault(trade.symbol, []).append(trade)

    async def describe(self, symbols: Sequence[str]) -> Sequence[SymbolInfo]:
        self.described = True
        await self._signal.notify()
        if self.hold_describe is not None:
            await self.hold_describe.wait()
        unknown = tuple(s for s in symbols if s not in self.symbols)
        if unknown:
            raise UnknownSymbolError(unknown)
        return [SymbolInfo(s, self.symbols[s]) for s in symbols]

    async def trades_from(self, symbol: str, from_id: int, limit: int) -> Sequence[Trade]:
        self.history_requests.append((symbol, from_id, limit))
        await self._signal.notify()
        if self.hold is not None:
            await self.hold.wait()
        if self.refuse_history is not None:
            raise HistoryError(self.refuse_history)
        trades = [t for t in self.history.get(symbol, []) if t.trade_id >= from_id]
        return trades[:limit]

    async def latest_trade_id(self, symbol: str) -> int | None:
        self.latest_requests.append(symbol)
        await self._signal.notify()
        if self.refuse_history is not None:
            raise HistoryError(self.refuse_history)
        trades = self.history.get(symbol)
        return trades[-1].trade_id if trades else None

    async def wait_described(self) -> None:
        await self._signal.wait_until(lambda: self.described)

    async def wait_for_requests(self, count: int) -> None:
        await self._signal.wait_until(lambda: len(self.history_requests) >= count)


class InMemoryTradePublisher(TradePublisher):
    """Records published trades; acknowledges at once unless told to hold."""

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.published: list[Trade] = []
        self.auto_ack = auto_ack
        self._acked = 0
        self.failure: LoaderError | None = None
        self.flushed = False
        self.closed = False
        self.hold: asyncio.Event | None = None
        """While set to an unset event, each publish waits for it (a broker that is slow)."""
        self._signal = _Signal()

    async def start(self, symbols: Sequence[str]) -> None:
        if self.failure is not None:
            raise self.failure

    async def publish(self, trade: Trade, received_at: float) -> None:
        if self.failure is not None:
            raise self.failure
        self.published.append(trade)
        if self.auto_ack:
            self._acked = len(self.published)
        await self._signal.notify()
        if self.hold is not None:
            await self.hold.wait()

    def acknowledged(self) -> int:
        return self._acked

    def unwritten(self) -> Sequence[Gap]:
        return []

    def ack_all(self) -> None:
        self._acked = len(self.published)

    async def flush(self, timeout: float) -> None:
        if self._acked < len(self.published):
            raise BrokerUnavailableError(
                f"{len(self.published) - self._acked} trades not acknowledged"
            )
        self.flushed = True

    async def close(self) -> None:
        self.closed = True

    async def wait_for_count(self, count: int) -> None:
        await self._signal.wait_until(lambda: len(self.published) >= count)


class InMemoryTopicTail(TopicTail):
    """The newest trades of earlier runs that the test says the topic holds."""

    def __init__(self) -> None:
        self.in_topic: list[LastPublished] = []
        self.hold: asyncio.Event | None = None
        """While set to an unset event, reading the tail waits for it (a long scan)."""
        self.asked = False
        self._signal = _Signal()

    async def last_published(self, symbols: Sequence[str]) -> Sequence[LastPublished]:
        self.asked = True
        await self._signal.notify()
        if self.hold is not None:
            await self.hold.wait()
        return [last for last in self.in_topic if last.symbol in symbols]

    async def wait_asked(self) -> None:
        await self._signal.wait_until(lambda: self.asked)


class InMemoryEventPublisher(EventPublisher):
    """Records telemetry events."""

    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []
        self.timeouts: list[float | None] = []
        """The bound each send was given, in order."""
        self.failure: LoaderError | None = None
        self.hold: asyncio.Event | None = None
        """While set to an unset event, each send waits for it (a broker slow to answer)."""
        self._signal = _Signal()

    async def publish(self, event: TelemetryEvent, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)
        await self._signal.notify()
        if self.hold is not None:
            await self.hold.wait()
        if self.failure is not None:
            raise self.failure
        self.events.append(event)
        await self._signal.notify()

    async def wait_for_count(self, count: int) -> None:
        await self._signal.wait_until(lambda: len(self.events) >= count)

    async def wait_for_attempts(self, count: int) -> None:
        await self._signal.wait_until(lambda: len(self.timeouts) >= count)

    @property
    def statuses(self) -> list[str]:
        return [event.status.value for event in self.events]


class InMemoryControlChannel(ControlChannel):
    """Commands the test sends; they are delivered in order.

    The ``commands`` given at construction are the retained backlog; with ``ready`` they are
    delivered only once the test sets it (a consumer still starting).
    """

    def __init__(self, *commands: ControlCommand, ready: asyncio.Event | None = None) -> None:
        self._backlog = list(commands)
        self._queue: asyncio.Queue[ControlCommand] = asyncio.Queue()
        self._ready = ready
        self._caught_up = asyncio.Event()
        self._signal = _Signal()
        self.subscribed = False

    def send(self, command: ControlCommand) -> None:
        self._queue.put_nowait(command)

    async def commands(self) -> AsyncGenerator[ControlCommand, None]:
        self.subscribed = True
        await self._signal.notify()
        if self._ready is not None:
            await self._ready.wait()
        while self._backlog:
            yield self._backlog.pop(0)
        self._caught_up.set()
        while True:
            yield await self._queue.get()

    async def caught_up(self) -> None:
        await self._caught_up.wait()

    async def wait_subscribed(self) -> None:
        await self._signal.wait_until(lambda: self.subscribed)


class ManualClock(Clock):
    """Time that moves only when the test advances it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._start = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._signal = _Signal()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._start

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await self._signal.notify()
        await future

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def wait_for_sleepers(self, count: int) -> None:
        """Wait until ``count`` tasks are asleep on this clock."""
        await self._signal.wait_until(lambda: self.sleepers >= count)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper that is due, in order."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, due)
            if not future.done():
                future.set_result(None)
                # Let the woken task run before time moves on.
                for _ in range(10):
                    await asyncio.sleep(0)
        self._now = target
