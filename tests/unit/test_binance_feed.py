"""The Binance feed driven through a connector the test holds: no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from adapters.binance.connection import RECONNECT_REASONS, ConnectionLost, StreamConnection
from adapters.binance.feed import BinanceTradeFeed
from adapters.clock import SystemClock
from adapters.metrics import RunStats
from application.ports import Received
from domain.backoff import Backoff
from testkit.factories import trade_frame
from testkit.settings import settings

DEFAULTS = settings()


def frame(trade_id: int, symbol: str = "BTCUSDT") -> str:
    return trade_frame(trade_id, symbol=symbol)


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
        replace(DEFAULTS.feed_tuning(), buffer_frames=2),
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


class DroppingConnection(StreamConnection):
    """Gives one frame, then ends the way the test says."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        yield frame(1)
        raise ConnectionLost(self._reason)

    async def close(self) -> None:
        pass


async def test_reconnect_reasons_are_a_few_labels_whatever_the_error_text() -> None:
    details = [
        "network error: [Errno 104] Connection reset by peer",
        "network error: [Errno 110] Connection timed out 10.0.3.7:443",
        "closed by the exchange (1001)",
        "closed with error (1011)",
        "dropped without a close frame",
    ]
    connections: list[StreamConnection] = [DroppingConnection(d) for d in details]
    last = ScriptedConnection([])
    reached_last = asyncio.Event()

    async def connect(url: str) -> StreamConnection:
        if connections:
            return connections.pop(0)
        reached_last.set()
        return last

    stats = RunStats()
    sut = BinanceTradeFeed(
        "wss://stream.test/ws",
        ["BTCUSDT"],
        replace(DEFAULTS.feed_tuning(), backoff=Backoff(initial=0.001, cap=0.001)),
        stats,
        SystemClock(),
        connect=connect,
    )
    await sut.open()
    await reached_last.wait()
    await sut.close()
    assert dict(stats.reconnects) == {
        "network_error": 2,
        "closed_by_exchange": 1,
        "closed_with_error": 1,
        "dropped": 1,
    }
    assert set(stats.reconnects) <= RECONNECT_REASONS


class EndlessConnection(StreamConnection):
    """Gives a new trade frame whenever asked, until closed."""

    def __init__(self, first_id: int) -> None:
        self._next = first_id
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        while not self._closed:
            self._next += 1
            yield frame(self._next)
        raise ConnectionLost("closed by the loader (1000)")

    async def close(self) -> None:
        self._closed = True


async def test_connections_replaced_while_nobody_reads_do_not_grow_the_buffer() -> None:
    opened: list[EndlessConnection] = []
    connected = asyncio.Event()

    async def connect(url: str) -> StreamConnection:
        opened.append(EndlessConnection(1000 * len(opened)))
        connected.set()
        return opened[-1]

    stats = RunStats()
    sut = BinanceTradeFeed(
        "wss://stream.test/ws",
        ["BTCUSDT"],
        replace(DEFAULTS.feed_tuning(), buffer_frames=4),
        stats,
        SystemClock(),
        connect=connect,
    )
    await sut.open()
    for replacement in range(1, 8):
        while len(opened) < replacement:
            connected.clear()
            await connected.wait()
        for _ in range(200):  # let the new reader run until it pauses; only the loop turns
            await asyncio.sleep(0)
        sut.reconnect("silent stream")
    assert sut.backlog() <= 4 + 1
    await sut.close()
