"""Binance trade-stream frames to trades: strict, cheap, and never raising."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import orjson

from domain.trade import Trade

# Binance sends prices and quantities as plain decimal strings ("61837.63000000").
# Anything else (exponents, signs, NaN, absurd lengths) is not a price.
_DECIMAL: Final = re.compile(r"(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,18})?")


@dataclass(frozen=True, slots=True)
class FrameIssue:
    """A frame that carried no trade: ``kind`` is rejected, ignored or shutdown."""

    kind: str
    reason: str

    @property
    def rejected(self) -> bool:
        return self.kind == "rejected"


SERVER_SHUTDOWN: Final = FrameIssue("shutdown", "serverShutdown")
_REPLY: Final = FrameIssue("ignored", "reply")
_OTHER: Final = FrameIssue("ignored", "other")
IGNORED_KINDS: Final = frozenset({_REPLY.reason, _OTHER.reason})
"""The few kinds of ignored frames: a metric label must not take any event name it is sent."""


def _reject(reason: str) -> FrameIssue:
    return FrameIssue("rejected", reason)


_REJECTIONS: Final = {
    reason: _reject(reason)
    for reason in (
        "binary",
        "oversized",
        "invalid_json",
        "not_object",
        "missing_field",
        "bad_type",
        "bad_number",
        "non_positive",
        "unsubscribed_symbol",
    )
}


OVERSIZED: Final = _REJECTIONS["oversized"]
REJECT_REASONS: Final = frozenset(_REJECTIONS)
"""Why a frame is rejected: the few values of the rejected-frames metric's label."""


def trade_key(frame: str | bytes) -> tuple[str, int] | None:
    """The symbol and trade id of a trade frame, read without decoding it, or None when they
    cannot be read so: enough to recognise a trade received already, never to accept one."""
    if type(frame) is not str:
        return None
    at = frame.find('"t":')
    if at < 0:
        return None
    end = frame.find(",", at)
    digits = frame[at + 4 : end]
    if end < 0 or not (digits.isascii() and digits.isdigit()):
        return None
    start = frame.find('"s":"')
    if start < 0:
        return None
    start += 5
    return frame[start : frame.find('"', start)], int(digits)


class FrameDecoder:
    """Turns one WebSocket frame into a ``Trade`` or says why it is not one."""

    __slots__ = ("_max_bytes", "_symbols")

    def __init__(self, symbols: frozenset[str], max_bytes: int) -> None:
        self._symbols = symbols
        self._max_bytes = max_bytes

    def decode(self, frame: str | bytes) -> Trade | FrameIssue:
        if not isinstance(frame, str):
            return _REJECTIONS["binary"]
        if len(frame) > self._max_bytes:
            return _REJECTIONS["oversized"]
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return _REJECTIONS["invalid_json"]
        if type(message) is not dict:
            return _REJECTIONS["not_object"]
        data = message.get("data") if "stream" in message else message
        if type(data) is not dict:
            return _REJECTIONS["not_object"]
        event = data.get("e")
        if event != "trade":
            return self._not_a_trade(event, message)
        return self._trade(data)

    def _not_a_trade(self, event: Any, message: dict[str, Any]) -> FrameIssue:
        if event == "serverShutdown":
            return SERVER_SHUTDOWN
        if event is None and "id" in message and ("result" in message or "error" in message):
            return _REPLY
        if type(event) is not str or len(event) > 64:
            return _REJECTIONS["missing_field" if event is None else "bad_type"]
        return _OTHER

    def _trade(self, data: dict[str, Any]) -> Trade | FrameIssue:
        try:
            symbol = data["s"]
            trade_id = data["t"]
            price = data["p"]
            quantity = data["q"]
            time = data["T"]
            maker = data["m"]
        except KeyError:
            return _REJECTIONS["missing_field"]
        if (
            type(symbol) is not str
            or type(trade_id) is not int
            or type(price) is not str
            or type(quantity) is not str
            or type(time) is not int
            or type(maker) is not bool
        ):
            return _REJECTIONS["bad_type"]
        if symbol not in self._symbols:
            return _REJECTIONS["unsubscribed_symbol"]
        if trade_id < 0 or time <= 0:
            return _REJECTIONS["non_positive"]
        if _DECIMAL.fullmatch(price) is None or _DECIMAL.fullmatch(quantity) is None:
            if price.startswith("-") or quantity.startswith("-"):
                return _REJECTIONS["non_positive"]
            return _REJECTIONS["bad_number"]
        exact_price = Decimal(price)
        exact_quantity = Decimal(quantity)
        if not exact_price or not exact_quantity:
            return _REJECTIONS["non_positive"]
        return Trade(symbol, trade_id, exact_price, exact_quantity, time, maker)


def parse_history_trade(symbol: str, item: Any) -> Trade | None:
    """One ``historicalTrades`` entry as a ``Trade``, or None when it is malformed."""
    if type(item) is not dict:
        return None
    trade_id = item.get("id")
    price = item.get("price")
    quantity = item.get("qty")
    time = item.get("time")
    maker = item.get("isBuyerMaker")
    if (
        type(trade_id) is not int
        or type(price) is not str
        or type(quantity) is not str
        or type(time) is not int
        or type(maker) is not bool
        or _DECIMAL.fullmatch(price) is None
        or _DECIMAL.fullmatch(quantity) is None
    ):
        return None
    exact_price = Decimal(price)
    exact_quantity = Decimal(quantity)
    if not exact_price or not exact_quantity or trade_id < 0 or time <= 0:
        return None
    return Trade(symbol, trade_id, exact_price, exact_quantity, time, maker)
