"""Exact decimals: the exchange's digits go out as JSON numbers, never through a float."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.kafka.codec import encode_trade
from domain.trade import plain_decimal
from testkit.factories import make_trade


@pytest.mark.parametrize(
    ("exchange", "expected"),
    [
        ("61837.63000000", "61837.63"),
        ("0.00009000", "0.00009"),
        ("0.00001234", "0.00001234"),
        ("12345678901.00000000", "12345678901"),
        ("100.00000000", "100"),
        ("0.10000000", "0.1"),
        ("1", "1"),
        ("0.00000001", "0.00000001"),
    ],
)
def test_plain_decimal_drops_trailing_zeros_only(exchange: str, expected: str) -> None:
    assert plain_decimal(Decimal(exchange)) == expected


PLAIN_NUMBER = re.compile(rb"(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")

binance_decimals = st.builds(
    lambda whole, frac: f"{whole}.{frac}",
    st.integers(min_value=0, max_value=10**12).map(str),
    st.text(alphabet="0123456789", min_size=8, max_size=8),
).filter(lambda text: Decimal(text) > 0)


@given(price=binance_decimals, quantity=binance_decimals)
def test_any_exchange_decimal_round_trips_exactly_through_the_message(
    price: str, quantity: str
) -> None:
    message = encode_trade(make_trade(price=price, quantity=quantity))
    parsed = json.loads(message, parse_float=Decimal, parse_int=Decimal)
    assert parsed["price"] == Decimal(price)
    assert parsed["quantity"] == Decimal(quantity)
    literals = re.search(rb'"price":([^,]+),"quantity":([^,]+),', message)
    assert literals is not None
    for literal in literals.groups():
        assert PLAIN_NUMBER.fullmatch(literal), literal


@given(
    st.decimals(
        min_value=Decimal("1e-18"), max_value=Decimal("1e18"), allow_nan=False, allow_infinity=False
    )
)
def test_plain_decimal_is_a_json_number_with_the_same_value(value: Decimal) -> None:
    text = plain_decimal(value)
    assert "e" not in text.lower()
    assert Decimal(text) == value
    assert json.loads(text, parse_float=Decimal, parse_int=Decimal) == value


def test_trade_message_has_the_contract_fields() -> None:
    trade = make_trade(3735683259, price="61837.63000000", quantity="0.02000000")
    assert orjson.loads(encode_trade(trade)) == {
        "trade_id": 3735683259,
        "price": 61837.63,
        "quantity": 0.02,
        "timestamp": 1723161255342,
        "is_buyer_maker": True,
        "symbol": "BTCUSDT",
    }
    assert encode_trade(trade) == (
        b'{"trade_id":3735683259,"price":61837.63,"quantity":0.02,'
        b'"timestamp":1723161255342,"is_buyer_maker":true,"symbol":"BTCUSDT"}'
    )
