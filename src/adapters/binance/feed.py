"""Binance's live trade stream over WebSocket: the symbols in connection shards, one consumer.

Each shard (``shard``) carries at most ``streams_per_connection`` symbols on its own
connection, reader, buffer and reconnect schedule; the feed opens and closes them together,
and hands their frames to the one consumer, decoded, taking from each shard in turn. A symbol
belongs to one shard, so its trades keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable, Sequence

from loguru import logger

from adapters.binance.connection import Connector, websocket_connector
from adapters.binance.shard import FeedTuning, Shard, ShardContext
from adapters.metrics import RunStats
from application.ports import Clock, FeedItem, TradeFeed
from domain.backoff import AttemptWindow
from domain.errors import ExchangeUnavailableError

__all__ = ["BinanceTradeFeed", "FeedTuning", "shard_symbols"]

GATHER_FRAMES = 256
GATHER_SECONDS = 0.002


def shard_symbols(symbols: Sequence[str], per_connection: int) -> list[tuple[str, ...]]:
    """The symbols in as few shards as ``per_connection`` allows, of sizes differing by at
    most one, in the configured order."""
    count = max(1, math.ceil(len(symbols) / per_connection))
    size, larger = divmod(len(symbols), count)
    shards: list[tuple[str, ...]] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < larger else 0)
        shards.append(tuple(symbols[start:end]))
        start = end
    return shards


class BinanceTradeFeed(TradeFeed):
    """Receives frames into bounded buffers, one per shard; decoding happens in ``next_batch``.

    All shards share one window of connection attempts (Binance counts them per IP), so
    reconnecting many shards at once cannot get the address banned.
    """

    def __init__(
        self,
        ws_url: str,
        symbols: Sequence[str],
        tuning: FeedTuning,
        stats: RunStats,
        clock: Clock,
        connect: Connector | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._arrived = asyncio.Event()
        self._failure: ExchangeUnavailableError | None = None
        self._ctx = ShardContext(
            tuning=tuning,
            stats=stats,
            clock=clock,
            connect=connect
            or websocket_connector(
                open_timeout=tuning.open_timeout,
                ping_interval=tuning.ping_interval,
                ping_timeout=tuning.ping_timeout,
                close_timeout=tuning.close_timeout,
                max_frame_bytes=tuning.max_frame_bytes,
            ),
            rand=rand,
            window=AttemptWindow(tuning.attempts_limit, tuning.attempts_window),
            arrived=self._arrived,
            fail=self._fail,
        )
        groups = shard_symbols(symbols, tuning.streams_per_connection)
        self._shards = tuple(
            Shard(index, len(groups), ws_url, group, self._ctx)
            for index, group in enumerate(groups)
        )
        self._by_symbol = {symbol: shard for shard in self._shards for symbol in shard.symbols}
        self._turn = 0
        self._opened = False
        self._stopping: asyncio.Task[None] | None = None

    @property
    def shards(self) -> Sequence[Shard]:
        return self._shards

    def backlog(self) -> int:
        return sum(len(shard.buffer) + shard.waiting for shard in self._shards)

    def connected(self) -> bool:
        """Whether every shard has a connection to the exchange open now."""
        return all(shard.connected for shard in self._shards)

    def connections(self) -> int:
        """How many shards have a connection open now."""
        return sum(shard.connected for shard in self._shards)

    async def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        tuning = self._ctx.tuning
        if len(self._shards) > 1 or tuning.redundant:
            logger.info(
                "{symbols} symbols on {count} connection shard(s) of at most {per} streams "
                "(WS_STREAMS_PER_CONNECTION), {legs} connection(s) each "
                "(WS_REDUNDANT_CONNECTIONS)",
                symbols=len(self._by_symbol),
                count=len(self._shards),
                per=tuning.streams_per_connection,
                legs=2 if tuning.redundant else 1,
            )
        for shard in self._shards:
            shard.start()

    def reconnect(self, reason: str, symbols: Sequence[str] | None = None) -> None:
        if symbols is None:
            targets: Sequence[Shard] = self._shards
        else:
            targets = list(
                dict.fromkeys(self._by_symbol[s] for s in symbols if s in self._by_symbol)
            )
        for shard in targets:
            shard.reconnect(reason)

    async def close(self) -> None:
        self._ctx.closing = True
        if self._stopping is not None:
            await asyncio.gather(self._stopping, return_exceptions=True)
        await self._close_shards()

    def paused_until(self, symbol: str | None = None) -> float:
        if symbol is not None and symbol in self._by_symbol:
            return self._by_symbol[symbol].paused_until()
        return max(shard.paused_until() for shard in self._shards)

    async def next_batch(self) -> Sequence[FeedItem]:
        clock = self._ctx.clock
        while True:
            now = clock.monotonic()
            if any(shard.buffer or shard.next_due() <= now for shard in self._shards):
                if self.backlog() < GATHER_FRAMES and not self._ctx.closing:
                    # A trickle of frames: wait a moment so that one pass takes several.
                    await asyncio.sleep(GATHER_SECONDS)
                    now = clock.monotonic()
                items = self._decode_some(now)
                if items:
                    return items
                continue
            if self._ctx.closing and any(shard.waiting for shard in self._shards):
                # Trades waiting for a predecessor that will not come now were received.
                items = []
                for shard in self._shards:
                    shard.flush(items)
                return items
            if self._failure is not None:
                raise self._failure
            if self._ctx.closing:
                return []
            self._arrived.clear()
            due = min(shard.next_due() for shard in self._shards)
            if due == math.inf:
                await self._arrived.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, due - now)):
                        await self._arrived.wait()

    def _decode_some(self, now: float) -> list[FeedItem]:
        """Up to ``batch_size`` entries, from each shard in turn starting with the next one."""
        shards = self._shards
        count = len(shards)
        start = self._turn
        self._turn = (start + 1) % count
        items: list[FeedItem] = []
        room = self._ctx.tuning.batch_size
        for offset in range(count):
            shard = shards[(start + offset) % count]
            if shard.buffer or shard.next_due() <= now:
                room -= shard.decode_into(items, room)
                if room <= 0:
                    break
        return items

    def _fail(self, message: str) -> None:
        """One shard could not reconnect in time: the feed ends once what was received is read.

        The other shards stop reading too, else their frames would keep the end away.
        """
        if self._failure is None:
            self._failure = ExchangeUnavailableError(message)
            logger.error(message)
            self._ctx.closing = True
            self._stopping = asyncio.create_task(self._close_shards(), name="feed-stop")
        self._arrived.set()

    async def _close_shards(self) -> None:
        await asyncio.gather(*(shard.close() for shard in self._shards))
        self._arrived.set()
