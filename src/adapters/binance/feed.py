"""Binance's live trade stream over WebSocket: reconnecting, rotating, never blocking the reader.

One connection's mechanics are in ``connection``; what stays here (about 400 lines) is the
supervisor, the readers and the bounded buffer they share, which pause and resume each other
and are kept together for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loguru import logger

from adapters.binance.codec import OVERSIZED, FrameDecoder, FrameIssue
from adapters.binance.connection import (
    ConnectFailed,
    ConnectionLost,
    Connector,
    StreamConnection,
    reconnect_reason,
    stream_url,
    websocket_connector,
)
from adapters.metrics import RunStats
from application.ports import Clock, FeedItem, Received, Reconnected, TradeFeed
from domain.backoff import AttemptWindow, Backoff
from domain.errors import ExchangeUnavailableError
from domain.trade import Trade


@dataclass(frozen=True, slots=True)
class FeedTuning:
    """Connection and buffering bounds of the feed.

    The fields without a default come from the settings (``Settings.feed_tuning``), the one
    place that holds their defaults; the others are not configurable.
    """

    buffer_frames: int
    max_frame_bytes: int
    open_timeout: float
    backoff: Backoff
    attempts_limit: int
    unavailable_timeout: float
    rotate_after: float
    batch_size: int = 4096
    attempts_window: float = 300.0
    """Binance counts connection attempts per IP over five minutes."""
    stable_after: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 2.0


class _Link:
    """One connection to the exchange and the task that reads it."""

    __slots__ = ("closing", "frames", "number", "opened_at", "reader", "reason", "ws")

    def __init__(self, ws: StreamConnection, number: int, opened_at: float) -> None:
        self.ws = ws
        self.number = number
        self.opened_at = opened_at
        self.frames = 0
        self.reason = "open"
        self.reader: asyncio.Task[None] | None = None
        self.closing = False


_Entry = tuple[str | bytes, float] | Reconnected


class BinanceTradeFeed(TradeFeed):
    """Receives frames into a bounded buffer; decoding happens in ``next_batch``, off the reader.

    A dropped connection is replaced with jittered exponential backoff and at most
    ``attempts_limit`` attempts per ``attempts_window``; a planned replacement (rotation before
    the exchange's 24 h cut, a ``serverShutdown`` notice, a silent stream) opens the new
    connection before closing the old one. A ``Reconnected`` item tells the use case that trades
    may have been missed, so it can recover them from history.
    """

    def __init__(
        self,
        ws_url: str,
        symbols: Sequence[str],
        tuning: FeedTuning,
        stats: RunStats,
        clock: Clock,
        connect: Connector | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._url = stream_url(ws_url, symbols)
        self._symbols = tuple(symbols)
        self._tuning = tuning
        self._stats = stats
        self._clock = clock
        self._connect = connect or websocket_connector(
            open_timeout=tuning.open_timeout,
            ping_interval=tuning.ping_interval,
            ping_timeout=tuning.ping_timeout,
            close_timeout=tuning.close_timeout,
            max_frame_bytes=tuning.max_frame_bytes,
        )
        self._rand = rand
        self._decoder = FrameDecoder(frozenset(symbols), tuning.max_frame_bytes)
        self._buffer: deque[_Entry] = deque()
        self._arrived = asyncio.Event()
        self._rotate = asyncio.Event()
        self._rotate_reason = ""
        self._closing = False
        self._failure: ExchangeUnavailableError | None = None
        self._supervisor: asyncio.Task[None] | None = None
        # Insertion-ordered, so that connections are always shut in the order they opened.
        self._links: dict[_Link, None] = {}
        self._connections = 0
        self._marked = False
        """Whether a reconnection mark waits in the buffer."""
        self._attempt = 0
        self._pauses = 0
        self._paused_readers = 0
        self._pause_ended = -math.inf
        self._room = asyncio.Event()
        self._resume_at = max(1, tuning.buffer_frames * 3 // 4)
        self._window = AttemptWindow(tuning.attempts_limit, tuning.attempts_window)
        self._connected = False
        self._rejected: dict[str, int] = {}
        """Frames rejected so far by reason: which of them are logged (the metric is not read)."""
        self._shutting: set[asyncio.Task[None]] = set()
        """Replaced connections being closed, awaited by ``close``."""

    def backlog(self) -> int:
        return len(self._buffer)

    def connected(self) -> bool:
        """Whether a connection to the exchange is open now."""
        return self._connected

    async def open(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="feed-supervisor")

    def reconnect(self, reason: str) -> None:
        self._rotate_reason = reason
        self._rotate.set()

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await asyncio.gather(
            *(self._shut(link) for link in list(self._links)), *list(self._shutting)
        )
        self._connected = False
        self._arrived.set()

    async def next_batch(self) -> Sequence[FeedItem]:
        while True:
            if self._buffer:
                items = self._decode_some()
                if items:
                    return items
                continue
            if self._failure is not None:
                raise self._failure
            if self._closing:
                return []
            self._arrived.clear()
            await self._arrived.wait()

    # Decoding, in the consumer's task.

    def _decode_some(self) -> list[FeedItem]:
        buffer = self._buffer
        decode = self._decoder.decode
        received = self._stats.received
        items: list[FeedItem] = []
        last: Trade | None = None
        for _ in range(min(len(buffer), self._tuning.batch_size)):
            entry = buffer.popleft()
            if type(entry) is Reconnected:
                self._marked = False
                items.append(entry)
                continue
            frame, arrived = entry  # type: ignore[misc]
            result = decode(frame)
            if type(result) is Trade:
                items.append(Received(result, arrived))
                received[result.symbol] += 1
                last = result
            else:
                self._note(result, frame)  # type: ignore[arg-type]
        if last is not None:
            self._stats.exchange_lag[last.symbol] = self._clock.time() - last.timestamp / 1000
        if len(buffer) < self._resume_at and not self._room.is_set():
            self._room.set()
        return items

    def _note(self, issue: FrameIssue, frame: str | bytes) -> None:
        if issue.kind == "shutdown":
            logger.warning("Exchange announced a server shutdown: opening a new connection")
            self.reconnect("server shutdown")
            return
        if issue.kind == "ignored":
            self._stats.ignored[issue.reason] += 1
            return
        self._stats.rejected[issue.reason] += 1
        count = self._rejected[issue.reason] = self._rejected.get(issue.reason, 0) + 1
        if count <= 20 or count % 1000 == 0:
            if isinstance(frame, str):
                preview = frame[:200] + (
                    f"... ({len(frame)} characters)" if len(frame) > 200 else ""
                )
            else:
                preview = f"<{len(frame)} binary bytes>"
            logger.warning(
                "Rejected frame ({reason}, {count} so far): {preview}",
                reason=issue.reason,
                count=count,
                preview=preview,
            )

    # Connections, in the supervisor's task.

    async def _supervise(self) -> None:
        current: _Link | None = None
        down_since = self._clock.monotonic()
        reason = ""
        while not self._closing:
            link = await self._open(down_since)
            if link is None:
                return
            previous, current = current, link
            if previous is not None:
                # A planned replacement: the new connection is open, the old one can go.
                shutting = asyncio.create_task(self._shut(previous), name="feed-shut")
                self._shutting.add(shutting)
                shutting.add_done_callback(self._shutting.discard)
            if self._connections > 1 and not self._marked:
                # The old connection may have missed trades (it went silent, or closed before
                # the new one opened): the use case checks history; overlaps are dropped by id.
                # One mark waiting in the buffer covers later reconnections too (the catch-up
                # it starts reaches the newest trade), so marks cannot grow the buffer.
                self._buffer.append(Reconnected(reason))
                self._marked = True
                self._arrived.set()
            link.reader = asyncio.create_task(self._read(link), name=f"feed-reader-{link.number}")
            self._connected = True
            reason, lost = await self._hold(link)
            if lost:
                current = None
                self._connected = False
                self._stats.reconnects[reconnect_reason(reason)] += 1
                healthy = link.frames > 0 or (
                    self._clock.monotonic() - link.opened_at >= self._tuning.stable_after
                )
                if healthy:
                    self._attempt = 0
                    down_since = self._clock.monotonic()
                else:
                    self._attempt += 1
                logger.warning(
                    "Exchange connection {n} lost ({reason}) after {frames} frames; reconnecting",
                    n=link.number,
                    reason=reason,
                    frames=link.frames,
                )
            else:
                self._stats.reconnects[reconnect_reason(reason)] += 1
                logger.info(
                    "Replacing exchange connection {n} ({reason})", n=link.number, reason=reason
                )
                down_since = self._clock.monotonic()

    async def _hold(self, link: _Link) -> tuple[str, bool]:
        """Wait until ``link`` is lost (True) or should be replaced (False), and say why."""
        assert link.reader is not None  # noqa: S101 - set by the caller
        rotate = asyncio.create_task(self._rotate.wait())
        try:
            done, _ = await asyncio.wait(
                {link.reader, rotate},
                timeout=self._tuning.rotate_after,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            rotate.cancel()
            await asyncio.gather(rotate, return_exceptions=True)
        if link.reader in done:
            return link.reason, True
        if rotate in done:
            self._rotate.clear()
            return self._rotate_reason, False
        return "rotation", False

    async def _open(self, down_since: float) -> _Link | None:
        while not self._closing:
            attempt = self._attempt
            now = self._clock.monotonic()
            delay = self._tuning.backoff.delay(attempt, self._rand()) if attempt >= 1 else 0.0
            delay = max(delay, self._window.wait_before_next(now))
            deadline = down_since + self._tuning.unavailable_timeout
            if attempt >= 1 and now >= deadline:
                self._fail(now - down_since)
                return None
            # The last attempt is made at the deadline rather than never.
            delay = min(delay, max(0.0, deadline - now))
            if delay > 0:
                await asyncio.sleep(delay)
            while (wait := self._window.wait_before_next(self._clock.monotonic())) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            self._window.record(self._clock.monotonic())
            self._connections += 1
            number = self._connections
            try:
                ws = await self._connect(self._url)
            except ConnectFailed as error:
                self._attempt += 1
                attempt = self._attempt
                self._stats.reconnects["connect_failed"] += 1
                logger.warning(
                    "Could not connect to the exchange at {url} (attempt {attempt}): {error}",
                    url=self._url,
                    attempt=attempt,
                    error=str(error),
                )
                continue
            link = _Link(ws, number, self._clock.monotonic())
            self._links[link] = None
            logger.info(
                "Connected to the exchange: {url} (connection {n})", url=self._url, n=number
            )
            return link
        return None

    def _fail(self, down_for: float) -> None:
        self._failure = ExchangeUnavailableError(
            f"the exchange at {self._url} has been unreachable for {down_for:.0f} s "
            f"(EXCHANGE_UNAVAILABLE_TIMEOUT_SEC={self._tuning.unavailable_timeout:g})"
        )
        logger.error(str(self._failure))
        self._arrived.set()

    async def _read(self, link: _Link) -> None:
        # Only receives: decoding happens elsewhere so pings are always answered in time.
        buffer = self._buffer
        arrived = self._arrived
        limit = self._tuning.buffer_frames
        max_bytes = self._tuning.max_frame_bytes
        clock = self._clock.monotonic
        try:
            if len(buffer) >= limit:
                # A new connection's reader must not add to a buffer that is full already.
                await self._wait_for_room(limit)
            async for frame in link.ws:
                link.frames += 1
                if len(frame) > max_bytes:
                    self._note(OVERSIZED, frame)
                    continue
                buffer.append((frame, clock()))
                arrived.set()
                # A full buffer pauses reading after the frame is kept: one taken and then
                # dropped at a stop would be a received trade lost.
                if len(buffer) >= limit:
                    await self._wait_for_room(limit)
        except ConnectionLost as lost:
            link.reason = lost.reason

    async def _wait_for_room(self, limit: int) -> None:
        """Stop reading while the buffer is full: the socket then pushes back on the exchange.

        If the pause outlasts the exchange's patience it drops the connection; the trades it
        sent meanwhile are recovered from history after the reconnect.
        """
        self._pauses += 1
        if self._pauses == 1 or self._pauses % 100 == 0:
            logger.warning(
                "Receive buffer full ({limit} frames): reading paused until the publisher "
                "catches up ({n} pauses so far)",
                limit=limit,
                n=self._pauses,
            )
        self._stats.buffer_pauses += 1
        self._paused_readers += 1
        try:
            while len(self._buffer) >= self._resume_at:
                self._room.clear()
                await self._room.wait()
        finally:
            self._paused_readers -= 1
            self._pause_ended = self._clock.monotonic()

    def paused_until(self) -> float:
        return self._clock.monotonic() if self._paused_readers else self._pause_ended

    async def _shut(self, link: _Link) -> None:
        if link.closing:
            return  # being shut already (a replaced connection): ``close`` awaits that
        link.closing = True
        try:
            async with asyncio.timeout(self._tuning.close_timeout + 1):
                await link.ws.close()
        except TimeoutError:
            pass
        finally:
            if link.reader is not None and not link.reader.done():
                link.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link.reader
            self._links.pop(link, None)
