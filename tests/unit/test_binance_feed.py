"""The Binance feed driven through a connector the test holds: no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from adapters.binance_feed import BinanceTradeFeed, ConnectionLost, FeedTuning, StreamConnection
from adapters.clock import SystemClock
from adapters.metrics import RunStats
from application.ports import Received


def frame(trade_id: int, symbol: str = "BTCUSDT") -> str:
    return orjson.dumps(
        {
            "e": "trade",
            "E": 1,
            "s": symbol,
            "t": trade_id,
            "p": "1.00000000",
            "q": "2.00000000",
            "T": 1_700_000_000_000 + trade_id,
            "m": True,
            "M": True,
        }
    ).decode()


class ScriptedConnection(StreamConnection):
    """Gives the frames it was made with, then waits until closed."""

    def __init__(self, frames: list[str]) -> None:
        self._frames = list(frames)
        self.handed = 0
        self._closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        for item in self._frames:
            self.handed += 1
            yield item
        await self._closed.wait()
        raise ConnectionLost("closed by the loader (1000)")

    async def close(self) -> None:
        self._closed.set()


async def drain(sut: BinanceTradeFeed) -> list[int]:
    ids: list[int] = []
    while batch := await sut.next_batch():
        ids.extend(item.trade.trade_id for item in batch if isinstance(item, Received))
    return ids


async def test_a_frame_taken_while_the_buffer_is_full_is_not_lost_at_close() -> None:
    connection = ScriptedConnection([frame(i) for i in range(1, 4)])

    async def connect(url: str) -> StreamConnection:
        return connection

    stats = RunStats()
    sut = BinanceTradeFeed(
        "wss://stream.test/ws",
        ["BTCUSDT"],
        FeedTuning(buffer_frames=2),
        stats,
        SystemClock(),
        connect=connect,
    )
    await sut.open()
    # Nobody reads the buffer: the reader fills it and pauses. Only the loop turns meanwhile.
    for _ in range(1000):
        if stats.buffer_pauses:
            break
        await asyncio.sleep(0)
    assert stats.buffer_pauses == 1
    await sut.close()
    assert await drain(sut) == list(range(1, connection.handed + 1))
