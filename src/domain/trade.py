"""A trade as the exchange reported it, with exact decimal price and quantity."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade of one symbol; ``trade_id`` rises by one per trade of that symbol."""

    symbol: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    timestamp: int
    """Trade time, epoch milliseconds."""
    is_buyer_maker: bool


def plain_decimal(value: Decimal) -> str:
    """The decimal as a JSON number literal: exact digits, no trailing zeros, never an exponent."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        return "0"
    return text
