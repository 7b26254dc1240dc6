"""Factories for test data."""

from __future__ import annotations

from decimal import Decimal

import orjson

from domain.trade import Trade


def make_trade(
    trade_id: int = 1,
    *,
    symbol: str = "BTCUSDT",
    price: str = "61837.63000000",
    quantity: str = "0.02000000",
    timestamp: int = 1_723_161_255_342,
    is_buyer_maker: bool = True,
) -> Trade:
    return Trade(
        symbol=symbol,
        trade_id=trade_id,
        price=Decimal(price),
        quantity=Decimal(quantity),
        timestamp=timestamp,
        is_buyer_maker=is_buyer_maker,
    )


def make_trades(
    first: int, last: int, *, symbol: str = "BTCUSDT", timestamp: int = 1_700_000_000_000
) -> list[Trade]:
    """Trades ``first..last`` (inclusive) of one symbol, one millisecond apart."""
    return [
        make_trade(
            i, symbol=symbol, price=f"{100 + i % 7}.{i % 100:02d}000000", timestamp=timestamp + i
        )
        for i in range(first, last + 1)
    ]


def trade_frame(
    trade_id: int,
    *,
    symbol: str = "BTCUSDT",
    price: str = "1.00000000",
    quantity: str = "2.00000000",
) -> str:
    """A Binance ``@trade`` stream frame, as the exchange sends it."""
    return orjson.dumps(
        {
            "e": "trade",
            "E": 1,
            "s": symbol,
            "t": trade_id,
            "p": price,
            "q": quantity,
            "T": 1_700_000_000_000 + trade_id,
            "m": True,
            "M": True,
        }
    ).decode()
