"""The feed's connection shards, driven through a connector the test holds: no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest

from adapters.binance.connection import ConnectionLost, StreamConnection
from adapters.binance.feed import BinanceTradeFeed, shard_symbols
from adapters.clock import SystemClock
from adapters.metrics import RunStats
from application.ports import Dropped, DroppedRange, FeedItem, Received, Reconnected
from domain.backoff import Backoff
from testkit.factories import trade_frame
from testkit.settings import settings

DEFAULTS = settings()


def url_symbols(url: str) -> list[str]:
    parts = urlsplit(url)
    if parts.path.endswith("/stream"):
        names = parse_qs(parts.query)["streams"][0].split("/")
    else:
        names = [parts.path.rsplit("/", 1)[-1]]
    return [name.removesuffix("@trade").upper() for name in names]


class Pipe(StreamConnection):
    """A connection the test writes frames into, and ends when it says."""

    def __init__(self, symbols: list[str]) -> None:
        self.symbols = symbols
        self._frames: asyncio.Queue[str | ConnectionLost] = asyncio.Queue()
        self.read = 0
        self.closed = False
        self.all_read = asyncio.Event()
        """Set when the reader took the last frame sent so far."""

    def send(self, *frames: str) -> None:
        for item in frames:
            self._frames.put_nowait(item)

    def drop(self) -> None:
        self._frames.put_nowait(ConnectionLost("dropped without a close frame"))

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        while True:
            item = await self._frames.get()
            if isinstance(item, ConnectionLost):
                raise item
            self.read += 1
            if self._frames.empty():
                self.all_read.set()
            yield item

    async def close(self) -> None:
        self.closed = True
        self._frames.put_nowait(ConnectionLost("closed by the loader (1000)"))


class Exchange:
    """Opens a ``Pipe`` per connection and remembers them by the symbols they carry."""

    def __init__(self) -> None:
        self.pipes: list[Pipe] = []
        self.changed = asyncio.Event()

    async def connect(self, url: str) -> StreamConnection:
        pipe = Pipe(url_symbols(url))
        self.pipes.append(pipe)
        self.changed.set()
        return pipe

    async def until(self, count: int) -> None:
        while len(self.pipes) < count:
            self.changed.clear()
            await self.changed.wait()

    def carrying(self, symbol: str) -> Pipe:
        return [pipe for pipe in self.pipes if symbol in pipe.symbols][-1]


SYMBOLS = [f"S{n:04d}USDT" for n in range(1100)]


def feed(
    exchange: Exchange, symbols: list[str], stats: RunStats, **tuning: object
) -> BinanceTradeFeed:
    return BinanceTradeFeed(
        "wss://stream.test/ws",
        symbols,
        replace(
            DEFAULTS.feed_tuning(),
            backoff=Backoff(initial=0.001, cap=0.001),
            **tuning,  # type: ignore[arg-type]
        ),
        stats,
        SystemClock(),
        connect=exchange.connect,
    )


async def take(sut: BinanceTradeFeed, count: int) -> list[FeedItem]:
    items: list[FeedItem] = []
    while len(items) < count:
        items.extend(await sut.next_batch())
    return items


@pytest.mark.parametrize(
    ("count", "per", "sizes"),
    [
        (1, 200, [1]),
        (200, 200, [200]),
        (201, 200, [101, 100]),
        (1100, 200, [184] * 2 + [183] * 4),
        (1500, 1024, [750, 750]),
        (3, 1, [1, 1, 1]),
    ],
)
def test_symbols_go_in_as_few_shards_as_the_limit_allows_of_equal_size(
    count: int, per: int, sizes: list[int]
) -> None:
    symbols = SYMBOLS[:count] if count <= len(SYMBOLS) else [f"X{n}USDT" for n in range(count)]
    shards = shard_symbols(symbols, per)
    assert [len(shard) for shard in shards] == sizes
    assert [s for shard in shards for s in shard] == symbols


async def test_over_1024_symbols_stream_on_connections_within_the_limit() -> None:
    exchange = Exchange()
    sut = feed(exchange, SYMBOLS, RunStats())
    await sut.open()
    await exchange.until(6)
    assert sorted(len(pipe.symbols) for pipe in exchange.pipes) == [183] * 4 + [184] * 2
    assert sorted(s for pipe in exchange.pipes for s in pipe.symbols) == sorted(SYMBOLS)
    for pipe in exchange.pipes:
        pipe.send(trade_frame(1, symbol=pipe.symbols[0]))
    items = await take(sut, 6)
    assert sorted(i.trade.symbol for i in items if isinstance(i, Received)) == sorted(
        pipe.symbols[0] for pipe in exchange.pipes
    )
    await sut.close()


async def test_a_frame_of_another_shards_symbol_is_rejected() -> None:
    exchange = Exchange()
    stats = RunStats()
    sut = feed(exchange, SYMBOLS[:4], stats, streams_per_connection=2)
    await sut.open()
    await exchange.until(2)
    exchange.carrying(SYMBOLS[0]).send(
        trade_frame(1, symbol=SYMBOLS[3]), trade_frame(2, symbol=SYMBOLS[1])
    )
    items = await take(sut, 1)
    assert [i.trade.trade_id for i in items if isinstance(i, Received)] == [2]
    assert stats.rejected["unsubscribed_symbol"] == 1
    await sut.close()


async def test_a_drop_of_one_shard_reconnects_and_marks_only_its_symbols() -> None:
    exchange = Exchange()
    stats = RunStats()
    sut = feed(exchange, SYMBOLS[:6], stats, streams_per_connection=2)
    await sut.open()
    await exchange.until(3)
    first = exchange.carrying(SYMBOLS[2])
    first.drop()
    await exchange.until(4)
    others = [pipe for pipe in exchange.pipes[:3] if pipe is not first]
    for pipe in others:
        pipe.send(trade_frame(7, symbol=pipe.symbols[0]))
    items = await take(sut, 3)
    marks = [i for i in items if isinstance(i, Reconnected)]
    assert marks == [Reconnected("dropped without a close frame", (SYMBOLS[2], SYMBOLS[3]))]
    assert not any(pipe.closed for pipe in others)
    assert stats.reconnects["dropped"] == 1
    assert sut.connections() == 3
    await sut.close()


async def test_a_silent_symbol_replaces_only_the_connection_that_carries_it() -> None:
    exchange = Exchange()
    sut = feed(exchange, SYMBOLS[:6], RunStats(), streams_per_connection=2)
    await sut.open()
    await exchange.until(3)
    before = list(exchange.pipes)
    sut.reconnect("silent stream", [SYMBOLS[5]])
    await exchange.until(4)
    assert exchange.pipes[3].symbols == [SYMBOLS[4], SYMBOLS[5]]
    await sut.close()
    assert [pipe.closed for pipe in before] == [True, True, True]


async def test_shards_share_one_window_of_connection_attempts() -> None:
    refused = 0

    async def refuse(url: str) -> StreamConnection:
        nonlocal refused
        refused += 1
        from adapters.binance.connection import ConnectFailed

        raise ConnectFailed("ConnectionRefusedError: refused")

    stats = RunStats()
    sut = BinanceTradeFeed(
        "wss://stream.test/ws",
        SYMBOLS[:8],
        replace(
            DEFAULTS.feed_tuning(),
            backoff=Backoff(initial=0.001, cap=0.001),
            streams_per_connection=1,
            attempts_limit=5,
        ),
        stats,
        SystemClock(),
        connect=refuse,
    )
    await sut.open()
    for _ in range(2000):  # every shard tries at once, then all wait for the window
        await asyncio.sleep(0)
    assert refused == 5
    await sut.close()


async def test_a_full_buffer_that_stays_full_reads_on_and_tells_what_it_dropped() -> None:
    exchange = Exchange()
    stats = RunStats()
    sut = feed(exchange, SYMBOLS[:2], stats, buffer_frames=4, pause_limit=0.02)
    await sut.open()
    await exchange.until(1)
    pipe = exchange.pipes[0]
    pipe.send(*(trade_frame(i, symbol=SYMBOLS[i % 2]) for i in range(1, 11)))
    pipe.send('{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}')
    # Nobody reads: the reader pauses at 4, then after the pause limit reads on and drops.
    await pipe.all_read.wait()
    assert pipe.read == 11
    assert stats.overflow_frames == 6
    # Reading on while dropping counts as a pause: what it read is not seen yet.
    before = SystemClock().monotonic()
    assert sut.paused_until(SYMBOLS[0]) >= before
    # The notice read while dropping is still acted on: a new connection opens.
    await exchange.until(2)
    # The old connection is shut once the new one is open: its reader tells what it dropped.
    items = await take(sut, 6)
    assert [i.trade.trade_id for i in items if isinstance(i, Received)] == [1, 2, 3, 4]
    assert [i for i in items if isinstance(i, Reconnected)] == [
        Reconnected("server shutdown", (SYMBOLS[0], SYMBOLS[1]))
    ]
    assert [i for i in items if isinstance(i, Dropped)] == [
        Dropped(
            (
                DroppedRange(SYMBOLS[1], 5, 9, 1_700_000_000_009),
                DroppedRange(SYMBOLS[0], 6, 10, 1_700_000_000_010),
            )
        )
    ]
    await sut.close()


# Redundant connections: two per shard.


async def redundant(
    exchange: Exchange, stats: RunStats, symbols: list[str] | None = None, **tuning: object
) -> tuple[BinanceTradeFeed, Pipe, Pipe]:
    sut = feed(exchange, symbols or SYMBOLS[:2], stats, redundant=True, **tuning)
    await sut.open()
    await exchange.until(2)
    return sut, exchange.pipes[0], exchange.pipes[1]


def ids(items: list[FeedItem]) -> list[tuple[str, int]]:
    return [(i.trade.symbol, i.trade.trade_id) for i in items if isinstance(i, Received)]


async def test_each_shard_keeps_two_connections_of_the_same_streams() -> None:
    exchange = Exchange()
    sut = feed(exchange, SYMBOLS[:6], RunStats(), streams_per_connection=2, redundant=True)
    await sut.open()
    await exchange.until(6)
    assert sorted(tuple(pipe.symbols) for pipe in exchange.pipes) == sorted(
        [tuple(SYMBOLS[i : i + 2]) for i in (0, 2, 4)] * 2
    )
    assert sut.connections() == 3
    await sut.close()


async def test_a_trade_received_on_both_connections_is_handed_on_once_in_order() -> None:
    exchange = Exchange()
    stats = RunStats()
    sut, a, b = await redundant(exchange, stats)
    for trade_id in range(1, 6):
        a.send(trade_frame(trade_id, symbol=SYMBOLS[0]))
    await a.all_read.wait()
    for trade_id in range(1, 6):
        b.send(trade_frame(trade_id, symbol=SYMBOLS[0]))
    await b.all_read.wait()
    b.send(trade_frame(6, symbol=SYMBOLS[0]))
    items = await take(sut, 6)
    assert ids(items) == [(SYMBOLS[0], i) for i in range(1, 7)]
    assert stats.redundant_frames == 5
    assert stats.received[SYMBOLS[0]] == 6
    await sut.close()


async def test_a_trade_ahead_of_its_predecessor_waits_for_it_from_the_other_connection() -> None:
    exchange = Exchange()
    sut, a, b = await redundant(exchange, RunStats(), arbitration=1.0)
    a.send(trade_frame(1, symbol=SYMBOLS[0]))
    # The first trade of a symbol waits its moment too (for earlier ones on the other leg).
    assert ids(await take(sut, 1)) == [(SYMBOLS[0], 1)]
    # b runs ahead: 3 (and 4) before a delivered 2.
    b.send(trade_frame(3, symbol=SYMBOLS[0]), trade_frame(4, symbol=SYMBOLS[0]))
    await b.all_read.wait()
    a.send(trade_frame(2, symbol=SYMBOLS[0]), trade_frame(3, symbol=SYMBOLS[0]))
    items = await take(sut, 3)
    assert ids(items) == [(SYMBOLS[0], i) for i in (2, 3, 4)]
    assert sut.backlog() == 0
    await sut.close()


async def test_the_first_trade_of_a_symbol_waits_for_earlier_ones_from_the_other_connection() -> (
    None
):
    exchange = Exchange()
    sut, a, b = await redundant(exchange, RunStats(), arbitration=30.0)
    # a connected first and has trade 1; b, connected later, delivers 2 before a's 1 is read.
    b.send(trade_frame(2, symbol=SYMBOLS[0]))
    await b.all_read.wait()
    a.send(trade_frame(1, symbol=SYMBOLS[0]), trade_frame(2, symbol=SYMBOLS[0]))
    await a.all_read.wait()
    b.send(trade_frame(3, symbol=SYMBOLS[0]))
    await sut.close()
    items = await take(sut, 2)
    items += await sut.next_batch()
    assert ids(items)[:2] == [(SYMBOLS[0], 1), (SYMBOLS[0], 2)]
    assert sut.backlog() == 0


async def test_a_trade_whose_predecessor_comes_on_neither_connection_goes_on_after_a_moment() -> (
    None
):
    exchange = Exchange()
    sut, a, _ = await redundant(exchange, RunStats(), arbitration=0.05)
    a.send(trade_frame(1, symbol=SYMBOLS[0]))
    a.send(trade_frame(3, symbol=SYMBOLS[0]))
    await a.all_read.wait()
    # No frame arrives after it: the feed wakes up on its own to hand it on, with its gap.
    items = await asyncio.wait_for(take(sut, 2), 5)
    assert ids(items) == [(SYMBOLS[0], 1), (SYMBOLS[0], 3)]
    await sut.close()


async def test_a_trade_still_waiting_at_the_end_is_handed_on() -> None:
    exchange = Exchange()
    sut, a, _ = await redundant(exchange, RunStats(), arbitration=30.0)
    a.send(trade_frame(1, symbol=SYMBOLS[0]), trade_frame(3, symbol=SYMBOLS[0]))
    await a.all_read.wait()
    assert sut.backlog() == 2
    await sut.close()
    items = await take(sut, 2)
    assert ids(items) == [(SYMBOLS[0], 1), (SYMBOLS[0], 3)]
    assert sut.backlog() == 0
    assert await sut.next_batch() == []


async def test_a_drop_the_other_connection_covered_is_not_a_reconnect() -> None:
    exchange = Exchange()
    stats = RunStats()
    sut, a, b = await redundant(exchange, stats, cover_margin=0.0)
    a.send(trade_frame(1, symbol=SYMBOLS[0]))
    b.send(trade_frame(1, symbol=SYMBOLS[0]))
    await b.all_read.wait()
    a.drop()
    await exchange.until(3)
    # b reads on after the replacement opened: whatever a missed, b had.
    b.send(trade_frame(2, symbol=SYMBOLS[0]))
    await b.all_read.wait()
    exchange.pipes[2].send(trade_frame(2, symbol=SYMBOLS[0]), trade_frame(3, symbol=SYMBOLS[0]))
    items = await take(sut, 3)
    assert ids(items) == [(SYMBOLS[0], i) for i in (1, 2, 3)]
    # b's own loss, covered by a's replacement, tells nothing either.
    b.drop()
    await exchange.until(4)
    exchange.pipes[2].send(trade_frame(4, symbol=SYMBOLS[0]))
    items += await take(sut, 1)
    assert ids(items)[-1] == (SYMBOLS[0], 4)
    assert not [i for i in items if isinstance(i, Reconnected)]
    assert stats.reconnects["dropped"] == 2
    await sut.close()


async def test_a_drop_of_both_connections_is_a_reconnect() -> None:
    exchange = Exchange()
    sut, a, b = await redundant(exchange, RunStats(), cover_margin=0.0)
    a.send(trade_frame(1, symbol=SYMBOLS[0]))
    await a.all_read.wait()
    b.drop()
    a.drop()
    await exchange.until(4)
    items = await take(sut, 2)
    assert [i for i in items if isinstance(i, Reconnected)] == [
        Reconnected("dropped without a close frame", (SYMBOLS[0], SYMBOLS[1]))
    ]
    await sut.close()


async def test_a_drop_before_the_other_connection_confirmed_cover_is_a_reconnect() -> None:
    exchange = Exchange()
    sut, a, b = await redundant(exchange, RunStats(), cover_margin=30.0)
    a.drop()
    await exchange.until(3)
    # b ends before it read on long enough after a's replacement opened to show it covered.
    b.drop()
    await exchange.until(4)
    items = await take(sut, 1)
    assert [i for i in items if isinstance(i, Reconnected)][:1] == [
        Reconnected("dropped without a close frame", (SYMBOLS[0], SYMBOLS[1]))
    ]
    await sut.close()


async def test_a_shutdown_notice_on_both_connections_replaces_each_once() -> None:
    exchange = Exchange()
    sut, a, b = await redundant(exchange, RunStats())
    notice = '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}'
    a.send(notice)
    b.send(notice)
    await a.all_read.wait()
    await b.all_read.wait()
    task = asyncio.ensure_future(sut.next_batch())
    await exchange.until(4)
    for _ in range(200):
        await asyncio.sleep(0)
    assert len(exchange.pipes) == 4
    assert a.closed
    assert b.closed
    task.cancel()
    await sut.close()
