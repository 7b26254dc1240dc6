"""The Binance REST client over a transport the test answers for: no sockets."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from adapters.binance.rest import BinanceRestClient, RestReply, RestTransport
from application.ports import HistoryError
from testkit.fakes import ManualClock
from testkit.settings import settings

HISTORY = orjson.dumps(
    [
        {
            "id": 7,
            "price": "1.00000000",
            "qty": "2.00000000",
            "quoteQty": "2",
            "time": 1_700_000_000_000,
            "isBuyerMaker": True,
            "isBestMatch": True,
        }
    ]
)


class ScriptedTransport(RestTransport):
    """Answers each request with the next scripted reply, the last one for ever after."""

    def __init__(self, *replies: RestReply) -> None:
        self._replies = list(replies)
        self.requests: list[tuple[float, str]] = []
        self._clock: ManualClock | None = None
        self._asked = asyncio.Event()

    async def get(self, url: str, params: dict[str, str]) -> RestReply:
        assert self._clock is not None
        self.requests.append((self._clock.monotonic(), url))
        self._asked.set()
        return self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]

    async def close(self) -> None:
        pass

    async def wait_requests(self, count: int) -> None:
        while len(self.requests) < count:
            self._asked.clear()
            await self._asked.wait()


def client(transport: ScriptedTransport, clock: ManualClock) -> BinanceRestClient:
    transport._clock = clock
    return BinanceRestClient("https://api.test", settings().rest_tuning(), clock, transport)


async def test_no_request_goes_out_while_a_429_asks_to_wait() -> None:
    clock = ManualClock()
    transport = ScriptedTransport(
        RestReply(429, b'{"code":-1003}', retry_after="30"), RestReply(200, HISTORY)
    )
    sut = client(transport, clock)
    first = asyncio.create_task(sut.trades_from("BTCUSDT", 7, 10))
    await transport.wait_requests(1)
    await clock.wait_for_sleepers(1)
    # Another caller (the silence check, another symbol) asks meanwhile.
    second = asyncio.create_task(sut.trades_from("ETHUSDT", 7, 10))
    await clock.wait_for_sleepers(2)
    await clock.advance(29)
    assert len(transport.requests) == 1
    await clock.advance(1)
    assert [trade.trade_id for trade in await first] == [7]
    assert [trade.trade_id for trade in await second] == [7]
    assert all(at >= 30 for at, _ in transport.requests[1:])


async def test_a_request_that_gives_up_on_429s_still_leaves_the_wait_to_the_next() -> None:
    clock = ManualClock()
    transport = ScriptedTransport(RestReply(429, b'{"code":-1003}', retry_after="500"))
    sut = client(transport, clock)
    first = asyncio.create_task(sut.trades_from("BTCUSDT", 7, 10))
    with contextlib.suppress(HistoryError):
        await first
    second = asyncio.create_task(sut.trades_from("ETHUSDT", 7, 10))
    await clock.wait_for_sleepers(1)
    assert len(transport.requests) == 1
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second


async def test_the_weight_used_is_the_exchanges_count_until_the_minute_turns() -> None:
    clock = ManualClock(start=1_700_000_080.0)  # 20 s before a minute turns
    sut = client(ScriptedTransport(RestReply(200, HISTORY, used_weight="1234")), clock)
    assert sut.used_weight() == 0
    await sut.trades_from("BTCUSDT", 7, 10)
    assert sut.used_weight() == 1234
    assert sut.weight_budget == settings().rest_weight_budget
    await clock.advance(20)
    assert sut.used_weight() == 0


async def test_the_newest_trade_id_is_the_last_id_of_the_newest_aggregate_at_weight_4() -> None:
    clock = ManualClock()
    body = orjson.dumps([{"a": 10, "p": "1.0", "q": "2.0", "f": 40, "l": 42, "T": 1, "m": True}])
    transport = ScriptedTransport(RestReply(200, body))
    sut = client(transport, clock)
    assert await sut.latest_trade_id("BTCUSDT") == 42
    assert transport.requests[0][1] == "https://api.test/api/v3/aggTrades"
    # Counted by the client until the exchange's own count comes (none here).
    assert sut.used_weight() == 4


async def test_a_symbol_without_aggregates_has_no_newest_trade_id() -> None:
    sut = client(ScriptedTransport(RestReply(200, b"[]")), ManualClock())
    assert await sut.latest_trade_id("BTCUSDT") is None


@pytest.mark.parametrize(
    "body", [b'[{"a": 1}]', b'[{"l": -1}]', b'[{"l": "42"}]', b'{"code": -1100}'], ids=str
)
async def test_a_malformed_aggregate_is_a_history_error_not_a_guess(body: bytes) -> None:
    status = 400 if body.startswith(b"{") else 200
    sut = client(ScriptedTransport(RestReply(status, body)), ManualClock())
    with pytest.raises(HistoryError):
        await sut.latest_trade_id("BTCUSDT")
