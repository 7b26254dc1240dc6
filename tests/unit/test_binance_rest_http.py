"""The Binance REST client over its real HTTP transport, against a tiny server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from aiohttp import web

from adapters.binance.rest import BinanceRestClient
from adapters.clock import SystemClock
from domain.errors import UnknownSymbolError
from testkit.settings import settings

LISTED = {"BTCUSDT": "TRADING", "HALTUSDT": "BREAK"}
HISTORY = [
    {
        "id": 3735683259,
        "price": "61837.63000000",
        "qty": "0.00009000",
        "quoteQty": "5.56",
        "time": 1723161255342,
        "isBuyerMaker": True,
        "isBestMatch": True,
    }
]


@dataclass
class Exchange:
    """What the tiny server was asked, by path."""

    asked: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    base_url: str = ""


EXCHANGE = web.AppKey("exchange", Exchange)


async def exchange_info(request: web.Request) -> web.Response:
    request.app[EXCHANGE].asked.append((request.path, dict(request.query)))
    names = [request.query["symbol"]] if "symbol" in request.query else []
    if "symbols" in request.query:
        names = request.query["symbols"].strip('[]"').split('","')
    if any(name not in LISTED for name in names):
        return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
    symbols = [{"symbol": name, "status": LISTED[name]} for name in names]
    return web.json_response({"symbols": symbols}, headers={"X-MBX-USED-WEIGHT-1M": "20"})


async def historical_trades(request: web.Request) -> web.Response:
    request.app[EXCHANGE].asked.append((request.path, dict(request.query)))
    return web.json_response(HISTORY, headers={"X-MBX-USED-WEIGHT-1M": "45"})


@pytest.fixture
async def exchange() -> AsyncIterator[Exchange]:
    state = Exchange()
    app = web.Application()
    app[EXCHANGE] = state
    app.router.add_get("/api/v3/exchangeInfo", exchange_info)
    app.router.add_get("/api/v3/historicalTrades", historical_trades)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.base_url = f"http://{host}:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def sut(exchange: Exchange) -> AsyncIterator[BinanceRestClient]:
    client = BinanceRestClient(exchange.base_url, settings().rest_tuning(), SystemClock())
    yield client
    await client.close()


async def test_symbols_are_described_with_one_request(
    sut: BinanceRestClient, exchange: Exchange
) -> None:
    infos = await sut.describe(["BTCUSDT", "HALTUSDT"])
    assert [(info.symbol, info.trading) for info in infos] == [
        ("BTCUSDT", True),
        ("HALTUSDT", False),
    ]
    assert exchange.asked == [("/api/v3/exchangeInfo", {"symbols": '["BTCUSDT","HALTUSDT"]'})]


async def test_an_unknown_symbol_is_named_alone(sut: BinanceRestClient) -> None:
    with pytest.raises(UnknownSymbolError) as caught:
        await sut.describe(["BTCUSDT", "NOSUCHCOIN"])
    assert caught.value.symbols == ("NOSUCHCOIN",)


async def test_history_keeps_the_exchanges_exact_digits_and_asks_from_the_given_id(
    sut: BinanceRestClient, exchange: Exchange
) -> None:
    trades = await sut.trades_from("BTCUSDT", 3735683259, 5000)
    assert [(t.trade_id, t.price, t.quantity) for t in trades] == [
        (3735683259, Decimal("61837.63000000"), Decimal("0.00009000"))
    ]
    assert trades[0].is_buyer_maker
    assert exchange.asked == [
        (
            "/api/v3/historicalTrades",
            {"symbol": "BTCUSDT", "fromId": "3735683259", "limit": "1000"},
        )
    ]
