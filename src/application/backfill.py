"""Trades missing from the live stream, recovered from the exchange's history and handed on in
trade-id order, or reported when they cannot be.

The pump never waits for history: a symbol with a gap is *held* (its live trades queue behind
the gap, within a bound) and a background worker fills the gaps one symbol at a time, oldest
first, then hands on what was held. Every other symbol flows on meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from loguru import logger

from application.clocked import within
from application.config import LoaderConfig
from application.ports import (
    Clock,
    DroppedRange,
    HistoryError,
    LoaderMetrics,
    Received,
    TradeHistory,
)
from domain.sequence import Gap, TradeSequencer, Verdict
from domain.trade import Trade

QUIET_AFTER_RECONNECT = 2.0
"""How long a symbol may stay quiet after its connection was replaced before the exchange is
asked for its newest trade id: a live trade would have revealed any gap by then."""

RECONNECT_GAP = "missed while the connection was replaced"
"""How a gap revealed by the first live trade after a reconnect is described."""
LIVE_GAP = "missing from the live stream"

HISTORY_PATIENCE = 6.0
"""How long a gap before a received trade waits for history to reach it (which lags the
stream) before it is reported as unrecoverable."""


class Run(Protocol):
    """What the backfill needs of the run it serves."""

    async def hand(self, trade: Trade, received_at: float) -> None:
        """Publish ``trade``, the next of its symbol."""
        ...

    def over_limit(self) -> bool:
        """Whether ``STOP_AFTER_RECORDS`` was reached."""
        ...

    def stopping(self) -> bool:
        """Whether the run's ending is decided (reading the exchange has ended)."""
        ...

    def stopped_at_ms(self) -> float:
        """When the ending was decided (epoch ms), ``inf`` before."""
        ...

    async def tell(self, message: str) -> None:
        """Report a problem on the telemetry topic (a ``loading`` event)."""
        ...


@dataclass(frozen=True, slots=True)
class _Held:
    """A live trade waiting behind its symbol's gap, and how a gap before it was found."""

    item: Received
    found: str


class Backfill:
    """Holds the symbols with a gap, fills the gaps from history in a background worker, and
    looks at symbols quiet after a reconnect."""

    def __init__(
        self,
        config: LoaderConfig,
        history: TradeHistory,
        sequencer: TradeSequencer,
        clock: Clock,
        metrics: LoaderMetrics,
        run: Run,
    ) -> None:
        self._config = config
        self._history = history
        self._sequencer = sequencer
        self._clock = clock
        self._metrics = metrics
        self._run = run
        self._held: dict[str, deque[_Held | DroppedRange]] = {}
        """Held symbols, with what waits behind each one's gap, in stream order."""
        self._waiting: deque[str] = deque()
        """Held symbols not served yet, in the order their gaps were found."""
        self._held_trades = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._wake = asyncio.Event()
        self._unchecked: dict[str, float] = {}
        """Symbols whose connection was replaced and that have not traded since, with when
        to ask the exchange for their newest trade id."""
        self._probing: str | None = None

    # What the pump tells (it never waits here).

    def holds(self, symbol: str) -> bool:
        """Whether ``symbol``'s live trades wait behind a gap."""
        return symbol in self._held

    @property
    def held_trades(self) -> int:
        return self._held_trades

    def hold(self, item: Received, found: str) -> None:
        """Keep ``item`` behind its symbol's gap (its own, when the symbol is not held yet).

        Past ``BACKFILL_HOLD_TRADES`` held trades in all, only a trade's id is kept: it was
        received, so it is fetched from history with the gap, like a trade the feed dropped.
        """
        symbol = item.trade.symbol
        queue = self._held.get(symbol)
        if queue is None:
            self._start(symbol, _Held(item, found))
        elif self._held_trades < self._config.backfill_hold_trades:
            queue.append(_Held(item, found))
            self._held_trades += 1
        else:
            trade = item.trade
            self._keep_range(
                queue, DroppedRange(symbol, trade.trade_id, trade.trade_id, trade.timestamp)
            )
        self._report()

    def dropped(self, ranges: Sequence[DroppedRange]) -> None:
        """The feed read and dropped ``ranges`` for want of room: they were received, so they
        are fetched from history in their place, even at a stop."""
        for dropped in ranges:
            queue = self._held.get(dropped.symbol)
            if queue is None:
                self._start(dropped.symbol, dropped)
            else:
                self._keep_range(queue, dropped)
        self._report()

    def reconnected(self, symbols: Sequence[str]) -> None:
        """The connection of ``symbols`` was replaced: trades may have been missed.

        Nothing is fetched yet. Trade ids are contiguous, so a symbol's next live trade tells
        whether (and which) trades were missed, and the gap is filled then. Only a symbol
        that stays quiet for ``QUIET_AFTER_RECONNECT`` is looked at, by its newest trade id.
        """
        due = self._clock.monotonic() + QUIET_AFTER_RECONNECT
        for symbol in symbols:
            if self._sequencer.last(symbol) is not None:
                self._unchecked.setdefault(symbol, due)
        self._wake.set()

    @property
    def watching(self) -> bool:
        """Whether any symbol's first trade since a reconnect is awaited (see ``traded``)."""
        return self._probing is not None or bool(self._unchecked)

    def traded(self, symbol: str) -> bool:
        """A live trade of ``symbol`` arrived: it shows any gap itself. Whether it is the
        first since the symbol's connection was replaced."""
        if self._probing == symbol:
            self._probing = None
            return True
        return bool(self._unchecked) and self._unchecked.pop(symbol, None) is not None

    def _start(self, symbol: str, entry: _Held | DroppedRange) -> None:
        self._held[symbol] = deque([entry])
        self._held_trades += isinstance(entry, _Held)
        self._waiting.append(symbol)
        self._settled.clear()
        self._wake.set()

    def _keep_range(self, queue: deque[_Held | DroppedRange], dropped: DroppedRange) -> None:
        if queue and isinstance(queue[-1], DroppedRange):
            queue[-1] = queue[-1].merged(dropped)
        else:
            queue.append(dropped)

    def _report(self) -> None:
        self._metrics.holding(len(self._held), self._held_trades)

    # The worker.

    async def work(self) -> None:
        """Serve the held symbols, oldest gap first, and look at quiet symbols when due; runs
        beside the pump while the run streams."""
        try:
            while True:
                if self._waiting:
                    await self._serve(self._waiting.popleft())
                    continue
                quiet = min(self._unchecked, key=self._unchecked.__getitem__, default=None)
                now = self._clock.monotonic()
                if quiet is not None and self._unchecked[quiet] <= now:
                    await self._probe(quiet)
                    continue
                self._wake.clear()
                if quiet is None:
                    await self._wake.wait()
                else:
                    await within(self._clock, self._wake.wait(), self._unchecked[quiet] - now)
        finally:
            # A worker that ended owes nothing more: whoever waits for it goes on.
            self._settled.set()

    async def settled(self) -> None:
        """Until no symbol is held: trades received are owed even at a stop."""
        await self._settled.wait()

    async def _serve(self, symbol: str) -> None:
        """Fill ``symbol``'s gap, then hand on, in order, what waited behind it."""
        queue = self._held[symbol]
        while queue and not self._run.over_limit():
            entry = queue.popleft()
            if isinstance(entry, DroppedRange):
                await self._fill_dropped(entry)
                continue
            await self._release(entry, queue)
            self._held_trades -= 1
            self._report()
        # Past the bound nothing more is due.
        self._held_trades -= sum(isinstance(entry, _Held) for entry in queue)
        del self._held[symbol]
        if not self._held:
            self._settled.set()
        self._report()

    async def _release(self, held: _Held, queue: deque[_Held | DroppedRange]) -> None:
        trade = held.item.trade
        verdict = self._sequencer.classify(trade.symbol, trade.trade_id)
        if verdict is Verdict.DUPLICATE:
            self._metrics.duplicate(trade.symbol)
            return
        gap = self._sequencer.gap_before(trade.symbol, trade.trade_id)
        if gap is not None:
            # Connections overlapping interleave: the missing trades may be right behind.
            rest = await self.hand_ahead((e.item for e in queue if isinstance(e, _Held)), gap)
            if rest is not None:
                await self.fill(rest, trade.timestamp, held.found)
        if not self._run.over_limit():
            await self._run.hand(trade, held.item.received_at)

    async def hand_ahead(self, items: Iterable[object], gap: Gap) -> Gap | None:
        """Hand the trades of ``gap`` found among ``items`` (received after the trade that
        revealed it), in order; what is still missing, if anything."""
        found: dict[int, Received] = {}
        for item in items:
            if (
                isinstance(item, Received)
                and item.trade.symbol == gap.symbol
                and gap.first_id <= item.trade.trade_id <= gap.last_id
            ):
                found.setdefault(item.trade.trade_id, item)
        next_id = gap.first_id
        while next_id in found and not self._run.over_limit():
            await self._run.hand(found[next_id].trade, found[next_id].received_at)
            next_id += 1
        return Gap(gap.symbol, next_id, gap.last_id) if next_id <= gap.last_id else None

    async def fill(
        self, gap: Gap, newest_time: int | None, found: str = LIVE_GAP, *, received: bool = True
    ) -> None:
        """Publish the trades of ``gap`` (found before a live trade made at ``newest_time``,
        if one was ``received``)."""
        self._metrics.gap(gap)
        logger.warning(
            "Gap in {symbol}: trades {first}..{last} ({size}) {found}",
            symbol=gap.symbol,
            first=gap.first_id,
            last=gap.last_id,
            size=gap.size,
            found=found,
        )
        if gap.size > self._config.backfill_max_trades:
            reason = f"larger than BACKFILL_MAX_TRADES={self._config.backfill_max_trades}"
            await self._unrecoverable(gap, reason)
            return
        await self._recover(gap.symbol, gap.first_id, gap.last_id, newest_time, received=received)

    async def _fill_dropped(self, dropped: DroppedRange) -> None:
        """What cannot be had is reported; the sequence goes on after the range either way."""
        symbol = dropped.symbol
        last = self._sequencer.last(symbol)
        if last is not None and last >= dropped.last_id:
            return
        first = dropped.first_id if last is None else last + 1
        await self.fill(
            Gap(symbol, first, dropped.last_id),
            dropped.last_time,
            found="dropped by the full receive buffer",
        )
        now = self._sequencer.last(symbol)
        if (now is None or now < dropped.last_id) and not self._run.over_limit():
            self._sequencer.accept(symbol, dropped.last_id)

    async def _probe(self, symbol: str) -> None:
        """Ask for the newest trade id of ``symbol``, quiet since its reconnect, and publish
        from history what its old connection missed (up to a stop, if one came)."""
        del self._unchecked[symbol]
        if self._run.stopping() or self._run.over_limit() or symbol in self._held:
            return
        last = self._sequencer.last(symbol)
        self._probing = symbol
        try:
            newest = await self._history.latest_trade_id(symbol)
        except HistoryError as error:
            logger.warning(
                "Could not check {symbol} for trades missed at a reconnect: {error}",
                symbol=symbol,
                error=str(error),
            )
            return
        finally:
            traded, self._probing = self._probing is None, None
        if traded or last is None or newest is None or newest <= last or self._run.stopping():
            return  # a live trade came meanwhile and shows any gap itself, or none was missed
        self._held[symbol] = deque()
        self._settled.clear()
        await self.fill(Gap(symbol, last + 1, newest), None, RECONNECT_GAP, received=False)
        done = self._sequencer.last(symbol)
        unpublished = done is None or done < newest
        if unpublished and not self._ended_reading(False) and not self._run.over_limit():
            # What was not published was reported: the sequence goes on after it.
            self._sequencer.accept(symbol, newest)
        await self._serve(symbol)

    async def _recover(
        self,
        symbol: str,
        first_id: int,
        last_id: int,
        newest_time: int | None = None,
        *,
        received: bool = True,
    ) -> None:
        """Publish history trades ``first_id..last_id``.

        Trades more than ``backfill_max_age`` older than ``newest_time`` (exchange time of the
        trade that revealed the gap) are reported instead of published. Unless a trade after
        them was ``received``, reading them ends at a stop, with nothing made after it.
        """
        page_size = self._config.backfill_page_size
        budget = self._config.backfill_max_trades
        oldest = None if newest_time is None else newest_time - self._config.backfill_max_age * 1000
        next_id = first_id
        recovered = 0
        stale_from: int | None = None
        patience, pause = HISTORY_PATIENCE, 0.1
        while next_id <= last_id and recovered < budget:
            if self._run.over_limit() or self._ended_reading(received):
                break
            want = min(page_size, last_id - next_id + 1)
            try:
                page = await self._history.trades_from(symbol, next_id, want)
            except HistoryError as error:
                await self._unrecoverable(Gap(symbol, next_id, last_id), str(error))
                next_id = last_id + 1  # accounted for
                break
            now = self._clock.monotonic()
            start = next_id
            for trade in page:
                if trade.trade_id < next_id:
                    continue
                if trade.trade_id > last_id or self._run.over_limit():
                    break
                if not received and trade.timestamp > self._run.stopped_at_ms():
                    break  # made after the stop: reading the exchange had ended
                if oldest is not None and trade.timestamp < oldest:
                    stale_from = trade.trade_id if stale_from is None else stale_from
                    next_id = trade.trade_id + 1
                    continue
                if stale_from is not None:
                    await self._too_old(Gap(symbol, stale_from, trade.trade_id - 1))
                    stale_from = None
                if trade.trade_id > next_id:
                    await self._unrecoverable(
                        Gap(symbol, next_id, trade.trade_id - 1), "missing from history too"
                    )
                await self._run.hand(trade, now)
                recovered += 1
                next_id = trade.trade_id + 1
            if len(page) < want or next_id == start:
                if next_id <= last_id and patience > 0 and not self._ended_reading(received):
                    # These exist (a trade after them was received, or history named them):
                    # history lags the stream. Ask again a little later rather than give up.
                    await self._clock.sleep(min(pause, patience))
                    patience -= pause
                    pause *= 2
                    continue
                break
        if stale_from is not None:
            await self._too_old(Gap(symbol, stale_from, next_id - 1))
        if next_id <= last_id and not self._run.over_limit() and not self._ended_reading(received):
            await self._unrecoverable(Gap(symbol, next_id, last_id), "history does not reach them")
        if recovered:
            self._metrics.backfilled(symbol, recovered)
            logger.info(
                "Backfilled {count} {symbol} trades from history",
                count=recovered,
                symbol=symbol,
            )

    def _ended_reading(self, received: bool) -> bool:
        """Whether a stop ended reading the exchange for trades not ``received``: none after
        the last one received is due."""
        return not received and self._run.stopping()

    async def _too_old(self, gap: Gap) -> None:
        reason = f"older than BACKFILL_MAX_AGE_SEC={self._config.backfill_max_age:g}"
        await self._unrecoverable(gap, reason)

    async def _unrecoverable(self, gap: Gap, reason: str) -> None:
        self._metrics.unrecoverable(gap.symbol, gap.size)
        message = (
            f"Gap in {gap.symbol}: trades {gap.first_id}..{gap.last_id} ({gap.size}) "
            f"could not be recovered: {reason}"
        )
        logger.error(message)
        await self._run.tell(message)
