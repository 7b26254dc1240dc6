"""Binance REST: symbol validation and trade history, within the exchange's request limits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from loguru import logger

from adapters.binance.codec import parse_history_trade
from application.ports import Clock, HistoryError, SymbolDirectory, SymbolInfo, TradeHistory
from domain.errors import ExchangeUnavailableError, UnknownSymbolError
from domain.trade import Trade

INVALID_SYMBOL = -1121
HISTORY_WEIGHT = 25
AGG_TRADES_WEIGHT = 4
"""Of ``GET /api/v3/aggTrades`` since 2025-03-10."""


@dataclass(frozen=True, slots=True)
class RestTuning:
    """Request bounds for the exchange's REST API.

    The fields without a default come from the settings (``Settings.rest_tuning``), the one
    place that holds their defaults; the others are not configurable.
    """

    unavailable_timeout: float
    weight_budget: int
    """Of Binance's 6000 request weight a minute per IP, what this loader may use."""
    request_timeout: float = 10.0
    max_retry_wait: float = 120.0


@dataclass(frozen=True, slots=True)
class RestReply:
    """One HTTP answer of the REST API, as much of it as the client reads."""

    status: int
    body: bytes
    retry_after: str | None = None
    used_weight: str | None = None
    """The ``Retry-After`` and ``X-MBX-USED-WEIGHT-1M`` headers, as sent."""


class RestUnreachable(Exception):
    """The request got no HTTP answer (network error, time-out)."""


class RestTransport(Protocol):
    """HTTP GET against the REST base URL."""

    async def get(self, url: str, params: dict[str, str]) -> RestReply:
        """The answer to one GET; raises ``RestUnreachable`` when none came."""
        ...

    async def close(self) -> None:
        """Release the connections; safe to call more than once."""
        ...


class AiohttpTransport(RestTransport):
    """GET requests over one aiohttp session, each bounded by ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def get(self, url: str, params: dict[str, str]) -> RestReply:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": "loader-ws-trades"},
            )
        try:
            async with self._session.get(url, params=params) as response:
                return RestReply(
                    response.status,
                    await response.read(),
                    response.headers.get("Retry-After"),
                    response.headers.get("X-MBX-USED-WEIGHT-1M"),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise RestUnreachable(repr(error)) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: Any
    retry_after: float | None


class BinanceRestClient(SymbolDirectory, TradeHistory):
    """``exchangeInfo`` for symbol validation; ``historicalTrades`` to fill gaps."""

    def __init__(
        self,
        base_url: str,
        tuning: RestTuning,
        clock: Clock,
        transport: RestTransport | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._tuning = tuning
        self._clock = clock
        self._transport = transport or AiohttpTransport(tuning.request_timeout)
        self._used_weight = 0
        self._weight_minute = 0
        self._blocked_until = 0.0
        """No request before this (monotonic seconds): a 429's or 418's Retry-After runs."""
        self._one_at_a_time = asyncio.Lock()

    async def close(self) -> None:
        await self._transport.close()

    def used_weight(self) -> int:
        """The request weight used in the current minute (0 once a new minute began)."""
        return self._used_weight if int(self._clock.time() // 60) == self._weight_minute else 0

    @property
    def weight_budget(self) -> int:
        return self._tuning.weight_budget

    async def describe(self, symbols: Sequence[str]) -> Sequence[SymbolInfo]:
        reply = await self._exchange_info(symbols)
        if _is_invalid_symbol(reply):
            unknown = []
            for symbol in symbols:
                if _is_invalid_symbol(await self._exchange_info([symbol])):
                    unknown.append(symbol)
            raise UnknownSymbolError(tuple(unknown or symbols))
        if reply.status != 200 or not isinstance(reply.body, dict):
            raise ExchangeUnavailableError(
                f"exchangeInfo answered HTTP {reply.status}: {_snippet(reply.body)}"
            )
        listed = {
            item.get("symbol"): str(item.get("status", "UNKNOWN"))
            for item in reply.body.get("symbols", [])
            if isinstance(item, dict)
        }
        missing = tuple(symbol for symbol in symbols if symbol not in listed)
        if missing:
            raise UnknownSymbolError(missing)
        return [SymbolInfo(symbol, listed[symbol]) for symbol in symbols]

    async def _exchange_info(self, symbols: Sequence[str]) -> _Reply:
        if len(symbols) == 1:
            params = {"symbol": symbols[0]}
        else:
            params = {"symbols": orjson.dumps(list(symbols)).decode()}
        return await self._get_with_retry("/api/v3/exchangeInfo", params, weight=20)

    async def trades_from(self, symbol: str, from_id: int, limit: int) -> Sequence[Trade]:
        params = {"symbol": symbol, "fromId": str(from_id), "limit": str(min(limit, 1000))}
        return await self._history(params, symbol)

    async def latest_trade_id(self, symbol: str) -> int | None:
        """From the newest aggregate trade (``l`` is its last trade id): weight 4, where
        ``historicalTrades`` costs 25."""
        try:
            reply = await self._get_with_retry(
                "/api/v3/aggTrades", {"symbol": symbol, "limit": "1"}, weight=AGG_TRADES_WEIGHT
            )
        except ExchangeUnavailableError as error:
            raise HistoryError(str(error)) from None
        if reply.status != 200 or not isinstance(reply.body, list):
            raise HistoryError(f"aggTrades answered HTTP {reply.status}: {_snippet(reply.body)}")
        if not reply.body:
            return None
        newest = reply.body[-1]
        last = newest.get("l") if isinstance(newest, dict) else None
        if type(last) is not int or last < 0:
            raise HistoryError(f"aggTrades returned a malformed aggregate: {_snippet(newest)}")
        return last

    async def _history(self, params: dict[str, str], symbol: str) -> list[Trade]:
        try:
            reply = await self._get_with_retry(
                "/api/v3/historicalTrades", params, weight=HISTORY_WEIGHT
            )
        except ExchangeUnavailableError as error:
            raise HistoryError(str(error)) from None
        if reply.status != 200 or not isinstance(reply.body, list):
            raise HistoryError(
                f"historicalTrades answered HTTP {reply.status}: {_snippet(reply.body)}"
            )
        trades = []
        for item in reply.body:
            trade = parse_history_trade(symbol, item)
            if trade is None:
                raise HistoryError(f"historicalTrades returned a malformed trade: {_snippet(item)}")
            trades.append(trade)
        return trades

    async def _get_with_retry(self, path: str, params: dict[str, str], weight: int) -> _Reply:
        """GET with retries: network errors until ``unavailable_timeout``, 429/418/5xx as told."""
        started = self._clock.monotonic()
        delay = 0.5
        while True:
            try:
                # One request at a time: what an answer says of the limits (a 429, the weight
                # used) holds before the next one goes out.
                async with self._one_at_a_time:
                    await self._respect_budget(weight)
                    reply = await self._get(path, params)
            except RestUnreachable as error:
                waited = self._clock.monotonic() - started
                if waited >= self._tuning.unavailable_timeout:
                    raise ExchangeUnavailableError(
                        f"exchange REST API at {self._base} unreachable for {waited:.0f} s: {error}"
                    ) from None
                logger.warning(
                    "Exchange REST {path} failed ({error}); retrying", path=path, error=str(error)
                )
                await self._clock.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if reply.status in (418, 429) or reply.status >= 500:
                wait = reply.retry_after if reply.retry_after is not None else delay
                delay = min(delay * 2, 30.0)
                if reply.status in (418, 429):
                    # A rate limit holds for every request of this client, not only this one:
                    # one more before Retry-After has passed earns a ban.
                    self._blocked_until = max(self._blocked_until, self._clock.monotonic() + wait)
                spent = self._clock.monotonic() - started
                if spent + wait > self._tuning.max_retry_wait:
                    raise ExchangeUnavailableError(
                        f"exchange REST {path} kept answering HTTP {reply.status} for {spent:.0f} s"
                    )
                logger.warning(
                    "Exchange REST {path} answered HTTP {status}: waiting {wait:g} s",
                    path=path,
                    status=reply.status,
                    wait=wait,
                )
                await self._clock.sleep(wait)
                continue
            return reply

    async def _respect_budget(self, weight: int) -> None:
        while (blocked := self._blocked_until - self._clock.monotonic()) > 0:
            await self._clock.sleep(blocked)
        minute = int(self._clock.time() // 60)
        if minute != self._weight_minute:
            self._weight_minute = minute
            self._used_weight = 0
        if self._used_weight + weight > self._tuning.weight_budget:
            wait = 60 - self._clock.time() % 60 + 0.5
            logger.warning(
                "REST request weight {used} of {budget} used this minute: waiting {wait:.1f} s",
                used=self._used_weight,
                budget=self._tuning.weight_budget,
                wait=wait,
            )
            await self._clock.sleep(wait)
            self._weight_minute = int(self._clock.time() // 60)
            self._used_weight = 0
        self._used_weight += weight

    async def _get(self, path: str, params: dict[str, str]) -> _Reply:
        response = await self._transport.get(self._base + path, params)
        used = response.used_weight
        if used is not None and used.isdigit():
            self._weight_minute = int(self._clock.time() // 60)
            self._used_weight = max(self._used_weight, int(used))
        retry_after = response.retry_after
        raw = response.body
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw[:200].decode(errors="replace")
        return _Reply(
            response.status,
            body,
            float(retry_after) if retry_after and _is_number(retry_after) else None,
        )


def _is_invalid_symbol(reply: _Reply) -> bool:
    return (
        reply.status == 400
        and isinstance(reply.body, dict)
        and reply.body.get("code") == INVALID_SYMBOL
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _snippet(body: Any) -> str:
    text = body if isinstance(body, str) else orjson.dumps(body).decode()
    return text[:200]
