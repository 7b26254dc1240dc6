"""One connection shard of the feed: a group of symbols on one connection at a time.

A shard has its own supervisor (reconnect, rotation, make-before-break replacement), its own
readers and its own bounded buffer, so that a drop, a pause or a slow catch-up of one shard
touches only its symbols. What the shards share (the attempt window, the consumer's wake-up,
the run's counters) is in ``ShardContext``. The readers and the buffer they fill pause and
resume each other, and are kept together for that reason.

With ``redundant`` tuning a shard keeps two connections (legs) open at once, each with its
own reconnects and a staggered rotation, both reading into the shard's buffer, as exchanges'
A/B feeds are consumed: a trade arrives twice and is taken once, by id, before it is decoded
when it can be; a trade one leg delivers ahead of a trade still to come on the other waits a
moment for it (line arbitration). A drop of one leg then costs nothing: the other carried
every trade meanwhile, and only an outage the other leg did not cover is told to the use case.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loguru import logger

from adapters.binance.codec import OVERSIZED, FrameDecoder, FrameIssue, trade_key
from adapters.binance.connection import (
    ConnectFailed,
    ConnectionLost,
    Connector,
    StreamConnection,
    reconnect_reason,
    stream_url,
)
from adapters.metrics import RunStats
from application.ports import Clock, Dropped, DroppedRange, FeedItem, Received, Reconnected
from domain.backoff import AttemptWindow, Backoff
from domain.trade import Trade


@dataclass(frozen=True, slots=True)
class FeedTuning:
    """Connection and buffering bounds of the feed.

    The fields without a default come from the settings (``Settings.feed_tuning``), the one
    place that holds their defaults; the others are not configurable.
    """

    buffer_frames: int
    """For the whole feed: each shard holds its share."""
    max_frame_bytes: int
    open_timeout: float
    backoff: Backoff
    attempts_limit: int
    unavailable_timeout: float
    rotate_after: float
    streams_per_connection: int
    redundant: bool
    """Two connections per shard (see the module's description)."""
    batch_size: int = 4096
    attempts_window: float = 300.0
    """Binance counts connection attempts per IP over five minutes."""
    stable_after: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 2.0
    pause_limit: float = 5.0
    """How long a full buffer may stop reading: well under the pings' patience (the client's
    ``ping_timeout``, the exchange's minute), so that the connection stays alive and a drop is
    noticed. Beyond it the reader reads on and drops frames, which are recovered from history."""
    rotation_stagger: float = 0.1
    """Shards rotate up to this share of ``rotate_after`` apart, not all in the same second."""
    arbitration: float = 0.25
    """How long (in arrival time) a trade delivered by one leg ahead of its predecessors waits
    for them on the other leg before it is handed on with a gap."""
    cover_margin: float = 1.0
    """A leg's outage counts as covered by the other leg once that one, open since before the
    outage, read on this long after the replacement opened (and after any pause): trades the
    exchange sent before then had reached it."""


@dataclass(slots=True)
class ShardContext:
    """What every shard of one feed shares."""

    tuning: FeedTuning
    stats: RunStats
    clock: Clock
    connect: Connector
    rand: Callable[[], float]
    window: AttemptWindow
    arrived: asyncio.Event
    """Set whenever any shard has something for the consumer."""
    fail: Callable[[str], None]
    """Ends the feed: the exchange stayed unreachable (the message says which shard)."""
    closing: bool = False
    connection_numbers: int = 0
    """Connections opened by every shard so far, for the logs."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Frames rejected so far by reason, over every shard: which of them are logged."""
    pauses: int = 0


class _Link:
    """One connection to the exchange and the task that reads it."""

    __slots__ = ("closing", "frames", "last_at", "number", "opened_at", "reader", "reason", "ws")

    def __init__(self, ws: StreamConnection, number: int, opened_at: float) -> None:
        self.ws = ws
        self.number = number
        self.opened_at = opened_at
        self.last_at = opened_at
        """When the last frame arrived: nothing is missing before it."""
        self.frames = 0
        self.reason = "open"
        self.reader: asyncio.Task[None] | None = None
        self.closing = False

    @property
    def alive(self) -> bool:
        return self.reader is not None and not self.reader.done() and not self.closing


class _Leg:
    """One of a shard's connections at a time, with its own reconnects and rotation."""

    __slots__ = (
        "attempt",
        "connections",
        "current",
        "index",
        "replacing",
        "rotate",
        "rotate_after",
        "rotate_reason",
        "task",
    )

    def __init__(self, index: int, rotate_after: float) -> None:
        self.index = index
        self.rotate_after = rotate_after
        self.rotate = asyncio.Event()
        self.rotate_reason = ""
        self.replacing = False
        self.attempt = 0
        self.connections = 0
        self.current: _Link | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.current is not None


@dataclass(slots=True)
class _Outage:
    """A leg's outage from ``since`` (its last frame) that the other leg may have covered."""

    since: float
    due: float
    """From when a frame read by a covering leg confirms it."""
    reason: str


_Entry = tuple[str | bytes, float] | Reconnected | Dropped


class Shard:
    """Receives the frames of ``symbols`` into a bounded buffer; decodes them on request.

    A dropped connection is replaced with jittered exponential backoff, within the shared
    attempt window; a planned replacement (rotation before the exchange's 24 h cut, a
    ``serverShutdown`` notice, a silent stream) opens the new connection before closing the
    old one. A ``Reconnected`` item naming this shard's symbols tells the use case that their
    trades may have been missed.
    """

    def __init__(
        self, index: int, count: int, ws_url: str, symbols: Sequence[str], ctx: ShardContext
    ) -> None:
        tuning = ctx.tuning
        self.index = index
        self.symbols = tuple(symbols)
        self.url = stream_url(ws_url, symbols)
        self.name = f"shard {index + 1}/{count}" if count > 1 else "feed"
        self._ctx = ctx
        self._decoder = FrameDecoder(frozenset(symbols), tuning.max_frame_bytes)
        rotate_after = tuning.rotate_after * (1 - tuning.rotation_stagger * index / max(count, 1))
        legs = 2 if tuning.redundant else 1
        # The second leg's first connection is replaced half a rotation early: the two never
        # rotate together.
        self._legs = tuple(_Leg(leg, rotate_after * (1 - leg / (2 * legs))) for leg in range(legs))
        self._rotate_after = rotate_after
        self.limit = max(1, tuning.buffer_frames // count)
        self._resume_at = max(1, self.limit * 3 // 4)
        self.buffer: deque[_Entry] = deque()
        # Insertion-ordered, so that connections are always shut in the order they opened.
        self._links: dict[_Link, None] = {}
        self._marked = False
        """Whether a reconnection mark waits in the buffer."""
        self._outages: list[_Outage] = []
        """Outages of one leg not yet known to be covered by the other."""
        self._confirm_from = math.inf
        self._newest: dict[str, int] = {}
        """With two legs: the newest trade id handed on, by symbol."""
        self._early: dict[str, dict[int, Received]] = {}
        """With two legs: trades one leg delivered ahead of their predecessors, by symbol."""
        self._early_due: dict[str, float] = {}
        self._due = math.inf
        """The earliest of ``_early_due`` (or earlier)."""
        self._paused_readers = 0
        self._pause_ended = -math.inf
        self._overflowing = False
        """Reading on past a pause that lasted too long: frames are dropped until there is room."""
        self._dropped: dict[str, DroppedRange] = {}
        """What was dropped of each symbol since the last ``Dropped`` was queued."""
        self._room = asyncio.Event()
        self._shutting: set[asyncio.Task[None]] = set()
        """Replaced connections being closed, awaited by ``close``."""

    def describe_url(self) -> str:
        """The URL for logs: a combined stream of many symbols is not spelled out."""
        if len(self.symbols) <= 3:
            return self.url
        return f"{self.url.split('?', 1)[0]}?streams={self.symbols[0].lower()}@trade/... " + (
            f"({len(self.symbols)} streams)"
        )

    @property
    def connected(self) -> bool:
        """Whether a connection of this shard is open now."""
        return any(leg.connected for leg in self._legs)

    def start(self) -> None:
        for leg in self._legs:
            if leg.task is None:
                leg.task = asyncio.create_task(
                    self._supervise(leg), name=f"feed-supervisor-{self.index}-{leg.index}"
                )

    def reconnect(self, reason: str, since: float | None = None) -> None:
        """Replace this shard's connections (those opened before ``since``, when given: a
        notice read on a connection already replaced asks nothing more)."""
        for leg in self._legs:
            current = leg.current
            if leg.replacing or (
                since is not None and current is not None and current.opened_at >= since
            ):
                continue
            leg.rotate_reason = reason
            leg.rotate.set()

    async def close(self) -> None:
        tasks = [leg.task for leg in self._legs if leg.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(self._shut(link) for link in list(self._links)), *list(self._shutting)
        )
        for leg in self._legs:
            leg.current = None

    def paused_until(self) -> float:
        """Reading on while dropping frames counts as a pause: what it reads is not seen
        until the ``Dropped`` note after it."""
        if self._paused_readers or self._overflowing:
            return self._ctx.clock.monotonic()
        return self._pause_ended

    # Decoding, in the consumer's task.

    def decode_into(self, items: list[FeedItem], most: int) -> int:
        """Decode up to ``most`` buffered entries into ``items``; how many were taken."""
        buffer = self.buffer
        decode = self._decoder.decode
        received = self._ctx.stats.received
        redundant = len(self._legs) > 1
        last: Trade | None = None
        taken = min(len(buffer), most)
        for _ in range(taken):
            entry = buffer.popleft()
            if type(entry) is not tuple:
                if type(entry) is Reconnected:
                    self._marked = False
                items.append(entry)  # type: ignore[arg-type]
                continue
            frame, arrived = entry
            if redundant:
                last = self._take_once(frame, arrived, items) or last
                continue
            result = decode(frame)
            if type(result) is Trade:
                items.append(Received(result, arrived))
                received[result.symbol] += 1
                last = result
            else:
                self._note(result, frame, arrived)  # type: ignore[arg-type]
        if self._early and not buffer:
            self._expire(items, self._ctx.clock.monotonic())
        if last is not None:
            self._ctx.stats.exchange_lag[last.symbol] = (
                self._ctx.clock.time() - last.timestamp / 1000
            )
        if len(buffer) < self._resume_at and not self._room.is_set():
            self._room.set()
        return taken

    def _take_once(self, frame: str | bytes, arrived: float, items: list[FeedItem]) -> Trade | None:
        """With two legs: each trade is handed on once, in id order.

        A frame whose id was handed on already is dropped before it is decoded. A trade that
        arrives ahead of its predecessor (the other leg, or a new connection, ran ahead) waits
        up to ``arbitration`` seconds of arrival time for it, then goes on with the gap.
        """
        if self._early and arrived >= self._due:
            self._expire(items, arrived)
        key = trade_key(frame)
        if key is not None:
            known = self._newest.get(key[0])
            if known is not None and key[1] <= known:
                self._ctx.stats.redundant_frames += 1
                return None
        result = self._decoder.decode(frame)
        if type(result) is not Trade:
            self._note(result, frame, arrived)  # type: ignore[arg-type]
            return None
        self._arbitrate(Received(result, arrived), items)
        return result

    def flush(self, items: list[FeedItem]) -> None:
        """Hand on every trade still waiting for its predecessor: the feed ends."""
        self._expire(items, math.inf)

    def _arbitrate(self, item: Received, items: list[FeedItem]) -> None:
        trade = item.trade
        symbol = trade.symbol
        known = self._newest.get(symbol)
        waiting = self._early.get(symbol)
        if known is not None and trade.trade_id <= known:
            self._ctx.stats.redundant_frames += 1
        elif known is not None and trade.trade_id == known + 1:
            self._hand(item, items)
            if waiting is not None:
                self._release(symbol, items, expired=False)
        elif waiting is not None:
            if waiting.setdefault(trade.trade_id, item) is not item:
                self._ctx.stats.redundant_frames += 1
        else:
            # The other leg may bring what this one skipped (or, for the first trade of a
            # symbol, trades before it that this one connected too late for): if it is down,
            # the wait only delays the gap the use case then fills.
            self._early[symbol] = {trade.trade_id: item}
            due = self._early_due[symbol] = item.received_at + self._ctx.tuning.arbitration
            self._due = min(self._due, due)

    def _hand(self, item: Received, items: list[FeedItem]) -> None:
        items.append(item)
        self._newest[item.trade.symbol] = item.trade.trade_id
        self._ctx.stats.received[item.trade.symbol] += 1

    def _release(self, symbol: str, items: list[FeedItem], *, expired: bool) -> None:
        """Hand on the trades of ``symbol`` that waited and now follow on (all of them, in id
        order, when their time is up)."""
        waiting = self._early[symbol]
        for trade_id in sorted(waiting):
            known = self._newest.get(symbol)
            if known is not None and trade_id <= known:
                self._ctx.stats.redundant_frames += 1
            elif expired or known is None or trade_id == known + 1:
                self._hand(waiting[trade_id], items)
            else:
                # Still a gap before the rest: they wait on, behind the first of them.
                rest = {i: waiting[i] for i in waiting if i >= trade_id}
                self._early[symbol] = rest
                return
        del self._early[symbol]
        del self._early_due[symbol]

    def _expire(self, items: list[FeedItem], now: float) -> None:
        for symbol, due in list(self._early_due.items()):
            if due <= now:
                self._release(symbol, items, expired=True)
        self._due = self.next_due()

    @property
    def waiting(self) -> int:
        """Trades waiting for their predecessor."""
        return sum(len(waiting) for waiting in self._early.values())

    def next_due(self) -> float:
        """When a trade waiting for its predecessor must be handed on anyway (monotonic)."""
        return min(self._early_due.values(), default=math.inf)

    def _note(self, issue: FrameIssue, frame: str | bytes, arrived: float | None = None) -> None:
        stats = self._ctx.stats
        if issue.kind == "shutdown":
            logger.warning(
                "Exchange announced a server shutdown ({name}): opening a new connection",
                name=self.name,
            )
            self.reconnect("server shutdown", arrived)
            return
        if issue.kind == "ignored":
            stats.ignored[issue.reason] += 1
            return
        stats.rejected[issue.reason] += 1
        rejected = self._ctx.rejected
        count = rejected[issue.reason] = rejected.get(issue.reason, 0) + 1
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

    def _mark(self, reason: str) -> None:
        """Tell the use case that this shard's trades may have been missed before this point.

        One mark waiting in the buffer covers later reconnections too (the catch-up it starts
        reaches the newest trade), so marks cannot grow the buffer.
        """
        if not self._marked:
            self.buffer.append(Reconnected(reason, self.symbols))
            self._marked = True
            self._ctx.arrived.set()

    def _drop(self, frame: str | bytes) -> None:
        """Drop a frame read while there is no room, remembering which trades of each symbol
        were dropped; notices and bad frames are acted on as always."""
        result = self._decoder.decode(frame)
        if type(result) is not Trade:
            self._note(result, frame)  # type: ignore[arg-type]
            return
        self._ctx.stats.overflow_frames += 1
        this = DroppedRange(result.symbol, result.trade_id, result.trade_id, result.timestamp)
        known = self._dropped.get(result.symbol)
        self._dropped[result.symbol] = this if known is None else known.merged(this)

    def _tell_dropped(self) -> None:
        """Queue a note of the trades dropped, so that they are recovered before what follows.

        A note still waiting with no frame kept after it takes these drops in too (notes and
        marks alone cannot grow the buffer). One with frames after it must not: the hole it
        names would then cover trades that are still to come.
        """
        if not self._dropped:
            return
        ranges = dict(self._dropped)
        self._dropped.clear()
        buffer = self.buffer
        for back in range(1, min(len(buffer), 3) + 1):
            entry = buffer[-back]
            if type(entry) is tuple:
                break
            if type(entry) is Dropped:
                for earlier in entry.ranges:
                    later = ranges.get(earlier.symbol)
                    ranges[earlier.symbol] = earlier if later is None else earlier.merged(later)
                buffer[-back] = Dropped(tuple(ranges.values()))
                return
        buffer.append(Dropped(tuple(ranges.values())))
        self._ctx.arrived.set()

    async def _supervise(self, leg: _Leg) -> None:
        ctx = self._ctx
        down_since = missing_from = ctx.clock.monotonic()
        reason = ""
        lifetime = leg.rotate_after
        while not ctx.closing:
            link = await self._open(leg, down_since)
            if link is None:
                return
            previous, leg.current = leg.current, link
            leg.replacing = False
            if previous is not None:
                # A planned replacement: the new connection is open, the old one can go.
                shutting = asyncio.create_task(self._shut(previous), name="feed-shut")
                self._shutting.add(shutting)
                shutting.add_done_callback(self._shutting.discard)
            if leg.connections > 1:
                # The old connection may have missed trades (it went silent, or closed before
                # the new one opened): the use case checks; overlaps are dropped by id.
                self._replaced(missing_from if previous is None else previous.last_at, link, reason)
            link.reader = asyncio.create_task(
                self._read(link), name=f"feed-reader-{self.index}-{link.number}"
            )
            reason, lost = await self._hold(leg, link, lifetime)
            lifetime = self._rotate_after
            ctx.stats.reconnects[reconnect_reason(reason)] += 1
            if lost:
                leg.current = None
                self._links.pop(link, None)
                self._uncovered()
                healthy = link.frames > 0 or (
                    ctx.clock.monotonic() - link.opened_at >= ctx.tuning.stable_after
                )
                if healthy:
                    leg.attempt = 0
                    down_since = ctx.clock.monotonic()
                else:
                    leg.attempt += 1
                # Nothing is missing before the last frame the lost connection read.
                missing_from = link.last_at
                logger.warning(
                    "Exchange connection {n} lost ({reason}) after {frames} frames; "
                    "reconnecting {name}",
                    n=link.number,
                    reason=reason,
                    frames=link.frames,
                    name=self.name,
                )
            else:
                leg.replacing = True
                logger.info(
                    "Replacing exchange connection {n} ({reason}, {name})",
                    n=link.number,
                    reason=reason,
                    name=self.name,
                )
                down_since = ctx.clock.monotonic()

    def _replaced(self, since: float, link: _Link, reason: str) -> None:
        """A connection of this shard was replaced by ``link``; trades the exchange sent from
        ``since`` until ``link`` opened reached the old one only if it read on (planned) or
        another leg carried them."""
        if len(self._legs) > 1 and any(
            other.alive and other.opened_at <= since for other in self._links if other is not link
        ):
            due = link.opened_at + self._ctx.tuning.cover_margin
            self._keep_outages([*self._outages, _Outage(since, due, reason)])
            return
        self._mark(reason)

    def _uncovered(self) -> None:
        """A connection ended: an outage only it could still cover is told to the use case."""
        kept = []
        for outage in self._outages:
            if any(other.alive and other.opened_at <= outage.since for other in self._links):
                kept.append(outage)
            else:
                self._mark(outage.reason)
        self._keep_outages(kept)

    def _confirm(self, link: _Link, now: float) -> None:
        """``link`` read a frame at ``now``: outages it was open through are covered, unless
        a pause may have left the trades they missed unread in its socket."""
        if self._paused_readers or now < self._pause_ended + self._ctx.tuning.cover_margin:
            return
        self._keep_outages(
            [
                outage
                for outage in self._outages
                if not (outage.due <= now and link.opened_at <= outage.since)
            ]
        )

    def _keep_outages(self, outages: list[_Outage]) -> None:
        """The outages still unconfirmed, and from when a read may confirm one."""
        self._outages = outages
        self._confirm_from = min((outage.due for outage in outages), default=math.inf)

    async def _hold(self, leg: _Leg, link: _Link, lifetime: float) -> tuple[str, bool]:
        """Wait until ``link`` is lost (True) or should be replaced (False), and say why."""
        assert link.reader is not None  # noqa: S101 - set by the caller
        rotate = asyncio.create_task(leg.rotate.wait())
        try:
            done, _ = await asyncio.wait(
                {link.reader, rotate}, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            rotate.cancel()
            await asyncio.gather(rotate, return_exceptions=True)
        if link.reader in done:
            return link.reason, True
        if rotate in done:
            leg.rotate.clear()
            return leg.rotate_reason, False
        return "rotation", False

    async def _open(self, leg: _Leg, down_since: float) -> _Link | None:
        ctx = self._ctx
        tuning = ctx.tuning
        window = ctx.window
        clock = ctx.clock
        while not ctx.closing:
            attempt = leg.attempt
            now = clock.monotonic()
            delay = tuning.backoff.delay(attempt, ctx.rand()) if attempt >= 1 else 0.0
            delay = max(delay, window.wait_before_next(now))
            deadline = down_since + tuning.unavailable_timeout
            if attempt >= 1 and now >= deadline:
                ctx.fail(
                    f"the exchange at {self.describe_url()} has been unreachable for "
                    f"{now - down_since:.0f} s "
                    f"(EXCHANGE_UNAVAILABLE_TIMEOUT_SEC={tuning.unavailable_timeout:g})"
                )
                return None
            # The last attempt is made at the deadline rather than never.
            delay = min(delay, max(0.0, deadline - now))
            if delay > 0:
                await asyncio.sleep(delay)
            # The window is shared by every shard: another may have taken the room meanwhile.
            while (wait := window.wait_before_next(clock.monotonic())) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            window.record(clock.monotonic())
            leg.connections += 1
            ctx.connection_numbers += 1
            number = ctx.connection_numbers
            try:
                ws = await ctx.connect(self.url)
            except ConnectFailed as error:
                leg.attempt += 1
                ctx.stats.reconnects["connect_failed"] += 1
                logger.warning(
                    "Could not connect to the exchange at {url} (attempt {attempt}): {error}",
                    url=self.describe_url(),
                    attempt=leg.attempt,
                    error=str(error),
                )
                continue
            link = _Link(ws, number, clock.monotonic())
            self._links[link] = None
            logger.info(
                "Connected to the exchange: {url} (connection {n}, {name})",
                url=self.describe_url(),
                n=number,
                name=self.name,
            )
            return link
        return None

    async def _read(self, link: _Link) -> None:
        # Only receives: decoding happens elsewhere so pings are always answered in time.
        buffer = self.buffer
        arrived = self._ctx.arrived
        limit = self.limit
        max_bytes = self._ctx.tuning.max_frame_bytes
        clock = self._ctx.clock.monotonic
        try:
            if len(buffer) >= limit:
                # A new connection's reader must not add to a buffer that is full already.
                await self._wait_for_room()
            async for frame in link.ws:
                link.frames += 1
                now = clock()
                link.last_at = now
                if now >= self._confirm_from:
                    self._confirm(link, now)
                if len(frame) > max_bytes:
                    self._note(OVERSIZED, frame)
                    continue
                if self._overflowing:
                    if len(buffer) >= self._resume_at:
                        self._drop(frame)
                        continue
                    self._overflowing = False
                    self._pause_ended = now
                    self._tell_dropped()
                buffer.append((frame, now))
                arrived.set()
                # A full buffer pauses reading after the frame is kept: one taken and then
                # dropped at a stop would be a received trade lost.
                if len(buffer) >= limit:
                    await self._wait_for_room()
        except ConnectionLost as lost:
            link.reason = lost.reason
        finally:
            # Ended (lost, replaced, closed) while dropping: what was dropped is still due.
            self._tell_dropped()

    async def _wait_for_room(self) -> None:
        """Stop reading while the buffer is full: the socket then pushes back on the exchange.

        A pause longer than ``pause_limit`` would let the connection die unnoticed (pings go
        unanswered behind the unread frames), so then the reader reads on, dropping frames
        until there is room again. A ``Dropped`` item after them names the trades dropped of
        each symbol, so that the use case recovers them from history, even at a stop (they
        were received).
        """
        ctx = self._ctx
        ctx.pauses += 1
        if ctx.pauses == 1 or ctx.pauses % 100 == 0:
            logger.warning(
                "Receive buffer full ({limit} frames, {name}): reading paused until the "
                "publisher catches up ({n} pauses so far)",
                limit=self.limit,
                name=self.name,
                n=ctx.pauses,
            )
        ctx.stats.buffer_pauses += 1
        self._paused_readers += 1
        try:
            async with asyncio.timeout(ctx.tuning.pause_limit):
                while len(self.buffer) >= self._resume_at:
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            if self._overflowing:
                return  # the other reader (of a connection being replaced) got there first
            self._overflowing = True
            logger.warning(
                "Receive buffer of {name} still full after {limit:g} s: reading on and dropping "
                "frames until there is room; their trades are recovered from history",
                name=self.name,
                limit=ctx.tuning.pause_limit,
            )
        finally:
            self._paused_readers -= 1
            self._pause_ended = ctx.clock.monotonic()

    async def _shut(self, link: _Link) -> None:
        if link.closing:
            return  # being shut already (a replaced connection): ``close`` awaits that
        link.closing = True
        # An outage only this connection could still show covered is told now.
        self._uncovered()
        try:
            async with asyncio.timeout(self._ctx.tuning.close_timeout + 1):
                await link.ws.close()
        except TimeoutError:
            pass
        finally:
            if link.reader is not None and not link.reader.done():
                link.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link.reader
            self._links.pop(link, None)
