"""The Binance feed over its real WebSocket client, against ``websockets.serve`` on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from adapters.binance.feed import BinanceTradeFeed
from adapters.clock import SystemClock
from adapters.metrics import RunStats
from application.ports import FeedItem, Received, Reconnected
from domain.backoff import Backoff
from testkit.factories import trade_frame
from testkit.settings import settings


def frame(trade_id: int) -> str:
    return trade_frame(trade_id, price="61837.63000000", quantity="0.00009000")


class Exchange:
    """Each connection gets the next script: frames to send, then how the connection ends."""

    def __init__(self, *scripts: tuple[range, str]) -> None:
        self.scripts = list(scripts)
        self.paths: list[str] = []
        self.server: Server | None = None

    async def handle(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path if ws.request else "")
        ids, ending = self.scripts.pop(0)
        for trade_id in ids:
            await ws.send(frame(trade_id))
        if ending == "drop":
            ws.transport.abort()  # the TCP connection goes, without a close frame
        else:
            await ws.wait_closed()  # held open until the client closes

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = next(iter(self.server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}/ws"


@pytest.fixture
async def exchange(request: pytest.FixtureRequest) -> AsyncIterator[Exchange]:
    state = Exchange(*request.param)
    async with serve(state.handle, "127.0.0.1", 0) as server:
        state.server = server
        yield state


def feed(exchange: Exchange, stats: RunStats) -> BinanceTradeFeed:
    tuning = replace(settings().feed_tuning(), backoff=Backoff(initial=0.01, cap=0.01))
    return BinanceTradeFeed(exchange.url, ["BTCUSDT"], tuning, stats, SystemClock())


async def take(sut: BinanceTradeFeed, trades: int) -> list[FeedItem]:
    items: list[FeedItem] = []
    while sum(isinstance(item, Received) for item in items) < trades:
        items.extend(await asyncio.wait_for(sut.next_batch(), 10))
    return items


@pytest.mark.parametrize("exchange", [[(range(1, 6), "hold")]], indirect=True)
async def test_trades_arrive_in_order_with_their_exact_digits(exchange: Exchange) -> None:
    stats = RunStats()
    sut = feed(exchange, stats)
    await sut.open()
    items = await take(sut, 5)
    assert sut.connected()
    await sut.close()
    received = [item.trade for item in items if isinstance(item, Received)]
    assert [trade.trade_id for trade in received] == [1, 2, 3, 4, 5]
    assert str(received[0].price) == "61837.63000000"
    assert str(received[0].quantity) == "0.00009000"
    assert exchange.paths == ["/ws/btcusdt@trade"]
    assert stats.received["BTCUSDT"] == 5
    assert not sut.connected()


@pytest.mark.parametrize(
    "exchange", [[(range(1, 4), "drop"), (range(4, 7), "hold")]], indirect=True
)
async def test_a_dropped_connection_is_replaced_and_the_loss_is_told(exchange: Exchange) -> None:
    stats = RunStats()
    sut = feed(exchange, stats)
    await sut.open()
    items = await take(sut, 6)
    await sut.close()
    ids = [item.trade.trade_id if isinstance(item, Received) else "mark" for item in items]
    assert ids == [1, 2, 3, "mark", 4, 5, 6]
    mark = next(item for item in items if isinstance(item, Reconnected))
    assert mark.reason.startswith("dropped without a close frame")
    assert stats.reconnects == {"dropped": 1}
    assert len(exchange.paths) == 2
