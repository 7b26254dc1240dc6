"""The simulated exchange: a market that keeps trading, its WebSocket streams and its REST API."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from adapters.binance.connection import ConnectFailed, ConnectionLost, StreamConnection
from adapters.binance.rest import RestReply, RestTransport, RestUnreachable
from application.ports import Clock
from domain.trade import Trade

BINANCE_ATTEMPT_LIMIT = 300
"""Connection attempts Binance allows per IP in any 5 minutes."""
BINANCE_WEIGHT_LIMIT = 6000
"""REST request weight Binance allows per IP a minute."""
WEIGHTS = {"/api/v3/exchangeInfo": 20, "/api/v3/historicalTrades": 25, "/api/v3/aggTrades": 4}


@dataclass
class Executed:
    """A trade the market executed, and when (virtual seconds)."""

    trade: Trade
    at: float
    frame: dict[str, Any]


@dataclass
class Window:
    """A fault that holds from ``start`` until ``end`` (virtual seconds)."""

    kind: str
    start: float
    end: float
    value: float = 0.0

    def holds(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass
class Received:
    """A trade frame a connection handed to the loader: the run, the trade, when."""

    run: int
    symbol: str
    trade_id: int
    at: float


@dataclass
class ExchangeLog:
    """What the exchange saw of its clients, for the invariants."""

    attempts: list[float] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    """Requests answered 418 because they came while a 429's Retry-After ran."""
    weight: dict[int, int] = field(default_factory=dict)
    history_calls: int = 0
    connections: int = 0
    refused_streams: list[int] = field(default_factory=list)
    """Connections refused for naming more than 1,024 streams (their stream counts)."""


class SimConnection(StreamConnection):
    """One client connection: frames queue up as the socket's buffer; a full buffer is dropped."""

    def __init__(
        self, exchange: SimExchange, run: int, number: int, combined: bool, symbols: set[str]
    ) -> None:
        self._exchange = exchange
        self.run = run
        self.number = number
        self.combined = combined
        self.symbols = symbols
        self.opened_at = exchange.clock.monotonic()
        self.silent: set[str] = set()
        self.half_open = False
        self._frames: deque[tuple[str | bytes, Trade | None]] = deque()
        self._wake = asyncio.Event()
        self._end: str | None = None
        self._drain_first = False
        self.closed = False

    @property
    def alive(self) -> bool:
        return self._end is None and not self.closed

    def deliver(self, frame: str | bytes, trade: Trade | None = None) -> None:
        if not self.alive or self.half_open:
            return
        if trade is not None and trade.symbol in self.silent:
            return
        if len(self._frames) >= self._exchange.socket_frames:
            # A reader that stopped reading: the server gives up on it.
            self.lose("dropped without a close frame", drain=False)
            return
        self._frames.append((frame, trade))
        self._wake.set()

    def lose(self, reason: str, *, drain: bool) -> None:
        """End the connection; with ``drain`` the frames already sent are still read first."""
        if not self.alive:
            return
        self._end = reason
        self._drain_first = drain
        if not drain:
            self._frames.clear()
        self._wake.set()
        self._exchange.forget(self)

    def go_half_open(self, keepalive: float) -> None:
        """Nothing arrives any more and nothing says so, until the client's keepalive gives up."""
        self.half_open = True
        loop = asyncio.get_running_loop()
        loop.call_later(keepalive, partial(self.lose, "closed by the loader (1011)", drain=False))

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        exchange = self._exchange
        while True:
            if self._frames and (self._end is None or self._drain_first) and not self.closed:
                frame, trade = self._frames.popleft()
                if trade is not None:
                    exchange.log.received.append(
                        Received(self.run, trade.symbol, trade.trade_id, exchange.clock.monotonic())
                    )
                yield frame
                continue
            if self._end is not None:
                raise ConnectionLost(self._end)
            if self.closed:
                raise ConnectionLost("closed by the loader (1000)")
            self._wake.clear()
            await self._wake.wait()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        self._exchange.forget(self)
        await asyncio.sleep(0.001)


MAX_STREAMS = 1024
"""Binance refuses a connection naming more streams."""


def _streams(url: str) -> list[str]:
    """The symbols a stream URL names: ``/ws/a@trade`` or ``/stream?streams=a@trade/b@trade``."""
    parts = urlsplit(url)
    if parts.path.rstrip("/").endswith("/stream"):
        names = parse_qs(parts.query).get("streams", [""])[0].split("/")
    else:
        names = parts.path.split("/ws", 1)[-1].split("/")
    return [name.removesuffix("@trade").upper() for name in names if name]


class SimExchange:
    """Symbols, a market per symbol, live connections and the REST history, on virtual time."""

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        statuses: dict[str, str],
        *,
        socket_frames: int,
        lifetime: float,
        history_lag: float,
        keepalive: float,
        first_ids: dict[str, int],
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.statuses = statuses
        self.socket_frames = socket_frames
        self.lifetime = lifetime
        self.history_lag = history_lag
        self.keepalive = keepalive
        self.executed: dict[str, list[Executed]] = {symbol: [] for symbol in statuses}
        self._next_id = dict(first_ids)
        self.connections: list[SimConnection] = []
        self.windows: list[Window] = []
        self.accept_then_close = 0
        self.silent_until: dict[str, float] = {}
        self.log = ExchangeLog()
        self._retry_after_until = 0.0
        self._reorder: set[str] = set()
        self._held: dict[str, tuple[dict[str, Any], Trade]] = {}

    # The market.

    def trade(self, symbol: str, legacy: bool = False, backdate: float = 0.0) -> Trade:
        """Execute one trade of ``symbol`` and send it to every live connection.

        A ``backdate``d trade happened that long ago: it is history, and sent to no one.
        """
        trade_id = self._next_id[symbol]
        self._next_id[symbol] = trade_id + 1
        now_ms = int((self.clock.time() - backdate) * 1000)
        rng = self.rng
        price = f"{rng.randint(1, 99_999)}.{rng.randint(0, 99_999_999):08d}"
        quantity = f"{rng.randint(0, 999)}.{rng.randint(1, 99_999_999):08d}"
        maker = rng.random() < 0.5
        trade = Trade(symbol, trade_id, Decimal(price), Decimal(quantity), now_ms, maker)
        frame: dict[str, Any] = {
            "e": "trade",
            "E": now_ms + 1,
            "s": symbol,
            "t": trade_id,
            "p": price,
            "q": quantity,
            "T": now_ms,
            "m": maker,
            "M": True,
        }
        if legacy:
            frame["b"] = trade_id * 3
            frame["a"] = trade_id * 3 + 1
        self.executed[symbol].append(Executed(trade, self.clock.monotonic() - backdate, frame))
        if backdate:
            return trade
        if symbol in self._reorder:
            # This trade is held back and sent after the next one.
            self._reorder.discard(symbol)
            self._held[symbol] = (frame, trade)
            return trade
        self._send(frame, trade)
        held = self._held.pop(symbol, None)
        if held is not None:
            self._send(*held)
        return trade

    def _send(self, frame: dict[str, Any], trade: Trade) -> None:
        raw = orjson.dumps(frame).decode()
        stream = f"{trade.symbol.lower()}@trade"
        wrapped = orjson.dumps({"stream": stream, "data": frame}).decode()
        now = self.clock.monotonic()
        silent = self.silent_until.get(trade.symbol, -1.0) > now
        for connection in list(self.connections):
            if trade.symbol not in connection.symbols:
                continue
            if silent:
                connection.silent.add(trade.symbol)
            connection.deliver(wrapped if connection.combined else raw, trade)

    def duplicate(self, symbol: str, back: int) -> None:
        """Send an already sent trade again (``back`` trades before the newest)."""
        executed = self.executed[symbol]
        if len(executed) > back:
            old = executed[-1 - back]
            self._send(old.frame, old.trade)

    def reorder_next(self, symbol: str) -> None:
        self._reorder.add(symbol)

    def raw_frame(self, frame: str | bytes, wrap: bool = True) -> None:
        for connection in list(self.connections):
            if connection.combined and wrap and isinstance(frame, str) and frame.startswith("{"):
                connection.deliver(f'{{"stream":"btcusdt@trade","data":{frame}}}')
            else:
                connection.deliver(frame)

    def newest_id(self, symbol: str) -> int | None:
        executed = self.executed[symbol]
        return executed[-1].trade.trade_id if executed else None

    # Connections.

    def connector(self, run: int) -> Any:
        async def connect(url: str) -> StreamConnection:
            await asyncio.sleep(self.rng.uniform(0.002, 0.15))
            now = self.clock.monotonic()
            self.log.attempts.append(now)
            if any(w.kind == "refuse" and w.holds(now) for w in self.windows):
                raise ConnectFailed("ConnectionRefusedError: [Errno 111] Connection refused")
            streams = _streams(url)
            if len(streams) > MAX_STREAMS:
                self.log.refused_streams.append(len(streams))
                raise ConnectFailed(f"InvalidStatus: HTTP 400 ({len(streams)} streams)")
            self.log.connections += 1
            connection = SimConnection(
                self, run, self.log.connections, "/stream?streams=" in url, set(streams)
            )
            if self.accept_then_close > 0:
                self.accept_then_close -= 1
                connection.lose("closed by the exchange (1000)", drain=True)
                return connection
            self.connections.append(connection)
            loop = asyncio.get_running_loop()
            loop.call_later(
                self.lifetime, partial(connection.lose, "closed by the exchange (1000)", drain=True)
            )
            return connection

        return connect

    def forget(self, connection: SimConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    def drop_all(self, *, clean: bool, symbol: str | None = None, one: bool = False) -> None:
        """Every connection ends (only those carrying ``symbol``, when given; only the oldest
        of them with ``one``)."""
        for connection in list(self.connections):
            if symbol is not None and symbol not in connection.symbols:
                continue
            if clean:
                connection.lose("closed by the exchange (1001)", drain=True)
            else:
                connection.lose("dropped without a close frame", drain=False)
            if one:
                return

    def server_shutdown(self, grace: float) -> None:
        now_ms = int(self.clock.time() * 1000)
        notice = orjson.dumps({"e": "serverShutdown", "E": now_ms}).decode()
        wrapped = orjson.dumps(
            {"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": now_ms}}
        ).decode()
        loop = asyncio.get_running_loop()
        for connection in list(self.connections):
            connection.deliver(wrapped if connection.combined else notice)
            loop.call_later(
                grace, partial(connection.lose, "closed by the exchange (1001)", drain=True)
            )

    def half_open(self) -> None:
        for connection in list(self.connections):
            connection.go_half_open(self.keepalive)

    def kill_run(self, run: int) -> None:
        """The client process died: its connections are gone."""
        for connection in list(self.connections):
            if connection.run == run:
                connection.lose("dropped without a close frame", drain=False)

    # REST.

    def rest(self) -> RestTransport:
        return _SimRest(self)

    def weight_used(self) -> int:
        return self.log.weight.get(int(self.clock.time() // 60), 0)


class _SimRest(RestTransport):
    """``exchangeInfo``, ``historicalTrades`` and ``aggTrades`` with latency, faults and
    Binance's weight rules."""

    def __init__(self, exchange: SimExchange) -> None:
        self._exchange = exchange
        self._told_until = 0.0
        """Until when a 429 told this client to wait: asking before is its fault."""

    async def get(self, url: str, params: dict[str, str]) -> RestReply:
        exchange = self._exchange
        clock = exchange.clock
        now = clock.monotonic()
        slow = max(
            (w.value for w in exchange.windows if w.kind == "slow" and w.holds(now)), default=0.0
        )
        await asyncio.sleep(exchange.rng.uniform(0.005, 0.08) + slow)
        now = clock.monotonic()
        active = {w.kind: w for w in exchange.windows if w.holds(now)}
        if "unreachable" in active:
            raise RestUnreachable("ClientConnectorError('Connection reset by peer')")
        path = urlsplit(url).path
        minute = int(clock.time() // 60)
        used = exchange.log.weight.get(minute, 0) + WEIGHTS.get(path, 1)
        exchange.log.weight[minute] = used
        if now < exchange._retry_after_until:
            if now < self._told_until:
                exchange.log.banned.append(f"{path} at {now:.3f} s")
            return RestReply(418, b'{"code":-1003,"msg":"IP banned"}', "120", str(used))
        if used > BINANCE_WEIGHT_LIMIT or "429" in active:
            wait = active["429"].value if "429" in active else 60 - clock.time() % 60
            exchange._retry_after_until = now + wait
            self._told_until = now + wait
            body = b'{"code":-1003,"msg":"Too many requests"}'
            return RestReply(429, body, f"{wait:.0f}" if wait >= 1 else "1", str(used))
        if "500" in active:
            return RestReply(503, b'{"code":-1001,"msg":"Internal error"}', None, str(used))
        if path == "/api/v3/exchangeInfo":
            return self._exchange_info(params, used)
        if path == "/api/v3/historicalTrades":
            exchange.log.history_calls += 1
            return self._history(params, used, now)
        if path == "/api/v3/aggTrades":
            return self._newest_aggregate(params, used, now)
        return RestReply(404, b"", None, str(used))

    async def close(self) -> None:
        pass

    def _exchange_info(self, params: dict[str, str], used: int) -> RestReply:
        names = [params["symbol"]] if "symbol" in params else orjson.loads(params["symbols"])
        statuses = self._exchange.statuses
        if any(name not in statuses for name in names):
            return RestReply(400, b'{"code":-1121,"msg":"Invalid symbol."}', None, str(used))
        body = {"symbols": [{"symbol": name, "status": statuses[name]} for name in names]}
        return RestReply(200, orjson.dumps(body), None, str(used))

    def _newest_aggregate(self, params: dict[str, str], used: int, now: float) -> RestReply:
        """``aggTrades?limit=1`` as the loader asks it: one aggregate per trade is enough here."""
        newest = now - self._exchange.history_lag
        visible = [e for e in self._exchange.executed.get(params["symbol"], []) if e.at <= newest]
        body = [
            {
                "a": e.trade.trade_id,
                "p": e.frame["p"],
                "q": e.frame["q"],
                "f": e.trade.trade_id,
                "l": e.trade.trade_id,
                "T": e.trade.timestamp,
                "m": e.trade.is_buyer_maker,
                "M": True,
            }
            for e in visible[-int(params.get("limit", "500")) :]
        ]
        return RestReply(200, orjson.dumps(body), None, str(used))

    def _history(self, params: dict[str, str], used: int, now: float) -> RestReply:
        symbol = params["symbol"]
        limit = min(int(params.get("limit", "500")), 1000)
        newest = now - self._exchange.history_lag
        visible = [e for e in self._exchange.executed.get(symbol, []) if e.at <= newest]
        if "fromId" in params:
            first = int(params["fromId"])
            page = [e for e in visible if e.trade.trade_id >= first][:limit]
        else:
            page = visible[-limit:]
        body = [
            {
                "id": e.trade.trade_id,
                "price": e.frame["p"],
                "qty": e.frame["q"],
                "quoteQty": "0",
                "time": e.trade.timestamp,
                "isBuyerMaker": e.trade.is_buyer_maker,
                "isBestMatch": True,
            }
            for e in page
        ]
        return RestReply(200, orjson.dumps(body), None, str(used))
